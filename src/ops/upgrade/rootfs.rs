//! Upgrading an ext4 partition the build owns (SkiffOS's `rootfs`: `rootfs_part/`, e.g.
//! `modules.squashfs`). Its files are compared with the build; when they match nothing is
//! written. Otherwise the filesystem is written again in place, with the card's UUID and
//! label, holding the build's files and those kept with `--keep`, and only the blocks
//! that differ from what the card holds are written. The old journal's body is zeroed so
//! no stale transaction can ever be replayed.
//!
//! Not atomic: interrupted, this partition is unreadable until a re-run writes it again.
//! A FAT boot partition's switch happens after it, so such a card still boots its old set;
//! an ext4 boot partition (odroid/m1's layout) is only rewritten when the user accepts that.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::ext4::{Ext4, Found, S_IFDIR, S_IFLNK, S_IFREG, walk};
use crate::format::{FsSpec, FsWriter};
use crate::io::{PartReader, read_full};
use crate::plan::tree::{Entry, Node, Source, Tree};

use super::disk::{DiffSink, GuardedDisk};
use super::{Action, Change, Keep, PartSpan};

const BLOCK: u64 = 4096;
const JOURNAL_INO: u32 = 8;

/// Why the filesystem on the card could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(String);

/// Everything decided about one ext4 partition's upgrade, before any write.
pub struct RootfsEdit {
    pub part: String,
    pub span: PartSpan,
    /// Bytes the filesystem spans (as found, else the partition).
    size: u64,
    label: Option<String>,
    uuid: [u8; 16],
    epoch: i64,
    tree: Tree,
    pub changes: Vec<Change>,
    pub rebuild: bool,
    /// Why the old filesystem could not be read (then it is written again).
    pub unreadable: Option<Unreadable>,
    /// Blocks left as they were / bytes written, after `apply`.
    pub skipped: u64,
}

/// Whether inode `ino` holds what `source` holds (streamed, stopping at a difference).
fn same_file(
    ext: &mkext4::reader::Fs<PartReader<'_>>,
    ino: u32,
    source: &Source,
    size: u64,
) -> Result<bool> {
    let Ok(inode) = ext.inode(ino) else {
        return Ok(false);
    };
    let Ok(extents) = ext.extents(ino, &inode) else {
        return Ok(false);
    };
    let mut r = crate::io::open(source, size)?;
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let Ok(n) = ext.read_file_at(&inode, &extents, off, &mut got) else {
            return Ok(false);
        };
        if n == 0 {
            return Ok(off == size);
        }
        let m =
            read_full(&mut r, &mut want[..n]).map_err(|e| Error::io("reading a build file", e))?;
        if m != n || got[..n] != want[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
}

/// The filesystem on the card, as far as it could be read.
struct OnCard<'a> {
    ext: Option<mkext4::reader::Fs<PartReader<'a>>>,
    found: HashMap<String, Found>,
    /// Bytes the filesystem spans (as found, else the partition).
    size: u64,
    unreadable: Option<Unreadable>,
}

