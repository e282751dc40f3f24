//! Reading an image file to write or compare it: refusing what cannot be an image (a
//! directory, an empty file, a FIFO), decoding it by its magic (every format in `codec`),
//! and learning its uncompressed size before any device is touched.
//!
//! Not for block maps (`bmap`) or for what is inside the image (`format`).

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bmap::{self, Bmap};
use super::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::io::read_full;
use crate::units::{Extent, bytes};

const MIB: usize = 1 << 20;

/// An image file ready to be written or compared: checked, its bmap (given or found beside
/// it, else the block map of the manifest beside it) read and checked against it, its
/// uncompressed size known.
#[derive(Debug, Clone)]
pub struct ImageSource {
    pub path: PathBuf,
    pub bmap: Option<Bmap>,
    pub size: u64,
    /// The hash every mapped range must have, checked as it streams: from a manifest signed
    /// by a trusted key (its ranges are then the block map), or a served bmap's checksums.
    pub checked: Option<super::trust::Checked>,
    /// An image on a server, streamed.
    pub remote: Option<Arc<super::fetch::Fetched>>,
}

impl ImageSource {
    /// Refuses what cannot be an image, a bmap that does not describe it, and a compressed
    /// stream that is corrupt, before any device is touched.
    pub fn open(path: &Path, bmap: Option<&Path>) -> Result<ImageSource> {
        check_image_file(path)?;
        let bmap_path = bmap::find(path, bmap);
        let map = bmap_path.as_deref().map(bmap::read).transpose()?;
        if let (Some(b), Some(p)) = (&map, &bmap_path) {
            bmap::check(path, p, b)?;
        }
        // Without a bmap, the manifest beside the image (when it is this image's) maps it,
        // and its hashes are checked as the image streams.
        let (map, checked) = match map {
            Some(b) => (Some(b), None),
            None => match super::trust::from_manifest(path) {
                Some((b, c)) => (Some(b), Some(c)),
                None => (None, None),
            },
        };
        let size = image_size(path, map.as_ref().map(|b| b.size))?;
        Ok(ImageSource {
            path: path.to_path_buf(),
            bmap: map,
            size,
            checked,
            remote: None,
        })
    }

    /// As `open`; with trusted keys, the image's manifest must be signed by one of them, and
    /// its ranges replace any bmap.
    pub fn open_trusted(
        path: &Path,
        bmap: Option<&Path>,
        trusted: &[super::sign::PublicKey],
    ) -> Result<ImageSource> {
        if trusted.is_empty() {
            return ImageSource::open(path, bmap);
        }
        check_image_file(path)?;
        let (_, map, checked) = super::trust::open(path, trusted)?;
        Ok(ImageSource {
            path: path.to_path_buf(),
            size: map.size,
            bmap: Some(map),
            checked: Some(checked),
            remote: None,
        })
    }
}

/// An image to write must be a regular file (or a block device holding one): a character
/// device or FIFO could be endless, and is refused before anything is read.
pub fn check_image_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let bad = |m: &str| Error::BadArtifact {
        path: path.to_path_buf(),
        message: m.to_string(),
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() == 0 => Err(bad("image is empty")),
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(m) if m.is_dir() => Err(bad("image is a directory")),
        Ok(_) => Err(bad("image is not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(bad("image not found")),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// The compression an image file is in, by its magic; `None` for a raw image.
pub fn codec_of(path: &Path) -> Result<Option<Codec>> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; codec::MAGIC_LEN];
    let n = read_full(&mut f, &mut magic).map_err(io)?;
    Ok(Codec::sniff(&magic[..n]))
}

/// Opens an image file, decompressing by magic, or raw.
pub fn open_image(path: &Path) -> Result<Box<dyn Read + Send>> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let codec = codec_of(path)?;
    let mut f = std::fs::File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let f = BufReader::with_capacity(MIB, f);
    Ok(match codec {
        Some(c) => c.decoder(f).map_err(io)?,
        None => Box::new(f),
    })
}

/// The uncompressed size of an image: `known` (a bmap's) when given, else it is read once
/// to the end to count (so no device is touched before the size is known).
pub fn image_size(path: &Path, known: Option<u64>) -> Result<u64> {
    if let Some(size) = known {
        return Ok(size);
    }
    decode_each(path, MIB, |_, _| ControlFlow::Continue(()))
}

/// Decodes the image from its start and hands it to `each` in pieces of `chunk` bytes (the
/// last may be shorter) with their offset; `each` may edit a piece or stop early. Returns the
/// bytes decoded. A stream that breaks is `corrupt`, naming where.
pub fn decode_each(
    path: &Path,
    chunk: usize,
    mut each: impl FnMut(u64, &mut [u8]) -> ControlFlow<()>,
) -> Result<u64> {
    let mut r = open_image(path)?;
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    loop {
        let n = read_full(&mut r, &mut buf).map_err(|e| corrupt(path, at, e))?;
        if n == 0 {
            return Ok(at);
        }
        let stop = each(at, &mut buf[..n]).is_break();
        at += n as u64;
        if stop {
            return Ok(at);
        }
    }
}

/// Reads `ranges` of a raw image file in pieces of at most `piece` bytes, handing each to
/// `each` with its offset; the first error (a short file: `corrupt`) stops.
pub fn read_ranges(
    path: &Path,
    ranges: &[Extent],
    piece: u64,
    mut each: impl FnMut(u64, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let f = std::fs::File::open(path).map_err(io)?;
    for &Extent { start, len } in ranges {
        let mut at = start;
        while at < start + len {
            let mut buf = vec![0u8; (start + len - at).min(piece) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, at)
                .map_err(|e| corrupt(path, at, e))?;
            let n = buf.len() as u64;
            each(at, buf)?;
            at += n;
        }
    }
    Ok(())
}

/// A compressed image whose stream ends or breaks after `at` uncompressed bytes.
pub fn corrupt(path: &Path, at: u64, e: std::io::Error) -> Error {
    Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!(
            "corrupt or truncated after {} uncompressed bytes: {e}",
            bytes(at)
        ),
    }
}
