//! Counts the bytes reaching a sink and reports them as `progress::Phase::Write` events,
//! for a bar or JSON lines.
//!
//! Not for rendering progress (the callback does) or recording writes (`tracking` does).

use std::path::PathBuf;

use super::{Observed, Observer, Sink};
use crate::progress::{Callback, Event, Phase};

/// Which writes count towards the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Data only: the total is content bytes, the zeros a writer declares are not part of it.
    Data,
    /// Data and declared zeros: the total is every byte of an image.
    All,
}

/// The counter and where its events go.
pub struct Meter<'a> {
    on: Callback<'a>,
    /// The device named in the events (`None`: an image file).
    device: Option<PathBuf>,
    count: Count,
    done: u64,
    total: u64,
}

/// A sink whose writes are counted and reported.
pub type Metered<'a, S> = Observed<S, Meter<'a>>;

/// Wraps `inner` so that its writes are reported to `on`, of `total` bytes.
pub fn metered<'a, S: Sink>(
    inner: S,
    on: Callback<'a>,
    device: Option<PathBuf>,
    count: Count,
    total: u64,
) -> Metered<'a, S> {
    Observed {
        inner,
        observer: Meter {
            on,
            device,
            count,
            done: 0,
            total,
        },
    }
}

impl Meter<'_> {
    /// Counts `len` bytes written and reports the progress.
    fn wrote(&mut self, len: u64) {
        self.done += len;
        (self.on)(&Event {
            phase: Phase::Write,
            device: self.device.clone(),
            done: self.done.min(self.total),
            total: self.total,
        });
    }
}

impl Observer for Meter<'_> {
    fn data(&mut self, _offset: u64, bytes: &[u8]) {
        self.wrote(bytes.len() as u64);
    }

    fn zeros(&mut self, _offset: u64, len: u64) {
        if self.count == Count::All {
            self.done += len;
        }
    }

    fn takes_copies(&self) -> bool {
        true
    }

    fn copied(&mut self, _offset: u64, len: u64) {
        self.wrote(len);
    }
}
