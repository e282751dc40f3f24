//! Block maps in bmaptool's XML format (2.0), written and read here: which blocks of an
//! image hold data (tables, filesystem metadata, files), with a SHA-256 per range, so that
//! `bmaptool copy` and `skiff-flash flash` write only those and can check them first.
//!
//! Not for the image itself (`file`, `read`).

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::codec;
use super::read::{codec_of, decode_each, read_ranges};
use crate::error::{Error, Result};
use crate::io::hex;
use crate::sink::stream::{BLOCK, StreamSummary};
use crate::units::{Extent, bytes, human};

const MIB: u64 = 1 << 20;

/// A read block map: the image's (uncompressed) size and its mapped byte ranges, in order
/// and not overlapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub size: u64,
    pub ranges: Vec<Extent>,
}

/// The bmap file name for an image: compression suffixes dropped, `.bmap` added
/// (`pi4.img.zst` → `pi4.img.bmap`), where bmaptool looks for it.
pub fn bmap_path(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = codec::strip_extension(&name);
    image.with_file_name(format!("{base}.bmap"))
}

/// The bmap to use for `image`: the one given, else `bmap_path(image)` when that file exists.
pub fn find(image: &Path, given: Option<&Path>) -> Option<PathBuf> {
    given.map(Path::to_path_buf).or_else(|| {
        let p = bmap_path(image);
        p.is_file().then_some(p)
    })
}

/// The bmap document (format 2.0) for a streamed image, with its own checksum filled in.
pub fn render(summary: &StreamSummary) -> String {
    let blocks = summary.size.div_ceil(BLOCK);
    let pct = if blocks == 0 {
        0.0
    } else {
        summary.mapped_blocks as f64 * 100.0 / blocks as f64
    };
    let mut x = String::new();
    let _ = write!(
        x,
        "<?xml version=\"1.0\" ?>\n\
         <!-- Block map of a disk image: the blocks that hold data (tables, filesystem\n     \
         metadata, files). Only these need to be written to a device. -->\n\
         <bmap version=\"2.0\">\n    \
         <!-- Image size in bytes: {} -->\n    \
         <ImageSize> {} </ImageSize>\n\n    \
         <!-- Size of a block in bytes -->\n    \
         <BlockSize> {BLOCK} </BlockSize>\n\n    \
         <!-- Count of blocks in the image file -->\n    \
         <BlocksCount> {blocks} </BlocksCount>\n\n    \
         <!-- Count of mapped blocks: {} or {pct:.1}% -->\n    \
         <MappedBlocksCount> {} </MappedBlocksCount>\n\n    \
         <!-- Type of checksum used in this file -->\n    \
         <ChecksumType> sha256 </ChecksumType>\n\n    \
         <!-- The checksum of this bmap file. When it is calculated, the value of\n         \
         the checksum has be zero (all ASCII \"0\" symbols).  -->\n    \
         <BmapFileChecksum> {} </BmapFileChecksum>\n\n    \
         <BlockMap>\n",
        human(summary.size),
        summary.size,
        human(summary.mapped_blocks * BLOCK),
        summary.mapped_blocks,
        "0".repeat(64),
    );
    for r in &summary.ranges {
        // A range hashed as a whole carries its checksum (bmaptool checks it as it copies).
        let sum = r
            .sha256
            .as_ref()
            .map(|h| format!(" chksum=\"{h}\""))
            .unwrap_or_default();
        if r.first == r.last {
            let _ = writeln!(x, "        <Range{sum}> {} </Range>", r.first);
        } else {
            let _ = writeln!(x, "        <Range{sum}> {}-{} </Range>", r.first, r.last);
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    let sum = hex(&Sha256::digest(x.as_bytes()));
    x.replacen(&"0".repeat(64), &sum, 1)
}

/// The mapped ranges of an image: from its bmap (block ranges) or, without one, everything.
pub fn read(path: &Path) -> Result<Bmap> {
    parse(&crate::io::read_small_text(path, "bmap file")?, path)
}

/// A bmap document's mapped ranges; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Bmap> {
    let bad = |m: &str| Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!("not a bmap file: {m}"),
    };
    let tag = |name: &str| -> Option<u64> {
        let open = format!("<{name}>");
        let i = text.find(&open)? + open.len();
        let j = text[i..].find('<')?;
        text[i..i + j].trim().parse().ok()
    };
    let size = tag("ImageSize").ok_or_else(|| bad("no ImageSize"))?;
    let block = tag("BlockSize")
        .filter(|b| *b > 0)
        .ok_or_else(|| bad("no BlockSize"))?;
    let mut ranges = Vec::new();
    for part in text.split("<Range").skip(1) {
        let body = part.split_once('>').map(|(_, b)| b).unwrap_or_default();
        let body = body.split('<').next().unwrap_or_default().trim();
        let (a, b) = match body.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (body, body),
        };
        let (a, b): (u64, u64) = (
            a.parse().map_err(|_| bad("bad range"))?,
            b.parse().map_err(|_| bad("bad range"))?,
        );
        let start = a
            .checked_mul(block)
            .ok_or_else(|| bad("range outside the image"))?;
        let end = b
            .checked_add(1)
            .and_then(|n| n.checked_mul(block))
            .ok_or_else(|| bad("range outside the image"))?
            .min(size);
        if start >= end || ranges.last().is_some_and(|r: &Extent| r.end() > start) {
            return Err(bad("ranges outside the image or out of order"));
        }
        ranges.push(Extent::new(start, end - start));
    }
    Ok(Bmap { size, ranges })
}

