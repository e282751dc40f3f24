//! Runs every reader of outside data on arbitrary bytes: partition tables, whole disks
//! (`inspect` and the FAT reader behind it), U-Boot legacy images, release images, build
//! manifests, bmap files, genimage configs, board files, SSH public keys and per-card CSV
//! files. None of them may panic, whatever the bytes; the fuzz targets and the corpus
//! regression test call these entry points so both exercise exactly the same calls.
//!
//! Not a checker of results: every outcome, `Ok` or `Err`, is dropped. The readers that
//! take a path read a scratch file in the system temporary directory, one per thread
//! (removed after each call), and the configs that name files see one images directory
//! there holding `blob.bin`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::format::bootcfg::uimage as uimage_reader;
use crate::format::fat::read::FatVolume;
use crate::format::table::read::{DiskTable, gpt_entries, gpt_from_head, gpt_header, mbr};

/// Every reader below on the same bytes.
pub fn exercise(bytes: &[u8]) {
    tables(bytes);
    inspect(bytes);
    uimage(bytes);
    used(bytes);
    release(bytes);
    bmap(bytes);
    manifest(bytes);
    genimage(bytes);
    board(bytes);
    customisation(bytes);
}

/// The bytes as the head of a disk: MBR, GPT from the head, and a GPT header tried at byte
/// 0 and at byte 512 with its entry array where the header says. Once as given and once
/// more with the GPT CRCs recomputed (see [`fix_gpt_crcs`]).
pub fn tables(bytes: &[u8]) {
    tables_once(bytes);
    let mut fixed = bytes.to_vec();
    if fix_gpt_crcs(&mut fixed) {
        tables_once(&fixed);
    }
}

fn tables_once(data: &[u8]) {
    let _ = mbr(data);
    let _ = gpt_from_head(data);
    if let Ok(t) = DiskTable::parse(data) {
        let _ = t.is_protective();
    }
    let dev = data.to_vec();
    let _ = DiskTable::read(&dev);
    let _ = DiskTable::backup_gpt(&dev);
    for at in [0, 512] {
        let Some(sector) = data.get(at..) else {
            continue;
        };
        let Ok(h) = gpt_header(sector) else {
            continue;
        };
        let _ = h.array_bytes();
        let array = h
            .array_lba
            .checked_mul(512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| data.get(s..))
            .unwrap_or_default();
        let _ = gpt_entries(&h, array);
    }
}

/// The bytes as a whole disk: `inspect` (and its result serialised), then every FAT32
/// volume it found and one at offset 0 opened, listed and every file read, and every
/// partition's used ranges (`backup`'s). Once as given
/// and once more with the GPT CRCs recomputed.
pub fn inspect(bytes: &[u8]) {
    let mut disk = bytes.to_vec();
    inspect_once(&disk);
    if fix_gpt_crcs(&mut disk) {
        inspect_once(&disk);
    }
}

fn inspect_once(disk: &Vec<u8>) {
    let found = crate::ops::inspect::inspect(disk);
    let _ = serde_json::to_string(&found);
    let size = disk.len() as u64;
    for p in &found.partitions {
        let len = p.size.min(size.saturating_sub(p.start));
        if p.fs.kind == "fat32" {
            fat_at(disk, p.start, len);
        }
        used_at(disk, p.start, len);
    }
    fat_at(disk, 0, size);
}

/// The bytes as a FAT32 volume at offset 0: opened, listed, every file read.
pub fn fat(bytes: &[u8]) {
    let disk = bytes.to_vec();
    fat_at(&disk, 0, disk.len() as u64);
}

fn fat_at(disk: &Vec<u8>, base: u64, len: u64) {
    let Ok(v) = FatVolume::open(disk, base, len) else {
        return;
    };
    let _ = (v.clusters(), v.cluster_bytes(), &v.label, v.volume_id);
    let Ok(list) = v.list() else {
        return;
    };
    for e in &list {
        let mut n = 0u64;
        let _ = v.read_file(e, &mut |b| n += b.len() as u64);
    }
}

/// The bytes as one partition: its filesystem probed and the ranges `backup` would copy.
pub fn used(bytes: &[u8]) {
    let disk = bytes.to_vec();
    used_at(&disk, 0, disk.len() as u64);
}

fn used_at(disk: &Vec<u8>, base: u64, len: u64) {
    use crate::format::used::{Used, used};
    let p = crate::format::probe::probe(disk, base, len);
    if let Used::Allocated(v) = used(disk, base, len, &p) {
        assert!(
            v.iter().all(|e| e.end() <= len),
            "a used range past the partition"
        );
    }
}

/// The bytes as a U-Boot legacy image (boot.scr): the header parser, and the script edit
/// an upgrade from a release image makes.
pub fn uimage(bytes: &[u8]) {
    let _ = uimage_reader::parse(bytes);
    let _ = uimage_reader::edit_script(bytes, |s| s.to_vec());
}

/// The bytes as a release image: decoded into a spool, its table and every filesystem's
/// files read out as `verify --image` reads them when there is no manifest.
pub fn release(bytes: &[u8]) {
    with_scratch("release.img", bytes, |p| {
        let Ok(r) =
            crate::image::release::Release::open(p, &crate::image::release::Wanted::All, &[])
        else {
            return;
        };
        let _ = crate::ops::expect::Expected::from_release(&r);
    });
}

/// The bytes as a bmap file.
pub fn bmap(bytes: &[u8]) {
    with_scratch("bmap", bytes, |p| {
        let _ = crate::image::bmap::read(p);
    });
}

