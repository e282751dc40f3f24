//! Filesystem writers behind one trait, chosen by the layout's `fs` kind: our FAT writers (FAT12/16/32) and
//! an ext4 writer over `mkext4`. Each measures a content tree (the smallest size that holds
//! it) and writes it into a region it is given, reporting every file it wrote with its hash.
//!
//! Not for partition tables or placement: a writer sees only its own window.

pub mod bootcfg;
pub mod ext4;
pub mod ext4_map;
pub mod fat;
pub mod probe;
pub mod squashfs;
pub mod table;
pub mod used;

use serde::Serialize;

use crate::define::board::FsKind;
use crate::error::Result;
use crate::plan::tree::Tree;
use crate::sink::Sink;

/// What a writer needs to know about the filesystem it writes.
#[derive(Debug, Clone, Copy)]
pub struct FsSpec<'a> {
    pub label: Option<&'a str>,
    /// Filesystem UUID (ext4) or volume id source (FAT uses the first 4 bytes).
    pub uuid: [u8; 16],
    /// Every timestamp in the filesystem.
    pub epoch: i64,
    pub tree: &'a Tree,
    /// Byte offset of the partition on the disk (FAT records it as hidden sectors).
    pub offset: u64,
    /// Partition id, for error messages.
    pub part: &'a str,
    /// FAT type, cluster and sector size, volume id when asked for (FAT12/16).
    pub fat: FatOptions,
    /// The large input files already being hashed (see `io::Ahead`), if any.
    pub ahead: Option<&'a crate::io::Ahead>,
}

/// What a FAT volume was asked to be, as `mkfs.fat`'s `-F`, `-s`, `-S` and `-i` say; unset
/// fields are chosen by size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FatOptions {
    /// 12 or 16 (32 is its own kind).
    #[serde(skip)]
    pub bits: Option<u8>,
    /// Sectors per cluster (a power of two up to 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_sectors: Option<u8>,
    /// Logical sector size (512 … 32768).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sector_size: Option<u16>,
    /// Volume id (shown as `XXXX-XXXX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<u32>,
}

impl FatOptions {
    pub fn is_default(&self) -> bool {
        *self == FatOptions::default()
    }
}

/// A measured content tree: how small the filesystem may be.
pub trait Measure {
    /// The smallest size, in bytes, that holds the content.
    fn min_size(&self) -> u64;
    /// Whether the content fits in exactly `size` bytes.
    fn fits(&self, size: u64) -> bool;
}

/// One file as written: for the manifest.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// Where the file's bytes lie, in file order (relative to the filesystem's window as a
    /// writer reports them, to the disk once composed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<Span>,
}

/// A byte range, written `[start, len]` to keep maps small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(from = "[u64; 2]", into = "[u64; 2]")]
pub struct Span {
    pub start: u64,
    pub len: u64,
}

impl From<[u64; 2]> for Span {
    fn from([start, len]: [u64; 2]) -> Self {
        Span { start, len }
    }
}

impl From<Span> for [u64; 2] {
    fn from(s: Span) -> Self {
        [s.start, s.len]
    }
}

impl Span {
    pub const fn new(start: u64, len: u64) -> Self {
        Span { start, len }
    }

    /// The first byte after the range (the last possible one for a range read from a
    /// damaged record that would run past it).
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// The same range `by` bytes further on.
    pub const fn shifted(self, by: u64) -> Self {
        Span::new(self.start.saturating_add(by), self.len)
    }
}

/// Appends `s` to `spans`, merged into the last one when it continues it.
pub fn push_span(spans: &mut Vec<Span>, s: Span) {
    if s.len == 0 {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.end() == s.start => last.len += s.len,
        _ => spans.push(s),
    }
}

/// One piece of a filesystem's own structure (a FAT copy, a directory, an inode table) and
/// where it lies: for naming what a difference hit.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Structure {
    pub name: String,
    pub extents: Vec<Span>,
}

impl Structure {
    pub fn new(name: impl Into<String>, extents: Vec<Span>) -> Self {
        Structure {
            name: name.into(),
            extents,
        }
    }

    /// One contiguous piece.
    pub fn at(name: impl Into<String>, start: u64, len: u64) -> Self {
        Structure::new(name, vec![Span::new(start, len)])
    }
}

/// What a writer wrote: every file with its hash and extents, and where the filesystem's
/// own structures lie.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    pub files: Vec<FileRecord>,
    pub structures: Vec<Structure>,
}

/// A filesystem writer.
pub trait FsWriter {
    /// Validates the tree for this filesystem (names, sizes) and measures it.
    fn measure(&self, spec: &FsSpec<'_>) -> Result<Box<dyn Measure>>;
    /// Writes the filesystem, `size` bytes, into `sink` (a window on the disk); extents in
    /// the answer are relative to the window.
    fn write(&self, spec: &FsSpec<'_>, size: u64, sink: &mut dyn Sink) -> Result<Placed>;
}

/// The writer for a filesystem kind.
pub fn writer(kind: FsKind) -> &'static dyn FsWriter {
    match kind {
        FsKind::Fat32 => &fat::Fat32,
        FsKind::Fat16 => &fat::FAT16,
        FsKind::Fat12 => &fat::FAT12,
        FsKind::Fat => &fat::FAT_AUTO,
        FsKind::Ext4 => &ext4::Ext4,
    }
}

#[cfg(test)]
mod tests {
    use crate::define::board::{FsKind, PartitionDef};

    #[test]
    fn a_layout_partition_takes_fat_options() {
        let p: PartitionDef = toml::from_str(
            "id = \"boot\"\nfs = \"fat16\"\nsize = \"32MiB\"\n\
             fat = { cluster_sectors = 4, sector_size = 512, volume_id = 0x1234ABCD }\n",
        )
        .unwrap();
        assert_eq!(p.fs, Some(FsKind::Fat16));
        let f = p.fat.unwrap();
        assert_eq!(f.cluster_sectors, Some(4));
        assert_eq!(f.sector_size, Some(512));
        assert_eq!(f.volume_id, Some(0x1234_ABCD));
        for (word, kind) in [("fat", FsKind::Fat), ("fat12", FsKind::Fat12)] {
            let p: PartitionDef =
                toml::from_str(&format!("id = \"b\"\nfs = \"{word}\"\nsize = \"fit\"\n")).unwrap();
            assert_eq!(p.fs, Some(kind));
        }
        assert!(
            toml::from_str::<PartitionDef>("id = \"b\"\nsize = \"fit\"\nfat = { clusters = 4 }\n")
                .is_err()
        );
    }
}
