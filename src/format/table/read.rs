//! Reading partition tables back: MBR and GPT (header and entry-array CRCs checked), from
//! bytes that may be anything. Never panics on garbage; says what is wrong instead.
//!
//! `DiskTable` is what every reader of a disk's table starts from (upgrade, verify,
//! inspect, flashing an image onto a larger device); the pieces it is made of are public
//! for inspection's finer reports (backup GPT, extended partitions).

use std::fmt;

use super::{Guid, SECTOR, TableEntry};
use crate::io::ReadAt;

/// What is wrong with a table's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTable(pub String);

impl fmt::Display for BadTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for BadTable {
    fn from(s: &str) -> Self {
        BadTable(s.to_string())
    }
}

impl From<String> for BadTable {
    fn from(s: String) -> Self {
        BadTable(s)
    }
}

impl BadTable {
    pub fn contains(&self, s: &str) -> bool {
        self.0.contains(s)
    }
}

/// Which kind of table a disk holds, with what identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Gpt(GptHeader),
    Mbr { disk_id: u32 },
}

/// A disk's partition table as found: a GPT whose primary header and array check out, else
/// an MBR (which may be a GPT's protective MBR when the GPT is damaged: `gpt_problem` says
/// what was wrong with it).
#[derive(Debug, Clone)]
pub struct DiskTable {
    pub scheme: Scheme,
    /// The primary partitions (for an MBR, not the logical ones inside an extended one).
    pub entries: Vec<TableEntry>,
    pub gpt_problem: Option<BadTable>,
}

/// Why no table could be read.
#[derive(Debug)]
pub enum TableError {
    Io(std::io::Error),
    /// No GPT and no MBR signature; says what was wrong with the GPT.
    Missing(BadTable),
}

impl DiskTable {
    /// How many bytes from the disk's start hold every table this reads.
    pub const HEAD: u64 = 1 << 20;

    /// The table in a disk's first bytes (`HEAD`, or all of a smaller disk).
    pub fn parse(head: &[u8]) -> Result<DiskTable, BadTable> {
        let gpt_problem = match gpt_from_head(head) {
            Ok((h, entries)) => {
                return Ok(DiskTable {
                    scheme: Scheme::Gpt(h),
                    entries,
                    gpt_problem: None,
                });
            }
            Err(e) => e,
        };
        match head.get(..512).and_then(mbr) {
            Some((disk_id, entries)) => Ok(DiskTable {
                scheme: Scheme::Mbr { disk_id },
                entries,
                gpt_problem: Some(gpt_problem),
            }),
            None => Err(gpt_problem),
        }
    }

    /// Reads the first bytes of `dev` and parses its table.
    pub fn read(dev: &dyn ReadAt) -> Result<DiskTable, TableError> {
        let mut head = vec![0u8; Self::HEAD.min(dev.size()) as usize];
        dev.read_exact_at(&mut head, 0).map_err(TableError::Io)?;
        Self::parse(&head).map_err(TableError::Missing)
    }

    /// The GPT whose header is at `lba` of `dev` (the backup's, or one a primary header names):
    /// header, then the array it names.
    pub fn gpt_at(dev: &dyn ReadAt, lba: u64) -> Result<(GptHeader, Vec<TableEntry>), BadTable> {
        let size = dev.size();
        let hat = lba
            .checked_mul(SECTOR)
            .filter(|a| a.saturating_add(SECTOR) <= size)
            .ok_or("header outside the disk")?;
        let h = gpt_header(&dev.read_padded(hat, SECTOR as usize))?;
        let at = h
            .array_lba
            .checked_mul(SECTOR)
            .filter(|a| *a < size)
            .ok_or("array outside the disk")?;
        let array = dev.read_padded(at, h.array_bytes());
        let e = gpt_entries(&h, &array)?;
        Ok((h, e))
    }

