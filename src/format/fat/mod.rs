//! FAT32 writer: formats a region and fills it from a content tree in one pass.
//!
//! Everything is decided before the first byte is written: geometry (the cluster size is the
//! one `mkfs.fat` would pick for the size, made smaller while there would be too few clusters
//! for FAT32), short and long names, and a contiguous cluster run for every directory and
//! file. Directories come first, then file data in path order, so the FAT is a set of
//! sequential chains. Only metadata and file data are written; free space is never touched,
//! and the unused tail of each FAT is declared zero (a hole in a fresh image file).
//!
//! Not a general FAT driver: it creates filesystems. In-place upgrades (`upgrade::boot`)
//! reuse its directory encoding.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::format::{FileRecord, FsSpec, FsWriter, Measure, Placed, Span, Structure};
use crate::io::read_full;
use crate::plan::tree::{Entry, Node, name_of, parent_of};
use crate::sink::Sink;

pub mod read;
mod small;
#[cfg(test)]
mod testing;
pub use small::{FAT_AUTO, FAT12, FAT16, FAT32_FROM, FatSmall, SmallGeometry, resolve_bits};

pub struct Fat32;

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const MIN_CLUSTERS: u64 = 65_525;
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;
const EOC: u32 = 0x0FFF_FFFF;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LABEL: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;
/// Entries are addressed by a 16-bit index: a directory holds at most this many slots.
const MAX_DIR_SLOTS: usize = 65536;

/// A volume's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub sectors: u64,
    pub sectors_per_cluster: u64,
    pub fat_sectors: u64,
    pub clusters: u64,
}

impl Geometry {
    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    fn data_start(&self) -> u64 {
        (RESERVED + 2 * self.fat_sectors) * SECTOR
    }

    fn layout(&self) -> Layout {
        Layout {
            cluster_bytes: self.cluster_bytes(),
            clusters: self.clusters,
            fat_start: RESERVED * SECTOR,
            fat_bytes: self.fat_sectors * SECTOR,
            fixed_root: None,
            data_start: self.data_start(),
            sector: SECTOR,
        }
    }

    /// The geometry for `bytes` with clusters of `spc` sectors, if FAT32 allows it.
    fn with(bytes: u64, spc: u64) -> Option<Geometry> {
        let sectors = bytes / SECTOR;
        let avail = sectors.checked_sub(RESERVED)?;
        // Microsoft's FAT32 sizing: each FAT sector maps 128 clusters of the two FATs' share.
        let fat_sectors = avail.div_ceil((256 * spc + 2) / 2);
        let clusters = avail.checked_sub(2 * fat_sectors)? / spc;
        let g = Geometry {
            sectors,
            sectors_per_cluster: spc,
            fat_sectors,
            clusters,
        };
        ((MIN_CLUSTERS..=MAX_CLUSTERS).contains(&clusters)
            && (clusters + 2) * 4 <= fat_sectors * SECTOR)
            .then_some(g)
    }

    /// The geometry `mkfs.fat -F 32` would choose for this size: cluster size from the
    /// volume size, halved while that leaves too few clusters.
    pub fn for_size(bytes: u64) -> Option<Geometry> {
        let mib = bytes >> 20;
        let mut spc = match mib {
            0..=260 => 1,
            261..=8192 => 8,
            8193..=16384 => 16,
            16385..=32768 => 32,
            _ => 64,
        };
        loop {
            if let Some(g) = Geometry::with(bytes, spc) {
                return Some(g);
            }
            if spc == 1 {
                return None;
            }
            spc /= 2;
        }
    }
}

/// One encoded directory entry (long-name slots, then the short entry) pointing at a tree
/// entry.
struct DirEnt {
    lfn: Vec<[u8; 32]>,
    short: [u8; 11],
    case: u8,
    /// Index into `Layout::items`.
    item: usize,
}

/// A directory or file and where it lives.
struct Item<'a> {
    entry: &'a Entry,
    first: u32,
    clusters: u32,
}

struct Dir {
    item: usize,
    ents: Vec<DirEnt>,
}

/// Everything decided about a volume's content except its size.
struct Names<'a> {
    items: Vec<Item<'a>>,
    dirs: Vec<Dir>,
}

