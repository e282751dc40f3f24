//! FAT12/16/32 reader for verification and inspection: geometry from the boot sector, the
//! first FAT (12-, 16- or 32-bit entries), the fixed root directory region of FAT12/16,
//! directories with long names, and file contents by cluster chain. The boot sector is
//! checked here only (`FatGeometry`): in-place editors take their geometry from it.
//!
//! Built for untrusted bytes: every cluster number, chain and directory is bounds-checked,
//! loops in chains and directories are detected, and problems come back as messages —
//! it never panics. Read-only; not a driver.

use std::collections::HashSet;
use std::fmt;

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
    geometry: FatGeometry,
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

/// A FAT problem as a message: why a volume cannot be read (where: boot sector, FAT, a chain
/// or a directory, and what is wrong), or why a geometry cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFat(pub String);

impl fmt::Display for BadFat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for BadFat {
    fn from(s: &str) -> Self {
        BadFat(s.to_string())
    }
}

impl From<String> for BadFat {
    fn from(s: String) -> Self {
        BadFat(s)
    }
}

impl BadFat {
    pub fn contains(&self, s: &str) -> bool {
        self.0.contains(s)
    }
}

/// A volume's layout as its boot sector gives it, with the checks every reader of it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatGeometry {
    /// 12, 16 or 32.
    pub bits: u8,
    pub sector: u64,
    /// Sectors the volume spans.
    pub sectors: u64,
    pub sectors_per_cluster: u64,
    pub reserved: u64,
    pub nfats: u64,
    pub fat_sectors: u64,
    /// FAT12/16's fixed root directory entries (0 on FAT32).
    pub root_entries: u64,
    pub clusters: u32,
    /// FAT32's extended flags, FSInfo sector and backup boot sector (0 on FAT12/16).
    pub ext_flags: u16,
    pub fsinfo_sector: u64,
    pub backup_sector: u64,
    /// FAT32's root directory cluster (0 on FAT12/16).
    pub root_cluster: u32,
}

impl FatGeometry {
    /// Checks and reads the boot sector of a volume at most `len` bytes long.
    pub fn parse(bs: &[u8; 512], len: u64) -> Result<FatGeometry, BadFat> {
        if bs[510..512] != [0x55, 0xAA] {
            return Err("boot sector: no 0x55AA signature".into());
        }
        let sector = le16(bs, 11);
        let spc = u64::from(bs[13]);
        let reserved = le16(bs, 14);
        let nfats = u64::from(bs[16]);
        let sectors = match le16(bs, 19) {
            0 => u64::from(le32(bs, 32)),
            n => n,
        };
        let fat16_sectors = le16(bs, 22);
        let fat_sectors = match fat16_sectors {
            0 => u64::from(le32(bs, 36)),
            n => n,
        };
        if ![512, 1024, 2048, 4096, 8192, 16384, 32768].contains(&sector)
            || spc == 0
            || !spc.is_power_of_two()
        {
            return Err(format!(
                "boot sector: bad geometry ({sector}-byte sectors, {spc} per cluster)"
            )
            .into());
        }
        if fat_sectors == 0 || nfats == 0 || reserved == 0 {
            return Err("boot sector: not a FAT volume (no FAT or no reserved sector)".into());
        }
        if sectors * sector > len {
            return Err(format!(
                "boot sector: volume of {} bytes larger than its partition ({len})",
                sectors * sector
            )
            .into());
        }
        let mut g = FatGeometry {
            bits: 32,
            sector,
            sectors,
            sectors_per_cluster: spc,
            reserved,
            nfats,
            fat_sectors,
            // FAT12/16 keep the root directory in a fixed region after the FATs.
            root_entries: if fat16_sectors != 0 { le16(bs, 17) } else { 0 },
            clusters: 0,
            ext_flags: 0,
            fsinfo_sector: 0,
            backup_sector: 0,
            root_cluster: 0,
        };
        let clusters = sectors
            .checked_sub(g.data_start() / sector)
            .ok_or("boot sector: FATs larger than the volume")?
            / spc;
        g.bits = match (fat16_sectors, clusters) {
            (0, _) => 32,
            (_, 0..4085) => 12,
            (_, 4085..65525) => 16,
            _ => return Err("boot sector: FAT12/16 layout with FAT32's cluster count".into()),
        };
        if clusters > 0x0FFF_FFF5 || (clusters + 2) * u64::from(g.bits) > fat_sectors * sector * 8 {
            return Err("boot sector: FAT too small for the clusters".into());
        }
        g.clusters = clusters as u32;
        if g.bits == 32 {
            g.ext_flags = le16(bs, 40) as u16;
            g.root_cluster = le32(bs, 44);
            g.fsinfo_sector = le16(bs, 48);
            g.backup_sector = le16(bs, 50);
        }
        Ok(g)
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * self.sector
    }

