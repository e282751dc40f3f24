//! What a build writes and what it trusts beside an image: output paths that are devices or
//! inputs, SHA256SUMS lines, stale bmaps, unbounded config reads, signals, failures after
//! the image is complete, sizes and extensions, exit codes. See tests/hostile.rs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mknod(path: &Path, kind: &str, major: u32, minor: u32) {
    assert!(is_root(), "device nodes need root");
    tool_ok(
        "mknod",
        &[s(path), kind, &major.to_string(), &minor.to_string()],
    );
}

#[test]
fn device_nodes_and_fifos_are_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let cases: [(&str, &str, u32, u32); 3] = [
        ("null", "c", 1, 3),
        ("blk", "b", 7, 200),
        ("fifo", "p", 0, 0),
    ];
    for (name, kind, maj, min) in cases {
        let node = dir.path().join(name);
        if kind == "p" {
            tool_ok("mkfifo", &[s(&node)]);
        } else {
            mknod(&node, kind, maj, min);
        }
        for extra in [&[][..], &["--bmap", "--checksums"][..]] {
            let out = build_cmd("pi/4", &f, &node, extra).output();
            refused(
                &out,
                2,
                &["refusing to write image", s(&node), "not a regular file"],
            );
            let m = std::fs::symlink_metadata(&node).unwrap();
            let t = m.file_type();
            assert!(
                t.is_char_device() || t.is_block_device() || t.is_fifo(),
                "{name} was replaced"
            );
        }
    }
    // A sidecar path that is a device is refused too, before the image is written.
    let img = dir.path().join("x.img");
    mknod(&dir.path().join("x.img.manifest.json"), "c", 1, 3);
    let out = build_cmd("pi/4", &f, &img, &[]).output();
    refused(&out, 2, &["refusing to write manifest", "character device"]);
    let bm = dir.path().join("y.img.bmap");
    tool_ok("mkfifo", &[s(&bm)]);
    let out = build_cmd("pi/4", &f, &dir.path().join("y.img"), &["--bmap"]).output();
    refused(&out, 2, &["refusing to write bmap", "FIFO"]);
    assert_eq!(
        listing(dir.path()),
        ["blk", "fifo", "null", "x.img.manifest.json", "y.img.bmap"]
    );
    // A symlink to a regular file is an ordinary output.
    let target = dir.path().join("real.img");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(&build_cmd("pi/4", &f, &link, &[]).output());
}

#[test]
fn inputs_are_never_outputs() {
    let d = images_copy();
    let images = d.path();
    let kernel = images.join("Image");
    let before = std::fs::read(&kernel).unwrap();
    let other = tempfile::tempdir().unwrap();
    let hard = other.path().join("hard.img");
    std::fs::hard_link(&kernel, &hard).unwrap();
    let soft = other.path().join("soft.img");
    std::os::unix::fs::symlink(&kernel, &soft).unwrap();
    let in_tree = images.join("boot_part/new.img");
    // The image itself is an input, a hard link to one, a symlink to one, or inside a
    // directory whose files are copied.
    for out in [&kernel, &hard, &soft, &in_tree] {
        let r = build_cmd("pi/4", images, out, &["--bmap"]).output();
        refused(&r, 2, &["refusing to write image", "input"]);
    }
    // A sidecar is an input: the manifest, the bmap, SHA256SUMS.
    let side = tempfile::tempdir().unwrap();
    let img = side.path().join("x.img");
    std::fs::hard_link(&kernel, side.path().join("x.img.manifest.json")).unwrap();
    refused(
        &build_cmd("pi/4", images, &img, &[]).output(),
        2,
        &["refusing to write manifest", "input"],
    );
    std::fs::remove_file(side.path().join("x.img.manifest.json")).unwrap();
    std::os::unix::fs::symlink(&kernel, side.path().join("x.img.bmap")).unwrap();
    refused(
        &build_cmd("pi/4", images, &img, &["--bmap"]).output(),
        2,
        &["refusing to write bmap", "input"],
    );
    std::fs::remove_file(side.path().join("x.img.bmap")).unwrap();
    std::fs::hard_link(&kernel, side.path().join("SHA256SUMS")).unwrap();
    refused(
        &build_cmd("pi/4", images, &img, &["--checksums"]).output(),
        2,
        &["refusing to write checksum list", "input"],
    );
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        before,
        "the kernel changed"
    );
    assert_eq!(listing(side.path()), ["SHA256SUMS"]);
    assert!(!in_tree.exists());
    // An image beside the inputs (as Buildroot's sdcard.img) is fine.
    let beside = images.join("sdcard.img");
    ok(&build_cmd("pi/4", images, &beside, &["--bmap", "--checksums"]).output());
    assert_eq!(std::fs::read(&kernel).unwrap(), before);
}

