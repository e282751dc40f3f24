//! Signed releases: keys and signatures checked by minisign itself (both ways), a signed
//! image flashed with a trusted key onto a loop device, and every refusal — wrong key,
//! missing or broken signature, edited manifest, tampered image bytes — writing nothing or
//! leaving no partition table.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

fn need_minisign() -> bool {
    need("minisign", "minisign")
}

/// `keygen DIR/NAME`; gives the secret and public key paths.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let out = ok(&sf(&["keygen", key.to_str().unwrap()]).output());
    let public = dir.join(format!("{name}.pub"));
    let line = std::fs::read_to_string(&public).unwrap();
    assert_eq!(
        out.lines().last(),
        line.lines().nth(1),
        "keygen prints the one-line public key"
    );
    (key, public)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn manifest_of(img: &Path) -> PathBuf {
    PathBuf::from(format!("{}.manifest.json", img.display()))
}

fn sig_of(img: &Path) -> PathBuf {
    PathBuf::from(format!("{}.manifest.json.sig", img.display()))
}

fn flash_trusted(dev: &str, img: &Path, key: &str) -> std::process::Output {
    sf(&[
        "flash",
        dev,
        "--image",
        s(img),
        "--yes",
        "--trusted-key",
        key,
    ])
    .output()
}

/// A copy of the fixture images whose kernel differs in its last byte: a newer build.
fn images_with_another_kernel() -> tempfile::TempDir {
    let images = images_copy();
    let kernel = images.path().join("Image");
    let mut k = std::fs::read(&kernel).unwrap();
    let n = k.len();
    k[n - 1] ^= 0xff;
    std::fs::write(&kernel, &k).unwrap();
    images
}

/// The card holds no partition table a kernel or bootloader would use.
fn no_table(card: &Card) {
    let (code, out) = tool("sfdisk", &["-d", &card.dev]);
    assert_ne!(code, 0, "a table survived: {out}");
}