impl<'a> Names<'a> {
    fn new(spec: &FsSpec<'a>) -> Result<Self> {
        let tree = spec.tree;
        let mut items = Vec::with_capacity(tree.len());
        let mut index = std::collections::HashMap::new();
        for e in tree.iter() {
            if let Node::Symlink { .. } = e.node {
                return Err(bad(spec, &e.path, "FAT cannot hold symlinks"));
            }
            index.insert(e.path.as_str(), items.len());
            items.push(Item {
                entry: e,
                first: 0,
                clusters: 0,
            });
        }
        let mut dirs = Vec::new();
        for (i, it) in items.iter().enumerate() {
            if it.entry.node != Node::Dir {
                continue;
            }
            let kids: Vec<&Entry> = tree.children(&it.entry.path).collect();
            let ents = encode_dir(spec, &kids, |p| index[p])?;
            let d = Dir { item: i, ents };
            let slots = Self::slots(&d);
            if slots > MAX_DIR_SLOTS {
                return Err(bad(
                    spec,
                    &it.entry.path,
                    &format!(
                        "directory has {} entries taking {slots} 32-byte slots with their long \
                         names; FAT addresses at most {MAX_DIR_SLOTS} slots per directory",
                        kids.len()
                    ),
                ));
            }
            dirs.push(d);
        }
        Ok(Names { items, dirs })
    }

    /// 32-byte slots a directory takes: the volume label (root) or `.` and `..`, then each
    /// entry's long-name slots and short entry.
    fn slots(d: &Dir) -> usize {
        let fixed = if d.item == 0 { 1 } else { 2 };
        fixed + d.ents.iter().map(|e| e.lfn.len() + 1).sum::<usize>()
    }

    fn dir_bytes(&self, d: &Dir) -> u64 {
        Self::slots(d) as u64 * 32
    }

    /// Clusters the content needs with clusters of `cb` bytes.
    fn clusters_needed(&self, cb: u64) -> u64 {
        let dirs: u64 = self
            .dirs
            .iter()
            .map(|d| self.dir_bytes(d).div_ceil(cb).max(1))
            .sum();
        let files: u64 = self
            .items
            .iter()
            .map(|it| match it.entry.node {
                Node::File { size, .. } => size.div_ceil(cb),
                _ => 0,
            })
            .sum();
        dirs + files
    }

    /// Assigns contiguous runs from cluster 2: directories (the root too when it lives in
    /// clusters), then files; returns the first cluster left free.
    fn allocate(&mut self, cb: u64, root_in_clusters: bool) -> u32 {
        let mut next: u32 = 2;
        let skip = usize::from(!root_in_clusters);
        for d in &self.dirs[skip..] {
            let n = self.dir_bytes(d).div_ceil(cb).max(1) as u32;
            let it = &mut self.items[d.item];
            it.first = next;
            it.clusters = n;
            next += n;
        }
        for it in &mut self.items {
            if let Node::File { size, .. } = it.entry.node {
                let n = size.div_ceil(cb) as u32;
                if n > 0 {
                    it.first = next;
                    it.clusters = n;
                    next += n;
                }
            }
        }
        next
    }

    /// Allocates every directory and file in `l`, or says how much is missing; returns the
    /// first cluster left free.
    fn place(&mut self, spec: &FsSpec<'_>, l: &Layout) -> Result<u32> {
        let next = self.allocate(l.cluster_bytes, l.fixed_root.is_none());
        if u64::from(next) - 2 > l.clusters {
            return Err(Error::DoesNotFit {
                partition: spec.part.to_string(),
                needs: u64::from(next - 2) * l.cluster_bytes,
                has: l.clusters * l.cluster_bytes,
            });
        }
        Ok(next)
    }

    /// The used part of a FAT as entry values: `first` and end-of-chain in entries 0 and 1,
    /// then every chain.
    fn chains(&self, next: u32, first: u32, eoc: u32) -> Vec<u32> {
        let mut fat = vec![0u32; next as usize];
        fat[0] = first;
        fat[1] = eoc;
        for it in &self.items {
            for c in 0..it.clusters {
                let at = (it.first + c) as usize;
                fat[at] = if c + 1 == it.clusters {
                    eoc
                } else {
                    it.first + c + 1
                };
            }
        }
        fat
    }
}

