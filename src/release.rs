//! Release artifacts beside an image: the block map in bmaptool's XML format (so
//! `bmaptool copy` and `skiff-flash flash` write only mapped blocks) and `SHA256SUMS` in
//! coreutils' format.
//!
//! Not for writing images: that is `target::image`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::io::hex;
use crate::target::image::Staged;
use crate::target::stream::{BLOCK, StreamSummary};
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

/// Writes `text` to `path` atomically.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = Staged::create(path)?;
    f.file
        .write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.commit()
}

/// Adds or replaces lines of `SHA256SUMS` in `dir` for the given file names, keeping lines for
/// other files; sorted by name.
pub fn update_sha256sums(dir: &Path, entries: &[(String, String)]) -> Result<PathBuf> {
    let path = dir.join("SHA256SUMS");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<(String, String)> = old
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, n)| (n.to_string(), h.to_string()))
        .filter(|(n, _)| !entries.iter().any(|(e, _)| e == n))
        .collect();
    lines.extend(entries.iter().map(|(n, h)| (n.clone(), h.clone())));
    lines.sort();
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    write_atomic(&path, &text)?;
    Ok(path)
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
    fn bmap_names_drop_compression() {
        assert_eq!(
            bmap_path(Path::new("/o/pi4.img.zst")),
            Path::new("/o/pi4.img.bmap")
        );
        assert_eq!(bmap_path(Path::new("pi4.img")), Path::new("pi4.img.bmap"));
    }
}
