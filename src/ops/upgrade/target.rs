//! Opening what an upgrade edits: a whole-disk device (checked against the safety policy,
//! held exclusively, its cache dropped so the card is read as it is) or a raw image file
//! (compressed ones refused: they cannot be edited in place). Also finishing with it: the
//! read-back and the partition caches. Not what is read from it or written to it.

use crate::progress;
use crate::sink::tracking::{Written, read_back};
use std::path::{Path, PathBuf};

use crate::device::{self, Device, DeviceInfo, SafetyPolicy};
use crate::error::{Error, Result};
use crate::image::file::Format;

use super::disk::GuardedDisk;

/// How the target is opened.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Accept disks that are not removable, USB, SD or MMC.
    pub allow_fixed_disk: bool,
    /// Opened to be written (else read-only: a dry run).
    pub write: bool,
    /// Devices: read every write back afterwards.
    pub verify: bool,
}

enum Medium {
    Image,
    Device {
        info: Box<DeviceInfo>,
        /// The exclusive claim, when opened to be written.
        held: Option<Device>,
    },
}

/// The opened card or image.
pub struct Target {
    pub disk: GuardedDisk,
    medium: Medium,
    write: bool,
    verify: bool,
}

/// Opens `path` as `opts` says; writes nothing.
pub fn open(path: &Path, opts: OpenOptions) -> Result<Target> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let (disk, medium) = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        open_device(path, opts)?
    } else if meta.is_file() {
        (open_image(path, meta.len(), opts)?, Medium::Image)
    } else {
        return Err(Error::Usage(format!(
            "{}: neither a block device nor an image file",
            path.display()
        )));
    };
    Ok(Target {
        disk,
        medium,
        write: opts.write,
        verify: opts.verify,
    })
}

fn open_device(path: &Path, opts: OpenOptions) -> Result<(GuardedDisk, Medium)> {
    let info = device::inspect(path)?;
    device::check(
        &info,
        &SafetyPolicy {
            allow_fixed: opts.allow_fixed_disk,
            min_size: 0,
        },
    )?;
    if !opts.write {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let disk = GuardedDisk::new(file, path, info.size);
        return Ok((
            disk,
            Medium::Device {
                info: Box::new(info),
                held: None,
            },
        ));
    }
    let dev = Device::open_exclusive(&info)?;
    dev.drop_caches()?;
    let mut disk = GuardedDisk::new(dev.try_clone_file()?, path, info.size);
    if opts.verify {
        disk.track_writes();
    }
    Ok((
        disk,
        Medium::Device {
            info: Box::new(info),
            held: Some(dev),
        },
    ))
}

fn open_image(path: &Path, len: u64, opts: OpenOptions) -> Result<GuardedDisk> {
    // Any compression the image formats name, supported for writing or not.
    if !matches!(Format::from_path(path, None), Ok(Format::Raw)) {
        return Err(Error::Usage(format!(
            "{}: a compressed image cannot be edited in place; decompress it first",
            path.display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(opts.write)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    Ok(GuardedDisk::new(file, path, len))
}

impl Target {
    pub fn on_device(&self) -> bool {
        matches!(self.medium, Medium::Device { .. })
    }

    pub fn writable(&self) -> bool {
        self.write
    }

    pub fn path(&self) -> PathBuf {
        self.disk.path().to_path_buf()
    }

    /// After the writes: a device's are read back (unless not asked) and its partitions'
    /// caches dropped. Returns whether the writes were read back.
    pub fn finish(self) -> Result<bool> {
        let Target {
            disk,
            medium,
            verify,
            ..
        } = self;
        let Medium::Device { info, held } = medium else {
            return Ok(false);
        };
        let mut verified = false;
        if let Some(dev) = held.filter(|_| verify) {
            let none = Written::new();
            read_back(&dev, disk.tracked().unwrap_or(&none), &progress::ignore)?;
            verified = true;
        }
        drop(disk);
        device::drop_partition_caches(&info);
        Ok(verified)
    }
}
