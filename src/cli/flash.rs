//! The `flash` and `devices` commands: turn the arguments into a request, show what the
//! library prepared, confirm, write, report. Every check is the library's (`ops::flash`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args;

use super::ImagesDir;

use skiff_flash::define::board::Board;
use skiff_flash::device::{self, DeviceInfo};
use skiff_flash::ops::cards::PerCard;
use skiff_flash::ops::flash::{
    self, BoardSource, FlashRequest, FlashSource, Outcome, Prepared, Summary,
};
use skiff_flash::ops::flashlog::{self, Entry, Written};
use skiff_flash::progress::Event;
use skiff_flash::units::{bytes, human};
use skiff_flash::{Error, Result};

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
    #[command(flatten)]
    pub(super) trusted: super::sign::TrustedKeys,
    /// For an http(s) --image: keep a checked copy here, keyed by its SHA-256, and use it
    /// for the next card while the server holds the same file.
    #[arg(long, value_name = "DIR", requires = "image")]
    pub(super) cache: Option<PathBuf>,
    /// For an http(s) --image: seconds a server may say nothing before it is given up.
    #[arg(long, value_name = "SECS", default_value_t = 30, requires = "image")]
    pub(super) timeout: u64,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub(super) yes: bool,
    /// Accept disks that are not removable, USB, SD or MMC.
    #[arg(long)]
    pub(super) allow_fixed_disk: bool,
    /// Skip reading back and comparing what was written.
    #[arg(long)]
    pub(super) no_verify: bool,
    /// Before writing, check that each card stores as much as it claims (see
    /// `check-capacity`); a counterfeit card is refused with nothing of the flash written.
    #[arg(long)]
    pub(super) check_capacity: bool,
    /// With --image onto a larger device: extend the last partition's table entry to the
    /// device's end (GPT or MBR). Its filesystem keeps its size: grow it with `resize2fs`
    /// (SkiffOS grows persist at boot).
    #[arg(long, requires = "image")]
    pub(super) grow: bool,
    /// Progress events and the final report as JSON lines.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) custom: super::custom::CustomArgs,
    /// Per-card values: a CSV with a header `device` and any of `hostname`, `ssh_key`,
    /// `wifi`, `wifi_psk_file`, `persist_file`; a row's non-empty cells replace the command
    /// line's values for that device.
    #[arg(long, value_name = "FILE.csv", conflicts_with = "image")]
    pub(super) per_card: Option<PathBuf>,
    /// Append one JSON line per card and attempt to this production log.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(super) log: Option<PathBuf>,
}

