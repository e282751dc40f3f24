//! Making the kernel see the partitions just written: BLKRRPART (retried while udev briefly
//! holds the disk) and, when the kernel cannot parse the table or does not scan the disk,
//! BLKPG delete/add as `partx` does; then a bounded wait for the /dev nodes.
//!
//! Not for: writing the table (the plan and the table writers do that) or creating device
//! nodes: nodes that do not appear are reported, never made.

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::ioctl::{NoArg, Opcode, Setter, opcode};
use serde::Serialize;

use super::discover::{SYSFS_SECTOR, is_block_device, kernel_partitions};
use super::{Device, PartInfo};
use crate::error::{Error, Result};

// Block-layer ioctls from <linux/fs.h> and <linux/blkpg.h>.
const BLKRRPART: Opcode = opcode::none(0x12, 95);
const BLKPG: Opcode = opcode::none(0x12, 105);
const BLKPG_ADD_PARTITION: i32 = 1;
const BLKPG_DEL_PARTITION: i32 = 2;

/// How the kernel came to know the new partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RereadMethod {
    /// BLKRRPART: the kernel parsed the new table itself.
    Rescan,
    /// BLKPG delete/add, as `partx -d`/`partx -a` do: for kernels without a parser for the
    /// table, or disks the kernel does not scan (loop devices without partscan).
    Blkpg,
}

#[derive(Debug, Clone, Serialize)]
pub struct RereadOutcome {
    pub method: RereadMethod,
    /// Why BLKRRPART was not enough, when BLKPG was used.
    pub rescan_note: Option<String>,
    /// `/dev` nodes of the planned partitions, in plan order.
    pub nodes: Vec<PathBuf>,
    /// Partitions the kernel has (sysfs shows them) whose /dev node did not appear in time:
    /// nothing populates /dev here. They are reported, never created.
    pub missing_nodes: Vec<PathBuf>,
}

/// A partition the kernel should have once the table is written. Ordered by number first, so
/// sorted lists of them compare as the kernel lists partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedPart {
    pub number: u32,
    /// Offset from the start of the disk, in bytes.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl From<&PartInfo> for PlannedPart {
    fn from(p: &PartInfo) -> Self {
        PlannedPart {
            number: p.number,
            start: p.start,
            size: p.size,
        }
    }
}

/// How long to wait for /dev nodes after the kernel knows the partitions.
const NODE_WAIT: Duration = Duration::from_secs(2);

/// Makes the kernel's view of `dev`'s partitions equal `parts`: BLKRRPART first (retried
/// while briefly busy, e.g. udev probing the disk), and when the kernel then does not show
/// exactly `parts`, BLKPG: delete every partition it has and add each planned one.
pub fn reread_partitions(dev: &Device, parts: &[PlannedPart]) -> Result<RereadOutcome> {
    validate(dev, parts)?;
    let rescan = rescan(dev);
    let (method, rescan_note) = match rescan {
        Ok(()) if kernel_parts(dev)? == sorted(parts) => (RereadMethod::Rescan, None),
        Ok(()) => {
            let note = "BLKRRPART succeeded but the kernel did not find the planned partitions";
            (RereadMethod::Blkpg, Some(note.to_string()))
        }
        Err(e) => (RereadMethod::Blkpg, Some(format!("BLKRRPART: {e}"))),
    };
    if method == RereadMethod::Blkpg {
        replace_with_blkpg(dev, parts)?;
    }
    let (nodes, missing_nodes) = wait_for_nodes(dev, parts);
    Ok(RereadOutcome {
        method,
        rescan_note,
        nodes,
        missing_nodes,
    })
}

/// BLKPG works in bytes but the kernel keeps 512-byte sectors: refuse what it would round.
fn validate(dev: &Device, parts: &[PlannedPart]) -> Result<()> {
    for &PlannedPart {
        number,
        start,
        size,
    } in parts
    {
        let aligned = start % SYSFS_SECTOR == 0 && size % SYSFS_SECTOR == 0;
        let inside = start.checked_add(size).is_some_and(|end| end <= dev.size);
        if number == 0 || size == 0 || !aligned || !inside {
            return Err(Error::Usage(format!(
                "partition {number} ({start}+{size}) is not a valid partition of the {}-byte {}",
                dev.size,
                dev.path.display()
            )));
        }
    }
    Ok(())
}

