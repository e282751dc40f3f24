//! Boards and layouts as data: loading `boards/VENDOR/MODEL.toml` with its inheritance chain
//! and the layout it names, merging the layers, and validating the result into a `Board`.
//!
//! Not for sizes or offsets (that is `layout`/`plan`) and not for reading the images
//! directory (that is `artifacts`).

mod catalog;

pub use catalog::{Catalog, Kind};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::table::Guid;
use crate::units::{Headroom, Size};

/// A board definition file as written: every field optional so a child overrides only what
/// it names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardFile {
    description: Option<String>,
    /// The board this one builds on (`pi/common`).
    inherit: Option<String>,
    /// A base for other boards, not buildable by itself.
    hidden: Option<bool>,
    layout: Option<String>,
    #[serde(default)]
    files: Vec<FileRule>,
    #[serde(default)]
    attrs: Vec<AttrRule>,
    #[serde(default)]
    raw: Vec<RawRule>,
    /// Placeholders usable in `text`, `to` and substituted files, e.g.
    /// `SKIFFOS_PARTUUID = "{partuuid:persist}"`.
    #[serde(default)]
    vars: std::collections::BTreeMap<String, String>,
}

/// A bootloader blob written raw at a byte offset of the disk, outside any partition.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Identifies the rule across layers.
    pub name: String,
    /// Paths relative to the images directory, tried in order.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub from: Vec<String>,
    /// Disk byte offset of the first byte written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<Size>,
    /// Byte offset into the source where the copy starts (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<Size>,
    /// Bytes to copy (default: the rest of the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<Size>,
    /// Fail when no source exists (default true: a board without its bootloader does not boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
}

/// What goes where: one rule of a board, merged by `name` across layers.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// Identifies the rule across layers.
    pub name: String,
    /// Destination as `PARTITION:/path`; a trailing `/` means "into this directory".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Paths relative to the images directory, tried in order; the first that exists is used.
    /// A `*`/`?` pattern takes every match; a directory contributes its contents.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub from: Vec<String>,
    /// Paths relative to a SkiffOS config's `resources/` directory (`rpi/config.txt`,
    /// `boot-scripts/boot.txt`), tried in order. When SkiffOS configs are given (inside a
    /// SkiffOS workspace, or `--skiff-conf`), the last config that has one of them supplies
    /// the content, before `from` and `text`, as SkiffOS's own scripts choose it.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub resource: Vec<String>,
    /// Content to write when none of `from` exists (bootloader configs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Takes `from` and `text` of another rule (a boot.scr compiled from the boot.txt rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
    /// Fail when nothing in `from` exists and there is no `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// A validity check run on the source before it is placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Replace `{partuuid:ID}`, `{fsuuid:ID}`, `{version}` and the board's `vars` in the
    /// content (always done for `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substitute: Option<bool>,
    /// Apply SkiffOS's silent-console edit when the images dir has `.disable-serial-console`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_console: Option<bool>,
    /// Compile the content into another format before placing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convert: Option<Convert>,
    /// Drops an inherited rule of the same name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    /// Copies the sources as they are, without the file-kind and format checks (genimage
    /// inputs, which genimage copies without looking at them).
    #[serde(skip)]
    pub verbatim: bool,
}

/// Conversions applied to a file's content.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Convert {
    /// A U-Boot script image (`boot.scr`), as `mkimage -A ARCH -T script -C none -n NAME`.
    UbootScript {
        arch: String,
        #[serde(default)]
        name: String,
    },
}

/// Source checks a board may ask for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Squashfs,
}

/// Owner and mode overrides for paths inside a filesystem.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttrRule {
    /// `PARTITION:/path`; applies to that entry (and with `recursive`, to all below it).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Octal permission bits as a string, e.g. "0700".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
}

/// Partition table kinds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// Filesystems we write.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Fat32,
    Fat16,
    Fat12,
    /// FAT12, FAT16 or FAT32 by size, as `mkfs.fat` chooses.
    Fat,
    Ext4,
}

impl FsKind {
    pub fn is_fat(self) -> bool {
        self != FsKind::Ext4
    }
}

