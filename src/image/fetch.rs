//! An image given as a URL, made ready to write like a local one: its manifest (and
//! signature) and bmap fetched from beside it, its size known, its checks decided, its
//! download started and answered — all before any device is opened — or a cached copy
//! found.
//!
//! Not for HTTP itself (`remote`) or for signatures (`sign`, `trust`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::bmap::{self, Bmap};
use super::codec::Codec;
use super::manifest::Manifest;
use super::read::ImageSource;
use super::remote::{Cache, Client, Download, Options, beside};
use super::sign::{self, PublicKey};
use super::trust::{self, Checked};
use crate::error::{Error, Result};

/// A download in progress, shared between the writer that reads it and the caller that
/// reports it and keeps it in the cache.
pub struct Fetched {
    pub url: String,
    download: Mutex<Option<Download>>,
    pub received: Arc<Mutex<super::remote::Received>>,
    validators: super::remote::Validators,
    cache: Option<Cache>,
    /// The file hash the manifest names, which a cached copy must have.
    expect_sha256: Option<String>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched").field("url", &self.url).finish()
    }
}

impl Fetched {
    /// The body, once: the one pass that writes the devices takes it.
    pub fn take(&self) -> Option<Download> {
        self.download
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Bytes received so far and the total, when the server said it.
    pub fn progress(&self) -> (u64, Option<u64>) {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        (r.bytes, r.total)
    }

    /// After a complete, checked write: keeps the download in the cache (when asked).
    pub fn keep(&self) -> Result<Option<PathBuf>> {
        match &self.cache {
            Some(c) => c.commit(
                &self.url,
                &self.received,
                &self.validators,
                self.expect_sha256.as_deref(),
            ),
            None => Ok(None),
        }
    }
}

/// Prepares the image at `url`; with trusted keys its manifest must be signed by one.
pub fn open_url(
    url: &str,
    bmap_file: Option<&Path>,
    trusted: &[PublicKey],
    opts: &Options,
) -> Result<ImageSource> {
    let client = Client::new(opts.timeout);
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    let manifest_url = format!("{url}.manifest.json");
    let manifest_text = client.side_file(&manifest_url)?;
    let (manifest, map, checked) = if trusted.is_empty() {
        let manifest = manifest_text
            .map(|t| super::manifest::parse(&t, Path::new(&manifest_url)))
            .transpose()?;
        let (map, checked) = served_bmap(&client, url, &name, bmap_file)?;
        (manifest, map, checked)
    } else {
        let text = manifest_text
            .ok_or_else(|| trust::no_manifest(Path::new(url), Path::new(&manifest_url)))?;
        let sig_url = format!("{manifest_url}.sig");
        let sig = client
            .side_file(&sig_url)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let key = sign::check_named(Path::new(&manifest_url), &text, sig.as_deref(), trusted)?;
        let (m, map, checked) = trust::from_signed(Path::new(&manifest_url), &text, key)?;
        (Some(m), Some(map), Some(checked))
    };
    let expect = manifest.as_ref().and_then(|m| m.image.file_sha256.clone());
    let cache = opts.cache.as_deref().map(Cache::open).transpose()?;
    if let Some(c) = &cache
        && let Some(local) = c.lookup(&client, url, expect.as_deref())?
    {
        let size = known_size(url, &name, manifest.as_ref(), map.as_ref(), None)?;
        return Ok(ImageSource {
            path: local,
            bmap: map,
            size,
            checked,
            remote: None,
        });
    }
    let keep = cache.as_ref().map(Cache::partial).transpose()?;
    let download = Download::start(&client, url, keep)?;
    let length = download.validators().length;
    let size = known_size(url, &name, manifest.as_ref(), map.as_ref(), length)?;
    Ok(ImageSource {
        path: PathBuf::from(url),
        bmap: map,
        size,
        checked,
        remote: Some(Arc::new(Fetched {
            url: url.to_string(),
            received: download.received(),
            validators: download.validators().clone(),
            download: Mutex::new(Some(download)),
            cache,
            expect_sha256: expect,
        })),
    })
}

/// The bmap given as a file, else the one served beside the image (with its checksums
/// checked as the image streams).
fn served_bmap(
    client: &Client,
    url: &str,
    name: &str,
    given: Option<&Path>,
) -> Result<(Option<Bmap>, Option<Checked>)> {
    let (text, origin) = match given {
        Some(p) => (crate::io::read_small_text(p, "bmap file")?, p.to_path_buf()),
        None => {
            let bmap_name = bmap::bmap_path(Path::new(name));
            let bmap_url = beside(url, &bmap_name.display().to_string());
            match client.side_file(&bmap_url)? {
                Some(b) => (String::from_utf8_lossy(&b).into_owned(), bmap_url.into()),
                None => return Ok((None, None)),
            }
        }
    };
    let map = bmap::parse(&text, &origin)?;
    let checked = trust::from_bmap(&map, bmap::range_sums_of(&text, &origin)?);
    Ok((Some(map), checked))
}

/// The image's uncompressed size before it is read: the manifest's or the bmap's, or for a
/// raw image the length the server gives.
fn known_size(
    url: &str,
    name: &str,
    manifest: Option<&Manifest>,
    map: Option<&Bmap>,
    length: Option<u64>,
) -> Result<u64> {
    let raw = Codec::from_name(name).is_none();
    manifest
        .map(|m| m.image.size)
        .or(map.map(|b| b.size))
        .or(length.filter(|_| raw))
        .ok_or_else(|| Error::BadArtifact {
            path: PathBuf::from(url),
            message: "its uncompressed size is unknown: serve its bmap or manifest beside it \
                      (as `build --bmap` writes them)"
                .into(),
        })
}
