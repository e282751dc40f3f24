//! skiff-flash against genimage 16 on every config in fixtures/genimage/: both tools get the
//! same synthetic inputs and the results are compared — partition tables (`sfdisk --json`:
//! starts, sizes, types, flags, names, first/last usable LBA, and identifiers where the config
//! fixes them), raw blobs byte for byte, FAT partitions file for file (mtools), ext4
//! partitions (e2fsck clean, prebuilt images byte-identical, built ones file for file through
//! debugfs). Malformed configs get one-line errors with file and line and exit code 2.
//!
//! Each config says what it needs in comments: `# input: PATH KIND` (a file in the images
//! directory), `# root: PATH KIND` (a file in the rootpath), `# env: NAME=VALUE`. Kinds:
//! `random SIZE` (pseudo-random bytes), `text`, `ext2 SIZE`/`ext4 SIZE` (mke2fs -d of a small
//! tree). Sizes take K and M.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::process::Output;

use common::*;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/genimage")
}

/// What a fixture asks for.
#[derive(Default)]
struct Spec {
    inputs: Vec<(String, String)>,
    root: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

fn spec(cfg: &Path) -> Spec {
    let text = std::fs::read_to_string(cfg).unwrap();
    let mut s = Spec::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((word, rest)) = rest.split_once(": ") else {
            continue;
        };
        let entry = || {
            let (path, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            (path.to_string(), kind.to_string())
        };
        match word {
            "input" => s.inputs.push(entry()),
            "root" => s.root.push(entry()),
            "env" => {
                let (k, v) = rest.split_once('=').unwrap();
                s.env.push((k.to_string(), v.to_string()));
            }
            _ => {}
        }
    }
    s
}

fn size_of(text: &str) -> u64 {
    let t = text.trim();
    let (n, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1024),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        _ => (t, 1),
    };
    n.parse::<u64>().unwrap() * mult
}

/// Creates one input described as `KIND [SIZE]`.
fn make(path: &Path, kind: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (k, arg) = kind.split_once(' ').unwrap_or((kind, ""));
    match k {
        "random" => std::fs::write(path, noise(&name, size_of(arg))).unwrap(),
        "text" => std::fs::write(path, format!("# {name}\nkey=value\nboard=test\n")).unwrap(),
        "ext2" | "ext4" => {
            let tree = tempfile::tempdir().unwrap();
            let t = tree.path();
            std::fs::create_dir_all(t.join("etc/init.d")).unwrap();
            std::fs::write(t.join("etc/hostname"), format!("{name}\n")).unwrap();
            std::fs::write(t.join("etc/init.d/rcS"), "#!/bin/sh\necho up\n").unwrap();
            std::fs::write(t.join("bin.dat"), noise(&name, 300_000)).unwrap();
            std::os::unix::fs::symlink("etc/hostname", t.join("hostname")).unwrap();
            let size = format!("{}k", size_of(arg) / 1024);
            tool_ok(
                "mke2fs",
                &[
                    "-q",
                    "-F",
                    "-t",
                    k,
                    "-d",
                    t.to_str().unwrap(),
                    path.to_str().unwrap(),
                    &size,
                ],
            );
        }
        other => panic!("unknown input kind `{other}`"),
    }
}

const TOOLS: &[(&str, &str)] = &[
    ("genimage", "genimage"),
    ("sfdisk", "fdisk"),
    ("mke2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkdosfs", "dosfstools"),
    ("fsck.fat", "dosfstools"),
    ("mdir", "mtools"),
    ("mcopy", "mtools"),
    ("minfo", "mtools"),
];

/// Both tools' outputs for one config.
struct Run {
    _tmp: tempfile::TempDir,
    cfg: String,
    genimage: PathBuf,
    ours: PathBuf,
    plan: Value,
    scratch: PathBuf,
}

