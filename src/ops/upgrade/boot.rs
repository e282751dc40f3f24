//! Upgrading a FAT32 boot partition in place so that, at every instant, the card holds
//! either the complete old boot set or the complete new one.
//!
//! The switch is the root directory. A FAT32 volume names the first cluster of its root
//! directory in one 4-byte field of its boot sector. The new set is written beside the old
//! one: every new or changed file, and a fresh copy of every directory (the root included),
//! go into clusters the old tree does not use, and their chains into FAT entries that are
//! free in the old tree. Files that did not change are not copied: the new directories
//! point at their existing clusters. Until the switch the old tree is untouched (the new
//! chains are, to it, unreferenced clusters). Then:
//!
//! 1. flush; 2. rewrite sector 0 with the new root cluster (one sector: the switch);
//! 3. flush; 4. the backup boot sector; 5. flush; 6. free the clusters only the old tree
//!    used, and any other unreferenced chain; update FSInfo; 7. flush.
//!
//! Interrupted before step 2, the card boots the old set and a re-run starts over, reusing
//! the unreferenced clusters. Interrupted after it, the card boots the new set and a re-run
//! finds nothing to copy and finishes steps 4–7. If the new files and directories do not
//! fit in the clusters the old set leaves free, nothing is written.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::FsSpec;
use crate::format::fat::read::{FatEntry, FatVolume};
use crate::format::fat::{Child, encode_directory, stamp_of};
use crate::io::read_full;
use crate::plan::tree::{Entry, Node, Source, Tree, parent_of};
use crate::units::bytes;

use super::disk::GuardedDisk;
use super::{Action, Change, Keep, PartSpan};

const BAD: u32 = 0x0FFF_FFF7;
const EOC: u32 = 0x0FFF_FFFF;
const UIMAGE_MAGIC: [u8; 4] = [0x27, 0x05, 0x19, 0x56];

/// Files at the root that users edit on the card: kept when edited unless forced.
const USER_CONFIGS: &[&str] = &["config.txt", "cmdline.txt", "usercfg.txt"];

/// The volume's shape, from its boot sector.
#[derive(Debug, Clone, Copy)]
struct Geo {
    reserved: u64,
    nfats: u64,
    fat_sectors: u64,
    cluster_bytes: u64,
    clusters: u32,
    /// FSInfo and backup boot sector numbers, when inside the reserved area.
    fsinfo: Option<u64>,
    backup: Option<u64>,
}

const SECTOR: u64 = 512;

impl Geo {
    /// The geometry the reader (`FatVolume::open`) found, with what an in-place edit
    /// further needs: 512-byte sectors, FAT32 and mirrored FATs.
    fn of(vol: &FatVolume<'_>, part: &str) -> Result<Geo> {
        let damaged = |m: &str| damaged(part, m);
        let g = vol.geometry();
        if g.sector != SECTOR {
            return Err(damaged(&format!(
                "{}-byte sectors (only 512 is edited)",
                g.sector
            )));
        }
        if g.bits != 32 {
            return Err(damaged(&format!(
                "boot sector: a FAT{} volume (only FAT32 is edited)",
                g.bits
            )));
        }
        if g.ext_flags & 0x80 != 0 {
            return Err(damaged("FAT mirroring is off (one active FAT): not edited"));
        }
        // Sectors outside the reserved area are not what their fields claim: leave them.
        let inside = |s: u64| (1..g.reserved).contains(&s).then_some(s);
        Ok(Geo {
            reserved: g.reserved,
            nfats: g.nfats,
            fat_sectors: g.fat_sectors,
            cluster_bytes: g.cluster_bytes(),
            clusters: g.clusters,
            fsinfo: inside(g.fsinfo_sector),
            backup: inside(g.backup_sector),
        })
    }
}

/// What is written before the switch.
enum Payload {
    File {
        source: Source,
        size: u64,
        path: String,
    },
    Bytes(Vec<u8>),
}

struct Put {
    clusters: Vec<u32>,
    payload: Payload,
}

