//! Whether a device may be overwritten: the refusals (missing, not a block device, a
//! partition, the running system, mounted, swap, held by device-mapper or md, read-only,
//! fixed, too small, counterfeit, busy, changed) and `check`, which names the first that applies.
//!
//! Not for: finding the facts (discover.rs gathers them into a `DeviceInfo`) or enforcing
//! them at open time (io.rs claims the device exclusively, which the kernel refuses while it
//! is in use). Nothing here touches the system.

use std::path::PathBuf;

use super::discover::{SWAP, SYSTEM_MOUNTS};
use super::{DeviceInfo, Transport};
use crate::error::Error;
use crate::units::{bytes, human};

/// Why a device is not written. Each message is one line naming the device.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no such device: {} — is the card inserted?", .0.display())]
    NoSuchDevice(PathBuf),
    #[error("{} is not a block device", .0.display())]
    NotBlockDevice(PathBuf),
    #[error("{} is a partition; give the whole disk {}", .partition.display(), .disk.display())]
    Partition { partition: PathBuf, disk: PathBuf },
    #[error("{} holds the running system ({uses}); refusing to overwrite it", .device.display())]
    System { device: PathBuf, uses: String },
    #[error("{} is mounted at {mountpoint}; unmount it first", .device.display())]
    Mounted { device: PathBuf, mountpoint: String },
    #[error("{} is in use as swap; swapoff it first", .device.display())]
    Swap { device: PathBuf },
    #[error("{} is in use by {holder} (device-mapper, LVM or RAID); stop that first", .device.display())]
    InUse { device: PathBuf, holder: String },
    #[error("{} is read-only (is the card's lock switch on?)", .0.display())]
    ReadOnly(PathBuf),
    #[error(
        "{} is a fixed disk ({transport}, not removable, USB, SD or MMC); fixed disks must be allowed explicitly",
        .device.display()
    )]
    Fixed {
        device: PathBuf,
        transport: Transport,
    },
    #[error("image needs {} bytes, {} has {}", bytes(*.needs), .device.display(), bytes(*.has))]
    TooSmall {
        device: PathBuf,
        needs: u64,
        has: u64,
    },
    #[error(
        "{} claims {} but stores only {} ({} bytes): {how}; a counterfeit or failing card, refused",
        .device.display(), human(*.claimed), human(*.real), bytes(*.real)
    )]
    Counterfeit {
        device: PathBuf,
        claimed: u64,
        real: u64,
        how: String,
    },
    #[error("{} is busy (mounted or in use)", .0.display())]
    Busy(PathBuf),
    #[error("{} is no longer the device that was inspected; inspect it again", .0.display())]
    Changed(PathBuf),
}

impl From<Refusal> for Error {
    /// A refused device is bad input, not a failed operation.
    fn from(refusal: Refusal) -> Self {
        Error::Usage(refusal.to_string())
    }
}

/// What the caller is willing to overwrite.
#[derive(Debug, Clone, Default)]
pub struct SafetyPolicy {
    /// Allow disks that are not removable, USB, SD, MMC or loop.
    pub allow_fixed: bool,
    /// Bytes the image needs.
    pub min_size: u64,
}

/// Whether `info` may be overwritten; the first reason not to, in order of how much it
/// matters to the user (their running system first, then data in use, then fit).
pub fn check(info: &DeviceInfo, policy: &SafetyPolicy) -> Result<(), Refusal> {
    if info.is_system {
        return Err(system_refusal(info));
    }
    check_mounts(info)?;
    if let Some(holder) = info.holders.first() {
        return Err(Refusal::InUse {
            device: info.path.clone(),
            holder: holder.clone(),
        });
    }
    if info.read_only {
        return Err(Refusal::ReadOnly(info.path.clone()));
    }
    if !policy.allow_fixed && !info.is_card_like() {
        return Err(Refusal::Fixed {
            device: info.path.clone(),
            transport: info.transport,
        });
    }
    if info.size < policy.min_size {
        return Err(Refusal::TooSmall {
            device: info.path.clone(),
            needs: policy.min_size,
            has: info.size,
        });
    }
    Ok(())
}

