//! The plan: every byte range and identifier decided before anything is written. Made from a
//! resolved board and the images directory by reading metadata only; printed by
//! `skiff-flash plan`, executed by `compose`.

pub mod artifacts;
pub mod custom;
pub mod layout;
pub mod tree;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};

use self::layout::{Geometry, PlaceError, Request, SizeRule};
use crate::define::board::{Board, FsKind, SizeSpec, TableKind};
use crate::error::{Error, Result};
use crate::format::bootcfg::template::{Vars, release_version};
use crate::format::table::{self, Guid, SECTOR, TableEntry, gpt};
use crate::format::{self, FsSpec, Measure};
use crate::plan::tree::Tree;
use crate::units::{Headroom, bytes};

/// What a plan is made from besides the board.
#[derive(Debug, Clone)]
pub struct Options {
    /// Buildroot's images directory.
    pub images: PathBuf,
    /// Total disk size; `None` for the smallest the layout allows.
    pub size: Option<u64>,
    /// Every timestamp written (`SOURCE_DATE_EPOCH`).
    pub epoch: i64,
    /// Identifiers are derived from this (default: the board name).
    pub seed: Option<String>,
    /// Identifiers found on a card, used instead of derived ones (upgrades: configs must
    /// name the partitions the card has).
    pub ids: Option<Ids>,
    /// SkiffOS config directories whose `resources/` supply boot configs (see
    /// [`crate::define::skiffos`]); empty outside SkiffOS.
    pub configs: Vec<PathBuf>,
    /// What is added to the persist partition (hostname, SSH keys, Wi-Fi, files).
    pub custom: Option<custom::Custom>,
}

/// A complete plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub board: String,
    pub layout: String,
    pub epoch: i64,
    pub disk_size: u64,
    pub sector_size: u64,
    pub table: Table,
    pub partitions: Vec<Partition>,
    /// The images directory the plan was made from.
    #[serde(skip)]
    pub images: PathBuf,
    /// Bootloader blobs written outside the partitions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub raw: Vec<RawWrite>,
    /// What the board's definition asks for that is not done exactly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What was added to the persist partition beyond the build (no passphrase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom: Option<custom::Record>,
}

/// A byte range copied from a file to a fixed disk offset.
#[derive(Debug, Clone, Serialize)]
pub struct RawWrite {
    pub name: String,
    pub source: PathBuf,
    /// Byte offset into the source.
    pub skip: u64,
    pub length: u64,
    /// Disk byte offset.
    pub offset: u64,
}

/// The partition table and its identifiers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Table {
    Gpt {
        disk_guid: Guid,
        array_lba: u64,
        /// The header's first usable LBA when not right after the entry array.
        #[serde(skip_serializing_if = "Option::is_none")]
        first_lba: Option<u64>,
        /// No backup GPT is written.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_backup: bool,
        /// Sector 0 is a hybrid MBR (partitions with an `mbr_type`, then 0xEE).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hybrid: bool,
        /// The disk signature in sector 0's MBR, when not 0.
        #[serde(skip_serializing_if = "Option::is_none")]
        mbr_id: Option<DiskId>,
    },
    Mbr {
        disk_id: DiskId,
    },
}

/// An MBR disk signature (sector 0, bytes 440..444; the first half of MBR PARTUUIDs). Shown
/// and serialized as eight lowercase hex digits, as `plan --json` and manifests give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskId(pub u32);

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl Serialize for DiskId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DiskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 16)
            .map(DiskId)
            .map_err(|_| serde::de::Error::custom(format!("not a disk id: {s}")))
    }
}

/// One partition, placed.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub number: u32,
    pub id: String,
    pub start: u64,
    pub size: u64,
    /// GPT partition name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpt_type: Option<Guid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mbr_type: Option<String>,
    /// The kernel's PARTUUID: the GPT partition GUID, or `DISKID-NN` on MBR.
    pub partuuid: String,
    pub bootable: bool,
    /// Takes the rest of the disk (its size depends on the card; user data lives here).
    #[serde(default)]
    pub grows: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<Filesystem>,
    /// A prebuilt image copied in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Prebuilt>,
    /// MBR logical partition: byte offset of its extended boot record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebr: Option<u64>,
}