/// Everything decided about one boot partition's upgrade, before any write.
pub struct BootEdit {
    pub part: String,
    pub span: PartSpan,
    geo: Geo,
    boot_sector: Vec<u8>,
    /// Each FAT copy as found.
    fats_old: Vec<Vec<u8>>,
    fat_staged: Vec<u8>,
    fat_final: Vec<u8>,
    puts: Vec<Put>,
    new_root: Option<u32>,
    backup_differs: bool,
    fsinfo: Option<[u8; 512]>,
    fsinfo_backup: Option<[u8; 512]>,
    fsinfo_backup_sector: Option<u64>,
    fsinfo_final: Option<[u8; 512]>,
    pub changes: Vec<Change>,
    /// Bytes of clusters the new set needs beside the old one, and bytes free for it.
    pub needs: u64,
    pub free: u64,
    /// Clusters allocated but used by no file (left by an interrupted upgrade).
    pub lost_clusters: u64,
}

/// One file or directory on the card.
struct Old {
    e: FatEntry,
    chain: Vec<u32>,
}

/// The error for a volume that cannot be edited as it is.
fn damaged(part: &str, m: impl std::fmt::Display) -> Error {
    Error::partition(
        part,
        format!("{m}; the FAT is damaged: repair it (fsck.fat) or start over with --reformat"),
    )
}

/// The volume's reserved sectors and FATs as found on the card.
struct OnCard {
    geo: Geo,
    boot_sector: Vec<u8>,
    backup: Option<[u8; 512]>,
    fsinfo: Option<[u8; 512]>,
    fsinfo_backup: Option<[u8; 512]>,
    fsinfo_backup_sector: Option<u64>,
    /// Every FAT copy as it is: an interrupted run may have left them different.
    fats: Vec<Vec<u8>>,
}

impl OnCard {
    fn read(disk: &GuardedDisk, span: PartSpan, geo: Geo) -> Result<OnCard> {
        let start = span.start;
        let mut boot_sector = vec![0u8; 512];
        disk.read_at(start, &mut boot_sector)?;
        let sector_at = |n: Option<u64>| -> Result<Option<[u8; 512]>> {
            let Some(n) = n else { return Ok(None) };
            let mut b = [0u8; 512];
            disk.read_at(start + n * SECTOR, &mut b)?;
            Ok(Some(b))
        };
        let fsinfo_backup_sector = geo
            .backup
            .zip(geo.fsinfo)
            .map(|(b, f)| b + f)
            .filter(|s| *s < geo.reserved);
        let fat_len = (geo.clusters as usize + 2) * 4;
        let mut fats = Vec::new();
        for copy in 0..geo.nfats {
            let mut f = vec![0u8; fat_len];
            disk.read_at(
                start + (geo.reserved + copy * geo.fat_sectors) * SECTOR,
                &mut f,
            )?;
            fats.push(f);
        }
        Ok(OnCard {
            backup: sector_at(geo.backup)?,
            fsinfo: sector_at(geo.fsinfo)?,
            fsinfo_backup: sector_at(fsinfo_backup_sector)?,
            geo,
            boot_sector,
            fsinfo_backup_sector,
            fats,
        })
    }
}

/// The old tree and every cluster it uses.
struct OldTree {
    files: Vec<Old>,
    used: HashSet<u32>,
    /// Index in `files` by lower-case path.
    by_path: HashMap<String, usize>,
    /// The stamp the last install gave its files: the most common one.
    installed: Option<u32>,
}

