//! Arbitrary bytes as the head of a disk: the MBR and GPT readers, with a GPT header tried
//! at byte 0 and at byte 512 (its entry array where the header says). Run once on the
//! bytes as given and once more with the GPT CRCs recomputed.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use skiff_flash::format::table::read::{gpt_entries, gpt_from_head, gpt_header, mbr};

fn run(data: &[u8]) {
    let _ = mbr(data);
    let _ = gpt_from_head(data);
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

fuzz_target!(|data: &[u8]| {
    run(data);
    let mut fixed = data.to_vec();
    if common::fix_gpt_crcs(&mut fixed) {
        run(&fixed);
    }
});