#[test]
fn keys_are_minisign_keys() {
    if !need_minisign() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "release.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key mode");
    // minisign signs with our secret key and checks with our public key.
    let file = dir.path().join("data");
    std::fs::write(&file, b"some release").unwrap();
    tool_ok("minisign", &["-S", "-s", s(&key), "-m", s(&file)]);
    tool_ok("minisign", &["-V", "-p", s(&public), "-m", s(&file)]);
    // A key is never overwritten.
    let before = std::fs::read(&key).unwrap();
    refused(
        &sf(&["keygen", s(&key)]).output(),
        2,
        &["exists", "not overwriting"],
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn a_signed_build_checks_with_minisign_and_flashes_with_its_key() {
    if !need_minisign() || !need("sgdisk", "gdisk") {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let img = dir.path().join("pi4.img.zst");
    build_pi4(&fixtures(), &img, &["--sign", s(&key), "--checksums"]);
    let (m, sig) = (manifest_of(&img), sig_of(&img));
    tool_ok(
        "minisign",
        &["-V", "-p", s(&public), "-m", s(&m), "-x", s(&sig)],
    );
    let sums = std::fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
    assert!(sums.contains("pi4.img.zst.manifest.json.sig"), "{sums}");
    // Reproducible: the same inputs and epoch sign to the same bytes.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let img2 = again.join("pi4.img.zst");
    build_pi4(&fixtures(), &img2, &["--sign", s(&key), "--checksums"]);
    assert_eq!(
        std::fs::read(&sig).unwrap(),
        std::fs::read(sig_of(&img2)).unwrap()
    );

    let out = flash_trusted(&card.dev, &img, s(&public));
    let text = ok(&out);
    assert!(text.contains("signed by trusted key"), "{text}");
    ok(&sf(&["verify", &card.dev, "--image", s(&img)]).output());
    let v = tool_ok("sgdisk", &["-v", &card.dev]);
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn a_key_made_by_minisign_signs_and_its_one_line_form_is_trusted() {
    if !need_minisign() {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = (dir.path().join("m.key"), dir.path().join("m.pub"));
    tool_ok("minisign", &["-G", "-W", "-p", s(&public), "-s", s(&key)]);
    let img = dir.path().join("pi4.img");
    build_pi4(&fixtures(), &img, &["--sign", s(&key), "--bmap"]);
    let line = std::fs::read_to_string(&public).unwrap();
    let line = line.lines().nth(1).unwrap().to_string();
    ok(&flash_trusted(&card.dev, &img, &line));
    ok(&sf(&["verify", &card.dev, "--image", s(&img)]).output());
}

#[test]
fn unsigned_wrong_key_and_edited_manifests_are_refused_before_any_write() {
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let (_, other) = keygen(dir.path(), "other");
    let img = dir.path().join("pi4.img.zst");
    build_pi4(&fixtures(), &img, &["--sign", s(&key)]);
    // The card holds something else first; a refusal leaves it exactly so.
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(&card.backing)
            .unwrap(),
        &[0x5a; 4 << 20],
        0,
    )
    .unwrap();
    let before = card.hash();
    let check = |out: std::process::Output, expect: &[&str]| {
        refused(&out, 2, expect);
        assert_eq!(card.hash(), before, "the card was written: {expect:?}");
    };
    check(
        flash_trusted(&card.dev, &img, s(&other)),
        &["manifest.json", "not among the trusted keys"],
    );
    let (m, sig) = (manifest_of(&img), sig_of(&img));
    let text = std::fs::read_to_string(&m).unwrap();
    let edited = text.replacen("\"epoch\": ", "\"epoch\": 1", 1);
    assert_ne!(edited, text);
    std::fs::write(&m, &edited).unwrap();
    check(
        flash_trusted(&card.dev, &img, s(&public)),
        &["manifest.json", "signature does not match"],
    );
    std::fs::write(&m, &text).unwrap();
    let signature = std::fs::read(&sig).unwrap();
    std::fs::write(&sig, b"untrusted comment: x\nnot base64\n").unwrap();
    check(
        flash_trusted(&card.dev, &img, s(&public)),
        &["manifest.json", "not in minisign format"],
    );
    std::fs::remove_file(&sig).unwrap();
    check(
        flash_trusted(&card.dev, &img, s(&public)),
        &["manifest.json", "no signature"],
    );
    // The trusted keys may come from the environment.
    check(
        sf(&["flash", &card.dev, "--image", s(&img), "--yes"])
            .env("SKIFF_FLASH_TRUSTED_KEYS", &public)
            .output(),
        &["no signature"],
    );
    std::fs::write(&sig, &signature).unwrap();
    std::fs::remove_file(&m).unwrap();
    check(
        flash_trusted(&card.dev, &img, s(&public)),
        &["pi4.img.zst", "no manifest beside the image"],
    );
    // Without a trusted key, the image is written and the output says it was not checked.
    std::fs::write(&m, &text).unwrap();
    std::fs::remove_file(&sig).unwrap();
    let out = sf(&["flash", &card.dev, "--image", s(&img), "--yes"])
        .env_remove("SKIFF_FLASH_TRUSTED_KEYS")
        .output();
    assert!(ok(&out).contains("signature not checked"));
}

/// Offset of a byte inside the last mapped range of a raw image, from its bmap.
fn inside_last_range(bmap: &Path) -> u64 {
    let text = std::fs::read_to_string(bmap).unwrap();
    let last = text
        .split("<Range")
        .last()
        .and_then(|r| r.split('>').nth(1))
        .and_then(|r| r.split('<').next())
        .unwrap()
        .trim()
        .to_string();
    let first: u64 = last.split('-').next().unwrap().parse().unwrap();
    first * 4096 + 100
}

#[test]
fn tampered_image_bytes_leave_no_table() {
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let img = dir.path().join("pi4.img");
    build_pi4(&fixtures(), &img, &["--sign", s(&key), "--bmap"]);
    // A good card first: the failed flash must not leave its table either.
    ok(&flash_trusted(&card.dev, &img, s(&public)));
    let at = inside_last_range(&dir.path().join("pi4.img.bmap"));
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(&img, &bytes).unwrap();
    refused(
        &flash_trusted(&card.dev, &img, s(&public)),
        2,
        &["pi4.img", "do not match the signed manifest"],
    );
    no_table(&card);

    // A valid compressed stream of other content, under a genuine signed manifest.
    let images = images_with_another_kernel();
    let a = dir.path().join("a.img.zst");
    build_pi4(&fixtures(), &a, &["--sign", s(&key)]);
    ok(&flash_trusted(&card.dev, &a, s(&public)));
    let other = tempfile::tempdir().unwrap();
    let b = other.path().join("a.img.zst");
    build_pi4(images.path(), &b, &[]);
    std::fs::copy(manifest_of(&a), manifest_of(&b)).unwrap();
    std::fs::copy(sig_of(&a), sig_of(&b)).unwrap();
    refused(
        &flash_trusted(&card.dev, &b, s(&public)),
        2,
        &["a.img.zst", "do not match the signed manifest"],
    );
    no_table(&card);
}

#[test]
fn upgrade_and_verify_from_a_release_check_its_signature_before_any_write() {
    if !need_all(&[("e2fsck", "e2fsprogs"), ("fsck.fat", "dosfstools")]) {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let (_, other) = keygen(dir.path(), "other");
    let a = dir.path().join("a.img.zst");
    build_pi4(&fixtures(), &a, &["--sign", s(&key)]);
    ok(&flash_trusted(&card.dev, &a, s(&public)));
    // Release B: another kernel, signed by the same key, as a raw image.
    let images = images_with_another_kernel();
    let b = dir.path().join("b.img");
    build_pi4(images.path(), &b, &["--sign", s(&key), "--bmap"]);
    let upgrade = |img: &Path, key: &Path| {
        sf(&[
            "upgrade",
            &card.dev,
            "--image",
            s(img),
            "--yes",
            "--trusted-key",
            s(key),
        ])
        .output()
    };
    let verify = |img: &Path, key: &Path| {
        sf(&[
            "verify",
            &card.dev,
            "--image",
            s(img),
            "--trusted-key",
            s(key),
        ])
        .output()
    };
    ok(&verify(&a, &public));
    refused(
        &verify(&a, &other),
        2,
        &["a.img.zst.manifest.json", "not among the trusted keys"],
    );

    let before = card.hash();
    refused(
        &upgrade(&b, &other),
        2,
        &["b.img.manifest.json", "not among the trusted keys"],
    );
    assert_eq!(card.hash(), before, "upgraded with the wrong key");
    // One byte flipped inside the image's last mapped range: refused while it is read.
    let good = std::fs::read(&b).unwrap();
    let mut bad = good.clone();
    bad[inside_last_range(&dir.path().join("b.img.bmap")) as usize] ^= 0x01;
    std::fs::write(&b, &bad).unwrap();
    refused(
        &upgrade(&b, &public),
        2,
        &["b.img", "do not match the signed manifest"],
    );
    assert_eq!(card.hash(), before, "upgraded from a tampered image");
    std::fs::write(&b, &good).unwrap();
    let sig = sig_of(&b);
    let signature = std::fs::read(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    refused(
        &upgrade(&b, &public),
        2,
        &["b.img.manifest.json", "no signature"],
    );
    assert_eq!(card.hash(), before, "upgraded without a signature");
    std::fs::write(&sig, &signature).unwrap();

    ok(&upgrade(&b, &public));
    ok(&verify(&b, &public));
    let out = verify(&a, &public);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the old release no longer matches"
    );
    let (code, t) = tool("fsck.fat", &["-n", &card.part(1)]);
    assert_eq!(code, 0, "{t}");
}
