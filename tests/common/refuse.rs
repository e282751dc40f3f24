//! The refusal contract checked in one place: the exit code asked for, one
//! `skiff-flash: error:` line holding the given words, no panic, and nothing left behind.
//! Not for successful runs (`run::ok`).

use std::path::Path;
use std::process::Output;

use super::images::build_cmd;

/// Asserts a refusal: `code`, one `skiff-flash: error:` line holding every fragment of
/// `expect`, no panic. Returns stderr.
pub fn refused(out: &Output, code: i32, expect: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("skiff-flash: error: "), "{err}");
    for e in expect {
        assert!(err.contains(e), "`{e}` not in: {err}");
    }
    err
}

/// Asserts `dir` is empty.
pub fn nothing_left(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "output directory not empty: {left:?}");
}

/// Runs `build` of `board` into an empty directory as `out_name`; asserts exit 2, the
/// refusal line holding every `expect` fragment, and nothing left behind; a run over 120 s
/// is killed. Returns stderr.
pub fn build_refused(
    images: &Path,
    board: &str,
    extra: &[&str],
    out_name: &str,
    expect: &[&str],
) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let img = out_dir.path().join(out_name);
    let out = build_cmd(board, images, &img, extra).limit(120).output();
    let err = refused(&out, 2, expect);
    nothing_left(out_dir.path());
    err
}

/// `build_refused` of pi/4 from `images` with no extra arguments.
pub fn pi4_refused(images: &Path, expect: &[&str]) -> String {
    build_refused(images, "pi/4", &[], "out.img", expect)
}
