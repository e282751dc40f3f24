//! verify and inspect on real images: single-byte flips are found and named, a card whose
//! persist partition was written through the kernel still verifies, and inspect survives
//! corrupted images.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

struct Built {
    _dir: tempfile::TempDir,
    img: PathBuf,
    manifest: PathBuf,
}

fn build(extra: &[&str]) -> Built {
    build_from(&fixtures(), extra)
}

fn build_from(f: &Path, extra: &[&str]) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    let mut args = vec!["--bmap"];
    args.extend_from_slice(extra);
    build_pi4(f, &img, &args);
    let manifest = dir.path().join("pi4.img.manifest.json");
    Built {
        _dir: dir,
        img,
        manifest,
    }
}

fn verify(img: &Path, how: &[&str]) -> (i32, Value) {
    verify_with(img, &fixtures(), how)
}

/// verify, with `images` as the images directory of `--board` checks.
fn verify_with(img: &Path, f: &Path, how: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", img.to_str().unwrap(), "--json"];
    args.extend_from_slice(how);
    if how.contains(&"--board") {
        args.extend_from_slice(&["--images", f.to_str().unwrap()]);
    }
    let out = run(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn restore(img: &Path, at: u64, b: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&[b], at).unwrap();
}

fn find(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("marker in image") as u64
}

#[test]
fn untouched_image_verifies_every_way() {
    let b = build(&[]);
    let mp = b.manifest.to_str().unwrap();
    assert_eq!(verify(&b.img, &["--manifest", mp]).0, 0);
    assert_eq!(
        verify(&b.img, &["--image", b.img.to_str().unwrap(), "--bytes"]).0,
        0
    );
    assert_eq!(verify(&b.img, &["--image", b.img.to_str().unwrap()]).0, 0);
    let (code, v) = verify(&b.img, &["--board", "pi/4"]);
    assert_eq!(code, 0, "{v}");
    // Every byte of the files the board copies onto boot and rootfs is compared (the
    // rpi-firmware config.txt/cmdline.txt are replaced by the board's own).
    let f = fixtures();
    let mut copied = 0;
    for top in ["Image", "rootfs.cpio.lz4"] {
        copied += std::fs::metadata(f.join(top)).unwrap().len();
    }
    for top in ["rpi-firmware", "boot_part", "rootfs_part"] {
        copied += snapshot(&f.join(top))
            .iter()
            .filter(|(path, kind, ..)| {
                kind == "file" && !path.ends_with("config.txt") && !path.ends_with("cmdline.txt")
            })
            .map(|(.., bytes)| bytes.len() as u64)
            .sum::<u64>();
    }
    for e in std::fs::read_dir(&f).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "dtb") {
            copied += std::fs::metadata(&p).unwrap().len();
        }
    }
    assert!(copied > 400_000, "{copied}");
    let checked = v["bytes_checked"].as_u64().unwrap();
    assert!(
        checked >= copied,
        "{checked} bytes checked, {copied} copied"
    );
}

#[test]
fn flipped_bytes_are_found_and_named() {
    // With a rootfs.squashfs on the boot partition (a pi/4 build has none), so flips inside
    // a squashfs are checked too.
    let dir = fixtures_with_squashfs();
    let images = dir.path();
    let b = build_from(images, &[]);
    let bytes = std::fs::read(&b.img).unwrap();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&b.manifest).unwrap()).unwrap();
    let boot = &m["partitions"][0];
    let boot_start = boot["start"].as_u64().unwrap();
    let config_marker = b"avoid_safe_mode=1";
    let squash = std::fs::read(images.join("rootfs.squashfs")).unwrap();
    let kernel = std::fs::read(images.join("Image")).unwrap();
    // Positions that change meaning, with what meaning verify must name.
    let meaningful: Vec<(u64, &str, &str)> = vec![
        (512 + 24, "table", ""), // GPT header
        (
            find(&bytes, config_marker) + 3,
            "partition boot",
            "/config.txt",
        ),
        (
            find(&bytes, &squash[4096..4160]) + 10,
            "partition boot",
            "/rootfs.squashfs",
        ),
        (
            find(&bytes, &kernel[1000..1064]) + 5,
            "partition boot",
            "/Image",
        ),
        (boot_start + 11, "partition boot", ""), // FAT geometry
    ];
    for (at, region, path) in &meaningful {
        let old = xor_byte(&b.img, *at, 0x5A);
        let (code, v) = verify(&b.img, &["--manifest", b.manifest.to_str().unwrap()]);
        assert_eq!(code, 1, "bytes verify misses a flip at {at}: {v}");
        let (code, v) = verify_with(&b.img, images, &["--board", "pi/4"]);
        assert_eq!(
            code, 1,
            "meaning verify misses a flip at {at} ({region} {path}): {v}"
        );
        let findings = v["findings"].as_array().unwrap();
        assert!(
            findings
                .iter()
                .any(|f| f["region"] == *region && (path.is_empty() || f["path"] == *path)),
            "flip at {at}: expected {region} {path} in {v}"
        );
        if !path.is_empty() {
            let f = findings.iter().find(|f| f["path"] == *path).unwrap();
            assert!(
                f["offset"].is_u64() && f["expected"].is_string() && f["found"].is_string(),
                "{f}"
            );
        }
        restore(&b.img, *at, old);
    }
    // Random positions anywhere in the mapped ranges: byte verify names the region.
    let orig = b.img.with_extension("orig");
    std::fs::copy(&b.img, &orig).unwrap();
    let mut x = 0x1234_5678u64;
    let ranges = m["image"]["mapped"].as_array().unwrap();
    for _ in 0..25 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = &ranges[(x >> 33) as usize % ranges.len()];
        let first = r["first"].as_u64().unwrap() * 4096;
        let len = (r["last"].as_u64().unwrap() + 1) * 4096 - first;
        let at = first + (x >> 7) % len;
        let old = xor_byte(&b.img, at, 0x5A);
        let (code, v) = verify(&b.img, &["--manifest", b.manifest.to_str().unwrap()]);
        assert_eq!(code, 1, "flip at {at} not found: {v}");
        let f = &v["findings"][0];
        assert!(
            f["region"].is_string() && f["expected"] != f["found"],
            "{v}"
        );
        // Against the pristine image, the flip is reported at its exact offset.
        let bmap = b.img.with_extension("img.bmap");
        let (code, v) = verify(
            &b.img,
            &[
                "--image",
                orig.to_str().unwrap(),
                "--bytes",
                "--bmap",
                bmap.to_str().unwrap(),
            ],
        );
        restore(&b.img, at, old);
        assert_eq!(code, 1, "{v}");
        assert_eq!(v["findings"][0]["offset"].as_u64(), Some(at), "{v}");
    }
}

