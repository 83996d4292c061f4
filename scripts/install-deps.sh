#!/usr/bin/env bash
# Installs the Debian packages metrodr needs to build, test and run its demo.
# Idempotent: installs only what is missing, so a second run costs a second.
# See ../shared/MACHINE.md for why each package is here.
set -euo pipefail

BUILD_PKGS=(pkg-config libvirt-dev libclang-dev clang protobuf-compiler librocksdb-dev libsnappy-dev)
RUN_PKGS=(libvirt-daemon libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
          iproute2 iptables busybox-static cpio libnbd-bin nbdkit)
# The replication benchmark drives every NBD server with fio's nbd engine (libnbd).
BENCH_PKGS=(fio)
# The drills crate's HTML report test renders the report in a real headless browser.
REPORT_PKGS=(chromium)

# Prints the packages of the lists above that are not installed.
missing_pkgs() {
  for p in "${BUILD_PKGS[@]}" "${RUN_PKGS[@]}" "${BENCH_PKGS[@]}" "${REPORT_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      echo "$p"
    fi
  done
}

mapfile -t missing < <(missing_pkgs)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all system packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
else
  SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Installing one package can remove another that was there: a machine image with a
# newer qemu-utils (from backports) loses it when Debian's qemu-system-x86 comes in,
# because the two must be the same QEMU version. So check again after each round and
# install what went missing; give up, loudly, if a round changes nothing.
for round in 1 2 3; do
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef "${missing[@]}"
  mapfile -t missing < <(missing_pkgs)
  if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: done"
    exit 0
  fi
  echo "install-deps: round $round left these missing (removed by a conflict?): ${missing[*]}"
done
echo "install-deps: still missing after 3 rounds: ${missing[*]}; install them by hand (apt-get install ${missing[*]}) and see which package removes them" >&2
exit 1
