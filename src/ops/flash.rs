//! Writing to block devices: a board composed straight onto the device (no intermediate
//! image), or a built image (raw or compressed) decoded once and fanned out to every device.
//!
//! `prepare` does everything that can refuse (devices named twice, device inspection and
//! safety policy, a plan per device size, image and block-map checks) and opens nothing for
//! writing; `Prepared::write` then writes every device in its own thread.
//!
//! Order on a device: wipe the old table areas and each new partition's signature area,
//! write the filesystems and blobs, write the new table last, sync, make the kernel see the
//! partitions, then read back everything written and compare. A failure at any point wipes
//! the table areas again, so a half-written card never looks bootable.
//!
//! Not for deciding content (the plan does), device policy (`device` does) or asking
//! anyone anything (the caller confirms between `prepare` and `write`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::ScopedJoinHandle;
use std::time::Instant;

use serde::Serialize;

use crate::define::board::Board;
use crate::device::{self, Device, DeviceInfo, PlannedPart, SafetyPolicy};
use crate::error::{Error, Result};
use crate::format::table::read::{DiskTable, Scheme};
use crate::format::table::{self, gpt};
use crate::image::bmap::mapped_parts;
use crate::image::read::{ImageSource, codec_of, corrupt, open_image, read_ranges};
use crate::io::{nonzero_runs, read_full};
use crate::ops::cards::{self, PerCard};
use crate::plan::custom::{self, Record};
use crate::plan::{self, Plan};
use crate::progress::{Callback, Event};
use crate::sink::Sink;
use crate::sink::metered::{Count, Metered, metered};
use crate::sink::tracking::{self, Tracking, Written};
use crate::units::{Extent, bytes};

const MIB: u64 = 1 << 20;

/// Table bytes to write: (offset, bytes).
type Pieces = Vec<(u64, Vec<u8>)>;

/// What to write, onto which devices, and how carefully.
pub struct FlashRequest<'a> {
    /// Whole-disk devices, written in parallel.
    pub devices: Vec<PathBuf>,
    pub source: FlashSource<'a>,
    /// Read back and compare everything written.
    pub verify: bool,
    /// Accept disks that are not removable, USB, SD, MMC or loop.
    pub allow_fixed: bool,
    /// Probe each device for its real capacity (`ops::capacity`) before writing it; a
    /// device that stores less than it claims is refused with nothing of the flash written.
    pub check_capacity: bool,
    /// Image onto a larger device: extend the last partition's table entry to the device's
    /// end (its filesystem is not grown).
    pub grow: bool,
}

/// How carefully each device is written.
#[derive(Debug, Clone, Copy)]
struct Care {
    /// Read back and compare everything written.
    verify: bool,
    /// Probe the real capacity first.
    check_capacity: bool,
    /// Extend the image's last partition entry to the device's end.
    grow: bool,
}

/// Where the bytes come from.
pub enum FlashSource<'a> {
    /// A board composed for each device's size.
    Board(Box<BoardSource<'a>>),
    /// A built image, raw or compressed, and its block map (default: IMAGE.bmap beside it,
    /// when there is one).
    Image {
        path: PathBuf,
        bmap: Option<PathBuf>,
        /// When not empty, the image's manifest must be signed by one of these keys and
        /// every byte written must match it (`image::trust`).
        trusted: Vec<crate::image::sign::PublicKey>,
        /// For an http(s) URL: timeouts and the cache.
        fetch: crate::image::remote::Options,
    },
}

/// A board to compose: `load` gives it (from the catalog, a genimage config, SkiffOS…);
/// `name` is how messages call it (empty: the board's own name); `options` are the plan
/// options, their size left to each device.
pub struct BoardSource<'a> {
    pub load: Box<dyn Fn() -> Result<Board> + 'a>,
    pub name: String,
    pub options: plan::Options,
    /// What is added to persist; `{n}` and `{serial}` are filled per card.
    pub custom: custom::Spec,
    /// Per-card values (`--per-card`), replacing `custom`'s for the devices they name.
    pub per_card: Option<PerCard>,
}

/// What will be written, for the confirmation.
#[derive(Debug, Clone)]
pub enum Summary {
    Board {
        name: String,
    },
    Image {
        path: PathBuf,
        size: u64,
        /// The key id that signed the manifest, when trusted keys were given.
        signed_by: Option<String>,
    },
}

/// Checked and ready: nothing has been opened for writing yet.
pub struct Prepared {
    summary: Summary,
    job: Job,
    care: Care,
}

/// Each device with what it gets.
enum Job {
    Board(Vec<BoardTarget>),
    Image {
        image: Box<ImageSource>,
        devices: Vec<DeviceInfo>,
    },
}

/// A device and the plan made for its size.
struct BoardTarget {
    info: DeviceInfo,
    plan: Plan,
}