#[test]
fn checksums_keep_every_line_they_do_not_replace() {
    need("sha256sum", "coreutils");
    let dir = tempfile::tempdir().unwrap();
    let sums = dir.path().join("SHA256SUMS");
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"other").unwrap();
    let h = tool_ok("sha256sum", &[s(&other)]);
    let other_hash = h.split_whitespace().next().unwrap().to_string();
    let mut old = Vec::new();
    old.extend_from_slice(b"# release 1\n");
    old.extend_from_slice(b"\xff\xfe latin-1 note \xe9\n");
    old.extend_from_slice(format!("{other_hash} *other.bin\n").as_bytes());
    old.extend_from_slice(format!("{} *x.img\n", "0".repeat(64)).as_bytes());
    old.extend_from_slice(format!("SHA256 (tagged) = {}\n", "1".repeat(64)).as_bytes());
    std::fs::write(&sums, &old).unwrap();
    let img = dir.path().join("x.img");
    ok(&build_cmd("pi/4", &fixtures(), &img, &["--bmap", "--checksums"]).output());
    let new = std::fs::read(&sums).unwrap();
    // Every line not about this build's files is there, byte for byte, in order.
    let lines: Vec<&[u8]> = new.split(|b| *b == b'\n').collect();
    assert_eq!(lines[0], b"# release 1");
    assert_eq!(lines[1], b"\xff\xfe latin-1 note \xe9");
    assert_eq!(lines[2], format!("{other_hash} *other.bin").as_bytes());
    assert!(lines[3].ends_with(b"  x.img"), "x.img replaced in place");
    assert_eq!(
        lines[4],
        format!("SHA256 (tagged) = {}", "1".repeat(64)).as_bytes()
    );
    assert_eq!(
        new.windows(6).filter(|w| w == b"x.img\n").count(),
        1,
        "one x.img line"
    );
    // The oracle: every line sha256sum can read checks out, binary-mode line included.
    let (code, out) = tool(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && grep -a -E '^[0-9a-f]{{64}} ' SHA256SUMS | sha256sum -c -",
                s(dir.path())
            ),
        ],
    );
    assert_eq!(code, 0, "{out}");
    for f in [
        "x.img: OK",
        "x.img.bmap: OK",
        "x.img.manifest.json: OK",
        "other.bin: OK",
    ] {
        assert!(out.contains(f), "{f} not in {out}");
    }
}

#[test]
fn an_unreadable_checksum_list_is_refused_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let sums = dir.path().join("SHA256SUMS");
    // Too large to be a checksum list.
    let big = vec![b'#'; 5 << 20];
    std::fs::write(&sums, &big).unwrap();
    let img = dir.path().join("x.img");
    refused(
        &build_cmd("pi/4", &fixtures(), &img, &["--checksums"]).output(),
        2,
        &["SHA256SUMS", "checksum list"],
    );
    assert_eq!(std::fs::read(&sums).unwrap(), big);
    assert_eq!(listing(dir.path()), ["SHA256SUMS"]);
    // A directory in its place.
    std::fs::remove_file(&sums).unwrap();
    std::fs::create_dir(&sums).unwrap();
    refused(
        &build_cmd("pi/4", &fixtures(), &img, &["--checksums"]).output(),
        2,
        &["SHA256SUMS", "directory"],
    );
    assert_eq!(listing(dir.path()), ["SHA256SUMS"]);
}