impl OldTree {
    fn read(vol: &FatVolume<'_>, geo: &Geo, part: &str) -> Result<OldTree> {
        let listed = vol.list().map_err(|m| damaged(part, m))?;
        let mut used: HashSet<u32> = HashSet::new();
        let root_chain = vol
            .chain(vol.root_cluster(), u64::from(geo.clusters))
            .map_err(|m| damaged(part, m))?;
        used.extend(&root_chain);
        let mut files = Vec::with_capacity(listed.len());
        for mut e in listed {
            if !e.is_dir && e.size == 0 {
                // An empty file owns no cluster, whatever its entry says.
                e.first_cluster = 0;
            }
            let chain = Self::chain_of(vol, geo, &e, part)?;
            for c in &chain {
                if !used.insert(*c) {
                    return Err(damaged(
                        part,
                        format!("{}: cluster {c} belongs to two files", e.path),
                    ));
                }
            }
            files.push(Old { e, chain });
        }
        let by_path = files
            .iter()
            .enumerate()
            .map(|(i, o)| (o.e.path.to_lowercase(), i))
            .collect();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for o in files.iter().filter(|o| !o.e.is_dir) {
            *counts.entry(o.e.stamp).or_default() += 1;
        }
        let installed = counts
            .into_iter()
            .max_by_key(|(s, n)| (*n, *s))
            .map(|(s, _)| s);
        Ok(OldTree {
            files,
            used,
            by_path,
            installed,
        })
    }

    /// The clusters entry `e` uses.
    fn chain_of(vol: &FatVolume<'_>, geo: &Geo, e: &FatEntry, part: &str) -> Result<Vec<u32>> {
        if e.is_dir {
            return vol
                .chain(e.first_cluster, u64::from(geo.clusters))
                .map_err(|m| damaged(part, m));
        }
        if e.size == 0 {
            return Ok(Vec::new());
        }
        let clusters = e.size.div_ceil(geo.cluster_bytes);
        let c = vol
            .chain(e.first_cluster, clusters)
            .map_err(|m| damaged(part, m))?;
        if (c.len() as u64) < clusters {
            return Err(damaged(
                part,
                format!("{}: cluster chain shorter than the file", e.path),
            ));
        }
        Ok(c)
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.by_path.get(&path.to_lowercase()).copied()
    }
}

/// A file already on the card that the new tree points at instead of copying.
#[derive(Debug, Clone)]
struct Reused {
    first: u32,
    chain: Vec<u32>,
    /// The stamp its entry keeps (`None`: the new one).
    stamp: Option<u32>,
}

/// The new tree: the build, what is kept, what did not change.
struct NewTree {
    tree: Tree,
    reuse: HashMap<String, Reused>,
    changes: Vec<Change>,
    /// Old entries the new tree claims (by index in the old tree).
    claimed: HashSet<usize>,
    new_dirs: bool,
}

/// What the new tree is decided from, besides the build.
struct Inputs<'a> {
    part: &'a str,
    keep: &'a Keep,
    force_config: bool,
    vol: &'a FatVolume<'a>,
    old: &'a OldTree,
}

impl NewTree {
    fn build(spec: &FsSpec<'_>, cx: &Inputs<'_>) -> Result<NewTree> {
        let old = cx.old;
        let mut t = NewTree {
            tree: Tree::new(),
            reuse: HashMap::new(),
            changes: Vec::new(),
            claimed: HashSet::new(),
            new_dirs: false,
        };
        for e in spec.tree.iter().skip(1) {
            let found = old.find(&e.path);
            let Node::File { source, size } = &e.node else {
                insert(&mut t.tree, e.clone(), cx.part)?;
                match found.filter(|i| old.files[*i].e.is_dir) {
                    Some(i) => {
                        t.claimed.insert(i);
                    }
                    None => t.new_dirs = true,
                }
                continue;
            };
            match found.filter(|i| !old.files[*i].e.is_dir) {
                Some(i) => {
                    t.claimed.insert(i);
                    t.file_on_card(e, source, *size, &old.files[i], cx)?;
                }
                None => {
                    insert(&mut t.tree, e.clone(), cx.part)?;
                    t.changes
                        .push(change(cx.part, e, Action::Added, None, *size, None));
                }
            }
        }
        t.leftovers(cx)?;
        t.changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(t)
    }