/// What happened on one device.
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    pub device: PathBuf,
    /// Bytes written (data and required zeros), wipes excluded.
    pub bytes_written: u64,
    pub seconds: f64,
    /// Whether the read-back comparison ran (and passed).
    pub verified: bool,
    /// How the kernel learnt the partitions ("rescan" or "blkpg").
    pub reread: Option<String>,
}

/// One device's result; a failing device does not stop the others.
pub struct Outcome {
    pub device: PathBuf,
    pub result: Result<FlashReport>,
    /// What was added to this card's persist partition.
    pub custom: Option<Record>,
}

/// Checks everything that can refuse, in the order the refusals are reported: the devices
/// (each named once), the source (image and block map, or the board and its smallest plan),
/// then every device against the safety policy and the size needed, then a plan per device.
pub fn prepare(req: &FlashRequest<'_>) -> Result<Prepared> {
    let infos = inspect_all(&req.devices)?;
    let policy = |min_size| SafetyPolicy {
        allow_fixed: req.allow_fixed,
        min_size,
    };
    let (summary, job) = match &req.source {
        FlashSource::Image {
            path,
            bmap,
            trusted,
            fetch,
        } => {
            let image = if crate::image::remote::is_url(path) {
                let url = path.to_string_lossy();
                crate::image::fetch::open_url(&url, bmap.as_deref(), trusted, fetch)?
            } else {
                ImageSource::open_trusted(path, bmap.as_deref(), trusted)?
            };
            check_all(&infos, &policy(image.size))?;
            let summary = Summary::Image {
                path: path.clone(),
                size: image.size,
                signed_by: image
                    .checked
                    .as_ref()
                    .and_then(|c| c.key.as_ref())
                    .map(|k| crate::image::sign::key_id_hex(&k.id)),
            };
            (
                summary,
                Job::Image {
                    image: Box::new(image),
                    devices: infos,
                },
            )
        }
        FlashSource::Board(b) => {
            let BoardSource {
                load,
                name,
                options,
                custom,
                per_card,
            } = &**b;
            let customs = cards::resolve_all(custom, per_card.as_ref(), &infos)?;
            let board = load()?;
            let opts = |size, custom: &Option<custom::Custom>| plan::Options {
                size,
                custom: custom.clone(),
                ..options.clone()
            };
            let first = customs.first().cloned().flatten();
            let min = plan::make(&board, &opts(None, &first))?.disk_size;
            check_all(&infos, &policy(min))?;
            let targets = infos
                .into_iter()
                .zip(&customs)
                .map(|(info, c)| {
                    let plan = plan::make(&board, &opts(Some(info.size), c))?;
                    Ok(BoardTarget { info, plan })
                })
                .collect::<Result<Vec<_>>>()?;
            let name = if name.is_empty() { &board.name } else { name };
            (Summary::Board { name: name.clone() }, Job::Board(targets))
        }
    };
    Ok(Prepared {
        summary,
        job,
        care: Care {
            verify: req.verify,
            check_capacity: req.check_capacity,
            grow: req.grow,
        },
    })
}

/// Inspects every device; the same device named twice (by any path) is refused.
fn inspect_all(paths: &[PathBuf]) -> Result<Vec<DeviceInfo>> {
    let infos = paths
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
    Ok(infos)
}

fn check_all(infos: &[DeviceInfo], policy: &SafetyPolicy) -> Result<()> {
    for info in infos {
        device::check(info, policy)?;
    }
    Ok(())
}

impl Prepared {
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The devices that will be written, in the order given.
    pub fn devices(&self) -> Vec<&DeviceInfo> {
        match &self.job {
            Job::Board(targets) => targets.iter().map(|t| &t.info).collect(),
            Job::Image { devices, .. } => devices.iter().collect(),
        }
    }

    /// Writes every device, each in its own thread, and returns one outcome per device in
    /// the order given. From here on an interrupting signal stops the writers, which wipe
    /// the table areas before the process ends.
    pub fn write(&self, progress: Callback<'_>) -> Result<Vec<Outcome>> {
        crate::signals::install_interrupt_flag()
            .map_err(|e| Error::io("installing the signal handlers", e))?;
        Ok(match &self.job {
            Job::Board(targets) => write_boards(targets, self.care, progress),
            Job::Image { image, devices } => write_image(devices, image, self.care, progress),
        })
    }
}

/// One thread per device, each composing its own plan.
fn write_boards(targets: &[BoardTarget], care: Care, progress: Callback<'_>) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || flash_plan(&t.info, &t.plan, care, progress)))
            .collect();
        targets
            .iter()
            .zip(handles)
            .map(|(t, h)| Outcome {
                device: t.info.path.clone(),
                result: joined(h),
                custom: t.plan.custom.clone(),
            })
            .collect()
    })
}

