//! The `upgrade` command: arguments to a request, the plan shown (and asked about on a
//! device), applied, reported as text or JSON. The upgrade itself is `ops::upgrade`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::ImagesDir;
use skiff_flash::ops::flash::{BoardSource, FlashRequest, FlashSource};

use skiff_flash::define::board::Board;
use skiff_flash::image::release::Release;
use skiff_flash::ops::upgrade::{
    self, Action, Change, NewBuild, PartitionReport, UpgradeReport, UpgradeRequest,
};
use skiff_flash::units::human;
use skiff_flash::{Error, Result};

use super::render;

#[derive(Args)]
pub struct UpgradeArgs {
    /// The installed card (a whole-disk device) or a raw .img file.
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// The board the card was flashed with (default inside SkiffOS: the board of the
    /// config list).
    #[arg(short, long)]
    board: Option<String>,
    #[command(flatten)]
    pub(super) dir: ImagesDir,
    /// Take the new build from this release image (.img, .img.zst, .gz, .xz) instead of an
    /// images directory; the board is the one its manifest names (or --board).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["images", "skiff_conf"])]
    image: Option<PathBuf>,
    /// Keep a file or directory that is not in the build: `PATH` in the boot partition or
    /// `PARTITION:PATH` (`rootfs:/extra`); `*` and `?` match within a name. Repeatable.
    #[arg(long, value_name = "PATH")]
    keep: Vec<String>,
    /// Replace config.txt / cmdline.txt / usercfg.txt even when edited on the card.
    #[arg(long)]
    force_config: bool,
    /// Show what would change; write nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Start over instead: a full flash of the board (erases persist).
    #[arg(long, conflicts_with_all = ["dry_run", "keep", "force_config", "allow_unsafe_boot"])]
    reformat: bool,
    /// Also rewrite a boot partition that is ext4 (odroid/m1's layout): not power-safe.
    #[arg(long)]
    allow_unsafe_boot: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    yes: bool,
    /// Accept disks that are not removable, USB, SD or MMC.
    #[arg(long)]
    allow_fixed_disk: bool,
    /// Skip reading back what was written (devices; images are not read back).
    #[arg(long)]
    no_verify: bool,
    /// With --image: its manifest must be signed by this key (file or one-line key);
    /// repeatable. Every mapped range of the image is checked against it as it is read,
    /// before anything is written.
    #[command(flatten)]
    trusted: super::sign::TrustedKeys,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn upgrade(
    a: &UpgradeArgs,
    quiet: bool,
    verbose: u8,
    load: impl Fn(&str) -> Result<Board>,
    epoch: i64,
) -> Result<()> {
    if a.reformat {
        return reformat(a, quiet, load, epoch);
    }
    let started = Instant::now();
    let board = load(&board_name(a)?)?;
    let mut plan = upgrade::plan(&request(a, board, epoch)?)?;
    let out = Output {
        a,
        quiet,
        verbose,
        started,
    };
    if a.dry_run {
        plan.count_writes()?;
        return out.print(plan.report());
    }
    // Images are written without asking; a device's plan is shown first.
    if plan.on_device() && !a.yes {
        if plan.count_writes()?.writes == 0 {
            // Nothing to write: the plan is the result.
            let done = UpgradeReport {
                dry_run: false,
                ..plan.report().clone()
            };
            return out.print(&done);
        }
        confirm(a, plan.report())?;
    }
    let report = plan.apply()?;
    out.print(&report)
}

/// The board asked for: `--board`; with `--image`, the one its manifest names (which
/// `--board` must agree with); else empty (the SkiffOS config list's, when there is one).
fn board_name(a: &UpgradeArgs) -> Result<String> {
    let given = a.board.clone();
    let Some(image) = &a.image else {
        return Ok(given.unwrap_or_default());
    };
    let built = Release::manifest_of(image)?.map(|m| m.board);
    match (given, built) {
        (Some(g), Some(b)) if g != b => Err(Error::Usage(format!(
            "--board {g}, but {} is a build of board {b} (its manifest says)",
            image.display()
        ))),
        (Some(g), _) => Ok(g),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(Error::Usage(format!(
            "give --board: {} has no manifest beside it to name its board",
            image.display()
        ))),
    }
}

fn request(a: &UpgradeArgs, board: Board, epoch: i64) -> Result<UpgradeRequest> {
    let build = match &a.image {
        Some(image) => NewBuild::Release {
            path: image.clone(),
            trusted: a.trusted.load()?,
        },
        None => NewBuild::Images {
            images: a.dir.images(),
            configs: a.dir.skiff().dirs.clone(),
        },
    };
    Ok(UpgradeRequest {
        target: a.target.clone(),
        board,
        build,
        epoch,
        keep: a.keep.clone(),
        force_config: a.force_config,
        allow_unsafe_boot: a.allow_unsafe_boot,
        allow_fixed_disk: a.allow_fixed_disk,
        dry_run: a.dry_run,
        verify: !a.no_verify,
    })
}

/// `--reformat`: a full flash of the board to the target, built from the upgrade's
/// arguments.
fn reformat(
    a: &UpgradeArgs,
    quiet: bool,
    load: impl Fn(&str) -> Result<Board>,
    epoch: i64,
) -> Result<()> {
    let load = &load;
    let source = match &a.image {
        // The image is written as it is: its own bmap, beside it, when there is one.
        Some(path) => FlashSource::Image {
            path: path.clone(),
            bmap: None,
            trusted: a.trusted.load()?,
            fetch: skiff_flash::image::remote::Options {
                timeout: skiff_flash::image::remote::DEFAULT_TIMEOUT,
                cache: None,
            },
        },
        None => {
            let name = a.board.clone().unwrap_or_default();
            let asked = name.clone();
            FlashSource::Board(Box::new(BoardSource {
                load: Box::new(move || load(&asked)),
                name,
                options: a.dir.plan_options(epoch, None),
                custom: Default::default(),
                per_card: None,
            }))
        }
    };
    let request = FlashRequest {
        devices: vec![a.target.clone()],
        source,
        verify: true,
        allow_fixed: a.allow_fixed_disk,
        check_capacity: false,
        grow: false,
    };
    super::flash::run(&request, a.yes, a.json, quiet, None)
}

fn confirm(a: &UpgradeArgs, r: &UpgradeReport) -> Result<()> {
    super::flash::need_terminal()?;
    eprint!("{}", text(r, 0));
    super::flash::ask(&format!(
        "Upgrade {} in place as shown (persist is not touched)? [y/N] ",
        a.target.display()
    ))
}

/// How and where a report is printed.
struct Output<'a> {
    a: &'a UpgradeArgs,
    quiet: bool,
    verbose: u8,
    started: Instant,
}

