//! FAT12 and FAT16 writer, beside the FAT32 one and sharing its names, directory encoding and
//! timestamps. The geometry is the one `mkfs.fat` (dosfstools 4.2) gives an image file of the
//! same size: sectors rounded down to whole tracks, one reserved sector and a 512-entry root
//! directory (both grown to whole clusters past 4 MiB), clusters from 4 sectors doubled until
//! FAT12 or FAT16 can address them, FAT16 when it holds more clusters than FAT12; floppy sizes
//! take their floppy parameters. The root directory lives in its fixed region after the FATs;
//! other directories and files are contiguous cluster runs, directories first. Only metadata
//! and file data are written.

use super::read::BadFat;
use super::{Fat32, Layout, Names, bad, label_bytes, put16, put32, write_volume};
use crate::error::Result;
use crate::format::{FatOptions, FsSpec, FsWriter, Measure, Placed};
use crate::sink::Sink;

/// Where `mkfs.fat` switches to FAT32 when no type is asked for.
pub const FAT32_FROM: u64 = 512 << 20;

/// A FAT12/16 volume's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallGeometry {
    pub bits: u8,
    pub sector: u64,
    /// Sectors the volume spans.
    pub sectors: u64,
    pub sectors_per_cluster: u64,
    pub reserved: u64,
    pub root_entries: u64,
    pub fat_sectors: u64,
    pub clusters: u64,
    pub media: u8,
    pub heads: u16,
    pub sectors_per_track: u16,
}

impl SmallGeometry {
    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * self.sector
    }

    fn root_start(&self) -> u64 {
        (self.reserved + 2 * self.fat_sectors) * self.sector
    }

    fn data_start(&self) -> u64 {
        self.root_start() + (self.root_entries * 32).div_ceil(self.sector) * self.sector
    }

    fn layout(&self) -> Layout {
        Layout {
            cluster_bytes: self.cluster_bytes(),
            clusters: self.clusters,
            fat_start: self.reserved * self.sector,
            fat_bytes: self.fat_sectors * self.sector,
            fixed_root: Some((self.root_start(), self.data_start() - self.root_start())),
            data_start: self.data_start(),
            sector: self.sector,
        }
    }

    /// The FAT12 or FAT16 geometry `mkfs.fat` makes on an image file of `bytes` with these
    /// options (`bits` 12, 16 or none for its own choice), or why it would refuse.
    pub fn choose(bytes: u64, o: &FatOptions) -> std::result::Result<SmallGeometry, BadFat> {
        let f = Frame::new(bytes, o)?;
        let Some((bits, cluster, clusters, fat)) = f.search() else {
            return Err(match o.cluster_sectors {
                Some(_) => "too few or too many clusters for this cluster size".into(),
                None => "too small or too large for FAT12/16".into(),
            });
        };
        let g = SmallGeometry {
            bits,
            sector: f.ss,
            sectors: f.sectors,
            sectors_per_cluster: cluster,
            reserved: f.up(1, cluster),
            root_entries: if f.align {
                f.up(f.root_sectors(), cluster) * (f.ss / 32)
            } else {
                f.root_entries
            },
            fat_sectors: fat,
            clusters,
            media: f.media,
            heads: f.heads,
            sectors_per_track: f.spt as u16,
        };
        // mkfs.fat wants 32 KiB of data area past the metadata.
        if bytes / 1024 < g.data_start().div_ceil(1024) + 32 {
            return Err("too small for a FAT filesystem".into());
        }
        Ok(g)
    }

    /// The geometry for a spec (its options) at `bytes`, as a one-line error.
    fn for_spec(spec: &FsSpec<'_>, bytes: u64) -> Result<SmallGeometry> {
        SmallGeometry::choose(bytes, &spec.fat)
            .map_err(|m| bad(spec, "/", &format!("{bytes} bytes: {m}")))
    }
}

/// What the size and options fix before the cluster size is searched: `mkfs.fat`'s
/// choices, in its order.
struct Frame {
    /// Sector size.
    ss: u64,
    /// 12, 16, or 0 for whichever holds more clusters.
    bits: u8,
    /// Sectors, rounded down to whole tracks.
    sectors: u64,
    /// Past 4 MiB the reserved area, root directory and FATs grow to whole clusters.
    align: bool,
    root_entries: u64,
    media: u8,
    heads: u16,
    spt: u64,
    /// Sectors per cluster to start from, and the largest to try.
    cluster: u64,
    max_cluster: u64,
}