/// A device thread's result; a thread that panicked is the tool's own failure.
fn joined(h: ScopedJoinHandle<'_, Result<FlashReport>>) -> Result<FlashReport> {
    h.join()
        .unwrap_or_else(|_| Err(Error::Internal("a device thread panicked".into())))
}

/// Fault injection for the interruption tests, compiled only with the `fault-injection`
/// feature (release binaries have none): after `FAULT_ENV` device writes, the process sends
/// itself a signal (`FAULT_SIGNAL_ENV`: INT, TERM, HUP, or KILL by default), as an
/// interruption would.
#[cfg(feature = "fault-injection")]
pub mod fault {
    pub const FAULT_ENV: &str = "SKIFF_FLASH_FAULT_AFTER_WRITES";
    pub const FAULT_SIGNAL_ENV: &str = "SKIFF_FLASH_FAULT_SIGNAL";

    pub(super) fn before_write() {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static AFTER: OnceLock<Option<u64>> = OnceLock::new();
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let Some(after) = *AFTER.get_or_init(|| {
            std::env::var(FAULT_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
        }) else {
            return;
        };
        if COUNT.fetch_add(1, Ordering::SeqCst) + 1 != after {
            return;
        }
        use signal_hook::consts::{SIGHUP, SIGINT, SIGKILL, SIGTERM};
        let sig = match std::env::var(FAULT_SIGNAL_ENV).as_deref().map(str::trim) {
            Ok("INT") => SIGINT,
            Ok("TERM") => SIGTERM,
            Ok("HUP") => SIGHUP,
            _ => SIGKILL,
        };
        eprintln!("skiff-flash: fault injected: signal {sig} after write {after} ({FAULT_ENV})");
        let _ = signal_hook::low_level::raise(sig);
    }
}

#[cfg(not(feature = "fault-injection"))]
mod fault {
    pub(super) fn before_write() {}
}

/// The device as the writers see it: every write first checks for a stop request.
struct Guarded<'a>(&'a mut Device);

impl Sink for Guarded<'_> {
    fn data(&mut self, offset: u64, b: &[u8]) -> std::io::Result<()> {
        fault::before_write();
        if crate::signals::interrupted() {
            return Err(crate::signals::interrupted_error());
        }
        self.0.data(offset, b)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        if crate::signals::interrupted() {
            return Err(crate::signals::interrupted_error());
        }
        self.0.zeros(offset, len)
    }

    fn size(&self) -> u64 {
        self.0.size()
    }
}

/// An image's writes to a device: recorded for the read-back, counted for progress.
type Recorder<'p, 'd> = Metered<'p, Tracking<Guarded<'d>>>;

/// Zeroes where old tables live (first MiB, last MiB) so that a failed write leaves no
/// table that looks valid.
fn wipe_tables(dev: &mut Device) -> Result<()> {
    let size = dev.size();
    let what = format!(
        "wiping the partition table areas of {}",
        dev.path().display()
    );
    let io = |e| Error::io(what.clone(), e);
    dev.zeros(0, MIB.min(size)).map_err(io)?;
    let tail = size.saturating_sub(MIB);
    dev.zeros(tail, size - tail).map_err(io)?;
    dev.sync()
}

/// After a failure: wipe the table areas, make the kernel drop the partitions it still
/// has (so no stale /dev node of a half-written partition stays usable), and say so.
fn fail(dev: &mut Device, e: Error) -> Error {
    let e = if crate::signals::interrupted() {
        Error::io(
            format!("{}", dev.path().display()),
            crate::signals::interrupted_error(),
        )
    } else {
        e
    };
    let wiped = wipe_tables(dev);
    let _ = device::reread_partitions(dev, &[]);
    match wiped {
        Ok(()) => Error::io(
            format!("{e}"),
            std::io::Error::other("nothing was left bootable: the partition table was wiped"),
        ),
        Err(w) => Error::io(
            format!("{e}"),
            std::io::Error::other(format!("wiping the partition table also failed: {w}")),
        ),
    }
}

/// Composes `plan` (made for this device's size) straight onto the device.
fn flash_plan(
    info: &DeviceInfo,
    plan: &Plan,
    care: Care,
    progress: Callback<'_>,
) -> Result<FlashReport> {
    let started = Instant::now();
    // The large input files start hashing beside the claim of the device and its wipes.
    let ahead = crate::compose::hash_ahead(plan);
    let mut dev = open_checked(info, care)?;
    let written = compose_onto(&mut dev, plan, ahead, progress).map_err(|e| fail(&mut dev, e))?;
    let done = Done {
        parts: parts_of(plan),
        written,
        started,
    };
    finish(info, dev, done, care.verify, progress)
}

