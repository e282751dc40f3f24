//! Is this card (or image) what a build wrote? Two ways to answer:
//!
//! - **bytes**: every mapped range of the reference (a manifest's or bmap's ranges, or an
//!   image file itself) equals the target; reads only mapped ranges.
//! - **meaning**, against what a correct card holds (`expect::Expected`, made from a board
//!   and its images directory, or from a release image: its manifest, else the image's own
//!   table and filesystems): the partition table holds the expected partitions (kinds,
//!   types, names, identifiers; where they start and how large they are is the card's own, so a card flashed at any size, grown at first boot or
//!   upgraded verifies), every file of the fixed filesystems matches its source where the
//!   card's table puts the partition, raw blobs match at their offsets; the growing
//!   partition (persist, the user's data) is checked to be the right filesystem with the
//!   right label, holding the files the build placed there (what the user added is
//!   ignored; files SkiffOS rewrites at boot are reported apart, not as differences). A card
//!   that has booted and written to persist still verifies.
//!
//! Findings name the region, the file, the byte offset of the first difference and both
//! hashes. Byte findings are placed through the image's map (`image::map`, from the
//! manifest): the file and the byte of it, or the structure (a GPT header, a FAT copy, an
//! inode table), with the disk offset — exactly against an image, within one hashed piece
//! against a manifest. Never writes.

use std::io::Read;
use std::ops::ControlFlow;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::format::Span;
use crate::format::fat::read::FatVolume;
use crate::format::probe::{Kind, probe};
use crate::format::table::read::{DiskTable, GptHeader, Scheme, TableError, mbr};
use crate::format::table::{SECTOR, TableEntry};
use crate::image::bmap::{self, mapped_parts};
use crate::image::manifest::{Manifest, MappedRange};
use crate::image::map::{Map, Place, What};
use crate::image::read::{decode_each, image_size};
use crate::io::{ReadAt, hex, read_full};
use crate::ops::expect::{self, Expected, Part, RawWant, Want};
use crate::plan::tree::Source;
use crate::plan::{Plan, Table};
use crate::units::Extent;
use crate::units::bytes;

/// One difference.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// "table", "partition boot", "raw u-boot", "image".
    pub region: String,
    /// Byte findings: the partition the difference lies in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Byte findings: the structure the difference lies in ("GPT header", "FAT (copy 1)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structure: Option<String>,
    /// Byte offset of the first difference (on the disk, or in the file when `path` is set
    /// and `offset_in_file` is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Byte findings: the offset in the file (or raw blob) of the difference, or of the
    /// first byte of the range it lies within.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_in_file: Option<u64>,
    /// Byte findings from hashes: the difference lies within this many bytes from `offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    pub message: String,
}

impl Finding {
    fn new(region: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            region: region.into(),
            partition: None,
            path: None,
            structure: None,
            offset: None,
            offset_in_file: None,
            within: None,
            expected: None,
            found: None,
            message: message.into(),
        }
    }
}

/// The outcome: no findings means the target matches.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub mode: &'static str,
    /// Bytes compared.
    pub bytes_checked: u64,
    pub findings: Vec<Finding>,
    /// Differences in files the build placed on the user-data partition that SkiffOS itself
    /// rewrites at boot (see `SYSTEM_REWRITES`): reported, not failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_by_system: Vec<Finding>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// What a target is compared with.
#[derive(Debug)]
pub enum Reference {
    /// Meaning: what this plan (a board build) writes.
    Plan(Box<Plan>),
    /// Meaning: what this release image holds (from the manifest beside it, else read out
    /// of the image); with trusted keys, from its manifest signed by one of them.
    Release {
        path: std::path::PathBuf,
        trusted: Vec<crate::image::sign::PublicKey>,
    },
    /// Bytes: an image file (raw or compressed), over its bmap's ranges when it has one
    /// (`bmap`, else the one found beside it), else every byte.
    Image {
        path: std::path::PathBuf,
        bmap: Option<std::path::PathBuf>,
    },
    /// Bytes: the mapped ranges a manifest records.
    Manifest(Box<Manifest>),
}

/// Compares the device or image file at `target` with `reference`. Differences are
/// findings in the verdict, not errors; errors are for a target or reference that cannot
/// be read.
pub fn verify(target: &std::path::Path, reference: &Reference) -> Result<Verdict> {
    let dev = crate::io::open_target(target)?;
    Ok(match reference {
        Reference::Plan(plan) => meaning(&dev, &Expected::from_plan(plan)),
        Reference::Release { path, trusted } => meaning(&dev, &Expected::of_image(path, trusted)?),
        Reference::Image { path, bmap } => {
            crate::image::read::check_image_file(path)?;
            let bmap = bmap::find(path, bmap.as_deref());
            bytes_image(&dev, path, bmap.as_deref())?
        }
        Reference::Manifest(m) => bytes_manifest(&dev, m),
    })
}

