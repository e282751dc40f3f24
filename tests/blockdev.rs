//! Block-device targets on real loop devices: inspection, refusals, exclusive writes, real
//! zeroing and partition re-reading. Needs root and losetup, partx, sgdisk, mkfs.ext4 and
//! mount; without them a test fails saying what is missing, unless
//! SKIFF_FLASH_TEST_ALLOW_MISSING=1 turns that into a skip.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{Loop, Mount, need_all, need_loop_devices, read_range, tool_ok};
use skiff_flash::device::{
    self, Device, PlannedPart, RereadMethod, SafetyPolicy, Transport, check, inspect,
};
use skiff_flash::sink::Sink;

const MIB: u64 = 1 << 20;

/// Whether loop-device tests can run here: loop devices and the tools these tests use.
fn can_run() -> bool {
    need_loop_devices()
        && need_all(&[
            ("sgdisk", "gdisk"),
            ("mkfs.ext4", "e2fsprogs"),
            ("mount", "mount"),
        ])
}

fn sparse(dir: &Path, len: u64) -> PathBuf {
    let path = dir.join("disk.img");
    fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

/// Partition 1 at sector 2048 and partition 2 right after, 10 MiB each.
fn gpt(file: &Path) {
    tool_ok(
        "sgdisk",
        &[
            "-n",
            "1:2048:+10M",
            "-n",
            "2:0:+10M",
            file.to_str().unwrap(),
        ],
    );
}

/// The device under `lo`, inspected and opened exclusively.
fn open(lo: &Loop) -> Device {
    Device::open_exclusive(&inspect(lo.path()).unwrap()).unwrap()
}

/// A sparse disk file in its own temporary directory, behind a loop device. Fields drop in
/// order: the loop device is detached before its directory goes.
struct Disk {
    lo: Loop,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Disk {
    /// `len` bytes behind a loop device set up with `losetup_args`; None (the test is over)
    /// where loop-device tests cannot run.
    fn new(len: u64, losetup_args: &[&str]) -> Option<Disk> {
        Disk::prepared(len, losetup_args, |_| {})
    }

    /// As `new`, with `prepare` run on the file before the loop device is set up.
    fn prepared(len: u64, losetup_args: &[&str], prepare: impl FnOnce(&Path)) -> Option<Disk> {
        if !can_run() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = sparse(dir.path(), len);
        prepare(&file);
        let lo = Loop::bare(&file, losetup_args);
        Some(Disk {
            lo,
            file,
            _dir: dir,
        })
    }

    /// 64 MiB partitioned by `gpt`, its partitions added.
    fn gpt() -> Option<Disk> {
        let disk = Disk::prepared(64 * MIB, &[], gpt)?;
        tool_ok("partx", &["-a", disk.lo.dev.as_str()]);
        Some(disk)
    }
}

/// The planned partitions matching `gpt`.
const PLAN: [PlannedPart; 2] = [
    PlannedPart {
        number: 1,
        start: 2048 * 512,
        size: 10 * MIB,
    },
    PlannedPart {
        number: 2,
        start: 2048 * 512 + 10 * MIB,
        size: 10 * MIB,
    },
];

fn card_policy(min_size: u64) -> SafetyPolicy {
    SafetyPolicy {
        allow_fixed: false,
        min_size,
    }
}

#[test]
fn inspect_reports_size_sectors_and_loop_transport() {
    let Some(disk) = Disk::new(64 * MIB, &[]) else {
        return;
    };
    let lo = &disk.lo;
    let info = inspect(lo.path()).unwrap();
    assert_eq!(info.name, lo.name());
    assert_eq!(info.path, lo.dev);
    assert_eq!(info.major, 7);
    assert_eq!(info.size, 64 * MIB);
    assert_eq!(info.logical_sector, 512);
    assert!(info.physical_sector.is_power_of_two() && info.physical_sector >= 512);
    assert_eq!(info.transport, Transport::Loop);
    assert!(!info.read_only && !info.is_system);
    assert!(info.partitions.is_empty() && info.mountpoints.is_empty() && info.holders.is_empty());
    check(&info, &card_policy(64 * MIB)).unwrap();

    let listed = device::list().unwrap();
    let mine = listed.iter().find(|d| d.name == lo.name()).expect("listed");
    assert_eq!(mine.size, 64 * MIB);
    let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
    assert!(names.is_sorted(), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("zram") || n.starts_with("ram"))
    );
}

#[test]
fn the_running_system_disk_is_refused() {
    if !can_run() {
        return;
    }
    // Containers with an overlay root have no block device behind /: nothing to find.
    if rustix::fs::major(fs::metadata("/").unwrap().dev()) == 0 {
        eprintln!("SKIPPED: / is not on a block device here");
        return;
    }
    let root = device::list()
        .unwrap()
        .into_iter()
        .find(|d| d.is_system)
        .expect("some disk backs /");
    let policy = SafetyPolicy {
        allow_fixed: true,
        min_size: 0,
    };
    let msg = check(&root, &policy).unwrap_err().to_string();
    assert!(msg.contains("holds the running system"), "{msg}");
}

#[test]
fn a_partition_is_refused_and_partitions_are_listed() {
    let Some(disk) = Disk::gpt() else {
        return;
    };
    let lo = &disk.lo;

    let err = inspect(&lo.part_path(1)).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!(
            "{} is a partition; give the whole disk {}",
            lo.part_path(1).display(),
            lo.dev.as_str()
        )
    );

    let info = inspect(lo.path()).unwrap();
    let got: Vec<PlannedPart> = info.partitions.iter().map(PlannedPart::from).collect();
    assert_eq!(got, PLAN);
    assert_eq!(info.partitions[0].path, lo.part_path(1));
    assert_eq!(info.partitions[1].name, format!("{}p2", lo.name()));
}

