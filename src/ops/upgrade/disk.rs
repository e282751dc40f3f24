//! The card or image an upgrade edits, as a [`GuardedDisk`]: positioned reads anywhere,
//! writes only inside the regions the upgrade declared writable (never the table, raw blobs
//! or the partition that holds user data), each counted, with flushes the caller orders
//! writes around. Also [`DiffSink`], which writes a partition only where it differs, and
//! the read-back of what was written. Not where writes are decided (`boot`, `rootfs`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::{ReadAt, changed_runs};
use crate::sink::Sink;
use crate::sink::tracking::Written;

#[cfg(feature = "fault-injection")]
use super::fault::PowerLoss;

/// A named byte range of the disk.
#[derive(Debug, Clone)]
pub struct Region {
    pub what: String,
    pub start: u64,
    pub len: u64,
}

impl Region {
    fn overlaps(&self, offset: u64, end: u64) -> bool {
        offset < self.start + self.len && self.start < end
    }

    fn holds(&self, offset: u64, end: u64) -> bool {
        offset >= self.start && end <= self.start + self.len
    }
}

/// How many writes were made (or, in a dry pass, would be) and how many bytes they held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteCount {
    pub writes: u64,
    pub bytes: u64,
}

/// The disk an upgrade edits, with the regions it may and may not write.
pub struct GuardedDisk {
    file: File,
    path: PathBuf,
    size: u64,
    /// Where writes may land.
    allowed: Vec<Region>,
    /// Where no write may land, whatever else allows it.
    denied: Vec<Region>,
    count: WriteCount,
    /// A dry pass: writes are checked and counted but not made.
    dry: bool,
    /// Every write made, when tracked for a read-back.
    tracked: Option<Written>,
    #[cfg(feature = "fault-injection")]
    fault: Option<PowerLoss>,
}

impl GuardedDisk {
    pub fn new(file: File, path: &Path, size: u64) -> GuardedDisk {
        GuardedDisk {
            file,
            path: path.to_path_buf(),
            size,
            allowed: Vec::new(),
            denied: Vec::new(),
            count: WriteCount::default(),
            dry: false,
            tracked: None,
            #[cfg(feature = "fault-injection")]
            fault: PowerLoss::from_env(),
        }
    }

    /// Turns dry mode on or off; the count restarts.
    pub fn set_dry(&mut self, dry: bool) {
        self.dry = dry;
        self.count = WriteCount::default();
    }

    pub fn is_dry(&self) -> bool {
        self.dry
    }

    /// The writes since the count last restarted.
    pub fn count(&self) -> WriteCount {
        self.count
    }

    /// Records what every later write wrote (for reading it back afterwards).
    pub fn track_writes(&mut self) {
        self.tracked = Some(Written::new());
    }