#[test]
fn a_stale_bmap_is_removed_and_a_foreign_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let img = dir.path().join("x.img");
    let bmap = dir.path().join("x.img.bmap");
    ok(&build_cmd("pi/4", &f, &img, &["--bmap"]).output());
    assert!(bmap.is_file());
    // Rebuilt without --bmap at another size: the old bmap would describe another image.
    ok(&build_cmd("pi/4", &f, &img, &["--size", "400MiB"]).output());
    assert!(!bmap.exists(), "stale bmap left beside the new image");
    assert_eq!(listing(dir.path()), ["x.img", "x.img.manifest.json"]);

    // A bmap of another build beside the image: same size, other seed (other content).
    let other = tempfile::tempdir().unwrap();
    let oimg = other.path().join("x.img");
    ok(&build_cmd(
        "pi/4",
        &f,
        &oimg,
        &["--bmap", "--size", "400MiB", "--seed", "other"],
    )
    .output());
    std::fs::copy(other.path().join("x.img.bmap"), &bmap).unwrap();
    let Some(card) = Card::new(512 << 20) else {
        return;
    };
    let before = card.hash();
    let out = run(&["flash", &card.dev, "--image", s(&img), "--yes"]);
    refused(&out, 2, &[s(&bmap), s(&img), "checksum"]);
    assert_eq!(card.hash(), before, "the card was written");
    // A bmap of an image of another size, given explicitly.
    ok(&build_cmd("pi/4", &f, &oimg, &["--bmap"]).output());
    let out = run(&[
        "flash",
        &card.dev,
        "--image",
        s(&img),
        "--bmap",
        s(&other.path().join("x.img.bmap")),
        "--yes",
    ]);
    refused(&out, 2, &["x.img.bmap", s(&img), "bytes"]);
    assert_eq!(card.hash(), before, "the card was written");
    // Its own bmap works, compressed too.
    let zimg = dir.path().join("z.img.zst");
    ok(&build_cmd("pi/4", &f, &zimg, &["--bmap", "--size", "400MiB"]).output());
    ok(&run(&["flash", &card.dev, "--image", s(&zimg), "--yes"]));
    // … and a corrupted range of a compressed image's bmap is found before writing.
    let zbmap = dir.path().join("z.img.bmap");
    let text = std::fs::read_to_string(&zbmap).unwrap();
    let i = text.find("chksum=\"").unwrap() + 8;
    let flipped = if &text[i..=i] == "0" { "1" } else { "0" };
    std::fs::write(&zbmap, format!("{}{flipped}{}", &text[..i], &text[i + 1..])).unwrap();
    let before = card.hash();
    refused(
        &run(&["flash", &card.dev, "--image", s(&zimg), "--yes"]),
        2,
        &["z.img.bmap", "range 1"],
    );
    assert_eq!(card.hash(), before);
}

#[test]
fn config_type_inputs_are_bounded_and_regular() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let img = dir.path().join("x.img");
    let started = Instant::now();
    // A genimage config, and a config that includes an endless file.
    refused(
        &run_limited(
            60,
            &[
                "build",
                "--genimage",
                "/dev/zero",
                "--images",
                s(&f),
                "-o",
                s(&img),
            ],
        ),
        2,
        &["/dev/zero", "not a regular file"],
    );
    let inc = dir.path().join("inc.cfg");
    std::fs::write(&inc, "include(\"/dev/zero\")\n").unwrap();
    refused(
        &run_limited(
            60,
            &[
                "build",
                "--genimage",
                s(&inc),
                "--images",
                s(&f),
                "-o",
                s(&img),
            ],
        ),
        2,
        &["inc.cfg:1", "/dev/zero", "not a regular file"],
    );
    // A board file that is too large.
    let board = dir.path().join("huge.toml");
    std::fs::write(&board, vec![b'#'; 5 << 20]).unwrap();
    refused(
        &run_limited(
            60,
            &[
                "build",
                "--board",
                s(&board),
                "--images",
                s(&f),
                "-o",
                s(&img),
            ],
        ),
        2,
        &["huge.toml", "board file", "more than"],
    );
    // A manifest and a bmap that are devices.
    let built = dir.path().join("b.img");
    ok(&build_cmd("pi/4", &f, &built, &[]).output());
    refused(
        &run_limited(60, &["verify", s(&built), "--manifest", "/dev/zero"]),
        2,
        &["/dev/zero", "manifest", "not a regular file"],
    );
    if let Some(card) = Card::new(512 << 20) {
        let before = card.hash();
        refused(
            &run_limited(
                60,
                &[
                    "flash",
                    &card.dev,
                    "--image",
                    s(&built),
                    "--bmap",
                    "/dev/zero",
                    "--yes",
                ],
            ),
            2,
            &["/dev/zero", "bmap file", "not a regular file"],
        );
        assert_eq!(card.hash(), before);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        listing(dir.path()),
        ["b.img", "b.img.manifest.json", "huge.toml", "inc.cfg"]
    );
}

