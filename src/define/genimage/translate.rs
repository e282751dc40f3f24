//! A merged genimage config turned into a `Board`: the one `hdimage` becomes the layout
//! (every partition at the offset and size genimage's rules give it), `vfat` and `ext4`
//! images become FAT32 and ext4 partitions with file rules for their content, prebuilt files
//! become partition images, partitions outside the table become raw writes (split around
//! their `holes`), and options that change nothing here become warnings.
//!
//! Not for placement rules (that is `hd`) or syntax (that is `parse`/`config`).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Options;
use super::config::{Node, Size, parse_size};
use super::hd::{self, Child, Disk, Part, Signature, TableType};
use super::parse::Pos;
use crate::define::board::{
    Board, FileRule, FsKind, Layout, PartitionDef, RawRule, SizeSpec, TableKind,
};
use crate::error::Result;
use crate::units::{Size as Bytes, human};

/// Kinds of image section, by the handler subsection they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hd,
    Vfat,
    Ext(u8),
    File,
}

/// An `image NAME { }` section and its kind.
#[derive(Clone, Copy)]
struct Image<'a> {
    node: &'a Node,
    kind: Kind,
    handler: &'a Node,
}

/// Everything the translation needs at hand.
struct Ctx<'a> {
    images: Vec<Image<'a>>,
    opts: &'a Options,
    warnings: Vec<String>,
}

/// Builds the board for the config's disk image.
pub fn board(root: &Node, cfg: &Path, opts: &Options) -> Result<Board> {
    let mut ctx = Ctx {
        images: root
            .sections("image")
            .map(image)
            .collect::<Result<Vec<_>>>()?,
        opts,
        warnings: Vec::new(),
    };
    config_sections(root, &mut ctx.warnings);
    let disk_image = ctx.disk_image(root)?;
    ctx.unused_images(&disk_image);
    let disk = ctx.place(&disk_image)?;
    let board = ctx.assemble(&disk_image, &disk, cfg)?;
    board.validate()?;
    Ok(board)
}

fn image(node: &Node) -> Result<Image<'_>> {
    let kinds = [
        ("hdimage", Kind::Hd),
        ("vfat", Kind::Vfat),
        ("ext2", Kind::Ext(2)),
        ("ext3", Kind::Ext(3)),
        ("ext4", Kind::Ext(4)),
        ("file", Kind::File),
    ];
    let found: Vec<(&Node, Kind)> = kinds
        .iter()
        .flat_map(|(name, kind)| node.sections(name).map(move |s| (s, *kind)))
        .collect();
    let title = node.title();
    let (handler, kind) = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(node
                .pos
                .error(format!("image {title}: no image type given")));
        }
        [_, second, ..] => {
            return Err(second
                .0
                .pos
                .error(format!("image {title}: multiple image types given")));
        }
    };
    for key in ["exec-pre", "exec-post"] {
        if let Some((_, pos)) = node.str_at(key) {
            return Err(pos.error(format!(
                "image {title}: `{key}` is not supported: skiff-flash runs no commands"
            )));
        }
    }
    if let Some((_, pos)) = node.str_at("flashtype") {
        return Err(pos.error(format!(
            "image {title}: `flashtype` is not supported: skiff-flash writes disk images"
        )));
    }
    Ok(Image {
        node,
        kind,
        handler,
    })
}

/// `config { }` values are decided by the command line here.
fn config_sections(root: &Node, warnings: &mut Vec<String>) {
    for c in root.sections("config") {
        for key in [
            "rootpath",
            "inputpath",
            "outputpath",
            "tmppath",
            "includepath",
        ] {
            if let Some((v, pos)) = c.str_at(key) {
                warnings.push(format!(
                    "{}:{}: config `{key} = {v}` is ignored (the command line decides paths)",
                    pos.file, pos.line
                ));
            }
        }
    }
}