/// Where a volume's parts lie: what differs between FAT32 and FAT12/16 for writing.
struct Layout {
    cluster_bytes: u64,
    clusters: u64,
    /// Byte offset of the first FAT, and each FAT's length.
    fat_start: u64,
    fat_bytes: u64,
    /// FAT12/16's fixed root directory region (offset, length); FAT32 keeps it in clusters.
    fixed_root: Option<(u64, u64)>,
    data_start: u64,
    /// Logical sector size.
    sector: u64,
}

impl Layout {
    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start + (u64::from(cluster) - 2) * self.cluster_bytes
    }
}

/// Writes a placed volume: the reserved area, both FATs (the used part, then zeros), every
/// directory and every file; returns each file's size, SHA-256 and extent, and where each
/// structure lies.
fn write_volume(
    spec: &FsSpec<'_>,
    names: &Names<'_>,
    l: &Layout,
    reserved: &[u8],
    fat: &[u8],
    sink: &mut dyn Sink,
) -> Result<Placed> {
    let io = |e: std::io::Error| Error::io(format!("writing {}", spec.part), e);
    let stamp = Stamp::new(spec.epoch);
    let label = label_bytes(spec)?;
    sink.data(0, reserved).map_err(io)?;
    let mut structures = reserved_structures(l, reserved.len() as u64);
    for copy in 0..2 {
        let at = l.fat_start + copy * l.fat_bytes;
        sink.data(at, fat).map_err(io)?;
        let len = l.fat_bytes - fat.len() as u64;
        sink.zeros(at + fat.len() as u64, len).map_err(io)?;
        structures.push(Structure::at(
            format!("FAT (copy {})", copy + 1),
            at,
            l.fat_bytes,
        ));
    }
    for d in &names.dirs {
        let mut bytes = dir_entries(names, d, &label, &stamp);
        let it = &names.items[d.item];
        let at = match l.fixed_root.filter(|_| d.item == 0) {
            Some((at, len)) => {
                bytes.resize(len as usize, 0);
                at
            }
            None => {
                bytes.resize((u64::from(it.clusters) * l.cluster_bytes) as usize, 0);
                l.cluster_offset(it.first)
            }
        };
        sink.data(at, &bytes).map_err(io)?;
        structures.push(Structure::at(
            format!("FAT directory {}", it.entry.path),
            at,
            bytes.len() as u64,
        ));
    }
    let files = write_files(spec, names, sink, l)?;
    Ok(Placed { files, structures })
}

/// The reserved area's parts: the boot sector, on FAT32 its FSInfo sector and their backup
/// (sectors 6 to 8), and the rest.
fn reserved_structures(l: &Layout, len: u64) -> Vec<Structure> {
    let parts: &[(&str, u64, u64)] = if l.fixed_root.is_none() {
        &[
            ("boot sector", 0, SECTOR),
            ("FSInfo sector", SECTOR, SECTOR),
            ("backup boot sector", 6 * SECTOR, 3 * SECTOR),
        ]
    } else {
        &[("boot sector", 0, l.sector)]
    };
    let mut out = Vec::new();
    let mut rest = Vec::new();
    let mut at = 0;
    for &(name, start, n) in parts.iter().filter(|p| p.1 + p.2 <= len) {
        crate::format::push_span(&mut rest, Span::new(at, start - at));
        out.push(Structure::at(name, start, n));
        at = start + n;
    }
    crate::format::push_span(&mut rest, Span::new(at, len.saturating_sub(at)));
    if !rest.is_empty() {
        out.push(Structure::new("reserved sectors", rest));
    }
    out
}

struct FatMeasure {
    /// Clusters needed per cluster size (512 B … 32 KiB).
    needed: [u64; 7],
}

impl FatMeasure {
    fn needed_for(&self, g: &Geometry) -> u64 {
        self.needed[g.sectors_per_cluster.trailing_zeros() as usize]
    }
}

impl Measure for FatMeasure {
    fn min_size(&self) -> u64 {
        let mut best = u64::MAX;
        for (i, &need) in self.needed.iter().enumerate() {
            let spc = 1u64 << i;
            let clusters = need.max(MIN_CLUSTERS);
            let fat = ((clusters + 2) * 4).div_ceil(SECTOR);
            let mut bytes = (RESERVED + 2 * fat + clusters * spc) * SECTOR;
            // The size decides the cluster size; step up until this size really holds it.
            let step = 64 << 10;
            bytes = bytes.div_ceil(step) * step;
            for _ in 0..4096 {
                if self.fits(bytes) {
                    best = best.min(bytes);
                    break;
                }
                bytes += step;
            }
        }
        best
    }

