//! skiff-flash: composes board-ready disks (partition table, FAT boot partition, ext4
//! rootfs and persist, raw bootloader blobs) from a Buildroot images directory, natively and
//! without privileges.
//!
//! The pipeline: `board` (definitions) → `plan::make` (every byte range decided, no writes)
//! → `compose::write` onto a `target::Sink` → a `compose::Manifest`. The library never
//! prints and never exits; the binary renders.

pub mod artifacts;
pub mod board;
pub mod bootcfg;
pub mod compose;
pub mod error;
pub mod fs;
pub mod io;
pub mod layout;
pub mod plan;
pub mod table;
pub mod target;
pub mod tree;
pub mod units;

pub use error::{Error, Result};

use std::path::Path;

/// Plans and writes `board` to a new sparse image file at `output`; the file appears only
/// when everything succeeded.
pub fn build_image(
    plan: &plan::Plan,
    output: &Path,
    progress: compose::Progress<'_>,
) -> Result<(compose::Manifest, u64)> {
    let mut img = target::ImageFile::create(output, plan.disk_size)?;
    let manifest = compose::write(plan, &mut img, progress)?;
    let written = img.written();
    img.commit()?;
    Ok((manifest, written))
}
