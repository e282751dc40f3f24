//! Reading an installed card: does its table hold the board's layout (same table kind,
//! partitions, types, names, filesystems and labels; sizes may differ), and which
//! identifiers does it carry (the new configs must name them).

use crate::define::board::{Board, FsKind, Layout, PartitionDef, TableKind};
use crate::error::{Error, Result};
use crate::format::probe::probe;
use crate::format::table::read::{DiskTable, Scheme, TableError};
use crate::format::table::{self, TableEntry};
use crate::io::ReadAt;
use crate::plan::{DiskId, Ids, Table};

use super::PartSpan;

/// A card whose layout matches the board's.
#[derive(Debug, Clone)]
pub struct Card {
    pub ids: Ids,
    /// Where each layout partition lies on the card.
    pub parts: Vec<PartSpan>,
}

/// Reads the card's table and checks it against `board`'s layout; the error lists every
/// difference.
pub fn read(dev: &dyn ReadAt, board: &Board, what: &str) -> Result<Card> {
    read_with(dev, board, what, |m| {
        Error::Usage(format!(
            "{m}; `--reformat` starts over (a full flash: persist is erased)"
        ))
    })
}

/// As [`read`], for a release image the new build is read from: the error says the image
/// is not a build of the board.
pub fn read_release(dev: &dyn ReadAt, board: &Board, path: &std::path::Path) -> Result<Card> {
    let what = format!("release image {}", path.display());
    read_with(dev, board, &what, |m| Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!("not a build of board {}: {m}", board.name),
    })
}

fn read_with(
    dev: &dyn ReadAt,
    board: &Board,
    what: &str,
    error: impl Fn(String) -> Error,
) -> Result<Card> {
    let layout = &board.layout;
    let refuse = |diffs: Vec<String>| {
        error(format!(
            "{what} does not hold board {}'s layout ({}): {}",
            board.name,
            layout.name,
            diffs.join("; ")
        ))
    };
    let found = match DiskTable::read(dev) {
        Ok(t) => t,
        Err(TableError::Io(e)) => return Err(Error::io(format!("reading {what}"), e)),
        Err(TableError::Missing(e)) => {
            return Err(refuse(vec![format!("no partition table found ({e})")]));
        }
    };
    let (table, disk_id) = table_ids(layout, &found.scheme).map_err(|d| refuse(vec![d]))?;
    let entries = found.entries;
    in_bounds(&entries, dev.size()).map_err(|d| refuse(vec![d]))?;
    let mut diffs = Vec::new();
    if entries.len() != layout.partitions.len() {
        diffs.push(format!(
            "{} partitions, the layout has {}",
            entries.len(),
            layout.partitions.len()
        ));
    }
    let mut card = Card {
        ids: Ids {
            table,
            partuuid: Vec::new(),
            fs_uuid: Vec::new(),
        },
        parts: Vec::new(),
    };
    for (p, e) in layout.partitions.iter().zip(&entries) {
        let at = format!("partition {} ({})", e.number, p.id);
        let partuuid = entry_matches(layout.table, p, e, disk_id, &at, &mut diffs);
        let uuid = filesystem_matches(dev, p, e, &at, what, &mut diffs)?;
        card.ids.partuuid.push(partuuid);
        card.ids.fs_uuid.push(uuid);
        card.parts.push(PartSpan {
            number: e.number,
            start: e.start,
            size: e.size,
        });
    }
    if !diffs.is_empty() {
        return Err(refuse(diffs));
    }
    Ok(card)
}

/// The identifiers of the card's table when its kind is the layout's, with the MBR disk id
/// (0 for a GPT); else why not.
fn table_ids(layout: &Layout, scheme: &Scheme) -> Result<(Table, u32), String> {
    match (layout.table, scheme) {
        (TableKind::Gpt, Scheme::Gpt(h)) => Ok((
            Table::Gpt {
                disk_guid: h.disk_guid,
                array_lba: h.array_lba,
                first_lba: None,
                no_backup: layout.gpt_no_backup,
                hybrid: layout.hybrid_mbr,
                mbr_id: None,
            },
            0,
        )),
        (TableKind::Mbr, Scheme::Mbr { disk_id }) => Ok((
            Table::Mbr {
                disk_id: DiskId(*disk_id),
            },
            *disk_id,
        )),
        (TableKind::Gpt, Scheme::Mbr { .. }) => {
            Err("the card has an MBR partition table, the layout a GPT".into())
        }
        (TableKind::Mbr, Scheme::Gpt(_)) => Err("the card has a GPT, the layout an MBR".into()),
    }
}

