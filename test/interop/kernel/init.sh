#!/bin/busybox sh
# /init of the test guest (busybox sh, PID 1). It loads the modules listed in
# /etc/modules.order, brings up user networking with the static address qemu
# expects, runs the steps named in /scenario/steps (added per boot as a
# second cpio archive), prints one marker line per step on the console and
# powers off. Markers start with "@@mirrorbd " so the host can tell them from
# kernel messages; no step may block for long, because the host kills the VM
# after its timeout.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mark() { echo "@@mirrorbd $*"; }
finish() {
  mark "done $1"
  sync
  poweroff -f
  sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /mnt/data
# Kernel messages (nbd's "Connection timed out" and friends) go to the
# console anyway; keep routine ones out of the markers' way.
echo 4 >/proc/sys/kernel/printk
mark "init $(uname -r)"

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || { mark "step modules failed insmod $mod"; finish failed; }
done </etc/modules.order

. /scenario/env

ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || { mark "step network failed"; finish failed; }

# Each step is a function; its output goes to the console for the failure
# message, and its exit status decides whether the scenario goes on.
step_connect() {
  # -t: a request that gets no reply in NBD_TIMEOUT s fails instead of
  # hanging the guest; -b 4096: the block size ext4 uses.
  nbd-client "$NBD_HOST" "$NBD_PORT" /dev/nbd0 -N "$NBD_EXPORT" -b 4096 -t "$NBD_TIMEOUT" &&
    [ "$(cat /sys/block/nbd0/size)" -gt 0 ] &&
    echo "nbd0: $(cat /sys/block/nbd0/size) sectors"
}
step_mkfs() { mkfs.ext4 -F -q /dev/nbd0; }
step_mount() { mount -t ext4 /dev/nbd0 /mnt/data; }
step_write() {
  # /scenario/files holds the files the host chose; copy them in and list
  # what was written.
  cp -a /scenario/files /mnt/data/files && sha256sum /mnt/data/files/* | sed 's/^/@@mirrorbd sum /'
}
step_sync() { sync; }
step_read() { sha256sum /mnt/data/files/* | sed 's/^/@@mirrorbd sum /'; }
step_umount() { umount /mnt/data; }
step_disconnect() { nbd-client -d /dev/nbd0; }

for s in $STEPS; do
  mark "step $s begin"
  if "step_$s"; then
    mark "step $s ok"
  else
    mark "step $s failed $?"
    finish failed
  fi
done
finish ok
