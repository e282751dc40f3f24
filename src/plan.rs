//! The plan: every byte range and identifier decided before anything is written. Made from a
//! resolved board and the images directory by reading metadata only; printed by
//! `skiff-flash plan`, executed by `compose`.

use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::artifacts;
use crate::board::{Board, FsKind, SizeSpec, TableKind};
use crate::error::{Error, Result};
use crate::fs::{self, FsSpec, Measure};
use crate::layout::{self, Geometry, PlaceError, Request, SizeRule};
use crate::table::{self, Guid, SECTOR, TableEntry, gpt};
use crate::tree::Tree;
use crate::units::Headroom;

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
}

/// The partition table and its identifiers.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Table {
    Gpt { disk_guid: Guid, array_lba: u64 },
    Mbr { disk_id: String },
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<Filesystem>,
}

/// A filesystem to create inside a partition, with all it will hold.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    pub kind: FsKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// ext4 UUID, or FAT volume id as `XXXX-XXXX`.
    pub uuid: String,
    #[serde(skip)]
    pub uuid_bytes: [u8; 16],
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
            },
        ))
    }

    /// The partition table entries.
    pub fn table_entries(&self) -> Vec<TableEntry> {
        self.partitions
            .iter()
            .map(|p| TableEntry {
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
    uuid: [u8; 16],
    measure: Box<dyn Measure>,
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

/// Makes the plan for `board` from the images directory.
pub fn make(board: &Board, opts: &Options) -> Result<Plan> {
    let seed = opts.seed.clone().unwrap_or_else(|| board.name.clone());
    let mut trees = artifacts::collect(board, &opts.images)?;
    let layout = &board.layout;

    let mut pending = Vec::new();
    for p in &layout.partitions {
        let fs = match p.fs {
            Some(kind) => {
                let tree = trees.remove(&p.id).unwrap_or_default();
                let uuid = derive(&seed, &format!("fs/{}", p.id));
                let spec = FsSpec {
                    label: p.label.as_deref(),
                    uuid,
                    epoch: opts.epoch,
                    tree: &tree,
                    offset: 0,
                    part: &p.id,
                };
                let measure = fs::writer(kind).measure(&spec)?;
                Some(Measured {
                    kind,
                    tree,
                    uuid,
                    measure,
                })
            }
            None => None,
        };
        pending.push(fs);
    }

    let (array_lba, first_start, tail) = match layout.table {
        TableKind::Gpt => (2, gpt::first_usable(2), gpt::TAIL),
        TableKind::Mbr => (0, SECTOR, 0),
    };
    let geo = Geometry {
        align: layout.align.0,
        first_start: layout
            .start
            .map_or(layout.align.0, |s| s.0)
            .max(first_start),
        tail,
    };
    let always = |_: u64| -> std::result::Result<(), u64> { Ok(()) };
    let fits: Vec<Fits<'_>> = pending
        .iter()
        .map(|pd| -> Fits<'_> {
            match pd {
                Some(m) => {
                    let min = m.measure.min_size();
                    Box::new(move |s| if m.measure.fits(s) { Ok(()) } else { Err(min) })
                }
                None => Box::new(always),
            }
        })
        .collect();
    let reqs: Vec<Request<'_>> = layout
        .partitions
        .iter()
        .zip(&pending)
        .zip(&fits)
        .map(|((p, pd), fits)| Request {
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
            content_min: pd.as_ref().map_or(0, |m| m.measure.min_size()),
            fits: fits.as_ref(),
        })
        .collect();
    let (placed, disk_size) = layout::place(geo, &reqs, opts.size).map_err(|e| match e {
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
    })?;
    drop(reqs);
    drop(fits);

    let disk_guid = Guid::from_hash(derive(&seed, "disk"));
    let disk_id = u32::from_le_bytes(derive(&seed, "disk-id")[..4].try_into().unwrap_or_default());
    let table = match layout.table {
        TableKind::Gpt => Table::Gpt {
            disk_guid,
            array_lba,
        },
        TableKind::Mbr => Table::Mbr {
            disk_id: format!("{disk_id:08x}"),
        },
    };
    if layout.table == TableKind::Mbr && disk_size / SECTOR > u64::from(u32::MAX) {
        return Err(Error::board(
            &board.name,
            "an MBR cannot address a disk over 2 TiB",
        ));
    }
    let mut partitions = Vec::new();
    for (i, ((p, pd), pl)) in layout
        .partitions
        .iter()
        .zip(pending)
        .zip(placed)
        .enumerate()
    {
        let number = i as u32 + 1;
        let (gpt_type, mbr_type, partuuid, name) = match layout.table {
            TableKind::Gpt => {
                let t = p.gpt_type.as_deref().unwrap_or_default();
                let g = table::gpt_type(t).ok_or_else(|| {
                    Error::board(
                        &board.name,
                        format!("partition {}: unknown gpt_type `{t}`", p.id),
                    )
                })?;
                let guid = Guid::from_hash(derive(&seed, &format!("part/{}", p.id)));
                (
                    Some(g),
                    None,
                    guid.to_string().to_lowercase(),
                    Some(p.gpt_name.clone().unwrap_or(p.id.clone())),
                )
            }
            TableKind::Mbr => {
                let t = p.mbr_type.as_deref().unwrap_or_default();
                let b = table::mbr_type(t).ok_or_else(|| {
                    Error::board(
                        &board.name,
                        format!("partition {}: bad mbr_type `{t}`", p.id),
                    )
                })?;
                (
                    None,
                    Some(format!("0x{b:02x}")),
                    format!("{disk_id:08x}-{number:02x}"),
                    None,
                )
            }
        };
        let fs = pd.map(
            |Measured {
                 kind,
                 tree,
                 uuid,
                 measure: m,
             }| Filesystem {
                kind,
                label: p.label.clone(),
                uuid: match kind {
                    FsKind::Fat32 => format!(
                        "{:02X}{:02X}-{:02X}{:02X}",
                        uuid[3], uuid[2], uuid[1], uuid[0]
                    ),
                    FsKind::Ext4 => Guid(uuid).to_string().to_lowercase(),
                },
                uuid_bytes: uuid,
                min_size: m.min_size(),
                content_bytes: tree.file_bytes(),
                entries: tree,
            },
        );
        partitions.push(Partition {
            number,
            id: p.id.clone(),
            start: pl.start,
            size: pl.size,
            name,
            gpt_type,
            mbr_type,
            partuuid,
            bootable: p.bootable,
            fs,
        });
    }
    Ok(Plan {
        board: board.name.clone(),
        layout: layout.name.clone(),
        epoch: opts.epoch,
        disk_size,
        sector_size: SECTOR,
        table,
        partitions,
    })
}
