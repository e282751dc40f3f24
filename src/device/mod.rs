//! Block devices as write targets: finding out what a device is (`inspect`, `list`), deciding
//! whether it is safe to overwrite (`check`), writing it (`Device`, a `Sink`) and making the
//! kernel see its new partitions (`reread_partitions`). Everything that knows about sysfs,
//! /proc mount tables and block ioctls lives here, so the rest of the crate never does.
//!
//! Not for: choosing what to write (the plan does that), prompting or printing (the CLI does
//! that), or formatting partitions. It never runs external programs and never creates device
//! nodes: a path that is missing or is not a block device is refused, not made.
//!
//! Linux only: the facts come from /sys/block, /sys/dev/block, /proc/self/mountinfo and
//! /proc/swaps, and devices are identified by major:minor, never by name prefix.

mod discover;
mod io;
mod policy;
mod reread;

pub use discover::{DeviceInfo, PartInfo, SWAP, Transport, inspect, list};
pub use io::{Device, DirectReader, drop_partition_caches};
pub use policy::{Refusal, SafetyPolicy, check, check_unmounted};
pub use reread::{PlannedPart, RereadMethod, RereadOutcome, partition_name, reread_partitions};
