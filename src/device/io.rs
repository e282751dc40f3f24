//! A whole disk opened for writing (`Device`): the exclusive claim, bounded positioned
//! writes and real zeroing as a `Sink`, flushing, and reads past the page cache (O_DIRECT)
//! for verifying what reached the medium.
//!
//! Not for: deciding whether to open it (policy.rs) or making the kernel see the partitions
//! just written (reread.rs).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{NoArg, Opcode, Setter, opcode};

use super::discover::{SYSFS_SECTOR, size_of, split_dev};
use super::{DeviceInfo, Refusal};
use crate::error::{Error, Result};
use crate::sink::Sink;

/// `_IO(0x12, 127)` although it takes a pointer to `[start, len]`: the kernel declared it
/// without a direction, so it is issued as a pointer "setter" with a no-direction opcode.
const BLKZEROOUT: Opcode = opcode::none(0x12, 127);
const BLKFLSBUF: Opcode = opcode::none(0x12, 97);

/// A whole disk opened for writing, exclusively: while it is open nothing can mount it or
/// its partitions, and it could not be opened if anything had.
pub struct Device {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) size: u64,
    logical_sector: u32,
    /// Bytes written since writeback was last started.
    unstarted: u64,
    /// The O_DIRECT descriptor and aligned buffer large aligned writes go through; `None`
    /// until the first one, and for good once the device refuses direct writes.
    direct_out: Direct,
}

/// Writes past the page cache, once tried.
enum Direct {
    Untried,
    Open(File, Aligned),
    Refused,
}

/// Writes of at least this many bytes, 4 KiB-aligned, go past the page cache: no copy into
/// cached pages and no writeback to wait for, which leaves the CPU to decoding when
/// several cards are written at once.
const DIRECT_FROM: usize = 64 << 10;
const DIRECT_ALIGN: u64 = 4096;

/// Writeback is started after this many bytes are written: the device writes while more
/// comes, and the final flush has little left to wait for (with several cards at once, the
/// medium, not the last flush, sets the pace).
const WRITEBACK_EVERY: u64 = 8 << 20;

