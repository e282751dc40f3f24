//! What a block device is: its size and sectors, attachment, partitions, mounts, swap,
//! holders and whether it carries the running system, read from /sys/block, /sys/dev/block,
//! /proc/self/mountinfo and /proc/swaps (`inspect`, `list`).
//!
//! Not for: judging whether a device may be overwritten (policy.rs does that from what is
//! found here), opening it for writing (io.rs) or changing its partitions (reread.rs).
//! Devices are matched by major:minor, never by name prefix, so /dev/sdb1 being mounted says
//! nothing about /dev/sdb10 and /dev/sda says nothing about /dev/sdaa.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Getter, Opcode, opcode};
use serde::Serialize;

use super::Refusal;
use crate::error::{Error, Result};

/// Sysfs reports partition starts and sizes, and `size`, in these units whatever the device's
/// own sector size is.
pub(super) const SYSFS_SECTOR: u64 = 512;

/// Mount points whose device is "the running system": overwriting it would pull the floor
/// out from under the machine doing the flashing.
pub(super) const SYSTEM_MOUNTS: &[&str] =
    &["/", "/boot", "/boot/efi", "/boot/firmware", "/efi", "/usr"];

/// How lsblk marks a device in use as swap; kept so a refusal can tell swap from a mount.
pub const SWAP: &str = "[SWAP]";

/// BLKGETSIZE64 from <linux/fs.h>.
const BLKGETSIZE64: Opcode = opcode::read::<u64>(0x12, 114);

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
    /// The card's serial number (SD/MMC CID serial, USB or NVMe serial), else its WWID.
    pub serial: Option<String>,
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
        serial: serial(&sys),
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
pub(super) fn size_of(file: &File) -> io::Result<u64> {
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

/// The partitions the kernel currently has for whole disk `disk`, without their uses: for
/// comparing with a plan after the table changed.
pub(super) fn kernel_partitions(disk: &str) -> Result<Vec<PartInfo>> {
    let none = Uses {
        uses: Vec::new(),
        system_disks: BTreeSet::new(),
    };
    partitions(disk, &none)
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

/// SD/MMC and NVMe disks have `device/serial`; a USB reader's serial is on the USB device
/// above the SCSI disk (the first ancestor with `idVendor`); others may have a WWID.
fn serial(sys: &Path) -> Option<String> {
    let found = |p: &Path| read_attr(p).filter(|s| !s.is_empty());
    if let Some(s) = found(&sys.join("device/serial")) {
        return Some(s);
    }
    let usb = fs::canonicalize(sys.join("device")).ok().and_then(|dev| {
        dev.ancestors()
            .take(8)
            .find(|d| d.join("idVendor").is_file())
            .and_then(|d| found(&d.join("serial")))
    });
    usb.or_else(|| found(&sys.join("device/wwid")))
        .or_else(|| found(&sys.join("wwid")))
}

// ---------------------------------------------------------------------------------------
// Mounts, swap and the system disks

/// One use of a device: a mount or active swap.
struct Use {
    major: u32,
    minor: u32,
    /// Where it is mounted, or `[SWAP]`.
    mountpoint: String,
}

impl Use {
    fn new((major, minor): (u32, u32), mountpoint: String) -> Use {
        Use {
            major,
            minor,
            mountpoint,
        }
    }
}

/// Who uses which device: read once per `inspect`/`list`.
struct Uses {
    uses: Vec<Use>,
    /// Whole-disk names backing a system mount or swap.
    system_disks: BTreeSet<String>,
}

impl Uses {
    fn read() -> Result<Uses> {
        let mut uses = mounts()?;
        uses.extend(swaps()?);
        let mut system_disks = BTreeSet::new();
        for u in &uses {
            if u.mountpoint == SWAP || SYSTEM_MOUNTS.contains(&u.mountpoint.as_str()) {
                backing_disks(u.major, u.minor, 0, &mut system_disks);
            }
        }
        Ok(Uses { uses, system_disks })
    }

    fn mountpoints(&self, major: u32, minor: u32) -> Vec<String> {
        let mut out: Vec<String> = (self.uses.iter())
            .filter(|u| (u.major, u.minor) == (major, minor))
            .map(|u| u.mountpoint.clone())
            .collect();
        out.dedup();
        out
    }
}

/// /proc/self/mountinfo: field 3 is the mounted device's major:minor. Filesystems that
/// report an anonymous device there (btrfs, bcachefs: 0:NN) are caught through their
/// source instead, by stat-ing it when it is a /dev node, so matching stays by number.
fn mounts() -> Result<Vec<Use>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(mountpoint)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let mountpoint = unescape(mountpoint);
        if let Some(dev) = parse_dev(dev) {
            out.push(Use::new(dev, mountpoint.clone()));
        }
        if let Some(dev) = mount_source(&fields).and_then(node_dev) {
            out.push(Use::new(dev, mountpoint));
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
fn swaps() -> Result<Vec<Use>> {
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
        out.push(Use::new(split_dev(dev), SWAP.to_string()));
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

pub(super) fn split_dev(dev: u64) -> (u32, u32) {
    (rustix::fs::major(dev), rustix::fs::minor(dev))
}

fn node_dev(path: &str) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| split_dev(meta.rdev()))
}

pub(super) fn is_block_device(path: &Path) -> bool {
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
            uses: vec![
                Use::new((8, 1), "/boot".into()),
                Use::new((65, 160), "/x".into()),
            ],
            system_disks: BTreeSet::new(),
        };
        assert!(usage.mountpoints(8, 10).is_empty());
        assert!(usage.mountpoints(8, 0).is_empty());
        assert_eq!(usage.mountpoints(65, 160), ["/x"]);
    }
}
