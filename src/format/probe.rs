//! What filesystem a region of a disk holds, from its first bytes: ext4 (superblock at
//! 1 KiB), squashfs (`hsqs`), FAT12/16/32 (boot sector signature and type string, then the
//! volume opened to learn its real type). The one place that knows where each
//! filesystem keeps its magic, label, identifier and size.
//!
//! Not for reading content: `fat::read` and mkext4's reader do that.

use crate::format::fat::read::FatVolume;
use crate::io::ReadAt;

/// The kinds a probe tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ext4,
    Squashfs,
    Fat12,
    Fat16,
    Fat32,
    Unknown,
}

impl Kind {
    /// The lower-case name reports and `--json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ext4 => "ext4",
            Kind::Squashfs => "squashfs",
            Kind::Fat12 => "fat12",
            Kind::Fat16 => "fat16",
            Kind::Fat32 => "fat32",
            Kind::Unknown => "unknown",
        }
    }

    pub fn is_fat(self) -> bool {
        matches!(self, Kind::Fat12 | Kind::Fat16 | Kind::Fat32)
    }
}

/// What a probe found.
pub struct Probe<'a> {
    pub kind: Kind,
    pub label: Option<String>,
    /// The identifier as stored: ext4's 16-byte UUID, or FAT's 4-byte volume id (the rest
    /// zero), as the writers take it back.
    pub id: Option<[u8; 16]>,
    /// Bytes the filesystem says it spans (FAT: its data clusters).
    pub size: Option<u64>,
    /// Why a volume with a FAT signature could not be opened.
    pub problem: Option<String>,
    /// The FAT volume, opened, for a caller that reads on (its FAT is read once).
    pub fat: Option<FatVolume<'a>>,
}

const EXT4_SB: usize = 1024;

/// Identifies the filesystem at `[start, start+len)`.
pub fn probe(dev: &dyn ReadAt, start: u64, len: u64) -> Probe<'_> {
    let head = dev.read_padded(start, 4096.min(len as usize));
    let mut p = Probe {
        kind: Kind::Unknown,
        label: None,
        id: None,
        size: None,
        problem: None,
        fat: None,
    };
    if let Some(sb) = head.get(EXT4_SB..EXT4_SB + 136)
        && sb[56..58] == [0x53, 0xEF]
    {
        let blocks = u64::from(u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]));
        let log = u32::from_le_bytes([sb[24], sb[25], sb[26], sb[27]]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&sb[104..120]);
        p.kind = Kind::Ext4;
        p.label = Some(
            String::from_utf8_lossy(&sb[120..136])
                .trim_end_matches('\0')
                .to_string(),
        );
        p.id = Some(id);
        p.size = (log < 8).then(|| blocks * (1024 << log));
        return p;
    }
    if head.starts_with(b"hsqs") {
        p.kind = Kind::Squashfs;
        // A partition cut short by the end of the disk may not hold the whole superblock.
        p.size = head
            .get(40..48)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        return p;
    }
    let fat_sig = head.len() >= 512
        && head[510..512] == [0x55, 0xAA]
        && (&head[82..87] == b"FAT32" || &head[54..59] == b"FAT12" || &head[54..59] == b"FAT16");
    if !fat_sig {
        return p;
    }
    p.kind = if &head[82..87] == b"FAT32" {
        Kind::Fat32
    } else {
        Kind::Fat16
    };
    // The volume id as stored, readable even when the rest of the volume is not.
    let at = if p.kind == Kind::Fat32 { 67 } else { 39 };
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&head[at..at + 4]);
    p.id = Some(id);
    match FatVolume::open(dev, start, len) {
        Ok(v) => {
            p.kind = match v.fat_type {
                "FAT12" => Kind::Fat12,
                "FAT16" => Kind::Fat16,
                _ => Kind::Fat32,
            };
            p.label = Some(v.label.clone());
            p.size = Some(u64::from(v.clusters()) * v.cluster_bytes());
            p.fat = Some(v);
        }
        Err(e) => p.problem = Some(e.to_string()),
    }
    p
}
