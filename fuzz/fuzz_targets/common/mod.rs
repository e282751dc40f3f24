#![allow(dead_code)]

//! Helpers shared by the fuzz targets (tests/corpus.rs keeps its own copy of the same
//! calls, so the regression test needs nothing from this crate).

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
        let Some(sector) = disk.get(h..h + 92) else {
            continue;
        };
        if &sector[..8] != b"EFI PART" {
            continue;
        }
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let size = u32_at(sector, 12) as usize;
        let lba = u64::from_le_bytes(sector[72..80].try_into().unwrap());
        let bytes = u64::from(u32_at(sector, 80)) * u64::from(u32_at(sector, 84));
        let array = lba
            .checked_mul(512)
            .and_then(|s| Some((s, s.checked_add(bytes)?)))
            .and_then(|(s, e)| disk.get(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        if let Some(array) = array {
            let crc = crc32fast::hash(array).to_le_bytes();
            changed |= disk[h + 88..h + 92] != crc;
            disk[h + 88..h + 92].copy_from_slice(&crc);
        }
        if !(92..=512).contains(&size) || h + size > disk.len() {
            continue;
        }
        let mut hdr = disk[h..h + size].to_vec();
        hdr[16..20].fill(0);
        let crc = crc32fast::hash(&hdr).to_le_bytes();
        changed |= disk[h + 16..h + 20] != crc;
        disk[h + 16..h + 20].copy_from_slice(&crc);
    }
    changed
}

/// A per-process scratch file for the readers that take a path.
pub fn scratch(name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("skiff-flash-fuzz-{name}-{}", std::process::id()));
    std::fs::write(&p, data).expect("writing the scratch file");
    p
}

/// A per-process images directory holding `blob.bin` (64 KiB), for configs that name files.
pub fn images_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("skiff-flash-fuzz-images-{}", std::process::id()));
    if !d.join("blob.bin").is_file() {
        std::fs::create_dir_all(&d).expect("creating the images directory");
        std::fs::write(d.join("blob.bin"), vec![0x5a; 64 << 10]).expect("writing blob.bin");
    }
    d
}