/// Claims the device and, when asked, probes its real capacity: a refused device is left
/// as it was (the probed blocks are put back) and nothing of the flash is written. A
/// passed device keeps the probe patterns, which the flash overwrites.
fn open_checked(info: &DeviceInfo, care: Care) -> Result<Device> {
    let dev = Device::open_exclusive(info)?;
    if care.check_capacity {
        crate::ops::capacity::probe(&dev, crate::ops::capacity::Restore::OnRefusal)?;
    }
    Ok(dev)
}

fn compose_onto(
    dev: &mut Device,
    plan: &Plan,
    ahead: crate::io::Ahead,
    progress: Callback<'_>,
) -> Result<Written> {
    wipe(dev, plan)?;
    let device = dev.path().to_path_buf();
    let mut rec = tracking::tracking(Guarded(dev));
    // Compose's count of content written, told as this device's.
    let on_device = |e: &Event| {
        progress(&Event {
            device: Some(device.clone()),
            ..e.clone()
        })
    };
    crate::compose::write(plan, &mut rec, &on_device, ahead)?;
    Ok(rec.observer)
}

fn parts_of(plan: &Plan) -> Vec<PlannedPart> {
    plan.partitions
        .iter()
        .map(|p| PlannedPart {
            number: p.number,
            start: p.start,
            size: p.size,
        })
        .collect()
}

/// The explicit wipes before composing: the old tables at both ends, and the first MiB of
/// every new partition (old filesystem signatures), except where raw blobs go.
fn wipe(dev: &mut Device, plan: &Plan) -> Result<()> {
    let size = dev.size();
    let io = |e| Error::io(format!("wiping {}", plan.board), e);
    let first = plan
        .partitions
        .iter()
        .map(|p| p.start)
        .min()
        .unwrap_or(MIB)
        .min(size);
    let mut ranges = vec![(0, first), (size.saturating_sub(MIB), MIB.min(size))];
    for p in &plan.partitions {
        ranges.push((p.start, p.size.min(MIB)));
    }
    for (o, l) in ranges {
        // Raw blobs are written over their part of the gap anyway; zeroing it first costs
        // little and removes old bootloaders a shorter blob would leave behind.
        dev.zeros(o, l).map_err(io)?;
    }
    Ok(())
}

/// What a device's write left to finish: the partitions to announce, the record of the
/// writes, and when it started.
struct Done {
    parts: Vec<PlannedPart>,
    written: Written,
    started: Instant,
}

/// Syncs, reads back (when asked), makes the kernel see the partitions, and reports.
fn finish(
    info: &DeviceInfo,
    mut dev: Device,
    done: Done,
    verify: bool,
    progress: Callback<'_>,
) -> Result<FlashReport> {
    dev.sync().map_err(|e| fail(&mut dev, e))?;
    if verify {
        tracking::read_back(&dev, &done.written, progress).map_err(|e| fail(&mut dev, e))?;
    }
    let reread = match device::reread_partitions(&dev, &done.parts) {
        Ok(o) => Some(format!("{:?}", o.method).to_lowercase()),
        Err(_) => None,
    };
    Ok(FlashReport {
        device: info.path.clone(),
        bytes_written: done.written.bytes(),
        seconds: done.started.elapsed().as_secs_f64(),
        verified: verify,
        reread,
    })
}

/// A decoded piece of the image, shared by every device.
struct Chunk {
    offset: u64,
    data: Arc<Vec<u8>>,
    /// Without a block map: the chunk's non-zero block runs, found once for every device.
    runs: Arc<Vec<std::ops::Range<usize>>>,
}

/// Every device's bounded queue; a device that stopped (its end dropped) gets nothing more.
struct Fanout {
    to: Vec<Option<SyncSender<Chunk>>>,
    /// No block map: every device needs each chunk's non-zero runs.
    runs: bool,
}

impl Fanout {
    fn send(&mut self, offset: u64, data: Arc<Vec<u8>>) {
        let runs = Arc::new(if self.runs && !data.is_empty() {
            nonzero_runs(&data, ZERO_BLOCK)
        } else {
            Vec::new()
        });
        for s in self.to.iter_mut() {
            if let Some(tx) = s
                && tx
                    .send(Chunk {
                        offset,
                        data: data.clone(),
                        runs: runs.clone(),
                    })
                    .is_err()
            {
                *s = None;
            }
        }
    }
}

/// The granularity at which an image without a block map is split into data and zeros.
const ZERO_BLOCK: usize = 4096;

/// A device's end of the image stream.
struct Stream<'a> {
    rx: Receiver<Chunk>,
    mapped: Option<&'a [Extent]>,
    /// The image's size: an empty chunk at this offset ends a complete stream.
    size: u64,
    /// Extend the last partition's table entry to the device's end.
    grow: bool,
    /// What is written is read back afterwards (so it is hashed as it is written).
    verify: bool,
}

