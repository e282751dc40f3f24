//! Squashfs checks: a root filesystem image must have a consistent superblock (version,
//! block size, every table inside the bytes it says it uses and inside the file), and its
//! root inode, directory, fragment and id tables must parse, before it is placed on a card.
//!
//! Not a writer: squashfs images come from Buildroot as they are.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use backhand::BackhandError;

use crate::error::{Error, Result};
use crate::units::bytes;

const SUPERBLOCK: u64 = 96;
/// A table offset meaning "this table is absent".
const ABSENT: u64 = u64::MAX;
/// Bytes of metadata one uncompressed metadata block holds.
const METADATA_BLOCK: u64 = 8192;

/// The superblock fields the check looks at.
struct Superblock {
    inode_count: u32,
    block_size: u32,
    block_log: u16,
    compressor: u16,
    id_count: u16,
    version: (u16, u16),
    root_inode: u64,
    bytes_used: u64,
    id_table: u64,
    xattr_table: u64,
    inode_table: u64,
    dir_table: u64,
    frag_table: u64,
    export_table: u64,
}

impl Superblock {
    fn parse(b: &[u8; SUPERBLOCK as usize]) -> Superblock {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        Superblock {
            inode_count: u32_at(4),
            block_size: u32_at(12),
            compressor: u16_at(20),
            block_log: u16_at(22),
            id_count: u16_at(26),
            version: (u16_at(28), u16_at(30)),
            root_inode: u64_at(32),
            bytes_used: u64_at(40),
            id_table: u64_at(48),
            xattr_table: u64_at(56),
            inode_table: u64_at(64),
            dir_table: u64_at(72),
            frag_table: u64_at(80),
            export_table: u64_at(88),
        }
    }

    /// What is inconsistent in the superblock of a `len`-byte file, if anything: its own
    /// fields first, then the bytes it says it uses, then where its tables lie.
    fn problem(&self, len: u64) -> Option<String> {
        self.field_problem()
            .or_else(|| self.size_problem(len))
            .or_else(|| self.table_problem())
    }

    /// Version, block size, compressor and counts.
    fn field_problem(&self) -> Option<String> {
        if self.version != (4, 0) {
            return Some(format!(
                "version {}.{} (only squashfs 4.0 is supported)",
                self.version.0, self.version.1
            ));
        }
        let bs = self.block_size;
        if !bs.is_power_of_two()
            || !(4096..=1 << 20).contains(&bs)
            || bs.trailing_zeros() != u32::from(self.block_log)
        {
            return Some(format!(
                "block size {bs} (log {}) is not a power of two from 4 KiB to 1 MiB",
                self.block_log
            ));
        }
        if !(1..=6).contains(&self.compressor) {
            return Some(format!("unknown compressor id {}", self.compressor));
        }
        if self.inode_count == 0 {
            return Some("inode count is 0 (there must be a root directory)".into());
        }
        if self.id_count == 0 {
            return Some("id count is 0".into());
        }
        None
    }

    /// The bytes the superblock says are used, against the file's `len`.
    fn size_problem(&self, len: u64) -> Option<String> {
        if self.bytes_used > len {
            return Some(format!(
                "truncated: superblock says {} bytes are used, the file has {}",
                bytes(self.bytes_used),
                bytes(len)
            ));
        }
        if self.bytes_used < SUPERBLOCK {
            return Some(format!(
                "superblock says only {} bytes are used",
                bytes(self.bytes_used)
            ));
        }
        None
    }

