//! Filesystem writers behind one trait, chosen by the layout's `fs` kind: our FAT writers (FAT12/16/32) and
//! an ext4 writer over `mkext4`. Each measures a content tree (the smallest size that holds
//! it) and writes it into a region it is given, reporting every file it wrote with its hash.
//!
//! Not for partition tables or placement: a writer sees only its own window.

pub mod bootcfg;
pub mod ext4;
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
}

/// A filesystem writer.
pub trait FsWriter {
    /// Validates the tree for this filesystem (names, sizes) and measures it.
    fn measure(&self, spec: &FsSpec<'_>) -> Result<Box<dyn Measure>>;
    /// Writes the filesystem, `size` bytes, into `sink` (a window on the disk).
    fn write(&self, spec: &FsSpec<'_>, size: u64, sink: &mut dyn Sink) -> Result<Vec<FileRecord>>;
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
