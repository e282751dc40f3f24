//! Images on http(s) servers, streamed: the files beside the image (manifest, its
//! signature, bmap) are fetched first, the image's response is checked before any device is
//! touched, and its body is read once, resuming with range requests when the connection
//! drops, never stored whole unless a cache is asked for.
//!
//! - A `404` or any other failing status, a refused connection or a server that says
//!   nothing for the timeout is an error naming the URL, the status and the byte offset.
//! - Resuming asks for `bytes=N-` with `If-Range` (the first response's `ETag` or
//!   `Last-Modified`): a server that answers with the whole file again, or with another
//!   range, cannot be resumed and is an error, as the bytes already passed on were written.
//! - The cache (`--cache DIR`) keeps the downloaded file under its SHA-256 once the whole
//!   write succeeded, with an index from URL to hash: the next card from the same URL uses
//!   the local copy when the server's manifest names the same hash, or, without a manifest,
//!   when its `ETag`/`Last-Modified`/length are unchanged (one `HEAD`, no download).
//!
//! Not for decoding or checking the image (`read`, `trust`) or for writing devices.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ureq::Agent;
use ureq::http::Response;

use crate::error::{Error, Result};
use crate::io::hex;
use crate::units::bytes;

/// How long a server may say nothing (connecting, or between reads) before it is given up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts to resume a body that broke off, without progress in between.
const RESUMES: u32 = 5;
/// The largest side file (manifest, signature, bmap) read into memory.
const SIDE_LIMIT: u64 = 64 << 20;

/// Whether an `--image` argument names a URL.
pub fn is_url(arg: &Path) -> bool {
    arg.to_str()
        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    pub cache: Option<PathBuf>,
}

/// A client for one image's server.
#[derive(Clone)]
pub struct Client {
    agent: Agent,
    timeout: Duration,
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        use ureq::tls::{RootCerts, TlsConfig};
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_resolve(Some(timeout))
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .timeout_per_write(Some(timeout))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::PlatformVerifier)
                    .build(),
            )
            .user_agent(concat!("skiff-flash/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { agent, timeout }
    }

    /// A file beside the image (manifest, signature, bmap): `None` when the server has none
    /// (404), an error for any other failure.
    pub fn side_file(&self, url: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.call(url, None)?;
        match resp.status().as_u16() {
            404 | 410 => Ok(None),
            200 => {
                let mut out = Vec::new();
                resp.into_body()
                    .into_reader()
                    .take(SIDE_LIMIT + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| net(url, 0, e))?;
                if out.len() as u64 > SIDE_LIMIT {
                    return Err(bad(url, format!("larger than {}", bytes(SIDE_LIMIT))));
                }
                Ok(Some(out))
            }
            s => Err(status(url, s)),
        }
    }

    /// `HEAD` of `url`: its validators, for the cache.
    fn head(&self, url: &str) -> Result<Validators> {
        let resp = self
            .agent
            .head(url)
            .call()
            .map_err(|e| failed(url, self.timeout, e))?;
        match resp.status().as_u16() {
            200 => Ok(Validators::of(&resp)),
            s => Err(status(url, s)),
        }
    }

    /// `GET url`, from byte `from` when not 0 (with `If-Range: validator`).
    fn call(&self, url: &str, from: Option<(u64, Option<&str>)>) -> Result<Response<ureq::Body>> {
        let mut req = self.agent.get(url);
        if let Some((at, validator)) = from {
            req = req.header("Range", format!("bytes={at}-"));
            if let Some(v) = validator {
                req = req.header("If-Range", v);
            }
        }
        req.call().map_err(|e| failed(url, self.timeout, e))
    }
}

/// What identifies one version of a file on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub length: Option<u64>,
}

impl Validators {
    fn of(resp: &Response<ureq::Body>) -> Validators {
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Validators {
            etag: h("etag").filter(|e| !e.starts_with("W/")),
            last_modified: h("last-modified"),
            length: h("content-length").and_then(|l| l.parse().ok()),
        }
    }

