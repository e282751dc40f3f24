//! Builds the pi/4 image from the fixtures and checks it with the tools the world trusts:
//! sfdisk, sgdisk, partx, fsck.fat, mtools, e2fsck, unsquashfs, blkid and the kernel itself
//! (loop device, partitions added with partx, read-only mounts).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use serde_json::Value;

/// The entry of JSON array `list` whose `key` is `value`.
fn entry(list: &Value, key: &str, value: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .cloned()
        .unwrap_or_else(|| panic!("no entry with {key} {value}"))
}

fn part(plan: &Value, id: &str) -> Value {
    entry(&plan["partitions"], "id", id)
}

#[test]
fn partition_table_is_valid_gpt_with_skiffos_layout() {
    if !need("sfdisk", "fdisk") || !need("sgdisk", "gdisk") || !need("partx", "util-linux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(&fixtures(), &img, &[]);
    let img = img.to_str().unwrap();

    let dump = tool_ok("sfdisk", &["--dump", img]);
    assert!(dump.contains("label: gpt"), "{dump}");
    let parts: Vec<&str> = dump.lines().filter(|l| l.contains(" : start=")).collect();
    assert_eq!(parts.len(), 3, "{dump}");
    assert!(
        parts[0].contains("type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
        "{dump}"
    );
    assert!(
        parts[1].contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{dump}"
    );
    assert!(
        parts[2].contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{dump}"
    );
    assert!(
        parts.iter().all(|p| p.contains("name=\"primary\"")),
        "{dump}"
    );
    assert!(
        parts[0].contains("start=        2048"),
        "boot starts at 1 MiB: {dump}"
    );

    let v = tool_ok("sgdisk", &["-v", img]);
    assert!(v.contains("No problems found"), "{v}");

    let (_, show) = tool("partx", &["--show", "-g", "-o", "NR,START,SECTORS", img]);
    let plan = plan_json("pi/4", &fixtures(), &[]);
    let rows: Vec<Vec<u64>> = show
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{show}");
    for (row, id) in rows.iter().zip(["boot", "rootfs", "persist"]) {
        let p = part(&plan, id);
        assert_eq!(row[1] * 512, p["start"].as_u64().unwrap(), "{id}: {show}");
        assert_eq!(row[2] * 512, p["size"].as_u64().unwrap(), "{id}: {show}");
        assert_eq!(row[1] % 2048, 0, "{id} is 1 MiB aligned");
    }
}

#[test]
fn boot_partition_is_clean_fat32_holding_every_file() {
    if !need("fsck.fat", "dosfstools")
        || !need("mcopy", "mtools")
        || !need("unsquashfs", "squashfs-tools")
    {
        return;
    }
    // The pi/4 images plus a rootfs.squashfs (a pi/4 build has none; SkiffOS's install
    // copies one when it is there), so the squashfs is checked on FAT too.
    let images = fixtures_with_squashfs();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(images.path(), &img, &[]);
    let plan = plan_json("pi/4", images.path(), &[]);
    let boot = part(&plan, "boot");
    let (start, size) = (
        boot["start"].as_u64().unwrap(),
        boot["size"].as_u64().unwrap(),
    );
    let fat = extract(&img, start, size);
    let fatp = fat.path().to_str().unwrap();

    let (code, out) = tool("fsck.fat", &["-n", "-v", fatp]);
    assert_eq!(code, 0, "fsck.fat -n: {out}");
    assert!(out.contains("32 bit entries"), "FAT32: {out}");
    let info = tool_ok("minfo", &["-i", fatp, "::"]);
    assert!(info.contains("disk type=\"FAT32   \""), "{info}");
    assert!(info.contains("BOOT"), "label: {info}");

    let out_dir = dir.path().join("boot");
    std::fs::create_dir(&out_dir).unwrap();
    fat_copy_out(fatp, &out_dir);

    let mut expected_files = 0;
    for e in boot["fs"]["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        let got = out_dir.join(path.trim_start_matches('/'));
        match e["type"].as_str().unwrap() {
            "dir" => assert!(got.is_dir(), "{path} is a directory on the card"),
            "file" => {
                expected_files += 1;
                let want = match (&e["source"]["path"], &e["source"]["text"]) {
                    (Value::String(p), _) => std::fs::read(p).unwrap(),
                    (_, Value::String(t)) => t.as_bytes().to_vec(),
                    other => panic!("bad source {other:?}"),
                };
                let got = std::fs::read(&got).unwrap_or_else(|e| panic!("{path}: {e}"));
                assert!(got == want, "{path} differs from its source");
            }
            other => panic!("unexpected {other} on FAT"),
        }
    }
    let mut on_card = 0;
    let mut stack = vec![out_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                on_card += 1
            }
        }
    }
    assert_eq!(
        on_card, expected_files,
        "the card holds exactly the planned files"
    );

    // What SkiffOS puts on a pi/4 boot partition; the uncompressed rootfs.cpio and
    // skiff-release stay behind.
    let images = images.path();
    for name in [
        "Image",
        "bcm2711-rpi-4-b.dtb",
        "bcm2711-rpi-400.dtb",
        "bcm2711-rpi-cm4.dtb",
        "bcm2711-rpi-cm4s.dtb",
        "bcm2712-rpi-5-b.dtb",
        "rootfs.cpio.lz4",
        "rootfs.squashfs",
        "start4x.elf",
        "fixup4x.dat",
        "overlays/vc4-kms-v3d.dtbo",
        "skiff-boot-extra.txt",
        "firmware/extra.bin",
    ] {
        assert!(out_dir.join(name).is_file(), "{name} on boot");
    }
    for name in ["rootfs.cpio", "skiff-release", "skiff-init"] {
        assert!(!out_dir.join(name).exists(), "{name} not on boot");
    }
    // The board's config.txt replaces Buildroot's default one from rpi-firmware/.
    let config = std::fs::read_to_string(out_dir.join("config.txt")).unwrap();
    assert!(
        config.contains("initramfs rootfs.cpio.lz4") && config.contains("arm_64bit=1"),
        "{config}"
    );
    assert_ne!(
        config,
        std::fs::read_to_string(images.join("rpi-firmware/config.txt")).unwrap()
    );
    let cmdline = std::fs::read_to_string(out_dir.join("cmdline.txt")).unwrap();
    assert!(cmdline.contains("root=/dev/ram0"), "{cmdline}");

    let l = tool_ok(
        "unsquashfs",
        &["-l", out_dir.join("rootfs.squashfs").to_str().unwrap()],
    );
    assert!(l.contains("usr/bin/hello"), "{l}");
}

