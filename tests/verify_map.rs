//! Byte verification names what a difference hit, on a real card (a loop device flashed
//! with a pi/4 image whose boot partition also holds a `rootfs.squashfs`): a flipped byte
//! inside a file is named by the file and its offset in it (exactly against the image,
//! within 1 MiB against the manifest's hashes), a flip in metadata by the structure (GPT
//! header, boot sector, FAT copies and directories, ext4 superblock, group descriptors,
//! bitmaps, inode tables, directories). Where files and structures lie is taken from
//! sfdisk, mtools and debugfs, never from the manifest under test. A manifest of the
//! previous format still verifies, and an image without a manifest names partitions.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

struct Flashed {
    img: PathBuf,
    manifest: PathBuf,
    card: Card,
    _dir: tempfile::TempDir,
}

/// A pi/4 image (with a squashfs on boot) built and flashed onto a card of its size.
fn flashed() -> Option<Flashed> {
    if !need_fs_tools() {
        return None;
    }
    let images = fixtures_with_squashfs();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(images.path(), &img, &["--bmap"]);
    let card = Card::new(std::fs::metadata(&img).unwrap().len())?;
    ok(&run(&[
        "flash",
        &card.dev,
        "--image",
        img.to_str().unwrap(),
        "--yes",
    ]));
    Some(Flashed {
        manifest: dir.path().join("pi4.img.manifest.json"),
        img,
        card,
        _dir: dir,
    })
}

impl Flashed {
    /// `FILE@@OFFSET` of partition `n`: mtools' name for a volume inside a disk.
    fn fat(&self, n: usize) -> String {
        let at = partition_start(&self.card.dev, n);
        format!("{}@@{at}", self.card.backing.display())
    }

    /// XORs the card's byte at `at`, through the device; returns the old byte.
    fn flip(&self, at: u64) -> u8 {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.card.dev)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5A], at).unwrap();
        f.sync_all().unwrap();
        b[0]
    }

    fn restore(&self, at: u64, old: u8) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.card.dev)
            .unwrap();
        f.write_all_at(&[old], at).unwrap();
        f.sync_all().unwrap();
    }

    fn by_manifest(&self) -> (i32, Vec<Value>) {
        verify(&self.card.dev, &["--manifest", self.manifest.to_str().unwrap()])
    }

    fn by_image(&self, img: &Path) -> (i32, Vec<Value>) {
        let mut args = vec!["--image", img.to_str().unwrap()];
        // Byte mode by its flag where `--image` alone compares meaning.
        if String::from_utf8_lossy(&run(&["verify", "--help"]).stdout).contains("--bytes") {
            args.push("--bytes");
        }
        verify(&self.card.dev, &args)
    }
}

