//! Arbitrary bytes as a bmap file: `image::bmap::read`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("bmap", data);
    let _ = skiff_flash::image::bmap::read(&p);
});
