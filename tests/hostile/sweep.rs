//! A table of hostile inputs run through the binary. For every row: no panic (no
//! "panicked", exit code not 101), the exit code of the contract (2 bad input or refusal,
//! 1 failed operation, 128+N after signal N, 0 when the input is odd but valid), a one-line
//! error naming the input, nothing left in the output directory after a failure, and no
//! byte of the card (a loop device hashed before and after) changed unless a flash was
//! meant to proceed. See tests/hostile.rs.

use std::path::{Path, PathBuf};

use crate::common::*;

/// What a row needs: a pristine images directory to copy, built images, a card.
struct Ctx {
    /// Built once: `x.img` (with bmap), `x.img.zst`.
    built: tempfile::TempDir,
    card: Card,
}

/// One row's scratch: `images/` (a copy of the fixture the row may spoil), `out/` (must be
/// empty after a failure), `in/` (the row's own files).
struct Row {
    dir: tempfile::TempDir,
}

impl Row {
    fn new() -> Row {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixtures(), &dir.path().join("images"));
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        Row { dir }
    }
    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }
    fn out(&self, name: &str) -> String {
        p(&self.dir.path().join("out").join(name))
    }
    /// Writes a file of the row's own and returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let f = self.dir.path().join("in").join(name);
        std::fs::write(&f, bytes).unwrap();
        p(&f)
    }
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// How a row runs: its arguments (`@CARD` is replaced by the card), the exit code, a
/// fragment the error must hold, and whether the card may change.
struct Case {
    args: Vec<String>,
    code: i32,
    names: String,
    writes_card: bool,
}

type Setup = Box<dyn Fn(&Row, &Ctx) -> Case>;

fn case(args: Vec<String>, code: i32, names: &str) -> Case {
    Case {
        args,
        code,
        names: names.to_string(),
        writes_card: false,
    }
}