    /// The `If-Range` value: a strong ETag, else the date.
    fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }
}

/// The image's body as a reader: resumes where it broke off, hashes and (with a cache)
/// keeps what passes.
pub struct Download {
    client: Client,
    url: String,
    body: Option<ureq::BodyReader<'static>>,
    validators: Validators,
    failures: u32,
    state: Arc<Mutex<Received>>,
}

/// What has come in so far, shared with the caller (progress, the cache).
#[derive(Debug)]
pub struct Received {
    pub bytes: u64,
    pub total: Option<u64>,
    hasher: Sha256,
    keep: Option<(File, PathBuf)>,
}

impl Download {
    /// Starts the download: the response must be a success, checked before anything is
    /// written anywhere. `keep`: a file to copy the bytes into (the cache's partial file).
    pub fn start(client: &Client, url: &str, keep: Option<(File, PathBuf)>) -> Result<Download> {
        let resp = client.call(url, None)?;
        let s = resp.status().as_u16();
        if s != 200 {
            return Err(status(url, s));
        }
        let validators = Validators::of(&resp);
        let state = Received {
            bytes: 0,
            total: validators.length,
            hasher: Sha256::new(),
            keep,
        };
        Ok(Download {
            client: client.clone(),
            url: url.to_string(),
            body: Some(resp.into_body().into_reader()),
            validators,
            failures: 0,
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub fn received(&self) -> Arc<Mutex<Received>> {
        self.state.clone()
    }

    pub fn validators(&self) -> &Validators {
        &self.validators
    }

    fn at(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// Asks for the rest from where the body broke off.
    fn resume(&mut self, why: &str) -> std::io::Result<()> {
        self.body = None;
        self.failures += 1;
        let at = self.at();
        if self.failures > RESUMES {
            return Err(std::io::Error::other(format!(
                "{}: {why} at byte {} (gave up after {RESUMES} attempts to resume)",
                self.url,
                bytes(at)
            )));
        }
        std::thread::sleep(Duration::from_millis(200 << self.failures.min(4)));
        let resp = match self
            .client
            .call(&self.url, Some((at, self.validators.if_range())))
        {
            Ok(r) => r,
            // The next attempt may reach it: count this one and go on.
            Err(_) => return Ok(()),
        };
        let s = resp.status().as_u16();
        let range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if s != 206 || !range.starts_with(&format!("bytes {at}-")) {
            return Err(std::io::Error::other(format!(
                "{}: cannot resume at byte {} (HTTP {s}{}): the server does not serve \
                 ranges of this file, or it changed",
                self.url,
                bytes(at),
                if range.is_empty() {
                    String::new()
                } else {
                    format!(", {range}")
                }
            )));
        }
        self.body = Some(resp.into_body().into_reader());
        Ok(())
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(body) = self.body.as_mut() else {
                self.resume("the connection broke")?;
                continue;
            };
            match body.read(buf) {
                Ok(0) => {
                    let st = lock(&self.state);
                    if st.total.is_none_or(|t| st.bytes >= t) {
                        return Ok(0);
                    }
                    drop(st);
                    self.resume("the connection closed early")?;
                }
                Ok(n) => {
                    self.failures = 0;
                    let mut st = lock(&self.state);
                    st.bytes += n as u64;
                    st.hasher.update(&buf[..n]);
                    if let Some((f, _)) = &mut st.keep {
                        f.write_all(&buf[..n])?;
                    }
                    return Ok(n);
                }
                Err(e) => self.resume(&e.to_string())?,
            }
        }
    }
}

fn lock(m: &Mutex<Received>) -> std::sync::MutexGuard<'_, Received> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cache directory: `<sha256>-<name>` files and `index.json` (URL → file).
pub struct Cache {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    entries: std::collections::BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    sha256: String,
    file: String,
    validators: Validators,
}

impl Cache {
    pub fn open(dir: &Path) -> Result<Cache> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating the cache {}", dir.display()), e))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    fn index(&self) -> Index {
        std::fs::read(self.dir.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The cached copy of `url`, when it is still what the server holds: the manifest's
    /// file hash names it, or (without one) the server's validators are unchanged.
    pub fn lookup(
        &self,
        client: &Client,
        url: &str,
        manifest_sha256: Option<&str>,
    ) -> Result<Option<PathBuf>> {
        let Some(e) = self.index().entries.get(url).cloned() else {
            return Ok(None);
        };
        let path = self.dir.join(&e.file);
        let fresh = match manifest_sha256 {
            Some(h) => h == e.sha256,
            None => {
                let v = client.head(url)?;
                v != Validators::default() && v == e.validators
            }
        };
        let intact = std::fs::metadata(&path)
            .is_ok_and(|m| Some(m.len()) == e.validators.length || e.validators.length.is_none());
        Ok((fresh && intact).then_some(path))
    }

    /// A new partial file for a download.
    pub fn partial(&self) -> Result<(File, PathBuf)> {
        let path = self.dir.join(format!(".partial-{}", std::process::id()));
        let f = File::create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok((f, path))
    }

    /// Keeps a complete download under its hash; `expect`: the hash the (signed or plain)
    /// manifest names, which it must have.
    pub fn commit(
        &self,
        url: &str,
        received: &Mutex<Received>,
        validators: &Validators,
        expect: Option<&str>,
    ) -> Result<Option<PathBuf>> {
        let mut st = lock(received);
        let Some((f, partial)) = st.keep.take() else {
            return Ok(None);
        };
        drop(f);
        let complete = st.total.is_none_or(|t| st.bytes == t);
        let sha = hex(&std::mem::take(&mut st.hasher).finalize());
        if !complete || expect.is_some_and(|h| h != sha) {
            let _ = std::fs::remove_file(&partial);
            return Ok(None);
        }
        let name = url.rsplit('/').next().unwrap_or("image");
        let file = format!("{sha}-{name}");
        let dest = self.dir.join(&file);
        let io = |e| Error::io(format!("keeping {} in the cache", url), e);
        std::fs::rename(&partial, &dest).map_err(io)?;
        let mut index = self.index();
        let mut validators = validators.clone();
        validators.length = Some(st.bytes);
        index.entries.insert(
            url.to_string(),
            Entry {
                sha256: sha,
                file,
                validators,
            },
        );
        let tmp = self.dir.join(format!(".index-{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&index).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("index.json")))
            .map_err(io)?;
        Ok(Some(dest))
    }
}

/// `url`'s sibling named `name` (the manifest or bmap beside an image).
pub fn beside(url: &str, name: &str) -> String {
    match url.rfind('/') {
        Some(i) => format!("{}{name}", &url[..=i]),
        None => name.to_string(),
    }
}

fn bad(url: &str, message: String) -> Error {
    Error::BadArtifact {
        path: PathBuf::from(url),
        message,
    }
}

fn status(url: &str, s: u16) -> Error {
    let what = match s {
        404 | 410 => "not found",
        401 | 403 => "access refused",
        500..=599 => "server error",
        _ => "unexpected answer",
    };
    bad(url, format!("HTTP {s} ({what})"))
}

fn net(url: &str, at: u64, e: std::io::Error) -> Error {
    Error::io(format!("{url} at byte {}", bytes(at)), e)
}

fn failed(url: &str, timeout: Duration, e: ureq::Error) -> Error {
    let msg = match &e {
        ureq::Error::Timeout(_) => format!(
            "no answer within {} s (server stalled or unreachable)",
            timeout.as_secs()
        ),
        ureq::Error::ConnectionFailed => "connection refused or failed".into(),
        other => other.to_string(),
    };
    Error::io(url.to_string(), std::io::Error::other(msg))
}
