//! Every shipped board, built from a synthetic images directory made from what its own
//! definition says it needs, and checked with sfdisk, sgdisk, fsck.fat, e2fsck, blkid,
//! mtools, debugfs and mkimage. Then a few boards compared with what SkiffOS's scripts
//! produce (docs/boards.md, /work/shared/skiffos-boards.md), and the errors a broken board
//! or images directory gets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The `VERSION=` of the generated skiff-release.
const VERSION: &str = "2026.08.0-test";

/// Default size of a generated blob or file.
const BLOB: u64 = 64 << 10;

const MSFTDATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("skiff-flash printed JSON")
}

fn board_names() -> Vec<String> {
    json(&run(&["boards", "--json"]))
        .as_array()
        .expect("a list of boards")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn show(board: &str) -> Value {
    json(&run(&["boards", "show", board, "--json"]))
}

fn plan(board: &str, images: &Path) -> Value {
    json(&run(&[
        "plan",
        "--board",
        board,
        "--images",
        images.to_str().unwrap(),
        "--json",
    ]))
}

fn build(board: &str, images: &Path, out: &Path) {
    ok(&run(&[
        "build",
        "--board",
        board,
        "--images",
        images.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]));
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn first_from(rule: &Value) -> Option<&str> {
    arr(&rule["from"]).first().and_then(Value::as_str)
}

fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// Whether a rule's source is a directory (`rpi-firmware`, `efi-part`, `boot_part`,
/// `skiff-init`...): it goes into a directory and its name has a separator but no dot.
/// Kernels (`Image`, `zImage`, `bzImage`) and `MLO`/`SPL` have neither, so they are files.
fn is_dir_source(name: &str, to: &str) -> bool {
    to.ends_with('/') && !name.contains('.') && name.contains(['-', '_'])
}

/// Deterministic pseudo-random bytes (xorshift64*, seeded from the name).
fn noise(name: &str, len: u64) -> Vec<u8> {
    let mut s: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        s = (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// Kernels carry their format's magic (skiff-flash checks it): arm64 `Image`, ARM `zImage`,
/// x86 `bzImage`, U-Boot `uImage`.
fn with_magic(name: &str, mut b: Vec<u8>) -> Vec<u8> {
    let (at, magic): (usize, &[u8]) = match name.rsplit('/').next().unwrap_or(name) {
        "Image" => (0x38, b"ARM\x64"),
        "zImage" => (0x24, &[0x18, 0x28, 0x6f, 0x01]),
        "bzImage" => (0x202, b"HdrS"),
        "uImage" => (0, &[0x27, 0x05, 0x19, 0x56]),
        _ => return b,
    };
    if b.len() < at + magic.len() {
        b.resize(at + magic.len(), 0);
    }
    b[at..at + magic.len()].copy_from_slice(magic);
    b
}

fn as_num(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// Sizes for the raw blobs of a board: 64 KiB, less where the next raw write (or the first
/// partition) starts sooner, more where a rule's skip/length needs it.
fn raw_sizes(board: &Value) -> BTreeMap<String, u64> {
    let layout = &board["layout"];
    let first_part = as_num(&layout["start"])
        .or_else(|| as_num(&layout["align"]))
        .unwrap_or(1 << 20);
    let raws: Vec<(String, u64, u64, Option<u64>)> = arr(&board["raw"])
        .iter()
        .map(|r| {
            (
                first_from(r).unwrap().to_string(),
                as_num(&r["offset"]).unwrap_or(0),
                as_num(&r["skip"]).unwrap_or(0),
                as_num(&r["length"]),
            )
        })
        .collect();
    let mut cap: BTreeMap<String, u64> = BTreeMap::new();
    let mut need: BTreeMap<String, u64> = BTreeMap::new();
    for (src, offset, skip, length) in &raws {
        let next = raws
            .iter()
            .map(|r| r.1)
            .filter(|o| o > offset)
            .chain([first_part])
            .min()
            .unwrap();
        match length {
            Some(l) => {
                let n = need.entry(src.clone()).or_insert(0);
                *n = (*n).max(skip + l);
            }
            None => {
                let c = cap.entry(src.clone()).or_insert(BLOB);
                *c = (*c).min(skip + (next - offset));
                let n = need.entry(src.clone()).or_insert(0);
                *n = (*n).max(skip + 1);
            }
        }
    }
    need.into_iter()
        .map(|(src, n)| {
            let c = cap.get(&src).copied().unwrap_or(BLOB);
            (src, c.min(BLOB.max(n)).max(n))
        })
        .collect()
}

/// A synthetic images directory for `board`: its required artifacts (or, with `full`, every
/// non-glob source its rules name, except bootloader configs that have a fallback text),
/// plus skiff-release and the fixtures' DTBs.
fn synth_images(board: &Value, full: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let raw = raw_sizes(board);
    let mut names: Vec<(String, String)> = Vec::new();
    for r in arr(&board["files"]) {
        let required = r["required"] == Value::Bool(true);
        // A rule sharing another's source (boot.scr from boot.txt) has that rule's fallback.
        let has_text = r["text"].is_string() || r["same_as"].is_string();
        if has_text || !(required || full) {
            continue;
        }
        if let Some(f) = first_from(r) {
            names.push((f.to_string(), r["to"].as_str().unwrap_or("").to_string()));
        }
    }
    for r in arr(&board["raw"]) {
        if r["required"] != Value::Bool(false) || full {
            names.push((first_from(r).unwrap().to_string(), String::new()));
        }
    }
    for (name, to) in names {
        if is_pattern(&name) {
            continue;
        }
        let path = root.join(&name);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if name.ends_with(".squashfs") {
            std::fs::copy(fixtures().join("rootfs.squashfs"), &path).unwrap();
        } else if is_dir_source(&name, &to) {
            std::fs::create_dir_all(&path).unwrap();
            let leaf = format!("from-{name}.bin");
            std::fs::write(path.join(&leaf), noise(&leaf, 4096)).unwrap();
        } else {
            let len = raw.get(&name).copied().unwrap_or(BLOB);
            std::fs::write(&path, with_magic(&name, noise(&name, len))).unwrap();
        }
    }
    std::fs::write(
        root.join("skiff-release"),
        format!("NAME=SkiffOS\nVERSION={VERSION}\nID=skiff\n"),
    )
    .unwrap();
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "dtb") {
            std::fs::copy(&p, root.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
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

/// Everything test (a) checks for one board; returns the problems found.
fn check_board(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let mut err = |m: String| errs.push(format!("{name}: {m}"));
    let def = show(name);
    let images = synth_images(&def, false);
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
    let plan = plan(name, images.path());
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

    // Every raw blob is on the disk byte for byte.
    let raw = arr(&plan["raw"]);
    if raw.len() != arr(&def["raw"]).len() {
        err(format!(
            "{} raw writes planned, board has {}",
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
    {
        return;
    }
    let names = board_names();
    assert!(names.len() >= 50, "every SkiffOS disk board: {names:?}");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let chunks: Vec<Vec<String>> = (0..threads)
        .map(|t| names.iter().skip(t).step_by(threads).cloned().collect())
        .collect();
    let errs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|c| s.spawn(move || c.iter().flat_map(|n| check_board(n)).collect::<Vec<_>>()))
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

fn build_synth(board: &str, full: bool, tweak: impl FnOnce(&Path)) -> Built {
    let def = show(board);
    let images = synth_images(&def, full);
    tweak(images.path());
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("disk.img");
    build(board, images.path(), &img);
    let plan = plan(board, images.path());
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
    {
        return;
    }
    // On FAT (odroid/xu), with boot.txt beside it.
    let b = build_synth("odroid/xu", false, |_| {});
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
    let b = build_synth("allwinner/nezha", false, |d| {
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
    let b = build_synth("pine64/phone", false, |_| {});
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

fn dtbs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dtb"))
        .map(|n| format!("/{n}"))
        .collect();
    v.sort();
    v
}

#[test]
fn representative_boards_match_skiffos_layouts() {
    if !need("sfdisk", "fdisk")
        || !need("blkid", "util-linux")
        || !need("mcopy", "mtools")
        || !need("debugfs", "e2fsprogs")
    {
        return;
    }

    // pi/4 (catalog §3.1): GPT, every partition named `primary`; FAT32 BOOT msftdata, ext4
    // rootfs and persist Linux data; no flags; first partition at 1 MiB.
    let b = build_synth("pi/4", true, |_| {});
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
    // rootfs.cpio.lz4, rootfs.squashfs, skiff-init/ → boot; rootfs_part/ → rootfs;
    // persist_part/ → persist.
    let boot = b.files("boot");
    let mut want = set(&[
        "/Image",
        "/from-rpi-firmware.bin",
        "/config.txt",
        "/cmdline.txt",
        "/from-boot_part.bin",
        "/rootfs.cpio.lz4",
        "/rootfs.squashfs",
        "/skiff-init/from-skiff-init.bin",
    ]);
    want.extend(dtbs());
    assert_eq!(names(&boot), want);
    assert_eq!(boot["/config.txt"], b.rule_text("config.txt").as_bytes());
    assert_eq!(boot["/cmdline.txt"], b.rule_text("cmdline.txt").as_bytes());
    assert!(String::from_utf8_lossy(&boot["/config.txt"]).contains("kernel=Image\n"));
    assert_eq!(names(&b.files("rootfs")), set(&["/from-rootfs_part.bin"]));
    assert_eq!(names(&b.files("persist")), set(&["/from-persist_part.bin"]));
    assert!(arr(&b.plan["raw"]).is_empty(), "no raw writes on a Pi");

    // odroid/xu (catalog §3.2): MBR; FAT32 `boot` 0x0c active from 2 MiB, ext4 rootfs and
    // persist 0x83.
    let b = build_synth("odroid/xu", true, |_| {});
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
    want.extend(dtbs());
    assert_eq!(names(&boot), want);
    assert_eq!(names(&b.files("rootfs")), set(&["/from-rootfs_part.bin"]));
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
            ("u-boot-dtb.bin".to_string(), 32256),
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
    let b = build_synth("intel/desktop", true, |_| {});
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
    assert_eq!(names(&b.files("efi")), set(&["/from-efi-part.bin"]));
    let sk = b.files("skiffos");
    let v = format!("{VERSION}-1");
    assert_eq!(
        names(&sk),
        set(&[
            &format!("/boot/bzImage-skiffos-{v}"),
            &format!("/boot/init-skiffos-{v}.squashfs"),
            &format!("/boot/initrd-skiffos-{v}"),
            "/boot/refind_linux.conf",
            "/boot/skiff-init/from-skiff-init.bin",
            "/boot/from-boot_part.bin",
            "/rootfs/from-rootfs_part.bin",
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

/// Runs a build expected to be refused; returns stderr after checking exit 2 and one line.
fn refused(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "exit 2; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn missing_bootloader_blob_names_board_artifact_and_places() {
    let def = show("bananapi/m1");
    let images = synth_images(&def, false);
    let blob = images.path().join("u-boot-sunxi-with-spl.bin");
    std::fs::remove_file(&blob).unwrap();
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("disk.img");
    let err = refused(&[
        "build",
        "--board",
        "bananapi/m1",
        "--images",
        images.path().to_str().unwrap(),
        "--output",
        img.to_str().unwrap(),
    ]);
    for want in [
        "bananapi/m1",
        "`u-boot-sunxi-with-spl.bin`",
        blob.to_str().unwrap(),
    ] {
        assert!(err.contains(want), "`{want}` not in: {err}");
    }
    assert!(!img.exists(), "no image left behind");
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
    let images = synth_images(&def, false);
    let blob_len = std::fs::metadata(images.path().join("u-boot-sunxi-with-spl.bin"))
        .unwrap()
        .len();
    assert_eq!(blob_len, BLOB);
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("disk.img");
    let err = refused(&[
        "--board-dir",
        user.path().to_str().unwrap(),
        "build",
        "--board",
        "test/overlap",
        "--images",
        images.path().to_str().unwrap(),
        "--output",
        img.to_str().unwrap(),
    ]);
    for want in [
        "test/overlap",
        "`intruder`",
        "[1,044,480, 1,110,016)",
        "partition boot [1,048,576, ",
    ] {
        assert!(err.contains(want), "`{want}` not in: {err}");
    }
    assert!(!img.exists(), "no image left behind");
}
