//! See tests/hostile.rs.

use std::path::Path;

use crate::common::*;

/// A copy of the pi4 fixture's images directory.
/// A copy of the pi/4 fixture with a squashfs added (pi/4 copies one when present).
fn images() -> tempfile::TempDir {
    fixtures_with_squashfs()
}

/// A board directory with `boards/test/NAME.toml` = `board` and each `layouts/N.toml`.
fn board_dir(name: &str, board: &str, layouts: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("boards/test")).unwrap();
    std::fs::create_dir_all(d.path().join("layouts")).unwrap();
    std::fs::write(d.path().join(format!("boards/test/{name}.toml")), board).unwrap();
    for (n, text) in layouts {
        std::fs::write(d.path().join(format!("layouts/{n}.toml")), text).unwrap();
    }
    d
}

// --- file artifacts ------------------------------------------------------------------------

#[test]
fn a_directory_where_the_squashfs_belongs_is_refused() {
    let d = images();
    let p = d.path().join("rootfs.squashfs");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    pi4_refused(
        d.path(),
        &[
            p.to_str().unwrap(),
            "is a directory, expected a non-empty file",
        ],
    );
}

#[test]
fn a_directory_named_image_is_refused() {
    let d = images();
    let p = d.path().join("Image");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("inner"), b"x").unwrap();
    pi4_refused(d.path(), &[p.to_str().unwrap(), "is a directory"]);
}

#[test]
fn an_empty_kernel_is_refused() {
    let d = images();
    let p = d.path().join("Image");
    std::fs::write(&p, b"").unwrap();
    pi4_refused(d.path(), &[p.to_str().unwrap(), "is empty"]);
}

#[test]
fn a_kernel_without_its_magic_is_refused() {
    let d = images();
    let p = d.path().join("Image");
    std::fs::write(&p, vec![0x5a; 4096]).unwrap();
    pi4_refused(
        d.path(),
        &[p.to_str().unwrap(), "not an arm64 kernel Image", "0x38"],
    );
}

#[test]
fn a_dtb_without_its_magic_is_refused() {
    let d = images();
    let p = d.path().join("bcm2711-rpi-400.dtb");
    std::fs::write(&p, b"not a device tree").unwrap();
    pi4_refused(
        d.path(),
        &[
            p.to_str().unwrap(),
            "not a flattened device tree",
            "d00dfeed",
        ],
    );
}

#[test]
fn a_zimage_and_bzimage_without_their_magic_are_refused() {
    // pi/3 takes a 32-bit zImage when there is no Image.
    let d = images();
    std::fs::remove_file(d.path().join("Image")).unwrap();
    let z = d.path().join("zImage");
    std::fs::write(&z, vec![0u8; 4096]).unwrap();
    build_refused(
        d.path(),
        "pi/3",
        &[],
        "out.img",
        &[z.to_str().unwrap(), "zImage", "0x016f2818"],
    );
    // With the magic in place the same kernel passes.
    let mut k = vec![0u8; 4096];
    k[0x24..0x28].copy_from_slice(&0x016f_2818u32.to_le_bytes());
    std::fs::write(&z, &k).unwrap();
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("a.img");
    build("pi/3", d.path(), &img, &[]);
}

// --- offsets and sizes ---------------------------------------------------------------------

const NEAR_2_64: &str = "18446744073709551000";

fn raw_board(offset: &str) -> tempfile::TempDir {
    board_dir(
        "far",
        &format!(
            "description = \"pi/4 with a raw blob far away\"\ninherit = \"pi/4\"\n\n\
             [[raw]]\nname = \"blob\"\nfrom = \"blob.bin\"\noffset = {offset}\n"
        ),
        &[],
    )
}