impl<'a> Ctx<'a> {
    fn find(&self, name: &str) -> Option<&Image<'a>> {
        self.images.iter().find(|i| i.node.title() == name)
    }

    /// The one `hdimage` image.
    fn disk_image(&self, root: &Node) -> Result<Image<'a>> {
        let hds: Vec<&Image<'a>> = self.images.iter().filter(|i| i.kind == Kind::Hd).collect();
        match hds.as_slice() {
            [one] => Ok(**one),
            [] => Err(root
                .pos
                .error("no `hdimage` image: skiff-flash builds the disk image of a config")),
            [_, second, ..] => Err(second.node.pos.error(format!(
                "several `hdimage` images ({}); skiff-flash builds one disk per config",
                hds.iter()
                    .map(|i| i.node.title())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Images the disk does not contain are not written; say so.
    fn unused_images(&mut self, disk: &Image<'_>) {
        let used: BTreeSet<&str> = disk
            .node
            .sections("partition")
            .filter_map(|p| p.str("image"))
            .collect();
        let mut notes = Vec::new();
        for i in &self.images {
            let t = i.node.title();
            if i.kind != Kind::Hd && !used.contains(t) && !self.in_vfat(t) {
                notes.push(format!(
                    "image {t} is not part of {} and is not written",
                    disk.node.title()
                ));
            }
        }
        self.warnings.extend(notes);
    }

    fn in_vfat(&self, name: &str) -> bool {
        self.images
            .iter()
            .filter(|i| i.kind == Kind::Vfat)
            .any(|i| {
                i.handler.list("files").iter().any(|f| f == name)
                    || i.handler
                        .sections("file")
                        .any(|f| f.str("image") == Some(name))
            })
    }

    fn place(&self, disk: &Image<'_>) -> Result<Disk> {
        let hd = hd::options(disk.handler)?;
        if hd.table == TableType::None {
            return Err(hd.pos.error(
                "partition-table-type \"none\" is not supported: skiff-flash writes MBR, GPT \
                 or hybrid tables",
            ));
        }
        let mut child = |p: &Node| self.child(p);
        let parts = disk
            .node
            .sections("partition")
            .map(|p| hd::partition(p, &hd, &mut child))
            .collect::<Result<Vec<Part>>>()?;
        let size = match self.opts.size {
            Some(s) => s,
            None => image_size(disk.node)?,
        };
        hd::place(hd, parts, size, &disk.node.pos)
    }

    /// What a partition's `image` is and how large.
    fn child(&self, part: &Node) -> Result<Option<Child>> {
        let Some((name, pos)) = part.str_at("image") else {
            return Ok(None);
        };
        let holes_here = !part.list("holes").is_empty();
        match self.find(name) {
            Some(_) if holes_here => {
                Err(part.value("holes").map_or(pos, |v| &v.pos).error(format!(
                    "partition {}: holes in partitions are only valid for implicit child images \
                     (put them in image {name})",
                    part.title()
                )))
            }
            Some(img) => self.config_child(img, pos),
            None => {
                let size = self.input_size(name, pos, &format!("partition {}", part.title()))?;
                Ok(Some(Child {
                    size,
                    holes: holes(part)?,
                }))
            }
        }
    }

    fn config_child(&self, img: &Image<'_>, pos: &Pos) -> Result<Option<Child>> {
        let title = img.node.title();
        match img.kind {
            Kind::Hd => Err(pos.error(format!(
                "image {title} is an hdimage; a disk inside a disk is not supported"
            ))),
            Kind::File => {
                let name = img.handler.str("name").unwrap_or(title);
                let size = match image_size(img.node)? {
                    0 => self.input_size(name, pos, &format!("image {title}"))?,
                    n => n,
                };
                Ok(Some(Child {
                    size,
                    holes: holes(img.handler)?,
                }))
            }
            Kind::Vfat | Kind::Ext(_) => {
                let size = match self.fs_size(img)? {
                    0 => {
                        return Err(img
                            .node
                            .pos
                            .error(format!("image {title}: no size given or must not be zero")));
                    }
                    n => n,
                };
                Ok(Some(Child {
                    size,
                    holes: Vec::new(),
                }))
            }
        }
    }

    /// A filesystem image's size: `size`, or a percentage of its content's size.
    fn fs_size(&self, img: &Image<'_>) -> Result<u64> {
        let Some((text, pos)) = img.node.str_at("size") else {
            return Ok(0);
        };
        match parse_size(text, true).map_err(|m| pos.error(format!("option `size`: {m}")))? {
            Size::Bytes(n) => Ok(n),
            Size::Percent(p) => {
                let content = match self.mountpath(img)? {
                    Some(dir) => dir_size(&dir),
                    None => 0,
                };
                Ok(content * p / 100)
            }
        }
    }

    /// The size of an input file, or an error at the line that names it.
    fn input_size(&self, name: &str, pos: &Pos, what: &str) -> Result<u64> {
        let path = self.opts.images.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(pos.error(format!(
                "{what}: input `{name}` is not a regular file ({})",
                path.display()
            ))),
            Err(_) => Err(pos.error(format!(
                "{what}: input file `{name}` not found (looked in {})",
                path.display()
            ))),
        }
    }

    /// The rule copying the image's content directory (its mountpath), if it has one, to the
    /// root of partition `id`.
    fn mountpath_rule(&self, img: &Image<'_>, id: &str, files: &mut Vec<FileRule>) -> Result<()> {
        if let Some(dir) = self.mountpath(img)? {
            files.push(rule(
                files.len(),
                dir.display().to_string(),
                format!("{id}:/"),
            ));
        }
        Ok(())
    }

    /// Where a filesystem image takes its content from, if anywhere (genimage's mountpath:
    /// `srcpath`, else the rootpath or its `mountpoint` subdirectory; none when `empty`).
    fn mountpath(&self, img: &Image<'_>) -> Result<Option<PathBuf>> {
        let node = img.node;
        if let Some((src, pos)) = node.str_at("srcpath") {
            if node.str("mountpoint").is_some_and(|m| !m.is_empty()) {
                return Err(pos.error(format!(
                    "image {}: cannot specify both srcpath and mountpoint",
                    node.title()
                )));
            }
            return absolute(Path::new(src), pos).map(Some);
        }
        if node.bool("empty", false) {
            return Ok(None);
        }
        let Some(root) = &self.opts.rootpath else {
            return Ok(None);
        };
        let sub = node.str("mountpoint").unwrap_or("").trim_start_matches('/');
        let dir = if sub.is_empty() {
            root.clone()
        } else {
            root.join(sub)
        };
        if !dir.is_dir() {
            return Err(node.pos.error(format!(
                "image {}: content directory {} does not exist",
                node.title(),
                dir.display()
            )));
        }
        self.check_split(img)?;
        Ok(Some(dir))
    }

    /// An image that takes the whole rootpath while another takes a `mountpoint` of it would
    /// need the rootpath split as genimage splits it.
    fn check_split(&self, img: &Image<'_>) -> Result<()> {
        let node = img.node;
        if node
            .str("mountpoint")
            .is_some_and(|m| !m.trim_matches('/').is_empty())
        {
            return Ok(());
        }
        let other = self.images.iter().find_map(|i| {
            let m = i.node.str("mountpoint")?.trim_matches('/');
            (!m.is_empty() && i.node.str("srcpath").is_none()).then_some((i.node, m))
        });
        match other {
            Some((o, m)) => Err(node.pos.error(format!(
                "image {} takes the whole rootpath while image {} takes its `{m}`; skiff-flash \
                 does not split a rootpath (give image {} a srcpath)",
                node.title(),
                o.title(),
                node.title()
            ))),
            None => Ok(()),
        }
    }
}

/// An image's `size` (no `%`), 0 when unset.
fn image_size(node: &Node) -> Result<u64> {
    Ok(node.size("size")?.map_or(0, |(n, _)| n))
}

fn holes(node: &Node) -> Result<Vec<(u64, u64)>> {
    let pos = node.value("holes").map_or(&node.pos, |v| &v.pos);
    node.list("holes")
        .iter()
        .map(|h| {
            hd::parse_hole(h).ok_or_else(|| {
                pos.error(format!(
                    "invalid hole specification `{h}`, use \"(<start>;<end>)\""
                ))
            })
        })
        .collect()
}

fn absolute(p: &Path, pos: &Pos) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .map_err(|e| pos.error(format!("cannot resolve {}: {e}", p.display())))
}

/// genimage's estimate of a directory's size: files rounded up to 4 KiB, 4 KiB per directory.
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut size = 0;
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => size += dir_size(&e.path()),
            Ok(t) if t.is_file() => {
                size += e.metadata().map_or(0, |m| m.size().div_ceil(4096) * 4096);
            }
            _ => {}
        }
    }
    size + 4096
}