    /// Byte offset of the first FAT.
    pub fn fat_start(&self) -> u64 {
        self.reserved * self.sector
    }

    /// Byte offset of FAT12/16's fixed root directory (where the data starts on FAT32).
    pub fn root_start(&self) -> u64 {
        (self.reserved + self.nfats * self.fat_sectors) * self.sector
    }

    /// Byte offset of cluster 2.
    pub fn data_start(&self) -> u64 {
        self.root_start() + (self.root_entries * 32).div_ceil(self.sector) * self.sector
    }

    /// Bytes of the FAT entries for every cluster.
    fn fat_bytes(&self) -> usize {
        ((u64::from(self.clusters) + 2) * u64::from(self.bits)).div_ceil(8) as usize
    }
}

/// The first FAT's entries as FAT32 values, so end-of-chain and bad marks read the same for
/// every type.
fn fat_entries(raw: &[u8], g: &FatGeometry) -> Vec<u32> {
    let widen = |v: u32, top: u32| if v >= top - 0xF { v | 0x0FFF_FFF0 } else { v };
    match g.bits {
        32 => raw
            .chunks_exact(4)
            .map(|c| le32(c, 0) & 0x0FFF_FFFF)
            .collect(),
        16 => raw
            .chunks_exact(2)
            .map(|c| widen(u32::from(u16::from_le_bytes([c[0], c[1]])), 0xFFFF))
            .collect(),
        _ => (0..g.clusters as usize + 2)
            .map(|i| {
                let at = i * 3 / 2;
                let pair = u32::from(raw[at]) | (u32::from(raw[at + 1]) << 8);
                let v = if i % 2 == 0 { pair & 0xFFF } else { pair >> 4 };
                widen(v, 0xFFF)
            })
            .collect(),
    }
}

impl<'a> FatVolume<'a> {
    /// Opens the FAT12, FAT16 or FAT32 volume at `base` (at most `len` bytes long).
    pub fn open(dev: &'a dyn ReadAt, base: u64, len: u64) -> Result<Self, BadFat> {
        let mut bs = [0u8; 512];
        dev.read_exact_at(&mut bs, base)
            .map_err(|e| format!("boot sector: {e}"))?;
        let g = FatGeometry::parse(&bs, len)?;
        let mut raw = vec![0u8; g.fat_bytes()];
        dev.read_exact_at(&mut raw, base + g.fat_start())
            .map_err(|e| format!("FAT: {e}"))?;
        let vi = if g.bits == 32 { 64 } else { 36 };
        let label = String::from_utf8_lossy(&bs[vi + 7..vi + 18])
            .trim_end()
            .to_string();
        Ok(FatVolume {
            dev,
            base,
            fat: fat_entries(&raw, &g),
            label,
            volume_id: le32(&bs, vi + 3),
            fat_type: match g.bits {
                12 => "FAT12",
                16 => "FAT16",
                _ => "FAT32",
            },
            geometry: g,
        })
    }

    /// The volume's layout, as its boot sector gives it.
    pub fn geometry(&self) -> FatGeometry {
        self.geometry
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.geometry.cluster_bytes()
    }

    pub fn clusters(&self) -> u32 {
        self.geometry.clusters
    }

    /// The first cluster of the root directory (0 for FAT12/16's fixed root).
    pub fn root_cluster(&self) -> u32 {
        self.geometry.root_cluster
    }

    /// The FAT entry of cluster `c` (28 bits), or `None` outside the volume.
    pub fn next(&self, c: u32) -> Option<u32> {
        self.fat.get(c as usize).copied()
    }

