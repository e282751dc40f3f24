//! `bootcfg::uimage::script` against the real mkimage (u-boot-tools): same inputs, same
//! SOURCE_DATE_EPOCH, same bytes; and `parse` on mkimage's own output.

mod common;

use std::process::Command;

use common::{EPOCH, need};
use skiff_flash::format::bootcfg::uimage::{self, Arch};

const CRLF_BOOT_TXT: &str = "# SkiffOS boot script\r\n\
    setenv condev \"console=ttyS2,1500000n8 console=tty0\"\r\n\
    # setenv silent 1\r\n\
    setenv bootargs \"${condev} root=/dev/mmcblk0p2 rootwait\"\r\n\
    load mmc 0:1 ${kernel_addr_r} Image\r\n\
    load mmc 0:1 ${fdt_addr_r} rk3308-rock-pi-s.dtb\r\n\
    load mmc 0:1 ${ramdisk_addr_r} rootfs.cpio.uboot\r\n\
    booti ${kernel_addr_r} ${ramdisk_addr_r} ${fdt_addr_r}\r\n";

fn epoch() -> u32 {
    EPOCH.parse().expect("common::EPOCH is a u32")
}

/// Runs mkimage on `script` with SOURCE_DATE_EPOCH fixed; `Err` carries its output when it
/// refuses. `full` spells out -O/-a/-e, otherwise mkimage's defaults apply.
fn mkimage(arch: &str, name: &str, script: &[u8], full: bool) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("boot.txt");
    let output = dir.path().join("boot.scr");
    std::fs::write(&input, script).expect("writing boot.txt");
    let mut cmd = Command::new("mkimage");
    cmd.env("SOURCE_DATE_EPOCH", EPOCH).args(["-A", arch]);
    if full {
        cmd.args(["-O", "linux", "-a", "0", "-e", "0"]);
    }
    cmd.args(["-T", "script", "-C", "none", "-n", name, "-d"])
        .arg(&input)
        .arg(&output);
    let out = cmd.output().expect("running mkimage");
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(std::fs::read(&output).expect("reading boot.scr"))
}

fn have_mkimage() -> bool {
    need("mkimage", "u-boot-tools")
}

/// Asserts both the full and the short mkimage command lines produce exactly our bytes.
fn same_as_mkimage(arch: &str, name: &str, script: &[u8]) {
    let ours = uimage::script(
        Arch::from_name(arch).expect("known arch"),
        name,
        script,
        epoch(),
    )
    .expect("script image");
    for full in [true, false] {
        let theirs = mkimage(arch, name, script, full).expect("mkimage succeeds");
        assert_eq!(
            ours.len(),
            theirs.len(),
            "length differs from mkimage (arch {arch}, name {name:?}, {} script bytes)",
            script.len()
        );
        if let Some(at) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "first difference from mkimage at byte {at}: ours {:#04x}, mkimage {:#04x} \
                 (arch {arch}, name {name:?}, {} script bytes, full args {full})",
                ours[at],
                theirs[at],
                script.len()
            );
        }
    }
}

#[test]
fn one_line_script() {
    if have_mkimage() {
        same_as_mkimage("arm", "NAME", b"echo hi\n");
    }
}

#[test]
fn crlf_boot_txt_and_its_silent_edit() {
    if !have_mkimage() {
        return;
    }
    same_as_mkimage("arm64", "SkiffOS", CRLF_BOOT_TXT.as_bytes());
    let silent = uimage::silent_console(CRLF_BOOT_TXT);
    same_as_mkimage("arm64", "Skiff Rockpi S", silent.as_bytes());
}

#[test]
fn odd_length_script_is_not_padded() {
    if have_mkimage() {
        let script = b"setenv a 1\nboot";
        assert_ne!(script.len() % 4, 0);
        same_as_mkimage("riscv", "", script);
        same_as_mkimage("riscv", "SkiffOS", &script[..script.len() - 2]);
    }
}

#[test]
fn large_script() {
    if !have_mkimage() {
        return;
    }
    let mut script = Vec::with_capacity(100 * 1024);
    let mut i = 0u32;
    while script.len() < 100 * 1024 {
        script.extend_from_slice(format!("setenv var{i} value-{}\n", i * 7919).as_bytes());
        i += 1;
    }
    script.truncate(100 * 1024);
    same_as_mkimage("arm", &"N".repeat(32), &script);
}

#[test]
fn names_of_every_length() {
    if !have_mkimage() {
        return;
    }
    for name in ["", "a", "boot", &"x".repeat(31), &"y".repeat(32)] {
        same_as_mkimage("arm", name, b"boot\n");
    }
    // mkimage cuts longer names to 32 bytes rather than refusing them.
    same_as_mkimage("arm64", &"z".repeat(40), b"boot\n");
}

#[test]
fn every_arch_by_name() {
    if !have_mkimage() {
        return;
    }
    for arch in Arch::ALL {
        same_as_mkimage(arch.name(), "arch", b"echo arch\n");
    }
    same_as_mkimage("ppc", "alias", b"echo ppc\n");
}

#[test]
fn empty_script_is_refused_like_mkimage() {
    if !have_mkimage() {
        return;
    }
    let err = mkimage("arm", "empty", b"", true).expect_err("mkimage refuses empty input");
    assert!(err.contains("empty"), "mkimage said: {err}");
    let ours = uimage::script(Arch::Arm, "empty", b"", epoch()).expect_err("refused");
    assert!(ours.contains("empty"), "{ours}");
}

#[test]
fn parse_reads_mkimage_output() {
    if !have_mkimage() {
        return;
    }
    let img = mkimage("arm64", "SkiffOS", CRLF_BOOT_TXT.as_bytes(), true).expect("mkimage");
    let h = uimage::parse(&img).expect("parses");
    assert!(h.header_crc_ok && h.data_crc_ok, "{h:?}");
    assert_eq!(h.name, "SkiffOS");
    assert_eq!(h.time, epoch());
    assert_eq!(h.size as usize, 8 + CRLF_BOOT_TXT.len());
    assert_eq!((h.os, h.arch, h.kind, h.comp), (5, 22, 6, 0));
    assert_eq!((h.load, h.entry), (0, 0));

    let mut flipped = img.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x20;
    let h = uimage::parse(&flipped).expect("parses");
    assert!(h.header_crc_ok, "payload edits leave the header CRC intact");
    assert!(
        !h.data_crc_ok,
        "flipped payload byte must fail the data CRC"
    );
}

#[test]
fn silent_console_agrees_with_skiffos_sed() {
    // The edit SkiffOS's scripts make before mkimage; its second expression is unanchored,
    // so the two agree only when `# setenv silent` starts its line, as in every boot.txt.
    if !need("sed", "sed") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("boot.txt");
    let input = format!("{CRLF_BOOT_TXT}setenv condev x\n# setenv silent 1");
    std::fs::write(&file, &input).expect("writing boot.txt");
    let status = Command::new("sed")
        .args(["-i", "-e", "/^setenv condev/s/^/# /"])
        .args(["-e", "s/# setenv silent/setenv silent/"])
        .arg(&file)
        .status()
        .expect("running sed");
    assert!(status.success());
    let sed = std::fs::read_to_string(&file).expect("reading boot.txt");
    assert_eq!(uimage::silent_console(&input), sed);
}
