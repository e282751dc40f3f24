//! Images as one ascending byte stream: for compressed release files (the image never exists
//! uncompressed) and for sparse files whose block map is computed on the way.
//!
//! `Sequencer` is a `Sink` that turns the writers' positioned writes into the stream: writes
//! must ascend, except while a writer holds (ext4 metadata), when they are kept in memory
//! and released in order as the stream reaches them. Gaps are zeros. It maps which 4 KiB
//! blocks must be written to a device — data, and zeros a writer declared necessary (a
//! FAT's free entries) — and hashes each mapped range (bmaptool's model); gaps are "don't
//! care". Each mapped range is hashed in pieces, so a hash-only check can place a difference
//! within a piece: a file's whole content when its writer announces it (the writer hashes
//! it as it reads the file, so it is not hashed again here), else at most `CHUNK` bytes; when asked, also as a whole (what a
//! bmap lists) and the whole stream (SHA256SUMS). All hashing runs on a thread of its own
//! (`offload`), beside the writes; each byte passes each asked-for hash once.
//!
//! Not for random-access targets (block devices): those take positioned writes directly.

use std::collections::BTreeMap;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::io::hex;
use crate::sink::Sink;
use crate::sink::offload::{Batch, Consume, Offload, Piece};

/// Block size of the map (bmaptool's default).
pub const BLOCK: u64 = 4096;

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Where the stream goes.
pub trait Emit {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// `len` zero bytes; a sparse file skips them, a compressor compresses them.
    fn zeros(&mut self, len: u64) -> io::Result<()>;
    /// `len` bytes of `src` from `src_at`, copied without passing through this process;
    /// `Ok(false)` when this emitter cannot (nothing was written).
    fn copy(&mut self, _src: &std::fs::File, _src_at: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
}

/// Largest piece of a mapped range hashed on its own (a file's content excepted).
pub const CHUNK: u64 = 1 << 20;

/// A mapped range of blocks (inclusive), its bytes in hashed pieces from its start, and,
/// when asked for, the SHA-256 of all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub sha256: Option<String>,
    pub pieces: Vec<Hashed>,
}

/// `len` bytes of a mapped range: at most `CHUNK` bytes with their SHA-256, or one file's
/// whole content (`sha256` None: the file's own hash, which its writer computed as it read
/// the file, is these bytes' hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub len: u64,
    pub sha256: Option<String>,
}

/// What a stream hashes besides each mapped range's pieces.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hashes {
    /// Each mapped range as a whole (a bmap's checksums).
    pub ranges: bool,
    /// Every byte of the stream, zeros included (the image's SHA-256).
    pub whole: bool,
}

/// The range being mapped: its first block and hashers.
struct Open {
    first: u64,
    range: Option<Sha256>,
    chunk: Sha256,
    /// Bytes in `chunk` so far.
    chunk_fill: u64,
    pieces: Vec<Hashed>,
}

impl Open {
    fn new(first: u64, whole: bool) -> Self {
        Open {
            first,
            range: whole.then(Sha256::new),
            chunk: Sha256::new(),
            chunk_fill: 0,
            pieces: Vec::new(),
        }
    }

    /// Hashes `len` bytes (`bytes`, or zeros) into the range and its chunks.
    fn absorb(&mut self, bytes: Option<&[u8]>, mut len: u64) {
        let mut off = 0;
        while len > 0 {
            let n = (CHUNK - self.chunk_fill).min(len);
            match bytes {
                Some(b) => {
                    let piece = &b[off..off + n as usize];
                    if let Some(r) = self.range.as_mut() {
                        r.update(piece);
                    }
                    self.chunk.update(piece);
                }
                None => {
                    if let Some(r) = self.range.as_mut() {
                        zeros_into(r, n);
                    }
                    zeros_into(&mut self.chunk, n);
                }
            }
            self.chunk_fill += n;
            off += n as usize;
            len -= n;
            if self.chunk_fill == CHUNK {
                self.end_chunk();
            }
        }
    }

    fn end_chunk(&mut self) {
        if self.chunk_fill > 0 {
            let h = std::mem::take(&mut self.chunk);
            self.pieces.push(Hashed {
                len: self.chunk_fill,
                sha256: Some(hex(&h.finalize())),
            });
            self.chunk_fill = 0;
        }
    }
}

