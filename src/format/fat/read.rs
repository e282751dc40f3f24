//! FAT12/16/32 reader for verification and inspection: geometry from the boot sector, the
//! first FAT (12-, 16- or 32-bit entries), the fixed root directory region of FAT12/16, directories with long names, and file contents by cluster chain.
//!
//! Built for untrusted bytes: every cluster number, chain and directory is bounds-checked,
//! loops in chains and directories are detected, and problems come back as messages —
//! it never panics. Read-only; not a driver.

use std::collections::HashSet;

use crate::io::ReadAt;

/// A file or directory found in the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatEntry {
    /// Absolute path with `/` separators ("/overlays/x.dtbo").
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub first_cluster: u32,
    /// Last-write date and time as stored (`date << 16 | time`).
    pub stamp: u32,
}

/// An opened volume.
pub struct FatVolume<'a> {
    dev: &'a dyn ReadAt,
    /// Byte offset of the volume on the device.
    base: u64,
    cluster_bytes: u64,
    data_start: u64,
    clusters: u32,
    root: u32,
    /// FAT12/16: the root directory's region (offset, length); `root` is then 0.
    fixed_root: Option<(u64, u64)>,
    fat: Vec<u32>,
    pub label: String,
    pub volume_id: u32,
    pub fat_type: &'static str,
}

const MAX_DEPTH: usize = 64;
const MAX_ENTRIES: usize = 1 << 20;

