//! Arbitrary bytes as a whole disk image: `inspect`, then every FAT32 volume it found and
//! a FAT32 volume at offset 0 opened, listed and every file read. Run once on the bytes as
//! given and once more with the GPT CRCs recomputed (see `common::fix_gpt_crcs`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use skiff_flash::format::fat::read::FatVolume;
use skiff_flash::ops::inspect::inspect;

fn fat(disk: &Vec<u8>, base: u64, len: u64) {
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

fn run(disk: &Vec<u8>) {
    let found = inspect(disk);
    let _ = serde_json::to_string(&found);
    let size = disk.len() as u64;
    for p in &found.partitions {
        if p.fs.kind == "fat32" {
            fat(disk, p.start, p.size.min(size.saturating_sub(p.start)));
        }
    }
    fat(disk, 0, size);
}

fuzz_target!(|data: &[u8]| {
    let mut disk = data.to_vec();
    run(&disk);
    if common::fix_gpt_crcs(&mut disk) {
        run(&disk);
    }
});