fn run_both(name: &str) -> Option<Run> {
    if !TOOLS.iter().all(|(t, p)| need(t, p)) {
        return None;
    }
    let cfg = dir().join(name);
    let s = spec(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (input, root, out_g, out_s, scratch) = (
        base.join("input"),
        base.join("root"),
        base.join("genimage-out"),
        base.join("ours"),
        base.join("scratch"),
    );
    for d in [&input, &root, &out_s, &scratch] {
        std::fs::create_dir_all(d).unwrap();
    }
    for (p, k) in &s.inputs {
        make(&input.join(p), k);
    }
    for (p, k) in &s.root {
        make(&root.join(p), k);
    }
    let g = Command::new("genimage")
        .current_dir(dir())
        .envs(s.env.iter().cloned())
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .args(["--config", cfg.to_str().unwrap()])
        .args(["--inputpath", input.to_str().unwrap()])
        .args(["--outputpath", out_g.to_str().unwrap()])
        .args(["--rootpath", root.to_str().unwrap()])
        .args(["--tmppath", base.join("tmp").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        g.status.success(),
        "genimage failed on {name}:\n{}",
        String::from_utf8_lossy(&g.stderr)
    );
    let disk_name = image_name(&cfg);
    let ours = out_s.join(&disk_name);
    let mut run = sf(&[
        "build",
        "--json",
        "--genimage",
        cfg.to_str().unwrap(),
        "--images",
        input.to_str().unwrap(),
        "--rootpath",
        root.to_str().unwrap(),
        "--output",
        ours.to_str().unwrap(),
    ])
    .dir(&dir());
    for (k, v) in &s.env {
        run = run.env(k, v);
    }
    let o = run.epoch(EPOCH).output();
    let stdout = ok(&o);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    Some(Run {
        _tmp: tmp,
        cfg: std::fs::read_to_string(&cfg).unwrap(),
        genimage: out_g.join(&disk_name),
        ours,
        plan: report["plan"].clone(),
        scratch,
    })
}

/// The hdimage's name: the title of the image section that holds `hdimage`.
fn image_name(cfg: &Path) -> String {
    let text = std::fs::read_to_string(cfg).unwrap();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("image ").filter(|r| !r.contains('=')) {
            current = rest
                .trim_end_matches('{')
                .trim()
                .trim_matches('"')
                .to_string();
        }
        if t.starts_with("hdimage") {
            return current;
        }
    }
    panic!("no hdimage in {}", cfg.display());
}

/// `sfdisk --json` with what differs by nature left out: device paths, and identifiers the
/// config does not fix (genimage makes those random).
fn table(img: &Path, cfg: &str) -> Value {
    let out = Command::new("sfdisk")
        .args(["--json", img.to_str().unwrap()])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "sfdisk --json {}", img.display());
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fixed = |s: &str| cfg.to_lowercase().contains(&s.to_lowercase());
    let t = &mut v["partitiontable"];
    t.as_object_mut().unwrap().remove("device");
    if let Some(id) = t["id"].as_str()
        && t["label"] == "gpt"
        && !fixed(id)
    {
        t.as_object_mut().unwrap().remove("id");
    }
    for p in t["partitions"].as_array_mut().unwrap() {
        let p = p.as_object_mut().unwrap();
        p.remove("node");
        if let Some(u) = p.get("uuid").and_then(Value::as_str)
            && !fixed(u)
        {
            p.remove("uuid");
        }
    }
    v
}

