//! Arbitrary bytes as a build manifest. The calls are `skiff_flash::exercise::manifest`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::manifest(data));