#[test]
fn a_card_whose_persist_was_written_still_verifies() {
    if !need("mount", "mount") {
        return;
    }
    let b = build(&["--size", "1GiB"]);
    {
        let Some(lo) = Loop::attach(&b.img, false) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        tool_ok("mount", &[&lo.part(3), d]);
        std::fs::create_dir_all(dir.path().join("skiff/journal/x")).unwrap();
        std::fs::write(
            dir.path().join("skiff/hostname"),
            "changed by the running system\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("primary.swap"), vec![0u8; 8 << 20]).unwrap();
        tool_ok("umount", &[d]);
    }
    let (code, v) = verify(&b.img, &["--board", "pi/4"]);
    assert_eq!(code, 0, "meaning verify after persist writes: {v}");
    // Byte verification sees the change, in persist.
    let (code, v) = verify(&b.img, &["--manifest", b.manifest.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["region"] == "partition persist"),
        "{v}"
    );
}

#[test]
fn inspect_survives_corrupted_images() {
    let b = build(&[]);
    let good = std::fs::read(&b.img).unwrap();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&b.manifest).unwrap()).unwrap();
    let boot = m["partitions"][0]["start"].as_u64().unwrap() as usize;
    let rootfs = m["partitions"][1]["start"].as_u64().unwrap() as usize;
    let size = good.len();
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    for cut in [
        0,
        100,
        512,
        1000,
        17 * 1024,
        1 << 20,
        (1 << 20) + 5000,
        size / 2,
        size - 512,
    ] {
        variants.push(("truncated", good[..cut].to_vec()));
    }
    let mut v = good.clone();
    v[512 + 20] ^= 1;
    variants.push(("primary GPT header CRC", v));
    let mut v = good.clone();
    v[1024 + 3] ^= 1;
    variants.push(("primary GPT array CRC", v));
    let mut v = good.clone();
    v[512 + 20] ^= 1;
    v[size - 512 + 20] ^= 1;
    variants.push(("both GPT headers", v));
    let mut v = good.clone();
    v[boot + 16384..boot + 16384 + 65536].fill(0);
    variants.push(("zeroed FAT", v));
    let mut v = good.clone();
    v[boot + 16384 + 8..boot + 16384 + 12].copy_from_slice(&2u32.to_le_bytes());
    variants.push(("FAT root chain loops", v));
    let mut v = good.clone();
    v[boot..boot + 512].fill(0xFF);
    variants.push(("FAT boot sector garbage", v));
    let mut v = good.clone();
    v[rootfs + 1024..rootfs + 2048].fill(0x77);
    variants.push(("ext4 superblock garbage", v));
    let mut x = 99u64;
    let noise: Vec<u8> = (0..(4 << 20))
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as u8
        })
        .collect();
    variants.push(("random garbage", noise));
    variants.push(("all 0xFF", vec![0xFF; 2 << 20]));
    let mut v = vec![0u8; 1 << 20];
    v[510] = 0x55;
    v[511] = 0xAA;
    v[446 + 4] = 0x83;
    v[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    v[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    variants.push(("MBR partition beyond the disk", v));
    let mut v = good.clone();
    v[..1 << 20].fill(0);
    variants.push(("first MiB zeroed (no table)", v));
    assert!(variants.len() >= 20);
    let dir = tempfile::tempdir().unwrap();
    for (i, (what, bytes)) in variants.iter().enumerate() {
        let p = dir.path().join(format!("v{i}.img"));
        std::fs::write(&p, bytes).unwrap();
        let out = run(&["inspect", p.to_str().unwrap(), "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: {e}"));
        let problems = v["problems"].as_array().unwrap();
        if *what != "truncated" || bytes.len() < size - 512 {
            assert!(!problems.is_empty(), "{what}: no problem reported: {v}");
        }
        // A damaged card also fails verification rather than crashing it.
        let out = run(&[
            "verify",
            p.to_str().unwrap(),
            "--manifest",
            b.manifest.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{what}: verify");
    }
}
