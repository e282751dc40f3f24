//! MBR (DOS) partition table writer: disk signature and four primary entries with LBA and
//! CHS fields (CHS saturates past the 8 GiB the old geometry can address).

use super::{SECTOR, TableEntry};

/// CHS for an LBA with 255 heads and 63 sectors per track, saturated past 1023 cylinders.
pub(super) fn chs(lba: u64) -> [u8; 3] {
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

fn put_entry(e: &mut [u8], boot: bool, ty: u8, start: u64, count: u64) {
    e[0] = if boot { 0x80 } else { 0 };
    e[1..4].copy_from_slice(&chs(start));
    e[4] = ty;
    e[5..8].copy_from_slice(&chs((start + count).saturating_sub(1)));
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(count as u32).to_le_bytes());
}

/// The extended partition's type byte (LBA addressed).
const EXTENDED: u8 = 0x0F;

/// The boot sector and extended boot records of an MBR whose entries with an `ebrs` offset
/// are logical partitions: the primary ones fill the first slots, then one extended
/// partition runs from the first EBR to `disk_bytes`; each EBR names its partition and links
/// to the next. The extended entry carries the first logical partition's boot flag, as
/// genimage writes it.
pub fn pieces(
    boot_code: &[u8; 440],
    disk_id: u32,
    parts: &[TableEntry],
    ebrs: &[Option<u64>],
    disk_bytes: u64,
) -> Vec<(u64, Vec<u8>)> {
    let primary: Vec<TableEntry> = parts
        .iter()
        .zip(ebrs)
        .filter(|(_, e)| e.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    let logical: Vec<(&TableEntry, u64)> = parts
        .iter()
        .zip(ebrs)
        .filter_map(|(p, e)| Some((p, (*e)?)))
        .collect();
    let mut head = sector(boot_code, disk_id, &primary);
    let Some(&(first, base)) = logical.first() else {
        return vec![(0, head.to_vec())];
    };
    if primary.len() < 4 {
        let slot = 446 + 16 * primary.len();
        let count = disk_bytes.saturating_sub(base) / SECTOR;
        put_entry(
            &mut head[slot..slot + 16],
            first.bootable,
            EXTENDED,
            base / SECTOR,
            count,
        );
    }
    let mut out = vec![(0, head.to_vec())];
    for (k, (p, ebr)) in logical.iter().enumerate() {
        let mut s = [0u8; 512];
        let own = (p.start - ebr) / SECTOR;
        put_entry(
            &mut s[446..462],
            false,
            p.mbr_type.unwrap_or(0x83),
            own,
            p.size / SECTOR,
        );
        if let Some((next, next_ebr)) = logical.get(k + 1) {
            let rel = (next_ebr - base) / SECTOR;
            let count = (next.start + next.size - next_ebr) / SECTOR;
            put_entry(&mut s[462..478], false, EXTENDED, rel, count);
        }
        s[510] = 0x55;
        s[511] = 0xAA;
        out.push((*ebr, s.to_vec()));
    }
    out
}

/// A hybrid MBR: `parts` (at most three, each with its MBR type) and then a 0xEE entry from
/// LBA 1 to the end of the GPT entry array at `array_lba`.
pub fn hybrid(
    boot_code: &[u8; 440],
    disk_id: u32,
    parts: &[TableEntry],
    array_lba: u64,
) -> [u8; 512] {
    let listed: Vec<TableEntry> = parts.iter().take(3).cloned().collect();
    let mut m = sector(boot_code, disk_id, &listed);
    let slot = 446 + 16 * listed.len();
    let count = array_lba + super::gpt::ARRAY_SECTORS - 1;
    put_entry(&mut m[slot..slot + 16], false, 0xEE, 1, count);
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

    fn entry(start: u64, size: u64, ty: u8) -> TableEntry {
        TableEntry {
            number: 0,
            start,
            size,
            gpt_type: None,
            mbr_type: Some(ty),
            guid: crate::format::table::Guid([0; 16]),
            name: String::new(),
            bootable: false,
        }
    }

    #[test]
    fn logical_partitions_chain_through_ebrs() {
        let parts = [
            entry(1 << 20, 1 << 20, 0x0c),
            entry(3 << 20, 1 << 20, 0x83),
            entry(5 << 20, 1 << 20, 0x83),
        ];
        let ebrs = [None, Some((3 << 20) - 512), Some((5 << 20) - 512)];
        let p = pieces(&[0; 440], 7, &parts, &ebrs, 8 << 20);
        assert_eq!(p.len(), 3);
        let head = &p[0].1;
        assert_eq!(head[446 + 16 + 4], 0x0F);
        let ext_start = u32::from_le_bytes(head[446 + 16 + 8..446 + 16 + 12].try_into().unwrap());
        assert_eq!(u64::from(ext_start) * 512, (3 << 20) - 512);
        let ebr1 = &p[1].1;
        assert_eq!(p[1].0, (3 << 20) - 512);
        assert_eq!(u32::from_le_bytes(ebr1[454..458].try_into().unwrap()), 1);
        assert_eq!(ebr1[462 + 4], 0x0F);
        let next = u32::from_le_bytes(ebr1[470..474].try_into().unwrap());
        assert_eq!(u64::from(next) * 512, 2 << 20);
        assert_eq!(&ebr1[510..], &[0x55, 0xAA]);
        assert_eq!(p[2].1[462 + 4], 0);
    }

    #[test]
    fn hybrid_ends_with_the_protective_entry() {
        let m = hybrid(&[0; 440], 1, &[entry(1 << 20, 1 << 20, 0x0c)], 2);
        assert_eq!(m[446 + 4], 0x0c);
        assert_eq!(m[462 + 4], 0xEE);
        assert_eq!(
            u32::from_le_bytes(m[462 + 8..462 + 12].try_into().unwrap()),
            1
        );
        assert_eq!(
            u32::from_le_bytes(m[462 + 12..462 + 16].try_into().unwrap()),
            33
        );
    }
}
