//! MBR (DOS) partition table writer: disk signature and four primary entries with LBA and
//! CHS fields (CHS saturates past the 8 GiB the old geometry can address).

use super::{SECTOR, TableEntry};

fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SPT: u64 = 63;
    let c = lba / (HEADS * SPT);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / SPT) % HEADS;
    let s = lba % SPT + 1;
    [h as u8, (s as u8) | (((c >> 8) as u8) << 6), c as u8]
}

/// The 512-byte boot sector holding `boot_code` (bytes 0..440) and the table.
pub fn sector(boot_code: &[u8; 440], disk_id: u32, parts: &[TableEntry]) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..440].copy_from_slice(boot_code);
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    for (i, p) in parts.iter().take(4).enumerate() {
        let e = &mut m[446 + 16 * i..462 + 16 * i];
        let start = p.start / SECTOR;
        let count = p.size / SECTOR;
        e[0] = if p.bootable { 0x80 } else { 0 };
        e[1..4].copy_from_slice(&chs(start));
        e[4] = p.mbr_type.unwrap_or(0x83);
        e[5..8].copy_from_slice(&chs(start + count - 1));
        e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    }
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_of_first_sectors() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(100_000_000), [0xFE, 0xFF, 0xFF]);
    }
}
