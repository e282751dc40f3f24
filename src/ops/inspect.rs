//! What is on a disk or image, read-only: the partition table (GPT, MBR, hybrid), and for
//! each partition its filesystem (FAT32, ext4, squashfs, unknown) with label, UUID and
//! size, and for FAT the file list.
//!
//! Takes any bytes: a truncated image, a GPT with a bad CRC or a FAT whose chains loop are
//! reported as problems and inspection carries on. Never writes, never panics.

use serde::Serialize;

use crate::format::probe::{Kind, probe};
use crate::format::table::read::{
    DiskTable, Scheme, ebr_chain, is_extended as ebr_type, mbr as mbr_entries,
};
use crate::format::table::{Guid, SECTOR, TableEntry, gpt_type_name};
use crate::io::ReadAt;
use crate::plan::DiskId;

/// Everything found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub size: u64,
    pub table: Table,
    pub partitions: Vec<FoundPartition>,
    /// What is wrong, in words.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Table {
    Gpt {
        disk_guid: Guid,
        primary_ok: bool,
        backup_ok: bool,
        /// The MBR also lists partitions besides the protective one.
        hybrid: bool,
    },
    Mbr {
        disk_id: DiskId,
    },
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct FoundPartition {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    pub bootable: bool,
    pub fs: Filesystem,
}

#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    /// fat32, ext4, squashfs, extended (an MBR container of logical partitions) or unknown.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// FAT only: every file and directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileInfo>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub dir: bool,
}

/// Inspects the device or image file at `target`.
pub fn inspect_path(target: &std::path::Path) -> crate::Result<Inspection> {
    Ok(inspect(&crate::io::open_target(target)?))
}

/// Inspects a disk or image.
pub fn inspect(dev: &dyn ReadAt) -> Inspection {
    let size = dev.size();
    let mut problems = Vec::new();
    if size < 2 * SECTOR {
        problems.push(format!(
            "only {size} bytes: too small to hold a partition table"
        ));
    }
    let head = dev.read_padded(0, DiskTable::HEAD as usize);
    let (table, entries) = table(dev, &head, size, &mut problems);
    let partitions = entries
        .into_iter()
        .map(|e| partition(dev, e, size, &table, &mut problems))
        .collect();
    Inspection {
        size,
        table,
        partitions,
        problems,
    }
}

fn table(
    dev: &dyn ReadAt,
    head: &[u8],
    size: u64,
    problems: &mut Vec<String>,
) -> (Table, Vec<TableEntry>) {
    let found = DiskTable::parse(head);
    match found {
        Ok(t) if matches!(t.scheme, Scheme::Gpt(_)) || t.is_protective() => {
            gpt(dev, head, t, problems)
        }
        Ok(t) => {
            let Scheme::Mbr { disk_id } = t.scheme else {
                return (Table::None, Vec::new());
            };
            let entries = with_logical(dev, t.entries, size, problems);
            (
                Table::Mbr {
                    disk_id: DiskId(disk_id),
                },
                entries,
            )
        }
        Err(_) => {
            problems.push("no partition table (no MBR signature, no GPT)".into());
            (Table::None, Vec::new())
        }
    }
}

/// A GPT disk: the primary table when it checks out, else the backup; both judged.
fn gpt(
    dev: &dyn ReadAt,
    head: &[u8],
    found: DiskTable,
    problems: &mut Vec<String>,
) -> (Table, Vec<TableEntry>) {
    let backup = DiskTable::backup_gpt(dev);
    // Hybrid: the MBR lists partitions besides the protective one.
    let hybrid =
        mbr_entries(&head[..512]).is_some_and(|(_, e)| e.iter().any(|x| x.mbr_type != Some(0xEE)));
    let primary = match &found.scheme {
        Scheme::Gpt(h) => Ok((h.clone(), found.entries.clone())),
        Scheme::Mbr { .. } => Err(found.gpt_problem.clone().unwrap_or_else(|| "no GPT".into())),
    };
    if let Err(e) = &primary {
        problems.push(format!("primary GPT: {e}"));
    }
    if let Err(e) = &backup {
        problems.push(format!("backup GPT: {e}"));
    }
    let chosen = primary.as_ref().ok().or(backup.as_ref().ok());
    let Some((h, entries)) = chosen else {
        return (Table::None, Vec::new());
    };
    if primary.is_err() {
        problems.push("using the backup GPT".into());
    }
    (
        Table::Gpt {
            disk_guid: h.disk_guid,
            primary_ok: primary.is_ok(),
            backup_ok: backup.is_ok(),
            hybrid,
        },
        entries.clone(),
    )
}

