#!/usr/bin/env bash
# Installs the Debian packages fleece and its tests need, or says exactly what is missing and how to get it.
set -euo pipefail

# libvirt: the monolithic libvirtd, its QEMU driver and virsh, for the libvirt integration tests (test/harness/libvirt.ts
# does the one-time setup: the libvirt-qemu account and qemu.conf). Not libvirt-daemon-system: no systemd units,
# polkit or dnsmasq. e2fsprogs: mkfs.ext4 for the real guest's disk. gnutls-bin: certtool and psktool, which make the
# certificates and PSK keys of the NBD-over-TLS tests (test/harness/pki.ts). swift* and memcached: a single-node
# OpenStack Swift with s3api, the real S3 server of the S3 tests (test/harness/swift.ts); python3-boto3: the Cinder
# S3 reader of test/compat/cinder_restore.py (restore-s3). restic, borgbackup: the external backup providers of the
# provider tests (fixtures/providers/); nbdkit, nbdkit-plugin-python, python3-libnbd: the dirty-region view of a
# provider's virtual file (nbdfuse is in libnbd-bin) and the nbdcopy provider's extent list.
packages=(qemu-system-x86 qemu-utils qemu-block-extra libnbd0 libnbd-bin bzip2 zstd python3
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients e2fsprogs gnutls-bin
  swift swift-proxy swift-object swift-container swift-account python3-swiftclient memcached python3-boto3
  restic borgbackup nbdkit nbdkit-plugin-python python3-libnbd)
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
