//! Checks on an upgraded card or image, shared by the upgrade tests: where a partition
//! lies (sfdisk), hashes of byte ranges, the boot set as mtools reads it, fsck of the
//! partitions, sparse copies, the fault-injection guard and the power-loss sweep. Not
//! for running upgrades: each test says how it upgrades.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use sha2::{Digest, Sha256};

use super::files::extract;
use super::run::{json, ok, tool, tool_ok};

pub const EPOCH_B: &str = "1700086400";
/// Exit status of a run stopped by the fault hook.
pub const FAULT_EXIT: i32 = 86;

/// The fault hook exists only in a binary built with the `fault-injection` feature: a test
/// that needs it fails (never skips) without it.
pub fn need_fault_injection() {
    if !cfg!(feature = "fault-injection") {
        panic!(
            "this test simulates power loss: run it with `cargo test --features fault-injection`"
        );
    }
}

/// Partition `n` of a disk or image: (start, size) in bytes, from sfdisk.
pub fn part_range(target: &str, n: usize) -> (u64, u64) {
    let j: serde_json::Value =
        serde_json::from_str(&tool_ok("sfdisk", &["--json", target])).unwrap();
    let p = &j["partitiontable"]["partitions"][n - 1];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

/// SHA-256 of a byte range of an image or device. A device's cached pages are dropped
/// first: what was written through a partition node (a kernel mount) may not yet be seen
/// through the whole-disk node's cache.
pub fn hash_range(path: &str, (start, len): (u64, u64)) -> String {
    use std::io::{Read, Seek, SeekFrom};
    if path.starts_with("/dev/") {
        tool_ok("blockdev", &["--flushbufs", path]);
    }
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(1 << 20) as usize]).unwrap();
        assert!(n > 0);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    skiff_flash::io::hex(&h.finalize())
}

/// The boot set as mtools reads it: every file's path and content hash.
pub fn boot_set(target: &str, offset: Option<u64>) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let img = match offset {
        Some(o) => format!("{target}@@{o}"),
        None => target.to_string(),
    };
    tool_ok(
        "mcopy",
        &["-s", "-n", "-i", &img, "::/*", dir.path().to_str().unwrap()],
    );
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(
                    rel,
                    skiff_flash::io::hex(&Sha256::digest(std::fs::read(&p).unwrap())),
                );
            }
        }
    }
    walk(dir.path(), dir.path(), &mut out);
    out
}

/// A copy that keeps the image's holes (the card is copied afresh for every fault point).
pub fn sparse_copy(from: &Path, to: &Path) {
    tool_ok(
        "cp",
        &[
            "--sparse=always",
            from.to_str().unwrap(),
            to.to_str().unwrap(),
        ],
    );
}

/// fsck.fat on partition 1, e2fsck on the others named.
pub fn fsck_parts(img: &Path, parts: &[usize]) {
    let s = img.to_str().unwrap();
    for &n in parts {
        let (o, l) = part_range(s, n);
        let p = extract(img, o, l);
        let path = p.path().to_str().unwrap();
        let (code, out) = if n == 1 {
            tool("fsck.fat", &["-n", path])
        } else {
            tool("e2fsck", &["-fn", path])
        };
        assert_eq!(code, 0, "fsck of partition {n}: {out}");
    }
}

/// The power-loss sweep of an upgrade: the card (`card`, copied afresh from `a_img` every
/// time) loses power after each single write, then with a volatile write cache that keeps
/// any subset of the writes since the last flush (three subsets per point). The boot set at
/// `boot` is always the old one or the new one, persist's bytes never change, and a re-run
/// completes the upgrade.
pub struct Sweep<'a> {
    pub a_img: &'a Path,
    pub card: &'a Path,
    pub boot: u64,
    pub persist: (u64, u64),
    pub persist_hash: &'a str,
    pub old_set: &'a BTreeMap<String, String>,
    pub new_set: &'a BTreeMap<String, String>,
}

impl Sweep<'_> {
    /// Runs the sweep; `upgrade(card, args, env)` upgrades the card to the new build, with
    /// extra arguments and the fault hook's environment.
    pub fn run(&self, upgrade: impl Fn(&str, &[&str], &[(&str, &str)]) -> Output) {
        // How many writes a whole upgrade makes.
        sparse_copy(self.a_img, self.card);
        let s = self.card.to_str().unwrap();
        let total = json(&upgrade(s, &["--json"], &[]))["writes"]
            .as_u64()
            .unwrap();
        assert!(total > 5, "{total} writes");
        self.each_write(total, &upgrade);
        self.lossy_cache(total, &upgrade);
    }

    fn each_write(&self, total: u64, upgrade: &impl Fn(&str, &[&str], &[(&str, &str)]) -> Output) {
        let s = self.card.to_str().unwrap();
        let (mut old_seen, mut new_seen) = (0, 0);
        for k in 0..total {
            sparse_copy(self.a_img, self.card);
            let out = upgrade(
                s,
                &[],
                &[("SKIFF_FLASH_FAULT_AFTER_WRITES", &k.to_string())],
            );
            assert_eq!(
                out.status.code(),
                Some(FAULT_EXIT),
                "stopped after {k} writes: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let set = boot_set(s, Some(self.boot));
            if set == *self.old_set {
                old_seen += 1;
            } else if set == *self.new_set {
                new_seen += 1;
            } else {
                panic!("after {k} of {total} writes the boot set is neither old nor new");
            }
            assert_eq!(
                hash_range(s, self.persist),
                self.persist_hash,
                "persist written (k={k})"
            );
            // Re-running completes the upgrade.
            ok(&upgrade(s, &[], &[]));
            assert_eq!(
                boot_set(s, Some(self.boot)),
                *self.new_set,
                "re-run after {k} writes"
            );
            fsck_parts(self.card, &[1, 2]);
            assert_eq!(hash_range(s, self.persist), self.persist_hash);
        }
        assert!(
            old_seen > 0 && new_seen > 0,
            "old {old_seen}, new {new_seen}"
        );
    }

    fn lossy_cache(&self, total: u64, upgrade: &impl Fn(&str, &[&str], &[(&str, &str)]) -> Output) {
        let s = self.card.to_str().unwrap();
        for k in 0..=total {
            for seed in 1..=3u32 {
                sparse_copy(self.a_img, self.card);
                let (n, sd) = (k.to_string(), seed.to_string());
                let env = [
                    ("SKIFF_FLASH_FAULT_AFTER_WRITES", n.as_str()),
                    ("SKIFF_FLASH_FAULT_CACHE", "lose"),
                    ("SKIFF_FLASH_FAULT_SEED", sd.as_str()),
                ];
                let out = upgrade(s, &[], &env);
                assert!(
                    out.status.code() == Some(FAULT_EXIT) || (k == total && out.status.success()),
                    "k={k}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let set = boot_set(s, Some(self.boot));
                assert!(
                    set == *self.old_set || set == *self.new_set,
                    "power lost after {k} of {total} writes (cache subset {seed}): the boot set is neither old nor new"
                );
                if seed == 1 {
                    ok(&upgrade(s, &[], &[]));
                    assert_eq!(
                        boot_set(s, Some(self.boot)),
                        *self.new_set,
                        "re-run after {k} writes, lossy"
                    );
                    fsck_parts(self.card, &[1]);
                }
            }
        }
    }
}
