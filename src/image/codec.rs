//! The compression formats an image file may be in, in one table: the extensions that name
//! each, the magic bytes that identify it, its default level, and its decoder. Every place
//! that names, sniffs or decodes a compressed image asks here.
//!
//! Not for writing compressed images: `file` builds the encoders (their settings are part
//! of what makes a build reproducible).

use std::io::{BufRead, Read};

/// A compression format images are written and read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Gzip,
    Xz,
}

struct Entry {
    codec: Codec,
    /// File name endings, lower case, the first the one written.
    extensions: &'static [&'static str],
    magic: &'static [u8],
    default_level: i32,
    /// The lowest level the format takes (zstd's negative levels are its fast modes).
    min_level: i32,
    /// The highest level the format takes (levels above are clamped).
    max_level: i32,
}

const CODECS: &[Entry] = &[
    Entry {
        codec: Codec::Zstd,
        extensions: &[".zst", ".zstd"],
        magic: &[0x28, 0xB5, 0x2F, 0xFD],
        default_level: 3,
        min_level: -131072,
        max_level: 22,
    },
    Entry {
        codec: Codec::Gzip,
        extensions: &[".gz"],
        magic: &[0x1F, 0x8B],
        default_level: 6,
        min_level: 0,
        max_level: 9,
    },
    Entry {
        codec: Codec::Xz,
        extensions: &[".xz"],
        magic: &[0xFD, b'7', b'z', b'X', b'Z', 0x00],
        default_level: 6,
        min_level: 0,
        max_level: 9,
    },
];

/// Compression and archive extensions that are neither written nor read: a file named so
/// is refused rather than taken as a raw image.
const UNSUPPORTED: &[&str] = &[
    "bz2", "bzip2", "tbz", "tbz2", "lz4", "lzma", "lz", "lzo", "zip", "7z", "rar", "tar", "tgz",
    "txz", "tzst", "br", "sz", "z", "zpaq", "cpio", "lrz",
];

/// The most magic bytes `sniff` looks at.
pub const MAGIC_LEN: usize = 6;

fn entry(codec: Codec) -> &'static Entry {
    CODECS
        .iter()
        .find(|e| e.codec == codec)
        .unwrap_or(&CODECS[0])
}

impl Codec {
    /// The format a file name's ending names, if any (case-insensitive).
    pub fn from_name(name: &str) -> Option<Codec> {
        let name = name.to_lowercase();
        CODECS
            .iter()
            .find(|e| e.extensions.iter().any(|x| name.ends_with(x)))
            .map(|e| e.codec)
    }

    /// The format whose magic `head` starts with, if any.
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        CODECS
            .iter()
            .find(|e| head.starts_with(e.magic))
            .map(|e| e.codec)
    }

    /// `level`, or the format's default, clamped to what the format takes.
    pub fn level(self, level: Option<i32>) -> i32 {
        let e = entry(self);
        level
            .unwrap_or(e.default_level)
            .clamp(e.min_level, e.max_level)
    }

    /// A reader giving the decompressed bytes of `r` (every concatenated member or frame).
    pub fn decoder<R: BufRead + Send + 'static>(
        self,
        r: R,
    ) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
            Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Codec::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        })
    }
}

/// The unsupported compression or archive extension a file name ends in, if any
/// (`x.img.bz2` → `bz2`).
pub fn unsupported_extension(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase();
    UNSUPPORTED
        .iter()
        .find(|e| name.strip_suffix(*e).is_some_and(|b| b.ends_with('.')))
        .copied()
}

/// A file name without its compression ending (`pi4.img.zst` → `pi4.img`).
pub fn strip_extension(name: &str) -> &str {
    let lower = name.to_lowercase();
    CODECS
        .iter()
        .flat_map(|e| e.extensions)
        .find(|x| lower.ends_with(*x))
        .map_or(name, |x| &name[..name.len() - x.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_magic_and_levels_come_from_one_table() {
        assert_eq!(Codec::from_name("A.IMG.ZST"), Some(Codec::Zstd));
        assert_eq!(Codec::from_name("a.img.gz"), Some(Codec::Gzip));
        assert_eq!(Codec::from_name("a.img"), None);
        assert_eq!(Codec::sniff(&[0x1F, 0x8B, 8]), Some(Codec::Gzip));
        assert_eq!(Codec::sniff(b"\xFD7zXZ\0"), Some(Codec::Xz));
        assert_eq!(Codec::sniff(b"\xFD7zX"), None);
        assert_eq!(Codec::Gzip.level(Some(12)), 9);
        assert_eq!(Codec::Zstd.level(None), 3);
        assert_eq!(strip_extension("pi4.img.zst"), "pi4.img");
        assert_eq!(strip_extension("pi4.img"), "pi4.img");
        assert_eq!(unsupported_extension("x.img.bz2"), Some("bz2"));
        assert_eq!(unsupported_extension("x.imgbz2"), None);
    }
}