/// Starts a build, waits for its temporary file, sends `sig` and returns the exit status
/// and what is left in the directory.
fn interrupt(out: &Path, extra: &[&str], sig: &str) -> (Option<i32>, Option<i32>, Vec<String>) {
    use std::os::unix::process::ExitStatusExt;
    let f = fixtures();
    let mut args = vec!["--size", "3GiB", "--checksums"];
    args.extend_from_slice(extra);
    let mut child = build_cmd("pi/4", &f, out, &args).spawn();
    let dir = out.parent().unwrap();
    let partial = format!(
        ".{}.partial-{}",
        out.file_name().unwrap().to_str().unwrap(),
        child.id()
    );
    let t = Instant::now();
    while !dir.join(&partial).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {partial} appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "build ended before its partial was seen"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(150));
    tool_ok("kill", &[&format!("-{sig}"), &child.id().to_string()]);
    let status = child.wait().unwrap();
    (status.code(), status.signal(), listing(dir))
}

#[test]
fn signals_during_a_build_leave_nothing_behind() {
    for (ext, sig, code) in [
        ("img", "INT", 130),
        ("img.zst", "TERM", 143),
        ("img.gz", "HUP", 129),
        ("img.xz", "INT", 130),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("x.{ext}"));
        let (c, signal, left) = interrupt(&out, &["--bmap"], sig);
        assert_eq!((c, signal), (Some(code), None), "{ext} {sig}");
        assert!(left.is_empty(), "{ext} after SIG{sig}: {left:?}");
    }
}

#[test]
fn a_partial_left_by_sigkill_is_removed_by_the_next_build() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    let (_, signal, left) = interrupt(&out, &[], "KILL");
    assert_eq!(signal, Some(9));
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".x.img.partial-"), "{left:?}");
    // A partial of a live process is another build's: kept.
    let live = dir
        .path()
        .join(format!(".x.img.partial-{}", std::process::id()));
    std::fs::write(&live, b"busy").unwrap();
    ok(&build_cmd("pi/4", &fixtures(), &out, &[]).output());
    assert_eq!(
        listing(dir.path()),
        [
            live.file_name().unwrap().to_str().unwrap(),
            "x.img",
            "x.img.manifest.json"
        ]
    );
}

/// A tmpfs of `bytes` at a new directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(bytes: u64) -> Tmpfs {
        assert!(is_root(), "mounting a tmpfs needs root");
        let d = tempfile::tempdir().unwrap();
        tool_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "tmpfs",
                s(d.path()),
            ],
        );
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = tool("umount", &[s(self.0.path())]);
    }
}

#[test]
fn a_full_disk_after_the_image_leaves_nothing_behind() {
    let f = fixtures();
    // What the image takes on a tmpfs: then a tmpfs with a page less than image + manifest.
    let probe = Tmpfs::new(64 << 20);
    let img = probe.0.path().join("x.img.zst");
    ok(&build_cmd("pi/4", &f, &img, &[]).output());
    let used = std::fs::metadata(&img).unwrap().blocks() * 512;
    let manifest = std::fs::metadata(probe.0.path().join("x.img.zst.manifest.json"))
        .unwrap()
        .blocks()
        * 512;
    assert!(manifest > 4096, "manifest takes {manifest} bytes");
    drop(probe);
    let fs = Tmpfs::new(used + 4096);
    let img = fs.0.path().join("x.img.zst");
    let out = build_cmd("pi/4", &f, &img, &["--bmap", "--checksums"]).output();
    refused(&out, 1, &["x.img.zst"]);
    assert_eq!(listing(fs.0.path()), Vec::<String>::new());
}

#[test]
fn a_checksum_list_that_is_a_directory_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    let sums = dir.path().join("SHA256SUMS");
    std::fs::create_dir(&sums).unwrap();
    std::fs::write(sums.join("keep"), b"x").unwrap();
    let out = build_cmd("pi/4", &fixtures(), &img, &["--bmap", "--checksums"]).output();
    refused(&out, 2, &["SHA256SUMS", "directory"]);
    assert_eq!(listing(dir.path()), ["SHA256SUMS"]);
}