impl Output<'_> {
    fn print(&self, r: &UpgradeReport) -> Result<()> {
        let secs = self.started.elapsed().as_secs_f64();
        if self.a.json {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["seconds"] = serde_json::json!(secs);
            out!("{}", render::json(&v));
        } else if !self.quiet {
            out_raw!("{}", text(r, self.verbose));
            out!(
                "{} {} in {} writes{}, {secs:.1} s",
                if r.dry_run { "would write" } else { "wrote" },
                human(r.bytes_written),
                r.writes,
                if r.verified {
                    ", read back and verified"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }
}

/// The report as text: the partitions, the files (unchanged ones only with `verbose`),
/// the notes.
fn text(r: &UpgradeReport, verbose: u8) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}{} (board {}):",
        if r.dry_run { "dry run: " } else { "" },
        r.target.display(),
        r.board
    );
    for p in &r.partitions {
        let _ = writeln!(o, "{}", partition_line(p));
    }
    let mut unchanged = (0usize, 0u64);
    for c in &r.changes {
        if c.action == Action::Unchanged {
            unchanged.0 += 1;
            unchanged.1 += c.new_size.unwrap_or(0);
            if verbose == 0 {
                continue;
            }
        }
        let _ = writeln!(o, "{}", change_line(c));
    }
    let _ = writeln!(
        o,
        "  {} files unchanged ({})",
        unchanged.0,
        human(unchanged.1)
    );
    for n in &r.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    o
}

fn partition_line(p: &PartitionReport) -> String {
    let room = match (p.needs, p.free) {
        (Some(n), Some(f)) if n > 0 => format!("  new set {} of {} free", human(n), human(f)),
        _ => String::new(),
    };
    format!(
        "  partition {} {:<8} {:<10}{room}{}",
        p.number,
        p.id,
        p.outcome,
        p.note
            .as_deref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default()
    )
}

fn change_line(c: &Change) -> String {
    let size = |s: Option<u64>| s.map(human).unwrap_or_default();
    let (mark, what) = match c.action {
        Action::Added => ("+", format!("added     {} ({})", c.path, size(c.new_size))),
        Action::Replaced => (
            "~",
            format!(
                "replaced  {} ({} -> {})",
                c.path,
                size(c.old_size),
                size(c.new_size)
            ),
        ),
        Action::Removed => ("-", format!("removed   {} ({})", c.path, size(c.old_size))),
        Action::Kept => ("=", format!("kept      {} ({})", c.path, size(c.old_size))),
        Action::Unchanged => (" ", format!("unchanged {} ({})", c.path, size(c.new_size))),
    };
    let note = c
        .note
        .as_deref()
        .map(|n| format!(": {n}"))
        .unwrap_or_default();
    format!("  {mark} {}:{what}{note}", c.partition)
}