    /// A build file the card has as `o`: unchanged, kept as edited, or replaced.
    fn file_on_card(
        &mut self,
        e: &Entry,
        source: &Source,
        size: u64,
        o: &Old,
        cx: &Inputs<'_>,
    ) -> Result<()> {
        let reused = |stamp| Reused {
            first: o.e.first_cluster,
            chain: o.chain.clone(),
            stamp,
        };
        let user_config =
            USER_CONFIGS.contains(&e.path.trim_start_matches('/').to_lowercase().as_str());
        let edited = Some(o.e.stamp) != cx.old.installed;
        let (entry, action, new_size, note) = if o.e.size == size && same(cx.vol, &o.e, source)? {
            self.reuse.insert(e.path.clone(), reused(None));
            (e.clone(), Action::Unchanged, size, None)
        } else if user_config && edited && !cx.force_config {
            self.reuse.insert(e.path.clone(), reused(Some(o.e.stamp)));
            let as_found = Entry {
                node: Node::File {
                    source: Source::Text(String::new()),
                    size: o.e.size,
                },
                ..e.clone()
            };
            let note = "edited on the card; differs from the build (--force-config replaces it)";
            (as_found, Action::Kept, o.e.size, Some(note.into()))
        } else {
            (e.clone(), Action::Replaced, size, None)
        };
        insert(&mut self.tree, entry, cx.part)?;
        self.changes
            .push(change(cx.part, e, action, Some(o.e.size), new_size, note));
        Ok(())
    }

    /// Files on the card the build does not have: kept (`--keep`) or removed.
    fn leftovers(&mut self, cx: &Inputs<'_>) -> Result<()> {
        let part = cx.part;
        for (i, o) in cx.old.files.iter().enumerate() {
            if self.claimed.contains(&i) || o.e.is_dir {
                continue;
            }
            let change = |action, note: Option<String>| Change {
                partition: part.to_string(),
                path: o.e.path.clone(),
                action,
                old_size: Some(o.e.size),
                new_size: (action == Action::Kept).then_some(o.e.size),
                note,
            };
            if !cx.keep.matches(part, &o.e.path) {
                self.changes.push(change(Action::Removed, None));
                continue;
            }
            // Under the directories the tree already has, as the tree spells them.
            let path = canonical(&self.tree, &o.e.path);
            let e = Entry {
                path: path.clone(),
                node: Node::File {
                    source: Source::Text(String::new()),
                    size: o.e.size,
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
            };
            if let Err(m) = self.tree.insert(e) {
                return Err(Error::Usage(format!("--keep {}: {}", o.e.path, m.0)));
            }
            self.reuse.insert(
                path,
                Reused {
                    first: o.e.first_cluster,
                    chain: o.chain.clone(),
                    stamp: Some(o.e.stamp),
                },
            );
            self.changes
                .push(change(Action::Kept, Some("kept (--keep)".into())));
        }
        Ok(())
    }

    /// Whether the new tree differs from the old one at all.
    fn differs(&self, old: &OldTree) -> bool {
        self.new_dirs
            || self
                .changes
                .iter()
                .any(|c| c.action != Action::Unchanged && c.action != Action::Kept)
            || old
                .files
                .iter()
                .any(|o| o.e.is_dir && tree_lookup(&self.tree, &o.e.path).is_none())
    }
}

/// A build file's change.
fn change(
    part: &str,
    e: &Entry,
    action: Action,
    old_size: Option<u64>,
    new_size: u64,
    note: Option<String>,
) -> Change {
    Change {
        partition: part.to_string(),
        path: e.path.clone(),
        action,
        old_size,
        new_size: Some(new_size),
        note,
    }
}

fn fat_at(f: &[u8], c: u32) -> u32 {
    let i = c as usize * 4;
    u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]) & 0x0FFF_FFFF
}

/// The new set placed in clusters the old tree leaves free.
struct Staging {
    fat: Vec<u8>,
    puts: Vec<Put>,
    new_root: Option<u32>,
    /// Bytes of clusters the new set takes.
    needs: u64,
    /// Every cluster a file of the new tree uses.
    in_use: HashSet<u32>,
    /// The clusters the old tree leaves free, and how many of them are taken.
    free: Vec<u32>,
    taken: usize,
    cluster_bytes: u64,
}

