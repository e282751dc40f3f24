#!/usr/bin/env python3
"""Regenerates fuzz/seeds/<target>/: small, valid starting inputs for every fuzz target.

Some come from a real Raspberry Pi 4 image built from fixtures/pi4 (its partition table,
the head of its boot partition, its bmap and manifest), some are built here by hand so a
whole disk fits in a few KiB: FAT32 volumes with long names, subdirectories and
multi-cluster files; MBR, GPT, hybrid and backup-only disks holding them; boot.scr files
from mkimage.

Usage: python3 fuzz/make-seeds.py   (from the repository root or anywhere; needs cargo,
mkimage from u-boot-tools, python3 >= 3.8). Every seed stays below 64 KiB.
"""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
IMAGES = ROOT / "fixtures" / "pi4" / "images"
MAX = 64 * 1024
SECTOR = 512


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


# --- FAT32 by hand -------------------------------------------------------------------


def short_entry(name83, attr, cluster, size, case=0):
    assert len(name83) == 11
    return (
        name83
        + bytes([attr, case, 0])
        + struct.pack("<HHHHHHHI", 0, 0x5B79, 0x5B79, cluster >> 16, 0, 0x5B79, cluster & 0xFFFF, size)
    )


def lfn_entries(name, name83):
    s = 0
    for b in name83:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    units = list(name.encode("utf-16-le"))
    units = [units[i] | units[i + 1] << 8 for i in range(0, len(units), 2)]
    if len(units) % 13:
        units += [0] + [0xFFFF] * (12 - len(units) % 13)
    parts = [units[i : i + 13] for i in range(0, len(units), 13)]
    out = []
    for n, p in reversed(list(enumerate(parts, 1))):
        seq = n | (0x40 if n == len(parts) else 0)
        e = bytearray(32)
        e[0] = seq
        e[11] = 0x0F
        e[13] = s
        for j, u in enumerate(p):
            at = 1 + 2 * j if j < 5 else 14 + 2 * (j - 5) if j < 11 else 28 + 2 * (j - 11)
            e[at : at + 2] = struct.pack("<H", u)
        out.append(bytes(e))
    return out


def to83(name, taken):
    """Short name, case flags (0x08 lower base, 0x10 lower extension) and whether the
    name needs long-name entries (it gets a ~N short name then)."""
    base, dot, ext = name.rpartition(".")
    if not dot:
        base, ext = name, ""
    plain = lambda s, n: len(s) <= n and all(c.isascii() and c.isalnum() for c in s)
    if base and plain(base, 8) and plain(ext, 3):
        if base == base.upper() and ext == ext.upper():
            return (base.ljust(8) + ext.ljust(3)).encode(), 0, False
        if base == base.lower() and ext == ext.lower():
            case = (0x08 if base != base.upper() else 0) | (0x10 if ext != ext.upper() else 0)
            return (base.upper().ljust(8) + ext.upper().ljust(3)).encode(), case, False
    clean = lambda s: "".join(c for c in s.upper() if c.isascii() and c.isalnum())
    n = 1
    while True:
        short = (clean(base)[:6] + f"~{n}").ljust(8) + clean(ext)[:3].ljust(3)
        if short not in taken:
            taken.add(short)
            return short.encode(), 0, True
        n += 1


