//! Flashing real loop devices: the board composed straight onto the device, built images
//! (compressed, with a block map), several devices at once, refusals that write nothing
//! (checked by hashing the device before and after), and failures that leave no table.

mod common;

use std::path::Path;

use common::*;

/// The tools `check_card` runs.
fn need_checkers() -> bool {
    need_all(&[
        ("fsck.fat", "dosfstools"),
        ("e2fsck", "e2fsprogs"),
        ("sgdisk", "gdisk"),
    ])
}

/// `flash DEV --image IMG --yes EXTRA...`, run.
fn flash_image(dev: &str, img: &Path, extra: &[&str]) -> std::process::Output {
    let args = ["flash", dev, "--image", img.to_str().unwrap(), "--yes"];
    run(&[&args[..], extra].concat())
}

/// The final `done` event of a successful `--json` flash.
fn done_event(out: &std::process::Output) -> serde_json::Value {
    ok(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .expect("a final report")
}

/// A loop-device card of `size` bytes, where `check_card`'s tools are here; None (the test
/// is over) otherwise.
fn checked_card(size: u64) -> Option<Card> {
    if !need_checkers() {
        return None;
    }
    Card::new(size)
}

fn check_card(card: &Card) {
    let (code, out) = tool("fsck.fat", &["-n", &card.part(1)]);
    assert_eq!(code, 0, "fsck.fat: {out}");
    for n in [2, 3] {
        let (code, out) = tool("e2fsck", &["-fn", &card.part(n)]);
        assert_eq!(code, 0, "e2fsck p{n}: {out}");
    }
    let v = tool_ok("sgdisk", &["-v", &card.dev]);
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn board_flash_is_seen_by_the_kernel_clean_and_fills_the_device() {
    let Some(card) = checked_card(2 << 30) else {
        return;
    };
    let f = fixtures();
    let out = run(&pi4_flash_args(&card.dev, f.to_str().unwrap()));
    ok(&out);
    let name = Path::new(&card.dev)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for n in 1..=3 {
        assert!(
            Path::new(&format!("/sys/block/{name}/{name}p{n}")).exists(),
            "kernel sees p{n}"
        );
    }
    check_card(&card);
    let persist = Mount::ro(&card.part(3));
    let got = snapshot(persist.dir.path());
    let want = snapshot(&f.join("persist_part"));
    assert!(got == want, "persist holds persist_part exactly");
    let df = tool_ok(
        "df",
        &["-B1", "--output=size", persist.dir.path().to_str().unwrap()],
    );
    let size: u64 = df.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(
        size > 1_700_000_000,
        "persist fills the 2 GiB device: {size}"
    );
}

#[test]
fn old_tables_and_filesystems_leave_no_trace() {
    if !need("wipefs", "util-linux") || !need("sgdisk", "gdisk") || !need("mkfs.ext4", "e2fsprogs")
    {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    // A different GPT with an ext4 at an offset our layout does not use, and garbage.
    tool_ok(
        "sgdisk",
        &["-n", "1:2048:+300M", "-n", "2:0:+200M", &card.dev],
    );
    tool_ok("partx", &["-a", &card.dev]);
    tool_ok("mkfs.ext4", &["-q", "-L", "oldfs", &card.part(2)]);
    tool_ok("partx", &["-d", &card.dev]);
    let f = fixtures();
    ok(&run(&pi4_flash_args(&card.dev, f.to_str().unwrap())));
    check_card(&card);
    let w = tool_ok(
        "wipefs",
        &["-n", &card.dev, &card.part(1), &card.part(2), &card.part(3)],
    );
    assert!(!w.contains("oldfs"), "old ext4 gone: {w}");
    let ext4 = w.lines().filter(|l| l.contains("ext4")).count();
    assert_eq!(ext4, 2, "only rootfs and persist: {w}");
    let dump = tool_ok("sfdisk", &["--dump", &card.dev]);
    assert_eq!(
        dump.lines().filter(|l| l.contains(": start=")).count(),
        3,
        "{dump}"
    );
}

#[test]
fn compressed_image_writes_only_mapped_bytes_and_verifies() {
    let Some(card) = checked_card(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img.zst");
    let f = fixtures();
    build_pi4(&f, &img, &["--bmap"]);
    let bmap = std::fs::read_to_string(dir.path().join("pi4.img.bmap")).unwrap();
    let mapped: u64 = bmap
        .split("<MappedBlocksCount>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = flash_image(&card.dev, &img, &["--json"]);
    let done = done_event(&out);
    assert_eq!(done["ok"], true);
    assert_eq!(done["report"]["verified"], true);
    let written = done["report"]["bytes_written"].as_u64().unwrap();
    // Mapped blocks, plus the backup GPT moved to the device's real end.
    assert!(
        written >= mapped * 4096 && written <= mapped * 4096 + 20 * 1024,
        "{written} vs {mapped} blocks"
    );
    check_card(&card);
}

#[test]
fn an_image_without_bmap_is_mapped_and_checked_by_its_manifest() {
    let Some(card) = checked_card(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img.zst");
    build_pi4(&fixtures(), &img, &[]);
    assert!(!dir.path().join("pi4.img.bmap").exists());
    let manifest = dir.path().join("pi4.img.zst.manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let mapped: u64 = m["image"]["mapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["last"].as_u64().unwrap() - r["first"].as_u64().unwrap() + 1)
        .sum();
    let out = flash_image(&card.dev, &img, &["--json"]);
    let done = done_event(&out);
    assert_eq!(done["report"]["verified"], true);
    // Only the manifest's mapped blocks (and the backup GPT moved to the device's end),
    // not the whole decoded image.
    let written = done["report"]["bytes_written"].as_u64().unwrap();
    assert!(
        written >= mapped * 4096 && written <= mapped * 4096 + 20 * 1024,
        "{written} vs {mapped} mapped blocks"
    );
    check_card(&card);

    // A manifest whose hash of one mapped MiB is not what the image holds stops the write
    // before the table.
    let mut bad = m.clone();
    let piece = &mut bad["image"]["mapped"][1]["pieces"][0]["sha256"];
    *piece = "0".repeat(64).into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&bad).unwrap()).unwrap();
    let out = flash_image(&card.dev, &img, &[]);
    common::refuse::refused(
        &out,
        2,
        &["pi4.img.zst", "do not match the manifest's checksum"],
    );
    let (code, table) = tool("sfdisk", &["-d", &card.dev]);
    assert_ne!(code, 0, "a table survived: {table}");

    // A manifest of another image file (another name) is not used: the image is written
    // whole, as without one.
    bad["image"]["file"] = "other.img.zst".into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&bad).unwrap()).unwrap();
    let out = flash_image(&card.dev, &img, &["--json"]);
    let done = done_event(&out);
    assert!(
        done["report"]["bytes_written"].as_u64().unwrap() > mapped * 4096 + (64 << 20),
        "{done} vs {mapped} mapped blocks"
    );
    check_card(&card);
}

#[test]
fn several_devices_at_once() {
    let (Some(a), Some(b)) = (Card::new(512 << 20), Card::new(1 << 30)) else {
        return;
    };
    let f = fixtures();
    let out = run(&[
        "flash",
        &a.dev,
        &b.dev,
        "--board",
        "pi/4",
        "--images",
        f.to_str().unwrap(),
        "--yes",
    ]);
    let text = ok(&out);
    assert_eq!(
        text.lines().filter(|l| l.contains("verified")).count(),
        2,
        "{text}"
    );
    check_card(&a);
    check_card(&b);
}

/// Runs a refused flash and asserts exit 2, a one-line message and an untouched device.
fn refused(card: &Card, args: &[&str], expect: &str) {
    let before = card.hash();
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(expect), "`{expect}` not in: {err}");
    assert_eq!(card.hash(), before, "the device was written");
}

#[test]
fn refusals_write_nothing() {
    let Some(card) = Card::new(512 << 20) else {
        return;
    };
    let f = fixtures();
    let images = f.to_str().unwrap();
    ok(&run(&pi4_flash_args(&card.dev, images)));

    // No terminal and no --yes.
    refused(
        &card,
        &[&card.dev, "--board", "pi/4", "--images", images],
        "pass --yes",
    );
    // A partition path.
    tool_ok("partx", &["-u", &card.dev]);
    refused(
        &card,
        &pi4_flash_args(&card.part(1), images),
        "is a partition",
    );
    // A mounted partition.
    let m = Mount::ro(&card.part(3));
    refused(&card, &pi4_flash_args(&card.dev, images), "mounted");
    drop(m);
    // Not a block device: a regular file is never written as a device.
    let file = tempfile::NamedTempFile::new().unwrap();
    let before = std::fs::read(file.path()).unwrap();
    let out = run(&pi4_flash_args(file.path().to_str().unwrap(), images));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a block device"));
    assert_eq!(std::fs::read(file.path()).unwrap(), before);
    // A missing device is not created.
    let out = run(&pi4_flash_args("/dev/skiff-flash-no-such-card", images));
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new("/dev/skiff-flash-no-such-card").exists());

    let Some(small) = Card::new(64 << 20) else {
        return;
    };
    refused(&small, &pi4_flash_args(&small.dev, images), "needs");
}

#[test]
fn truncated_image_is_refused_before_the_card_is_written() {
    if !need("sfdisk", "fdisk") {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let f = fixtures();
    ok(&run(&pi4_flash_args(&card.dev, f.to_str().unwrap())));
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img.zst");
    build_pi4(&f, &img, &["--bmap"]);
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let before = card.hash();
    let out = flash_image(&card.dev, &img, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    // The bmap is checked against the whole image before any device is opened: the
    // truncation is found there, and the card keeps its old content.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pi4.img.zst"), "names the file: {err}");
    assert!(err.contains("uncompressed bytes"), "says where: {err}");
    assert_eq!(card.hash(), before, "the card was written");
}
