//! Command-line interface: argument parsing, rendering (tables or `--json`) and exit codes.
//! Thin by design: every decision is the library's.

/// `println!` for command output that does not panic when stdout is gone (a closed pipe:
/// `skiff-flash inspect /dev/sdb | head -1`): what cannot be written is dropped and the
/// command finishes as it would have.
macro_rules! out {
    () => {
        $crate::cli::emit(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::emit(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` likewise.
macro_rules! out_raw {
    ($($t:tt)*) => {
        $crate::cli::emit(format_args!($($t)*))
    };
}

mod backup;
mod capacity;
mod custom;
mod flash;
mod inspect;
mod render;
mod sign;
mod upgrade;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use skiff_flash::define::board::Catalog;
use skiff_flash::define::skiffos;
use skiff_flash::image::file::Format;
use skiff_flash::units::parse_size;
use skiff_flash::{Error, Result, plan};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  an operation failed (I/O error, verification mismatch)
  2  bad usage or bad input (unknown board, missing or corrupt artifact, does not fit),
     or a refusal (output is a device or an input, busy device, bmap of another image)
  128+N  a build stopped by signal N, its unfinished outputs removed";

#[derive(Parser)]
#[command(
    name = "skiff-flash",
    version,
    about = "Compose board-ready SD/eMMC images from Buildroot output, natively and without root",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Extra directories holding boards/ and layouts/ (searched before the built-in ones).
    #[arg(
        long = "board-dir",
        global = true,
        env = "SKIFF_FLASH_BOARD_PATH",
        value_delimiter = ':',
        value_name = "DIR"
    )]
    board_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show where every partition and file would go, without writing anything.
    #[command(after_help = "Examples:
  skiff-flash plan --board pi/4 --images fixtures/pi4/images
  skiff-flash plan --board pi/4 --images output/images --size 8GiB --json
  skiff-flash plan --genimage board/raspberrypi/genimage.cfg --images output/images")]
    Plan(PlanArgs),
    /// Build a disk image file.
    #[command(after_help = "Examples:
  skiff-flash build --board pi/4 --images fixtures/pi4/images --output pi4.img
  SOURCE_DATE_EPOCH=1700000000 skiff-flash build --board pi/4 --output pi4.img --size 2GiB
  skiff-flash build --board pi/4 --output skiffos-pi4.img.zst --bmap --checksums
  skiff-flash build --genimage board/acme/genimage.cfg --images \"$BINARIES_DIR\" -o sdcard.img
  skiff-flash build --board pi/4 -o lab.img --hostname lab-pi --ssh-key ops.pub")]
    Build(BuildArgs),
    /// List the known boards, or show one board's resolved definition.
    #[command(after_help = "Examples:
  skiff-flash boards
  skiff-flash boards --json
  skiff-flash boards show pi/4")]
    Boards(BoardsArgs),
    /// Write a board or a built image to SD cards / eMMC (the default command).
    #[command(after_help = "Examples:
  skiff-flash /dev/sdb --board pi/4                     # flash is the default command
  skiff-flash flash /dev/sdb /dev/sdc --board pi/4 --images output/images
  skiff-flash flash /dev/sdb --image skiffos-pi4.img.zst --yes --json
  skiff-flash flash /dev/mmcblk0 --board pi/4 --no-verify
  skiff-flash flash /dev/sdb --genimage board/raspberrypi/genimage.cfg --images output/images
  skiff-flash flash /dev/sdb --board pi/4 --hostname kitchen --ssh-key ~/.ssh/id_ed25519.pub \
      --wifi \"Home Net\" --wifi-psk-file psk.txt --persist-file motd:skiff/etc/motd
  skiff-flash flash /dev/sdb /dev/sdc --board pi/4 --yes --hostname 'node-{serial}' --log cards.jsonl
  skiff-flash flash /dev/sdb /dev/sdc --board pi/4 --yes --per-card cards.csv

Only removable, USB, SD and MMC disks are accepted unless --allow-fixed-disk. Mounted, busy,
system and too-small disks and partition paths are refused before anything is written.")]
    Flash(flash::FlashArgs),
    /// Update an installed card's boot files and rootfs from a new build, keeping persist.
    #[command(after_help = "Examples:
  skiff-flash upgrade /dev/sdb --board pi/4 --images output/images
  skiff-flash upgrade /dev/sdb --board pi/4 --dry-run            # show what would change
  skiff-flash upgrade /dev/sdb --board pi/4 --keep /overlays/my.dtbo --keep rootfs:/extra
  skiff-flash upgrade skiffos-pi4.img --board pi/4 --json          # an image file works too
  skiff-flash upgrade /dev/sdb --image skiffos-pi4-2026.12.img.zst # from a release image

The card's table must hold the board's layout (--reformat starts over: a full flash). The
new boot set is written beside the old one and switched to in one sector write: after a
power loss the card holds the old set or the new one, and re-running completes it. The
partition that grows to the card (persist) is never written. A config.txt or cmdline.txt
edited on the card is kept unless --force-config.")]
    Upgrade(upgrade::UpgradeArgs),
    /// Back up a card into an image file: tables, bootloader area, and only the used
    /// blocks of each FAT/ext4 partition.
    #[command(after_help = "Examples:
  skiff-flash backup /dev/sdb card.img.zst
  skiff-flash backup /dev/sdb card.img --json          # sparse, with card.img.bmap
  skiff-flash flash /dev/sdc --image card.img.zst      # restore (same or larger card)

Partitions without a FAT, ext4 or squashfs filesystem are copied whole (the command says
so). Nothing on the card may be mounted while it is read.")]
    Backup(backup::BackupArgs),
    /// Check that a card stores as much as it claims (counterfeit cards do not).
    #[command(
        name = "check-capacity",
        after_help = "Examples:
  skiff-flash check-capacity /dev/sdb
  skiff-flash check-capacity /dev/sdb --yes --json
  skiff-flash flash /dev/sdb --image skiffos-pi4.img.zst --check-capacity

Tagged blocks are written across the whole claimed size (first and last sector included,
denser around powers of two), read back past every cache and put back afterwards. A card
whose writes wrap around or vanish is refused (exit 2) naming its real size. The same
device checks as flash apply: mounted, busy, system and fixed disks are refused."
    )]
    CheckCapacity(capacity::CapacityArgs),
    /// List removable disks: path, model, size, partitions, mounted?
    #[command(after_help = "Examples:
  skiff-flash devices
  skiff-flash devices --all --json")]
    Devices(flash::DevicesArgs),
    /// Check a card or image against a board build or a release image (meaning), or an
    /// image/manifest (bytes).
    #[command(after_help = "Examples:
  skiff-flash verify /dev/sdb --board pi/4 --images output/images   # is this what the build writes?
  skiff-flash verify /dev/sdb --image skiffos-pi4.img.zst           # does it hold this release?
  skiff-flash verify /dev/sdb --image release.img.zst --bytes        # byte level, mapped ranges only
  skiff-flash verify pi4.img --manifest pi4.img.manifest.json --json

Exit codes: 0 everything matches, 1 a difference was found, 2 bad usage or input.
Against a board or a release image, only the build's files on the partition that grows to the
card (persist) are compared; what the user added there is not.")]
    Verify(verify::VerifyArgs),
    /// Show what is on a disk or image: table, filesystems, labels, FAT file lists (read-only).
    #[command(after_help = "Examples:
  skiff-flash inspect /dev/sdb
  skiff-flash inspect pi4.img --json")]
    Inspect(inspect::InspectArgs),
    /// Make an Ed25519 key pair for signing releases (minisign's file formats).
    #[command(after_help = "Examples:
  skiff-flash keygen release.key                 # writes release.key (0600) and release.key.pub
  skiff-flash build --board pi/4 -o skiffos-pi4.img.zst --sign release.key
  skiff-flash flash /dev/sdb --image skiffos-pi4.img.zst --trusted-key release.key.pub
  minisign -V -p release.key.pub -m skiffos-pi4.img.zst.manifest.json -x skiffos-pi4.img.zst.manifest.json.sig")]
    Keygen(sign::KeygenArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  skiff-flash completions bash > /etc/bash_completion.d/skiff-flash
  skiff-flash completions zsh > ~/.zfunc/_skiff-flash
  skiff-flash completions fish > ~/.config/fish/completions/skiff-flash.fish")]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    #[command(after_help = "Examples:
  skiff-flash man > skiff-flash.1 && man ./skiff-flash.1
  skiff-flash man | gzip > /usr/local/share/man/man1/skiff-flash.1.gz")]
    Man,
}

/// Whether `name` is a subcommand (else `skiff-flash /dev/sdb ...` means `flash`).
fn is_command(name: &str) -> bool {
    name == "help"
        || <Cli as clap::CommandFactory>::command()
            .get_subcommands()
            .any(|c| c.get_name() == name)
}

/// Buildroot's images directory and the SkiffOS configs, as every command that reads a
/// build takes them.
#[derive(Args, Clone)]
pub(super) struct ImagesDir {
    /// Buildroot images directory (default: `BINARIES_DIR` in a post-image script, the
    /// workspace's `output/images` inside SkiffOS, else `output/images`).
    #[arg(short, long, env = "BINARIES_DIR", value_name = "DIR")]
    images: Option<PathBuf>,
    /// A SkiffOS config directory (`configs/pi/4`) whose `resources/` supply the boot
    /// configs, as SkiffOS's scripts take them; repeat in config-list order (the last one
    /// that has a file wins). Default inside SkiffOS: `SKIFF_CONFIG_PATH`.
    #[arg(long = "skiff-conf", value_name = "DIR")]
    skiff_conf: Vec<PathBuf>,
    /// The SkiffOS configuration, read once.
    #[arg(skip)]
    skiff: std::sync::OnceLock<skiffos::Env>,
}

impl ImagesDir {
    /// The SkiffOS configuration in effect (empty outside SkiffOS).
    pub(super) fn skiff(&self) -> &skiffos::Env {
        self.skiff
            .get_or_init(|| skiffos::Env::detect(&self.skiff_conf))
    }

    /// The images directory: as given, else SkiffOS's workspace, else `output/images`.
    pub(super) fn images(&self) -> PathBuf {
        self.images
            .clone()
            .or_else(|| self.skiff().images())
            .unwrap_or_else(|| PathBuf::from("output/images"))
    }

    /// The board: as given, else the one board of SkiffOS's config list.
    pub(super) fn board(&self, given: Option<&str>, catalog: &Catalog) -> Result<String> {
        if let Some(b) = given {
            return Ok(b.to_string());
        }
        let env = self.skiff();
        if env.configs.is_empty() {
            return Err(Error::Usage(
                "give --board (or run inside a SkiffOS workspace, or give --skiff-conf)".into(),
            ));
        }
        env.board(catalog)
    }

    /// The plan options every command starts from.
    pub(super) fn plan_options(&self, epoch: i64, seed: Option<String>) -> plan::Options {
        plan::Options {
            images: self.images(),
            size: None,
            epoch,
            seed,
            ids: None,
            configs: self.skiff().dirs.clone(),
            custom: None,
        }
    }
}

#[derive(Args)]
struct Inputs {
    /// Board name as in SkiffOS configs (`pi/4`), or a path to a board .toml file.
    /// Default inside SkiffOS: the board of the config list (`SKIFF_CONFIG`).
    #[arg(short, long, conflicts_with = "genimage")]
    board: Option<String>,
    /// A genimage config (Buildroot's board/*/genimage.cfg) instead of a board: the disk
    /// genimage would write, from the same inputs (`image = "…"` files are in --images).
    #[arg(long, value_name = "FILE")]
    genimage: Option<PathBuf>,
    /// genimage's rootpath, for vfat/ext4 images without files of their own (default: empty,
    /// as Buildroot's genimage.sh passes).
    #[arg(long, value_name = "DIR", requires = "genimage")]
    rootpath: Option<PathBuf>,
    /// Fill a template variable of the genimage config (`%NAME%` or `NAME_TMP`) before it is
    /// read, e.g. `--define PARTUUID=…`; repeatable.
    #[arg(long = "define", value_name = "NAME=VALUE", requires = "genimage", value_parser = define_arg)]
    defines: Vec<(String, String)>,
    #[command(flatten)]
    dir: ImagesDir,
    /// Total disk size (e.g. 2GiB, 16GB); default: as small as the layout allows.
    #[arg(short, long, value_parser = size_arg)]
    size: Option<u64>,
    /// Seed for the disk, partition and filesystem identifiers (default: the board name).
    #[arg(long)]
    seed: Option<String>,
    #[command(flatten)]
    custom: custom::CustomArgs,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Image file to write: `.img` is sparse; `.img.zst`, `.img.gz`, `.img.xz` are compressed
    /// as they are written (other compression extensions are refused). Created under a
    /// temporary name and renamed with its manifest, bmap and SHA256SUMS when all are
    /// complete. An existing output that is not a regular file, or is an input, is refused.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Also write a bmap file (bmaptool's format) beside the image.
    #[arg(long)]
    bmap: bool,
    /// Also write SHA256SUMS (coreutils format) covering every output.
    #[arg(long)]
    checksums: bool,
    /// Compression level (zstd 1-22, default 3; gzip/xz 0-9, default 6).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=22))]
    level: Option<i32>,
    /// Sign the manifest with this secret key (from `keygen`, or `minisign -G -W`): writes
    /// IMAGE.manifest.json.sig in minisign's format.
    #[arg(long, value_name = "KEYFILE")]
    sign: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BoardsArgs {
    #[command(subcommand)]
    action: Option<BoardsAction>,
    /// Print as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum BoardsAction {
    /// List buildable boards (the default).
    List,
    /// Print a board's resolved definition (inheritance applied, layout included).
    Show { name: String },
}

fn size_arg(s: &str) -> std::result::Result<u64, String> {
    parse_size(s)
}

/// Runs the command line; returns the process exit code.
pub fn run() -> i32 {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(first) = args.get(1).and_then(|a| a.to_str())
        && !first.starts_with('-')
        && !is_command(first)
    {
        args.insert(1, "flash".into());
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One line, like every other error: what clap found wrong, and where to look.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("skiff-flash: error: {first} (see --help)");
            return 2;
        }
        Err(e) => {
            let _ = e.print();
            return 0;
        }
    };
    match dispatch(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skiff-flash: error: {}", one_line(&e.to_string()));
            e.exit_code()
        }
    }
}

/// Writes command output to stdout, ignoring a reader that went away.
pub(crate) fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(args);
}

/// Bytes of generated output (completions, the manual page) to stdout, likewise.
fn emit_bytes(bytes: &[u8]) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(bytes);
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

fn dispatch(cli: &Cli) -> Result<()> {
    let catalog = Catalog::new(&cli.board_dirs);
    match &cli.command {
        Command::Plan(a) => {
            let plan = make_plan(&catalog, &a.inputs)?;
            warn(cli, &plan.warnings);
            if a.json {
                out!("{}", render::json(&plan));
            } else {
                out_raw!("{}", render::plan(&plan, cli.verbose));
            }
            Ok(())
        }
        Command::Build(a) => build(cli, &catalog, a),
        Command::Flash(a) => flash::flash(
            a,
            cli.quiet,
            |b| match &a.genimage {
                Some(cfg) => {
                    let board = load_genimage(
                        cfg,
                        &a.dir.images(),
                        a.rootpath.as_deref(),
                        None,
                        &a.defines,
                    )?;
                    warn(cli, &board.warnings);
                    Ok(board)
                }
                None => board_or_skiff(&catalog, &a.dir, b),
            },
            epoch()?,
        ),
        Command::Devices(a) => flash::devices(a),
        Command::Upgrade(a) => upgrade::upgrade(
            a,
            cli.quiet,
            cli.verbose,
            |b| board_or_skiff(&catalog, &a.dir, b),
            epoch()?,
        ),
        Command::Verify(a) => verify::verify(a, |b| board_or_skiff(&catalog, &a.dir, b), epoch()?),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Keygen(a) => sign::keygen(a, cli.quiet),
        Command::CheckCapacity(a) => capacity::check(a, cli.quiet),
        Command::Backup(a) => backup::backup(a, cli.quiet),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "skiff-flash", &mut script);
            emit_bytes(&script);
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| Error::io("writing the manual page", e))?;
            emit_bytes(&page);
            Ok(())
        }
        Command::Boards(a) => match &a.action {
            None | Some(BoardsAction::List) => {
                let list = catalog.summaries()?;
                if a.json {
                    out!("{}", render::json(&list));
                } else {
                    out_raw!("{}", render::boards(&list));
                }
                Ok(())
            }
            Some(BoardsAction::Show { name }) => {
                let b = load_board(&catalog, name)?;
                if a.json {
                    out!("{}", render::json(&b));
                } else {
                    out_raw!("{}", render::board(&b));
                }
                Ok(())
            }
        },
    }
}

/// A board by name, or from a .toml file path.
fn load_board(catalog: &Catalog, name: &str) -> Result<skiff_flash::define::board::Board> {
    let path = std::path::Path::new(name);
    if name.ends_with(".toml") && path.is_file() {
        return catalog.board_file(path);
    }
    catalog.board(name)
}

/// The board named `name`, or with an empty name the board of the SkiffOS config list.
fn board_or_skiff(
    catalog: &Catalog,
    dir: &ImagesDir,
    name: &str,
) -> Result<skiff_flash::define::board::Board> {
    let given = Some(name).filter(|n| !n.is_empty());
    load_board(catalog, &dir.board(given, catalog)?)
}

fn epoch() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::Usage(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
        }),
        Err(_) => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)),
    }
}

/// A board from a genimage config.
fn load_genimage(
    cfg: &std::path::Path,
    images: &std::path::Path,
    rootpath: Option<&std::path::Path>,
    size: Option<u64>,
    defines: &[(String, String)],
) -> Result<skiff_flash::define::board::Board> {
    skiff_flash::define::genimage::load(
        cfg,
        &skiff_flash::define::genimage::Options {
            images: images.to_path_buf(),
            rootpath: rootpath.map(std::path::Path::to_path_buf),
            size,
            defines: defines.to_vec(),
        },
    )
}

/// `NAME=VALUE` for `--define`.
fn define_arg(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v))
            if !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Ok((n.to_string(), v.to_string()))
        }
        _ => Err(format!(
            "`{s}` is not NAME=VALUE (NAME of letters, digits and _)"
        )),
    }
}

/// Prints what a plan does not do exactly as its definition asks.
fn warn(cli: &Cli, warnings: &[String]) {
    if !cli.quiet {
        for w in warnings {
            eprintln!("skiff-flash: warning: {w}");
        }
    }
}

fn make_plan(catalog: &Catalog, i: &Inputs) -> Result<plan::Plan> {
    if let Some(size) = i.size {
        plan::check_size(size)?;
    }
    let board = match &i.genimage {
        Some(cfg) => load_genimage(
            cfg,
            &i.dir.images(),
            i.rootpath.as_deref(),
            i.size,
            &i.defines,
        )?,
        None => load_board(catalog, &i.dir.board(i.board.as_deref(), catalog)?)?,
    };
    let spec = i.custom.spec()?;
    let custom = match spec.is_empty() {
        true => None,
        false => Some(spec.resolve(None)?),
    };
    plan::make(
        &board,
        &plan::Options {
            size: i.size,
            custom,
            ..i.dir.plan_options(epoch()?, i.seed.clone())
        },
    )
}

fn build(cli: &Cli, catalog: &Catalog, a: &BuildArgs) -> Result<()> {
    let started = Instant::now();
    // Refused before anything is read or written.
    Format::from_path(&a.output, a.level)?;
    skiff_flash::image::output::cleanup_on_signals()?;
    let key = a
        .sign
        .as_deref()
        .map(skiff_flash::image::sign::SecretKey::load)
        .transpose()?;
    let plan = make_plan(catalog, &a.inputs)?;
    warn(cli, &plan.warnings);
    let bar = file_bar(
        cli.quiet || a.json,
        format!("building {}", a.output.display()),
    );
    let progress = |e: &skiff_flash::progress::Event| {
        bar.set_length(e.total);
        bar.set_position(e.done);
    };
    let opts = skiff_flash::ops::build::BuildOptions {
        format: Format::from_path(&a.output, a.level)?,
        bmap: a.bmap,
        checksums: a.checksums,
        sign: key.as_ref(),
    };
    let result = skiff_flash::ops::build::build_image(&plan, &a.output, opts, &progress);
    bar.finish_and_clear();
    let report = result?;
    let elapsed = started.elapsed();
    if a.json {
        out!(
            "{}",
            render::json(&serde_json::json!({
                "output": a.output,
                "disk_size": plan.disk_size,
                "file_size": report.written.file_size,
                "file_sha256": report.written.file_sha256,
                "image_sha256": report.written.stream.sha256,
                "mapped_bytes": report.written.stream.mapped_blocks * skiff_flash::sink::stream::BLOCK,
                "extra_files": report.extra,
                "seconds": elapsed.as_secs_f64(),
                "plan": plan,
                "manifest": report.manifest,
            }))
        );
    } else if !cli.quiet {
        out!("{}", render::built(&plan, &a.output, &report, elapsed));
    }
    Ok(())
}

/// The progress bar of a command writing one image file: hidden when `quiet` or when
/// stderr is not a terminal.
pub(super) fn file_bar(quiet: bool, message: String) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(message);
    b
}