fn le16(b: &[u8], i: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl<'a> FatVolume<'a> {
    /// Opens the FAT32 volume at `base` (at most `len` bytes long).
    pub fn open(dev: &'a dyn ReadAt, base: u64, len: u64) -> Result<Self, String> {
        let mut bs = [0u8; 512];
        dev.read_exact_at(&mut bs, base)
            .map_err(|e| format!("boot sector: {e}"))?;
        if bs[510..512] != [0x55, 0xAA] {
            return Err("boot sector: no 0x55AA signature".into());
        }
        let sector = le16(&bs, 11);
        let spc = u64::from(bs[13]);
        let reserved = le16(&bs, 14);
        let nfats = u64::from(bs[16]);
        let total = match le16(&bs, 19) {
            0 => u64::from(le32(&bs, 32)),
            n => n,
        };
        let fat16_sectors = le16(&bs, 22);
        let fat_sectors = match fat16_sectors {
            0 => u64::from(le32(&bs, 36)),
            n => n,
        };
        if ![512, 1024, 2048, 4096, 8192, 16384, 32768].contains(&sector)
            || spc == 0
            || !spc.is_power_of_two()
        {
            return Err(format!(
                "boot sector: bad geometry ({sector}-byte sectors, {spc} per cluster)"
            ));
        }
        if fat_sectors == 0 || nfats == 0 || reserved == 0 {
            return Err("boot sector: not a FAT volume (no FAT or no reserved sector)".into());
        }
        if total * sector > len {
            return Err(format!(
                "boot sector: volume of {} bytes larger than its partition ({len})",
                total * sector
            ));
        }
        // FAT12/16 keep the root directory in a fixed region after the FATs.
        let root_entries = if fat16_sectors != 0 { le16(&bs, 17) } else { 0 };
        let root_sectors = (root_entries * 32).div_ceil(sector);
        let root_at = reserved + nfats * fat_sectors;
        let data_sector = root_at + root_sectors;
        let clusters = total
            .checked_sub(data_sector)
            .ok_or("boot sector: FATs larger than the volume")?
            / spc;
        let bits: u64 = match (fat16_sectors, clusters) {
            (0, _) => 32,
            (_, 0..4085) => 12,
            (_, 4085..65525) => 16,
            _ => return Err("boot sector: FAT12/16 layout with FAT32's cluster count".into()),
        };
        if clusters > 0x0FFF_FFF5 || (clusters + 2) * bits > fat_sectors * sector * 8 {
            return Err("boot sector: FAT too small for the clusters".into());
        }
        let fat_bytes = ((clusters + 2) * bits).div_ceil(8) as usize;
        let mut raw = vec![0u8; fat_bytes];
        dev.read_exact_at(&mut raw, base + reserved * sector)
            .map_err(|e| format!("FAT: {e}"))?;
        // Entries as FAT32 values, so end-of-chain and bad marks read the same for every type.
        let widen = |v: u32, top: u32| if v >= top - 0xF { v | 0x0FFF_FFF0 } else { v };
        let fat: Vec<u32> = match bits {
            32 => raw
                .chunks_exact(4)
                .map(|c| le32(c, 0) & 0x0FFF_FFFF)
                .collect(),
            16 => raw
                .chunks_exact(2)
                .map(|c| widen(u32::from(u16::from_le_bytes([c[0], c[1]])), 0xFFFF))
                .collect(),
            _ => (0..(clusters + 2) as usize)
                .map(|i| {
                    let at = i * 3 / 2;
                    let pair = u32::from(raw[at]) | (u32::from(raw[at + 1]) << 8);
                    let v = if i % 2 == 0 { pair & 0xFFF } else { pair >> 4 };
                    widen(v, 0xFFF)
                })
                .collect(),
        };
        let (vi, root) = match bits {
            32 => (64, le32(&bs, 44)),
            _ => (36, 0),
        };
        let label = String::from_utf8_lossy(&bs[vi + 7..vi + 18])
            .trim_end()
            .to_string();
        Ok(FatVolume {
            dev,
            base,
            cluster_bytes: spc * sector,
            data_start: data_sector * sector,
            clusters: clusters as u32,
            root,
            fixed_root: (bits != 32).then_some((root_at * sector, root_sectors * sector)),
            fat,
            label,
            volume_id: le32(&bs, vi + 3),
            fat_type: match bits {
                12 => "FAT12",
                16 => "FAT16",
                _ => "FAT32",
            },
        })
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_bytes
    }

    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// The first cluster of the root directory.
    pub fn root_cluster(&self) -> u32 {
        self.root
    }

    /// The FAT entry of cluster `c` (28 bits), or `None` outside the volume.
    pub fn next(&self, c: u32) -> Option<u32> {
        self.fat.get(c as usize).copied()
    }

    /// Byte offset of cluster `c` from the start of the volume.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c.saturating_sub(2)) * self.cluster_bytes
    }

    fn valid(&self, c: u32) -> bool {
        c >= 2 && c < self.clusters + 2
    }

    /// The cluster chain from `first`, at most `limit` clusters; loops and bad links are errors.
    pub fn chain(&self, first: u32, limit: u64) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut c = first;
        loop {
            if !self.valid(c) {
                return Err(format!(
                    "cluster chain from {first} points outside the volume ({c})"
                ));
            }
            if !seen.insert(c) {
                return Err(format!("cluster chain from {first} loops at cluster {c}"));
            }
            out.push(c);
            if out.len() as u64 > limit {
                return Err(format!(
                    "cluster chain from {first} is longer than its file"
                ));
            }
            let next = self.fat[c as usize];
            if next >= 0x0FFF_FFF8 {
                return Ok(out);
            }
            if next == 0 || next == 0x0FFF_FFF7 {
                return Err(format!(
                    "cluster chain from {first} ends in a free or bad cluster after {c}"
                ));
            }
            c = next;
        }
    }

    fn read_cluster(&self, c: u32, buf: &mut [u8]) -> Result<(), String> {
        let at = self.base + self.data_start + (u64::from(c) - 2) * self.cluster_bytes;
        self.dev
            .read_exact_at(buf, at)
            .map_err(|e| format!("reading cluster {c}: {e}"))
    }

    /// Every file and directory, depth first, in directory order.
    pub fn list(&self) -> Result<Vec<FatEntry>, String> {
        let mut out = Vec::new();
        let mut visited = HashSet::new();
        self.walk(self.root, "", 0, &mut visited, &mut out)?;
        Ok(out)
    }

    fn walk(
        &self,
        cluster: u32,
        prefix: &str,
        depth: usize,
        visited: &mut HashSet<u32>,
        out: &mut Vec<FatEntry>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "{prefix}: directories nested deeper than {MAX_DEPTH}"
            ));
        }
        if !visited.insert(cluster) {
            return Err(format!("{prefix}: directory loop at cluster {cluster}"));
        }
        let bytes = self.dir_bytes(cluster)?;
        for e in parse_dir(&bytes) {
            if out.len() > MAX_ENTRIES {
                return Err("more entries than any real boot partition holds".into());
            }
            let path = format!("{prefix}/{}", e.name);
            let entry = FatEntry {
                path: path.clone(),
                is_dir: e.is_dir,
                size: e.size,
                first_cluster: e.cluster,
                stamp: e.stamp,
            };
            out.push(entry);
            if e.is_dir {
                self.walk(e.cluster, &path, depth + 1, visited, out)?;
            }
        }
        Ok(())
    }

    fn dir_bytes(&self, cluster: u32) -> Result<Vec<u8>, String> {
        if let Some((at, len)) = self.fixed_root.filter(|_| cluster == 0) {
            let mut bytes = vec![0u8; len as usize];
            self.dev
                .read_exact_at(&mut bytes, self.base + at)
                .map_err(|e| format!("reading the root directory: {e}"))?;
            return Ok(bytes);
        }
        let chain = self.chain(cluster, 65_536 * 32 / self.cluster_bytes + 1)?;
        let mut bytes = vec![0u8; chain.len() * self.cluster_bytes as usize];
        for (i, c) in chain.iter().enumerate() {
            let cb = self.cluster_bytes as usize;
            self.read_cluster(*c, &mut bytes[i * cb..(i + 1) * cb])?;
        }
        Ok(bytes)
    }

    /// Finds an entry by path (case-insensitive, as FAT is).
    pub fn find(&self, path: &str) -> Result<Option<FatEntry>, String> {
        let want = path.to_lowercase();
        Ok(self
            .list()?
            .into_iter()
            .find(|e| e.path.to_lowercase() == want))
    }

    /// Streams a file's content to `sink` in cluster-sized pieces.
    pub fn read_file(&self, e: &FatEntry, sink: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        self.read_file_while(e, &mut |b| {
            sink(b);
            true
        })
    }

    /// Streams a file's content in pieces of up to 1 MiB (contiguous clusters are read
    /// together) while `sink` returns true.
    pub fn read_file_while(
        &self,
        e: &FatEntry,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), String> {
        if e.is_dir {
            return Err(format!("{} is a directory", e.path));
        }
        if e.size == 0 {
            return Ok(());
        }
        let n = e.size.div_ceil(self.cluster_bytes);
        let chain = self.chain(e.first_cluster, n)?;
        if (chain.len() as u64) < n {
            return Err(format!(
                "{}: cluster chain shorter than the file's size",
                e.path
            ));
        }
        let per = ((1u64 << 20) / self.cluster_bytes).max(1) as usize;
        let mut buf = vec![0u8; per * self.cluster_bytes as usize];
        let mut left = e.size;
        let mut i = 0;
        while i < chain.len() && left > 0 {
            // A run of consecutive clusters, at most `per` long.
            let mut k = 1;
            while i + k < chain.len() && k < per && chain[i + k] == chain[i] + k as u32 {
                k += 1;
            }
            let bytes = (k as u64 * self.cluster_bytes).min(left) as usize;
            let at = self.base + self.cluster_offset(chain[i]);
            self.dev
                .read_exact_at(&mut buf[..bytes], at)
                .map_err(|err| format!("reading cluster {}: {err}", chain[i]))?;
            if !sink(&buf[..bytes]) {
                return Ok(());
            }
            left -= bytes as u64;
            i += k;
        }
        Ok(())
    }
}