const CHUNK: usize = 4 << 20;

fn read(dev: &dyn ReadAt, at: u64, len: usize) -> std::result::Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    dev.read_exact_at(&mut buf, at).map_err(|e| {
        format!(
            "cannot read {} bytes at {}: {e}",
            bytes(len as u64),
            bytes(at)
        )
    })?;
    Ok(buf)
}

/// Names the region of a byte offset, from the manifest's partitions.
fn region_of(m: &Manifest, at: u64) -> String {
    m.partitions
        .iter()
        .find(|p| at >= p.start && at < p.start + p.size)
        .map(|p| format!("partition {}", p.id))
        .or_else(|| {
            m.raw
                .iter()
                .find(|r| at >= r.offset && at < r.offset + r.length)
                .map(|r| format!("raw {}", r.name))
        })
        .unwrap_or_else(|| "table".into())
}

/// Bytes: the manifest's mapped ranges against the target, by hash: piece by piece when
/// the manifest has hashed pieces (each difference placed within its piece: a file's
/// content, or at most 1 MiB of anything else), else range by
/// range (a format 1 manifest, named by partition as before).
pub fn bytes_manifest(dev: &dyn ReadAt, m: &Manifest) -> Verdict {
    let mut findings = Vec::new();
    if dev.size() < m.image.size {
        findings.push(Finding::new(
            "image",
            format!(
                "target has {} bytes, image {}",
                bytes(dev.size()),
                bytes(m.image.size)
            ),
        ));
    }
    let map = (m.image.chunk_size > 0).then(|| Map::of_manifest(m));
    let mut checked = 0;
    for r in &m.image.mapped {
        let e = r.extent(m.image.block_size, m.image.size);
        let span = Span::new(e.start, e.len);
        let pieces = r.hashed(m.image.block_size, m.image.size, m.image.chunk_size);
        checked += match (&map, pieces) {
            (Some(map), Some(pieces)) => by_pieces(dev, &pieces, map, &mut findings),
            // Pieces that do not tile the range (a damaged manifest) leave the range's hash.
            _ => by_range(dev, m, r, span, &mut findings),
        };
    }
    Verdict {
        mode: "bytes",
        bytes_checked: checked,
        findings,
        changed_by_system: Vec::new(),
    }
}

/// One mapped range against its SHA-256; returns the bytes read.
fn by_range(
    dev: &dyn ReadAt,
    m: &Manifest,
    r: &MappedRange,
    span: Span,
    findings: &mut Vec<Finding>,
) -> u64 {
    let (at, len) = (span.start, span.len);
    let mut h = Sha256::new();
    let mut off = 0;
    let mut failed = None;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        match read(dev, at + off, n) {
            Ok(b) => h.update(&b),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        off += n as u64;
    }
    let found = hex(&h.finalize());
    if let Some(e) = failed {
        findings.push(Finding {
            offset: Some(at + off),
            ..Finding::new(region_of(m, at), e)
        });
    } else if r.sha256.as_deref() != Some(found.as_str()) {
        findings.push(Finding {
            offset: Some(at),
            expected: r.sha256.clone(),
            found: Some(found),
            ..Finding::new(
                region_of(m, at),
                format!("bytes {}..{} differ", bytes(at), bytes(at + len)),
            )
        });
    }
    off
}

/// One mapped range against its hashed pieces; each differing piece's places are findings.
/// A piece is read in reads of at most `CHUNK` bytes. Returns the bytes read.
fn by_pieces(
    dev: &dyn ReadAt,
    pieces: &[(crate::units::Extent, &str)],
    map: &Map,
    findings: &mut Vec<Finding>,
) -> u64 {
    let mut checked = 0;
    for (e, want) in pieces {
        let mut h = Sha256::new();
        let mut off = 0;
        while off < e.len {
            let n = (e.len - off).min(CHUNK as u64);
            match read(dev, e.start + off, n as usize) {
                Ok(b) => h.update(&b),
                Err(err) => {
                    let region = map.place_from(e.start + off).region;
                    findings.push(Finding {
                        offset: Some(e.start + off),
                        ..Finding::new(region, err)
                    });
                    return checked + off;
                }
            }
            off += n;
        }
        checked += e.len;
        let found = hex(&h.finalize());
        if found != *want {
            chunk_findings(map, Span::new(e.start, e.len), want, &found, findings);
        }
    }
    checked
}

