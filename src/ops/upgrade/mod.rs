//! Upgrading an installed card (or image) in place: new boot files and rootfs content from
//! a new build, the user's data untouched.
//!
//! Everything is read and decided before the first write: the card's table must hold the
//! board's layout (`card`), the new configs are made with the card's own identifiers, each
//! partition's edit is planned (`boot` for FAT, `rootfs` for ext4) and must fit. Only then
//! are the partitions the build owns written; the partition that grows to the card
//! (`persist`), the table and raw bootloader areas are never in a writable region.

pub mod boot;
pub mod card;
pub mod disk;
pub mod rootfs;

use std::path::PathBuf;

use serde::Serialize;

use crate::define::board::{Board, FsKind};
use crate::error::{Error, Result};
use crate::io::ReadAt;
use crate::plan;
use crate::plan::artifacts::glob;

use boot::BootEdit;
use disk::Disk;
use rootfs::RootfsEdit;

/// What an upgrade is made from.
#[derive(Debug, Clone)]
pub struct Options {
    pub images: PathBuf,
    /// SkiffOS config directories (see [`crate::define::skiffos`]).
    pub configs: Vec<PathBuf>,
    pub epoch: i64,
    /// `--keep` patterns.
    pub keep: Vec<String>,
    pub force_config: bool,
    /// Also rewrite an ext4 boot partition (not power-safe).
    pub allow_unsafe_boot: bool,
}

/// What happens to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Added,
    Replaced,
    Removed,
    Unchanged,
    /// On the card, not (or not as) in the build, and left as it is.
    Kept,
}

/// One file's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub partition: String,
    pub path: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `--keep` patterns: `PATH` (the boot partition) or `PARTITION:PATH`; `*` and `?` match
/// within one path component; a directory keeps everything under it.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    patterns: Vec<(Option<String>, Vec<String>)>,
    /// The partition a pattern without one names: the layout's first FAT partition.
    default_part: String,
}

