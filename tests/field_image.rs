//! A release image as the only thing in the field: a card flashed from release A is
//! upgraded to release B with `upgrade --image B.img[.zst|.gz|.xz]` (no images directory),
//! its persist partition byte-identical, its filesystems clean, and `verify --image`
//! checks it against B (passes) and A (fails naming the kernel), from the manifest or,
//! with none beside the image, from the image's own filesystems. Interrupted at any write,
//! the card boots the old set or the new one. Bad images are refused before any write.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const MIB: u64 = 1 << 20;
const EPOCH_A: &str = "1700000000";

fn need_tools() -> bool {
    need_all(&[
        ("mcopy", "mtools"),
        ("fsck.fat", "dosfstools"),
        ("e2fsck", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("mount", "mount"),
        ("blockdev", "util-linux"),
    ])
}

/// Build B's images directory: a new kernel and new rootfs content.
fn images_b(dir: &Path) -> PathBuf {
    let b = dir.join("images-b");
    copy_tree(&fixtures(), &b);
    std::fs::write(b.join("Image"), arm64_image(3 * MIB)).unwrap();
    std::fs::write(b.join("rootfs_part/firmware-b.bin"), pseudo(200_000, 11)).unwrap();
    b
}

/// Builds pi/4 from `images` as release `out` (its manifest and bmap beside it).
fn release(images: &Path, out: &Path, epoch: &str, extra: &[&str]) {
    let args = [&["--bmap", "-q"][..], extra].concat();
    ok(&build_cmd("pi/4", images, out, &args).epoch(epoch).output());
}

/// Releases A (`A.img.zst`) and B's images directory, in one temporary directory.
struct Releases {
    dir: tempfile::TempDir,
    a: PathBuf,
    b_images: PathBuf,
}

impl Releases {
    fn new() -> Releases {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("skiffos-pi4-a.img.zst");
        release(&fixtures(), &a, EPOCH_A, &[]);
        let b_images = images_b(dir.path());
        Releases { dir, a, b_images }
    }

    /// Release B as `name` (its extension picks the compression).
    fn b(&self, name: &str) -> PathBuf {
        let b = self.dir.path().join(name);
        release(&self.b_images, &b, EPOCH_B, &[]);
        b
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `upgrade TARGET --image IMAGE --yes EXTRA...`, with `env`.
fn upgrade(target: &str, image: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let args = [
        &["upgrade", target, "--image", s(image), "--yes"][..],
        extra,
    ]
    .concat();
    sf(&args).envs(env).output()
}

/// `verify TARGET --image IMAGE --json`: the exit code and the verdict.
fn verify(target: &str, image: &Path) -> (i32, serde_json::Value) {
    let out = sf(&["verify", target, "--image", s(image), "--json"]).output();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Whether a finding names `path`.
fn names(v: &serde_json::Value, path: &str) -> bool {
    v["findings"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["path"] == path))
}

/// fsck.fat on partition 1 and e2fsck on partitions 2 and 3 of a card.
fn fsck_card(card: &Card) {
    let (code, out) = tool("fsck.fat", &["-n", &card.part(1)]);
    assert_eq!(code, 0, "fsck.fat: {out}");
    for n in [2, 3] {
        let (code, out) = tool("e2fsck", &["-fn", &card.part(n)]);
        assert_eq!(code, 0, "e2fsck partition {n}: {out}");
    }
}

/// Flashes release `a` onto the card and writes user files into persist through a kernel
/// mount; returns persist's range and hash.
fn flash_with_user_data(card: &Card, a: &Path) -> ((u64, u64), String) {
    ok(&sf(&["flash", &card.dev, "--image", s(a), "--yes"]).output());
    {
        let m = Mount::rw(&card.part(3));
        std::fs::write(m.dir.path().join("user-notes.txt"), b"kept\n").unwrap();
        std::fs::create_dir_all(m.dir.path().join("user/photos")).unwrap();
        std::fs::write(m.dir.path().join("user/photos/p.raw"), pseudo(300_000, 5)).unwrap();
    }
    let persist = part_range(&card.dev, 3);
    (persist, hash_range(&card.dev, persist))
}

#[test]
fn a_card_upgraded_from_each_kind_of_release_image_keeps_persist_and_verifies_against_it() {
    if !need_tools() {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let r = Releases::new();
    for name in [
        "skiffos-pi4-b.img.zst",
        "skiffos-pi4-b.img",
        "skiffos-pi4-b.img.gz",
        "skiffos-pi4-b.img.xz",
    ] {
        let b = r.b(name);
        let (persist, before) = flash_with_user_data(&card, &r.a);
        let out = upgrade(&card.dev, &b, &[], &[]);
        let text = ok(&out);
        assert!(text.contains("replaced  /Image"), "{name}: {text}");
        assert_eq!(
            hash_range(&card.dev, persist),
            before,
            "{name}: persist's bytes changed"
        );
        fsck_card(&card);
        let (code, v) = verify(&card.dev, &b);
        assert_eq!(code, 0, "{name}: verify against B: {v}");
        assert_eq!(v["mode"], "meaning", "{v}");
        let (code, v) = verify(&card.dev, &r.a);
        assert_eq!(code, 1, "{name}: verify against A: {v}");
        assert!(names(&v, "/Image"), "{name}: the kernel is named: {v}");
        // Upgraded again from the same image: nothing to write.
        let j = json(&upgrade(&card.dev, &b, &["--json"], &[]));
        assert_eq!(j["writes"], 0, "{name}: {j}");
    }
}

#[test]
fn without_a_manifest_verify_reads_the_image_itself() {
    if !need_tools() {
        return;
    }
    let r = Releases::new();
    let bare = r.dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let a = bare.join("skiffos-pi4-a.img.zst");
    std::fs::copy(&r.a, &a).unwrap();
    let card = r.dir.path().join("card.img");
    ok(
        &build_cmd("pi/4", &fixtures(), &card, &["--size", "1GiB", "-q"])
            .epoch(EPOCH_A)
            .output(),
    );
    let (code, v) = verify(s(&card), &a);
    assert_eq!(code, 0, "{v}");
    // Every file of boot and rootfs (and the build's files on persist) was read.
    let files: u64 = ["Image", "rootfs.cpio.lz4"]
        .iter()
        .map(|f| std::fs::metadata(fixtures().join(f)).unwrap().len())
        .sum();
    assert!(v["bytes_checked"].as_u64().unwrap() > files, "{v}");

    // A changed kernel is named, with the offset of its first differing byte.
    let (boot, _) = part_range(s(&card), 1);
    let at = format!("{}@@{boot}", s(&card));
    let kernel = r.dir.path().join("Image");
    let mut k = std::fs::read(fixtures().join("Image")).unwrap();
    k[4096] ^= 0xFF;
    std::fs::write(&kernel, &k).unwrap();
    tool_ok("mcopy", &["-o", "-i", &at, s(&kernel), "::/Image"]);
    let (code, v) = verify(s(&card), &a);
    assert_eq!(code, 1, "{v}");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/Image")
        .unwrap_or_else(|| panic!("kernel not named: {v}"));
    assert_eq!(f["offset"], 4096, "{v}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 1, "{v}");

    // A changed file on the ext4 rootfs too (through a kernel mount of the partition).
    let (root, len) = part_range(s(&card), 2);
    let dir = tempfile::tempdir().unwrap();
    let opts = format!("loop,offset={root},sizelimit={len}");
    tool_ok("mount", &["-o", &opts, s(&card), s(dir.path())]);
    let squash = dir.path().join("modules.squashfs");
    let mut m = std::fs::read(&squash).unwrap();
    m[100] ^= 0x01;
    std::fs::write(&squash, &m).unwrap();
    tool_ok("umount", &[s(dir.path())]);
    let (code, v) = verify(s(&card), &a);
    assert_eq!(code, 1, "{v}");
    assert!(names(&v, "/modules.squashfs"), "{v}");
}

#[test]
fn power_loss_during_an_upgrade_from_a_release_image_leaves_old_or_new() {
    need_fault_injection();
    if !need_tools() {
        return;
    }
    let r = Releases::new();
    let b = r.b("skiffos-pi4-b.img.zst");
    // The card: release A as a small raw image (copied afresh for every fault point).
    let a_img = r.dir.path().join("a.img");
    ok(
        &build_cmd("pi/4", &fixtures(), &a_img, &["--size", "400MiB", "-q"])
            .epoch(EPOCH_A)
            .output(),
    );
    let (o1, _) = part_range(s(&a_img), 1);
    let persist = part_range(s(&a_img), 3);
    let persist_hash = hash_range(s(&a_img), persist);
    let b_img = r.dir.path().join("b.img");
    ok(
        &build_cmd("pi/4", &r.b_images, &b_img, &["--size", "400MiB", "-q"])
            .epoch(EPOCH_B)
            .output(),
    );
    let old_set = boot_set(s(&a_img), Some(o1));
    let new_set = boot_set(s(&b_img), Some(o1));
    assert_ne!(old_set, new_set);

    let card = r.dir.path().join("card.img");
    let sweep = Sweep {
        a_img: &a_img,
        card: &card,
        boot: o1,
        persist,
        persist_hash: &persist_hash,
        old_set: &old_set,
        new_set: &new_set,
    };
    sweep.run(|card, args, env| upgrade(card, &b, args, env));
}

#[test]
fn bad_release_images_are_refused_before_any_write() {
    if !need_tools() {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let r = Releases::new();
    let b = r.b("skiffos-pi4-b.img.zst");
    flash_with_user_data(&card, &r.a);
    let h = card.hash();
    let refuse = |image: &Path, extra: &[&str], code: i32, expect: &[&str]| {
        let err = refused(&upgrade(&card.dev, image, extra, &[]), code, expect);
        assert_eq!(card.hash(), h, "written by a refused upgrade: {err}");
    };
    let dir = r.dir.path();

    // Missing.
    let missing = dir.join("nowhere.img.zst");
    refuse(&missing, &[], 2, &["nowhere.img.zst", "not found"]);

    // Truncated: the stream ends early.
    let bytes = std::fs::read(&b).unwrap();
    let cut = dir.join("cut.img.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    refuse(
        &cut,
        &["--board", "pi/4"],
        2,
        &["cut.img.zst", "corrupt or truncated"],
    );
    // B's manifest beside it does not describe it.
    let manifest = dir.join("cut.img.zst.manifest.json");
    std::fs::copy(dir.join("skiffos-pi4-b.img.zst.manifest.json"), &manifest).unwrap();
    refuse(&cut, &[], 2, &["cut.img.zst.manifest.json", "describes a"]);
    std::fs::remove_file(&manifest).unwrap();

    // Corrupt: bytes in the middle of the stream damaged.
    let mut bad = bytes.clone();
    for x in &mut bad[bytes.len() / 3..bytes.len() / 3 + 64] {
        *x ^= 0x5A;
    }
    let corrupt = dir.join("corrupt.img.zst");
    std::fs::write(&corrupt, &bad).unwrap();
    refuse(&corrupt, &["--board", "pi/4"], 2, &["corrupt.img.zst"]);

    // A build of another board: its manifest says so, and --board cannot overrule it.
    let other = dir.join("skiffos-pi3.img.zst");
    ok(&build_cmd("pi/3x64", &fixtures(), &other, &["-q"]).output());
    refuse(&other, &[], 2, &["pi/3x64", "does not hold"]);
    refuse(&other, &["--board", "pi/4"], 2, &["pi/3x64", "pi/4"]);
    // Without its manifest, its table is not the board's.
    std::fs::remove_file(dir.join("skiffos-pi3.img.zst.manifest.json")).unwrap();
    refuse(
        &other,
        &["--board", "pi/4"],
        2,
        &["skiffos-pi3.img.zst", "not a build of board pi/4", "MBR"],
    );
    // Nor does a manifest-less image name a board by itself.
    refuse(&other, &[], 2, &["give --board"]);
}

#[test]
fn configs_from_a_release_image_name_the_cards_own_identifiers() {
    if !need_all(&[("mtype", "mtools"), ("sfdisk", "fdisk")]) {
        return;
    }
    // virt/qemu-arm64's boot.txt, and the boot.scr compiled from it, say
    // `root=PARTUUID=<boot>`. The card was made with other identifiers than the release.
    let r = Releases::new();
    let board = "virt/qemu-arm64";
    let card = r.dir.path().join("card.img");
    let args = ["--size", "512MiB", "--seed", "elsewhere", "-q"];
    ok(&build_cmd(board, &fixtures(), &card, &args).output());
    // B differs in its kernel only: this layout's rootfs content lives on persist, which
    // an upgrade never writes.
    let b_images = r.dir.path().join("qemu-images-b");
    copy_tree(&fixtures(), &b_images);
    std::fs::write(b_images.join("Image"), arm64_image(3 * MIB)).unwrap();
    let b = r.dir.path().join("qemu-b.img.zst");
    ok(&build_cmd(board, &b_images, &b, &["-q"])
        .epoch(EPOCH_B)
        .output());
    ok(&upgrade(s(&card), &b, &[], &[]));

    let disk_id = tool_ok("sfdisk", &["--disk-id", s(&card)]);
    let partuuid = format!("{}-01", disk_id.trim().trim_start_matches("0x"));
    let (boot, _) = part_range(s(&card), 1);
    let text = tool_ok(
        "mtype",
        &["-i", &format!("{}@@{boot}", s(&card)), "::/boot.txt"],
    );
    assert!(
        text.contains(&format!("root=PARTUUID={partuuid}")),
        "{text}"
    );
    // Every file, boot.scr included, is what a build of B made for this card holds.
    let by_board = sf(&[
        "verify",
        s(&card),
        "--board",
        board,
        "--images",
        s(&b_images),
        "--seed",
        "elsewhere",
    ])
    .output();
    ok(&by_board);
    // While the release's own identifiers are not the card's.
    let (code, v) = verify(s(&card), &b);
    assert_eq!(code, 1, "{v}");
}
