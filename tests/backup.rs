//! `backup` of a flashed and used card, restored with `flash --image` onto a larger card:
//! every file of every partition identical (ext4 through kernel mounts and `diff -r`, FAT
//! through `mcopy -s` and `diff -r`), e2fsck, fsck.fat, sfdisk and sgdisk clean, and the
//! backup about as large as what the card uses, not the card. Needs root, loop devices,
//! e2fsprogs, dosfstools, mtools, fdisk and gdisk.

mod common;

use std::path::Path;

use common::{
    Card, Mount, fat_copy_out, json, need_all, need_loop_devices, ok, pseudo, sf, tool, tool_ok,
};

const MIB: u64 = 1 << 20;

fn can_run() -> bool {
    need_loop_devices()
        && need_all(&[
            ("e2fsck", "e2fsprogs"),
            ("fsck.fat", "dosfstools"),
            ("mcopy", "mtools"),
            ("sfdisk", "fdisk"),
            ("sgdisk", "gdisk"),
            ("diff", "diffutils"),
            ("resize2fs", "e2fsprogs"),
        ])
}

/// About 100 MB of pseudo-random files in a few directories under `root`; returns bytes.
fn user_data(root: &Path) -> u64 {
    let mut total = 0;
    for d in 0..4u64 {
        let dir = root.join(format!("user/dir{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..5u64 {
            let len = (4 * MIB + (d * 5 + f) * 97_003) as usize;
            std::fs::write(dir.join(format!("file{f}.bin")), pseudo(len, d * 100 + f)).unwrap();
            total += len as u64;
        }
    }
    total
}

/// `diff -r` of two directories must find nothing.
fn same_tree(a: &str, b: &str) {
    let (code, out) = tool("diff", &["-r", "--no-dereference", a, b]);
    assert_eq!(code, 0, "trees differ:\n{out}");
}

/// The FAT partition's files, copied out with mtools.
fn fat_files(part: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fat_copy_out(part, d.path());
    d
}

#[test]
fn backup_restores_every_file_onto_a_larger_card() {
    if !can_run() {
        return;
    }
    let Some(a) = Card::new(1 << 30) else { return };
    let images = common::fixtures();
    ok(&sf(&common::pi4_flash_args(&a.dev, images.to_str().unwrap())).output());
    let written = {
        let m = Mount::rw(&a.part(3));
        user_data(Path::new(m.path()))
    };
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("card.img.zst");
    let report = json(&sf(&["backup", &a.dev, image.to_str().unwrap(), "--json"]).output());
    let parts = report["manifest"]["partitions"].as_array().unwrap();
    let kinds: Vec<_> = parts.iter().map(|p| p["fs"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["fat32", "ext4", "ext4"]);
    assert!(parts.iter().all(|p| p["copy"] == "used"), "{parts:?}");
    assert!(out.path().join("card.img.bmap").is_file());
    assert!(out.path().join("card.img.zst.manifest.json").is_file());

    // The image holds what the card uses: the user data, the build, the filesystems'
    // metadata (inode tables, journals), not the gigabyte the card has.
    let file_size = std::fs::metadata(&image).unwrap().len();
    let copied = report["copied"].as_u64().unwrap();
    assert!(file_size >= written, "{file_size} < {written}");
    assert!(
        file_size <= written + 48 * MIB,
        "backup of {file_size} bytes for {written} of data"
    );
    assert!(
        copied <= written + 64 * MIB,
        "{copied} bytes copied for {written} of data"
    );

    let Some(b) = Card::new(2 << 30) else { return };
    ok(&sf(&["flash", &b.dev, "--image", image.to_str().unwrap(), "--yes"]).output());
    tool_ok("sgdisk", &["-v", &b.dev]);
    let dump = tool_ok("sfdisk", &["--dump", &b.dev]);
    assert_eq!(dump.matches("start=").count(), 3, "{dump}");
    for n in [2, 3] {
        tool_ok("e2fsck", &["-fn", &b.part(n)]);
        let (old, new) = (Mount::ro(&a.part(n)), Mount::ro(&b.part(n)));
        same_tree(old.path(), new.path());
    }
    tool_ok("fsck.fat", &["-n", &b.part(1)]);
    let (old, new) = (fat_files(&a.part(1)), fat_files(&b.part(1)));
    same_tree(old.path().to_str().unwrap(), new.path().to_str().unwrap());
    // The user data really is there (the trees above could both be empty).
    let m = Mount::ro(&b.part(3));
    let back = std::fs::read(Path::new(m.path()).join("user/dir3/file4.bin")).unwrap();
    assert_eq!(back, pseudo(back.len(), 304));
    drop(m);
    grown_restore(&image, &a);
}

/// `flash --image --grow` onto a 1.5 GiB card: the last partition's entry reaches the last
/// usable sector, the table is valid, its ext4 is clean and `resize2fs` can grow it into
/// the room, keeping every file.
fn grown_restore(image: &Path, a: &Card) {
    let size = 3u64 << 29;
    let Some(c) = Card::new(size) else { return };
    let args = [
        "flash",
        &c.dev,
        "--image",
        image.to_str().unwrap(),
        "--grow",
        "--yes",
    ];
    ok(&sf(&args).output());
    tool_ok("sgdisk", &["-v", &c.dev]);
    let dump = tool_ok("sfdisk", &["--json", &c.dev]);
    let table: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let p3 = &table["partitiontable"]["partitions"][2];
    let last_usable = size / 512 - 34;
    assert_eq!(
        p3["start"].as_u64().unwrap() + p3["size"].as_u64().unwrap() - 1,
        last_usable,
        "{dump}"
    );
    tool_ok("e2fsck", &["-fn", &c.part(3)]);
    // -f: e2fsck -n above found it clean but records no check time.
    tool_ok("resize2fs", &["-f", &c.part(3)]);
    tool_ok("e2fsck", &["-fn", &c.part(3)]);
    let (old, new) = (Mount::ro(&a.part(3)), Mount::ro(&c.part(3)));
    same_tree(old.path(), new.path());
}

#[test]
fn backup_refuses_a_mounted_card_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let Some(a) = Card::new(512 * MIB) else {
        return;
    };
    let images = common::fixtures();
    ok(&sf(&common::pi4_flash_args(&a.dev, images.to_str().unwrap())).output());
    let _m = Mount::ro(&a.part(3));
    let out = tempfile::tempdir().unwrap();
    let image = out.path().join("card.img");
    let res = sf(&["backup", &a.dev, image.to_str().unwrap()]).output();
    common::refused(&res, 2, &["is mounted at", "unmount it first"]);
    common::nothing_left(out.path());
}