    fn fits(&self, size: u64) -> bool {
        Geometry::for_size(size).is_some_and(|g| self.needed_for(&g) <= g.clusters)
    }
}

impl FsWriter for Fat32 {
    fn measure(&self, spec: &FsSpec<'_>) -> Result<Box<dyn Measure>> {
        label_bytes(spec)?;
        let names = Names::new(spec)?;
        let mut needed = [0; 7];
        for (i, n) in needed.iter_mut().enumerate() {
            *n = names.clusters_needed(SECTOR << i);
        }
        Ok(Box::new(FatMeasure { needed }))
    }

    fn write(&self, spec: &FsSpec<'_>, size: u64, sink: &mut dyn Sink) -> Result<Placed> {
        let g = Geometry::for_size(size).ok_or_else(|| {
            bad(
                spec,
                "/",
                &format!("{size} bytes is too small for FAT32 (needs about 33 MiB)"),
            )
        })?;
        let mut names = Names::new(spec)?;
        let l = g.layout();
        let next = names.place(spec, &l)?;
        let used = u64::from(next) - 2;
        let reserved = boot_region(spec, &g, &label_bytes(spec)?, g.clusters - used, next);
        let fat = names.chains(next, 0x0FFF_FFF8, EOC);
        let fat: Vec<u8> = fat.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_volume(spec, &names, &l, &reserved, &fat, sink)
    }
}

/// Writes every file's data at its first cluster and zeros the rest of its last cluster;
/// returns each file's size and SHA-256.
fn write_files(
    spec: &FsSpec<'_>,
    names: &Names<'_>,
    sink: &mut dyn Sink,
    l: &Layout,
) -> Result<Vec<FileRecord>> {
    let io = |e: std::io::Error| Error::io(format!("writing {}", spec.part), e);
    let mut records = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for it in &names.items {
        let Node::File { source, size } = &it.entry.node else {
            continue;
        };
        let start = if *size > 0 {
            l.cluster_offset(it.first)
        } else {
            0
        };
        // One run of clusters: the content is announced, and hashed once, as it is read
        // (or, for a large file, by another thread while it is copied, see `io::Ahead`).
        sink.file_content(start, *size).map_err(io)?;
        let (sha256, pos) = match crate::io::content(source, *size, spec.ahead)? {
            crate::io::Content::File(mut c) => {
                let pos = if sink.copy_file(start, &c.file, 0, *size).map_err(io)? {
                    start + size
                } else {
                    copy_through(&mut c, &mut buf, sink, start).map_err(io)?
                };
                if pos != start + size {
                    return Err(bad(spec, &it.entry.path, "source shrank while building"));
                }
                (c.finish(spec.ahead)?, pos)
            }
            crate::io::Content::Read(mut r) => {
                let pos = copy_through(&mut r, &mut buf, sink, start).map_err(io)?;
                if r.count() != *size {
                    return Err(bad(spec, &it.entry.path, "source shrank while building"));
                }
                (r.finish(), pos)
            }
        };
        let slack = u64::from(it.clusters) * l.cluster_bytes - size;
        if slack > 0 {
            sink.zeros(pos, slack).map_err(io)?;
        }
        // Each file is one run of clusters.
        let extents = match *size {
            0 => Vec::new(),
            n => vec![Span::new(l.cluster_offset(it.first), n)],
        };
        records.push(FileRecord {
            path: it.entry.path.clone(),
            size: *size,
            sha256,
            extents,
        });
    }
    Ok(records)
}

/// Reads `r` to its end into `sink` from `at`, through `buf`; gives where it ended.
fn copy_through(
    mut r: &mut dyn std::io::Read,
    buf: &mut [u8],
    sink: &mut dyn Sink,
    mut at: u64,
) -> std::io::Result<u64> {
    loop {
        let n = read_full(&mut r, buf)?;
        if n == 0 {
            return Ok(at);
        }
        sink.data(at, &buf[..n])?;
        at += n as u64;
    }
}

fn bad(spec: &FsSpec<'_>, path: &str, msg: &str) -> Error {
    Error::Board {
        board: format!("partition {}", spec.part),
        message: format!("{path}: {msg}"),
    }
}

