//! Backing up a card into an image file that `flash --image` restores: the partition table
//! and everything before the first partition (bootloader blobs), the gaps between
//! partitions, the last MiB (a GPT's backup), and of each partition only what its
//! filesystem uses (`format::used`: allocated FAT clusters, used ext4 blocks with all
//! metadata, a squashfs's bytes); a partition without a filesystem read here is copied
//! whole and reported so. The image has the card's size, is sparse or compressed by
//! extension, and is written with its bmap and a backup manifest, all or none.
//!
//! Not for: restoring (`flash --image`) or growing filesystems.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::device;
use crate::error::{Error, Result};
use crate::format::probe::probe;
use crate::format::table::read::{DiskTable, Scheme};
use crate::format::used::{Used, used};
use crate::image::file::Format;
use crate::io::{ReadAt, nonzero_runs, open_target};
use crate::progress::{Callback, Event, Phase};
use crate::sink::Sink;
use crate::units::Extent;

const MIB: u64 = 1 << 20;
/// The unit zero blocks are told apart in (the image's block size).
const BLOCK: usize = 4096;

pub const FORMAT: &str = "skiff-flash-backup/1";

/// How a partition was copied.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "copy")]
pub enum Copied {
    /// Only what the filesystem uses.
    Used,
    /// All of it, and why.
    Whole { why: String },
}

/// One partition of the backup.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionBackup {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub fs: String,
    /// Bytes of the partition in the image.
    pub bytes: u64,
    #[serde(flatten)]
    pub copied: Copied,
}

/// The manifest written beside a backup (`IMAGE.manifest.json`).
#[derive(Debug, Clone, Serialize)]
pub struct BackupManifest {
    pub format: String,
    pub tool: String,
    pub source: PathBuf,
    pub table: String,
    pub image: crate::image::manifest::Image,
    pub partitions: Vec<PartitionBackup>,
}

/// What a backup produced.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub output: PathBuf,
    /// The card's size, which is the image's.
    pub disk_size: u64,
    /// Bytes read from the card and placed in the image.
    pub copied: u64,
    pub file_size: u64,
    pub manifest: BackupManifest,
    /// Files written beside the image (manifest, bmap).
    pub extra: Vec<PathBuf>,
    pub seconds: f64,
}