/// `skiff-flash inspect --json`'s view of the filesystem of the partition at `start`.
fn inspect_fs(img: &Path, start: u64) -> Value {
    let out = run(&["inspect", "--json", img.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["start"].as_u64() == Some(start))
        .map(|p| p["fs"].clone())
        .unwrap_or_else(|| panic!("inspect finds no partition at {start}: {v}"))
}

/// `fsck.fat -n -v`'s account of a FAT volume's geometry (type, sector, cluster, reserved,
/// FAT, root directory and data sizes, sectors per track and heads); fails when fsck.fat
/// finds anything wrong.
fn fat_geometry(part: &Path) -> String {
    let out = tool_ok("fsck.fat", &["-n", "-v", part.to_str().unwrap()]);
    out.lines()
        .filter(|l| {
            [
                "bytes per logical sector",
                "bytes per cluster",
                "reserved sector",
                "bit entries",
                "bytes per FAT",
                "root directory entries",
                "Root directory start",
                "Data area starts",
                "data clusters",
                "sectors/track",
                "sectors total",
                "Media byte",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

/// mtools' view of a FAT filesystem at `offset`: every path, and every file's bytes.
fn fat_files(img: &Path, offset: u64, scratch: &Path) -> BTreeMap<String, Vec<u8>> {
    let at = format!("{}@@{offset}", img.display());
    let list = tool_ok("mdir", &["-/", "-b", "-i", &at, "::"]);
    let mut out = BTreeMap::new();
    for path in list.lines().filter(|l| l.starts_with("::")) {
        if path.ends_with('/') {
            out.insert(path.to_string(), Vec::new());
            continue;
        }
        let dest = scratch.join("fat-file");
        let _ = std::fs::remove_file(&dest);
        tool_ok("mcopy", &["-n", "-i", &at, path, dest.to_str().unwrap()]);
        out.insert(path.to_string(), std::fs::read(&dest).unwrap());
    }
    out
}

/// debugfs' view of an ext4 filesystem: every entry with its mode and content.
fn ext4_files(
    img: &Path,
    offset: u64,
    len: u64,
    scratch: &Path,
) -> Vec<(String, String, u32, Vec<u8>)> {
    let part = extract(img, offset, len);
    let (code, out) = tool("e2fsck", &["-fn", part.path().to_str().unwrap()]);
    assert_eq!(code, 0, "e2fsck on {} at {offset}:\n{out}", img.display());
    let dest = scratch.join(format!(
        "ext4-{offset}-{}",
        img.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dest).unwrap();
    tool_ok(
        "debugfs",
        &[
            "-R",
            &format!("rdump / {}", dest.display()),
            part.path().to_str().unwrap(),
        ],
    );
    snapshot(&dest)
}

/// What matched, for the summary line.
#[derive(Default)]
struct Tally {
    raw: usize,
    images: usize,
    fat_files: usize,
    ext4_files: usize,
    ebrs: usize,
    fat_types: Vec<String>,
    inspected: usize,
}

/// Both disks hold `want` at `at`; `what` names it in a failure.
fn both_hold(r: &Run, at: u64, want: &[u8], what: &str) {
    let len = want.len() as u64;
    assert_eq!(read_range(&r.ours, at, len), want, "{what} in ours");
    assert_eq!(
        read_range(&r.genimage, at, len),
        want,
        "{what} in genimage's"
    );
}

fn compare(r: &Run) -> Tally {
    let mut t = Tally::default();
    let disk = r.plan["disk_size"].as_u64().unwrap();
    let ours_len = std::fs::metadata(&r.ours).unwrap().len();
    let theirs_len = std::fs::metadata(&r.genimage).unwrap().len();
    // genimage ends its file at the last byte it wrote (unless `fill` or a backup GPT sits
    // at the end); on a card the disk goes on. Read its table as a card would hold it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&r.genimage)
        .unwrap()
        .set_len(disk.max(theirs_len))
        .unwrap();
    assert_eq!(
        table(&r.genimage, &r.cfg),
        table(&r.ours, &r.cfg),
        "partition tables differ (genimage, then skiff-flash)"
    );
    assert_eq!(ours_len, disk);
    assert!(
        theirs_len <= disk,
        "genimage's file is longer: {theirs_len} > {disk}"
    );
    let gpt_with_backup =
        r.plan["table"]["kind"] == "gpt" && r.plan["table"]["no_backup"].is_null();
    if gpt_with_backup || r.cfg.contains("fill = true") {
        assert_eq!(theirs_len, disk, "genimage writes the whole disk here");
    }
    for w in r.plan["raw"].as_array().into_iter().flatten() {
        let (off, len, skip) = (
            w["offset"].as_u64().unwrap(),
            w["length"].as_u64().unwrap(),
            w["skip"].as_u64().unwrap(),
        );
        let src = read_range(Path::new(w["source"].as_str().unwrap()), skip, len);
        both_hold(r, off, &src, &format!("raw {}", w["name"]));
        t.raw += 1;
    }
    for p in r.plan["partitions"].as_array().unwrap() {
        let start = p["start"].as_u64().unwrap();
        if let Some(img) = p.get("image").filter(|v| !v.is_null()) {
            let size = img["size"].as_u64().unwrap();
            let src = std::fs::read(img["source"].as_str().unwrap()).unwrap();
            assert_eq!(src.len() as u64, size, "image of {} is its size", p["id"]);
            both_hold(r, start, &src, &format!("image of {}", p["id"]));
            if [".ext2", ".ext4"]
                .iter()
                .any(|e| img["source"].as_str().unwrap().ends_with(e))
            {
                let part = extract(&r.ours, start, size);
                let (code, out) = tool("e2fsck", &["-fn", part.path().to_str().unwrap()]);
                assert_eq!(code, 0, "e2fsck on the image of {}:\n{out}", p["id"]);
            }
            t.images += 1;
        }
        let Some(fs) = p.get("fs").filter(|v| !v.is_null()) else {
            continue;
        };
        let fs_size = fs["size"].as_u64().unwrap();
        match fs["kind"].as_str().unwrap() {
            kind @ ("fat12" | "fat16" | "fat32") => {
                let part = extract(&r.ours, start, fs_size);
                let ours_geo = fat_geometry(part.path());
                let part = extract(&r.genimage, start, fs_size);
                let theirs_geo = fat_geometry(part.path());
                let bits = format!("{} bit entries", &kind[3..]);
                assert!(
                    ours_geo.contains(&bits),
                    "{} is not {kind}: {ours_geo}",
                    p["id"]
                );
                if kind == "fat32" {
                    // mkdosfs sizes FAT32 its own way; the type and files are what matter.
                    assert!(
                        theirs_geo.contains(&bits),
                        "genimage's {}: {theirs_geo}",
                        p["id"]
                    );
                } else {
                    assert_eq!(ours_geo, theirs_geo, "FAT geometry of {}", p["id"]);
                }
                t.fat_types.push(kind.to_string());
                // Label and type as minfo reads them; the serial too where `-i` fixes it.
                let ids = |img: &Path| {
                    let at = format!("{}@@{start}", img.display());
                    let info = tool_ok("minfo", &["-i", &at, "::"]);
                    info.lines()
                        .filter(|l| {
                            l.starts_with("disk label=")
                                || l.starts_with("disk type=")
                                || (r.cfg.contains("-i ") && l.starts_with("serial number:"))
                        })
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                };
                let (mine, theirs) = (ids(&r.ours), ids(&r.genimage));
                assert!(mine.len() >= 2, "minfo of {}: {mine:?}", p["id"]);
                assert_eq!(mine, theirs, "minfo label/type/serial of {}", p["id"]);
                // inspect reads the volume back with skiff-flash's own FAT reader.
                let seen = inspect_fs(&r.ours, start);
                assert_eq!(seen["kind"], kind, "inspect of {}: {seen}", p["id"]);
                let files = seen["files"].as_array().expect("inspect lists files");
                t.inspected += files.iter().filter(|f| f["dir"] == false).count();
                let ours = fat_files(&r.ours, start, &r.scratch);
                let theirs = fat_files(&r.genimage, start, &r.scratch);
                assert_eq!(
                    ours.keys().collect::<Vec<_>>(),
                    theirs.keys().collect::<Vec<_>>(),
                    "FAT listing of {}",
                    p["id"]
                );
                assert!(ours == theirs, "FAT file contents of {} differ", p["id"]);
                t.fat_files += ours.len();
            }
            "ext4" => {
                let ours = ext4_files(&r.ours, start, fs_size, &r.scratch);
                let theirs = ext4_files(&r.genimage, start, fs_size, &r.scratch);
                assert_eq!(ours, theirs, "ext4 content of {}", p["id"]);
                t.ext4_files += ours.len();
            }
            other => panic!("unexpected fs {other}"),
        }
    }
    assert_eq!(
        read_range(&r.ours, 0, 512),
        read_range(&r.genimage, 0, 512),
        "sector 0 (boot code, MBR or protective MBR)"
    );
    for p in r.plan["partitions"].as_array().unwrap() {
        if let Some(ebr) = p["ebr"].as_u64() {
            assert_eq!(
                read_range(&r.ours, ebr, 512),
                read_range(&r.genimage, ebr, 512),
                "boot record of {}",
                p["id"]
            );
            t.ebrs += 1;
        }
    }
    if r.plan["table"]["kind"] == "gpt" {
        // Everything in the primary header but GUIDs and CRCs: own, backup, first and last
        // usable LBA, array LBA, entry count and size.
        let fields = |img: &Path| {
            let h = read_range(img, 512, 92);
            [&h[0..16], &h[24..56], &h[72..88]].concat()
        };
        assert_eq!(fields(&r.ours), fields(&r.genimage), "GPT header fields");
    }
    t
}

fn check(name: &str) {
    let Some(run) = run_both(name) else {
        return;
    };
    let t = compare(&run);
    eprintln!(
        "{name}: table identical, {} raw blobs, {} prebuilt images, {} FAT entries ({}, {} files \
         read back by inspect), {} ext4 entries, {} EBRs and sector 0 identical",
        t.raw,
        t.images,
        t.fat_files,
        t.fat_types.join(", "),
        t.inspected,
        t.ext4_files,
        t.ebrs,
    );
}

macro_rules! same_as_genimage {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check($file);
            }
        )*

        const TESTED: &[&str] = &[$($file),*];
    };
}

same_as_genimage! {
    rpi_mbr => "rpi-mbr.cfg",
    rpi3_signature => "rpi3-signature.cfg",
    rockchip_gpt => "rockchip-gpt.cfg",
    rockchip_hybrid => "rockchip-hybrid.cfg",
    rockchip_no_backup => "rockchip-no-backup.cfg",
    sunxi_mbr => "sunxi-mbr.cfg",
    sunxi_gpt_location => "sunxi-gpt-location.cfg",
    imx6_mbr => "imx6-mbr.cfg",
    imx8m_spl => "imx8m-spl.cfg",
    efi_gpt => "efi-gpt.cfg",
    pc_bios_holes => "pc-bios-holes.cfg",
    odroid_holes => "odroid-holes.cfg",
    gpt_prebuilt => "gpt-prebuilt.cfg",
    beaglebone_offsets => "beaglebone-offsets.cfg",
    mbr_logical => "mbr-logical.cfg",
    mbr_extended_index => "mbr-extended-index.cfg",
    mbr_fill => "mbr-fill.cfg",
    gpt_autoresize => "gpt-autoresize.cfg",
    licheepi_ext4_rootpath => "licheepi-ext4-rootpath.cfg",
    rootpath_mountpoints => "rootpath-mountpoints.cfg",
    include_env => "include-env.cfg",
    stm32mp1_gpt => "stm32mp1-gpt.cfg",
    gpt_types => "gpt-types.cfg",
    file_image_holes => "file-image-holes.cfg",
    part_align => "part-align.cfg",
    beaglebone_fat16 => "beaglebone-fat16.cfg",
    orangepi_r1_fat16 => "orangepi-r1-fat16.cfg",
    rzboard_v2l_fat16 => "rzboard-v2l-fat16.cfg",
    coolpi_4b_fat16 => "coolpi-4b-fat16.cfg",
    vfat_fat12_small => "vfat-fat12-small.cfg",
    vfat_fat12_forced => "vfat-fat12-forced.cfg",
    vfat_cluster_options => "vfat-cluster-options.cfg",
    vfat_sector_size => "vfat-sector-size.cfg",
    vfat_file_sections => "vfat-file-sections.cfg",
    vfat_260m => "vfat-260m.cfg",
    vfat_rootpath_fat12 => "vfat-rootpath-fat12.cfg",
}

#[test]
fn every_fixture_is_compared() {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cfg"))
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(on_disk, tested);
    assert!(tested.len() >= 20);
}

/// Builds `text` as a config in a fresh directory (with `inputs` in its images directory)
/// and asserts exit code 2 and one error line naming the file and `line`, plus `expect`.
fn cfg_refused(text: &str, inputs: &[(&str, u64)], line: usize, expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.cfg");
    std::fs::write(&cfg, text).unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for (name, len) in inputs {
        std::fs::write(images.join(name), noise(name, *len)).unwrap();
    }
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = run(&[
        "build",
        "--genimage",
        cfg.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--output",
        out_dir.join("x.img").to_str().unwrap(),
    ]);
    let at = format!("{}:{line}:", cfg.display());
    refused(&out, 2, &[&at, expect]);
    nothing_left(&out_dir);
}

#[test]
fn unbalanced_braces_name_the_open_section() {
    cfg_refused(
        "image sdcard.img {\n\thdimage {\n\t}\n\tpartition a {\n\t\tsize = 1M\n}\n",
        &[],
        1,
        "`image sdcard.img` is never closed",
    );
    cfg_refused(
        "image a {\n\thdimage {}\n}\n}\n",
        &[],
        4,
        "unexpected closing brace",
    );
}

#[test]
fn unknown_and_unsupported_image_types_are_named() {
    cfg_refused(
        "image rootfs.sqfs {\n\tsquashfs {\n\t}\n}\n",
        &[],
        2,
        "`squashfs` is not an image type skiff-flash writes",
    );
    cfg_refused(
        "image x.img {\n\thdimage {}\n}\nimage y {\n\tbtrfs {\n\t}\n}\n",
        &[],
        5,
        "unknown image type or option `btrfs`",
    );
    cfg_refused("flash nand-64M {\n\tpebsize = 128K\n}\n", &[], 1, "`flash`");
}

#[test]
fn overlapping_partitions_are_refused_at_the_later_one() {
    cfg_refused(
        "image d.img {\n\thdimage {}\n\tpartition a {\n\t\tpartition-type = 0x83\n\t\toffset = 1M\n\t\tsize = 2M\n\t}\n\tpartition b {\n\t\tpartition-type = 0x83\n\t\toffset = 2M\n\t\tsize = 1M\n\t}\n}\n",
        &[],
        8,
        "partition b (offset 0x200000, size 0x100000) overlaps previous partition a",
    );
    cfg_refused(
        "image d.img {\n\thdimage {}\n\tpartition spl {\n\t\tin-partition-table = no\n\t\timage = \"spl.bin\"\n\t\toffset = 0\n\t}\n}\n",
        &[("spl.bin", 1024)],
        3,
        "declare the overlapping area as a hole",
    );
}

#[test]
fn missing_input_names_the_line_that_wants_it() {
    cfg_refused(
        "image d.img {\n\thdimage {}\n\tpartition rootfs {\n\t\tpartition-type = 0x83\n\t\timage = \"rootfs.ext4\"\n\t}\n}\n",
        &[],
        5,
        "input file `rootfs.ext4` not found",
    );
    cfg_refused(
        "image boot.vfat {\n\tvfat {\n\t\tfiles = { \"zImage\" }\n\t}\n\tsize = 64M\n}\nimage d.img {\n\thdimage {}\n\tpartition boot {\n\t\tpartition-type = 0xC\n\t\timage = \"boot.vfat\"\n\t}\n}\n",
        &[],
        3,
        "input file `zImage` not found",
    );
}

/// `plan --json` of `cfg` (the text of a genimage config) written into a fresh directory,
/// which is also the images directory; the directory is returned to keep.
fn genimage_plan(cfg: &str, extra: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Output) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut args = vec![
        "plan",
        "--json",
        "--genimage",
        path.to_str().unwrap(),
        "--images",
        tmp.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    (tmp, path, out)
}

/// The FAT type and geometry options a vfat image asks mkdosfs for, as the plan has them.
fn planned_fat(vfat: &str, size: &str) -> Value {
    let (_tmp, _, out) = genimage_plan(
        &format!(
            "image boot.vfat {{\n\tvfat {{\n{vfat}\n\t}}\n\tsize = {size}\n}}\nimage d.img {{\n\thdimage {{}}\n\tpartition boot {{\n\t\tpartition-type = 0xC\n\t\timage = \"boot.vfat\"\n\t}}\n}}\n"
        ),
        &[],
    );
    let plan: Value = serde_json::from_str(&ok(&out)).unwrap();
    plan["partitions"][0]["fs"].clone()
}

#[test]
fn vfat_type_follows_size_and_mkdosfs_arguments() {
    assert_eq!(planned_fat("", "16M")["kind"], "fat16");
    assert_eq!(planned_fat("", "2M")["kind"], "fat12");
    assert_eq!(planned_fat("", "511M")["kind"], "fat16");
    assert_eq!(planned_fat("", "512M")["kind"], "fat32");
    assert_eq!(
        planned_fat("\t\textraargs = \"-F 16\"", "64M")["kind"],
        "fat16"
    );
    assert_eq!(
        planned_fat("\t\textraargs = \"-F 12\"", "8M")["kind"],
        "fat12"
    );
    assert_eq!(
        planned_fat("\t\textraargs = \"-F 32\"", "64M")["kind"],
        "fat32"
    );
    let fs = planned_fat(
        "\t\textraargs = \"-s 8 -S 1024 -i 1234abcd -n BOOTFS\"",
        "64M",
    );
    assert_eq!(fs["fat"]["cluster_sectors"], 8, "{fs}");
    assert_eq!(fs["fat"]["sector_size"], 1024, "{fs}");
    assert_eq!(fs["uuid"], "1234-ABCD", "{fs}");
    assert_eq!(fs["label"], "BOOTFS", "{fs}");
}

#[test]
fn impossible_fat_requests_are_refused_clearly() {
    cfg_refused(
        "image boot.vfat {\n\tvfat {\n\t\textraargs = \"-F 32\"\n\t}\n\tsize = 16M\n}\nimage d.img {\n\thdimage {}\n\tpartition boot {\n\t\tpartition-type = 0xC\n\t\timage = \"boot.vfat\"\n\t}\n}\n",
        &[],
        5,
        "too small for FAT32",
    );
    cfg_refused(
        "image boot.vfat {\n\tvfat {\n\t\textraargs = \"-F 12\"\n\t}\n\tsize = 256M\n}\nimage d.img {\n\thdimage {}\n\tpartition boot {\n\t\tpartition-type = 0xC\n\t\timage = \"boot.vfat\"\n\t}\n}\n",
        &[],
        5,
        "mkdosfs cannot make this volume",
    );
    cfg_refused(
        "image boot.vfat {\n\tvfat {\n\t\textraargs = \"-s 3\"\n\t}\n\tsize = 16M\n}\nimage d.img {\n\thdimage {}\n\tpartition boot {\n\t\tpartition-type = 0xC\n\t\timage = \"boot.vfat\"\n\t}\n}\n",
        &[],
        3,
        "power of two",
    );
}

#[test]
fn plan_names_what_is_not_done_exactly() {
    let (_tmp, _, out) = genimage_plan(
        "image boot.vfat {\n\tvfat {\n\t\textraargs = \"-s 4 -F 32 -v\"\n\t}\n\tsize = 64M\n}\nimage d.img {\n\thdimage {}\n\tpartition boot {\n\t\tpartition-type = 0xC\n\t\timage = \"boot.vfat\"\n\t}\n}\n",
        &[],
    );
    let plan: Value = serde_json::from_str(&ok(&out)).unwrap();
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("mkdosfs -s/-S are ignored for FAT32"),
        "{warnings}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skiff-flash: warning: "), "{err}");
}

#[test]
fn completions_and_man_page_print() {
    let out = run(&["completions", "bash"]);
    assert!(ok(&out).contains("skiff-flash"));
    let out = run(&["man"]);
    let page = ok(&out);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("build"), "{page}");
}