/// Writes an image to every device at once: the file is read and decoded once, each device
/// has its own thread and bounded queue, and a failing device does not stop the others.
fn write_image(
    infos: &[DeviceInfo],
    image: &ImageSource,
    care: Care,
    progress: Callback<'_>,
) -> Vec<Outcome> {
    let total: u64 = image
        .bmap
        .as_ref()
        .map_or(image.size, |b| b.ranges.iter().map(|x| x.len).sum());
    let (results, read) = std::thread::scope(|s| {
        let mut fan = Fanout {
            to: Vec::new(),
            runs: image.bmap.is_none(),
        };
        let handles: Vec<_> = infos
            .iter()
            .map(|info| {
                let (tx, rx) = sync_channel::<Chunk>(8);
                fan.to.push(Some(tx));
                let stream = Stream {
                    rx,
                    mapped: image.bmap.as_ref().map(|b| b.ranges.as_slice()),
                    size: image.size,
                    grow: care.grow,
                    verify: care.verify,
                };
                s.spawn(move || device_worker(info, stream, total, care, progress))
            })
            .collect();
        let read = feed(image, &mut fan, progress);
        // Dropping the senders ends every stream; after a read error each device sees its
        // stream end early, fails and wipes its table.
        drop(fan);
        let results: Vec<_> = handles.into_iter().map(joined).collect();
        (results, read)
    });
    infos
        .iter()
        .zip(results)
        .map(|(info, r)| Outcome {
            device: info.path.clone(),
            custom: None,
            result: match (&read, r) {
                // A bad image is the cause of every device's failure: say so first; one
                // found only mid-stream (a signed range that does not match) is still the
                // input's fault, and the device was left with no table.
                (Err(e), Err(_)) if e.exit_code() == 2 => Err(Error::Usage(format!(
                    "{e}; the device was left without a partition table"
                ))),
                (Err(e), Err(d)) => Err(Error::io(
                    e.to_string(),
                    std::io::Error::other(d.to_string()),
                )),
                (_, r) => r,
            },
        })
        .collect()
}

/// Reads the image and sends it in 1 MiB chunks to every live device, then the empty chunk
/// at the image's size that marks a complete stream.
fn feed(image: &ImageSource, fan: &mut Fanout, progress: Callback<'_>) -> Result<()> {
    let mut check = Outgoing(image.checked.as_ref().map(|s| s.checker(&image.path)));
    match (&image.remote, &image.bmap) {
        (Some(remote), _) => {
            let r = remote_reader(remote)?;
            feed_decoded(image, r, fan, &mut check, &|| {
                let (done, total) = remote.progress();
                progress(&Event {
                    phase: crate::progress::Phase::Download,
                    device: None,
                    done,
                    total: total.unwrap_or(done),
                })
            })?
        }
        // A raw image with a block map: read only the mapped ranges.
        (None, Some(b)) if codec_of(&image.path)?.is_none() => {
            feed_mapped(&image.path, &b.ranges, fan, &mut check)?
        }
        (None, _) => feed_decoded(image, open_image(&image.path)?, fan, &mut check, &|| {})?,
    }
    if let Some(c) = &check.0 {
        c.finish()?;
    }
    if let Some(remote) = &image.remote {
        remote.keep()?;
    }
    fan.send(image.size, Arc::new(Vec::new()));
    Ok(())
}

/// The downloaded image, decompressed by its magic.
fn remote_reader(remote: &crate::image::fetch::Fetched) -> Result<Box<dyn std::io::Read + Send>> {
    use std::io::BufRead;
    let io = |e| Error::io(remote.url.clone(), e);
    let dl = remote
        .take()
        .ok_or_else(|| Error::Internal(format!("{} was already read", remote.url)))?;
    let mut r = std::io::BufReader::with_capacity(MIB as usize, dl);
    let head = r.fill_buf().map_err(io)?;
    Ok(match crate::image::codec::Codec::sniff(head) {
        Some(c) => c.decoder(r).map_err(io)?,
        None => Box::new(r),
    })
}

/// What is sent to the devices, each range checked first against the hashes a signed
/// manifest or a served bmap gives, when there are any.
struct Outgoing<'a>(Option<crate::image::trust::RangeCheck<'a>>);

impl Outgoing<'_> {
    fn send(&mut self, fan: &mut Fanout, at: u64, buf: Vec<u8>) -> Result<()> {
        if let Some(c) = &mut self.0 {
            c.feed(at, &buf)?;
        }
        fan.send(at, Arc::new(buf));
        Ok(())
    }
}

fn stop_requested(image: &Path) -> Result<()> {
    if crate::signals::interrupted() {
        return Err(Error::io(
            format!("reading {}", image.display()),
            crate::signals::interrupted_error(),
        ));
    }
    Ok(())
}