fn label_bytes(spec: &FsSpec<'_>) -> Result<[u8; 11]> {
    let mut out = *b"NO NAME    ";
    if let Some(l) = spec.label {
        if l.len() > 11
            || !l.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            || l.contains([
                '"', '*', '/', ':', '<', '>', '?', '\\', '|', '+', ',', '.', ';', '=', '[', ']',
            ])
        {
            return Err(bad(
                spec,
                "/",
                &format!("`{l}` is not a FAT label (at most 11 ASCII characters)"),
            ));
        }
        out = [b' '; 11];
        out[..l.len()].copy_from_slice(l.as_bytes());
    }
    Ok(out)
}

/// Boot sector, FSInfo and their backups (sectors 0, 1, 6, 7); the rest of the reserved area
/// is zero.
fn boot_region(spec: &FsSpec<'_>, g: &Geometry, label: &[u8; 11], free: u64, next: u32) -> Vec<u8> {
    let mut r = vec![0u8; (RESERVED * SECTOR) as usize];
    let b = &mut r[..512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    put16(b, 11, SECTOR as u16);
    b[13] = g.sectors_per_cluster as u8;
    put16(b, 14, RESERVED as u16);
    b[16] = 2;
    b[21] = 0xF8;
    put16(b, 24, 63);
    put16(b, 26, 255);
    put32(b, 28, (spec.offset / SECTOR).min(u32::MAX as u64) as u32);
    put32(b, 32, g.sectors as u32);
    put32(b, 36, g.fat_sectors as u32);
    put32(b, 44, 2);
    put16(b, 48, 1);
    put16(b, 50, 6);
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&spec.uuid[..4]);
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    // Not bootable on a PC: halt in a loop.
    b[90..93].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    let fsinfo = &mut r[512..1024];
    put32(fsinfo, 0, 0x4161_5252);
    put32(fsinfo, 484, 0x6141_7272);
    put32(fsinfo, 488, free as u32);
    let hint = if u64::from(next) < g.clusters + 2 {
        next
    } else {
        0xFFFF_FFFF
    };
    put32(fsinfo, 492, hint);
    put32(fsinfo, 508, 0xAA55_0000);
    r.copy_within(0..1024, 6 * 512);
    r
}

/// A directory's entries as bytes, unpadded: the volume label in the root, `.` and `..`
/// elsewhere, then each child's long-name slots and short entry.
fn dir_entries(names: &Names<'_>, d: &Dir, label: &[u8; 11], stamp: &Stamp) -> Vec<u8> {
    let me = &names.items[d.item];
    let first = if d.item == 0 {
        Head::Label(*label)
    } else {
        let parent = parent_of(&me.entry.path);
        let up = names
            .items
            .iter()
            .find(|i| i.entry.path == parent)
            .map_or(0, |i| if i.entry.path == "/" { 0 } else { i.first });
        Head::Dots(me.first, up)
    };
    let mut out = head(first, stamp);
    append_entries(&mut out, &d.ents, |e| {
        let it = &names.items[e.item];
        let (attr, size) = attr_size(it.entry);
        short_entry(&e.short, attr, e.case, it.first, size, stamp)
    });
    out
}

/// The entries a directory opens with.
enum Head {
    /// The root's volume label.
    Label([u8; 11]),
    /// `.` and `..` elsewhere: its own first cluster and its parent's (0 for the root).
    Dots(u32, u32),
}

fn head(h: Head, stamp: &Stamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match h {
        Head::Label(label) => {
            out.extend_from_slice(&short_entry(&label, ATTR_LABEL, 0, 0, 0, stamp));
        }
        Head::Dots(me, up) => {
            out.extend_from_slice(&short_entry(b".          ", ATTR_DIR, 0, me, 0, stamp));
            out.extend_from_slice(&short_entry(b"..         ", ATTR_DIR, 0, up, 0, stamp));
        }
    }
    out
}

/// Appends each entry's long-name slots, then its short entry as `short` makes it.
fn append_entries(out: &mut Vec<u8>, ents: &[DirEnt], short: impl Fn(&DirEnt) -> [u8; 32]) {
    for e in ents {
        for slot in &e.lfn {
            out.extend_from_slice(slot);
        }
        out.extend_from_slice(&short(e));
    }
}

