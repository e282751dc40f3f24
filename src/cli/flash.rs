//! The `flash` and `devices` commands: pick and check devices, confirm, write, report.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;

use super::ImagesDir;

use skiff_flash::define::board::Board;
use skiff_flash::device::{self, DeviceInfo, SafetyPolicy};
use skiff_flash::image::bmap::Bmap;
use skiff_flash::image::read::ImageSource;
use skiff_flash::ops::flash::{self, OnProgress, Progress, Report};
use skiff_flash::units::{bytes, human};
use skiff_flash::{Error, Result, plan};

#[derive(Args)]
pub struct FlashArgs {
    /// Whole-disk devices to write (several are written in parallel).
    #[arg(required = true, value_name = "DEVICE")]
    pub(super) devices: Vec<PathBuf>,
    /// Compose this board straight onto the device (default inside SkiffOS: the board of
    /// the config list).
    #[arg(short, long, conflicts_with_all = ["image", "genimage"])]
    pub(super) board: Option<String>,
    /// Compose the disk of this genimage config instead of a board.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub(super) genimage: Option<PathBuf>,
    /// genimage's rootpath (with --genimage; default: empty).
    #[arg(long, value_name = "DIR", requires = "genimage")]
    pub(super) rootpath: Option<PathBuf>,
    /// Fill a template variable of the genimage config (`%NAME%` or `NAME_TMP`) before it is
    /// read; repeatable.
    #[arg(long = "define", value_name = "NAME=VALUE", requires = "genimage", value_parser = super::define_arg)]
    pub(super) defines: Vec<(String, String)>,
    #[command(flatten)]
    pub(super) dir: ImagesDir,
    /// Seed for identifiers (with --board; default: the board name).
    #[arg(long)]
    pub(super) seed: Option<String>,
    /// Write a built image instead (.img, .img.zst, .img.gz, .img.xz).
    #[arg(long, value_name = "FILE")]
    pub(super) image: Option<PathBuf>,
    /// Block map of the image (default: IMAGE.bmap beside it, if present).
    #[arg(long, value_name = "FILE", requires = "image")]
    pub(super) bmap: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub(super) yes: bool,
    /// Accept disks that are not removable, USB, SD or MMC.
    #[arg(long)]
    pub(super) allow_fixed_disk: bool,
    /// Skip reading back and comparing what was written.
    #[arg(long)]
    pub(super) no_verify: bool,
    /// Progress events and the final report as JSON lines.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub struct DevicesArgs {
    /// Also list fixed disks.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

/// What will be written: per-device plans for a board, or one image.
enum Source {
    Board(Vec<plan::Plan>),
    Image {
        path: PathBuf,
        bmap: Option<Bmap>,
        size: u64,
    },
}

pub fn flash(
    a: &FlashArgs,
    quiet: bool,
    load: impl Fn(&str) -> Result<Board>,
    epoch: i64,
) -> Result<()> {
    // Everything that can refuse happens before any device is opened for writing.
    let infos = a
        .devices
        .iter()
        .map(|d| device::inspect(d))
        .collect::<Result<Vec<_>>>()?;
    for (i, info) in infos.iter().enumerate() {
        if infos[..i]
            .iter()
            .any(|o| o.major == info.major && o.minor == info.minor)
        {
            return Err(Error::Usage(format!(
                "{} is named twice",
                info.path.display()
            )));
        }
    }
    let (source, min_size, what) = source(a, &infos, load, epoch)?;
    let policy = SafetyPolicy {
        allow_fixed: a.allow_fixed_disk,
        min_size,
    };
    for info in &infos {
        device::check(info, &policy)?;
    }
    if !a.yes {
        confirm(&infos, &what)?;
    }
    // From here on a signal stops the writers, which wipe the table areas before exiting.
    skiff_flash::signals::install_interrupt_flag()
        .map_err(|e| Error::io("installing the signal handlers", e))?;
    let cb = progress(a.json, quiet, &infos);
    let results: Vec<Result<Report>> = match source {
        Source::Board(plans) => std::thread::scope(|s| {
            let handles: Vec<_> = infos
                .iter()
                .zip(&plans)
                .map(|(info, plan)| {
                    let cb = cb.clone();
                    s.spawn(move || flash::flash_plan(info, plan, !a.no_verify, &cb))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Internal("a device thread panicked".into())))
                })
                .collect()
        }),
        Source::Image { path, bmap, size } => {
            flash::flash_image(&infos, &path, bmap, size, !a.no_verify, cb.clone())
        }
    };
    summarize(a, quiet, &infos, results)
}

fn source(
    a: &FlashArgs,
    infos: &[DeviceInfo],
    load: impl Fn(&str) -> Result<Board>,
    epoch: i64,
) -> Result<(Source, u64, String)> {
    if let Some(image) = &a.image {
        let ImageSource { bmap, size, .. } = ImageSource::open(image, a.bmap.as_deref())?;
        let what = format!("image {} ({})", image.display(), human(size));
        return Ok((
            Source::Image {
                path: image.clone(),
                bmap,
                size,
            },
            size,
            what,
        ));
    }
    let shown = a.genimage.as_ref().map(|g| g.display().to_string());
    // Without --board or --genimage, `load` takes the SkiffOS config list's board.
    let name = a.board.as_deref().or(shown.as_deref()).unwrap_or_default();
    let board = load(name)?;
    let name = if name.is_empty() { &board.name } else { name };
    let base = a.dir.plan_options(epoch, a.seed.clone());
    let opts = |size| plan::Options {
        size,
        ..base.clone()
    };
    let min = plan::make(&board, &opts(None))?.disk_size;
    let mut plans = Vec::new();
    for info in infos {
        if info.size >= min {
            plans.push(plan::make(&board, &opts(Some(info.size)))?);
        }
    }
    Ok((Source::Board(plans), min, format!("board {name}")))
}

