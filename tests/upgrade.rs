//! Upgrading installed cards in place: build A flashed, user data written to persist
//! through the kernel, upgraded to build B. Checked with mtools (the boot set), fsck.fat,
//! e2fsck, kernel mounts, `verify`, and hashes of the persist partition's bytes; power
//! loss simulated after every single write (also with a volatile write cache that loses
//! unflushed writes); refusals that write nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use sha2::{Digest, Sha256};

/// A pseudo-random arm64 kernel: `pseudo` bytes with the Image magic at 0x38.
fn kernel(len: usize, seed: u8) -> Vec<u8> {
    let mut k = pseudo(len, u64::from(seed));
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    k
}

/// Build B: a new kernel, a DTB dropped, a new overlay and boot file, new rootfs content.
fn images_b(dir: &Path) -> PathBuf {
    let b = dir.join("B");
    copy_tree(&fixtures(), &b);
    std::fs::write(b.join("Image"), kernel(3_000_000, 7)).unwrap();
    std::fs::remove_file(b.join("bcm2711-rpi-400.dtb")).unwrap();
    std::fs::write(b.join("boot_part/new-in-b.txt"), b"only in build B\n").unwrap();
    std::fs::write(
        b.join("rpi-firmware/overlays/extra-b.dtbo"),
        pseudo(40_000, 9),
    )
    .unwrap();
    std::fs::write(b.join("rootfs_part/firmware-b.bin"), pseudo(200_000, 11)).unwrap();
    b
}

/// `upgrade TARGET --board BOARD --images IMAGES EXTRA...`, to run.
fn upgrade_cmd(board: &str, target: &str, images: &str, extra: &[&str]) -> Sf {
    let args = ["upgrade", target, "--board", board, "--images", images];
    sf(&[&args[..], extra].concat())
}

/// Upgrades `target` as pi/4 from `images` to build B, confirmed.
fn upgrade(target: &str, images: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let extra = [&["--yes"][..], extra].concat();
    upgrade_cmd("pi/4", target, images.to_str().unwrap(), &extra)
        .epoch(EPOCH_B)
        .envs(env)
        .output()
}

/// A 1 GiB image of the board built from `images`.
fn build(images: &Path, out: &Path, epoch: &str) {
    build_sized(images, out, epoch, "1GiB");
}

fn build_sized(images: &Path, out: &Path, epoch: &str, size: &str) {
    ok(&build_cmd("pi/4", images, out, &["--size", size, "-q"])
        .epoch(epoch)
        .output());
}

/// `skiff-flash verify TARGET --board BOARD --images IMAGES EXTRA…` passes.
fn verify_ok(target: &str, board: &str, images: &str, extra: &[&str]) {
    let args = [
        &["verify", target, "--board", board, "--images", images][..],
        extra,
    ]
    .concat();
    ok(&sf(&args).epoch(EPOCH_B).output());
}

fn needs_oracles() -> bool {
    need_all(&[
        ("mcopy", "mtools"),
        ("fsck.fat", "dosfstools"),
        ("e2fsck", "e2fsprogs"),
        ("sfdisk", "fdisk"),
    ])
}

fn fsck_image(img: &Path) {
    fsck_parts(img, &[1, 2, 3]);
}