/// Whether `info` may be read as a consistent whole (`backup`): nothing on it mounted or
/// in use as swap, so no filesystem changes while it is read.
pub fn check_unmounted(info: &DeviceInfo) -> Result<(), Refusal> {
    check_mounts(info)
}

fn system_refusal(info: &DeviceInfo) -> Refusal {
    let all = (info.mountpoints.iter()).chain(info.partitions.iter().flat_map(|p| &p.mountpoints));
    let uses: Vec<&str> = all
        .filter(|m| m.as_str() == SWAP || SYSTEM_MOUNTS.contains(&m.as_str()))
        .map(|m| if m == SWAP { "swap" } else { m.as_str() })
        .collect();
    Refusal::System {
        device: info.path.clone(),
        uses: if uses.is_empty() {
            // Reached through device-mapper or md, so no mount names this disk directly.
            "/, /boot, /usr or swap, through a stacked device".to_string()
        } else {
            uses.join(", ")
        },
    }
}

fn check_mounts(info: &DeviceInfo) -> Result<(), Refusal> {
    let whole = std::iter::once((&info.path, &info.mountpoints));
    let parts = info.partitions.iter().map(|p| (&p.path, &p.mountpoints));
    for (device, mountpoints) in whole.chain(parts) {
        let Some(mountpoint) = mountpoints.first() else {
            continue;
        };
        let device = device.clone();
        return Err(if mountpoint == SWAP {
            Refusal::Swap { device }
        } else {
            Refusal::Mounted {
                device,
                mountpoint: mountpoint.clone(),
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::PartInfo;

    fn card(mountpoints: &[&str]) -> DeviceInfo {
        DeviceInfo {
            serial: None,
            path: "/dev/sdb".into(),
            name: "sdb".into(),
            major: 8,
            minor: 16,
            size: 16_000_000_000,
            logical_sector: 512,
            physical_sector: 512,
            removable: true,
            transport: Transport::Usb,
            model: None,
            vendor: None,
            read_only: false,
            partitions: vec![PartInfo {
                path: "/dev/sdb1".into(),
                name: "sdb1".into(),
                number: 1,
                major: 8,
                minor: 17,
                start: 1 << 20,
                size: 1 << 30,
                mountpoints: mountpoints.iter().map(|m| m.to_string()).collect(),
            }],
            mountpoints: Vec::new(),
            holders: Vec::new(),
            is_system: false,
        }
    }

    #[test]
    fn check_names_the_reason() {
        let policy = SafetyPolicy {
            allow_fixed: false,
            min_size: 1 << 30,
        };
        assert!(check(&card(&[]), &policy).is_ok());
        let msg = check(&card(&["/media/x"]), &policy)
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "/dev/sdb1 is mounted at /media/x; unmount it first");
        let msg = check(&card(&[SWAP]), &policy).unwrap_err().to_string();
        assert_eq!(msg, "/dev/sdb1 is in use as swap; swapoff it first");
        let mut fixed = card(&[]);
        (fixed.removable, fixed.transport) = (false, Transport::Ata);
        assert!(matches!(check(&fixed, &policy), Err(Refusal::Fixed { .. })));
        let allow = SafetyPolicy {
            allow_fixed: true,
            ..policy.clone()
        };
        assert!(check(&fixed, &allow).is_ok());
        let big = SafetyPolicy {
            min_size: 20_000_000_000,
            ..policy
        };
        let msg = check(&card(&[]), &big).unwrap_err().to_string();
        assert_eq!(
            msg,
            "image needs 20,000,000,000 bytes, /dev/sdb has 16,000,000,000"
        );
    }

    #[test]
    fn system_disk_is_refused_first() {
        let mut info = card(&["/"]);
        info.is_system = true;
        let msg = check(&info, &SafetyPolicy::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "/dev/sdb holds the running system (/); refusing to overwrite it"
        );
    }
}