/// An MBR's primary partitions followed by the logical ones of its (first) extended one.
fn with_logical(
    dev: &dyn ReadAt,
    mut entries: Vec<TableEntry>,
    size: u64,
    problems: &mut Vec<String>,
) -> Vec<TableEntry> {
    let extended: Vec<TableEntry> = entries
        .iter()
        .filter(|p| p.mbr_type.is_some_and(ebr_type))
        .cloned()
        .collect();
    for ext in extended.iter().take(1) {
        let (logical, err) = ebr_chain(ext, size, &|at| dev.read_padded(at, SECTOR as usize));
        if let Some(err) = err {
            problems.push(format!("extended partition: {err}"));
        }
        entries.extend(logical);
    }
    if extended.len() > 1 {
        problems.push("more than one extended partition".into());
    }
    entries
}

fn partition(
    dev: &dyn ReadAt,
    e: TableEntry,
    disk: u64,
    table: &Table,
    problems: &mut Vec<String>,
) -> FoundPartition {
    let number = e.number;
    let end = e.start.saturating_add(e.size);
    if end > disk {
        problems.push(format!(
            "partition {number} ends at byte {end} beyond the disk's {disk}"
        ));
    }
    let kind = match (e.gpt_type, e.mbr_type) {
        (Some(g), _) => gpt_type_name(g).map_or(g.to_string(), str::to_string),
        (_, Some(b)) => format!("0x{b:02x}"),
        _ => "unknown".into(),
    };
    let partuuid = match table {
        Table::Gpt { .. } => Some(e.guid.to_string().to_lowercase()),
        Table::Mbr { disk_id } => Some(format!("{disk_id}-{number:02x}")),
        Table::None => None,
    };
    let len = e.size.min(disk.saturating_sub(e.start));
    let container = matches!(table, Table::Mbr { .. }) && e.mbr_type.is_some_and(ebr_type);
    let fs = if container {
        Filesystem {
            kind: "extended".into(),
            label: None,
            uuid: None,
            size: None,
            files: None,
        }
    } else {
        filesystem(dev, e.start, len, number, problems)
    };
    if fs.kind == "unknown" {
        problems.push(format!(
            "partition {number} ({kind}): no filesystem recognised"
        ));
    }
    FoundPartition {
        number,
        start: e.start,
        size: e.size,
        kind,
        name: e.name,
        partuuid,
        bootable: e.bootable,
        fs,
    }
}

/// Identifies the filesystem at `[start, start+len)`, with a FAT's file list.
pub fn filesystem(
    dev: &dyn ReadAt,
    start: u64,
    len: u64,
    n: u32,
    problems: &mut Vec<String>,
) -> Filesystem {
    let p = probe(dev, start, len);
    let mut fs = Filesystem {
        kind: p.kind.as_str().into(),
        label: p.label,
        uuid: None,
        size: p.size,
        files: None,
    };
    match (p.kind, p.id) {
        (Kind::Ext4, Some(id)) => fs.uuid = Some(Guid(id).to_string().to_lowercase()),
        (k, Some(id)) if k.is_fat() && p.problem.is_none() => {
            let v = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
            fs.uuid = Some(format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF));
        }
        _ => {}
    }
    if let Some(e) = p.problem {
        problems.push(format!("partition {n} (FAT): {e}"));
    } else if let Some(v) = p.fat {
        match v.list() {
            Ok(list) => {
                fs.files = Some(
                    list.into_iter()
                        .map(|e| FileInfo {
                            path: e.path,
                            size: e.size,
                            dir: e.is_dir,
                        })
                        .collect(),
                )
            }
            Err(e) => problems.push(format!("partition {n} (FAT): {e}")),
        }
    }
    fs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_never_panics() {
        let mut x = 7u64;
        for len in [0usize, 1, 511, 512, 4096, 70_000, 1 << 20] {
            let mut v = vec![0u8; len];
            for b in v.iter_mut() {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                *b = (x >> 33) as u8;
            }
            if len >= 512 {
                v[510] = 0x55;
                v[511] = 0xAA;
            }
            let i = inspect(&v);
            assert_eq!(i.size, len as u64);
        }
    }
}
