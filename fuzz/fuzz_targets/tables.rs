//! Arbitrary bytes as the head of a disk: the MBR and GPT readers. The calls are `skiff_flash::exercise::tables`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::tables(data));