/// A file from the images directory copied into a partition (all-zero blocks skipped).
#[derive(Debug, Clone, Serialize)]
pub struct Prebuilt {
    pub source: PathBuf,
    pub size: u64,
}

/// A filesystem to create inside a partition, with all it will hold.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    pub kind: FsKind,
    /// FAT options asked for (cluster and sector size, volume id).
    #[serde(skip_serializing_if = "crate::format::FatOptions::is_default")]
    pub fat: crate::format::FatOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// ext4 UUID, or FAT volume id as `XXXX-XXXX`.
    pub uuid: String,
    #[serde(skip)]
    pub uuid_bytes: [u8; 16],
    /// Bytes the filesystem spans from the partition's start.
    pub size: u64,
    /// The smallest size the content fits in.
    pub min_size: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
    pub entries: Tree,
}

impl Plan {
    /// The spec a filesystem writer needs for partition `p`.
    pub fn fs_spec<'a>(&'a self, p: &'a Partition) -> Option<(FsKind, FsSpec<'a>)> {
        let fs = p.fs.as_ref()?;
        Some((
            fs.kind,
            FsSpec {
                label: fs.label.as_deref(),
                uuid: fs.uuid_bytes,
                epoch: self.epoch,
                tree: &fs.entries,
                offset: p.start,
                part: &p.id,
                fat: fs.fat,
                ahead: None,
            },
        ))
    }

    /// The partition table entries.
    pub fn table_entries(&self) -> Vec<TableEntry> {
        self.partitions
            .iter()
            .zip(1..)
            .map(|(p, number)| TableEntry {
                number,
                start: p.start,
                size: p.size,
                gpt_type: p.gpt_type,
                mbr_type: p.mbr_type.as_deref().and_then(table::mbr_type),
                guid: Guid::parse(&p.partuuid).unwrap_or(Guid([0; 16])),
                name: p.name.clone().unwrap_or_default(),
                bootable: p.bootable,
            })
            .collect()
    }
}

/// A filesystem measured before placement.
struct Measured {
    kind: FsKind,
    tree: Tree,
    measure: Box<dyn Measure>,
}

/// What a partition holds, known before placement.
enum Content {
    Empty,
    /// A filesystem, spanning `size` bytes when it does not fill the partition.
    Fs(Measured, Option<u64>),
    Image(Prebuilt),
}

impl Content {
    /// The least the partition needs.
    fn min(&self) -> u64 {
        match self {
            Content::Empty => 0,
            Content::Fs(m, size) => size.unwrap_or_else(|| m.measure.min_size()),
            Content::Image(p) => p.size,
        }
    }

    /// Whether the content fits a partition of `size` bytes; `Err` carries what it needs.
    fn fits(&self, size: u64) -> std::result::Result<(), u64> {
        match self {
            Content::Empty => Ok(()),
            Content::Fs(_, Some(fs)) if *fs > size => Err(*fs),
            Content::Fs(m, fs) if !m.measure.fits(fs.unwrap_or(size)) => Err(m.measure.min_size()),
            Content::Fs(..) => Ok(()),
            Content::Image(p) if p.size > size => Err(p.size),
            Content::Image(_) => Ok(()),
        }
    }
}

/// Checks a candidate partition size; `Err` carries the bytes needed.
type Fits<'a> = Box<dyn Fn(u64) -> std::result::Result<(), u64> + 'a>;

