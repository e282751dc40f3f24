//! Arbitrary bytes as a board file: `Catalog::board_file` (TOML, inheritance from the
//! built-in boards, layout resolution) and, when that succeeds, `plan::make` over an images
//! directory with one blob.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = common::scratch("board.toml", data);
    let catalog = skiff_flash::define::board::Catalog::new(&[]);
    if let Ok(board) = catalog.board_file(&file) {
        let _ = serde_json::to_string(&board);
        let _ = skiff_flash::plan::make(
            &board,
            &skiff_flash::plan::Options {
                images: common::images_dir(),
                size: None,
                epoch: 0,
                seed: None,
                ids: None,
                configs: Vec::new(),
            },
        );
    }
});