    /// The tracked writes (none unless `track_writes` was called).
    pub fn tracked(&self) -> Option<&Written> {
        self.tracked.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allows writes inside `[start, start+len)`.
    pub fn allow(&mut self, what: &str, start: u64, len: u64) {
        self.allowed.push(Region {
            what: what.to_string(),
            start,
            len,
        });
    }

    /// Forbids writes inside `[start, start+len)` (the user's data), over any `allow`.
    pub fn deny(&mut self, what: &str, start: u64, len: u64) {
        self.denied.push(Region {
            what: what.to_string(),
            start,
            len,
        });
    }

    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.guard(offset, bytes.len() as u64)?;
        if self.dry {
            self.tally(bytes.len());
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &mut self.fault {
            f.at(&self.file, self.count.writes);
        }
        self.tally(bytes.len());
        self.record(offset, bytes);
        #[cfg(feature = "fault-injection")]
        if self.fault.as_mut().is_some_and(|f| f.hold(offset, bytes)) {
            return Ok(());
        }
        self.file.write_all_at(bytes, offset).map_err(|e| {
            Error::io(
                format!("writing {} at byte {offset}", self.path.display()),
                e,
            )
        })
    }

    /// Refuses a write that touches a denied region or leaves every allowed one.
    fn guard(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset.saturating_add(len);
        let refuse = |why: String| {
            Error::io(
                format!("{}", self.path.display()),
                io::Error::other(format!("refusing a write at byte {offset}+{len}: {why}")),
            )
        };
        if let Some(r) = self.denied.iter().find(|r| r.overlaps(offset, end)) {
            return Err(refuse(format!("inside {}, which is never written", r.what)));
        }
        if !self.allowed.iter().any(|r| r.holds(offset, end)) {
            return Err(refuse(
                "outside every region this upgrade may change".to_string(),
            ));
        }
        Ok(())
    }

    fn tally(&mut self, len: usize) {
        self.count.writes += 1;
        self.count.bytes += len as u64;
    }

    /// Remembers a write for the read-back (when tracking).
    fn record(&mut self, offset: u64, bytes: &[u8]) {
        if let Some(t) = &mut self.tracked {
            t.data(offset, bytes);
        }
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_through(buf, offset).map_err(|e| {
            Error::io(
                format!("reading {} at byte {offset}", self.path.display()),
                e,
            )
        })
    }

    /// Reads the medium (then, under fault injection, what is still in the simulated
    /// cache over it).
    fn read_through(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)?;
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.fault {
            f.overlay(buf, offset);
        }
        Ok(())
    }

    /// Makes every write so far durable before any later one (fsync: data and device cache).
    pub fn sync(&mut self) -> Result<()> {
        if self.dry {
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &mut self.fault {
            // Power may also fail while a flush is under way.
            f.at(&self.file, self.count.writes);
            for h in f.drain() {
                self.file
                    .write_all_at(&h.bytes, h.offset)
                    .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
            }
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

impl ReadAt for GuardedDisk {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_through(buf, offset)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// A partition of the disk as a sink that writes only what differs from what is there:
/// unchanged blocks cost a read, not a write (and not flash wear).
pub struct DiffSink<'a> {
    pub disk: &'a mut GuardedDisk,
    pub base: u64,
    pub len: u64,
    pub skipped: u64,
    pub error: Option<Error>,
}

/// The block size unchanged content is skipped in.
const DIFF_BLOCK: usize = 4096;

impl DiffSink<'_> {
    fn put(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if offset.saturating_add(bytes.len() as u64) > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("write at {offset} leaves the {}-byte partition", self.len),
            ));
        }
        let mut old = vec![0u8; bytes.len()];
        self.disk.read_through(&mut old, self.base + offset)?;
        let runs = changed_runs(&old, bytes, DIFF_BLOCK);
        let changed: usize = runs.iter().map(|r| r.len()).sum();
        self.skipped += (bytes.len() - changed) as u64;
        for r in runs {
            let at = self.base + offset + r.start as u64;
            if let Err(e) = self.disk.write_at(at, &bytes[r]) {
                let msg = e.to_string();
                self.error = Some(e);
                return Err(io::Error::other(msg));
            }
        }
        Ok(())
    }
}

impl Sink for DiffSink<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.put(offset, bytes)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.put(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::DIFF_BLOCK;
    use crate::io::changed_runs;

    #[test]
    fn changed_runs_merge_neighbouring_blocks_and_skip_equal_ones() {
        let old = vec![0u8; DIFF_BLOCK * 5 + 10];
        let mut new = old.clone();
        new[1] = 1;
        new[DIFF_BLOCK + 2] = 1;
        new[DIFF_BLOCK * 5 + 3] = 1;
        assert_eq!(
            changed_runs(&old, &new, DIFF_BLOCK),
            vec![0..DIFF_BLOCK * 2, DIFF_BLOCK * 5..DIFF_BLOCK * 5 + 10]
        );
        assert!(changed_runs(&old, &old, DIFF_BLOCK).is_empty());
    }
}
