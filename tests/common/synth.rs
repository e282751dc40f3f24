//! Images directories shaped as SkiffOS builds leave them (`skiffos/artifacts.toml`):
//! every board's produced or required files, with kernels, device trees, initramfs and
//! squashfs images real enough for their magic to be checked.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::*;

/// The `VERSION=` of the generated skiff-release.
pub const VERSION: &str = "2026.08.0-test";

/// Default size of a generated blob or file.
pub const BLOB: u64 = 64 << 10;

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn first_from(rule: &Value) -> Option<&str> {
    arr(&rule["from"]).first().and_then(Value::as_str)
}

pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

pub fn as_num(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// Sizes for the raw blobs of a board: 64 KiB, less where the next raw write (or the first
/// partition) starts sooner, more where a rule's skip/length needs it.
pub fn raw_sizes(board: &Value) -> BTreeMap<String, u64> {
    let layout = &board["layout"];
    let first_part = as_num(&layout["start"])
        .or_else(|| as_num(&layout["align"]))
        .unwrap_or(1 << 20);
    let raws: Vec<(String, u64, u64, Option<u64>)> = arr(&board["raw"])
        .iter()
        .map(|r| {
            (
                first_from(r).unwrap().to_string(),
                as_num(&r["offset"]).unwrap_or(0),
                as_num(&r["skip"]).unwrap_or(0),
                as_num(&r["length"]),
            )
        })
        .collect();
    let mut cap: BTreeMap<String, u64> = BTreeMap::new();
    let mut need: BTreeMap<String, u64> = BTreeMap::new();
    for (src, offset, skip, length) in &raws {
        let next = raws
            .iter()
            .map(|r| r.1)
            .filter(|o| o > offset)
            .chain([first_part])
            .min()
            .unwrap();
        match length {
            Some(l) => {
                let n = need.entry(src.clone()).or_insert(0);
                *n = (*n).max(skip + l);
            }
            None => {
                let c = cap.entry(src.clone()).or_insert(BLOB);
                *c = (*c).min(skip + (next - offset));
                let n = need.entry(src.clone()).or_insert(0);
                *n = (*n).max(skip + 1);
            }
        }
    }
    need.into_iter()
        .map(|(src, n)| {
            let c = cap.get(&src).copied().unwrap_or(BLOB);
            (src, c.min(BLOB.max(n)).max(n))
        })
        .collect()
}

/// One file or directory a SkiffOS build leaves in `images/` (`skiffos/artifacts.toml`).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub name: String,
    pub kind: String,
    pub required: bool,
    pub produced: bool,
}

/// `skiffos/artifacts.toml`: board name → its artifacts, in file order.
pub fn skiffos_artifacts() -> BTreeMap<String, Vec<Artifact>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("skiffos/artifacts.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    assert!(
        doc["skiffos_commit"]
            .as_str()
            .is_some_and(|c| c.len() == 40),
        "skiffos_commit is a full commit id"
    );
    let boards = doc["boards"].as_table().expect("a [boards] table");
    boards
        .iter()
        .map(|(name, b)| {
            let arts = b["artifacts"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no artifacts"))
                .iter()
                .map(|a| {
                    let s = |k: &str| a[k].as_str().unwrap_or_else(|| panic!("{name}: {k}"));
                    let source = s("source");
                    let (file, line) = source.rsplit_once(':').unwrap();
                    assert!(
                        !file.is_empty() && line.parse::<u32>().is_ok(),
                        "{name}: source `{source}` is path:LINE"
                    );
                    let kind = s("kind").to_string();
                    assert!(
                        [
                            "kernel",
                            "dtb",
                            "initramfs",
                            "squashfs",
                            "firmware-dir",
                            "bootloader",
                            "dir",
                            "l4t-flash-xml",
                            "other"
                        ]
                        .contains(&kind.as_str()),
                        "{name}: kind {kind}"
                    );
                    Artifact {
                        name: s("name").to_string(),
                        kind,
                        required: a["required"].as_bool().unwrap(),
                        produced: a.get("produced").and_then(|p| p.as_bool()).unwrap_or(true),
                    }
                })
                .collect();
            (name.clone(), arts)
        })
        .collect()
}

/// The artifacts of one board (panics when the data has no entry for it).
pub fn artifacts_of(board: &str) -> Vec<Artifact> {
    skiffos_artifacts()
        .remove(board)
        .unwrap_or_else(|| panic!("skiffos/artifacts.toml has no board {board}"))
}

/// Which artifacts of a board go into a generated images directory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Set {
    /// Everything the SkiffOS build produces, used or not.
    Produced,
    /// Only what SkiffOS's install/format scripts cannot do without.
    Required,
}

impl Set {
    fn takes(self, a: &Artifact) -> bool {
        a.produced && (self == Set::Produced || a.required)
    }
}

/// A `newc` cpio archive holding `/init` (a shell script) and the trailer.
pub fn newc_cpio() -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let fields = [1, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(format!("{:08x}", name.len() + 1).as_bytes());
        out.extend_from_slice(b"00000000");
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, "init", 0o100755, b"#!/bin/sh\nexec /sbin/init\n");
    entry(&mut out, "TRAILER!!!", 0, b"");
    out
}

