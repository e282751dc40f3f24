//! Bad input gets one clear line naming the cause, exit code 2, and no output file.

mod common;

use std::path::Path;

use common::*;

#[test]
fn missing_kernel_names_board_artifact_and_place() {
    let d = images_copy();
    std::fs::remove_file(d.path().join("Image")).unwrap();
    let looked = d.path().join("Image");
    pi4_refused(
        d.path(),
        &[
            "board pi/4",
            "missing artifact `Image`",
            looked.to_str().unwrap(),
        ],
    );
}

#[test]
fn missing_squashfs_is_refused() {
    // pine64/phone boots the squashfs; SkiffOS's install copies it unconditionally. The pi/4
    // images have everything else it needs but skiff-init/ (added here) and no squashfs.
    let d = images_copy();
    std::fs::create_dir(d.path().join("skiff-init")).unwrap();
    std::fs::write(d.path().join("skiff-init/skiff-init-squashfs"), b"init").unwrap();
    assert!(!d.path().join("rootfs.squashfs").exists());
    build_refused(
        d.path(),
        "pine64/phone",
        &[],
        "out.img",
        &["board pine64/phone", "`rootfs.squashfs`"],
    );
}

#[test]
fn corrupt_squashfs_is_refused() {
    let d = fixtures_with_squashfs();
    let p = d.path().join("rootfs.squashfs");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0..4].copy_from_slice(b"junk");
    std::fs::write(&p, &bytes).unwrap();
    pi4_refused(d.path(), &["rootfs.squashfs", "squashfs"]);
}

#[test]
fn truncated_squashfs_is_refused() {
    let d = fixtures_with_squashfs();
    let p = d.path().join("rootfs.squashfs");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    pi4_refused(d.path(), &["rootfs.squashfs"]);
}

#[test]
fn content_larger_than_a_fixed_partition_says_how_much() {
    let d = images_copy();
    let big = std::fs::File::create(d.path().join("boot_part/huge.bin")).unwrap();
    big.set_len(70 << 20).unwrap();
    let boards = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(boards.path().join("boards/test")).unwrap();
    std::fs::create_dir_all(boards.path().join("layouts")).unwrap();
    let layout = include_str!("../layouts/pi-gpt.toml")
        .replace("size = \"fit\"\nheadroom = \"100%\"   # room for an upgrade to write the next boot set beside this one\nmin = \"128MiB\"", "size = \"64MiB\"");
    assert!(layout.contains("size = \"64MiB\""));
    std::fs::write(boards.path().join("layouts/small-boot.toml"), layout).unwrap();
    std::fs::write(
        boards.path().join("boards/test/small.toml"),
        "description = \"pi/4 with a 64 MiB boot\"\ninherit = \"pi/4\"\nlayout = \"small-boot\"\n",
    )
    .unwrap();
    let dir = boards.path().to_str().unwrap();
    build_refused(
        d.path(),
        "test/small",
        &["--board-dir", dir],
        "out.img",
        &["board test/small: boot needs", "partition has 67,108,864"],
    );
}

#[test]
fn size_too_small_for_the_layout() {
    build_refused(
        &fixtures(),
        "pi/4",
        &["--size", "100MiB"],
        "out.img",
        &["board pi/4", "needs", "104,857,600"],
    );
}

#[test]
fn unknown_board_suggests_close_names() {
    build_refused(
        &fixtures(),
        "pi/44",
        &[],
        "out.img",
        &["unknown board `pi/44`", "did you mean", "`pi/4`"],
    );
}

#[test]
fn malformed_board_file_names_file_and_line() {
    let boards = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(boards.path().join("boards/test")).unwrap();
    let f = boards.path().join("boards/test/broken.toml");
    std::fs::write(
        &f,
        "description = \"broken\"\ninherit = \"pi/4\"\nlayot = \"pi-gpt\"\n",
    )
    .unwrap();
    let dir = boards.path().to_str().unwrap();
    let shown = format!("{}:3:1", f.display());
    build_refused(
        &fixtures(),
        "test/broken",
        &["--board-dir", dir],
        "out.img",
        &[&shown, "layot"],
    );

    std::fs::write(&f, "description = \"broken\n").unwrap();
    build_refused(
        &fixtures(),
        "test/broken",
        &["--board-dir", dir],
        "out.img",
        &[&format!("{}:1:", f.display())],
    );
}

#[test]
fn missing_images_directory_is_bad_usage() {
    pi4_refused(
        Path::new("/nonexistent/images"),
        &["/nonexistent/images", "BINARIES_DIR"],
    );
}

#[test]
fn bad_size_argument_is_bad_usage() {
    let out = run(&["plan", "--board", "pi/4", "--size", "12 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
}
