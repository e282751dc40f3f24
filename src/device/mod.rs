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
//! /proc/swaps, and devices are identified by major:minor, never by name prefix, so /dev/sdb1
//! being mounted says nothing about /dev/sdb10 and /dev/sda says nothing about /dev/sdaa.

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{Getter, NoArg, Opcode, Setter, opcode};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::units::bytes;

/// Sysfs reports partition starts and sizes, and `size`, in these units whatever the device's
/// own sector size is.
const SYSFS_SECTOR: u64 = 512;

/// Mount points whose device is "the running system": overwriting it would pull the floor
/// out from under the machine doing the flashing.
const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi", "/boot/firmware", "/efi", "/usr"];

/// How lsblk marks a device in use as swap; kept so a refusal can tell swap from a mount.
pub const SWAP: &str = "[SWAP]";

// Block-layer ioctls from <linux/fs.h> and <linux/blkpg.h>.
const BLKRRPART: Opcode = opcode::none(0x12, 95);
const BLKGETSIZE64: Opcode = opcode::read::<u64>(0x12, 114);
/// `_IO(0x12, 127)` although it takes a pointer to `[start, len]`: the kernel declared it
/// without a direction, so it is issued as a pointer "setter" with a no-direction opcode.
const BLKZEROOUT: Opcode = opcode::none(0x12, 127);
const BLKPG: Opcode = opcode::none(0x12, 105);
const BLKFLSBUF: Opcode = opcode::none(0x12, 97);
const BLKPG_ADD_PARTITION: i32 = 1;
const BLKPG_DEL_PARTITION: i32 = 2;

/// What a device is attached through, from its sysfs path and name: a hint for "is this the
/// card I just inserted", not a guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Usb,
    /// Built-in eMMC (an mmcblk device whose card type is MMC).
    Mmc,
    /// An SD card in a built-in (MMC host) slot.
    Sd,
    Nvme,
    Ata,
    Loop,
    Virtio,
    /// Device-mapper or md RAID: built on other disks, listed so nothing is hidden, never a card.
    Virtual,
    Unknown,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Transport::Usb => "usb",
            Transport::Mmc => "mmc",
            Transport::Sd => "sd",
            Transport::Nvme => "nvme",
            Transport::Ata => "ata",
            Transport::Loop => "loop",
            Transport::Virtio => "virtio",
            Transport::Virtual => "virtual",
            Transport::Unknown => "unknown",
        };
        f.write_str(name)
    }
}

/// One partition the kernel currently knows on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartInfo {
    /// `/dev/NAME` (the node may be missing where nothing populates /dev).
    pub path: PathBuf,
    pub name: String,
    pub number: u32,
    pub major: u32,
    pub minor: u32,
    /// Offset from the start of the disk, in bytes.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where it is mounted; `[SWAP]` when it is active swap.
    pub mountpoints: Vec<String>,
}

/// A whole disk and everything that makes it unsafe to overwrite.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub path: PathBuf,
    /// Kernel name, e.g. `sdb`, `mmcblk0`, `loop3`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// Bytes.
    pub size: u64,
    pub logical_sector: u32,
    pub physical_sector: u32,
    /// The kernel's removable flag (media can change); many SD slots and USB disks say 0.
    pub removable: bool,
    pub transport: Transport,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub read_only: bool,
    pub partitions: Vec<PartInfo>,
    /// Where the whole disk itself is mounted; `[SWAP]` when it is active swap.
    pub mountpoints: Vec<String>,
    /// Kernel devices stacked on the disk or its partitions (dm-0, md127, ...).
    pub holders: Vec<String>,
    /// Backs /, /boot, /usr or active swap, directly or through device-mapper/md.
    pub is_system: bool,
}

impl DeviceInfo {
    /// Removable, USB, SD or MMC, or a loop device. Loop devices count so tests (and writing
    /// into an image attached with losetup) need no override: a loop device can only
    /// overwrite the file the user attached to it.
    pub fn is_card_like(&self) -> bool {
        self.removable
            || matches!(
                self.transport,
                Transport::Usb | Transport::Sd | Transport::Mmc | Transport::Loop
            )
    }
}

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

// ---------------------------------------------------------------------------------------
// Inspecting