#[test]
fn a_raw_write_near_2_64_is_refused_naming_the_field() {
    let d = images();
    std::fs::write(d.path().join("blob.bin"), vec![7u8; 4096]).unwrap();
    let b = raw_board(NEAR_2_64);
    let dir = b.path().to_str().unwrap();
    for out in ["out.img", "out.img.zst"] {
        build_refused(
            d.path(),
            "test/far",
            &["--board-dir", dir],
            out,
            &["board test/far", "raw write `blob`", "`offset`", NEAR_2_64],
        );
    }
}

#[test]
fn a_size_near_2_64_is_refused_naming_the_option() {
    build_refused(
        &fixtures(),
        "pi/4",
        &["--size", "18446744073709551104"],
        "out.img",
        &["--size", "18446744073709551104", "largest supported"],
    );
}

#[test]
fn layout_offsets_near_2_64_are_refused_naming_partition_and_field() {
    let layout = include_str!("../../layouts/pi-gpt.toml").replace(
        "id = \"persist\"\n",
        &format!("id = \"persist\"\noffset = {NEAR_2_64}\n"),
    );
    assert!(layout.contains(NEAR_2_64));
    let b = board_dir(
        "farpart",
        "description = \"x\"\ninherit = \"pi/4\"\nlayout = \"far\"\n",
        &[("far", &layout)],
    );
    build_refused(
        &fixtures(),
        "test/farpart",
        &["--board-dir", b.path().to_str().unwrap()],
        "out.img",
        &["layout `far` partition `persist`", "`offset`", NEAR_2_64],
    );
}

// --- GPT entry count ----------------------------------------------------------------------

