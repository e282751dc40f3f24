//! The new build an upgrade installs, read out of a release image instead of made from an
//! images directory: the image is decoded once into a spool (`image::release`, only what
//! lies before the first partition and the partitions with a filesystem), its table must
//! hold the board's layout (as a card's must), each filesystem's tree is read from the
//! spool, and every identifier the image's files name (PARTUUIDs, filesystem UUIDs, in
//! configs and boot scripts) is rewritten to the card's, as a build made with the card's
//! identifiers would have them.
//!
//! Not for deciding what changes on the card (`boot`, `rootfs`) or for the bootloader
//! comparison (`ops::verify`).

use std::io::Read;
use std::path::Path;

use crate::define::board::{Board, FsKind, SizeSpec};
use crate::error::{Error, Result};
use crate::format::bootcfg::uimage;
use crate::format::probe::{Kind, probe};
use crate::image::release::{Release, Wanted};
use crate::ops::expect::{self, Expected};
use crate::plan::tree::{Node, Source, Tree};
use crate::plan::{self, Filesystem, Ids, Partition, Plan, Prebuilt, fs_uuid_string};

use super::card::{self, Card};

/// Files larger than this hold no identifiers worth rewriting (kernels, device trees,
/// squashfs images): configs and scripts are a few KiB.
const MAX_CONFIG: u64 = 1 << 20;

/// The build read out of a release image.
pub struct FromRelease {
    pub plan: Plan,
    /// The bootloader bytes the image carries, for the notes on the card's.
    pub raw: Vec<expect::Raw>,
}

/// Reads the new build for `board` out of the release image at `path`, for a card with
/// `card`'s identifiers. `epoch` stamps the new files when the image has no manifest.
pub fn read(
    board: &Board,
    path: &Path,
    card: &Card,
    epoch: i64,
    trusted: &[crate::image::sign::PublicKey],
) -> Result<FromRelease> {
    let manifest = if trusted.is_empty() {
        Release::manifest_of(path)?
    } else {
        Some(Release::trusted_manifest(path, trusted)?.0)
    };
    if let Some(m) = &manifest
        && m.board != board.name
    {
        return Err(Error::BadArtifact {
            path: path.to_path_buf(),
            message: format!(
                "a build of board {} (its manifest says), not of {}",
                m.board, board.name
            ),
        });
    }
    let layout = &board.layout;
    let wanted: Vec<usize> = (0..layout.partitions.len())
        .filter(|&i| layout.partitions[i].fs.is_some())
        .collect();
    let release = Release::open(path, &Wanted::Only(wanted), trusted)?;
    let image = card::read_release(&*release.spool, board, path)?;
    let swaps = swaps(board, &image.ids, &card.ids);
    let mut partitions = Vec::new();
    for (i, (p, e)) in layout
        .partitions
        .iter()
        .zip(&release.table.entries)
        .enumerate()
    {
        let fs = match p.fs {
            Some(kind) => {
                let mut tree = release.tree(e)?;
                rewrite_ids(&mut tree, &swaps)?;
                let kind = found_kind(kind, &release, e);
                let uuid = card.ids.fs_uuid[i];
                Some(Filesystem {
                    kind,
                    fat: p.fat.unwrap_or_default(),
                    label: p.label.clone(),
                    uuid: fs_uuid_string(kind, &uuid),
                    uuid_bytes: uuid,
                    size: e.size,
                    min_size: 0,
                    content_bytes: tree.file_bytes(),
                    entries: tree,
                })
            }
            None => None,
        };
        partitions.push(Partition {
            number: e.number,
            id: p.id.clone(),
            start: e.start,
            size: e.size,
            name: p.gpt_name.clone(),
            gpt_type: e.gpt_type,
            mbr_type: e.mbr_type.map(|b| format!("0x{b:02x}")),
            partuuid: card.ids.partuuid[i].clone(),
            bootable: p.bootable,
            grows: p.size == SizeSpec::Fill,
            fs,
            // Only flash writes prebuilt partitions: what it would write is not needed.
            image: p.image.as_ref().map(|_| Prebuilt {
                source: path.to_path_buf(),
                size: 0,
            }),
            ebr: None,
        });
    }
    let raw = match &manifest {
        Some(m) => Expected::from_manifest(m).raw,
        None => expect::release_raw(&release),
    };
    let plan = Plan {
        board: board.name.clone(),
        layout: layout.name.clone(),
        epoch: manifest.as_ref().map_or(epoch, |m| m.epoch),
        disk_size: release.size,
        sector_size: crate::format::table::SECTOR,
        table: card.ids.table.clone(),
        partitions,
        images: path.to_path_buf(),
        raw: Vec::new(),
        warnings: Vec::new(),
        custom: None,
    };
    // The trees' files hold the spool open; the rest of the decoded image goes with this.
    Ok(FromRelease { plan, raw })
}

