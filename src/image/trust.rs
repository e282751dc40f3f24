//! Trusting a release image: its manifest must carry a valid signature by one of the
//! trusted keys (`sign`), and then every byte a device is given must match the hashes that
//! signed manifest records for it, checked as the image streams.
//!
//! The signed manifest replaces the (unsigned) bmap as the map of what to write, so no byte
//! reaches a device that the signature does not cover. A mismatch is found at the end of
//! the range that holds it, after earlier bytes went to the device: the caller holds the
//! partition table back until the stream is complete (as `flash` does), so a tampered image
//! never leaves a card with a table.
//!
//! Not for the key and signature formats (`sign`) or for reading images (`read`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::bmap::Bmap;
use super::manifest::{self, Manifest};
use super::sign::{self, PublicKey};
use crate::error::{Error, Result};
use crate::io::hex;
use crate::units::{Extent, bytes};

/// The hash every mapped range of an image must have, and who vouches for them: a trusted
/// key (a signed manifest) or nobody (a bmap's checksums, for integrity only).
#[derive(Debug, Clone)]
pub struct Checked {
    pub key: Option<PublicKey>,
    /// What the hashes come from, as an error names it.
    from: &'static str,
    ranges: Vec<(Extent, String)>,
}

/// Checks the manifest beside `image` against `trusted`; gives the signed manifest, the
/// block map it implies, and the ranges to check.
pub fn open(image: &Path, trusted: &[PublicKey]) -> Result<(Manifest, Bmap, Checked)> {
    let path = manifest::path_for(image);
    if !path.is_file() {
        return Err(no_manifest(image, &path));
    }
    let (text, key) = sign::check_file(&path, trusted)?;
    from_signed(&path, &text, key)
}

/// The refusal for a trusted image without its manifest.
pub fn no_manifest(image: &Path, manifest: &Path) -> Error {
    Error::BadArtifact {
        path: image.to_path_buf(),
        message: format!(
            "no manifest beside the image ({} is missing): a trusted key needs the signed \
             manifest",
            manifest.display()
        ),
    }
}

/// A manifest whose signature by `key` was checked.
pub fn from_signed(path: &Path, text: &[u8], key: PublicKey) -> Result<(Manifest, Bmap, Checked)> {
    let m = manifest::parse(text, path)?;
    let ranges = mapped(&m);
    let bmap = map_of(&m);
    Ok((
        m,
        bmap,
        Checked {
            key: Some(key),
            from: "signed manifest",
            ranges,
        },
    ))
}

/// A bmap's range checksums, when it has SHA-256 ones for every range.
pub fn from_bmap(bmap: &Bmap, sums: Option<Vec<String>>) -> Option<Checked> {
    let sums = sums.filter(|s| s.len() == bmap.ranges.len())?;
    Some(Checked {
        key: None,
        from: "bmap's checksum",
        ranges: bmap.ranges.iter().copied().zip(sums).collect(),
    })
}

/// The block map and hashes of the (unsigned) manifest beside `image`, when there is one
/// and it describes this image file (its name and size); else `None`, and the image is
/// written whole. Its hashes are checked as the image streams, so a manifest that only
/// looks like this image's stops the write before the table.
pub fn from_manifest(image: &Path) -> Option<(Bmap, Checked)> {
    let path = manifest::path_for(image);
    let text = crate::io::read_small(&path, "manifest").ok()?;
    // Another build's or tool's manifest (or a damaged one) is not this image's map.
    let m = manifest::parse(&text, &path).ok()?;
    let name = image.file_name()?.to_string_lossy();
    let len = std::fs::metadata(image).ok()?.len();
    if m.image.file != name || m.image.file_size != len || m.image.mapped.is_empty() {
        return None;
    }
    let bmap = map_of(&m);
    Some((
        bmap,
        Checked {
            key: None,
            from: "manifest's checksum",
            ranges: mapped(&m),
        },
    ))
}

/// A manifest's mapped ranges as a block map.
fn map_of(m: &Manifest) -> Bmap {
    Bmap {
        size: m.image.size,
        ranges: m
            .image
            .mapped
            .iter()
            .map(|r| r.extent(m.image.block_size, m.image.size))
            .collect(),
    }
}

