//! The `upgrade` command: check the card, show or make the in-place upgrade, report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::ImagesDir;

use skiff_flash::define::board::Board;
use skiff_flash::device::{self, SafetyPolicy};
use skiff_flash::ops::upgrade::{self, Action, Report, disk::Disk};
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
        let f = super::flash::FlashArgs {
            devices: vec![a.target.clone()],
            board: a.board.clone(),
            genimage: None,
            rootpath: None,
            defines: Vec::new(),
            dir: a.dir.clone(),
            seed: None,
            image: None,
            bmap: None,
            yes: a.yes,
            allow_fixed_disk: a.allow_fixed_disk,
            no_verify: false,
            json: a.json,
        };
        return super::flash::flash(&f, quiet, load, epoch);
    }
    let started = Instant::now();
    let board = load(a.board.as_deref().unwrap_or_default())?;
    let opts = upgrade::Options {
        images: a.dir.images(),
        configs: a.dir.skiff().dirs.clone(),
        epoch,
        keep: a.keep.clone(),
        force_config: a.force_config,
        allow_unsafe_boot: a.allow_unsafe_boot,
    };
    let meta = std::fs::metadata(&a.target)
        .map_err(|e| Error::Usage(format!("{}: {e}", a.target.display())))?;
    let (mut disk, device) = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        let info = device::inspect(&a.target)?;
        device::check(
            &info,
            &SafetyPolicy {
                allow_fixed: a.allow_fixed_disk,
                min_size: 0,
            },
        )?;
        if a.dry_run {
            let file = std::fs::File::open(&a.target)
                .map_err(|e| Error::io(format!("opening {}", a.target.display()), e))?;
            (
                Disk::new(file, &a.target, info.size, true),
                Some((info, None)),
            )
        } else {
            let dev = device::Device::open_exclusive(&info)?;
            dev.drop_caches()?;
            let mut disk = Disk::new(dev.try_clone_file()?, &a.target, info.size, false);
            if !a.no_verify {
                disk.track_writes();
            }
            (disk, Some((info, Some(dev))))
        }
    } else if meta.is_file() {
        let name = a.target.to_string_lossy();
        if [".zst", ".gz", ".xz", ".bz2"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            return Err(Error::Usage(format!(
                "{}: a compressed image cannot be edited in place; decompress it first",
                a.target.display()
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!a.dry_run)
            .open(&a.target)
            .map_err(|e| Error::io(format!("opening {}", a.target.display()), e))?;
        (Disk::new(file, &a.target, meta.len(), a.dry_run), None)
    } else {
        return Err(Error::Usage(format!(
            "{}: neither a block device nor an image file",
            a.target.display()
        )));
    };
    if a.dry_run {
        let report = upgrade::upgrade(&mut disk, &board, &opts, true)?;
        return print(a, quiet, verbose, &report, started, false);
    }
    if device.is_some() && !a.yes {
        // Decide everything (writing nothing), show it, ask.
        disk.set_dry(true);
        let mut preview = upgrade::upgrade(&mut disk, &board, &opts, true)?;
        if preview.writes == 0 {
            // Nothing to write: this is the real run's result.
            preview.dry_run = false;
            return print(a, quiet, verbose, &preview, started, false);
        }
        confirm(a, &preview)?;
        disk.set_dry(false);
    }
    let report = upgrade::upgrade(&mut disk, &board, &opts, false)?;
    let mut verified = false;
    if let Some((info, dev)) = device {
        if let Some(dev) = dev.filter(|_| !a.no_verify) {
            read_back(&dev, &disk)?;
            verified = true;
        }
        drop(disk);
        device::drop_partition_caches(&info);
    }
    print(a, quiet, verbose, &report, started, verified)
}

/// Reads the writes back from the medium (O_DIRECT, past the page cache) and compares:
/// the last write to each place (an earlier one that a later one overlaps is not expected
/// to read back).
fn read_back(dev: &device::Device, disk: &Disk) -> Result<()> {
    use sha2::Digest;
    // Disjoint ranges already checked (later writes), start -> end.
    let mut later: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for (offset, len, want) in disk.tracked().iter().rev() {
        let end = offset + len;
        // The range starting last before `end` is the only one that can overlap.
        if later
            .range(..end)
            .next_back()
            .is_some_and(|(_, e)| e > offset)
        {
            continue;
        }
        later.insert(*offset, end);
        let got = dev.read_direct(*offset, *len as usize)?;
        if sha2::Sha256::digest(&got)[..] != want[..] {
            return Err(Error::io(
                format!("reading back {} at byte {offset}", dev.path().display()),
                std::io::Error::other(format!(
                    "the {len} bytes written there read back differently: the card may be failing or smaller than it claims"
                )),
            ));
        }
    }
    Ok(())
}

fn confirm(a: &UpgradeArgs, r: &Report) -> Result<()> {
    super::flash::need_terminal()?;
    eprint!("{}", text(r, 0));
    super::flash::ask(&format!(
        "Upgrade {} in place as shown (persist is not touched)? [y/N] ",
        a.target.display()
    ))
}

fn print(
    a: &UpgradeArgs,
    quiet: bool,
    verbose: u8,
    r: &Report,
    started: Instant,
    verified: bool,
) -> Result<()> {
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["seconds"] = serde_json::json!(secs);
        v["verified"] = serde_json::json!(verified);
        println!("{}", render::json(&v));
    } else if !quiet {
        print!("{}", text(r, verbose));
        println!(
            "{} {} in {} writes{}, {secs:.1} s",
            if r.dry_run { "would write" } else { "wrote" },
            human(r.bytes_written),
            r.writes,
            if verified {
                ", read back and verified"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn text(r: &Report, verbose: u8) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}{} (board {}):",
        if r.dry_run { "dry run: " } else { "" },
        r.target.display(),
        r.board
    );
    for p in &r.partitions {
        let room = match (p.needs, p.free) {
            (Some(n), Some(f)) if n > 0 => format!("  new set {} of {} free", human(n), human(f)),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  partition {} {:<8} {:<10}{room}{}",
            p.number,
            p.id,
            p.outcome,
            p.note
                .as_deref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
    }
    let mut unchanged = (0usize, 0u64);
    for c in &r.changes {
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
            Action::Unchanged => {
                unchanged.0 += 1;
                unchanged.1 += c.new_size.unwrap_or(0);
                if verbose == 0 {
                    continue;
                }
                (" ", format!("unchanged {} ({})", c.path, size(c.new_size)))
            }
        };
        let note = c
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        let _ = writeln!(o, "  {mark} {}:{what}{note}", c.partition);
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
