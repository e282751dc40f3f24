//! Is this card (or image) what a build wrote? Two ways to answer:
//!
//! - **bytes**: every mapped range of the reference (a manifest's or bmap's ranges, or an
//!   image file itself) equals the target; reads only mapped ranges.
//! - **meaning**, against a board and its images directory: the partition table holds the
//!   plan's partitions (kinds, types, names, identifiers; where they start and how large
//!   they are is the card's own, so a card flashed at any size, grown at first boot or
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
//! inode table), with the disk offset — exactly against an image, within one hashed chunk
//! against a manifest. Never writes.

use std::io::Read;
use std::ops::ControlFlow;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::format::Span;
use crate::format::fat::read::FatVolume;
use crate::format::probe::probe;
use crate::format::table::read::{DiskTable, GptHeader, Scheme, TableError, mbr};
use crate::format::table::{SECTOR, TableEntry};
use crate::image::bmap::{self, mapped_parts};
use crate::image::manifest::{Manifest, MappedRange};
use crate::image::map::{Map, Place, What};
use crate::image::read::{decode_each, image_size};
use crate::io::{ReadAt, hex, read_full};
use crate::plan::tree::{Node, Source};
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
        Reference::Plan(plan) => meaning(&dev, plan),
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

/// Bytes: the manifest's mapped ranges against the target, by hash: chunk by chunk when
/// the manifest has chunk hashes (each difference placed within its chunk), else range by
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
        let at = r.first * m.image.block_size;
        let span = Span::new(
            at,
            ((r.last + 1) * m.image.block_size).min(m.image.size) - at,
        );
        let chunk = m.image.chunk_size;
        checked += match &map {
            // Chunks that do not tile the range, or are larger than a read (a damaged
            // manifest), leave the range's hash.
            Some(map)
                if chunk <= CHUNK as u64 && r.chunks.len() as u64 == span.len.div_ceil(chunk) =>
            {
                by_chunks(dev, r, span, chunk, map, &mut findings)
            }
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
    } else if found != r.sha256 {
        findings.push(Finding {
            offset: Some(at),
            expected: Some(r.sha256.clone()),
            found: Some(found),
            ..Finding::new(
                region_of(m, at),
                format!("bytes {}..{} differ", bytes(at), bytes(at + len)),
            )
        });
    }
    off
}

