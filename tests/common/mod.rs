//! Shared test helpers: running the binary, the oracle tools (which must be installed:
//! a missing tool fails the test with the package to install, unless
//! SKIFF_FLASH_TEST_ALLOW_MISSING=1 opts out), loop devices, fixture copies.
#![allow(dead_code)]

pub mod synth;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const EPOCH: &str = "1700000000";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff-flash")
}

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
    let d = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), d.path());
    std::fs::copy(fixture_squashfs(), d.path().join("rootfs.squashfs")).unwrap();
    d
}

/// Runs skiff-flash with a fixed SOURCE_DATE_EPOCH.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("BINARIES_DIR")
        .env_remove("SKIFF_FLASH_BOARD_PATH")
        .output()
        .expect("running skiff-flash")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "skiff-flash failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether an oracle tool is present; panics with the package to install when it is not.
pub fn need(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file();
    if found {
        return true;
    }
    if std::env::var_os("SKIFF_FLASH_TEST_ALLOW_MISSING").is_some() {
        eprintln!("SKIPPED: `{tool}` is missing (apt-get install {package})");
        return false;
    }
    panic!(
        "`{tool}` is required by this test: apt-get install {package} (or set SKIFF_FLASH_TEST_ALLOW_MISSING=1 to skip)"
    );
}

/// Runs a tool and returns (exit code, stdout+stderr).
pub fn tool(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s += &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), s)
}

pub fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let (code, out) = tool(cmd, args);
    assert_eq!(code, 0, "{cmd} {args:?} failed:\n{out}");
    out
}

/// `losetup ARGS` printing the device, retried: tests attach loop devices in parallel, and
/// two can race for the same free device.
pub fn losetup(args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..10 {
        let (code, out) = tool("losetup", args);
        if code == 0 {
            return out.trim().to_string();
        }
        last = out;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("losetup {args:?} failed: {last}");
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A loop device over an image with its partitions added through BLKPG (`partx -a`):
/// what a board's kernel would see. Detached on drop.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn attach(image: &Path, read_only: bool) -> Option<Loop> {
        if !need("losetup", "mount") || !need("partx", "util-linux") {
            return None;
        }
        assert!(
            is_root(),
            "loop devices need root: run the tests as root (CI does), or set SKIFF_FLASH_TEST_ALLOW_MISSING=1 to skip"
        );
        let img = image.to_str().unwrap();
        let mut args = vec!["-f", "--show"];
        if read_only {
            args.push("-r");
        }
        args.push(img);
        let dev = losetup(&args);
        let l = Loop { dev };
        tool_ok("partx", &["-a", &l.dev]);
        Some(l)
    }

    pub fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = tool("partx", &["-d", &self.dev]);
        let _ = tool("losetup", &["-d", &self.dev]);
    }
}

/// A read-only mount, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn ro(dev: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        tool_ok("mount", &["-o", "ro", dev, dir.path().to_str().unwrap()]);
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = tool("umount", &[self.dir.path().to_str().unwrap()]);
    }
}

/// Copies a tree keeping modes and symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = std::fs::symlink_metadata(&src).unwrap();
        if md.file_type().is_symlink() {
            symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if md.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(md.mode())).unwrap();
        }
    }
}

/// Every entry under `root` as (relative path, kind, mode, content or link target), sorted.
pub fn snapshot(root: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String, u32, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((
                    rel,
                    "link".into(),
                    0,
                    t.to_string_lossy().as_bytes().to_vec(),
                ));
            } else if md.is_dir() {
                out.push((rel, "dir".into(), mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.push((rel, "file".into(), mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Copies `len` bytes at `offset` of `image` into a new temp file (for tools that take a
/// whole device, like fsck.fat). All-zero blocks become holes, so this is cheap on sparse
/// images.
pub fn extract(image: &Path, offset: u64, len: u64) -> tempfile::NamedTempFile {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(image).unwrap();
    let dst = tempfile::NamedTempFile::new().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + done).unwrap();
        // Slice equality is a memcmp, fast even in a debug build.
        if buf[..n] != zeros[..n] {
            dst.as_file().write_all_at(&buf[..n], done).unwrap();
        }
        done += n as u64;
    }
    dst.as_file().set_len(len).unwrap();
    dst
}

/// A loop device over a fresh backing file; partitions are left to the tool under test.
pub struct Card {
    pub dev: String,
    pub backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl Card {
    pub fn new(size: u64) -> Option<Card> {
        if !need("losetup", "mount") || !need("partx", "util-linux") {
            return None;
        }
        assert!(
            is_root(),
            "loop devices need root (or set SKIFF_FLASH_TEST_ALLOW_MISSING=1)"
        );
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("card.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let dev = losetup(&["-f", "--show", backing.to_str().unwrap()]);
        Some(Card {
            dev,
            backing,
            _dir: dir,
        })
    }

    pub fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }

    pub fn hash(&self) -> String {
        skiff_flash::image::sums::sha256_file(&self.backing).unwrap()
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = tool("umount", &[&self.part(1)]);
        let _ = tool("umount", &[&self.part(3)]);
        let _ = tool("partx", &["-d", &self.dev]);
        let _ = tool("losetup", &["-d", &self.dev]);
    }
}

// Synthetic build outputs whose magic a reader checks.

/// Deterministic pseudo-random bytes (xorshift64*, seeded from the name).
pub fn noise(name: &str, len: u64) -> Vec<u8> {
    let mut s: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        s = (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

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