#[test]
fn a_gpt_layout_with_129_partitions_is_refused_at_plan_time() {
    // pi-gpt's three partitions and 126 more.
    let mut layout = include_str!("../../layouts/pi-gpt.toml").to_string();
    for i in 4..=129 {
        layout +=
            &format!("\n[[partition]]\nid = \"p{i}\"\ngpt_type = \"linux\"\nsize = \"1MiB\"\n");
    }
    let b = board_dir(
        "many",
        "description = \"x\"\ninherit = \"pi/4\"\nlayout = \"many\"\n",
        &[("many", &layout)],
    );
    let dir = b.path().to_str().unwrap();
    build_refused(
        &fixtures(),
        "test/many",
        &["--board-dir", dir],
        "out.img",
        &["layout `many` has 129 partitions", "at most 128"],
    );
    // 128 partitions are a valid GPT.
    let fits = layout.replace(
        "\n[[partition]]\nid = \"p129\"",
        "\n[[ignored]]\nid = \"p129\"",
    );
    let fits = fits.split("\n[[ignored]]").next().unwrap().to_string();
    let b128 = board_dir(
        "many",
        "description = \"x\"\ninherit = \"pi/4\"\nlayout = \"many\"\n",
        &[("many", &fits)],
    );
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("a.img");
    ok(&run(&[
        "build",
        "--board-dir",
        b128.path().to_str().unwrap(),
        "--board",
        "test/many",
        "--images",
        fixtures().to_str().unwrap(),
        "--output",
        img.to_str().unwrap(),
    ]));
    if need("sgdisk", "gdisk") {
        let (code, v) = tool("sgdisk", &["-v", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{v}");
        assert!(v.contains("No problems found"), "{v}");
    }
    // `plan` refuses the same way, before any device is opened.
    let out = run(&[
        "plan",
        "--board-dir",
        dir,
        "--board",
        "test/many",
        "--images",
        fixtures().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("at most 128") && !err.contains("panick"),
        "{err}"
    );
}

// --- symlinks -----------------------------------------------------------------------------

#[test]
fn a_fat_symlink_out_of_the_images_dir_is_refused() {
    let d = images();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), b"host secret").unwrap();
    let link = d.path().join("boot_part/x");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    pi4_refused(
        d.path(),
        &[link.to_str().unwrap(), "outside the images directory"],
    );
    // A relative link climbing out is refused too.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../etc/hostname", &link).unwrap();
    pi4_refused(
        d.path(),
        &[link.to_str().unwrap(), "outside the images directory"],
    );
}

#[test]
fn a_fat_symlink_inside_the_images_dir_is_copied_and_ext4_links_stay_links() {
    let d = images();
    std::os::unix::fs::symlink("../skiff-release", d.path().join("boot_part/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d.path().join("rootfs_part/shadow-link")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("a.img");
    let plan = ok(&run(&[
        "plan",
        "--board",
        "pi/4",
        "--images",
        d.path().to_str().unwrap(),
        "--json",
        "-v",
    ]));
    assert!(plan.contains("shadow-link"), "{plan}");
    build_pi4(d.path(), &img, &[]);
}

// --- FAT directory size -------------------------------------------------------------------

#[test]
fn a_fat_directory_over_65536_slots_is_refused_naming_it() {
    let d = images();
    let big = d.path().join("boot_part/many");
    std::fs::create_dir(&big).unwrap();
    // 8.3 names take one slot each: 65,534 files plus `.` and `..` fill the directory, one
    // more overflows it.
    for i in 0..65_535u32 {
        std::fs::File::create(big.join(format!("{i:08X}.TXT"))).unwrap();
    }
    pi4_refused(d.path(), &["boot", "/many", "65537", "at most 65536 slots"]);
    std::fs::remove_file(big.join("00000000.TXT")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("a.img");
    build_pi4(d.path(), &img, &[]);
}

// --- squashfs -----------------------------------------------------------------------------

/// The fixture's rootfs.squashfs with `edit` applied to its bytes (the superblock fields are
/// little-endian: bytes_used at 40, inode table at 64, directory table at 72).
fn squashfs_edited(edit: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let d = images();
    let p = d.path().join("rootfs.squashfs");
    let mut b = std::fs::read(&p).unwrap();
    edit(&mut b);
    std::fs::write(&p, &b).unwrap();
    d
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The error line of a `plan` that must refuse with exit 2.
fn plan_refused(images: &Path) -> String {
    let out = run(&[
        "plan",
        "--board",
        "pi/4",
        "--images",
        images.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

/// unsquashfs (the reference reader) refuses the image as well.
fn unsquashfs_refuses(images: &Path) {
    if need("unsquashfs", "squashfs-tools") {
        let dest = tempfile::tempdir().unwrap();
        let to = dest.path().join("x");
        let (code, out) = tool(
            "unsquashfs",
            &[
                "-n",
                "-d",
                to.to_str().unwrap(),
                images.join("rootfs.squashfs").to_str().unwrap(),
            ],
        );
        assert_ne!(code, 0, "unsquashfs accepted it:\n{out}");
    }
}

#[test]
fn a_squashfs_whose_bytes_used_is_smaller_than_its_tables_is_refused() {
    let d = squashfs_edited(|b| b[40..48].copy_from_slice(&200u64.to_le_bytes()));
    unsquashfs_refuses(d.path());
    let err = plan_refused(d.path());
    assert!(
        err.contains("rootfs.squashfs: not a valid squashfs: the "),
        "{err}"
    );
    assert!(
        err.contains("outside the 200 bytes") && err.contains("bytes_used"),
        "{err}"
    );
}

#[test]
fn a_squashfs_with_a_corrupt_directory_table_says_what_is_wrong() {
    let d = squashfs_edited(|b| {
        let dir = u64_at(b, 72) as usize;
        let inodes = u64_at(b, 64) as usize;
        assert!(inodes < dir);
        // Metadata block headers and contents turned to junk.
        for x in &mut b[dir..dir + 64] {
            *x = 0xA5;
        }
    });
    unsquashfs_refuses(d.path());
    let err = plan_refused(d.path());
    let reason = err
        .split("not a valid squashfs: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"));
    assert!(reason.trim().len() > 10, "a reason is given: {err}");
}

#[test]
fn a_squashfs_whose_root_inode_lies_outside_the_inode_table_is_refused() {
    let d = squashfs_edited(|b| {
        let far = (u64_at(b, 72) - u64_at(b, 64) + 1) << 16;
        b[32..40].copy_from_slice(&far.to_le_bytes());
    });
    unsquashfs_refuses(d.path());
    let err = plan_refused(d.path());
    assert!(err.contains("root inode"), "{err}");
}

#[test]
fn a_squashfs_with_a_bad_magic_or_version_says_so() {
    let d = squashfs_edited(|b| b[28..30].copy_from_slice(&3u16.to_le_bytes()));
    let err = plan_refused(d.path());
    assert!(err.contains("version 3.0"), "{err}");
    let d = squashfs_edited(|b| b[0..4].copy_from_slice(b"junk"));
    let err = plan_refused(d.path());
    assert!(err.contains("no squashfs magic"), "{err}");
}

// --- MBR logical partitions ---------------------------------------------------------------

/// A 64 MiB image: a FAT-typed primary, an extended partition with five logical ones (sfdisk
/// writes the chain), an ext4 labelled `L7` in logical partition 7.
fn logical_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("l.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    need("sfdisk", "fdisk");
    need("mkfs.ext4", "e2fsprogs");
    let script = "label: dos\nstart=2048, size=16384, type=c\nstart=18432, type=5\n\
                  size=8192, type=83\nsize=8192, type=83\nsize=8192, type=83\n\
                  size=8192, type=83\nsize=8192, type=83\n";
    tool_input_ok("sfdisk", &["-q", img.to_str().unwrap()], script);
    let p7 = 40960u64 * 512;
    tool_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "L7",
            "-E",
            &format!("offset={p7}"),
            img.to_str().unwrap(),
            "4M",
        ],
    );
    img
}

fn inspect_json(img: &Path) -> serde_json::Value {
    let out = run(&["inspect", "--json", img.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect --json: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn inspect_reads_logical_mbr_partitions() {
    let d = tempfile::tempdir().unwrap();
    let img = logical_image(d.path());
    // sfdisk is the reference for where the logical partitions are.
    let dump: serde_json::Value =
        serde_json::from_str(&tool_ok("sfdisk", &["-J", img.to_str().unwrap()])).unwrap();
    let want: Vec<(u64, u64)> = dump["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "83")
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect();
    assert_eq!(want.len(), 5);
    let j = inspect_json(&img);
    let parts = j["partitions"].as_array().unwrap();
    let logical: Vec<&serde_json::Value> = parts
        .iter()
        .filter(|p| p["number"].as_u64().unwrap() >= 5)
        .collect();
    let got: Vec<(u64, u64)> = logical
        .iter()
        .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want, "{j:#}");
    let numbers: Vec<u64> = logical
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [5, 6, 7, 8, 9]);
    let p7 = logical[2];
    assert_eq!(p7["fs"]["kind"], "ext4", "{p7:#}");
    assert_eq!(p7["fs"]["label"], "L7", "{p7:#}");
    let problems = j["problems"].to_string();
    assert!(
        !problems.contains("partition 2 "),
        "the container is no problem: {problems}"
    );
}

#[test]
fn inspect_stops_on_a_looping_or_escaping_ebr_chain() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let img = logical_image(d.path());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    // The last logical partition's boot record links back to the first record: relative
    // start 0, type 0x05.
    let dump: serde_json::Value =
        serde_json::from_str(&tool_ok("sfdisk", &["-J", img.to_str().unwrap()])).unwrap();
    let parts = dump["partitiontable"]["partitions"].as_array().unwrap();
    let ext_start = parts[1]["start"].as_u64().unwrap() * 512;
    let last_start = parts[6]["start"].as_u64().unwrap() * 512;
    // Find the last record: the one whose own entry points at the last partition.
    let mut rec = None;
    for k in (0..(last_start - ext_start) / 512).rev() {
        let s = ext_start + k * 512;
        let mut b = [0u8; 512];
        f.read_exact_at(&mut b, s).unwrap();
        let rel = u64::from(u32::from_le_bytes(b[454..458].try_into().unwrap()));
        if b[510..512] == [0x55, 0xAA] && b[450] == 0x83 && s + rel * 512 == last_start {
            rec = Some(s);
            break;
        }
    }
    let rec = rec.expect("the last boot record");
    let mut link = [0u8; 16];
    link[4] = 0x05;
    link[12..16].copy_from_slice(&1u32.to_le_bytes());
    f.write_all_at(&link, rec + 462).unwrap();
    let out = run_limited(30, &["inspect", "--json", img.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["problems"].to_string().contains("loops"), "{j:#}");
    assert_eq!(
        j["partitions"].as_array().unwrap().len(),
        7,
        "the five logical partitions are listed once: {j:#}"
    );
    // A link that leaves the extended partition.
    link[8..12].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    f.write_all_at(&link, rec + 462).unwrap();
    let j = inspect_json(&img);
    assert!(
        j["problems"]
            .to_string()
            .contains("outside the extended partition"),
        "{j:#}"
    );
}

// --- meaning verify and the backup GPT ----------------------------------------------------

/// A fresh pi/4 image (with its manifest beside it).
fn built_pi4(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("pi4.img");
    build_pi4(&fixtures(), &img, &[]);
    img
}

/// `verify TARGET --board pi/4 --json`: (exit code, findings as text).
fn verify_meaning(target: &str) -> (i32, String) {
    let out = run(&[
        "verify",
        target,
        "--json",
        "--board",
        "pi/4",
        "--images",
        fixtures().to_str().unwrap(),
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn meaning_verify_reports_a_corrupt_backup_gpt() {
    let d = tempfile::tempdir().unwrap();
    let img = built_pi4(d.path());
    let p = img.to_str().unwrap();
    let (code, v) = verify_meaning(p);
    assert_eq!(code, 0, "a fresh image verifies: {v}");
    let size = std::fs::metadata(&img).unwrap().len();
    // A byte of the backup header's disk GUID (header CRC breaks), then of the backup entry
    // array (array CRC breaks).
    for (at, what) in [
        (size - 512 + 60, "header"),
        (size - 33 * 512 + 20, "entry array"),
    ] {
        xor_byte(&img, at, 0x40);
        if need("sgdisk", "gdisk") {
            let (_, s) = tool("sgdisk", &["-v", p]);
            assert!(
                s.contains("corrupt") || !s.contains("No problems found"),
                "sgdisk sees the damage: {s}"
            );
        }
        let (code, v) = verify_meaning(p);
        assert_eq!(
            code, 1,
            "corrupt backup {what} must fail meaning verify: {v}"
        );
        assert!(v.contains("backup GPT") && v.contains("CRC"), "{what}: {v}");
        xor_byte(&img, at, 0x40);
        assert_eq!(verify_meaning(p).0, 0);
    }
}

// --- flashing images onto larger cards, interrupted flashes --------------------------------

/// A raw pi/4 image with its block map, in `dir`.
fn built_pi4_bmap(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("pi4.img");
    build_pi4(&fixtures(), &img, &["--bmap"]);
    img
}

/// A 1 GiB card with a pi/4 image (built with its block map, kept in the returned
/// directory) flashed onto it.
fn flashed_card() -> Option<(Card, tempfile::TempDir, std::path::PathBuf)> {
    let card = Card::new(1 << 30)?;
    let d = tempfile::tempdir().unwrap();
    let img = built_pi4_bmap(d.path());
    flash_image_ok(&card.dev, &img);
    Some((card, d, img))
}

#[test]
fn byte_verify_of_an_image_flashed_onto_a_larger_card_passes() {
    if !need("sgdisk", "gdisk") {
        return;
    }
    let Some((card, d, img)) = flashed_card() else {
        return;
    };
    let image = img.to_str().unwrap();
    // The backup GPT was moved to the card's end: sgdisk agrees the table is sound.
    let v = tool_ok("sgdisk", &["-v", &card.dev]);
    assert!(v.contains("No problems found"), "{v}");
    for with_bmap in [true, false] {
        if !with_bmap {
            // Without a block map every byte of the image is compared.
            std::fs::rename(d.path().join("pi4.img.bmap"), d.path().join("saved.bmap")).unwrap();
        }
        let out = run(&["verify", &card.dev, "--image", image, "--bytes", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "byte verify after flash (bmap: {with_bmap}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(d.path().join("saved.bmap"), d.path().join("pi4.img.bmap")).unwrap();
    // A byte of the moved backup header is checked too.
    let last = std::fs::metadata(&card.backing).unwrap().len() - 512;
    xor_byte(&card.backing, last + 60, 0x40);
    let out = run(&["verify", &card.dev, "--image", image, "--bytes", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("backup GPT"), "{text}");
}

/// Flashes the pi/4 image (or with `board`, the board straight from the images) onto a card
/// that holds a valid table, stopping it with `signal` after `after` device writes; then no
/// partition table may be found.
fn interrupted_flash_leaves_no_table(signal: &str, after: &str) {
    interrupted_flash(signal, after, false);
}

fn interrupted_flash(signal: &str, after: &str, board: bool) {
    if !need("sfdisk", "fdisk") || !need("blkid", "util-linux") {
        return;
    }
    // An old, valid card first.
    let Some((card, _d, img)) = flashed_card() else {
        return;
    };
    let image = img.to_str().unwrap();
    assert!(tool("sfdisk", &["--dump", &card.dev]).1.contains("start="));
    let f = fixtures();
    let args: Vec<&str> = if board {
        [
            &["flash"][..],
            &pi4_flash_args(&card.dev, f.to_str().unwrap()),
        ]
        .concat()
    } else {
        vec!["flash", &card.dev, "--image", image, "--yes"]
    };
    let out = sf(&args)
        .envs(&[
            ("SKIFF_FLASH_FAULT_AFTER_WRITES", after),
            ("SKIFF_FLASH_FAULT_SIGNAL", signal),
        ])
        .output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fault injected"),
        "no fault was injected: this binary lacks fault injection; build the tests with \
         `cargo test --features fault-injection` (scripts/test.sh does): {err}"
    );
    assert!(!out.status.success(), "{err}");
    if signal == "KILL" {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("interrupted"), "{err}");
    }
    // Mid-write: the boot FAT (at 1 MiB) is already on the card...
    let mut boot = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&card.dev).unwrap(),
        &mut boot,
        1 << 20,
    )
    .unwrap();
    if signal == "KILL" {
        assert_eq!(
            &boot[82..87],
            b"FAT32",
            "the kill came after the FAT was written"
        );
    }
    // ...but neither table tool finds a table.
    let (code, dump) = tool("sfdisk", &["--dump", &card.dev]);
    assert!(
        code != 0 || !dump.contains("start="),
        "a table survived: {dump}"
    );
    let (_, probe) = tool("blkid", &["-p", "-o", "export", &card.dev]);
    assert!(!probe.contains("PTTYPE"), "blkid finds a table: {probe}");
}

#[test]
fn a_killed_image_flash_leaves_no_table() {
    interrupted_flash_leaves_no_table("KILL", "6");
}

#[test]
fn an_interrupted_image_flash_wipes_the_table() {
    interrupted_flash_leaves_no_table("INT", "6");
}

#[test]
fn a_terminated_image_flash_wipes_the_table() {
    interrupted_flash_leaves_no_table("TERM", "3");
}

#[test]
fn a_hung_up_board_flash_wipes_the_table() {
    interrupted_flash("HUP", "4", true);
}
