//! Arbitrary bytes as a bmap file. The calls are `skiff_flash::exercise::bmap`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::bmap(data));