/// Hashes `len` zero bytes.
pub(crate) fn zeros_into(h: &mut Sha256, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// Which blocks of the stream hold data, found as the stream passes.
#[derive(Default)]
struct Mapper {
    /// Hash each range as a whole too.
    whole_ranges: bool,
    ranges: Vec<Range>,
    open: Option<Open>,
    /// First block after the open range.
    end_block: u64,
    /// Bytes up to here are in the open range's pieces.
    hashed_to: u64,
    /// Bytes below this, from `hashed_to` at the file's declaration, are a file's content:
    /// already a piece, only the whole-range hash (if any) still takes them.
    file_end: u64,
}

impl Mapper {
    fn close(&mut self) {
        if let Some(mut o) = self.open.take() {
            o.absorb(None, self.end_block * BLOCK - self.hashed_to);
            o.end_chunk();
            self.ranges.push(Range {
                first: o.first,
                last: self.end_block - 1,
                sha256: o.range.map(|h| hex(&h.finalize())),
                pieces: o.pieces,
            });
        }
    }

    fn data(&mut self, at: u64, bytes: &[u8]) {
        // The part inside a declared file went into its piece already.
        let inside = self.file_end.saturating_sub(at).min(bytes.len() as u64) as usize;
        if inside > 0
            && let Some(r) = self.open.as_mut().and_then(|o| o.range.as_mut())
        {
            r.update(&bytes[..inside]);
        }
        let rest = &bytes[inside..];
        self.mapped(at + inside as u64, Some(rest), rest.len() as u64);
    }

    fn zeros(&mut self, at: u64, len: u64) {
        self.mapped(at, None, len);
    }

    /// Opens a new range at `at`'s block unless the open one reaches it; returns the gap
    /// from what is hashed to `at` (zeros within the range).
    fn reach(&mut self, at: u64) -> u64 {
        let block = at / BLOCK;
        let contiguous = self.open.is_some() && block <= self.end_block;
        if !contiguous {
            self.close();
            self.open = Some(Open::new(block, self.whole_ranges));
            self.hashed_to = block * BLOCK;
        }
        at - self.hashed_to
    }

    /// Maps `[at, at+len)`, hashing `bytes` (or zeros).
    fn mapped(&mut self, at: u64, bytes: Option<&[u8]>, len: u64) {
        if len == 0 {
            return;
        }
        let gap = self.reach(at);
        if let Some(o) = self.open.as_mut() {
            o.absorb(None, gap);
            o.absorb(bytes, len);
        }
        let end = at + len;
        self.hashed_to = end;
        self.end_block = self.end_block.max(end.div_ceil(BLOCK));
    }

    /// Maps `[at, at+len)` as one file's content: a piece of its own, hashed by its writer.
    fn file(&mut self, at: u64, len: u64) {
        if len == 0 {
            return;
        }
        let gap = self.reach(at);
        if let Some(o) = self.open.as_mut() {
            o.absorb(None, gap);
            o.end_chunk();
            o.pieces.push(Hashed { len, sha256: None });
        }
        let end = at + len;
        self.hashed_to = end;
        self.file_end = end;
        self.end_block = self.end_block.max(end.div_ceil(BLOCK));
    }

    fn finish(&mut self, size: u64) -> Vec<Range> {
        if let Some(o) = self.open.as_mut() {
            // The image may end inside its last block: hash only what exists.
            let end = (self.end_block * BLOCK).min(size);
            o.absorb(None, end.saturating_sub(self.hashed_to));
            self.hashed_to = self.end_block * BLOCK;
        }
        self.close();
        std::mem::take(&mut self.ranges)
    }
}

/// What a finished stream reports.
#[derive(Debug, Clone)]
pub struct StreamSummary {
    pub size: u64,
    /// Mapped block ranges with their hashes.
    pub ranges: Vec<Range>,
    pub mapped_blocks: u64,
    /// SHA-256 of the whole image, when asked for.
    pub sha256: Option<String>,
}

/// The hashing thread's side: maps and hashes the stream's pieces in order.
struct Hasher {
    map: Mapper,
    whole: Option<Sha256>,
    size: u64,
}

impl Consume for Hasher {
    type Out = (Vec<Range>, Option<String>);

    fn batch(&mut self, b: &Batch) {
        b.each(|p, bytes| match p {
            Piece::Data { at, .. } => {
                if let Some(h) = self.whole.as_mut() {
                    h.update(bytes);
                }
                self.map.data(at, bytes);
            }
            Piece::Zeros { at, len } => {
                if let Some(h) = self.whole.as_mut() {
                    zeros_into(h, len);
                }
                self.map.zeros(at, len);
            }
            Piece::Gap(len) => {
                if let Some(h) = self.whole.as_mut() {
                    zeros_into(h, len);
                }
            }
            Piece::File { at, len } => self.map.file(at, len),
        });
    }

    fn finish(mut self) -> Self::Out {
        let ranges = self.map.finish(self.size);
        (ranges, self.whole.map(|h| hex(&h.finalize())))
    }
}

/// A write kept while the writer holds.
enum Held {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Positioned writes in, one ascending stream out.
pub struct Sequencer<E: Emit> {
    out: E,
    size: u64,
    cursor: u64,
    held: BTreeMap<u64, Held>,
    holding: bool,
    hashing: Offload<Hasher>,
    /// Gaps are hashed too (the whole stream is).
    hash_gaps: bool,
    /// A file's content being streamed: the next byte expected and the end.
    file: Option<(u64, u64)>,
    /// A file's bytes still go to the hashing thread (for the whole-range or whole-image
    /// hash); else only the announcement does.
    file_bytes: bool,
}

impl<E: Emit> Sequencer<E> {
    /// A stream of `size` bytes, hashed as `hashes` asks (pieces always) on a thread of its
    /// own.
    pub fn new(out: E, size: u64, hashes: Hashes) -> io::Result<Self> {
        let hasher = Hasher {
            map: Mapper {
                whole_ranges: hashes.ranges,
                ..Mapper::default()
            },
            whole: hashes.whole.then(Sha256::new),
            size,
        };
        Ok(Sequencer {
            out,
            size,
            cursor: 0,
            held: BTreeMap::new(),
            holding: false,
            hashing: Offload::spawn("stream hashing", hasher)?,
            hash_gaps: hashes.whole,
            file: None,
            file_bytes: hashes.ranges || hashes.whole,
        })
    }

    fn gap(&mut self, to: u64) -> io::Result<()> {
        let len = to - self.cursor;
        if len > 0 {
            if self.hash_gaps {
                self.hashing.gap(len)?;
            }
            self.out.zeros(len)?;
            self.cursor = to;
        }
        Ok(())
    }

    fn behind(&self, at: u64) -> io::Result<()> {
        if at < self.cursor {
            return Err(io::Error::other(format!(
                "write at {at} behind the stream at {} (writer out of order)",
                self.cursor
            )));
        }
        Ok(())
    }

    /// Zeros that must be written (mapped), unlike gaps.
    fn emit_zeros(&mut self, at: u64, len: u64) -> io::Result<()> {
        if let Some((next, _)) = self.file {
            return Err(file_broken(next, at));
        }
        // Zeros declared over bytes already streamed add nothing.
        let start = at.max(self.cursor);
        let end = at + len;
        if end <= start {
            return Ok(());
        }
        self.gap(start)?;
        let len = end - start;
        self.hashing.zeros(start, len)?;
        self.out.zeros(len)?;
        self.cursor = end;
        Ok(())
    }

    fn emit(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        self.behind(at)?;
        self.gap(at)?;
        let mut skip = 0;
        if let Some((next, end)) = self.file {
            if at != next {
                return Err(file_broken(next, at));
            }
            skip = (end - at).min(bytes.len() as u64) as usize;
            self.file = (at + (skip as u64) < end).then_some((at + skip as u64, end));
            if self.file_bytes {
                self.hashing.data(at, &bytes[..skip])?;
            }
        }
        self.hashing.data(at + skip as u64, &bytes[skip..])?;
        self.out.data(bytes)?;
        self.cursor += bytes.len() as u64;
        Ok(())
    }

    /// Emits every held write that starts before `at`.
    fn release_below(&mut self, at: u64) -> io::Result<()> {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() >= at {
                break;
            }
            match entry.remove_entry() {
                (o, Held::Data(b)) => self.emit(o, &b)?,
                (o, Held::Zeros(n)) => self.emit_zeros(o, n)?,
            }
        }
        Ok(())
    }

    /// Emits what is left and the zeros to the end; returns the emitter and the summary.
    pub fn finish(mut self) -> io::Result<(E, StreamSummary)> {
        self.release_below(u64::MAX)?;
        if let Some((next, end)) = self.file {
            return Err(io::Error::other(format!(
                "a file's content ended at {next}, before its announced end at {end}"
            )));
        }
        self.gap(self.size)?;
        let (ranges, sha256) = self.hashing.finish()?;
        let mapped_blocks = ranges.iter().map(|r| r.last - r.first + 1).sum();
        Ok((
            self.out,
            StreamSummary {
                size: self.size,
                ranges,
                mapped_blocks,
                sha256,
            },
        ))
    }
}

/// A write that breaks a file's announced content (a writer's fault, not the input's).
fn file_broken(next: u64, at: u64) -> io::Error {
    io::Error::other(format!(
        "a file's content continues at {next}, but the next write is at {at}"
    ))
}

impl<E: Emit> Sink for Sequencer<E> {
    /// Only the announced file's next bytes, and only when nothing hashes them here.
    fn copy_file(
        &mut self,
        offset: u64,
        src: &std::fs::File,
        src_at: u64,
        len: u64,
    ) -> io::Result<bool> {
        let Some((next, end)) = self.file else {
            return Ok(false);
        };
        if self.holding || self.file_bytes || offset != next || offset + len > end {
            return Ok(false);
        }
        if !self.out.copy(src, src_at, len)? {
            return Ok(false);
        }
        self.cursor = offset + len;
        self.file = (offset + len < end).then_some((offset + len, end));
        Ok(true)
    }

    /// While writes are held, the announcement is ignored (the bytes are hashed as they
    /// pass, which is always right).
    fn file_content(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.holding || len == 0 || self.file.is_some() {
            return Ok(());
        }
        if offset + len > self.size {
            return Err(io::Error::other("file content past the end of the image"));
        }
        self.release_below(offset)?;
        self.behind(offset)?;
        self.gap(offset)?;
        self.hashing.file(offset, len)?;
        self.file = Some((offset, offset + len));
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if offset + bytes.len() as u64 > self.size {
            return Err(io::Error::other("write past the end of the image"));
        }
        if self.holding {
            self.held.insert(offset, Held::Data(bytes.to_vec()));
            return Ok(());
        }
        self.release_below(offset)?;
        self.emit(offset, bytes)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if offset + len > self.size {
            return Err(io::Error::other("zeros past the end of the image"));
        }
        if self.holding {
            self.held.insert(offset, Held::Zeros(len));
            return Ok(());
        }
        self.release_below(offset)?;
        self.emit_zeros(offset, len)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn sequential(&self) -> bool {
        true
    }

    fn hold(&mut self, on: bool) -> io::Result<()> {
        self.holding = on;
        Ok(())
    }
}

/// A sparse file written front to back: data is written, zeros are skipped (holes).
pub struct SparseFile<'a> {
    pub file: &'a std::fs::File,
    at: u64,
}

impl<'a> SparseFile<'a> {
    pub fn new(file: &'a std::fs::File) -> Self {
        SparseFile { file, at: 0 }
    }
}

impl Emit for SparseFile<'_> {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, self.at)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> io::Result<()> {
        self.at += len;
        Ok(())
    }

    /// `copy_file_range`: the kernel copies (or shares the blocks, on a filesystem that
    /// can). A filesystem or kernel that cannot, before anything was copied, is `Ok(false)`;
    /// so is a copy whose source and destination lie differently within a page (a file in
    /// 512-byte FAT clusters): the kernel would then write every page in two parts, which
    /// is slower than reading and writing through a buffer.
    fn copy(&mut self, src: &std::fs::File, src_at: u64, len: u64) -> io::Result<bool> {
        if !(src_at ^ self.at).is_multiple_of(PAGE) {
            return Ok(false);
        }
        let (mut from, mut to) = (src_at, self.at);
        let end = self.at + len;
        while to < end {
            let want = (end - to).min(1 << 30) as usize;
            match rustix::fs::copy_file_range(src, Some(&mut from), self.file, Some(&mut to), want)
            {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source file ended before its planned size",
                    ));
                }
                Ok(_) => {}
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL,
                ) if to == self.at => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        self.at = end;
        Ok(true)
    }
}

