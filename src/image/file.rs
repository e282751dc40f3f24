//! Image files: a plain sparse `.img`, or a compressed `.img.zst`/`.img.gz`/`.img.xz` written as
//! a stream (the image never exists uncompressed). The file is created under a temporary
//! name beside the destination and renamed only when complete; dropped before that, it
//! removes itself, so a failed build leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::io::hex;
use crate::sink::stream::{Hashes, Sequencer, SparseFile, Stream, StreamSummary};

/// How the image file is encoded, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Compressed { codec: Codec, level: i32 },
}

impl Format {
    /// A compression extension (`.zst`, `.gz`, `.xz`) compresses at `level` or the format's
    /// default; other compression or archive extensions (`.bz2`, `.lz4`, `.zip`, …) are
    /// refused rather than written raw under a name that says otherwise; anything else is a
    /// raw sparse image.
    pub fn from_path(p: &Path, level: Option<i32>) -> Result<Format> {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(codec) = Codec::from_name(&name) {
            return Ok(Format::Compressed {
                codec,
                level: codec.level(level),
            });
        }
        if let Some(ext) = codec::unsupported_extension(&name) {
            return Err(Error::Usage(format!(
                "{}: .{ext} compression is not supported; use .img (raw, sparse), .img.zst, .img.gz or .img.xz",
                p.display()
            )));
        }
        Ok(Format::Raw)
    }

    pub fn is_compressed(self) -> bool {
        self != Format::Raw
    }
}

/// A file under a temporary name until `commit`.
pub struct Staged {
    pub file: File,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    /// Creates `.NAME.partial-PID` beside `dest` (after removing ones of processes that no
    /// longer run), registered so that a signal removes it.
    pub fn create(dest: &Path) -> Result<Self> {
        if dest.is_dir() {
            return Err(Error::Usage(format!("{} is a directory", dest.display())));
        }
        let tmp = crate::image::output::partial_name(dest, std::process::id())
            .ok_or_else(|| Error::Usage(format!("{} is not a file name", dest.display())))?;
        crate::image::output::remove_stale_partials(dest);
        let file = crate::image::output::with_registry(|partials, _| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
            partials.push(tmp.clone());
            Ok::<_, Error>(f)
        })?;
        Ok(Staged {
            file,
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    /// The final name.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Moves the file to its final name.
    pub fn commit(self) -> Result<()> {
        self.rename(false).map(|_| ())
    }

    /// Moves the file to its final name as part of an `output::Set`: until the set is
    /// finished, a signal removes it again.
    pub(crate) fn commit_in_set(self) -> Result<PathBuf> {
        self.rename(true)
    }

    fn rename(mut self, in_set: bool) -> Result<PathBuf> {
        crate::image::output::with_registry(|partials, committed| {
            std::fs::rename(&self.tmp, &self.dest)
                .map_err(|e| Error::io(format!("renaming to {}", self.dest.display()), e))?;
            partials.retain(|p| *p != self.tmp);
            if in_set {
                committed.push(self.dest.clone());
            }
            self.committed = true;
            Ok(self.dest.clone())
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            crate::image::output::with_registry(|partials, _| {
                let _ = std::fs::remove_file(&self.tmp);
                partials.retain(|p| *p != self.tmp);
            });
        }
    }
}

/// Counts and hashes what passes into a file.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What writing an image file produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub stream: StreamSummary,
    /// Bytes in the file (compressed size for compressed formats).
    pub file_size: u64,
    /// SHA-256 of the file as written, when asked for (always known for compressed files).
    pub file_sha256: Option<String>,
}

/// A compressing encoder that can be finished through a trait object.
trait Finish: Write {
    fn finish_box(self: Box<Self>) -> io::Result<HashWriter<io::BufWriter<File>>>;
}

impl Finish for zstd::stream::write::Encoder<'static, HashWriter<io::BufWriter<File>>> {
    fn finish_box(self: Box<Self>) -> io::Result<HashWriter<io::BufWriter<File>>> {
        (*self).finish()
    }
}

impl Finish for flate2::write::GzEncoder<HashWriter<io::BufWriter<File>>> {
    fn finish_box(self: Box<Self>) -> io::Result<HashWriter<io::BufWriter<File>>> {
        (*self).finish()
    }
}

impl Finish for liblzma::write::XzEncoder<HashWriter<io::BufWriter<File>>> {
    fn finish_box(self: Box<Self>) -> io::Result<HashWriter<io::BufWriter<File>>> {
        (*self).finish()
    }
}

fn encoder(format: Format, file: File) -> io::Result<Box<dyn Finish>> {
    let w = HashWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        count: 0,
    };
    const ZSTD_JOB: u32 = 4 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let Format::Compressed { codec, level } = format else {
        return Err(io::Error::other("not a compressed format"));
    };
    Ok(match codec {
        Codec::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(w, level)?;
            // Worker count changes speed, not bytes (zstd's multithreaded format is fixed
            // by the level), so images are reproducible on any machine.
            e.multithread(threads.max(1))?;
            // Jobs smaller than the level's default keep the buffers of the
            // jobs in flight, and so the peak memory, small; the job size is fixed, so the
            // bytes still do not depend on the machine.
            e.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
            e.include_checksum(true)?;
            Box::new(e)
        }
        Codec::Gzip => Box::new(flate2::write::GzEncoder::new(
            w,
            flate2::Compression::new(level as u32),
        )),
        Codec::Xz => Box::new(liblzma::write::XzEncoder::new(w, level as u32)),
    })
}

/// Writes `bytes` under `path`'s temporary name; it appears at `path` when committed. Not
/// forced to disk, like the image it goes with (see `write_file`).
pub fn stage(path: &Path, bytes: &[u8]) -> Result<Staged> {
    use std::io::Write;
    let mut f = Staged::create(path)?;
    f.file
        .write_all(bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(f)
}

/// Streams an image of `size` bytes into `dest` through `fill`, which writes it into the
/// sink it is given. The file stays under its temporary name until the returned `Staged`
/// is committed (with the files written beside it).
pub fn write_file<T>(
    dest: &Path,
    size: u64,
    format: Format,
    hashes: Hashes,
    fill: impl FnOnce(&mut dyn crate::sink::Sink) -> Result<T>,
) -> Result<(T, Written, Staged)> {
    let staged = Staged::create(dest)?;
    let io_err = |e| Error::io(format!("writing {}", dest.display()), e);
    let (value, written) = if format.is_compressed() {
        let file = staged.file.try_clone().map_err(io_err)?;
        let enc = encoder(format, file).map_err(io_err)?;
        let mut seq = Sequencer::new(Stream(enc), size, hashes).map_err(io_err)?;
        let value = fill(&mut seq)?;
        let (Stream(enc), stream) = seq.finish().map_err(io_err)?;
        let mut hw = enc.finish_box().map_err(io_err)?;
        hw.flush().map_err(io_err)?;
        let written = Written {
            stream,
            file_size: hw.count,
            file_sha256: Some(hex(&hw.hasher.finalize())),
        };
        (value, written)
    } else {
        staged.file.set_len(size).map_err(io_err)?;
        let mut seq =
            Sequencer::new(SparseFile::new(&staged.file), size, hashes).map_err(io_err)?;
        let value = fill(&mut seq)?;
        let (_, stream) = seq.finish().map_err(io_err)?;
        let written = Written {
            file_size: size,
            file_sha256: stream.sha256.clone(),
            stream,
        };
        (value, written)
    };
    Ok((value, written, staged))
}
