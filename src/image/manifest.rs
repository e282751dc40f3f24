//! The manifest written beside every image (`IMAGE.manifest.json`): what was built from what,
//! what a correct copy holds, and a map of where everything lies. Format
//! `skiff-flash-manifest/3`:
//!
//! - `tool`, `board`, `layout`, `epoch`;
//! - `image`: `size`, `file` (name), `file_size`, `file_sha256` (the file as written,
//!   compressed or not), `image_sha256` (uncompressed, when `--checksums`), `block_size`,
//!   `chunk_size` and `mapped` — the blocks a device must hold (bmaptool's model), each range
//!   with its bytes in order as hashed `pieces` (`len`, `sha256`): a file stored in one
//!   extent is one piece whose hash is the file's own (so its bytes are hashed once, as the
//!   file is read), anything else comes in pieces of at most `chunk_size` bytes; a hash-only
//!   check places a difference within a piece. When the build wrote a bmap, the range's
//!   whole SHA-256 too (`sha256`, the bmap's checksum);
//! - `inputs`: every file read from the images directory with its size and SHA-256 (for raw
//!   blobs, of the range used);
//! - `table`: kind and identifiers; `structures`: where the partition table's pieces lie
//!   (`name`, `extents` as `[start, length]` disk byte ranges);
//! - `partitions`: number, id, start, size, type, PARTUUID, GPT name, bootable flag,
//!   filesystem kind, label and UUID,
//!   every file with size, SHA-256 and `extents` (its bytes on the disk, in file order), and
//!   the filesystem's `structures` (boot sector, FATs, directories; superblocks, group
//!   descriptors, bitmaps, inode tables, journal, directories);
//! - `raw`: bootloader blobs with offset, length and SHA-256;
//! - `custom` (when the persist partition was customised): hostname, SSH key fingerprints,
//!   Wi-Fi SSID and `psk_set` (never the passphrase), extra files.
//!
//! Formats `/2` (`chunks` of `chunk_size` from each range's start, and its `sha256`) and
//! `/1` (no chunks, no map, a `sha256`
//! per fixed partition) are still read.
//!
//! Not for checking: that is `verify`; not for looking places up: that is `image::map`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::compose;
use crate::error::{Error, Result};
use crate::format::table::SECTOR;
use crate::format::table::gpt::{ARRAY_SECTORS, TAIL};
use crate::format::{FileRecord, Structure};
use crate::image::file::Written;
use crate::plan::tree::{Node, Source};
use crate::plan::{Plan, Table};

pub const FORMAT: &str = "skiff-flash-manifest/3";
/// The format whose mapped ranges all carry a whole-range hash beside their chunk hashes.
pub const FORMAT_2: &str = "skiff-flash-manifest/2";
/// The format before the map and chunk hashes.
pub const FORMAT_1: &str = "skiff-flash-manifest/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tool: String,
    pub board: String,
    pub layout: String,
    pub epoch: i64,
    pub image: Image,
    pub inputs: Vec<Input>,
    pub table: Table,
    /// Where the table's pieces lie (format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structures: Vec<Structure>,
    pub partitions: Vec<PartitionEntry>,
    pub raw: Vec<Raw>,
    /// What was added to the persist partition (hostname, SSH key fingerprints, Wi-Fi SSID
    /// and whether a passphrase is set, extra files); absent for a plain build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<crate::plan::custom::Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub size: u64,
    pub file: String,
    pub file_size: u64,
    pub file_sha256: Option<String>,
    pub image_sha256: Option<String>,
    pub block_size: u64,
    /// The most bytes a piece that is not a file holds (format 3); the bytes each of a
    /// mapped range's `chunks` hashes (format 2); 0 before.
    #[serde(default)]
    pub chunk_size: u64,
    pub mapped: Vec<MappedRange>,
}

/// Blocks `first..=last`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MappedRange {
    pub first: u64,
    pub last: u64,
    /// SHA-256 of the whole range: always in formats 1 and 2; in format 3 only when the
    /// build also wrote a bmap (whose checksums these are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-256 of each `chunk_size` piece from the range's start (format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// The range's bytes in order as hashed pieces (format 3): at most `chunk_size` bytes
    /// each, except a file's whole content, whose hash is the file's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<Piece>,
}

