//! Squashfs checks: a root filesystem image must parse (superblock, inode, directory,
//! fragment and id tables) and be complete before it is placed on a card.
//!
//! Not a writer: squashfs images come from Buildroot as they are.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::error::{Error, Result};

/// Parses the image's metadata; reads no data blocks. Returns the number of inodes.
pub fn check(path: &Path) -> Result<u32> {
    let bad = |message: String| Error::BadArtifact {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    let sq = backhand::Squashfs::from_reader(BufReader::new(file))
        .map_err(|e| bad(format!("not a valid squashfs: {e}")))?;
    let used = sq.superblock.bytes_used;
    if used > len {
        return Err(bad(format!(
            "truncated squashfs: superblock says {} bytes, file has {}",
            crate::units::bytes(used),
            crate::units::bytes(len)
        )));
    }
    let inodes = sq.superblock.inode_count;
    let fs = sq
        .into_filesystem_reader()
        .map_err(|e| bad(format!("corrupt squashfs: {e}")))?;
    if fs.files().count() as u64 > u64::from(inodes) + 1 {
        return Err(bad("corrupt squashfs: more entries than inodes".into()));
    }
    Ok(inodes)
}
