//! Where a plan lands. A `Sink` takes positioned writes and "these bytes must read as zero"
//! declarations; each target decides how to honour both (a fresh sparse file leaves holes).
//! `Window` confines a writer to one region, so a filesystem writer never sees the whole disk.
//! `Observed` tells an observer of every write that went through (the write record of
//! `tracking`, the progress meter of `metered`).
//!
//! Targets decide nothing about content.

use std::io;

pub mod metered;
pub mod offload;
pub mod stream;
pub mod tracking;

/// A byte-addressed destination.
pub trait Sink {
    /// Writes `bytes` at `offset`.
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Declares `[offset, offset+len)` must read as zeros.
    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Total size in bytes.
    fn size(&self) -> u64;
    /// Whether writes must arrive in ascending offset order (a stream).
    fn sequential(&self) -> bool {
        false
    }
    /// While on, writes may come in any order and are kept until it is turned off; after
    /// that, writes ascend again. Writers announce their out-of-order phases with it.
    fn hold(&mut self, _on: bool) -> io::Result<()> {
        Ok(())
    }
    /// Announces that the next writes from `offset` are one file's whole content: `len`
    /// bytes, written in order without gaps, whose SHA-256 the writer records itself. A
    /// stream that hashes what passes leaves them to that hash (each byte hashed once).
    /// Only a hint: a sink may ignore it.
    fn file_content(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Copies `len` bytes of `src` from `src_at` to `offset` without them passing through
    /// this process (in the kernel: `copy_file_range`, a reflink where the filesystem
    /// shares blocks), for announced file content only. `Ok(false)`: this sink cannot, and
    /// nothing was written; the caller writes the bytes itself.
    fn copy_file(
        &mut self,
        _offset: u64,
        _src: &std::fs::File,
        _src_at: u64,
        _len: u64,
    ) -> io::Result<bool> {
        Ok(false)
    }
}

impl<T: Sink + ?Sized> Sink for &mut T {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        (**self).data(offset, bytes)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        (**self).zeros(offset, len)
    }

    fn size(&self) -> u64 {
        (**self).size()
    }

    fn sequential(&self) -> bool {
        (**self).sequential()
    }

    fn hold(&mut self, on: bool) -> io::Result<()> {
        (**self).hold(on)
    }

    fn file_content(&mut self, offset: u64, len: u64) -> io::Result<()> {
        (**self).file_content(offset, len)
    }

    fn copy_file(
        &mut self,
        offset: u64,
        src: &std::fs::File,
        src_at: u64,
        len: u64,
    ) -> io::Result<bool> {
        (**self).copy_file(offset, src, src_at, len)
    }
}

/// Told of every write that reached a sink (after it succeeded): recorders, meters.
pub trait Observer {
    fn data(&mut self, offset: u64, bytes: &[u8]);
    fn zeros(&mut self, offset: u64, len: u64);
    /// Whether `copied` is enough (the observer needs no bytes); if not, copies through
    /// this sink are refused and the bytes are written.
    fn takes_copies(&self) -> bool {
        false
    }
    /// `len` bytes were copied to `offset` without passing through this process.
    fn copied(&mut self, _offset: u64, _len: u64) {}
}

/// A sink that passes every write to `inner` and then tells `observer`.
pub struct Observed<S, O> {
    pub inner: S,
    pub observer: O,
}

impl<S: Sink, O: Observer> Sink for Observed<S, O> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.inner.data(offset, bytes)?;
        self.observer.data(offset, bytes);
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.zeros(offset, len)?;
        self.observer.zeros(offset, len);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn sequential(&self) -> bool {
        self.inner.sequential()
    }

    fn hold(&mut self, on: bool) -> io::Result<()> {
        self.inner.hold(on)
    }

    fn file_content(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.file_content(offset, len)
    }

    fn copy_file(
        &mut self,
        offset: u64,
        src: &std::fs::File,
        src_at: u64,
        len: u64,
    ) -> io::Result<bool> {
        if !self.observer.takes_copies() || !self.inner.copy_file(offset, src, src_at, len)? {
            return Ok(false);
        }
        self.observer.copied(offset, len);
        Ok(true)
    }
}

/// A region `[base, base+len)` of another sink, addressed from 0.
pub struct Window<'a> {
    inner: &'a mut dyn Sink,
    base: u64,
    len: u64,
}

impl<'a> Window<'a> {
    pub fn new(inner: &'a mut dyn Sink, base: u64, len: u64) -> io::Result<Self> {
        if base.checked_add(len).is_none_or(|end| end > inner.size()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "region {base}+{len} is outside the {}-byte target",
                    inner.size()
                ),
            ));
        }
        Ok(Window { inner, base, len })
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write at {offset}+{len} leaves the {}-byte region",
                    self.len
                ),
            ));
        }
        Ok(())
    }
}

impl Sink for Window<'_> {
    fn sequential(&self) -> bool {
        self.inner.sequential()
    }

    fn hold(&mut self, on: bool) -> io::Result<()> {
        self.inner.hold(on)
    }

    fn file_content(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        self.inner.file_content(self.base + offset, len)
    }

    fn copy_file(
        &mut self,
        offset: u64,
        src: &std::fs::File,
        src_at: u64,
        len: u64,
    ) -> io::Result<bool> {
        self.check(offset, len)?;
        self.inner.copy_file(self.base + offset, src, src_at, len)
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.check(offset, bytes.len() as u64)?;
        self.inner.data(self.base + offset, bytes)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        self.inner.zeros(self.base + offset, len)
    }

    fn size(&self) -> u64 {
        self.len
    }
}

impl mkext4::RegionSink for Window<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        Sink::data(self, offset, bytes)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        Sink::zeros(self, offset, len)
    }
}

/// An in-memory sink, for tests and small images.
#[derive(Debug, Default)]
pub struct MemSink {
    pub buf: Vec<u8>,
}

impl MemSink {
    pub fn new(len: usize) -> Self {
        MemSink { buf: vec![0; len] }
    }
}

impl Sink for MemSink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        self.buf
            .get_mut(o..o + bytes.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "outside buffer"))?
            .copy_from_slice(bytes);
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let o = offset as usize;
        self.buf
            .get_mut(o..o + len as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "outside buffer"))?
            .fill(0);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.buf.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_translates_and_confines() {
        let mut m = MemSink::new(16);
        let mut w = Window::new(&mut m, 4, 8).unwrap();
        w.data(0, b"ab").unwrap();
        assert!(w.data(7, b"xy").is_err());
        assert!(w.zeros(8, 1).is_err());
        assert_eq!(&m.buf[4..6], b"ab");
        assert!(Window::new(&mut m, 10, 8).is_err());
    }
}
