//! Byte sizes as people write them ("2GiB", "512MiB", "100%") and as we print them
//! ("71,303,168"). Parsing is strict: a typo is an error, never a silent zero.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses "4096", "16KiB", "8MiB", "2GiB", "1TiB", "4K", "8M", "2G" (binary, like `truncate`),
/// and "1KB", "1MB", "1GB", "1TB" (decimal, like disk vendors).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 4096, 512MiB, 2GiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// "71,303,168": exact, and readable at a glance.
pub fn bytes(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1.5 GiB", "300 MiB", "12 KiB": for tables, where exactness is in the JSON.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{} {}", v as u64, UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A byte range of a disk or image: `len` bytes from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    pub const fn new(start: u64, len: u64) -> Self {
        Extent { start, len }
    }

    /// The first byte after the range.
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A size as a definition file writes it, before interpretation: a number of bytes, or a
/// string (with a unit, or a keyword some fields take).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// A size in a definition file: a number of bytes or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SizeValue::deserialize(d)? {
            SizeValue::Bytes(n) => Ok(Size(n)),
            SizeValue::Text(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Extra room on top of content: a fixed size or a percentage of the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Headroom {
    Bytes(u64),
    Percent(u32),
}

impl Headroom {
    pub fn on(self, content: u64) -> u64 {
        match self {
            Headroom::Bytes(b) => content.saturating_add(b),
            Headroom::Percent(p) => {
                content.saturating_add((content as u128 * p as u128).div_ceil(100) as u64)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Headroom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(p) = s.trim().strip_suffix('%') {
            return p
                .trim()
                .parse()
                .map(Headroom::Percent)
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a percentage")));
        }
        parse_size(&s)
            .map(Headroom::Bytes)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("8GB"), Ok(8_000_000_000));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn bytes_group_thousands() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(999), "999");
        assert_eq!(bytes(1000), "1,000");
        assert_eq!(bytes(71_303_168), "71,303,168");
    }

    #[test]
    fn headroom_rounds_up() {
        assert_eq!(Headroom::Percent(100).on(10), 20);
        assert_eq!(Headroom::Percent(10).on(1), 2);
        assert_eq!(Headroom::Bytes(5).on(10), 15);
    }
}
