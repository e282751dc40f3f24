//! A release image (`.img`, `.img.zst`, `.img.gz`, `.img.xz`) as the source of what a card
//! should hold, without the images directory it was built from. A compressed image cannot
//! seek, so it is decoded once, streaming, into a spool: an unlinked sparse temporary file
//! that receives only the non-zero blocks of the ranges asked for (the tables and what lies
//! before the first partition, and the partitions wanted). Its table, filesystems and files
//! are then read from the spool; a file's bytes stay there (`Source::Spooled`), so memory
//! stays flat whatever the image holds.
//!
//! Not for writing images (`file`), comparing bytes (`ops::verify`) or deciding what an
//! upgrade does with the content (`ops::upgrade`).

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::ext4::{S_IFDIR, S_IFLNK, S_IFREG, walk};
use crate::format::fat::read::FatVolume;
use crate::format::probe::{Kind, probe};
use crate::format::table::TableEntry;
use crate::format::table::read::DiskTable;
use crate::image::manifest::{self, Manifest};
use crate::image::read::{check_image_file, decode_each};
use crate::image::sign::PublicKey;
use crate::image::trust::Checked;
use crate::io::{PartReader, nonzero_runs};
use crate::plan::tree::{Entry, Node, Piece, Source, Spooled, Tree};
use crate::units::{Extent, bytes};

const CHUNK: usize = 4 << 20;
const BLOCK: usize = 4096;

/// Which partitions of the image to spool (besides everything before the first one).
#[derive(Debug, Clone)]
pub enum Wanted {
    All,
    /// Table entries by index.
    Only(Vec<usize>),
}

/// A decoded release image.
#[derive(Debug)]
pub struct Release {
    pub path: PathBuf,
    /// The manifest found beside the image, when there is one.
    pub manifest: Option<Manifest>,
    pub spool: Arc<File>,
    /// The image's uncompressed size.
    pub size: u64,
    pub table: DiskTable,
    /// The non-zero ranges spooled, ascending.
    pub mapped: Vec<Extent>,
}

impl Release {
    /// The manifest beside `path` (`IMAGE.manifest.json`), if any, without decoding the image.
    /// A manifest written for another file (its recorded size is not the image's) is
    /// refused rather than trusted.
    pub fn manifest_of(path: &Path) -> Result<Option<Manifest>> {
        check_image_file(path)?;
        let at = manifest::path_for(path);
        if !at.exists() {
            return Ok(None);
        }
        let m = manifest::load(&at)?;
        describes(path, &at, &m)?;
        Ok(Some(m))
    }

    /// The manifest beside `path`, which must carry a valid signature by one of `trusted`
    /// and describe the image; with the hash every mapped range must have.
    pub fn trusted_manifest(path: &Path, trusted: &[PublicKey]) -> Result<(Manifest, Checked)> {
        check_image_file(path)?;
        let (m, _, checked) = crate::image::trust::open(path, trusted)?;
        describes(path, &manifest::path_for(path), &m)?;
        Ok((m, checked))
    }