impl Frame {
    fn new(bytes: u64, o: &FatOptions) -> std::result::Result<Frame, BadFat> {
        let ss = u64::from(o.sector_size.unwrap_or(512));
        if !ss.is_power_of_two() || !(512..=32768).contains(&ss) {
            return Err(format!("{ss} is not a FAT sector size (512 … 32768)").into());
        }
        if let Some(s) = o.cluster_sectors
            && (s == 0 || !s.is_power_of_two())
        {
            return Err(format!("{s} sectors per cluster is not a power of two").into());
        }
        let bits = match o.bits {
            Some(12) => 12,
            Some(16) => 16,
            None if bytes >= FAT32_FROM => return Err("is FAT32 at this size".into()),
            None => 0,
            Some(b) => return Err(format!("FAT{b} is not FAT12 or FAT16").into()),
        };
        let (mut heads, mut spt) = tracks(bytes / ss);
        let (mut media, mut cluster, mut root_entries) = (0xF8u8, 4u64, 512u64);
        if let Some((s, m, c, r)) = floppy(bytes) {
            (spt, heads, media, cluster, root_entries) = (s, 2, m, c, r);
        }
        let sectors = (bytes / ss) / spt * spt;
        let max_cluster = match o.cluster_sectors {
            Some(s) => {
                cluster = u64::from(s);
                u64::from(s)
            }
            None => 128,
        };
        Ok(Frame {
            ss,
            bits,
            sectors,
            align: sectors > 8192,
            root_entries,
            media,
            heads,
            spt,
            cluster,
            max_cluster,
        })
    }

    fn up(&self, v: u64, c: u64) -> u64 {
        if self.align { v.div_ceil(c) * c } else { v }
    }

    fn root_sectors(&self) -> u64 {
        (self.root_entries * 32).div_ceil(self.ss)
    }

    /// The first cluster size, from the start one doubling, at which FAT12 or FAT16 fits:
    /// (bits, sectors per cluster, clusters, FAT sectors).
    fn search(&self) -> Option<(u8, u64, u64, u64)> {
        let mut cluster = self.cluster;
        while cluster <= self.max_cluster {
            let data = self
                .sectors
                .checked_sub(self.up(1, cluster))?
                .checked_sub(self.up(self.root_sectors(), cluster))?;
            if let Some((b, clusters, fat)) = self.fit(data, cluster) {
                return Some((b, cluster, clusters, fat));
            }
            cluster <<= 1;
        }
        None
    }

    /// FAT12's and FAT16's cluster counts for `data` sectors in clusters of `cluster`
    /// sectors, and the one chosen when either is allowed: (bits, clusters, FAT sectors).
    fn fit(&self, data: u64, cluster: u64) -> Option<(u8, u64, u64)> {
        let ss = self.ss;
        // FAT12: 1.5 bytes an entry.
        let mut c12 = 2 * (data * ss + 6) / (2 * cluster * ss + 6);
        let f12 = self.up((((c12 + 2) * 3 + 1) >> 1).div_ceil(ss), cluster);
        c12 = data.saturating_sub(2 * f12) / cluster;
        if c12 > ((f12 * 2 * ss) / 3).min(4084) {
            c12 = 0;
        }
        let mut c16 = (data * ss + 8) / (cluster * ss + 4);
        let f16 = self.up(((c16 + 2) * 2).div_ceil(ss), cluster);
        c16 = data.saturating_sub(2 * f16) / cluster;
        if c16 > ((f16 * ss) / 2).min(65_524) || c16 < 4087 {
            c16 = 0;
        }
        let ok12 = c12 > 0 && self.bits != 16;
        let ok16 = c16 > 0 && self.bits != 12;
        if !(ok12 || ok16) {
            return None;
        }
        let b = match self.bits {
            0 if c16 > c12 => 16,
            0 => 12,
            b => b,
        };
        Some(if b == 16 {
            (16, c16, f16)
        } else {
            (b, c12, f12)
        })
    }
}