/// The `chksum` of every `<Range>` of a bmap, in order, when its checksum type is SHA-256
/// (the only type written since bmap 2.0); `None` for older or unchecked bmaps.
fn range_sums(path: &Path) -> Result<Option<Vec<String>>> {
    range_sums_of(&crate::io::read_small_text(path, "bmap file")?, path)
}

/// `range_sums` of a bmap document's text.
pub fn range_sums_of(text: &str, path: &Path) -> Result<Option<Vec<String>>> {
    let kind = text
        .split_once("<ChecksumType>")
        .and_then(|(_, r)| r.split_once('<'))
        .map(|(t, _)| t.trim().to_ascii_lowercase());
    if kind.as_deref() != Some("sha256") {
        return Ok(None);
    }
    let mut sums = Vec::new();
    for part in text.split("<Range").skip(1) {
        let head = part.split_once('>').map(|(h, _)| h).unwrap_or_default();
        let sum = head
            .split_once("chksum=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(v, _)| v.trim().to_ascii_lowercase())
            .ok_or_else(|| Error::BadArtifact {
                path: path.to_path_buf(),
                message: "not a bmap file: a range without a chksum".into(),
            })?;
        sums.push(sum);
    }
    Ok(Some(sums))
}

/// Checks that a bmap describes `image` before anything is written with it: the image's
/// (uncompressed) size is the bmap's, and every mapped range hashes to the bmap's checksum
/// (as bmaptool checks). A bmap left over from another build, or made for another image,
/// is refused naming both files.
pub fn check(image: &Path, bmap_path: &Path, bmap: &Bmap) -> Result<()> {
    let (size, ranges) = (&bmap.size, &bmap.ranges);
    let mismatch = |why: String| Error::BadArtifact {
        path: bmap_path.to_path_buf(),
        message: format!(
            "does not describe {}: {why} (a bmap of another build?); rebuild with --bmap or give the right --bmap",
            image.display()
        ),
    };
    let sums = range_sums(bmap_path)?;
    if let Some(s) = &sums
        && s.len() != ranges.len()
    {
        return Err(mismatch("its checksums do not match its ranges".into()));
    }
    let mut hasher = RangeHasher::new(ranges);
    let actual = read_through(image, *size, sums.is_some().then_some(&mut hasher))?;
    if actual != *size {
        return Err(mismatch(format!(
            "the image holds {} bytes, the bmap says {}",
            bytes(actual),
            bytes(*size)
        )));
    }
    if let Some(sums) = sums
        && let Some(i) = hasher.first_mismatch(&sums)
    {
        let r = ranges[i];
        return Err(mismatch(format!(
            "range {} (bytes {}..{}) has a different checksum",
            i + 1,
            r.start,
            r.end()
        )));
    }
    Ok(())
}

/// One SHA-256 per mapped range, fed with the image's bytes as they are read.
struct RangeHasher<'a> {
    ranges: &'a [Extent],
    hashers: Vec<Sha256>,
}

