//! jetson/nano: the GPT read from L4T's signed flash.xml (a fixture shaped like the Jetson
//! Nano SD layout, with synthetic partition files), each partition holding its file, APP the
//! ext4 persist with SkiffOS's install files. Checked with sgdisk, sfdisk, e2fsck, debugfs,
//! the kernel (loop device), and the errors for every way the L4T inputs can be wrong.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const DTB: &str = "tegra210-p3448-0000-p3449-0000-b00.dtb";

/// One partition of the Nano's `sdcard` device after APP.
struct Part {
    name: &'static str,
    /// Size in bytes.
    size: u64,
    /// The file it holds, empty for none.
    file: &'static str,
    /// Whether the file is signed (in `signed/`) or plain (in `bootloader/`).
    signed: bool,
}

/// The signed device tree, which two partitions hold.
const DTB_SIGNED: &str = "tegra210-p3448-0000-p3449-0000-b00.dtb.encrypt";

/// The Nano's `sdcard` partitions after APP as L4T 32.x lists them, one a line:
/// name, size in bytes, `signed`/`plain`/`-` (no file), file.
const SD_ROWS: &str = "
TBC     131072 signed nvtboot_cpu.bin.encrypt
RP1     458752 signed DTB
EBT     589824 signed cboot.bin.encrypt
WB0      65536 signed warmboot.bin.encrypt
BPF     196608 signed sc7entry-firmware.bin.encrypt
BPF-DTB 393216 -
FX       65536 -
TOS     589824 signed tos-mon-only.img.encrypt
DTB     458752 signed DTB
LNX     655360 signed boot.img.encrypt
EKS      65536 plain  eks.img
BMP      81920 plain  bmp.blob
RP4     131072 plain  rp4.blob
";

/// `SD_ROWS` read once.
static SD: std::sync::LazyLock<Vec<Part>> = std::sync::LazyLock::new(|| {
    SD_ROWS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&'static str> = l.split_whitespace().collect();
            let file = match f.get(3) {
                Some(&"DTB") => DTB_SIGNED,
                Some(file) => file,
                None => "",
            };
            Part {
                name: f[0],
                size: f[1].parse().unwrap(),
                file,
                signed: f[2] == "signed",
            }
        })
        .collect()
});

fn partition_xml(name: &str, size: u64, file: &str) -> String {
    let file = if file.is_empty() {
        String::new()
    } else {
        format!("            <filename> {file} </filename>\n")
    };
    format!(
        "        <partition name=\"{name}\" type=\"data\">\n\
         \x20           <allocation_policy> sequential </allocation_policy>\n\
         \x20           <size> {size} </size>\n{file}\
         \x20       </partition>\n"
    )
}

/// A signed flash.xml with an `spi` device (ignored) and the Nano's `sdcard` device.
fn flash_xml() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!-- test layout -->\n<partition_layout version=\"01.00.0000\">\n\
         \x20   <device type=\"spi\" instance=\"0\">\n",
    );
    x += &partition_xml("BCT", 262144, "");
    x += &partition_xml("NVC", 196608, "nvtboot.bin.encrypt");
    x += "    </device>\n    <device type=\"sdcard\" instance=\"0\">\n";
    x += "        <partition name=\"GP1\" type=\"GP1\"> <size> 512 </size> </partition>\n";
    x += &partition_xml("APP", 15032385536, "system.img");
    for p in SD.iter() {
        x += &partition_xml(p.name, p.size, p.file);
    }
    x += "        <partition name=\"GPT\" type=\"GPT\"> <size> 512 </size> </partition>\n";
    x += "    </device>\n</partition_layout>\n";
    x
}

/// Deterministic non-zero bytes for a partition file.
fn pattern(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u32 = seed
        .bytes()
        .fold(2166136261, |h, b| (h ^ b as u32).wrapping_mul(16777619));
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) | 1
        })
        .collect()
}