/// What identifiers are derived from: the config's text and the disk's name, so two boards'
/// `sdcard.img` differ and a config gives the same identifiers wherever it is.
fn seed(cfg: &Path, image: &str) -> String {
    let text = crate::io::read_small(cfg, "genimage config").unwrap_or_default();
    let hash = crate::io::sha256(&text);
    format!("genimage/{}/{image}", &hash[..16])
}

/// Partition ids usable in `ID:/path` destinations, unique.
fn part_id(name: &str, taken: &BTreeSet<String>) -> String {
    let base: String = name
        .chars()
        .map(|c| if c == ':' || c == '/' { '_' } else { c })
        .collect();
    let base = if base.is_empty() { "part".into() } else { base };
    let mut id = base.clone();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

impl Ctx<'_> {
    fn assemble(&mut self, disk_image: &Image<'_>, disk: &Disk, cfg: &Path) -> Result<Board> {
        let mut partitions = Vec::new();
        let mut files = Vec::new();
        let mut raw = Vec::new();
        let mut taken = BTreeSet::new();
        for p in &disk.parts {
            if !p.in_table {
                raw.extend(self.raw_rules(p)?);
                continue;
            }
            let id = part_id(&p.name, &taken);
            taken.insert(id.clone());
            let def = self.partition_def(p, &id, disk, &mut files)?;
            partitions.push(def);
        }
        let hd = &disk.hd;
        let gpt = hd.table.has_gpt();
        let first_usable = disk
            .parts
            .iter()
            .filter(|p| p.in_table)
            .map(|p| p.offset)
            .min()
            .unwrap_or(hd.gpt_location + hd::GPT_ARRAY);
        if !hd.align.is_power_of_two() {
            return Err(hd.pos.error(format!(
                "hdimage: align {} is not a power of two, which skiff-flash requires",
                hd.align
            )));
        }
        let layout = Layout {
            name: "genimage".into(),
            description: format!("hdimage {} of {}", disk_image.node.title(), cfg.display()),
            table: if gpt { TableKind::Gpt } else { TableKind::Mbr },
            align: Bytes(hd.align),
            start: None,
            gpt_array: gpt.then_some(Bytes(hd.gpt_location)),
            size: Some(Bytes(disk.size)),
            disk_guid: hd.disk_uuid,
            disk_signature: match hd.signature {
                Signature::Fixed(v) => Some(v),
                Signature::Random => None,
            },
            gpt_first_usable: gpt.then_some(Bytes(first_usable)),
            gpt_no_backup: gpt && hd.gpt_no_backup,
            hybrid_mbr: hd.table == TableType::Hybrid,
            l4t: None,
            partitions,
        };
        Ok(Board {
            name: disk_image.node.title().to_string(),
            description: format!("genimage config {}", cfg.display()),
            layers: vec![cfg.display().to_string()],
            layout,
            files,
            attrs: Vec::new(),
            raw,
            vars: Default::default(),
            warnings: std::mem::take(&mut self.warnings),
            seed: Some(seed(cfg, disk_image.node.title())),
        })
    }

    /// A partition outside the table: its image written raw, around its holes.
    fn raw_rules(&self, p: &Part) -> Result<Vec<RawRule>> {
        let Some(name) = &p.image else {
            return Err(p
                .pos
                .error(format!("partition {}: no input file given", p.name)));
        };
        let (path, holes) = match self.find(name) {
            Some(img) if img.kind == Kind::File => (
                img.handler.str("name").unwrap_or(name).to_string(),
                holes(img.handler)?,
            ),
            Some(_) => {
                return Err(p.pos.error(format!(
                    "partition {}: image {name} outside the partition table must be a file",
                    p.name
                )));
            }
            None => (
                name.clone(),
                p.child.as_ref().map_or(Vec::new(), |c| c.holes.clone()),
            ),
        };
        let len = p.child.as_ref().map_or(0, |c| c.size);
        let pieces = outside_holes(len, &holes);
        let many = pieces.len() > 1;
        Ok(pieces
            .into_iter()
            .map(|(s, e)| RawRule {
                name: if many {
                    format!("{}@{s:#x}", p.name)
                } else {
                    p.name.clone()
                },
                from: vec![path.clone()],
                offset: Some(Bytes(p.offset + s)),
                skip: Some(Bytes(s)),
                length: Some(Bytes(e - s)),
                required: Some(true),
                remove: false,
            })
            .collect())
    }

    fn partition_def(
        &mut self,
        p: &Part,
        id: &str,
        disk: &Disk,
        files: &mut Vec<FileRule>,
    ) -> Result<PartitionDef> {
        let table = disk.hd.table;
        let mut def = PartitionDef {
            id: id.to_string(),
            fs: None,
            fat: None,
            label: None,
            gpt_name: table.has_gpt().then(|| p.name.clone()),
            gpt_type: p.gpt_type.map(|g| g.to_string()),
            mbr_type: (table == TableType::Mbr || (table == TableType::Hybrid && p.mbr_type != 0))
                .then(|| format!("0x{:02x}", p.mbr_type)),
            bootable: p.bootable,
            size: SizeSpec::Fixed(p.size),
            headroom: None,
            min: None,
            offset: Some(Bytes(p.offset)),
            image: None,
            fs_size: None,
            partuuid: p.uuid,
            logical: p.logical,
        };
        if table == TableType::Mbr && p.mbr_type == 0 {
            self.warnings.push(format!(
                "partition {} has no partition-type: its MBR entry gets type 0, as genimage writes it",
                p.name
            ));
        }
        if table.has_gpt() && !p.name.is_ascii() {
            self.warnings.push(format!(
                "partition {}: the GPT name is stored as UTF-16, genimage stores each byte",
                p.name
            ));
        }
        let Some(name) = &p.image else {
            return Ok(def);
        };
        let child_size = p.child.as_ref().map_or(0, |c| c.size);
        match self.find(name).map(|i| (i.kind, i.node, i.handler)) {
            None => def.image = Some(name.clone()),
            Some((Kind::File, _, h)) => {
                def.image = Some(h.str("name").unwrap_or(name).to_string());
            }
            Some((Kind::Hd, ..)) => nested_disk(p)?,
            Some((Kind::Vfat, node, h)) => {
                self.vfat(node, h, id, child_size, &mut def, files)?;
            }
            Some((Kind::Ext(v), node, h)) => {
                self.ext(node, h, v, id, &mut def, files)?;
            }
        }
        if def.fs.is_some() && child_size < p.size {
            def.fs_size = Some(Bytes(child_size));
        }
        Ok(def)
    }
}