/// The page size that in-kernel copies are aligned to (the smallest in common use).
const PAGE: u64 = 4096;

/// Any `Write` (a compressor): zeros are written as zeros.
pub struct Stream<W: Write>(pub W);

impl<W: Write> Emit for Stream<W> {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn zeros(&mut self, mut len: u64) -> io::Result<()> {
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.0.write_all(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem(Vec<u8>);

    impl Emit for Mem {
        fn data(&mut self, b: &[u8]) -> io::Result<()> {
            self.0.extend_from_slice(b);
            Ok(())
        }
        fn zeros(&mut self, len: u64) -> io::Result<()> {
            self.0.resize(self.0.len() + len as usize, 0);
            Ok(())
        }
    }

    const ALL: Hashes = Hashes {
        ranges: true,
        whole: true,
    };

    #[test]
    fn an_in_kernel_copy_is_declined_where_source_and_destination_differ_within_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let src: Vec<u8> = (0..3 * PAGE as usize).map(|i| (i % 249) as u8).collect();
        std::fs::write(dir.path().join("src"), &src).unwrap();
        let from = std::fs::File::open(dir.path().join("src")).unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let mut f = SparseFile::new(&out);
        // 512 bytes into a page, from a page start: declined, nothing written or moved.
        f.at = PAGE + 512;
        assert!(!f.copy(&from, 0, 2 * PAGE).unwrap());
        assert_eq!(f.at, PAGE + 512);
        assert_eq!(out.metadata().unwrap().len(), 0);
        // The same place within a page on both sides: copied.
        assert!(f.copy(&from, 512, 2 * PAGE).unwrap());
        assert_eq!(f.at, 3 * PAGE + 512);
        let written = std::fs::read(dir.path().join("out")).unwrap();
        assert!(written[PAGE as usize + 512..] == src[512..2 * PAGE as usize + 512]);
    }

