//! The `verify` command: pick what to compare with, compare, report each finding.

use std::path::PathBuf;

use clap::Args;

use super::ImagesDir;

use skiff_flash::define::board::Board;
use skiff_flash::image::manifest;
use skiff_flash::ops::verify::{self, Finding, Reference};
use skiff_flash::units::{bytes, human};
use skiff_flash::{Error, Result, plan};

#[derive(Args)]
pub struct VerifyArgs {
    /// Device or raw image file to check.
    target: PathBuf,
    /// Check meaning against this board's build (table, boot and rootfs files, blobs).
    #[arg(short, long, conflicts_with_all = ["image", "manifest"])]
    board: Option<String>,
    #[command(flatten)]
    pub(super) dir: ImagesDir,
    #[arg(long)]
    seed: Option<String>,
    /// Check meaning against this release image (.img, .img.zst, .gz, .xz): its table,
    /// filesystems and files, from the manifest beside it or read out of the image.
    #[arg(long, value_name = "FILE", conflicts_with = "manifest")]
    image: Option<PathBuf>,
    /// With --image: compare bytes instead, over the image's mapped ranges.
    #[arg(long, requires = "image")]
    bytes: bool,
    /// Block map for --image --bytes (default: IMAGE.bmap beside it, if present).
    #[arg(long, value_name = "FILE", requires = "bytes")]
    bmap: Option<PathBuf>,
    /// Compare bytes with the mapped ranges recorded in this manifest.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// With --image: its manifest must be signed by this key (file or one-line key);
    /// repeatable. Meaning mode then checks against the signed manifest, and --bytes
    /// compares the card with the signed hashes rather than with the image file.
    #[command(flatten)]
    trusted: super::sign::TrustedKeys,
    #[arg(long)]
    json: bool,
}

pub fn verify(a: &VerifyArgs, load: impl Fn(&str) -> Result<Board>, epoch: i64) -> Result<()> {
    // Inside SkiffOS, with nothing else to compare with, the config list's board.
    let by_board =
        a.board.is_some() || (a.image.is_none() && a.manifest.is_none() && a.dir.skiff().active());
    let reference = if by_board {
        let board = load(a.board.as_deref().unwrap_or_default())?;
        let plan = plan::make(&board, &a.dir.plan_options(epoch, a.seed.clone()))?;
        Reference::Plan(Box::new(plan))
    } else if let Some(image) = a.image.as_ref().filter(|_| !a.bytes) {
        Reference::Release {
            path: image.clone(),
            trusted: a.trusted.load()?,
        }
    } else if let Some(image) = a.image.as_ref().filter(|_| !a.trusted.is_empty()) {
        let trusted = a.trusted.load()?;
        let (m, _) = skiff_flash::image::release::Release::trusted_manifest(image, &trusted)?;
        Reference::Manifest(Box::new(m))
    } else if let Some(image) = &a.image {
        Reference::Image {
            path: image.clone(),
            bmap: a.bmap.clone(),
        }
    } else if let Some(m) = &a.manifest {
        Reference::Manifest(Box::new(manifest::load(m)?))
    } else {
        return Err(Error::Usage(
            "give --board, --image or --manifest to compare with".into(),
        ));
    };
    let verdict = verify::verify(&a.target, &reference)?;
    if a.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&verdict).unwrap_or_default()
        );
    } else {
        for f in &verdict.findings {
            out!("{}", finding_line(f));
        }
        for f in &verdict.changed_by_system {
            out!(
                "{} (changed by the system, not a difference)",
                finding_line(f)
            );
        }
        out!(
            "{}: {} ({} mode, {} compared)",
            a.target.display(),
            if verdict.ok() { "matches" } else { "DIFFERS" },
            verdict.mode,
            human(verdict.bytes_checked)
        );
    }
    if verdict.ok() {
        Ok(())
    } else {
        Err(Error::Mismatch {
            target: a.target.display().to_string(),
            what: format!("{} difference(s)", verdict.findings.len()),
            at: None,
        })
    }
}

/// One finding as a line: region, file, what, where, both hashes.
fn finding_line(f: &Finding) -> String {
    if f.partition.is_some()
        || f.structure.is_some()
        || f.offset_in_file.is_some()
        || f.within.is_some()
    {
        return placed_line(f);
    }
    let mut line = f.region.clone();
    if let Some(p) = &f.path {
        line += &format!(" {p}");
    }
    line += &format!(": {}", f.message);
    if let Some(o) = f.offset {
        line += &format!(" (offset {})", bytes(o));
    }
    if let (Some(e), Some(g)) = (&f.expected, &f.found) {
        line += &format!("; expected {e}, found {g}");
    }
    line
}

/// A byte finding placed through the image's map: `boot:/Image: differs at byte 40,000 of
/// the file (disk offset 1,089,576)`, `partition table: GPT header: …`.
fn placed_line(f: &Finding) -> String {
    let mut line = match (&f.partition, &f.path) {
        (Some(p), Some(path)) => format!("{p}:{path}"),
        (Some(p), None) => p.clone(),
        (None, _) => f.region.clone(),
    };
    if let Some(s) = &f.structure {
        line += &format!(": {s}");
    }
    line += &format!(": {}", f.message);
    match (f.offset, f.within) {
        (Some(o), Some(n)) => line += &format!(" (disk offsets {}..{})", bytes(o), bytes(o + n)),
        (Some(o), None) => line += &format!(" (disk offset {})", bytes(o)),
        _ => {}
    }
    // A chunk's hashes say nothing a reader can act on: the place says it all.
    if let (Some(e), Some(g), None) = (&f.expected, &f.found, f.within) {
        line += &format!("; expected {e}, found {g}");
    }
    line
}
