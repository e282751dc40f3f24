//! Building an image file from a plan: the image, its manifest, bmap and checksums, written
//! as one set that appears only when complete.

use std::path::Path;

use crate::error::Result;

/// How `build_image` writes its outputs.
#[derive(Clone, Copy)]
pub struct BuildOptions<'a> {
    pub format: crate::image::file::Format,
    /// Also write the bmap file.
    pub bmap: bool,
    /// Also hash every output into SHA256SUMS (and the whole image).
    pub checksums: bool,
    /// Sign the manifest with this key (`MANIFEST.sig` beside it).
    pub sign: Option<&'a crate::image::sign::SecretKey>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub manifest: crate::compose::Composed,
    pub written: crate::image::file::Written,
    /// Files written beside the image (bmap, SHA256SUMS).
    pub extra: Vec<std::path::PathBuf>,
}

/// The files a build of `output` writes, in commit order: the manifest, its signature
/// (when signing), the bmap (when asked for), SHA256SUMS (when asked for), the image.
pub fn build_outputs(output: &Path, opts: BuildOptions) -> Vec<(std::path::PathBuf, &'static str)> {
    let manifest = crate::image::manifest::path_for(output);
    let mut v = vec![(manifest.clone(), "manifest")];
    if opts.sign.is_some() {
        v.push((crate::image::sign::sig_path(&manifest), "signature"));
    }
    if opts.bmap {
        v.push((crate::image::bmap::bmap_path(output), "bmap"));
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
    plan: &crate::plan::Plan,
    output: &Path,
    opts: BuildOptions,
    progress: crate::progress::Callback<'_>,
) -> Result<BuildReport> {
    // The large input files start hashing now, beside the checks and the staging below.
    let ahead = crate::compose::hash_ahead(plan);
    let inputs = crate::image::output::Inputs::of_plan(plan);
    // The image first: its refusal is the one to report.
    for (path, what) in build_outputs(output, opts).iter().rev() {
        crate::image::output::check_output(path, what, &inputs)?;
    }
    let old_sums = if opts.checksums {
        crate::image::sums::read_sha256sums(&sums_path(output))?
    } else {
        None
    };
    // Each mapped range is hashed whole only for a bmap: the one written now, or one beside
    // the output that may still describe the new image (and is kept if it does).
    let bmap_path = crate::image::bmap::bmap_path(output);
    let hashes = crate::sink::stream::Hashes {
        ranges: opts.bmap || bmap_path.exists(),
        whole: opts.checksums,
    };
    let (manifest, written, image) =
        crate::image::file::write_file(output, plan.disk_size, opts.format, hashes, |sink| {
            crate::compose::write(plan, sink, progress, ahead)
        })?;
    let mut set = crate::image::output::Set::new();
    let mut stale = Vec::new();
    let mut extra = Vec::new();
    let mut sums = Vec::new();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let record = crate::image::manifest::make(plan, &plan.images, output, &written, &manifest)?;
    let mpath = crate::image::manifest::path_for(output);
    let text = serde_json::to_string_pretty(&record).unwrap_or_default() + "\n";
    set.push(crate::image::file::stage(&mpath, text.as_bytes())?);
    sums.push((name(&mpath), crate::io::sha256(text.as_bytes())));
    if let Some(key) = opts.sign {
        let sig = key.sign(text.as_bytes(), &name(&mpath), plan.epoch);
        let spath = crate::image::sign::sig_path(&mpath);
        set.push(crate::image::file::stage(&spath, sig.as_bytes())?);
        sums.push((name(&spath), crate::io::sha256(sig.as_bytes())));
        extra.push(spath);
    } else {
        // A signature beside the manifest that no longer signs it would only mislead.
        stale.push(crate::image::sign::sig_path(&mpath));
    }
    extra.push(mpath);
    if opts.bmap {
        let text = crate::image::bmap::render(&written.stream);
        set.push(crate::image::file::stage(&bmap_path, text.as_bytes())?);
        sums.push((name(&bmap_path), crate::io::sha256(text.as_bytes())));
        extra.push(bmap_path);
    } else if crate::io::read_small(&bmap_path, "bmap file").ok()
        != Some(crate::image::bmap::render(&written.stream).into_bytes())
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
        let text =
            crate::image::sums::merge_sha256sums(old_sums.as_deref().unwrap_or_default(), &sums);
        set.push(crate::image::file::stage(&path, &text)?);
        extra.push(path);
    }
    set.push(image);
    set.commit(&stale, &inputs)?;
    crate::image::output::finished();
    Ok(BuildReport {
        manifest,
        written,
        extra,
    })
}
