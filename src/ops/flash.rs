//! Writing to block devices: a board composed straight onto the device (no intermediate
//! image), or a built image (raw or compressed) decoded once and fanned out to every device.
//!
//! Order on a device: wipe the old table areas and each new partition's signature area,
//! write the filesystems and blobs, write the new table last, sync, make the kernel see the
//! partitions, then read back everything written and compare. A failure at any point wipes
//! the table areas again, so a half-written card never looks bootable. Every refusal happens
//! in `device::check` before the device is opened for writing.
//!
//! Not for deciding content (the plan does) or device policy (blockdev does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::device::{self, Device, DeviceInfo, PlannedPart};
use crate::error::{Error, Result};
use crate::format::table::read::{DiskTable, Scheme};
use crate::format::table::{self, gpt};
use crate::image::bmap::{Bmap, mapped_parts};
use crate::image::read::{codec_of, corrupt, open_image};
use crate::io::{hex, read_full};
use crate::plan::Plan;
use crate::sink::Sink;
use crate::units::{Extent, bytes};

const MIB: u64 = 1 << 20;

/// Written segments by offset: length and SHA-256.
type Segments = BTreeMap<u64, (u64, String)>;

/// Table bytes to write: (offset, bytes).
type Pieces = Vec<(u64, Vec<u8>)>;

/// What happened on one device.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: PathBuf,
    /// Bytes written (data and required zeros), wipes excluded.
    pub bytes_written: u64,
    pub seconds: f64,
    /// Whether the read-back comparison ran (and passed).
    pub verified: bool,
    /// How the kernel learnt the partitions ("rescan" or "blkpg").
    pub reread: Option<String>,
}

/// Progress of one device: bytes done of a total, and the phase.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub device: PathBuf,
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Shared progress callback (devices are written from several threads).
pub type OnProgress = Arc<dyn Fn(Progress) + Send + Sync>;

/// Records what is written (1 MiB-bounded segments with their SHA-256) for the read-back.
struct Recorder<'a> {
    dev: &'a mut Device,
    segments: Segments,
    open: Option<(u64, u64, Sha256)>,
    written: u64,
    progress: Option<(&'a OnProgress, u64)>,
}

impl<'a> Recorder<'a> {
    fn new(dev: &'a mut Device) -> Self {
        Recorder {
            dev,
            segments: BTreeMap::new(),
            open: None,
            written: 0,
            progress: None,
        }
    }

    fn close(&mut self) {
        if let Some((start, len, h)) = self.open.take() {
            self.segments.insert(start, (len, hex(&h.finalize())));
        }
    }

    /// Adds `len` bytes at `at` to the record; `feed` hashes them.
    fn record(&mut self, mut at: u64, bytes: Option<&[u8]>, mut len: u64) {
        let mut consumed = 0usize;
        while len > 0 {
            let room = MIB - at % MIB;
            let n = len.min(room);
            let contiguous =
                matches!(&self.open, Some((s, l, _)) if s + l == at && !at.is_multiple_of(MIB));
            if !contiguous {
                self.close();
                self.open = Some((at, 0, Sha256::new()));
            }
            if let Some((_, l, h)) = self.open.as_mut() {
                match bytes {
                    Some(b) => h.update(&b[consumed..consumed + n as usize]),
                    None => h.update(vec![0u8; n as usize]),
                }
                *l += n;
            }
            consumed += n as usize;
            at += n;
            len -= n;
        }
    }

    fn report(&self) {
        if let Some((cb, total)) = self.progress {
            cb(Progress {
                device: self.dev.path().to_path_buf(),
                phase: "write",
                done: self.written.min(total),
                total,
            });
        }
    }

    fn finish(mut self) -> (Segments, u64) {
        self.close();
        (self.segments, self.written)
    }
}

/// Test hook: after this many device writes, the process sends itself a signal
/// (`FAULT_SIGNAL_ENV`: INT, TERM, HUP, or KILL by default), as an interruption would.
pub const FAULT_ENV: &str = "SKIFF_FLASH_FAULT_AFTER_WRITES";
pub const FAULT_SIGNAL_ENV: &str = "SKIFF_FLASH_FAULT_SIGNAL";