/// A layout file: a partition scheme shared by boards.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    #[serde(skip_deserializing)]
    pub name: String,
    pub description: String,
    pub table: TableKind,
    /// Partition starts and sizes are multiples of this (default 1 MiB).
    #[serde(default = "default_align")]
    pub align: Size,
    /// Where the first partition may start (default: `align`).
    #[serde(default)]
    pub start: Option<Size>,
    /// Byte offset of the primary GPT entry array (default: LBA 2). Move it when a
    /// bootloader blob sits where the array would be (Allwinner's SPL at 8 KiB).
    #[serde(default)]
    pub gpt_array: Option<Size>,
    /// Disk size when the command line gives none (default: as small as the layout allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// GPT disk GUID (default: derived from the seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_guid: Option<Guid>,
    /// MBR disk signature, also written in a GPT's protective or hybrid MBR (default on MBR:
    /// derived from the seed; on GPT: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_signature: Option<u32>,
    /// Byte offset the GPT header gives as the first usable LBA (default: right after the
    /// entry array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt_first_usable: Option<Size>,
    /// Write no backup GPT at the end of the disk (its room is still kept).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpt_no_backup: bool,
    /// GPT only: sector 0 is a hybrid MBR listing the partitions that have an `mbr_type`
    /// (at most 3) and a 0xEE entry over the GPT, instead of the protective MBR.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hybrid_mbr: bool,
    /// The partitions come from NVIDIA L4T's signed `flash.xml` in the images directory
    /// (`crate::define::l4t`); `partition` then lists only the one its `APP` becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4t: Option<crate::define::l4t::Source>,
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionDef>,
}

fn default_align() -> Size {
    Size(1 << 20)
}

/// One partition of a layout.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionDef {
    /// How boards refer to it (`boot`, `rootfs`, `persist`).
    pub id: String,
    pub fs: Option<FsKind>,
    /// FAT only: cluster size, sector size and volume id instead of the ones chosen by size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fat: Option<crate::format::FatOptions>,
    /// Filesystem label.
    pub label: Option<String>,
    /// GPT partition name (defaults to `id`).
    pub gpt_name: Option<String>,
    /// GPT type: a GUID or a short name (`msftdata`, `linux`, `esp`).
    pub gpt_type: Option<String>,
    /// MBR type byte, e.g. "0x0c".
    pub mbr_type: Option<String>,
    #[serde(default)]
    pub bootable: bool,
    /// `"fit"`, `"fill"` or a fixed size.
    pub size: SizeSpec,
    /// With `fit`: room on top of the content ("64MiB" or "100%").
    pub headroom: Option<Headroom>,
    /// With `fit`/`fill`: the smallest the partition may be.
    pub min: Option<Size>,
    /// Byte offset of the first byte (default: after the previous partition, aligned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Size>,
    /// A prebuilt image in the images directory copied into the partition (instead of `fs`);
    /// with `size = "fit"` the partition is the file's size, aligned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of the filesystem when it is smaller than the partition (default: all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_size: Option<Size>,
    /// GPT partition GUID (default: derived from the seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<Guid>,
    /// MBR: a logical partition inside the extended partition, its boot record `align`
    /// bytes before its start. Logical partitions come after every primary one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logical: bool,
}

/// A partition's size rule as written.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SizeSpec {
    Fit,
    Fill,
    Fixed(u64),
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::units::SizeValue;
        match SizeValue::deserialize(d)? {
            SizeValue::Bytes(n) => Ok(SizeSpec::Fixed(n)),
            SizeValue::Text(s) if s == "fit" => Ok(SizeSpec::Fit),
            SizeValue::Text(s) if s == "fill" => Ok(SizeSpec::Fill),
            SizeValue::Text(s) => crate::units::parse_size(&s)
                .map(SizeSpec::Fixed)
                .map_err(|e| serde::de::Error::custom(format!("{e}, or \"fit\" or \"fill\""))),
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

/// A resolved, validated board.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// The inheritance chain, base first, ending with this board.
    pub layers: Vec<String>,
    pub layout: Layout,
    pub files: Vec<FileRule>,
    pub attrs: Vec<AttrRule>,
    pub raw: Vec<RawRule>,
    pub vars: std::collections::BTreeMap<String, String>,
    /// What the definition asks for that is not done exactly (ignored options, substitutes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Identifiers are derived from this when no seed is given (default: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

impl Board {
    /// Checks a board assembled outside the catalog (from a genimage config).
    pub fn validate(&self) -> Result<()> {
        validate(self)
    }

    /// What the images directory must hold for this board: the first name of every required
    /// file rule and raw write (globs excluded).
    pub fn required_artifacts(&self) -> Vec<String> {
        let files = self
            .files
            .iter()
            .filter(|r| r.required == Some(true) && r.text.is_none())
            .filter_map(|r| r.from.first());
        let raw = self
            .raw
            .iter()
            .filter(|r| r.required.unwrap_or(true))
            .filter_map(|r| r.from.first());
        files.chain(raw).cloned().collect()
    }
}

/// A line of `skiff-flash boards`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub description: String,
    pub layout: String,
}