/// A SkiffOS jetson/nano images directory with signed L4T output.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let i = dir.path();
        let w = |p: &str, b: &[u8]| {
            let p = i.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        };
        w("Image", &arm64_image(3 * MIB + 17));
        w(DTB, &fdt("nvidia,p3449-0000-b00+p3448-0000-b00"));
        w("rootfs.cpio.uboot", &pattern("initramfs", 2 * MIB as usize));
        w("u-boot-dtb.bin", &pattern("u-boot", 500000));
        w("rootfs_part/modules.squashfs", &pattern("modules", 70000));
        w("persist_part/skiff/hello.txt", b"persisted\n");
        let boot = "linux4tegra/bootloader";
        w(&format!("{boot}/signed/flash.xml"), flash_xml().as_bytes());
        for p in SD.iter() {
            if p.file.is_empty() {
                continue;
            }
            // Files smaller than their partition, one exactly its size.
            let len = if p.name == "BMP" {
                p.size
            } else {
                p.size / 3 + 11
            };
            let data = pattern(p.file, len as usize);
            let at = if p.signed { "signed/" } else { "" };
            w(&format!("{boot}/{at}{}", p.file), &data);
        }
        // An unsigned copy beside a signed file must lose.
        w(&format!("{boot}/cboot.bin"), b"unsigned");
        w(
            &format!("{boot}/cboot.bin.encrypt"),
            &pattern("decoy", 1000),
        );
        Images { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn s(&self) -> &str {
        self.path().to_str().unwrap()
    }

    /// `plan` of jetson/nano over these images, with `extra` arguments.
    fn plan(&self, extra: &[&str]) -> std::process::Output {
        let args = ["plan", "--board", "jetson/nano", "--images", self.s()];
        run(&[&args[..], extra].concat())
    }

    /// `verify` of `target` (an image or a device) against jetson/nano and these images.
    fn verify(&self, target: &str) -> std::process::Output {
        run(&[
            "verify",
            target,
            "--board",
            "jetson/nano",
            "--images",
            self.s(),
        ])
    }

    fn signed(&self) -> PathBuf {
        self.path().join("linux4tegra/bootloader/signed")
    }

    /// Where partition `name`'s file is (None: no file).
    fn file(&self, name: &str) -> Option<PathBuf> {
        let p = SD.iter().find(|p| p.name == name).unwrap();
        if p.file.is_empty() {
            return None;
        }
        let boot = self.path().join("linux4tegra/bootloader");
        Some(if p.signed {
            boot.join("signed").join(p.file)
        } else {
            boot.join(p.file)
        })
    }
}