/// `mkfs.fat`'s heads and sectors per track for `total` sectors.
fn tracks(total: u64) -> (u16, u64) {
    if total <= 524_288 {
        let h = match total {
            0..=32_768 => 2,
            32_769..=65_536 => 4,
            65_537..=262_144 => 8,
            _ => 16,
        };
        return (h, if total <= 4096 { 16 } else { 32 });
    }
    let h = match total {
        t if t <= 16 * 63 * 1024 => 16,
        t if t <= 32 * 63 * 1024 => 32,
        t if t <= 64 * 63 * 1024 => 64,
        t if t <= 128 * 63 * 1024 => 128,
        _ => 255,
    };
    (h, 63)
}

/// Image files whose size is a floppy's get that floppy's parameters: sectors per track,
/// media byte, sectors per cluster and root entries.
fn floppy(bytes: u64) -> Option<(u64, u8, u64, u64)> {
    match bytes / 1024 {
        360 => Some((9, 0xFD, 2, 112)),
        720 => Some((9, 0xF9, 2, 112)),
        1200 => Some((15, 0xF9, 1, 224)),
        1440 => Some((18, 0xF0, 1, 224)),
        2880 => Some((36, 0xF0, 2, 224)),
        _ => None,
    }
}

/// The FAT12/16 writer; with `bits` unset it picks FAT12, FAT16 or (from 512 MiB) FAT32 by
/// size, as `mkfs.fat` does.
pub struct FatSmall {
    pub bits: Option<u8>,
}

pub static FAT12: FatSmall = FatSmall { bits: Some(12) };
pub static FAT16: FatSmall = FatSmall { bits: Some(16) };
pub static FAT_AUTO: FatSmall = FatSmall { bits: None };

impl FatSmall {
    fn options(&self, spec: &FsSpec<'_>) -> FatOptions {
        FatOptions {
            bits: self.bits.or(spec.fat.bits),
            ..spec.fat
        }
    }
}

/// The FAT type `kind` resolves to at `bytes`: 12, 16 or 32.
pub fn resolve_bits(bits: Option<u8>, o: &FatOptions, bytes: u64) -> u8 {
    match bits.or(o.bits) {
        Some(b) => b,
        None if bytes >= FAT32_FROM => 32,
        None => SmallGeometry::choose(bytes, o).map_or(16, |g| g.bits),
    }
}

struct SmallMeasure {
    opts: FatOptions,
    /// Clusters needed per cluster size (512 B … 64 KiB of 512-byte sectors, by index).
    needed: Vec<u64>,
    root_slots: u64,
    fat32: Option<Box<dyn Measure>>,
}

impl Measure for SmallMeasure {
    fn min_size(&self) -> u64 {
        let step = 64 << 10;
        let mut size = step;
        while size < FAT32_FROM || self.opts.bits.is_some() && size < 4 << 30 {
            if self.fits(size) {
                return size;
            }
            size += step;
        }
        self.fat32.as_ref().map_or(u64::MAX, |m| m.min_size())
    }

    fn fits(&self, size: u64) -> bool {
        if self.opts.bits.is_none() && size >= FAT32_FROM {
            return self.fat32.as_ref().is_some_and(|m| m.fits(size));
        }
        SmallGeometry::choose(size, &self.opts).is_ok_and(|g| {
            let i = (g.cluster_bytes() / 512).trailing_zeros() as usize;
            self.needed.get(i).is_some_and(|&n| n <= g.clusters)
                && self.root_slots <= g.root_entries
        })
    }
}

/// Slots the root directory takes (the label entry and every child's entries).
fn root_slots(names: &Names<'_>) -> u64 {
    names.dir_bytes(&names.dirs[0]) / 32
}

/// Clusters the content needs with clusters of `cb` bytes, the root not counted.
fn clusters_needed(names: &Names<'_>, cb: u64) -> u64 {
    names.clusters_needed(cb) - names.dir_bytes(&names.dirs[0]).div_ceil(cb).max(1)
}

