//! Where an ext4 filesystem's own structures lie (superblock and its backups, group
//! descriptors, bitmaps, inode tables, journal, directories), read with mkext4's reader
//! from the metadata the writer emitted, kept aside as it passed: the map the manifest
//! records to name what a changed byte belongs to.
//!
//! Not for file data (the writer's layout knows where files go) and not for checking a
//! filesystem (that is mkext4's reader and `e2fsck`).

use std::collections::BTreeMap;

use mkext4::reader::Fs;

use crate::format::{Span, Structure, push_span};

const BLOCK: u64 = 4096;
/// `s_feature_ro_compat`: superblock backups only in groups 0, 1 and powers of 3, 5, 7.
const SPARSE_SUPER: u32 = 0x1;
const ROOT_INO: u32 = 2;
/// Directory entries' `file_type` for a directory.
const FT_DIR: u8 = 2;

/// The metadata writes of a filesystem, all-zero blocks left out: read back as an image
/// whose other bytes are zero.
#[derive(Default)]
pub struct Captured {
    pieces: BTreeMap<u64, Vec<u8>>,
}

impl Captured {
    /// Keeps the parts of a write that are not all zero.
    pub fn keep(&mut self, offset: u64, bytes: &[u8]) {
        for r in crate::io::nonzero_runs(bytes, BLOCK as usize) {
            self.pieces
                .insert(offset + r.start as u64, bytes[r].to_vec());
        }
    }
}

impl mkext4::reader::ReadAt for Captured {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        // Pieces never overlap: the writer writes each metadata byte once.
        for (&at, piece) in self.pieces.range(..end).rev() {
            let piece_end = at + piece.len() as u64;
            if piece_end <= offset {
                break;
            }
            let a = at.max(offset);
            let b = piece_end.min(end);
            buf[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&piece[(a - at) as usize..(b - at) as usize]);
        }
        Ok(())
    }
}

/// The structures of the filesystem whose metadata `meta` holds, offsets from its start.
pub fn structures(meta: &Captured) -> mkext4::Result<Vec<Structure>> {
    let fs = Fs::open(meta)?;
    let sb = fs.superblock().clone();
    let groups = sb.group_count();
    let gdt_blocks = (groups * sb.desc_size() as u64).div_ceil(BLOCK);
    let per_group = u64::from(sb.blocks_per_group);
    let mut out = vec![
        Structure::at("ext4 superblock", 1024, 1024),
        Structure::at("ext4 group descriptors", BLOCK, gdt_blocks * BLOCK),
    ];
    let sparse = sb.feature_ro_compat & SPARSE_SUPER != 0;
    for g in 1..groups {
        if sparse && !has_backup(g) {
            continue;
        }
        let at = g * per_group * BLOCK;
        out.push(Structure::at(
            format!("ext4 superblock (backup in group {g})"),
            at,
            1024,
        ));
        out.push(Structure::at(
            format!("ext4 group descriptors (backup in group {g})"),
            at + BLOCK,
            gdt_blocks * BLOCK,
        ));
    }
    let itable = (u64::from(sb.inodes_per_group) * u64::from(sb.inode_size)).div_ceil(BLOCK);
    for g in 0..groups {
        let d = fs.group_desc(g)?;
        for (what, block, n) in [
            ("block bitmap", d.block_bitmap, 1),
            ("inode bitmap", d.inode_bitmap, 1),
            ("inode table", d.inode_table, itable),
        ] {
            out.push(Structure::at(
                format!("ext4 {what} (group {g})"),
                block * BLOCK,
                n * BLOCK,
            ));
        }
    }
    if sb.journal_inum != 0 {
        out.push(Structure::new(
            "ext4 journal",
            blocks_of(&fs, sb.journal_inum)?,
        ));
    }
    directories(&fs, &mut out)?;
    Ok(out)
}

/// Groups 1 and powers of 3, 5 and 7 hold backups under `sparse_super`.
fn has_backup(g: u64) -> bool {
    let power_of = |base: u64| {
        let mut n = g;
        while n.is_multiple_of(base) {
            n /= base;
        }
        n == 1
    };
    g == 1 || power_of(3) || power_of(5) || power_of(7)
}

/// The byte ranges an inode's blocks cover, merged.
fn blocks_of(fs: &Fs<&Captured>, ino: u32) -> mkext4::Result<Vec<Span>> {
    let inode = fs.inode(ino)?;
    let mut spans = Vec::new();
    for e in fs.extents(ino, &inode)? {
        push_span(
            &mut spans,
            Span::new(e.physical * BLOCK, u64::from(e.len) * BLOCK),
        );
    }
    Ok(spans)
}

/// Every directory's blocks, named by its path, breadth first from the root.
fn directories(fs: &Fs<&Captured>, out: &mut Vec<Structure>) -> mkext4::Result<()> {
    let mut queue = std::collections::VecDeque::from([(ROOT_INO, "/".to_string())]);
    while let Some((ino, path)) = queue.pop_front() {
        out.push(Structure::new(
            format!("ext4 directory {path}"),
            blocks_of(fs, ino)?,
        ));
        for e in fs.read_dir(ino)? {
            if e.file_type != FT_DIR || e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8_lossy(&e.name);
            let child = match path.as_str() {
                "/" => format!("/{name}"),
                _ => format!("{path}/{name}"),
            };
            queue.push_back((e.inode, child));
        }
    }
    Ok(())
}
