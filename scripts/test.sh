#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine: installs the tools the tests
# use as oracles (and the loop-device utilities), and QEMU with the firmware the boot tests
# use (plus the arm64 and armhf dpkg architectures, for their kernels, and QEMU from
# bookworm-backports where bookworm's lacks the raspi4b machine), when they are missing;
# then `cargo test`, then the QEMU boot tests in a release build
# (`cargo test --release --test boot`).
# Extra arguments go to one `cargo test` instead (e.g. `scripts/test.sh --test build_pi4`).
# The tests run with the `fault-injection` feature: the interruption tests stop the binary
# mid-write through it (release builds leave it out).
set -euo pipefail
cd "$(dirname "$0")/.."

# tool:package pairs; tools are looked up in sbin too, where Debian puts most of them.
tools=(
  sfdisk:fdisk sgdisk:gdisk partx:util-linux blkid:util-linux setpriv:util-linux
  wipefs:util-linux losetup:mount fsck.fat:dosfstools mcopy:mtools minfo:mtools
  e2fsck:e2fsprogs debugfs:e2fsprogs mkfs.ext4:e2fsprogs unsquashfs:squashfs-tools
  mksquashfs:squashfs-tools mkimage:u-boot-tools dumpimage:u-boot-tools
  bmaptool:bmap-tools zstd:zstd xz:xz-utils gzip:gzip genimage:genimage
  mkfs.vfat:dosfstools dtc:device-tree-compiler lz4:lz4 minisign:minisign
  ssh-keygen:openssh-client python3:python3
)
# Packages that are libraries rather than tools: the counterfeit-card tests' FUSE fake
# (tests/capacity/fakecard.py).
test_packages=(python3-fusepy)
# Packages of the QEMU boot tests (tests/boot.rs), most of them firmware rather than tools.
boot_packages=(
  qemu-system-x86 qemu-system-arm ovmf u-boot-qemu refind busybox-static lz4
)
missing=()
for pair in "${tools[@]}"; do
  tool=${pair%%:*} pkg=${pair##*:}
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done
for pkg in "${test_packages[@]}" "${boot_packages[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]; then
    missing+=("$pkg")
  fi
done
# The boot tests fetch Debian's arm64 and armhf kernels, busybox and U-Boot with
# `apt-get download`.
add_arches=()
for arch in arm64 armhf; do
  if [ "$(dpkg --print-architecture)" != "$arch" ] &&
    ! dpkg --print-foreign-architectures | grep -x "$arch" >/dev/null; then
    add_arches+=("$arch")
  fi
done
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
# A mirror caught mid-sync fails one index (exit 100) while the others are fine: go on with
# the lists apt has; an install that really lacks a package still fails below.
apt_update() {
  "${sudo[@]}" apt-get update -qq || echo "warning: apt-get update reported errors; using the package lists it has"
}
if ((${#missing[@]})) || ((${#add_arches[@]})); then
  for arch in "${add_arches[@]}"; do
    echo "adding the $arch dpkg architecture"
    "${sudo[@]}" dpkg --add-architecture "$arch"
  done
  apt_update
fi
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing test tools: ${missing[*]}"
  # Without this, refind's postinst installs rEFInd to this machine's ESP.
  echo 'refind refind/install_to_esp boolean false' | "${sudo[@]}" debconf-set-selections
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# QEMU's raspi4b machine (the pi/4 boot test) needs QEMU 9 or later. Debian bookworm ships
# 7.2; its backports suite has QEMU 10, which then runs every boot test.
if ! qemu-system-aarch64 -M help 2>/dev/null | grep -q '^raspi4b'; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "adding the bookworm-backports suite"
      printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
        'Suites: bookworm-backports' 'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
        "${sudo[@]}" tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
    apt_update
    echo "installing QEMU from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports qemu-system-arm qemu-system-x86
  fi
fi

# Loop devices back the block-device tests.
if [ "$(id -u)" = 0 ] && [ ! -e /dev/loop-control ]; then
  modprobe loop 2>/dev/null || true
fi

if (($#)); then
  exec cargo test --features fault-injection "$@"
fi
# The boot tests build and boot whole images: they run once, optimised, after the rest.
cargo test --features fault-injection -- --skip qemu_boot_
exec cargo test --release --test boot
