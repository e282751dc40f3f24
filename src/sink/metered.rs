//! A sink wrapper that counts the bytes passing to its target and reports them as
//! `progress::Phase::Write` events, for a bar or JSON lines.
//!
//! Not for rendering progress (the callback does) or recording writes (`tracking` does).

use std::path::PathBuf;

use super::Sink;
use crate::progress::{Callback, Event, Phase};

/// Which writes count towards the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Data only: the total is content bytes, the zeros a writer declares are not part of it.
    Data,
    /// Data and declared zeros: the total is every byte of an image.
    All,
}

pub struct Metered<'a, S: Sink> {
    inner: S,
    on: Callback<'a>,
    /// The device named in the events (`None`: an image file).
    device: Option<PathBuf>,
    count: Count,
    done: u64,
    total: u64,
}

impl<'a, S: Sink> Metered<'a, S> {
    pub fn new(
        inner: S,
        on: Callback<'a>,
        device: Option<PathBuf>,
        count: Count,
        total: u64,
    ) -> Self {
        Metered {
            inner,
            on,
            device,
            count,
            done: 0,
            total,
        }
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    fn report(&self) {
        (self.on)(&Event {
            phase: Phase::Write,
            device: self.device.clone(),
            done: self.done.min(self.total),
            total: self.total,
        });
    }
}

impl<S: Sink> Sink for Metered<'_, S> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.data(offset, bytes)?;
        self.done += bytes.len() as u64;
        self.report();
        Ok(())
    }

    fn zeros(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.zeros(offset, len)?;
        if self.count == Count::All {
            self.done += len;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn sequential(&self) -> bool {
        self.inner.sequential()
    }

    fn hold(&mut self, on: bool) -> std::io::Result<()> {
        self.inner.hold(on)
    }
}
