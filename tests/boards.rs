//! Every shipped board, built twice from an images directory shaped exactly as its SkiffOS
//! build leaves it (`skiffos/artifacts.toml`): once with everything that build produces,
//! unused files included, and once with only what SkiffOS's install/format scripts require.
//! Each image is checked with sfdisk, sgdisk, fsck.fat, e2fsck, blkid, mtools, debugfs and
//! mkimage. The board rules are checked against the same data (a rule is required exactly
//! when SkiffOS's scripts require its file). Then a few boards compared with what SkiffOS's
//! scripts produce (docs/boards.md), and the errors a broken board or images directory gets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::synth::*;
use common::*;
use serde_json::Value;

const MSFTDATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

fn board_names() -> Vec<String> {
    json(&run(&["boards", "--json"]))
        .as_array()
        .expect("a list of boards")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// One partition line of `sfdisk --dump`, parsed.
#[derive(Debug, Default)]
struct Dumped {
    start: u64,
    size: u64,
    kind: String,
    name: Option<String>,
    uuid: Option<String>,
    bootable: bool,
    attrs: String,
}

/// `sfdisk --dump` as (label kind, partitions).
fn sfdisk_dump(image: &Path) -> Result<(String, Vec<Dumped>), String> {
    let (code, out) = tool("sfdisk", &["--dump", image.to_str().unwrap()]);
    if code != 0 {
        return Err(format!("sfdisk --dump failed: {out}"));
    }
    let label = out
        .lines()
        .find_map(|l| l.strip_prefix("label: "))
        .ok_or_else(|| format!("no label in sfdisk --dump: {out}"))?
        .trim()
        .to_string();
    let mut parts = Vec::new();
    for line in out.lines().filter(|l| l.contains(" : start=")) {
        let (_, rest) = line.split_once(" : ").unwrap();
        let mut d = Dumped::default();
        for field in split_fields(rest) {
            let field = field.trim();
            if field == "bootable" {
                d.bootable = true;
                continue;
            }
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "start" => d.start = v.parse().unwrap(),
                "size" => d.size = v.parse().unwrap(),
                "type" => d.kind = v.to_uppercase(),
                "name" => d.name = Some(v),
                "uuid" => d.uuid = Some(v),
                "attrs" => d.attrs = v,
                _ => {}
            }
        }
        parts.push(d);
    }
    Ok((label, parts))
}

