//! Where files and structures lie on a card, as the filesystems' own tools see it: `sfdisk`
//! for partitions, `minfo`/`mshowfat`/`mdir` (mtools) for FAT, `debugfs` for ext4. The
//! independent answer a test compares skiff-flash's naming with; never skiff-flash's own
//! manifest.

use super::need::need_all;

/// The tools this module runs.
pub fn need_fs_tools() -> bool {
    need_all(&[
        ("sfdisk", "fdisk"),
        ("minfo", "mtools"),
        ("mshowfat", "mtools"),
        ("mdir", "mtools"),
        ("debugfs", "e2fsprogs"),
    ])
}

/// Runs a tool that must succeed; its standard output (the banners some print on standard
/// error stay out of what is parsed).
fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A byte range: `len` bytes from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub len: u64,
}

/// Byte offset of partition `n` (1-based) of `dev`, from sfdisk's JSON.
pub fn partition_start(dev: &str, n: usize) -> u64 {
    let j: serde_json::Value = serde_json::from_str(&tool_ok("sfdisk", &["--json", dev])).unwrap();
    let t = &j["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    t["partitions"][n - 1]["start"].as_u64().unwrap() * sector
}

/// A FAT volume's geometry as `minfo` reports it.
#[derive(Debug, Clone, Copy)]
pub struct FatGeometry {
    pub sector: u64,
    pub cluster_sectors: u64,
    pub reserved: u64,
    pub fats: u64,
    pub fat_sectors: u64,
    pub root_slots: u64,
}

impl FatGeometry {
    /// Byte offset (in the volume) of FAT copy `k` (0-based).
    pub fn fat(&self, k: u64) -> Run {
        let len = self.fat_sectors * self.sector;
        Run {
            start: self.reserved * self.sector + k * len,
            len,
        }
    }

    /// Byte offset (in the volume) of cluster `c`.
    pub fn cluster(&self, c: u64) -> u64 {
        let root = (self.root_slots * 32).div_ceil(self.sector) * self.sector;
        self.fat(self.fats).start + root + (c - 2) * self.cluster_sectors * self.sector
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_sectors * self.sector
    }
}

fn minfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `minfo` of the FAT volume on `part`.
pub fn fat_geometry(part: &str) -> FatGeometry {
    let text = tool_ok("minfo", &["-i", part, "::"]);
    let f = |k: &str| minfo_field(&text, k).unwrap_or_else(|| panic!("minfo: no `{k}`: {text}"));
    let small = f("sectors per fat:");
    FatGeometry {
        sector: f("sector size:"),
        cluster_sectors: f("cluster size:"),
        reserved: f("reserved (boot) sectors:"),
        fats: f("fats:"),
        fat_sectors: if small > 0 { small } else { f("Big fatlen=") },
        root_slots: f("max available root directory slots:"),
    }
}

/// Every file of the FAT volume on `part` (`mdir -/ -b`), as `/path`.
pub fn fat_files(part: &str) -> Vec<String> {
    tool_ok("mdir", &["-/", "-b", "-i", part, "::/"])
        .lines()
        .filter(|l| !l.ends_with('/'))
        .filter_map(|l| l.trim().strip_prefix("::").map(str::to_string))
        .collect()
}

/// The clusters of `path` on the FAT volume on `part` (`mshowfat`), as byte runs in file
/// order, relative to the volume.
pub fn fat_extents(part: &str, g: &FatGeometry, path: &str) -> Vec<Run> {
    let out = tool_ok("mshowfat", &["-i", part, &format!("::{path}")]);
    let mut runs = Vec::new();
    for piece in out.split('<').skip(1) {
        let body = piece.split('>').next().unwrap_or_default();
        for r in body.split(',') {
            let mut ends = r.trim().split('-').map(|n| n.parse::<u64>().unwrap());
            let a = ends.next().unwrap();
            let b = ends.next().unwrap_or(a);
            runs.push(Run {
                start: g.cluster(a),
                len: (b - a + 1) * g.cluster_bytes(),
            });
        }
    }
    runs
}

/// `debugfs -R REQUEST part`.
fn debugfs(part: &str, request: &str) -> String {
    tool_ok("debugfs", &["-R", request, part])
}

/// Every regular file of the ext4 filesystem on `part` with its size, walking `ls -p`.
pub fn ext4_files(part: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(d) = dirs.pop() {
        for line in debugfs(part, &format!("ls -p \"{d}\"")).lines() {
            // /ino/mode/uid/gid/name/size/
            let f: Vec<&str> = line.trim().trim_start_matches('/').split('/').collect();
            if f.len() < 6 || f[4] == "." || f[4] == ".." || f[4] == "lost+found" {
                continue;
            }
            let path = format!("{}/{}", d.trim_end_matches('/'), f[4]);
            let mode = u32::from_str_radix(f[1], 8).unwrap_or(0);
            match mode & 0o170000 {
                0o040000 => dirs.push(path),
                0o100000 => out.push((path, f[5].parse().unwrap_or(0))),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The blocks of `path` (file or directory) on the ext4 filesystem on `part` (`debugfs
/// blocks`), as byte runs in file order, relative to the filesystem.
pub fn ext4_extents(part: &str, path: &str) -> Vec<Run> {
    let bs = ext4_block_size(part);
    let mut runs: Vec<Run> = Vec::new();
    for b in debugfs(part, &format!("blocks \"{path}\"")).split_whitespace() {
        let at = b.parse::<u64>().unwrap() * bs;
        match runs.last_mut() {
            Some(r) if r.start + r.len == at => r.len += bs,
            _ => runs.push(Run { start: at, len: bs }),
        }
    }
    runs
}

/// The block size of the ext4 filesystem on `part` (`debugfs stats`).
pub fn ext4_block_size(part: &str) -> u64 {
    debugfs_stat(part, "Block size:")
}

/// Blocks per group of the ext4 filesystem on `part` (`debugfs stats`).
pub fn ext4_blocks_per_group(part: &str) -> u64 {
    debugfs_stat(part, "Blocks per group:")
}

fn debugfs_stat(part: &str, key: &str) -> u64 {
    let text = debugfs(part, "stats");
    minfo_field(&text, key).unwrap_or_else(|| panic!("debugfs stats: no `{key}`"))
}

/// Where group `g`'s block bitmap, inode bitmap and inode table start, in blocks
/// (`debugfs stats`).
pub fn ext4_group(part: &str, g: u32) -> (u64, u64, u64) {
    let text = debugfs(part, "stats");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("Group {g:2}:")))
        .unwrap_or_else(|| panic!("debugfs stats: no group {g}: {text}"));
    let after = |k: &str| -> u64 {
        let rest = &line[line.find(k).unwrap_or_else(|| panic!("{k} in {line}")) + k.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        after("block bitmap at"),
        after("inode bitmap at"),
        after("inode table at"),
    )
}

/// Where a byte at `offset` of a file lies within its runs.
pub fn locate(runs: &[Run], mut offset: u64) -> u64 {
    for r in runs {
        if offset < r.len {
            return r.start + offset;
        }
        offset -= r.len;
    }
    panic!("offset beyond the file's runs");
}

/// The size of `path` on the FAT volume on `part`: the bytes `mcopy` reads out of it.
pub fn fat_size(part: &str, path: &str) -> u64 {
    let out = std::process::Command::new("mcopy")
        .args(["-n", "-i", part, &format!("::{path}"), "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mcopy {path}: {out:?}");
    out.stdout.len() as u64
}