fn feed_mapped(
    image: &Path,
    mapped: &[Extent],
    fan: &mut Fanout,
    check: &mut Outgoing<'_>,
) -> Result<()> {
    stop_requested(image)?;
    read_ranges(image, mapped, MIB, |at, buf| {
        check.send(fan, at, buf)?;
        stop_requested(image)
    })
}

/// Decodes the whole image; chunks without a mapped byte need no device write and are not
/// sent.
fn feed_decoded(
    image: &ImageSource,
    mut r: Box<dyn std::io::Read + Send>,
    fan: &mut Fanout,
    check: &mut Outgoing<'_>,
    each: &dyn Fn(),
) -> Result<()> {
    let path = &image.path;
    let mut at = 0u64;
    // A buffer is given away only with a chunk that is sent; one holding nothing mapped is
    // read into again (no fresh pages to fault in for the image's long unmapped stretches).
    let mut buf = Vec::new();
    loop {
        each();
        stop_requested(path)?;
        buf.resize(MIB as usize, 0);
        let n = read_full(&mut r, &mut buf).map_err(|e| corrupt(path, at, e))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        let mapped = image.bmap.as_ref().map(|b| b.ranges.as_slice());
        if mapped.is_none_or(|m| !mapped_parts(m, at, n as u64).is_empty()) {
            check.send(fan, at, std::mem::take(&mut buf))?;
        }
        at += n as u64;
    }
    if at != image.size {
        return Err(Error::BadArtifact {
            path: path.clone(),
            message: format!("holds {} bytes, expected {}", bytes(at), bytes(image.size)),
        });
    }
    Ok(())
}

/// One device's thread: writes the stream, then finishes (or wipes the tables on failure).
fn device_worker(
    info: &DeviceInfo,
    stream: Stream<'_>,
    total: u64,
    care: Care,
    progress: Callback<'_>,
) -> Result<FlashReport> {
    let started = Instant::now();
    let mut dev = open_checked(info, care)?;
    let done =
        write_stream(&mut dev, &stream, total, progress, started).map_err(|e| fail(&mut dev, e))?;
    finish(info, dev, done, care.verify, progress)
}

/// Writes every chunk of the stream, table sectors last.
fn write_stream(
    dev: &mut Device,
    stream: &Stream<'_>,
    total: u64,
    progress: Callback<'_>,
    started: Instant,
) -> Result<Done> {
    // Old tables first: the image's own start replaces the first MiB, and a stale backup
    // GPT beyond the image must not survive.
    wipe_tables(dev)?;
    let path = dev.path().to_path_buf();
    let on = Some(path.clone());
    let record = if stream.verify {
        tracking::Written::new()
    } else {
        tracking::Written::unhashed()
    };
    let mut rec = metered(
        crate::sink::Observed {
            inner: Guarded(dev),
            observer: record,
        },
        progress,
        on,
        Count::All,
        total,
    );
    let mut tables = HeldTables::new();
    let mut complete = false;
    for Chunk {
        offset,
        mut data,
        mut runs,
    } in stream.rx.iter()
    {
        if data.is_empty() {
            complete = offset == stream.size;
            continue;
        }
        if offset == 0 {
            tables.learn(&mut data, rec.size(), stream.size, stream.grow);
            // The table edits for this device may have changed which blocks hold data.
            runs = Arc::new(nonzero_runs(&data, ZERO_BLOCK));
        }
        let io = |e| Error::io(format!("writing {}", path.display()), e);
        match stream.mapped {
            Some(m) => {
                for Extent { start: a, len: l } in mapped_parts(m, offset, data.len() as u64) {
                    let i = (a - offset) as usize;
                    tables
                        .put(&mut rec, a, &data[i..i + l as usize])
                        .map_err(io)?;
                }
            }
            None => tables
                .write_unmapped(&mut rec, offset, &data, &runs)
                .map_err(io)?,
        }
    }
    tables
        .flush_zeros(&mut rec)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    if !complete {
        return Err(Error::Usage(format!(
            "image stream ended before its {} bytes",
            bytes(stream.size)
        )));
    }
    let parts = tables.write_last(&mut rec)?;
    Ok(Done {
        parts,
        written: rec.inner.observer,
        started,
    })
}

/// The image's table sectors (both ends), held back and written after everything else is
/// on the medium: an interrupted write leaves no table.
struct HeldTables {
    /// Areas (offset, length) whose bytes wait in `stash`, sorted by offset.
    areas: Vec<(u64, u64)>,
    stash: Pieces,
    /// For a GPT image on a larger device: the backup table re-rendered at the device's end.
    tail: Pieces,
    /// The image's partitions, for the kernel.
    parts: Vec<PlannedPart>,
    /// Zeros not yet written, merged across chunks so a long zero stretch is one request.
    zeros: Option<Extent>,
}