impl Staging {
    fn new(fat_old: &[u8], free: &[u32], geo: &Geo) -> Staging {
        Staging {
            fat: fat_old.to_vec(),
            puts: Vec::new(),
            new_root: None,
            needs: 0,
            in_use: HashSet::new(),
            free: free.to_vec(),
            taken: 0,
            cluster_bytes: geo.cluster_bytes,
        }
    }

    /// Nothing to write: the old tree stays as it is.
    fn none(fat_old: &[u8], free: &[u32], geo: &Geo, used: &HashSet<u32>) -> Staging {
        Staging {
            in_use: used.clone(),
            ..Staging::new(fat_old, free, geo)
        }
    }

    /// The next `n` free clusters (fewer when they run out: `needs` still counts `n`).
    fn take(&mut self, n: u64) -> Vec<u32> {
        self.needs += n * self.cluster_bytes;
        let end = (self.taken + n as usize).min(self.free.len());
        let c = self.free[self.taken..end].to_vec();
        self.taken = end;
        c
    }

    /// Places the new tree's new files and every directory in free clusters.
    fn place(&mut self, spec: &FsSpec<'_>, t: &NewTree, part: &str) -> Result<()> {
        let cb = self.cluster_bytes;
        // Files first, then directories (their entries name the files' clusters).
        let mut first: HashMap<String, u32> = HashMap::new();
        for e in t.tree.iter() {
            let Node::File { source, size } = &e.node else {
                continue;
            };
            if let Some(r) = t.reuse.get(&e.path) {
                first.insert(e.path.clone(), r.first);
                self.in_use.extend(&r.chain);
                continue;
            }
            let clusters = self.take(size.div_ceil(cb));
            first.insert(e.path.clone(), clusters.first().copied().unwrap_or(0));
            self.puts.push(Put {
                clusters,
                payload: Payload::File {
                    source: source.clone(),
                    size: *size,
                    path: e.path.clone(),
                },
            });
        }
        self.place_dirs(spec, t, &mut first, part)?;
        for p in &self.puts {
            for (k, c) in p.clusters.iter().enumerate() {
                let v = p.clusters.get(k + 1).copied().unwrap_or(EOC);
                set(&mut self.fat, *c, v);
                self.in_use.insert(*c);
            }
        }
        self.new_root = Some(first["/"]);
        Ok(())
    }

    /// Places every directory: sized first, then, when the whole set fits, encoded for real.
    fn place_dirs(
        &mut self,
        spec: &FsSpec<'_>,
        t: &NewTree,
        first: &mut HashMap<String, u32>,
        part: &str,
    ) -> Result<()> {
        let cb = self.cluster_bytes;
        let dirs: Vec<&Entry> = t.tree.iter().filter(|e| e.node == Node::Dir).collect();
        // Sizes do not depend on cluster numbers: encode once to size, once for real.
        let stamp = stamp_of(spec.epoch);
        let mut dir_clusters: HashMap<String, Vec<u32>> = HashMap::new();
        for d in &dirs {
            let n = dir_bytes(spec, t, d, first, 0, stamp)?.len() as u64;
            let c = self.take(n.div_ceil(cb).max(1));
            first.insert(d.path.clone(), c.first().copied().unwrap_or(0));
            dir_clusters.insert(d.path.clone(), c);
        }
        let have = self.free.len() as u64 * cb;
        if self.needs > have {
            return Err(no_room(part, self.needs, have));
        }
        for d in &dirs {
            let up = if d.path == "/" {
                0
            } else {
                let p = parent_of(&d.path);
                if p == "/" { 0 } else { first[p] }
            };
            let mut b = dir_bytes(spec, t, d, first, up, stamp)?;
            let c = dir_clusters.remove(&d.path).unwrap_or_default();
            b.resize(c.len() * cb as usize, 0);
            self.puts.push(Put {
                clusters: c,
                payload: Payload::Bytes(b),
            });
        }
        Ok(())
    }
}

