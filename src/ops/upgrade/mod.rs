//! Upgrading an installed card (or image) in place: new boot files and rootfs content from
//! a new build (made from an images directory, or read out of a release image by
//! `release`), the user's data untouched.
//!
//! [`plan`] opens the target (`target`), reads it and decides everything before the first
//! write: the card's table must hold the board's layout (`card`), the new configs are made
//! with the card's own identifiers, each partition's edit is planned (`boot` for FAT,
//! `rootfs` for ext4) and must fit. [`UpgradePlan::apply`] then writes what was decided to
//! the partitions the build owns; the partition that grows to the card (`persist`), the
//! table and raw bootloader areas are never in a writable region (`disk`). Showing the
//! plan and asking is the caller's business.

pub mod boot;
pub mod card;
pub mod disk;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod keep;
pub mod release;
mod report;
pub mod rootfs;
pub mod target;

use std::path::PathBuf;

use crate::define::board::{Board, FsKind};
use crate::error::{Error, Result};
use crate::io::ReadAt;
use crate::ops::expect::{self, Expected};
use crate::plan::{self, Plan};

use boot::BootEdit;
use disk::{GuardedDisk, WriteCount};
use rootfs::RootfsEdit;
use target::Target;

pub use keep::Keep;
pub use report::{Action, Change, Outcome, PartitionReport, UpgradeReport};

/// What to upgrade, to what, and how.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    /// A whole-disk device or a raw image file.
    pub target: PathBuf,
    pub board: Board,
    /// Where the new build comes from.
    pub build: NewBuild,
    pub epoch: i64,
    /// `--keep` patterns.
    pub keep: Vec<String>,
    pub force_config: bool,
    /// Also rewrite an ext4 boot partition (not power-safe).
    pub allow_unsafe_boot: bool,
    /// Accept disks that are not removable, USB, SD or MMC.
    pub allow_fixed_disk: bool,
    /// Plan only: the target is opened read-only and the plan cannot be applied.
    pub dry_run: bool,
    /// Devices: read what was written back from the medium.
    pub verify: bool,
}

/// Where an upgrade's new build comes from.
#[derive(Debug, Clone)]
pub enum NewBuild {
    /// Made from Buildroot's images directory, with SkiffOS config directories (see
    /// [`crate::define::skiffos`]) supplying boot configs.
    Images {
        images: PathBuf,
        configs: Vec<PathBuf>,
    },
    /// Read out of a release image (`.img`, `.img.zst`, `.gz`, `.xz`); with trusted keys
    /// its manifest must be signed by one of them and every mapped range match it.
    Release {
        path: PathBuf,
        trusted: Vec<crate::image::sign::PublicKey>,
    },
}

/// Where one layout partition lies on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpan {
    pub number: u32,
    pub start: u64,
    pub size: u64,
}

/// What a partition is to an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Grows to the card: the user's data, never written.
    UserData,
    /// A prebuilt image: only `flash` writes it.
    Prebuilt,
    /// Holds the boot files: rewriting it without an atomic switch needs consent.
    Boot,
    /// Any other filesystem the build owns.
    Content,
}

/// The id the layouts give the partition the board boots from.
const BOOT_ID: &str = "boot";

impl Role {
    fn of(p: &plan::Partition) -> Role {
        if p.grows {
            Role::UserData
        } else if p.image.is_some() {
            Role::Prebuilt
        } else if p.id == BOOT_ID {
            Role::Boot
        } else {
            Role::Content
        }
    }
}

enum Edit {
    Boot(Box<BootEdit>),
    Rootfs(RootfsEdit),
}

impl Edit {
    fn part(&self) -> &str {
        match self {
            Edit::Boot(x) => &x.part,
            Edit::Rootfs(x) => &x.part,
        }
    }

    fn span(&self) -> PartSpan {
        match self {
            Edit::Boot(x) => x.span,
            Edit::Rootfs(x) => x.span,
        }
    }
}

/// Everything an upgrade will do, decided and checked; nothing written yet.
pub struct UpgradePlan {
    target: Target,
    edits: Vec<Edit>,
    report: UpgradeReport,
}