#[test]
fn a_regular_file_and_a_missing_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse(dir.path(), MIB);
    let err = inspect(&file).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!("{} is not a block device", file.display())
    );

    let missing = dir.path().join("sdz");
    let err = inspect(&missing).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!(
            "no such device: {} — is the card inserted?",
            missing.display()
        )
    );
    assert!(!missing.exists(), "inspect created {}", missing.display());
}

#[test]
fn a_mounted_partition_is_refused_and_blocks_exclusive_open() {
    let Some(disk) = Disk::gpt() else {
        return;
    };
    let lo = &disk.lo;
    tool_ok(
        "mkfs.ext4",
        &["-q", "-F", lo.part_path(2).to_str().unwrap()],
    );

    let mount = Mount::rw(&lo.part(2));
    let info = inspect(lo.path()).unwrap();
    assert_eq!(info.partitions[1].mountpoints, [mount.path()]);
    let msg = check(&info, &card_policy(0)).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{} is mounted at {}; unmount it first",
            lo.part_path(2).display(),
            mount.path()
        )
    );
    let err = Device::open_exclusive(&info).err().expect("open must fail");
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!("{} is busy (mounted or in use)", lo.dev.as_str())
    );

    drop(mount);
    let info = inspect(lo.path()).unwrap();
    assert!(info.partitions.iter().all(|p| p.mountpoints.is_empty()));
    check(&info, &card_policy(0)).unwrap();
    Device::open_exclusive(&info).unwrap();
}

#[test]
fn a_device_smaller_than_the_image_is_refused_with_both_sizes() {
    let Some(disk) = Disk::new(8 * MIB, &[]) else {
        return;
    };
    let lo = &disk.lo;
    let info = inspect(lo.path()).unwrap();
    let msg = check(&info, &card_policy(16 * MIB))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "image needs 16,777,216 bytes, {} has 8,388,608",
            lo.dev.as_str()
        )
    );
    check(&info, &card_policy(8 * MIB)).unwrap();
}

#[test]
fn a_read_only_device_is_refused() {
    let Some(disk) = Disk::new(8 * MIB, &["-r"]) else {
        return;
    };
    let lo = &disk.lo;
    let info = inspect(lo.path()).unwrap();
    assert!(info.read_only);
    let msg = check(&info, &card_policy(0)).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{} is read-only (is the card's lock switch on?)",
            lo.dev.as_str()
        )
    );
}

