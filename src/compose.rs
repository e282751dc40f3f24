//! Executes a plan onto a sink: each filesystem into its own window, then the partition
//! table last, so a write that stops early leaves no table describing half-written
//! partitions. Returns the manifest of what was written.
//!
//! Not for choosing targets or content: the plan and the target decide those.

use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fs::{self, FileRecord};
use crate::io::{HashReader, read_full};
use crate::plan::{Plan, Table};
use crate::table::{gpt, mbr};
use crate::target::{Sink, Window};

/// What was written where.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
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
    pub files: Vec<FileRecord>,
}

/// Progress: bytes of file content written so far, and the total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Counts data bytes passing to the inner sink and reports them.
struct Counting<'a, 'b> {
    inner: &'a mut dyn Sink,
    done: u64,
    total: u64,
    progress: Progress<'b>,
}

impl Sink for Counting<'_, '_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.data(offset, bytes)?;
        self.done += bytes.len() as u64;
        (self.progress)(self.done.min(self.total), self.total);
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.zeros(offset, len)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// Writes every filesystem and the table of `plan` into `sink`.
pub fn write(plan: &Plan, sink: &mut dyn Sink, progress: Progress<'_>) -> Result<Manifest> {
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
        .filter_map(|p| p.fs.as_ref())
        .map(|f| f.content_bytes)
        .sum();
    let mut sink = Counting {
        inner: sink,
        done: 0,
        total,
        progress,
    };
    let mut records = Vec::new();
    for p in &plan.partitions {
        let files = match plan.fs_spec(p) {
            Some((kind, spec)) => {
                let mut w = Window::new(&mut sink, p.start, p.size)
                    .map_err(|e| Error::io(format!("partition {}", p.id), e))?;
                fs::writer(kind).write(&spec, p.size, &mut w)?
            }
            None => Vec::new(),
        };
        records.push(PartitionRecord {
            id: p.id.clone(),
            start: p.start,
            size: p.size,
            files,
        });
    }
    let mut boot_code = [0u8; 440];
    let raw = write_raw(plan, &mut sink, &mut boot_code)?;
    let entries = plan.table_entries();
    let io = |e| Error::io("writing the partition table", e);
    match &plan.table {
        Table::Gpt {
            disk_guid,
            array_lba,
        } => gpt::write(&mut sink, &boot_code, *disk_guid, *array_lba, &entries).map_err(io)?,
        Table::Mbr { disk_id } => {
            let id = u32::from_str_radix(disk_id, 16).unwrap_or(0);
            mbr::write(&mut sink, &boot_code, id, &entries).map_err(io)?
        }
    }
    Ok(Manifest {
        board: plan.board.clone(),
        disk_size: plan.disk_size,
        partitions: records,
        raw,
    })
}

/// Copies the raw bootloader blobs. Bytes that land in sector 0's boot-code area go to
/// `boot_code`, written together with the table, so the table sector is written once.
fn write_raw(
    plan: &Plan,
    sink: &mut dyn Sink,
    boot_code: &mut [u8; 440],
) -> Result<Vec<RawRecord>> {
    let mut out = Vec::new();
    for r in &plan.raw {
        let io = |e| {
            Error::io(
                format!("raw write `{}` from {}", r.name, r.source.display()),
                e,
            )
        };
        let mut f = std::fs::File::open(&r.source).map_err(io)?;
        f.seek(SeekFrom::Start(r.skip)).map_err(io)?;
        let mut reader = HashReader::new(f.take(r.length));
        let mut buf = vec![0u8; 1 << 20];
        let mut at = r.offset;
        loop {
            let n = read_full(&mut reader, &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            let mut chunk = &buf[..n];
            if at < 440 {
                let k = chunk.len().min((440 - at) as usize);
                boot_code[at as usize..at as usize + k].copy_from_slice(&chunk[..k]);
                chunk = &chunk[k..];
                at += k as u64;
            }
            sink.data(at, chunk).map_err(io)?;
            at += chunk.len() as u64;
        }
        if reader.count() != r.length {
            return Err(Error::BadArtifact {
                path: r.source.clone(),
                message: format!("shrank while building (raw write `{}`)", r.name),
            });
        }
        out.push(RawRecord {
            name: r.name.clone(),
            offset: r.offset,
            length: r.length,
            sha256: reader.finish(),
        });
    }
    Ok(out)
}
