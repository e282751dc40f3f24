#!/usr/bin/env bash
# Benchmark: skiff-flash against genimage, dd, bmaptool, zstd/xz and sha256sum.
#
# This is a benchmark, not a test. One run prints one table and one "ratios" block (with
# PASS/FAIL against the targets) per section. Sections (BENCH_SECTIONS, default all):
#
#   ratios  the headline ratios, medians of RATIO_REPS (default 5) interleaved runs on a pi/4
#           images dir as a real build leaves it: Debian's arm64 kernel and Raspberry Pi DTBs
#           (`apt-get download` of the package linux-image-arm64 points at, cached in
#           target/boot-cache/debs), an lz4 initramfs holding busybox (busybox-static:arm64)
#           and a 20 MiB incompressible blob in an xz squashfs. Each run, in turn (each of the
#           first three with the payload read once just before, so all find it cached): build .img;
#           genimage of the same layout; `cat` of every payload file into one file (the
#           copy-once limit); build .img.zst (and its peak RSS); build .img then
#           `zstd -T0 -3`; as root, on 1 GiB loop devices with cold caches: `bmaptool copy`,
#           `flash --image` with read-back verify, and an .img.zst flashed to one card and to
#           four at once. Prints the medians and the ratios with PASS/FAIL against the goals:
#           genimage/build >= 3, build/copy <= 1.5, (build+zstd)/(.img.zst) >= 1.5 with
#           peak RSS <= 64 MiB, flash-with-verify/bmaptool <= 1.0, 4 cards/1 card <= 1.3.
#
#   build   skiff-flash vs genimage composing the same Raspberry Pi 4 disk image.
#           REPS runs (wall seconds and max RSS via `/usr/bin/time -f '%e %M'`) of
#             a. `skiff-flash build --board pi/4` with --size 1GiB and --size 16GiB;
#             b. genimage building the same layout from the same inputs: a GPT hdimage with
#                a FAT32 BOOT partition (the file list is taken from `skiff-flash plan
#                --json`), ext4 rootfs from rootfs_part/ and ext4 persist from persist_part/
#                (use-mke2fs), every offset and size copied from the skiff-flash plan for
#                the same --size, persist filling the rest of the disk (autoresize).
#           Neither tool fsyncs its output; the "+fsync" rows add the time of `sync IMAGE`
#           run right after each run (information only: a durable-vs-durable figure).
#           Targets: skiff-flash >= 3x faster than genimage; 16 GiB within 1.5x of 1 GiB;
#           peak RSS < 64 MiB. Every skiff-flash image must pass `sgdisk -v` and the
#           genimage image must have the same partition starts/ends.
#
#   flash   (root only; skipped with a notice otherwise) writing a FLASH_SIZE image holding
#           FLASH_PAYLOAD_MIB MiB (built with --bmap) to a loop device of the same size,
#           backed by a file in the temp dir and attached with `losetup --direct-io=on`
#           (when supported) so the page cache does not absorb the writes. The backing file
#           is filled once before measuring (untimed) so no run pays for block allocation.
#           `sync` + `echo 3 > /proc/sys/vm/drop_caches` before every timed run; the order of
#           the writers rotates every rep (what wrote the device last affects the next
#           buffered writer). Timed:
#             dd zero   `dd if=/dev/zero bs=4M count=N oflag=direct conv=fsync`, N*4 MiB >=
#                       the image's mapped bytes: the device's sequential write speed;
#             dd        `dd if=X.img bs=4M oflag=direct conv=fsync` (the whole image);
#             bmaptool  `bmaptool copy --bmap X.img.bmap X.img DEV` (it checks the sha256 of
#                       every range it reads from the image), and with --no-verify;
#             skiff-flash flash DEV --image X.img --yes --no-verify, and with verify (reads
#                       the device back and compares);
#             skiff-flash flash DEV --board pi/4 --images DIR --yes --no-verify (composes
#                       straight onto the device).
#           Targets: skiff-flash --image --no-verify writes the mapped bytes at >= 90% of
#           the dd-zero speed; dd / skiff-flash >= 10x; skiff-flash flash peak RSS < 64 MiB.
#           Checked afterwards (untimed): the mapped ranges are overwritten with zeros, each
#           of the --image and --board variants is run once more, the device's mapped ranges
#           are compared with the image's, and `sgdisk -v` must pass on the device.
#
#   zst     `skiff-flash build -o X.img.zst --size FLASH_SIZE` against `skiff-flash build -o
#           X.img` followed by `zstd -T0 -3 X.img`, same payload as the flash section, ZST_REPS
#           runs each (no cache dropping). Target: the direct .zst is at least as fast.
#           The .zst must decompress to the same bytes as the .img. Also prints the peak RSS
#           of the .zst build and, for the record, the compressed sizes from skiff-flash
#           (.img.zst), `zstd -T0 -3`, `zstd -T0 -19` and `xz -T0 -6` of one image: a
#           RECORD_SIZE image holding RECORD_PAYLOAD_MIB MiB. zstd -19 and xz -6 are slow on
#           a small machine (on 2 cores, a 4 GiB image with 300 MiB of data took about 190 s
#           and 300 s; xz also needs ~20 s per GiB of zeros, so even a 4 GiB image with 16 MiB
#           took ~180 s), so by default the record uses a smaller payload in a smaller image;
#           each record compressor is stopped after RECORD_TIMEOUT seconds.
#
#   verify  (only when `skiff-flash verify` exists) byte verification of a FLASH_SIZE image
#           holding VERIFY_PAYLOAD_MIB MiB against the manifest written beside it,
#           `skiff-flash verify X.img --manifest X.img.manifest.json`, against sha256sum of the
#           same mapped ranges (extracted from the image with dd into a pipe) and sha256sum
#           of the whole image file (which reads every byte, holes included). Caches are
#           dropped before every run when root. Reports hashing throughput (mapped bytes /
#           wall time). Target: skiff-flash verify >= 90% of the sha256sum throughput on
#           the mapped bytes. `openssl dgst -sha256` over the same ranges is shown too (info:
#           coreutils' sha256sum may not use the CPU's SHA instructions, openssl does).
#           Checked: a byte flipped in a mapped range makes verify fail.
#
# Payloads: a copy of fixtures/pi4/images plus N MiB of pseudo-random data
#   ~20% a larger `Image` kernel (the fixture's arm64 header, size patched),
#   ~40% a real `rootfs.squashfs` (mksquashfs -comp lz4 of random files),
#   ~15% files in rootfs_part/, ~25% files in persist_part/ (small and large);
# generation time is not measured. The release binary is built first (`cargo build
# --release`, a no-op when up to date; its time is printed but not part of any section).
#
# Usage:  benches/bench.sh              (from any directory)
#         BENCH_SECTIONS="flash verify" benches/bench.sh
#   upgrade (root only) a FLASH_SIZE loop device flashed with the flash section's payload
#           (build A), then per rep (FLASH_REPS): `skiff-flash upgrade DEV` to build B (a new
#           kernel of the same size; everything else unchanged), again with nothing to do,
#           and the alternative a user has without it, `skiff-flash flash DEV --board` of B
#           (a full reflash, which erases persist). Cold caches before each timed run.
#           Checked: persist's bytes are the same before and after the upgrade, `verify
#           --board` of B passes. Targets: upgrade >= 2x faster than the full reflash (both
#           sides of every unchanged file are read to compare them, which bounds the gain);
#           bytes written <= 1.05x the changed bytes.
#
# Environment (defaults sized for a 2-core machine; a full run takes a few minutes):
#   BENCH_SECTIONS     sections to run, any of "ratios build flash zst verify upgrade" (default all)
#   RATIO_REPS         ratios: interleaved runs (default 5)
#   PAYLOAD_MIB        build: payload, MiB (default 100)
#   REPS               build: repetitions per measurement (default 3)
#   FLASH_PAYLOAD_MIB  flash and zst: payload, MiB (default 300)
#   FLASH_SIZE         flash, zst and verify: image and loop device size (default 4GiB)
#   FLASH_REPS         flash: repetitions (default 3)
#   DD_FULL_REPS       flash: repetitions of the full-image dd (default 1; ~20 s each)
#   ZST_REPS           zst: repetitions (default 2)
#   RECORD_PAYLOAD_MIB zst: payload of the image compressed for the record (default 16)
#   RECORD_SIZE        zst: size of that image (default 1GiB)
#   RECORD_TIMEOUT     zst: seconds allowed per record compressor (default 180)
#   VERIFY_PAYLOAD_MIB verify: payload, MiB (default 1024)
#   VERIFY_REPS        verify: repetitions (default 3)
#   SHA_FULL_REPS      verify: repetitions of sha256sum over the whole image (default 1)
#   SOURCE_DATE_EPOCH  timestamp for every build (default 1700000000)
#   BENCH_TMP          parent of the temp dir, also holds the loop backing file (default /tmp)
#   BENCH_KEEP         if set, keep the temp dir (inputs, plans, genimage configs, images)
#   BENCH_NO_CARGO     if set, measure the existing target/release/skiff-flash as it is
#
# Needs: cargo, jq, mksquashfs (squashfs-tools), genimage, mkfs.vfat (dosfstools),
# mcopy/mmd (mtools), mke2fs/e2fsck (e2fsprogs), sgdisk (gdisk), GNU time; flash: losetup
# (mount), bmaptool (bmap-tools); zst: zstd, xz (xz-utils). Missing Debian packages of the
# selected sections are installed with apt-get when running as root.
# Images are sparse files; the genimage 16 GiB variant is skipped (with a notice)
# when the temp filesystem has less than 20 GiB free. `sync` (untimed) runs before every
# timed run so one run's pending writeback does not land in the next one's time.
# The temp dir is removed and the loop device detached on exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SECTIONS=${BENCH_SECTIONS:-ratios build flash zst verify upgrade}
RATIO_REPS=${RATIO_REPS:-5}
RATIO_LOOPS=()
PAYLOAD_MIB=${PAYLOAD_MIB:-100}
REPS=${REPS:-3}
FLASH_PAYLOAD_MIB=${FLASH_PAYLOAD_MIB:-300}
FLASH_SIZE=${FLASH_SIZE:-4GiB}
FLASH_REPS=${FLASH_REPS:-3}
DD_FULL_REPS=${DD_FULL_REPS:-1}
ZST_REPS=${ZST_REPS:-2}
RECORD_PAYLOAD_MIB=${RECORD_PAYLOAD_MIB:-16}
RECORD_SIZE=${RECORD_SIZE:-1GiB}
RECORD_TIMEOUT=${RECORD_TIMEOUT:-180}
VERIFY_PAYLOAD_MIB=${VERIFY_PAYLOAD_MIB:-1024}
VERIFY_REPS=${VERIFY_REPS:-3}
SHA_FULL_REPS=${SHA_FULL_REPS:-1}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
BENCH_TMP=${BENCH_TMP:-/tmp}
BOARD=pi/4
SIZES=(1GiB 16GiB)
TARGET_SPEEDUP=3
TARGET_SCALING=1.5
TARGET_RSS_MIB=64
TARGET_FLASH_PCT=90      # skiff-flash write throughput, % of the device's dd-zero speed
TARGET_FLASH_VS_DD=10    # dd (full image) / skiff-flash time
TARGET_ZST=1.0           # (build .img + zstd -3) / build .img.zst time
TARGET_VERIFY_PCT=90     # skiff-flash verify throughput, % of sha256sum's
MIB=1048576
T_START=$SECONDS

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