/// `verify DEV ARGS --json`: exit code and findings.
fn verify(dev: &str, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["verify", dev, "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    (out.status.code().unwrap_or(-1), findings)
}

/// A file on the card as the filesystem's own tool places it.
struct Placed {
    partition: &'static str,
    path: String,
    size: u64,
    /// Disk byte runs, in file order.
    runs: Vec<Run>,
}

/// Every non-empty file of boot (mtools), rootfs and persist (debugfs).
fn files_on(f: &Flashed) -> Vec<Placed> {
    let mut out = Vec::new();
    let boot = f.fat(1);
    let boot_start = partition_start(&f.card.dev, 1);
    let g = fat_geometry(&boot);
    for path in fat_files(&boot) {
        let size = fat_size(&boot, &path);
        let runs = fat_extents(&boot, &g, &path)
            .into_iter()
            .map(|r| Run {
                start: boot_start + r.start,
                len: r.len,
            })
            .collect();
        out.push(Placed {
            partition: "boot",
            path,
            size,
            runs,
        });
    }
    for (n, id) in [(2, "rootfs"), (3, "persist")] {
        let part = f.card.part(n);
        let start = partition_start(&f.card.dev, n as usize);
        for (path, size) in ext4_files(&part) {
            let runs = ext4_extents(&part, &path)
                .into_iter()
                .map(|r| Run {
                    start: start + r.start,
                    len: r.len,
                })
                .collect();
            out.push(Placed {
                partition: id,
                path,
                size,
                runs,
            });
        }
    }
    out.retain(|p| p.size > 0);
    out
}

#[test]
fn flips_inside_files_are_named_by_file_and_offset() {
    let Some(f) = flashed() else {
        return;
    };
    let files = files_on(&f);
    for want in ["/rootfs.squashfs", "/Image", "/modules.squashfs", "/data/blob.bin"] {
        assert!(files.iter().any(|p| p.path == want), "{want} not found on the card");
    }
    let (code, found) = f.by_manifest();
    assert_eq!(code, 0, "fresh card: {found:?}");
    let mut rng = Rng::new(0x5EED_0B1A);
    for _ in 0..25 {
        let p = &files[rng.below(files.len())];
        let off = rng.next() % p.size;
        let at = locate(&p.runs, off);
        let old = f.flip(at);
        let (code, found) = f.by_manifest();
        assert_eq!(code, 1, "{}:{} byte {off} (disk {at})", p.partition, p.path);
        let named = found.iter().any(|x| {
            let (o, n, d) = (
                x["offset_in_file"].as_u64().unwrap_or(u64::MAX),
                x["within"].as_u64().unwrap_or(0),
                x["offset"].as_u64().unwrap_or(u64::MAX),
            );
            x["partition"] == p.partition
                && x["path"] == p.path.as_str()
                && n <= MIB
                && (o..o + n).contains(&off)
                && (d..d + n).contains(&at)
        });
        assert!(
            named,
            "{}:{} byte {off} (disk {at}) not named by --manifest: {found:#?}",
            p.partition, p.path
        );
        let (code, found) = f.by_image(&f.img);
        f.restore(at, old);
        assert_eq!(code, 1, "{}:{} byte {off}", p.partition, p.path);
        assert_eq!(found.len(), 1, "{found:#?}");
        let x = &found[0];
        assert_eq!(x["partition"], p.partition, "{x}");
        assert_eq!(x["path"], p.path.as_str(), "{x}");
        assert_eq!(x["offset_in_file"].as_u64(), Some(off), "{x}");
        assert_eq!(x["offset"].as_u64(), Some(at), "{x}");
    }
    assert_eq!(f.by_manifest().0, 0, "every flip restored");
}

#[test]
fn flips_in_metadata_name_the_structure() {
    let Some(f) = flashed() else {
        return;
    };
    let dev = &f.card.dev;
    let boot = partition_start(dev, 1);
    let g = fat_geometry(&f.fat(1));
    let overlays = fat_extents(&f.fat(1), &g, "/overlays");
    let rootfs = partition_start(dev, 2);
    let persist = partition_start(dev, 3);
    let p3 = f.card.part(3);
    let bs = ext4_block_size(&p3);
    let (block_bitmap, _, inode_table) = ext4_group(&p3, 0);
    let data_dir = ext4_extents(&p3, "/data");
    // (disk offset, region, structure): ext4 keeps its superblock at byte 1024 and the group
    // descriptors in the block after it.
    let cases: Vec<(u64, &str, String)> = vec![
        (512 + 16, "partition table", "GPT header".into()),
        (1024 + 130, "partition table", "GPT entries".into()),
        (boot + 13, "partition boot", "boot sector".into()),
        (boot + g.fat(0).start + 12, "partition boot", "FAT (copy 1)".into()),
        (boot + g.fat(1).start + 12, "partition boot", "FAT (copy 2)".into()),
        (
            boot + overlays[0].start + 40,
            "partition boot",
            "FAT directory /overlays".into(),
        ),
        (rootfs + 1024 + 0x20, "partition rootfs", "ext4 superblock".into()),
        (
            rootfs + bs + 8,
            "partition rootfs",
            "ext4 group descriptors".into(),
        ),
        (
            persist + block_bitmap * bs + 3,
            "partition persist",
            "ext4 block bitmap (group 0)".into(),
        ),
        (
            persist + inode_table * bs + 256 + 4,
            "partition persist",
            "ext4 inode table (group 0)".into(),
        ),
        (
            persist + data_dir[0].start + 30,
            "partition persist",
            "ext4 directory /data".into(),
        ),
    ];
    for (at, region, name) in &cases {
        let old = f.flip(*at);
        let (code, found) = f.by_manifest();
        let by_hash = found.iter().any(|x| {
            let (d, n) = (
                x["offset"].as_u64().unwrap_or(u64::MAX),
                x["within"].as_u64().unwrap_or(0),
            );
            x["region"] == *region && x["structure"] == name.as_str() && (d..d + n).contains(at)
        });
        let (icode, ifound) = f.by_image(&f.img);
        f.restore(*at, old);
        assert_eq!((code, icode), (1, 1), "{name} at {at}");
        assert!(by_hash, "{name} at {at} not named by --manifest: {found:#?}");
        assert_eq!(ifound.len(), 1, "{ifound:#?}");
        let x = &ifound[0];
        assert_eq!(x["region"], *region, "{x}");
        assert_eq!(x["structure"], name.as_str(), "{x}");
        assert_eq!(x["offset"].as_u64(), Some(*at), "{x}");
    }
    // The text names the structure and where.
    let at = boot + g.fat(0).start + 12;
    let old = f.flip(at);
    let out = run(&["verify", dev, "--manifest", f.manifest.to_str().unwrap()]);
    f.restore(at, old);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("boot: FAT (copy 1): differs within")),
        "{text}"
    );
}