impl Keep {
    pub fn parse(list: &[String], board: &Board) -> Result<Keep> {
        let mut patterns = Vec::new();
        for k in list {
            let (part, path) = match k.split_once(':') {
                Some((p, path)) => {
                    if !board.layout.partitions.iter().any(|d| d.id == p) {
                        return Err(Error::Usage(format!(
                            "--keep {k}: board {} has no partition `{p}` (it has {})",
                            board.name,
                            board
                                .layout
                                .partitions
                                .iter()
                                .map(|d| d.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                    (Some(p.to_string()), path)
                }
                None => (None, k.as_str()),
            };
            let comps: Vec<String> = path
                .split('/')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            if comps.is_empty() {
                return Err(Error::Usage(format!(
                    "--keep {k}: give a path, e.g. /overlays/my.dtbo"
                )));
            }
            patterns.push((part, comps));
        }
        let default_part = board
            .layout
            .partitions
            .iter()
            .find(|d| d.fs.is_some_and(FsKind::is_fat))
            .or(board.layout.partitions.first())
            .map_or_else(|| "boot".to_string(), |d| d.id.clone());
        Ok(Keep {
            patterns,
            default_part,
        })
    }

    /// Whether any pattern names partition `part`.
    pub fn names(&self, part: &str) -> bool {
        self.patterns
            .iter()
            .any(|(p, _)| p.as_deref().unwrap_or(&self.default_part) == part)
    }

    /// Whether `path` in partition `part` is kept. Patterns without a partition name the
    /// layout's first FAT partition (`boot` on most boards); paths compare without case.
    pub fn matches(&self, part: &str, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        self.patterns.iter().any(|(p, pat)| {
            p.as_deref().unwrap_or(&self.default_part) == part
                && pat.len() <= comps.len()
                && pat
                    .iter()
                    .zip(&comps)
                    .all(|(a, b)| glob(&a.to_lowercase(), &b.to_lowercase()))
        })
    }
}

/// What one partition went through.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub id: String,
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// edited (FAT, atomic switch), rewritten (ext4), unchanged, untouched (user data), or
    /// not updated (a prebuilt image).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The result of an upgrade (or of a dry run: what it would do).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: PathBuf,
    pub board: String,
    pub dry_run: bool,
    pub partitions: Vec<PartitionReport>,
    pub changes: Vec<Change>,
    /// Notes: bootloader blobs that differ from the build (never written by an upgrade).
    pub notes: Vec<String>,
    pub writes: u64,
    pub bytes_written: u64,
}

enum Edit {
    Boot(Box<BootEdit>),
    Rootfs(RootfsEdit),
}

/// Upgrades `disk` to `board`'s build. With `dry_run`, decides and reports only.
pub fn upgrade(disk: &mut Disk, board: &Board, opts: &Options, dry_run: bool) -> Result<Report> {
    if board.layout.l4t.is_some() {
        return Err(Error::board(
            &board.name,
            "upgrade does not handle L4T layouts: the boot files live in APP, the user-data \
             partition an upgrade never writes; write the card again with `flash` (persist is \
             erased)",
        ));
    }
    let what = disk.path().display().to_string();
    let card = card::read(disk, board, &what)?;
    let keep = Keep::parse(&opts.keep, board)?;
    let plan = plan::make(
        board,
        &plan::Options {
            images: opts.images.clone(),
            size: Some(disk.size()),
            epoch: opts.epoch,
            seed: None,
            ids: Some(card.ids.clone()),
            configs: opts.configs.clone(),
        },
    )?;
    let mut edits = Vec::new();
    let mut reports = Vec::new();
    let mut notes = Vec::new();
    for (i, (p, (number, start, size))) in plan.partitions.iter().zip(&card.parts).enumerate() {
        let mut report = PartitionReport {
            id: p.id.clone(),
            number: *number,
            start: *start,
            size: *size,
            outcome: "unchanged".into(),
            needs: None,
            free: None,
            note: None,
        };
        if p.grows {
            report.outcome = "untouched".into();
            report.note = Some("user data: never written by an upgrade".into());
            let files: Vec<&str> = p.fs.as_ref().map_or(Vec::new(), |f| {
                f.entries
                    .iter()
                    .filter(|e| !matches!(e.node, crate::plan::tree::Node::Dir))
                    .map(|e| e.path.as_str())
                    .collect()
            });
            if !files.is_empty() {
                notes.push(format!(
                    "partition {} holds user data and is never written: the build's {} files for it ({}{}) stay as the card has them (`flash` writes them)",
                    p.id,
                    files.len(),
                    files.iter().take(3).copied().collect::<Vec<_>>().join(", "),
                    if files.len() > 3 { ", …" } else { "" }
                ));
            }
            reports.push(report);
            continue;
        }
        if p.image.is_some() {
            report.outcome = "not updated".into();
            report.note = Some("prebuilt partition images are written by flash only".into());
            reports.push(report);
            continue;
        }
        let Some((kind, mut spec)) = plan.fs_spec(p) else {
            reports.push(report);
            continue;
        };
        spec.offset = *start;
        match kind {
            FsKind::Fat32 => {
                let e = BootEdit::plan(disk, &spec, *start, *size, &keep, opts.force_config)?;
                if e.writes_anything() {
                    report.outcome = "edited".into();
                }
                report.needs = Some(e.needs);
                report.free = Some(e.free);
                if e.lost_clusters > 0 {
                    report.note = Some(format!(
                        "{} clusters allocated to no file (an interrupted upgrade?) are freed",
                        e.lost_clusters
                    ));
                }
                edits.push((i, Edit::Boot(Box::new(e))));
            }
            FsKind::Fat16 | FsKind::Fat12 | FsKind::Fat => {
                return Err(Error::partition(
                    &p.id,
                    "is FAT12/16, which upgrade does not edit (it edits FAT32 boot partitions); use flash, or build the board with a boot partition of 512 MiB or more or with fs = \"fat32\"",
                ));
            }
            FsKind::Ext4 => {
                if p.id == "boot" && !opts.allow_unsafe_boot {
                    return Err(Error::partition(
                        &p.id,
                        "is ext4, which an upgrade rewrites without an atomic switch: a power loss meanwhile leaves the card unbootable until the upgrade is run again; pass --allow-unsafe-boot to accept that, or use flash",
                    ));
                }
                let e = RootfsEdit::plan(disk, &spec, *start, *size, &keep)?;
                if e.rebuild {
                    report.outcome = "rewritten".into();
                }
                if let Some(why) = &e.unreadable {
                    report.note = Some(format!(
                        "the filesystem on the card was unreadable ({why}): written again"
                    ));
                }
                edits.push((i, Edit::Rootfs(e)));
            }
        }
        reports.push(report);
    }
    for r in &plan.raw {
        let mut want = vec![0u8; r.length as usize];
        let mut got = vec![0u8; r.length as usize];
        let same = std::fs::File::open(&r.source)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut want, r.skip))
            .is_ok()
            && disk.read_exact_at(&mut got, r.offset).is_ok()
            && want == got;
        if !same {
            notes.push(format!(
                "bootloader `{}` at byte {} differs from the build's {}; an upgrade never rewrites bootloaders (flash does)",
                r.name,
                r.offset,
                r.source.display()
            ));
        }
    }
    // Every check has passed: now write (a dry run counts the writes instead). The ext4
    // partitions first, the boot switch last.
    if dry_run {
        disk.set_dry(true);
    }
    for (p, (_, start, size)) in plan.partitions.iter().zip(&card.parts) {
        if p.grows {
            disk.deny(&format!("partition {} (user data)", p.id), *start, *size);
        }
    }
    for (i, e) in &edits {
        let (_, start, size) = card.parts[*i];
        let id = match e {
            Edit::Boot(x) => &x.part,
            Edit::Rootfs(x) => &x.part,
        };
        disk.allow(id, start, size);
    }
    for (_, e) in &mut edits {
        if let Edit::Rootfs(x) = e {
            x.apply(disk)?;
        }
    }
    for (_, e) in &edits {
        if let Edit::Boot(x) = e {
            x.apply(disk)?;
        }
    }
    let mut changes = Vec::new();
    for (_, e) in edits {
        match e {
            Edit::Boot(x) => changes.extend(x.changes),
            Edit::Rootfs(x) => changes.extend(x.changes),
        }
    }
    Ok(Report {
        target: disk.path().to_path_buf(),
        board: board.name.clone(),
        dry_run,
        partitions: reports,
        changes,
        notes,
        writes: disk.writes,
        bytes_written: disk.bytes_written,
    })
}

#[cfg(test)]
mod tests {
    use super::Keep;

    fn keep(list: &[(&str, &str)]) -> Keep {
        Keep {
            patterns: list
                .iter()
                .map(|(p, path)| {
                    (
                        (!p.is_empty()).then(|| p.to_string()),
                        path.split('/')
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect(),
                    )
                })
                .collect(),
            default_part: "boot".into(),
        }
    }

    #[test]
    fn keep_patterns_match_paths_directories_and_globs() {
        let k = keep(&[
            ("", "/overlays/my-*.dtbo"),
            ("", "/user"),
            ("rootfs", "/extra"),
        ]);
        assert!(k.matches("boot", "/overlays/my-hat.dtbo"));
        assert!(
            k.matches("boot", "/OVERLAYS/MY-HAT.DTBO"),
            "FAT ignores case"
        );
        assert!(!k.matches("boot", "/overlays/other.dtbo"));
        assert!(
            k.matches("boot", "/user/a/b.txt"),
            "a directory keeps its content"
        );
        assert!(!k.matches("rootfs", "/user/a"), "no partition means boot");
        assert!(k.matches("rootfs", "/extra/x"));
        assert!(!k.matches("boot", "/extra/x"));
        assert!(!k.matches("boot", "/us"));
    }
}