/// One mapped range against its chunk hashes; each differing chunk's places are findings.
/// Returns the bytes read.
fn by_chunks(
    dev: &dyn ReadAt,
    r: &MappedRange,
    span: Span,
    chunk: u64,
    map: &Map,
    findings: &mut Vec<Finding>,
) -> u64 {
    let mut checked = 0;
    for (want, at) in r
        .chunks
        .iter()
        .zip((span.start..span.end()).step_by(chunk as usize))
    {
        let n = chunk.min(span.end() - at);
        let got = match read(dev, at, n as usize) {
            Ok(b) => b,
            Err(e) => {
                let region = map.place_from(at).region;
                findings.push(Finding {
                    offset: Some(at),
                    ..Finding::new(region, e)
                });
                break;
            }
        };
        checked += n;
        let found = hex(&Sha256::digest(&got));
        if found != *want {
            chunk_findings(map, Span::new(at, n), want, &found, findings);
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
            f.message += &format!(" (one of {n} places in a differing chunk)");
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

/// Meaning: the target against a plan (made with the board's minimum size).
pub fn meaning(dev: &dyn ReadAt, plan: &Plan) -> Verdict {
    let mut v = Verdict {
        mode: "meaning",
        bytes_checked: 0,
        findings: Vec::new(),
        changed_by_system: Vec::new(),
    };
    let entries = table(dev, plan, &mut v.findings);
    for (i, planned) in plan.partitions.iter().enumerate() {
        let p = &on_card(planned, entries.get(i), dev.size());
        if let Some(image) = &p.image {
            prebuilt(dev, p, image, &mut v);
        }
        let Some(fs) = &p.fs else { continue };
        let region = format!("partition {}", p.id);
        // Kind and label only: the files are compared below, read once.
        let found = probe(dev, p.start, p.size);
        let kind = format!("{:?}", fs.kind).to_lowercase();
        if found.kind.as_str() != kind {
            v.findings.push(Finding {
                expected: Some(kind.clone()),
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
        match (fs.kind, found.fat) {
            (crate::define::board::FsKind::Ext4, _) => ext4_files(dev, p, &region, &mut v),
            (_, Some(vol)) => fat_files(&vol, p, &region, &mut v),
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
    for r in &plan.raw {
        let region = format!("raw {}", r.name);
        let want = std::fs::File::open(&r.source).and_then(|f| {
            let mut b = vec![0u8; r.length as usize];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, r.skip)?;
            Ok(b)
        });
        match (want, read(dev, r.offset, r.length as usize)) {
            (Err(e), _) => v.findings.push(Finding::new(
                &region,
                format!("reading {}: {e}", r.source.display()),
            )),
            (_, Err(e)) => v.findings.push(Finding::new(&region, e)),
            (Ok(w), Ok(g)) => {
                v.bytes_checked += r.length;
                if let Some(i) = g.iter().zip(&w).position(|(a, b)| a != b) {
                    v.findings.push(Finding {
                        offset: Some(r.offset + i as u64),
                        expected: Some(hex(&Sha256::digest(&w))),
                        found: Some(hex(&Sha256::digest(&g))),
                        ..Finding::new(&region, "bootloader blob differs")
                    });
                }
            }
        }
    }
    v
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

/// The planned partition where the card's table puts it (the plan's place when the card
/// has no entry for it, or one that leaves the disk).
fn on_card(
    p: &crate::plan::Partition,
    e: Option<&TableEntry>,
    disk: u64,
) -> crate::plan::Partition {
    let mut p = p.clone();
    if let Some(e) = e.filter(|e| e.start.saturating_add(e.size) <= disk) {
        p.start = e.start;
        p.size = e.size;
    }
    p
}

/// A partition filled from a file holds that file's bytes at its start.
fn prebuilt(
    dev: &dyn ReadAt,
    p: &crate::plan::Partition,
    image: &crate::plan::Prebuilt,
    v: &mut Verdict,
) {
    let region = format!("partition {}", p.id);
    let file = match std::fs::File::open(&image.source) {
        Ok(f) => f,
        Err(e) => {
            return v.findings.push(Finding::new(
                &region,
                format!("reading {}: {e}", image.source.display()),
            ));
        }
    };
    let mut at = 0u64;
    while at < image.size {
        let n = (image.size - at).min(1 << 20);
        let mut want = vec![0u8; n as usize];
        if let Err(e) = std::os::unix::fs::FileExt::read_exact_at(&file, &mut want, at) {
            return v.findings.push(Finding::new(
                &region,
                format!("reading {}: {e}", image.source.display()),
            ));
        }
        let got = match read(dev, p.start + at, n as usize) {
            Ok(g) => g,
            Err(e) => return v.findings.push(Finding::new(&region, e)),
        };
        v.bytes_checked += n;
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            return v.findings.push(Finding {
                offset: Some(p.start + at + i as u64),
                expected: Some(format!("the bytes of {}", image.source.display())),
                found: Some(format!(
                    "0x{:02x} at partition byte {}",
                    got[i],
                    bytes(at + i as u64)
                )),
                ..Finding::new(&region, "partition content differs from its file")
            });
        }
        at += n;
    }
}

/// The card's table against the plan's; returns the card's entries in table order (none when
/// it has no usable table of the plan's kind).
fn table(dev: &dyn ReadAt, plan: &Plan, findings: &mut Vec<Finding>) -> Vec<TableEntry> {
    let found = match DiskTable::read(dev) {
        Ok(t) => Ok(t),
        Err(TableError::Io(e)) => return no_table(findings, Finding::new("table", e.to_string())),
        Err(TableError::Missing(e)) => Err(e),
    };
    let entries = match (&plan.table, found) {
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
    if entries.len() != plan.partitions.len() {
        findings.push(Finding::new(
            "table",
            format!(
                "{} partitions, expected {}",
                entries.len(),
                plan.partitions.len()
            ),
        ));
    }
    for (p, e) in plan.partitions.iter().zip(&entries) {
        entry(p, e, findings);
    }
    entries
}

fn no_table(findings: &mut Vec<Finding>, f: Finding) -> Vec<TableEntry> {
    findings.push(f);
    Vec::new()
}

/// A table entry against the planned partition: type, bootable flag, GPT name and PARTUUID.
/// Where it starts and how large it is are the card's own (flashed at another size, grown
/// at first boot, or upgraded to a build whose partitions are larger): the content is
/// checked where the card puts it.
fn entry(p: &crate::plan::Partition, e: &TableEntry, findings: &mut Vec<Finding>) {
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
        format!(
            "{:?}",
            p.gpt_type.map(|g| g.to_string()).or(p.mbr_type.clone())
        ),
        format!(
            "{:?}",
            e.gpt_type
                .map(|g| g.to_string())
                .or(e.mbr_type.map(|b| format!("0x{b:02x}")))
        ),
    );
    differ(
        "bootable flag",
        p.bootable.to_string(),
        e.bootable.to_string(),
    );
    if let Some(n) = &p.name {
        differ("GPT name", n.clone(), e.name.clone());
    }
    if p.gpt_type.is_some() {
        differ(
            "PARTUUID",
            p.partuuid.clone(),
            e.guid.to_string().to_lowercase(),
        );
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
    })
}

/// Compares a stream of found bytes with the expected source; returns the first
/// difference offset and both hashes, or None when equal.
struct Compare<'a> {
    want: Box<dyn Read + 'a>,
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
    fn new(source: &'a Source) -> std::result::Result<Self, String> {
        let magic = [0x27, 0x05, 0x19, 0x56];
        let stamp_free = matches!(source, Source::Bytes(b) if b.starts_with(&magic));
        Ok(Compare {
            want: expected(source)?,
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
        self.buf.resize(got.len(), 0);
        let n = read_full(&mut self.want, &mut self.buf).unwrap_or(0);
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

    fn finish(mut self) -> Option<(u64, String, String)> {
        let mut rest = Vec::new();
        let _ = self.want.read_to_end(&mut rest);
        if !rest.is_empty() {
            self.hw.update(&rest);
            self.diff.get_or_insert(self.at);
        }
        let (w, g) = (hex(&self.hw.finalize()), hex(&self.hg.finalize()));
        self.diff.map(|d| (d, w, g))
    }
}

fn fat_files(vol: &FatVolume<'_>, p: &crate::plan::Partition, region: &str, v: &mut Verdict) {
    let Some(fs) = &p.fs else { return };
    let list = match vol.list() {
        Ok(l) => l,
        Err(e) => return v.findings.push(Finding::new(region, e.to_string())),
    };
    for e in fs.entries.iter() {
        let Node::File { source, size } = &e.node else {
            continue;
        };
        let found = list
            .iter()
            .find(|f| f.path.eq_ignore_ascii_case(&e.path) || f.path == e.path);
        let Some(found) = found else {
            v.findings.push(Finding {
                path: Some(e.path.clone()),
                ..Finding::new(region, "file is missing")
            });
            continue;
        };
        let mut cmp = match Compare::new(source) {
            Ok(c) => c,
            Err(m) => {
                v.findings.push(Finding {
                    path: Some(e.path.clone()),
                    ..Finding::new(region, m)
                });
                continue;
            }
        };
        if let Err(m) = vol.read_file(found, &mut |b| cmp.feed(b)) {
            v.findings.push(Finding {
                path: Some(e.path.clone()),
                ..Finding::new(region, m.to_string())
            });
            continue;
        }
        v.bytes_checked += size;
        if let Some((at, w, g)) = cmp.finish() {
            v.findings.push(Finding {
                path: Some(e.path.clone()),
                offset: Some(at),
                expected: Some(w),
                found: Some(g),
                ..Finding::new(region, format!("content differs from byte {}", bytes(at)))
            });
        }
    }
}

/// mkext4's reader over one partition of the target.
fn ext4_files(dev: &dyn ReadAt, p: &crate::plan::Partition, region: &str, v: &mut Verdict) {
    let Some(fs) = &p.fs else { return };
    let r = crate::io::PartReader {
        dev,
        base: p.start,
        len: p.size,
    };
    let ext = match mkext4::reader::Fs::open(r) {
        Ok(x) => x,
        Err(e) => return v.findings.push(Finding::new(region, format!("ext4: {e}"))),
    };
    for e in fs.entries.iter().skip(1) {
        let finding = |m: String| Finding {
            path: Some(e.path.clone()),
            ..Finding::new(region, m)
        };
        let ino = match ext.resolve(&e.path) {
            Ok(i) => i,
            Err(_) => {
                v.findings.push(finding("missing".into()));
                continue;
            }
        };
        match &e.node {
            Node::Dir => {}
            Node::Symlink { target } => match ext.symlink_target(ino) {
                Ok(t) if t == target.as_bytes() => {}
                Ok(t) => v.findings.push(Finding {
                    expected: Some(target.clone()),
                    found: Some(String::from_utf8_lossy(&t).into_owned()),
                    ..finding("symlink target differs".into())
                }),
                Err(err) => v.findings.push(finding(format!("symlink: {err}"))),
            },
            Node::File { source, size } => {
                let mut cmp = match Compare::new(source) {
                    Ok(c) => c,
                    Err(m) => {
                        v.findings.push(finding(m));
                        continue;
                    }
                };
                let read = ext.inode(ino).and_then(|inode| {
                    let extents = ext.extents(ino, &inode)?;
                    let mut buf = vec![0u8; 1 << 20];
                    let mut off = 0;
                    loop {
                        let n = ext.read_file_at(&inode, &extents, off, &mut buf)?;
                        if n == 0 {
                            break;
                        }
                        cmp.feed(&buf[..n]);
                        off += n as u64;
                    }
                    Ok(())
                });
                if let Err(err) = read {
                    v.findings.push(finding(format!("ext4: {err}")));
                    continue;
                }
                v.bytes_checked += size;
                if let Some((at, w, g)) = cmp.finish() {
                    v.findings.push(Finding {
                        offset: Some(at),
                        expected: Some(w),
                        found: Some(g),
                        ..finding(format!("content differs from byte {}", bytes(at)))
                    });
                }
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
