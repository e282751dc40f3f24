//! The `backup` command: parse, back up, report. What is copied is the library's
//! (`ops::backup`).

use std::path::PathBuf;

use clap::Args;

use skiff_flash::Result;
use skiff_flash::image::file::Format;
use skiff_flash::ops::backup::{self, Copied};
use skiff_flash::units::human;

#[derive(Args)]
pub struct BackupArgs {
    /// Whole-disk device to back up (nothing on it may be mounted).
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// Image file to write: `.img` (sparse), `.img.zst`, `.img.gz` or `.img.xz`; its bmap
    /// and manifest are written beside it.
    #[arg(value_name = "OUTPUT")]
    output: PathBuf,
    /// Compression level (zstd 1-22, default 3; gzip/xz 0-9, default 6).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=22))]
    level: Option<i32>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn backup(a: &BackupArgs, quiet: bool) -> Result<()> {
    let format = Format::from_path(&a.output, a.level)?;
    skiff_flash::image::output::cleanup_on_signals()?;
    let bar = super::file_bar(
        quiet || a.json,
        format!("backing up {}", a.device.display()),
    );
    let progress = |e: &skiff_flash::progress::Event| {
        bar.set_length(e.total);
        bar.set_position(e.done);
    };
    let result = backup::backup(&a.device, &a.output, format, &progress);
    bar.finish_and_clear();
    let report = result?;
    if a.json {
        out!("{}", super::render::json(&report));
        return Ok(());
    }
    for p in &report.manifest.partitions {
        if let Copied::Whole { why } = &p.copied
            && !quiet
        {
            eprintln!(
                "skiff-flash: note: partition {} copied whole ({}): {why}",
                p.number,
                human(p.size)
            );
        }
    }
    if !quiet {
        out!(
            "{}: {} of the {} card copied, {} file, {:.1} s",
            report.output.display(),
            human(report.copied),
            human(report.disk_size),
            human(report.file_size),
            report.seconds
        );
        for p in &report.manifest.partitions {
            let how = match &p.copied {
                Copied::Used => "used",
                Copied::Whole { .. } => "whole",
            };
            out!(
                "  partition {}  {:<8} {:>10} of {:>10}  ({how})",
                p.number,
                p.fs,
                human(p.bytes),
                human(p.size)
            );
        }
    }
    Ok(())
}
