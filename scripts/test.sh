#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine: installs the tools the tests
# use as oracles (and the loop-device utilities) when they are missing, then `cargo test`.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test build_pi4`).
set -euo pipefail
cd "$(dirname "$0")/.."

# tool:package pairs; tools are looked up in sbin too, where Debian puts most of them.
tools=(
  sfdisk:fdisk sgdisk:gdisk partx:util-linux blkid:util-linux setpriv:util-linux
  wipefs:util-linux losetup:mount fsck.fat:dosfstools mcopy:mtools minfo:mtools
  e2fsck:e2fsprogs debugfs:e2fsprogs mkfs.ext4:e2fsprogs unsquashfs:squashfs-tools
  mksquashfs:squashfs-tools mkimage:u-boot-tools dumpimage:u-boot-tools
  bmaptool:bmap-tools zstd:zstd xz:xz-utils gzip:gzip genimage:genimage
  mkfs.vfat:dosfstools
)
missing=()
for pair in "${tools[@]}"; do
  tool=${pair%%:*} pkg=${pair##*:}
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing test tools: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Loop devices back the block-device tests.
if [ "$(id -u)" = 0 ] && [ ! -e /dev/loop-control ]; then
  modprobe loop 2>/dev/null || true
fi

exec cargo test "$@"
