//! What a correct card holds, as one model `verify`'s meaning mode compares a card with:
//! the table's kind and identifiers, each partition's type, name, flag, filesystem, label
//! and files (by content: a source to read, or a size and SHA-256), and the bootloader
//! blobs. Made from a plan (a board and its images directory), from a manifest, or from a
//! release image read without either.
//!
//! Not for comparing (`ops::verify`) or for where partitions lie on a card: the card's own
//! table decides that; the places here are the reference's, used only when the card has no
//! entry for a partition.

use crate::define::board::FsKind;
use crate::error::Result;
use crate::format::probe::probe;
use crate::format::table::SECTOR;
use crate::format::table::read::Scheme;
use crate::image::manifest::Manifest;
use crate::image::release::{Release, Wanted};
use crate::plan::tree::{Node, Source, Tree};
use crate::plan::{DiskId, Plan, Table};

/// The expected card.
#[derive(Debug)]
pub struct Expected {
    pub table: Table,
    pub partitions: Vec<Part>,
    pub raw: Vec<Raw>,
}

/// One expected partition.
#[derive(Debug, Clone)]
pub struct Part {
    /// How findings name it ("boot"; the GPT name or number for an image without manifest).
    pub id: String,
    pub start: u64,
    pub size: u64,
    /// The GPT type GUID, else the MBR type, as text.
    pub kind: Option<String>,
    /// Unknown for manifests written before it was recorded: then not compared.
    pub bootable: Option<bool>,
    pub name: Option<String>,
    /// Compared on GPT disks.
    pub partuuid: Option<String>,
    /// Grows to the card: holds the user's data.
    pub grows: bool,
    pub fs: Option<Fs>,
    /// A prebuilt partition image: pieces of it, each at its offset from the partition's
    /// start (the whole file; or, read out of a release image, only its non-zero runs: a
    /// card flashed over a block map holds whatever it held in the others).
    pub image: Vec<(u64, Want)>,
}

/// An expected filesystem.
#[derive(Debug, Clone)]
pub struct Fs {
    /// "fat32", "fat16", "fat12", "ext4".
    pub kind: String,
    pub label: Option<String>,
    pub files: Vec<File>,
}

/// An expected file, directory or symlink.
#[derive(Debug, Clone)]
pub struct File {
    pub path: String,
    pub want: Want,
}

/// What an entry must hold.
#[derive(Debug, Clone)]
pub enum Want {
    /// These bytes (read when compared).
    Source {
        source: Source,
        size: u64,
    },
    /// Bytes with this size and SHA-256.
    Hash {
        size: u64,
        sha256: String,
    },
    Symlink(String),
    Dir,
}

/// Bytes expected at a disk offset outside the partitions.
#[derive(Debug, Clone)]
pub struct Raw {
    pub name: String,
    pub offset: u64,
    pub length: u64,
    pub want: RawWant,
}

#[derive(Debug, Clone)]
pub enum RawWant {
    /// `length` bytes of a file from `skip`.
    File {
        path: std::path::PathBuf,
        skip: u64,
    },
    Sha256(String),
    Source(Source),
}

fn type_text(gpt: Option<String>, mbr: Option<String>) -> Option<String> {
    gpt.or(mbr)
}

/// Every entry of a tree but its root, each holding what the tree says.
fn files_of(tree: &Tree) -> Vec<File> {
    tree.iter()
        .skip(1)
        .map(|e| File {
            path: e.path.clone(),
            want: match &e.node {
                Node::Dir => Want::Dir,
                Node::Symlink { target } => Want::Symlink(target.clone()),
                Node::File { source, size } => Want::Source {
                    source: source.clone(),
                    size: *size,
                },
            },
        })
        .collect()
}

/// The name reports give a filesystem kind.
pub fn kind_name(kind: FsKind) -> String {
    format!("{kind:?}").to_lowercase()
}