impl HeldTables {
    fn new() -> Self {
        HeldTables {
            areas: vec![(0, table::SECTOR)],
            stash: Vec::new(),
            tail: Vec::new(),
            parts: Vec::new(),
            zeros: None,
        }
    }

    /// Learns the tables from the image's first chunk. For a GPT image on a larger device
    /// the primary header changes with the disk size (the rest of the head is the image's),
    /// and with `grow` the last partition's entry too: pieces inside the chunk replace its
    /// bytes, the rest (the backup GPT at the device's end) wait in `tail`.
    fn learn(&mut self, head: &mut Arc<Vec<u8>>, dev_size: u64, image_size: u64, grow: bool) {
        self.areas = table_areas(head, image_size);
        let (parts, moved) = table_for(head, dev_size, image_size, grow);
        self.parts = parts;
        let d = Arc::make_mut(head);
        for (o, b) in moved.into_iter().flatten() {
            match d.get_mut(o as usize..o as usize + b.len()) {
                Some(place) if o < image_size => place.copy_from_slice(&b),
                _ => self.tail.push((o, b)),
            }
        }
    }

    /// Writes `b` at `at`, except the parts inside held areas, which wait in the stash.
    fn put(&mut self, rec: &mut Recorder<'_, '_>, at: u64, b: &[u8]) -> std::io::Result<()> {
        let end = at + b.len() as u64;
        let mut cur = at;
        for &(h, len) in &self.areas {
            let (hs, he) = (h.max(cur), h.saturating_add(len).min(end));
            if hs >= he {
                continue;
            }
            if hs > cur {
                rec.data(cur, &b[(cur - at) as usize..(hs - at) as usize])?;
            }
            self.stash
                .push((hs, b[(hs - at) as usize..(he - at) as usize].to_vec()));
            cur = he;
        }
        if cur < end {
            rec.data(cur, &b[(cur - at) as usize..])?;
        }
        Ok(())
    }

    /// Without a block map: zero blocks become zero ranges (BLKZEROOUT, cheap on most
    /// media), everything else is written (table areas held back, see `put`).
    fn write_unmapped(
        &mut self,
        rec: &mut Recorder<'_, '_>,
        offset: u64,
        data: &[u8],
        runs: &[std::ops::Range<usize>],
    ) -> std::io::Result<()> {
        let mut at = 0;
        for run in runs {
            if run.start > at {
                self.zeros(rec, offset + at as u64, (run.start - at) as u64)?;
            }
            self.put(rec, offset + run.start as u64, &data[run.clone()])?;
            at = run.end;
        }
        if at < data.len() {
            self.zeros(rec, offset + at as u64, (data.len() - at) as u64)?;
        }
        Ok(())
    }

    /// Zeros to write at `at`: joined to the pending stretch when they continue it.
    fn zeros(&mut self, rec: &mut Recorder<'_, '_>, at: u64, len: u64) -> std::io::Result<()> {
        match &mut self.zeros {
            Some(z) if z.end() == at => z.len += len,
            _ => {
                self.flush_zeros(rec)?;
                self.zeros = Some(Extent::new(at, len));
            }
        }
        Ok(())
    }

    fn flush_zeros(&mut self, rec: &mut Recorder<'_, '_>) -> std::io::Result<()> {
        match self.zeros.take() {
            Some(z) => rec.zeros(z.start, z.len),
            None => Ok(()),
        }
    }

    /// Once everything else is on the medium: the backup table, then the held sectors from
    /// the far end to sector 0. Returns the image's partitions.
    fn write_last(self, rec: &mut Recorder<'_, '_>) -> Result<Vec<PlannedPart>> {
        rec.inner.inner.0.sync()?;
        for (o, b) in self.tail {
            rec.data(o, &b)
                .map_err(|e| Error::io("writing the backup GPT", e))?;
        }
        let mut stash = self.stash;
        stash.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        for (o, b) in stash {
            rec.data(o, &b)
                .map_err(|e| Error::io("writing the partition table", e))?;
        }
        Ok(self.parts)
    }
}

/// The table areas of an image from its first bytes: sector 0 always; for a GPT also the
/// primary header, its entry array and the backup array and header at the image's end.
/// Sorted by offset.
fn table_areas(head: &[u8], image_size: u64) -> Vec<(u64, u64)> {
    let sector = table::SECTOR;
    let mut v = vec![(0, sector)];
    // The header alone says where the rest is (the first chunk may end before the array).
    if let Some(h) = head
        .get(sector as usize..2 * sector as usize)
        .and_then(|b| table::read::gpt_header(b).ok())
    {
        let array = h.array_bytes() as u64;
        v.push((sector, sector));
        v.push((h.array_lba.saturating_mul(sector), array));
        let backup = array + sector;
        if image_size >= backup + 2 * sector {
            v.push((image_size - backup, backup));
        }
    }
    v.sort();
    v
}

