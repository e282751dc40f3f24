//! Partition tables: GPT (protective MBR, primary and backup headers and entry arrays) and
//! MBR, written from the plan's entries. The table is the last thing composed, so an
//! interrupted write never leaves a disk that looks complete.
//!
//! Not for deciding offsets (that is `layout`/`plan`).

pub mod gpt;
pub mod mbr;
pub mod read;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes per logical sector of images we write.
pub const SECTOR: u64 = 512;

/// A GUID in its canonical (string) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn parse(s: &str) -> Option<Guid> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 || s.chars().filter(|c| *c == '-').count() != 4 {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid(b))
    }

    /// A version-4-shaped GUID from 16 bytes of hash, so derived identifiers look like
    /// ordinary random ones to every tool.
    pub fn from_hash(h: [u8; 16]) -> Guid {
        let mut b = h;
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        Guid(b)
    }

    /// The on-disk GPT encoding: the first three fields little-endian.
    pub fn to_disk(self) -> [u8; 16] {
        let mut d = self.0;
        d[0..4].reverse();
        d[4..6].reverse();
        d[6..8].reverse();
        d
    }

    pub fn from_disk(mut d: [u8; 16]) -> Guid {
        d[0..4].reverse();
        d[4..6].reverse();
        d[6..8].reverse();
        Guid(d)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = crate::io::hex(&self.0).to_uppercase();
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Guid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Guid::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a GUID")))
    }
}

/// GPT partition type names accepted in layouts, with their GUIDs.
pub const GPT_TYPES: &[(&str, &str)] = &[
    ("msftdata", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
    ("linux", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    ("bios", "21686148-6449-6E6F-744E-656564454649"),
    ("swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    ("xbootldr", "BC13C2FF-59E6-4262-A352-B275FD6F7172"),
];

/// Resolves a type name or GUID string.
pub fn gpt_type(s: &str) -> Option<Guid> {
    GPT_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map_or(s, |(_, g)| g)
        .pipe(Guid::parse)
}

/// The short name of a known type GUID, for tables meant for people.
pub fn gpt_type_name(g: Guid) -> Option<&'static str> {
    GPT_TYPES
        .iter()
        .find(|(_, s)| Guid::parse(s) == Some(g))
        .map(|(n, _)| *n)
}

/// Parses an MBR type byte written as "0x0c", "0c" or "12".
pub fn mbr_type(s: &str) -> Option<u8> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16).ok(),
        None if t.len() == 2 => u8::from_str_radix(t, 16).ok(),
        None => t.parse().ok(),
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// One partition as the table records it.
#[derive(Debug, Clone)]
pub struct TableEntry {
    /// The partition's number (1-based; MBR logical partitions from 5).
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub gpt_type: Option<Guid>,
    pub mbr_type: Option<u8>,
    pub guid: Guid,
    pub name: String,
    pub bootable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_round_trip() {
        let g = Guid::parse("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7").unwrap();
        assert_eq!(g.to_string(), "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
        assert_eq!(&g.to_disk()[..4], &[0xA2, 0xA0, 0xD0, 0xEB]);
        assert_eq!(Guid::from_disk(g.to_disk()), g);
        assert!(Guid::parse("nope").is_none());
        assert_eq!(
            gpt_type("linux"),
            Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        );
        assert_eq!(mbr_type("0x0c"), Some(12));
        assert_eq!(mbr_type("83"), Some(0x83));
    }
}