fn fault_hook() {
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

impl Sink for Recorder<'_> {
    fn data(&mut self, offset: u64, b: &[u8]) -> std::io::Result<()> {
        fault_hook();
        if crate::signals::interrupted() {
            return Err(crate::signals::interrupted_error());
        }
        self.dev.data(offset, b)?;
        self.record(offset, Some(b), b.len() as u64);
        self.written += b.len() as u64;
        self.report();
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        if crate::signals::interrupted() {
            return Err(crate::signals::interrupted_error());
        }
        self.dev.zeros(offset, len)?;
        self.record(offset, None, len);
        self.written += len;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.dev.size()
    }
}

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
pub fn flash_plan(info: &DeviceInfo, plan: &Plan, verify: bool, cb: &OnProgress) -> Result<Report> {
    let started = Instant::now();
    let mut dev = Device::open_exclusive(info)?;
    let result = (|| -> Result<(Segments, u64)> {
        wipe(&mut dev, plan)?;
        let mut rec = Recorder::new(&mut dev);
        let total = plan
            .partitions
            .iter()
            .filter_map(|p| p.fs.as_ref())
            .map(|f| f.content_bytes)
            .sum();
        rec.progress = Some((cb, total));
        let mut progress = |_: u64, _: u64| {};
        crate::compose::write(plan, &mut rec, &mut progress)?;
        Ok(rec.finish())
    })();
    let (segments, written) = result.map_err(|e| fail(&mut dev, e))?;
    finish(
        info,
        dev,
        &parts_of(plan),
        segments,
        written,
        verify,
        cb,
        started,
    )
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

#[allow(clippy::too_many_arguments)]
fn finish(
    info: &DeviceInfo,
    mut dev: Device,
    parts: &[PlannedPart],
    segments: Segments,
    written: u64,
    verify: bool,
    cb: &OnProgress,
    started: Instant,
) -> Result<Report> {
    dev.sync().map_err(|e| fail(&mut dev, e))?;
    if verify {
        read_back(&dev, &segments, written, cb).map_err(|e| fail(&mut dev, e))?;
    }
    let reread = match device::reread_partitions(&dev, parts) {
        Ok(o) => Some(format!("{:?}", o.method).to_lowercase()),
        Err(_) => None,
    };
    Ok(Report {
        device: info.path.clone(),
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
        verified: verify,
        reread,
    })
}

/// Reads every written segment back from the medium and compares, telling apart a read
/// error, different data, and a card that is smaller than it claims (writes wrap around).
fn read_back(dev: &Device, segments: &Segments, total: u64, cb: &OnProgress) -> Result<()> {
    let mut done = 0;
    for (&at, (len, want)) in segments {
        let got = dev.read_direct(at, *len as usize).map_err(|e| {
            Error::io(
                format!(
                    "{}: read error at sector {}",
                    dev.path().display(),
                    at / 512
                ),
                std::io::Error::other(e.to_string()),
            )
        })?;
        if hex(&Sha256::digest(&got)) != *want {
            return Err(mismatch(dev, at, *len, &got));
        }
        done += len;
        cb(Progress {
            device: dev.path().to_path_buf(),
            phase: "verify",
            done: done.min(total),
            total,
        });
    }
    Ok(())
}

fn mismatch(dev: &Device, at: u64, len: u64, got: &[u8]) -> Error {
    let path = dev.path().display();
    // A fake-capacity card maps high addresses onto low ones: what was read here equals
    // what is stored a power of two lower.
    if got.iter().any(|b| *b != 0) {
        let mut k = 1u64 << 20;
        while k <= at {
            if let Ok(low) = dev.read_direct(at - k, len as usize)
                && low == got
            {
                return Error::Mismatch {
                    target: path.to_string(),
                    what: format!(
                        "the device is smaller than it claims: data at byte {} reads back from byte {} (fake capacity?)",
                        bytes(at),
                        bytes(at - k)
                    ),
                    at: Some(at),
                };
            }
            k <<= 1;
        }
    }
    Error::Mismatch {
        target: path.to_string(),
        what: format!(
            "the device returned different data in bytes {}..{}",
            bytes(at),
            bytes(at + len)
        ),
        at: None,
    }
}

/// A decoded piece of the image, shared by every device.
struct Chunk {
    offset: u64,
    data: Arc<Vec<u8>>,
}

/// Writes an image to every device at once: the file is read and decoded once, each device
/// has its own thread and bounded queue, and a failing device does not stop the others.
pub fn flash_image(
    infos: &[DeviceInfo],
    image: &Path,
    bmap: Option<Bmap>,
    size: u64,
    verify: bool,
    cb: OnProgress,
) -> Vec<Result<Report>> {
    let mapped: Option<Vec<Extent>> = bmap.map(|b| b.ranges);
    let total: u64 = mapped
        .as_ref()
        .map_or(size, |r| r.iter().map(|x| x.len).sum());
    let slots: Vec<Mutex<Option<Result<Report>>>> =
        infos.iter().map(|_| Mutex::new(None)).collect();
    let read = std::thread::scope(|s| {
        let mut senders: Vec<Option<SyncSender<Chunk>>> = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let (tx, rx) = sync_channel::<Chunk>(8);
            senders.push(Some(tx));
            let (cb, mapped, slots) = (cb.clone(), mapped.clone(), &slots);
            s.spawn(move || {
                let r = device_worker(info, rx, mapped, size, total, verify, &cb);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
            });
        }
        let read = feed(image, size, mapped.as_deref(), &mut senders);
        // Dropping the senders ends every stream; after a read error each device sees its
        // stream end early, fails and wipes its table.
        drop(senders);
        read
    });
    slots
        .into_iter()
        .map(|m| {
            let r = m
                .into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(Error::Internal("a device thread stopped".into())));
            match (&read, r) {
                // A bad image is the cause of every device's failure: say so first.
                (Err(e), Err(d)) => Err(Error::io(
                    e.to_string(),
                    std::io::Error::other(d.to_string()),
                )),
                (_, r) => r,
            }
        })
        .collect()
}