/// A differing chunk's places: each file or structure it overlaps, with the range of it the
/// chunk covers. The hash cannot say which of them differs, so every one is named; the
/// bytes between them that no file or structure holds (a cluster's slack, free space a
/// writer zeroed) are one more finding, not one each.
fn chunk_findings(map: &Map, chunk: Span, want: &str, found: &str, findings: &mut Vec<Finding>) {
    let (owned, loose): (Vec<Place>, Vec<Place>) = map
        .places(chunk)
        .into_iter()
        .partition(|p| !matches!(p.what, What::Partition { .. } | What::Outside));
    let mut named: Vec<Finding> = owned
        .iter()
        .map(|p| located(p, p.span.start, Some(p.span.len)))
        .collect();
    match loose.as_slice() {
        [] => {}
        [one] => named.push(located(one, one.span.start, Some(one.span.len))),
        [first, ..] => {
            let n: u64 = loose.iter().map(|p| p.span.len).sum();
            named.push(Finding {
                partition: first.partition.clone(),
                offset: Some(chunk.start),
                within: Some(chunk.len),
                ..Finding::new(
                    &first.region,
                    format!(
                        "differs within {} bytes between files and structures",
                        bytes(n)
                    ),
                )
            });
        }
    }
    let n = named.len();
    for mut f in named {
        if n > 1 {
            f.message += &format!(" (one of {n} places in a differing piece)");
        }
        findings.push(Finding {
            expected: Some(want.to_string()),
            found: Some(found.to_string()),
            ..f
        });
    }
}

/// A byte finding for a difference at disk offset `at` in place `p` (exact, or within
/// `within` bytes from `at`), named by what the place is.
fn located(p: &Place, at: u64, within: Option<u64>) -> Finding {
    let rel = at - p.span.start;
    let (base, of) = match &p.what {
        What::File { offset, .. } => (*offset, "of the file"),
        What::Raw { offset } => (*offset, "of the blob"),
        What::Partition { offset } => (*offset, "of the partition"),
        What::Structure { offset, .. } => (*offset, ""),
        What::Outside => (at, ""),
    };
    let o = base.saturating_add(rel);
    let (its, of) = if of.is_empty() {
        ("its ", "")
    } else {
        ("", of)
    };
    let message = match within {
        _ if p.what == What::Outside => "differs outside every partition".into(),
        None => format!("differs at {its}byte {} {of}", bytes(o)),
        Some(n) => format!(
            "differs within {its}bytes {}..{} {of}",
            bytes(o),
            bytes(o.saturating_add(n))
        ),
    };
    let mut f = Finding {
        partition: p.partition.clone(),
        offset: Some(at),
        within,
        ..Finding::new(&p.region, message.trim_end())
    };
    match &p.what {
        What::File { path, .. } => {
            f.path = Some(path.clone());
            f.offset_in_file = Some(o);
        }
        What::Raw { .. } => f.offset_in_file = Some(o),
        What::Structure { name, .. } => f.structure = Some(name.clone()),
        What::Partition { .. } | What::Outside => {}
    }
    f
}

/// The map an image's bytes are named by: the one its manifest (beside it, for this image)
/// records, or none.
fn image_map(image: &std::path::Path) -> Result<Option<Map>> {
    let path = crate::image::manifest::path_for(image);
    if !path.exists() {
        return Ok(None);
    }
    let m = crate::image::manifest::load(&path)?;
    let name = image.file_name().map(|n| n.to_string_lossy());
    Ok((name.as_deref() == Some(m.image.file.as_str())).then(|| Map::of_manifest(&m)))
}