const TEMPLATE: &str = "image boot.vfat {\n\tvfat {\n\t}\n\tsize = 16M\n}\nimage d.img {\n\thdimage {\n\t\tpartition-table-type = \"gpt\"\n\t}\n\tpartition boot {\n\t\timage = \"boot.vfat\"\n\t\tpartition-uuid = %PARTUUID%\n\t}\n\tpartition data {\n\t\tsize = 1M\n\t\tpartition-uuid = UUID_TMP\n\t}\n}\n";

#[test]
fn unfilled_template_variables_are_named() {
    cfg_refused(TEMPLATE, &[], 12, "%PARTUUID% is not filled");
    cfg_refused(TEMPLATE, &[], 12, "--define PARTUUID=VALUE");
    cfg_refused(
        &TEMPLATE.replace("%PARTUUID%", "\"0fc63daf-8483-4772-8e79-3d69d8477de4\""),
        &[],
        16,
        "UUID_TMP is not filled",
    );
}

#[test]
fn define_fills_template_variables() {
    let boot = "6a1c9a5e-3b5c-4b8e-9a31-0d2f4b1c7e11";
    let data = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a10";
    let (_tmp, cfg, out) = genimage_plan(
        TEMPLATE,
        &[
            "--define",
            &format!("PARTUUID={boot}"),
            "--define",
            &format!("UUID_TMP={data}"),
        ],
    );
    let plan: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(plan["partitions"][0]["partuuid"], boot, "{plan}");
    assert_eq!(plan["partitions"][1]["partuuid"], data, "{plan}");
    let out = run(&[
        "plan",
        "--genimage",
        cfg.to_str().unwrap(),
        "--define",
        "NO EQUALS",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_symlink_checked_out_as_text_is_named() {
    cfg_refused(
        "../a10_olinuxino/genimage.cfg\n",
        &[],
        1,
        "a symbolic link checked out as a text file",
    );
}
