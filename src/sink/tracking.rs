//! Remembers what was written where (1 MiB-bounded segments with their SHA-256), so that
//! after a sync the medium can be read back past the page cache and compared: a card that
//! drops writes, returns other data or is smaller than it claims is caught before anyone
//! boots from it. `Tracking` is the sink wrapper; `Written` is the record on its own, for
//! writers that are not sinks.
//!
//! Not for deciding what to write or where: the wrapped writer does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::{Observed, Observer, Sink};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::progress::{Callback, Event, Phase};
use crate::units::bytes;

const MIB: u64 = 1 << 20;

/// One written range and the SHA-256 of what was written there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// The segment being extended by contiguous writes.
#[derive(Clone)]
struct Open {
    offset: u64,
    len: u64,
    hasher: Sha256,
}

impl Open {
    fn close(self) -> Segment {
        Segment {
            offset: self.offset,
            len: self.len,
            sha256: self.hasher.finalize().into(),
        }
    }
}

/// Every write so far, in order; contiguous writes merge up to 1 MiB boundaries.
#[derive(Clone)]
pub struct Written {
    segments: Vec<Segment>,
    open: Option<Open>,
    bytes: u64,
    /// Hash what is written (for `read_back`); without, segments carry no hash.
    hashed: bool,
}

impl Default for Written {
    fn default() -> Self {
        Written {
            segments: Vec::new(),
            open: None,
            bytes: 0,
            hashed: true,
        }
    }
}

impl Written {
    pub fn new() -> Self {
        Self::default()
    }

    /// A record of where writes went, without their hashes: for a write that is not read
    /// back, hashing every byte would only cost time.
    pub fn unhashed() -> Self {
        Written {
            hashed: false,
            ..Self::default()
        }
    }

    /// Records `bytes` written at `offset`.
    pub fn data(&mut self, offset: u64, bytes: &[u8]) {
        self.add(offset, Some(bytes), bytes.len() as u64);
    }

    /// Records `len` zero bytes written at `offset`.
    pub fn zeros(&mut self, offset: u64, len: u64) {
        self.add(offset, None, len);
    }

    /// Bytes recorded (data and zeros), counting rewrites of the same place again.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn add(&mut self, mut at: u64, bytes: Option<&[u8]>, mut len: u64) {
        self.bytes += len;
        let mut consumed = 0usize;
        while len > 0 {
            let n = len.min(MIB - at % MIB);
            let contiguous = self
                .open
                .as_ref()
                .is_some_and(|o| o.offset + o.len == at && !at.is_multiple_of(MIB));
            if !contiguous {
                self.segments.extend(self.open.take().map(Open::close));
                self.open = Some(Open {
                    offset: at,
                    len: 0,
                    hasher: Sha256::new(),
                });
            }
            if let Some(o) = self.open.as_mut() {
                if self.hashed {
                    match bytes {
                        Some(b) => o.hasher.update(&b[consumed..consumed + n as usize]),
                        None => super::stream::zeros_into(&mut o.hasher, n),
                    }
                }
                o.len += n;
            }
            consumed += n as usize;
            at += n;
            len -= n;
        }
    }

    /// The segments whose bytes must still be on the medium, ascending: a segment that a
    /// later write overlaps is left out (it is not expected to read back as written).
    pub fn last_writes(&self) -> Vec<Segment> {
        let all = self
            .segments
            .iter()
            .cloned()
            .chain(self.open.clone().map(Open::close));
        // Disjoint ranges of later segments, start -> end.
        let mut later: BTreeMap<u64, u64> = BTreeMap::new();
        let mut kept = Vec::new();
        for s in all.rev() {
            let end = s.offset + s.len;
            // The range starting last before `end` is the only one that can overlap.
            if later
                .range(..end)
                .next_back()
                .is_some_and(|(_, e)| *e > s.offset)
            {
                continue;
            }
            later.insert(s.offset, end);
            kept.push(s);
        }
        kept.sort_by_key(|s| s.offset);
        kept
    }
}

impl Observer for Written {
    fn data(&mut self, offset: u64, bytes: &[u8]) {
        Written::data(self, offset, bytes);
    }

    fn zeros(&mut self, offset: u64, len: u64) {
        Written::zeros(self, offset, len);
    }
}

/// A sink whose writes are recorded (see `Written`).
pub type Tracking<S> = Observed<S, Written>;

/// Wraps `inner` so that its writes are recorded.
pub fn tracking<S: Sink>(inner: S) -> Tracking<S> {
    Observed {
        inner,
        observer: Written::new(),
    }
}

