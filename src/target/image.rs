//! A sparse image file: created under a temporary name beside the destination, written with
//! positioned writes (zeros are left as holes), fsynced and renamed only on success. Dropped
//! without `commit`, it removes itself, so a failed build leaves no output behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Sink;
use crate::error::{Error, Result};

pub struct ImageFile {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    len: u64,
    written: u64,
    committed: bool,
}

impl ImageFile {
    /// Creates `.NAME.partial-PID` beside `dest`, `len` bytes long and all holes.
    pub fn create(dest: &Path, len: u64) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{} is not a file name", dest.display())))?;
        if dest.is_dir() {
            return Err(Error::Usage(format!("{} is a directory", dest.display())));
        }
        let tmp = dest.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let img = ImageFile {
            file,
            tmp,
            dest: dest.to_path_buf(),
            len,
            written: 0,
            committed: false,
        };
        img.file
            .set_len(len)
            .map_err(|e| Error::io(format!("sizing {}", img.tmp.display()), e))?;
        Ok(img)
    }

    /// Bytes actually written (the rest of the file is holes).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes to stable storage and moves the file to its final name.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.tmp.display()), e))?;
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(|e| Error::io(format!("renaming to {}", self.dest.display()), e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for ImageFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Sink for ImageFile {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// A new file reads as zeros wherever nothing was written, and every region is written
    /// once, so there is nothing to do.
    fn zeros(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.len
    }
}
