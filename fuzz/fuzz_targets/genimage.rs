//! Arbitrary bytes as a genimage config: parse, translation to a board, and a plan when it loads. The calls are `skiff_flash::exercise::genimage`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::genimage(data));
