//! Arbitrary bytes as a genimage config: `genimage::load` (parse, typed config, translation
//! to a board) and, when that succeeds, `plan::make` over an images directory with one blob.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = common::scratch("genimage.cfg", data);
    let images = common::images_dir();
    let opts = skiff_flash::define::genimage::Options {
        images: images.clone(),
        rootpath: None,
        size: None,
        defines: Default::default(),
    };
    if let Ok(board) = skiff_flash::define::genimage::load(&cfg, &opts) {
        let _ = skiff_flash::plan::make(
            &board,
            &skiff_flash::plan::Options {
                images,
                size: None,
                epoch: 0,
                seed: None,
                ids: None,
                configs: Vec::new(),
            },
        );
    }
});
