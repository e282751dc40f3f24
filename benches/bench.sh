#!/usr/bin/env bash
# Benchmark: skiff-flash vs genimage composing the same Raspberry Pi 4 disk image.
#
# This is a benchmark, not a test. In one run it:
#   1. builds the release binary (`cargo build --release`, a no-op when up to date);
#   2. generates a payload images directory in a temp dir: a copy of
#      fixtures/pi4/images plus PAYLOAD_MIB MiB of pseudo-random data
#        ~20% a larger `Image` kernel (the fixture's arm64 header, size patched),
#        ~40% a real `rootfs.squashfs` (mksquashfs -comp lz4 of random files),
#        ~15% files in rootfs_part/, ~25% files in persist_part/ (small and large);
#      generation time is not measured;
#   3. times REPS runs (wall seconds and max RSS via `/usr/bin/time -f '%e %M'`) of
#        a. `skiff-flash build --board pi/4` with --size 1GiB and --size 16GiB;
#        b. genimage building the same layout from the same inputs: a GPT hdimage with
#           a FAT32 BOOT partition (the file list is taken from `skiff-flash plan --json`),
#           ext4 rootfs from rootfs_part/ and ext4 persist from persist_part/
#           (use-mke2fs), every offset and size copied from the skiff-flash plan for the
#           same --size, persist filling the rest of the disk (autoresize);
#      and prints one line per tool and size (best and median wall time, peak RSS of the
#      process tree, disk space the image occupies). skiff-flash fsyncs its image before
#      renaming it into place and genimage does not, so an extra "genimage+fsync" row adds
#      the time of `sync IMAGE` run right after each genimage run (information only);
#   4. prints ratios and PASS/FAIL against the targets:
#        skiff-flash >= 3x faster than genimage; 16 GiB within 1.5x of 1 GiB;
#        skiff-flash peak RSS < 64 MiB;
#   5. checks every skiff-flash output with `sgdisk -v` ("No problems found") and that
#      the genimage image has the same partition starts/ends, so a broken or different
#      image cannot produce a flattering number;
#   6. removes its temp dir on exit.
#
# Usage:  benches/bench.sh              (from any directory)
# Environment:
#   PAYLOAD_MIB        payload added to the fixture images, MiB (default 100)
#   REPS               repetitions per measurement (default 3)
#   SOURCE_DATE_EPOCH  timestamp for both tools (default 1700000000)
#   BENCH_TMP          parent of the temp dir (default /tmp)
#   BENCH_KEEP         if set, keep the temp dir (inputs, plans, genimage configs)
#
# Needs: cargo, jq, mksquashfs (squashfs-tools), genimage, mkfs.vfat (dosfstools),
# mcopy/mmd (mtools), mke2fs/e2fsck (e2fsprogs), sgdisk (gdisk), GNU time.
# Missing Debian packages are installed with apt-get when running as root.
# Images are sparse files; the genimage 16 GiB variant is skipped (with a notice)
# when the temp filesystem has less than 20 GiB free. `sync` (untimed) runs before every
# timed run so one run's pending writeback does not land in the next one's time.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PAYLOAD_MIB=${PAYLOAD_MIB:-100}
REPS=${REPS:-3}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
BENCH_TMP=${BENCH_TMP:-/tmp}
BOARD=pi/4
SIZES=(1GiB 16GiB)
TARGET_SPEEDUP=3
TARGET_SCALING=1.5
TARGET_RSS_MIB=64

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 1; }

[[ $PAYLOAD_MIB =~ ^[0-9]+$ && $PAYLOAD_MIB -ge 1 ]] || die "PAYLOAD_MIB must be a positive integer"
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || die "REPS must be a positive integer"

# --- tools -----------------------------------------------------------------------------
# command -> Debian package
declare -A PKG=(
    [/usr/bin/time]=time [jq]=jq [mksquashfs]=squashfs-tools [genimage]=genimage
    [mkfs.vfat]=dosfstools [mcopy]=mtools [mmd]=mtools [mke2fs]=e2fsprogs
    [e2fsck]=e2fsprogs [sgdisk]=gdisk
)
missing=()
for cmd in "${!PKG[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    else
        die "missing packages: ${missing[*]} (install them, or run as root to apt-get them)"
    fi
