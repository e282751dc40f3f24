//! Arbitrary bytes as a build manifest: `manifest::load`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("manifest", data);
    let _ = skiff_flash::image::manifest::load(&p);
});