for v in PAYLOAD_MIB REPS FLASH_PAYLOAD_MIB FLASH_REPS ZST_REPS RECORD_PAYLOAD_MIB RECORD_TIMEOUT \
         VERIFY_PAYLOAD_MIB VERIFY_REPS; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 ]] || die "$v must be a positive integer"
done
for v in DD_FULL_REPS SHA_FULL_REPS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
done
read -r -a SECTIONS <<<"$BENCH_SECTIONS"
((${#SECTIONS[@]})) || die "BENCH_SECTIONS is empty"
for s in "${SECTIONS[@]}"; do
    [[ $s =~ ^(ratios|build|flash|zst|verify|upgrade)$ ]] || die "unknown section '$s' in BENCH_SECTIONS (ratios build flash zst verify upgrade)"
done
want() { [[ " ${SECTIONS[*]} " == *" $1 "* ]]; }
IS_ROOT=0; [[ $(id -u) -eq 0 ]] && IS_ROOT=1

# --- tools -----------------------------------------------------------------------------
# command -> Debian package
declare -A PKG=([/usr/bin/time]=time [jq]=jq [mksquashfs]=squashfs-tools [sgdisk]=gdisk)
if want build; then
    PKG+=([genimage]=genimage [mkfs.vfat]=dosfstools [mcopy]=mtools [mmd]=mtools
          [mke2fs]=e2fsprogs [e2fsck]=e2fsprogs)
fi
if want flash && ((IS_ROOT)); then PKG+=([losetup]=mount [bmaptool]=bmap-tools); fi
if want upgrade && ((IS_ROOT)); then PKG+=([losetup]=mount [sfdisk]=fdisk); fi
if want zst; then PKG+=([zstd]=zstd [xz]=xz-utils); fi
if want ratios; then
    PKG+=([genimage]=genimage [mkfs.vfat]=dosfstools [mcopy]=mtools [mke2fs]=e2fsprogs
          [zstd]=zstd [lz4]=lz4 [cpio]=cpio [dpkg-deb]=dpkg)
    if ((IS_ROOT)); then PKG+=([losetup]=mount [bmaptool]=bmap-tools); fi
fi
missing=()
for cmd in "${!PKG[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if ((IS_ROOT)) && command -v apt-get >/dev/null; then
        log "installing: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    else
        die "missing packages: ${missing[*]} (install them, or run as root to apt-get them)"
    fi
fi

# --- temp dir, loop device -----------------------------------------------------------------
WORK=$(mktemp -d "$BENCH_TMP/skiff-flash-bench.XXXXXX")
LOOPDEV=""
cleanup() {
    local l
    for l in "${RATIO_LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    if [[ -n $LOOPDEV ]]; then
        losetup -d "$LOOPDEV" 2>/dev/null || log "bench: could not detach $LOOPDEV"
        LOOPDEV=""
    fi
    if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- release binary ------------------------------------------------------------------------
SF="$ROOT/target/release/skiff-flash"
BUILD_NOTE=""
t0=$SECONDS
if [[ -z ${BENCH_NO_CARGO:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found"
    log "building release binary..."
    if ! cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"; then
        # The tree may be mid-edit; an existing binary still gives a useful measurement.
        [[ -x $SF ]] || die "cargo build --release failed and there is no $SF"
        BUILD_NOTE="WARNING: cargo build --release failed; measured the existing $SF (built $(date -r "$SF" '+%F %T'))"
        log "$BUILD_NOTE"
    fi
fi
[[ -x $SF ]] || die "$SF not found (cargo build --release)"
CARGO_SECS=$((SECONDS - t0))

# --- helpers -----------------------------------------------------------------------------
# rand_split BYTES DIR PREFIX CHUNK: BYTES pseudo-random bytes as files of CHUNK bytes.
rand_split() {
    local bytes=$1 dir=$2 prefix=$3 chunk=$4
    ((bytes > 0)) || return 0
    mkdir -p "$dir"
    head -c "$bytes" /dev/urandom | split -b "$chunk" -a 4 -d - "$dir/$prefix"
}
# le64 N: printf escapes for N as 8 little-endian bytes.
le64() {
    local v=$1 i out=''
    for ((i = 0; i < 8; i++)); do out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done
    printf '%s' "$out"
}

# gen_payload DIR MIB: the fixture images plus MIB MiB of pseudo-random data (see top).
gen_payload() {
    local dir=$1 mib=$2
    local total=$((mib * MIB)) kernel_b squash_b rootfs_b persist_b small_b d sq
    kernel_b=$((total * 20 / 100))
    squash_b=$((total * 40 / 100))
    rootfs_b=$((total * 15 / 100))
    persist_b=$((total - kernel_b - squash_b - rootfs_b))
    log "generating ${mib} MiB payload in $dir..."
    cp -a "$ROOT/fixtures/pi4/images" "$dir"

    # Kernel: keep the fixture's 64-byte arm64 header, random body, image_size = file size.
    kernel_b=$((kernel_b < 4096 ? 4096 : kernel_b))
    head -c 64 "$ROOT/fixtures/pi4/images/Image" >"$dir/Image"
    head -c $((kernel_b - 64)) /dev/urandom >>"$dir/Image"
    # shellcheck disable=SC2059
    printf "$(le64 "$kernel_b")" | dd of="$dir/Image" bs=1 seek=16 conv=notrunc status=none

    # Squashfs root: a small tree plus random files (incompressible, so size ~= payload).
    sq="$dir.squashfs-src"
    mkdir -p "$sq/etc" "$sq/usr/bin"
    printf 'NAME=SkiffOS\nID=skiff\nVERSION_ID=bench\n' >"$sq/etc/os-release"
    printf '#!/bin/sh\necho hello\n' >"$sq/usr/bin/hello"
    chmod 0755 "$sq/usr/bin/hello"
    rand_split "$squash_b" "$sq/usr/lib" lib 4M
    rm -f "$dir/rootfs.squashfs"
    mksquashfs "$sq" "$dir/rootfs.squashfs" -comp lz4 -noappend -all-root -no-xattrs \
        -quiet -no-progress >/dev/null   # timestamps from SOURCE_DATE_EPOCH
    rm -rf "$sq"

    # rootfs_part: a few large files. persist_part: a quarter as 16 KiB files in 16 dirs,
    # the rest as large files.
    rand_split "$rootfs_b" "$dir/rootfs_part/payload" blob 4M
    small_b=$((persist_b / 4))
    for ((d = 0; d < 16; d++)); do
        rand_split $((small_b / 16)) "$dir/persist_part/small/d$(printf %02d "$d")" f 16K
    done
    rand_split $((persist_b - small_b / 16 * 16)) "$dir/persist_part/large" blob 4M
}
# payload_dir MIB: path of a generated MIB MiB payload (generated on first use).
payload_dir() {
    local dir="$WORK/images-$1"
    [[ -d $dir ]] || gen_payload "$dir" "$1"
    printf '%s\n' "$dir"
}

# timed OUTPREFIX CMD...: run CMD under GNU time; append "wall rss_kib" to OUTPREFIX.times;
# CMD's stdout/stderr go to OUTPREFIX.out/.err. Returns CMD's exit status.
timed() {
    local pre=$1; shift
    local tf="$pre.time.$RANDOM" rc=0
    sync   # start each run without other runs' dirty pages pending (not timed)
    /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$pre.out" 2>"$pre.err" || rc=$?
    if ((rc == 0)); then tail -n 1 "$tf" >>"$pre.times"; fi
    rm -f "$tf"
    return "$rc"
}
# drop_caches: write back and drop the page cache (root only; otherwise just sync).
drop_caches() {
    sync
    if ((IS_ROOT)); then echo 3 >/proc/sys/vm/drop_caches; fi
}
# timed_cold OUTPREFIX CMD...: timed, starting with a cold page cache.
timed_cold() { drop_caches; timed "$@"; }
# must PRE WHAT CMD...: timed or timed_cold (first word of CMD) that dies with CMD's stderr.
must() {
    local pre=$1 what=$2; shift 2
    if ! "$@"; then
        tail -n 20 "$pre.err" >&2
        die "$what failed"
    fi
}
best()   { awk '{print $1}' "$1" | sort -g | head -n 1; }
median() { awk '{print $1}' "$1" | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }
peak_mib() { awk '$2>m{m=$2} END {printf "%.1f\n", m/1024}' "$@"; }
alloc_mib() { du -k "$1" | awk '{printf "%.0f\n", $1/1024}'; }
# ratio A B: A/B with two decimals; B of 0 (below time's 10 ms resolution) counts as 0.01.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b <= 0) b = 0.01; printf "%.2f\n", a/b}'; }
mark() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN {ok = (op == "ge") ? v >= t : (op == "le") ? v <= t : v < t; print ok ? "PASS" : "FAIL"}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f\n", b/1048576}'; }
# mibps BYTES SECONDS: throughput in MiB/s (seconds of 0 count as 0.01).
mibps() { awk -v b="$1" -v s="$2" 'BEGIN {if (s <= 0) s = 0.01; printf "%.1f\n", b/1048576/s}'; }
# pct A B: 100*A/B, one decimal.
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f\n", (b > 0) ? 100*a/b : 0}'; }
# Partition rows (number, start sector, end sector) as printed by sgdisk -p.
part_rows() { sgdisk -p "$1" 2>/dev/null | awk '/^Number/ {t=1; next} t && NF >= 3 {print $1, $2, $3}'; }
# cfg_str S: S as a double-quoted libconfuse string.
cfg_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
# sgdisk_ok FILE_OR_DEV
sgdisk_ok() { sgdisk -v "$1" 2>&1 | grep -q "No problems found"; }

# bmap_mapped BMAP: mapped bytes (MappedBlocksCount * BlockSize).
bmap_mapped() {
    awk '/<BlockSize>/ {gsub(/[^0-9]/, ""); bs=$0} /<MappedBlocksCount>/ {gsub(/[^0-9]/, ""); n=$0}
         END {printf "%.0f\n", n*bs}' "$1"
}
# bmap_ranges BMAP: "first_byte byte_count" for every mapped range.
bmap_ranges() {
    awk '/<BlockSize>/ {gsub(/[^0-9]/, ""); bs=$0}
         /<Range/ {s=$0; sub(/^.*<Range[^>]*>[ \t]*/, "", s); sub(/[ \t]*<\/Range>.*$/, "", s)
                   n=split(s, p, "-"); a=p[1]; b=(n>1)?p[2]:p[1]; printf "%.0f %.0f\n", a*bs, (b-a+1)*bs}' "$1"
}
# extract_mapped FILE RANGES: the bytes of FILE in RANGES (from bmap_ranges), to stdout.
extract_mapped() {
    local file=$1 ranges=$2 off len
    while read -r off len; do
        dd if="$file" bs=4M iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none
    done <"$ranges"
}
# zero_mapped DEV RANGES: overwrite RANGES of DEV with zeros (untimed scrub before a check).
zero_mapped() {
    local dev=$1 ranges=$2 off len
    while read -r off len; do
        dd if=/dev/zero of="$dev" bs=4M iflag=count_bytes oflag=seek_bytes seek="$off" \
            count="$len" conv=notrunc status=none
    done <"$ranges"
    sync
}
# sf_report PRE: bytes_written of the last `skiff-flash flash --json` run, appended to PRE.bytes.
sf_report() {
    local pre=$1 r
    r=$(grep '"event":"done"' "$pre.out" | tail -n 1)
    jq -e '.ok == true' <<<"$r" >/dev/null || { cat "$pre.out" "$pre.err" >&2; die "skiff-flash flash did not report ok"; }
    jq -r '.report.bytes_written' <<<"$r" >>"$pre.bytes"
}

ROW='%-44s %9s %8s %9s %9s %8s  %s\n'
# row LABEL PRE BYTES NOTE: a table line (MiB, best, median, MiB/s at best, RSS).
row() {
    local label=$1 pre=$2 bytes=$3 note=$4
    if [[ ! -s $pre.times ]]; then
        printf "$ROW" "$label" - - - - - "${note:-not run}"
        return
    fi
    local b; b=$(best "$pre.times")
    printf "$ROW" "$label" "$(mib "$bytes")" "$b" "$(median "$pre.times")" "$(mibps "$bytes" "$b")" \
        "$(peak_mib "$pre.times")" "$note"
}
row_head() { printf "$ROW" run "MiB" "best s" "median s" "MiB/s" "RSS MiB" note; }
RATIO_X='  %-52s %7sx  %s\n'
RATIO_P='  %-52s %7s%%  %s\n'
RATIO_M='  %-52s %4s MiB  %s\n'

RES="$WORK/results"
mkdir -p "$RES"
declare -A SECT_SECS=()
echo "skiff-flash benchmark: board $BOARD, sections: ${SECTIONS[*]}, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "skiff-flash: $("$SF" --version 2>/dev/null || echo '?') ($SF, cargo build ${CARGO_SECS} s, not counted)"

# gen_cfg PLAN_JSON OUT_CFG TEXTDIR: genimage.cfg reproducing the plan's layout.
gen_cfg() {
    local plan=$1 cfg=$2 textdir=$3
    mkdir -p "$textdir"
    local disk_size boot_size boot_off rootfs_size rootfs_off persist_size persist_off
    disk_size=$(jq -r .disk_size "$plan")
    read -r boot_off boot_size < <(jq -r '.partitions[] | select(.id=="boot") | "\(.start) \(.size)"' "$plan")
    read -r rootfs_off rootfs_size < <(jq -r '.partitions[] | select(.id=="rootfs") | "\(.start) \(.size)"' "$plan")
    read -r persist_off persist_size < <(jq -r '.partitions[] | select(.id=="persist") | "\(.start) \(.size)"' "$plan")
    [[ $(jq -r '[.partitions[].id] | join(",")' "$plan") == boot,rootfs,persist ]] \
        || die "unexpected partition list in plan: $(jq -c '[.partitions[].id]' "$plan")"

    {
        echo 'image boot.vfat {'
        echo '    vfat {'
        echo '        label = "BOOT"'
        echo '        extraargs = "-F 32"'
        local i=0 path kind value src
        while IFS=$'\t' read -r path kind value; do
            path=${path#/}
            if [[ $kind == text ]]; then
                src="$textdir/text$((i++))"
                jq -j --arg p "/$path" '.partitions[] | select(.id=="boot") | .fs.entries[]
                                        | select(.path==$p) | .source.text' "$plan" >"$src"
            else
                src=$value
            fi
            echo "        file $(cfg_str "$path") { image = $(cfg_str "$src") }"
        done < <(jq -r '.partitions[] | select(.id=="boot") | .fs.entries[]
                        | select(.type=="file")
                        | if .source.path then [.path, "path", .source.path]
                          else [.path, "text", ""] end | @tsv' "$plan")
        echo '    }'
        echo "    size = $boot_size"
        echo '    temporary = true'
        echo '}'
        local id size
        for id in rootfs persist; do
            size=$rootfs_size; [[ $id == persist ]] && size=$persist_size
            echo "image $id.ext4 {"
            echo "    ext4 {"
            echo "        use-mke2fs = true"
            echo "        label = \"$id\""
            echo "    }"
            echo "    srcpath = $(cfg_str "$IMAGES/${id}_part")"
            echo "    size = $size"
            echo "    temporary = true"
            echo "}"
        done
        echo 'image disk.img {'
        echo '    hdimage {'
        echo '        partition-table-type = "gpt"'
        echo '        align = 1M'
        echo '    }'
        echo "    size = $disk_size"
        echo '    partition boot {'
        echo '        image = "boot.vfat"'
        echo "        offset = $boot_off"
        echo "        size = $boot_size"
        echo '        partition-type-uuid = "F"'
        echo '    }'
        echo '    partition rootfs {'
        echo '        image = "rootfs.ext4"'
        echo "        offset = $rootfs_off"
        echo "        size = $rootfs_size"
        echo '        partition-type-uuid = "L"'
        echo '    }'
        echo '    partition persist {'
        echo '        image = "persist.ext4"'
        echo "        offset = $persist_off"
        echo '        autoresize = true'
        echo '        partition-type-uuid = "L"'
        echo '    }'
        echo '}'
    } >"$cfg"
}


# === section ratios: the headline ratios on a realistic payload ==================================
# real_deb SPEC: the cached .deb of SPEC (name:arch), fetched once with `apt-get download`
# into target/boot-cache/debs (shared with the QEMU boot tests).
real_deb() {
    local spec=$1 name=${1%%:*} arch=${1##*:} dir="$ROOT/target/boot-cache/debs" f
    mkdir -p "$dir"
    f=$(ls "$dir/${name}_"*"_$arch.deb" 2>/dev/null | sort | tail -n 1 || true)
    if [[ -z $f ]]; then
        (cd "$dir" && apt-get download -q "$spec" >/dev/null) || die "apt-get download $spec failed"
        f=$(ls "$dir/${name}_"*"_$arch.deb" | sort | tail -n 1)
    fi
    printf '%s\n' "$f"
}
# real_payload DIR: a pi/4 images dir as a real build leaves it: Debian's arm64 kernel
# (uncompressed Image) and its Raspberry Pi DTBs, an lz4 initramfs holding busybox, and a
# 20 MiB incompressible blob in an xz squashfs (in rootfs_part/).
real_payload() {
    local dir=$1 k="$WORK/kpkg" b="$WORK/bbpkg" r="$WORK/initramfs" sq="$WORK/sqsrc" kpkg dtb
    if ! dpkg --print-foreign-architectures | grep -qx arm64 && [[ $(dpkg --print-architecture) != arm64 ]]; then
        ((IS_ROOT)) || die "the ratios section needs the arm64 dpkg architecture (dpkg --add-architecture arm64; apt-get update)"
        dpkg --add-architecture arm64 && apt-get update -qq >/dev/null
    fi
    kpkg=$(apt-cache depends linux-image-arm64:arm64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
    [[ -n $kpkg ]] || die "apt-cache names no kernel for linux-image-arm64:arm64"
    [[ $kpkg == *:* ]] || kpkg="$kpkg:arm64"
    rm -rf "$k" "$b" "$r" "$sq"
    dpkg-deb -x "$(real_deb "$kpkg")" "$k"
    dpkg-deb -x "$(real_deb busybox-static:arm64)" "$b"
    cp -a "$ROOT/fixtures/pi4/images" "$dir"
    zcat -f "$k"/boot/vmlinuz-* >"$dir/Image"
    for dtb in "$dir"/*.dtb; do
        local real; real=$(find "$k/usr/lib" -name "$(basename "$dtb")" | head -n 1)
        [[ -n $real ]] && cp "$real" "$dtb"
    done
    mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys"
    cp "$b/bin/busybox" "$r/bin/busybox"
    printf '#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\nexec /bin/busybox sh\n' >"$r/init"
    chmod 0755 "$r/init"
    (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet) >"$dir/rootfs.cpio"
    lz4 -q -l -9 -f "$dir/rootfs.cpio" "$dir/rootfs.cpio.lz4"
    mkdir -p "$sq"
    head -c $((20 * MIB)) /dev/urandom >"$sq/blob"
    mksquashfs "$sq" "$dir/rootfs_part/data.squashfs" -comp xz -noappend -all-root -no-xattrs \
        -quiet -no-progress >/dev/null
    rm -rf "$k" "$b" "$r" "$sq"
}

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# clock OUT CMD...: runs CMD (stdout/stderr to OUT.log), appends its wall seconds to OUT.times.
clock() {
    local out=$1 t0 t1; shift
    sync
    t0=$(now)
    "$@" >"$out.log" 2>&1 || { cat "$out.log" >&2; die "failed: $*"; }
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f\n", b - a}' >>"$out.times"
}
# warm FILE...: reads the files once, so that the next timed run finds them cached.
warm() { cat "$@" >/dev/null; }
# med OUT: the median of OUT.times.
med() { median "$1.times"; }

section_ratios() {
    echo
    echo "== ratios: pi/4 with a realistic payload, medians of $RATIO_REPS interleaved runs =="
    local images="$WORK/real-images" out="$WORK/ratios" plan cfg payload files r i size
    real_payload "$images"
    mkdir -p "$out"
    mapfile -t files < <(find "$images" -type f | LC_ALL=C sort)
    payload=$(cat "${files[@]}" | wc -c)
    echo "payload: $(mib "$payload") MiB in ${#files[@]} files (kernel $(mib "$(stat -c %s "$images/Image")") MiB, initramfs $(mib "$(stat -c %s "$images/rootfs.cpio.lz4")") MiB lz4, squashfs $(mib "$(stat -c %s "$images/rootfs_part/data.squashfs")") MiB xz)"
    size=1GiB
    plan="$WORK/ratios-plan.json"
    "$SF" plan --board "$BOARD" --images "$images" --size "$size" --json >"$plan"
    cfg="$WORK/ratios-genimage.cfg"
    IMAGES=$images gen_cfg "$plan" "$cfg" "$WORK/ratios-text"
    mkdir -p "$WORK/empty-root" "$WORK/input"

    local devs=() backs=() d
    if ((IS_ROOT)); then
        for i in 1 2 3 4; do
            backs+=("$WORK/card$i.bin")
            fallocate -l 1G "${backs[-1]}"
            d=$(losetup -f --show --direct-io=on "${backs[-1]}" 2>/dev/null || losetup -f --show "${backs[-1]}")
            devs+=("$d")
        done
        RATIO_LOOPS=("${devs[@]}")
    fi
    "$SF" build --quiet --board "$BOARD" --images "$images" --size "$size" --bmap -o "$out/flash.img"
    "$SF" build --quiet --board "$BOARD" --images "$images" --size "$size" -o "$out/fan.img.zst"

    for ((r = 1; r <= RATIO_REPS; r++)); do
        log "ratios: run $r/$RATIO_REPS"
        # The previous run's flashes dropped the page cache: every composing run below
        # starts with the payload cached (as right after a Buildroot build), not only the
        # ones that happen to follow another.
        warm "${files[@]}"
        rm -f "$out/b.img" "$out/b.img.manifest.json"
        clock "$out/build" "$SF" build --quiet --board "$BOARD" --images "$images" --size "$size" -o "$out/b.img"
        rm -rf "$out/gi"; mkdir -p "$out/gi/out"
        warm "${files[@]}"
        clock "$out/genimage" genimage --config "$cfg" --rootpath "$WORK/empty-root" \
            --tmppath "$out/gi/tmp" --inputpath "$WORK/input" --outputpath "$out/gi/out"
        rm -f "$out/copy.bin"
        warm "${files[@]}"
        clock "$out/copy" sh -c 'cat "$@" >"$0"' "$out/copy.bin" "${files[@]}"
        rm -f "$out/z.img.zst" "$out/z.img.zst.manifest.json"
        /usr/bin/time -f '%M' -o "$out/zst.rss.$r" \
            "$SF" build --quiet --board "$BOARD" --images "$images" --size "$size" -o "$out/z.img.zst" 2>/dev/null
        rm -f "$out/z.img.zst" "$out/z.img.zst.manifest.json"
        clock "$out/zst" "$SF" build --quiet --board "$BOARD" --images "$images" --size "$size" -o "$out/z.img.zst"
        rm -f "$out/p.img" "$out/p.img.zst" "$out/p.img.manifest.json"
        clock "$out/img+zstd" sh -c '"$1" build --quiet --board "$2" --images "$3" --size "$4" -o "$5" && zstd -q -T0 -3 "$5" -o "$5.zst"' \
            _ "$SF" "$BOARD" "$images" "$size" "$out/p.img"
        if ((IS_ROOT)); then
            drop_caches
            clock "$out/bmaptool" bmaptool -q copy --bmap "$out/flash.img.bmap" "$out/flash.img" "${devs[0]}"
            drop_caches
            clock "$out/flash" "$SF" flash "${devs[0]}" --image "$out/flash.img" --yes --quiet
            drop_caches
            clock "$out/one" "$SF" flash "${devs[0]}" --image "$out/fan.img.zst" --yes --quiet --no-verify
            drop_caches
            clock "$out/four" "$SF" flash "${devs[@]}" --image "$out/fan.img.zst" --yes --quiet --no-verify
        fi
    done
    for i in "${devs[@]}"; do losetup -d "$i" 2>/dev/null || true; done
    RATIO_LOOPS=()
    rm -f "${backs[@]}"

    local rss; rss=$(cat "$out"/zst.rss.* | sort -g | tail -n 1 | awk '{printf "%.1f", $1/1024}')
    printf '  %-48s %8s s\n' "build .img (skiff-flash)" "$(med "$out/build")" \
        "genimage (staging + mkfs.vfat/mcopy/mke2fs)" "$(med "$out/genimage")" \
        "copying the payload bytes once (cat)" "$(med "$out/copy")" \
        "build .img.zst (skiff-flash)" "$(med "$out/zst")" \
        "build .img, then zstd -T0 -3" "$(med "$out/img+zstd")"
    if ((IS_ROOT)); then
        printf '  %-48s %8s s\n' "bmaptool copy (bmap, no read-back)" "$(med "$out/bmaptool")" \
            "flash --image (bmap) with read-back verify" "$(med "$out/flash")" \
            "flash .img.zst to 1 card (--no-verify)" "$(med "$out/one")" \
            "flash .img.zst to 4 cards at once (--no-verify)" "$(med "$out/four")"
    fi
    local x
    echo "ratios (goal):"
    x=$(ratio "$(med "$out/genimage")" "$(med "$out/build")")
    printf "$RATIO_X" "genimage / build (>= 3)" "$x" "$(mark "$x" 3 ge)"
    x=$(ratio "$(med "$out/build")" "$(med "$out/copy")")
    printf "$RATIO_X" "build / payload copy (<= 1.5)" "$x" "$(mark "$x" 1.5 le)"
    x=$(ratio "$(med "$out/img+zstd")" "$(med "$out/zst")")
    printf "$RATIO_X" "(build + zstd) / build .img.zst (>= 1.5)" "$x" "$(mark "$x" 1.5 ge)"
    printf "$RATIO_M" "peak RSS of build .img.zst (<= 64)" "$rss" "$(mark "$rss" 64 le)"
    if ((IS_ROOT)); then
        x=$(ratio "$(med "$out/flash")" "$(med "$out/bmaptool")")
        printf "$RATIO_X" "flash with verify / bmaptool copy (<= 1.0)" "$x" "$(mark "$x" 1.0 le)"
        x=$(ratio "$(med "$out/four")" "$(med "$out/one")")
        printf "$RATIO_X" "4 cards / 1 card (<= 1.3)" "$x" "$(mark "$x" 1.3 le)"
    else
        echo "  (flash ratios need root: loop devices)"
    fi
}


# === section build: skiff-flash vs genimage ===================================================
section_build() {
    IMAGES=$(payload_dir "$PAYLOAD_MIB")
    local payload_actual fixture_size nfiles
    payload_actual=$(du -sb --apparent-size "$IMAGES" | cut -f1)
    fixture_size=$(du -sb --apparent-size "$ROOT/fixtures/pi4/images" | cut -f1)
    nfiles=$(find "$IMAGES" -type f | wc -l)
    log "images dir: $((payload_actual / MIB)) MiB in $nfiles files (fixture: $((fixture_size / 1024)) KiB)"

    mkdir -p "$WORK/empty-root" "$WORK/input"
    local free_kib size plan disk_size pre out r v cfg run gsize tool chk alloc rss
    free_kib=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
    log "free space on $(df -P "$WORK" | awk 'NR==2 {print $6}'): $((free_kib / 1024 / 1024)) GiB"
    local -A SKIP=()
    local notices=()
    for size in "${SIZES[@]}"; do
        plan="$WORK/plan-$size.json"
        "$SF" plan --board "$BOARD" --images "$IMAGES" --size "$size" --json >"$plan" \
            || die "skiff-flash plan --size $size failed"
        disk_size=$(jq -r .disk_size "$plan")

        # skiff-flash
        pre="$RES/skiff-flash-$size"
        out="$WORK/sf-$size.img"
        for ((r = 1; r <= REPS; r++)); do
            rm -f "$out"
            log "skiff-flash build --size $size (rep $r/$REPS)"
            if ! timed "$pre" "$SF" build --quiet --board "$BOARD" --images "$IMAGES" --size "$size" --output "$out"; then
                cat "$pre.err" >&2
                die "skiff-flash build --size $size failed"
            fi
            # Neither tool fsyncs its image; time an fsync right after, for a durable figure.
            /usr/bin/time -f '%e %M' -o "$pre.synctime" sync "$out"
            paste -d' ' <(tail -n 1 "$pre.times") "$pre.synctime" \
                | awk '{printf "%.2f %d\n", $1 + $3, ($2 > $4 ? $2 : $4)}' >>"$RES/skiff-flash+fsync-$size.times"
        done
        [[ -f $out && $(stat -c %s "$out") -eq $disk_size ]] || die "skiff-flash output $out missing or not $disk_size bytes"
        v=$(sgdisk -v "$out" 2>&1 || true)
        if grep -q "No problems found" <<<"$v"; then
            echo "ok" >"$pre.valid"
        else
            printf '%s\n' "$v" >&2
            die "sgdisk -v does not report 'No problems found' for the skiff-flash $size image"
        fi
        alloc_mib "$out" >"$pre.alloc"
        part_rows "$out" >"$pre.parts"
        rm -f "$out"

        # genimage
        pre="$RES/genimage-$size"
        if [[ $size == 16GiB ]] && ((free_kib < 20 * 1024 * 1024)); then
            SKIP[$size]=1
            notices+=("NOTICE: genimage $size skipped: less than 20 GiB free on the temp filesystem")
            log "${notices[-1]}"
            continue
        fi
        cfg="$WORK/genimage-$size.cfg"
        gen_cfg "$plan" "$cfg" "$WORK/text-$size"
        for ((r = 1; r <= REPS; r++)); do
            run="$WORK/gi-$size"
            rm -rf "$run"
            mkdir -p "$run/out"
            log "genimage $size (rep $r/$REPS)"
            if ! timed "$pre" genimage --config "$cfg" --rootpath "$WORK/empty-root" \
                --tmppath "$run/tmp" --inputpath "$WORK/input" --outputpath "$run/out"; then
                log "genimage stderr:"
                cat "$pre.err" >&2
                die "genimage $size failed (config: $cfg)"
            fi
            if [[ ! -f $run/out/disk.img ]]; then
                cat "$pre.err" >&2
                die "genimage $size exited 0 but produced no $run/out/disk.img"
            fi
            /usr/bin/time -f '%e %M' -o "$pre.synctime" sync "$run/out/disk.img"
            paste -d' ' <(tail -n 1 "$pre.times") "$pre.synctime" \
                | awk '{printf "%.2f %d\n", $1 + $3, ($2 > $4 ? $2 : $4)}' >>"$RES/genimage+fsync-$size.times"
        done
        gsize=$(stat -c %s "$run/out/disk.img")
        ((gsize == disk_size)) || notices+=("NOTICE: genimage $size image is $gsize bytes, plan says $disk_size")
        alloc_mib "$run/out/disk.img" >"$pre.alloc"
        part_rows "$run/out/disk.img" >"$pre.parts"
        if cmp -s "$pre.parts" "$RES/skiff-flash-$size.parts"; then
            echo "same" >"$pre.layout"
        else
            echo "DIFFERENT" >"$pre.layout"
            notices+=("NOTICE: genimage $size partition table differs from skiff-flash's:"
                      "  skiff-flash: $(tr '\n' ';' <"$RES/skiff-flash-$size.parts")"
                      "  genimage:    $(tr '\n' ';' <"$pre.parts")")
        fi
        rm -rf "$run"
    done

    # report
    echo
    echo "== build: skiff-flash vs genimage =="
    echo "board $BOARD, payload $PAYLOAD_MIB MiB ($((payload_actual / MIB)) MiB images dir, $nfiles files), $REPS reps, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, $(nproc) CPUs"
    echo "genimage: $(genimage --version 2>/dev/null | head -n 1); neither tool fsyncs its image (+fsync rows: sync IMAGE after each run)"
    echo
    printf '%-17s %-6s %8s %9s %9s %8s %10s  %s\n' tool size "payload" "best s" "median s" "RSS MiB" "alloc MiB" check
    for size in "${SIZES[@]}"; do
        for tool in skiff-flash skiff-flash+fsync genimage genimage+fsync; do
            pre="$RES/$tool-$size"
            if [[ ! -s $pre.times ]]; then
                printf '%-17s %-6s %8s %9s %9s %8s %10s  %s\n' "$tool" "$size" "$PAYLOAD_MIB" - - - - skipped
                continue
            fi
            case $tool in
                skiff-flash) chk="sgdisk -v ok" ;;
                genimage) chk="layout $(cat "$pre.layout")" ;;
                *) chk="${tool%+fsync} + fsync of its image" ;;
            esac
            alloc=$(cat "$pre.alloc" 2>/dev/null || echo -)
            printf '%-17s %-6s %8s %9s %9s %8s %10s  %s\n' "$tool" "$size" "$PAYLOAD_MIB" \
                "$(best "$pre.times")" "$(median "$pre.times")" "$(peak_mib "$pre.times")" "$alloc" "$chk"
        done
    done
    echo
    echo "ratios (best wall times):"
    for size in "${SIZES[@]}"; do
        if [[ -n ${SKIP[$size]:-} ]]; then
            printf '  %-44s %8s  %s\n' "genimage / skiff-flash time at $size" "n/a" "SKIP (genimage not run)"
            continue
        fi
        r=$(ratio "$(best "$RES/genimage-$size.times")" "$(best "$RES/skiff-flash-$size.times")")
        printf '  %-44s %7sx  %s (target >= %sx faster)\n' "genimage / skiff-flash time at $size" "$r" "$(mark "$r" "$TARGET_SPEEDUP" ge)" "$TARGET_SPEEDUP"
        r=$(ratio "$(best "$RES/genimage+fsync-$size.times")" "$(best "$RES/skiff-flash+fsync-$size.times")")
        printf '  %-44s %7sx  (info: both outputs fsync'"'"'ed)\n' "(genimage+fsync) / (skiff-flash+fsync) $size" "$r"
    done
    r=$(ratio "$(best "$RES/skiff-flash-16GiB.times")" "$(best "$RES/skiff-flash-1GiB.times")")
    printf '  %-44s %7sx  %s (target <= %sx)\n' "skiff-flash 16GiB / 1GiB time (scaling)" "$r" "$(mark "$r" "$TARGET_SCALING" le)" "$TARGET_SCALING"
    rss=$(peak_mib "$RES"/skiff-flash-1GiB.times "$RES"/skiff-flash-16GiB.times)
    printf '  %-44s %6s MiB  %s (target < %s MiB)\n' "skiff-flash peak RSS (all runs)" "$rss" "$(mark "$rss" "$TARGET_RSS_MIB" lt)" "$TARGET_RSS_MIB"
    if ((${#notices[@]})); then
        echo
        printf '%s\n' "${notices[@]}"
    fi
}

# === section flash: loop device =================================================================
section_flash() {
    echo
    echo "== flash: $FLASH_SIZE image with $FLASH_PAYLOAD_MIB MiB payload onto a $FLASH_SIZE loop device =="
    if ((!IS_ROOT)); then
        echo "SKIPPED: the flash section needs root (losetup, O_DIRECT writes to a loop device, drop_caches)"
        return
    fi
    local images img bmap ranges mapped disk_bytes backing dio n_zero zero_bytes r pre out notices=()
    images=$(payload_dir "$FLASH_PAYLOAD_MIB")
    img="$WORK/flash.img"
    bmap="$img.bmap"
    ranges="$WORK/flash.ranges"
    log "building $img (--size $FLASH_SIZE --bmap)"
    "$SF" build --quiet --board "$BOARD" --images "$images" --size "$FLASH_SIZE" --bmap --output "$img" \
        || die "skiff-flash build $img failed"
    [[ -f $bmap ]] || die "skiff-flash build --bmap wrote no $bmap"
    sgdisk_ok "$img" || die "sgdisk -v does not report 'No problems found' for $img"
    disk_bytes=$(stat -c %s "$img")
    mapped=$(bmap_mapped "$bmap")
    bmap_ranges "$bmap" >"$ranges"
    ((mapped > 0)) || die "no mapped blocks in $bmap"

    # Loop device on a backing file in the temp dir, direct I/O when supported.
    backing="$WORK/loop-backing.bin"
    fallocate -l "$disk_bytes" "$backing" 2>/dev/null || truncate -s "$disk_bytes" "$backing"
    if LOOPDEV=$(losetup -f --show --direct-io=on "$backing" 2>/dev/null); then
        :
    else
        LOOPDEV=$(losetup -f --show "$backing") || { echo "SKIPPED: losetup could not attach $backing"; LOOPDEV=""; return; }
        notices+=("NOTICE: losetup --direct-io=on failed; the loop device uses buffered I/O on its backing file")
    fi
    dio=$(losetup -n -O DIO -l "$LOOPDEV" | tr -d ' ')
    [[ $dio == 1 ]] || notices+=("NOTICE: $LOOPDEV has direct-io off (DIO=$dio); page cache may flatter every row")
    log "attached $LOOPDEV (direct-io $dio) on $backing; filling it once (untimed)"
    dd if=/dev/zero of="$LOOPDEV" bs=4M iflag=count_bytes count="$disk_bytes" oflag=direct conv=fsync status=none

    n_zero=$(((mapped + 4 * MIB - 1) / (4 * MIB)))
    zero_bytes=$((n_zero * 4 * MIB))
    # One timed run of a writer. The order rotates every rep so no writer always follows the
    # same one (the device state left by the previous writer matters: skiff-flash and
    # bmaptool write through the page cache, dd here with O_DIRECT).
    flash_run() {
        local pre="$RES/f-$1"
        case $1 in
            ddzero) must "$pre" "dd zero" timed_cold "$pre" \
                        dd if=/dev/zero of="$LOOPDEV" bs=4M count="$n_zero" oflag=direct conv=fsync ;;
            dd) must "$pre" "dd full image" timed_cold "$pre" \
                    dd if="$img" of="$LOOPDEV" bs=4M oflag=direct conv=fsync ;;
            bmaptool) must "$pre" "bmaptool copy" timed_cold "$pre" \
                          bmaptool copy --bmap "$bmap" "$img" "$LOOPDEV" ;;
            bmaptool-nv) must "$pre" "bmaptool copy --no-verify" timed_cold "$pre" \
                             bmaptool copy --no-verify --bmap "$bmap" "$img" "$LOOPDEV" ;;
            sf-nv) must "$pre" "skiff-flash flash --image --no-verify" timed_cold "$pre" \
                       "$SF" flash "$LOOPDEV" --image "$img" --bmap "$bmap" --yes --json --no-verify
                   sf_report "$pre" ;;
            sf-v) must "$pre" "skiff-flash flash --image" timed_cold "$pre" \
                      "$SF" flash "$LOOPDEV" --image "$img" --bmap "$bmap" --yes --json
                  sf_report "$pre"
                  grep '"event":"done"' "$pre.out" | tail -n 1 | jq -e '.report.verified == true' >/dev/null \
                      || die "skiff-flash flash (with verify) did not report verified: $(tail -n 1 "$pre.out")" ;;
            sf-board) must "$pre" "skiff-flash flash --board --no-verify" timed_cold "$pre" \
                          "$SF" flash "$LOOPDEV" --board "$BOARD" --images "$images" --yes --json --no-verify
                      sf_report "$pre" ;;
        esac
    }
    local writers=(ddzero bmaptool bmaptool-nv sf-nv sf-v sf-board) order k w
    for ((r = 1; r <= FLASH_REPS; r++)); do
        order=()
        ((r <= DD_FULL_REPS)) && order+=(dd)
        for ((k = 0; k < ${#writers[@]}; k++)); do
            order+=("${writers[((k + 2 * (r - 1)) % ${#writers[@]})]}")
        done
        log "flash rep $r/$FLASH_REPS on $LOOPDEV: ${order[*]}"
        for w in "${order[@]}"; do flash_run "$w"; done
    done

    # Checks (untimed): scrub the mapped ranges, write once more, compare with the image.
    local chk_img chk_board
    log "checking what skiff-flash wrote"
    zero_mapped "$LOOPDEV" "$ranges"
    "$SF" flash "$LOOPDEV" --image "$img" --yes --no-verify --quiet || die "skiff-flash flash --image (check run) failed"
    drop_caches
    if cmp -s <(extract_mapped "$img" "$ranges") <(extract_mapped "$LOOPDEV" "$ranges") && sgdisk_ok "$LOOPDEV"; then
        chk_img="device = image (mapped ranges), sgdisk -v ok"
    else
        chk_img="MISMATCH"
        notices+=("NOTICE: after skiff-flash flash --image the device's mapped ranges differ from the image or sgdisk -v fails")
    fi
    zero_mapped "$LOOPDEV" "$ranges"
    "$SF" flash "$LOOPDEV" --board "$BOARD" --images "$images" --yes --no-verify --quiet || die "skiff-flash flash --board (check run) failed"
    drop_caches
    if ! sgdisk_ok "$LOOPDEV"; then
        chk_board="sgdisk -v FAILED"
        notices+=("NOTICE: sgdisk -v fails on the device after skiff-flash flash --board")
    elif cmp -s <(extract_mapped "$img" "$ranges") <(extract_mapped "$LOOPDEV" "$ranges"); then
        chk_board="device = build image (mapped ranges), sgdisk -v ok"
    else
        chk_board="sgdisk -v ok; differs from build image"
        notices+=("NOTICE: skiff-flash flash --board wrote bytes that differ from 'skiff-flash build --size $FLASH_SIZE' in the mapped ranges")
    fi
    losetup -d "$LOOPDEV" || log "bench: could not detach $LOOPDEV"
    local dev=$LOOPDEV
    LOOPDEV=""
    rm -f "$backing"

    # report
    local sf_bytes board_bytes t_zero zero_speed sf_speed board_speed p rt rss
    sf_bytes=$(tail -n 1 "$RES/f-sf-nv.bytes")
    board_bytes=$(tail -n 1 "$RES/f-sf-board.bytes")
    echo "image: $(mib "$disk_bytes") MiB, mapped $(mib "$mapped") MiB in $(wc -l <"$ranges") ranges (bmap); device: $dev (direct-io $([[ $dio == 1 ]] && echo on || echo off)) on a file in $BENCH_TMP"
    echo "sync + drop_caches before every run; $FLASH_REPS reps, order rotated each rep (dd of the full image: $DD_FULL_REPS, first); MiB/s = MiB written / best s"
    echo
    row_head
    row "dd zero, $n_zero x 4 MiB (device write speed)" "$RES/f-ddzero" "$zero_bytes" "oflag=direct conv=fsync"
    row "dd full image" "$RES/f-dd" "$disk_bytes" "bs=4M oflag=direct conv=fsync"
    row "bmaptool copy" "$RES/f-bmaptool" "$mapped" "checks sha256 of every range read"
    row "bmaptool copy --no-verify" "$RES/f-bmaptool-nv" "$mapped" ""
    row "skiff-flash flash --image --no-verify" "$RES/f-sf-nv" "$sf_bytes" "$chk_img"
    row "skiff-flash flash --image (verify)" "$RES/f-sf-v" "$sf_bytes" "writes, then reads back and compares"
    row "skiff-flash flash --board --no-verify" "$RES/f-sf-board" "$board_bytes" "$chk_board"
    echo
    echo "ratios (best wall times):"
    t_zero=$(best "$RES/f-ddzero.times")
    zero_speed=$(mibps "$zero_bytes" "$t_zero")
    sf_speed=$(mibps "$sf_bytes" "$(best "$RES/f-sf-nv.times")")
    p=$(pct "$sf_speed" "$zero_speed")
    printf "$RATIO_P" "skiff-flash --image --no-verify MiB/s vs dd zero" "$p" \
        "$(mark "$p" "$TARGET_FLASH_PCT" ge) (target >= ${TARGET_FLASH_PCT}%; $sf_speed vs $zero_speed MiB/s)"
    board_speed=$(mibps "$board_bytes" "$(best "$RES/f-sf-board.times")")
    p=$(pct "$board_speed" "$zero_speed")
    printf "$RATIO_P" "skiff-flash --board --no-verify MiB/s vs dd zero" "$p" "(info; composes while writing)"
    if [[ -s $RES/f-dd.times ]]; then
        rt=$(ratio "$(best "$RES/f-dd.times")" "$(best "$RES/f-sf-nv.times")")
        printf "$RATIO_X" "dd full image / skiff-flash --image --no-verify" "$rt" \
            "$(mark "$rt" "$TARGET_FLASH_VS_DD" ge) (target >= ${TARGET_FLASH_VS_DD}x)"
    else
        printf '  %-52s %8s  %s\n' "dd full image / skiff-flash --image --no-verify" "n/a" "SKIP (DD_FULL_REPS=0)"
    fi
    rt=$(ratio "$(best "$RES/f-bmaptool.times")" "$(best "$RES/f-sf-nv.times")")
    printf "$RATIO_X" "bmaptool copy / skiff-flash --image --no-verify" "$rt" "(info: bmaptool checks sha256 of what it reads)"
    rt=$(ratio "$(best "$RES/f-bmaptool-nv.times")" "$(best "$RES/f-sf-nv.times")")
    printf "$RATIO_X" "bmaptool --no-verify / skiff-flash --no-verify" "$rt" "(info: neither checks)"
    rt=$(ratio "$(best "$RES/f-bmaptool.times")" "$(best "$RES/f-sf-v.times")")
    printf "$RATIO_X" "bmaptool copy / skiff-flash --image (verify)" "$rt" "(info: skiff-flash reads the device back)"
    rss=$(peak_mib "$RES/f-sf-nv.times" "$RES/f-sf-v.times" "$RES/f-sf-board.times")
    printf "$RATIO_M" "skiff-flash flash peak RSS (all runs)" "$rss" "$(mark "$rss" "$TARGET_RSS_MIB" lt) (target < $TARGET_RSS_MIB MiB)"
    if ((${#notices[@]})); then
        echo
        printf '%s\n' "${notices[@]}"
    fi
    rm -f "$img"   # keep the bmap (small); the zst section builds its own images
}

# === section zst: compressed output ============================================================
section_zst() {
    local images r pre zimg plain cli mapped notices=() same
    images=$(payload_dir "$FLASH_PAYLOAD_MIB")
    zimg="$WORK/z.img.zst"
    plain="$WORK/z.img"
    cli="$WORK/z.img.cli.zst"
    for ((r = 1; r <= ZST_REPS; r++)); do
        log "zst rep $r/$ZST_REPS"
        rm -f "$zimg" "$plain" "$cli"
        pre="$RES/z-direct"
        must "$pre" "skiff-flash build -o .img.zst" timed "$pre" \
            "$SF" build --quiet --board "$BOARD" --images "$images" --size "$FLASH_SIZE" --output "$zimg"
        pre="$RES/z-plain"
        must "$pre" "skiff-flash build -o .img" timed "$pre" \
            "$SF" build --quiet --board "$BOARD" --images "$images" --size "$FLASH_SIZE" --bmap --output "$plain"
        pre="$RES/z-cli"
        must "$pre" "zstd -T0 -3" timed "$pre" zstd -q -T0 -3 -f "$plain" -o "$cli"
        paste -d' ' <(tail -n 1 "$RES/z-plain.times") <(tail -n 1 "$RES/z-cli.times") \
            | awk '{printf "%.2f %d\n", $1 + $3, ($2 > $4 ? $2 : $4)}' >>"$RES/z-two.times"
    done
    mapped=$(bmap_mapped "$plain.bmap")
    stat -c %s "$zimg" >"$RES/z-direct.size"
    stat -c %s "$cli" >"$RES/z-cli.size"
    if cmp -s <(zstd -dc "$zimg") "$plain"; then
        same="decompresses to the .img's bytes"
    else
        same="DIFFERS from the .img"
        notices+=("NOTICE: the .img.zst does not decompress to the same bytes as the .img")
    fi

    # For the record: sizes from slower compressors on one image.
    local rimg rpayload rec="$WORK/record" tool f sz note
    mkdir -p "$rec"
    if [[ $RECORD_PAYLOAD_MIB == "$FLASH_PAYLOAD_MIB" && $RECORD_SIZE == "$FLASH_SIZE" ]]; then
        rimg="$plain"
        cp "$zimg" "$rec/sf.zst"
        cp "$cli" "$rec/zstd3.zst"
        rpayload=$images
    else
        rpayload=$(payload_dir "$RECORD_PAYLOAD_MIB")
        rimg="$rec/r.img"
        "$SF" build --quiet --board "$BOARD" --images "$rpayload" --size "$RECORD_SIZE" --bmap --output "$rimg" \
            || die "skiff-flash build $rimg failed"
        must "$RES/rec-sf" "skiff-flash build -o .img.zst (record)" timed "$RES/rec-sf" \
            "$SF" build --quiet --board "$BOARD" --images "$rpayload" --size "$RECORD_SIZE" --output "$rec/sf.img.zst"
        mv "$rec/sf.img.zst" "$rec/sf.zst"
        must "$RES/rec-zstd3" "zstd -3 (record)" timed "$RES/rec-zstd3" zstd -q -T0 -3 -f "$rimg" -o "$rec/zstd3.zst"
    fi
    rm -f "$zimg" "$cli"
    log "record: zstd -19 and xz -6 of $rimg (up to ${RECORD_TIMEOUT} s each)"
    timed "$RES/rec-zstd19" timeout "$RECORD_TIMEOUT" zstd -q -T0 -19 -f "$rimg" -o "$rec/zstd19.zst" || rm -f "$rec/zstd19.zst"
    if timed "$RES/rec-xz6" timeout "$RECORD_TIMEOUT" xz -T0 -6 -k -f "$rimg"; then
        mv "$rimg.xz" "$rec/xz6.xz"
    else
        rm -f "$rimg.xz"
    fi
    local rmapped; rmapped=$(bmap_mapped "$rimg.bmap")

    # report
    echo
    echo "== zst: skiff-flash build -o .img.zst vs build -o .img + zstd -T0 -3 =="
    echo "board $BOARD --size $FLASH_SIZE, payload $FLASH_PAYLOAD_MIB MiB (random, incompressible), mapped $(mib "$mapped") MiB, $ZST_REPS reps, page cache not dropped"
    echo
    row_head
    printf "$ROW" "skiff-flash build -o .img.zst (level 3)" "$(mib "$(cat "$RES/z-direct.size")")" "$(best "$RES/z-direct.times")" \
        "$(median "$RES/z-direct.times")" - "$(peak_mib "$RES/z-direct.times")" "$same; MiB = output size"
    printf "$ROW" "skiff-flash build -o .img" "$(mib "$mapped")" "$(best "$RES/z-plain.times")" \
        "$(median "$RES/z-plain.times")" - "$(peak_mib "$RES/z-plain.times")" "MiB = mapped bytes"
    printf "$ROW" "zstd -T0 -3 .img" "$(mib "$(cat "$RES/z-cli.size")")" "$(best "$RES/z-cli.times")" \
        "$(median "$RES/z-cli.times")" - "$(peak_mib "$RES/z-cli.times")" "MiB = output size"
    printf "$ROW" "build .img + zstd -T0 -3 (per-rep sum)" "$(mib "$(cat "$RES/z-cli.size")")" "$(best "$RES/z-two.times")" \
        "$(median "$RES/z-two.times")" - "$(peak_mib "$RES/z-two.times")" ""
    echo
    echo "ratios (best wall times):"
    r=$(ratio "$(best "$RES/z-two.times")" "$(best "$RES/z-direct.times")")
    printf "$RATIO_X" "(build .img + zstd -3) / build .img.zst" "$r" \
        "$(mark "$r" "$TARGET_ZST" ge) (target >= ${TARGET_ZST}x: direct .zst at least as fast)"
    printf "$RATIO_M" "skiff-flash build .img.zst peak RSS" "$(peak_mib "$RES/z-direct.times")" \
        "(info; zstd -T0 -3 CLI: $(peak_mib "$RES/z-cli.times") MiB)"
    echo
    echo "compressed sizes (record): $(mib "$(stat -c %s "$rimg")") MiB image, payload $( [[ $rimg == "$plain" ]] && echo "$FLASH_PAYLOAD_MIB" || echo "$RECORD_PAYLOAD_MIB") MiB, mapped $(mib "$rmapped") MiB"
    if [[ $rimg != "$plain" ]]; then
        echo "NOTE: smaller payload and image than above: zstd -19 and xz -6 of the $FLASH_SIZE image with $FLASH_PAYLOAD_MIB MiB take more than"
        echo "      3 min each on 2 cores (xz also spends ~20 s per GiB of zeros); RECORD_PAYLOAD_MIB=$FLASH_PAYLOAD_MIB RECORD_SIZE=$FLASH_SIZE uses that image"
    fi
    printf '  %-34s %14s %10s %10s %8s\n' compressor bytes MiB "% mapped" "time s"
    for tool in "skiff-flash .img.zst (zstd 3):sf.zst:rec-sf" "zstd -T0 -3:zstd3.zst:rec-zstd3" \
                "zstd -T0 -19:zstd19.zst:rec-zstd19" "xz -T0 -6:xz6.xz:rec-xz6"; do
        IFS=: read -r label f pre <<<"$tool"
        [[ $rimg == "$plain" && $pre == rec-sf ]] && pre=z-direct
        [[ $rimg == "$plain" && $pre == rec-zstd3 ]] && pre=z-cli
        if [[ -s $rec/$f && -s $RES/$pre.times ]]; then
            sz=$(stat -c %s "$rec/$f")
            printf '  %-34s %14s %10s %10s %8s\n' "$label" "$sz" "$(mib "$sz")" "$(pct "$sz" "$rmapped")" "$(best "$RES/$pre.times")"
        else
            printf '  %-34s %14s %10s %10s %8s\n' "$label" - - - "timed out (> ${RECORD_TIMEOUT} s) or failed"
        fi
    done
    if ((${#notices[@]})); then
        echo
        printf '%s\n' "${notices[@]}"
    fi
    rm -rf "$rec" "$plain" "$plain.bmap"
}

# === section verify: byte verification against sha256sum ======================================
# verify_available: `skiff-flash verify` exists (flash is the default command, so
# `skiff-flash verify --help` alone would print flash's help: check the command list).
verify_available() {
    "$SF" --help 2>/dev/null | grep -qE '^[[:space:]]+verify[[:space:]]' \
        && "$SF" verify --help 2>/dev/null | grep -q 'Usage: skiff-flash verify' \
        && "$SF" verify --help 2>/dev/null | grep -q -- '--manifest'
}

section_verify() {
    echo
    echo "== verify: skiff-flash verify (bytes, manifest) vs sha256sum, $FLASH_SIZE image with $VERIFY_PAYLOAD_MIB MiB payload =="
    if ! verify_available; then
        echo "SKIPPED: this skiff-flash has no 'verify' command with --manifest (section runs once it exists)"
        return
    fi
    local images img manifest ranges mapped disk_bytes nranges r pre notices=() detect off byte
    images=$(payload_dir "$VERIFY_PAYLOAD_MIB")
    img="$WORK/verify.img"
    manifest="$img.manifest.json"
    ranges="$WORK/verify.ranges"
    log "building $img (--size $FLASH_SIZE --bmap)"
    "$SF" build --quiet --board "$BOARD" --images "$images" --size "$FLASH_SIZE" --bmap --output "$img" \
        || die "skiff-flash build $img failed"
    if [[ ! -f $manifest ]]; then
        echo "SKIPPED: skiff-flash build wrote no $(basename "$manifest") beside the image"
        rm -f "$img" "$img.bmap"
        return
    fi
    disk_bytes=$(stat -c %s "$img")
    mapped=$(bmap_mapped "$img.bmap")
    bmap_ranges "$img.bmap" >"$ranges"
    nranges=$(wc -l <"$ranges")
    # The mapped-ranges reference: dd each range into one hasher (sha256sum, or any command).
    cat >"$WORK/hash-mapped.sh" <<'EOF'
#!/usr/bin/env bash
set -o pipefail
img=$1 ranges=$2; shift 2
while read -r off len; do
    dd if="$img" bs=4M iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none || exit 1
done <"$ranges" | "$@"
EOF
    chmod +x "$WORK/hash-mapped.sh"
    local HAVE_OPENSSL=0
    command -v openssl >/dev/null && HAVE_OPENSSL=1

    for ((r = 1; r <= VERIFY_REPS; r++)); do
        log "verify rep $r/$VERIFY_REPS"
        pre="$RES/v-sf"
        must "$pre" "skiff-flash verify" timed_cold "$pre" "$SF" verify "$img" --manifest "$manifest"
        pre="$RES/v-sha-mapped"
        must "$pre" "sha256sum of the mapped ranges" timed_cold "$pre" "$WORK/hash-mapped.sh" "$img" "$ranges" sha256sum
        if ((HAVE_OPENSSL)); then
            pre="$RES/v-ossl-mapped"
            must "$pre" "openssl sha256 of the mapped ranges" timed_cold "$pre" "$WORK/hash-mapped.sh" "$img" "$ranges" openssl dgst -sha256
        fi
        if ((r <= SHA_FULL_REPS)); then
            pre="$RES/v-sha-full"
            must "$pre" "sha256sum of the image" timed_cold "$pre" sha256sum "$img"
        fi
    done

    # Check (untimed): a flipped byte in the middle of the largest mapped range must fail.
    off=$(sort -k2,2n "$ranges" | tail -n 1 | awk '{printf "%.0f\n", $1 + int($2 / 2)}')
    byte=$(dd if="$img" bs=1 skip="$off" count=1 status=none | od -An -tu1 | tr -d ' ')
    # shellcheck disable=SC2059
    printf "$(printf '\\%03o' $(((byte ^ 255) & 255)))" | dd of="$img" bs=1 seek="$off" conv=notrunc status=none
    if "$SF" verify "$img" --manifest "$manifest" >"$RES/v-flip.out" 2>&1; then
        detect="NO (exit 0 with a flipped byte at offset $off)"
        notices+=("NOTICE: skiff-flash verify exited 0 on an image with a flipped byte at offset $off")
    else
        detect="yes"
    fi
    # shellcheck disable=SC2059
    printf "$(printf '\\%03o' "$byte")" | dd of="$img" bs=1 seek="$off" conv=notrunc status=none

    # report
    local sf_speed sha_speed full_t p rt
    echo "image: $(mib "$disk_bytes") MiB, mapped $(mib "$mapped") MiB in $nranges ranges; $(if ((IS_ROOT)); then echo "sync + drop_caches before every run"; else echo "caches NOT dropped (not root)"; fi); $VERIFY_REPS reps (whole-file sha256sum: $SHA_FULL_REPS)"
    echo "MiB/s = mapped MiB / best s (whole-file row: file MiB / best s)"
    echo
    row_head
    row "skiff-flash verify IMG --manifest M" "$RES/v-sf" "$mapped" "$(tail -n 1 "$RES/v-sf.out" | sed 's/^.*: //')"
    row "dd mapped ranges | sha256sum" "$RES/v-sha-mapped" "$mapped" "one dd per range"
    if ((HAVE_OPENSSL)); then
        row "dd mapped ranges | openssl sha256" "$RES/v-ossl-mapped" "$mapped" "info: openssl's SHA-256 (SHA-NI when the CPU has it)"
    fi
    row "sha256sum IMG (whole file)" "$RES/v-sha-full" "$disk_bytes" "reads every byte, holes included"
    echo
    echo "ratios (best wall times):"
    sf_speed=$(mibps "$mapped" "$(best "$RES/v-sf.times")")
    sha_speed=$(mibps "$mapped" "$(best "$RES/v-sha-mapped.times")")
    p=$(pct "$sf_speed" "$sha_speed")
    printf "$RATIO_P" "skiff-flash verify MiB/s vs sha256sum (mapped)" "$p" \
        "$(mark "$p" "$TARGET_VERIFY_PCT" ge) (target >= ${TARGET_VERIFY_PCT}%; $sf_speed vs $sha_speed MiB/s)"
    if [[ -s $RES/v-sha-full.times ]]; then
        full_t=$(best "$RES/v-sha-full.times")
        rt=$(ratio "$full_t" "$(best "$RES/v-sf.times")")
        printf "$RATIO_X" "sha256sum whole file / skiff-flash verify time" "$rt" \
            "(info; whole file hashed at $(mibps "$disk_bytes" "$full_t") MiB/s)"
    fi
    if ((HAVE_OPENSSL)); then
        p=$(pct "$sf_speed" "$(mibps "$mapped" "$(best "$RES/v-ossl-mapped.times")")")
        printf "$RATIO_P" "skiff-flash verify MiB/s vs openssl sha256 (mapped)" "$p" "(info)"
    fi
    printf "$RATIO_M" "skiff-flash verify peak RSS" "$(peak_mib "$RES/v-sf.times")" "(info)"
    printf '  %-52s %8s  %s\n' "skiff-flash verify fails on a flipped byte" "$detect" "$([[ $detect == yes ]] && echo PASS || echo FAIL)"
    if ((${#notices[@]})); then
        echo
        printf '%s\n' "${notices[@]}"
    fi
    rm -f "$img" "$img.bmap" "$manifest"
}

# === section upgrade: in place, against a full reflash ==============================================
section_upgrade() {
    echo
    echo "== upgrade: $FLASH_SIZE loop device flashed with build A ($FLASH_PAYLOAD_MIB MiB payload), upgraded to build B (new kernel) =="
    if ((!IS_ROOT)); then
        echo "SKIPPED: the upgrade section needs root (losetup)"
        return
    fi
    local a b disk_bytes backing dio pre rep kernel_b persist_before persist_after check notices=()
    a=$(payload_dir "$FLASH_PAYLOAD_MIB")
    b="$WORK/images-upgrade-b"
    rm -rf "$b"
    cp -a "$a" "$b"
    kernel_b=$(stat -c %s "$a/Image")
    head -c 64 "$a/Image" >"$b/Image"
    head -c $((kernel_b - 64)) /dev/urandom >>"$b/Image"
    disk_bytes=$("$SF" plan --board "$BOARD" --images "$a" --size "$FLASH_SIZE" --json | jq -r .disk_size)
    backing="$WORK/upgrade-backing.bin"
    fallocate -l "$disk_bytes" "$backing" 2>/dev/null || truncate -s "$disk_bytes" "$backing"
    if ! LOOPDEV=$(losetup -f --show --direct-io=on "$backing" 2>/dev/null); then
        LOOPDEV=$(losetup -f --show "$backing") || { echo "SKIPPED: losetup could not attach $backing"; LOOPDEV=""; return; }
    fi
    dio=$(losetup -n -O DIO -l "$LOOPDEV" | tr -d ' ')
    [[ $dio == 1 ]] || notices+=("NOTICE: $LOOPDEV has direct-io off; page cache may flatter every row")
    persist_hash() {
        local start size
        read -r start size < <(sfdisk --json "$LOOPDEV" | jq -r '.partitiontable.partitions[2] | "\(.start) \(.size)"')
        dd if="$LOOPDEV" bs=512 skip="$start" count="$size" status=none | sha256sum | cut -d' ' -f1
    }
    for ((rep = 0; rep < FLASH_REPS; rep++)); do
        "$SF" flash "$LOOPDEV" --board "$BOARD" --images "$a" --yes --no-verify --quiet >/dev/null \
            || die "flashing build A failed"
        persist_before=$(persist_hash)
        pre="$RES/u-upgrade"
        must "$pre" "skiff-flash upgrade" timed_cold "$pre" \
            "$SF" upgrade "$LOOPDEV" --board "$BOARD" --images "$b" --yes --json
        jq -r .bytes_written "$pre.out" >>"$pre.bytes"
        persist_after=$(persist_hash)
        [[ $persist_before == "$persist_after" ]] || die "the upgrade changed persist's bytes"
        pre="$RES/u-noop"
        must "$pre" "skiff-flash upgrade (nothing to do)" timed_cold "$pre" \
            "$SF" upgrade "$LOOPDEV" --board "$BOARD" --images "$b" --yes --json
        jq -r .bytes_written "$pre.out" >>"$pre.bytes"
        if ((rep == 0)); then
            if "$SF" verify "$LOOPDEV" --board "$BOARD" --images "$b" >/dev/null 2>&1; then
                check="persist bytes unchanged, verify --board B ok"
            else
                check="verify --board B FAILED"
                notices+=("NOTICE: verify --board fails after the upgrade")
            fi
        fi
        pre="$RES/u-flash"
        must "$pre" "skiff-flash flash --board" timed_cold "$pre" \
            "$SF" flash "$LOOPDEV" --board "$BOARD" --images "$b" --yes --no-verify --json
        sf_report "$pre"
    done
    losetup -d "$LOOPDEV" || log "bench: could not detach $LOOPDEV"
    LOOPDEV=""
    rm -f "$backing"
    rm -rf "$b"

    echo "device: $(mib "$disk_bytes") MiB loop device (direct-io $([[ $dio == 1 ]] && echo on || echo off)); B differs from A in its $(mib "$kernel_b") MiB kernel; $FLASH_REPS reps"
    echo
    row_head
    row "skiff-flash upgrade A -> B" "$RES/u-upgrade" "$(tail -n 1 "$RES/u-upgrade.bytes")" "$check"
    row "skiff-flash upgrade B -> B (nothing to do)" "$RES/u-noop" "$(tail -n 1 "$RES/u-noop.bytes")" "reads and compares only"
    row "skiff-flash flash --board B (full reflash)" "$RES/u-flash" "$(tail -n 1 "$RES/u-flash.bytes")" "erases persist"
    echo
    echo "ratios (best wall times):"
    local rt
    rt=$(ratio "$(best "$RES/u-flash.times")" "$(best "$RES/u-upgrade.times")")
    printf "$RATIO_X" "full reflash / upgrade time" "$rt" "$(mark "$rt" 2 ge) (target >= 2x; the floor is reading both sides to compare)"
    rt=$(ratio "$(tail -n 1 "$RES/u-upgrade.bytes")" "$kernel_b")
    printf "$RATIO_X" "upgrade bytes written / changed bytes" "$rt" "$(mark "$rt" 1.05 le) (target <= 1.05x: only the new kernel, directories and FAT sectors)"
    rt=$(ratio "$(tail -n 1 "$RES/u-flash.bytes")" "$(tail -n 1 "$RES/u-upgrade.bytes")")
    printf "$RATIO_X" "bytes written: full reflash / upgrade" "$rt" "(info)"
    printf "$RATIO_M" "skiff-flash upgrade peak RSS" "$(peak_mib "$RES/u-upgrade.times")" "(info)"
    if ((${#notices[@]})); then
        echo
        printf '%s\n' "${notices[@]}"
    fi
}

# === run ===========================================================================================
for s in "${SECTIONS[@]}"; do
    t0=$SECONDS
    "section_$s"
    SECT_SECS[$s]=$((SECONDS - t0))
done
echo
summary=""
for s in "${SECTIONS[@]}"; do summary+="$s ${SECT_SECS[$s]} s, "; done
echo "wall time: ${summary}total $((SECONDS - T_START)) s (cargo build ${CARGO_SECS} s; payload generation included)"
if [[ -n $BUILD_NOTE ]]; then echo "$BUILD_NOTE"; fi