/// Backs up the whole-disk device `source` into `output` (format by extension).
pub fn backup(
    source: &Path,
    output: &Path,
    format: Format,
    progress: Callback<'_>,
) -> Result<BackupReport> {
    let started = Instant::now();
    let info = device::inspect(source)?;
    device::check_unmounted(&info)?;
    let mut inputs = crate::image::output::Inputs::default();
    inputs.add(source, None);
    let outputs = [
        (crate::image::manifest::path_for(output), "manifest"),
        (crate::image::bmap::bmap_path(output), "bmap"),
        (output.to_path_buf(), "image"),
    ];
    for (path, what) in outputs.iter().rev() {
        crate::image::output::check_output(path, what, &inputs)?;
    }
    let dev = open_target(source)?;
    let size = ReadAt::size(&dev);
    let (table, extents, partitions) = layout(&dev, size)?;
    let total = extents.iter().map(|e| e.len).sum();
    // The bmap written beside the backup lists each range's checksum.
    let hashes = crate::sink::stream::Hashes {
        ranges: true,
        whole: false,
    };
    let (copied, written, image) =
        crate::image::file::write_file(output, size, format, hashes, |sink| {
            copy(&dev, source, &extents, total, sink, progress)
        })?;
    let manifest = BackupManifest {
        format: FORMAT.into(),
        tool: format!("skiff-flash {}", env!("CARGO_PKG_VERSION")),
        source: source.to_path_buf(),
        table,
        image: crate::image::manifest::image_record(size, output, &written, &|_, _| None)?,
        partitions,
    };
    let mut set = crate::image::output::Set::new();
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    set.push(crate::image::file::stage(&outputs[0].0, text.as_bytes())?);
    let bmap = crate::image::bmap::render(&written.stream);
    set.push(crate::image::file::stage(&outputs[1].0, bmap.as_bytes())?);
    set.push(image);
    set.commit(&[], &inputs)?;
    crate::image::output::finished();
    Ok(BackupReport {
        output: output.to_path_buf(),
        disk_size: size,
        copied,
        file_size: written.file_size,
        manifest,
        extra: vec![outputs[0].0.clone(), outputs[1].0.clone()],
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The table's kind, every range to copy (sorted, merged), and what each partition gave.
fn layout(dev: &dyn ReadAt, size: u64) -> Result<(String, Vec<Extent>, Vec<PartitionBackup>)> {
    let table = match DiskTable::read(dev) {
        Ok(t) => t,
        // No table: nothing tells where anything is, so everything is copied.
        Err(_) => return Ok(("none".into(), vec![Extent::new(0, size)], Vec::new())),
    };
    let kind = match table.scheme {
        Scheme::Gpt(_) => "gpt",
        Scheme::Mbr { .. } => "mbr",
    };
    let mut entries: Vec<_> = table.entries.iter().filter(|e| e.size > 0).collect();
    entries.sort_by_key(|e| e.start);
    let mut ranges = Vec::new();
    let mut parts = Vec::new();
    let mut at = 0;
    for e in entries {
        let (start, end) = (e.start.min(size), e.start.saturating_add(e.size).min(size));
        // What lies before a partition and in no other: bootloader blobs, tables, gaps.
        if start > at {
            ranges.push(Extent::new(at, start - at));
        }
        at = at.max(end);
        let p = probe(dev, start, end - start);
        let (found, copied) = match used(dev, start, end - start, &p) {
            Used::Allocated(v) => (v, Copied::Used),
            Used::Whole(why) => (vec![Extent::new(0, end - start)], Copied::Whole { why }),
        };
        let bytes = found.iter().map(|x| x.len).sum();
        ranges.extend(found.iter().map(|x| Extent::new(start + x.start, x.len)));
        parts.push(PartitionBackup {
            number: e.number,
            start: e.start,
            size: e.size,
            fs: p.kind.as_str().into(),
            bytes,
            copied,
        });
    }
    // The last MiB: a GPT's backup header and entries.
    let tail = size.saturating_sub(MIB).max(at);
    ranges.push(Extent::new(tail, size - tail));
    Ok((kind.into(), merge(ranges), parts))
}

fn merge(mut v: Vec<Extent>) -> Vec<Extent> {
    v.retain(|e| e.len > 0);
    v.sort_unstable();
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if e.start <= l.end() => l.len = l.len.max(e.end() - l.start),
            _ => out.push(e),
        }
    }
    out
}

/// Reads every range in 1 MiB pieces into the image: zero blocks as mapped zeros (a
/// restored card gets them too, at no cost in the file), the rest as data.
fn copy(
    dev: &dyn ReadAt,
    source: &Path,
    extents: &[Extent],
    total: u64,
    sink: &mut dyn Sink,
    progress: Callback<'_>,
) -> Result<u64> {
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    for e in extents {
        let mut at = e.start;
        while at < e.end() {
            let n = MIB.min(e.end() - at) as usize;
            let piece = &mut buf[..n];
            dev.read_exact_at(piece, at)
                .map_err(|err| Error::io(format!("reading {} at {at}", source.display()), err))?;
            put(sink, at, piece)
                .map_err(|err| Error::io(format!("writing the image at {at}"), err))?;
            at += n as u64;
            done += n as u64;
            progress(&Event {
                phase: Phase::Write,
                device: None,
                done,
                total,
            });
        }
    }
    Ok(done)
}

fn put(sink: &mut dyn Sink, at: u64, piece: &[u8]) -> std::io::Result<()> {
    let mut from = 0;
    for run in nonzero_runs(piece, BLOCK) {
        if run.start > from {
            sink.zeros(at + from as u64, (run.start - from) as u64)?;
        }
        sink.data(at + run.start as u64, &piece[run.clone()])?;
        from = run.end;
    }
    if from < piece.len() {
        sink.zeros(at + from as u64, (piece.len() - from) as u64)?;
    }
    Ok(())
}