/// Reads the image and sends it in 1 MiB chunks to every live device.
fn feed(
    image: &Path,
    size: u64,
    mapped: Option<&[Extent]>,
    senders: &mut [Option<SyncSender<Chunk>>],
) -> Result<()> {
    let mut send = |offset: u64, data: Arc<Vec<u8>>| {
        for s in senders.iter_mut() {
            if let Some(tx) = s
                && tx
                    .send(Chunk {
                        offset,
                        data: data.clone(),
                    })
                    .is_err()
            {
                *s = None;
            }
        }
    };
    if let (Some(m), None) = (mapped, codec_of(image)?) {
        // A raw image with a block map: read only the mapped ranges.
        let io = |e| Error::io(format!("reading {}", image.display()), e);
        let f = std::fs::File::open(image).map_err(io)?;
        for &Extent { start, len } in m {
            let mut at = start;
            while at < start + len {
                if crate::signals::interrupted() {
                    return Err(Error::io(
                        format!("reading {}", image.display()),
                        crate::signals::interrupted_error(),
                    ));
                }
                let n = (start + len - at).min(MIB) as usize;
                let mut buf = vec![0u8; n];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at)
                    .map_err(|e| corrupt(image, at, e))?;
                send(at, Arc::new(buf));
                at += n as u64;
            }
        }
        send(size, Arc::new(Vec::new()));
        return Ok(());
    }
    let mut r = open_image(image)?;
    let mut at = 0u64;
    loop {
        if crate::signals::interrupted() {
            return Err(Error::io(
                format!("reading {}", image.display()),
                crate::signals::interrupted_error(),
            ));
        }
        let mut buf = vec![0u8; MIB as usize];
        let n = read_full(&mut r, &mut buf).map_err(|e| corrupt(image, at, e))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        // Chunks without a mapped byte need no device write: not sent.
        if mapped.is_none_or(|m| !mapped_parts(m, at, n as u64).is_empty()) {
            send(at, Arc::new(buf));
        }
        at += n as u64;
    }
    if at != size {
        return Err(Error::BadArtifact {
            path: image.to_path_buf(),
            message: format!("holds {} bytes, expected {}", bytes(at), bytes(size)),
        });
    }
    // The end of the stream: an empty chunk at the image's size.
    send(size, Arc::new(Vec::new()));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn device_worker(
    info: &DeviceInfo,
    rx: Receiver<Chunk>,
    mapped: Option<Vec<Extent>>,
    size: u64,
    total: u64,
    verify: bool,
    cb: &OnProgress,
) -> Result<Report> {
    let started = Instant::now();
    let mut dev = Device::open_exclusive(info)?;
    let mut parts: Vec<PlannedPart> = Vec::new();
    let result = (|| -> Result<(Segments, u64)> {
        // Old tables first: the image's own start replaces the first MiB, and a stale
        // backup GPT beyond the image must not survive.
        wipe_tables(&mut dev)?;
        let mut rec = Recorder::new(&mut dev);
        rec.progress = Some((cb, total));
        let mut complete = false;
        let mut tail: Vec<(u64, Vec<u8>)> = Vec::new();
        // The table sectors (both ends) are held back and written after everything else
        // is on the medium: an interrupted write leaves no table.
        let mut held: Vec<(u64, u64)> = vec![(0, table::SECTOR)];
        let mut stash: Pieces = Vec::new();
        for chunk in rx.iter() {
            let Chunk { offset, mut data } = chunk;
            if data.is_empty() {
                complete = offset == size;
                continue;
            }
            if offset == 0 {
                held = table_areas(&data, size);
                let (p, moved) = table_of(&data, rec.size(), size);
                parts = p;
                if let Some(mut pieces) = moved {
                    // The primary header changes with the disk size; the rest of the head
                    // is the image's.
                    let (_, head) = pieces.remove(0);
                    let d = Arc::make_mut(&mut data);
                    d[..head.len()].copy_from_slice(&head);
                    tail = pieces.split_off(1);
                }
            }
            let io = |e| Error::io(format!("writing {}", info.path.display()), e);
            match &mapped {
                Some(m) => {
                    for Extent { start: a, len: l } in mapped_parts(m, offset, data.len() as u64) {
                        let i = (a - offset) as usize;
                        put(&mut rec, &held, &mut stash, a, &data[i..i + l as usize])
                            .map_err(io)?;
                    }
                }
                None => write_unmapped(&mut rec, &held, &mut stash, offset, &data).map_err(io)?,
            }
        }
        if !complete {
            return Err(Error::Usage(format!(
                "image stream ended before its {} bytes",
                bytes(size)
            )));
        }
        // Everything else is on the medium before any table sector is.
        rec.dev.sync()?;
        for (o, b) in tail {
            rec.data(o, &b)
                .map_err(|e| Error::io("writing the backup GPT", e))?;
        }
        // The far end first, sector 0 last.
        stash.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        for (o, b) in stash {
            rec.data(o, &b)
                .map_err(|e| Error::io("writing the partition table", e))?;
        }
        Ok(rec.finish())
    })();
    let (segments, written) = result.map_err(|e| fail(&mut dev, e))?;
    finish(info, dev, &parts, segments, written, verify, cb, started)
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

/// Writes `b` at `at`, except the parts inside `held` areas (sorted), which go to `stash`.
fn put(
    rec: &mut Recorder<'_>,
    held: &[(u64, u64)],
    stash: &mut Pieces,
    at: u64,
    b: &[u8],
) -> std::io::Result<()> {
    let end = at + b.len() as u64;
    let mut cur = at;
    for &(h, len) in held {
        let (hs, he) = (h.max(cur), h.saturating_add(len).min(end));
        if hs >= he {
            continue;
        }
        if hs > cur {
            rec.data(cur, &b[(cur - at) as usize..(hs - at) as usize])?;
        }
        stash.push((hs, b[(hs - at) as usize..(he - at) as usize].to_vec()));
        cur = he;
    }
    if cur < end {
        rec.data(cur, &b[(cur - at) as usize..])?;
    }
    Ok(())
}

/// Without a block map: zero blocks become zero ranges (BLKZEROOUT, cheap on most media),
/// everything else is written (table areas held back, see `put`).
fn write_unmapped(
    rec: &mut Recorder<'_>,
    held: &[(u64, u64)],
    stash: &mut Pieces,
    offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    const B: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        let zero = data[i..(i + B).min(data.len())].iter().all(|b| *b == 0);
        let mut j = i;
        while j < data.len() && data[j..(j + B).min(data.len())].iter().all(|b| *b == 0) == zero {
            j = (j + B).min(data.len());
        }
        if zero {
            rec.zeros(offset + i as u64, (j - i) as u64)?;
        } else {
            put(rec, held, stash, offset + i as u64, &data[i..j])?;
        }
        i = j;
    }
    Ok(())
}

/// The partitions of an image from its first MiB, and for a GPT image on a larger device
/// the table re-rendered for the device (`sgdisk -e`): the backup at the device's real end.
pub(crate) fn table_of(
    head: &[u8],
    dev_size: u64,
    image_size: u64,
) -> (Vec<PlannedPart>, Option<Pieces>) {
    let Ok(found) = DiskTable::parse(head) else {
        return (Vec::new(), None);
    };
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
        return (parts, None);
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
