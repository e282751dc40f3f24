//! Release artifacts: .img.zst/.gz/.xz checked by their own tools, the bmap used by
//! bmaptool, SHA256SUMS by sha256sum, and reproducibility across directories, input mtimes
//! and owners.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// Builds pi/4 from `images` with `dir` as the working directory (`out` relative to it).
fn build_in(dir: &Path, images: &Path, out: &str, extra: &[&str]) {
    ok(&build_cmd("pi/4", images, Path::new(out), extra)
        .dir(dir)
        .output());
}

fn sha(p: &Path) -> String {
    skiff_flash::image::sums::sha256_file(p).unwrap()
}

#[test]
fn compressed_images_decompress_to_the_raw_image() {
    if !need("zstd", "zstd") || !need("xz", "xz-utils") || !need("gzip", "gzip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    for out in ["pi4.img", "pi4.img.zst", "pi4.img.gz", "pi4.img.xz"] {
        build_in(dir.path(), &f, out, &[]);
    }
    let raw = std::fs::read(dir.path().join("pi4.img")).unwrap();
    tool_ok(
        "zstd",
        &["-t", "-q", dir.path().join("pi4.img.zst").to_str().unwrap()],
    );
    for (tool_name, file) in [
        ("zstd", "pi4.img.zst"),
        ("xz", "pi4.img.xz"),
        ("gzip", "pi4.img.gz"),
    ] {
        let out = Command::new(tool_name)
            .args(["-dc", dir.path().join(file).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool_name} -d {file}");
        assert!(out.stdout == raw, "{file} does not decompress to the .img");
    }
    // Compressed outputs are far smaller than the image.
    let zst = std::fs::metadata(dir.path().join("pi4.img.zst"))
        .unwrap()
        .len();
    assert!(zst < raw.len() as u64 / 50, "{zst}");
}

#[test]
fn checksums_cover_every_output() {
    if !need("sha256sum", "coreutils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    build_in(dir.path(), &f, "pi4.img.zst", &["--bmap", "--checksums"]);
    build_in(dir.path(), &f, "pi4.img", &["--checksums"]);
    let sums = std::fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
    for name in [
        "pi4.img",
        "pi4.img.zst",
        "pi4.img.bmap",
        "pi4.img.manifest.json",
        "pi4.img.zst.manifest.json",
    ] {
        assert!(
            sums.contains(&format!("  {name}\n")),
            "{name} missing from:\n{sums}"
        );
    }
    let out = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The manifest records both checksums of the compressed build.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("pi4.img.zst.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["image"]["file_sha256"].as_str().unwrap(),
        sha(&dir.path().join("pi4.img.zst"))
    );
    assert_eq!(
        m["image"]["image_sha256"].as_str().unwrap(),
        sha(&dir.path().join("pi4.img"))
    );
}

#[test]
fn bmaptool_flashes_our_image_and_the_card_verifies() {
    if !need("bmaptool", "bmap-tools") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    build_in(dir.path(), &f, "pi4.img", &["--bmap"]);
    // A card full of old data: bmaptool writes only mapped blocks.
    let card = dir.path().join("card.img");
    std::fs::write(&card, vec![0xA5u8; 400 << 20]).unwrap();
    if !need("losetup", "mount") || !need("partx", "util-linux") {
        return;
    }
    assert!(
        is_root(),
        "loop devices need root (or set SKIFF_FLASH_TEST_ALLOW_MISSING=1)"
    );
    let dev = losetup(&["-f", "--show", card.to_str().unwrap()]);
    let lo = Loop { dev };
    let out = tool_ok(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            dir.path().join("pi4.img.bmap").to_str().unwrap(),
            dir.path().join("pi4.img").to_str().unwrap(),
            &lo.dev,
        ],
    );
    assert!(!out.to_lowercase().contains("mismatch"), "{out}");
    tool_ok("partx", &["-a", &lo.dev]);
    let o = Command::new(bin())
        .args([
            "verify",
            &lo.dev,
            "--board",
            "pi/4",
            "--images",
            f.to_str().unwrap(),
        ])
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let (code, fsck) = tool("fsck.fat", &["-n", &lo.part(1)]);
    assert_eq!(code, 0, "FAT clean over old data: {fsck}");
    for n in [2, 3] {
        let (code, out) = tool("e2fsck", &["-fn", &lo.part(n)]);
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn builds_are_reproducible_across_directories_mtimes_and_owners() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // The same inputs, copied elsewhere, with other mtimes, modes of the directory and (as
    // root) other owners.
    let images_b = b.path().join("some/other/place/images");
    copy_tree(&fixtures(), &images_b);
    let stamp = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567_890);
    let mut stack = vec![images_b.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            if !md.file_type().is_symlink() {
                let f = std::fs::File::options().read(true).open(&p).unwrap();
                f.set_modified(stamp).unwrap();
                if is_root() {
                    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
                }
            }
        }
    }
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    build_in(a.path(), &fixtures(), "x.img.zst", &["--bmap"]);
    build_in(b.path(), &images_b, "x.img.zst", &["--bmap"]);
    build_in(a.path(), &fixtures(), "x.img", &[]);
    build_in(b.path(), &images_b, "x.img", &[]);
    for name in [
        "x.img",
        "x.img.zst",
        "x.img.bmap",
        "x.img.manifest.json",
        "x.img.zst.manifest.json",
    ] {
        assert_eq!(
            sha(&a.path().join(name)),
            sha(&b.path().join(name)),
            "{name} differs"
        );
    }
    // Nothing of the build machine leaks into the manifest.
    let m = std::fs::read_to_string(a.path().join("x.img.manifest.json")).unwrap();
    assert!(
        !m.contains(a.path().to_str().unwrap()) && !m.contains("/work") && !m.contains("/tmp"),
        "{m}"
    );
}