fi
command -v cargo >/dev/null || die "cargo not found"

# --- temp dir ----------------------------------------------------------------------------
WORK=$(mktemp -d "$BENCH_TMP/skiff-flash-bench.XXXXXX")
cleanup() { if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. release binary -------------------------------------------------------------------
log "building release binary..."
SF="$ROOT/target/release/skiff-flash"
BUILD_NOTE=""
if ! cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"; then
    # The tree may be mid-edit; an existing binary still gives a useful measurement.
    [[ -x $SF ]] || die "cargo build --release failed and there is no $SF"
    BUILD_NOTE="WARNING: cargo build --release failed; measured the existing $SF (built $(date -r "$SF" '+%F %T'))"
    log "$BUILD_NOTE"
fi
[[ -x $SF ]] || die "$SF not found after cargo build"

# --- 2. payload images dir ---------------------------------------------------------------
MIB=1048576
total=$((PAYLOAD_MIB * MIB))
kernel_b=$((total * 20 / 100))
squash_b=$((total * 40 / 100))
rootfs_b=$((total * 15 / 100))
persist_b=$((total - kernel_b - squash_b - rootfs_b))

IMAGES="$WORK/images"
log "generating ${PAYLOAD_MIB} MiB payload in $IMAGES..."
cp -a "$ROOT/fixtures/pi4/images" "$IMAGES"

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

# Kernel: keep the fixture's 64-byte arm64 header, random body, image_size = file size.
kernel_b=$((kernel_b < 4096 ? 4096 : kernel_b))
head -c 64 "$ROOT/fixtures/pi4/images/Image" >"$IMAGES/Image"
head -c $((kernel_b - 64)) /dev/urandom >>"$IMAGES/Image"
# shellcheck disable=SC2059
printf "$(le64 "$kernel_b")" | dd of="$IMAGES/Image" bs=1 seek=16 conv=notrunc status=none

# Squashfs root: a small tree plus random files (incompressible, so size ~= payload).
sq="$WORK/squashfs-src"
mkdir -p "$sq/etc" "$sq/usr/bin"
printf 'NAME=SkiffOS\nID=skiff\nVERSION_ID=bench\n' >"$sq/etc/os-release"
printf '#!/bin/sh\necho hello\n' >"$sq/usr/bin/hello"
chmod 0755 "$sq/usr/bin/hello"
rand_split "$squash_b" "$sq/usr/lib" lib 4M
rm -f "$IMAGES/rootfs.squashfs"
mksquashfs "$sq" "$IMAGES/rootfs.squashfs" -comp lz4 -noappend -all-root -no-xattrs \
    -quiet -no-progress >/dev/null   # timestamps from SOURCE_DATE_EPOCH
rm -rf "$sq"

# rootfs_part: a few large files. persist_part: a quarter as 16 KiB files in 16 dirs,
# the rest as large files.
rand_split "$rootfs_b" "$IMAGES/rootfs_part/payload" blob 4M
small_b=$((persist_b / 4))
for ((d = 0; d < 16; d++)); do
    rand_split $((small_b / 16)) "$IMAGES/persist_part/small/d$(printf %02d "$d")" f 16K
done
rand_split $((persist_b - small_b / 16 * 16)) "$IMAGES/persist_part/large" blob 4M

payload_actual=$(du -sb --apparent-size "$IMAGES" | cut -f1)
fixture_size=$(du -sb --apparent-size "$ROOT/fixtures/pi4/images" | cut -f1)
nfiles=$(find "$IMAGES" -type f | wc -l)
log "images dir: $((payload_actual / MIB)) MiB in $nfiles files (fixture: $((fixture_size / 1024)) KiB)"

# --- helpers -----------------------------------------------------------------------------
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
best()   { awk '{print $1}' "$1" | sort -g | head -n 1; }
median() { awk '{print $1}' "$1" | sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }
peak_mib() { awk '$2>m{m=$2} END {printf "%.1f\n", m/1024}' "$1"; }
alloc_mib() { du -k "$1" | awk '{printf "%.0f\n", $1/1024}'; }
# ratio A B: A/B with two decimals; B of 0 (below time's 10 ms resolution) counts as 0.01.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b <= 0) b = 0.01; printf "%.2f\n", a/b}'; }
mark() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN {ok = (op == "ge") ? v >= t : (op == "le") ? v <= t : v < t; print ok ? "PASS" : "FAIL"}'; }
# Partition rows (number, start sector, end sector) as printed by sgdisk -p.
part_rows() { sgdisk -p "$1" 2>/dev/null | awk '/^Number/ {t=1; next} t && NF >= 3 {print $1, $2, $3}'; }
# cfg_str S: S as a double-quoted libconfuse string.
cfg_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }

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