/// Bytes: an image file (raw or compressed) against the target, over the image's mapped
/// ranges (its bmap), or over every byte when there is no bmap. Each difference is named
/// through the image's manifest when it has one, else by the partition its table puts it
/// in.
pub fn bytes_image(
    dev: &dyn ReadAt,
    image: &std::path::Path,
    bmap: Option<&std::path::Path>,
) -> Result<Verdict> {
    let blocks = bmap.map(bmap::read).transpose()?;
    let image_size = image_size(image, blocks.as_ref().map(|b| b.size))?;
    let mapped = blocks.map(|b| b.ranges);
    let mut names = image_map(image)?;
    let mut findings = Vec::new();
    let mut checked = 0u64;
    // Flashing a GPT image onto a larger device moves the backup GPT to the device's end
    // (and edits the protective MBR and primary header to match): expect those edits.
    let mut moved: Vec<(u64, Vec<u8>)> = Vec::new();
    decode_each(image, CHUNK, |at, buf| {
        let n = buf.len();
        if at == 0 {
            if names.is_none() {
                let head = &buf[..n.min(DiskTable::HEAD as usize)];
                let entries = DiskTable::parse(head).map(|t| t.entries);
                names = Some(Map::of_table(&entries.unwrap_or_default()));
            }
            if let (_, Some(mut pieces)) = crate::ops::flash::table_of(buf, dev.size(), image_size)
            {
                let (_, head) = pieces.remove(0);
                let k = head.len().min(n);
                buf[..k].copy_from_slice(&head[..k]);
                moved = pieces.split_off(1);
            }
        }
        let parts: Vec<Extent> = match &mapped {
            Some(m) => mapped_parts(m, at, n as u64),
            // Without a block map every byte counts: zeros may be required (a FAT's free
            // entries), so the whole image is compared.
            None => vec![Extent::new(at, n as u64)],
        };
        for Extent { start: a, len: l } in parts {
            let want = &buf[(a - at) as usize..(a - at + l) as usize];
            checked += l;
            compare_at(dev, a, want, names.as_ref(), "image", &mut findings);
        }
        if findings.len() > 100 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    for (a, want) in moved {
        checked += want.len() as u64;
        compare_at(dev, a, &want, None, "backup GPT", &mut findings);
    }
    Ok(Verdict {
        mode: "bytes",
        bytes_checked: checked,
        findings,
        changed_by_system: Vec::new(),
    })
}

/// Compares the target's bytes at `at` with `want`. With a map, the first difference in
/// each place (file, structure, partition) is a finding naming it, the exact offsets and
/// both bytes; without, the first difference is one, naming `region` and both hashes.
fn compare_at(
    dev: &dyn ReadAt,
    at: u64,
    want: &[u8],
    map: Option<&Map>,
    region: &str,
    findings: &mut Vec<Finding>,
) {
    match (read(dev, at, want.len()), map) {
        (Err(e), _) => findings.push(Finding {
            offset: Some(at),
            ..Finding::new(region, e)
        }),
        (Ok(got), Some(map)) if got != want => each_difference(map, at, &got, want, findings),
        (Ok(got), None) if got != want => {
            let i = got.iter().zip(want).position(|(x, y)| x != y).unwrap_or(0);
            findings.push(Finding {
                offset: Some(at + i as u64),
                expected: Some(hex(&Sha256::digest(want))),
                found: Some(hex(&Sha256::digest(&got))),
                ..Finding::new(
                    region,
                    format!("first difference at byte {}", bytes(at + i as u64)),
                )
            });
        }
        (Ok(_), _) => {}
    }
}

/// The first difference between `got` and `want` (read at disk offset `at`) in each place
/// of the map they cover.
fn each_difference(map: &Map, at: u64, got: &[u8], want: &[u8], findings: &mut Vec<Finding>) {
    let mut i = 0;
    while let Some(k) = got[i..].iter().zip(&want[i..]).position(|(x, y)| x != y) {
        let d = i + k;
        let p = map.place_from(at + d as u64);
        findings.push(Finding {
            expected: Some(format!("0x{:02x}", want[d])),
            found: Some(format!("0x{:02x}", got[d])),
            ..located(&p, at + d as u64, None)
        });
        if findings.len() > 100 {
            return;
        }
        i = (p.span.end() - at).min(got.len() as u64) as usize;
    }
}

/// Meaning: the target against what a plan, a manifest or a release image says a correct
/// card holds.
pub fn meaning(dev: &dyn ReadAt, want: &Expected) -> Verdict {
    let mut v = Verdict {
        mode: "meaning",
        bytes_checked: 0,
        findings: Vec::new(),
        changed_by_system: Vec::new(),
    };
    let entries = table(dev, want, &mut v.findings);
    for (i, expected) in want.partitions.iter().enumerate() {
        let p = &on_card(expected, entries.get(i), dev.size());
        for (at, piece) in &p.image {
            prebuilt(dev, p, *at, piece, &mut v);
        }
        let Some(fs) = &p.fs else { continue };
        let region = format!("partition {}", p.id);
        // Kind and label only: the files are compared below, read once.
        let found = probe(dev, p.start, p.size);
        if found.kind.as_str() != fs.kind {
            v.findings.push(Finding {
                expected: Some(fs.kind.clone()),
                found: Some(found.kind.as_str().to_string()),
                ..Finding::new(&region, "filesystem kind differs")
            });
            continue;
        }
        if found.label.as_deref().map(str::trim) != fs.label.as_deref() {
            v.findings.push(Finding {
                expected: fs.label.clone(),
                found: found.label.clone(),
                ..Finding::new(&region, "filesystem label differs")
            });
        }
        // On the partition that holds the user's data only what the build placed there is
        // compared; what the user added is theirs.
        let before = v.findings.len();
        match (found.kind, found.fat) {
            (Kind::Ext4, _) => ext4_files(dev, p, fs, &region, &mut v),
            (_, Some(vol)) => fat_files(&vol, fs, &region, &mut v),
            (_, None) => v.findings.push(Finding::new(
                &region,
                found.problem.unwrap_or_else(|| "no FAT volume".into()),
            )),
        }
        if p.grows {
            let (system, other): (Vec<_>, Vec<_>) = v
                .findings
                .drain(before..)
                .partition(|f| f.path.as_deref().is_some_and(rewritten_by_system));
            v.findings.extend(other);
            v.changed_by_system.extend(system);
        }
    }
    for r in &want.raw {
        v.findings.extend(raw_findings(dev, r));
        v.bytes_checked += r.length;
    }
    v
}

/// A bootloader blob (or other bytes outside the partitions) at its offset: what differs.
pub(crate) fn raw_findings(dev: &dyn ReadAt, r: &expect::Raw) -> Vec<Finding> {
    let region = format!("raw {}", r.name);
    let got = match read(dev, r.offset, r.length as usize) {
        Ok(g) => g,
        Err(e) => return vec![Finding::new(&region, e)],
    };
    let want = match &r.want {
        RawWant::Sha256(h) => {
            let found = hex(&Sha256::digest(&got));
            if found == *h {
                return Vec::new();
            }
            return vec![Finding {
                offset: Some(r.offset),
                expected: Some(h.clone()),
                found: Some(found),
                ..Finding::new(&region, "bootloader blob differs")
            }];
        }
        RawWant::File { path, skip } => std::fs::File::open(path)
            .and_then(|f| {
                let mut b = vec![0u8; r.length as usize];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, *skip)?;
                Ok(b)
            })
            .map_err(|e| format!("reading {}: {e}", path.display())),
        RawWant::Source(s) => expected(s).and_then(|mut rd| {
            let mut b = vec![0u8; r.length as usize];
            read_full(&mut rd, &mut b).map_err(|e| e.to_string())?;
            Ok(b)
        }),
    };
    match want {
        Err(e) => vec![Finding::new(&region, e)],
        Ok(w) => match got.iter().zip(&w).position(|(a, b)| a != b) {
            Some(i) => vec![Finding {
                offset: Some(r.offset + i as u64),
                expected: Some(hex(&Sha256::digest(&w))),
                found: Some(hex(&Sha256::digest(&got))),
                ..Finding::new(&region, "bootloader blob differs")
            }],
            None => Vec::new(),
        },
    }
}

/// Files under the persist partition that SkiffOS's boot script
/// (`configs-base/pre/root_overlay/opt/skiff/scripts/mount-all.sh`) writes itself, so a
/// build's copy of them does not survive the first boot: the `readme` files it rewrites at
/// every boot, the hostname and machine id it stores when they are empty, the SSH
/// configuration it copies there and the host keys sshd makes, and the journal.
const SYSTEM_REWRITES: &[&str] = &[
    "/skiff/keys/readme",
    "/skiff/connections/readme",
    "/skiff/etc/readme",
    "/skiff/hostname",
    "/skiff/machine-id",
    "/skiff/ssh/",
    "/skiff/journal/",
];

fn rewritten_by_system(path: &str) -> bool {
    SYSTEM_REWRITES
        .iter()
        .any(|r| path == *r || r.ends_with('/') && path.starts_with(r))
}

/// The expected partition where the card's table puts it (the reference's place when the
/// card has no entry for it, or one that leaves the disk).
fn on_card(p: &Part, e: Option<&TableEntry>, disk: u64) -> Part {
    let mut p = p.clone();
    if let Some(e) = e.filter(|e| e.start.saturating_add(e.size) <= disk) {
        p.start = e.start;
        p.size = e.size;
    }
    p
}

/// A partition filled from a file holds that file's bytes (this piece of them at `base`
/// from its start).
fn prebuilt(dev: &dyn ReadAt, p: &Part, base: u64, image: &Want, v: &mut Verdict) {
    let region = format!("partition {}", p.id);
    let size = match image {
        Want::Source { size, .. } | Want::Hash { size, .. } => *size,
        _ => 0,
    };
    let mut cmp = match Compare::new(image) {
        Ok(c) => c,
        Err(m) => return v.findings.push(Finding::new(&region, m)),
    };
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(1 << 20);
        match read(dev, p.start + base + at, n as usize) {
            Ok(g) => cmp.feed(&g),
            Err(e) => return v.findings.push(Finding::new(&region, e)),
        }
        at += n;
    }
    v.bytes_checked += size;
    if let Some(d) = cmp.finish() {
        v.findings.push(Finding {
            offset: d.at.map(|a| p.start + base + a),
            expected: Some(d.expected),
            found: Some(d.found),
            ..Finding::new(&region, "partition content differs from the build's")
        });
    }
}

