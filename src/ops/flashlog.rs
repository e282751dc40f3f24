//! The production log `flash --log FILE.jsonl`: one JSON object per card and attempt —
//! when, which card (path, vendor, model, serial, size), what was written (board, or image
//! and the SHA-256 of its manifest), the customisation, bytes, duration, the read-back's
//! result and the error (null on success).
//!
//! Each line is appended with one `write` on an `O_APPEND` descriptor, so several runs
//! logging to the same file at once do not interleave lines. Not for progress or reports
//! on the terminal (the CLI).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::device::DeviceInfo;
use crate::error::{Error, Result};
use crate::ops::flash::FlashReport;
use crate::plan::custom::Record;

/// One card and attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub device: PathBuf,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size: Option<u64>,
    pub board: Option<String>,
    pub image: Option<PathBuf>,
    /// SHA-256 of the image's manifest (`IMAGE.manifest.json`), when it has one.
    pub manifest_sha256: Option<String>,
    pub hostname: Option<String>,
    pub ssh_keys: Vec<String>,
    pub ssid: Option<String>,
    /// Extra files placed on persist.
    pub files: Vec<String>,
    pub bytes_written: Option<u64>,
    pub seconds: Option<f64>,
    /// `passed`, `skipped` (`--no-verify`), or null when the write did not get that far.
    pub verify: Option<&'static str>,
    pub error: Option<String>,
}

/// What was written: a board by name, or an image file.
#[derive(Debug, Clone)]
pub enum Written {
    Board(String),
    Image(PathBuf),
}

impl Entry {
    /// An attempt on `device` (described by `info` when it could be inspected).
    pub fn new(device: &Path, info: Option<&DeviceInfo>, what: &Written) -> Entry {
        let (board, image, manifest_sha256) = match what {
            Written::Board(b) => (Some(b.clone()), None, None),
            Written::Image(p) => {
                let m = crate::image::manifest::path_for(p);
                let sha = crate::io::read_small(&m, "manifest")
                    .ok()
                    .map(|b| crate::io::sha256(&b));
                (None, Some(p.clone()), sha)
            }
        };
        Entry {
            time: rfc3339(SystemTime::now()),
            device: device.to_path_buf(),
            vendor: info.and_then(|i| i.vendor.clone()),
            model: info.and_then(|i| i.model.clone()),
            serial: info.and_then(|i| i.serial.clone()),
            size: info.map(|i| i.size),
            board,
            image,
            manifest_sha256,
            hostname: None,
            ssh_keys: Vec::new(),
            ssid: None,
            files: Vec::new(),
            bytes_written: None,
            seconds: None,
            verify: None,
            error: None,
        }
    }

    /// The customisation written to the card.
    pub fn with_custom(mut self, c: Option<&Record>) -> Entry {
        if let Some(c) = c {
            self.hostname = c.hostname.clone();
            self.ssh_keys = c.ssh_keys.iter().map(|k| k.fingerprint.clone()).collect();
            self.ssid = c.wifi.as_ref().map(|w| w.ssid.clone());
            self.files = c.files.clone();
        }
        self
    }

    /// The attempt's result.
    pub fn with_result(mut self, r: std::result::Result<&FlashReport, &Error>) -> Entry {
        match r {
            Ok(rep) => {
                self.bytes_written = Some(rep.bytes_written);
                self.seconds = Some(rep.seconds);
                self.verify = Some(if rep.verified { "passed" } else { "skipped" });
            }
            Err(e) => self.error = Some(e.to_string().lines().collect::<Vec<_>>().join("; ")),
        }
        self
    }
}

/// Appends one line per entry to `path` (created 0644 when missing).
pub fn append(path: &Path, entries: &[Entry]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("appending to the log {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io(what(), e))?;
    for e in entries {
        let mut line = serde_json::to_vec(e).map_err(|e| Error::Internal(e.to_string()))?;
        line.push(b'\n');
        // One write per line: with O_APPEND the kernel places it whole at the end.
        let n = f.write(&line).map_err(|e| Error::io(what(), e))?;
        if n != line.len() {
            return Err(Error::io(
                what(),
                std::io::Error::other(format!("short write ({n} of {} bytes)", line.len())),
            ));
        }
    }
    f.sync_data().map_err(|e| Error::io(what(), e))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC; before 1970 is shown as 1970).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = crate::format::fat::civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
