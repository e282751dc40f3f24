//! ext4 writer over `mkext4`: declares the content tree (owners and modes from the tree,
//! every timestamp at the build epoch), seals the layout and streams file data into the
//! window, hashing each file as it passes.
//!
//! The smallest size is found by sealing candidate layouts (metadata only, no data read).
//! Each file's extents come from the sealed layout; the metadata is kept aside as it passes
//! so `ext4_map` can say where the filesystem's structures lie. `walk` lists a filesystem
//! read back with mkext4's reader (an upgrade's card, a release image's partitions).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use mkext4::{FsBuilder, InodeHandle, Meta, Options, ROOT, RegionSink};

use crate::error::{Error, Result};
use crate::format::ext4_map::{self, Captured};
use crate::format::{FileRecord, FsSpec, FsWriter, Measure, Placed, Span, push_span};
use crate::plan::tree::{Node, name_of, parent_of};
use crate::sink::{Sink, Window};

pub struct Ext4;

pub const S_IFMT: u16 = 0o170_000;
pub const S_IFDIR: u16 = 0o040_000;
pub const S_IFREG: u16 = 0o100_000;
pub const S_IFLNK: u16 = 0o120_000;

/// A file, directory or symlink found in an ext4 filesystem.
pub struct Found {
    pub kind: u16,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub target: Option<Vec<u8>>,
    pub ino: u32,
}

/// Every entry under directory inode `ino` (`lost+found` at the top left out), by path;
/// why not when the filesystem cannot be read.
pub fn walk<R: mkext4::reader::ReadAt>(
    ext: &mkext4::reader::Fs<R>,
    ino: u32,
    prefix: &str,
    out: &mut HashMap<String, Found>,
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > 64 || out.len() > 1_000_000 {
        return Err("directories nested too deep or too many entries".into());
    }
    let entries = ext.read_dir(ino).map_err(|e| e.to_string())?;
    for d in entries {
        if d.name == b"." || d.name == b".." {
            continue;
        }
        let name = String::from_utf8_lossy(&d.name).into_owned();
        if prefix.is_empty() && name == "lost+found" {
            continue;
        }
        let path = format!("{prefix}/{name}");
        let inode = ext.inode(d.inode).map_err(|e| format!("{path}: {e}"))?;
        let kind = inode.mode & S_IFMT;
        let mut f = Found {
            kind,
            mode: u32::from(inode.mode & 0o7777),
            uid: inode.uid,
            gid: inode.gid,
            size: inode.size,
            target: None,
            ino: d.inode,
        };
        if kind == S_IFLNK {
            f.target = Some(
                ext.symlink_target(d.inode)
                    .map_err(|e| format!("{path}: {e}"))?,
            );
        }
        let is_dir = kind == S_IFDIR;
        out.insert(path.clone(), f);
        if is_dir {
            walk(ext, d.inode, &path, out, depth + 1)?;
        }
    }
    Ok(())
}

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Below this mkext4's journal would take more than a quarter of the filesystem.
const SMALLEST: u64 = 16 * MIB;

fn usable(size: u64) -> u64 {
    size / BLOCK * BLOCK
}

fn ext4_err(spec: &FsSpec<'_>, e: mkext4::Error) -> Error {
    match e {
        mkext4::Error::Io(io) => Error::io(format!("writing {}", spec.part), io),
        other => Error::Board {
            board: format!("partition {}", spec.part),
            message: format!("ext4: {other}"),
        },
    }
}

/// Declares the whole tree; returns the builder and the files to fill, in order.
fn declare(
    spec: &FsSpec<'_>,
    size: u64,
) -> Result<(FsBuilder, Vec<(InodeHandle, usize)>), mkext4::Error> {
    let mut opts = Options::new(usable(size), spec.uuid, spec.epoch);
    opts.label = spec.label.map(str::to_string);
    let mut b = FsBuilder::new(opts)?;
    let mut dirs = std::collections::HashMap::new();
    let mut fills = Vec::new();
    let meta = |mode: u32, uid, gid| Meta::new(mode as u16, uid, gid, (spec.epoch, 0));
    for (i, e) in spec.tree.iter().enumerate() {
        let m = meta(e.mode, e.uid, e.gid);
        if e.path == "/" {
            b.set_meta(ROOT, m)?;
            dirs.insert("/", ROOT);
            continue;
        }
        let parent = dirs[parent_of(&e.path)];
        let name = name_of(&e.path);
        match &e.node {
            Node::Dir => {
                let h = b.mkdir(parent, name, m)?;
                dirs.insert(e.path.as_str(), h);
            }
            Node::File { size, .. } => {
                let h = b.file(parent, name, m, *size)?;
                if *size > 0 {
                    fills.push((h, i));
                }
            }
            Node::Symlink { target } => {
                b.symlink(parent, name, target, m)?;
            }
        }
    }
    Ok((b, fills))
}

/// Passes writes through, ending the sink's hold at the first write after `released` is set;
/// keeps the metadata (every write before then) in `meta`.
struct Phased<'a> {
    inner: Window<'a>,
    released: Rc<Cell<bool>>,
    holding: bool,
    meta: Rc<RefCell<Captured>>,
    /// Files stored in one run, by where their content starts: their size. The first
    /// write there announces the content (`Sink::file_content`).
    files: std::collections::BTreeMap<u64, u64>,
}