fn actions(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{}:{}",
                    c["partition"].as_str().unwrap(),
                    c["path"].as_str().unwrap()
                ),
                c["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Build A and build B of one test, in its own temporary directory: B's images dir, A's
/// image, where A's boot partition starts, and A's persist range with its hash.
struct Pair {
    dir: tempfile::TempDir,
    b: PathBuf,
    img: PathBuf,
    boot: u64,
    persist: (u64, u64),
    persist_hash: String,
}

impl Pair {
    /// A as a small (400 MiB) image `a.img`: for tests that copy or patch the image many
    /// times. None (the test is over) without the oracle tools.
    fn small() -> Option<Pair> {
        Pair::build("a.img", |img| {
            build_sized(&fixtures(), img, EPOCH, "400MiB")
        })
    }

    /// A as a 1 GiB image `card.img`.
    fn full() -> Option<Pair> {
        Pair::build("card.img", |img| build(&fixtures(), img, EPOCH))
    }

    fn build(name: &str, build_a: impl FnOnce(&Path)) -> Option<Pair> {
        if !needs_oracles() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let b = images_b(dir.path());
        let img = dir.path().join(name);
        build_a(&img);
        let s = img.to_str().unwrap();
        let (boot, _) = part_range(s, 1);
        let persist = part_range(s, 3);
        let persist_hash = hash_range(s, persist);
        Some(Pair {
            dir,
            b,
            img,
            boot,
            persist,
            persist_hash,
        })
    }
}

#[test]
fn image_upgrade_lands_build_b_keeps_persist_and_is_idempotent() {
    let Some(Pair {
        dir,
        b,
        img,
        boot: o1,
        persist,
        persist_hash: before,
    }) = Pair::full()
    else {
        return;
    };
    let fresh_b = dir.path().join("b.img");
    build(&b, &fresh_b, EPOCH_B);
    let s = img.to_str().unwrap();

    // A dry run writes nothing and says what will happen.
    let pristine = std::fs::read(&img).unwrap();
    let dry = json(&upgrade(s, &b, &["--dry-run", "--json"], &[]));
    assert_eq!(std::fs::read(&img).unwrap(), pristine, "dry run wrote");
    assert_eq!(dry["dry_run"], true);
    assert!(dry["writes"].as_u64().unwrap() > 0);

    let r = json(&upgrade(s, &b, &["--json"], &[]));
    let a = actions(&r);
    assert_eq!(a["boot:/Image"], "replaced");
    assert_eq!(a["boot:/bcm2711-rpi-400.dtb"], "removed");
    assert_eq!(a["boot:/new-in-b.txt"], "added");
    assert_eq!(a["boot:/overlays/extra-b.dtbo"], "added");
    assert_eq!(a["boot:/start4.elf"], "unchanged");
    assert_eq!(a["rootfs:/firmware-b.bin"], "added");
    assert_eq!(a["rootfs:/modules.squashfs"], "unchanged");
    assert_eq!(
        r["writes"], dry["writes"],
        "the dry run counted the same writes"
    );
    let parts = r["partitions"].as_array().unwrap();
    assert_eq!(parts[2]["outcome"], "untouched");

    assert_eq!(hash_range(s, persist), before, "persist bytes changed");
    fsck_image(&img);
    let (b1, _) = part_range(fresh_b.to_str().unwrap(), 1);
    assert_eq!(
        boot_set(s, Some(o1)),
        boot_set(fresh_b.to_str().unwrap(), Some(b1)),
        "boot files equal build B's"
    );
    verify_ok(s, "pi/4", b.to_str().unwrap(), &[]);

    // Again: nothing to do, nothing written.
    let again = json(&upgrade(s, &b, &["--json"], &[]));
    assert_eq!(again["writes"], 0, "{again}");
    assert!(actions(&again).values().all(|v| v == "unchanged"));

    // A build that only adds an empty directory (and an empty file) is still an upgrade.
    std::fs::create_dir_all(b.join("boot_part/empty-dir")).unwrap();
    let more = json(&upgrade(s, &b, &["--json"], &[]));
    assert!(more["writes"].as_u64().unwrap() > 0, "{more}");
    tool_ok("mdir", &["-i", &format!("{s}@@{o1}"), "::/empty-dir"]);
    std::fs::write(b.join("boot_part/empty-file"), b"").unwrap();
    let a = actions(&json(&upgrade(s, &b, &["--json"], &[])));
    assert_eq!(a["boot:/empty-file"], "added");
    fsck_image(&img);
}

#[test]
fn edited_config_and_user_files_are_kept_as_asked() {
    let Some(pair) = Pair::full() else {
        return;
    };
    let (s, o1) = (pair.img.to_str().unwrap(), pair.boot);
    let at = format!("{s}@@{o1}");
    // The user edits config.txt and adds files, on the card (mtools stamps them now).
    let edited = pair.dir.path().join("config.txt");
    std::fs::write(&edited, b"# mine\ndtoverlay=my-hat\n").unwrap();
    tool_ok(
        "mcopy",
        &["-o", "-i", &at, edited.to_str().unwrap(), "::/config.txt"],
    );
    let mine = pair.dir.path().join("my-hat.dtbo");
    std::fs::write(&mine, pseudo(5000, 3)).unwrap();
    tool_ok(
        "mcopy",
        &["-i", &at, mine.to_str().unwrap(), "::/overlays/my-hat.dtbo"],
    );
    tool_ok(
        "mcopy",
        &["-i", &at, mine.to_str().unwrap(), "::/scratch.bin"],
    );

    // The user's tool renamed the directory's long name: FAT ignores case, so do we.
    // (mtools moves it in two steps: it would not rename it onto itself.)
    tool_ok("mren", &["-i", &at, "::/overlays", "::/Overlays.tmp"]);
    tool_ok("mren", &["-i", &at, "::/Overlays.tmp", "::/Overlays"]);
    let r = json(&upgrade(
        s,
        &pair.b,
        &["--json", "--keep", "/overlays/my-*.dtbo"],
        &[],
    ));
    let a = actions(&r);
    assert_eq!(a["boot:/config.txt"], "kept", "{r}");
    assert_eq!(a["boot:/Overlays/my-hat.dtbo"], "kept");
    assert_eq!(a["boot:/scratch.bin"], "removed");
    let set = boot_set(s, Some(o1));
    let digest = |p: &Path| skiff_flash::io::hex(&Sha256::digest(std::fs::read(p).unwrap()));
    assert_eq!(set["config.txt"], digest(&edited));
    assert_eq!(set["overlays/my-hat.dtbo"], digest(&mine));
    assert!(!set.contains_key("scratch.bin"));
    fsck_image(&pair.img);

    // --force-config replaces it; the kept overlay stays only while asked for.
    let r = json(&upgrade(s, &pair.b, &["--json", "--force-config"], &[]));
    let a = actions(&r);
    assert_eq!(a["boot:/config.txt"], "replaced");
    assert_eq!(a["boot:/overlays/my-hat.dtbo"], "removed");
    let set = boot_set(s, Some(o1));
    assert_ne!(set["config.txt"], digest(&edited));
    fsck_image(&pair.img);
}

#[test]
fn power_loss_after_any_write_leaves_old_or_new_and_a_rerun_completes() {
    need_fault_injection();
    // Small images: the card is copied afresh for every fault point.
    let Some(pair) = Pair::small() else {
        return;
    };
    let (a_img, o1, persist) = (&pair.img, pair.boot, pair.persist);
    let b_img = pair.dir.path().join("b.img");
    build_sized(&pair.b, &b_img, EPOCH_B, "400MiB");
    let old_set = boot_set(a_img.to_str().unwrap(), Some(o1));
    let new_set = boot_set(b_img.to_str().unwrap(), Some(o1));
    assert_ne!(old_set, new_set);

    let card = pair.dir.path().join("card.img");
    let sweep = Sweep {
        a_img,
        card: &card,
        boot: o1,
        persist,
        persist_hash: &pair.persist_hash,
        old_set: &old_set,
        new_set: &new_set,
    };
    sweep.run(|card, args, env| upgrade(card, &pair.b, args, env));
}

#[test]
fn loop_device_upgrade_keeps_user_data_written_by_the_kernel() {
    if !needs_oracles() || !need("sgdisk", "gdisk") {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let b = images_b(dir.path());
    let f = fixtures();
    ok(&sf(&pi4_flash_args(&card.dev, f.to_str().unwrap())).output());
    // User data through a real kernel mount of persist.
    let mut written = BTreeMap::new();
    {
        let mnt = tempfile::tempdir().unwrap();
        let m = mnt.path().to_str().unwrap();
        tool_ok("mount", &[&card.part(3), m]);
        std::fs::create_dir_all(mnt.path().join("home/user")).unwrap();
        for i in 0..20u8 {
            let p = format!("home/user/file-{i}.bin");
            let data = pseudo(10_000 + 3000 * usize::from(i), u64::from(i));
            std::fs::write(mnt.path().join(&p), &data).unwrap();
            written.insert(p, skiff_flash::io::hex(&Sha256::digest(&data)));
        }
        tool_ok("umount", &[m]);
    }
    let persist = part_range(&card.dev, 3);
    let before = hash_range(&card.dev, persist);

    let r = json(&upgrade(&card.dev, &b, &["--json"], &[]));
    assert_eq!(actions(&r)["boot:/Image"], "replaced");
    assert_eq!(
        hash_range(&card.dev, persist),
        before,
        "persist bytes changed"
    );

    // What the board's kernel sees: partitions from the table, fsck-clean filesystems.
    let (code, out) = tool("fsck.fat", &["-n", &card.part(1)]);
    assert_eq!(code, 0, "fsck.fat: {out}");
    for n in [2, 3] {
        let (code, out) = tool("e2fsck", &["-fn", &card.part(n)]);
        assert_eq!(code, 0, "e2fsck p{n}: {out}");
    }
    assert!(tool_ok("sgdisk", &["-v", &card.dev]).contains("No problems found"));
    let boot = boot_set(&card.part(1), None);
    assert!(boot.contains_key("new-in-b.txt") && !boot.contains_key("bcm2711-rpi-400.dtb"));
    {
        let m = Mount::ro(&card.part(3));
        for (p, h) in &written {
            let got = skiff_flash::io::hex(&Sha256::digest(
                std::fs::read(m.dir.path().join(p)).unwrap(),
            ));
            assert_eq!(&got, h, "{p}");
        }
    }
    {
        let m = Mount::ro(&card.part(2));
        assert_eq!(
            snapshot(m.dir.path()),
            snapshot(&b.join("rootfs_part")),
            "rootfs holds build B's rootfs_part"
        );
    }
    verify_ok(&card.dev, "pi/4", b.to_str().unwrap(), &[]);

    // Power loss on the device too: stopped mid-way, then completed.
    need_fault_injection();
    let c = images_b(&dir.path().join("C"));
    std::fs::write(c.join("Image"), kernel(2_500_000, 21)).unwrap();
    let out = upgrade(
        &card.dev,
        &c,
        &[],
        &[("SKIFF_FLASH_FAULT_AFTER_WRITES", "8")],
    );
    assert_eq!(out.status.code(), Some(FAULT_EXIT));
    ok(&upgrade(&card.dev, &c, &[], &[]));
    let (code, out) = tool("fsck.fat", &["-n", &card.part(1)]);
    assert_eq!(code, 0, "fsck.fat: {out}");
    assert_eq!(hash_range(&card.dev, persist), before);
}

#[test]
fn refusals_write_nothing() {
    if !needs_oracles() {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let fs = f.to_str().unwrap();

    // A card with another layout (pi/3x64: MBR) is not upgraded as pi/4.
    ok(&sf(&[&card.dev, "--board", "pi/3x64", "--images", fs, "--yes"]).output());
    let h = card.hash();
    let out = upgrade(&card.dev, &f, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not hold board pi/4's layout")
            && err.contains("MBR")
            && err.contains("--reformat"),
        "{err}"
    );
    assert_eq!(card.hash(), h);

    // Not enough room beside the old set: says how much is missing.
    ok(&sf(&[&card.dev, "--board", "pi/4", "--images", fs, "--yes"]).output());
    let big = dir.path().join("big");
    copy_tree(&f, &big);
    let (_, boot_len) = part_range(&card.dev, 1);
    std::fs::write(big.join("Image"), kernel(boot_len as usize * 99 / 100, 5)).unwrap();
    let h = card.hash();
    let out = upgrade(&card.dev, &big, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no room") && err.contains("missing"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(card.hash(), h);

    // A mounted partition (this kernel has no vfat: the ext4 rootfs stands in for boot).
    tool_ok("partx", &["-u", &card.dev]);
    let m = Mount::ro(&card.part(2));
    let out = upgrade(&card.dev, &images_b(dir.path()), &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounted"), "{err}");
    drop(m);
    assert_eq!(card.hash(), h);

    // No terminal to confirm on and no --yes: nothing is written.
    let bdir = images_b(&dir.path().join("b2"));
    let out = upgrade_cmd("pi/4", &card.dev, bdir.to_str().unwrap(), &[])
        .epoch(EPOCH_B)
        .output();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(card.hash(), h);

    // --reformat never combines with --dry-run (it would erase persist).
    let out = upgrade_cmd("pi/4", &card.dev, fs, &["--reformat", "--dry-run", "--yes"]).output();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(card.hash(), h);

    // --reformat is the explicit way to start over: a full flash, here to another layout.
    ok(&upgrade_cmd("pi/3x64", &card.dev, fs, &["--reformat", "--yes"]).output());
    let dump = tool_ok("sfdisk", &["--dump", &card.dev]);
    assert!(dump.contains("label: dos"), "{dump}");

    // A compressed image is refused, not decompressed somewhere.
    let zst = dir.path().join("x.img.zst");
    std::fs::write(&zst, b"whatever").unwrap();
    let out = upgrade(zst.to_str().unwrap(), &f, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// A card flashed with another seed has other PARTUUIDs: the upgraded boot config names the
/// card's, not the ones the board would derive.
#[test]
fn upgraded_configs_name_the_cards_own_identifiers() {
    if !need("mtype", "mtools") || !need("sfdisk", "fdisk") {
        return;
    }
    let board = "virt/qemu-arm64-extlinux";
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let img = dir.path().join("card.img");
    let s = img.to_str().unwrap();
    ok(&sf(&[
        "build",
        "--board",
        board,
        "--images",
        f.to_str().unwrap(),
        "--seed",
        "other-card",
        "-o",
        s,
        "-q",
    ])
    .output());
    let partuuid = |seed: &[&str]| -> String {
        let mut args = vec![
            "plan",
            "--board",
            board,
            "--images",
            f.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(seed);
        let p: serde_json::Value = serde_json::from_str(&ok(&sf(&args).output())).unwrap();
        p["partitions"][0]["partuuid"].as_str().unwrap().to_string()
    };
    let (card_id, default_id) = (partuuid(&["--seed", "other-card"]), partuuid(&[]));
    assert_ne!(card_id, default_id);

    let b = dir.path().join("B");
    copy_tree(&f, &b);
    std::fs::write(b.join("Image"), kernel(1_000_000, 4)).unwrap();
    let out = sf(&[
        "upgrade",
        s,
        "--board",
        board,
        "--images",
        b.to_str().unwrap(),
        "--yes",
        "--json",
    ])
    .epoch(EPOCH_B)
    .output();
    let r = json(&out);
    assert_eq!(actions(&r)["boot:/Image"], "replaced");
    // This layout keeps rootfs_part/ and persist_part/ on persist: said, not written.
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("partition persist holds user data"),
        "{notes}"
    );

    let (o1, _) = part_range(s, 1);
    let conf = tool_ok(
        "mtype",
        &["-i", &format!("{s}@@{o1}"), "::/extlinux/extlinux.conf"],
    );
    assert!(conf.contains(&format!("root=PARTUUID={card_id}")), "{conf}");
    verify_ok(s, board, b.to_str().unwrap(), &["--seed", "other-card"]);
}

/// A card formatted the SkiffOS way (sgdisk, mkfs.vfat, mke2fs, files copied with mtools)
/// is upgraded in place: a FAT made by mkfs.fat, an ext4 made by mke2fs (1 KiB blocks,
/// which is written again), persist untouched.
#[test]
fn card_formatted_by_mkfs_tools_is_upgraded() {
    if !needs_oracles()
        || !need("sgdisk", "gdisk")
        || !need("mkfs.vfat", "dosfstools")
        || !need("mkfs.ext4", "e2fsprogs")
    {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    tool_ok(
        "sgdisk",
        &[
            "-n",
            "1:2048:+256M",
            "-t",
            "1:0700",
            "-c",
            "1:primary",
            "-n",
            "2:0:+128M",
            "-t",
            "2:8300",
            "-c",
            "2:primary",
            "-n",
            "3:0:0",
            "-t",
            "3:8300",
            "-c",
            "3:primary",
            &card.dev,
        ],
    );
    tool_ok("partx", &["-u", &card.dev]);
    tool_ok("mkfs.vfat", &["-F", "32", "-n", "BOOT", &card.part(1)]);
    tool_ok(
        "mkfs.ext4",
        &["-q", "-F", "-L", "rootfs", "-O", "^64bit", &card.part(2)],
    );
    tool_ok("mkfs.ext4", &["-q", "-F", "-L", "persist", &card.part(3)]);
    let f = fixtures();
    let p = |n: &str| f.join(n).to_str().unwrap().to_string();
    let p1 = card.part(1);
    tool_ok(
        "mcopy",
        &["-i", &p1, &p("Image"), &p("bcm2711-rpi-4-b.dtb"), "::/"],
    );
    tool_ok(
        "mcopy",
        &[
            "-i",
            &p1,
            &p("rpi-firmware/start4.elf"),
            "::/old-firmware.elf",
        ],
    );
    let persist = part_range(&card.dev, 3);
    let before = hash_range(&card.dev, persist);

    let r = json(&upgrade(&card.dev, &f, &["--json"], &[]));
    let a = actions(&r);
    assert_eq!(a["boot:/Image"], "unchanged");
    assert_eq!(a["boot:/old-firmware.elf"], "removed");
    assert_eq!(a["boot:/rootfs.cpio.lz4"], "added");
    assert_eq!(r["partitions"][1]["outcome"], "rewritten", "{r}");
    assert_eq!(
        hash_range(&card.dev, persist),
        before,
        "persist bytes changed"
    );

    let (code, out) = tool("fsck.fat", &["-n", &p1]);
    assert_eq!(code, 0, "fsck.fat: {out}");
    for n in [2, 3] {
        let (code, out) = tool("e2fsck", &["-fn", &card.part(n)]);
        assert_eq!(code, 0, "e2fsck p{n}: {out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.img");
    build(&f, &fresh, EPOCH_B);
    let (o1, _) = part_range(fresh.to_str().unwrap(), 1);
    assert_eq!(
        boot_set(&p1, None),
        boot_set(fresh.to_str().unwrap(), Some(o1))
    );
    let m = Mount::ro(&card.part(2));
    assert_eq!(snapshot(m.dir.path()), snapshot(&f.join("rootfs_part")));
}

/// Damaged boot partitions (bytes flipped in the boot sector, the FATs and the root
/// directory): the upgrade refuses or proceeds, but never panics and never writes persist.
#[test]
fn damaged_cards_are_refused_or_upgraded_never_a_panic() {
    let Some(pair) = Pair::small() else {
        return;
    };
    let (a_img, o1, persist) = (&pair.img, pair.boot, pair.persist);
    let card = pair.dir.path().join("card.img");
    let (mut refused, mut done) = (0, 0);
    for i in 0..40u64 {
        sparse_copy(a_img, &card);
        let f = std::fs::OpenOptions::new().write(true).open(&card).unwrap();
        let noise = pseudo(64, i);
        // Boot sector, FSInfo, first FAT sectors, the root directory's first cluster.
        let spots = [0u64, 512, 16_384, 20_480, 33_000, 70_000];
        let at = o1 + spots[(i % spots.len() as u64) as usize] + (i * 7) % 400;
        let n = 1 + (i as usize % 8);
        std::os::unix::fs::FileExt::write_all_at(&f, &noise[..n], at).unwrap();
        drop(f);
        let cs = card.to_str().unwrap();
        for extra in [&["--dry-run"][..], &[]] {
            let out = upgrade(cs, &pair.b, extra, &[]);
            let code = out.status.code();
            assert!(
                code == Some(0) || code == Some(1) || code == Some(2),
                "damage {i} at byte {at}: exit {code:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if code == Some(0) {
                done += 1;
            } else {
                refused += 1;
                assert_eq!(
                    String::from_utf8_lossy(&out.stderr).trim().lines().count(),
                    1
                );
            }
        }
        assert_eq!(
            hash_range(cs, persist),
            pair.persist_hash,
            "damage {i}: persist written"
        );
    }
    assert!(
        refused > 0 && done > 0,
        "refused {refused}, upgraded {done}"
    );
}

/// Boot-sector fields that point outside the reserved area (FSInfo, backup boot sector) are
/// not followed: no write lands in file data through them.
#[test]
fn boot_sector_fields_outside_the_reserved_area_are_not_written_through() {
    let Some(pair) = Pair::small() else {
        return;
    };
    let (s, o1) = (pair.img.to_str().unwrap(), pair.boot);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pair.img)
        .unwrap();
    // FSInfo at sector 4628 and the backup boot sector at 40000: inside the data area.
    std::os::unix::fs::FileExt::write_all_at(&f, &4628u16.to_le_bytes(), o1 + 48).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &40000u16.to_le_bytes(), o1 + 50).unwrap();
    drop(f);
    let before = std::fs::read(&pair.img).unwrap();
    ok(&upgrade(s, &pair.b, &[], &[]));
    let after = std::fs::read(&pair.img).unwrap();
    for sector in [4628u64, 40000] {
        let at = (o1 + sector * 512) as usize;
        assert_eq!(
            before[at..at + 512],
            after[at..at + 512],
            "sector {sector} written"
        );
    }
    verify_ok(s, "pi/4", pair.b.to_str().unwrap(), &[]);
}

/// An ext4 boot partition (odroid/m1) cannot be switched atomically: refused unless the
/// user accepts it, then rewritten.
#[test]
fn ext4_boot_partition_needs_consent() {
    if !needs_oracles() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("A");
    copy_tree(&fixtures(), &a);
    std::fs::write(a.join("rootfs.cpio.uboot"), pseudo(5000, 1)).unwrap();
    let img = dir.path().join("m1.img");
    let s = img.to_str().unwrap();
    ok(&sf(&[
        "build",
        "--board",
        "odroid/m1",
        "--images",
        a.to_str().unwrap(),
        "-o",
        s,
        "-q",
    ])
    .output());
    std::fs::write(a.join("Image"), kernel(500_000, 2)).unwrap();
    let before = std::fs::read(&img).unwrap();
    let args = [
        "upgrade",
        s,
        "--board",
        "odroid/m1",
        "--images",
        a.to_str().unwrap(),
        "--yes",
    ];
    let out = sf(&args).epoch(EPOCH_B).output();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-unsafe-boot"), "{err}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    ok(&sf(&[&args[..], &["--allow-unsafe-boot"]].concat())
        .epoch(EPOCH_B)
        .output());
    let (o, l) = part_range(s, 1);
    let p = extract(&img, o, l);
    let (code, out) = tool("e2fsck", &["-fn", p.path().to_str().unwrap()]);
    assert_eq!(code, 0, "e2fsck: {out}");
    verify_ok(s, "odroid/m1", a.to_str().unwrap(), &[]);
}
