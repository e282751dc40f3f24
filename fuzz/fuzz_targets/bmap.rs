//! Arbitrary bytes as a bmap file: `flash::read_bmap`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("bmap", data);
    let _ = skiff_flash::ops::flash::read_bmap(&p);
});
