#!/usr/bin/env bash
# Installs the Debian packages fleece and its tests need, or says exactly what is missing and how to get it.
set -euo pipefail

# libvirt: the monolithic libvirtd, its QEMU driver and virsh, for the libvirt integration tests (test/harness/libvirt.ts
# does the one-time setup: the libvirt-qemu account and qemu.conf). Not libvirt-daemon-system: no systemd units,
# polkit or dnsmasq. e2fsprogs: mkfs.ext4 for the real guest's disk.
packages=(qemu-system-x86 qemu-utils qemu-block-extra libnbd0 libnbd-bin bzip2 zstd python3
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients e2fsprogs)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "fleece needs these Debian packages: ${missing[*]}" >&2
  echo "install them as root:  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