impl FsWriter for FatSmall {
    fn measure(&self, spec: &FsSpec<'_>) -> Result<Box<dyn Measure>> {
        label_bytes(spec)?;
        let names = Names::new(spec)?;
        let opts = self.options(spec);
        let needed = (0..8).map(|i| clusters_needed(&names, 512 << i)).collect();
        let fat32 = match opts.bits {
            None => Some(Fat32.measure(spec)?),
            Some(_) => None,
        };
        Ok(Box::new(SmallMeasure {
            opts,
            needed,
            root_slots: root_slots(&names),
            fat32,
        }))
    }

    fn write(&self, spec: &FsSpec<'_>, size: u64, sink: &mut dyn Sink) -> Result<Placed> {
        let opts = self.options(spec);
        if opts.bits.is_none() && size >= FAT32_FROM {
            return Fat32.write(spec, size, sink);
        }
        let spec = &FsSpec { fat: opts, ..*spec };
        let g = SmallGeometry::for_spec(spec, size)?;
        let mut names = Names::new(spec)?;
        let slots = root_slots(&names);
        if slots > g.root_entries {
            return Err(bad(
                spec,
                "/",
                &format!(
                    "the root directory needs {slots} entries, FAT{} has room for {}",
                    g.bits, g.root_entries
                ),
            ));
        }
        // The root lives in its fixed region: clusters from 2 go to everything else.
        let l = g.layout();
        let next = names.place(spec, &l)?;
        let mut boot = vec![0u8; (g.reserved * g.sector) as usize];
        boot_sector(
            spec,
            &g,
            &label_bytes(spec)?,
            &mut boot[..g.sector as usize],
        );
        let fat = fat_table(&names, next, &g);
        write_volume(spec, &names, &l, &boot, &fat, sink)
    }
}

fn boot_sector(spec: &FsSpec<'_>, g: &SmallGeometry, label: &[u8; 11], b: &mut [u8]) {
    b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    put16(b, 11, g.sector as u16);
    b[13] = g.sectors_per_cluster as u8;
    put16(b, 14, g.reserved as u16);
    b[16] = 2;
    put16(b, 17, g.root_entries as u16);
    if g.sectors < 65_536 {
        put16(b, 19, g.sectors as u16);
    } else {
        put32(b, 32, g.sectors as u32);
    }
    b[21] = g.media;
    put16(b, 22, g.fat_sectors as u16);
    put16(b, 24, g.sectors_per_track);
    put16(b, 26, g.heads);
    put32(b, 28, (spec.offset / 512).min(u64::from(u32::MAX)) as u32);
    b[36] = if g.media == 0xF8 { 0x80 } else { 0 };
    b[38] = 0x29;
    b[39..43].copy_from_slice(&volume_id(spec));
    b[43..54].copy_from_slice(label);
    b[54..62].copy_from_slice(if g.bits == 12 {
        b"FAT12   "
    } else {
        b"FAT16   "
    });
    // Not bootable on a PC: halt in a loop.
    b[62..65].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
}

/// The volume id: the spec's, or the first four bytes of its uuid.
pub(crate) fn volume_id(spec: &FsSpec<'_>) -> [u8; 4] {
    spec.fat.volume_id.map_or_else(
        || [spec.uuid[0], spec.uuid[1], spec.uuid[2], spec.uuid[3]],
        u32::to_le_bytes,
    )
}