fn build(images: &Images, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "build",
        "--board",
        "jetson/nano",
        "--images",
        images.s(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn sfdisk_parts(dev: &str) -> Vec<Value> {
    let j: Value = serde_json::from_str(&tool_ok("sfdisk", &["--json", dev])).unwrap();
    assert_eq!(j["partitiontable"]["label"], "gpt", "{j}");
    j["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// The table: APP is entry 1 and lies after all others; the others in flash.xml order, each
/// on a 1 MiB boundary, sized as flash.xml says; all Linux filesystem type, names from XML.
/// Returns (start, size) in bytes per entry.
fn check_table(dev: &str, disk: u64, app_fills: bool) -> Vec<(u64, u64)> {
    let v = tool_ok("sgdisk", &["-v", dev]);
    assert!(v.contains("No problems found"), "{v}");
    let p = tool_ok("sgdisk", &["-p", dev]);
    let parts = sfdisk_parts(dev);
    assert_eq!(parts.len(), 1 + SD.len(), "{p}");
    let linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let node = part["node"].as_str().unwrap();
        assert!(node.ends_with(&(i + 1).to_string()), "{node}");
        assert_eq!(part["type"], linux, "{p}");
        out.push((
            part["start"].as_u64().unwrap() * 512,
            part["size"].as_u64().unwrap() * 512,
        ));
    }
    assert_eq!(parts[0]["name"], "APP", "{p}");
    let mut end = MIB;
    for (i, Part { name, size, .. }) in SD.iter().enumerate() {
        let (start, len) = out[i + 1];
        assert_eq!(parts[i + 1]["name"], *name, "{p}");
        assert_eq!(len, *size, "{name}: {p}");
        assert_eq!(start % MIB, 0, "{name} on a 1 MiB boundary: {p}");
        assert!(start >= end, "{name} after the one before: {p}");
        assert!(start < end + MIB, "{name} right after the one before: {p}");
        end = start + len;
    }
    let (app_start, app_size) = out[0];
    assert_eq!(app_start, end.div_ceil(MIB) * MIB, "APP after all: {p}");
    if app_fills {
        let usable_end = (disk - 33 * 512) / MIB * MIB;
        assert_eq!(app_start + app_size, usable_end, "APP fills the disk: {p}");
    }
    out
}

/// Every partition with a file holds exactly it, zeros after; one without holds zeros.
fn check_partition_bytes(images: &Images, dev: &Path, ranges: &[(u64, u64)]) {
    for (i, Part { name, .. }) in SD.iter().enumerate() {
        let (start, len) = ranges[i + 1];
        let got = read_range(dev, start, len);
        let want = images
            .file(name)
            .map(|f| std::fs::read(f).unwrap())
            .unwrap_or_default();
        assert_eq!(&got[..want.len()], &want[..], "{name} holds its file");
        assert!(
            got[want.len()..].iter().all(|b| *b == 0),
            "{name}: zeros after the file"
        );
    }
}

/// Dumps `inside` of the ext4 filesystem `app` into `to` with debugfs; `to` is removed first,
/// so a file debugfs cannot find leaves nothing behind.
fn debugfs_dump(app: &str, inside: &str, to: &Path) {
    let _ = std::fs::remove_file(to);
    tool_ok(
        "debugfs",
        &["-R", &format!("dump {inside} {}", to.display()), app],
    );
}

/// APP is a clean ext4 `persist` with what SkiffOS's install puts there.
fn check_app(images: &Images, app: &str) {
    let (code, out) = tool("e2fsck", &["-fn", app]);
    assert_eq!(code, 0, "e2fsck APP: {out}");
    let label = tool_ok("e2label", &[app]);
    assert_eq!(label.trim(), "persist");
    let dump = tempfile::tempdir().unwrap();
    for (inside, source) in [
        ("/boot/Image", images.path().join("Image")),
        (&format!("/boot/{DTB}") as &str, images.path().join(DTB)),
        (
            "/boot/rootfs.cpio.uboot",
            images.path().join("rootfs.cpio.uboot"),
        ),
        (
            "/boot/rootfs/modules.squashfs",
            images.path().join("rootfs_part/modules.squashfs"),
        ),
        (
            "/skiff/hello.txt",
            images.path().join("persist_part/skiff/hello.txt"),
        ),
    ] {
        let to = dump.path().join("f");
        debugfs_dump(app, inside, &to);
        assert_eq!(
            std::fs::read(&to).unwrap_or_default(),
            std::fs::read(&source).unwrap(),
            "APP:{inside}"
        );
    }
    let txt = dump.path().join("boot.txt");
    debugfs_dump(app, "/boot/boot.txt", &txt);
    let txt = std::fs::read_to_string(txt).unwrap();
    for line in [
        "setenv ramdisk_addr_r \"0x93200000\"",
        "ext4load mmc 1:1 ${ramdisk_addr_r} /boot/rootfs.cpio.uboot",
        "ext4load mmc 1:1 ${kernel_addr_r} /boot/Image",
        "ext4load mmc 1:1 ${fdt_addr_r} /boot/tegra210-p3448-0000-p3449-0000-b00.dtb",
        "setenv bootargs \"${cbootargs} ${bootmem} ${condev} ${baseconfig} governor=${governor}\"",
        "booti ${kernel_addr_r} ${ramdisk_addr_r} ${fdt_addr_r}",
    ] {
        assert!(
            txt.lines().any(|l| l == line),
            "boot.txt has `{line}`:\n{txt}"
        );
    }
    let scr = dump.path().join("boot.scr");
    debugfs_dump(app, "/boot/boot.scr", &scr);
    let scr = std::fs::read(scr).unwrap();
    assert_eq!(
        &scr[..4],
        &[0x27, 0x05, 0x19, 0x56],
        "boot.scr is a U-Boot image"
    );
    assert_eq!(scr[29], 2, "mkimage -A arm");
    assert_eq!(scr[30], 6, "mkimage -T script");
    assert_eq!(&scr[32..39], b"SkiffOS");
}

#[test]
fn plan_lists_the_flash_xml_partitions() {
    let images = Images::new();
    let out = ok(&images.plan(&["--json"]));
    let plan: Value = serde_json::from_str(&out).unwrap();
    let parts = plan["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let mut want = vec!["APP"];
    want.extend(SD.iter().map(|p| p.name));
    assert_eq!(names, want);
    assert_eq!(parts[0]["id"], "persist");
    assert_eq!(parts[0]["number"], 1);
    assert_eq!(parts[0]["grows"], true);
    let ebt = parts.iter().find(|p| p["name"] == "EBT").unwrap();
    let src = ebt["image"]["source"].as_str().unwrap();
    assert!(
        src.ends_with("bootloader/signed/cboot.bin.encrypt"),
        "{src}"
    );
    let eks = parts.iter().find(|p| p["name"] == "EKS").unwrap();
    let src = eks["image"]["source"].as_str().unwrap();
    assert!(src.ends_with("bootloader/eks.img"), "{src}");
    assert!(parts.iter().find(|p| p["name"] == "FX").unwrap()["image"].is_null());
    // The table for people too.
    let text = ok(&images.plan(&[]));
    assert!(text.contains("l4t-sd"), "{text}");
    assert!(text.contains("RP4"), "{text}");
}

#[test]
fn build_writes_every_partition_and_the_persist() {
    if !need("sgdisk", "gdisk")
        || !need("sfdisk", "fdisk")
        || !need("e2fsck", "e2fsprogs")
        || !need("debugfs", "e2fsprogs")
    {
        return;
    }
    let images = Images::new();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nano.img");
    ok(&build(&images, &img, &[]));
    let disk = std::fs::metadata(&img).unwrap().len();
    let ranges = check_table(img.to_str().unwrap(), disk, false);
    check_partition_bytes(&images, &img, &ranges);
    let (start, size) = ranges[0];
    assert!(size >= 256 * MIB, "APP at least its minimum");
    let app = extract(&img, start, size);
    check_app(&images, app.path().to_str().unwrap());

    // With --size, APP takes the rest of the disk.
    let big = dir.path().join("big.img");
    ok(&build(&images, &big, &["--size", "1GiB"]));
    let ranges = check_table(big.to_str().unwrap(), 1 << 30, true);
    check_partition_bytes(&images, &big, &ranges);

    // And the manifest-free check of a built image against the board passes.
    let out = images.verify(img.to_str().unwrap());
    ok(&out);
}

#[test]
fn verify_board_finds_a_damaged_bootloader_partition() {
    let images = Images::new();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nano.img");
    ok(&build(&images, &img, &["--size", "512MiB"]));
    let plan: Value = serde_json::from_str(&ok(&images.plan(&["--json"]))).unwrap();
    let ebt = plan["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "EBT")
        .unwrap()["start"]
        .as_u64()
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0], ebt + 100).unwrap();
    }
    let out = images.verify(img.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(all.contains("EBT"), "{all}");
}

#[test]
fn flash_writes_the_card_the_kernel_reads() {
    if !need("sgdisk", "gdisk") || !need("e2fsck", "e2fsprogs") || !need("debugfs", "e2fsprogs") {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    // A used card: old bytes everywhere the layout goes.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&card.backing)
            .unwrap();
        f.write_all_at(&vec![0xa5u8; 32 * MIB as usize], 0).unwrap();
    }
    let images = Images::new();
    let out = run(&[
        "flash",
        &card.dev,
        "--board",
        "jetson/nano",
        "--images",
        images.s(),
        "--yes",
    ]);
    ok(&out);
    let ranges = check_table(&card.dev, 1 << 30, true);
    check_partition_bytes(&images, &card.backing, &ranges);
    let name = Path::new(&card.dev).file_name().unwrap().to_str().unwrap();
    for n in 1..=(1 + SD.len()) {
        assert!(
            Path::new(&format!("/sys/block/{name}/{name}p{n}")).exists(),
            "kernel sees p{n}"
        );
    }
    check_app(&images, &card.part(1));
    ok(&images.verify(&card.dev));
}

/// Runs a build expected to be refused: exit 2, one line naming `what`, no output left.
fn refused(images: &Images, what: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nano.img");
    let out = build(images, &img, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    for w in what {
        assert!(err.contains(w), "`{w}` in: {err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
    err
}

#[test]
fn missing_signed_output_names_the_flash_sh_step() {
    let images = Images::new();
    std::fs::remove_file(images.signed().join("flash.xml")).unwrap();
    refused(
        &images,
        &[
            "signed/flash.xml",
            "is missing",
            "flash.sh --no-flash --sign",
        ],
    );
    std::fs::remove_dir_all(images.signed()).unwrap();
    refused(
        &images,
        &[
            "bootloader/signed",
            "does not exist",
            "flash.sh --no-flash --sign",
        ],
    );
    // plan says the same.
    let out = images.plan(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("flash.sh --no-flash --sign"));
}

#[test]
fn malformed_flash_xml_is_refused_with_file_and_line() {
    let images = Images::new();
    let xml = images.signed().join("flash.xml");
    let good = flash_xml();
    let line_of = |needle: &str| good.lines().position(|l| l.contains(needle)).unwrap() + 1;

    let mut latin1 = good.clone().into_bytes();
    latin1.insert(100, 0xe9);
    std::fs::write(&xml, latin1).unwrap();
    refused(&images, &["flash.xml", "not UTF-8 text (byte 100)"]);

    std::fs::write(&xml, &good[..good.len() - 30]).unwrap();
    refused(&images, &["flash.xml:", "not valid XML"]);

    let ebt = line_of("name=\"EBT\"") + 2;
    std::fs::write(
        &xml,
        good.replace("<size> 589824 </size>", "<size> EBTSIZE </size>"),
    )
    .unwrap();
    refused(
        &images,
        &[&format!("flash.xml:{ebt}:"), "EBTSIZE", "not a byte count"],
    );

    std::fs::write(&xml, good.replace("type=\"sdcard\"", "type=\"sdmmc_user\"")).unwrap();
    refused(
        &images,
        &[
            "flash.xml:3:",
            "no <device type=\"sdcard\">",
            "`sdmmc_user`",
        ],
    );

    std::fs::write(&xml, good.replace("name=\"APP\"", "name=\"UDA\"")).unwrap();
    refused(&images, &["flash.xml:", "no APP partition"]);

    let many: String = (0..130)
        .map(|i| partition_xml(&format!("P{i}"), 512, ""))
        .collect();
    std::fs::write(
        &xml,
        good.replace(
            "    </device>\n</partition_layout>",
            &format!("{many}    </device>\n</partition_layout>"),
        ),
    )
    .unwrap();
    refused(
        &images,
        &["device `sdcard` has 144 partitions, a GPT holds 128"],
    );

    let fx = line_of("name=\"FX\"");
    std::fs::write(&xml, good.replace("name=\"FX\"", "name=\"TBC\"")).unwrap();
    refused(
        &images,
        &[&format!("flash.xml:{fx}:"), "TBC is defined twice"],
    );
}

#[test]
fn missing_or_oversized_partition_files_are_refused() {
    let images = Images::new();
    let tos = images.file("TOS").unwrap();
    let data = std::fs::read(&tos).unwrap();
    std::fs::remove_file(&tos).unwrap();
    refused(
        &images,
        &[
            "partition TOS",
            "flash.xml:",
            "`tos-mon-only.img.encrypt` is in neither",
        ],
    );
    std::fs::write(&tos, &data).unwrap();

    let rp4 = images.file("RP4").unwrap();
    std::fs::write(&rp4, vec![7u8; 131073]).unwrap();
    refused(
        &images,
        &[
            "rp4.blob",
            "131,073 bytes do not fit partition RP4 of 131,072 bytes",
        ],
    );
}

#[test]
fn upgrade_is_refused_for_l4t_cards() {
    let images = Images::new();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nano.img");
    ok(&build(&images, &img, &["--size", "512MiB"]));
    let before = std::fs::read(&img).unwrap();
    let out = run(&[
        "upgrade",
        img.to_str().unwrap(),
        "--board",
        "jetson/nano",
        "--images",
        images.s(),
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("jetson/nano"));
    assert!(std::fs::read(&img).unwrap() == before, "nothing written");
}
