//! Arbitrary bytes as a board file: TOML, inheritance, layouts, and a plan when it loads. The calls are `skiff_flash::exercise::board`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::board(data));