impl Device {
    /// Opens `info.path` read-write with O_EXCL, which on a block device (without O_CREAT)
    /// claims it: the kernel answers EBUSY when it or a partition is mounted, is swap, or
    /// is held by device-mapper/md. Also refuses if the node now names another device.
    pub fn open_exclusive(info: &DeviceInfo) -> Result<Device> {
        let flags = OFlags::RDWR | OFlags::EXCL | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&info.path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::BUSY) => return Err(Refusal::Busy(info.path.clone()).into()),
            Err(Errno::NOENT) => return Err(Refusal::NoSuchDevice(info.path.clone()).into()),
            Err(e) => {
                return Err(Error::io(
                    format!("opening {}", info.path.display()),
                    e.into(),
                ));
            }
        };
        let file = File::from(fd);
        let meta = (file.metadata())
            .map_err(|e| Error::io(format!("examining {}", info.path.display()), e))?;
        if !meta.file_type().is_block_device() || split_dev(meta.rdev()) != (info.major, info.minor)
        {
            return Err(Refusal::Changed(info.path.clone()).into());
        }
        let size = size_of(&file)
            .map_err(|e| Error::io(format!("querying {}", info.path.display()), e))?;
        // Another card in the same reader keeps the node's numbers but not its size, and
        // `check` judged the old one.
        if size != info.size {
            return Err(Refusal::Changed(info.path.clone()).into());
        }
        Ok(Device {
            file,
            path: info.path.clone(),
            name: info.name.clone(),
            size,
            logical_sector: info.logical_sector.max(SYSFS_SECTOR as u32),
            unstarted: 0,
            direct_out: Direct::Untried,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open descriptor, still holding the exclusive claim.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Drops the kernel's cached pages of the whole disk (BLKFLSBUF): what was written
    /// through a partition node, e.g. by a mount that just ended, is then read from the
    /// medium, not from older pages cached for the whole-disk node.
    pub fn drop_caches(&self) -> Result<()> {
        // SAFETY: BLKFLSBUF takes no argument.
        unsafe { rustix::ioctl::ioctl(&self.file, NoArg::<BLKFLSBUF>::new()) }
            .map_err(|e| Error::io(format!("flushing {}", self.path.display()), e.into()))
    }

    /// A second descriptor for the same open device (same claim), for positioned I/O.
    pub fn try_clone_file(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", self.path.display()), e))
    }

    /// Kernel name, e.g. `sdb`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Flushes written data to the device (fsync, which also flushes the device's cache).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }

    /// Reads `[offset, offset+len)` from the medium, not the page cache: a second descriptor
    /// with O_DIRECT (reopened through /proc/self/fd, so it is the very same device) and a
    /// buffer aligned for it. For verifying what was written; call `sync` first. The whole
    /// range is held in memory, so verify large images in chunks.
    pub fn read_direct(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let context = || format!("reading {} at {offset}", self.path.display());
        let mut reader = self.direct_reader().map_err(|e| Error::io(context(), e))?;
        let bytes = reader
            .read(offset, len)
            .map_err(|e| Error::io(context(), e))?;
        Ok(bytes.to_vec())
    }

    /// A reader past the page cache (O_DIRECT) with a buffer of its own, for many reads:
    /// one descriptor, and no fresh buffer per read. Each thread reading at once wants its
    /// own.
    pub fn direct_reader(&self) -> io::Result<DirectReader<'_>> {
        Ok(DirectReader {
            dev: self,
            file: self.direct(OFlags::RDONLY)?,
            buf: Aligned::new(0, u64::from(self.logical_sector)),
        })
    }

    /// Writes `bytes` at `offset` past the page cache (O_DIRECT), so that the medium, not a
    /// cached page, receives them now; both must be whole logical sectors. For probing
    /// what a device really stores; `sync` still flushes the device's own cache.
    pub fn write_direct(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let context = || format!("writing {} at {offset}", self.path.display());
        let sector = u64::from(self.logical_sector);
        if !offset.is_multiple_of(sector) || !(bytes.len() as u64).is_multiple_of(sector) {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "not whole sectors");
            return Err(Error::io(context(), e));
        }
        self.bounds(offset, bytes.len() as u64)
            .map_err(|e| Error::io(context(), e))?;
        let writer = self
            .direct(OFlags::WRONLY)
            .map_err(|e| Error::io(context(), e))?;
        let mut raw = Aligned::new(bytes.len(), sector);
        raw.buf().copy_from_slice(bytes);
        writer
            .write_all_at(raw.buf(), offset)
            .map_err(|e| Error::io(context(), e))
    }

    /// The device's logical sector size: the unit of direct I/O.
    pub fn logical_sector(&self) -> u32 {
        self.logical_sector
    }

    /// A second descriptor of the very same device (reopened through /proc/self/fd) with
    /// O_DIRECT and `access`.
    fn direct(&self, access: OFlags) -> io::Result<File> {
        let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let flags = access | OFlags::DIRECT | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::open(path, flags, Mode::empty())?))
    }

    /// The end of `[offset, offset+len)`, or an error if it leaves the device.
    fn bounds(&self, offset: u64, len: u64) -> io::Result<u64> {
        offset
            .checked_add(len)
            .filter(|end| *end <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{offset}+{len} is past the end of the {}-byte {}",
                        self.size,
                        self.path.display()
                    ),
                )
            })
    }

    /// Writes zero buffers: for unaligned edges and devices without BLKZEROOUT.
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.file
                .write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// BLKZEROOUT over a sector-aligned range: the kernel uses the device's write-zeroes
    /// command (or writes zero pages itself) and drops the page cache for the range.
    /// EOPNOTSUPP/EINVAL/ENOTTY mean this device or kernel cannot; then write zeros.
    fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: BLKZEROOUT reads a [start, len] pair of u64 through the pointer.
        let result = unsafe {
            rustix::ioctl::ioctl(
                &self.file,
                Setter::<BLKZEROOUT, [u64; 2]>::new([offset, len]),
            )
        };
        match result {
            Ok(()) => Ok(()),
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY) => self.write_zeros(offset, len),
            Err(e) => Err(e.into()),
        }
    }
}

/// Drops the kernel's cached pages of every partition node of `info` (BLKFLSBUF), so
/// readers of `/dev/sdb1` see what was written through `/dev/sdb`. Best effort.
pub fn drop_partition_caches(info: &DeviceInfo) {
    for p in &info.partitions {
        if let Ok(fd) = rustix::fs::open(&p.path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            // SAFETY: BLKFLSBUF takes no argument.
            let _ = unsafe { rustix::ioctl::ioctl(&fd, NoArg::<BLKFLSBUF>::new()) };
        }
    }
}