impl<'a> OnCard<'a> {
    fn read(disk: &'a GuardedDisk, span: PartSpan) -> OnCard<'a> {
        let reader = PartReader {
            dev: disk,
            base: span.start,
            len: span.size,
        };
        let mut card = OnCard {
            ext: None,
            found: HashMap::new(),
            size: span.size / BLOCK * BLOCK,
            unreadable: None,
        };
        match mkext4::reader::Fs::open(reader) {
            Ok(ext) => {
                let blocks = ext.superblock().blocks_count;
                if blocks * BLOCK <= span.size {
                    card.size = blocks * BLOCK;
                }
                if let Err(m) = walk(&ext, 2, "", &mut card.found, 0) {
                    card.unreadable = Some(Unreadable(m));
                }
                card.ext = Some(ext);
            }
            Err(e) => card.unreadable = Some(Unreadable(e.to_string())),
        }
        card
    }

    /// Whether the card's inode `o` holds what build entry `e` (a `node` of `kind`) holds.
    fn same(&self, o: &Found, e: &Entry) -> Result<bool> {
        let same_meta =
            |kind| o.kind == kind && o.mode == e.mode && o.uid == e.uid && o.gid == e.gid;
        Ok(match &e.node {
            Node::Dir => same_meta(S_IFDIR),
            Node::File { source, size } => {
                same_meta(S_IFREG)
                    && o.size == *size
                    && match &self.ext {
                        Some(x) => same_file(x, o.ino, source, *size)?,
                        None => false,
                    }
            }
            Node::Symlink { target } => {
                same_meta(S_IFLNK) && o.target.as_deref() == Some(target.as_bytes())
            }
        })
    }

    /// The node a kept file goes back into the rewritten filesystem as (read now).
    fn kept_node(&self, o: &Found, path: &str, part: &str) -> Result<Node> {
        Ok(match o.kind {
            S_IFDIR => Node::Dir,
            S_IFLNK => Node::Symlink {
                target: String::from_utf8_lossy(o.target.as_deref().unwrap_or_default())
                    .into_owned(),
            },
            S_IFREG => {
                // Found on the card, so the filesystem opened.
                let Some(ext) = &self.ext else {
                    return Err(Error::partition(part, "ext4: not readable"));
                };
                let bytes = ext
                    .read_file(o.ino)
                    .map_err(|e| Error::partition(part, format!("{path}: {e}")))?;
                Node::File {
                    size: bytes.len() as u64,
                    source: Source::Bytes(bytes),
                }
            }
            _ => {
                return Err(Error::partition(
                    part,
                    format!("--keep {path}: a device node, fifo or socket cannot be kept"),
                ));
            }
        })
    }
}

/// The new content: the build's tree plus what is kept, each file's fate, and whether
/// anything differs from the card.
struct Content {
    tree: Tree,
    changes: Vec<Change>,
    differs: bool,
}

impl Content {
    /// The build's entries against the card's.
    fn compare(spec: &FsSpec<'_>, card: &OnCard<'_>, part: &str) -> Result<Content> {
        let mut c = Content {
            tree: spec.tree.clone(),
            changes: Vec::new(),
            differs: card.unreadable.is_some(),
        };
        for e in spec.tree.iter().skip(1) {
            let old = card.found.get(&e.path);
            let same = match old {
                Some(o) => card.same(o, e)?,
                None => false,
            };
            let new_size = match &e.node {
                Node::Dir => {
                    c.differs |= !same;
                    continue;
                }
                Node::File { size, .. } => *size,
                Node::Symlink { target } => target.len() as u64,
            };
            let action = match (old, same) {
                (_, true) => Action::Unchanged,
                (Some(_), false) => Action::Replaced,
                (None, _) => Action::Added,
            };
            c.differs |= action != Action::Unchanged;
            c.changes.push(Change {
                partition: part.to_string(),
                path: e.path.clone(),
                action,
                old_size: old.map(|o| o.size),
                new_size: Some(new_size),
                note: None,
            });
        }
        Ok(c)
    }