/// Opens and reads the target and decides the whole upgrade; writes nothing.
pub fn plan(req: &UpgradeRequest) -> Result<UpgradePlan> {
    let board = &req.board;
    if board.layout.l4t.is_some() {
        return Err(Error::board(
            &board.name,
            "upgrade does not handle L4T layouts: the boot files live in APP, the user-data \
             partition an upgrade never writes; write the card again with `flash` (persist is \
             erased)",
        ));
    }
    let mut target = target::open(
        &req.target,
        target::OpenOptions {
            allow_fixed_disk: req.allow_fixed_disk,
            write: !req.dry_run,
            verify: req.verify,
        },
    )?;
    let disk = &mut target.disk;
    let what = disk.path().display().to_string();
    let card = card::read(disk, board, &what)?;
    let spans: Vec<PartSpan> = card.parts.clone();
    let keep = Keep::parse(&req.keep, board)?;
    let (build, raw) = match &req.build {
        NewBuild::Images { images, configs } => {
            let build = plan::make(
                board,
                &plan::Options {
                    images: images.clone(),
                    size: Some(disk.size()),
                    epoch: req.epoch,
                    seed: None,
                    ids: Some(card.ids.clone()),
                    configs: configs.clone(),
                    custom: None,
                },
            )?;
            let raw = Expected::from_plan(&build).raw;
            (build, raw)
        }
        NewBuild::Release { path, trusted } => {
            let r = release::read(board, path, &card, req.epoch, trusted)?;
            (r.plan, r.raw)
        }
    };
    let mut decided = Decided::default();
    for (p, span) in build.partitions.iter().zip(&spans) {
        decide(disk, &build, p, *span, &keep, req, &mut decided)?;
    }
    decided.notes.extend(bootloader_notes(&raw, disk));
    fence(disk, &build, &spans, &decided.edits);
    let mut edits = decided.edits;
    let changes = edits.iter_mut().flat_map(take_changes).collect();
    let report = UpgradeReport {
        target: target.path(),
        board: board.name.clone(),
        dry_run: true,
        partitions: decided.partitions,
        changes,
        notes: decided.notes,
        writes: 0,
        bytes_written: 0,
        verified: false,
    };
    Ok(UpgradePlan {
        target,
        edits,
        report,
    })
}

/// The decisions so far, partition by partition.
#[derive(Default)]
struct Decided {
    edits: Vec<Edit>,
    partitions: Vec<PartitionReport>,
    notes: Vec<String>,
}

/// Decides what happens to partition `p` (at `span` on the card).
fn decide(
    disk: &GuardedDisk,
    build: &Plan,
    p: &plan::Partition,
    span: PartSpan,
    keep: &Keep,
    req: &UpgradeRequest,
    out: &mut Decided,
) -> Result<()> {
    let mut report = PartitionReport {
        id: p.id.clone(),
        number: span.number,
        start: span.start,
        size: span.size,
        outcome: Outcome::Unchanged,
        needs: None,
        free: None,
        note: None,
    };
    let role = Role::of(p);
    match role {
        Role::UserData => {
            report.outcome = Outcome::Untouched;
            report.note = Some("user data: never written by an upgrade".into());
            out.notes.extend(user_data_note(p));
        }
        Role::Prebuilt => {
            report.outcome = Outcome::NotUpdated;
            report.note = Some("prebuilt partition images are written by flash only".into());
        }
        Role::Boot | Role::Content => {
            if let Some((kind, mut spec)) = build.fs_spec(p) {
                spec.offset = span.start;
                let edit = match kind {
                    FsKind::Fat32 => {
                        let e = BootEdit::plan(disk, &spec, span, keep, req.force_config)?;
                        boot_report(&e, &mut report);
                        Edit::Boot(Box::new(e))
                    }
                    FsKind::Fat16 | FsKind::Fat12 | FsKind::Fat => {
                        return Err(Error::partition(
                            &p.id,
                            "is FAT12/16, which upgrade does not edit (it edits FAT32 boot partitions); use flash, or build the board with a boot partition of 512 MiB or more or with fs = \"fat32\"",
                        ));
                    }
                    FsKind::Ext4 => {
                        if role == Role::Boot && !req.allow_unsafe_boot {
                            return Err(Error::partition(
                                &p.id,
                                "is ext4, which an upgrade rewrites without an atomic switch: a power loss meanwhile leaves the card unbootable until the upgrade is run again; pass --allow-unsafe-boot to accept that, or use flash",
                            ));
                        }
                        let e = RootfsEdit::plan(disk, &spec, span, keep)?;
                        rootfs_report(&e, &mut report);
                        Edit::Rootfs(e)
                    }
                };
                out.edits.push(edit);
            }
        }
    }
    out.partitions.push(report);
    Ok(())
}