fn build(r: &Row, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["build", "--board", "pi/4", "--images"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(p(&r.images()));
    v.push("-o".into());
    v.push(r.out("x.img"));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A custom board file inheriting pi/4 with `body` appended.
fn board(r: &Row, name: &str, body: &str) -> Vec<String> {
    let f = r.file(name, format!("inherit = \"pi/4\"\n{body}").as_bytes());
    let mut v = build(r, &[]);
    v[2] = f;
    v
}

/// A genimage config with `body` over a blob in the images directory.
fn genimage(r: &Row, body: &[u8]) -> Vec<String> {
    std::fs::write(r.images().join("blob.bin"), vec![0x5a; 64 << 10]).unwrap();
    let f = r.file("g.cfg", body);
    strs(&[
        "build",
        "--genimage",
        &f,
        "--images",
        &p(&r.images()),
        "-o",
        &r.out("g.img"),
    ])
}

fn hd(parts: &str) -> Vec<u8> {
    format!("image g.img {{\n  hdimage {{}}\n{parts}\n}}\n").into_bytes()
}

fn verify_manifest(r: &Row, c: &Ctx, bytes: &[u8]) -> Vec<String> {
    let m = r.file("m.json", bytes);
    strs(&[
        "verify",
        &p(&c.built.path().join("x.img")),
        "--manifest",
        &m,
    ])
}

fn flash_bmap(r: &Row, c: &Ctx, bytes: &[u8]) -> Vec<String> {
    let b = r.file("b.bmap", bytes);
    strs(&[
        "flash",
        "@CARD",
        "--image",
        &p(&c.built.path().join("x.img")),
        "--bmap",
        &b,
        "--yes",
    ])
}

fn bmap_doc(size: &str, block: &str, ranges: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n<ImageSize> {size} </ImageSize>\n<BlockSize> {block} </BlockSize>\n<BlocksCount> 1 </BlocksCount>\n<MappedBlocksCount> 1 </MappedBlocksCount>\n<ChecksumType> sha256 </ChecksumType>\n<BlockMap>\n{ranges}</BlockMap>\n</bmap>\n"
    )
    .into_bytes()
}

/// The rows: (name, setup). Every category of hostile input the binary takes.
fn rows() -> Vec<(String, Setup)> {
    let mut v: Vec<(String, Setup)> = Vec::new();
    macro_rules! row {
        ($name:expr, $f:expr) => {
            v.push(($name.to_string(), Box::new($f)))
        };
    }

    // -- images directories
    row!("images dir missing", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[4] = p(&r.dir.path().join("nope"));
        case(a, 2, "nope")
    });
    row!("images dir is a file", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[4] = r.file("plain", b"x");
        case(a, 2, "plain")
    });
    row!("images dir is empty", |r: &Row, _: &Ctx| {
        let e = r.dir.path().join("in/empty");
        std::fs::create_dir(&e).unwrap();
        let mut a = build(r, &[]);
        a[4] = p(&e);
        case(a, 2, "empty")
    });
    row!("kernel missing", |r: &Row, _: &Ctx| {
        std::fs::remove_file(r.images().join("Image")).unwrap();
        case(build(r, &[]), 2, "Image")
    });
    row!("dtb missing", |r: &Row, _: &Ctx| {
        // The Pi firmware finds its device tree itself: a build without it is valid.
        std::fs::remove_file(r.images().join("bcm2711-rpi-4-b.dtb")).unwrap();
        case(build(r, &[]), 0, "")
    });
    row!("firmware dir missing", |r: &Row, _: &Ctx| {
        std::fs::remove_dir_all(r.images().join("rpi-firmware")).unwrap();
        case(build(r, &[]), 2, "rpi-firmware")
    });

    // -- output names
    for (name, why) in [
        ("x.img.bz2", "not supported"),
        ("x.img.lz4", "not supported"),
        ("x.img.lzma", "not supported"),
        ("x.img.lz", "not supported"),
        ("x.img.zip", "not supported"),
        ("x.img.7z", "not supported"),
        ("X.IMG.BZ2", "not supported"),
        ("x.tgz", "not supported"),
    ] {
        row!(format!("output {name}"), move |r: &Row, _: &Ctx| {
            let mut a = build(r, &[]);
            a[6] = r.out(name);
            case(a, 2, why)
        });
    }
    row!("output is a char device", |r: &Row, _: &Ctx| {
        let n = r.out("null");
        tool_ok("mknod", &[&n, "c", "1", "3"]);
        let mut a = build(r, &[]);
        a[6] = n;
        case(a, 2, "character device")
    });
    row!("output is a FIFO", |r: &Row, _: &Ctx| {
        let n = r.out("fifo");
        tool_ok("mkfifo", &[&n]);
        let mut a = build(r, &[]);
        a[6] = n;
        case(a, 2, "FIFO")
    });
    row!("output is a directory", |r: &Row, _: &Ctx| {
        std::fs::create_dir(r.out("d.img")).unwrap();
        let mut a = build(r, &[]);
        a[6] = r.out("d.img");
        case(a, 2, "directory")
    });
    row!("output is the kernel", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[6] = p(&r.images().join("Image"));
        case(a, 2, "input")
    });
    row!("output hard-links the dtb", |r: &Row, _: &Ctx| {
        std::fs::hard_link(r.images().join("bcm2711-rpi-4-b.dtb"), r.out("x.img")).unwrap();
        case(build(r, &[]), 2, "input")
    });
    row!("output inside rootfs_part", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[6] = p(&r.images().join("rootfs_part/x.img"));
        case(a, 2, "rootfs_part")
    });
    row!("output in a missing directory", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[6] = r.out("missing/x.img");
        case(a, 2, "missing")
    });
    row!("output ends in a slash", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[6] = format!("{}/", r.out("x.img"));
        case(a, 2, "x.img")
    });
    row!("manifest path is a directory", |r: &Row, _: &Ctx| {
        std::fs::create_dir(r.out("x.img.manifest.json")).unwrap();
        case(build(r, &[]), 2, "manifest")
    });
    row!("bmap path is a char device", |r: &Row, _: &Ctx| {
        tool_ok("mknod", &[&r.out("x.img.bmap"), "c", "1", "3"]);
        case(build(r, &["--bmap"]), 2, "bmap")
    });
    row!("SHA256SUMS is a directory", |r: &Row, _: &Ctx| {
        std::fs::create_dir(r.out("SHA256SUMS")).unwrap();
        case(build(r, &["--checksums"]), 2, "SHA256SUMS")
    });
    row!("SHA256SUMS is a FIFO", |r: &Row, _: &Ctx| {
        tool_ok("mkfifo", &[&r.out("SHA256SUMS")]);
        case(build(r, &["--checksums"]), 2, "SHA256SUMS")
    });
    row!("SHA256SUMS too large", |r: &Row, _: &Ctx| {
        std::fs::write(r.out("SHA256SUMS"), vec![b'#'; 5 << 20]).unwrap();
        case(build(r, &["--checksums"]), 2, "SHA256SUMS")
    });

    // -- sizes
    for (size, code, names) in [
        ("0", 2, "0"),
        ("1", 2, "1"),
        ("511", 2, "511"),
        ("513", 2, "513"),
        ("1000001", 2, "1000001"),
        ("abc", 2, "abc"),
        ("-1", 2, "-1"),
        ("1EiB", 2, "1"),
        ("18446744073709551615", 2, "18446744073709551615"),
        ("99999999999999999999999", 2, "99999999999999999999999"),
        ("16EiB", 2, "16EiB"),
        ("100MiB", 2, "104,857,600"),
        ("1KiB", 2, "1"),
        ("", 2, "size"),
        ("12 MiB", 2, "12"),
        ("1.5GiB", 2, "1.5GiB"),
    ] {
        row!(format!("--size {size:?}"), move |r: &Row, _: &Ctx| {
            case(build(r, &["--size", size]), code, names)
        });
    }
    for level in ["-1", "23", "x"] {
        row!(format!("--level {level}"), move |r: &Row, _: &Ctx| {
            let mut a = build(r, &["--level", level]);
            a[6] = r.out("x.img.zst");
            case(a, 2, level)
        });
    }
    row!("SOURCE_DATE_EPOCH is not a number", |r: &Row, _: &Ctx| {
        let mut a = strs(&["env", "SOURCE_DATE_EPOCH=yesterday", bin()]);
        a.extend(build(r, &[]));
        case(a, 2, "yesterday")
    });

    // -- custom board files (offsets, sizes, names)
    for (name, body, names) in [
        (
            "raw at 2^64-1",
            "[[raw]]\nname = \"b\"\nfrom = \"Image\"\noffset = 18446744073709551615\n",
            "b.toml",
        ),
        (
            "raw at 2^63",
            "[[raw]]\nname = \"b\"\nfrom = \"Image\"\noffset = 9223372036854775808\n",
            "b.toml",
        ),
        (
            "raw negative",
            "[[raw]]\nname = \"b\"\nfrom = \"Image\"\noffset = -512\n",
            "b.toml",
        ),
        (
            "raw over the table",
            "[[raw]]\nname = \"b\"\nfrom = \"Image\"\noffset = 0\n",
            "b",
        ),
        (
            "raw over partition 1",
            "[[raw]]\nname = \"b\"\nfrom = \"Image\"\noffset = 1048576\n",
            "b",
        ),
        (
            "raw offset a string",
            "[[raw]]\nname = \"b\"\nfrom = \"Image\"\noffset = \"x\"\n",
            "b.toml",
        ),
        (
            "raw missing file",
            "[[raw]]\nname = \"b\"\nfrom = \"nope.bin\"\noffset = 8192\n",
            "nope.bin",
        ),
        (
            "raw from a directory",
            "[[raw]]\nname = \"b\"\nfrom = \"boot_part\"\noffset = 8192\n",
            "boot_part",
        ),
        (
            "files to a missing partition",
            "[[files]]\nname = \"z\"\nfrom = \"Image\"\nto = \"nope:/z\"\n",
            "nope",
        ),
        (
            "files to a path with ..",
            "[[files]]\nname = \"z\"\nfrom = \"Image\"\nto = \"boot:/../z\"\n",
            "/..",
        ),
        ("unknown key", "bogus = 1\n", "b.toml"),
        ("inherit a missing board", "", "no/such"),
        ("not toml", "[[[\n", "b.toml"),
        ("binary garbage", "\u{0}\u{1}\u{2}", "b.toml"),
        ("inherit itself", "", "`b`"),
    ] {
        row!(format!("board: {name}"), move |r: &Row, _: &Ctx| {
            let a = match name {
                "inherit a missing board" => {
                    let f = r.file("b.toml", b"inherit = \"no/such\"\n");
                    let mut a = board(r, "unused.toml", "");
                    a[2] = f;
                    a
                }
                "inherit itself" => {
                    let f = r.file("b.toml", b"inherit = \"b\"\n");
                    let mut a = board(r, "unused.toml", "");
                    a[2] = f;
                    a
                }
                _ => board(r, "b.toml", body),
            };
            case(a, 2, names)
        });
    }
    row!("board file not UTF-8", |r: &Row, _: &Ctx| {
        let f = r.file("b.toml", b"inherit = \"pi/4\"\n# \xff\xfe\n");
        let mut a = build(r, &[]);
        a[2] = f;
        case(a, 2, "UTF-8")
    });
    row!("board file is /dev/zero", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[2] = "/dev/zero.toml".into();
        case(a, 2, "/dev/zero.toml")
    });
    row!("board file 5 MiB", |r: &Row, _: &Ctx| {
        let mut body = b"inherit = \"pi/4\"\n".to_vec();
        body.extend(vec![b'#'; 5 << 20]);
        let f = r.file("big.toml", &body);
        let mut a = build(r, &[]);
        a[2] = f;
        case(a, 2, "big.toml")
    });
    row!("board name with ..", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[2] = "../pi/4".into();
        case(a, 2, "../pi/4")
    });
    row!("board name empty", |r: &Row, _: &Ctx| {
        let mut a = build(r, &[]);
        a[2] = "".into();
        case(a, 2, "board")
    });

    // -- genimage configs
    for (name, body, names) in [
        ("empty", b"".to_vec(), "g.cfg"),
        ("only a comment", b"# nothing\n".to_vec(), "g.cfg"),
        (
            "unterminated string",
            b"image g.img { hdimage {} partition a { image = \"blob.bin }\n".to_vec(),
            "g.cfg",
        ),
        (
            "unbalanced braces",
            b"image g.img { hdimage {\n".to_vec(),
            "g.cfg",
        ),
        (
            "not UTF-8",
            b"image g.img {\n hdimage {}\n # \xff\n}\n".to_vec(),
            "UTF-8",
        ),
        ("binary noise", pseudo(4096, 1), "g.cfg"),
        (
            "unknown section",
            b"image g.img { frobnicate {} }\n".to_vec(),
            "g.cfg",
        ),
        (
            "missing image file",
            hd("partition a { image = \"nope.bin\" }"),
            "nope.bin",
        ),
        (
            "offset 2^64",
            hd("partition a { image = \"blob.bin\"\n offset = 18446744073709551616 }"),
            "g.cfg",
        ),
        (
            "offset 16E",
            hd("partition a { image = \"blob.bin\"\n offset = 16E }"),
            "g.cfg",
        ),
        (
            "size negative",
            hd("partition a { image = \"blob.bin\"\n size = -1M }"),
            "g.cfg",
        ),
        (
            "size smaller than image",
            hd("partition a { image = \"blob.bin\"\n size = 4K }"),
            "blob.bin",
        ),
        (
            "overlapping offsets",
            hd(
                "partition a { image = \"blob.bin\"\n offset = 1M }\n partition b { image = \"blob.bin\"\n offset = 1M }",
            ),
            "g.cfg",
        ),
        (
            "bad partition-type",
            hd("partition a { image = \"blob.bin\"\n partition-type = 0x1FF }"),
            "g.cfg",
        ),
        (
            "include missing",
            b"include(\"/nonexistent/x.cfg\")\n".to_vec(),
            "x.cfg",
        ),
        (
            "include /dev/zero",
            b"include(\"/dev/zero\")\n".to_vec(),
            "/dev/zero",
        ),
        (
            "include a directory",
            b"include(\"/tmp\")\n".to_vec(),
            "/tmp",
        ),
        ("include itself", b"include(\"g.cfg\")\n".to_vec(), "g.cfg"),
        (
            "5 MiB of comments",
            [
                b"image g.img { hdimage {} }\n".to_vec(),
                vec![b'#'; 5 << 20],
            ]
            .concat(),
            "g.cfg",
        ),
    ] {
        row!(format!("genimage: {name}"), move |r: &Row, _: &Ctx| {
            // Relative includes resolve beside the config.
            case(genimage(r, &body), 2, names)
        });
    }
    row!("genimage: /dev/zero", |r: &Row, _: &Ctx| {
        let mut a = genimage(r, b"");
        a[2] = "/dev/zero".into();
        case(a, 2, "/dev/zero")
    });
    row!("genimage: missing file", |r: &Row, _: &Ctx| {
        let mut a = genimage(r, b"");
        a[2] = p(&r.dir.path().join("none.cfg"));
        case(a, 2, "none.cfg")
    });

    // -- manifests (verify --manifest)
    for (name, bytes, names) in [
        ("empty", b"".to_vec(), "m.json"),
        ("an object", b"{}".to_vec(), "m.json"),
        ("an array", b"[1,2]".to_vec(), "m.json"),
        ("noise", pseudo(2048, 2), "m.json"),
        ("not UTF-8", b"{\"format\": \"\xff\"}".to_vec(), "m.json"),
        (
            "wrong format",
            b"{\"format\": \"other/9\"}".to_vec(),
            "m.json",
        ),
        ("5 MiB", vec![b' '; 5 << 20], "m.json"),
        (
            "deeply nested",
            [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
            "m.json",
        ),
    ] {
        row!(format!("manifest: {name}"), move |r: &Row, c: &Ctx| {
            case(verify_manifest(r, c, &bytes), 2, names)
        });
    }
    row!("manifest: /dev/zero", |r: &Row, c: &Ctx| {
        let mut a = verify_manifest(r, c, b"");
        a[3] = "/dev/zero".into();
        case(a, 2, "/dev/zero")
    });
    row!("manifest: a directory", |r: &Row, c: &Ctx| {
        let mut a = verify_manifest(r, c, b"");
        a[3] = p(&r.images());
        case(a, 2, "images")
    });
    row!("manifest: missing", |r: &Row, c: &Ctx| {
        let mut a = verify_manifest(r, c, b"");
        a[3] = p(&r.dir.path().join("none.json"));
        case(a, 2, "none.json")
    });

    // -- bmaps (flash --image --bmap): the card must not change
    let size = "337641472";
    for (name, bytes, names) in [
        ("empty", b"".to_vec(), "b.bmap"),
        ("noise", pseudo(4096, 3), "b.bmap"),
        ("not UTF-8", b"<bmap>\xff</bmap>".to_vec(), "b.bmap"),
        (
            "no ImageSize",
            b"<bmap><BlockSize> 4096 </BlockSize></bmap>".to_vec(),
            "b.bmap",
        ),
        ("block size 0", bmap_doc(size, "0", ""), "b.bmap"),
        (
            "range beyond 2^64",
            bmap_doc(
                size,
                "4096",
                "<Range chksum=\"00\"> 18446744073709551615 </Range>\n",
            ),
            "b.bmap",
        ),
        (
            "ranges out of order",
            bmap_doc(
                size,
                "4096",
                "<Range chksum=\"00\"> 5 </Range>\n<Range chksum=\"00\"> 1 </Range>\n",
            ),
            "b.bmap",
        ),
        (
            "range reversed",
            bmap_doc(size, "4096", "<Range chksum=\"00\"> 9-3 </Range>\n"),
            "b.bmap",
        ),
        (
            "range not a number",
            bmap_doc(size, "4096", "<Range chksum=\"00\"> x </Range>\n"),
            "b.bmap",
        ),
        (
            "wrong image size",
            bmap_doc("1048576", "4096", "<Range chksum=\"00\"> 0 </Range>\n"),
            "b.bmap",
        ),
        (
            "wrong checksum",
            bmap_doc(
                size,
                "4096",
                &format!("<Range chksum=\"{}\"> 0 </Range>\n", "0".repeat(64)),
            ),
            "b.bmap",
        ),
        (
            "range without checksum",
            bmap_doc(size, "4096", "<Range> 0 </Range>\n"),
            "b.bmap",
        ),
        ("5 MiB", vec![b' '; 5 << 20], "b.bmap"),
    ] {
        row!(format!("bmap: {name}"), move |r: &Row, c: &Ctx| {
            case(flash_bmap(r, c, &bytes), 2, names)
        });
    }
    row!("bmap: /dev/zero", |r: &Row, c: &Ctx| {
        let mut a = flash_bmap(r, c, b"");
        a[5] = "/dev/zero".into();
        case(a, 2, "/dev/zero")
    });
    row!("bmap: of another image", |r: &Row, c: &Ctx| {
        let mut a = flash_bmap(r, c, b"");
        a[3] = p(&c.built.path().join("x.img.zst"));
        a[5] = p(&c.built.path().join("y.img.bmap"));
        case(a, 2, "y.img.bmap")
    });

    // -- FIFOs where a file is read whole (opening one must not wait for a writer)
    row!("manifest: a FIFO", |r: &Row, c: &Ctx| {
        let mut a = verify_manifest(r, c, b"");
        let f = r.dir.path().join("in/fifo.json");
        tool_ok("mkfifo", &[&p(&f)]);
        a[3] = p(&f);
        case(a, 2, "fifo.json")
    });
    row!("genimage: a FIFO", |r: &Row, _: &Ctx| {
        let mut a = genimage(r, b"");
        let f = r.dir.path().join("in/fifo.cfg");
        tool_ok("mkfifo", &[&p(&f)]);
        a[2] = p(&f);
        case(a, 2, "fifo.cfg")
    });
    row!("bmap: a FIFO", |r: &Row, c: &Ctx| {
        let mut a = flash_bmap(r, c, b"");
        let f = r.dir.path().join("in/fifo.bmap");
        tool_ok("mkfifo", &[&p(&f)]);
        a[5] = p(&f);
        case(a, 2, "fifo.bmap")
    });
    row!("board file: a FIFO", |r: &Row, _: &Ctx| {
        let f = r.dir.path().join("in/fifo.toml");
        tool_ok("mkfifo", &[&p(&f)]);
        let mut a = build(r, &[]);
        a[2] = p(&f);
        case(a, 2, "fifo.toml")
    });
    row!(
        "stale bmap is a FIFO: left alone, build proceeds",
        |r: &Row, _: &Ctx| {
            tool_ok("mkfifo", &[&r.out("x.img.bmap")]);
            case(build(r, &[]), 0, "")
        }
    );

    // -- images (flash --image, verify, inspect)
    for (name, bytes, names) in [
        ("empty", b"".to_vec(), "i.img"),
        (
            "zstd magic then noise",
            [vec![0x28, 0xB5, 0x2F, 0xFD], pseudo(4096, 5)].concat(),
            "i.img",
        ),
        (
            "gzip magic then noise",
            [vec![0x1F, 0x8B], pseudo(4096, 6)].concat(),
            "i.img",
        ),
        (
            "xz magic then noise",
            [b"\xfd7zXZ\x00".to_vec(), pseudo(4096, 7)].concat(),
            "i.img",
        ),
    ] {
        row!(format!("flash image: {name}"), move |r: &Row, _: &Ctx| {
            let f = r.file("i.img", &bytes);
            case(strs(&["flash", "@CARD", "--image", &f, "--yes"]), 2, names)
        });
    }
    row!("flash image: truncated zstd", |r: &Row, c: &Ctx| {
        let z = std::fs::read(c.built.path().join("x.img.zst")).unwrap();
        let f = r.file("i.img.zst", &z[..z.len() / 2]);
        case(
            strs(&["flash", "@CARD", "--image", &f, "--yes"]),
            2,
            "i.img.zst",
        )
    });
    row!("flash image: /dev/zero", |_: &Row, _: &Ctx| {
        case(
            strs(&["flash", "@CARD", "--image", "/dev/zero", "--yes"]),
            2,
            "/dev/zero",
        )
    });
    row!("flash image: a directory", |r: &Row, _: &Ctx| {
        case(
            strs(&["flash", "@CARD", "--image", &p(&r.images()), "--yes"]),
            2,
            "images",
        )
    });
    row!("flash image: larger than the card", |r: &Row, _: &Ctx| {
        let f = r.dir.path().join("in/big.img");
        std::fs::File::create(&f).unwrap().set_len(1 << 30).unwrap();
        case(
            strs(&["flash", "@CARD", "--image", &p(&f), "--yes"]),
            2,
            "1,073,741,824",
        )
    });
    row!("flash: device is a regular file", |r: &Row, c: &Ctx| {
        let f = r.file("disk", b"");
        case(
            strs(&[
                "flash",
                &f,
                "--image",
                &p(&c.built.path().join("x.img")),
                "--yes",
            ]),
            2,
            "disk",
        )
    });
    row!("flash: device is /dev/null", |_: &Row, c: &Ctx| {
        case(
            strs(&[
                "flash",
                "/dev/null",
                "--image",
                &p(&c.built.path().join("x.img")),
                "--yes",
            ]),
            2,
            "/dev/null",
        )
    });
    row!("flash: device named twice", |_: &Row, c: &Ctx| {
        case(
            strs(&[
                "flash",
                "@CARD",
                "@CARD",
                "--image",
                &p(&c.built.path().join("x.img")),
                "--yes",
            ]),
            2,
            "twice",
        )
    });
    row!("flash: its own image proceeds", |_: &Row, c: &Ctx| {
        let mut k = case(
            strs(&[
                "flash",
                "@CARD",
                "--image",
                &p(&c.built.path().join("x.img")),
                "--yes",
            ]),
            0,
            "",
        );
        k.writes_card = true;
        k
    });
    for (name, bytes, code, names) in [
        ("empty", b"".to_vec(), 2, "i.img"),
        ("noise", pseudo(1 << 16, 8), 1, "difference"),
    ] {
        let copy = bytes.clone();
        row!(format!("inspect: {name}"), move |r: &Row, _: &Ctx| {
            let f = r.file("i.img", &copy);
            // Nothing recognisable is a valid answer of inspect.
            case(strs(&["inspect", &f]), 0, "")
        });
        row!(format!("verify image: {name}"), move |r: &Row, c: &Ctx| {
            let f = r.file("i.img", &bytes);
            let x = p(&c.built.path().join("x.img"));
            case(strs(&["verify", &x, "--image", &f, "--bytes"]), code, names)
        });
    }
    // As a release image (meaning), neither holds a partition table to compare with.
    for (name, bytes) in [("empty", b"".to_vec()), ("noise", pseudo(1 << 16, 8))] {
        row!(
            format!("verify release image: {name}"),
            move |r: &Row, c: &Ctx| {
                let f = r.file("i.img", &bytes);
                let x = p(&c.built.path().join("x.img"));
                case(strs(&["verify", &x, "--image", &f]), 2, "i.img")
            }
        );
    }
    row!("verify image: /dev/zero", |_: &Row, c: &Ctx| {
        case(
            strs(&[
                "verify",
                &p(&c.built.path().join("x.img")),
                "--image",
                "/dev/zero",
            ]),
            2,
            "/dev/zero",
        )
    });
    row!("inspect: /dev/zero", |_: &Row, _: &Ctx| {
        case(strs(&["inspect", "/dev/zero"]), 0, "")
    });

    // -- signals during a build (exit 128 + N, nothing left)
    for (ext, sig, n) in [
        ("img", "INT", 2),
        ("img.zst", "TERM", 15),
        ("img.gz", "HUP", 1),
        ("img.xz", "TERM", 15),
    ] {
        row!(
            format!("SIG{sig} during a {ext} build"),
            move |r: &Row, _: &Ctx| {
                let mut a = strs(&["@SIGNAL", sig]);
                let mut b = build(r, &["--size", "3GiB", "--checksums"]);
                b[6] = r.out(&format!("x.{ext}"));
                a.extend(b);
                case(a, 128 + n, "")
            }
        );
    }
    v
}