/// Reads the last write to each place back from the medium (O_DIRECT, past the page cache;
/// call `sync` first) and compares, telling apart a read error, different data, and a card
/// smaller than it claims (writes wrap around). Reports `Phase::Verify` events.
///
/// Neighbouring segments are read together, up to `BATCH` bytes at a time, by `READERS`
/// threads: while one hashes what it read, another's read is in flight.
pub fn read_back(dev: &Device, written: &Written, progress: Callback<'_>) -> Result<()> {
    let total = written.bytes();
    let segments = written.last_writes();
    let batches = batches(&segments);
    let readers = (0..READERS.min(batches.len()))
        .map(|_| {
            dev.direct_reader()
                .map_err(|e| Error::io(format!("reading {}", dev.path().display()), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, std::result::Result<(), Fault>)>();
    std::thread::scope(|s| {
        for mut reader in readers {
            let tx = tx.clone();
            let (segments, batches, next, stop) = (&segments, &batches, &next, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = batches.get(i) else { break };
                    let r = check_batch(&mut reader, segments, b.clone());
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0;
        let passed = in_order(batches.len(), rx, |i| {
            done += segments[batches[i].clone()]
                .iter()
                .map(|s| s.len)
                .sum::<u64>();
            progress(&Event {
                phase: Phase::Verify,
                device: Some(dev.path().to_path_buf()),
                done: done.min(total),
                total,
            });
        });
        // The readers stop at their next batch (after a fault, the rest is not read).
        stop.store(true, Ordering::Relaxed);
        match passed {
            Err(f) => Err(f.into_error(dev, &segments)),
            Ok(n) if n < batches.len() => Err(Error::Internal(format!(
                "{}: the read-back stopped after {n} of {} parts",
                dev.path().display(),
                batches.len()
            ))),
            Ok(_) => Ok(()),
        }
    })
}

/// Goes through results that arrive in any order (a batch's index and outcome) in the
/// order of the batches: `passed` is told of each that passed, up to the first fault,
/// which is given (the first place on the device, whichever reader found its own first);
/// else how many passed.
fn in_order<F>(
    count: usize,
    arrivals: impl IntoIterator<Item = (usize, std::result::Result<(), F>)>,
    mut passed: impl FnMut(usize),
) -> std::result::Result<usize, F> {
    let mut results: Vec<Option<std::result::Result<(), F>>> = (0..count).map(|_| None).collect();
    let mut told = 0;
    for (i, r) in arrivals {
        results[i] = Some(r);
        while let Some(Some(r)) = results.get_mut(told).map(Option::take) {
            r?;
            passed(told);
            told += 1;
        }
    }
    Ok(told)
}

/// Threads reading back at once: two keep the device busy while one of them hashes.
const READERS: usize = 2;
/// The most read at once by one reader (a run of neighbouring segments).
const BATCH: u64 = 4 * MIB;
/// Segments this close are read together (the bytes between are read and ignored).
const NEAR: u64 = 64 << 10;

/// Runs of segments (indices) read together: neighbours within `NEAR` of each other, at
/// most `BATCH` bytes from the first's start to the last's end.
fn batches(segments: &[Segment]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        match out.last_mut() {
            Some(b)
                if {
                    let (first, last) = (&segments[b.start], &segments[b.end - 1]);
                    s.offset <= last.offset + last.len + NEAR
                        && s.offset + s.len - first.offset <= BATCH
                } =>
            {
                b.end = i + 1
            }
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// What a reader found wrong at the first faulty segment of its run.
enum Fault {
    /// The device did not read at byte `at`.
    Read { at: u64, error: std::io::Error },
    /// Segment `index` (of `last_writes`) read back as `got`.
    Differs { index: usize, got: Vec<u8> },
}

impl Fault {
    fn into_error(self, dev: &Device, segments: &[Segment]) -> Error {
        match self {
            Fault::Read { at, error } => Error::io(
                format!(
                    "{}: read error at sector {}",
                    dev.path().display(),
                    at / 512
                ),
                std::io::Error::other(error.to_string()),
            ),
            Fault::Differs { index, got } => mismatch(dev, &segments[index], &got),
        }
    }
}

/// Reads a run of segments (`run`, indices into `segments`) in one read and compares each;
/// a run that does not read is read again segment by segment, to name the first one that
/// fails.
fn check_batch(
    reader: &mut dyn ReadBack,
    segments: &[Segment],
    run: std::ops::Range<usize>,
) -> std::result::Result<(), Fault> {
    let (first, last) = (&segments[run.start], &segments[run.end - 1]);
    let span = (last.offset + last.len - first.offset) as usize;
    if let Ok(bytes) = reader.read(first.offset, span) {
        for i in run {
            let s = &segments[i];
            let from = (s.offset - first.offset) as usize;
            compare(i, s, &bytes[from..from + s.len as usize])?;
        }
        return Ok(());
    }
    for i in run {
        let s = &segments[i];
        let got = reader
            .read(s.offset, s.len as usize)
            .map_err(|error| Fault::Read {
                at: s.offset,
                error,
            })?;
        compare(i, s, got)?;
    }
    Ok(())
}

/// Reads of the medium for the read-back: a `DirectReader` (a stand-in in tests).
trait ReadBack {
    fn read(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]>;
}

impl ReadBack for crate::device::DirectReader<'_> {
    fn read(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
        crate::device::DirectReader::read(self, offset, len)
    }
}

/// Compares segment `index` with what was read back for it.
fn compare(index: usize, s: &Segment, got: &[u8]) -> std::result::Result<(), Fault> {
    if Sha256::digest(got)[..] != s.sha256[..] {
        return Err(Fault::Differs {
            index,
            got: got.to_vec(),
        });
    }
    Ok(())
}

fn mismatch(dev: &Device, s: &Segment, got: &[u8]) -> Error {
    let target = dev.path().display().to_string();
    let at = s.offset;
    // A fake-capacity card maps high addresses onto low ones: what was read here equals
    // what is stored a power of two lower.
    if got.iter().any(|b| *b != 0) {
        let mut k = MIB;
        while k <= at {
            if let Ok(low) = dev.read_direct(at - k, s.len as usize)
                && low == got
            {
                return Error::Mismatch {
                    target,
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
        target,
        what: format!(
            "the device returned different data in bytes {}..{}",
            bytes(at),
            bytes(at + s.len)
        ),
        at: Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemSink;

    #[test]
    fn results_are_taken_in_device_order_whatever_order_they_arrive_in() {
        let mut told = Vec::new();
        let r = in_order(3, [(2, Err("c")), (1, Ok(())), (0, Ok(()))], |i| {
            told.push(i)
        });
        assert_eq!((r, &told[..]), (Err("c"), &[0, 1][..]));
        // Two faults: the first on the device, though it arrives last.
        assert_eq!(
            in_order(2, [(1, Err("b")), (0, Err("a"))], |_| {}),
            Err("a")
        );
        told.clear();
        let r = in_order::<()>(3, [(1, Ok(())), (2, Ok(())), (0, Ok(()))], |i| told.push(i));
        assert_eq!((r, &told[..]), (Ok(3), &[0, 1, 2][..]));
        // A result still missing (a reader that stopped): fewer passed than there are.
        assert_eq!(in_order::<()>(2, [(1, Ok(()))], |_| {}), Ok(0));
    }

    /// A medium of `bytes` where any read that touches `bad` fails.
    struct Medium {
        bytes: Vec<u8>,
        bad: std::ops::Range<u64>,
    }

    impl ReadBack for Medium {
        fn read(&mut self, offset: u64, len: usize) -> std::io::Result<&[u8]> {
            let end = offset + len as u64;
            if offset < self.bad.end && self.bad.start < end {
                return Err(std::io::Error::other("I/O error"));
            }
            Ok(&self.bytes[offset as usize..end as usize])
        }
    }

    #[test]
    fn a_run_that_does_not_read_is_read_again_by_segment_to_name_the_failing_one() {
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let seg = |offset: u64, len: u64| Segment {
            offset,
            len,
            sha256: Sha256::digest(&bytes[offset as usize..(offset + len) as usize]).into(),
        };
        let segments = [
            seg(0, 1024),
            seg(1024, 1024),
            seg(2048, 1024),
            seg(3072, 1024),
        ];
        let mut m = Medium {
            bytes: bytes.clone(),
            bad: 2100..2101,
        };
        match check_batch(&mut m, &segments, 0..4) {
            Err(Fault::Read { at, .. }) => assert_eq!(at, 2048),
            _ => panic!("the third segment does not read"),
        }
        // A segment that reads but differs is named by its index.
        m.bad = 0..0;
        m.bytes[3100] ^= 1;
        match check_batch(&mut m, &segments, 1..4) {
            Err(Fault::Differs { index, .. }) => assert_eq!(index, 3),
            _ => panic!("the fourth segment differs"),
        }
        assert!(check_batch(&mut m, &segments, 0..3).is_ok());
    }

    #[test]
    fn neighbouring_segments_are_read_together_up_to_a_batch() {
        let seg = |offset: u64, len: u64| Segment {
            offset,
            len,
            sha256: [0; 32],
        };
        let segments = [
            seg(0, MIB),
            seg(MIB, MIB),
            seg(2 * MIB + NEAR, 4096),
            // Too far from the one before.
            seg(2 * MIB + 2 * NEAR + 4097, 512),
            seg(8 * MIB, MIB),
            seg(9 * MIB, MIB),
            seg(10 * MIB, MIB),
            seg(11 * MIB, MIB),
            // Would make the run longer than a batch.
            seg(12 * MIB, 1),
        ];
        assert_eq!(batches(&segments), [0..3, 3..4, 4..8, 8..9]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn contiguous_writes_merge_within_a_mib_and_overwritten_ones_are_not_checked() {
        let mut t = tracking(MemSink::new(3 << 20));
        t.data(MIB - 4, &[1; 8]).unwrap();
        t.zeros(MIB + 4, 4).unwrap();
        t.data(2 * MIB, &[2; 16]).unwrap();
        t.data(2 * MIB + 8, &[3; 4]).unwrap();
        let w = t.observer;
        assert_eq!(w.bytes(), 32);
        let kept: Vec<(u64, u64)> = w.last_writes().iter().map(|s| (s.offset, s.len)).collect();
        // The segment at 2 MiB is overlapped by the later write inside it.
        assert_eq!(kept, [(MIB - 4, 4), (MIB, 8), (2 * MIB + 8, 4)]);
        assert_eq!(
            w.last_writes()[1].sha256,
            <[u8; 32]>::from(Sha256::digest([1, 1, 1, 1, 0, 0, 0, 0]))
        );
    }
}
