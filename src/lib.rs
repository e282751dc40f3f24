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
pub mod output;
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

/// The files a build of `output` writes, in commit order: the manifest, the bmap (when
/// asked for), SHA256SUMS (when asked for), the image.
pub fn build_outputs(output: &Path, opts: BuildOptions) -> Vec<(std::path::PathBuf, &'static str)> {
    let mut v = vec![(manifest::path_for(output), "manifest")];
    if opts.bmap {
        v.push((release::bmap_path(output), "bmap"));
    }
    if opts.checksums {
        v.push((sums_path(output), "checksum list"));
    }
    v.push((output.to_path_buf(), "image"));
    v
}

fn sums_path(output: &Path) -> std::path::PathBuf {
    output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("SHA256SUMS")
}

/// Writes `plan` to a new image file at `output` (sparse, or compressed by extension) with
/// its manifest and, as asked, bmap and SHA256SUMS. Every path is checked first (an
/// existing output must be a regular file and not one of the plan's inputs); the files
/// appear together only when everything succeeded, and a bmap beside `output` that does
/// not describe the new image is removed when this build writes none.
pub fn build_image(
    plan: &plan::Plan,
    output: &Path,
    opts: BuildOptions,
    progress: compose::Progress<'_>,
) -> Result<BuildReport> {
    let inputs = output::Inputs::of_plan(plan);
    // The image first: its refusal is the one to report.
    for (path, what) in build_outputs(output, opts).iter().rev() {
        output::check_output(path, what, &inputs)?;
    }
    let old_sums = if opts.checksums {
        release::read_sha256sums(&sums_path(output))?
    } else {
        None
    };
    let ranges = manifest::hashed_ranges(plan);
    let (manifest, written, image) = target::image::write_file(
        output,
        plan.disk_size,
        opts.format,
        opts.checksums,
        &ranges,
        |sink| compose::write(plan, sink, progress),
    )?;
    let mut set = output::Set::new();
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
    set.push(release::stage(&mpath, text.as_bytes())?);
    sums.push((name(&mpath), io::sha256(text.as_bytes())));
    extra.push(mpath);
    let bmap_path = release::bmap_path(output);
    let mut stale = Vec::new();
    if opts.bmap {
        let text = release::bmap(&written.stream);
        set.push(release::stage(&bmap_path, text.as_bytes())?);
        sums.push((name(&bmap_path), io::sha256(text.as_bytes())));
        extra.push(bmap_path);
    } else if io::read_small(&bmap_path, "bmap file").ok()
        != Some(release::bmap(&written.stream).into_bytes())
    {
        // A bmap beside the image that does not describe it (an older build's) would be
        // picked up by `flash`; one that does (the same disk built compressed, which shares
        // the name) stays.
        stale.push(bmap_path);
    }
    if opts.checksums {
        if let Some(h) = &written.file_sha256 {
            sums.push((name(output), h.clone()));
        }
        let path = sums_path(output);
        let text = release::merge_sha256sums(old_sums.as_deref().unwrap_or_default(), &sums);
        set.push(release::stage(&path, &text)?);
        extra.push(path);
    }
    set.push(image);
    set.commit(&stale, &inputs)?;
    output::finished();
    Ok(BuildReport {
        manifest,
        written,
        extra,
    })
}
