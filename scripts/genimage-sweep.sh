#!/usr/bin/env bash
# Builds every board/**/genimage*.cfg of a Buildroot tree with synthetic inputs and counts
# how many build. Each config gets a fresh images directory; every input file the build
# asks for (`input file `X` not found`, missing artifacts) is created as 4 KiB of random
# bytes (a directory when it names a known directory such as `extlinux`), cut to the size
# of its slot when the build says the slot is smaller, then the build is retried. Template
# variables a post-image script would fill (`pass --define NAME=VALUE`) get a made-up UUID
# through --define. Prints one line per config (OK, or the error) and the totals.
#
#   scripts/genimage-sweep.sh BUILDROOT_DIR [SKIFF_FLASH_BINARY]
set -uo pipefail
br=$(realpath "${1:?usage: $0 BUILDROOT_DIR [SKIFF_FLASH_BINARY]}")
bin=$(realpath -m "${2:-$(dirname "$0")/../target/debug/skiff-flash}")
[ -x "$bin" ] || { echo "no skiff-flash binary at $bin (cargo build first)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ok=0 total=0
declare -A why
while IFS= read -r cfg; do
  total=$((total + 1))
  rm -rf "$work/images" "$work/out.img"
  mkdir -p "$work/images"
  err=
  defines=()
  for _ in $(seq 1 40); do
    err=$(cd "$(dirname "$cfg")" && "$bin" -q build --genimage "$cfg" "${defines[@]}" \
      --images "$work/images" -o "$work/out.img" 2>&1 >/dev/null) && { err=; break; }
    name=$(printf '%s\n' "$err" | sed -n 's/.*pass --define \([A-Za-z0-9_]*\)=VALUE.*/\1/p')
    if [ -n "$name" ]; then
      defines+=(--define "$name=$(cat /proc/sys/kernel/random/uuid)")
      continue
    fi
    small=$(printf '%s\n' "$err" | sed -n 's/.*size (\([0-9]*\)) too small for \([^ ]*\) .*/\1 \2/p')
    if [ -n "$small" ] && [ -f "$work/images/${small#* }" ]; then
      truncate -s "${small%% *}" "$work/images/${small#* }"
      continue
    fi
    missing=$(printf '%s\n' "$err" | sed -n \
      -e 's/.*input file `\([^`]*\)` not found.*/\1/p' \
      -e 's/.*artifact `\{0,1\}\([^` ]*\)`\{0,1\} not found.*/\1/p' \
      -e 's/.*missing artifact `\{0,1\}\([^` ]*\)`\{0,1\}.*/\1/p' | head -n1)
    [ -n "$missing" ] || break
    path="$work/images/$missing"
    [ -e "$path" ] && break
    mkdir -p "$(dirname "$path")"
    case "$missing" in
      */|extlinux|overlays|boot|efi-part|rootfs_overlay) mkdir -p "$path"; echo x >"$path/placeholder.txt" ;;
      *) head -c 4096 /dev/urandom >"$path" ;;
    esac
  done
  rel=${cfg#"$br"/}
  if [ -z "$err" ]; then
    ok=$((ok + 1)); echo "OK    $rel${defines[*]:+ (${defines[*]})}"
  else
    line=$(printf '%s\n' "$err" | tail -n1)
    echo "FAIL  $rel: $line"
  fi
done < <(find "$br/board" -name 'genimage*.cfg' | sort)
echo "built $ok of $total configs"