/// The card's table against the expected one; returns the card's entries in table order
/// (none when it has no usable table of the expected kind).
fn table(dev: &dyn ReadAt, want: &Expected, findings: &mut Vec<Finding>) -> Vec<TableEntry> {
    let found = match DiskTable::read(dev) {
        Ok(t) => Ok(t),
        Err(TableError::Io(e)) => return no_table(findings, Finding::new("table", e.to_string())),
        Err(TableError::Missing(e)) => Err(e),
    };
    let entries = match (&want.table, found) {
        (
            Table::Gpt {
                disk_guid,
                no_backup,
                ..
            },
            Ok(DiskTable {
                scheme: Scheme::Gpt(h),
                entries,
                ..
            }),
        ) => {
            if h.disk_guid != *disk_guid {
                findings.push(Finding {
                    expected: Some(disk_guid.to_string()),
                    found: Some(h.disk_guid.to_string()),
                    ..Finding::new("table", "disk GUID differs")
                });
            }
            if !no_backup {
                backup(dev, &h, findings);
            }
            entries
        }
        (Table::Gpt { .. }, Ok(DiskTable { gpt_problem, .. })) => {
            let e = gpt_problem.unwrap_or_else(|| "no GPT".into());
            return no_table(
                findings,
                Finding::new("table", format!("expected a GPT: {e}")),
            );
        }
        (Table::Gpt { .. }, Err(e)) => {
            return no_table(
                findings,
                Finding::new("table", format!("expected a GPT: {e}")),
            );
        }
        // An MBR reader sees the first sector's entries whatever else the disk holds.
        (Table::Mbr { .. }, _) => match mbr(&dev.read_padded(0, 512)) {
            Some((_, e)) => e,
            None => {
                return no_table(
                    findings,
                    Finding::new("table", "expected an MBR: no partition table"),
                );
            }
        },
    };
    if entries.len() != want.partitions.len() {
        findings.push(Finding::new(
            "table",
            format!(
                "{} partitions, expected {}",
                entries.len(),
                want.partitions.len()
            ),
        ));
    }
    for (p, e) in want.partitions.iter().zip(&entries) {
        entry(p, e, findings);
    }
    entries
}