    /// The backup GPT in the last sector of `dev`.
    pub fn backup_gpt(dev: &dyn ReadAt) -> Result<(GptHeader, Vec<TableEntry>), BadTable> {
        let size = dev.size();
        if size < 34 * SECTOR {
            return Err("disk too small".into());
        }
        Self::gpt_at(dev, (size - SECTOR) / SECTOR)
    }

    /// Whether an MBR found is a GPT's protective one (an entry of type 0xEE).
    pub fn is_protective(&self) -> bool {
        matches!(self.scheme, Scheme::Mbr { .. })
            && self.entries.iter().any(|e| e.mbr_type == Some(0xEE))
    }
}

/// A GPT header as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: Guid,
    pub array_lba: u64,
    pub entries: u32,
    pub entry_size: u32,
    pub array_crc: u32,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Parses and checks a GPT header sector.
pub fn gpt_header(sector: &[u8]) -> Result<GptHeader, BadTable> {
    if sector.len() < 92 {
        return Err("GPT header: truncated".into());
    }
    if &sector[0..8] != b"EFI PART" {
        return Err("no GPT signature".into());
    }
    let size = u32_at(sector, 12) as usize;
    if !(92..=sector.len()).contains(&size) {
        return Err(format!("GPT header: bad header size {size}").into());
    }
    let mut h = sector[..size].to_vec();
    let stored = u32_at(&h, 16);
    h[16..20].fill(0);
    if crc32fast::hash(&h) != stored {
        return Err("GPT header: CRC mismatch".into());
    }
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&sector[56..72]);
    let hdr = GptHeader {
        my_lba: u64_at(sector, 24),
        alternate_lba: u64_at(sector, 32),
        first_usable: u64_at(sector, 40),
        last_usable: u64_at(sector, 48),
        disk_guid: Guid::from_disk(guid),
        array_lba: u64_at(sector, 72),
        entries: u32_at(sector, 80),
        entry_size: u32_at(sector, 84),
        array_crc: u32_at(sector, 88),
    };
    if hdr.entry_size < 128 || hdr.entry_size > 4096 || hdr.entries > 16384 {
        return Err(format!(
            "GPT header: implausible entry array ({} entries of {} bytes)",
            hdr.entries, hdr.entry_size
        )
        .into());
    }
    Ok(hdr)
}

impl GptHeader {
    /// Bytes of the entry array.
    pub fn array_bytes(&self) -> usize {
        self.entries as usize * self.entry_size as usize
    }
}

/// Parses a GPT entry array (checked against the header's CRC); unused entries are skipped.
pub fn gpt_entries(h: &GptHeader, array: &[u8]) -> Result<Vec<TableEntry>, BadTable> {
    let need = h.array_bytes();
    if array.len() < need {
        return Err("GPT entry array: truncated".into());
    }
    if crc32fast::hash(&array[..need]) != h.array_crc {
        return Err("GPT entry array: CRC mismatch".into());
    }
    let mut out = Vec::new();
    for i in 0..h.entries as usize {
        let e = &array[i * h.entry_size as usize..][..128];
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let mut ty = [0u8; 16];
        ty.copy_from_slice(&e[0..16]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&e[16..32]);
        let first = u64_at(e, 32);
        let last = u64_at(e, 40);
        if last < first {
            return Err(format!("GPT entry {}: ends before it starts", i + 1).into());
        }
        // LBAs from a damaged disk can be anything: keep byte offsets representable.
        let (Some(start), Some(size)) = (
            first.checked_mul(SECTOR),
            (last - first)
                .checked_add(1)
                .and_then(|n| n.checked_mul(SECTOR)),
        ) else {
            return Err(format!("GPT entry {}: LBAs beyond any disk", i + 1).into());
        };
        if start.checked_add(size).is_none() {
            return Err(format!("GPT entry {}: LBAs beyond any disk", i + 1).into());
        }
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        out.push(TableEntry {
            number: i as u32 + 1,
            start,
            size,
            gpt_type: Some(Guid::from_disk(ty)),
            mbr_type: None,
            guid: Guid::from_disk(id),
            name: String::from_utf16_lossy(&units),
            bootable: u64_at(e, 48) & (1 << 2) != 0,
        });
    }
    Ok(out)
}

