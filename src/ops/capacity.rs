//! The counterfeit-card check: does a device store as many bytes as it claims?
//!
//! Fake SD cards and USB sticks report a large size but hold a small flash chip: writes past
//! the real size either wrap around onto lower offsets (the controller ignores high address
//! bits) or vanish (reads fail or return other data). The check writes unique blocks, each
//! sector tagged with its own offset, a per-run random nonce, a write number and a CRC, at
//! spread offsets across the whole claimed size (first and last sector included, denser
//! around powers of two where fakes wrap), syncs, drops the kernel's caches and reads every
//! block back past the page cache (O_DIRECT). A block that reads back another block's tag
//! wraps; one that reads back junk, a stale tag or an error is dead. The real size is then
//! found exactly: for a wrap, the smallest period that lands on sector 0; otherwise by binary
//! search between the highest good and the lowest bad probe.
//!
//! Every probed block's contents are read before it is written and put back afterwards
//! (`Restore::Always`); before a flash they are put back only when the card is refused, since
//! the flash overwrites them anyway.
//!
//! Not for: device policy (`device::check` decides whether the device may be written) or
//! telling a slow card from a fast one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::device::{self, Device, Refusal, SafetyPolicy};
use crate::error::{Error, Result};
use crate::units::human;

/// Bytes of each spread probe: big enough that a card's small write cache cannot hold all
/// of them, small enough to keep the check within seconds.
pub const PROBE: u64 = 32 << 10;
/// Probes spread evenly over the claimed size, the first and last block included.
const SPREAD: u64 = 512;
/// The smallest power of two around which extra probes go.
const FIRST_BOUNDARY: u64 = 1 << 20;
/// Wrap periods tried before falling back to binary search.
const PERIOD_TRIES: usize = 64;
/// The unit of tags: every sector of a probe carries its own, so a partial wrap is seen.
const TAG: usize = 512;
const MAGIC: &[u8; 8] = b"SKFCAP01";

/// Whether to put back what the probed blocks held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Always (`check-capacity`: the card's data stays as it was).
    Always,
    /// Only when the card is refused (before a flash, which overwrites the blocks anyway).
    OnRefusal,
}

/// A passed check.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub device: PathBuf,
    /// Bytes the device claims, all of which answered with what was written.
    pub claimed: u64,
    /// Blocks written and read back.
    pub probes: usize,
    /// Bytes of every probe written (each probe is `PROBE` bytes).
    pub bytes_probed: u64,
    /// Whether the probed blocks hold their old contents again.
    pub restored: bool,
    pub seconds: f64,
}

/// How a device falls short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Writes past the real size land on lower offsets.
    WrapsAround,
    /// Past the real size, reads fail or return other data than written.
    DeadRegion,
}

/// `check-capacity`: inspects the device, applies the flash safety policy, claims it
/// exclusively, probes it and puts the probed blocks back. A device that stores less than
/// it claims is refused (`Refusal::Counterfeit`) naming its real size.
pub fn check_capacity(path: &Path, allow_fixed: bool) -> Result<CapacityReport> {
    let info = device::inspect(path)?;
    let policy = SafetyPolicy {
        allow_fixed,
        min_size: 0,
    };
    device::check(&info, &policy)?;
    crate::signals::install_interrupt_flag()
        .map_err(|e| Error::io("installing the signal handlers", e))?;
    let dev = Device::open_exclusive(&info)?;
    probe(&dev, Restore::Always)
}