# --- 3. measurements ---------------------------------------------------------------------
RES="$WORK/results"
mkdir -p "$RES" "$WORK/empty-root" "$WORK/input"
free_kib=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
log "free space on $(df -P "$WORK" | awk 'NR==2 {print $6}'): $((free_kib / 1024 / 1024)) GiB"
declare -A SKIP=()
notices=()
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
        # skiff-flash fsyncs its output before renaming it into place; genimage does not.
        # Time an fsync of genimage's image right after it, for a durable-vs-durable figure.
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

# --- report --------------------------------------------------------------------------------
echo
echo "skiff-flash benchmark: board $BOARD, payload $PAYLOAD_MIB MiB ($((payload_actual / MIB)) MiB images dir, $nfiles files), $REPS reps, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, $(nproc) CPUs"
echo "skiff-flash: $("$SF" --version 2>/dev/null || echo '?'); genimage: $(genimage --version 2>/dev/null | head -n 1)"
echo
printf '%-14s %-6s %8s %9s %9s %8s %10s  %s\n' tool size "payload" "best s" "median s" "RSS MiB" "alloc MiB" check
for size in "${SIZES[@]}"; do
    for tool in skiff-flash genimage genimage+fsync; do
        pre="$RES/$tool-$size"
        if [[ ! -s $pre.times ]]; then
            printf '%-14s %-6s %8s %9s %9s %8s %10s  %s\n' "$tool" "$size" "$PAYLOAD_MIB" - - - - skipped
            continue
        fi
        case $tool in
            skiff-flash) chk="sgdisk -v ok" ;;
            genimage) chk="layout $(cat "$pre.layout")" ;;
            *) chk="genimage + fsync of its image" ;;
        esac
        alloc=$(cat "$pre.alloc" 2>/dev/null || echo -)
        printf '%-14s %-6s %8s %9s %9s %8s %10s  %s\n' "$tool" "$size" "$PAYLOAD_MIB" \
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
    r=$(ratio "$(best "$RES/genimage+fsync-$size.times")" "$(best "$RES/skiff-flash-$size.times")")
    printf '  %-44s %7sx  (info: both outputs fsync'"'"'ed)\n' "(genimage+fsync) / skiff-flash at $size" "$r"
done
r=$(ratio "$(best "$RES/skiff-flash-16GiB.times")" "$(best "$RES/skiff-flash-1GiB.times")")
printf '  %-44s %7sx  %s (target <= %sx)\n' "skiff-flash 16GiB / 1GiB time (scaling)" "$r" "$(mark "$r" "$TARGET_SCALING" le)" "$TARGET_SCALING"
rss=$(cat "$RES"/skiff-flash-*.times | awk '$2>m{m=$2} END {printf "%.1f\n", m/1024}')
printf '  %-44s %6s MiB  %s (target < %s MiB)\n' "skiff-flash peak RSS (all runs)" "$rss" "$(mark "$rss" "$TARGET_RSS_MIB" lt)" "$TARGET_RSS_MIB"
[[ -z $BUILD_NOTE ]] || notices+=("$BUILD_NOTE")
if ((${#notices[@]})); then
    echo
    printf '%s\n' "${notices[@]}"
fi