/// The bytes as a build manifest.
pub fn manifest(bytes: &[u8]) {
    with_scratch("manifest", bytes, |p| {
        // A manifest read is also a map: every place it names must be computable.
        if let Ok(m) = crate::image::manifest::load(p) {
            let map = crate::image::map::Map::of_manifest(&m);
            for at in [0, 512, 1 << 20, m.image.size / 2, u64::MAX - 1] {
                let _ = map.place_from(at);
                let _ = map.places(crate::format::Span::new(at, 1 << 20));
            }
        }
    });
}

/// The bytes as an SSH public key file and as a `--per-card` CSV.
pub fn customisation(bytes: &[u8]) {
    with_scratch("key.pub", bytes, |p| {
        let _ = crate::plan::custom::read_key(p);
        let _ = crate::ops::cards::PerCard::load(p);
    });
}

/// The bytes as a genimage config: parse, typed config, translation to a board and, when
/// that succeeds, a plan over the images directory.
pub fn genimage(bytes: &[u8]) {
    let Some(images) = images_dir() else {
        return;
    };
    with_scratch("genimage.cfg", bytes, |p| {
        let opts = crate::define::genimage::Options {
            images: images.clone(),
            rootpath: None,
            size: None,
            defines: Default::default(),
        };
        if let Ok(board) = crate::define::genimage::load(p, &opts) {
            let _ = crate::plan::make(&board, &plan_options(images.clone()));
        }
    });
}

/// The bytes as a board file: TOML, inheritance from the built-in boards, layout
/// resolution, and when that succeeds the board serialised and planned over the images
/// directory.
pub fn board(bytes: &[u8]) {
    let Some(images) = images_dir() else {
        return;
    };
    with_scratch("board.toml", bytes, |p| {
        let catalog = crate::define::board::Catalog::new(&[]);
        if let Ok(board) = catalog.board_file(p) {
            let _ = serde_json::to_string(&board);
            let _ = crate::plan::make(&board, &plan_options(images.clone()));
        }
    });
}

fn plan_options(images: PathBuf) -> crate::plan::Options {
    crate::plan::Options {
        images,
        size: None,
        epoch: 0,
        seed: None,
        ids: None,
        configs: Vec::new(),
        custom: None,
    }
}

/// Recomputes the CRCs of every GPT header found at byte 0, byte 512 and the last sector
/// (and of the entry array each one points at, when it lies inside `disk`), so mutated
/// headers get past the CRC checks and the code behind them is reached. Returns whether
/// anything was changed.
pub fn fix_gpt_crcs(disk: &mut [u8]) -> bool {
    let mut at = vec![0, 512];
    if disk.len() >= 1024 {
        at.push(disk.len() - 512);
    }
    at.dedup();
    let mut changed = false;
    for h in at {
        changed |= fix_gpt_crcs_at(disk, h);
    }
    changed
}

fn fix_gpt_crcs_at(disk: &mut [u8], h: usize) -> bool {
    let Some(sector) = disk.get(h..h + 92) else {
        return false;
    };
    if &sector[..8] != b"EFI PART" {
        return false;
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([sector[i], sector[i + 1], sector[i + 2], sector[i + 3]]);
    let size = u32_at(12) as usize;
    let mut lba = [0u8; 8];
    lba.copy_from_slice(&sector[72..80]);
    let lba = u64::from_le_bytes(lba);
    let bytes = u64::from(u32_at(80)) * u64::from(u32_at(84));
    let array = lba
        .checked_mul(512)
        .and_then(|s| Some((s, s.checked_add(bytes)?)))
        .and_then(|(s, e)| disk.get(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
    let mut changed = false;
    if let Some(array) = array {
        let crc = crc32fast::hash(array).to_le_bytes();
        changed |= disk[h + 88..h + 92] != crc;
        disk[h + 88..h + 92].copy_from_slice(&crc);
    }
    if !(92..=512).contains(&size) || h + size > disk.len() {
        return changed;
    }
    let mut hdr = disk[h..h + size].to_vec();
    hdr[16..20].fill(0);
    let crc = crc32fast::hash(&hdr).to_le_bytes();
    changed |= disk[h + 16..h + 20] != crc;
    disk[h + 16..h + 20].copy_from_slice(&crc);
    changed
}

/// Writes `bytes` to this thread's scratch file named after `name`, runs `read` on it and
/// removes it. Threads get their own file so parallel callers never read each other's
/// bytes; when the file cannot be written the reader is not run.
fn with_scratch(name: &str, bytes: &[u8], read: impl FnOnce(&Path)) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static THREAD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    let thread = THREAD.with(|t| *t);
    let p = std::env::temp_dir().join(format!(
        "skiff-flash-exercise-{}-{thread}-{name}",
        std::process::id()
    ));
    if std::fs::write(&p, bytes).is_err() {
        return;
    }
    read(&p);
    let _ = std::fs::remove_file(&p);
}

/// The images directory holding `blob.bin` (64 KiB), which the genimage and board inputs
/// name; `None` when it cannot be made. One fixed directory, made once and reused by every
/// later run, so runs leave no new directory behind.
fn images_dir() -> Option<PathBuf> {
    let d = std::env::temp_dir().join("skiff-flash-exercise-images");
    let blob = d.join("blob.bin");
    if std::fs::metadata(&blob).ok().map(|m| m.len()) != Some(64 << 10) {
        std::fs::create_dir_all(&d).ok()?;
        // Written beside and renamed, so a parallel caller never sees a short blob.
        let part = d.join(format!(
            "blob.bin.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&part, vec![0x5a; 64 << 10]).ok()?;
        std::fs::rename(&part, &blob).ok()?;
    }
    Some(d)
}