impl Expected {
    /// What a plan writes.
    pub fn from_plan(plan: &Plan) -> Expected {
        let partitions = plan
            .partitions
            .iter()
            .map(|p| Part {
                id: p.id.clone(),
                start: p.start,
                size: p.size,
                kind: type_text(p.gpt_type.map(|g| g.to_string()), p.mbr_type.clone()),
                bootable: Some(p.bootable),
                name: p.name.clone(),
                partuuid: p.gpt_type.map(|_| p.partuuid.clone()),
                grows: p.grows,
                fs: p.fs.as_ref().map(|fs| Fs {
                    kind: kind_name(fs.kind),
                    label: fs.label.clone(),
                    files: files_of(&fs.entries),
                }),
                image: p
                    .image
                    .iter()
                    .map(|i| {
                        let source = Source::Path(i.source.clone());
                        (
                            0,
                            Want::Source {
                                source,
                                size: i.size,
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        let raw = plan
            .raw
            .iter()
            .map(|r| Raw {
                name: r.name.clone(),
                offset: r.offset,
                length: r.length,
                want: RawWant::File {
                    path: r.source.clone(),
                    skip: r.skip,
                },
            })
            .collect();
        Expected {
            table: plan.table.clone(),
            partitions,
            raw,
        }
    }

    /// What a manifest records: files by size and SHA-256. Directories and symlinks are
    /// not recorded there, so not compared.
    pub fn from_manifest(m: &Manifest) -> Expected {
        let gpt = matches!(m.table, Table::Gpt { .. });
        let partitions = m
            .partitions
            .iter()
            .map(|p| Part {
                id: p.id.clone(),
                start: p.start,
                size: p.size,
                kind: (!p.kind.is_empty()).then(|| p.kind.clone()),
                bootable: p.bootable,
                name: p.name.clone(),
                partuuid: gpt.then(|| p.partuuid.clone()),
                grows: p.grows,
                fs: p.fs.as_ref().map(|kind| Fs {
                    kind: kind.clone(),
                    label: p.label.clone(),
                    files: p
                        .files
                        .iter()
                        .map(|f| File {
                            path: f.path.clone(),
                            want: Want::Hash {
                                size: f.size,
                                sha256: f.sha256.clone(),
                            },
                        })
                        .collect(),
                }),
                image: Vec::new(),
            })
            .collect();
        let raw = m
            .raw
            .iter()
            .map(|r| Raw {
                name: r.name.clone(),
                offset: r.offset,
                length: r.length,
                want: RawWant::Sha256(r.sha256.clone()),
            })
            .collect();
        Expected {
            table: m.table.clone(),
            partitions,
            raw,
        }
    }

    /// What a release image holds, read out of it: its table, each partition's filesystem
    /// and files (compared byte for byte with the decoded image), and the non-zero blocks
    /// between the table and the first partition (bootloaders). The last partition is taken
    /// to be the one that grows to the card.
    pub fn from_release(r: &Release) -> Result<Expected> {
        let entries = &r.table.entries;
        let last = entries.iter().map(|e| e.start).max();
        let gpt = matches!(r.table.scheme, Scheme::Gpt(_));
        let mut partitions = Vec::new();
        for e in entries {
            let found = probe(&*r.spool, e.start, e.size);
            let fs = if found.kind.is_fat() || found.kind.as_str() == "ext4" {
                let tree = r.tree(e)?;
                Some(Fs {
                    kind: found.kind.as_str().to_string(),
                    label: found.label.as_deref().map(|l| l.trim().to_string()),
                    files: files_of(&tree),
                })
            } else {
                None
            };
            // A partition without a filesystem (a squashfs, a prebuilt image) is compared
            // by the non-zero runs the image holds for it.
            let image = if fs.is_none() {
                mapped_in(r, e.start, e.start.saturating_add(e.size))
            } else {
                Vec::new()
            };
            partitions.push(Part {
                id: if e.name.is_empty() {
                    e.number.to_string()
                } else {
                    e.name.clone()
                },
                start: e.start,
                size: e.size,
                kind: type_text(
                    e.gpt_type.map(|g| g.to_string()),
                    e.mbr_type.map(|b| format!("0x{b:02x}")),
                ),
                bootable: Some(e.bootable),
                name: gpt.then(|| e.name.clone()),
                partuuid: gpt.then(|| e.guid.to_string().to_lowercase()),
                grows: Some(e.start) == last,
                fs,
                image,
            });
        }
        Ok(Expected {
            table: release_table(r),
            raw: release_raw(r),
            partitions,
        })
    }

    /// A release image's model: from its manifest when one lies beside it (the image is
    /// then not decoded), else read out of the image.
    /// With trusted keys, the manifest must be signed by one of them.
    pub fn of_image(
        path: &std::path::Path,
        trusted: &[crate::image::sign::PublicKey],
    ) -> Result<Expected> {
        if !trusted.is_empty() {
            let (m, _) = Release::trusted_manifest(path, trusted)?;
            return Ok(Expected::from_manifest(&m));
        }
        if let Some(m) = Release::manifest_of(path)? {
            return Ok(Expected::from_manifest(&m));
        }
        Expected::from_release(&Release::open(path, &Wanted::All, &[])?)
    }
}

/// The non-zero runs of the decoded image within `[start, end)`, each as bytes at its
/// offset from `start`.
fn mapped_in(r: &Release, start: u64, end: u64) -> Vec<(u64, Want)> {
    r.mapped
        .iter()
        .filter_map(|m| {
            let (s, e) = (m.start.max(start), m.end().min(end));
            (s < e).then(|| {
                let want = Want::Source {
                    source: r.bytes_at(s, e - s),
                    size: e - s,
                };
                (s - start, want)
            })
        })
        .collect()
}

/// The image's table kind and identifiers.
fn release_table(r: &Release) -> Table {
    match &r.table.scheme {
        Scheme::Gpt(h) => Table::Gpt {
            disk_guid: h.disk_guid,
            array_lba: h.array_lba,
            first_lba: None,
            no_backup: crate::format::table::read::DiskTable::gpt_at(&*r.spool, h.alternate_lba)
                .is_err(),
            hybrid: false,
            mbr_id: None,
        },
        Scheme::Mbr { disk_id } => Table::Mbr {
            disk_id: DiskId(*disk_id),
        },
    }
}

/// The non-zero ranges between the table and the first partition (bootloaders).
pub fn release_raw(r: &Release) -> Vec<Raw> {
    let after_table = match &r.table.scheme {
        Scheme::Gpt(h) => h
            .array_lba
            .saturating_mul(SECTOR)
            .saturating_add(h.array_bytes() as u64)
            .checked_next_multiple_of(SECTOR)
            .unwrap_or(u64::MAX),
        Scheme::Mbr { .. } => SECTOR,
    };
    let first = r.table.entries.iter().map(|e| e.start).min().unwrap_or(0);
    mapped_in(r, after_table, first)
        .into_iter()
        .filter_map(|(at, want)| {
            let Want::Source { source, size } = want else {
                return None;
            };
            let offset = after_table + at;
            Some(Raw {
                name: format!("bytes {offset}..{}", offset + size),
                offset,
                length: size,
                want: RawWant::Source(source),
            })
        })
        .collect()
}