    /// Every table and the root inode inside the used bytes, in order.
    fn table_problem(&self) -> Option<String> {
        let used = self.bytes_used;
        let mut tables = vec![
            ("inode table", self.inode_table),
            ("directory table", self.dir_table),
            ("id table", self.id_table),
        ];
        for (name, at) in [
            ("fragment table", self.frag_table),
            ("export table", self.export_table),
            ("xattr table", self.xattr_table),
        ] {
            if at != ABSENT {
                tables.push((name, at));
            }
        }
        for (name, at) in &tables {
            if *at < SUPERBLOCK || *at >= used {
                return Some(format!(
                    "the {name} starts at byte {}, outside the {} bytes the superblock says \
                     are used (bytes_used)",
                    bytes(*at),
                    bytes(used)
                ));
            }
        }
        if self.inode_table >= self.dir_table {
            return Some(format!(
                "the inode table (byte {}) does not come before the directory table (byte {})",
                bytes(self.inode_table),
                bytes(self.dir_table)
            ));
        }
        let root_block = self.root_inode >> 16;
        let root_offset = self.root_inode & 0xffff;
        if root_offset >= METADATA_BLOCK
            || self.inode_table.saturating_add(root_block) >= self.dir_table
        {
            return Some(format!(
                "the root inode reference (block {root_block}, offset {root_offset}) is outside \
                 the inode table"
            ));
        }
        None
    }
}

/// Parses the image's metadata; reads no data blocks. Returns the number of inodes.
pub fn check(path: &Path) -> Result<u32> {
    let bad = |reason: String| Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!("not a valid squashfs: {reason}"),
    };
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if len < SUPERBLOCK {
        return Err(bad(format!(
            "{} bytes is shorter than a superblock ({SUPERBLOCK} bytes)",
            bytes(len)
        )));
    }
    let mut head = [0u8; SUPERBLOCK as usize];
    file.read_exact(&mut head)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if &head[..4] != b"hsqs" {
        return Err(bad(format!(
            "no squashfs magic (\"hsqs\") at byte 0, found {:02x?}",
            &head[..4]
        )));
    }
    let sb = Superblock::parse(&head);
    if let Some(p) = sb.problem(len) {
        return Err(bad(p));
    }
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let sq = backhand::Squashfs::from_reader(BufReader::new(file))
        .map_err(|e| bad(format!("reading the tables: {}", describe(&e))))?;
    let fs = sq.into_filesystem_reader().map_err(|e| {
        bad(format!(
            "reading the root inode and directory table: {}",
            describe(&e)
        ))
    })?;
    if fs.files().count() as u64 > u64::from(sb.inode_count) + 1 {
        return Err(bad(format!(
            "the directory table names more entries than the {} inodes",
            sb.inode_count
        )));
    }
    Ok(sb.inode_count)
}

/// What a squashfs reader error means (the reader's own messages are not built in).
fn describe(e: &BackhandError) -> String {
    match e {
        BackhandError::StdIo(io) => match io.kind() {
            std::io::ErrorKind::UnexpectedEof => "a table runs past the end of the file".into(),
            _ => format!("read error ({io})"),
        },
        BackhandError::Deku(_) => "a metadata structure does not decode".into(),
        BackhandError::StringUtf8(_) | BackhandError::StrUtf8(_) => {
            "a file name is not valid UTF-8".into()
        }
        BackhandError::UnsupportedCompression(c) => format!("unsupported compression {c}"),
        BackhandError::MissingCompressor => "no compressor given".into(),
        BackhandError::UnexpectedInode | BackhandError::UnsupportedInode => {
            "an inode of an unexpected type (the root must be a directory)".into()
        }
        BackhandError::CorruptedOrInvalidSquashfs => {
            "a table or block points outside the image".into()
        }
        BackhandError::InvalidCompressionOption => "invalid compression options".into(),
        BackhandError::InvalidFilePath | BackhandError::UndefineFileName => {
            "a directory entry has an invalid name".into()
        }
        BackhandError::DuplicatedFileName => "a directory holds the same name twice".into(),
        BackhandError::InvalidIdTable | BackhandError::IdNotFoundInTable => {
            "an inode names a uid/gid missing from the id table".into()
        }
        BackhandError::UnsupportedSquashfsVersion(a, b) => {
            format!("unsupported version {a}.{b}")
        }
        BackhandError::TryReserveError(_) => "a table claims an impossible size".into(),
        _ => "the metadata is inconsistent".into(),
    }
}