/// `data` as an lz4 legacy frame (what `lz4 -l` writes): one block of literals only.
pub fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let n = data.len();
    block.push(((n.min(15)) as u8) << 4);
    if n >= 15 {
        let mut rest = n - 15;
        while rest >= 255 {
            block.push(255);
            rest -= 255;
        }
        block.push(rest as u8);
    }
    block.extend_from_slice(data);
    let mut out = 0x184c_2102u32.to_le_bytes().to_vec();
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    out.extend_from_slice(&block);
    out
}

/// Runs a tool that must succeed (with a fixed SOURCE_DATE_EPOCH).
pub fn make(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A U-Boot legacy ramdisk image of `payload` (what Buildroot's CPIO_UIMAGE and the
/// beaglebone hook make), via mkimage.
pub fn uimage_ramdisk(payload: &[u8], at: &Path) {
    let src = at.with_extension("payload");
    std::fs::write(&src, payload).unwrap();
    make(
        "mkimage",
        &[
            "-A",
            "arm",
            "-O",
            "linux",
            "-T",
            "ramdisk",
            "-C",
            "none",
            "-n",
            "test ramdisk",
            "-d",
            src.to_str().unwrap(),
            at.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(src).unwrap();
}

/// A real lz4 squashfs (as SkiffOS builds them) holding one file named after `at`.
pub fn squashfs_at(at: &Path) {
    let stage = tempfile::tempdir().unwrap();
    let leaf = at.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(stage.path().join("content"), format!("{leaf}\n")).unwrap();
    make(
        "mksquashfs",
        &[
            stage.path().to_str().unwrap(),
            at.to_str().unwrap(),
            "-comp",
            "lz4",
            "-noappend",
            "-all-root",
            "-no-xattrs",
            "-quiet",
            "-no-progress",
        ],
    );
}

/// The tools the generated images directories need.
pub fn have_generators() -> bool {
    need("mkimage", "u-boot-tools") && need("mksquashfs", "squashfs-tools")
}

/// An images directory shaped as `board`'s SkiffOS build leaves it (`skiffos/artifacts.toml`),
/// with every produced artifact (`Set::Produced`) or only the required ones. Kernels, DTBs,
/// initramfs images and squashfs images are real enough for their magic to be checked; blobs
/// written raw are sized so they fit before the next raw write (`raw_sizes`).
pub fn skiffos_images(board: &str, def: &Value, set: Set) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let raw = raw_sizes(def);
    let mut arts: Vec<Artifact> = artifacts_of(board)
        .into_iter()
        .filter(|a| set.takes(a))
        .collect();
    // Parents before what they hold (efi-part before efi-part/EFI/BOOT/bootx64.efi).
    arts.sort_by(|a, b| a.name.cmp(&b.name));
    for a in arts {
        assert!(!is_pattern(&a.name), "{board}: produced `{}`", a.name);
        let path = root.join(&a.name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let leaf = path.file_name().unwrap().to_string_lossy().into_owned();
        let len = raw.get(&a.name).copied().unwrap_or(BLOB);
        match a.kind.as_str() {
            "dir" | "firmware-dir" => {
                std::fs::create_dir_all(&path).unwrap();
                // SkiffOS leaves `resources/` empty; every other directory holds files.
                if a.name != "resources" {
                    let f = format!("from-{leaf}.bin");
                    std::fs::write(path.join(&f), noise(&f, 4096)).unwrap();
                }
            }
            "kernel" => {
                let bytes = match leaf.as_str() {
                    "Image" => arm64_image(len),
                    "zImage" => arm_zimage(len),
                    "bzImage" => x86_bzimage(len),
                    other => panic!("{board}: unknown kernel {other}"),
                };
                std::fs::write(&path, bytes).unwrap();
            }
            "dtb" => std::fs::write(&path, fdt(&format!("skiff-test,{leaf}"))).unwrap(),
            "squashfs" => squashfs_at(&path),
            "initramfs" => match leaf.as_str() {
                "rootfs.cpio" => std::fs::write(&path, newc_cpio()).unwrap(),
                "rootfs.cpio.lz4" => std::fs::write(&path, lz4_legacy(&newc_cpio())).unwrap(),
                _ if leaf.ends_with(".uboot") || leaf.ends_with(".img") => {
                    uimage_ramdisk(&lz4_legacy(&newc_cpio()), &path)
                }
                other => panic!("{board}: unknown initramfs {other}"),
            },
            // L4T's signed partition table, as flash.sh leaves it: here only APP (the full
            // Jetson Nano layout is tests/jetson.rs's).
            "l4t-flash-xml" => std::fs::write(
                &path,
                "<partition_layout version=\"01.00.0000\">\n  <device type=\"sdcard\">\n    \
                 <partition name=\"APP\" type=\"data\"><size> 1073741824 </size></partition>\n  \
                 </device>\n</partition_layout>\n",
            )
            .unwrap(),
            "other" if a.name == "skiff-release" => std::fs::write(
                &path,
                format!("NAME=SkiffOS\nVERSION={VERSION}\nID=skiff\n"),
            )
            .unwrap(),
            "bootloader" | "other" => std::fs::write(&path, noise(&a.name, len)).unwrap(),
            other => panic!("{board}: unknown kind {other}"),
        }
    }
    dir
}
