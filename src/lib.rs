//! skiff-flash: composes board-ready disks (partition table, FAT boot partition, ext4
//! rootfs and persist, raw bootloader blobs) from a Buildroot images directory, natively and
//! without privileges.
//!
//! The pipeline: `board` (definitions) → `plan::make` (every byte range decided, no writes)
//! → `compose::write` onto a `target::Sink` → a `compose::Manifest`. The library never
//! prints and never exits; the binary renders.

pub mod artifacts;
pub mod board;
pub mod bootcfg;
pub mod compose;
pub mod error;
pub mod flash;
pub mod fs;
pub mod genimage;
pub mod inspect;
pub mod io;
pub mod l4t;
pub mod layout;
pub mod manifest;
pub mod plan;
pub mod release;
pub mod signals;
pub mod skiffos;
pub mod table;
pub mod target;
pub mod tree;
pub mod units;
pub mod upgrade;
pub mod verify;

pub use error::{Error, Result};

use std::path::Path;

/// How `build_image` writes its outputs.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub format: target::image::Format,
    /// Also write the bmap file.
    pub bmap: bool,
    /// Also hash every output into SHA256SUMS (and the whole image).
    pub checksums: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub manifest: compose::Manifest,
    pub written: target::image::Written,
    /// Files written beside the image (bmap, SHA256SUMS).
    pub extra: Vec<std::path::PathBuf>,
}

/// Writes `plan` to a new image file at `output` (sparse, or compressed by extension); the
/// file appears only when everything succeeded.
pub fn build_image(
    plan: &plan::Plan,
    output: &Path,
    opts: BuildOptions,
    progress: compose::Progress<'_>,
) -> Result<BuildReport> {
    let ranges = manifest::hashed_ranges(plan);
    let (manifest, written) = target::image::write_file(
        output,
        plan.disk_size,
        opts.format,
        opts.checksums,
        &ranges,
        |sink| compose::write(plan, sink, progress),
    )?;
    let mut extra = Vec::new();
    let mut sums = Vec::new();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let record = manifest::make(plan, &plan.images, output, &written, &manifest);
    let mpath = manifest::path_for(output);
    let text = serde_json::to_string_pretty(&record).unwrap_or_default() + "\n";
    release::write_atomic(&mpath, &text)?;
    sums.push((name(&mpath), io::sha256(text.as_bytes())));
    extra.push(mpath);
    if opts.bmap {
        let path = release::bmap_path(output);
        let text = release::bmap(&written.stream);
        release::write_atomic(&path, &text)?;
        sums.push((name(&path), io::sha256(text.as_bytes())));
        extra.push(path);
    }
    if opts.checksums {
        if let Some(h) = &written.file_sha256 {
            sums.push((name(output), h.clone()));
        }
        let dir = output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        extra.push(release::update_sha256sums(dir, &sums)?);
    }
    Ok(BuildReport {
        manifest,
        written,
        extra,
    })
}