#[test]
fn ext4_partitions_pass_e2fsck_and_mount_with_the_source_tree() {
    if !need("e2fsck", "e2fsprogs") || !need("blkid", "util-linux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(&fixtures(), &img, &[]);
    let Some(lo) = Loop::attach(&img, true) else {
        return;
    };

    for n in [2, 3] {
        let (code, out) = tool("e2fsck", &["-fn", &lo.part(n)]);
        assert_eq!(code, 0, "e2fsck -fn p{n}: {out}");
    }
    let tag = |name: &str| -> Vec<String> {
        (1..=3)
            .map(|n| {
                tool_ok("blkid", &["-o", "value", "-s", name, &lo.part(n)])
                    .trim()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(tag("LABEL"), ["BOOT", "rootfs", "persist"]);
    assert_eq!(tag("TYPE"), ["vfat", "ext4", "ext4"]);

    let persist = Mount::ro(&lo.part(3));
    let want = snapshot(&fixtures().join("persist_part"));
    let got = snapshot(persist.dir.path());
    assert_eq!(got.len(), want.len(), "same entries in persist");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, &g.1, g.2), (&w.0, &w.1, w.2), "path, kind and mode");
        assert!(g.3 == w.3, "{}: content or link target differs", g.0);
    }
    let root_md = std::fs::symlink_metadata(persist.dir.path().join("skiff/hostname")).unwrap();
    assert_eq!(
        (root_md.uid(), root_md.gid()),
        (0, 0),
        "files are owned by root"
    );
    drop(persist);

    let rootfs = Mount::ro(&lo.part(2));
    let got = std::fs::read(rootfs.dir.path().join("modules.squashfs")).unwrap();
    assert!(got == std::fs::read(fixtures().join("rootfs_part/modules.squashfs")).unwrap());
}

#[test]
fn same_inputs_and_epoch_give_identical_sparse_images() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("sub/b.img");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    build_pi4(&fixtures(), &a, &[]);
    build_pi4(&fixtures(), &b, &[]);
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ba.len(), bb.len());
    assert!(ba == bb, "two builds differ");

    // A different epoch changes timestamps, so the bytes.
    let c = dir.path().join("c.img");
    let f = fixtures();
    let out = std::process::Command::new(bin())
        .args([
            "build",
            "--board",
            "pi/4",
            "--images",
            f.to_str().unwrap(),
            "-o",
            c.to_str().unwrap(),
        ])
        .env("SOURCE_DATE_EPOCH", "1600000000")
        .output()
        .unwrap();
    ok(&out);
    assert!(std::fs::read(&c).unwrap() != ba);

    // Unused space is holes: far fewer blocks allocated than the image's size.
    let md = std::fs::metadata(&a).unwrap();
    assert!(
        md.blocks() * 512 < md.len() / 20,
        "{} of {} allocated",
        md.blocks() * 512,
        md.len()
    );
    // No temporary files left next to the outputs.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".manifest.json"))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn builds_unprivileged_with_an_empty_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The unprivileged user gets its own copy of the inputs (the fixtures may hold 0700
    // directories owned by whoever checked them out).
    let f = dir.path().join("images");
    copy_tree(&fixtures(), &f);
    if is_root() {
        chown_tree(&f, 65534);
    }
    let reference = dir.path().join("ref.img");
    build_pi4(&f, &reference, &[]);
    let img = dir.path().join("nobody.img");
    let args = [
        "build",
        "--board",
        "pi/4",
        "--images",
        f.to_str().unwrap(),
        "--output",
        img.to_str().unwrap(),
    ];
    // The binary is copied next to the inputs: the checkout it was built in may sit under a
    // directory the unprivileged user cannot enter.
    let exe = dir.path().join("skiff-flash");
    std::fs::copy(bin(), &exe).unwrap();
    let mut cmd = if is_root() {
        assert!(
            Path::new("/usr/bin/setpriv").exists(),
            "setpriv (util-linux) is needed to drop root"
        );
        let mut c = std::process::Command::new("/usr/bin/setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            exe.to_str().unwrap(),
        ]);
        c
    } else {
        std::process::Command::new(&exe)
    };
    let out = cmd
        .args(args)
        .env_clear()
        .env("PATH", "")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    ok(&out);
    let md = std::fs::metadata(&img).unwrap();
    if is_root() {
        assert_eq!(md.uid(), 65534, "built by the unprivileged user");
    }
    assert!(
        std::fs::read(&img).unwrap() == std::fs::read(&reference).unwrap(),
        "same bytes whoever builds"
    );
}