    /// Byte offset of cluster `c` from the start of the volume.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.geometry.data_start() + u64::from(c.saturating_sub(2)) * self.cluster_bytes()
    }

    fn valid(&self, c: u32) -> bool {
        c >= 2 && c < self.clusters() + 2
    }

    /// The cluster chain from `first`, at most `limit` clusters; loops and bad links are errors.
    pub fn chain(&self, first: u32, limit: u64) -> Result<Vec<u32>, BadFat> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut c = first;
        loop {
            if !self.valid(c) {
                return Err(
                    format!("cluster chain from {first} points outside the volume ({c})").into(),
                );
            }
            if !seen.insert(c) {
                return Err(format!("cluster chain from {first} loops at cluster {c}").into());
            }
            out.push(c);
            if out.len() as u64 > limit {
                return Err(format!("cluster chain from {first} is longer than its file").into());
            }
            let next = self.fat[c as usize];
            if next >= 0x0FFF_FFF8 {
                return Ok(out);
            }
            if next == 0 || next == 0x0FFF_FFF7 {
                return Err(format!(
                    "cluster chain from {first} ends in a free or bad cluster after {c}"
                )
                .into());
            }
            c = next;
        }
    }

    fn read_cluster(&self, c: u32, buf: &mut [u8]) -> Result<(), BadFat> {
        let at = self.base + self.cluster_offset(c);
        self.dev
            .read_exact_at(buf, at)
            .map_err(|e| BadFat(format!("reading cluster {c}: {e}")))
    }

    /// Every file and directory, depth first, in directory order.
    pub fn list(&self) -> Result<Vec<FatEntry>, BadFat> {
        let mut out = Vec::new();
        let mut visited = HashSet::new();
        self.walk(self.root_cluster(), "", 0, &mut visited, &mut out)?;
        Ok(out)
    }

    fn walk(
        &self,
        cluster: u32,
        prefix: &str,
        depth: usize,
        visited: &mut HashSet<u32>,
        out: &mut Vec<FatEntry>,
    ) -> Result<(), BadFat> {
        if depth > MAX_DEPTH {
            return Err(format!("{prefix}: directories nested deeper than {MAX_DEPTH}").into());
        }
        if !visited.insert(cluster) {
            return Err(format!("{prefix}: directory loop at cluster {cluster}").into());
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

    fn dir_bytes(&self, cluster: u32) -> Result<Vec<u8>, BadFat> {
        let g = &self.geometry;
        if g.bits != 32 && cluster == 0 {
            let mut bytes = vec![0u8; (g.data_start() - g.root_start()) as usize];
            self.dev
                .read_exact_at(&mut bytes, self.base + g.root_start())
                .map_err(|e| format!("reading the root directory: {e}"))?;
            return Ok(bytes);
        }
        let cb = self.cluster_bytes();
        let chain = self.chain(cluster, 65_536 * 32 / cb + 1)?;
        let cb = cb as usize;
        let mut bytes = vec![0u8; chain.len() * cb];
        for (i, c) in chain.iter().enumerate() {
            self.read_cluster(*c, &mut bytes[i * cb..(i + 1) * cb])?;
        }
        Ok(bytes)
    }

    /// Finds an entry by path (case-insensitive, as FAT is).
    pub fn find(&self, path: &str) -> Result<Option<FatEntry>, BadFat> {
        let want = path.to_lowercase();
        Ok(self
            .list()?
            .into_iter()
            .find(|e| e.path.to_lowercase() == want))
    }

    /// Streams a file's content to `sink` in cluster-sized pieces.
    pub fn read_file(&self, e: &FatEntry, sink: &mut dyn FnMut(&[u8])) -> Result<(), BadFat> {
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
    ) -> Result<(), BadFat> {
        if e.is_dir {
            return Err(format!("{} is a directory", e.path).into());
        }
        if e.size == 0 {
            return Ok(());
        }
        let cb = self.cluster_bytes();
        let n = e.size.div_ceil(cb);
        let chain = self.chain(e.first_cluster, n)?;
        if (chain.len() as u64) < n {
            return Err(format!("{}: cluster chain shorter than the file's size", e.path).into());
        }
        let per = ((1u64 << 20) / cb).max(1) as usize;
        let mut buf = vec![0u8; per * cb as usize];
        let mut left = e.size;
        let mut i = 0;
        while i < chain.len() && left > 0 {
            // A run of consecutive clusters, at most `per` long.
            let mut k = 1;
            while i + k < chain.len() && k < per && chain[i + k] == chain[i] + k as u32 {
                k += 1;
            }
            let bytes = (k as u64 * cb).min(left) as usize;
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
    use crate::format::FsWriter;
    use crate::format::fat::{Fat32, testing};
    use crate::plan::tree::Tree;
    use crate::sink::MemSink;

    fn volume() -> (Vec<u8>, Tree) {
        let t = testing::text_tree(&[
            ("/config.txt", "hello".to_string()),
            ("/overlays/a-long-name.dtbo", "x".repeat(3000)),
            ("/Image", String::new()),
            ("/Ünïcødé notes.txt", "u".into()),
        ]);
        let spec = testing::spec(&t, Some("BOOT"), 9, Default::default());
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