fn nested_disk(p: &Part) -> Result<()> {
    Err(p.pos.error(format!(
        "partition {}: a disk inside a disk is not supported",
        p.name
    )))
}

/// The byte ranges of `[0, len)` outside every hole.
fn outside_holes(len: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut hs: Vec<(u64, u64)> = holes.iter().filter(|(s, e)| s < e).copied().collect();
    hs.sort();
    let mut out = Vec::new();
    let mut at = 0;
    for (s, e) in hs {
        if s > at {
            out.push((at, s.min(len)));
        }
        at = at.max(e);
        if at >= len {
            break;
        }
    }
    if at < len {
        out.push((at, len));
    }
    out.retain(|(s, e)| s < e);
    out
}

/// The volume label: genimage passes `label` as `-n` after extraargs, so it wins.
fn vfat_label(title: &str, h: &Node, from_args: Option<String>) -> Result<Option<String>> {
    let label = h
        .str("label")
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .or(from_args)
        .filter(|l| !l.is_empty());
    if label.as_ref().is_some_and(|l| l.len() > 11) {
        let pos = h.value("label").map_or(&h.pos, |v| &v.pos);
        return Err(pos.error(format!(
            "image {title}: vfat volume name cannot be longer than 11 characters"
        )));
    }
    Ok(label)
}