fn no_room(part: &str, needs: u64, have: u64) -> Error {
    Error::partition(
        part,
        format!(
            "no room to write the new boot set beside the old one: it needs {} of new files and directories, {} is free ({} missing); free space on the card (--keep less) or start over with --reformat",
            bytes(needs),
            bytes(have),
            bytes(needs - have)
        ),
    )
}

/// After the switch (or as a repair): every cluster no file uses is free. Returns the
/// final FAT and FSInfo.
fn freed(geo: &Geo, staged: &Staging, fsinfo: Option<[u8; 512]>) -> (Vec<u8>, Option<[u8; 512]>) {
    let mut fat = staged.fat.clone();
    let mut free = 0u64;
    let mut hint = 0xFFFF_FFFFu32;
    for c in 2..geo.clusters + 2 {
        let v = fat_at(&fat, c);
        if v == BAD || staged.in_use.contains(&c) {
            continue;
        }
        if v != 0 {
            set(&mut fat, c, 0);
        }
        free += 1;
        if hint == 0xFFFF_FFFF {
            hint = c;
        }
    }
    let fsinfo = fsinfo.map(|mut f| {
        f[488..492].copy_from_slice(&(free as u32).to_le_bytes());
        f[492..496].copy_from_slice(&hint.to_le_bytes());
        f
    });
    (fat, fsinfo)
}

impl BootEdit {
    /// Whether anything will be written.
    pub fn writes_anything(&self) -> bool {
        self.new_root.is_some()
            || self.backup_differs
            || self.fats_old.iter().any(|f| *f != self.fat_final)
            || self.fsinfo_final != self.fsinfo
            || (self.fsinfo_backup.is_some() && self.fsinfo_final != self.fsinfo_backup)
    }

    /// Reads the partition and decides the edit; writes nothing.
    pub fn plan(
        disk: &GuardedDisk,
        spec: &FsSpec<'_>,
        span: PartSpan,
        keep: &Keep,
        force_config: bool,
    ) -> Result<BootEdit> {
        let part = spec.part.to_string();
        let vol = FatVolume::open(disk, span.start, span.size).map_err(|e| damaged(&part, e))?;
        let card = OnCard::read(disk, span, Geo::of(&vol, &part)?)?;
        let geo = card.geo;
        let old = OldTree::read(&vol, &geo, &part)?;
        let mut new = NewTree::build(
            spec,
            &Inputs {
                part: &part,
                keep,
                force_config,
                vol: &vol,
                old: &old,
            },
        )?;

        // Clusters the old tree leaves: free, or lost (allocated but used by nothing).
        let fat_old = &card.fats[0];
        let free: Vec<u32> = (2..geo.clusters + 2)
            .filter(|c| !old.used.contains(c) && fat_at(fat_old, *c) != BAD)
            .collect();
        let lost = free.iter().filter(|c| fat_at(fat_old, **c) != 0).count() as u64;
        let staged = if new.differs(&old) {
            let mut s = Staging::new(fat_old, &free, &geo);
            s.place(spec, &new, &part)?;
            s
        } else {
            Staging::none(fat_old, &free, &geo, &old.used)
        };
        // FSInfo is only a hint; a sector without its signature is left alone.
        let fsinfo = card
            .fsinfo
            .filter(|f| f[0..4] == 0x4161_5252u32.to_le_bytes());
        let (fat_final, fsinfo_final) = freed(&geo, &staged, fsinfo);
        let mut boot_new = card.boot_sector.clone();
        if let Some(r) = staged.new_root {
            boot_new[44..48].copy_from_slice(&r.to_le_bytes());
        }
        Ok(BootEdit {
            part,
            span,
            geo,
            backup_differs: card.backup.is_some_and(|b| b[..] != boot_new[..]),
            boot_sector: boot_new,
            fats_old: card.fats,
            fat_staged: staged.fat,
            fat_final,
            puts: staged.puts,
            new_root: staged.new_root,
            fsinfo,
            fsinfo_backup: card.fsinfo_backup.filter(|_| fsinfo.is_some()),
            fsinfo_backup_sector: card.fsinfo_backup_sector,
            fsinfo_final,
            changes: std::mem::take(&mut new.changes),
            needs: staged.needs,
            free: free.len() as u64 * geo.cluster_bytes,
            lost_clusters: lost,
        })
    }