struct DirItem {
    name: String,
    is_dir: bool,
    size: u64,
    cluster: u32,
    stamp: u32,
}

/// Parses the entries of one directory's bytes (without `.` and `..`, labels, deleted
/// entries); long names are used when their checksum matches the short entry.
fn parse_dir(bytes: &[u8]) -> Vec<DirItem> {
    let mut out = Vec::new();
    let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
    let mut lfn_sum = 0u8;
    for e in bytes.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => {
                lfn.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let mut part = [0u16; 13];
            for (j, slot) in part.iter_mut().enumerate() {
                let at = match j {
                    0..=4 => 1 + 2 * j,
                    5..=10 => 14 + 2 * (j - 5),
                    _ => 28 + 2 * (j - 11),
                };
                *slot = u16::from_le_bytes([e[at], e[at + 1]]);
            }
            if e[0] & 0x40 != 0 {
                lfn.clear();
                lfn_sum = e[13];
            }
            lfn.push((e[0] & 0x1F, part));
            continue;
        }
        if attr & 0x08 != 0 || e[0] == b'.' {
            lfn.clear();
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        let sum = short.iter().fold(0u8, |s, &b| {
            ((s & 1) << 7).wrapping_add(s >> 1).wrapping_add(b)
        });
        let name = if !lfn.is_empty() && sum == lfn_sum {
            lfn.sort_by_key(|(n, _)| *n);
            let units: Vec<u16> = lfn
                .iter()
                .flat_map(|(_, p)| p.iter().copied())
                .take_while(|u| *u != 0 && *u != 0xFFFF)
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            short_name(&short, e[12])
        };
        lfn.clear();
        let cluster =
            (le32(e, 26) & 0xFFFF) | (u32::from(u16::from_le_bytes([e[20], e[21]])) << 16);
        out.push(DirItem {
            name,
            is_dir: attr & 0x10 != 0,
            size: u64::from(le32(e, 28)),
            cluster,
            stamp: le32(e, 22),
        });
    }
    out
}

