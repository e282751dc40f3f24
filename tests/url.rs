//! Flashing straight from a URL, against a local HTTP server the tests start on 127.0.0.1
//! (`tests/http/serve.py`, which logs every request): signed images checked as they
//! stream, a connection dropped halfway resumed with a range request, a cache that saves the
//! second download, and 404 / refused / stalled servers refused with one line and nothing
//! written.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The test server over `dir`; killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Server {
    fn start(dir: &Path) -> Option<Server> {
        if !need("python3", "python3") {
            return None;
        }
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http/serve.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir)
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        Some(Server {
            child,
            port,
            log,
            _logdir: logdir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Logged requests for `path` (exactly), as `METHOD RANGE`.
    fn requests(&self, path: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                let (m, p, r) = (f.next()?, f.next()?, f.next().unwrap_or(""));
                (p == format!("/{path}")).then(|| format!("{m} {r}").trim().to_string())
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A served directory with a signed pi/4 release `pi4.img.zst` (bmap, manifest,
/// signature), a raw `pi4.img` likewise, and the public key's path.
fn release() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ok(&sf(&["keygen", s(&key)]).output());
    for name in ["pi4.img.zst", "pi4.img"] {
        build_pi4(
            &fixtures(),
            &dir.path().join(name),
            &["--sign", s(&key), "--bmap"],
        );
    }
    std::fs::remove_file(&key).unwrap();
    let public = dir.path().join("k.pub");
    (dir, public)
}

fn flash_url(dev: &str, url: &str, extra: &[&str]) -> std::process::Output {
    let args = ["flash", dev, "--image", url, "--yes"];
    sf(&[&args[..], extra].concat())
        .env_remove("SKIFF_FLASH_TRUSTED_KEYS")
        .limit(300)
        .output()
}

/// The card matches the local release, byte for byte over its mapped ranges.
fn card_holds(card: &Card, img: &Path) {
    ok(&sf(&["verify", &card.dev, "--image", s(img)]).output());
}

#[test]
fn a_signed_image_streams_from_a_url_and_verifies() {
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let (dir, public) = release();
    let Some(server) = Server::start(dir.path()) else {
        return;
    };
    let out = flash_url(
        &card.dev,
        &server.url("pi4.img.zst"),
        &["--trusted-key", s(&public), "--json"],
    );
    let text = ok(&out);
    assert!(text.contains("\"signed_by\""), "{text}");
    assert!(text.contains("\"download\""), "download progress: {text}");
    card_holds(&card, &dir.path().join("pi4.img.zst"));
    assert_eq!(server.requests("pi4.img.zst"), ["GET"]);
    assert_eq!(server.requests("pi4.img.zst.manifest.json.sig"), ["GET"]);
    // No local copy of the image was made.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("pi4.img"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn tampered_unsigned_or_wrongly_signed_urls_are_refused() {
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let (dir, public) = release();
    let other = dir.path().join("other");
    ok(&sf(&["keygen", s(&other)]).output());
    let Some(server) = Server::start(dir.path()) else {
        return;
    };
    let before = card.hash();
    let zst = server.url("pi4.img.zst");
    let out = flash_url(
        &card.dev,
        &zst,
        &["--trusted-key", &format!("{}.pub", s(&other))],
    );
    refused(
        &out,
        2,
        &["pi4.img.zst.manifest.json", "not among the trusted keys"],
    );
    assert_eq!(card.hash(), before, "written with the wrong key");
    std::fs::rename(
        dir.path().join("pi4.img.zst.manifest.json.sig"),
        dir.path().join("sig.away"),
    )
    .unwrap();
    let out = flash_url(&card.dev, &zst, &["--trusted-key", s(&public)]);
    refused(&out, 2, &["pi4.img.zst.manifest.json", "no signature"]);
    assert_eq!(card.hash(), before, "written without a signature");

    // One byte flipped inside the served raw image: found mid-stream, no table left.
    let img = dir.path().join("pi4.img");
    let bmap = std::fs::read_to_string(dir.path().join("pi4.img.bmap")).unwrap();
    let last = bmap.split("<Range").last().unwrap();
    let first: u64 = last
        .split('>')
        .nth(1)
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[(first * 4096 + 10) as usize] ^= 0x40;
    std::fs::write(&img, &bytes).unwrap();
    let out = flash_url(
        &card.dev,
        &server.url("pi4.img"),
        &["--trusted-key", s(&public)],
    );
    refused(&out, 2, &["pi4.img", "do not match the signed manifest"]);
    let (code, t) = tool("sfdisk", &["-d", &card.dev]);
    assert_ne!(code, 0, "a table survived: {t}");
    // Without a key, the served bmap's checksums still catch it.
    let out = flash_url(&card.dev, &server.url("pi4.img"), &[]);
    refused(&out, 2, &["pi4.img", "do not match the bmap's checksum"]);
}

#[test]
fn a_dropped_connection_resumes_and_a_cache_saves_the_second_download() {
    let (Some(a), Some(b)) = (Card::new(1 << 30), Card::new(1 << 30)) else {
        return;
    };
    let (dir, public) = release();
    let Some(server) = Server::start(dir.path()) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("drop/pi4.img.zst");
    let key = ["--trusted-key", s(&public), "--cache", s(cache.path())];
    ok(&flash_url(&a.dev, &url, &key));
    let got = server.requests("drop/pi4.img.zst");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].starts_with("GET bytes="),
        "resumed with a range: {got:?}"
    );
    card_holds(&a, &dir.path().join("pi4.img.zst"));
    let kept: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(kept.iter().any(|n| n.ends_with("-pi4.img.zst")), "{kept:?}");
    ok(&flash_url(&b.dev, &url, &key));
    assert_eq!(
        server.requests("drop/pi4.img.zst").len(),
        2,
        "the second card downloaded the image again"
    );
    card_holds(&b, &dir.path().join("pi4.img.zst"));
}

#[test]
fn missing_refused_and_stalled_servers_fail_fast_writing_nothing() {
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let (dir, _) = release();
    let Some(server) = Server::start(dir.path()) else {
        return;
    };
    let before = card.hash();
    let out = flash_url(&card.dev, &server.url("nothere.img.zst"), &[]);
    refused(&out, 2, &["nothere.img.zst", "HTTP 404"]);
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/pi4.img.zst");
    let out = flash_url(&card.dev, &url, &[]);
    refused(&out, 1, &[&url]);
    let started = Instant::now();
    let out = flash_url(
        &card.dev,
        &server.url("stall/pi4.img.zst"),
        &["--timeout", "2"],
    );
    refused(&out, 1, &["stall/pi4.img.zst", "no answer within 2 s"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(card.hash(), before, "a failed fetch wrote to the card");
}
