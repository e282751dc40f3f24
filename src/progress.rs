//! Progress of long writes as events: which phase, which device (none for an image file),
//! bytes done of a total. Building, flashing and upgrading report through the same callback
//! type; the command line turns the events into bars or JSON lines.
//!
//! Not for rendering: the library only emits events.

use std::path::PathBuf;

use serde::Serialize;

/// What the bytes counted are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Being written to the target.
    Write,
    /// Being read back from the medium and compared.
    Verify,
    /// Being downloaded (an image from a URL; no device).
    Download,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Write => "write",
            Phase::Verify => "verify",
            Phase::Download => "download",
        }
    }
}

/// One step of progress.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub phase: Phase,
    /// The device the bytes go to; `None` when writing an image file.
    pub device: Option<PathBuf>,
    pub done: u64,
    pub total: u64,
}

/// Receives events; shared by every writer thread, so it must be `Sync`.
pub type Callback<'a> = &'a (dyn Fn(&Event) + Sync);

/// A callback that drops every event.
pub fn ignore(_: &Event) {}