#[test]
fn writes_land_at_their_offsets() {
    let Some(disk) = Disk::new(16 * MIB, &[]) else {
        return;
    };
    let (file, lo) = (&disk.file, &disk.lo);
    let mut dev = open(lo);
    assert_eq!(dev.size(), 16 * MIB);

    dev.data(0, b"first sector").unwrap();
    dev.data(4096 + 3, b"unaligned").unwrap();
    dev.data(16 * MIB - 4, b"tail").unwrap();
    assert!(
        dev.data(16 * MIB - 3, b"tail").is_err(),
        "a write past the end"
    );
    dev.sync().unwrap();

    let at = |offset: u64, len: u64| read_range(file, offset, len);
    assert_eq!(at(0, 12), b"first sector");
    assert_eq!(at(4096, 12), b"\0\0\0unaligned");
    assert_eq!(at(16 * MIB - 4, 4), b"tail");
    assert_eq!(dev.read_direct(4096 + 3, 9).unwrap(), b"unaligned");
    assert_eq!(dev.read_direct(16 * MIB - 5, 5).unwrap(), b"\0tail");
}

#[test]
fn read_back_passes_what_was_written_and_names_the_segment_that_differs() {
    use skiff_flash::progress::{Event, Phase};
    use skiff_flash::sink::tracking::{read_back, tracking};
    let Some(disk) = Disk::new(64 * MIB, &[]) else {
        return;
    };
    let mut dev = open(&disk.lo);
    // Runs long enough to be read in several parts by several readers, neighbours close
    // enough to be read together, and lone writes far apart.
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    let mut rec = tracking(&mut dev);
    rec.data(MIB, &pattern(13 * MIB as usize, 1)).unwrap();
    rec.data(14 * MIB + 8192, &pattern(5000, 2)).unwrap();
    rec.zeros(20 * MIB, 3 * MIB).unwrap();
    rec.data(40 * MIB + 512, &pattern(700, 3)).unwrap();
    rec.data(64 * MIB - 4096, &pattern(4096, 4)).unwrap();
    let written = rec.observer;
    dev.sync().unwrap();

    let events = std::sync::Mutex::new(Vec::<Event>::new());
    let record = |e: &Event| events.lock().unwrap().push(e.clone());
    read_back(&dev, &written, &record).unwrap();
    let events = events.into_inner().unwrap();
    assert!(events.iter().all(|e| e.phase == Phase::Verify));
    assert!(events.len() > 3, "progress in parts: {}", events.len());
    assert!(events.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(events.last().unwrap().done, written.bytes());

    // One byte changed behind the writer's back, in the middle of the long run: the
    // 1 MiB segment holding it is named, not the first or the whole run.
    let other = fs::OpenOptions::new()
        .write(true)
        .open(disk.lo.path())
        .unwrap();
    other.write_all_at(&[0xEE], 9 * MIB + 12345).unwrap();
    other.sync_all().unwrap();
    match read_back(&dev, &written, &|_| {}).unwrap_err() {
        skiff_flash::Error::Mismatch { at, what, .. } => {
            assert_eq!(at, Some(9 * MIB), "{what}");
            assert!(
                what.contains("different data in bytes 9,437,184..10,485,760"),
                "{what}"
            );
        }
        e => panic!("expected a mismatch, got {e}"),
    }
    // Put back, the run reads back whole again; a changed byte where zeros were written
    // is caught too.
    let original = pattern(13 * MIB as usize, 1)[(8 * MIB + 12345) as usize];
    other.write_all_at(&[original], 9 * MIB + 12345).unwrap();
    other.write_all_at(&[1], 21 * MIB + 77).unwrap();
    other.sync_all().unwrap();
    let at = |e: skiff_flash::Error| match e {
        skiff_flash::Error::Mismatch { at, .. } => at,
        e => panic!("expected a mismatch, got {e}"),
    };
    assert_eq!(
        at(read_back(&dev, &written, &|_| {}).unwrap_err()),
        Some(21 * MIB)
    );
    // Of two places that differ, the first on the device is the one reported.
    other.write_all_at(&[0xEE], 2 * MIB + 5).unwrap();
    other.sync_all().unwrap();
    assert_eq!(
        at(read_back(&dev, &written, &|_| {}).unwrap_err()),
        Some(2 * MIB)
    );
}

#[test]
fn zeros_really_zero_the_range() {
    let Some(disk) = Disk::new(16 * MIB, &[]) else {
        return;
    };
    let (file, lo) = (&disk.file, &disk.lo);
    let mut dev = open(lo);
    dev.data(0, &vec![0xAA; (16 * MIB) as usize]).unwrap();
    dev.sync().unwrap();
    // Pull the range into the device's page cache, so a zeroing that left it stale shows.
    let cached = fs::File::open(&lo.dev).unwrap();
    let mut probe = vec![0; MIB as usize];
    cached.read_exact_at(&mut probe, 2 * MIB).unwrap();
    assert!(probe.iter().all(|b| *b == 0xAA));

    // Unaligned at both ends: a sector-aligned middle plus a partial head and tail.
    let (start, len) = (1000, 5 * MIB + 123);
    dev.zeros(start, len).unwrap();
    dev.sync().unwrap();

    let all = fs::read(file).unwrap();
    let end = (start + len) as usize;
    assert!(
        all[..start as usize].iter().all(|b| *b == 0xAA),
        "head kept"
    );
    assert!(
        all[start as usize..end].iter().all(|b| *b == 0),
        "range zeroed"
    );
    assert!(all[end..].iter().all(|b| *b == 0xAA), "tail kept");
    cached.read_exact_at(&mut probe, 2 * MIB).unwrap();
    assert!(probe.iter().all(|b| *b == 0), "page cache not stale");
    let direct = dev.read_direct(start - 1, (len + 2) as usize).unwrap();
    assert_eq!(direct[0], 0xAA);
    assert!(direct[1..direct.len() - 1].iter().all(|b| *b == 0));
    assert_eq!(direct[direct.len() - 1], 0xAA);
}

/// `partx`-free: the kernel learns a GPT written into the device from `reread_partitions`,
/// again after its partitions were deleted, and a changed plan replaces them.
fn reread_makes_partitions_appear(losetup_args: &[&str]) {
    let Some(disk) = Disk::new(64 * MIB, losetup_args) else {
        return;
    };
    let lo = &disk.lo;
    gpt(&disk.file);
    let dev = open(lo);

    let outcome = device::reread_partitions(&dev, &PLAN).unwrap();
    eprintln!("{} {losetup_args:?}: {outcome:?}", lo.dev.as_str());
    assert!(lo.sys_part(1).exists() && lo.sys_part(2).exists());
    assert_eq!(outcome.nodes, [lo.part_path(1), lo.part_path(2)]);
    assert!(outcome.missing_nodes.is_empty(), "{outcome:?}");
    if outcome.method == RereadMethod::Blkpg {
        assert!(outcome.rescan_note.is_some());
    }

    tool_ok("partx", &["-d", lo.dev.as_str()]);
    assert!(!lo.sys_part(1).exists());
    device::reread_partitions(&dev, &PLAN).unwrap();
    assert!(lo.sys_part(1).exists() && lo.sys_part(2).exists());

    // A plan the kernel cannot find in the table: only BLKPG can make it so.
    let other = [part(4 * MIB, 8 * MIB)];
    let outcome = device::reread_partitions(&dev, &other).unwrap();
    assert_eq!(outcome.method, RereadMethod::Blkpg);
    assert!(lo.sys_part(1).exists() && !lo.sys_part(2).exists());
    let start = fs::read_to_string(lo.sys_part(1).join("start")).unwrap();
    assert_eq!(start.trim(), (4 * MIB / 512).to_string());
}

#[test]
fn reread_partitions_on_a_loop_without_partscan() {
    reread_makes_partitions_appear(&[]);
}

#[test]
fn reread_partitions_on_a_loop_with_partscan() {
    reread_makes_partitions_appear(&["-P"]);
}

/// Partition 1 at `start`, `size` bytes long.
fn part(start: u64, size: u64) -> PlannedPart {
    PlannedPart {
        number: 1,
        start,
        size,
    }
}

#[test]
fn reread_partitions_rejects_a_misaligned_plan() {
    let Some(disk) = Disk::new(8 * MIB, &[]) else {
        return;
    };
    let dev = open(&disk.lo);
    let err = device::reread_partitions(&dev, &[part(1000, MIB)]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let err = device::reread_partitions(&dev, &[part(MIB, 8 * MIB)]).unwrap_err();
    assert!(err.to_string().contains("not a valid partition"), "{err}");
}