fn no_table(findings: &mut Vec<Finding>, f: Finding) -> Vec<TableEntry> {
    findings.push(f);
    Vec::new()
}

/// A table entry against the expected partition: type, bootable flag, GPT name and
/// PARTUUID. Where it starts and how large it is are the card's own (flashed at another
/// size, grown at first boot, or upgraded to a build whose partitions are larger): the
/// content is checked where the card puts it.
fn entry(p: &Part, e: &TableEntry, findings: &mut Vec<Finding>) {
    let region = format!("partition {}", p.id);
    let mut differ = |what: &str, want: String, got: String| {
        if want != got {
            findings.push(Finding {
                offset: Some(p.start),
                expected: Some(want),
                found: Some(got),
                ..Finding::new(&region, format!("{what} differs"))
            });
        }
    };
    differ(
        "type",
        format!("{:?}", p.kind),
        format!(
            "{:?}",
            e.gpt_type
                .map(|g| g.to_string())
                .or(e.mbr_type.map(|b| format!("0x{b:02x}")))
        ),
    );
    if let Some(b) = p.bootable {
        differ("bootable flag", b.to_string(), e.bootable.to_string());
    }
    if let Some(n) = &p.name {
        differ("GPT name", n.clone(), e.name.clone());
    }
    if let Some(u) = &p.partuuid {
        differ("PARTUUID", u.clone(), e.guid.to_string().to_lowercase());
    }
}