fn confirm(infos: &[DeviceInfo], what: &str) -> Result<()> {
    need_terminal()?;
    let mut err = std::io::stderr();
    let _ = writeln!(err, "About to write {what} to:");
    for i in infos {
        let model = [i.vendor.as_deref(), i.model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            err,
            "  {}  {}  {} ({} bytes)  {}",
            i.path.display(),
            if model.is_empty() {
                "(no model)"
            } else {
                &model
            },
            human(i.size),
            bytes(i.size),
            i.transport
        );
        for p in &i.partitions {
            let _ = writeln!(err, "      {}  {}", p.name, human(p.size));
        }
    }
    ask("Everything on these devices will be destroyed. Continue? [y/N] ")
}

/// Asks a yes/no question on the terminal; anything but yes is an error.
pub(super) fn ask(question: &str) -> Result<()> {
    let mut err = std::io::stderr();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the answer", e))?;
    match line.trim().to_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Error::Usage("not confirmed; nothing was written".into())),
    }
}

/// Refuses to go on without a terminal to ask on.
pub(super) fn need_terminal() -> Result<()> {
    if std::io::stdin().is_terminal() {
        Ok(())
    } else {
        Err(Error::Usage(
            "refusing to write without confirmation: no terminal to ask on; pass --yes".into(),
        ))
    }
}

fn progress(json: bool, quiet: bool, infos: &[DeviceInfo]) -> OnProgress {
    if json {
        let last = Mutex::new(std::collections::HashMap::<PathBuf, (String, u64)>::new());
        return Arc::new(move |p: Progress| {
            let pct = p.done * 100 / p.total.max(1);
            let mut seen = last.lock().unwrap_or_else(|e| e.into_inner());
            let key = (p.phase.to_string(), pct);
            if seen.get(&p.device) != Some(&key) {
                seen.insert(p.device.clone(), key);
                println!(
                    "{}",
                    serde_json::json!({"event": "progress", "device": p.device, "phase": p.phase, "done": p.done, "total": p.total})
                );
            }
        });
    }
    if quiet || !std::io::stderr().is_terminal() {
        return Arc::new(|_| {});
    }
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>14} {msg:7} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bars: Vec<(PathBuf, indicatif::ProgressBar)> = infos
        .iter()
        .map(|i| {
            let b = multi.add(indicatif::ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(i.path.display().to_string());
            (i.path.clone(), b)
        })
        .collect();
    Arc::new(move |p: Progress| {
        if let Some((_, b)) = bars.iter().find(|(d, _)| *d == p.device) {
            b.set_message(p.phase);
            b.set_length(p.total);
            b.set_position(p.done);
        }
    })
}

fn summarize(
    a: &FlashArgs,
    quiet: bool,
    infos: &[DeviceInfo],
    results: Vec<Result<Report>>,
) -> Result<()> {
    let mut failed = Vec::new();
    // Refused devices alone (busy, changed) are bad input: exit 2 unless a write failed.
    let mut refused_only = true;
    for (info, r) in infos.iter().zip(results) {
        match r {
            Ok(rep) if a.json => println!(
                "{}",
                serde_json::json!({"event": "done", "ok": true, "report": rep})
            ),
            Ok(rep) if !quiet => println!(
                "{}: wrote {} in {:.1} s{}",
                rep.device.display(),
                human(rep.bytes_written),
                rep.seconds,
                if rep.verified { ", verified" } else { "" }
            ),
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "done", "ok": false, "device": info.path, "error": msg})
                    );
                }
                refused_only &= e.exit_code() == 2;
                failed.push(format!("{}: {msg}", info.path.display()));
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        n if refused_only => Err(Error::Usage(format!(
            "{}: {n} of {} devices refused",
            failed.join("; "),
            infos.len()
        ))),
        _ => Err(Error::io(
            failed.join("; "),
            std::io::Error::other(format!(
                "{} of {} devices failed",
                failed.len(),
                infos.len()
            )),
        )),
    }
}

pub fn devices(a: &DevicesArgs) -> Result<()> {
    let list: Vec<DeviceInfo> = device::list()?
        .into_iter()
        .filter(|d| a.all || d.is_card_like())
        .filter(|d| d.size > 0)
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    if list.is_empty() {
        println!("no removable disks found (use --all to list fixed disks too)");
    }
    for d in &list {
        let model = [d.vendor.as_deref(), d.model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let mounted: Vec<String> = d
            .mountpoints
            .iter()
            .cloned()
            .chain(
                d.partitions
                    .iter()
                    .flat_map(|p| p.mountpoints.iter().cloned()),
            )
            .collect();
        println!(
            "{:<16} {:>10}  {:<6} {:<28} {} partitions{}{}",
            d.path.display(),
            human(d.size),
            d.transport.to_string(),
            if model.is_empty() {
                "-".to_string()
            } else {
                model
            },
            d.partitions.len(),
            if mounted.is_empty() {
                String::new()
            } else {
                format!(", mounted at {}", mounted.join(" "))
            },
            if d.is_system { ", SYSTEM DISK" } else { "" }
        );
    }
    Ok(())
}