/// Describes the whole disk at `path` (a /dev node or a symlink to one, such as
/// /dev/disk/by-id/...). Refuses missing paths, non-block files and partitions.
pub fn inspect(path: &Path) -> Result<DeviceInfo> {
    // `metadata` follows symlinks, so /dev/disk/by-id links work; it never creates anything.
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Refusal::NoSuchDevice(path.to_path_buf()).into());
        }
        Err(e) => return Err(Error::io(format!("examining {}", path.display()), e)),
    };
    if !meta.file_type().is_block_device() {
        return Err(Refusal::NotBlockDevice(path.to_path_buf()).into());
    }
    let (major, minor) = split_dev(meta.rdev());
    let node = sysfs_node(major, minor)?;
    if node.join("partition").exists() {
        let disk = node.parent().and_then(Path::file_name).ok_or_else(|| {
            Error::Usage(format!(
                "{} is a partition of an unknown disk",
                path.display()
            ))
        })?;
        return Err(Refusal::Partition {
            partition: path.to_path_buf(),
            disk: Path::new("/dev").join(disk),
        }
        .into());
    }
    let name = file_name(&node)?;
    describe(&name, path.to_path_buf(), &Uses::read()?)
}

/// Every whole disk in /sys/block, sorted by name. RAM disks, zram and unattached loop
/// devices are left out; device-mapper and md devices are listed with `Transport::Virtual`.
pub fn list() -> Result<Vec<DeviceInfo>> {
    let usage = Uses::read()?;
    let mut names = Vec::new();
    for entry in fs::read_dir("/sys/block").map_err(|e| Error::io("listing /sys/block", e))? {
        let entry = entry.map_err(|e| Error::io("listing /sys/block", e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut out = Vec::new();
    for name in names {
        if skipped_in_list(&name) {
            continue;
        }
        match describe(&name, Path::new("/dev").join(&name), &usage) {
            Ok(info) => out.push(info),
            // Unplugged between readdir and now: it is simply not there any more.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn skipped_in_list(name: &str) -> bool {
    let sys = sys_block(name);
    name.starts_with("ram")
        || name.starts_with("zram")
        || (name.starts_with("loop") && read_u64(&sys.join("size")) == Some(0))
}

/// Gathers a `DeviceInfo` for whole disk `name`, whose node is `path`.
fn describe(name: &str, path: PathBuf, usage: &Uses) -> Result<DeviceInfo> {
    let sys = sys_block(name);
    let (major, minor) = read_dev(&sys)?;
    let geometry = Geometry::probe(&path, &sys)?;
    let partitions = partitions(name, usage)?;
    Ok(DeviceInfo {
        name: name.to_string(),
        major,
        minor,
        size: geometry.size,
        logical_sector: geometry.logical,
        physical_sector: geometry.physical,
        removable: read_attr(&sys.join("removable")).as_deref() == Some("1"),
        transport: transport(name, &sys),
        model: model(&sys),
        vendor: vendor(&sys),
        read_only: read_attr(&sys.join("ro")).as_deref() == Some("1"),
        mountpoints: usage.mountpoints(major, minor),
        holders: holders(&sys, &partitions),
        is_system: usage.system_disks.contains(name),
        partitions,
        path,
    })
}

struct Geometry {
    size: u64,
    logical: u32,
    physical: u32,
}

impl Geometry {
    /// The ioctls are what the kernel will enforce on writes, so they are preferred; sysfs
    /// (the same numbers, readable without opening) covers nodes we may not open, such as
    /// when listing as an unprivileged user.
    fn probe(path: &Path, sys: &Path) -> Result<Geometry> {
        // O_NONBLOCK lets an empty card reader open (it then reports size 0) instead of
        // failing with "no medium".
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
        match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => Geometry::from_ioctls(&File::from(fd))
                .map_err(|e| Error::io(format!("querying {}", path.display()), e)),
            Err(_) => Geometry::from_sysfs(sys),
        }
    }

    fn from_ioctls(file: &File) -> io::Result<Geometry> {
        Ok(Geometry {
            size: size_of(file)?,
            logical: rustix::fs::ioctl_blksszget(file)?,
            physical: rustix::fs::ioctl_blkpbszget(file)?,
        })
    }

    fn from_sysfs(sys: &Path) -> Result<Geometry> {
        let path = sys.join("size");
        let sectors = read_u64(&path).ok_or_else(|| {
            let e = io::Error::new(io::ErrorKind::InvalidData, "missing or not a number");
            Error::io(format!("reading {}", path.display()), e)
        })?;
        let block = |attr: &str| {
            read_u64(&sys.join("queue").join(attr)).map_or(SYSFS_SECTOR as u32, |n| n as u32)
        };
        Ok(Geometry {
            size: sectors * SYSFS_SECTOR,
            logical: block("logical_block_size"),
            physical: block("physical_block_size"),
        })
    }
}

/// BLKGETSIZE64: the device size in bytes.
fn size_of(file: &File) -> io::Result<u64> {
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer Getter provides.
    Ok(unsafe { rustix::ioctl::ioctl(file, Getter::<BLKGETSIZE64, u64>::new())? })
}

/// The partitions sysfs lists under /sys/block/NAME: subdirectories with a `partition` file
/// (mmcblk0boot0 and friends are separate disks and have none).
fn partitions(disk: &str, usage: &Uses) -> Result<Vec<PartInfo>> {
    let sys = sys_block(disk);
    let context = || format!("listing partitions in {}", sys.display());
    let mut parts = Vec::new();
    for entry in fs::read_dir(&sys).map_err(|e| Error::io(context(), e))? {
        let dir = entry.map_err(|e| Error::io(context(), e))?.path();
        if let Some(part) = part_info(&dir, usage)? {
            parts.push(part);
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

fn part_info(dir: &Path, usage: &Uses) -> Result<Option<PartInfo>> {
    let Some(number) = read_u64(&dir.join("partition")) else {
        return Ok(None);
    };
    let name = file_name(dir)?;
    let (major, minor) = read_dev(dir)?;
    let sectors = |attr: &str| read_u64(&dir.join(attr)).unwrap_or(0) * SYSFS_SECTOR;
    Ok(Some(PartInfo {
        path: Path::new("/dev").join(&name),
        number: number as u32,
        major,
        minor,
        start: sectors("start"),
        size: sectors("size"),
        mountpoints: usage.mountpoints(major, minor),
        name,
    }))
}

fn holders(sys: &Path, parts: &[PartInfo]) -> Vec<String> {
    let dirs = std::iter::once(sys.to_path_buf()).chain(parts.iter().map(|p| sys.join(&p.name)));
    let mut out = BTreeSet::new();
    for dir in dirs {
        out.extend(dir_names(&dir.join("holders")));
    }
    out.into_iter().collect()
}

/// The attachment, from the resolved sysfs path (/sys/devices/.../usb1/... for USB, .../mmc_host/...
/// for MMC/SD slots) and the kernel name.
fn transport(name: &str, sys: &Path) -> Transport {
    let real = fs::canonicalize(sys)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("loop") {
        Transport::Loop
    } else if name.starts_with("dm-") || name.starts_with("md") {
        Transport::Virtual
    } else if real.contains("/usb") {
        Transport::Usb
    } else if name.starts_with("mmcblk") || real.contains("/mmc_host/") {
        mmc_kind(sys)
    } else if name.starts_with("nvme") || real.contains("/nvme") {
        Transport::Nvme
    } else if real.contains("/virtio") || name.starts_with("vd") {
        Transport::Virtio
    } else if real.contains("/ata") {
        Transport::Ata
    } else {
        Transport::Unknown
    }
}

/// The MMC core says what card it found: "SD" or "MMC" (eMMC).
fn mmc_kind(sys: &Path) -> Transport {
    match read_attr(&sys.join("device/type")).as_deref() {
        Some("MMC") => Transport::Mmc,
        _ => Transport::Sd,
    }
}

/// SCSI and NVMe disks have `device/model`; MMC cards call it `device/name`.
fn model(sys: &Path) -> Option<String> {
    ["device/model", "device/name"]
        .iter()
        .filter_map(|attr| read_attr(&sys.join(attr)))
        .find(|m| !m.is_empty())
}

/// SCSI/USB disks name their vendor in `device/vendor`; virtio puts a PCI id there
/// ("0x1af4"), which tells a person nothing.
fn vendor(sys: &Path) -> Option<String> {
    read_attr(&sys.join("device/vendor")).filter(|v| !v.is_empty() && !v.starts_with("0x"))
}

// ---------------------------------------------------------------------------------------
// Mounts, swap and the system disks

/// Who uses which device: read once per `inspect`/`list`.
struct Uses {
    /// (major, minor, mountpoint or `[SWAP]`).
    uses: Vec<(u32, u32, String)>,
    /// Whole-disk names backing a system mount or swap.
    system_disks: BTreeSet<String>,
}

impl Uses {
    fn read() -> Result<Uses> {
        let mut uses = mounts()?;
        uses.extend(swaps()?);
        let mut system_disks = BTreeSet::new();
        for (major, minor, mountpoint) in &uses {
            if mountpoint == SWAP || SYSTEM_MOUNTS.contains(&mountpoint.as_str()) {
                backing_disks(*major, *minor, 0, &mut system_disks);
            }
        }
        Ok(Uses { uses, system_disks })
    }

    fn mountpoints(&self, major: u32, minor: u32) -> Vec<String> {
        let mut out: Vec<String> = (self.uses.iter())
            .filter(|(ma, mi, _)| (*ma, *mi) == (major, minor))
            .map(|(_, _, m)| m.clone())
            .collect();
        out.dedup();
        out
    }
}

/// /proc/self/mountinfo: field 3 is the mounted device's major:minor. Filesystems that
/// report an anonymous device there (btrfs, bcachefs: 0:NN) are caught through their
/// source instead, by stat-ing it when it is a /dev node, so matching stays by number.
fn mounts() -> Result<Vec<(u32, u32, String)>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(mountpoint)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let mountpoint = unescape(mountpoint);
        if let Some((major, minor)) = parse_dev(dev) {
            out.push((major, minor, mountpoint.clone()));
        }
        if let Some((major, minor)) = mount_source(&fields).and_then(node_dev) {
            out.push((major, minor, mountpoint));
        }
    }
    Ok(out)
}

/// The source field: the second after the " - " separator.
fn mount_source<'a>(fields: &[&'a str]) -> Option<&'a str> {
    let dash = fields.iter().position(|f| *f == "-")?;
    fields
        .get(dash + 2)
        .copied()
        .filter(|s| s.starts_with("/dev/"))
}

/// /proc/swaps: a swap partition is its own device; a swap file pins the filesystem (and so
/// the device) it lives on.
fn swaps() -> Result<Vec<(u32, u32, String)>> {
    let text = match fs::read_to_string("/proc/swaps") {
        Ok(t) => t,
        // No swap support compiled in: nothing is used as swap.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading /proc/swaps", e)),
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some(file) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(meta) = fs::metadata(unescape(file)) else {
            continue;
        };
        let dev = if meta.file_type().is_block_device() {
            meta.rdev()
        } else {
            meta.dev()
        };
        let (major, minor) = split_dev(dev);
        out.push((major, minor, SWAP.to_string()));
    }
    Ok(out)
}

/// The whole disks under device major:minor: its own disk, and through device-mapper or md
/// (`slaves/`) the disks those are built on. Depth-bounded against odd sysfs loops.
fn backing_disks(major: u32, minor: u32, depth: u8, out: &mut BTreeSet<String>) {
    let Ok(node) = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")) else {
        return;
    };
    let disk = if node.join("partition").exists() {
        node.parent().map(Path::to_path_buf)
    } else {
        Some(node)
    };
    let Some(disk) = disk else { return };
    let Ok(name) = file_name(&disk) else { return };
    if !out.insert(name) || depth >= 8 {
        return;
    }
    for slave in dir_names(&disk.join("slaves")) {
        if let Ok((ma, mi)) = read_dev(&Path::new("/sys/class/block").join(slave)) {
            backing_disks(ma, mi, depth + 1, out);
        }
    }
}

/// Undoes the octal escapes (`\040` for space) that mountinfo and swaps use.
fn unescape(field: &str) -> String {
    let raw = field.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        // Exactly three octal digits, as the kernel writes them.
        let octal = raw
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (raw[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Deciding

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

// ---------------------------------------------------------------------------------------
// Writing

/// A whole disk opened for writing, exclusively: while it is open nothing can mount it or
/// its partitions, and it could not be opened if anything had.
pub struct Device {
    file: File,
    path: PathBuf,
    name: String,
    size: u64,
    logical_sector: u32,
}

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
    pub fn sync(&mut self) -> Result<()> {
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
        let end = self
            .bounds(offset, len as u64)
            .map_err(|e| Error::io(context(), e))?;
        let sector = u64::from(self.logical_sector);
        let start = offset - offset % sector;
        let span = (end.next_multiple_of(sector).min(self.size) - start) as usize;
        let reader = self.direct_reader().map_err(|e| Error::io(context(), e))?;
        // Over-allocate by one alignment unit and read into the aligned part: no unsafe
        // allocation needed. 4096 satisfies every DMA alignment the kernel asks of O_DIRECT.
        let align = sector.max(4096) as usize;
        let mut raw = vec![0u8; span + align];
        let skip = raw.as_ptr().align_offset(align);
        let buf = &mut raw[skip..skip + span];
        reader
            .read_exact_at(buf, start)
            .map_err(|e| Error::io(context(), e))?;
        let from = (offset - start) as usize;
        Ok(buf[from..from + len].to_vec())
    }

    fn direct_reader(&self) -> io::Result<File> {
        let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let flags = OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC;
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

impl Sink for Device {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.bounds(offset, bytes.len() as u64)?;
        self.file.write_all_at(bytes, offset)
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

// ---------------------------------------------------------------------------------------
// Partitions after writing

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

/// A planned partition: (number, start in bytes, size in bytes).
pub type PlannedPart = (u32, u64, u64);

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
    for &(number, start, size) in parts {
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
    for (number, _, _) in kernel_parts(dev)? {
        blkpg(dev, BLKPG_DEL_PARTITION, number, 0, 0)
            .map_err(|e| Error::io(context("removing old", number), e))?;
    }
    for &(number, start, size) in parts {
        blkpg(dev, BLKPG_ADD_PARTITION, number, start, size)
            .map_err(|e| Error::io(context("adding", number), e))?;
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

fn blkpg(dev: &Device, op: i32, number: u32, start: u64, size: u64) -> io::Result<()> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "partition out of range");
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| invalid())?,
        length: i64::try_from(size).map_err(|_| invalid())?,
        pno: i32::try_from(number).map_err(|_| invalid())?,
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

/// The partitions the kernel has for `dev`, as (number, start, size) in bytes.
fn kernel_parts(dev: &Device) -> Result<Vec<PlannedPart>> {
    let none = Uses {
        uses: Vec::new(),
        system_disks: BTreeSet::new(),
    };
    let parts = partitions(&dev.name, &none)?;
    Ok(parts.iter().map(|p| (p.number, p.start, p.size)).collect())
}

fn sorted(parts: &[PlannedPart]) -> Vec<PlannedPart> {
    let mut v = parts.to_vec();
    v.sort();
    v
}

/// Kernel name of partition `number`: a digit-final disk name takes a `p` (mmcblk0p1,
/// nvme0n1p1, loop0p1), others do not (sdb1).
/// Drops the kernel's cached pages of every partition node of `info` (BLKFLSBUF), so
/// readers of `/dev/sdb1` see what was written through `/dev/sdb`. Best effort.
pub fn drop_partition_caches(info: &DeviceInfo) {
    for p in &info.partitions {
        if let Ok(fd) = rustix::fs::open(&p.path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            // SAFETY: BLKFLSBUF takes no argument.
            let _ = unsafe { rustix::ioctl::ioctl(&fd, rustix::ioctl::NoArg::<BLKFLSBUF>::new()) };
        }
    }
}

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
        .map(|&(n, _, _)| Path::new("/dev").join(partition_name(&dev.name, n)))
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

// ---------------------------------------------------------------------------------------
// Small sysfs helpers

fn sys_block(name: &str) -> PathBuf {
    Path::new("/sys/block").join(name)
}

/// /sys/dev/block/MAJ:MIN resolved to the device's directory (…/block/sdb or …/sdb/sdb1).
fn sysfs_node(major: u32, minor: u32) -> Result<PathBuf> {
    let link = format!("/sys/dev/block/{major}:{minor}");
    fs::canonicalize(&link).map_err(|e| Error::io(format!("resolving {link}"), e))
}

fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_u64(path: &Path) -> Option<u64> {
    read_attr(path)?.parse().ok()
}

/// The `dev` attribute ("8:16") of a sysfs block directory.
fn read_dev(dir: &Path) -> Result<(u32, u32)> {
    let path = dir.join("dev");
    let text = fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse_dev(text.trim()).ok_or_else(|| {
        Error::io(
            format!("reading {}", path.display()),
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("`{}` is not MAJ:MIN", text.trim()),
            ),
        )
    })
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn split_dev(dev: u64) -> (u32, u32) {
    (rustix::fs::major(dev), rustix::fs::minor(dev))
}

fn node_dev(path: &str) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| split_dev(meta.rdev()))
}

fn is_block_device(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Usage(format!("{} has no device name", path.display())))
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
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

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/media/my\040card"), "/media/my card");
        assert_eq!(unescape(r"/a\\b"), r"/a\\b");
        assert_eq!(unescape("/"), "/");
    }

    #[test]
    fn dev_numbers_parse_strictly() {
        assert_eq!(parse_dev("8:16"), Some((8, 16)));
        assert_eq!(parse_dev("8:"), None);
        assert_eq!(parse_dev("sdb"), None);
    }

    #[test]
    fn mounts_match_by_number_not_name() {
        let usage = Uses {
            // sda1 is 8:1, sda10 is 8:10, sdaa is 65:160.
            uses: vec![(8, 1, "/boot".into()), (65, 160, "/x".into())],
            system_disks: BTreeSet::new(),
        };
        assert!(usage.mountpoints(8, 10).is_empty());
        assert!(usage.mountpoints(8, 0).is_empty());
        assert_eq!(usage.mountpoints(65, 160), ["/x"]);
    }

    fn card(mountpoints: &[&str]) -> DeviceInfo {
        DeviceInfo {
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
