//! Arbitrary bytes as a U-Boot legacy image (boot.scr): the header parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_flash::format::bootcfg::uimage::parse;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
});