/// Splits sfdisk's `a=1, b="x, y", c` at commas outside quotes.
fn split_fields(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.last_mut().unwrap().push(c);
            }
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// `blkid -p -o export` of a file as a map.
fn blkid(path: &Path) -> BTreeMap<String, String> {
    let (_, out) = tool("blkid", &["-p", "-o", "export", path.to_str().unwrap()]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gpt_guid(name: &str) -> String {
    match name {
        "msftdata" => MSFTDATA.into(),
        "linux" => LINUX.into(),
        "esp" => ESP.into(),
        other => other.to_uppercase(),
    }
}

/// Everything test (a) checks for one board built from one set of its SkiffOS artifacts;
/// returns the problems found.
fn check_board(name: &str, set: Set) -> Vec<String> {
    let mut errs = Vec::new();
    let mut err = |m: String| errs.push(format!("{name} ({set:?} artifacts): {m}"));
    let def = show(name);
    let images = skiffos_images(name, &def, set);
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("disk.img");
    let built = run(&[
        "build",
        "--board",
        name,
        "--images",
        images.path().to_str().unwrap(),
        "--output",
        img.to_str().unwrap(),
    ]);
    if !built.status.success() {
        err(format!(
            "build failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
        return errs;
    }
    let plan = plan_json(name, images.path(), &[]);
    let layout = &def["layout"];
    let defs = arr(&layout["partition"]);
    let parts = arr(&plan["partitions"]);
    let gpt = layout["table"] == "gpt";

    // The table: parses, verifies, and says what the layout says.
    match sfdisk_dump(&img) {
        Err(e) => err(e),
        Ok((label, dumped)) => {
            let want = if gpt { "gpt" } else { "dos" };
            if label != want {
                err(format!("table is {label}, layout says {want}"));
            }
            if dumped.len() != defs.len() {
                err(format!(
                    "{} partitions in the table, layout has {}",
                    dumped.len(),
                    defs.len()
                ));
            }
            for ((d, p), pd) in dumped.iter().zip(parts).zip(defs) {
                let id = pd["id"].as_str().unwrap();
                if d.start * 512 != p["start"].as_u64().unwrap()
                    || d.size * 512 != p["size"].as_u64().unwrap()
                {
                    err(format!("{id}: table range differs from the plan"));
                }
                if gpt {
                    let t = gpt_guid(pd["gpt_type"].as_str().unwrap());
                    if d.kind != t {
                        err(format!("{id}: GPT type {} (want {t})", d.kind));
                    }
                    let n = pd["gpt_name"].as_str().unwrap_or(id);
                    if d.name.as_deref() != Some(n) {
                        err(format!("{id}: GPT name {:?} (want {n})", d.name));
                    }
                    let legacy = d.attrs.contains("LegacyBIOSBootable");
                    if legacy != (pd["bootable"] == true) {
                        err(format!("{id}: GPT attrs `{}`", d.attrs));
                    }
                } else {
                    let t = pd["mbr_type"].as_str().unwrap();
                    let want = u8::from_str_radix(t.trim_start_matches("0x"), 16).unwrap();
                    let got = u8::from_str_radix(&d.kind, 16).unwrap_or(0);
                    if got != want {
                        err(format!("{id}: MBR type {} (want {t})", d.kind));
                    }
                    if d.bootable != (pd["bootable"] == true) {
                        err(format!("{id}: bootable flag is {}", d.bootable));
                    }
                }
            }
        }
    }
    let path = img.to_str().unwrap();
    if gpt {
        let (_, v) = tool("sgdisk", &["-v", path]);
        if !v.contains("No problems found") {
            err(format!("sgdisk -v: {v}"));
        }
    } else {
        let (code, v) = tool("sfdisk", &["-V", path]);
        if code != 0 {
            err(format!("sfdisk -V: {v}"));
        }
    }

    // Every filesystem is clean and labelled as the layout says.
    for (p, pd) in parts.iter().zip(defs) {
        let id = pd["id"].as_str().unwrap();
        let Some(fs) = pd["fs"].as_str() else {
            continue;
        };
        let part = extract(
            &img,
            p["start"].as_u64().unwrap(),
            p["size"].as_u64().unwrap(),
        );
        let pp = part.path().to_str().unwrap();
        let (code, out) = match fs {
            "fat32" => tool("fsck.fat", &["-n", pp]),
            "ext4" => tool("e2fsck", &["-fn", pp]),
            other => panic!("unknown fs {other}"),
        };
        if code != 0 {
            err(format!("{id}: {fs} check failed: {out}"));
        }
        let b = blkid(part.path());
        let want_type = if fs == "fat32" { "vfat" } else { "ext4" };
        if b.get("TYPE").map(String::as_str) != Some(want_type) {
            err(format!(
                "{id}: blkid TYPE {:?} (want {want_type})",
                b.get("TYPE")
            ));
        }
        if let Some(l) = pd["label"].as_str()
            && b.get("LABEL").map(String::as_str) != Some(l)
        {
            err(format!("{id}: blkid LABEL {:?} (want {l})", b.get("LABEL")));
        }
    }

    // Every raw blob whose source is there is on the disk byte for byte (an optional
    // write without its source is skipped, as SkiffOS's format skips it).
    let raw = arr(&plan["raw"]);
    let present = arr(&def["raw"])
        .iter()
        .filter(|r| {
            arr(&r["from"])
                .iter()
                .filter_map(Value::as_str)
                .any(|f| images.path().join(f).is_file())
        })
        .count();
    if raw.len() != present {
        err(format!(
            "{} raw writes planned, {present} of the board's {} have their source",
            raw.len(),
            arr(&def["raw"]).len()
        ));
    }
    for r in raw {
        let (skip, length, offset) = (
            r["skip"].as_u64().unwrap(),
            r["length"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
        );
        let source = PathBuf::from(r["source"].as_str().unwrap());
        if read_range(&source, skip, length) != read_range(&img, offset, length) {
            err(format!(
                "raw `{}`: bytes at {offset} differ from {}[{skip}..{}]",
                r["name"],
                source.display(),
                skip + length
            ));
        }
    }
    errs
}

#[test]
fn every_board_builds_and_checks_clean() {
    if !need("sfdisk", "fdisk")
        || !need("sgdisk", "gdisk")
        || !need("fsck.fat", "dosfstools")
        || !need("e2fsck", "e2fsprogs")
        || !need("blkid", "util-linux")
        || !have_generators()
    {
        return;
    }
    let names = board_names();
    assert!(names.len() >= 50, "every SkiffOS disk board: {names:?}");
    // Every board twice: from everything its SkiffOS build leaves in images/ (unused files
    // included, to show they are ignored), and from only what SkiffOS's scripts require.
    let jobs: Vec<(String, Set)> = names
        .iter()
        .flat_map(|n| [(n.clone(), Set::Produced), (n.clone(), Set::Required)])
        .collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let chunks: Vec<Vec<(String, Set)>> = (0..threads)
        .map(|t| jobs.iter().skip(t).step_by(threads).cloned().collect())
        .collect();
    let errs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .flat_map(|(n, set)| check_board(n, *set))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// A built image with its plan and the board's definition.
struct Built {
    def: Value,
    plan: Value,
    images: tempfile::TempDir,
    _out: tempfile::TempDir,
    img: PathBuf,
}

fn build_synth(board: &str, set: Set, tweak: impl FnOnce(&Path)) -> Built {
    let def = show(board);
    let images = skiffos_images(board, &def, set);
    tweak(images.path());
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("disk.img");
    build(board, images.path(), &img, &[]);
    let plan = plan_json(board, images.path(), &[]);
    Built {
        def,
        plan,
        images,
        _out: out,
        img,
    }
}

impl Built {
    fn part(&self, id: &str) -> &Value {
        arr(&self.plan["partitions"])
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no partition {id}"))
    }

    fn extract(&self, id: &str) -> tempfile::NamedTempFile {
        let p = self.part(id);
        extract(
            &self.img,
            p["start"].as_u64().unwrap(),
            p["size"].as_u64().unwrap(),
        )
    }

    /// The files (not directories) in a partition's filesystem, read back with mtools or
    /// debugfs, as path → content.
    fn files(&self, id: &str) -> BTreeMap<String, Vec<u8>> {
        let part = self.extract(id);
        let pp = part.path().to_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let fs = self.part(id)["fs"]["kind"].as_str().unwrap().to_string();
        match fs.as_str() {
            "fat32" => {
                let (code, out) = tool("mcopy", &["-s", "-n", "-p", "-i", pp, "::/*", d]);
                // mcopy fails on an empty filesystem ("no match"); that is an empty list.
                assert!(code == 0 || out.contains("not found"), "mcopy: {out}");
            }
            "ext4" => {
                tool_ok("debugfs", &["-R", &format!("rdump / {d}"), pp]);
            }
            other => panic!("unknown fs {other}"),
        }
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(dir.path()).unwrap().to_string_lossy();
                if rel == "lost+found" {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(format!("/{rel}"), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// The text of the board's file rule `rule` (its fallback config).
    fn rule_text(&self, rule: &str) -> String {
        let files = arr(&self.def["files"]);
        let find = |name: &str| files.iter().find(|r| r["name"] == name);
        find(rule)
            .and_then(|r| match r["same_as"].as_str() {
                Some(other) => find(other),
                None => Some(r),
            })
            .and_then(|r| r["text"].as_str())
            .unwrap_or_else(|| panic!("rule {rule} has no text"))
            .to_string()
    }
}

fn names(files: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    files.keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The payload of a U-Boot script image after `mkimage -l` accepted it, checked against
/// `dumpimage`'s extraction and the header + length table layout.
fn script_payload(scr: &[u8], arch: &str, name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("boot.scr");
    std::fs::write(&f, scr).unwrap();
    let fp = f.to_str().unwrap();
    let l = tool_ok("mkimage", &["-l", fp]);
    assert!(l.contains("Script"), "mkimage -l: {l}");
    assert!(l.contains(arch), "arch {arch}: {l}");
    assert!(
        l.contains(&format!("Image Name:   {name}")),
        "name {name:?}: {l}"
    );
    assert_eq!(&scr[..4], &[0x27, 0x05, 0x19, 0x56], "uImage magic");
    let len = u32::from_be_bytes(scr[64..68].try_into().unwrap()) as usize;
    assert_eq!(&scr[68..72], &[0, 0, 0, 0], "one-entry length table");
    let payload = scr[72..72 + len].to_vec();
    let o = dir.path().join("payload");
    tool_ok(
        "dumpimage",
        &["-T", "script", "-p", "0", "-o", o.to_str().unwrap(), fp],
    );
    // dumpimage extracts the whole data part: the length table, then the script.
    let dumped = std::fs::read(&o).unwrap();
    assert_eq!(dumped.get(8..), Some(&payload[..]), "dumpimage agrees");
    payload
}

#[test]
fn boot_scr_is_a_valid_uboot_script() {
    if !need("mkimage", "u-boot-tools")
        || !need("dumpimage", "u-boot-tools")
        || !need("mcopy", "mtools")
        || !need("debugfs", "e2fsprogs")
        || !have_generators()
    {
        return;
    }
    // On FAT (odroid/xu), with boot.txt beside it.
    let b = build_synth("odroid/xu", Set::Required, |_| {});
    let files = b.files("boot");
    let text = b.rule_text("boot.scr");
    let payload = script_payload(&files["/boot.scr"], "ARM", "Skiff Odroid");
    assert_eq!(String::from_utf8(payload).unwrap(), text);
    assert_eq!(
        files["/boot.txt"],
        text.as_bytes(),
        "boot.txt beside boot.scr"
    );

    // In ext4 /boot/ (allwinner/nezha, RISC-V), with the silent-console edit requested.
    let b = build_synth("allwinner/nezha", Set::Required, |d| {
        std::fs::write(d.join(".disable-serial-console"), "").unwrap()
    });
    let files = b.files("persist");
    let payload = script_payload(&files["/boot/boot.scr"], "RISC-V", "SkiffOS");
    let payload = String::from_utf8(payload).unwrap();
    let silenced: String = b
        .rule_text("boot.scr")
        .split_inclusive('\n')
        .map(|l| {
            if l.starts_with("setenv condev") {
                format!("# {l}")
            } else if let Some(r) = l.strip_prefix("# setenv silent") {
                format!("setenv silent{r}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(payload.contains("\n# setenv condev "), "{payload}");
    assert!(payload.contains("\nsetenv silent 1\n"), "{payload}");
    assert_eq!(payload, silenced);
    assert_eq!(files["/boot/boot.txt"], silenced.as_bytes());

    // At the persist root (pine64/phone), with the persist PARTUUID filled in.
    let b = build_synth("pine64/phone", Set::Required, |_| {});
    let files = b.files("persist");
    let payload = script_payload(&files["/boot.scr"], "ARM", "SkiffOS");
    let partuuid = b.part("persist")["partuuid"].as_str().unwrap().to_string();
    let want = b
        .rule_text("boot.scr")
        .replace("{partuuid:persist}", &partuuid);
    assert!(want.contains(&format!("root=PARTUUID={partuuid} ")));
    assert_eq!(String::from_utf8(payload).unwrap(), want);
}

/// Asserts the table kind and, per partition in order: type, bootable flag, GPT name,
/// filesystem type and label, and that the first partition starts 1 MiB aligned at or after
/// where SkiffOS starts it.
fn assert_table(b: &Built, kind: &str, skiff_first_start: u64, want: &[Want]) {
    let (label, dumped) = sfdisk_dump(&b.img).unwrap();
    assert_eq!(label, kind, "{}", b.def["name"]);
    assert_eq!(dumped.len(), want.len());
    assert!(
        dumped[0].start * 512 >= skiff_first_start,
        "first partition at {} < SkiffOS's {skiff_first_start}",
        dumped[0].start * 512
    );
    for (d, w) in dumped.iter().zip(want) {
        assert_eq!(d.start % 2048, 0, "{}: 1 MiB aligned", w.label);
        assert_eq!(d.kind, w.kind, "{}: type", w.label);
        if kind == "dos" {
            assert_eq!(d.bootable, w.bootable, "{}: bootable", w.label);
        } else {
            assert_eq!(d.name.as_deref(), w.gpt_name, "{}: GPT name", w.label);
            assert!(!d.attrs.contains("LegacyBIOSBootable"), "{}", w.label);
        }
        let part = extract(&b.img, d.start * 512, d.size * 512);
        let id = blkid(part.path());
        assert_eq!(
            id.get("TYPE").map(String::as_str),
            Some(w.fs),
            "{}",
            w.label
        );
        assert_eq!(
            id.get("LABEL").map(String::as_str),
            Some(w.label),
            "{}",
            w.label
        );
    }
}

struct Want {
    kind: &'static str,
    bootable: bool,
    gpt_name: Option<&'static str>,
    fs: &'static str,
    label: &'static str,
}

/// The DTBs (and overlays) a board's SkiffOS build produces, as `/NAME`.
fn dtbs(board: &str) -> Vec<String> {
    let mut v: Vec<String> = artifacts_of(board)
        .into_iter()
        .filter(|a| a.kind == "dtb" && a.produced)
        .map(|a| format!("/{}", a.name))
        .collect();
    v.sort();
    v
}

/// Adds what a user puts beside a SkiffOS build (no SkiffOS build makes these):
/// `boot_part/`, `persist_part/` with one file each.
fn user_parts(images: &Path) {
    for d in ["boot_part", "persist_part"] {
        std::fs::create_dir_all(images.join(d)).unwrap();
        let f = format!("from-{d}.bin");
        std::fs::write(images.join(d).join(&f), noise(&f, 4096)).unwrap();
    }
}

#[test]
fn representative_boards_match_skiffos_layouts() {
    if !need("sfdisk", "fdisk")
        || !need("blkid", "util-linux")
        || !need("mcopy", "mtools")
        || !need("debugfs", "e2fsprogs")
        || !have_generators()
    {
        return;
    }

    // pi/4 (catalog §3.1): GPT, every partition named `primary`; FAT32 BOOT msftdata, ext4
    // rootfs and persist Linux data; no flags; first partition at 1 MiB.
    let b = build_synth("pi/4", Set::Produced, user_parts);
    let primary = Some("primary");
    assert_table(
        &b,
        "gpt",
        1 << 20,
        &[
            Want {
                kind: MSFTDATA,
                bootable: false,
                gpt_name: primary,
                fs: "vfat",
                label: "BOOT",
            },
            Want {
                kind: LINUX,
                bootable: false,
                gpt_name: primary,
                fs: "ext4",
                label: "rootfs",
            },
            Want {
                kind: LINUX,
                bootable: false,
                gpt_name: primary,
                fs: "ext4",
                label: "persist",
            },
        ],
    );
    // install: kernel, rpi-firmware/, config.txt, cmdline.txt, boot_part/, *.dtb,
    // rootfs.cpio.lz4 → boot (a pi/4 build has no rootfs.squashfs or skiff-init/);
    // rootfs_part/ → rootfs; persist_part/ → persist. rootfs.cpio, skiff-release and the
    // empty resources/ stay behind.
    let boot = b.files("boot");
    let mut want = set(&[
        "/Image",
        "/from-rpi-firmware.bin",
        "/overlays/from-overlays.bin",
        "/config.txt",
        "/cmdline.txt",
        "/from-boot_part.bin",
        "/rootfs.cpio.lz4",
    ]);
    want.extend(dtbs("pi/4"));
    assert_eq!(names(&boot), want);
    assert_eq!(boot["/config.txt"], b.rule_text("config.txt").as_bytes());
    assert_eq!(boot["/cmdline.txt"], b.rule_text("cmdline.txt").as_bytes());
    assert!(String::from_utf8_lossy(&boot["/config.txt"]).contains("kernel=Image\n"));
    assert_eq!(names(&b.files("rootfs")), set(&["/modules.squashfs"]));
    assert_eq!(names(&b.files("persist")), set(&["/from-persist_part.bin"]));
    assert!(arr(&b.plan["raw"]).is_empty(), "no raw writes on a Pi");

    // odroid/xu (catalog §3.2): MBR; FAT32 `boot` 0x0c active from 2 MiB, ext4 rootfs and
    // persist 0x83.
    let b = build_synth("odroid/xu", Set::Produced, user_parts);
    assert_table(
        &b,
        "dos",
        2 << 20,
        &[
            Want {
                kind: "C",
                bootable: true,
                gpt_name: None,
                fs: "vfat",
                label: "boot",
            },
            Want {
                kind: "83",
                bootable: false,
                gpt_name: None,
                fs: "ext4",
                label: "rootfs",
            },
            Want {
                kind: "83",
                bootable: false,
                gpt_name: None,
                fs: "ext4",
                label: "persist",
            },
        ],
    );
    // install: kernel, rootfs.cpio.uboot, boot.txt + boot.scr, *.dtb (*.dtbo) → boot.
    let boot = b.files("boot");
    let mut want = set(&["/zImage", "/rootfs.cpio.uboot", "/boot.txt", "/boot.scr"]);
    want.extend(dtbs("odroid/xu"));
    assert_eq!(names(&boot), want);
    assert_eq!(names(&b.files("rootfs")), set(&["/modules.squashfs"]));
    assert_eq!(names(&b.files("persist")), set(&["/from-persist_part.bin"]));
    // sd_fusing.sh: bl1 → sector 1, bl2 → 31, U-Boot → 63, TZSW → 2111.
    let raw: Vec<(String, u64)> = arr(&b.plan["raw"])
        .iter()
        .map(|r| {
            let src = PathBuf::from(r["source"].as_str().unwrap());
            let rel = src.strip_prefix(b.images.path()).unwrap();
            (
                rel.to_string_lossy().into_owned(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        raw,
        [
            ("hk_sd_fuse/bl1.bin.hardkernel".to_string(), 512),
            ("hk_sd_fuse/bl2.bin.hardkernel.1mb_uboot".to_string(), 15872),
            ("u-boot.bin".to_string(), 32256),
            ("hk_sd_fuse/tzsw.bin.hardkernel".to_string(), 1080832),
        ]
    );
    for r in arr(&b.plan["raw"]) {
        let src = PathBuf::from(r["source"].as_str().unwrap());
        let (skip, len, off) = (
            r["skip"].as_u64().unwrap(),
            r["length"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
        );
        assert_eq!(read_range(&src, skip, len), read_range(&b.img, off, len));
    }

    // intel/desktop (catalog §3.3): GPT; `EFI` ESP FAT32 label EFI, `SKIFFOS` Linux data
    // ext4 label SKIFFOS; first partition at 1 MiB.
    let b = build_synth("intel/desktop", Set::Produced, user_parts);
    assert_table(
        &b,
        "gpt",
        1 << 20,
        &[
            Want {
                kind: ESP,
                bootable: false,
                gpt_name: Some("EFI"),
                fs: "vfat",
                label: "EFI",
            },
            Want {
                kind: LINUX,
                bootable: false,
                gpt_name: Some("SKIFFOS"),
                fs: "ext4",
                label: "SKIFFOS",
            },
        ],
    );
    assert_eq!(
        names(&b.files("efi")),
        set(&[
            "/from-efi-part.bin",
            "/EFI/BOOT/bootx64.efi",
            "/EFI/refind/from-refind.bin"
        ])
    );
    // An intel/desktop build has no initramfs and no rootfs_part/ (no module image), so
    // neither an initrd nor /rootfs/ is written.
    let sk = b.files("skiffos");
    let v = format!("{VERSION}-1");
    assert_eq!(
        names(&sk),
        set(&[
            &format!("/boot/bzImage-skiffos-{v}"),
            &format!("/boot/init-skiffos-{v}.squashfs"),
            "/boot/refind_linux.conf",
            "/boot/skiff-init/from-skiff-init.bin",
            "/boot/from-boot_part.bin",
            "/from-persist_part.bin",
        ])
    );
    let (_, dumped) = sfdisk_dump(&b.img).unwrap();
    let partuuid = dumped[1].uuid.clone().expect("SKIFFOS has a PARTUUID");
    let conf = String::from_utf8(sk["/boot/refind_linux.conf"].clone()).unwrap();
    assert_eq!(conf.lines().count(), 2, "{conf}");
    for line in conf.lines() {
        assert!(
            line.to_uppercase()
                .contains(&format!("ROOT=PARTUUID={} ", partuuid.to_uppercase())),
            "{line}"
        );
        assert!(line.contains("skiffos.squashfs=/boot/init-skiffos-%v.squashfs"));
    }
    assert!(conf.starts_with("\"Boot SkiffOS\" "));
    assert!(conf.contains("\n\"Boot SkiffOS NoSMT\" "));
    assert!(arr(&b.plan["raw"]).is_empty(), "no raw writes on x86");
}

#[test]
fn missing_bootloader_blob_names_board_artifact_and_places() {
    let def = show("bananapi/m1");
    let images = skiffos_images("bananapi/m1", &def, Set::Required);
    let blob = images.path().join("u-boot-sunxi-with-spl.bin");
    std::fs::remove_file(&blob).unwrap();
    build_refused(
        images.path(),
        "bananapi/m1",
        &[],
        "disk.img",
        &[
            "bananapi/m1",
            "`u-boot-sunxi-with-spl.bin`",
            blob.to_str().unwrap(),
        ],
    );
}

#[test]
fn overlapping_raw_write_names_both_ranges() {
    let user = tempfile::tempdir().unwrap();
    let dir = user.path().join("boards/test");
    std::fs::create_dir_all(&dir).unwrap();
    // 64 KiB at 1020 KiB: runs 60 KiB into bananapi/m1's boot partition at 1 MiB.
    std::fs::write(
        dir.join("overlap.toml"),
        "description = \"bananapi/m1 with a blob written into its boot partition\"\n\
         inherit = \"bananapi/m1\"\n\n\
         [[raw]]\n\
         name = \"intruder\"\n\
         from = \"u-boot-sunxi-with-spl.bin\"\n\
         offset = \"1020KiB\"\n",
    )
    .unwrap();
    let def = show("bananapi/m1");
    let images = skiffos_images("bananapi/m1", &def, Set::Required);
    let blob_len = std::fs::metadata(images.path().join("u-boot-sunxi-with-spl.bin"))
        .unwrap()
        .len();
    assert_eq!(blob_len, BLOB);
    build_refused(
        images.path(),
        "test/overlap",
        &["--board-dir", user.path().to_str().unwrap()],
        "disk.img",
        &[
            "test/overlap",
            "`intruder`",
            "[1,044,480, 1,110,016)",
            "partition boot [1,048,576, ",
        ],
    );
}

#[test]
fn skiffos_artifact_data_covers_every_board() {
    let data: BTreeSet<String> = skiffos_artifacts().into_keys().collect();
    let boards: BTreeSet<String> = board_names().into_iter().collect();
    assert_eq!(
        data.difference(&boards).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "boards in skiffos/artifacts.toml that skiff-flash does not have"
    );
    assert_eq!(
        boards.difference(&data).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "boards missing from skiffos/artifacts.toml"
    );
    for (board, arts) in skiffos_artifacts() {
        let names: BTreeSet<&str> = arts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names.len(), arts.len(), "{board}: an artifact listed twice");
        assert!(
            arts.iter()
                .any(|a| a.kind == "kernel" && a.required && a.produced),
            "{board}: no required kernel"
        );
    }
}

/// Rules whose `required` differs from SkiffOS's scripts on purpose (docs/boards.md).
const INTENDED: &[(&str, &str)] = &[
    // allwinner/r8 builds neither a DTB nor U-Boot; SkiffOS's scripts stop without them.
    ("allwinner/r8", "dtbs"),
    ("allwinner/r8", "u-boot"),
];

/// Whether `pattern` (a rule's `from`) names `artifact`: equal, a glob match, or a
/// directory holding it.
fn names_artifact(pattern: &str, artifact: &str) -> bool {
    let glob = |p: &str, n: &str| {
        fn m(p: &[u8], n: &[u8]) -> bool {
            match (p.first(), n.first()) {
                (None, None) => true,
                (Some(b'*'), _) => {
                    m(&p[1..], n) || (!n.is_empty() && n[0] != b'/' && m(p, &n[1..]))
                }
                (Some(b'?'), Some(c)) if *c != b'/' => m(&p[1..], &n[1..]),
                (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
                _ => false,
            }
        }
        m(p.as_bytes(), n.as_bytes())
    };
    pattern == artifact
        || glob(pattern, artifact)
        || artifact.starts_with(&format!("{}/", pattern.trim_end_matches('/')))
}

#[test]
fn board_rules_require_what_skiffos_requires() {
    let data = skiffos_artifacts();
    let mut errs = Vec::new();
    for board in board_names() {
        let def = show(&board);
        let arts = &data[&board];
        let mut rules: Vec<(String, Vec<String>, bool)> = Vec::new();
        for r in arr(&def["files"]) {
            if r["text"].is_string() || r["same_as"].is_string() {
                continue;
            }
            let from = arr(&r["from"])
                .iter()
                .filter_map(Value::as_str)
                .map(String::from);
            rules.push((
                r["name"].as_str().unwrap().to_string(),
                from.collect(),
                r["required"] == Value::Bool(true),
            ));
        }
        for r in arr(&def["raw"]) {
            let from = arr(&r["from"])
                .iter()
                .filter_map(Value::as_str)
                .map(String::from);
            rules.push((
                format!("{} (raw)", r["name"].as_str().unwrap()),
                from.collect(),
                r["required"] != Value::Bool(false),
            ));
        }
        let required_by_rule = |a: &Artifact| {
            rules
                .iter()
                .any(|(_, from, req)| *req && from.iter().any(|f| names_artifact(f, &a.name)))
        };
        for (name, from, required) in &rules {
            let intended = INTENDED.contains(&(board.as_str(), name.trim_end_matches(" (raw)")));
            let named: Vec<&Artifact> = arts
                .iter()
                .filter(|a| from.iter().any(|f| names_artifact(f, &a.name)))
                .collect();
            let produced: Vec<&&Artifact> = named.iter().filter(|a| a.produced).collect();
            if *required && produced.is_empty() {
                errs.push(format!(
                    "{board}: rule `{name}` requires {from:?}, which its SkiffOS build does not produce"
                ));
            }
            let skiff_required = named.iter().any(|a| a.required);
            // An optional glob beside a required rule for the same file (u-boot*.img next
            // to u-boot.img) is fine.
            let covered = named
                .iter()
                .filter(|a| a.required)
                .all(|a| required_by_rule(a));
            let excused = intended || (!*required && covered);
            if *required != skiff_required && !excused {
                errs.push(format!(
                    "{board}: rule `{name}` ({from:?}) has required = {required}, SkiffOS's \
                     scripts: {:?}",
                    named
                        .iter()
                        .map(|a| (&a.name, a.required))
                        .collect::<Vec<_>>()
                ));
            }
            if intended && *required == skiff_required {
                errs.push(format!(
                    "{board}: rule `{name}` is listed as an intended difference but agrees"
                ));
            }
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn generated_artifacts_carry_real_magic() {
    if !have_generators()
        || !need("dtc", "device-tree-compiler")
        || !need("unsquashfs", "squashfs-tools")
    {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dtb = d.path().join("t.dtb");
    std::fs::write(&dtb, fdt("skiff-test,t")).unwrap();
    let dts = tool_ok("dtc", &["-I", "dtb", "-O", "dts", dtb.to_str().unwrap()]);
    assert!(dts.contains("compatible = \"skiff-test,t\";"), "{dts}");
    let sq = d.path().join("t.squashfs");
    squashfs_at(&sq);
    let l = tool_ok("unsquashfs", &["-l", sq.to_str().unwrap()]);
    assert!(l.contains("squashfs-root/content"), "{l}");
    let ui = d.path().join("rootfs.cpio.uboot");
    uimage_ramdisk(&lz4_legacy(&newc_cpio()), &ui);
    let l = tool_ok("mkimage", &["-l", ui.to_str().unwrap()]);
    assert!(l.contains("RAMDisk Image"), "{l}");
    if need("lz4", "lz4") {
        let lz = d.path().join("rootfs.cpio.lz4");
        std::fs::write(&lz, lz4_legacy(&newc_cpio())).unwrap();
        let out = std::process::Command::new("lz4")
            .args(["-d", "-c", lz.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lz4 -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, newc_cpio());
    }
    let image = arm64_image(BLOB);
    assert_eq!(&image[0x38..0x3c], b"ARM\x64");
    assert_eq!(
        u32::from_le_bytes(arm_zimage(BLOB)[0x24..0x28].try_into().unwrap()),
        0x016f_2818
    );
    assert_eq!(&x86_bzimage(BLOB)[0x202..0x206], b"HdrS");
}