/// Probes an open device; `Err(Refusal::Counterfeit)` when it stores less than it claims.
/// What the probed blocks held is put back as `restore` says, always before a refusal.
pub fn probe(dev: &Device, restore: Restore) -> Result<CapacityReport> {
    let started = Instant::now();
    let mut run = Run::new(dev)?;
    let found = run.find_fault();
    let restored = match (&found, restore) {
        (Ok(None), Restore::OnRefusal) => false,
        (Ok(Some((real, _))), _) => run.restore(Some(*real))?,
        _ => run.restore(None)?,
    };
    match found? {
        None => Ok(CapacityReport {
            device: dev.path().to_path_buf(),
            claimed: dev_size(dev),
            probes: run.probes,
            bytes_probed: run.probes as u64 * PROBE,
            restored,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Some((real, fault)) => Err(Refusal::Counterfeit {
            device: dev.path().to_path_buf(),
            claimed: dev_size(dev),
            real,
            how: match fault {
                Fault::WrapsAround => {
                    format!("data written past {} reappears below it", human(real))
                }
                Fault::DeadRegion => format!(
                    "past {} reads fail or return other data than written",
                    human(real)
                ),
            },
        }
        .into()),
    }
}

fn dev_size(dev: &Device) -> u64 {
    crate::sink::Sink::size(dev)
}

/// The offsets of the spread probes on a device of `size` bytes: evenly spread (first and
/// last block included), plus each power of two from 1 MiB (the block before, at and after
/// it, and halfway to the next), sorted and not overlapping. `size` is whole `sector`s.
pub fn probe_offsets(size: u64, sector: u64) -> Vec<u64> {
    if size < PROBE {
        return vec![0];
    }
    let last = size - PROBE;
    let align = |o: u64| o - o % PROBE;
    let mut v: Vec<u64> = (0..SPREAD)
        .map(|i| align(last / (SPREAD - 1) * i))
        .collect();
    let mut p = FIRST_BOUNDARY;
    while p < size {
        for o in [p - PROBE, p, p + PROBE, p + p / 2] {
            if o <= last {
                v.push(o);
            }
        }
        p = p.saturating_mul(2);
    }
    v.sort_unstable();
    v.dedup();
    // The last block is kept (it holds the last sector); any block overlapping a later
    // kept one goes.
    let mut kept: Vec<u64> = vec![last - last % sector];
    for &o in v.iter().rev() {
        if o + PROBE <= kept[kept.len() - 1] {
            kept.push(o);
        }
    }
    kept.reverse();
    kept
}

/// One check's writes: the nonce, a write counter, and what each written place held.
struct Run<'d> {
    dev: &'d Device,
    nonce: [u8; 16],
    writes: u64,
    /// (offset, old contents), in the order the places were first written.
    journal: Vec<(u64, Vec<u8>)>,
    probes: usize,
    sector: u64,
}

/// One write: where, how long, its number (in every tag), and whether the device took it.
#[derive(Debug, Clone, Copy)]
struct Wrote {
    at: u64,
    len: u64,
    number: u64,
    ok: bool,
}

/// What reading back a write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Own,
    /// The sector at `mine` holds the tag written at `theirs`.
    Other {
        mine: u64,
        theirs: u64,
    },
    /// The sector at `at` holds junk, an older tag of its own, or could not be read.
    Dead {
        at: u64,
    },
}

/// The lowest place known bad, and the wrap shift that made it bad (if it wraps).
#[derive(Debug, Clone, Copy)]
struct Bad {
    at: u64,
    shift: Option<u64>,
}