/// The filesystem kind the image holds (a layout's `fat` is FAT12, 16 or 32 by size).
fn found_kind(kind: FsKind, release: &Release, e: &crate::format::table::TableEntry) -> FsKind {
    match probe(&*release.spool, e.start, e.size).kind {
        Kind::Fat32 if kind == FsKind::Fat => FsKind::Fat32,
        Kind::Fat16 if kind == FsKind::Fat => FsKind::Fat16,
        Kind::Fat12 if kind == FsKind::Fat => FsKind::Fat12,
        _ => kind,
    }
}

/// Identifier text the image's files may hold, and what the card's is: each partition's
/// PARTUUID and filesystem UUID as configs name them, where the two differ.
fn swaps(board: &Board, image: &Ids, card: &Ids) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, p) in board.layout.partitions.iter().enumerate() {
        out.push((image.partuuid[i].clone(), card.partuuid[i].clone()));
        if let Some(kind) = p.fs {
            out.push((
                fs_uuid_string(kind, &image.fs_uuid[i]),
                fs_uuid_string(kind, &card.fs_uuid[i]),
            ));
        }
    }
    if let (plan::Table::Gpt { disk_guid: a, .. }, plan::Table::Gpt { disk_guid: b, .. }) =
        (&image.table, &card.table)
    {
        out.push((a.to_string().to_lowercase(), b.to_string().to_lowercase()));
    }
    out.retain(|(a, b)| a != b && !a.is_empty());
    out
}

/// Rewrites the identifiers in every small text file and U-Boot script of `tree`.
fn rewrite_ids(tree: &mut Tree, swaps: &[(String, String)]) -> Result<()> {
    if swaps.is_empty() {
        return Ok(());
    }
    for e in tree.iter_mut() {
        let Node::File { source, size } = &mut e.node else {
            continue;
        };
        if *size > MAX_CONFIG {
            continue;
        }
        let mut bytes = Vec::new();
        crate::io::open(source, *size)?
            .read_to_end(&mut bytes)
            .map_err(|err| Error::io(format!("reading {} from the image", e.path), err))?;
        if let Some(new) = rewritten(&bytes, swaps) {
            *size = new.len() as u64;
            *source = Source::generated(new);
        }
    }
    Ok(())
}

/// The content with the identifiers swapped; `None` when it names none of them (or is
/// neither text nor a script image).
fn rewritten(bytes: &[u8], swaps: &[(String, String)]) -> Option<Vec<u8>> {
    let swap = |text: &str| {
        swaps
            .iter()
            .fold(text.to_string(), |t, (a, b)| t.replace(a.as_str(), b))
    };
    let out = if let Ok(text) = std::str::from_utf8(bytes) {
        swap(text).into_bytes()
    } else {
        let mut changed = false;
        let out = uimage::edit_script(bytes, |script| match std::str::from_utf8(script) {
            Ok(t) => {
                let s = swap(t);
                changed = s != t;
                s.into_bytes()
            }
            Err(_) => script.to_vec(),
        })
        .ok()?;
        if !changed {
            return None;
        }
        out
    };
    (out != bytes).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swaps() -> Vec<(String, String)> {
        vec![("aaaa1111-01".into(), "bbbb2222-01".into())]
    }

    #[test]
    fn identifiers_are_swapped_in_text_and_in_script_images() {
        let text = b"root=PARTUUID=aaaa1111-01 rootwait\n";
        assert_eq!(
            rewritten(text, &swaps()).unwrap(),
            b"root=PARTUUID=bbbb2222-01 rootwait\n"
        );
        assert_eq!(rewritten(b"root=/dev/mmcblk0p2\n", &swaps()), None);
        let arm = uimage::Arch::Arm64;
        let scr =
            uimage::script(arm, "boot", b"setenv bootargs root=PARTUUID=aaaa1111-01", 7).unwrap();
        let want =
            uimage::script(arm, "boot", b"setenv bootargs root=PARTUUID=bbbb2222-01", 7).unwrap();
        assert_eq!(rewritten(&scr, &swaps()).unwrap(), want);
        // Binary content that is no script image is left alone.
        assert_eq!(rewritten(&[0xff, 0xfe, 0x00, 0x12], &swaps()), None);
    }
}