fn boot_report(e: &BootEdit, report: &mut PartitionReport) {
    if e.writes_anything() {
        report.outcome = Outcome::Edited;
    }
    report.needs = Some(e.needs);
    report.free = Some(e.free);
    if e.lost_clusters > 0 {
        report.note = Some(format!(
            "{} clusters allocated to no file (an interrupted upgrade?) are freed",
            e.lost_clusters
        ));
    }
}

fn rootfs_report(e: &RootfsEdit, report: &mut PartitionReport) {
    if e.rebuild {
        report.outcome = Outcome::Rewritten;
    }
    if let Some(why) = &e.unreadable {
        report.note = Some(format!(
            "the filesystem on the card was unreadable ({why}): written again"
        ));
    }
}

/// The build's files for a user-data partition stay as the card has them: say so.
fn user_data_note(p: &plan::Partition) -> Option<String> {
    let files: Vec<&str> = p.fs.as_ref().map_or(Vec::new(), |f| {
        f.entries
            .iter()
            .filter(|e| !matches!(e.node, crate::plan::tree::Node::Dir))
            .map(|e| e.path.as_str())
            .collect()
    });
    (!files.is_empty()).then(|| {
        format!(
            "partition {} holds user data and is never written: the build's {} files for it ({}{}) stay as the card has them (`flash` writes them)",
            p.id,
            files.len(),
            files.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            if files.len() > 3 { ", …" } else { "" }
        )
    })
}

/// A note for each bootloader blob on the card that differs from the build's.
fn bootloader_notes(raw: &[expect::Raw], disk: &GuardedDisk) -> Vec<String> {
    raw.iter()
        .filter(|r| !crate::ops::verify::raw_findings(disk, r).is_empty())
        .map(|r| {
            let from = match &r.want {
                expect::RawWant::File { path, .. } => format!(" {}", path.display()),
                _ => String::new(),
            };
            format!(
                "bootloader `{}` at byte {} differs from the build's{from}; an upgrade never rewrites bootloaders (flash does)",
                r.name, r.offset
            )
        })
        .collect()
}

/// Declares where writes may land: the edited partitions, never the user's data.
fn fence(disk: &mut GuardedDisk, build: &Plan, spans: &[PartSpan], edits: &[Edit]) {
    for (p, s) in build.partitions.iter().zip(spans) {
        if Role::of(p) == Role::UserData {
            disk.deny(&format!("partition {} (user data)", p.id), s.start, s.size);
        }
    }
    for e in edits {
        let s = e.span();
        disk.allow(e.part(), s.start, s.size);
    }
}

fn take_changes(e: &mut Edit) -> Vec<Change> {
    match e {
        Edit::Boot(x) => std::mem::take(&mut x.changes),
        Edit::Rootfs(x) => std::mem::take(&mut x.changes),
    }
}

impl UpgradePlan {
    /// The plan as a report (`dry_run`). Its write count is zero until [`Self::count_writes`].
    pub fn report(&self) -> &UpgradeReport {
        &self.report
    }

    /// Whether the target is a block device (else an image file).
    pub fn on_device(&self) -> bool {
        self.target.on_device()
    }

    /// Counts the writes the plan makes, in a pass over the edits that writes nothing (it
    /// costs the reading and comparing that applying costs), into the report.
    pub fn count_writes(&mut self) -> Result<WriteCount> {
        self.target.disk.set_dry(true);
        let run = self.write();
        let count = self.target.disk.count();
        self.target.disk.set_dry(false);
        run?;
        self.report.writes = count.writes;
        self.report.bytes_written = count.bytes;
        Ok(count)
    }

    /// Makes the writes the plan decided, in their power-safe order, then reads them back
    /// (devices, when asked) and drops the stale partition caches.
    pub fn apply(mut self) -> Result<UpgradeReport> {
        if !self.target.writable() {
            return Err(Error::Internal(
                "an upgrade planned as a dry run cannot be applied".into(),
            ));
        }
        self.target.disk.set_dry(false);
        self.write()?;
        let count = self.target.disk.count();
        let verified = self.target.finish()?;
        Ok(UpgradeReport {
            dry_run: false,
            writes: count.writes,
            bytes_written: count.bytes,
            verified,
            ..self.report
        })
    }

    /// The ext4 partitions first, the boot switch last.
    fn write(&mut self) -> Result<()> {
        let disk = &mut self.target.disk;
        for e in &mut self.edits {
            if let Edit::Rootfs(x) = e {
                x.apply(disk)?;
            }
        }
        for e in &self.edits {
            if let Edit::Boot(x) = e {
                x.apply(disk)?;
            }
        }
        Ok(())
    }
}