/// A table that overlaps itself or leaves the disk cannot bound any write.
fn in_bounds(entries: &[TableEntry], size: u64) -> Result<(), String> {
    for (i, e) in entries.iter().enumerate() {
        let n = e.number;
        if e.start == 0 || e.start.saturating_add(e.size) > size {
            return Err(format!(
                "partition {n} [{}, {}) lies outside the {size}-byte disk",
                e.start,
                e.start.saturating_add(e.size)
            ));
        }
        if let Some(f) = entries[..i]
            .iter()
            .find(|f| e.start < f.start + f.size && f.start < e.start + e.size)
        {
            return Err(format!("partitions {} and {n} overlap", f.number));
        }
    }
    Ok(())
}

/// Compares a table entry's type (and GPT name) with the layout's; returns its PARTUUID.
fn entry_matches(
    kind: TableKind,
    p: &PartitionDef,
    e: &TableEntry,
    disk_id: u32,
    at: &str,
    diffs: &mut Vec<String>,
) -> String {
    match kind {
        TableKind::Gpt => {
            let want = p.gpt_type.as_deref().and_then(table::gpt_type);
            if e.gpt_type != want {
                diffs.push(format!(
                    "{at}: type {}, expected {}",
                    e.gpt_type.map_or("none".into(), |g| g.to_string()),
                    p.gpt_type.as_deref().unwrap_or("none")
                ));
            }
            let name = p.gpt_name.clone().unwrap_or(p.id.clone());
            if e.name != name {
                diffs.push(format!("{at}: GPT name `{}`, expected `{name}`", e.name));
            }
            e.guid.to_string().to_lowercase()
        }
        TableKind::Mbr => {
            let want = p.mbr_type.as_deref().and_then(table::mbr_type);
            if e.mbr_type != want {
                diffs.push(format!(
                    "{at}: type 0x{:02x}, expected {}",
                    e.mbr_type.unwrap_or(0),
                    p.mbr_type.as_deref().unwrap_or("none")
                ));
            }
            format!("{disk_id:08x}-{:02x}", e.number)
        }
    }
}

/// Compares the filesystem in the entry with the layout's kind and label; returns its
/// identifier as stored (zeros for a partition without a filesystem).
fn filesystem_matches(
    dev: &dyn ReadAt,
    p: &PartitionDef,
    e: &TableEntry,
    at: &str,
    what: &str,
    diffs: &mut Vec<String>,
) -> Result<[u8; 16]> {
    let Some(kind) = p.fs else {
        return Ok([0; 16]);
    };
    let found = probe(dev, e.start, e.size);
    let want = match kind {
        FsKind::Fat32 => "fat32",
        FsKind::Fat16 => "fat16",
        FsKind::Fat12 => "fat12",
        FsKind::Fat => "fat",
        FsKind::Ext4 => "ext4",
    };
    let found_kind = found.kind.as_str();
    if !(found_kind == want || want == "fat" && found.kind.is_fat()) {
        diffs.push(format!("{at}: {found_kind} filesystem, expected {want}"));
        return Ok([0; 16]);
    }
    let label = found.label.as_deref().map(str::trim).unwrap_or_default();
    if let Some(l) = &p.label
        && !label.eq_ignore_ascii_case(l)
    {
        diffs.push(format!("{at}: label `{label}`, expected `{l}`"));
    }
    found.id.ok_or_else(|| {
        Error::partition(
            &p.id,
            format!(
                "{what} {at}: {}",
                found.problem.as_deref().unwrap_or("unreadable filesystem")
            ),
        )
    })
}
