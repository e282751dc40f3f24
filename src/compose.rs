//! Executes a plan onto a sink: each filesystem into its own window, then the partition
//! table last, so a write that stops early leaves no table describing half-written
//! partitions. Returns the manifest of what was written.
//!
//! Not for choosing targets or content: the plan and the target decide those.

use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::table::{gpt, mbr};
use crate::format::{self, FileRecord, Placed, Span, Structure};
use crate::io::{HashReader, nonzero_runs, read_full};
use crate::plan::tree::{Node, Source};
use crate::plan::{Partition, Plan, Prebuilt, RawWrite, Table};
use crate::progress::Callback;
use crate::sink::metered::{Count, metered};
use crate::sink::{Sink, Window};

/// What was written where.
#[derive(Debug, Clone, Serialize)]
pub struct Composed {
    pub board: String,
    pub disk_size: u64,
    pub partitions: Vec<PartitionRecord>,
    pub raw: Vec<RawRecord>,
}

/// One raw blob as written.
#[derive(Debug, Clone, Serialize)]
pub struct RawRecord {
    pub name: String,
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
}

/// One partition as written.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionRecord {
    pub id: String,
    pub start: u64,
    pub size: u64,
    /// Files with their extents on the disk.
    pub files: Vec<FileRecord>,
    /// The filesystem's structures, on the disk.
    pub structures: Vec<Structure>,
}

/// Starts hashing the input files of `plan` (the largest ones, see `io::Ahead`): a caller
/// with work to do before composing (checking its outputs, claiming a device) starts this
/// first, then hands it to `write`.
pub fn hash_ahead(plan: &Plan) -> crate::io::Ahead {
    crate::io::Ahead::start(plan.partitions.iter().flat_map(|p| input_files(plan, p)))
}

/// Writes every filesystem and the table of `plan` into `sink`; `ahead` is the hashing of
/// its large input files (`hash_ahead`).
pub fn write(
    plan: &Plan,
    sink: &mut dyn Sink,
    progress: Callback<'_>,
    ahead: crate::io::Ahead,
) -> Result<Composed> {
    if sink.size() < plan.disk_size {
        return Err(Error::TooSmall {
            what: format!("board {}", plan.board),
            target: "the target".into(),
            needs: plan.disk_size,
            has: sink.size(),
        });
    }
    let total = plan
        .partitions
        .iter()
        .map(|p| {
            p.fs.as_ref().map_or(0, |f| f.content_bytes) + p.image.as_ref().map_or(0, |i| i.size)
        })
        .sum();
    let mut sink = metered(sink, progress, None, Count::Data, total);
    let boot_code = boot_code(plan)?;
    let table = table_pieces(plan, &boot_code, sink.size());
    // A stream needs ascending offsets; anything else gets the table last, so an
    // interrupted write never leaves a table over half-written partitions.
    let mut jobs: Vec<Job<'_>> = plan.partitions.iter().map(Job::Part).collect();
    jobs.extend(plan.raw.iter().map(Job::Raw));
    jobs.extend(table.iter().map(|(o, b)| Job::Table(*o, b)));
    if sink.sequential() {
        jobs.sort_by_key(Job::offset);
    }
    let mut records = Vec::new();
    let mut raw = Vec::new();
    let mut settled = std::collections::HashMap::new();
    for job in jobs {
        match job {
            Job::Part(p) => records.push(write_partition(plan, p, &ahead, &mut sink)?),
            Job::Raw(r) => raw.push(write_raw(r, &mut sink)?),
            Job::Table(o, b) => {
                // A file that changed while it was copied is refused before the table
                // describes its partition.
                settled.extend(ahead.settle()?);
                sink.data(o, b)
                    .map_err(|e| Error::io("writing the partition table", e))?;
            }
        }
    }
    // The files hashed ahead get their hashes now.
    settled.extend(ahead.settle()?);
    for f in records.iter_mut().flat_map(|r| r.files.iter_mut()) {
        if let Some(h) = settled.remove(&f.sha256) {
            f.sha256 = h;
        }
        if crate::io::is_unsettled(&f.sha256) {
            return Err(Error::Internal(format!(
                "{}: its hash was never settled",
                f.path
            )));
        }
    }
    Ok(Composed {
        board: plan.board.clone(),
        disk_size: plan.disk_size,
        partitions: records,
        raw,
    })
}