    /// Decodes `path` once into a spool holding what `wanted` asks for. A corrupt or
    /// truncated stream, or an image without a partition table, is an error naming the file.
    /// With trusted keys, the manifest must be signed by one of them, every signed range
    /// must match as it is decoded, and only signed bytes are kept.
    pub fn open(path: &Path, wanted: &Wanted, trusted: &[PublicKey]) -> Result<Release> {
        let (manifest, checked) = if trusted.is_empty() {
            (Release::manifest_of(path)?, None)
        } else {
            let (m, c) = Release::trusted_manifest(path, trusted)?;
            (Some(m), Some(c))
        };
        let signed = checked.as_ref().map(Checked::extents);
        let mut check = checked.as_ref().map(|c| c.checker(path));
        let mut mismatch = None;
        let spool = spool_file()?;
        let mut keep: Option<Vec<Extent>> = None;
        let mut table = None;
        let mut mapped: Vec<Extent> = Vec::new();
        let mut failed = None;
        let size = decode_each(path, CHUNK, |at, buf| {
            if let Some(c) = &mut check
                && let Err(e) = c.feed(at, buf)
            {
                mismatch = Some(e);
                return ControlFlow::Break(());
            }
            if at == 0 {
                table = DiskTable::parse(&buf[..buf.len().min(DiskTable::HEAD as usize)]).ok();
                keep = table.as_ref().map(|t| keep_ranges(&t.entries, wanted));
            }
            for r in nonzero_runs(buf, BLOCK) {
                let run = Extent::new(at + r.start as u64, (r.end - r.start) as u64);
                let kept = clip(run, keep.as_deref());
                for part in kept.into_iter().flat_map(|p| clip(p, signed.as_deref())) {
                    let off = (part.start - at) as usize;
                    let b = &buf[off..off + part.len as usize];
                    if let Err(e) = std::os::unix::fs::FileExt::write_all_at(&spool, b, part.start)
                    {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                    push_merged(&mut mapped, part);
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = mismatch {
            return Err(e);
        }
        if let Some(c) = &check {
            c.finish()?;
        }
        if let Some(e) = failed {
            return Err(spool_error(e));
        }
        spool.set_len(size).map_err(spool_error)?;
        let table = table.ok_or_else(|| Error::BadArtifact {
            path: path.to_path_buf(),
            message: "no partition table in the image's first MiB".into(),
        })?;
        Ok(Release {
            path: path.to_path_buf(),
            manifest,
            spool: Arc::new(spool),
            size,
            table,
            mapped,
        })
    }

    /// The content of the filesystem in table entry `e` as a tree whose files are read
    /// from the spool.
    pub fn tree(&self, e: &TableEntry) -> Result<Tree> {
        let bad = |m: String| Error::BadArtifact {
            path: self.path.clone(),
            message: format!("partition {}: {m}", e.number),
        };
        let found = probe(&*self.spool, e.start, e.size);
        match (found.kind, found.fat) {
            (Kind::Ext4, _) => ext4_tree(&self.spool, e).map_err(bad),
            (k, Some(vol)) if k.is_fat() => fat_tree(&self.spool, &vol, e).map_err(bad),
            (k, _) => Err(bad(format!(
                "holds {}, not a filesystem whose files can be read{}",
                k.as_str(),
                found.problem.map(|p| format!(" ({p})")).unwrap_or_default()
            ))),
        }
    }

    /// `len` bytes at `at` of the decoded image, as a source.
    pub fn bytes_at(&self, at: u64, len: u64) -> Source {
        Source::Spooled(Spooled {
            file: self.spool.clone(),
            pieces: vec![Piece { at: Some(at), len }],
        })
    }
}

/// An unlinked temporary file (in `TMPDIR`): nothing is left behind however the run ends.
fn spool_file() -> Result<File> {
    let dir = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path = dir.join(format!(".skiff-flash-{}-{nanos}.spool", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(spool_error)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

fn spool_error(e: std::io::Error) -> Error {
    Error::io(
        format!(
            "decoding the image into a temporary file in {} (set TMPDIR to a roomier place)",
            std::env::temp_dir().display()
        ),
        e,
    )
}

/// What to spool: everything before the first partition (tables, bootloaders), and the
/// partitions wanted. `None` keeps everything.
fn keep_ranges(entries: &[TableEntry], wanted: &Wanted) -> Vec<Extent> {
    let first = entries.iter().map(|e| e.start).min().unwrap_or(u64::MAX);
    let mut keep = vec![Extent::new(0, first)];
    for (i, e) in entries.iter().enumerate() {
        if matches!(wanted, Wanted::All) || matches!(wanted, Wanted::Only(v) if v.contains(&i)) {
            keep.push(Extent::new(e.start, e.size));
        }
    }
    if matches!(wanted, Wanted::All) {
        // What lies after the partitions (a backup GPT) too.
        let end = entries
            .iter()
            .map(|e| e.start.saturating_add(e.size))
            .max()
            .unwrap_or(0);
        keep.push(Extent::new(end, u64::MAX - end));
    }
    keep
}

/// The parts of `run` inside `keep` (all of it while no table is known yet).
fn clip(run: Extent, keep: Option<&[Extent]>) -> Vec<Extent> {
    let Some(keep) = keep else {
        return vec![run];
    };
    keep.iter()
        .filter_map(|k| {
            let s = run.start.max(k.start);
            let e = run.end().min(k.start.saturating_add(k.len));
            (s < e).then(|| Extent::new(s, e - s))
        })
        .collect()
}

fn push_merged(v: &mut Vec<Extent>, x: Extent) {
    match v.last_mut() {
        Some(l) if l.end() == x.start => l.len += x.len,
        _ => v.push(x),
    }
}

fn entry(path: String, node: Node, mode: u32, uid: u32, gid: u32) -> Entry {
    Entry {
        path,
        node,
        mode,
        uid,
        gid,
    }
}

fn insert(t: &mut Tree, e: Entry) -> std::result::Result<(), String> {
    t.insert(e).map_err(|c| c.0)
}

/// A FAT volume's files, each as the runs of its cluster chain.
fn fat_tree(
    spool: &Arc<File>,
    vol: &FatVolume<'_>,
    part: &TableEntry,
) -> std::result::Result<Tree, String> {
    let mut t = Tree::new();
    let cb = vol.cluster_bytes();
    for f in vol.list().map_err(|e| e.to_string())? {
        if f.is_dir {
            insert(&mut t, entry(f.path, Node::Dir, 0o755, 0, 0))?;
            continue;
        }
        let mut pieces: Vec<Piece> = Vec::new();
        if f.size > 0 {
            let n = f.size.div_ceil(cb);
            let chain = vol.chain(f.first_cluster, n).map_err(|e| e.to_string())?;
            if (chain.len() as u64) < n {
                return Err(format!("{}: cluster chain shorter than the file", f.path));
            }
            let mut left = f.size;
            for c in chain {
                let len = left.min(cb);
                let at = part.start.saturating_add(vol.cluster_offset(c));
                match pieces.last_mut() {
                    Some(Piece {
                        at: Some(a),
                        len: l,
                    }) if *a + *l == at => *l += len,
                    _ => pieces.push(Piece { at: Some(at), len }),
                }
                left -= len;
            }
        }
        let node = spooled(spool, pieces, f.size);
        insert(&mut t, entry(f.path, node, 0o644, 0, 0))?;
    }
    Ok(t)
}

fn spooled(spool: &Arc<File>, pieces: Vec<Piece>, size: u64) -> Node {
    Node::File {
        source: Source::Spooled(Spooled {
            file: spool.clone(),
            pieces,
        }),
        size,
    }
}

/// An ext4 filesystem's entries with their modes and owners; files as the runs of their
/// extents (holes and unwritten extents read as zeros).
fn ext4_tree(spool: &Arc<File>, part: &TableEntry) -> std::result::Result<Tree, String> {
    let r = PartReader {
        dev: &**spool,
        base: part.start,
        len: part.size,
    };
    let ext = mkext4::reader::Fs::open(r).map_err(|e| format!("ext4: {e}"))?;
    let block = 1024u64 << ext.superblock().log_block_size;
    let mut found = HashMap::new();
    walk(&ext, 2, "", &mut found, 0)?;
    let mut paths: Vec<&String> = found.keys().collect();
    paths.sort();
    let mut t = Tree::new();
    for path in paths {
        let f = &found[path];
        let node = match f.kind {
            S_IFDIR => Node::Dir,
            S_IFLNK => Node::Symlink {
                target: String::from_utf8_lossy(f.target.as_deref().unwrap_or_default())
                    .into_owned(),
            },
            S_IFREG => {
                let inode = ext.inode(f.ino).map_err(|e| format!("{path}: {e}"))?;
                let extents = ext
                    .extents(f.ino, &inode)
                    .map_err(|e| format!("{path}: {e}"))?;
                let pieces = file_pieces(&extents, block, part.start, f.size);
                spooled(spool, pieces, f.size)
            }
            _ => {
                return Err(format!(
                    "{path}: a device node, fifo or socket, which no build carries"
                ));
            }
        };
        insert(&mut t, entry(path.clone(), node, f.mode, f.uid, f.gid))?;
    }
    Ok(t)
}

/// A file's bytes as pieces of the disk, in file order, `size` bytes in all.
fn file_pieces(
    extents: &[mkext4::reader::FileExtent],
    block: u64,
    base: u64,
    size: u64,
) -> Vec<Piece> {
    let mut sorted: Vec<_> = extents.iter().filter(|e| !e.unwritten).collect();
    sorted.sort_by_key(|e| e.logical);
    let mut pieces = Vec::new();
    let mut at = 0u64;
    for e in sorted {
        let start = u64::from(e.logical) * block;
        if start >= size {
            break;
        }
        if start > at {
            pieces.push(Piece {
                at: None,
                len: start - at,
            });
        }
        let len = (u64::from(e.len) * block).min(size - start);
        pieces.push(Piece {
            at: Some(base.saturating_add(e.physical.saturating_mul(block))),
            len,
        });
        at = start + len;
    }
    if at < size {
        pieces.push(Piece {
            at: None,
            len: size - at,
        });
    }
    pieces
}

/// A manifest describes the image file beside it: its recorded file size is the file's.
fn describes(path: &Path, at: &Path, m: &Manifest) -> Result<()> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if m.image.file_size != size {
        return Err(Error::BadArtifact {
            path: at.to_path_buf(),
            message: format!(
                "describes a {}-byte image file, {} has {}",
                bytes(m.image.file_size),
                path.display(),
                bytes(size)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_clipped_to_what_is_kept() {
        let keep = [Extent::new(0, 100), Extent::new(200, 50)];
        assert_eq!(
            clip(Extent::new(50, 200), Some(&keep)),
            vec![Extent::new(50, 50), Extent::new(200, 50)]
        );
        assert_eq!(clip(Extent::new(100, 100), Some(&keep)), vec![]);
        assert_eq!(clip(Extent::new(7, 3), None), vec![Extent::new(7, 3)]);
    }

    #[test]
    fn file_pieces_follow_extents_and_read_holes_as_zeros() {
        let ext = |logical, physical, len, unwritten| mkext4::reader::FileExtent {
            logical,
            physical,
            len,
            unwritten,
        };
        // Blocks 0-1 at 10, block 2 unwritten, block 4 at 50; the file ends inside block 4.
        let extents = [
            ext(4, 50, 1, false),
            ext(0, 10, 2, false),
            ext(2, 90, 1, true),
        ];
        let p = file_pieces(&extents, 4096, 1 << 20, 4 * 4096 + 100);
        let piece = |at: Option<u64>, len| Piece { at, len };
        assert_eq!(
            p,
            vec![
                piece(Some((1 << 20) + 10 * 4096), 2 * 4096),
                piece(None, 2 * 4096),
                piece(Some((1 << 20) + 50 * 4096), 100),
            ]
        );
        assert_eq!(file_pieces(&[], 4096, 0, 10), vec![piece(None, 10)]);
    }
}