#[test]
fn a_format_1_manifest_and_a_bare_image_still_name_partitions() {
    let Some(f) = flashed() else {
        return;
    };
    // The previous format: no chunk hashes, no map.
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(&f.manifest).unwrap()).unwrap();
    m["format"] = "skiff-flash-manifest/1".into();
    let o = m.as_object_mut().unwrap();
    o.remove("structures");
    let image = o["image"].as_object_mut().unwrap();
    image.remove("chunk_size");
    for r in image["mapped"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("chunks");
    }
    for p in m["partitions"].as_array_mut().unwrap() {
        let p = p.as_object_mut().unwrap();
        p.remove("structures");
        for file in p["files"].as_array_mut().unwrap() {
            file.as_object_mut().unwrap().remove("extents");
        }
    }
    let old = f.img.with_file_name("old.manifest.json");
    std::fs::write(&old, serde_json::to_string(&m).unwrap()).unwrap();
    let (code, found) = verify(&f.card.dev, &["--manifest", old.to_str().unwrap()]);
    assert_eq!(code, 0, "{found:?}");
    let boot = partition_start(&f.card.dev, 1);
    let g = fat_geometry(&f.fat(1));
    let kernel = fat_extents(&f.fat(1), &g, "/Image");
    let at = kernel[0].start + boot + 777;
    let flipped = f.flip(at);
    let (code, found) = verify(&f.card.dev, &["--manifest", old.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        found.iter().all(|x| x["region"] == "partition boot"
            && x["path"].is_null()
            && x["message"].as_str().unwrap().ends_with("differ")),
        "{found:#?}"
    );
    // An image with no manifest beside it: the partition and the exact offset.
    let bare_dir = tempfile::tempdir().unwrap();
    let bare = bare_dir.path().join("pi4.img");
    std::fs::hard_link(&f.img, &bare).unwrap();
    let (code, found) = f.by_image(&bare);
    f.restore(at, flipped);
    assert_eq!(code, 1);
    assert_eq!(found.len(), 1, "{found:#?}");
    let x = &found[0];
    assert!(x["partition"].is_string() && x["path"].is_null(), "{x}");
    assert_eq!(x["offset"].as_u64(), Some(at), "{x}");
    let in_part = skiff_flash::units::bytes(at - boot);
    assert!(
        x["message"].as_str().unwrap().contains(&in_part),
        "{x} should name byte {in_part} of the partition"
    );
}