/// 16 bytes derived from the seed and what they identify.
fn derive(seed: &str, what: &str) -> [u8; 16] {
    let h = Sha256::digest(format!("skiff-flash\0{seed}\0{what}").as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

/// Identifiers of the disk, its partitions and filesystems: derived from the seed (or read
/// from a card), decided before anything else so configs can name them.
#[derive(Debug, Clone)]
pub struct Ids {
    pub table: Table,
    /// Per layout partition: the kernel's PARTUUID.
    pub partuuid: Vec<String>,
    /// Per layout partition: ext4 UUID, or FAT volume id in the first 4 bytes.
    pub fs_uuid: Vec<[u8; 16]>,
}

impl Ids {
    fn derive(board: &Board, seed: &str) -> Ids {
        let layout = &board.layout;
        let derived =
            u32::from_le_bytes(derive(seed, "disk-id")[..4].try_into().unwrap_or_default());
        let disk_id = layout.disk_signature.unwrap_or(derived);
        let table = match layout.table {
            TableKind::Gpt => Table::Gpt {
                disk_guid: layout
                    .disk_guid
                    .unwrap_or_else(|| Guid::from_hash(derive(seed, "disk"))),
                array_lba: layout.gpt_array.map_or(2, |a| a.0 / SECTOR),
                first_lba: layout.gpt_first_usable.map(|s| s.0 / SECTOR),
                no_backup: layout.gpt_no_backup,
                hybrid: layout.hybrid_mbr,
                mbr_id: layout.disk_signature.filter(|v| *v != 0).map(DiskId),
            },
            TableKind::Mbr => Table::Mbr {
                disk_id: DiskId(disk_id),
            },
        };
        let partuuid = layout
            .partitions
            .iter()
            .zip(numbers(layout))
            .map(|(p, n)| match layout.table {
                TableKind::Gpt => p
                    .partuuid
                    .unwrap_or_else(|| Guid::from_hash(derive(seed, &format!("part/{}", p.id))))
                    .to_string()
                    .to_lowercase(),
                TableKind::Mbr => format!("{disk_id:08x}-{n:02x}"),
            })
            .collect();
        let fs_uuid = layout
            .partitions
            .iter()
            .map(|p| {
                let mut id = Guid::from_hash(derive(seed, &format!("fs/{}", p.id))).0;
                if let Some(v) = p.fat.and_then(|f| f.volume_id) {
                    id[..4].copy_from_slice(&v.to_le_bytes());
                }
                id
            })
            .collect();
        Ids {
            table,
            partuuid,
            fs_uuid,
        }
    }
}

/// Partition numbers as the kernel gives them: primary ones from 1, logical ones from 5.
fn numbers(layout: &crate::define::board::Layout) -> Vec<u32> {
    let (mut primary, mut logical) = (0, 4);
    layout
        .partitions
        .iter()
        .map(|p| {
            let n = if p.logical {
                &mut logical
            } else {
                &mut primary
            };
            *n += 1;
            *n
        })
        .collect()
}

/// The FAT type a `fat` filesystem of `size` bytes gets (others stay as they are).
fn resolved_kind(kind: FsKind, fat: &crate::format::FatOptions, size: u64) -> FsKind {
    if kind != FsKind::Fat {
        return kind;
    }
    match crate::format::fat::resolve_bits(None, fat, size) {
        12 => FsKind::Fat12,
        16 => FsKind::Fat16,
        _ => FsKind::Fat32,
    }
}

/// A filesystem identifier as configs name it (`fsuuid:` placeholders).
pub fn fs_uuid_string(kind: FsKind, uuid: &[u8; 16]) -> String {
    match kind {
        FsKind::Fat32 | FsKind::Fat16 | FsKind::Fat12 | FsKind::Fat => format!(
            "{:02X}{:02X}-{:02X}{:02X}",
            uuid[3], uuid[2], uuid[1], uuid[0]
        ),
        FsKind::Ext4 => Guid(*uuid).to_string().to_lowercase(),
    }
}

/// Placeholder values for configs and paths.
fn vars(board: &Board, ids: &Ids, images: &std::path::Path) -> Vars {
    let mut v = Vars::default();
    for (i, p) in board.layout.partitions.iter().enumerate() {
        v.set(format!("partuuid:{}", p.id), ids.partuuid[i].clone());
        if let Some(kind) = p.fs {
            v.set(
                format!("fsuuid:{}", p.id),
                fs_uuid_string(kind, &ids.fs_uuid[i]),
            );
        }
        if let Some(l) = &p.label {
            v.set(format!("label:{}", p.id), l.clone());
        }
    }
    if let Ok(text) = crate::io::read_small_text(&images.join("skiff-release"), "release file")
        && let Some(version) = release_version(&text)
    {
        v.set("version", version);
    }
    v.extend_board(&board.vars);
    v
}

/// The largest disk, offset or size a plan accepts (64 PiB): far beyond any card or disk,
/// and small enough that sums of a few such values never overflow 64 bits.
pub const MAX_BYTES: u64 = 1 << 56;

/// Refuses any offset or size of the board, its layout or the options beyond `MAX_BYTES`,
/// naming the field.
fn check_bounds(board: &Board, opts: &Options) -> Result<()> {
    let layout = &board.layout;
    let too_big = |what: String, v: u64| -> Result<()> {
        if v <= MAX_BYTES {
            return Ok(());
        }
        Err(Error::board(
            &board.name,
            format!(
                "{what} = {} is beyond the largest supported disk ({} bytes)",
                v,
                bytes(MAX_BYTES)
            ),
        ))
    };
    if let Some(s) = opts.size
        && s > MAX_BYTES
    {
        return Err(Error::Usage(format!(
            "--size {s} is beyond the largest supported disk ({} bytes)",
            bytes(MAX_BYTES)
        )));
    }
    if layout.table == TableKind::Gpt && layout.partitions.len() as u64 > gpt::ENTRIES {
        return Err(Error::board(
            &board.name,
            format!(
                "layout `{}` has {} partitions; a GPT holds at most {}",
                layout.name,
                layout.partitions.len(),
                gpt::ENTRIES
            ),
        ));
    }
    let l = |f: &str| format!("layout `{}`: `{f}`", layout.name);
    too_big(l("align"), layout.align.0)?;
    for (f, v) in [
        ("start", layout.start),
        ("size", layout.size),
        ("gpt_array", layout.gpt_array),
        ("gpt_first_usable", layout.gpt_first_usable),
    ] {
        too_big(l(f), v.map_or(0, |s| s.0))?;
    }
    for p in &layout.partitions {
        let f = |f: &str| format!("layout `{}` partition `{}`: `{f}`", layout.name, p.id);
        if let SizeSpec::Fixed(n) = p.size {
            too_big(f("size"), n)?;
        }
        if let Some(Headroom::Bytes(n)) = p.headroom {
            too_big(f("headroom"), n)?;
        }
        for (name, v) in [("min", p.min), ("offset", p.offset), ("fs_size", p.fs_size)] {
            too_big(f(name), v.map_or(0, |s| s.0))?;
        }
    }
    for r in &board.raw {
        for (name, v) in [("offset", r.offset), ("skip", r.skip), ("length", r.length)] {
            too_big(
                format!("raw write `{}`: `{name}`", r.name),
                v.map_or(0, |s| s.0),
            )?;
        }
    }
    Ok(())
}

/// Resolves the board's raw writes against the images directory.
fn raw_writes(board: &Board, images: &std::path::Path) -> Result<Vec<RawWrite>> {
    let mut out = Vec::new();
    for r in &board.raw {
        let found = r.from.iter().map(|f| images.join(f)).find_map(|p| {
            std::fs::metadata(&p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (p, m.len()))
        });
        let Some((path, len)) = found else {
            if r.required.unwrap_or(true) {
                return Err(Error::MissingArtifact {
                    board: board.name.clone(),
                    artifact: r.from.join("` or `"),
                    looked_in: r.from.iter().map(|f| images.join(f)).collect(),
                });
            }
            continue;
        };
        let skip = r.skip.map_or(0, |s| s.0);
        let length = match r.length {
            Some(l) => l.0,
            None => len.saturating_sub(skip),
        };
        if skip.checked_add(length).is_none_or(|end| end > len) || length == 0 {
            return Err(Error::BadArtifact {
                path,
                message: format!(
                    "raw write `{}` takes bytes {}..{} but the file has {}",
                    r.name,
                    bytes(skip),
                    bytes(skip.saturating_add(length)),
                    bytes(len)
                ),
            });
        }
        out.push(RawWrite {
            name: r.name.clone(),
            source: path,
            skip,
            length,
            offset: r.offset.map_or(0, |o| o.0),
        });
    }
    Ok(out)
}

/// Refuses raw writes that overlap the partition table, a partition or each other, or that
/// leave the disk. Bytes 0..440 of sector 0 (boot code) may be written on both table kinds.
fn check_raw(board: &Board, plan: &Plan) -> Result<()> {
    let mut taken = table_areas(plan);
    for p in &plan.partitions {
        let what = format!("partition {}", p.id);
        if let Some(m) = first_overlap(&taken, &what, p.start, p.size) {
            return Err(Error::board(&board.name, m));
        }
    }
    for p in &plan.partitions {
        taken.push(Taken::new(format!("partition {}", p.id), p.start, p.size));
    }
    for r in &plan.raw {
        check_raw_write(board, plan, r, &taken)?;
        let what = format!("raw write `{}`", r.name);
        taken.push(Taken::new(what, r.offset, r.length));
    }
    Ok(())
}

/// A byte range of the disk already spoken for, named for errors.
struct Taken {
    what: String,
    offset: u64,
    len: u64,
}

impl Taken {
    fn new(what: String, offset: u64, len: u64) -> Taken {
        Taken { what, offset, len }
    }

    fn overlaps(&self, offset: u64, len: u64) -> bool {
        layout::overlaps((offset, len), (self.offset, self.len))
    }
}

/// The partition table's own bytes, and the extended boot records of logical partitions.
fn table_areas(plan: &Plan) -> Vec<Taken> {
    let mut taken = match &plan.table {
        Table::Mbr { .. } => vec![Taken::new("the MBR partition table".into(), 440, 72)],
        Table::Gpt { array_lba, .. } => vec![
            Taken::new("the protective MBR and GPT header".into(), 440, 1024 - 440),
            Taken::new(
                "the GPT entry array".into(),
                array_lba * SECTOR,
                gpt::ARRAY_SECTORS * SECTOR,
            ),
            Taken::new(
                "the backup GPT".into(),
                plan.disk_size - gpt::TAIL,
                gpt::TAIL,
            ),
        ],
    };
    taken.extend(plan.partitions.iter().filter_map(|p| {
        let what = format!("the boot record of {}", p.id);
        Some(Taken::new(what, p.ebr?, SECTOR))
    }));
    taken
}

/// Raw write `r` stays on the disk and off everything `taken`.
fn check_raw_write(board: &Board, plan: &Plan, r: &RawWrite, taken: &[Taken]) -> Result<()> {
    if r.offset
        .checked_add(r.length)
        .is_none_or(|end| end > plan.disk_size)
    {
        return Err(Error::board(
            &board.name,
            format!(
                "raw write `{}` {} leaves the {}-byte disk",
                r.name,
                span(r.offset, r.length),
                bytes(plan.disk_size)
            ),
        ));
    }
    let what = format!("raw write `{}`", r.name);
    match first_overlap(taken, &what, r.offset, r.length) {
        Some(m) => Err(Error::board(&board.name, m)),
        None => Ok(()),
    }
}

/// The first of `taken` that `[offset, offset+len)`, named `what`, overlaps, as a refusal.
fn first_overlap(taken: &[Taken], what: &str, offset: u64, len: u64) -> Option<String> {
    let t = taken.iter().find(|t| t.overlaps(offset, len))?;
    Some(format!(
        "{what} {} overlaps {} {}",
        span(offset, len),
        t.what,
        span(t.offset, t.len)
    ))
}

/// `[offset, end)` for messages; an end past 2^64 is shown as such.
fn span(o: u64, l: u64) -> String {
    format!(
        "[{}, {})",
        bytes(o),
        o.checked_add(l).map_or_else(|| "2^64+".to_string(), bytes)
    )
}

/// A requested disk size must be whole 512-byte sectors (partition tables count in them).
pub fn check_size(size: u64) -> Result<()> {
    if !size.is_multiple_of(512) {
        let up = (size / 512 + 1).checked_mul(512);
        return Err(Error::Usage(format!(
            "--size {size} bytes is not a multiple of 512 (disks are counted in 512-byte sectors){}",
            up.map(|u| format!("; try {u}")).unwrap_or_default()
        )));
    }
    Ok(())
}

/// Makes the plan for `board` from the images directory.
pub fn make(board: &Board, opts: &Options) -> Result<Plan> {
    if let Some(size) = opts.size {
        check_size(size)?;
    }
    // A vendor partition list read from the images directory replaces the layout's own.
    let expanded = crate::define::l4t::expand(board, &opts.images)?;
    let board = expanded.as_ref().unwrap_or(board);
    let layout = &board.layout;
    let ids = match &opts.ids {
        Some(ids) => ids.clone(),
        None => Ids::derive(board, &seed(board, opts)),
    };
    check_bounds(board, opts)?;
    let vars = vars(board, &ids, &opts.images);
    let ctx = artifacts::Context {
        images: &opts.images,
        vars: &vars,
        epoch: opts.epoch,
        configs: &opts.configs,
    };
    let mut trees = artifacts::collect(board, &ctx)?;
    if let Some(c) = &opts.custom {
        customise(board, c, &mut trees)?;
    }
    let raw = raw_writes(board, &opts.images)?;
    let pending = layout
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| content(board, p, ids.fs_uuid[i], opts, &mut trees))
        .collect::<Result<Vec<_>>>()?;
    let (placed, disk_size) = place(board, &ids, &pending, opts)?;
    check_disk_size(board, disk_size)?;
    let partitions = partitions(board, &ids, pending, placed)?;
    let plan = Plan {
        board: board.name.clone(),
        layout: layout.name.clone(),
        epoch: opts.epoch,
        disk_size,
        sector_size: SECTOR,
        table: ids.table,
        partitions,
        images: opts.images.clone(),
        raw,
        warnings: board.warnings.clone(),
        custom: opts.custom.as_ref().map(custom::Custom::record),
    };
    check_raw(board, &plan)?;
    Ok(plan)
}

/// Adds the customisation to the persist partition's tree: the board must have an ext4
/// `persist` (owners and modes must hold).
fn customise(board: &Board, c: &custom::Custom, trees: &mut artifacts::Trees) -> Result<()> {
    let persist = board
        .layout
        .partitions
        .iter()
        .find(|p| p.id == custom::PERSIST);
    match persist.and_then(|p| p.fs) {
        Some(FsKind::Ext4) => {}
        Some(_) => {
            return Err(Error::board(
                &board.name,
                "the persist partition is not ext4: hostname, keys, Wi-Fi and files need owners and modes",
            ));
        }
        None => {
            return Err(Error::board(
                &board.name,
                format!(
                    "layout `{}` has no persist filesystem to hold the hostname, keys, Wi-Fi or files",
                    board.layout.name
                ),
            ));
        }
    }
    // `collect` made a tree for every partition with a filesystem.
    let tree = trees
        .get_mut(custom::PERSIST)
        .ok_or_else(|| Error::Internal("the persist partition has no content tree".into()))?;
    c.apply(&board.name, tree)
}

/// What identifiers are derived from: `--seed`, else the board's seed, else its name.
fn seed(board: &Board, opts: &Options) -> String {
    opts.seed
        .clone()
        .or_else(|| board.seed.clone())
        .unwrap_or_else(|| board.name.clone())
}

/// A placed disk must stay within `MAX_BYTES`, and within what an MBR can address.
fn check_disk_size(board: &Board, disk_size: u64) -> Result<()> {
    if disk_size > MAX_BYTES {
        return Err(Error::board(
            &board.name,
            format!(
                "the layout needs a {} byte disk, beyond the largest supported ({} bytes)",
                bytes(disk_size),
                bytes(MAX_BYTES)
            ),
        ));
    }
    if board.layout.table == TableKind::Mbr && disk_size / SECTOR > u64::from(u32::MAX) {
        return Err(Error::board(
            &board.name,
            "an MBR cannot address a disk over 2 TiB",
        ));
    }
    Ok(())
}

/// The plan's partitions: each layout partition with its content, place and identifiers.
fn partitions(
    board: &Board,
    ids: &Ids,
    pending: Vec<Content>,
    placed: Vec<layout::Placed>,
) -> Result<Vec<Partition>> {
    let layout = &board.layout;
    let numbers = numbers(layout);
    let all = layout.partitions.iter().zip(pending).zip(placed);
    all.enumerate()
        .map(|(i, ((p, c), pl))| {
            let at = Slot {
                number: numbers[i],
                partuuid: ids.partuuid[i].clone(),
                fs_uuid: ids.fs_uuid[i],
                placed: pl,
            };
            partition(board, p, c, at)
        })
        .collect()
}

/// Measures what partition `p` will hold: its filesystem's tree, or its prebuilt image.
fn content(
    board: &Board,
    p: &crate::define::board::PartitionDef,
    uuid: [u8; 16],
    opts: &Options,
    trees: &mut artifacts::Trees,
) -> Result<Content> {
    if let Some(name) = &p.image {
        let source = opts.images.join(name);
        let size = match std::fs::metadata(&source) {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                return Err(Error::MissingArtifact {
                    board: board.name.clone(),
                    artifact: name.clone(),
                    looked_in: vec![source],
                });
            }
        };
        return Ok(Content::Image(Prebuilt { source, size }));
    }
    let Some(kind) = p.fs else {
        return Ok(Content::Empty);
    };
    let tree = trees.remove(&p.id).unwrap_or_default();
    let spec = FsSpec {
        label: p.label.as_deref(),
        uuid,
        epoch: opts.epoch,
        tree: &tree,
        offset: 0,
        part: &p.id,
        fat: p.fat.unwrap_or_default(),
        ahead: None,
    };
    let measure = format::writer(kind).measure(&spec)?;
    Ok(Content::Fs(
        Measured {
            kind,
            tree,
            measure,
        },
        p.fs_size.map(|s| s.0),
    ))
}

