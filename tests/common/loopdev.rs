//! Loop devices over image files and mounts of their partitions, each undone on drop:
//! what a board's kernel would see of an image, and blank cards to flash. Not the checks
//! run on them.

use std::path::{Path, PathBuf};

use super::need::need_loop_devices;
use super::run::{tool, tool_ok};

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

/// A loop device over a file. Its partitions are removed (those added through BLKPG
/// outlive a detach on loops without partscan) and it is detached on drop.
pub struct Loop {
    pub dev: String,
}

impl Loop {
    /// A loop device over an image with its partitions added through BLKPG (`partx -a`);
    /// `None` when loop devices cannot be made here and skipping was asked for.
    pub fn attach(image: &Path, read_only: bool) -> Option<Loop> {
        if !need_loop_devices() {
            return None;
        }
        let l = Loop::bare(image, if read_only { &["-r"] } else { &[] });
        tool_ok("partx", &["-a", &l.dev]);
        Some(l)
    }

    /// A loop device over `file` with extra `losetup` arguments and no partitions added;
    /// the caller has checked `need_loop_devices`.
    pub fn bare(file: &Path, extra: &[&str]) -> Loop {
        let mut args = vec!["-f", "--show"];
        args.extend(extra);
        args.push(file.to_str().unwrap());
        Loop {
            dev: losetup(&args),
        }
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.dev)
    }

    /// The kernel's name of the device (`loop3`).
    pub fn name(&self) -> String {
        self.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }

    pub fn part_path(&self, n: u32) -> PathBuf {
        PathBuf::from(self.part(n))
    }

    /// The partition's directory in sysfs.
    pub fn sys_part(&self, n: u32) -> PathBuf {
        let name = self.name();
        Path::new("/sys/block")
            .join(&name)
            .join(format!("{name}p{n}"))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = tool("partx", &["-d", &self.dev]);
        let _ = tool("losetup", &["-d", &self.dev]);
    }
}

/// A mount on a temporary directory, unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn ro(dev: &str) -> Mount {
        Mount::with(&["-o", "ro", dev])
    }

    pub fn rw(dev: &str) -> Mount {
        Mount::with(&[dev])
    }

    fn with(args: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args.to_vec();
        a.push(dir.path().to_str().unwrap());
        tool_ok("mount", &a);
        Mount { dir }
    }

    pub fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = tool("umount", &[self.path()]);
    }
}

/// A loop device over a fresh sparse backing file; partitions are left to the tool under
/// test. Partitions 1 and 3 are unmounted on drop, then the loop goes.
pub struct Card {
    pub dev: String,
    pub backing: PathBuf,
    lo: Loop,
    _dir: tempfile::TempDir,
}

impl Card {
    pub fn new(size: u64) -> Option<Card> {
        if !need_loop_devices() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("card.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let lo = Loop::bare(&backing, &[]);
        Some(Card {
            dev: lo.dev.clone(),
            backing,
            lo,
            _dir: dir,
        })
    }

    pub fn part(&self, n: u32) -> String {
        self.lo.part(n)
    }

    pub fn hash(&self) -> String {
        skiff_flash::image::sums::sha256_file(&self.backing).unwrap()
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let _ = tool("umount", &[&self.part(1)]);
        let _ = tool("umount", &[&self.part(3)]);
    }
}
