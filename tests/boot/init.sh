#!/bin/sh
# /init of the boot tests' initramfs (busybox). It finds the partitions by filesystem label,
# checks that `root=PARTUUID=` on the kernel command line names the partition the boot
# config was written for, mounts the squashfs from the boot partition and reads a token in
# it and one in persist, counts the boot in persist, prints one marker line and powers off.
# /etc/skiff-test.conf sets BOOT_LABEL, BOOT_FS, SQUASHFS (`-`: an initramfs-only build),
# PERSIST_LABEL, ROOT_LABEL (empty: no root= check) and NO_BIND (platform devices no driver
# may take); `skiffos.squashfs=` on the command line overrides SQUASHFS.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
. /etc/skiff-test.conf
echo "TESTINIT: started, uptime $(cut -d' ' -f1 /proc/uptime)s, cmdline: $(cat /proc/cmdline)"

fail() {
  echo "TESTINIT-FAIL: $*"
  cat /proc/partitions
  sync
  poweroff -f
  sleep 10
}

# Devices the guest's drivers must leave alone (hardware the machine model lacks).
for d in $NO_BIND; do
  echo none >"/sys/bus/platform/devices/$d/driver_override" 2>/dev/null
done

for m in $(cat /etc/modules.load); do
  insmod "/lib/modules/$m" || echo "TESTINIT: insmod $m failed"
done

ROOT=
for a in $(cat /proc/cmdline); do
  case "$a" in
    root=PARTUUID=*) ROOT=${a#root=PARTUUID=} ;;
    skiffos.squashfs=*) SQUASHFS=${a#skiffos.squashfs=} ;;
  esac
done

label() { findfs "LABEL=$1" 2>/dev/null; }
# Devices may take a while to appear (an emulated SD card's partition scan alone can take
# 15 s on a loaded host); give up after 60 s of guest time, not a count of tries: each scan
# reads every block device, slow under emulation.
uptime_s() { cut -d. -f1 /proc/uptime; }
since=$(uptime_s)
while :; do
  BOOTDEV=$(label "$BOOT_LABEL") && PERSISTDEV=$(label "$PERSIST_LABEL") &&
    { [ -z "$ROOT_LABEL" ] || ROOTDEV=$(label "$ROOT_LABEL"); } && break
  [ $(($(uptime_s) - since)) -gt 60 ] && fail "labels $BOOT_LABEL/$PERSIST_LABEL/$ROOT_LABEL not found"
  sleep 0.1
done
echo "TESTINIT: boot=$BOOTDEV persist=$PERSISTDEV root=$ROOTDEV"

# The PARTUUID of a partition, read from its disk's table as the kernel forms it:
# GPT: the entry's unique GUID; MBR: disk signature and partition number (SSSSSSSS-NN).
partuuid() {
  dev=${1#/dev/}
  n=$(cat "/sys/class/block/$dev/partition")
  disk=/dev/$(basename "$(readlink -f "/sys/class/block/$dev/..")")
  bytes() { od -A n -t x1 -v -j "$1" -N "$2" "$disk"; }
  le() { bytes "$1" "$2" | awk '{ for (i = 1; i <= NF; i++) b[n++] = $i }
    END { for (i = n - 1; i >= 0; i--) printf "%s", b[i] }'; }
  if [ "$(bytes 450 1 | tr -d ' \n')" = ee ]; then
    lba=$((0x$(le 584 8)))
    size=$((0x$(le 596 4)))
    bytes $((lba * 512 + (n - 1) * size + 16)) 16 | awk '{ for (i = 1; i <= NF; i++) b[n++] = $i }
      END { printf "%s%s%s%s-%s%s-%s%s-%s%s-%s%s%s%s%s%s\n", b[3], b[2], b[1], b[0], b[5], b[4],
        b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15] }'
  else
    printf '%s-%02x\n' "$(le 440 4)" "$n"
  fi
}

ACTUAL=none
if [ -n "$ROOT_LABEL" ]; then
  [ -n "$ROOT" ] || fail "no root=PARTUUID= on the command line"
  ACTUAL=$(partuuid "$ROOTDEV")
  want=$(echo "$ROOT" | tr A-Z a-z)
  [ "$want" = "$ACTUAL" ] ||
    fail "root=PARTUUID=$ROOT names no partition here: $ROOT_LABEL ($ROOTDEV) is $ACTUAL"
fi

[ -n "$SQUASHFS" ] || fail "no skiffos.squashfs= on the command line"
mkdir -p /mnt/boot /mnt/root /mnt/persist
mount -t ext4 "$PERSISTDEV" /mnt/persist || fail "mount persist $PERSISTDEV"
if [ "$BOOTDEV" = "$PERSISTDEV" ]; then
  B=/mnt/persist
else
  mount -t "$BOOT_FS" -o ro "$BOOTDEV" /mnt/boot || fail "mount boot $BOOTDEV"
  B=/mnt/boot
fi
if [ "$SQUASHFS" = - ]; then
  # An initramfs-only build: the boot partition must still be readable.
  ls "$B" >/dev/null || fail "list the boot partition"
  SQ=none
else
  mount -t squashfs -o ro,loop "$B$SQUASHFS" /mnt/root || fail "mount squashfs $SQUASHFS"
  SQ=$(cat /mnt/root/etc/skiff-test-token) || fail "read the squashfs token"
  umount /mnt/root
fi
PE=$(cat /mnt/persist/skiff-test-token) || fail "read the persist token"
N=$(cat /mnt/persist/boot-count 2>/dev/null || echo 0)
N=$((N + 1))
echo $N >/mnt/persist/boot-count
sync
[ "$B" = /mnt/boot ] && umount /mnt/boot
umount /mnt/persist
echo "SKIFF-TEST-MARKER squashfs=$SQ persist=$PE boots=$N root=$ACTUAL sqpath=$SQUASHFS uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
sleep 10
