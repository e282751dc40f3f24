//! Arbitrary bytes as a whole disk image: `inspect` and the FAT32 volumes it finds. The calls are `skiff_flash::exercise::inspect`, shared with tests/corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_flash::exercise::inspect(data));