impl<'d> Run<'d> {
    fn new(dev: &'d Device) -> Result<Run<'d>> {
        let mut nonce = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce))
            .map_err(|e| Error::io("reading /dev/urandom for the probe nonce", e))?;
        Ok(Run {
            dev,
            nonce,
            writes: 0,
            journal: Vec::new(),
            probes: 0,
            sector: u64::from(dev.logical_sector()).max(TAG as u64),
        })
    }

    /// The spread pass, then the search for the real size: `None` when every probe came back.
    fn find_fault(&mut self) -> Result<Option<(u64, Fault)>> {
        let offsets = probe_offsets(dev_size(self.dev), self.sector);
        let mut wrote = Vec::with_capacity(offsets.len());
        for &o in &offsets {
            wrote.push(self.write(o, PROBE.min(dev_size(self.dev)))?);
        }
        self.probes = wrote.len();
        self.settle();
        let mut dead = Vec::new();
        // Sectors found holding another's tag, by the place whose tag they hold: every
        // offset that shares one place with a lower one is past the real size.
        let mut shared: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for w in &wrote {
            match self.seen(w) {
                Seen::Own => {}
                Seen::Other { mine, theirs } => shared.entry(theirs).or_default().push(mine),
                Seen::Dead { at } => dead.push(Bad { at, shift: None }),
            }
        }
        let mut bad = dead;
        for (theirs, mut group) in shared {
            group.push(theirs);
            let low = group.iter().copied().min().unwrap_or(theirs);
            bad.extend(group.into_iter().filter(|&x| x > low).map(|at| Bad {
                at,
                shift: Some(at - low),
            }));
        }
        // The lowest bad place; of two at one place, the one that says how it wraps.
        let lowest = bad.into_iter().min_by_key(|b| (b.at, b.shift.is_none()));
        let Some(bad) = lowest else {
            return Ok(None);
        };
        // Everything below the highest good probe under the bad place came back.
        let good_end = wrote
            .iter()
            .filter(|w| w.at + w.len <= bad.at)
            .map(|w| w.at + w.len)
            .max()
            .unwrap_or(0);
        if let Some(shift) = bad.shift
            && let Some(real) = self.wrap_period(shift, good_end, bad.at)?
        {
            return Ok(Some((real, Fault::WrapsAround)));
        }
        let real = self.bisect(good_end, bad)?;
        let fault = if bad.shift.is_some() {
            Fault::WrapsAround
        } else {
            Fault::DeadRegion
        };
        Ok(Some((real, fault)))
    }

    /// A wrap by `shift` means the real size divides it: the smallest divisor in
    /// `[low, high]` whose offset lands on sector 0 is the real size.
    fn wrap_period(&mut self, shift: u64, low: u64, high: u64) -> Result<Option<u64>> {
        let sector = self.sector;
        let most = shift / low.max(sector);
        let candidates = (1..=most.min(1 << 16))
            .rev()
            .filter(|k| shift.is_multiple_of(*k))
            .map(|k| shift / k)
            .filter(|c| c.is_multiple_of(sector) && (low..=high).contains(c))
            .take(PERIOD_TRIES);
        for c in candidates.collect::<Vec<_>>() {
            let zero = self.write(0, sector)?;
            let far = self.write(c, sector)?;
            self.settle();
            let landed = self.seen(&zero) == Seen::Other { mine: 0, theirs: c };
            if landed && far.ok {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Binary search for the lowest bad sector in `[good_end, bad.at]`: a sector is good
    /// when a fresh tag written there reads back, and (for a wrap by `shift`) a fresh tag
    /// written `shift` below it first is not overwritten by it.
    fn bisect(&mut self, good_end: u64, bad: Bad) -> Result<u64> {
        let sector = self.sector;
        let (mut lo, mut hi) = (good_end, bad.at);
        while lo < hi {
            let mid = lo + ((hi - lo) / sector / 2) * sector;
            if self.sector_good(mid, bad.shift)? {
                lo = mid + sector;
            } else {
                hi = mid;
            }
        }
        Ok(hi)
    }

    fn sector_good(&mut self, at: u64, shift: Option<u64>) -> Result<bool> {
        let below = match shift {
            Some(s) if s <= at => Some(self.write(at - s, self.sector)?),
            _ => None,
        };
        let here = self.write(at, self.sector)?;
        self.settle();
        let kept = below.is_none_or(|b| self.seen(&b) == Seen::Own);
        Ok(here.ok && self.seen(&here) == Seen::Own && kept)
    }

    /// Saves what `[at, at+len)` holds, then writes fresh tags there past the page cache.
    fn write(&mut self, at: u64, len: u64) -> Result<Wrote> {
        if crate::signals::interrupted() {
            return Err(Error::io(
                format!("probing {}", self.dev.path().display()),
                crate::signals::interrupted_error(),
            ));
        }
        self.writes += 1;
        if let Ok(old) = self.dev.read_direct(at, len as usize) {
            self.journal.push((at, old));
        }
        let bytes = tags(&self.nonce, at, len, self.writes);
        let ok = self.dev.write_direct(at, &bytes).is_ok();
        Ok(Wrote {
            at,
            len,
            number: self.writes,
            ok,
        })
    }

    /// Makes the writes reach the medium and forgets every cached page. Failures are not
    /// errors here: a card that cannot flush shows it in what it reads back.
    fn settle(&mut self) {
        let _ = self.dev.sync();
        let _ = self.dev.drop_caches();
    }

    /// Reads a write back and says whose tags it holds.
    fn seen(&self, w: &Wrote) -> Seen {
        let Ok(back) = self.dev.read_direct(w.at, w.len as usize) else {
            return Seen::Dead { at: w.at };
        };
        for (i, s) in back.chunks_exact(TAG).enumerate() {
            let mine = w.at + (i * TAG) as u64;
            match untag(&self.nonce, s) {
                Some((at, n)) if at == mine && n == w.number && w.ok => {}
                Some((theirs, _)) if theirs != mine => return Seen::Other { mine, theirs },
                _ => return Seen::Dead { at: mine },
            }
        }
        Seen::Own
    }

    /// Writes back what every probed place held, the latest first so that a place written
    /// twice (or two offsets that wrap onto one place) ends with what it held before the
    /// check. On a refused device, places at or past `real` are skipped when they fail:
    /// they hold nothing. Returns whether everything was put back.
    fn restore(&mut self, real: Option<u64>) -> Result<bool> {
        let mut first_error = None;
        for (at, old) in self.journal.drain(..).rev() {
            if let Err(e) = self.dev.write_direct(at, &old)
                && real.is_none_or(|r| at + old.len() as u64 <= r)
            {
                first_error.get_or_insert(e);
            }
        }
        let synced = self.dev.sync();
        match first_error {
            Some(e) => Err(e),
            None => synced.map(|()| true),
        }
    }
}

/// `len` bytes of tags for `[at, at+len)`: each sector holds the magic, the nonce, its own
/// offset, the write number, filler derived from them, and a CRC-32 of the rest.
fn tags(nonce: &[u8; 16], at: u64, len: u64, number: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    for (i, s) in out.chunks_exact_mut(TAG).enumerate() {
        let offset = at + (i * TAG) as u64;
        s[..8].copy_from_slice(MAGIC);
        s[8..24].copy_from_slice(nonce);
        s[24..32].copy_from_slice(&offset.to_le_bytes());
        s[32..40].copy_from_slice(&number.to_le_bytes());
        // Filler that differs per sector and per run, so no two sectors look alike to a
        // controller that deduplicates or compresses.
        let seed = u64::from_le_bytes(nonce[..8].try_into().unwrap_or_default());
        let mut x = (offset ^ number.rotate_left(32) ^ seed) | 1;
        for w in s[40..TAG - 4].chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let crc = crc32fast::hash(&s[..TAG - 4]);
        s[TAG - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    out
}

/// The (offset, write number) a sector's tag names, if it is an intact tag of this run.
fn untag(nonce: &[u8; 16], s: &[u8]) -> Option<(u64, u64)> {
    let crc = u32::from_le_bytes(s[TAG - 4..TAG].try_into().ok()?);
    if &s[..8] != MAGIC || &s[8..24] != nonce || crc32fast::hash(&s[..TAG - 4]) != crc {
        return None;
    }
    let at = u64::from_le_bytes(s[24..32].try_into().ok()?);
    let number = u64::from_le_bytes(s[32..40].try_into().ok()?);
    Some((at, number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_cover_both_ends_and_boundaries() {
        let size = 4u64 << 30;
        let v = probe_offsets(size, 512);
        assert_eq!(v[0], 0);
        assert_eq!(*v.last().unwrap(), size - PROBE);
        assert!(v.windows(2).all(|w| w[0] + PROBE <= w[1]));
        for p in [1u64 << 30, 2 << 30] {
            assert!(v.contains(&p) && v.contains(&(p - PROBE)), "{p}");
        }
        assert!(v.contains(&(3 << 29)));
        assert!((512..=1024).contains(&v.len()), "{}", v.len());
        // A size that is not whole probes still has its last sector probed.
        let odd = (1u64 << 30) + 512 * 7;
        assert_eq!(*probe_offsets(odd, 512).last().unwrap(), odd - PROBE);
    }

    #[test]
    fn tags_name_their_sector_and_reject_others() {
        let nonce = [7u8; 16];
        let t = tags(&nonce, 4096, 1024, 3);
        assert_eq!(untag(&nonce, &t[..512]), Some((4096, 3)));
        assert_eq!(untag(&nonce, &t[512..]), Some((4608, 3)));
        assert_eq!(untag(&[8u8; 16], &t[..512]), None);
        let mut bent = t[..512].to_vec();
        bent[100] ^= 1;
        assert_eq!(untag(&nonce, &bent), None);
        assert_eq!(untag(&nonce, &[0u8; 512]), None);
    }
}
