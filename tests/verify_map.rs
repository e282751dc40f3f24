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
    /// Each partition's number, id and whether it is FAT (else ext4).
    parts: Vec<(usize, &'static str, bool)>,
    _dir: tempfile::TempDir,
}

/// A pi/4 image (with a squashfs on boot) built with `extra` and flashed onto a card of its
/// size.
fn pi4(extra: &[&str]) -> Option<Flashed> {
    let images = fixtures_with_squashfs();
    let parts = vec![
        (1, "boot", true),
        (2, "rootfs", false),
        (3, "persist", false),
    ];
    flashed("pi/4", images.path(), extra, parts)
}

/// An odroid/m1 image (ext4 boot holding the kernel, DTBs, initramfs and `rootfs/`) flashed
/// onto a card of its size.
fn odroid_m1() -> Option<Flashed> {
    let images = images_copy();
    std::fs::write(images.path().join("rootfs.cpio.uboot"), pseudo(300_000, 7)).unwrap();
    let parts = vec![(1, "boot", false), (2, "persist", false)];
    flashed("odroid/m1", images.path(), &[], parts)
}

fn flashed(
    board: &str,
    images: &Path,
    extra: &[&str],
    parts: Vec<(usize, &'static str, bool)>,
) -> Option<Flashed> {
    if !need_fs_tools() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    build(board, images, &img, &[&["--bmap"], extra].concat());
    let card = Card::new(std::fs::metadata(&img).unwrap().len())?;
    flash_image_ok(&card.dev, &img);
    Some(Flashed {
        manifest: dir.path().join("disk.img.manifest.json"),
        img,
        card,
        parts,
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
        verify(
            &self.card.dev,
            &["--manifest", self.manifest.to_str().unwrap()],
        )
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
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
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

/// Every non-empty file of the card: FAT ones placed by mtools, ext4 ones by debugfs.
fn files_on(f: &Flashed) -> Vec<Placed> {
    let mut out = Vec::new();
    for &(n, id, fat) in &f.parts {
        let start = partition_start(&f.card.dev, n);
        let found: Vec<(String, u64, Vec<Run>)> = if fat {
            let vol = f.fat(n);
            let g = fat_geometry(&vol);
            fat_files(&vol)
                .into_iter()
                .map(|path| {
                    let (size, runs) = (fat_size(&vol, &path), fat_extents(&vol, &g, &path));
                    (path, size, runs)
                })
                .collect()
        } else {
            let part = f.card.part(n as u32);
            ext4_files(&part)
                .into_iter()
                .map(|(path, size)| {
                    let runs = ext4_extents(&part, &path);
                    (path, size, runs)
                })
                .collect()
        };
        for (path, size, runs) in found {
            out.push(Placed {
                partition: id,
                path,
                size,
                runs: runs
                    .into_iter()
                    .map(|r| Run {
                        start: start + r.start,
                        len: r.len,
                    })
                    .collect(),
            });
        }
    }
    out.retain(|p| p.size > 0);
    out
}

/// 25 flips at random bytes of random files, each restored after: `--manifest` names the
/// file and a range of at most 1 MiB of it holding the byte, `--image` the file and the
/// byte exactly.
fn random_flips_are_named(f: &Flashed, seed: u64) {
    let files = files_on(f);
    let (code, found) = f.by_manifest();
    assert_eq!(code, 0, "fresh card: {found:?}");
    let mut rng = Rng::new(seed);
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
fn flips_inside_files_are_named_by_file_and_offset() {
    let Some(f) = pi4(&[]) else {
        return;
    };
    let files = files_on(&f);
    for want in [
        "/rootfs.squashfs",
        "/Image",
        "/modules.squashfs",
        "/data/blob.bin",
    ] {
        assert!(
            files.iter().any(|p| p.path == want),
            "{want} not found on the card"
        );
    }
    random_flips_are_named(&f, 0x5EED_0B1A);
}

#[test]
fn flips_inside_files_of_an_ext4_boot_are_named_by_file_and_offset() {
    let Some(f) = odroid_m1() else {
        return;
    };
    let files = files_on(&f);
    for want in ["/Image", "/rootfs.cpio.uboot", "/rootfs/modules.squashfs"] {
        assert!(
            files
                .iter()
                .any(|p| p.partition == "boot" && p.path == want),
            "{want} not found on boot"
        );
    }
    random_flips_are_named(&f, 0x0D_01D0);
}

#[test]
fn flips_in_metadata_name_the_structure() {
    // Large enough for persist to span several block groups.
    let Some(f) = pi4(&["--size", "1GiB"]) else {
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
    let group = ext4_blocks_per_group(&p3) * bs;
    let data_dir = ext4_extents(&p3, "/data");
    // (disk offset, region, structure): ext4 keeps its superblock at byte 1024, the group
    // descriptors in the block after it, and backups of the superblock at the start of
    // groups 1 and powers of 3, 5 and 7.
    let cases: Vec<(u64, &str, String)> = vec![
        (512 + 16, "partition table", "GPT header".into()),
        (1024 + 130, "partition table", "GPT entries".into()),
        (boot + 13, "partition boot", "boot sector".into()),
        (
            boot + g.fat(0).start + 12,
            "partition boot",
            "FAT (copy 1)".into(),
        ),
        (
            boot + g.fat(1).start + 12,
            "partition boot",
            "FAT (copy 2)".into(),
        ),
        (
            boot + overlays[0].start + 40,
            "partition boot",
            "FAT directory /overlays".into(),
        ),
        (
            rootfs + 1024 + 0x20,
            "partition rootfs",
            "ext4 superblock".into(),
        ),
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
            persist + 3 * group + 0x20,
            "partition persist",
            "ext4 superblock (backup in group 3)".into(),
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
        assert!(
            by_hash,
            "{name} at {at} not named by --manifest: {found:#?}"
        );
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
        text.lines()
            .any(|l| l.starts_with("boot: FAT (copy 1): differs within")),
        "{text}"
    );
}

#[test]
fn a_format_1_manifest_and_a_bare_image_still_name_partitions() {
    // Built with a bmap (as `flashed` builds), each mapped range carries its whole hash,
    // as format 1 had it.
    let Some(f) = pi4(&[]) else {
        return;
    };
    // The previous format: no piece hashes, no map.
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(&f.manifest).unwrap()).unwrap();
    m["format"] = "skiff-flash-manifest/1".into();
    let o = m.as_object_mut().unwrap();
    o.remove("structures");
    let image = o["image"].as_object_mut().unwrap();
    image.remove("chunk_size");
    for r in image["mapped"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("pieces");
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
    let bare = bare_dir.path().join("disk.img");
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