    fn sha(b: &[u8]) -> Option<String> {
        Some(hex(&Sha256::digest(b)))
    }

    fn hashes(r: &Range) -> Vec<String> {
        r.pieces.iter().map(|p| p.sha256.clone().unwrap()).collect()
    }

    fn sha_(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    #[test]
    fn held_writes_are_released_in_order() {
        let mut s = Sequencer::new(Mem::default(), 64 << 10, ALL).unwrap();
        s.data(0, b"head").unwrap();
        s.hold(true).unwrap();
        s.data(40_000, b"meta2").unwrap();
        s.data(9_000, b"meta1").unwrap();
        s.hold(false).unwrap();
        s.data(20_000, b"data").unwrap();
        s.data(50_000, b"tail").unwrap();
        let (out, sum) = s.finish().unwrap();
        let mut want = vec![0u8; 64 << 10];
        for (o, b) in [
            (0, &b"head"[..]),
            (9_000, b"meta1"),
            (20_000, b"data"),
            (40_000, b"meta2"),
            (50_000, b"tail"),
        ] {
            want[o..o + b.len()].copy_from_slice(b);
        }
        assert!(out.0 == want);
        assert_eq!(sum.sha256, sha(&want));
        let blocks: Vec<(u64, u64)> = sum.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(blocks, [(0, 0), (2, 2), (4, 4), (9, 9), (12, 12)]);
        for r in &sum.ranges {
            let a = (r.first * BLOCK) as usize;
            let b = ((r.last + 1) * BLOCK) as usize;
            assert_eq!(r.sha256, sha(&want[a..b]));
        }
    }

    #[test]
    fn mapped_ranges_are_hashed_in_chunks_from_their_start() {
        let size = 4 * CHUNK;
        let mut s = Sequencer::new(Mem::default(), size, ALL).unwrap();
        let data: Vec<u8> = (0..(2 * CHUNK + 5000)).map(|i| (i % 251) as u8).collect();
        // One range from block 1, written in pieces that straddle chunk edges, then a
        // declared-zero tail; a second range of one block.
        s.data(BLOCK, &data[..700_000]).unwrap();
        s.data(BLOCK + 700_000, &data[700_000..]).unwrap();
        s.zeros(BLOCK + data.len() as u64, 3000).unwrap();
        s.data(3 * CHUNK, b"last").unwrap();
        let (out, sum) = s.finish().unwrap();
        assert_eq!(sum.ranges.len(), 2);
        for r in &sum.ranges {
            let a = r.first * BLOCK;
            let b = (r.last + 1) * BLOCK;
            let want: Vec<String> = (a..b)
                .step_by(CHUNK as usize)
                .map(|c| sha_(&out.0[c as usize..(c + CHUNK).min(b) as usize]))
                .collect();
            assert_eq!(hashes(r), want, "range {}..={}", r.first, r.last);
            assert_eq!(r.sha256, sha(&out.0[a as usize..b as usize]));
        }
        assert_eq!(sum.ranges[0].pieces.len(), 3);
        assert_eq!(sum.ranges[1].pieces.len(), 1);
    }

    #[test]
    fn adjacent_blocks_form_one_range() {
        let mut s = Sequencer::new(Mem::default(), 5 * BLOCK, ALL).unwrap();
        s.data(100, &[1; 10]).unwrap();
        s.data(BLOCK + 5, &[2; 10]).unwrap();
        s.data(3 * BLOCK, &[3; 10]).unwrap();
        let (out, sum) = s.finish().unwrap();
        let blocks: Vec<(u64, u64)> = sum.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(blocks, [(0, 1), (3, 3)]);
        assert_eq!(sum.ranges[0].sha256, sha(&out.0[..2 * BLOCK as usize]));
        assert_eq!(sum.mapped_blocks, 3);
    }

    #[test]
    fn declared_zeros_are_mapped_gaps_are_not() {
        let mut s = Sequencer::new(Mem::default(), 8 * BLOCK, ALL).unwrap();
        s.data(0, &[1; 10]).unwrap();
        s.zeros(2 * BLOCK, 2 * BLOCK).unwrap();
        let (_, sum) = s.finish().unwrap();
        let blocks: Vec<(u64, u64)> = sum.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(blocks, [(0, 0), (2, 3)]);
        assert_eq!(sum.ranges[1].sha256, sha(&[0; 2 * BLOCK as usize]));
    }

    #[test]
    fn out_of_order_writes_are_an_error_not_corruption() {
        let mut s = Sequencer::new(Mem::default(), 8192, ALL).unwrap();
        s.data(5000, b"x").unwrap();
        assert!(s.data(100, b"y").is_err());
    }

    #[test]
    fn range_and_whole_hashes_only_when_asked() {
        let mut s = Sequencer::new(Mem::default(), 8 * BLOCK, Hashes::default()).unwrap();
        s.data(0, &[7; 5000]).unwrap();
        let (out, sum) = s.finish().unwrap();
        assert_eq!(sum.sha256, None);
        assert_eq!(sum.ranges[0].sha256, None);
        assert_eq!(hashes(&sum.ranges[0]), [sha_(&out.0[..2 * BLOCK as usize])]);
    }

    #[test]
    fn an_announced_file_is_one_piece_left_unhashed() {
        for ranges in [false, true] {
            let hashes = Hashes {
                ranges,
                whole: ranges,
            };
            let mut s = Sequencer::new(Mem::default(), 4 * CHUNK, hashes).unwrap();
            let file: Vec<u8> = (0..(CHUNK + 777)).map(|i| (i % 241) as u8).collect();
            s.data(100, b"meta").unwrap();
            s.file_content(BLOCK + 10, file.len() as u64).unwrap();
            s.data(BLOCK + 10, &file[..5000]).unwrap();
            s.data(BLOCK + 5010, &file[5000..]).unwrap();
            // Slack after the content, then more metadata in the same range.
            let end = BLOCK + 10 + file.len() as u64;
            s.zeros(end, 300).unwrap();
            s.data(end + 300, b"tail").unwrap();
            let (out, sum) = s.finish().unwrap();
            assert_eq!(sum.ranges.len(), 1);
            let r = &sum.ranges[0];
            let lens: Vec<u64> = r.pieces.iter().map(|p| p.len).collect();
            let range_end = (end + 304).div_ceil(BLOCK) * BLOCK;
            assert_eq!(lens, [BLOCK + 10, file.len() as u64, range_end - end]);
            assert_eq!(r.pieces[0].sha256, sha(&out.0[..(BLOCK + 10) as usize]));
            assert_eq!(
                r.pieces[1].sha256, None,
                "the file's own hash stands for it"
            );
            assert_eq!(
                r.pieces[2].sha256,
                sha(&out.0[end as usize..range_end as usize])
            );
            if ranges {
                assert_eq!(r.sha256, sha(&out.0[..range_end as usize]));
                assert_eq!(sum.sha256, sha(&out.0));
            }
        }
    }

    #[test]
    fn a_write_that_breaks_an_announced_file_is_an_error() {
        let mut s = Sequencer::new(Mem::default(), 8 * BLOCK, Hashes::default()).unwrap();
        s.file_content(BLOCK, 3000).unwrap();
        s.data(BLOCK, &[1; 1000]).unwrap();
        assert!(s.data(BLOCK + 2000, &[2; 10]).is_err());
        let mut s = Sequencer::new(Mem::default(), 8 * BLOCK, Hashes::default()).unwrap();
        s.file_content(BLOCK, 3000).unwrap();
        s.data(BLOCK, &[1; 1000]).unwrap();
        assert!(s.finish().is_err());
    }
}