impl Phased<'_> {
    fn release(&mut self) -> std::io::Result<()> {
        if self.holding && self.released.get() {
            self.holding = false;
            self.inner.hold(false)?;
        }
        Ok(())
    }
}

impl RegionSink for Phased<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.release()?;
        if self.holding {
            self.meta.borrow_mut().keep(offset, bytes);
        } else if let Some(len) = self.files.remove(&offset) {
            Sink::file_content(&mut self.inner, offset, len)?;
        }
        Sink::data(&mut self.inner, offset, bytes)
    }

    /// mkext4 declares free space, the journal body and file holes as zeros; none of it is
    /// read before being written (inode tables are emitted as data and block groups are
    /// flagged uninitialised), so it is left as it is: no device write, no bmap entry.
    fn zeros(&mut self, _offset: u64, _len: u64) -> std::io::Result<()> {
        self.release()
    }
}

struct Ext4Measure {
    min: u64,
}

impl Measure for Ext4Measure {
    fn min_size(&self) -> u64 {
        self.min
    }

    fn fits(&self, size: u64) -> bool {
        usable(size) >= self.min
    }
}

impl FsWriter for Ext4 {
    fn measure(&self, spec: &FsSpec<'_>) -> Result<Box<dyn Measure>> {
        if let Some(l) = spec.label
            && l.len() > 16
        {
            return Err(ext4_err(
                spec,
                mkext4::Error::Invalid(format!("label `{l}` is longer than 16 bytes")),
            ));
        }
        let seals = |size: u64| -> Result<bool> {
            match declare(spec, size).and_then(|(b, _)| b.seal()) {
                Ok(_) => Ok(true),
                Err(mkext4::Error::Invalid(_) | mkext4::Error::Unsupported(_)) => Ok(false),
                Err(e) => Err(ext4_err(spec, e)),
            }
        };
        // Names, targets and the like are checked at any size: declare once, large.
        let data: u64 = spec
            .tree
            .iter()
            .map(|e| match e.node {
                Node::File { size, .. } => size.div_ceil(BLOCK) * BLOCK,
                _ => BLOCK,
            })
            .sum();
        let mut hi = (SMALLEST + data + data / 8).div_ceil(MIB) * MIB;
        let mut tries = 0;
        while !seals(hi)? {
            if let Err(e) = declare(spec, hi) {
                return Err(ext4_err(spec, e));
            }
            hi *= 2;
            tries += 1;
            if tries > 20 {
                return Err(ext4_err(
                    spec,
                    mkext4::Error::Invalid("content cannot be laid out".into()),
                ));
            }
        }
        let mut lo = SMALLEST;
        if seals(lo)? {
            return Ok(Box::new(Ext4Measure { min: lo }));
        }
        // Invariant: lo does not seal, hi does; both whole MiB.
        while hi - lo > MIB {
            let mid = (lo + hi) / 2 / MIB * MIB;
            if seals(mid)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(Box::new(Ext4Measure { min: hi }))
    }

    fn write(&self, spec: &FsSpec<'_>, size: u64, sink: &mut dyn Sink) -> Result<Placed> {
        let (b, fills) = declare(spec, size).map_err(|e| ext4_err(spec, e))?;
        let layout = b.seal().map_err(|e| ext4_err(spec, e))?;
        let window = Window::new(sink, 0, usable(size))
            .map_err(|e| Error::io(format!("writing {}", spec.part), e))?;
        // mkext4 emits all metadata first, in no particular order, then file data at
        // ascending offsets: hold the metadata until the data starts.
        let io = |e| Error::io(format!("writing {}", spec.part), e);
        let released = Rc::new(Cell::new(false));
        let meta = Rc::new(RefCell::new(Captured::default()));
        let files = fills
            .iter()
            .filter_map(|(h, _)| match layout.extents(*h)[..] {
                [(at, len)] if len > 0 => Some((at, len)),
                _ => None,
            })
            .collect();
        let mut phased = Phased {
            inner: window,
            released: released.clone(),
            holding: true,
            meta: meta.clone(),
            files,
        };
        phased.inner.hold(true).map_err(io)?;
        let mut w = layout.writer(&mut phased).map_err(|e| ext4_err(spec, e))?;
        released.set(true);
        // All metadata has passed: map it, then let it go.
        let structures = ext4_map::structures(&meta.take()).map_err(|e| ext4_err(spec, e))?;
        let entries: Vec<_> = spec.tree.iter().collect();
        let mut records = Vec::with_capacity(fills.len());
        for (h, i) in fills {
            let e = entries[i];
            let Node::File { source, size } = &e.node else {
                continue;
            };
            // A large file is hashed by another thread, reading it beside the fill.
            let sha256 = match crate::io::content(source, *size, spec.ahead)? {
                crate::io::Content::File(mut c) => {
                    w.fill(h, &mut c).map_err(|err| ext4_err(spec, err))?;
                    c.finish(spec.ahead)?
                }
                crate::io::Content::Read(mut r) => {
                    w.fill(h, &mut r).map_err(|err| ext4_err(spec, err))?;
                    r.finish()
                }
            };
            let mut extents = Vec::new();
            for (at, len) in layout.extents(h) {
                push_span(&mut extents, Span::new(at, len));
            }
            records.push(FileRecord {
                path: e.path.clone(),
                size: *size,
                sha256,
                extents,
            });
        }
        w.finish().map_err(|e| ext4_err(spec, e))?;
        phased.release().map_err(io)?;
        Ok(Placed {
            files: records,
            structures,
        })
    }
}