/// A GPT read from the first bytes of a disk: header at LBA 1, the array where it says.
pub fn gpt_from_head(head: &[u8]) -> Result<(GptHeader, Vec<TableEntry>), BadTable> {
    let h = gpt_header(head.get(512..1024).ok_or("GPT header: truncated")?)?;
    let start = h
        .array_lba
        .checked_mul(SECTOR)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or("GPT array: bad offset")?;
    let end = start
        .checked_add(h.array_bytes())
        .ok_or("GPT array: bad offset")?;
    let array = head
        .get(start..end)
        .ok_or("GPT entry array lies beyond the bytes read")?;
    let entries = gpt_entries(&h, array)?;
    Ok((h, entries))
}

/// MBR entries (type, bootable, start, size) and disk id; `None` without the 0x55AA mark.
pub fn mbr(sector: &[u8]) -> Option<(u32, Vec<TableEntry>)> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let id = u32_at(sector, 440);
    let mut out = Vec::new();
    for i in 0..4 {
        let e = &sector[446 + 16 * i..462 + 16 * i];
        if e[4] == 0 {
            continue;
        }
        out.push(TableEntry {
            number: i as u32 + 1,
            start: u64::from(u32_at(e, 8)) * SECTOR,
            size: u64::from(u32_at(e, 12)) * SECTOR,
            gpt_type: None,
            mbr_type: Some(e[4]),
            guid: Guid([0; 16]),
            name: String::new(),
            bootable: e[0] & 0x80 != 0,
        });
    }
    Some((id, out))
}

/// Whether an MBR partition type is an extended (container) partition.
pub fn is_extended(mbr_type: u8) -> bool {
    matches!(mbr_type, 0x05 | 0x0F | 0x85)
}