/// Places every partition: the layout's rules, the content's needs, the disk size.
fn place(
    board: &Board,
    ids: &Ids,
    pending: &[Content],
    opts: &Options,
) -> Result<(Vec<layout::Placed>, u64)> {
    let layout = &board.layout;
    let (first_start, tail) = match &ids.table {
        Table::Gpt { array_lba, .. } => (gpt::first_usable(*array_lba), gpt::TAIL),
        Table::Mbr { .. } => (SECTOR, 0),
    };
    let geo = Geometry {
        align: layout.align.0,
        first_start: layout
            .start
            .map_or(layout.align.0, |s| s.0)
            .max(first_start),
        tail,
    };
    let fits: Vec<Fits<'_>> = pending
        .iter()
        .map(|c| -> Fits<'_> { Box::new(move |s| c.fits(s)) })
        .collect();
    let reqs: Vec<Request<'_>> = layout
        .partitions
        .iter()
        .zip(pending)
        .zip(&fits)
        .map(|((p, c), fits)| Request {
            name: &p.id,
            rule: match p.size {
                SizeSpec::Fixed(n) => SizeRule::Fixed(n),
                SizeSpec::Fit => SizeRule::Fit {
                    headroom: p.headroom.unwrap_or(Headroom::Bytes(0)),
                    min: p.min.map_or(0, |m| m.0),
                },
                SizeSpec::Fill => SizeRule::Fill {
                    min: p.min.map_or(0, |m| m.0),
                },
            },
            content_min: c.min(),
            fits: fits.as_ref(),
            start: p.offset.map(|o| o.0),
            gap: if p.logical { layout.align.0 } else { 0 },
        })
        .collect();
    let disk = opts.size.or(layout.size.map(|s| s.0));
    layout::place(geo, &reqs, disk).map_err(|e| place_error(board, e))
}

fn place_error(board: &Board, e: PlaceError) -> Error {
    let layout = &board.layout;
    match e {
        PlaceError::DoesNotFit {
            partition,
            needs,
            has,
        } => Error::DoesNotFit {
            partition: format!("board {}: {partition}", board.name),
            needs,
            has,
        },
        PlaceError::DiskTooSmall { needs, has } => Error::TooSmall {
            what: format!("board {} (layout {})", board.name, layout.name),
            target: "the requested size".into(),
            needs,
            has,
        },
        PlaceError::TwoFills(a, b) => Error::board(
            &board.name,
            format!("layout {}: both `{a}` and `{b}` are `fill`", layout.name),
        ),
        PlaceError::Overlap { partition, other } => Error::board(
            &board.name,
            format!(
                "layout {}: partition `{partition}` overlaps `{other}`",
                layout.name
            ),
        ),
    }
}

/// Where a partition landed and what identifies it.
struct Slot {
    number: u32,
    partuuid: String,
    fs_uuid: [u8; 16],
    placed: layout::Placed,
}

/// The table's view of a partition: GPT type and name, or MBR type byte (both on a GPT with
/// a hybrid MBR).
type TableFields = (Option<Guid>, Option<String>, Option<String>);

fn table_fields(board: &Board, p: &crate::define::board::PartitionDef) -> Result<TableFields> {
    let layout = &board.layout;
    let mbr = |t: &str| {
        table::mbr_type(t)
            .map(|b| format!("0x{b:02x}"))
            .ok_or_else(|| {
                Error::board(
                    &board.name,
                    format!("partition {}: bad mbr_type `{t}`", p.id),
                )
            })
    };
    match layout.table {
        TableKind::Gpt => {
            let t = p.gpt_type.as_deref().unwrap_or_default();
            let g = table::gpt_type(t).ok_or_else(|| {
                Error::board(
                    &board.name,
                    format!("partition {}: unknown gpt_type `{t}`", p.id),
                )
            })?;
            let hybrid = match &p.mbr_type {
                Some(t) if layout.hybrid_mbr => Some(mbr(t)?),
                _ => None,
            };
            Ok((
                Some(g),
                hybrid,
                Some(p.gpt_name.clone().unwrap_or(p.id.clone())),
            ))
        }
        TableKind::Mbr => Ok((
            None,
            Some(mbr(p.mbr_type.as_deref().unwrap_or_default())?),
            None,
        )),
    }
}

fn partition(
    board: &Board,
    p: &crate::define::board::PartitionDef,
    content: Content,
    at: Slot,
) -> Result<Partition> {
    let (gpt_type, mbr_type, name) = table_fields(board, p)?;
    let pl = at.placed;
    let uuid = at.fs_uuid;
    let (fs, image) = match content {
        Content::Empty => (None, None),
        Content::Image(i) => (None, Some(i)),
        Content::Fs(m, fs_size) => {
            let size = fs_size.unwrap_or(pl.size);
            let fat = p.fat.unwrap_or_default();
            let kind = resolved_kind(m.kind, &fat, size);
            (
                Some(Filesystem {
                    kind,
                    fat,
                    label: p.label.clone(),
                    uuid: fs_uuid_string(kind, &uuid),
                    uuid_bytes: uuid,
                    size,
                    min_size: m.measure.min_size(),
                    content_bytes: m.tree.file_bytes(),
                    entries: m.tree,
                }),
                None,
            )
        }
    };
    Ok(Partition {
        number: at.number,
        id: p.id.clone(),
        start: pl.start,
        size: pl.size,
        name,
        gpt_type,
        mbr_type,
        partuuid: at.partuuid,
        bootable: p.bootable,
        grows: p.size == SizeSpec::Fill,
        fs,
        image,
        ebr: p.logical.then(|| pl.start - board.layout.align.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ids_serialize_as_eight_hex_digits() {
        let mbr = serde_json::to_value(Table::Mbr {
            disk_id: DiskId(0xab),
        })
        .unwrap();
        assert_eq!(
            mbr,
            serde_json::json!({"kind": "mbr", "disk_id": "000000ab"})
        );
        assert_eq!(DiskId(0xdeadbeef).to_string(), "deadbeef");
    }

    #[test]
    fn overlaps_name_both_ranges() {
        let taken = [Taken::new("the MBR partition table".into(), 440, 72)];
        assert_eq!(
            first_overlap(&taken, "raw write `spl`", 0, 4096).as_deref(),
            Some("raw write `spl` [0, 4,096) overlaps the MBR partition table [440, 512)")
        );
        assert_eq!(first_overlap(&taken, "raw write `code`", 0, 440), None);
    }
}
