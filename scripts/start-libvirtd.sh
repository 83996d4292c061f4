#!/usr/bin/env bash
# Starts virtlogd and libvirtd on a machine without systemd (../shared/MACHINE.md), for
# the tests and the demo's `--hypervisor qemu` mode. Idempotent: does nothing when
# libvirtd already answers. Lab setting: QEMU runs as root without a security driver
# (test files live in root's temporary directories); the three settings are appended
# to /etc/libvirt/qemu.conf once, marked, and never on a machine whose qemu.conf
# already sets a user. Do not use this script on a production hypervisor.
set -euo pipefail

if virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "start-libvirtd: libvirtd already running"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "start-libvirtd: needs root to start libvirtd (qemu:///system)" >&2
  exit 1
fi
mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /run/libvirt
conf=/etc/libvirt/qemu.conf
if ! grep -q "metrodr-lab-settings" "$conf" 2>/dev/null && ! grep -qE '^[[:space:]]*user[[:space:]]*=' "$conf" 2>/dev/null; then
  cat >> "$conf" <<'CONF'

# metrodr-lab-settings: appended by metrodr scripts/start-libvirtd.sh (test/lab machine)
user = "root"
group = "root"
security_driver = "none"
CONF
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 1 100); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "start-libvirtd: libvirtd is up"
    exit 0
  fi
  sleep 0.1
done
echo "start-libvirtd: libvirtd did not come up; see /var/log/libvirt/" >&2
exit 1