/// Logical partitions inside the extended partition `ext` (numbered from 5), read by
/// following its boot-record chain with `sector(byte offset)`. Every record and partition
/// must lie inside the extended partition and the disk; a chain that loops, or holds more
/// than 256 records, is an error. Returns the partitions found before any error too.
pub fn ebr_chain(
    ext: &TableEntry,
    disk: u64,
    sector: &dyn Fn(u64) -> Vec<u8>,
) -> (Vec<TableEntry>, Option<String>) {
    const MAX_RECORDS: usize = 256;
    let mut out = Vec::new();
    let ext_end = ext.start.saturating_add(ext.size).min(disk);
    let mut seen = std::collections::BTreeSet::new();
    let mut at = ext.start;
    loop {
        if out.len() >= MAX_RECORDS {
            return (
                out,
                Some(format!("more than {MAX_RECORDS} logical partitions")),
            );
        }
        if !seen.insert(at) {
            return (
                out,
                Some(format!(
                    "extended boot record chain loops back to byte {at}"
                )),
            );
        }
        if at.saturating_add(SECTOR) > ext_end {
            return (
                out,
                Some(format!(
                    "extended boot record at byte {at} lies outside the extended partition"
                )),
            );
        }
        let s = sector(at);
        if s.len() < 512 || s[510..512] != [0x55, 0xAA] {
            return (out, Some(format!("no boot record signature at byte {at}")));
        }
        let number = 5 + out.len() as u32;
        let e = &s[446..462];
        if e[4] != 0 {
            let start = at + u64::from(u32_at(e, 8)) * SECTOR;
            let size = u64::from(u32_at(e, 12)) * SECTOR;
            if start <= at || start.saturating_add(size) > ext_end {
                return (
                    out,
                    Some(format!(
                        "logical partition {number} lies outside the extended partition"
                    )),
                );
            }
            out.push(TableEntry {
                number,
                start,
                size,
                gpt_type: None,
                mbr_type: Some(e[4]),
                guid: Guid([0; 16]),
                name: String::new(),
                bootable: e[0] & 0x80 != 0,
            });
        }
        let link = &s[462..478];
        if link[4] == 0 || !is_extended(link[4]) {
            return (out, None);
        }
        at = ext.start + u64::from(u32_at(link, 8)) * SECTOR;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<TableEntry> {
        vec![TableEntry {
            number: 1,
            start: 1 << 20,
            size: 8 << 20,
            gpt_type: super::super::gpt_type("linux"),
            mbr_type: None,
            guid: Guid([7; 16]),
            name: "persist".into(),
            bootable: true,
        }]
    }

    #[test]
    fn gpt_round_trips_and_detects_damage() {
        let pieces = super::super::gpt::pieces(64 << 20, &[0; 440], Guid([1; 16]), 2, &entries());
        let mut head = vec![0u8; 34 * 512];
        head[..1024].copy_from_slice(&pieces[0].1);
        head[1024..1024 + 16384].copy_from_slice(&pieces[1].1);
        let (h, got) = gpt_from_head(&head).unwrap();
        assert_eq!(h.disk_guid, Guid([1; 16]));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "persist");
        assert_eq!(got[0].start, 1 << 20);
        assert!(got[0].bootable);
        let mut bad = head.clone();
        bad[1024 + 40] ^= 1;
        assert!(gpt_from_head(&bad).unwrap_err().contains("CRC"));
        let mut bad = head.clone();
        bad[600] ^= 1;
        assert!(gpt_from_head(&bad).is_err());
        assert!(gpt_from_head(&head[..700]).is_err());
        assert!(gpt_from_head(&[0xFF; 2000]).is_err());
    }

    #[test]
    fn ebr_chains_are_followed_and_bounded() {
        let e = |start: u64, size: u64, ty: u8| TableEntry {
            number: 0,
            start,
            size,
            gpt_type: None,
            mbr_type: Some(ty),
            guid: Guid([0; 16]),
            name: String::new(),
            bootable: false,
        };
        let parts = [
            e(1 << 20, 1 << 20, 0x0c),
            e(3 << 20, 1 << 20, 0x83),
            e(5 << 20, 1 << 20, 0x83),
        ];
        let ebrs = [None, Some((3 << 20) - 512), Some((5 << 20) - 512)];
        let mut disk = vec![0u8; 8 << 20];
        for (at, b) in super::super::mbr::pieces(&[0; 440], 7, &parts, &ebrs, 8 << 20) {
            disk[at as usize..at as usize + b.len()].copy_from_slice(&b);
        }
        let (_, primary) = mbr(&disk[..512]).unwrap();
        let ext = primary
            .iter()
            .find(|p| is_extended(p.mbr_type.unwrap()))
            .unwrap()
            .clone();
        let read = |d: &Vec<u8>, at: u64| d[at as usize..at as usize + 512].to_vec();
        let (got, err) = ebr_chain(&ext, 8 << 20, &|at| read(&disk, at));
        assert_eq!(err, None);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].number, got[0].start), (5, 3 << 20));
        assert_eq!((got[1].number, got[1].start), (6, 5 << 20));
        // A link back to the first record loops.
        let mut looped = disk.clone();
        let second = (5 << 20) - 512;
        looped[second + 462 + 4] = 0x05;
        looped[second + 462 + 8..second + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        let (got, err) = ebr_chain(&ext, 8 << 20, &|at| read(&looped, at));
        assert_eq!(got.len(), 2);
        assert!(err.unwrap().contains("loops"));
    }

    #[test]
    fn mbr_reads_entries() {
        let mut e = entries();
        e[0].mbr_type = Some(0x0c);
        let s = super::super::mbr::sector(&[0; 440], 0x1234, &e);
        let (id, got) = mbr(&s).unwrap();
        assert_eq!(id, 0x1234);
        assert_eq!(got[0].mbr_type, Some(0x0c));
        assert!(mbr(&[0; 512]).is_none());
    }
}