/// A short entry's attribute and size for a tree entry.
fn attr_size(entry: &Entry) -> (u8, u32) {
    match entry.node {
        Node::File { size, .. } => (ATTR_ARCHIVE, size as u32),
        _ => (ATTR_DIR, 0),
    }
}

/// One child of a directory written by an editor: its tree entry (name, kind, size), its
/// first cluster and, to keep a file's own time, its stored stamp (`date << 16 | time`).
pub(crate) struct Child<'a> {
    pub entry: &'a Entry,
    pub first: u32,
    pub stamp: Option<u32>,
}

/// A whole directory's entries as bytes, unpadded, named exactly as the writer names them:
/// the volume label first in the root (`up` is `None`), `.` and `..` in any other directory
/// (`up` is the parent's first cluster, 0 for the root). New entries carry the spec's epoch.
pub(crate) fn encode_directory(
    spec: &FsSpec<'_>,
    me: u32,
    up: Option<u32>,
    kids: &[Child<'_>],
) -> Result<Vec<u8>> {
    let stamp = Stamp::new(spec.epoch);
    let entries: Vec<&Entry> = kids.iter().map(|k| k.entry).collect();
    let index: std::collections::HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_str(), i))
        .collect();
    let ents = encode_dir(spec, &entries, |p| index[p])?;
    let first = match up {
        None => Head::Label(label_bytes(spec)?),
        Some(up) => Head::Dots(me, up),
    };
    let mut out = head(first, &stamp);
    out.reserve(32 * ents.len() * 2);
    append_entries(&mut out, &ents, |e| {
        let k = &kids[e.item];
        let (attr, size) = attr_size(k.entry);
        let own = k.stamp.map(|s| Stamp {
            date: (s >> 16) as u16,
            time: s as u16,
        });
        short_entry(
            &e.short,
            attr,
            e.case,
            k.first,
            size,
            own.as_ref().unwrap_or(&stamp),
        )
    });
    Ok(out)
}

/// The stamp (`date << 16 | time`) the writer gives entries made at `epoch`.
pub(crate) fn stamp_of(epoch: i64) -> u32 {
    let s = Stamp::new(epoch);
    (u32::from(s.date) << 16) | u32::from(s.time)
}

fn short_entry(
    name: &[u8; 11],
    attr: u8,
    case: u8,
    cluster: u32,
    size: u32,
    s: &Stamp,
) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[12] = case;
    put16(&mut e, 14, s.time);
    put16(&mut e, 16, s.date);
    put16(&mut e, 18, s.date);
    put16(&mut e, 20, (cluster >> 16) as u16);
    put16(&mut e, 22, s.time);
    put16(&mut e, 24, s.date);
    put16(&mut e, 26, cluster as u16);
    put32(&mut e, 28, size);
    e
}

/// Encodes a directory's children: exact 8.3 names (with the lower-case flags Linux and
/// Windows honour) need no long name; everything else gets long-name slots and a unique
/// `BASIS~N.EXT` short name.
fn encode_dir(
    spec: &FsSpec<'_>,
    kids: &[&Entry],
    index: impl Fn(&str) -> usize,
) -> Result<Vec<DirEnt>> {
    let mut seen_long = HashSet::new();
    let mut used = HashSet::new();
    let mut exact = Vec::with_capacity(kids.len());
    for k in kids {
        let name = name_of(&k.path);
        if !seen_long.insert(name.to_lowercase()) {
            return Err(bad(
                spec,
                &k.path,
                "another name differs only in case (FAT ignores case)",
            ));
        }
        if name.encode_utf16().count() > 255 {
            return Err(bad(spec, &k.path, "name longer than 255 characters"));
        }
        if name.contains(['"', '*', '/', ':', '<', '>', '?', '\\', '|'])
            || name.chars().any(char::is_control)
            || name.ends_with(['.', ' '])
        {
            return Err(bad(spec, &k.path, "name has characters FAT does not allow"));
        }
        let ex = short_exact(name);
        if let Some((s, _)) = ex {
            used.insert(s);
        }
        exact.push(ex);
    }
    let mut out = Vec::with_capacity(kids.len());
    for (k, ex) in kids.iter().zip(exact) {
        let name = name_of(&k.path);
        let item = index(&k.path);
        if let Some((short, case)) = ex {
            out.push(DirEnt {
                lfn: Vec::new(),
                short,
                case,
                item,
            });
            continue;
        }
        let (base, ext) = basis(name);
        let short = (1u32..)
            .map(|n| tailed(&base, &ext, n))
            .find(|s| !used.contains(s))
            .unwrap_or([b'_'; 11]);
        used.insert(short);
        out.push(DirEnt {
            lfn: lfn_slots(name, &short),
            short,
            case: 0,
            item,
        });
    }
    Ok(out)
}