impl<'a> RangeHasher<'a> {
    fn new(ranges: &'a [Extent]) -> Self {
        RangeHasher {
            ranges,
            hashers: ranges.iter().map(|_| Sha256::new()).collect(),
        }
    }

    /// Feeds `data`, found at byte `at` of the image, to the ranges it overlaps.
    fn feed(&mut self, at: u64, data: &[u8]) {
        let end = at + data.len() as u64;
        let first = self.ranges.partition_point(|r| r.end() <= at);
        for (i, r) in self.ranges.iter().enumerate().skip(first) {
            if r.start >= end {
                break;
            }
            let (a, b) = (at.max(r.start), end.min(r.end()));
            if b > a {
                self.hashers[i].update(&data[(a - at) as usize..(b - at) as usize]);
            }
        }
    }

    /// The index of the first range whose hash is not `sums`' (same order).
    fn first_mismatch(self, sums: &[String]) -> Option<usize> {
        self.hashers
            .into_iter()
            .zip(sums)
            .position(|(h, want)| hex(&h.finalize()) != *want)
    }
}

/// Reads the image to learn its (uncompressed) size, feeding `hasher` on the way when
/// given: a raw image of the expected size is read only over the mapped ranges, a
/// compressed one is decoded whole.
fn read_through(image: &Path, size: u64, mut hasher: Option<&mut RangeHasher<'_>>) -> Result<u64> {
    if codec_of(image)?.is_none() {
        let io = |e| Error::io(format!("reading {}", image.display()), e);
        let actual = std::fs::metadata(image).map_err(io)?.len();
        let Some(h) = hasher.filter(|_| actual == size) else {
            return Ok(actual);
        };
        read_ranges(image, h.ranges, MIB, |at, data| {
            h.feed(at, &data);
            Ok(())
        })?;
        return Ok(actual);
    }
    decode_each(image, MIB as usize, |at, data| {
        if let Some(h) = hasher.as_deref_mut() {
            h.feed(at, data);
        }
        ControlFlow::Continue(())
    })
}

/// The part of `[o, o+len)` covered by mapped ranges (sorted, non-overlapping).
pub fn mapped_parts(mapped: &[Extent], o: u64, len: u64) -> Vec<Extent> {
    let end = o + len;
    let first = mapped.partition_point(|r| r.end() <= o);
    mapped[first..]
        .iter()
        .take_while(|r| r.start < end)
        .map(|r| (o.max(r.start), end.min(r.end())))
        .filter(|(a, b)| b > a)
        .map(|(a, b)| Extent::new(a, b - a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_parts_clip_to_the_chunk() {
        let e = |s, l| Extent::new(s, l);
        let m = [e(0, 10), e(20, 10), e(100, 50)];
        assert_eq!(mapped_parts(&m, 5, 20), [e(5, 5), e(20, 5)]);
        assert_eq!(mapped_parts(&m, 30, 70), Vec::<Extent>::new());
        assert_eq!(mapped_parts(&m, 120, 100), [e(120, 30)]);
    }

    #[test]
    fn bmap_names_drop_compression() {
        assert_eq!(
            bmap_path(Path::new("/o/pi4.img.zst")),
            Path::new("/o/pi4.img.bmap")
        );
        assert_eq!(bmap_path(Path::new("pi4.img")), Path::new("pi4.img.bmap"));
    }
}
