//! The `verify` and `inspect` commands.

use std::path::PathBuf;

use clap::Args;

use super::ImagesDir;

use skiff_flash::define::board::Board;
use skiff_flash::image::manifest;
use skiff_flash::ops::inspect as insp;
use skiff_flash::ops::verify::{self, Verdict};
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
    /// Compare bytes with this image (.img, .img.zst, .gz, .xz) over its mapped ranges.
    #[arg(long, value_name = "FILE", conflicts_with = "manifest")]
    image: Option<PathBuf>,
    /// Block map for --image (default: IMAGE.bmap beside it, if present).
    #[arg(long, value_name = "FILE", requires = "image")]
    bmap: Option<PathBuf>,
    /// Compare bytes with the mapped ranges recorded in this manifest.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Device or image file.
    target: PathBuf,
    #[arg(long)]
    json: bool,
}

fn open(target: &std::path::Path) -> Result<std::fs::File> {
    std::fs::File::open(target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Usage(format!("{} does not exist", target.display()))
        } else {
            Error::io(format!("opening {}", target.display()), e)
        }
    })
}

pub fn verify(a: &VerifyArgs, load: impl Fn(&str) -> Result<Board>, epoch: i64) -> Result<()> {
    let dev = open(&a.target)?;
    // Inside SkiffOS, with nothing else to compare with, the config list's board.
    let by_board =
        a.board.is_some() || (a.image.is_none() && a.manifest.is_none() && a.dir.skiff().active());
    let verdict: Verdict = if by_board {
        let board = load(a.board.as_deref().unwrap_or_default())?;
        let plan = plan::make(&board, &a.dir.plan_options(epoch, a.seed.clone()))?;
        verify::meaning(&dev, &plan)
    } else if let Some(image) = &a.image {
        skiff_flash::image::read::check_image_file(image)?;
        let bmap = skiff_flash::image::bmap::find(image, a.bmap.as_deref());
        verify::bytes_image(&dev, image, bmap.as_deref())?
    } else if let Some(m) = &a.manifest {
        verify::bytes_manifest(&dev, &manifest::load(m)?)
    } else {
        return Err(Error::Usage(
            "give --board, --image or --manifest to compare with".into(),
        ));
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict).unwrap_or_default()
        );
    } else {
        for f in &verdict.findings {
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
            println!("{line}");
        }
        println!(
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

pub fn inspect(a: &InspectArgs) -> Result<()> {
    let dev = open(&a.target)?;
    let i = insp::inspect(&dev);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
        return Ok(());
    }
    let table = match &i.table {
        insp::Table::Gpt {
            disk_guid,
            primary_ok,
            backup_ok,
            hybrid,
        } => format!(
            "GPT {disk_guid} (primary {}, backup {}{})",
            if *primary_ok { "ok" } else { "BAD" },
            if *backup_ok { "ok" } else { "BAD" },
            if *hybrid { ", hybrid MBR" } else { "" }
        ),
        insp::Table::Mbr { disk_id } => format!("MBR, disk id 0x{disk_id}"),
        insp::Table::None => "no partition table".into(),
    };
    println!(
        "{}: {} bytes ({}), {table}",
        a.target.display(),
        bytes(i.size),
        human(i.size)
    );
    for p in &i.partitions {
        println!(
            "{:>2}  start {:>14}  size {:>10}  {:<9} {:<9} {:<10} {}{}",
            p.number,
            bytes(p.start),
            human(p.size),
            p.kind,
            p.fs.kind,
            p.fs.label.clone().unwrap_or_default(),
            p.fs.uuid.clone().unwrap_or_default(),
            if p.bootable { "  bootable" } else { "" }
        );
        for f in p.fs.files.iter().flatten() {
            println!(
                "      {:>12}  {}{}",
                if f.dir { "dir".into() } else { bytes(f.size) },
                f.path,
                if f.dir { "/" } else { "" }
            );
        }
    }
    for pr in &i.problems {
        println!("problem: {pr}");
    }
    Ok(())
}