/// `len` bytes of a mapped range and their SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Piece {
    pub len: u64,
    pub sha256: String,
}

impl MappedRange {
    /// The range's bytes in an image of `image_size` bytes with `block_size` blocks (the
    /// last block may be cut short by the image's end); offsets from a damaged manifest
    /// saturate instead of overflowing.
    pub fn extent(&self, block_size: u64, image_size: u64) -> crate::units::Extent {
        let start = self.first.saturating_mul(block_size);
        let end = self
            .last
            .saturating_add(1)
            .saturating_mul(block_size)
            .min(image_size);
        crate::units::Extent::new(start, end.saturating_sub(start))
    }

    /// The range's bytes as hashed extents in order: format 3's pieces, or format 2's
    /// chunks of `chunk_size` from its start; `None` when there are none or they do not
    /// tile the range exactly (then only `sha256`, if any, covers it).
    pub fn hashed(
        &self,
        block_size: u64,
        image_size: u64,
        chunk_size: u64,
    ) -> Option<Vec<(crate::units::Extent, &str)>> {
        let e = self.extent(block_size, image_size);
        let mut out = Vec::new();
        if !self.pieces.is_empty() {
            let mut at = e.start;
            for p in &self.pieces {
                if p.len == 0 || at.checked_add(p.len)? > e.end() {
                    return None;
                }
                out.push((crate::units::Extent::new(at, p.len), p.sha256.as_str()));
                at += p.len;
            }
            return (at == e.end()).then_some(out);
        }
        if chunk_size == 0 || self.chunks.len() as u64 != e.len.div_ceil(chunk_size) || e.len == 0 {
            return None;
        }
        for (i, h) in self.chunks.iter().enumerate() {
            let at = e.start + i as u64 * chunk_size;
            out.push((
                crate::units::Extent::new(at, chunk_size.min(e.end() - at)),
                h.as_str(),
            ));
        }
        Some(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionEntry {
    pub number: u32,
    pub id: String,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub partuuid: String,
    /// The GPT partition name (absent in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The bootable flag (absent in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootable: Option<bool>,
    pub grows: bool,
    pub fs: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Format 1 only: the whole partition's SHA-256 (format 2's chunk hashes cover its
    /// mapped bytes without hashing them twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub files: Vec<FileRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub structures: Vec<Structure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Raw {
    pub name: String,
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
}

/// Where the partition table's pieces lie on the plan's disk.
fn table_structures(plan: &Plan) -> Vec<Structure> {
    match &plan.table {
        Table::Gpt {
            array_lba,
            no_backup,
            hybrid,
            ..
        } => {
            let mbr = if *hybrid {
                "hybrid MBR"
            } else {
                "protective MBR"
            };
            let mut out = vec![
                Structure::at(mbr, 0, SECTOR),
                Structure::at("GPT header", SECTOR, SECTOR),
                Structure::at("GPT entries", array_lba * SECTOR, ARRAY_SECTORS * SECTOR),
            ];
            if !no_backup {
                let end = plan.disk_size / SECTOR * SECTOR;
                out.push(Structure::at(
                    "backup GPT entries",
                    end - TAIL,
                    ARRAY_SECTORS * SECTOR,
                ));
                out.push(Structure::at("backup GPT header", end - SECTOR, SECTOR));
            }
            out
        }
        Table::Mbr { .. } => {
            let mut out = vec![Structure::at("MBR", 0, SECTOR)];
            for p in &plan.partitions {
                if let Some(at) = p.ebr {
                    out.push(Structure::at(
                        format!("EBR of partition {}", p.id),
                        at,
                        SECTOR,
                    ));
                }
            }
            out
        }
    }
}

/// A planned partition as recorded, with the hash of its bytes when it was hashed.
fn partition_entry(p: &crate::plan::Partition, rec: &compose::PartitionRecord) -> PartitionEntry {
    PartitionEntry {
        number: p.number,
        id: p.id.clone(),
        start: p.start,
        size: p.size,
        kind: p
            .gpt_type
            .map(|g| g.to_string())
            .or(p.mbr_type.clone())
            .unwrap_or_default(),
        partuuid: p.partuuid.clone(),
        name: p.name.clone(),
        bootable: Some(p.bootable),
        grows: p.grows,
        fs: p
            .fs
            .as_ref()
            .map(|f| format!("{:?}", f.kind).to_lowercase()),
        label: p.fs.as_ref().and_then(|f| f.label.clone()),
        uuid: p.fs.as_ref().map(|f| f.uuid.clone()),
        sha256: None,
        files: rec.files.clone(),
        structures: rec.structures.clone(),
    }
}

/// The image file as written: sizes, hashes and the mapped ranges. A piece that is a
/// file's content takes the file's hash from `file_hash` (by its disk offset and length);
/// one without is a writer's fault.
pub(crate) fn image_record(
    size: u64,
    out: &Path,
    written: &Written,
    file_hash: &dyn Fn(u64, u64) -> Option<String>,
) -> Result<Image> {
    let mut mapped = Vec::with_capacity(written.stream.ranges.len());
    for r in &written.stream.ranges {
        let mut at = r.first * crate::sink::stream::BLOCK;
        let mut pieces = Vec::with_capacity(r.pieces.len());
        for p in &r.pieces {
            let sha256 = match &p.sha256 {
                Some(h) => h.clone(),
                None => file_hash(at, p.len).ok_or_else(|| {
                    Error::Internal(format!(
                        "the file content announced at byte {at} ({} bytes) has no file record",
                        p.len
                    ))
                })?,
            };
            pieces.push(Piece { len: p.len, sha256 });
            at += p.len;
        }
        mapped.push(MappedRange {
            first: r.first,
            last: r.last,
            sha256: r.sha256.clone(),
            chunks: Vec::new(),
            pieces,
        });
    }
    Ok(Image {
        size,
        file: out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file_size: written.file_size,
        file_sha256: written.file_sha256.clone(),
        image_sha256: written.stream.sha256.clone(),
        block_size: crate::sink::stream::BLOCK,
        chunk_size: crate::sink::stream::CHUNK,
        mapped,
    })
}

/// The manifest of a finished build.
pub fn make(
    plan: &Plan,
    images: &Path,
    out: &Path,
    written: &Written,
    m: &compose::Composed,
) -> Result<Manifest> {
    // Files stored in one extent, by where they start on the disk: their pieces' hash.
    let one_extent: BTreeMap<u64, (u64, &str)> = m
        .partitions
        .iter()
        .flat_map(|p| &p.files)
        .filter_map(|f| match f.extents[..] {
            [e] if e.len == f.size => Some((e.start, (e.len, f.sha256.as_str()))),
            _ => None,
        })
        .collect();
    let file_hash = |at: u64, len: u64| {
        one_extent
            .get(&at)
            .filter(|(l, _)| *l == len)
            .map(|(_, h)| h.to_string())
    };
    let mut inputs: BTreeMap<String, Input> = BTreeMap::new();
    let mut add_input = |src: &Path, size: u64, sha256: &str| {
        let name = src
            .strip_prefix(images)
            .unwrap_or(src)
            .display()
            .to_string();
        inputs.insert(
            name.clone(),
            Input {
                name,
                size,
                sha256: sha256.to_string(),
            },
        );
    };
    let mut partitions = Vec::new();
    for (p, rec) in plan.partitions.iter().zip(&m.partitions) {
        let hashes: BTreeMap<&str, &FileRecord> =
            rec.files.iter().map(|f| (f.path.as_str(), f)).collect();
        for e in p.fs.iter().flat_map(|fs| fs.entries.iter()) {
            if let (
                Node::File {
                    source: Source::Path(src),
                    size,
                },
                Some(f),
            ) = (&e.node, hashes.get(e.path.as_str()))
            {
                add_input(src, *size, &f.sha256);
            }
        }
        partitions.push(partition_entry(p, rec));
    }
    for (r, rec) in plan.raw.iter().zip(&m.raw) {
        add_input(&r.source, r.length, &rec.sha256);
    }
    let table = plan.table.clone();
    Ok(Manifest {
        format: FORMAT.into(),
        tool: format!("skiff-flash {}", env!("CARGO_PKG_VERSION")),
        board: plan.board.clone(),
        layout: plan.layout.clone(),
        epoch: plan.epoch,
        image: image_record(plan.disk_size, out, written, &file_hash)?,
        inputs: inputs.into_values().collect(),
        table,
        structures: table_structures(plan),
        partitions,
        raw: m
            .raw
            .iter()
            .map(|r| Raw {
                name: r.name.clone(),
                offset: r.offset,
                length: r.length,
                sha256: r.sha256.clone(),
            })
            .collect(),
        custom: plan.custom.clone(),
    })
}

/// `IMAGE.manifest.json` for an output path.
pub fn path_for(image: &Path) -> std::path::PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!("{name}.manifest.json"))
}

/// Reads a manifest file.
pub fn load(path: &Path) -> Result<Manifest> {
    parse(
        crate::io::read_small_text(path, "manifest")?.as_bytes(),
        path,
    )
}

/// A manifest's text (read from a file, served beside an image, or just checked against
/// its signature); `path` names it in errors.
pub fn parse(text: &[u8], path: &Path) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(text).map_err(|e| Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!("not a skiff-flash manifest: {e}"),
    })?;
    let bad = |message: String| Error::BadArtifact {
        path: path.to_path_buf(),
        message,
    };
    if ![FORMAT, FORMAT_2, FORMAT_1].contains(&m.format.as_str()) {
        return Err(bad(format!(
            "manifest format `{}`, expected `{FORMAT}`, `{FORMAT_2}` or `{FORMAT_1}`",
            m.format
        )));
    }
    // Every mapped range must be checkable: by its whole hash, or by pieces that tile it.
    for (i, r) in m.image.mapped.iter().enumerate() {
        let tiled = r
            .hashed(m.image.block_size, m.image.size, m.image.chunk_size)
            .is_some();
        if r.sha256.is_none() && !tiled {
            return Err(bad(format!(
                "mapped range {} (blocks {}..={}) has no hash that covers it",
                i + 1,
                r.first,
                r.last
            )));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, last: u64) -> MappedRange {
        MappedRange {
            first,
            last,
            sha256: None,
            chunks: Vec::new(),
            pieces: Vec::new(),
        }
    }

    fn piece(len: u64, h: &str) -> Piece {
        Piece {
            len,
            sha256: h.into(),
        }
    }

    #[test]
    fn pieces_must_tile_their_range() {
        let mut r = range(2, 4);
        r.pieces = vec![piece(5000, "a"), piece(12288 - 5000, "b")];
        let got = r.hashed(4096, 1 << 20, 1 << 20).unwrap();
        assert_eq!(
            got,
            [
                (crate::units::Extent::new(8192, 5000), "a"),
                (crate::units::Extent::new(13192, 7288), "b")
            ]
        );
        // Short, long, or with an empty piece: not a tiling.
        r.pieces = vec![piece(5000, "a")];
        assert!(r.hashed(4096, 1 << 20, 1 << 20).is_none());
        r.pieces = vec![piece(5000, "a"), piece(9000, "b")];
        assert!(r.hashed(4096, 1 << 20, 1 << 20).is_none());
        r.pieces = vec![piece(0, "a"), piece(12288, "b")];
        assert!(r.hashed(4096, 1 << 20, 1 << 20).is_none());
        // An image ending inside the last block cuts the range short.
        r.pieces = vec![piece(10000, "a")];
        assert!(r.hashed(4096, 18192, 1 << 20).is_some());
    }

    #[test]
    fn format_2_chunks_are_pieces_of_chunk_size() {
        let mut r = range(0, 599);
        r.chunks = vec!["a".into(), "b".into(), "c".into()];
        let got = r.hashed(4096, 1 << 30, 1 << 20).unwrap();
        let lens: Vec<u64> = got.iter().map(|(e, _)| e.len).collect();
        assert_eq!(lens, [1 << 20, 1 << 20, 600 * 4096 - (2 << 20)]);
        r.chunks.pop();
        assert!(r.hashed(4096, 1 << 30, 1 << 20).is_none());
    }
}