impl Ctx<'_> {
    fn vfat(
        &mut self,
        node: &Node,
        h: &Node,
        id: &str,
        size: u64,
        def: &mut PartitionDef,
        files: &mut Vec<FileRule>,
    ) -> Result<()> {
        let title = node.title();
        let args = self.mkdosfs_args(title, h)?;
        let pos = node.value("size").map_or(&node.pos, |v| &v.pos);
        let (kind, fat) = self.fat_format(title, pos, size, &args)?;
        def.fs = Some(kind);
        def.fat = (!fat.is_default()).then_some(fat);
        def.label = vfat_label(title, h, args.label)?;
        let before = files.len();
        self.vfat_files(title, h, id, files)?;
        if files.len() == before {
            let img = Image {
                node,
                kind: Kind::Vfat,
                handler: h,
            };
            self.mountpath_rule(&img, id, files)?;
        }
        Ok(())
    }

    /// The FAT type and options for a `size`-byte volume: `-F` if given, else by size as
    /// mkdosfs picks; refused when this size cannot hold it.
    fn fat_format(
        &mut self,
        title: &str,
        pos: &Pos,
        size: u64,
        args: &MkdosfsArgs,
    ) -> Result<(FsKind, crate::format::FatOptions)> {
        let kind = match args.bits {
            Some(32) => FsKind::Fat32,
            Some(16) => FsKind::Fat16,
            Some(12) => FsKind::Fat12,
            _ if size >= crate::format::fat::FAT32_FROM => FsKind::Fat32,
            _ => FsKind::Fat,
        };
        let mut fat = args.opts;
        if kind != FsKind::Fat32 {
            let want = crate::format::FatOptions {
                bits: args.bits,
                ..fat
            };
            if let Err(m) = crate::format::fat::SmallGeometry::choose(size, &want) {
                return Err(pos.error(format!(
                    "image {title}: mkdosfs cannot make this volume of {} ({}): {m}",
                    human(size),
                    crate::units::bytes(size)
                )));
            }
            return Ok((kind, fat));
        }
        if crate::format::fat::Geometry::for_size(size).is_none() {
            return Err(pos.error(format!(
                "image {title}: {} ({}) is too small for FAT32 (skiff-flash writes FAT32 \
                 from 33 MiB); leave out `-F 32` to get FAT12/16 as mkdosfs chooses",
                human(size),
                crate::units::bytes(size)
            )));
        }
        if fat.cluster_sectors.is_some() || fat.sector_size.is_some() {
            self.warnings.push(format!(
                "image {title}: mkdosfs -s/-S are ignored for FAT32 (the cluster size \
                 follows the volume size)"
            ));
            fat.cluster_sectors = None;
            fat.sector_size = None;
        }
        Ok((kind, fat))
    }

    /// The rules for the image's `file` sections and `files` list.
    fn vfat_files(
        &mut self,
        title: &str,
        h: &Node,
        id: &str,
        files: &mut Vec<FileRule>,
    ) -> Result<()> {
        for f in h.sections("file") {
            let (src, pos) = f.str_at("image").ok_or_else(|| {
                f.pos
                    .error(format!("image {title}: file {} has no `image`", f.title()))
            })?;
            let from = self.vfat_source(src, pos, title)?;
            let dest = f.title().trim_start_matches('/');
            files.push(rule(files.len(), from, format!("{id}:/{dest}")));
        }
        let list_pos = h.value("files").map(|v| v.pos.clone());
        for src in h.list("files") {
            let pos = list_pos.clone().unwrap_or_else(|| h.pos.clone());
            let from = self.vfat_source(src, &pos, title)?;
            let to = match self.opts.images.join(&from).is_dir() {
                true => format!("{id}:/{}/", base_name(&from)),
                false => format!("{id}:/"),
            };
            files.push(rule(files.len(), from, to));
        }
        Ok(())
    }

    /// A file placed in a vfat image: an input file or a `file` image.
    fn vfat_source(&self, name: &str, pos: &Pos, vfat: &str) -> Result<String> {
        let file = match self.find(name) {
            None => name.to_string(),
            Some(img) if img.kind == Kind::File => {
                img.handler.str("name").unwrap_or(name).to_string()
            }
            Some(_) => {
                return Err(pos.error(format!(
                    "image {vfat}: image {name} cannot be placed inside a FAT filesystem"
                )));
            }
        };
        if std::fs::metadata(self.opts.images.join(&file)).is_err() {
            return Err(pos.error(format!(
                "image {vfat}: input file `{file}` not found (looked in {})",
                self.opts.images.join(&file).display()
            )));
        }
        Ok(file)
    }

    /// The mkdosfs arguments in `extraargs` that shape the volume: `-F`, `-s`, `-S`, `-n`,
    /// `-i`; others are ignored with a warning.
    fn mkdosfs_args(&mut self, title: &str, h: &Node) -> Result<MkdosfsArgs> {
        let mut out = MkdosfsArgs::default();
        let Some((args, pos)) = h.str_at("extraargs") else {
            return Ok(out);
        };
        let words = shell_words(args);
        let mut ignored = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i].as_str();
            let takes = ["-F", "-s", "-S", "-n", "-i"];
            let (flag, value, used) = match takes.iter().find(|f| w.starts_with(**f)) {
                Some(f) if w.len() > 2 => (*f, Some(w[2..].to_string()), 1),
                Some(f) => (*f, words.get(i + 1).cloned(), 2),
                None => (w, None, 1),
            };
            let bad = |what: &str| {
                pos.error(format!(
                    "image {title}: mkdosfs `{flag} {}`: {what}",
                    value.as_deref().unwrap_or("")
                ))
            };
            let num = |v: &Option<String>| -> Option<u64> {
                let v = v.as_deref()?;
                match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => v.parse().ok(),
                }
            };
            match flag {
                "-F" => match num(&value) {
                    Some(b @ (12 | 16 | 32)) => out.bits = Some(b as u8),
                    _ => return Err(bad("the FAT size is 12, 16 or 32")),
                },
                "-s" => match num(&value) {
                    Some(s) if s.is_power_of_two() && s <= 128 => {
                        out.opts.cluster_sectors = Some(s as u8)
                    }
                    _ => return Err(bad("sectors per cluster is a power of two up to 128")),
                },
                "-S" => match num(&value) {
                    Some(s) if s.is_power_of_two() && (512..=32768).contains(&s) => {
                        out.opts.sector_size = Some(s as u16)
                    }
                    _ => return Err(bad("the sector size is a power of two, 512 … 32768")),
                },
                "-n" => match &value {
                    Some(l) => out.label = Some(l.clone()),
                    None => return Err(bad("no volume name")),
                },
                "-i" => match value
                    .as_deref()
                    .and_then(|v| u32::from_str_radix(v, 16).ok())
                {
                    Some(v) => out.opts.volume_id = Some(v),
                    None => return Err(bad("the volume id is up to 8 hex digits")),
                },
                _ => ignored.push(flag.to_string()),
            }
            i += used;
        }
        if !ignored.is_empty() {
            self.warnings.push(format!(
                "image {title}: mkdosfs arguments `{}` are ignored",
                ignored.join(" ")
            ));
        }
        Ok(out)
    }

    fn ext(
        &mut self,
        node: &Node,
        h: &Node,
        version: u8,
        id: &str,
        def: &mut PartitionDef,
        files: &mut Vec<FileRule>,
    ) -> Result<()> {
        let title = node.title();
        if version != 4 {
            return Err(h.pos.error(format!(
                "image {title}: ext{version} filesystems are not written (skiff-flash writes \
                 ext4; use a prebuilt rootfs.ext{version} file instead)"
            )));
        }
        let ignored: Vec<&str> = [
            "features",
            "extraargs",
            "fs-timestamp",
            "usage-type",
            "mke2fs-conf",
            "mke2fs_conf",
        ]
        .into_iter()
        .filter(|k| h.str(k).is_some_and(|v| !v.is_empty()))
        .collect();
        if !ignored.is_empty() {
            self.warnings.push(format!(
                "image {title}: ext4 options {} are ignored (the ext4 writer decides features)",
                ignored.join(", ")
            ));
        }
        if h.str("root-owner").is_some_and(|o| o != "0:0") {
            self.warnings.push(format!(
                "image {title}: root-owner is ignored (everything is owned by root)"
            ));
        }
        def.fs = Some(FsKind::Ext4);
        def.label = h.str("label").filter(|l| !l.is_empty()).map(str::to_string);
        let img = Image {
            node,
            kind: Kind::Ext(version),
            handler: h,
        };
        self.mountpath_rule(&img, id, files)
    }
}