impl Device {
    /// Writes a large aligned piece with O_DIRECT; `Ok(false)` when it is not one or this
    /// device does not take direct writes (then it is written through the cache).
    fn write_past_cache(&mut self, offset: u64, bytes: &[u8]) -> io::Result<bool> {
        if bytes.len() < DIRECT_FROM
            || !offset.is_multiple_of(DIRECT_ALIGN)
            || !(bytes.len() as u64).is_multiple_of(DIRECT_ALIGN)
            || !offset.is_multiple_of(u64::from(self.logical_sector))
        {
            return Ok(false);
        }
        if matches!(self.direct_out, Direct::Untried) {
            self.direct_out = match self.direct(OFlags::WRONLY) {
                Ok(f) => Direct::Open(f, Aligned::new(1 << 20, DIRECT_ALIGN)),
                Err(_) => Direct::Refused,
            };
        }
        let Direct::Open(f, buf) = &mut self.direct_out else {
            return Ok(false);
        };
        for (i, piece) in bytes.chunks(1 << 20).enumerate() {
            let at = offset + (i as u64) * (1 << 20);
            let b = &mut buf.buf()[..piece.len()];
            b.copy_from_slice(piece);
            match f.write_all_at(b, at) {
                Ok(()) => {}
                // Nothing of this piece was written yet: the cache takes it, and the rest.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && i == 0 => {
                    self.direct_out = Direct::Refused;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Starts writeback of what is dirty (without waiting for it) once enough was written.
    /// A write error it reports (a medium that is full or failing) is this write's error,
    /// so it is not lost to the final flush.
    fn written(&mut self, len: u64) -> io::Result<()> {
        self.unstarted += len;
        if self.unstarted >= WRITEBACK_EVERY {
            self.unstarted = 0;
            // SAFETY: a plain syscall on an open descriptor; offset 0 and length 0 mean
            // the whole device.
            let r = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Sink for Device {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.bounds(offset, bytes.len() as u64)?;
        if self.write_past_cache(offset, bytes)? {
            return Ok(());
        }
        self.file.write_all_at(bytes, offset)?;
        self.written(bytes.len() as u64)
    }

    /// A card holds whatever it held before, so zeros are really written: the
    /// sector-aligned middle with BLKZEROOUT, the unaligned head and tail as zero buffers.
    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = self.bounds(offset, len)?;
        let sector = u64::from(self.logical_sector);
        let head_end = offset.next_multiple_of(sector).min(end);
        let tail_start = (end - end % sector).max(head_end);
        self.write_zeros(offset, head_end - offset)?;
        if tail_start > head_end {
            self.zero_out(head_end, tail_start - head_end)?;
        }
        self.write_zeros(tail_start, end - tail_start)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// Reads of a device past the page cache into one reused aligned buffer (`direct_reader`).
pub struct DirectReader<'d> {
    dev: &'d Device,
    file: File,
    buf: Aligned,
}

impl DirectReader<'_> {
    /// The `len` bytes at `offset`, read from the medium: the whole logical sectors around
    /// them are read (O_DIRECT wants nothing less).
    pub fn read(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let end = self.dev.bounds(offset, len as u64)?;
        let sector = u64::from(self.dev.logical_sector);
        let start = offset - offset % sector;
        let span = (end.next_multiple_of(sector).min(self.dev.size) - start) as usize;
        if self.buf.len < span {
            self.buf = Aligned::new(span, sector);
        }
        let buf = &mut self.buf.buf()[..span];
        self.file.read_exact_at(buf, start)?;
        let from = (offset - start) as usize;
        Ok(&buf[from..from + len])
    }
}

/// A buffer aligned for O_DIRECT: over-allocated by one alignment unit and used from its
/// aligned part, so no unsafe allocation is needed. 4096 satisfies every DMA alignment the
/// kernel asks of O_DIRECT.
struct Aligned {
    raw: Vec<u8>,
    skip: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize, sector: u64) -> Aligned {
        let align = sector.max(4096) as usize;
        let raw = vec![0u8; len + align];
        let skip = raw.as_ptr().align_offset(align);
        Aligned { raw, skip, len }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.skip..self.skip + self.len]
    }
}
