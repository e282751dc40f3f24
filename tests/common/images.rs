//! Inputs and builds: the pi/4 fixture images directory (and copies of it), synthetic
//! kernels and device trees whose magic a reader checks, and the one way to run `build`.
//! Not whole SkiffOS images directories per board (`synth`).

use std::path::{Path, PathBuf};

use super::files::copy_tree;
use super::prng::noise;
use super::run::{Sf, json, ok, sf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pi4/images")
}

/// A real lz4 `rootfs.squashfs` of the kind squashfs-booting SkiffOS builds (pi/0,
/// bananapi, the persist-only boards) leave in images/. A pi/4 build (`fixtures()`) has
/// none; tests about squashfs handling copy this one in.
pub fn fixture_squashfs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pi4/extra/rootfs.squashfs")
}

/// A copy of `fixtures()` with `fixture_squashfs()` added as `rootfs.squashfs`.
pub fn fixtures_with_squashfs() -> tempfile::TempDir {
    let d = images_copy();
    std::fs::copy(fixture_squashfs(), d.path().join("rootfs.squashfs")).unwrap();
    d
}

/// A copy of `fixtures()`, to edit.
pub fn images_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), d.path());
    d
}

/// `build --board BOARD --images IMAGES --output OUT EXTRA...`, to run.
pub fn build_cmd(board: &str, images: &Path, out: &Path, extra: &[&str]) -> Sf {
    let mut args = vec![
        "build",
        "--board",
        board,
        "--images",
        images.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sf(&args)
}

/// `DEV --board pi/4 --images IMAGES --yes`: flashing pi/4 from `images` onto `dev`, the verb
/// left to its default.
pub fn pi4_flash_args<'a>(dev: &'a str, images: &'a str) -> Vec<&'a str> {
    vec![dev, "--board", "pi/4", "--images", images, "--yes"]
}

/// Builds `board` from `images` into `out`; the build must succeed. Returns stdout.
pub fn build(board: &str, images: &Path, out: &Path, extra: &[&str]) -> String {
    ok(&build_cmd(board, images, out, extra).output())
}

/// Builds pi/4 from `images` into `out`; the build must succeed. Returns stdout.
pub fn build_pi4(images: &Path, out: &Path, extra: &[&str]) -> String {
    build("pi/4", images, out, extra)
}

// Synthetic build outputs whose magic a reader checks.

/// An arm64 `Image`: the 64-byte header with "ARM\x64" at 0x38, then noise.
pub fn arm64_image(len: u64) -> Vec<u8> {
    let mut b = noise("Image", len);
    b[..64].fill(0);
    b[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
    b[8..16].copy_from_slice(&0x80000u64.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b[24..32].copy_from_slice(&0xau64.to_le_bytes());
    b[0x38..0x3c].copy_from_slice(b"ARM\x64");
    b
}

/// A 32-bit ARM `zImage`: magic 0x016f2818 at 0x24, start/end after it.
pub fn arm_zimage(len: u64) -> Vec<u8> {
    let mut b = noise("zImage", len);
    b[0x24..0x28].copy_from_slice(&0x016f_2818u32.to_le_bytes());
    b[0x28..0x2c].copy_from_slice(&0u32.to_le_bytes());
    b[0x2c..0x30].copy_from_slice(&(len as u32).to_le_bytes());
    b
}

/// An x86 `bzImage`: boot-sector signature and "HdrS" at 0x202 (boot protocol 2.15).
pub fn x86_bzimage(len: u64) -> Vec<u8> {
    let mut b = noise("bzImage", len);
    b[0x1f1] = 1;
    b[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b
}

/// A flattened device tree (version 17) with one root node carrying `compatible`.
pub fn fdt(compatible: &str) -> Vec<u8> {
    fn be(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    let strings = b"compatible\0".to_vec();
    let mut value = compatible.as_bytes().to_vec();
    value.push(0);
    let mut st = Vec::new();
    be(&mut st, 1); // FDT_BEGIN_NODE
    be(&mut st, 0); // "" (root) padded to 4
    be(&mut st, 3); // FDT_PROP
    be(&mut st, value.len() as u32);
    be(&mut st, 0); // name offset of "compatible"
    st.extend_from_slice(&value);
    while !st.len().is_multiple_of(4) {
        st.push(0);
    }
    be(&mut st, 2); // FDT_END_NODE
    be(&mut st, 9); // FDT_END
    let rsv = 40u32;
    let off_struct = rsv + 16;
    let off_strings = off_struct + st.len() as u32;
    let total = off_strings + strings.len() as u32;
    let mut out = Vec::new();
    for x in [
        0xd00d_feed,
        total,
        off_struct,
        off_strings,
        rsv,
        17,
        16,
        0,
        strings.len() as u32,
        st.len() as u32,
    ] {
        be(&mut out, x);
    }
    out.extend_from_slice(&[0; 16]); // empty memory reservation map
    out.extend_from_slice(&st);
    out.extend_from_slice(&strings);
    out
}

/// `plan --board BOARD --images IMAGES --json EXTRA...`, to run.
pub fn plan_cmd(board: &str, images: &Path, extra: &[&str]) -> Sf {
    let mut args = vec![
        "plan",
        "--board",
        board,
        "--images",
        images.to_str().unwrap(),
    ];
    args.push("--json");
    args.extend_from_slice(extra);
    sf(&args)
}

/// The plan of `board` over `images`, as JSON; planning must succeed.
pub fn plan_json(board: &str, images: &Path, extra: &[&str]) -> serde_json::Value {
    json(&plan_cmd(board, images, extra).output())
}

/// `boards show BOARD --json`.
pub fn show(board: &str) -> serde_json::Value {
    json(&sf(&["boards", "show", board, "--json"]).output())
}

/// `flash DEV --image IMG --yes`; the flash must succeed.
pub fn flash_image_ok(dev: &str, img: &Path) -> String {
    ok(&sf(&["flash", dev, "--image", img.to_str().unwrap(), "--yes"]).output())
}
