//! Cards in the field: a card flashed from one build and upgraded to another whose fresh
//! plan places its partitions differently still verifies against the build it holds, by
//! the card's own table; and a build file changed on it is found and named.

mod common;

use common::synth::{Set, skiffos_images};
use common::*;

const MIB: u64 = 1 << 20;

/// The start and size of partition `n` as the card's table (sfdisk) gives them.
fn part_span(dev: &str, n: usize) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&tool_ok("sfdisk", &["--json", dev])).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

#[test]
fn an_upgraded_card_verifies_by_its_own_table_and_a_changed_kernel_is_named() {
    if !need_all(&[("sfdisk", "fdisk"), ("mcopy", "mtools"), ("mount", "mount")]) {
        return;
    }
    let Some(card) = Card::new(3 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    ok(&sf(&[
        &card.dev,
        "--board",
        "pi/4",
        "--images",
        f.to_str().unwrap(),
        "--yes",
    ])
    .output());
    {
        // User data through the kernel, as a booted card has it.
        let m = Mount::rw(&card.part(3));
        std::fs::write(m.dir.path().join("user-notes.txt"), b"kept\n").unwrap();
    }

    // Build B's boot content is larger than half of the card's boot partition: a fresh
    // plan of B gives boot more room, so its later partitions start elsewhere than on the
    // card. The card's boot partition still holds B beside A, so the upgrade goes ahead.
    let b = dir.path().join("B");
    copy_tree(&f, &b);
    std::fs::write(b.join("Image"), arm64_image(66 * MIB)).unwrap();
    let bs = b.to_str().unwrap();
    let plan = plan_json("pi/4", &b, &[]);
    let (_, card_boot) = part_span(&card.dev, 1);
    let plan_boot = plan["partitions"][0]["size"].as_u64().unwrap();
    assert!(
        plan_boot > card_boot,
        "precondition: B's plan ({plan_boot}) must place boot larger than the card's ({card_boot})"
    );
    ok(&sf(&[
        "upgrade", &card.dev, "--board", "pi/4", "--images", bs, "--yes",
    ])
    .output());

    let verify = || sf(&["verify", &card.dev, "--board", "pi/4", "--images", bs]).output();
    let out = verify();
    assert!(
        out.status.success(),
        "verify after the upgrade: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The kernel on the card changed (same size, other bytes): verify names it.
    let other = dir.path().join("Image.other");
    let mut k = std::fs::read(b.join("Image")).unwrap();
    k[40 * MIB as usize] ^= 0xFF;
    std::fs::write(&other, &k).unwrap();
    tool_ok(
        "mcopy",
        &[
            "-o",
            "-i",
            &card.part(1),
            other.to_str().unwrap(),
            "::/Image",
        ],
    );
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("/Image"),
        "the finding names the kernel: {text}"
    );
}

/// The build's files on the partition that holds user data (`/boot/…` of intel/desktop's
/// SKIFFOS partition, a persist-only board's `/boot/` and `/rootfs/`): each one changed or
/// deleted fails verify naming it; user files added beside them do not.
#[test]
fn build_files_on_persist_are_verified_and_user_files_are_not() {
    if !need_all(&[("mount", "mount"), ("partx", "util-linux")]) {
        return;
    }
    for board in ["intel/desktop", "pine64/h64"] {
        let def = show(board);
        let images = skiffos_images(board, &def, Set::Required);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        build(board, images.path(), &img, &["-q"]);
        let plan = plan_json(board, images.path(), &["-v"]);
        let persist = plan["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["grows"] == true)
            .unwrap_or_else(|| panic!("{board}: no partition grows"));
        let n = persist["number"].as_u64().unwrap() as u32;
        let files: Vec<String> = persist["fs"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "file")
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect();
        assert!(
            files.iter().any(|f| f.starts_with("/boot/")),
            "{board}: the build places boot files on persist: {files:?}"
        );
        let Some(lo) = Loop::attach(&img, false) else {
            return;
        };
        let part = lo.part(n);
        let verify = || {
            sf(&[
                "verify",
                lo.dev.as_str(),
                "--board",
                board,
                "--images",
                images.path().to_str().unwrap(),
            ])
            .output()
        };
        {
            let m = Mount::rw(&part);
            std::fs::create_dir_all(m.dir.path().join("home/user")).unwrap();
            std::fs::write(m.dir.path().join("home/user/notes.txt"), b"mine\n").unwrap();
            std::fs::write(m.dir.path().join("boot/user-added.txt"), b"mine too\n").unwrap();
        }
        let out = verify();
        assert!(
            out.status.success(),
            "{board}: user files added: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for f in &files {
            let rel = f.trim_start_matches('/');
            let saved = {
                let m = Mount::rw(&part);
                let p = m.dir.path().join(rel);
                let saved = std::fs::read(&p).unwrap();
                let mut changed = saved.clone();
                match changed.first_mut() {
                    Some(b) => *b ^= 0xFF,
                    None => changed.push(0),
                }
                std::fs::write(&p, &changed).unwrap();
                saved
            };
            let out = verify();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{board} {f} changed: {text}");
            assert!(
                text.contains(f.as_str()),
                "{board}: {f} changed is named: {text}"
            );
            let m = Mount::rw(&part);
            std::fs::write(m.dir.path().join(rel), &saved).unwrap();
        }
        let victim = files.iter().find(|f| f.starts_with("/boot/")).unwrap();
        {
            let m = Mount::rw(&part);
            std::fs::remove_file(m.dir.path().join(victim.trim_start_matches('/'))).unwrap();
        }
        let out = verify();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{board} {victim} deleted: {text}"
        );
        assert!(
            text.contains(victim.as_str()) && text.contains("missing"),
            "{board}: {victim} deleted is named: {text}"
        );
    }
}
