//! Release artifacts beside an image: the block map in bmaptool's XML format (so
//! `bmaptool copy` and `skiff-flash flash` write only mapped blocks) and `SHA256SUMS` in
//! coreutils' format.
//!
//! Not for writing images: that is `target::image`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::image::file::Staged;
use crate::image::stream::{BLOCK, StreamSummary};
use crate::io::hex;
use crate::units::human;

/// The bmap file name for an image: compression suffixes dropped, `.bmap` added
/// (`pi4.img.zst` → `pi4.img.bmap`), where bmaptool looks for it.
pub fn bmap_path(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = [".zst", ".zstd", ".gz", ".xz"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name);
    image.with_file_name(format!("{base}.bmap"))
}

/// The bmap document (format 2.0) for a streamed image, with its own checksum filled in.
pub fn bmap(summary: &StreamSummary) -> String {
    let blocks = summary.size.div_ceil(BLOCK);
    let pct = if blocks == 0 {
        0.0
    } else {
        summary.mapped_blocks as f64 * 100.0 / blocks as f64
    };
    let mut x = String::new();
    let _ = write!(
        x,
        "<?xml version=\"1.0\" ?>\n\
         <!-- Block map of a disk image: the blocks that hold data (tables, filesystem\n     \
         metadata, files). Only these need to be written to a device. -->\n\
         <bmap version=\"2.0\">\n    \
         <!-- Image size in bytes: {} -->\n    \
         <ImageSize> {} </ImageSize>\n\n    \
         <!-- Size of a block in bytes -->\n    \
         <BlockSize> {BLOCK} </BlockSize>\n\n    \
         <!-- Count of blocks in the image file -->\n    \
         <BlocksCount> {blocks} </BlocksCount>\n\n    \
         <!-- Count of mapped blocks: {} or {pct:.1}% -->\n    \
         <MappedBlocksCount> {} </MappedBlocksCount>\n\n    \
         <!-- Type of checksum used in this file -->\n    \
         <ChecksumType> sha256 </ChecksumType>\n\n    \
         <!-- The checksum of this bmap file. When it is calculated, the value of\n         \
         the checksum has be zero (all ASCII \"0\" symbols).  -->\n    \
         <BmapFileChecksum> {} </BmapFileChecksum>\n\n    \
         <BlockMap>\n",
        human(summary.size),
        summary.size,
        human(summary.mapped_blocks * BLOCK),
        summary.mapped_blocks,
        "0".repeat(64),
    );
    for r in &summary.ranges {
        if r.first == r.last {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {} </Range>",
                r.sha256, r.first
            );
        } else {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {}-{} </Range>",
                r.sha256, r.first, r.last
            );
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    let sum = hex(&Sha256::digest(x.as_bytes()));
    x.replacen(&"0".repeat(64), &sum, 1)
}

/// Writes `bytes` under `path`'s temporary name; it appears at `path` when committed.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<Staged> {
    use std::io::Write;
    let mut f = Staged::create(path)?;
    f.file
        .write_all(bytes)
        .and_then(|()| f.file.sync_data())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(f)
}

/// Writes `text` to `path` atomically.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    stage(path, text.as_bytes())?.commit()
}

/// The current content of a checksum list, if there is one: refused (not rewritten) when
/// it cannot be read whole.
pub fn read_sha256sums(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        Ok(_) => crate::io::read_small(path, "checksum list").map(Some),
    }
}

/// The file name a checksum line is for: coreutils' `HASH  name` (text) and `HASH *name`
/// (binary), with `\`-escaped names, and the tagged `SHA256 (name) = HASH`. `None` for
/// comments and anything else.
fn sums_line_name(line: &[u8]) -> Option<Vec<u8>> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let raw = if let Some(rest) = line.strip_prefix(b"SHA256 (") {
        let end = rest.windows(4).rposition(|w| w == b") = ")?;
        rest[..end].to_vec()
    } else {
        let sp = line.iter().position(|b| *b == b' ')?;
        let (hash, rest) = line.split_at(sp);
        if hash.is_empty() || !hash.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        match rest {
            [b' ', b' ' | b'*', name @ ..] if !name.is_empty() => name.to_vec(),
            _ => return None,
        }
    };
    if !escaped {
        return Some(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = raw.iter();
    while let Some(&b) = i.next() {
        if b == b'\\' {
            match i.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                Some(&c) => out.push(c),
                None => out.push(b),
            }
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// One checksum line in coreutils' text mode, escaping names as `sha256sum` does.
fn sums_line(name: &str, hash: &str) -> Vec<u8> {
    if name.contains(['\\', '\n', '\r']) {
        let esc = name
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{hash}  {esc}\n").into_bytes()
    } else {
        format!("{hash}  {name}\n").into_bytes()
    }
}

/// `old` (a SHA256SUMS file's bytes) with the lines for `entries`' names replaced: every
/// other line (other files, binary-mode lines, tagged lines, comments, bytes that are not
/// UTF-8) is kept byte for byte and in place; a replaced name keeps its first line's place,
/// and names not listed yet are appended in name order.
pub fn merge_sha256sums(old: &[u8], entries: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(old.len() + entries.len() * 100);
    let mut placed: Vec<&str> = Vec::new();
    let mut rest = old;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..=i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let ours = sums_line_name(body)
            .and_then(|n| entries.iter().find(|(e, _)| e.as_bytes() == n.as_slice()));
        match ours {
            Some((name, hash)) => {
                if !placed.contains(&name.as_str()) {
                    placed.push(name);
                    out.extend(sums_line(name, hash));
                }
            }
            None => {
                out.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
    }
    let mut new: Vec<&(String, String)> = entries
        .iter()
        .filter(|(n, _)| !placed.contains(&n.as_str()))
        .collect();
    new.sort();
    new.dedup_by(|a, b| a.0 == b.0);
    for (n, h) in new {
        out.extend(sums_line(n, h));
    }
    out
}

/// SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut h = crate::io::HashReader::new(&mut f);
    std::io::copy(&mut h, &mut std::io::sink())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_keep_every_line_they_do_not_replace() {
        let old: &[u8] = b"# comment\n\xff\xfe not utf-8\naaaa *bin.img\nbbbb  x.img\ncccc  other\nSHA256 (t) = dd\nbbbb  x.img\nlast-without-newline";
        let new = merge_sha256sums(
            old,
            &[
                ("x.img".into(), "1234".into()),
                ("bin.img".into(), "5678".into()),
                ("a".into(), "9".into()),
            ],
        );
        assert_eq!(
            new,
            b"# comment\n\xff\xfe not utf-8\n5678  bin.img\n1234  x.img\ncccc  other\nSHA256 (t) = dd\nlast-without-newline\n9  a\n"
        );
        assert_eq!(sums_line_name(b"SHA256 (t) = dd"), Some(b"t".to_vec()));
        assert_eq!(sums_line_name(b"\\ab  a\\nb"), Some(b"a\nb".to_vec()));
        assert_eq!(sums_line("a\nb", "ab"), b"\\ab  a\\nb\n");
    }

    #[test]
    fn bmap_names_drop_compression() {
        assert_eq!(
            bmap_path(Path::new("/o/pi4.img.zst")),
            Path::new("/o/pi4.img.bmap")
        );
        assert_eq!(bmap_path(Path::new("pi4.img")), Path::new("pi4.img.bmap"));
    }
}
