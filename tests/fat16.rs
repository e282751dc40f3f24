//! A board whose layout says `fs = "fat"` gets a FAT16 boot partition at 128 MiB (as
//! mkfs.fat would choose): fsck.fat finds it clean, inspect reads it back, verify compares
//! every file through skiff-flash's FAT reader and finds a changed byte, and upgrade refuses
//! it in one line with exit code 2, writing nothing.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::Value;

/// A board path with `t/fat16`: pi/4 on pi-gpt with the boot partition's `fs = "fat"`.
fn board_path(dir: &Path) {
    std::fs::create_dir_all(dir.join("boards/t")).unwrap();
    std::fs::create_dir_all(dir.join("layouts")).unwrap();
    std::fs::write(
        dir.join("boards/t/fat16.toml"),
        "description = \"pi/4 with a FAT16 boot partition\"\ninherit = \"pi/4\"\nlayout = \"t16\"\n",
    )
    .unwrap();
    let layout =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("layouts/pi-gpt.toml"))
            .unwrap();
    assert!(layout.contains("fs = \"fat32\""));
    std::fs::write(
        dir.join("layouts/t16.toml"),
        layout.replacen("fs = \"fat32\"", "fs = \"fat\"", 1),
    )
    .unwrap();
}

/// skiff-flash with `dir` as the board path.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    sf(args).env("SKIFF_FLASH_BOARD_PATH", dir).output()
}

#[test]
fn a_fat16_boot_partition_builds_verifies_and_is_refused_by_upgrade() {
    if !need("fsck.fat", "dosfstools") || !need("minfo", "mtools") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    board_path(dir);
    let img = dir.join("x.img");
    let images = fixtures();
    let i = images.to_str().unwrap();
    let im = img.to_str().unwrap();
    ok(&run_in(
        dir,
        &["build", "--board", "t/fat16", "--images", i, "-o", im],
    ));

    let plan: Value = serde_json::from_str(&ok(&run_in(
        dir,
        &["plan", "--json", "--board", "t/fat16", "--images", i],
    )))
    .unwrap();
    let boot = &plan["partitions"][0];
    assert_eq!(boot["fs"]["kind"], "fat16", "{boot}");
    let (start, size) = (
        boot["start"].as_u64().unwrap(),
        boot["size"].as_u64().unwrap(),
    );
    let part = extract(&img, start, size);
    let fsck = tool_ok("fsck.fat", &["-n", "-v", part.path().to_str().unwrap()]);
    assert!(fsck.contains("16 bit entries"), "{fsck}");
    let minfo = tool_ok("minfo", &["-i", part.path().to_str().unwrap(), "::"]);
    assert!(
        minfo.contains("max available root directory slots: 512"),
        "{minfo}"
    );

    let seen: Value = serde_json::from_str(&ok(&run_in(dir, &["inspect", "--json", im]))).unwrap();
    let fs = &seen["partitions"][0]["fs"];
    assert_eq!(fs["kind"], "fat16", "{fs}");
    assert!(
        fs["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "/config.txt"),
        "{fs}"
    );

    let verify = |img: &str| run_in(dir, &["verify", img, "--board", "t/fat16", "--images", i]);
    ok(&verify(im));

    // A changed byte in a DTB's data is found through the FAT16 reader.
    let config = std::fs::read(images.join("bcm2711-rpi-4-b.dtb")).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    let at = bytes[start as usize..]
        .windows(config.len())
        .position(|w| w == config)
        .expect("the DTB in the boot partition") as u64
        + start;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[config[0] ^ 0x20], at).unwrap();
    let out = verify(im);
    assert_ne!(out.status.code(), Some(0));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("bcm2711-rpi-4-b.dtb"), "{text}");
    f.write_all_at(&config[..1], at).unwrap();

    let before = std::fs::read(&img).unwrap();
    let out = run_in(
        dir,
        &["upgrade", im, "--board", "t/fat16", "--images", i, "--yes"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("partition boot: is FAT12/16"), "{err}");
    assert!(
        std::fs::read(&img).unwrap() == before,
        "upgrade wrote nothing"
    );
}