def fat32(tree, label=b"BOOT", sector=512, spc=1, reserved=4, nfats=2, clusters=24, volid=0x3B9C80AE, boot=None):
    """tree: {name: bytes | dict}. Returns the volume's bytes."""
    cb = sector * spc
    fatsz = -(-(clusters + 2) * 4 // sector)
    data_start = reserved + nfats * fatsz
    total = data_start + clusters * spc
    fat = [0x0FFFFFF8, 0x0FFFFFFF]
    data = {}

    def alloc(nbytes):
        n = max(1, -(-nbytes // cb))
        first = len(fat)
        for i in range(n):
            fat.append(first + i + 1 if i + 1 < n else 0x0FFFFFFF)
        assert len(fat) <= clusters + 2, "volume too small"
        return first, n

    def put(first, content):
        data[first] = content

    def write_dir(node, me, parent):
        taken = set()
        ents = []
        if me != 2:
            ents.append(short_entry(b".          ", 0x10, me, 0))
            ents.append(short_entry(b"..         ", 0x10, 0 if parent == 2 else parent, 0))
        else:
            ents.append(short_entry(label.ljust(11), 0x08, 0, 0))
            ents.append(b"\xe5" + short_entry(b"OLD     TXT", 0x20, 0, 0)[1:])
        children = []
        for name, v in node.items():
            short, case, long_ = to83(name, taken)
            if isinstance(v, dict):
                c, _ = alloc(cb)  # placeholder: directories hold few entries
                children.append((v, c))
                attr, size = 0x10, 0
            else:
                c = alloc(len(v))[0] if v else 0
                if v:
                    put(c, v)
                attr, size = 0x20, len(v)
            if long_:
                ents += lfn_entries(name, short)
            ents.append(short_entry(short, attr, c, size, case))
        return ents, children

    def build(node, me, parent):
        ents, children = write_dir(node, me, parent)
        raw = b"".join(ents)
        # grow the directory's chain if its entries need more than one cluster
        extra = -(-len(raw) // cb) - 1
        if extra > 0:
            last = me
            for _ in range(extra):
                nxt = len(fat)
                fat.append(0x0FFFFFFF)
                fat[last] = nxt
                last = nxt
        put(me, raw)
        for child, c in children:
            build(child, c, me)

    root, _ = alloc(cb)
    build(tree, root, root)

    img = bytearray(total * sector)
    bs = bytearray(boot[:512]) if boot else bytearray(512)
    if not boot:
        bs[0:3] = b"\xeb\x58\x90"
        bs[3:11] = b"MSWIN4.1"
        bs[64] = 0x80
        bs[66] = 0x29
        bs[82:90] = b"FAT32   "
    struct.pack_into("<HBHBHHBHHHII", bs, 11, sector, spc, reserved, nfats, 0, 0, 0xF8, 0, 63, 255, 0, total)
    struct.pack_into("<IHHIHH", bs, 36, fatsz, 0, 0, root, 1 if reserved > 1 else 0xFFFF, 0)
    struct.pack_into("<I", bs, 67, volid)
    bs[71:82] = label.ljust(11)
    bs[510:512] = b"\x55\xaa"
    img[0:512] = bs
    fsinfo = bytearray(512)
    struct.pack_into("<I", fsinfo, 0, 0x41615252)
    struct.pack_into("<II", fsinfo, 484, 0x61417272, clusters + 2 - len(fat))
    struct.pack_into("<I", fsinfo, 492, len(fat))
    fsinfo[510:512] = b"\x55\xaa"
    if reserved > 1:
        img[sector : sector + 512] = fsinfo
    table = b"".join(struct.pack("<I", v) for v in fat)
    for i in range(nfats):
        at = (reserved + i * fatsz) * sector
        img[at : at + len(table)] = table
    for first, content in data.items():
        # follow the chain, writing cluster by cluster
        c, off = first, 0
        while off < len(content):
            at = (data_start + (c - 2) * spc) * sector
            img[at : at + cb] = content[off : off + cb].ljust(cb, b"\0")
            off += cb
            c = fat[c]
    return bytes(img)


def tree():
    return {
        "config.txt": b"arm_64bit=1\nkernel=Image\ninitramfs rootfs.cpio.lz4\n",
        "cmdline.txt": b"console=serial0,115200 root=/dev/mmcblk0p2 rootwait\n",
        "Image": bytes((i * 131 + 7) & 0xFF for i in range(1500)),
        "empty": b"",
        "bcm2711-rpi-4-b.dtb": b"\xd0\x0d\xfe\xed" + bytes(60),
        "overlays": {
            "README": b"overlays\n",
            "vc4-kms-v3d.dtbo": b"\xd0\x0d\xfe\xed" + bytes(28),
            "deep": {"Ünïcødé notes.txt": b"u\n"},
        },
        "skiff-init": {},
    }


# --- partition tables ----------------------------------------------------------------


def mbr(entries, disk_id=0x1234ABCD):
    """entries: (type, start_lba, sectors, bootable)."""
    s = bytearray(512)
    struct.pack_into("<I", s, 440, disk_id)
    for i, (t, start, n, boot) in enumerate(entries):
        e = 446 + 16 * i
        s[e] = 0x80 if boot else 0
        s[e + 1 : e + 4] = b"\xfe\xff\xff"
        s[e + 4] = t
        s[e + 5 : e + 8] = b"\xfe\xff\xff"
        struct.pack_into("<II", s, e + 8, start, n)
    s[510:512] = b"\x55\xaa"
    return bytes(s)


LINUX = bytes.fromhex("af3dc60f838472478e793d69d8477de4")  # 0FC63DAF-... on disk
BASIC = bytes.fromhex("a2a0d0ebe5b9334487c068b6b72699c7")  # EBD0A0A2-... on disk


def gpt_disk(parts, total_sectors, n_entries=128, extra_mbr=(), disk_guid=b"\x11" * 16):
    """parts: (type, first, last, name, attrs, content). Returns the whole disk."""
    array_sectors = -(-n_entries * 128 // SECTOR)
    first_usable = 2 + array_sectors
    last_usable = total_sectors - 2 - array_sectors
    arr = bytearray(n_entries * 128)
    for i, (ty, first, last, name, attrs, _) in enumerate(parts):
        e = 128 * i
        arr[e : e + 16] = ty
        arr[e + 16 : e + 32] = bytes([0xA0 + i]) * 16
        struct.pack_into("<QQQ", arr, e + 32, first, last, attrs)
        nm = name.encode("utf-16-le")[:72]
        arr[e + 56 : e + 56 + len(nm)] = nm
    disk = bytearray(total_sectors * SECTOR)
    pmbr = [(0xEE, 1, min(total_sectors - 1, 0xFFFFFFFF), False)] + list(extra_mbr)
    disk[0:512] = mbr(pmbr, 0)

    def header(my, alt, array_lba):
        h = bytearray(92)
        h[0:8] = b"EFI PART"
        struct.pack_into("<II", h, 8, 0x00010000, 92)
        struct.pack_into("<QQQQ", h, 24, my, alt, first_usable, last_usable)
        h[56:72] = disk_guid
        struct.pack_into("<QIII", h, 72, array_lba, n_entries, 128, crc(arr))
        struct.pack_into("<I", h, 16, crc(h))
        return bytes(h).ljust(512, b"\0")

    disk[512:1024] = header(1, total_sectors - 1, 2)
    disk[1024 : 1024 + len(arr)] = arr
    back = (total_sectors - 1 - array_sectors) * SECTOR
    disk[back : back + len(arr)] = arr
    disk[-512:] = header(total_sectors - 1, 1, total_sectors - 1 - array_sectors)
    for _, first, _, _, _, content in parts:
        disk[first * SECTOR : first * SECTOR + len(content)] = content
    return bytes(disk)


def mbr_disk(parts, disk_id=0x1234ABCD):
    """parts: (type, start_lba, sectors, bootable, content)."""
    end = max(s + n for _, s, n, _, _ in parts)
    disk = bytearray(end * SECTOR)
    disk[0:512] = mbr([p[:4] for p in parts], disk_id)
    for _, s, _, _, c in parts:
        disk[s * SECTOR : s * SECTOR + len(c)] = c
    return bytes(disk)


def sectors(b):
    return -(-len(b) // SECTOR)


# --- main ----------------------------------------------------------------------------


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, cwd=ROOT, **kw).stdout


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    out = {t: SEEDS / t for t in ["inspect", "tables", "uimage", "bmap", "manifest"]}
    for d in out.values():
        d.mkdir(parents=True)

    def save(target, name, b):
        assert len(b) < MAX, f"{target}/{name}: {len(b)} bytes"
        (out[target] / name).write_bytes(b)

    work = Path(tempfile.mkdtemp())
    try:
        # A real Pi 4 image, its plan, bmap and manifest.
        img = work / "pi4.img"
        args = ["cargo", "run", "--release", "-q", "--"]
        run(*args, "build", "--board", "pi/4", "--images", str(IMAGES), "-o", str(img), "--bmap")
        plan = json.loads(run(*args, "plan", "--board", "pi/4", "--images", str(IMAGES), "--json"))
        raw = img.read_bytes()
        boot_at = next(p["start"] for p in plan["partitions"] if p["fs"]["kind"] == "fat32")
        real_boot = raw[boot_at : boot_at + 64 * 1024]
        ext4_head = next(
            raw[p["start"] : p["start"] + 2048] for p in plan["partitions"] if p["fs"]["kind"] == "ext4"
        )
        sqfs_head = (IMAGES / "rootfs.squashfs").read_bytes()[:512]
        head = raw[: 34 * SECTOR]
        save("inspect", "pi4-head", head)
        save("inspect", "pi4-boot-64k", real_boot[: 64 * 1024 - 1])
        save("tables", "pi4-head", head)
        save("tables", "pi4-mbr", raw[:512])
        save("tables", "pi4-gpt-header", raw[512:1024])
        save("tables", "pi4-gpt-backup-header", raw[-512:])
        save("bmap", "pi4.bmap", Path(str(img) + ".bmap").read_bytes())
        save("manifest", "pi4.manifest.json", Path(str(img) + ".manifest.json").read_bytes())

        # Hand-built FAT32 volumes (the first from the real boot sector, geometry patched).
        fat = fat32(tree(), boot=real_boot)
        fat_big_sectors = fat32(tree(), label=b"BIGSECT", sector=4096, spc=1, reserved=1, nfats=1, clusters=12)
        fat_spc = fat32(tree(), label=b"SPC4", spc=4, reserved=2, nfats=1, clusters=12)
        save("inspect", "fat32-tiny", fat)
        save("inspect", "fat32-4k-sectors", fat_big_sectors)
        save("inspect", "fat32-4-per-cluster", fat_spc)

        # Disks holding them.
        ext4 = ext4_head.ljust(4096, b"\0")
        sqfs = sqfs_head.ljust(1024, b"\0")
        n = sectors(fat)
        save(
            "inspect",
            "mbr-fat-ext4-squashfs",
            mbr_disk(
                [
                    (0x0C, 1, n, True, fat),
                    (0x83, 1 + n, 8, False, ext4),
                    (0x83, 9 + n, 2, False, sqfs),
                    (0xDA, 11 + n, 1, False, b""),
                ]
            ),
        )
        p1, p2 = 34, 34 + n
        gparts = [
            (BASIC, p1, p1 + n - 1, "boot", 1 << 2, fat),
            (LINUX, p2, p2 + 7, "rootfs", 0, ext4),
            (LINUX, p2 + 8, p2 + 9, "persist", 0, sqfs),
        ]
        total = p2 + 10 + 33
        gpt = gpt_disk(gparts, total)
        save("inspect", "gpt-fat-ext4-squashfs", gpt)
        small = [(t, f - 32 + 2, l - 32 + 2, nm, a, c) for t, f, l, nm, a, c in gparts]
        gpt8 = gpt_disk(small, total - 60, n_entries=4)
        save("inspect", "gpt-4-entries", gpt8)
        hybrid = gpt_disk(gparts, total, extra_mbr=[(0x0C, p1, n, True)])
        save("inspect", "gpt-hybrid", hybrid)
        broken = bytearray(gpt)
        broken[512 + 30] ^= 0xFF  # primary header CRC now wrong: the backup is used
        save("inspect", "gpt-backup-only", bytes(broken))
        save("tables", "gpt-4-entries-head", gpt8[: 3 * SECTOR])
        save("tables", "gpt-hybrid-head", hybrid[: 34 * SECTOR])
        save("tables", "mbr-4-partitions", mbr([(0x0C, 1, 100, True), (0x83, 101, 50, False), (0x82, 151, 9, False), (0x05, 160, 40, False)]))

        # boot.scr images from mkimage.
        scripts = {
            "arm": ("arm", "SkiffOS", b"setenv bootargs console=ttyS0\nload mmc 0:1 ${kernel_addr_r} Image\nbooti ${kernel_addr_r} - ${fdt_addr_r}\n"),
            "arm64-long-name": ("arm64", "n" * 40, b"echo hi\n"),
            "riscv-crlf": ("riscv", "boot", b"echo 1\r\nboot\r\n"),
        }
        for name, (arch, title, text) in scripts.items():
            src, scr = work / "boot.txt", work / "boot.scr"
            src.write_bytes(text)
            env = dict(os.environ, SOURCE_DATE_EPOCH="1000")
            run("mkimage", "-A", arch, "-T", "script", "-C", "none", "-n", title, "-d", str(src), str(scr), env=env)
            b = scr.read_bytes()
            save("uimage", f"boot-{name}.scr", b)
        b = (out["uimage"] / "boot-arm.scr").read_bytes()
        save("uimage", "boot-arm-padded.scr", b + b"\xff" * 512)
        save("uimage", "boot-arm-truncated.scr", b[:-3])

        # bmaps and a manifest besides the real ones.
        save(
            "bmap",
            "minimal.bmap",
            b"<bmap version=\"2.0\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>"
            b"<BlockMap><Range>0</Range><Range chksum=\"00\"> 1-1 </Range></BlockMap></bmap>\n",
        )
        m = json.loads((out["manifest"] / "pi4.manifest.json").read_bytes())
        save("manifest", "pi4-compact.json", json.dumps(m, separators=(",", ":")).encode())
    finally:
        shutil.rmtree(work)
    for t, d in out.items():
        files = sorted(d.iterdir())
        print(f"{t}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