/// The partitions of an image from its first MiB, and for a GPT image on a larger device
/// the table re-rendered for the device (`sgdisk -e`): the backup at the device's real end.
pub(crate) fn table_of(
    head: &[u8],
    dev_size: u64,
    image_size: u64,
) -> (Vec<PlannedPart>, Option<Pieces>) {
    table_for(head, dev_size, image_size, false)
}

/// `table_of`, and with `grow` (on a larger device) the last partition's entry extended
/// to the device's end: a GPT's to its last usable sector, an MBR's (a primary, not an
/// extended one) to the device's end or the 2 TiB an MBR can address.
fn table_for(
    head: &[u8],
    dev_size: u64,
    image_size: u64,
    grow: bool,
) -> (Vec<PlannedPart>, Option<Pieces>) {
    let Ok(mut found) = DiskTable::parse(head) else {
        return (Vec::new(), None);
    };
    let grow = grow && dev_size > image_size;
    let mbr_grown = match found.scheme {
        Scheme::Mbr { .. } if grow => grow_mbr(head, &mut found.entries, dev_size),
        _ => None,
    };
    if grow && let Scheme::Gpt(_) = found.scheme {
        let end = (dev_size / table::SECTOR - 1 - gpt::ARRAY_SECTORS) * table::SECTOR;
        if let Some(last) = found.entries.iter_mut().max_by_key(|e| e.start)
            && end > last.start + last.size
        {
            last.size = end - last.start;
        }
    }
    let parts = found
        .entries
        .iter()
        .map(|e| PlannedPart {
            number: e.number,
            start: e.start,
            size: e.size,
        })
        .collect();
    let Scheme::Gpt(h) = &found.scheme else {
        return (parts, mbr_grown);
    };
    let standard = h.entries == 128 && h.entry_size == 128 && h.my_lba == 1;
    if dev_size <= image_size || !standard {
        return (parts, None);
    }
    let mut code = [0u8; 440];
    code.copy_from_slice(&head[..440]);
    let pieces = gpt::pieces(dev_size, &code, h.disk_guid, h.array_lba, &found.entries);
    (parts, Some(pieces))
}

/// Sector 0 with its last primary partition extended to the device's end, or `None` when
/// that partition is an extended one (its logical partitions are not moved) or already
/// reaches the end. Updates `entries` to match.
fn grow_mbr(head: &[u8], entries: &mut [table::TableEntry], dev_size: u64) -> Option<Pieces> {
    let sector = table::SECTOR;
    let last = entries.iter_mut().max_by_key(|e| e.start)?;
    if last.mbr_type.is_none_or(table::read::is_extended) || !(1..=4).contains(&last.number) {
        return None;
    }
    let end = (dev_size / sector).min(u64::from(u32::MAX)) * sector;
    if end <= last.start + last.size {
        return None;
    }
    last.size = end - last.start;
    let mut mbr = head.get(..sector as usize)?.to_vec();
    let at = 446 + 16 * (last.number as usize - 1) + 12;
    mbr[at..at + 4].copy_from_slice(&((last.size / sector) as u32).to_le_bytes());
    Some(vec![(0, mbr)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_with(types: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, (t, start, len)) in types.iter().enumerate() {
            let e = 446 + 16 * i;
            s[e + 4] = *t;
            s[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            s[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
        }
        s[510..].copy_from_slice(&[0x55, 0xAA]);
        s
    }

    #[test]
    fn grow_extends_the_last_mbr_partition_only() {
        let head = mbr_with(&[(0x0c, 2048, 2048), (0x83, 4096, 4096)]);
        let (parts, pieces) = table_for(&head, 1 << 30, 8 << 20, true);
        assert_eq!(parts[1].size, (1 << 30) - 4096 * 512);
        let sector = &pieces.unwrap()[0].1;
        let (_, entries) = table::read::mbr(sector).unwrap();
        assert_eq!(entries[0].size, 2048 * 512);
        assert_eq!(entries[1].size, (1 << 30) - 4096 * 512);
        // Without --grow, or onto a device no larger, nothing changes.
        assert!(table_for(&head, 1 << 30, 8 << 20, false).1.is_none());
        assert!(table_for(&head, 8 << 20, 8 << 20, true).1.is_none());
        // An extended partition last: its logical partitions would not follow.
        let ext = mbr_with(&[(0x0c, 2048, 2048), (0x05, 4096, 4096)]);
        assert!(table_for(&ext, 1 << 30, 8 << 20, true).1.is_none());
    }
}