#[test]
fn sizes_and_extensions_that_cannot_be_written_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let img = dir.path().join("x.img");
    for size in ["1000001", "400000100", "999999999"] {
        refused(
            &build_cmd("pi/4", &f, &img, &["--size", size]).output(),
            2,
            &["--size", "multiple of 512"],
        );
    }
    for ext in [
        "img.bz2", "img.lz4", "img.lzma", "img.lz", "img.zip", "IMG.BZ2", "img.7z",
    ] {
        let out = dir.path().join(format!("x.{ext}"));
        refused(
            &build_cmd("pi/4", &f, &out, &[]).output(),
            2,
            &["not supported", ".img.zst", ".img.gz", ".img.xz"],
        );
    }
    assert_eq!(listing(dir.path()), Vec::<String>::new());
    ok(&build_cmd("pi/4", &f, &img, &["--size", "400000512"]).output());
}

#[test]
fn bad_configs_and_bmaps_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let cfg = dir.path().join("bad.cfg");
    std::fs::write(&cfg, b"image sdcard.img {\n  hdimage {}\n  # \xff\xfe\n}\n").unwrap();
    refused(
        &run(&[
            "build",
            "--genimage",
            s(&cfg),
            "--images",
            s(&f),
            "-o",
            s(&dir.path().join("o.img")),
        ]),
        2,
        &["bad.cfg", "not UTF-8", "line 3"],
    );
    let img = dir.path().join("x.img");
    ok(&build_cmd("pi/4", &f, &img, &[]).output());
    let bmap = dir.path().join("random.bmap");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&bmap, bytes).unwrap();
    if let Some(card) = Card::new(512 << 20) {
        let before = card.hash();
        refused(
            &run(&[
                "flash",
                &card.dev,
                "--image",
                s(&img),
                "--bmap",
                s(&bmap),
                "--yes",
            ]),
            2,
            &["random.bmap"],
        );
        assert_eq!(card.hash(), before);
    }
}

/// The kernel's partitions of a loop device, from sysfs.
fn kernel_parts(dev: &str) -> Vec<String> {
    let name = Path::new(dev).file_name().unwrap().to_str().unwrap();
    let mut v: Vec<String> = std::fs::read_dir(format!("/sys/block/{name}"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with(name).then_some(n)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_disk_busy_through_another_mount_namespace_is_refused_with_2() {
    need("unshare", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    ok(&build_cmd("pi/4", &fixtures(), &img, &["--size", "400MiB"]).output());
    let Some(card) = Card::new(512 << 20) else {
        return;
    };
    ok(&run(&[
        "flash",
        &card.dev,
        "--image",
        s(&img),
        "--yes",
        "--no-verify",
    ]));
    let _ = tool("partx", &["-a", &card.dev]);
    let mnt = tempfile::tempdir().unwrap();
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -o ro {} {} && sleep 20",
            card.part(2),
            s(mnt.path())
        ))
        .spawn()
        .unwrap();
    // The mount is not in this namespace's table: only the kernel's claim shows it.
    let t = Instant::now();
    let before = card.hash();
    let mut out;
    loop {
        out = run(&["flash", &card.dev, "--image", s(&img), "--yes"]);
        if out.status.code() == Some(2) || t.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = holder.kill();
    let _ = holder.wait();
    refused(&out, 2, &[&card.dev, "busy"]);
    assert_eq!(card.hash(), before);
}

#[test]
fn a_failed_flash_makes_the_kernel_drop_the_old_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.img");
    ok(&build_cmd("pi/4", &fixtures(), &img, &["--size", "400MiB"]).output());
    // A card whose backing store holds 2 MiB: writing the image's data fails part-way.
    let fs = Tmpfs::new(2 << 20);
    let backing: PathBuf = fs.0.path().join("card.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let dev = losetup(&["-f", "--show", s(&backing)]);
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = tool("partx", &["-d", &self.0]);
            let _ = tool("losetup", &["-d", &self.0]);
        }
    }
    let _d = Detach(dev.clone());
    // An old table the kernel knows (written sparse: the backing file stays small).
    let script = "label: dos\n1M,8M,c\n,8M,83\n";
    tool_input_ok("sfdisk", &[&dev], script);
    let _ = tool("partx", &["-a", &dev]);
    assert_eq!(kernel_parts(&dev).len(), 2, "old partitions known");
    let r = run(&["flash", &dev, "--image", s(&img), "--yes"]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // The backing store's ENOSPC reaches the flash as the write error, or as the I/O error
    // the kernel records for pages whose writeback failed.
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("No space left") || err.contains("Input/output error"),
        "{err}"
    );
    assert_eq!(
        kernel_parts(&dev),
        Vec::<String>::new(),
        "stale partitions left"
    );
}