/// Checks the backup GPT where the primary header says it is (the disk's last sector once
/// a card is flashed or grown; the image's last sector on an image copied verbatim onto a
/// larger card): its header and array CRCs good, and the same table as the primary.
fn backup(dev: &dyn ReadAt, primary: &GptHeader, findings: &mut Vec<Finding>) {
    let alt = primary.alternate_lba;
    match DiskTable::gpt_at(dev, alt) {
        Err(e) => findings.push(Finding {
            offset: Some(alt.saturating_mul(SECTOR)),
            ..Finding::new("backup GPT", format!("bad: {e}"))
        }),
        Ok((b, _)) => {
            let same = b.disk_guid == primary.disk_guid
                && b.array_crc == primary.array_crc
                && b.entries == primary.entries
                && b.entry_size == primary.entry_size
                && b.first_usable == primary.first_usable
                && b.last_usable == primary.last_usable
                && b.alternate_lba == 1
                && b.my_lba == alt;
            if !same {
                findings.push(Finding {
                    offset: Some(alt * SECTOR),
                    ..Finding::new("backup GPT", "differs from the primary GPT")
                });
            }
        }
    }
}

/// Reads an expected file's bytes from its source.
fn expected(source: &Source) -> std::result::Result<Box<dyn Read + '_>, String> {
    Ok(match source {
        Source::Path(p) => {
            Box::new(std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?)
        }
        Source::Text(t) => Box::new(t.as_bytes()),
        Source::Secret(t) => Box::new(t.expose().as_bytes()),
        Source::Bytes(b) => Box::new(&b[..]),
        Source::Spooled(s) => Box::new(crate::io::SpooledReader::new(s)),
    })
}

/// How found content differs from the expected: where (when the expected bytes were read,
/// not only their hash known) and both hashes.
struct Diff {
    at: Option<u64>,
    expected: String,
    found: String,
}

impl Diff {
    fn message(&self) -> String {
        match self.at {
            Some(at) => format!("content differs from byte {}", bytes(at)),
            None => "content differs".into(),
        }
    }
}

/// Compares a stream of found bytes with what is expected: the bytes of a source (the
/// first difference is found), or a size and hash.
struct Compare<'a> {
    /// The expected bytes; `None` when only their hash is known.
    want: Option<Box<dyn Read + 'a>>,
    /// The expected hash and size, when that is all that is known.
    hash: Option<(&'a str, u64)>,
    at: u64,
    diff: Option<u64>,
    hw: Sha256,
    hg: Sha256,
    buf: Vec<u8>,
    /// A U-Boot image: its header time (and so the header CRC) is the build's clock, not
    /// content; differences there are not findings.
    stamp_free: bool,
}

impl<'a> Compare<'a> {
    fn new(want: &'a Want) -> std::result::Result<Self, String> {
        let magic = [0x27, 0x05, 0x19, 0x56];
        let (reader, hash, stamp_free) = match want {
            Want::Source { source, .. } => (
                Some(expected(source)?),
                None,
                matches!(source, Source::Bytes(b) if b.starts_with(&magic)),
            ),
            Want::Hash { size, sha256 } => (None, Some((sha256.as_str(), *size)), false),
            Want::Dir | Want::Symlink(_) => return Err("not a file".into()),
        };
        Ok(Compare {
            want: reader,
            hash,
            at: 0,
            diff: None,
            hw: Sha256::new(),
            hg: Sha256::new(),
            buf: Vec::new(),
            stamp_free,
        })
    }

    fn feed(&mut self, got: &[u8]) {
        self.hg.update(got);
        let Some(want) = &mut self.want else {
            self.at += got.len() as u64;
            return;
        };
        self.buf.resize(got.len(), 0);
        let n = read_full(want, &mut self.buf).unwrap_or(0);
        self.hw.update(&self.buf[..n]);
        if self.diff.is_none() {
            let (at, stamp_free) = (self.at, self.stamp_free);
            let stamp = |k: usize| stamp_free && (4..12).contains(&(at + k as u64));
            let i = got[..n]
                .iter()
                .zip(&self.buf[..n])
                .enumerate()
                .position(|(k, (a, b))| a != b && !stamp(k));
            if let Some(i) = i {
                self.diff = Some(self.at + i as u64);
            } else if n < got.len() {
                self.diff = Some(self.at + n as u64);
            }
        }
        self.at += got.len() as u64;
    }

    fn finish(mut self) -> Option<Diff> {
        let found = hex(&self.hg.finalize());
        if let Some((sha256, size)) = self.hash {
            return (found != sha256 || self.at != size).then(|| Diff {
                at: None,
                expected: sha256.to_string(),
                found,
            });
        }
        // What the expected holds beyond the found bytes, hashed in pieces: it may be large.
        if let Some(w) = &mut self.want {
            self.buf.resize(1 << 20, 0);
            while let Ok(n) = read_full(w, &mut self.buf) {
                if n == 0 {
                    break;
                }
                self.hw.update(&self.buf[..n]);
                self.diff.get_or_insert(self.at);
            }
        }
        let expected = hex(&self.hw.finalize());
        self.diff.map(|d| Diff {
            at: Some(d),
            expected,
            found,
        })
    }
}

