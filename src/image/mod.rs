//! Image files and what travels with them: writing a plain sparse or compressed image,
//! the manifest and the map of what lies where, the block map and checksums, and the set of
//! outputs committed together.

pub mod bmap;
pub mod codec;
pub mod fetch;
pub mod file;
pub mod manifest;
pub mod map;
pub mod output;
pub mod read;
pub mod release;
pub mod remote;
pub mod sign;
pub mod sums;
pub mod trust;
