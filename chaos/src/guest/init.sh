#!/bin/busybox sh
# metrodr probe guest /init (chaos::guest). Writes record n ("METRODR-REC n end",
# zero-padded to 4 KiB) to block n of /dev/vda with O_DIRECT + fsync and prints
# "metrodr-ack n" only after the write returned. Other code parses the console markers
# (chaos::guest::parse_console): keep them exactly as they are. Editing this file
# invalidates cached images by itself (their manifest records its sha256).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Load the virtio modules; their dependency order is found by retrying.
pending="@MODULES@"
for pass in 1 2 3 4 5 6; do
  left=""
  for m in $pending; do insmod /lib/modules/$m.ko 2>/dev/null || left="$left $m"; done
  pending=$left
  [ -z "$pending" ] && break
done
[ -n "$pending" ] && echo "metrodr-probe: could not load:$pending"
echo "metrodr-probe: boot"
# Seconds between records, from the kernel command line (metrodr.interval=0.1); with
# a NIC, the address (metrodr.addr=, QEMU user-mode networking's guest address by
# default) and the port its service listens on once ready (metrodr.listen=).
interval=0.1
addr=10.0.2.15/24
listen=80
for word in $(cat /proc/cmdline); do
  case "$word" in
    metrodr.interval=*) interval=${word#metrodr.interval=} ;;
    metrodr.addr=*) addr=${word#metrodr.addr=} ;;
    metrodr.listen=*) listen=${word#metrodr.listen=} ;;
  esac
done
case "$interval" in
  '' | *[!0-9.]*) echo "metrodr-probe: bad metrodr.interval '$interval', using 0.1"; interval=0.1 ;;
esac
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/vda ] || { echo "metrodr-probe: no disk"; poweroff -f; }
blocks=$(( $(cat /sys/block/vda/size) / 8 ))
has() { dd if=/dev/vda bs=4096 skip=$1 count=1 iflag=direct 2>/dev/null | head -c 40 | grep -q "^METRODR-REC $1 end"; }
lo=0; hi=$((blocks - 1))
while [ $lo -lt $hi ]; do mid=$(( (lo + hi + 1) / 2 )); if has $mid; then lo=$mid; else hi=$((mid - 1)); fi; done
n=$lo
echo "metrodr-probe: resume-after $n"
echo "metrodr-probe: ready"
# The service the app's tcp probe checks: up only once the guest is ready.
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  ip addr add "$addr" dev eth0
  ip link set eth0 up
  mkdir -p /www
  echo "metrodr probe guest" > /www/index.html
  case "$listen" in
    '' | *[!0-9]*) echo "metrodr-probe: bad metrodr.listen '$listen', using 80"; listen=80 ;;
  esac
  httpd -p "$listen" -h /www && echo "metrodr-probe: listening $addr port $listen"
else
  echo "metrodr-probe: no network"
fi
while [ $n -lt $((blocks - 1)) ]; do
  n=$((n + 1))
  printf 'METRODR-REC %d end\n' $n > /tmp/rec
  if dd if=/tmp/rec of=/dev/vda bs=4096 seek=$n count=1 conv=sync,fsync oflag=direct 2>/dev/null; then
    echo "metrodr-ack $n"
  else
    echo "metrodr-write-failed $n"; n=$((n - 1)); sleep 1
  fi
  sleep $interval
done
echo "metrodr-probe: disk full"
while :; do sleep 60; done
