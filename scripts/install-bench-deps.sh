#!/usr/bin/env bash
# Installs what `npm run bench` needs beyond scripts/install-system-deps.sh: the peer it measures fleece against,
# virtnbdbackup + virtnbdrestore (Debian package virtnbdbackup, 1.9.15 in bookworm). The test suite does not need it;
# without it the bench prints this same apt-get line and runs the rest.
set -euo pipefail

if dpkg-query -W -f='${Status}' virtnbdbackup 2>/dev/null | grep -q 'install ok installed'; then
  echo "virtnbdbackup $(dpkg-query -W -f='${Version}' virtnbdbackup) is installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the bench's peer is missing; install it as root:  apt-get install -y virtnbdbackup" >&2
  exit 1
fi
echo "installing virtnbdbackup (the bench's peer)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq virtnbdbackup >/dev/null || { apt-get update -qq && apt-get install -y -qq virtnbdbackup >/dev/null; }
echo "virtnbdbackup $(dpkg-query -W -f='${Version}' virtnbdbackup) is installed"