fn file_finding(region: &str, path: &str, m: String) -> Finding {
    Finding {
        path: Some(path.to_string()),
        ..Finding::new(region, m)
    }
}

fn diff_finding(region: &str, path: &str, d: Diff) -> Finding {
    Finding {
        offset: d.at,
        message: d.message(),
        expected: Some(d.expected),
        found: Some(d.found),
        ..file_finding(region, path, String::new())
    }
}

fn fat_files(vol: &FatVolume<'_>, fs: &expect::Fs, region: &str, v: &mut Verdict) {
    let list = match vol.list() {
        Ok(l) => l,
        Err(e) => return v.findings.push(Finding::new(region, e.to_string())),
    };
    for e in &fs.files {
        if matches!(e.want, Want::Dir | Want::Symlink(_)) {
            continue;
        }
        let found = list
            .iter()
            .find(|f| f.path.eq_ignore_ascii_case(&e.path) || f.path == e.path);
        let Some(found) = found else {
            v.findings
                .push(file_finding(region, &e.path, "file is missing".into()));
            continue;
        };
        let mut cmp = match Compare::new(&e.want) {
            Ok(c) => c,
            Err(m) => {
                v.findings.push(file_finding(region, &e.path, m));
                continue;
            }
        };
        if let Err(m) = vol.read_file(found, &mut |b| cmp.feed(b)) {
            v.findings
                .push(file_finding(region, &e.path, m.to_string()));
            continue;
        }
        v.bytes_checked += found.size;
        if let Some(d) = cmp.finish() {
            v.findings.push(diff_finding(region, &e.path, d));
        }
    }
}

/// mkext4's reader over one partition of the target.
fn ext4_files(dev: &dyn ReadAt, p: &Part, fs: &expect::Fs, region: &str, v: &mut Verdict) {
    let r = crate::io::PartReader {
        dev,
        base: p.start,
        len: p.size,
    };
    let ext = match mkext4::reader::Fs::open(r) {
        Ok(x) => x,
        Err(e) => return v.findings.push(Finding::new(region, format!("ext4: {e}"))),
    };
    for e in &fs.files {
        let ino = match ext.resolve(&e.path) {
            Ok(i) => i,
            Err(_) => {
                v.findings
                    .push(file_finding(region, &e.path, "missing".into()));
                continue;
            }
        };
        match &e.want {
            Want::Dir => {}
            Want::Symlink(target) => match ext.symlink_target(ino) {
                Ok(t) if t == target.as_bytes() => {}
                Ok(t) => v.findings.push(Finding {
                    expected: Some(target.clone()),
                    found: Some(String::from_utf8_lossy(&t).into_owned()),
                    ..file_finding(region, &e.path, "symlink target differs".into())
                }),
                Err(err) => {
                    v.findings
                        .push(file_finding(region, &e.path, format!("symlink: {err}")))
                }
            },
            Want::Source { .. } | Want::Hash { .. } => {
                ext4_file(&ext, ino, e, region, v);
            }
        }
    }
}

/// One ext4 file's content against the expected.
fn ext4_file<R: mkext4::reader::ReadAt>(
    ext: &mkext4::reader::Fs<R>,
    ino: u32,
    e: &expect::File,
    region: &str,
    v: &mut Verdict,
) {
    let mut cmp = match Compare::new(&e.want) {
        Ok(c) => c,
        Err(m) => return v.findings.push(file_finding(region, &e.path, m)),
    };
    let read = ext.inode(ino).and_then(|inode| {
        let extents = ext.extents(ino, &inode)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        loop {
            let n = ext.read_file_at(&inode, &extents, off, &mut buf)?;
            if n == 0 {
                return Ok(off);
            }
            cmp.feed(&buf[..n]);
            off += n as u64;
        }
    });
    match read {
        Err(err) => v
            .findings
            .push(file_finding(region, &e.path, format!("ext4: {err}"))),
        Ok(n) => {
            v.bytes_checked += n;
            if let Some(d) = cmp.finish() {
                v.findings.push(diff_finding(region, &e.path, d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_skiffos_rewrites_at_boot_is_the_systems() {
        for p in [
            "/skiff/keys/readme",
            "/skiff/hostname",
            "/skiff/ssh/ssh_host_ed25519_key",
        ] {
            assert!(rewritten_by_system(p), "{p}");
        }
        for p in [
            "/boot/bzImage",
            "/skiff/hostname.bak",
            "/skiff/sshd",
            "/skiff/keys/a.pub",
        ] {
            assert!(!rewritten_by_system(p), "{p}");
        }
    }
}