/// The used part of one FAT (12- or 16-bit entries): entries 0 and 1, then every chain.
fn fat_table(names: &Names<'_>, next: u32, g: &SmallGeometry) -> Vec<u8> {
    let eoc: u32 = if g.bits == 12 { 0xFFF } else { 0xFFFF };
    let fat = names.chains(next, (eoc & !0xFF) | u32::from(g.media), eoc);
    if g.bits == 16 {
        return fat.iter().flat_map(|v| (*v as u16).to_le_bytes()).collect();
    }
    let mut out = vec![0u8; (fat.len() * 3).div_ceil(2)];
    for (i, &v) in fat.iter().enumerate() {
        let at = i * 3 / 2;
        if i % 2 == 0 {
            out[at] = v as u8;
            out[at + 1] |= (v >> 8) as u8 & 0x0F;
        } else {
            out[at] |= ((v & 0x0F) << 4) as u8;
            out[at + 1] = (v >> 4) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fat::testing;
    use crate::plan::tree::Node;

    const MIB: u64 = 1 << 20;

    /// The BPB fields of a boot sector: sector size, sectors per cluster, reserved sectors,
    /// FAT count, root entries, total sectors, media, FAT sectors, sectors per track, heads,
    /// FAT type string.
    fn bpb(b: &[u8]) -> (u64, u64, u64, u8, u64, u64, u8, u64, u16, u16, String) {
        let le16 = |i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
        let total = match le16(19) {
            0 => u64::from(u32::from_le_bytes([b[32], b[33], b[34], b[35]])),
            n => n,
        };
        (
            le16(11),
            u64::from(b[13]),
            le16(14),
            b[16],
            le16(17),
            total,
            b[21],
            le16(22),
            le16(24) as u16,
            le16(26) as u16,
            String::from_utf8_lossy(&b[54..62]).into_owned(),
        )
    }

    /// What `mkfs.fat` writes on an image file of `bytes` with `args`.
    fn mkfs(bytes: u64, args: &[&str]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.img");
        std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
        let out = std::process::Command::new("mkfs.fat")
            .args(args)
            .arg(&img)
            .output()
            .expect("mkfs.fat is needed: apt-get install dosfstools");
        if !out.status.success() {
            return None;
        }
        let mut b = std::fs::read(&img).unwrap();
        b.truncate(512);
        Some(b)
    }

    fn ours(bytes: u64, o: FatOptions) -> Option<Vec<u8>> {
        let g = SmallGeometry::choose(bytes, &o).ok()?;
        let t = crate::plan::tree::Tree::new();
        let spec = testing::spec(&t, None, 1, o);
        let mut b = vec![0u8; g.sector as usize];
        boot_sector(&spec, &g, b"NO NAME    ", &mut b);
        Some(b)
    }

    fn same(bytes: u64, args: &[&str], o: FatOptions) {
        let theirs = mkfs(bytes, args);
        let mine = ours(bytes, o);
        match (theirs, mine) {
            (Some(t), Some(m)) => assert_eq!(bpb(&m), bpb(&t), "{bytes} bytes, {args:?}"),
            (None, None) => {}
            (t, m) => panic!(
                "{bytes} bytes, {args:?}: mkfs.fat {}, ours {}",
                if t.is_some() { "made it" } else { "refused" },
                if m.is_some() { "made it" } else { "refused" }
            ),
        }
    }

    #[test]
    fn geometry_matches_mkfs_fat_by_size() {
        for kib in [
            360, 720, 1200, 1440, 2880, 1024, 2048, 3000, 4096, 4100, 8192, 10_000, 16_384, 20_480,
            32_768, 32_769, 65_536, 131_072, 200_000, 266_240, 300_000, 400_000, 524_287,
        ] {
            same(kib * 1024, &[], FatOptions::default());
        }
        for mib in [1, 4, 8, 16, 32, 64, 128, 260] {
            same(mib * MIB + 512, &[], FatOptions::default());
        }
    }

    #[test]
    fn geometry_matches_mkfs_fat_with_options() {
        let o = |bits, s, ss| FatOptions {
            bits,
            cluster_sectors: s,
            sector_size: ss,
            volume_id: None,
        };
        for mib in [1, 4, 8, 16, 32, 64, 128, 260, 500] {
            let b = mib * MIB;
            same(b, &["-F", "12"], o(Some(12), None, None));
            same(b, &["-F", "16"], o(Some(16), None, None));
            same(b, &["-s", "1"], o(None, Some(1), None));
            same(b, &["-s", "16"], o(None, Some(16), None));
            same(b, &["-F", "16", "-s", "2"], o(Some(16), Some(2), None));
            same(b, &["-S", "4096"], o(None, None, Some(4096)));
            same(b, &["-S", "1024", "-s", "2"], o(None, Some(2), Some(1024)));
        }
    }

    fn tree() -> crate::plan::tree::Tree {
        testing::text_tree(&[
            ("/zImage", "z".repeat(70_000)),
            ("/extlinux/extlinux.conf", "label linux\n".to_string()),
            ("/overlays/a-long-overlay-name.dtbo", "o".repeat(3000)),
            ("/uEnv.txt", String::new()),
        ])
    }

    /// Writes `tree` with `writer` at its smallest size (or `size`) and reads every file
    /// back with the FAT reader.
    fn round_trip(writer: &FatSmall, size: Option<u64>, want: &str) {
        let t = tree();
        let spec = testing::spec(&t, Some("BOOT"), 5, FatOptions::default());
        let m = writer.measure(&spec).unwrap();
        let size = size.unwrap_or_else(|| m.min_size());
        assert!(m.fits(size), "{size}");
        let mut sink = crate::sink::MemSink::new(size as usize);
        let recs = writer.write(&spec, size, &mut sink).unwrap();
        assert_eq!(recs.files.len(), 4);
        let vol = crate::format::fat::read::FatVolume::open(&sink.buf, 0, size).unwrap();
        assert_eq!(vol.fat_type, want);
        assert_eq!(vol.label, "BOOT");
        let list = vol.list().unwrap();
        for e in t.iter() {
            let Node::File { source, .. } = &e.node else {
                continue;
            };
            let crate::plan::tree::Source::Text(text) = source else {
                unreachable!()
            };
            let found = list.iter().find(|f| f.path == e.path).expect(&e.path);
            let mut got = Vec::new();
            vol.read_file(found, &mut |b| got.extend_from_slice(b))
                .unwrap();
            assert_eq!(got, text.as_bytes(), "{}", e.path);
            // The reported extents hold the file's bytes.
            let rec = recs.files.iter().find(|r| r.path == e.path).unwrap();
            let placed: Vec<u8> = rec
                .extents
                .iter()
                .flat_map(|x| sink.buf[x.start as usize..x.end() as usize].to_vec())
                .collect();
            assert_eq!(placed, text.as_bytes(), "{}", e.path);
        }
        // The fixed root directory is where the boot sector says.
        let root = recs
            .structures
            .iter()
            .find(|s| s.name == "FAT directory /")
            .unwrap();
        let b = &sink.buf;
        let sector = u64::from(u16::from_le_bytes([b[11], b[12]]));
        let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
        let fat = u64::from(u16::from_le_bytes([b[22], b[23]]));
        assert_eq!(root.extents[0].start, (reserved + 2 * fat) * sector);
    }

    #[test]
    fn the_reader_reads_what_the_writer_wrote() {
        round_trip(&FAT12, None, "FAT12");
        round_trip(&FAT16, None, "FAT16");
        round_trip(&FAT_AUTO, Some(2 * MIB), "FAT12");
        round_trip(&FAT_AUTO, Some(16 * MIB), "FAT16");
        round_trip(&FAT_AUTO, Some(200 * MIB), "FAT16");
    }

    #[test]
    fn a_full_root_directory_is_refused() {
        let files: Vec<(String, &str)> = (0..300)
            .map(|i| (format!("/a-long-file-name-{i}.txt"), ""))
            .collect();
        let t = testing::text_tree(&files);
        let spec = testing::spec(&t, None, 5, FatOptions::default());
        let m = FAT16.measure(&spec).unwrap();
        assert!(!m.fits(16 * MIB));
        let mut sink = crate::sink::MemSink::new((16 * MIB) as usize);
        let err = FAT16.write(&spec, 16 * MIB, &mut sink).unwrap_err();
        assert!(err.to_string().contains("root directory needs"), "{err}");
    }

    #[test]
    fn damaged_fat12_and_fat16_volumes_are_errors_not_panics() {
        for (writer, size) in [(&FAT12, 2 * MIB), (&FAT16, 16 * MIB)] {
            let t = tree();
            let spec = testing::spec(&t, None, 3, FatOptions::default());
            let mut sink = crate::sink::MemSink::new(size as usize);
            writer.write(&spec, size, &mut sink).unwrap();
            let clean = sink.buf;
            let g = SmallGeometry::choose(size, &writer.options(&spec)).unwrap();
            let meta = g.data_start() as usize + 4 * g.cluster_bytes() as usize;
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for _ in 0..1500 {
                let mut img = clean.clone();
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x % meta as u64) as usize;
                    img[at] = (x >> 32) as u8;
                }
                let Ok(vol) = crate::format::fat::read::FatVolume::open(&img, 0, size) else {
                    continue;
                };
                if let Ok(list) = vol.list() {
                    for e in list.iter().filter(|e| !e.is_dir) {
                        let _ = vol.read_file(e, &mut |_| {});
                    }
                }
            }
        }
    }
}
