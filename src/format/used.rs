//! Which bytes of a filesystem hold anything, for copying only those (`backup`): a FAT's
//! reserved area, FATs and root directory plus every allocated cluster; an ext4's metadata
//! (superblock and descriptor copies, bitmaps, inode tables, always) plus every block its
//! group bitmaps mark used (groups flagged BLOCK_UNINIT have none; flex_bg's packed
//! metadata is found through the descriptors wherever it lives); a squashfs's bytes used.
//! Anything else, or a filesystem that cannot be read, is used whole, with the reason.
//!
//! Not for reading files (`fat::read`, mkext4's reader) or telling filesystems apart
//! (`probe`).

use crate::format::fat::read::FatVolume;
use crate::format::probe::{Kind, Probe};
use crate::io::{PartReader, ReadAt};
use crate::units::Extent;

/// What of a partition must be copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Used {
    /// These ranges (from the partition's start, sorted, not overlapping).
    Allocated(Vec<Extent>),
    /// All of it, and why.
    Whole(String),
}

/// ext4 superblock: `s_backup_bgs` (sparse_super2's two backup groups).
const BACKUP_BGS: u64 = 1024 + 0x24C;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const BLOCK_UNINIT: u16 = 0x2;

/// The used ranges of the filesystem `probe` found at `[start, start+len)` of `dev`.
pub fn used(dev: &dyn ReadAt, start: u64, len: u64, probe: &Probe<'_>) -> Used {
    match probe.kind {
        Kind::Fat12 | Kind::Fat16 | Kind::Fat32 => match &probe.fat {
            Some(v) => Used::Allocated(fat_used(v, len)),
            None => Used::Whole(format!(
                "FAT volume cannot be read: {}",
                probe.problem.as_deref().unwrap_or("unknown problem")
            )),
        },
        Kind::Ext4 => match ext4_used(dev, start, len) {
            Ok(v) => Used::Allocated(v),
            Err(e) => Used::Whole(format!("ext4 cannot be read: {e}")),
        },
        Kind::Squashfs => match probe.size {
            Some(n) if n <= len => {
                Used::Allocated(vec![Extent::new(0, n.next_multiple_of(4096).min(len))])
            }
            _ => Used::Whole("squashfs size unreadable".into()),
        },
        Kind::Unknown => Used::Whole("no FAT, ext4 or squashfs filesystem found".into()),
    }
}

/// The reserved sectors, FATs and fixed root directory, then every cluster whose FAT entry
/// is not free.
fn fat_used(v: &FatVolume<'_>, len: u64) -> Vec<Extent> {
    let cluster = v.cluster_bytes();
    let mut out = Runs::default();
    out.push(0, v.geometry().data_start());
    for c in 2..v.clusters().saturating_add(2) {
        if v.next(c).is_some_and(|e| e != 0) {
            out.push(v.cluster_offset(c), cluster);
        }
    }
    out.finish(len)
}

/// Metadata of every group, then the blocks each initialised block bitmap marks used.
fn ext4_used(dev: &dyn ReadAt, start: u64, len: u64) -> Result<Vec<Extent>, String> {
    let part = PartReader {
        dev,
        base: start,
        len,
    };
    let fs = mkext4::reader::Fs::open(part).map_err(|e| e.to_string())?;
    let sb = fs.superblock();
    let bs = sb.block_size();
    let bpg = u64::from(sb.blocks_per_group);
    let first = u64::from(sb.first_data_block);
    let groups = sb.group_count();
    let gdt = (groups * sb.desc_size() as u64).div_ceil(bs);
    let head = 1 + gdt + u64::from(sb.reserved_gdt_blocks);
    let itable = (u64::from(sb.inodes_per_group) * u64::from(sb.inode_size)).div_ceil(bs);
    let backups = Backups::read(dev, start, sb, groups);
    let mut out = Runs::default();
    // Block 0 holds the boot sector and, with 4 KiB blocks, the superblock.
    out.push(0, first.saturating_add(head).saturating_mul(bs));
    for g in 0..groups {
        let d = fs.group_desc(g).map_err(|e| e.to_string())?;
        let gstart = first.saturating_add(g.saturating_mul(bpg));
        let glen = bpg.min(sb.blocks_count.saturating_sub(gstart));
        // Hostile descriptors may name any block: products saturate, `finish` clips.
        if backups.has(g) {
            out.push(gstart.saturating_mul(bs), head * bs);
        }
        out.push(d.block_bitmap.saturating_mul(bs), bs);
        out.push(d.inode_bitmap.saturating_mul(bs), bs);
        out.push(d.inode_table.saturating_mul(bs), itable * bs);
        if d.flags & BLOCK_UNINIT != 0 {
            continue;
        }
        let bitmap = fs.read_block(d.block_bitmap).map_err(|e| e.to_string())?;
        for i in 0..glen.min(bitmap.len() as u64 * 8) {
            if bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                out.push((gstart + i).saturating_mul(bs), bs);
            }
        }
    }
    Ok(out.finish(len))
}

/// Which groups hold a superblock and descriptor copy.
struct Backups {
    sparse: bool,
    sparse2: Option<[u64; 2]>,
}

impl Backups {
    fn read(dev: &dyn ReadAt, start: u64, sb: &mkext4::spec::Superblock, groups: u64) -> Backups {
        let sparse2 = (sb.feature_compat & COMPAT_SPARSE_SUPER2 != 0).then(|| {
            let b = dev.read_padded(start + BACKUP_BGS, 8);
            let g = |i: usize| u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
            [g(0), g(4)].map(|x| x.min(groups))
        });
        Backups {
            sparse: sb.feature_ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
            sparse2,
        }
    }

    fn has(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(bgs) = self.sparse2 {
            return bgs.contains(&g);
        }
        !self.sparse || g == 1 || [3u64, 5, 7].iter().any(|&b| is_power_of(g, b))
    }
}

fn is_power_of(mut g: u64, base: u64) -> bool {
    while g > 1 && g.is_multiple_of(base) {
        g /= base;
    }
    g == 1
}

/// Ranges collected in any order, merged when done.
#[derive(Default)]
struct Runs(Vec<Extent>);

impl Runs {
    fn push(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        match self.0.last_mut() {
            Some(l) if l.start.checked_add(l.len) == Some(start) => {
                l.len = l.len.saturating_add(len)
            }
            _ => self.0.push(Extent::new(start, len)),
        }
    }

    /// Sorted, merged, and cut to `[0, len)`.
    fn finish(mut self, len: u64) -> Vec<Extent> {
        self.0.sort_unstable();
        let mut out: Vec<Extent> = Vec::with_capacity(self.0.len());
        for e in self.0 {
            let end = e.start.saturating_add(e.len).min(len);
            if e.start >= end {
                continue;
            }
            match out.last_mut() {
                Some(l) if e.start <= l.end() => l.len = l.len.max(end - l.start),
                _ => out.push(Extent::new(e.start, end - e.start)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_clip() {
        let mut r = Runs::default();
        r.push(8192, 4096);
        r.push(0, 4096);
        r.push(4096, 4096);
        r.push(20_000, 10_000);
        assert_eq!(
            r.finish(25_000),
            vec![Extent::new(0, 12_288), Extent::new(20_000, 5_000)]
        );
    }

    #[test]
    fn sparse_super_groups() {
        let b = Backups {
            sparse: true,
            sparse2: None,
        };
        let with: Vec<u64> = (0..50).filter(|&g| b.has(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
