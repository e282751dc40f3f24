//! Output into a pipe whose reader went away (`skiff-flash inspect /dev/sdb | head -1`) is
//! not a failure: every command that prints finishes its work and exits as it would have,
//! without a panic message.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use common::*;

fn quiet_exit(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what}: {stderr}"
    );
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "{what}: {:?} {stderr}",
        out.status
    );
}

#[test]
fn commands_printing_into_a_closed_pipe_exit_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pi4.img");
    build_pi4(&fixtures(), &img, &["-q"]);
    let img = img.to_str().unwrap();
    let images = fixtures();
    let images = images.to_str().unwrap();
    let runs: [&[&str]; 10] = [
        &["boards"],
        &["boards", "--json"],
        &["boards", "show", "pi/4"],
        &["plan", "--board", "pi/4", "--images", images],
        &[
            "plan", "--board", "pi/4", "--images", images, "--json", "-v",
        ],
        &["inspect", img],
        &["inspect", img, "--json"],
        &["verify", img, "--board", "pi/4", "--images", images],
        &["completions", "bash"],
        &["man"],
    ];
    for args in runs {
        let out = sf(args).closed_stdout();
        quiet_exit(&args.join(" "), &out);
    }
    // A build still writes its image when its report cannot be printed.
    let again = dir.path().join("again.img");
    let out = build_cmd("pi/4", &fixtures(), &again, &[]).closed_stdout();
    quiet_exit("build", &out);
    assert!(again.is_file(), "the build's image is missing");
}