    /// Stages the new set, switches to it, frees the old one (see the module comment).
    pub fn apply(&self, disk: &mut GuardedDisk) -> Result<()> {
        let cb = self.geo.cluster_bytes;
        let data_start = (self.geo.reserved + self.geo.nfats * self.geo.fat_sectors) * SECTOR;
        let at = |c: u32| self.span.start + data_start + u64::from(c - 2) * cb;
        let mut buf = vec![0u8; 1 << 20];
        for p in &self.puts {
            match &p.payload {
                Payload::Bytes(b) => {
                    for run in runs(&p.clusters) {
                        let from = run.index * cb as usize;
                        let to = from + run.count as usize * cb as usize;
                        disk.write_at(at(run.first), &b[from..to])?;
                    }
                }
                Payload::File { source, size, path } => {
                    let mut r = crate::io::open(source, *size)?;
                    for run in runs(&p.clusters) {
                        let mut left = u64::from(run.count) * cb;
                        let mut off = at(run.first);
                        while left > 0 {
                            let want = left.min(buf.len() as u64) as usize;
                            let n = read_full(&mut r, &mut buf[..want])
                                .map_err(|e| Error::io(format!("reading {path}"), e))?;
                            if n == 0 {
                                break;
                            }
                            disk.write_at(off, &buf[..n])?;
                            off += n as u64;
                            left -= n as u64;
                        }
                    }
                    if r.count() != *size {
                        return Err(Error::partition(
                            &self.part,
                            format!("{path}: source changed size while upgrading"),
                        ));
                    }
                }
            }
        }
        for (copy, old) in self.fats_old.iter().enumerate() {
            self.write_fat(disk, copy as u64, old, &self.fat_staged)?;
        }
        disk.sync()?;
        if self.new_root.is_some() {
            // The switch: one sector.
            disk.write_at(self.span.start, &self.boot_sector)?;
            disk.sync()?;
        }
        if let Some(b) = self.geo.backup.filter(|_| self.backup_differs) {
            disk.write_at(self.span.start + b * SECTOR, &self.boot_sector)?;
            disk.sync()?;
        }
        for copy in 0..self.geo.nfats {
            self.write_fat(disk, copy, &self.fat_staged, &self.fat_final)?;
        }
        if let (Some(f), Some(n)) = (&self.fsinfo_final, self.geo.fsinfo) {
            if self.fsinfo.as_ref() != Some(f) {
                disk.write_at(self.span.start + n * SECTOR, f)?;
            }
            if let Some(b) = self.fsinfo_backup_sector
                && self.fsinfo_backup.as_ref() != Some(f)
            {
                disk.write_at(self.span.start + b * SECTOR, f)?;
            }
        }
        disk.sync()
    }

    /// Writes the sectors of FAT copy `copy` that differ between `from` and `to`.
    fn write_fat(&self, disk: &mut GuardedDisk, copy: u64, from: &[u8], to: &[u8]) -> Result<()> {
        let s = SECTOR as usize;
        {
            let base = self.span.start + (self.geo.reserved + copy * self.geo.fat_sectors) * SECTOR;
            let mut i = 0;
            while i < to.len() {
                let end = (i + s).min(to.len());
                if from[i..end] != to[i..end] {
                    // Extend over the following differing sectors: one write per run.
                    let mut j = end;
                    while j < to.len()
                        && from[j..(j + s).min(to.len())] != to[j..(j + s).min(to.len())]
                    {
                        j = (j + s).min(to.len());
                    }
                    disk.write_at(base + i as u64, &to[i..j])?;
                    i = j;
                } else {
                    i = end;
                }
            }
        }
        Ok(())
    }
}

fn insert(tree: &mut Tree, e: Entry, part: &str) -> Result<()> {
    tree.insert(e).map_err(|c| Error::partition(part, c.0))
}