#[derive(Args)]
pub struct DevicesArgs {
    /// Also list fixed disks.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

/// `load` gives the board by name (empty: the SkiffOS config list's board).
pub fn flash(
    a: &FlashArgs,
    quiet: bool,
    load: impl Fn(&str) -> Result<Board>,
    epoch: i64,
) -> Result<()> {
    if let Some(l) = &a.log {
        // An unwritable log is refused before any card is touched.
        flashlog::append(l, &[])?;
    }
    let trusted = match a.image {
        Some(_) => a.trusted.load()?,
        None => Vec::new(),
    };
    let req = match request(a, &load, epoch, trusted) {
        Ok(r) => r,
        Err(e) => return Err(logged(a.log.as_deref(), &a.devices, &written_by(a), e)),
    };
    run(&req, a.yes, a.json, quiet, a.log.as_deref())
}

/// What a request writes, as the log names it.
fn written_by(a: &FlashArgs) -> Written {
    match &a.image {
        Some(i) => Written::Image(i.clone()),
        None => Written::Board(
            a.board
                .clone()
                .or(a.genimage.as_ref().map(|g| g.display().to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// Logs a refusal before any write as a failed attempt on every device, and returns it.
fn logged(log: Option<&Path>, devices: &[PathBuf], what: &Written, e: Error) -> Error {
    let Some(log) = log else { return e };
    let entries: Vec<_> = devices
        .iter()
        .map(|d| {
            let info = device::inspect(d).ok();
            Entry::new(d, info.as_ref(), what).with_result(Err(&e))
        })
        .collect();
    match flashlog::append(log, &entries) {
        Ok(()) => e,
        Err(l) => Error::Usage(format!("{e} (and the log: {l})")),
    }
}

/// Checks, asks unless `yes`, writes and reports one flash request; with a log, every
/// card's attempt is appended to it (refusals too).
pub(super) fn run(
    req: &FlashRequest<'_>,
    yes: bool,
    json: bool,
    quiet: bool,
    log: Option<&Path>,
) -> Result<()> {
    let what = match &req.source {
        FlashSource::Image { path, .. } => Written::Image(path.clone()),
        FlashSource::Board(b) => Written::Board(b.name.clone()),
    };
    let prepared = match flash::prepare(req) {
        Ok(p) => p,
        Err(e) => return Err(logged(log, &req.devices, &what, e)),
    };
    if let Summary::Image {
        path, signed_by, ..
    } = prepared.summary()
    {
        say_signature(path, signed_by.as_deref(), json, quiet);
    }
    if !yes {
        confirm(&prepared)?;
    }
    let what = match (prepared.summary(), what) {
        (Summary::Board { name }, Written::Board(_)) => Written::Board(name.clone()),
        (_, w) => w,
    };
    let devices: Vec<PathBuf> = prepared.devices().iter().map(|i| i.path.clone()).collect();
    let download = matches!(prepared.summary(), Summary::Image { path, .. }
        if skiff_flash::image::remote::is_url(path));
    let render = progress(json, quiet, &devices, download);
    let outcomes = prepared.write(&*render)?;
    let logged = match log {
        Some(l) => {
            let entries: Vec<_> = outcomes
                .iter()
                .zip(prepared.devices())
                .map(|(o, info)| {
                    Entry::new(&o.device, Some(info), &what)
                        .with_custom(o.custom.as_ref())
                        .with_result(o.result.as_ref())
                })
                .collect();
            flashlog::append(l, &entries)
        }
        None => Ok(()),
    };
    summarize(json, quiet, outcomes).and(logged)
}

/// One line on whether the image's signature was checked (stdout: stderr is for errors).
fn say_signature(path: &std::path::Path, signed_by: Option<&str>, json: bool, quiet: bool) {
    if json {
        out!(
            "{}",
            serde_json::json!({"event": "source", "image": path, "signed_by": signed_by})
        );
    } else if !quiet {
        match signed_by {
            Some(id) => out!(
                "{}: manifest signed by trusted key {id}; every range is checked as it is written",
                path.display()
            ),
            None => out!(
                "{}: signature not checked (no --trusted-key): written as it is",
                path.display()
            ),
        }
    }
}

fn request<'a>(
    a: &FlashArgs,
    load: &'a impl Fn(&str) -> Result<Board>,
    epoch: i64,
    trusted: Vec<skiff_flash::image::sign::PublicKey>,
) -> Result<FlashRequest<'a>> {
    if a.image.is_some() && a.custom.any() {
        return Err(Error::Usage(
            "--hostname, --ssh-key, --wifi and --persist-file customise a board's persist partition; an --image is written as it is".into(),
        ));
    }
    let source = match &a.image {
        Some(image) => FlashSource::Image {
            path: image.clone(),
            bmap: a.bmap.clone(),
            trusted,
            fetch: skiff_flash::image::remote::Options {
                timeout: std::time::Duration::from_secs(a.timeout.max(1)),
                cache: a.cache.clone(),
            },
        },
        None => {
            let shown = a.genimage.as_ref().map(|g| g.display().to_string());
            let name = a.board.clone().or(shown).unwrap_or_default();
            let asked = name.clone();
            FlashSource::Board(Box::new(BoardSource {
                load: Box::new(move || load(&asked)),
                name,
                options: a.dir.plan_options(epoch, a.seed.clone()),
                custom: a.custom.spec()?,
                per_card: a.per_card.as_deref().map(PerCard::load).transpose()?,
            }))
        }
    };
    Ok(FlashRequest {
        devices: a.devices.clone(),
        source,
        verify: !a.no_verify,
        allow_fixed: a.allow_fixed_disk,
        check_capacity: a.check_capacity,
        grow: a.grow,
    })
}

fn confirm(prepared: &Prepared) -> Result<()> {
    need_terminal()?;
    let what = match prepared.summary() {
        Summary::Board { name } => format!("board {name}"),
        Summary::Image { path, size, .. } => format!("image {} ({})", path.display(), human(*size)),
    };
    let mut err = std::io::stderr();
    let _ = writeln!(err, "About to write {what} to:");
    for i in prepared.devices() {
        let _ = writeln!(err, "{}", device_line(i));
        for p in &i.partitions {
            let _ = writeln!(err, "      {}  {}", p.name, human(p.size));
        }
    }
    ask("Everything on these devices will be destroyed. Continue? [y/N] ")
}

/// Vendor and model, as the kernel reports them ("" when neither is known).
fn model(d: &DeviceInfo) -> String {
    [d.vendor.as_deref(), d.model.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

fn device_line(i: &DeviceInfo) -> String {
    let model = model(i);
    format!(
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
    )
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

/// Renders progress events: JSON lines (one per device, phase and percent), one bar per
/// device on a terminal, or nothing.
fn progress(
    json: bool,
    quiet: bool,
    devices: &[PathBuf],
    download: bool,
) -> Box<dyn Fn(&Event) + Sync> {
    if json {
        let last = Mutex::new(std::collections::HashMap::<PathBuf, (&str, u64)>::new());
        return Box::new(move |p: &Event| {
            let pct = p.done * 100 / p.total.max(1);
            let mut seen = last.lock().unwrap_or_else(|e| e.into_inner());
            let key = (p.phase.as_str(), pct);
            let device = p.device.clone().unwrap_or_default();
            if seen.get(&device) != Some(&key) {
                seen.insert(device, key);
                out!(
                    "{}",
                    serde_json::json!({"event": "progress", "device": p.device, "phase": p.phase, "done": p.done, "total": p.total})
                );
            }
        });
    }
    if quiet || !std::io::stderr().is_terminal() {
        return Box::new(|_: &Event| {});
    }
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>14} {msg:7} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    // The download (an image from a URL) has its own bar, keyed by no device.
    let rows: Vec<Option<&PathBuf>> = download
        .then_some(None)
        .into_iter()
        .chain(devices.iter().map(Some))
        .collect();
    let bars: Vec<(Option<PathBuf>, indicatif::ProgressBar)> = rows
        .into_iter()
        .map(|d| {
            let b = multi.add(indicatif::ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(d.map_or("download".into(), |d| d.display().to_string()));
            (d.cloned(), b)
        })
        .collect();
    Box::new(move |p: &Event| {
        if let Some((_, b)) = bars.iter().find(|(d, _)| d.as_ref() == p.device.as_ref()) {
            b.set_message(p.phase.as_str());
            b.set_length(p.total);
            b.set_position(p.done);
        }
    })
}

fn summarize(json: bool, quiet: bool, outcomes: Vec<Outcome>) -> Result<()> {
    let count = outcomes.len();
    let mut failed = Vec::new();
    // Refused devices alone (busy, changed) are bad input: exit 2 unless a write failed.
    let mut refused_only = true;
    for Outcome {
        device,
        result,
        custom,
    } in outcomes
    {
        match result {
            Ok(rep) if json => out!(
                "{}",
                serde_json::json!({"event": "done", "ok": true, "report": rep, "custom": custom})
            ),
            Ok(rep) if !quiet => out!(
                "{}: wrote {} in {:.1} s{}",
                rep.device.display(),
                human(rep.bytes_written),
                rep.seconds,
                if rep.verified { ", verified" } else { "" }
            ),
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                if json {
                    out!(
                        "{}",
                        serde_json::json!({"event": "done", "ok": false, "device": device, "error": msg})
                    );
                }
                refused_only &= e.exit_code() == 2;
                failed.push(format!("{}: {msg}", device.display()));
            }
        }
    }
    match failed.len() {
        0 => Ok(()),
        n if refused_only => Err(Error::Usage(format!(
            "{}: {n} of {count} devices refused",
            failed.join("; "),
        ))),
        n => Err(Error::io(
            failed.join("; "),
            std::io::Error::other(format!("{n} of {count} devices failed")),
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
        out!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    if list.is_empty() {
        out!("no removable disks found (use --all to list fixed disks too)");
    }
    for d in &list {
        let model = model(d);
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
        out!(
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
