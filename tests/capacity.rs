//! The counterfeit-card check (`check-capacity`, `flash --check-capacity`) on real loop
//! devices: fakes are loop devices over a FUSE file (`tests/capacity/fakecard.py`) that
//! claims 4 GiB but stores 1 GiB, mapping every offset past it back onto the start (or, in
//! `dead` mode, dropping it); genuine cards are loop devices over sparse files. The oracle
//! for "nothing changed" is a digest of every non-zero block of the backing file.
//! Needs root, losetup, partx and python3-fusepy (as root, libfuse mounts without
//! fusermount).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Card, Loop, json, need_loop_devices, need_packages, refused, sf, tool};
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;
const CLAIMED: u64 = 4 * GIB;

/// Whether the fake cards can be made here.
fn can_run() -> bool {
    need_loop_devices() && need_packages(&["python3-fusepy"], None)
}

/// A loop device over a FUSE file that claims `CLAIMED` bytes and stores `real`.
struct FakeCard {
    lo: Option<Loop>,
    server: Child,
    mount: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeCard {
    fn new(real: u64, mode: &str) -> FakeCard {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("flash");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(real)
            .unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/capacity/fakecard.py");
        let server = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&backing)
            .arg(CLAIMED.to_string())
            .arg(&mount)
            .arg(mode)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the FUSE fake card");
        let file = mount.join("card");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&file).map(|m| m.len()).ok() != Some(CLAIMED) {
            assert!(
                Instant::now() < deadline,
                "the FUSE fake card did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let lo = Some(Loop::bare(&file, &[]));
        FakeCard {
            lo,
            server,
            mount,
            backing,
            _dir: dir,
        }
    }

    fn dev(&self) -> &str {
        &self.lo.as_ref().unwrap().dev
    }
}

impl Drop for FakeCard {
    fn drop(&mut self) {
        // The loop device holds the FUSE file open: detach it before unmounting.
        drop(self.lo.take());
        let _ = tool("umount", &[self.mount.to_str().unwrap()]);
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// SHA-256 over (offset, bytes) of every non-zero 4 KiB block of a sparse file: what the
/// file holds, at the cost of its allocated extents only.
fn content(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut h = Sha256::new();
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while at < len {
        // SEEK_DATA: the next allocated byte; ENXIO past the last one.
        let Ok(data) = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(at)) else {
            break;
        };
        f.seek(SeekFrom::Start(data)).unwrap();
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, block) in buf[..n].chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                h.update((data + i as u64 * 4096).to_le_bytes());
                h.update(block);
            }
        }
        at = data + n as u64;
    }
    skiff_flash::io::hex(&h.finalize())
}

/// Puts recognisable data where the check probes (both ends, the power-of-two boundaries)
/// and somewhere it does not, so that "restored" means more than "zero again".
fn scatter(path: &Path, size: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let spots = [0, 4096, GIB - 8192, GIB, GIB + 12345, size / 3, size - 4096];
    for (i, &at) in spots.iter().filter(|&&a| a < size).enumerate() {
        let len = 4096.min(size - at) as usize;
        f.write_all_at(&common::pseudo(len, i as u64 + 1), at)
            .unwrap();
    }
}

#[test]
fn wrapping_fake_is_refused_naming_its_real_size_and_left_as_it_was() {
    if !can_run() {
        return;
    }
    let fake = FakeCard::new(GIB, "wrap");
    scatter(&fake.backing, GIB);
    let before = content(&fake.backing);
    let started = Instant::now();
    let out = sf(&["check-capacity", fake.dev(), "--yes"]).output();
    let took = started.elapsed();
    refused(
        &out,
        2,
        &[
            fake.dev(),
            "claims 4 GiB",
            "stores only 1 GiB (1,073,741,824 bytes)",
            "reappears",
        ],
    );
    assert_eq!(
        content(&fake.backing),
        before,
        "the fake's contents changed"
    );
    eprintln!(
        "check-capacity on a 4 GiB fake: {:.2} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn dead_region_fake_is_refused_at_its_exact_size() {
    if !can_run() {
        return;
    }
    let real = 700 << 20;
    let fake = FakeCard::new(real, "dead");
    scatter(&fake.backing, real);
    let before = content(&fake.backing);
    let out = sf(&["check-capacity", fake.dev(), "--yes"]).output();
    refused(
        &out,
        2,
        &["stores only 700 MiB (734,003,200 bytes)", "reads fail"],
    );
    assert_eq!(
        content(&fake.backing),
        before,
        "the fake's contents changed"
    );
}

#[test]
fn genuine_card_passes_and_keeps_its_contents() {
    let Some(card) = Card::new(CLAIMED) else {
        return;
    };
    scatter(&card.backing, CLAIMED);
    let before = content(&card.backing);
    let started = Instant::now();
    let out = sf(&["check-capacity", &card.dev, "--yes", "--json"]).output();
    let took = started.elapsed();
    let report = json(&out);
    assert_eq!(report["claimed"], CLAIMED);
    assert_eq!(report["restored"], true);
    let probes = report["probes"].as_u64().unwrap();
    assert!((512..=1024).contains(&probes), "{probes} probes");
    assert_eq!(
        content(&card.backing),
        before,
        "the card's contents changed"
    );
    eprintln!(
        "check-capacity on a genuine 4 GiB card: {:.2} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn flash_check_capacity_refuses_a_fake_before_writing_anything() {
    if !can_run() {
        return;
    }
    let fake = FakeCard::new(GIB, "wrap");
    scatter(&fake.backing, GIB);
    let before = content(&fake.backing);
    let images = common::fixtures();
    let mut args = common::pi4_flash_args(fake.dev(), images.to_str().unwrap());
    args.push("--check-capacity");
    let out = sf(&args).output();
    refused(&out, 2, &["stores only 1 GiB", "refused"]);
    assert_eq!(
        content(&fake.backing),
        before,
        "the refused card was written"
    );
}

#[test]
fn flash_check_capacity_passes_a_genuine_card_and_flashes_it() {
    let Some(card) = Card::new(GIB) else {
        return;
    };
    let images = common::fixtures();
    let mut args = common::pi4_flash_args(&card.dev, images.to_str().unwrap());
    args.push("--check-capacity");
    common::ok(&sf(&args).output());
    let table = common::tool_ok("sfdisk", &["--dump", &card.dev]);
    assert!(table.contains("start="), "{table}");
}

#[test]
fn check_capacity_refuses_without_confirmation_or_device() {
    let out = sf(&["check-capacity", "/dev/skiff-flash-no-such-card", "--yes"]).output();
    refused(&out, 2, &["no such device"]);
    let Some(card) = Card::new(64 << 20) else {
        return;
    };
    let before = content(&card.backing);
    let out = sf(&["check-capacity", &card.dev]).stdin(b"").output();
    refused(&out, 2, &["pass --yes"]);
    assert_eq!(content(&card.backing), before);
}
