//! GPT writer: protective MBR at LBA 0, primary header at LBA 1, a 128-entry array (at LBA 2
//! unless the layout moves it), and the backup array and header at the disk's end.

use super::{Guid, SECTOR, TableEntry};

pub const ENTRIES: u64 = 128;
pub const ENTRY_SIZE: u64 = 128;
/// Sectors one entry array takes.
pub const ARRAY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// Bytes a GPT keeps at the end of the disk: the backup array and header.
pub const TAIL: u64 = (ARRAY_SECTORS + 1) * SECTOR;

/// The first byte a partition may use with the array at `array_lba`.
pub fn first_usable(array_lba: u64) -> u64 {
    (array_lba + ARRAY_SECTORS) * SECTOR
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

fn entry_array(parts: &[TableEntry]) -> Vec<u8> {
    let mut a = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut a[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.gpt_type.unwrap_or(Guid([0; 16])).to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&(p.start / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&((p.start + p.size) / SECTOR - 1).to_le_bytes());
        let attrs: u64 = if p.bootable { 1 << 2 } else { 0 };
        e[48..56].copy_from_slice(&attrs.to_le_bytes());
        for (j, u) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    a
}

#[allow(clippy::too_many_arguments)]
fn header(
    my: u64,
    alt: u64,
    first: u64,
    last: u64,
    disk: Guid,
    array: u64,
    array_crc: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alt.to_le_bytes());
    h[40..48].copy_from_slice(&first.to_le_bytes());
    h[48..56].copy_from_slice(&last.to_le_bytes());
    h[56..72].copy_from_slice(&disk.to_disk());
    h[72..80].copy_from_slice(&array.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let c = crc(&h[..92]);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    h
}

/// The protective MBR: one 0xEE partition covering the disk (capped at 2 TiB); its ending
/// CHS is the last sector's where CHS reaches it, else 0xFFFFFF (as UEFI specifies).
pub fn protective_mbr(boot_code: &[u8; 440], disk_sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..440].copy_from_slice(boot_code);
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    let end = match super::mbr::chs(disk_sectors.saturating_sub(1)) {
        [0xFE, 0xFF, 0xFF] => [0xFF, 0xFF, 0xFF],
        c => c,
    };
    e[5..8].copy_from_slice(&end);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let n = (disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&n.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// How a GPT departs from the usual shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// The header's first usable LBA (default: right after the entry array).
    pub first_lba: Option<u64>,
    /// Write no backup array and header (the primary header then names itself as backup).
    pub no_backup: bool,
}

/// The whole GPT for a disk of `disk_bytes`, as (offset, bytes) pieces in disk order.
pub fn pieces(
    disk_bytes: u64,
    boot_code: &[u8; 440],
    disk: Guid,
    array_lba: u64,
    parts: &[TableEntry],
) -> Vec<(u64, Vec<u8>)> {
    pieces_shaped(
        disk_bytes,
        boot_code,
        disk,
        array_lba,
        parts,
        Shape::default(),
    )
}

/// `pieces` with a first usable LBA of its own and optionally no backup.
pub fn pieces_shaped(
    disk_bytes: u64,
    boot_code: &[u8; 440],
    disk: Guid,
    array_lba: u64,
    parts: &[TableEntry],
    shape: Shape,
) -> Vec<(u64, Vec<u8>)> {
    let sectors = disk_bytes / SECTOR;
    let last = sectors - 1;
    let backup_array = last - ARRAY_SECTORS;
    let first = shape.first_lba.unwrap_or(first_usable(array_lba) / SECTOR);
    let last_usable = backup_array - 1;
    let array = entry_array(parts);
    let ac = crc(&array);
    let alt = if shape.no_backup { 1 } else { last };
    let primary = header(1, alt, first, last_usable, disk, array_lba, ac);
    let backup = header(last, 1, first, last_usable, disk, backup_array, ac);
    let mut head = protective_mbr(boot_code, sectors).to_vec();
    head.extend_from_slice(&primary);
    let mut out = vec![(0, head), (array_lba * SECTOR, array.clone())];
    if !shape.no_backup {
        out.push((backup_array * SECTOR, array));
        out.push((last * SECTOR, backup.to_vec()));
    }
    out
}