/// Rows for reader-side checks (artifact magic, squashfs depth, symlinks leaving the images
/// directory, FIFO and directory artifacts): the same contract; `sweep_reader_rows` runs them.
fn reader_rows() -> Vec<(String, Setup)> {
    let mut v: Vec<(String, Setup)> = Vec::new();
    macro_rules! row {
        ($name:expr, $f:expr) => {
            v.push(($name.to_string(), Box::new($f)))
        };
    }
    row!("squashfs is noise", |r: &Row, _: &Ctx| {
        std::fs::write(r.images().join("rootfs.squashfs"), pseudo(106496, 9)).unwrap();
        case(build(r, &[]), 2, "rootfs.squashfs")
    });
    row!("kernel is a FIFO", |r: &Row, _: &Ctx| {
        std::fs::remove_file(r.images().join("Image")).unwrap();
        tool_ok("mkfifo", &[&p(&r.images().join("Image"))]);
        case(build(r, &[]), 2, "Image")
    });
    row!(
        "boot_part symlink leaves the images dir",
        |r: &Row, _: &Ctx| {
            std::os::unix::fs::symlink("/etc/shadow", r.images().join("boot_part/shadow")).unwrap();
            case(build(r, &[]), 2, "shadow")
        }
    );
    row!("dtb is noise", |r: &Row, _: &Ctx| {
        std::fs::write(r.images().join("bcm2711-rpi-4-b.dtb"), pseudo(2889, 10)).unwrap();
        case(build(r, &[]), 2, "bcm2711-rpi-4-b.dtb")
    });
    row!("kernel is a directory", |r: &Row, _: &Ctx| {
        std::fs::remove_file(r.images().join("Image")).unwrap();
        std::fs::create_dir(r.images().join("Image")).unwrap();
        case(build(r, &[]), 2, "Image")
    });
    v
}

