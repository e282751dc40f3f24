//! skiff-flash: composes board-ready disks (partition table, FAT boot partition, ext4
//! rootfs and persist, raw bootloader blobs) from a Buildroot images directory, natively and
//! without privileges.
//!
//! The pipeline: `board` (definitions) → `plan::make` (every byte range decided, no writes)
//! → `compose::write` onto a `sink::Sink` → a `compose::Composed` record (what was written where). The library never
//! prints and never exits; the binary renders.

pub mod compose;
pub mod define;
pub mod device;
pub mod digest;
pub mod error;
pub mod exercise;
pub mod format;
pub mod image;
pub mod io;
pub mod mapped;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod signals;
pub mod sink;
pub mod units;

pub use error::{Error, Result};
