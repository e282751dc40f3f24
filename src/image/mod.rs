//! Image files and what travels with them: writing a plain sparse or compressed image,
//! the manifest, the block map and checksums, and the set of outputs committed together.

pub mod bmap;
pub mod codec;
pub mod file;
pub mod manifest;
pub mod output;
pub mod read;
pub mod release;
pub mod sums;