impl Catalog {
    /// Loads `name` with its whole inheritance chain and its layout.
    pub fn board(&self, name: &str) -> Result<Board> {
        let Some(text) = self.read(Kind::Board, name)? else {
            return Err(self.unknown(name));
        };
        self.resolve(name, &text)
    }

    /// Loads a board from a file outside the board directories (its `inherit` still names
    /// boards in the catalog).
    pub fn board_file(&self, path: &std::path::Path) -> Result<Board> {
        let text = crate::io::read_small_text(path, "board file")?;
        let name = path.display().to_string();
        self.resolve(
            &name,
            &catalog::Text {
                shown_as: name.clone(),
                text,
            },
        )
    }

    fn resolve(&self, name: &str, first: &catalog::Text) -> Result<Board> {
        let mut chain: Vec<(String, BoardFile)> = Vec::new();
        let top: BoardFile = catalog::parse(first)?;
        let mut next = top.inherit.clone();
        chain.push((name.to_string(), top));
        while let Some(n) = next {
            if chain.iter().any(|(c, _)| *c == n) {
                return Err(Error::board(
                    name,
                    format!("inherits from itself via `{n}`"),
                ));
            }
            let Some(text) = self.read(Kind::Board, &n)? else {
                return Err(self.unknown(&n));
            };
            let file: BoardFile = catalog::parse(&text)?;
            next = file.inherit.clone();
            chain.push((n, file));
        }
        chain.reverse();
        let merged = merge(chain.iter().map(|(_, f)| f));
        if merged.hidden && chain.len() == 1 {
            return Err(Error::board(
                name,
                "is a base for other boards and cannot be used by itself",
            ));
        }
        let layout_name = merged
            .layout
            .ok_or_else(|| Error::board(name, "names no layout"))?;
        let layout = self.layout(&layout_name, name)?;
        let board = Board {
            name: name.to_string(),
            description: merged.description.unwrap_or_default(),
            layers: chain.into_iter().map(|(n, _)| n).collect(),
            layout,
            files: merged.files,
            attrs: merged.attrs,
            raw: merged.raw,
            vars: merged.vars,
            warnings: Vec::new(),
            seed: None,
        };
        validate(&board)?;
        Ok(board)
    }

    /// Loads a layout file by name.
    pub fn layout(&self, name: &str, board: &str) -> Result<Layout> {
        let text = self
            .read(Kind::Layout, name)?
            .ok_or_else(|| Error::board(board, format!("unknown layout `{name}`")))?;
        let mut layout: Layout = catalog::parse(&text)?;
        layout.name = name.to_string();
        Ok(layout)
    }

    /// Every buildable board with its description.
    pub fn summaries(&self) -> Result<Vec<Summary>> {
        let mut out = Vec::new();
        for name in self.names(Kind::Board) {
            let Some(text) = self.read(Kind::Board, &name)? else {
                continue;
            };
            let file: BoardFile = catalog::parse(&text)?;
            if file.hidden == Some(true) {
                continue;
            }
            let b = self.board(&name)?;
            out.push(Summary {
                name,
                description: b.description,
                layout: b.layout.name,
            });
        }
        Ok(out)
    }

    fn unknown(&self, name: &str) -> Error {
        let names = self.names(Kind::Board);
        Error::UnknownBoard {
            name: name.to_string(),
            suggestions: catalog::closest(name, &names),
        }
    }
}

struct Merged {
    description: Option<String>,
    hidden: bool,
    layout: Option<String>,
    files: Vec<FileRule>,
    attrs: Vec<AttrRule>,
    raw: Vec<RawRule>,
    vars: std::collections::BTreeMap<String, String>,
}

