//! Reading an installed card: does its table hold the board's layout (same table kind,
//! partitions, types, names, filesystems and labels; sizes may differ), and which
//! identifiers does it carry (the new configs must name them).

use crate::define::board::{Board, FsKind, TableKind};
use crate::error::{Error, Result};
use crate::format::probe::probe;
use crate::format::table;
use crate::format::table::read::{DiskTable, Scheme, TableError};
use crate::io::ReadAt;
use crate::plan::{DiskId, Ids, Table};

/// A card whose layout matches the board's.
#[derive(Debug, Clone)]
pub struct Card {
    pub ids: Ids,
    /// Per layout partition: (number, start, size) on the card.
    pub parts: Vec<(u32, u64, u64)>,
}

/// Reads the card's table and checks it against `board`'s layout; the error lists every
/// difference.
pub fn read(dev: &dyn ReadAt, board: &Board, what: &str) -> Result<Card> {
    let layout = &board.layout;
    let refuse = |diffs: Vec<String>| {
        Error::Usage(format!(
            "{what} does not hold board {}'s layout ({}): {}; `--reformat` starts over (a full flash: persist is erased)",
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
    let (ids_table, disk_id) = match (layout.table, &found.scheme) {
        (TableKind::Gpt, Scheme::Gpt(h)) => (
            Table::Gpt {
                disk_guid: h.disk_guid,
                array_lba: h.array_lba,
                first_lba: None,
                no_backup: layout.gpt_no_backup,
                hybrid: layout.hybrid_mbr,
                mbr_id: None,
            },
            0,
        ),
        (TableKind::Mbr, Scheme::Mbr { disk_id }) => (
            Table::Mbr {
                disk_id: DiskId(*disk_id),
            },
            *disk_id,
        ),
        (TableKind::Gpt, Scheme::Mbr { .. }) => {
            return Err(refuse(vec![
                "the card has an MBR partition table, the layout a GPT".into(),
            ]));
        }
        (TableKind::Mbr, Scheme::Gpt(_)) => {
            return Err(refuse(vec!["the card has a GPT, the layout an MBR".into()]));
        }
    };
    let entries = found.entries;
    let mut diffs = Vec::new();
    // A table that overlaps itself or leaves the disk cannot bound any write.
    let size = dev.size();
    for (i, e) in entries.iter().enumerate() {
        let n = e.number;
        if e.start == 0 || e.start.saturating_add(e.size) > size {
            return Err(refuse(vec![format!(
                "partition {n} [{}, {}) lies outside the {size}-byte disk",
                e.start,
                e.start.saturating_add(e.size)
            )]));
        }
        for f in &entries[..i] {
            if e.start < f.start + f.size && f.start < e.start + e.size {
                let m = f.number;
                return Err(refuse(vec![format!("partitions {m} and {n} overlap")]));
            }
        }
    }
    if entries.len() != layout.partitions.len() {
        diffs.push(format!(
            "{} partitions, the layout has {}",
            entries.len(),
            layout.partitions.len()
        ));
    }
    let mut parts = Vec::new();
    let mut partuuid = Vec::new();
    let mut fs_uuid = Vec::new();
    for (p, e) in layout.partitions.iter().zip(&entries) {
        let n = &e.number;
        let at = format!("partition {n} ({})", p.id);
        match layout.table {
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
                partuuid.push(e.guid.to_string().to_lowercase());
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
                partuuid.push(format!("{disk_id:08x}-{n:02x}"));
            }
        }
        let found = probe(dev, e.start, e.size);
        let mut uuid = [0u8; 16];
        if let Some(kind) = p.fs {
            let want = match kind {
                FsKind::Fat32 => "fat32",
                FsKind::Fat16 => "fat16",
                FsKind::Fat12 => "fat12",
                FsKind::Fat => "fat",
                FsKind::Ext4 => "ext4",
            };
            let found_kind = found.kind.as_str();
            let same = found_kind == want || want == "fat" && found.kind.is_fat();
            if !same {
                diffs.push(format!("{at}: {found_kind} filesystem, expected {want}"));
            } else {
                let label = found.label.as_deref().map(str::trim).unwrap_or_default();
                if let Some(l) = &p.label
                    && !label.eq_ignore_ascii_case(l)
                {
                    diffs.push(format!("{at}: label `{label}`, expected `{l}`"));
                }
                uuid = found.id.ok_or_else(|| {
                    Error::partition(
                        &p.id,
                        format!(
                            "{what} {at}: {}",
                            found.problem.as_deref().unwrap_or("unreadable filesystem")
                        ),
                    )
                })?;
            }
        }
        fs_uuid.push(uuid);
        parts.push((*n, e.start, e.size));
    }
    if !diffs.is_empty() {
        return Err(refuse(diffs));
    }
    Ok(Card {
        ids: Ids {
            table: ids_table,
            partuuid,
            fs_uuid,
        },
        parts,
    })
}