fn short_name(s: &[u8; 11], case: u8) -> String {
    let part = |b: &[u8], lower: bool| -> String {
        let t = String::from_utf8_lossy(b).trim_end().to_string();
        if lower { t.to_lowercase() } else { t }
    };
    let base = part(&s[..8], case & 0x08 != 0);
    let ext = part(&s[8..], case & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{FsSpec, FsWriter, fat::Fat32};
    use crate::plan::tree::{Entry, Node, Source, Tree};
    use crate::sink::MemSink;

    fn volume() -> (Vec<u8>, Tree) {
        let mut t = Tree::new();
        for (p, text) in [
            ("/config.txt", "hello".to_string()),
            ("/overlays/a-long-name.dtbo", "x".repeat(3000)),
            ("/Image", String::new()),
            ("/Ünïcødé notes.txt", "u".into()),
        ] {
            t.insert(Entry {
                path: p.into(),
                node: Node::File {
                    size: text.len() as u64,
                    source: Source::Text(text),
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
            })
            .unwrap();
        }
        let spec = FsSpec {
            label: Some("BOOT"),
            uuid: [9; 16],
            epoch: 0,
            tree: &t,
            offset: 0,
            part: "boot",
            fat: Default::default(),
        };
        let m = Fat32.measure(&spec).unwrap();
        let size = m.min_size();
        let mut sink = MemSink::new(size as usize);
        Fat32.write(&spec, size, &mut sink).unwrap();
        (sink.buf, t)
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let (img, _) = volume();
        let v = FatVolume::open(&img, 0, img.len() as u64).unwrap();
        assert_eq!(v.label, "BOOT");
        let paths: Vec<String> = v.list().unwrap().into_iter().map(|e| e.path).collect();
        assert!(paths.contains(&"/config.txt".to_string()), "{paths:?}");
        assert!(
            paths.contains(&"/overlays/a-long-name.dtbo".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/Ünïcødé notes.txt".to_string()),
            "{paths:?}"
        );
        let e = v.find("/overlays/a-long-name.dtbo").unwrap().unwrap();
        let mut got = Vec::new();
        v.read_file(&e, &mut |b| got.extend_from_slice(b)).unwrap();
        assert_eq!(got, "x".repeat(3000).as_bytes());
    }

    #[test]
    fn garbage_and_damage_are_errors_not_panics() {
        let (img, _) = volume();
        assert!(FatVolume::open(&vec![0u8; 4096], 0, 4096).is_err());
        assert!(FatVolume::open(&img[..1000].to_vec(), 0, 1000).is_err());
        // A loop in a chain: point the root directory at itself.
        let mut bad = img.clone();
        let fat = 32 * 512;
        bad[fat + 8..fat + 12].copy_from_slice(&2u32.to_le_bytes());
        let v = FatVolume::open(&bad, 0, bad.len() as u64).unwrap();
        assert!(v.list().unwrap_err().contains("loops"));
        // Random bytes everywhere after the boot sector.
        let mut noise = img.clone();
        let mut x = 12345u32;
        for b in noise[512..].iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *b = (x >> 16) as u8;
        }
        if let Ok(v) = FatVolume::open(&noise, 0, noise.len() as u64) {
            let _ = v.list();
        }
    }
}