/// `path` with each existing directory spelled as the tree spells it (FAT ignores case).
fn canonical(tree: &Tree, path: &str) -> String {
    let mut out = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let want = format!("{out}/{comp}");
        match tree_lookup(tree, &want) {
            Some(e) => out = e.path.clone(),
            None => out = want,
        }
    }
    out
}

fn tree_lookup<'a>(tree: &'a Tree, path: &str) -> Option<&'a Entry> {
    let want = path.to_lowercase();
    tree.iter().find(|e| e.path.to_lowercase() == want)
}

fn set(fat: &mut [u8], c: u32, v: u32) {
    let i = c as usize * 4;
    let old = u32::from_le_bytes([fat[i], fat[i + 1], fat[i + 2], fat[i + 3]]);
    let v = (old & 0xF000_0000) | (v & 0x0FFF_FFFF);
    fat[i..i + 4].copy_from_slice(&v.to_le_bytes());
}

/// Contiguous clusters of a cluster list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u32,
    count: u32,
    /// Where `first` stands in the list.
    index: usize,
}

/// The contiguous runs of a cluster list.
fn runs(clusters: &[u32]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        match out.last_mut() {
            Some(r) if r.first + r.count == *c => r.count += 1,
            _ => out.push(Run {
                first: *c,
                count: 1,
                index: i,
            }),
        }
    }
    out
}

/// Directory `d` of the new tree, encoded: its children start at `first`, its parent at
/// `up`; entries without a stamp of their own get `stamp`.
fn dir_bytes(
    spec: &FsSpec<'_>,
    t: &NewTree,
    d: &Entry,
    first: &HashMap<String, u32>,
    up: u32,
    stamp: u32,
) -> Result<Vec<u8>> {
    let kids: Vec<Child<'_>> = t
        .tree
        .children(&d.path)
        .map(|k| Child {
            entry: k,
            first: first.get(&k.path).copied().unwrap_or(0),
            stamp: t.reuse.get(&k.path).and_then(|r| r.stamp).or(Some(stamp)),
        })
        .collect();
    let me = first.get(&d.path).copied().unwrap_or(0);
    encode_directory(spec, me, (d.path != "/").then_some(up), &kids)
}

/// Whether a file on the card holds what `source` holds (compared as it streams, stopping
/// at the first difference). A U-Boot image's header time and header CRC are the build's
/// clock, not content.
fn same(vol: &FatVolume<'_>, e: &FatEntry, source: &Source) -> Result<bool> {
    let mask = matches!(source, Source::Bytes(b) if b.starts_with(&UIMAGE_MAGIC));
    let mut r = crate::io::open(source, e.size)?;
    let mut want = vec![0u8; 1 << 20];
    let mut at = 0u64;
    let mut equal = true;
    let mut failed = None;
    let read = vol.read_file_while(e, &mut |got: &[u8]| {
        let w = &mut want[..got.len()];
        match read_full(&mut r, w) {
            Ok(n) if n == got.len() => {}
            Ok(_) => {
                equal = false;
                return false;
            }
            Err(x) => {
                failed = Some(x);
                return false;
            }
        }
        let differs = if mask && at < 12 {
            got.iter()
                .zip(w.iter())
                .enumerate()
                .any(|(i, (a, b))| a != b && !(4..12).contains(&(at + i as u64)))
        } else {
            got != &w[..]
        };
        at += got.len() as u64;
        if differs {
            equal = false;
        }
        !differs
    });
    if let Some(x) = failed {
        return Err(Error::io(format!("reading the build's {}", e.path), x));
    }
    // Unreadable on the card: replace it.
    Ok(read.is_ok() && equal)
}

#[cfg(test)]
mod tests {
    use super::{Run, runs};

    #[test]
    fn runs_coalesce_contiguous_clusters() {
        let run = |first, count, index| Run {
            first,
            count,
            index,
        };
        assert_eq!(
            runs(&[5, 6, 7, 10, 11, 3]),
            vec![run(5, 3, 0), run(10, 2, 3), run(3, 1, 5)]
        );
        assert!(runs(&[]).is_empty());
    }
}