#[test]
fn size_option_grows_persist_to_the_end_of_the_disk() {
    if !need("sgdisk", "gdisk") || !need("e2fsck", "e2fsprogs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(&fixtures(), &img, &["--size", "2GiB"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 << 30);
    let plan = plan_json("pi/4", &fixtures(), &["--size", "2GiB"]);
    let p = part(&plan, "persist");
    let end = p["start"].as_u64().unwrap() + p["size"].as_u64().unwrap();
    // The last 1 MiB boundary before the backup GPT.
    assert_eq!(end, (2u64 << 30) - (1 << 20));
    let v = tool_ok("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let Some(lo) = Loop::attach(&img, true) else {
        return;
    };
    let (code, out) = tool("e2fsck", &["-fn", &lo.part(3)]);
    assert_eq!(code, 0, "{out}");
    let persist = Mount::ro(&lo.part(3));
    let st = tool_ok(
        "df",
        &["-B1", "--output=size", persist.dir.path().to_str().unwrap()],
    );
    let fs_size: u64 = st.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(fs_size > 1_800_000_000, "persist fills the disk: {fs_size}");
}

fn chown_tree(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), id);
        }
    }
}

/// Inputs of 4 MiB or more are hashed ahead on threads of their own, and their hashes are
/// settled at the end: the manifest must hold each one's real SHA-256 (never a placeholder),
/// and the filesystems the bytes themselves, in FAT (kernel) and in ext4 (persist).
#[test]
fn large_inputs_land_whole_and_are_recorded_with_their_sha256() {
    if !need("mcopy", "mtools") || !need("debugfs", "e2fsprogs") {
        return;
    }
    let images = images_copy();
    let kernel = arm64_image(6 << 20);
    std::fs::write(images.path().join("Image"), &kernel).unwrap();
    let blob = prng::noise("big persist file", (5 << 20) + 123);
    std::fs::write(images.path().join("persist_part/big.bin"), &blob).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(images.path(), &img, &[]);

    let text = std::fs::read_to_string(dir.path().join("pi4.img.manifest.json")).unwrap();
    assert!(!text.contains("unsettled"), "a placeholder in the manifest");
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let record =
        |part_id: &str, path: &str| entry(&part(&manifest, part_id)["files"], "path", path);
    assert_eq!(
        record("boot", "/Image")["sha256"],
        skiff_flash::io::sha256(&kernel)
    );
    assert_eq!(
        record("persist", "/big.bin")["sha256"],
        skiff_flash::io::sha256(&blob)
    );

    let plan = plan_json("pi/4", images.path(), &[]);
    let span = |id: &str| {
        let p = part(&plan, id);
        (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
    };
    let (start, size) = span("boot");
    let fat = extract(&img, start, size);
    let out = tempfile::tempdir().unwrap();
    fat_copy_out(fat.path().to_str().unwrap(), out.path());
    assert!(std::fs::read(out.path().join("Image")).unwrap() == kernel);
    let (start, size) = span("persist");
    let ext = extract(&img, start, size);
    let dumped = out.path().join("big.bin");
    let (code, msg) = tool(
        "debugfs",
        &[
            "-R",
            &format!("dump /big.bin {}", dumped.display()),
            ext.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "debugfs: {msg}");
    assert!(std::fs::read(&dumped).unwrap() == blob);
}