    /// What the card has and the build does not: kept (`--keep`) or removed.
    fn leftovers(
        &mut self,
        spec: &FsSpec<'_>,
        card: &OnCard<'_>,
        keep: &Keep,
        part: &str,
    ) -> Result<()> {
        let seen: HashSet<&str> = spec.tree.iter().map(|e| e.path.as_str()).collect();
        let mut extra: Vec<&String> = card
            .found
            .keys()
            .filter(|p| !seen.contains(p.as_str()))
            .collect();
        extra.sort();
        for path in extra {
            let o = &card.found[path];
            let kept = keep.matches(part, path);
            self.differs |= !kept;
            if o.kind != S_IFDIR {
                self.changes.push(Change {
                    partition: part.to_string(),
                    path: path.clone(),
                    action: if kept { Action::Kept } else { Action::Removed },
                    old_size: Some(o.size),
                    new_size: kept.then_some(o.size),
                    note: kept.then(|| "kept (--keep)".into()),
                });
            }
            if !kept {
                continue;
            }
            let node = card.kept_node(o, path, part)?;
            self.tree
                .insert(Entry {
                    path: path.clone(),
                    node,
                    mode: o.mode,
                    uid: o.uid,
                    gid: o.gid,
                })
                .map_err(|c| Error::Usage(format!("--keep {path}: {}", c.0)))?;
        }
        Ok(())
    }
}

impl RootfsEdit {
    /// Reads the partition and decides whether it is written again; writes nothing.
    pub fn plan(
        disk: &GuardedDisk,
        spec: &FsSpec<'_>,
        span: PartSpan,
        keep: &Keep,
    ) -> Result<RootfsEdit> {
        let part = spec.part.to_string();
        let card = OnCard::read(disk, span);
        if let Some(why) = &card.unreadable
            && keep.names(&part)
        {
            return Err(Error::partition(
                &part,
                format!(
                    "the filesystem on the card cannot be read ({why}), so the files --keep names on it cannot be kept; drop those --keep patterns to write it again without them"
                ),
            ));
        }
        let mut content = Content::compare(spec, &card, &part)?;
        content.leftovers(spec, &card, keep, &part)?;
        content.changes.sort_by(|a, b| a.path.cmp(&b.path));
        let edit = RootfsEdit {
            part,
            span,
            size: card.size,
            label: spec.label.map(str::to_string),
            uuid: spec.uuid,
            epoch: spec.epoch,
            tree: content.tree,
            changes: content.changes,
            rebuild: content.differs,
            unreadable: card.unreadable,
            skipped: 0,
        };
        if edit.rebuild {
            edit.check_fits()?;
        }
        Ok(edit)
    }

    fn check_fits(&self) -> Result<()> {
        let m = Ext4.measure(&self.spec())?;
        if !m.fits(self.size) {
            return Err(Error::DoesNotFit {
                partition: format!("partition {} (ext4, upgraded in place)", self.part),
                needs: m.min_size(),
                has: self.size,
            });
        }
        Ok(())
    }

    fn spec(&self) -> FsSpec<'_> {
        FsSpec {
            label: self.label.as_deref(),
            uuid: self.uuid,
            epoch: self.epoch,
            tree: &self.tree,
            offset: self.span.start,
            part: &self.part,
            fat: Default::default(),
            ahead: None,
        }
    }

    /// Writes the filesystem again where it differs, then zeroes the journal's body.
    pub fn apply(&mut self, disk: &mut GuardedDisk) -> Result<()> {
        if !self.rebuild {
            return Ok(());
        }
        let spec = self.spec();
        let mut sink = DiffSink {
            disk,
            base: self.span.start,
            len: self.size,
            skipped: 0,
            error: None,
        };
        let written = Ext4.write(&spec, self.size, &mut sink);
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        written?;
        if sink.disk.is_dry() {
            self.skipped = sink.skipped;
            return Ok(());
        }
        // The journal: everything but its superblock must read as zero.
        let ranges: Vec<(u64, u64)> = {
            let ext = mkext4::reader::Fs::open(PartReader {
                dev: &*sink.disk,
                base: self.span.start,
                len: self.size,
            })
            .map_err(|e| Error::partition(&self.part, format!("ext4 after writing: {e}")))?;
            let inode = ext
                .inode(JOURNAL_INO)
                .map_err(|e| Error::partition(&self.part, format!("journal: {e}")))?;
            let extents = ext
                .extents(JOURNAL_INO, &inode)
                .map_err(|e| Error::partition(&self.part, format!("journal: {e}")))?;
            extents
                .iter()
                .map(|x| {
                    let skip = u64::from(x.logical == 0);
                    (
                        (x.physical + skip) * BLOCK,
                        (u64::from(x.len) - skip) * BLOCK,
                    )
                })
                .filter(|(_, l)| *l > 0)
                .collect()
        };
        for (o, l) in ranges {
            crate::sink::Sink::zeros(&mut sink, o, l).map_err(|e| {
                sink.error.take().unwrap_or_else(|| {
                    Error::io(format!("zeroing the journal of {}", self.part), e)
                })
            })?;
        }
        self.skipped = sink.skipped;
        sink.disk.sync()
    }
}
