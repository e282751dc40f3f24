//! Remembers what was written where (1 MiB-bounded segments with their SHA-256), so that
//! after a sync the medium can be read back past the page cache and compared: a card that
//! drops writes, returns other data or is smaller than it claims is caught before anyone
//! boots from it. `Tracking` is the sink wrapper; `Written` is the record on its own, for
//! writers that are not sinks.
//!
//! Not for deciding what to write or where: the wrapped writer does.

use std::collections::BTreeMap;

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
pub fn read_back(dev: &Device, written: &Written, progress: Callback<'_>) -> Result<()> {
    let total = written.bytes();
    let mut done = 0;
    for s in written.last_writes() {
        let got = dev.read_direct(s.offset, s.len as usize).map_err(|e| {
            Error::io(
                format!(
                    "{}: read error at sector {}",
                    dev.path().display(),
                    s.offset / 512
                ),
                std::io::Error::other(e.to_string()),
            )
        })?;
        if Sha256::digest(&got)[..] != s.sha256[..] {
            return Err(mismatch(dev, &s, &got));
        }
        done += s.len;
        progress(&Event {
            phase: Phase::Verify,
            device: Some(dev.path().to_path_buf()),
            done: done.min(total),
            total,
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