/// What `extraargs` asks mkdosfs for.
#[derive(Default)]
struct MkdosfsArgs {
    bits: Option<u8>,
    opts: crate::format::FatOptions,
    label: Option<String>,
}

/// Splits an argument string as a shell would for plain words and quotes.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut quote = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => out.extend(cur.take()),
            (None, c) => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur);
    out
}

fn base_name(p: &str) -> String {
    Path::new(p.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn rule(n: usize, from: String, to: String) -> FileRule {
    FileRule {
        name: format!("genimage-{}", n + 1),
        to: Some(to),
        from: vec![from],
        required: Some(true),
        verbatim: true,
        ..FileRule::default()
    }
}

#[cfg(test)]
mod tests {
    use super::outside_holes;

    #[test]
    fn raw_pieces_skip_holes() {
        assert_eq!(outside_holes(1000, &[]), vec![(0, 1000)]);
        assert_eq!(
            outside_holes(1000, &[(440, 512)]),
            vec![(0, 440), (512, 1000)]
        );
        assert_eq!(outside_holes(512, &[(440, 512)]), vec![(0, 440)]);
        assert_eq!(
            outside_holes(100, &[(50, 60), (10, 20)]),
            vec![(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(outside_holes(100, &[(0, 200)]), Vec::<(u64, u64)>::new());
    }
}