fn valid_short_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'()-@^_`{}~".contains(&c)
}

/// The 11-byte name and case flags when `name` is a valid 8.3 name whose base and extension
/// are each all upper or all lower case.
fn short_exact(name: &str) -> Option<([u8; 11], u8)> {
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) if !e.contains('.') && !e.is_empty() => (b, e),
        Some(_) => return None,
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 {
        return None;
    }
    if !base.bytes().chain(ext.bytes()).all(valid_short_char) {
        return None;
    }
    let case_of = |s: &str, flag: u8| -> Option<u8> {
        let lower = s.bytes().any(|b| b.is_ascii_lowercase());
        let upper = s.bytes().any(|b| b.is_ascii_uppercase());
        match (lower, upper) {
            (true, true) => None,
            (true, false) => Some(flag),
            _ => Some(0),
        }
    };
    let case = case_of(base, 0x08)? | case_of(ext, 0x10)?;
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.to_ascii_uppercase().as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.to_ascii_uppercase().as_bytes());
    Some((s, case))
}

/// The short-name basis of a long name: upper case, invalid characters as `_`, no spaces or
/// inner dots; base up to 8 characters, extension up to 3.
fn basis(name: &str) -> (Vec<u8>, Vec<u8>) {
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let map = |s: &str, max: usize| -> Vec<u8> {
        s.chars()
            .filter(|c| *c != ' ' && *c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii() && valid_short_char(u as u8) {
                    u as u8
                } else {
                    b'_'
                }
            })
            .take(max)
            .collect()
    };
    let mut b = map(base, 8);
    if b.is_empty() {
        b.push(b'_');
    }
    (b, map(ext, 3))
}

fn tailed(base: &[u8], ext: &[u8], n: u32) -> [u8; 11] {
    let tail = format!("~{n}");
    let keep = base.len().min(8 - tail.len());
    let mut s = [b' '; 11];
    s[..keep].copy_from_slice(&base[..keep]);
    s[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext);
    s
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b)
    })
}

/// Long-name slots in on-disk order (the last part first).
fn lfn_slots(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if !units.len().is_multiple_of(13) {
        units.push(0);
        while !units.len().is_multiple_of(13) {
            units.push(0xFFFF);
        }
    }
    let sum = lfn_checksum(short);
    let n = units.len() / 13;
    let mut slots: Vec<[u8; 32]> = units
        .chunks(13)
        .enumerate()
        .map(|(i, part)| {
            let mut e = [0u8; 32];
            e[0] = (i + 1) as u8 | if i + 1 == n { 0x40 } else { 0 };
            e[11] = ATTR_LFN;
            e[13] = sum;
            for (j, u) in part.iter().enumerate() {
                let at = match j {
                    0..=4 => 1 + 2 * j,
                    5..=10 => 14 + 2 * (j - 5),
                    _ => 28 + 2 * (j - 11),
                };
                e[at..at + 2].copy_from_slice(&u.to_le_bytes());
            }
            e
        })
        .collect();
    slots.reverse();
    slots
}

/// A FAT timestamp (local time is UTC; 2-second resolution; clamped to 1980–2107).
struct Stamp {
    date: u16,
    time: u16,
}