/// One unit of work, placed by its first byte.
enum Job<'a> {
    Part(&'a Partition),
    Raw(&'a RawWrite),
    Table(u64, &'a [u8]),
}

impl Job<'_> {
    fn offset(&self) -> u64 {
        match self {
            Job::Part(p) => p.start,
            Job::Raw(r) => r.offset.max(BOOT_CODE),
            Job::Table(o, _) => *o,
        }
    }
}

/// Bytes 0..440 of sector 0: free for bootloaders on MBR and GPT alike.
const BOOT_CODE: u64 = 440;

/// The files of partition `p` read from the images directory, with their planned sizes
/// (`Ahead` picks the large ones).
fn input_files(plan: &Plan, p: &Partition) -> Vec<(std::path::PathBuf, u64)> {
    let Some((_, spec)) = plan.fs_spec(p) else {
        return Vec::new();
    };
    spec.tree
        .iter()
        .filter_map(|e| match &e.node {
            Node::File {
                source: Source::Path(path),
                size,
            } => Some((path.clone(), *size)),
            _ => None,
        })
        .collect()
}

fn write_partition(
    plan: &Plan,
    p: &Partition,
    ahead: &crate::io::Ahead,
    sink: &mut dyn Sink,
) -> Result<PartitionRecord> {
    let placed = match (plan.fs_spec(p), &p.image) {
        (Some((kind, mut spec)), _) => {
            spec.ahead = Some(ahead);
            let size = p.fs.as_ref().map_or(p.size, |f| f.size);
            let mut w = Window::new(sink, p.start, size)
                .map_err(|e| Error::io(format!("partition {}", p.id), e))?;
            format::writer(kind).write(&spec, size, &mut w)?
        }
        (None, Some(image)) => Placed {
            files: vec![write_image(p, image, sink)?],
            structures: Vec::new(),
        },
        (None, None) => Placed::default(),
    };
    // Writers place within their window: the disk's offsets are the partition's further on.
    let on_disk = |spans: Vec<Span>| spans.into_iter().map(|s| s.shifted(p.start)).collect();
    Ok(PartitionRecord {
        id: p.id.clone(),
        start: p.start,
        size: p.size,
        files: placed
            .files
            .into_iter()
            .map(|f| FileRecord {
                extents: on_disk(f.extents),
                ..f
            })
            .collect(),
        structures: placed
            .structures
            .into_iter()
            .map(|s| Structure {
                extents: on_disk(s.extents),
                ..s
            })
            .collect(),
    })
}

/// Bytes compared at a time when skipping the all-zero blocks of a prebuilt image.
const IMAGE_BLOCK: usize = 4096;

/// Copies a prebuilt image into its partition, leaving out all-zero 4 KiB blocks (a fresh
/// image file or a device treats them as don't-care, like the holes of a sparse file).
fn write_image(p: &Partition, image: &Prebuilt, sink: &mut dyn Sink) -> Result<FileRecord> {
    let io = |e| {
        Error::io(
            format!("partition {} from {}", p.id, image.source.display()),
            e,
        )
    };
    let f = std::fs::File::open(&image.source).map_err(io)?;
    let mut reader = HashReader::sized(f.take(image.size), image.size);
    let mut w = Window::new(sink, p.start, p.size).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = read_full(&mut reader, &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        for run in nonzero_runs(&buf[..n], IMAGE_BLOCK) {
            w.data(at + run.start as u64, &buf[run]).map_err(io)?;
        }
        at += n as u64;
    }
    if reader.count() != image.size {
        return Err(Error::BadArtifact {
            path: image.source.clone(),
            message: format!("changed while building (image of partition {})", p.id),
        });
    }
    Ok(FileRecord {
        path: image.source.display().to_string(),
        size: image.size,
        sha256: reader.finish(),
        extents: vec![Span::new(0, image.size)],
    })
}

/// The table as (offset, bytes) pieces for a disk of `disk_bytes`.
fn table_pieces(plan: &Plan, boot_code: &[u8; 440], disk_bytes: u64) -> Vec<(u64, Vec<u8>)> {
    let entries = plan.table_entries();
    match &plan.table {
        Table::Gpt {
            disk_guid,
            array_lba,
            first_lba,
            no_backup,
            hybrid,
            mbr_id,
        } => {
            let shape = gpt::Shape {
                first_lba: *first_lba,
                no_backup: *no_backup,
            };
            let mut pieces = gpt::pieces_shaped(
                disk_bytes, boot_code, *disk_guid, *array_lba, &entries, shape,
            );
            let id = mbr_id.map_or(0, |d| d.0);
            if let Some((_, head)) = pieces.first_mut() {
                if *hybrid {
                    let listed: Vec<_> = entries
                        .iter()
                        .filter(|e| e.mbr_type.is_some())
                        .cloned()
                        .collect();
                    head[..512].copy_from_slice(&mbr::hybrid(boot_code, id, &listed, *array_lba));
                }
                head[440..444].copy_from_slice(&id.to_le_bytes());
            }
            pieces
        }
        Table::Mbr { disk_id } => {
            let id = disk_id.0;
            let ebrs: Vec<Option<u64>> = plan.partitions.iter().map(|p| p.ebr).collect();
            mbr::pieces(boot_code, id, &entries, &ebrs, disk_bytes)
        }
    }
}

/// The parts of raw writes that land in sector 0's boot-code area; they are written with
/// the table, so sector 0 is written once.
fn boot_code(plan: &Plan) -> Result<[u8; 440]> {
    let mut code = [0u8; 440];
    for r in plan.raw.iter().filter(|r| r.offset < BOOT_CODE) {
        let io = |e| {
            Error::io(
                format!("raw write `{}` from {}", r.name, r.source.display()),
                e,
            )
        };
        let n = (BOOT_CODE - r.offset).min(r.length) as usize;
        let mut f = std::fs::File::open(&r.source).map_err(io)?;
        f.seek(SeekFrom::Start(r.skip)).map_err(io)?;
        f.read_exact(&mut code[r.offset as usize..r.offset as usize + n])
            .map_err(io)?;
    }
    Ok(code)
}

/// Copies one raw blob (all of it but its boot-code part), hashing the whole range.
fn write_raw(r: &RawWrite, sink: &mut dyn Sink) -> Result<RawRecord> {
    let io = |e| {
        Error::io(
            format!("raw write `{}` from {}", r.name, r.source.display()),
            e,
        )
    };
    let mut f = std::fs::File::open(&r.source).map_err(io)?;
    f.seek(SeekFrom::Start(r.skip)).map_err(io)?;
    let mut reader = HashReader::sized(f.take(r.length), r.length);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = r.offset;
    loop {
        let n = read_full(&mut reader, &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        // The boot-code part went into the table sector already.
        let skip = BOOT_CODE.saturating_sub(at).min(n as u64) as usize;
        if skip < n {
            sink.data(at + skip as u64, &buf[skip..n]).map_err(io)?;
        }
        at += n as u64;
    }
    if reader.count() != r.length {
        return Err(Error::BadArtifact {
            path: r.source.clone(),
            message: format!("shrank while building (raw write `{}`)", r.name),
        });
    }
    Ok(RawRecord {
        name: r.name.clone(),
        offset: r.offset,
        length: r.length,
        sha256: reader.finish(),
    })
}