fn rescan(dev: &Device) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    retry_busy(|| unsafe { rustix::ioctl::ioctl(&dev.file, NoArg::<BLKRRPART>::new()) })
}

/// Retries `op` while it fails with EBUSY, about half a second in all: udev (where it runs)
/// briefly opens a disk's partitions to probe them after every change.
fn retry_busy(mut op: impl FnMut() -> rustix::io::Result<()>) -> io::Result<()> {
    for _ in 0..5 {
        match op() {
            Err(Errno::BUSY) => std::thread::sleep(Duration::from_millis(100)),
            other => return other.map_err(io::Error::from),
        }
    }
    op().map_err(io::Error::from)
}

fn replace_with_blkpg(dev: &Device, parts: &[PlannedPart]) -> Result<()> {
    let context = |what: &str, n: u32| format!("{what} partition {n} of {}", dev.path.display());
    for old in kernel_parts(dev)? {
        let gone = PlannedPart {
            start: 0,
            size: 0,
            ..old
        };
        blkpg(dev, BLKPG_DEL_PARTITION, &gone)
            .map_err(|e| Error::io(context("removing old", old.number), e))?;
    }
    for part in parts {
        blkpg(dev, BLKPG_ADD_PARTITION, part)
            .map_err(|e| Error::io(context("adding", part.number), e))?;
    }
    if kernel_parts(dev)? != sorted(parts) {
        let msg = "the kernel's partitions differ from the plan after BLKPG";
        return Err(Error::io(
            format!("updating partitions of {}", dev.path.display()),
            io::Error::other(msg),
        ));
    }
    Ok(())
}

/// `struct blkpg_partition` from <linux/blkpg.h>; the names are unused by the kernel.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`.
#[derive(Clone, Copy)]
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut c_void,
}

fn blkpg(dev: &Device, op: i32, p: &PlannedPart) -> io::Result<()> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "partition out of range");
    let mut part = BlkpgPartition {
        start: i64::try_from(p.start).map_err(|_| invalid())?,
        length: i64::try_from(p.size).map_err(|_| invalid())?,
        pno: i32::try_from(p.number).map_err(|_| invalid())?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: size_of_val(&part) as i32,
        data: (&raw mut part).cast(),
    };
    // SAFETY: BLKPG reads a blkpg_ioctl_arg whose `data` points at a blkpg_partition of
    // `datalen` bytes; `part` outlives the call and the kernel only reads it.
    retry_busy(|| unsafe {
        rustix::ioctl::ioctl(&dev.file, Setter::<BLKPG, BlkpgIoctlArg>::new(arg))
    })
}

/// The partitions the kernel has for `dev`, sorted by number.
fn kernel_parts(dev: &Device) -> Result<Vec<PlannedPart>> {
    let parts = kernel_partitions(&dev.name)?;
    Ok(parts.iter().map(PlannedPart::from).collect())
}

fn sorted(parts: &[PlannedPart]) -> Vec<PlannedPart> {
    let mut v = parts.to_vec();
    v.sort();
    v
}

/// Kernel name of partition `number`: a digit-final disk name takes a `p` (mmcblk0p1,
/// nvme0n1p1, loop0p1), others do not (sdb1).
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// Waits (bounded) for devtmpfs/udev to create the partitions' /dev nodes.
fn wait_for_nodes(dev: &Device, parts: &[PlannedPart]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let nodes: Vec<PathBuf> = parts
        .iter()
        .map(|p| Path::new("/dev").join(partition_name(&dev.name, p.number)))
        .collect();
    let deadline = Instant::now() + NODE_WAIT;
    loop {
        let missing: Vec<PathBuf> = nodes
            .iter()
            .filter(|p| !is_block_device(p))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return (nodes, missing);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("sdb", 1), "sdb1");
        assert_eq!(partition_name("mmcblk0", 2), "mmcblk0p2");
        assert_eq!(partition_name("nvme0n1", 3), "nvme0n1p3");
        assert_eq!(partition_name("loop7", 1), "loop7p1");
    }
}