impl Stamp {
    fn new(epoch: i64) -> Stamp {
        let min = 315_532_800; // 1980-01-01
        let max = 4_354_819_198; // 2107-12-31 23:59:58
        let t = epoch.clamp(min, max);
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (y, m, d) = civil(days);
        Stamp {
            date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
            time: (((secs / 3600) as u16) << 11)
                | ((((secs / 60) % 60) as u16) << 5)
                | ((secs % 60) / 2) as u16,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub(crate) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn geometry_is_fat32_from_33_mib() {
        assert!(Geometry::for_size(32 * MIB).is_none());
        let g = Geometry::for_size(34 * MIB).unwrap();
        assert_eq!(g.sectors_per_cluster, 1);
        assert!(g.clusters >= MIN_CLUSTERS);
        let g = Geometry::for_size(2048 * MIB).unwrap();
        assert_eq!(g.cluster_bytes(), 4096);
        let g = Geometry::for_size(300 * MIB).unwrap();
        assert!(g.clusters >= MIN_CLUSTERS);
    }

    #[test]
    fn geometry_fat_covers_every_cluster() {
        for mib in [33, 34, 100, 260, 261, 300, 1024, 8192, 8193, 20000, 40000] {
            let g = Geometry::for_size(mib * MIB).unwrap();
            assert!((g.clusters + 2) * 4 <= g.fat_sectors * SECTOR, "{mib} MiB");
            assert!(g.data_start() + g.clusters * g.cluster_bytes() <= mib * MIB);
        }
    }

    #[test]
    fn short_names() {
        assert_eq!(short_exact("CONFIG.TXT"), Some((*b"CONFIG  TXT", 0)));
        assert_eq!(short_exact("config.txt"), Some((*b"CONFIG  TXT", 0x18)));
        assert_eq!(short_exact("Image"), None);
        assert_eq!(short_exact("overlays"), Some((*b"OVERLAYS   ", 0x08)));
        assert_eq!(short_exact("start4x.elf"), Some((*b"START4X ELF", 0x18)));
        assert_eq!(short_exact("bcm2711-rpi-4-b.dtb"), None);
        assert_eq!(short_exact("a.b.c"), None);
        let (b, e) = basis("bcm2711-rpi-4-b.dtb");
        assert_eq!(&tailed(&b, &e, 1), b"BCM271~1DTB");
        let (b, e) = basis("Ünïcødé notes.txt");
        assert_eq!(&tailed(&b, &e, 12), b"_N_C_~12TXT");
    }

    #[test]
    fn lfn_slots_hold_the_name_and_checksum() {
        let short = *b"BCM271~1DTB";
        let slots = lfn_slots("bcm2711-rpi-4-b.dtb", &short);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0][0], 0x42);
        assert_eq!(slots[1][0], 0x01);
        assert!(
            slots
                .iter()
                .all(|s| s[13] == lfn_checksum(&short) && s[11] == ATTR_LFN)
        );
    }

    #[test]
    fn dates_convert() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        let s = Stamp::new(1_704_067_200 + 3600 + 62);
        assert_eq!(s.date, ((2024 - 1980) << 9) | (1 << 5) | 1);
        assert_eq!(s.time, (1 << 11) | (1 << 5) | 1);
    }

    const FILES: [(&str, &str); 3] = [
        ("/config.txt", "x"),
        ("/overlays/a-long-name.dtbo", "yy"),
        ("/Image", ""),
    ];

    #[test]
    fn measures_and_writes_a_small_volume() {
        let t = testing::text_tree(&FILES);
        let spec = testing::spec(&t, Some("BOOT"), 7, Default::default());
        let m = Fat32.measure(&spec).unwrap();
        let min = m.min_size();
        assert!(m.fits(min));
        assert!(!m.fits(min - 64 * 1024) || Geometry::for_size(min - 64 * 1024).is_some());
        let mut sink = crate::sink::MemSink::new(min as usize);
        let recs = Fat32.write(&spec, min, &mut sink).unwrap();
        assert_eq!(recs.files.len(), 3);
        let g = read::FatVolume::open(&sink.buf, 0, min).unwrap().geometry();
        let want = Geometry::for_size(min).unwrap();
        assert_eq!(g.bits, 32);
        assert_eq!(
            (g.sectors, g.sectors_per_cluster, g.fat_sectors),
            (want.sectors, want.sectors_per_cluster, want.fat_sectors)
        );
        assert_eq!(u64::from(g.clusters), want.clusters);
        assert_eq!(&sink.buf[71..82], b"BOOT       ");
        assert_eq!(sink.buf[..512], sink.buf[6 * 512..7 * 512]);
    }

    #[test]
    fn case_only_differences_are_refused() {
        let mut files = FILES.to_vec();
        files.push(("/CONFIG.TXT", ""));
        let t = testing::text_tree(&files);
        let spec = testing::spec(&t, None, 0, Default::default());
        assert!(Fat32.measure(&spec).is_err());
    }
}