/// The manifest's mapped ranges in bytes, each with its hash: piece by piece where the
/// manifest has hashed pieces that tile the range (a difference is caught within a piece of
/// where it is), else the range as a whole. `manifest::parse` made sure one of them is there.
fn mapped(m: &Manifest) -> Vec<(Extent, String)> {
    let mut out = Vec::new();
    for r in &m.image.mapped {
        match r.hashed(m.image.block_size, m.image.size, m.image.chunk_size) {
            Some(pieces) => out.extend(pieces.into_iter().map(|(e, h)| (e, h.to_string()))),
            None => out.push((
                r.extent(m.image.block_size, m.image.size),
                r.sha256.clone().unwrap_or_default(),
            )),
        }
    }
    out
}

impl Checked {
    /// The ranges whose hashes are known.
    pub fn extents(&self) -> Vec<Extent> {
        self.ranges.iter().map(|(e, _)| *e).collect()
    }

    /// A checker for one pass over the image at `path`.
    pub fn checker(&self, path: &Path) -> RangeCheck<'_> {
        RangeCheck {
            path: path.to_path_buf(),
            from: self.from,
            ranges: &self.ranges,
            next: 0,
            done: 0,
            hasher: Sha256::new(),
        }
    }
}

/// Hashes the mapped bytes of an image as they pass, in order, and compares each range with
/// the signed hash when it is complete.
pub struct RangeCheck<'a> {
    path: PathBuf,
    from: &'static str,
    ranges: &'a [(Extent, String)],
    next: usize,
    /// Bytes of `ranges[next]` hashed so far.
    done: u64,
    hasher: Sha256,
}

impl RangeCheck<'_> {
    /// Takes the image's bytes at `at`; bytes outside every range are not looked at. Pieces
    /// come in increasing order and cover each range without gaps.
    pub fn feed(&mut self, at: u64, data: &[u8]) -> Result<()> {
        let end = at + data.len() as u64;
        let mut pos = at;
        while let Some((r, want)) = self.ranges.get(self.next) {
            let from = pos.max(r.start);
            if from >= end {
                break;
            }
            if from != r.start + self.done {
                return Err(self.bad(
                    r.start + self.done,
                    "bytes of a signed range were skipped".into(),
                ));
            }
            let to = end.min(r.end());
            self.hasher
                .update(&data[(from - at) as usize..(to - at) as usize]);
            self.done += to - from;
            pos = to;
            if self.done == r.len {
                let got = hex(&std::mem::take(&mut self.hasher).finalize());
                if &got != want {
                    return Err(self.bad(
                        r.start,
                        format!(
                            "bytes {}..{} do not match the {} (SHA-256 {got}, expected \
                             {want})",
                            bytes(r.start),
                            bytes(r.end()),
                            self.from
                        ),
                    ));
                }
                self.next += 1;
                self.done = 0;
            }
        }
        Ok(())
    }

    /// Every signed range was seen and matched.
    pub fn finish(&self) -> Result<()> {
        match self.ranges.get(self.next) {
            None => Ok(()),
            Some((r, _)) => Err(self.bad(
                r.start + self.done,
                "the image ended before every signed range".into(),
            )),
        }
    }

    fn bad(&self, at: u64, message: String) -> Error {
        Error::BadArtifact {
            path: self.path.clone(),
            message: format!("{message} (image offset {})", bytes(at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(ranges: Vec<(Extent, &[u8])>) -> Checked {
        Checked {
            key: Some(crate::image::sign::SecretKey::generate().unwrap().public()),
            from: "signed manifest",
            ranges: ranges
                .into_iter()
                .map(|(e, b)| (e, hex(&Sha256::digest(b))))
                .collect(),
        }
    }

    #[test]
    fn ranges_split_over_pieces_check() {
        let img: Vec<u8> = (0..100u8).collect();
        let s = signed(vec![
            (Extent::new(10, 20), &img[10..30]),
            (Extent::new(50, 30), &img[50..80]),
        ]);
        let mut c = s.checker(Path::new("x"));
        for (i, piece) in img.chunks(7).enumerate() {
            c.feed(i as u64 * 7, piece).unwrap();
        }
        c.finish().unwrap();
    }

    #[test]
    fn a_changed_byte_and_a_short_stream_are_refused() {
        let img = vec![1u8; 64];
        let s = signed(vec![(Extent::new(0, 32), &img[..32])]);
        let mut bad = img.clone();
        bad[31] ^= 1;
        let mut c = s.checker(Path::new("x"));
        let e = c.feed(0, &bad).unwrap_err().to_string();
        assert!(e.contains("do not match the signed manifest"), "{e}");
        let mut c = s.checker(Path::new("x"));
        c.feed(0, &img[..16]).unwrap();
        assert!(c.finish().is_err());
    }
}