fn context() -> Option<Ctx> {
    let built = tempfile::tempdir().unwrap();
    let f = fixtures();
    let b = |out: &str, extra: &[&str]| {
        build_pi4(&f, &built.path().join(out), extra);
    };
    b("x.img", &["--bmap"]);
    b("x.img.zst", &[]);
    b("y.img", &["--bmap", "--seed", "other", "--size", "400MiB"]);
    let card = Card::new(512 << 20)?;
    Some(Ctx { built, card })
}

fn run_rows(rows: Vec<(String, Setup)>) {
    let Some(ctx) = context() else { return };
    let mut failures = Vec::new();
    let total = rows.len();
    for (name, setup) in rows {
        let row = Row::new();
        let k = setup(&row, &ctx);
        let uses_card = k.args.iter().any(|a| a == "@CARD");
        let before = uses_card.then(|| ctx.card.hash());
        let out_before = state(&row.dir.path().join("out"));
        let args: Vec<String> = k
            .args
            .iter()
            .map(|a| {
                if a == "@CARD" {
                    ctx.card.dev.clone()
                } else {
                    a.clone()
                }
            })
            .collect();
        let out = if args[0] == "@SIGNAL" {
            signalled(&args[1], &args[2..])
        } else {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            match a[0] {
                "env" => {
                    let o = std::process::Command::new("timeout")
                        .args(["-s", "KILL", "120"])
                        .args(&a)
                        .output()
                        .unwrap();
                    (
                        o.status.code(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                }
                _ => {
                    let o = run_limited(120, &a);
                    (
                        o.status.code(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                }
            }
        };
        let (code, err) = out;
        let mut why = Vec::new();
        if err.contains("panicked") || code == Some(101) {
            why.push("panicked".to_string());
        }
        if code != Some(k.code) {
            why.push(format!("exit {code:?}, want {}", k.code));
        }
        if k.code == 2 || k.code == 1 {
            if err.trim_end().lines().count() != 1 || !err.starts_with("skiff-flash: error: ") {
                why.push("not one error line".into());
            }
            if !err.contains(&k.names) {
                why.push(format!("does not name `{}`", k.names));
            }
        }
        if k.code != 0 && state(&row.dir.path().join("out")) != out_before {
            why.push(format!(
                "the output directory changed: {:?}",
                listing(&row.dir.path().join("out"))
            ));
        }
        if !k.writes_card && uses_card && Some(ctx.card.hash()) != before {
            why.push("the card changed".into());
        }
        if !why.is_empty() {
            failures.push(format!(
                "{name}: {} — stderr: {}",
                why.join(", "),
                err.trim_end()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

use std::os::unix::fs::MetadataExt;

/// Every entry of a directory: name, inode, mode, size, modification time.
fn state(dir: &Path) -> Vec<(String, u64, u32, u64, i64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, m.ino(), m.mode(), m.len(), m.mtime_nsec())
        })
        .collect();
    v.sort();
    v
}

/// Runs a build, sends SIG`sig` once its temporary file exists, returns (code, stderr).
fn signalled(sig: &str, args: &[String]) -> (Option<i32>, String) {
    use std::io::Read;
    let out = PathBuf::from(&args[6]);
    let mut child = sf(args).spawn();
    let partial = out.with_file_name(format!(
        ".{}.partial-{}",
        out.file_name().unwrap().to_str().unwrap(),
        child.id()
    ));
    let t = std::time::Instant::now();
    while !partial.exists() && t.elapsed().as_secs() < 30 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    tool_ok("kill", &[&format!("-{sig}"), &child.id().to_string()]);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn sweep_of_hostile_inputs() {
    let rows = rows();
    assert!(rows.len() >= 100, "{} rows", rows.len());
    run_rows(rows);
}

#[test]
fn sweep_reader_rows() {
    run_rows(reader_rows());
}
