//! The card or image an upgrade edits: positioned reads anywhere, writes only inside the
//! regions the upgrade declared writable (never the table, raw blobs or the partition that
//! holds user data), each counted, with flushes the caller orders writes around.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::ReadAt;
use crate::sink::Sink;

/// Environment variable that stops the process before its N+1th write (power-loss tests).
pub const FAULT_ENV: &str = "SKIFF_FLASH_FAULT_AFTER_WRITES";
/// With the fault variable: `lose` makes writes stay in memory until the next flush, and
/// the fault keeps only a pseudo-random subset of them, as a device's volatile write cache
/// may on power loss.
pub const FAULT_CACHE_ENV: &str = "SKIFF_FLASH_FAULT_CACHE";
/// Varies which unflushed writes a `lose` fault keeps.
pub const FAULT_SEED_ENV: &str = "SKIFF_FLASH_FAULT_SEED";
/// Exit status when a fault was injected.
pub const FAULT_EXIT: i32 = 86;

pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    /// (what, start, len): where writes may land.
    writable: Vec<(String, u64, u64)>,
    /// (what, start, len): where no write may land, whatever else allows it.
    denied: Vec<(String, u64, u64)>,
    pub writes: u64,
    pub bytes_written: u64,
    fault_after: Option<u64>,
    /// Writes since the last flush, when simulating a volatile cache.
    pending: Option<Vec<(u64, Vec<u8>)>>,
    /// A dry run: writes are counted but not made.
    dry: bool,
    /// (offset, length, SHA-256) of every write, when tracked for a read-back.
    tracked: Option<Vec<(u64, u64, [u8; 32])>>,
}

impl Disk {
    pub fn new(file: File, path: &Path, size: u64, dry: bool) -> Disk {
        let fault_after = std::env::var(FAULT_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok());
        let lose = fault_after.is_some()
            && std::env::var(FAULT_CACHE_ENV).is_ok_and(|v| v.trim() == "lose");
        Disk {
            file,
            path: path.to_path_buf(),
            size,
            writable: Vec::new(),
            denied: Vec::new(),
            writes: 0,
            bytes_written: 0,
            fault_after,
            pending: lose.then(Vec::new),
            dry,
            tracked: None,
        }
    }

    /// Turns dry-run mode on or off; counters restart.
    pub fn set_dry(&mut self, dry: bool) {
        self.dry = dry;
        self.writes = 0;
        self.bytes_written = 0;
    }

    /// Records what every later write wrote (for reading it back afterwards).
    pub fn track_writes(&mut self) {
        self.tracked = Some(Vec::new());
    }

    /// (offset, length, SHA-256) of every tracked write, in order.
    pub fn tracked(&self) -> &[(u64, u64, [u8; 32])] {
        self.tracked.as_deref().unwrap_or_default()
    }

    pub fn is_dry(&self) -> bool {
        self.dry
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allows writes inside `[start, start+len)`.
    pub fn allow(&mut self, what: &str, start: u64, len: u64) {
        self.writable.push((what.to_string(), start, len));
    }

    /// Forbids writes inside `[start, start+len)` (the user's data), over any `allow`.
    pub fn deny(&mut self, what: &str, start: u64, len: u64) {
        self.denied.push((what.to_string(), start, len));
    }

    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset.saturating_add(bytes.len() as u64);
        if let Some((what, ..)) = self
            .denied
            .iter()
            .find(|(_, s, l)| offset < s + l && *s < end)
        {
            return Err(Error::io(
                format!("{}", self.path.display()),
                io::Error::other(format!(
                    "refusing a write at byte {offset}+{}: inside {what}, which is never written",
                    bytes.len()
                )),
            ));
        }
        if !self
            .writable
            .iter()
            .any(|(_, s, l)| offset >= *s && end <= s + l)
        {
            return Err(Error::io(
                format!("{}", self.path.display()),
                io::Error::other(format!(
                    "refusing a write at byte {offset}+{}: outside every region this upgrade may change",
                    bytes.len()
                )),
            ));
        }
        if !self.dry && self.fault_after == Some(self.writes) {
            self.power_loss();
        }
        self.writes += 1;
        self.bytes_written += bytes.len() as u64;
        if self.dry {
            return Ok(());
        }
        if let Some(t) = &mut self.tracked {
            use sha2::Digest;
            t.push((
                offset,
                bytes.len() as u64,
                sha2::Sha256::digest(bytes).into(),
            ));
        }
        if let Some(p) = &mut self.pending {
            p.push((offset, bytes.to_vec()));
            return Ok(());
        }
        self.file.write_all_at(bytes, offset).map_err(|e| {
            Error::io(
                format!("writing {} at byte {offset}", self.path.display()),
                e,
            )
        })
    }

    /// Simulated power loss (fault injection): what reached the medium stays; with a
    /// volatile cache, a pseudo-random subset of the unflushed writes reaches it, in any
    /// order. Then the process ends.
    fn power_loss(&mut self) -> ! {
        if let Some(pending) = self.pending.take() {
            let seed = std::env::var(FAULT_SEED_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let mut x = self.writes ^ seed.rotate_left(32);
            let mut kept: Vec<&(u64, Vec<u8>)> = Vec::new();
            for w in &pending {
                // splitmix64: one well-mixed bit per write.
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                if (z ^ (z >> 31)) >> 63 == 1 {
                    kept.push(w);
                }
            }
            kept.reverse();
            for (o, b) in kept {
                let _ = self.file.write_all_at(b, *o);
            }
            let _ = self.file.sync_all();
        }
        eprintln!(
            "skiff-flash: fault injected: stopping before write {} ({FAULT_ENV})",
            self.writes + 1
        );
        std::process::exit(FAULT_EXIT);
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_through(buf, offset).map_err(|e| {
            Error::io(
                format!("reading {} at byte {offset}", self.path.display()),
                e,
            )
        })
    }

    /// Reads the medium, then what is still in the simulated cache over it.
    fn read_through(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)?;
        let end = offset + buf.len() as u64;
        for (o, b) in self.pending.iter().flatten() {
            let (s, e) = ((*o).max(offset), (o + b.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&b[(s - o) as usize..(e - o) as usize]);
            }
        }
        Ok(())
    }

    /// Makes every write so far durable before any later one (fsync: data and device cache).
    pub fn sync(&mut self) -> Result<()> {
        if self.dry {
            return Ok(());
        }
        // Power may also fail while a flush is under way.
        if self.fault_after == Some(self.writes) {
            self.power_loss();
        }
        if let Some(p) = &mut self.pending {
            for (o, b) in std::mem::take(p) {
                self.file
                    .write_all_at(&b, o)
                    .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))?;
            }
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

impl ReadAt for Disk {
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
    pub disk: &'a mut Disk,
    pub base: u64,
    pub len: u64,
    pub skipped: u64,
    pub error: Option<Error>,
}

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
        // Compare and write in 4 KiB blocks.
        let mut i = 0;
        while i < bytes.len() {
            let j = (i + 4096).min(bytes.len());
            if old[i..j] == bytes[i..j] {
                self.skipped += (j - i) as u64;
                i = j;
                continue;
            }
            let mut k = j;
            while k < bytes.len() {
                let m = (k + 4096).min(bytes.len());
                if old[k..m] == bytes[k..m] {
                    break;
                }
                k = m;
            }
            if let Err(e) = self
                .disk
                .write_at(self.base + (offset + i as u64), &bytes[i..k])
            {
                let msg = e.to_string();
                self.error = Some(e);
                return Err(io::Error::other(msg));
            }
            i = k;
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
