//! Arbitrary bytes as a U-Boot legacy image (boot.scr): the header parser. The calls are `skiff_flash::exercise::uimage`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::uimage(data));
