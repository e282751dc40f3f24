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

/// The protective MBR: one 0xEE partition covering the disk (capped at 2 TiB).
pub fn protective_mbr(boot_code: &[u8; 440], disk_sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..440].copy_from_slice(boot_code);
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let n = (disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&n.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// The whole GPT for a disk of `disk_bytes`, as (offset, bytes) pieces in disk order.
pub fn pieces(
    disk_bytes: u64,
    boot_code: &[u8; 440],
    disk: Guid,
    array_lba: u64,
    parts: &[TableEntry],
) -> Vec<(u64, Vec<u8>)> {
    let sectors = disk_bytes / SECTOR;
    let last = sectors - 1;
    let backup_array = last - ARRAY_SECTORS;
    let first = first_usable(array_lba) / SECTOR;
    let last_usable = backup_array - 1;
    let array = entry_array(parts);
    let ac = crc(&array);
    let primary = header(1, last, first, last_usable, disk, array_lba, ac);
    let backup = header(last, 1, first, last_usable, disk, backup_array, ac);
    let mut head = protective_mbr(boot_code, sectors).to_vec();
    head.extend_from_slice(&primary);
    vec![
        (0, head),
        (array_lba * SECTOR, array.clone()),
        (backup_array * SECTOR, array),
        (last * SECTOR, backup.to_vec()),
    ]
}