/// Later layers override earlier ones: scalars replace, file rules merge by name (a field a
/// child sets replaces the parent's), attrs accumulate. `hidden` is never inherited.
fn merge<'a>(layers: impl Iterator<Item = &'a BoardFile>) -> Merged {
    let mut m = Merged {
        description: None,
        hidden: false,
        layout: None,
        files: Vec::new(),
        attrs: Vec::new(),
        raw: Vec::new(),
        vars: Default::default(),
    };
    for f in layers {
        m.description = f.description.clone().or(m.description);
        m.hidden = f.hidden.unwrap_or(false);
        m.layout = f.layout.clone().or(m.layout);
        for rule in &f.files {
            match m.files.iter().position(|r| r.name == rule.name) {
                Some(i) if rule.remove => {
                    m.files.remove(i);
                }
                Some(i) => {
                    let base = &mut m.files[i];
                    base.to = rule.to.clone().or(base.to.take());
                    if !rule.from.is_empty() {
                        base.from = rule.from.clone();
                    }
                    if !rule.resource.is_empty() {
                        base.resource = rule.resource.clone();
                    }
                    base.text = rule.text.clone().or(base.text.take());
                    base.same_as = rule.same_as.clone().or(base.same_as.take());
                    base.required = rule.required.or(base.required);
                    base.check = rule.check.or(base.check);
                    base.substitute = rule.substitute.or(base.substitute);
                    base.silent_console = rule.silent_console.or(base.silent_console);
                    base.convert = rule.convert.clone().or(base.convert.take());
                }
                None if rule.remove => {}
                None => m.files.push(rule.clone()),
            }
        }
        m.attrs.extend(f.attrs.iter().cloned());
        for rule in &f.raw {
            match m.raw.iter().position(|r| r.name == rule.name) {
                Some(i) if rule.remove => {
                    m.raw.remove(i);
                }
                Some(i) => {
                    let base = &mut m.raw[i];
                    if !rule.from.is_empty() {
                        base.from = rule.from.clone();
                    }
                    base.offset = rule.offset.or(base.offset);
                    base.skip = rule.skip.or(base.skip);
                    base.length = rule.length.or(base.length);
                    base.required = rule.required.or(base.required);
                }
                None if rule.remove => {}
                None => m.raw.push(rule.clone()),
            }
        }
        m.vars
            .extend(f.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    m
}

/// Splits `PARTITION:/path` into the partition id and an absolute path.
pub fn split_dest(dest: &str) -> Option<(&str, &str)> {
    let (part, path) = dest.split_once(':')?;
    (!part.is_empty() && path.starts_with('/')).then_some((part, path))
}

/// Table-level rules: what an MBR holds (four entries, one of them possibly the extended
/// partition holding the logical ones), GPT-only options, hybrid MBRs, partition content.
fn validate_table(l: &Layout) -> std::result::Result<(), String> {
    let logical = l.partitions.iter().filter(|p| p.logical).count();
    let primary = l.partitions.len() - logical;
    if l.table == TableKind::Mbr && primary + usize::from(logical > 0) > 4 {
        return Err(format!(
            "an MBR holds at most 4 entries ({primary} primary partitions{}); mark later \
             partitions `logical`",
            if logical > 0 {
                " and the extended one"
            } else {
                ""
            }
        ));
    }
    if logical > 0 && l.table != TableKind::Mbr {
        return Err("logical partitions exist on MBR only".into());
    }
    if let Some(i) = l.partitions.iter().position(|p| p.logical)
        && l.partitions[i..].iter().any(|p| !p.logical)
    {
        return Err("logical partitions must come after every primary one".into());
    }
    let gpt_only = l.disk_guid.is_some() || l.gpt_first_usable.is_some() || l.gpt_no_backup;
    if (gpt_only || l.hybrid_mbr) && l.table != TableKind::Gpt {
        return Err(
            "disk_guid, gpt_first_usable, gpt_no_backup and hybrid_mbr are GPT options".into(),
        );
    }
    if l.hybrid_mbr && l.partitions.iter().filter(|p| p.mbr_type.is_some()).count() > 3 {
        return Err("a hybrid MBR lists at most 3 partitions (those with an mbr_type)".into());
    }
    if let Some(src) = &l.l4t {
        if l.table != TableKind::Gpt {
            return Err("an l4t layout is GPT".into());
        }
        if !l
            .partitions
            .iter()
            .any(|p| p.id == src.app && p.fs.is_some())
        {
            return Err(format!(
                "l4t.app `{}` names no partition with a filesystem",
                src.app
            ));
        }
    }
    for p in &l.partitions {
        if p.image.is_some() && p.fs.is_some() {
            return Err(format!("partition `{}` has both `image` and `fs`", p.id));
        }
        if p.partuuid.is_some() && l.table != TableKind::Gpt {
            return Err(format!("partition `{}`: partuuid is a GPT option", p.id));
        }
    }
    Ok(())
}

fn validate(b: &Board) -> Result<()> {
    let err = |m: String| Error::board(&b.name, m);
    let l = &b.layout;
    validate_layout(l).map_err(err)?;
    for r in &b.files {
        validate_file_rule(r, b).map_err(err)?;
    }
    for r in &b.raw {
        if r.from.is_empty() {
            return Err(err(format!("raw rule `{}` has no `from`", r.name)));
        }
        if r.offset.is_none() {
            return Err(err(format!("raw rule `{}` has no `offset`", r.name)));
        }
    }
    if let Some(Size(a)) = l.gpt_array
        && (l.table != TableKind::Gpt || a % 512 != 0 || a < 1024)
    {
        return Err(err(format!(
            "layout `{}`: gpt_array must be a sector-aligned offset ≥ 1024 on a GPT layout",
            l.name
        )));
    }
    for a in &b.attrs {
        validate_attrs(a, l).map_err(err)?;
    }
    Ok(())
}

/// The layout's own rules: partitions present, aligned, uniquely named, typed for the table.
fn validate_layout(l: &Layout) -> std::result::Result<(), String> {
    if l.partitions.is_empty() {
        return Err(format!("layout `{}` has no partitions", l.name));
    }
    if l.align.0 < 512 || !l.align.0.is_power_of_two() {
        return Err(format!(
            "layout `{}`: align must be a power of two ≥ 512",
            l.name
        ));
    }
    for (i, p) in l.partitions.iter().enumerate() {
        if l.partitions[..i].iter().any(|q| q.id == p.id) {
            return Err(format!(
                "layout `{}`: partition id `{}` used twice",
                l.name, p.id
            ));
        }
        let missing = match l.table {
            TableKind::Gpt if p.gpt_type.is_none() => "gpt_type",
            TableKind::Mbr if p.mbr_type.is_none() => "mbr_type",
            _ => continue,
        };
        return Err(format!(
            "layout `{}`: partition `{}` has no {missing}",
            l.name, p.id
        ));
    }
    validate_table(l).map_err(|m| format!("layout `{}`: {m}", l.name))
}

/// A file rule: a destination on a filesystem partition, and content from `from`, `text` or
/// another (plain) rule.
fn validate_file_rule(r: &FileRule, b: &Board) -> std::result::Result<(), String> {
    let Some(to) = &r.to else {
        return Err(format!("file rule `{}` has no `to`", r.name));
    };
    dest_exists(
        &b.layout,
        to,
        &format!("file rule `{}`: destination", r.name),
    )?;
    let Some(other) = &r.same_as else {
        if r.from.is_empty() && r.text.is_none() {
            return Err(format!(
                "file rule `{}` has neither `from` nor `text`",
                r.name
            ));
        }
        return Ok(());
    };
    match b.files.iter().find(|o| o.name == *other) {
        None => Err(format!(
            "file rule `{}`: same_as `{other}` names no rule",
            r.name
        )),
        Some(o) if o.same_as.is_some() => Err(format!(
            "file rule `{}`: `{other}` is itself a same_as rule",
            r.name
        )),
        Some(_) => Ok(()),
    }
}

fn validate_attrs(a: &AttrRule, l: &Layout) -> std::result::Result<(), String> {
    dest_exists(l, &a.path, "attrs path")?;
    if let Some(m) = &a.mode
        && u32::from_str_radix(m.trim_start_matches("0o"), 8).map_or(true, |v| v > 0o7777)
    {
        return Err(format!(
            "attrs `{}`: mode `{m}` is not octal permission bits",
            a.path
        ));
    }
    Ok(())
}

/// `dest` (PARTITION:/path, named `what` in errors) is on a partition of `l` with a filesystem.
fn dest_exists(l: &Layout, dest: &str, what: &str) -> std::result::Result<(), String> {
    let Some((part, _)) = split_dest(dest) else {
        return Err(format!("{what} `{dest}` is not PARTITION:/path"));
    };
    match l.partitions.iter().find(|p| p.id == part) {
        None => Err(format!(
            "{what} `{dest}`: layout `{}` has no partition `{part}`",
            l.name
        )),
        Some(p) if p.fs.is_none() => Err(format!(
            "{what} `{dest}`: partition `{part}` has no filesystem"
        )),
        Some(_) => Ok(()),
    }
}
