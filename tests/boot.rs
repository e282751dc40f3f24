//! Boot tests: images built by the real binary boot in QEMU.
//!
//! Each test builds a synthetic images directory from Debian packages — the kernel, a
//! busybox initramfs whose /init is `tests/boot/init.sh`, a squashfs holding a token, a
//! token in `persist_part/` — builds the image with `skiff-flash build`, boots it (TCG, one
//! boot at a time), and asserts the marker the guest prints: both tokens read, persist
//! written, `root=PARTUUID=` in the boot config naming the right partition. After the boot,
//! `skiff-flash verify` must still pass on the image the guest wrote to, and the guest's
//! write must be on the disk.
//!
//! Paths: aarch64 `-M virt` with U-Boot (virt/qemu-arm64 with boot.scr,
//! virt/qemu-arm64-extlinux), x86_64 q35 with OVMF and rEFInd (intel/desktop), pi/3x64 on
//! `-M raspi3b` (which runs no GPU firmware: QEMU loads kernel, device tree and initramfs
//! from the image's FAT itself, so config.txt is not exercised), and two broken configs
//! that must fail loudly.
//!
//! `cargo test --release --test boot -- --nocapture` runs them alone and prints each boot's
//! time. Host packages: qemu-system-x86 qemu-system-arm ovmf u-boot-qemu refind
//! busybox-static lz4 squashfs-tools e2fsprogs, and the arm64 dpkg architecture (for
//! `apt-get download` of the arm64 kernel and busybox); a missing one fails the test with
//! what to install, unless SKIFF_FLASH_TEST_ALLOW_MISSING is set. Debian's kernels are
//! fetched with `apt-get download` once and kept in `target/boot-cache/`.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{dpkg_arches, need_packages, ok, run, sh, show, unavailable};

/// `VERSION=` of the generated skiff-release: intel/desktop names its files after it.
const VERSION: &str = "2026.08.0";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the output must stay at a bootloader's prompt before the boot counts as given up.
const PROMPT_IDLE: Duration = Duration::from_secs(3);
/// U-Boot's prompt: its boot commands found nothing that booted.
const UBOOT_PROMPT: &str = "\n=> ";
const MARKER: &str = "SKIFF-TEST-MARKER";
/// What a guest that cannot power off prints when it stops (the Orange Pi's U-Boot PSCI has
/// no system-off): the end of the boot, as QEMU exiting is for the others.
const HALTED: &str = "reboot: System halted";

const UBOOT_ARM64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const REFIND: &str = "/usr/share/refind/refind";

/// Modules the guest loads (with their dependencies); built-in ones are skipped.
/// crc32c_generic: ext4 with metadata_csum does not mount without it. nls_ascii: Debian's
/// default FAT iocharset.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "loop",
    "squashfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "ext4",
    "crc32c_generic",
];

const ARM64_PACKAGES: &[&str] = &[
    "qemu-system-arm",
    "u-boot-qemu",
    "busybox-static",
    "lz4",
    "squashfs-tools",
    "e2fsprogs",
];
const X86_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "ovmf",
    "refind",
    "busybox-static",
    "lz4",
    "squashfs-tools",
    "e2fsprogs",
];

// ---------------------------------------------------------------------------------------
// Host checks, cache, commands

/// `target/boot-cache/`: downloaded packages and extracted kernels, kept between runs, and
/// each test's last images directory, image and serial log.
fn cache() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("boot-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One test at a time, in this process and across processes sharing the cache: every boot
/// wants both cores, and the cache is filled once.
struct Serial {
    _guard: MutexGuard<'static, ()>,
    _file: File,
}

fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let file = File::create(cache().join(".lock")).unwrap();
    file.lock().expect("locking target/boot-cache/.lock");
    Serial {
        _guard: guard,
        _file: file,
    }
}

/// What a boot path needs on the host.
#[derive(Clone, Copy, PartialEq)]
enum Host {
    /// QEMU `virt` with U-Boot, an arm64 kernel.
    Arm64,
    /// QEMU `raspi3b`: arm64 and mtools to read the FAT.
    Raspi3b,
    /// QEMU `raspi4b` (QEMU 9 or later): arm64, mtools and the device tree tools.
    Raspi4b,
    /// orangepi/zero: armhf and mtools.
    OrangePi,
    /// x86_64 with OVMF and rEFInd.
    X86,
}

impl Host {
    /// The Debian packages, and the dpkg architecture the guest's packages come in.
    fn packages(self) -> (Vec<&'static str>, Option<&'static str>) {
        match self {
            Host::Arm64 => (ARM64_PACKAGES.to_vec(), Some("arm64")),
            Host::Raspi3b => ([ARM64_PACKAGES, &["mtools"]].concat(), Some("arm64")),
            Host::Raspi4b => (
                [ARM64_PACKAGES, &["mtools", "device-tree-compiler"]].concat(),
                Some("arm64"),
            ),
            Host::OrangePi => ([ORANGEPI_PACKAGES, &["mtools"]].concat(), Some("armhf")),
            Host::X86 => (X86_PACKAGES.to_vec(), None),
        }
    }
}

/// The start of every boot test: what the host needs for it (else it fails or is skipped),
/// the serial lock held for the whole test, and a fresh run directory.
fn start(name: &str, host: Host) -> Option<(Serial, PathBuf)> {
    let (packages, arch) = host.packages();
    if !need_packages(&packages, arch) || (host == Host::Raspi4b && !raspi4b()) {
        return None;
    }
    Some((serial(), run_dir(name)))
}

/// A fresh directory `target/boot-cache/run/NAME/`.
fn run_dir(name: &str) -> PathBuf {
    let dir = cache().join("run").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A value unique to this run, so a marker cannot come from an older image.
fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos:x}", std::process::id())
}

// ---------------------------------------------------------------------------------------
// Debian packages: kernels, busybox

/// The QEMU binary with the newest machines: scripts/test.sh installs QEMU from
/// bookworm-backports (raspi4b needs QEMU 9 or later); a `QEMU_NEW_DIR` may point elsewhere.
fn qemu_new(bin: &str) -> PathBuf {
    match std::env::var_os("QEMU_NEW_DIR") {
        Some(d) => Path::new(&d).join(bin),
        None => PathBuf::from(bin),
    }
}

/// Whether QEMU has the raspi4b machine; when not, the test fails saying what to install
/// (unless SKIFF_FLASH_TEST_ALLOW_MISSING is set).
fn raspi4b() -> bool {
    let out = Command::new(qemu_new("qemu-system-aarch64"))
        .args(["-M", "help"])
        .output();
    let has = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("raspi4b"));
    has || unavailable(
        "QEMU has no raspi4b machine (QEMU 9 or later)",
        "apt-get install -t bookworm-backports qemu-system-arm qemu-system-x86 \
         (scripts/test.sh does this)",
    )
}

/// The cached .deb of `spec` (`name` or `name:arch`), fetched with `apt-get download`.
fn deb(spec: &str) -> PathBuf {
    let (name, arch) = match spec.split_once(':') {
        Some((n, a)) => (n, a.to_string()),
        None => (spec, dpkg_arches()[0].clone()),
    };
    let dir = cache().join("debs");
    std::fs::create_dir_all(&dir).unwrap();
    let find = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let f = p.file_name().unwrap().to_string_lossy();
                f.starts_with(&format!("{name}_")) && f.ends_with(&format!("_{arch}.deb"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(p) = find() {
        return p;
    }
    sh(Command::new("apt-get")
        .args(["download", "-q", spec])
        .current_dir(&dir));
    find().unwrap_or_else(|| panic!("apt-get download {spec} left no {name}_*_{arch}.deb"))
}

/// The kernel package a metapackage (`linux-image-arm64:arm64`) points at.
fn kernel_package(meta: &str) -> String {
    let out = sh(Command::new("apt-cache").args(["depends", meta]));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .unwrap_or_else(|| panic!("apt-cache depends {meta} names no kernel:\n{out}"))
        .to_string()
}

/// A Debian kernel, extracted: the image, and the modules the tests may load.
struct Kernel {
    root: PathBuf,
    kver: String,
}

impl Kernel {
    fn image(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.kver))
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kver)
    }
}

fn kernel(meta: &str) -> Kernel {
    let deb = deb(&kernel_package(meta));
    let stem = deb.file_stem().unwrap().to_string_lossy().into_owned();
    let kernels = cache().join("kernels");
    let root = kernels.join(&stem);
    let kver_of = |root: &Path| -> String {
        let mut v: Vec<String> = std::fs::read_dir(root.join("lib/modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(v.len(), 1, "one kernel in {}", deb.display());
        v.pop().unwrap()
    };
    // What an initramfs of block, MMC, filesystem and loop drivers draws from, and the
    // Raspberry Pi device trees.
    let keep = |kver: &str| {
        let m = format!("lib/modules/{kver}");
        [
            format!("boot/vmlinuz-{kver}"),
            format!("{m}/modules.builtin"),
            format!("{m}/kernel/fs"),
            format!("{m}/kernel/lib"),
            format!("{m}/kernel/crypto"),
            format!("{m}/kernel/block"),
            format!("{m}/kernel/drivers/block"),
            format!("{m}/kernel/drivers/virtio"),
            format!("{m}/kernel/drivers/mmc"),
            format!("{m}/kernel/drivers/watchdog"),
            format!("usr/lib/linux-image-{kver}/broadcom"),
            format!("usr/lib/linux-image-{kver}/{ORANGEPI_ZERO_DTB}"),
        ]
        .join("\n")
    };
    let complete = root.join(".complete");
    if complete.exists() {
        let kver = kver_of(&root);
        if std::fs::read_to_string(&complete).unwrap() == keep(&kver) {
            return Kernel { root, kver };
        }
    }
    // Extract all, keep the parts above.
    let tmp = kernels.join(format!("{stem}.extract"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&tmp).unwrap();
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp));
    let kver = kver_of(&tmp);
    for k in keep(&kver).lines() {
        let from = tmp.join(k);
        if from.exists() {
            let to = root.join(k);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::rename(&from, &to).unwrap();
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    // The .deb ships no modules.dep.
    sh(Command::new("busybox")
        .args(["depmod", "-b"])
        .arg(&root)
        .arg(&kver));
    std::fs::write(&complete, keep(&kver)).unwrap();
    Kernel { root, kver }
}

/// A static busybox for `arch`: the host's busybox-static, or one extracted from the
/// foreign package.
fn busybox(arch: &str) -> PathBuf {
    if dpkg_arches()[0] == arch {
        return PathBuf::from("/bin/busybox");
    }
    extracted(&format!("busybox-static:{arch}"), "busybox", "bin/busybox")
}

/// File `want` of package `spec`, the package extracted (once) under
/// `cache()/DIR/<package file stem>/`.
fn extracted(spec: &str, dir: &str, want: &str) -> PathBuf {
    let deb = deb(spec);
    let root = cache()
        .join(dir)
        .join(deb.file_stem().unwrap().to_string_lossy().as_ref());
    let file = root.join(want);
    if !file.exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    }
    assert!(file.exists(), "{} has no {want}", deb.display());
    file
}

// ---------------------------------------------------------------------------------------
// Initramfs and squashfs

/// A cpio archive in the kernel's `newc` format: nodes (`dev/console`) without root.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

/// Module files to load, dependencies first, as paths under lib/modules/KVER/.
fn module_order(k: &Kernel, want: &[&str]) -> Vec<String> {
    let norm = |p: &str| {
        let f = p.rsplit('/').next().unwrap();
        f.strip_suffix(".ko").unwrap_or(f).replace('-', "_")
    };
    let prefix = format!("/lib/modules/{}/", k.kver);
    let strip = |p: &str| p.strip_prefix(&prefix).unwrap_or(p).to_string();
    let dep = std::fs::read_to_string(k.modules().join("modules.dep")).unwrap();
    let mut map: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        map.insert(
            norm(path),
            (strip(path), deps.split_whitespace().map(strip).collect()),
        );
    }
    let builtin: Vec<String> = std::fs::read_to_string(k.modules().join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(norm)
        .collect();
    fn visit(
        name: &str,
        map: &BTreeMap<String, (String, Vec<String>)>,
        builtin: &[String],
        kver: &str,
        out: &mut Vec<String>,
        norm: &dyn Fn(&str) -> String,
    ) {
        let Some((path, deps)) = map.get(name) else {
            assert!(
                builtin.iter().any(|b| b == name),
                "module {name} is neither a module nor built into {kver}"
            );
            return;
        };
        if out.contains(path) {
            return;
        }
        for d in deps {
            visit(&norm(d), map, builtin, kver, out, norm);
        }
        out.push(path.clone());
    }
    let mut out = Vec::new();
    for m in want {
        visit(m, &map, &builtin, &k.kver, &mut out, &norm);
    }
    out
}

/// `rootfs.cpio.lz4`: busybox, tests/boot/init.sh as /init, `conf` as
/// /etc/skiff-test.conf, and the modules it loads; lz4 legacy frames, as the kernel reads.
fn initramfs(k: &Kernel, busybox: &Path, conf: &str, extra_modules: &[&str]) -> Vec<u8> {
    let order = module_order(k, &[MODULES, extra_modules].concat());
    let mut c = Cpio::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "mnt",
        "proc",
        "sys",
    ] {
        c.dir(d);
    }
    c.file("bin/busybox", 0o755, &std::fs::read(busybox).unwrap());
    for applet in [
        "sh", "mount", "umount", "cat", "echo", "findfs", "insmod", "mkdir", "sleep", "sync",
        "poweroff", "cut", "ls", "od", "awk", "tr", "readlink", "basename", "printf", "dmesg",
    ] {
        c.entry(&format!("bin/{applet}"), 0o120777, b"busybox", (0, 0));
    }
    c.file("init", 0o755, include_bytes!("boot/init.sh"));
    c.file("etc/skiff-test.conf", 0o644, conf.as_bytes());
    c.file("etc/modules.load", 0o644, order.join("\n").as_bytes());
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.entry("dev/null", 0o020666, &[], (1, 3));
    let mut dirs: Vec<String> = Vec::new();
    for m in &order {
        let mut at = String::from("lib/modules");
        for part in m.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            at = format!("{at}/{part}");
            if !dirs.contains(&at) {
                c.dir(&at);
                dirs.push(at.clone());
            }
        }
        let data = std::fs::read(k.modules().join(m)).unwrap();
        c.file(&format!("lib/modules/{m}"), 0o644, &data);
    }
    let cpio = c.finish();
    let mut lz4 = Command::new("lz4")
        .args(["-l", "-9", "-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running lz4");
    let mut stdin = lz4.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&cpio).unwrap());
    let out = lz4.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "lz4 failed");
    out.stdout
}

/// `rootfs.squashfs` (lz4, as SkiffOS builds it) holding /etc/skiff-test-token.
fn squashfs(out: &Path, token: &str) {
    let stage = out.with_extension("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("etc")).unwrap();
    std::fs::write(stage.join("etc/skiff-test-token"), token).unwrap();
    sh(Command::new("mksquashfs").arg(&stage).arg(out).args([
        "-comp",
        "lz4",
        "-noappend",
        "-all-root",
        "-no-progress",
    ]));
    std::fs::remove_dir_all(&stage).unwrap();
}

/// A hard link where possible (kernels are tens of MiB), else a copy.
fn place(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Images directories

/// What a guest must report.
struct Expect {
    squashfs: String,
    persist: String,
    /// Partition id whose PARTUUID the boot config's `root=` must carry.
    root_part: Option<&'static str>,
    sqpath: String,
}

impl Expect {
    /// An initramfs root, no squashfs: only persist's token (written into `dir`) to report.
    fn initramfs_root(dir: &Path) -> Expect {
        Expect {
            squashfs: "none".into(),
            persist: persist_and_release(dir),
            root_part: None,
            sqpath: "-".into(),
        }
    }
}

/// A token in `persist_part/` (returned) and the `skiff-release` every SkiffOS build has.
fn persist_and_release(dir: &Path) -> String {
    let pe = token("persist");
    std::fs::create_dir_all(dir.join("persist_part")).unwrap();
    std::fs::write(dir.join("persist_part/skiff-test-token"), &pe).unwrap();
    std::fs::write(
        dir.join("skiff-release"),
        format!("NAME=SkiffOS\nVERSION={VERSION}\nID=skiff\n"),
    )
    .unwrap();
    pe
}

/// The parts every images directory has: initramfs, squashfs, persist token, release.
fn common_images(
    dir: &Path,
    k: &Kernel,
    busybox: &Path,
    conf: &str,
    extra_modules: &[&str],
) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let cpio = initramfs(k, busybox, conf, extra_modules);
    std::fs::write(dir.join("rootfs.cpio.lz4"), cpio).unwrap();
    let sq = token("squashfs");
    squashfs(&dir.join("rootfs.squashfs"), &sq);
    let pe = persist_and_release(dir);
    (sq, pe)
}

/// For virt/qemu-arm64*: Debian's arm64 kernel as `Image`.
fn arm64_images(dir: &Path) -> Expect {
    let k = kernel("linux-image-arm64:arm64");
    let bb = busybox("arm64");
    place(&k.image(), &dir.join("Image"));
    let conf = "BOOT_LABEL=boot\nBOOT_FS=vfat\nSQUASHFS=/rootfs.squashfs\n\
                PERSIST_LABEL=persist\nROOT_LABEL=boot\n";
    let (squashfs, persist) = common_images(dir, &k, &bb, conf, &[]);
    Expect {
        squashfs,
        persist,
        root_part: Some("boot"),
        sqpath: "/rootfs.squashfs".into(),
    }
}

/// For intel/desktop: Debian's amd64 kernel as `bzImage`, rEFInd from Debian's refind at
/// the removable path of efi-part/, and `refind_linux.conf` (the test's: serial console and
/// the initramfs; the board's own boots skiff-init without one).
fn intel_images(dir: &Path, refind_linux: &str) -> Expect {
    let k = kernel("linux-image-amd64");
    place(&k.image(), &dir.join("bzImage"));
    let conf = "BOOT_LABEL=SKIFFOS\nBOOT_FS=ext4\nSQUASHFS=\n\
                PERSIST_LABEL=SKIFFOS\nROOT_LABEL=SKIFFOS\n";
    let (squashfs, persist) = common_images(dir, &k, Path::new("/bin/busybox"), conf, &[]);
    let efi = dir.join("efi-part/EFI/BOOT");
    std::fs::create_dir_all(efi.join("drivers_x64")).unwrap();
    std::fs::copy(
        Path::new(REFIND).join("refind_x64.efi"),
        efi.join("BOOTX64.EFI"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(REFIND).join("drivers_x64/ext4_x64.efi"),
        efi.join("drivers_x64/ext4_x64.efi"),
    )
    .unwrap();
    std::fs::write(efi.join("refind.conf"), include_str!("boot/refind.conf")).unwrap();
    std::fs::write(dir.join("refind_linux.conf"), refind_linux).unwrap();
    Expect {
        squashfs,
        persist,
        root_part: Some("skiffos"),
        sqpath: format!("/boot/init-skiffos-{VERSION}-1.squashfs"),
    }
}

/// The Raspberry Pi 3's SD host, its SDHCI, and the watchdog QEMU powers off through.
const PI_MODULES: &[&str] = &["bcm2835", "sdhci_iproc", "mmc_block", "bcm2835_wdt"];
const PI3_DTB: &str = "bcm2837-rpi-3-b.dtb";

/// For pi/3x64: Debian's arm64 kernel as `Image`, the upstream Pi 3 B device tree, and a
/// stand-in rpi-firmware/ (QEMU runs no GPU firmware).
fn pi3_images(dir: &Path) -> Expect {
    let k = kernel("linux-image-arm64:arm64");
    let bb = busybox("arm64");
    place(&k.image(), &dir.join("Image"));
    let broadcom = k
        .root
        .join(format!("usr/lib/linux-image-{}/broadcom", k.kver));
    place(&broadcom.join(PI3_DTB), &dir.join(PI3_DTB));
    std::fs::create_dir_all(dir.join("rpi-firmware")).unwrap();
    std::fs::write(
        dir.join("rpi-firmware/README"),
        "QEMU's raspi3b loads the kernel itself; no GPU firmware here.\n",
    )
    .unwrap();
    let conf = "BOOT_LABEL=BOOT\nBOOT_FS=vfat\nSQUASHFS=/rootfs.squashfs\n\
                PERSIST_LABEL=persist\nROOT_LABEL=\n";
    let (squashfs, persist) = common_images(dir, &k, &bb, conf, PI_MODULES);
    Expect {
        squashfs,
        persist,
        root_part: None,
        sqpath: "/rootfs.squashfs".into(),
    }
}

/// Orange Pi Zero (H2+) on QEMU's orangepi-pc (H3): the H2+ is the H3's sibling and the
/// Zero's device tree boots on it as it is. It also enables the Wi-Fi SDIO controller at
/// 0x1c10000, which QEMU's machine lacks: the guest's driver is kept off it (NO_BIND).
const ORANGEPI_ZERO_DTB: &str = "sun8i-h2-plus-orangepi-zero.dtb";
const ORANGEPI_PACKAGES: &[&str] = &["qemu-system-arm", "busybox-static", "lz4", "u-boot-tools"];
/// The SD host driver and the block driver on top of it.
const SUNXI_MODULES: &[&str] = &["sunxi_mmc", "mmc_block"];

/// For orangepi/zero, shaped as SkiffOS builds it (initramfs root, no squashfs): Debian's
/// armhf kernel as `zImage`, the Zero's device tree, the lz4 initramfs wrapped as
/// `rootfs.cpio.uboot` (as Buildroot's BR2_TARGET_ROOTFS_CPIO_UIMAGE does), and Debian's
/// `u-boot-sunxi-with-spl.bin` for the board: the blob the boot ROM loads from 8 KiB.
fn orangepi_images(dir: &Path) -> Expect {
    let k = kernel("linux-image-armmp:armhf");
    let bb = busybox("armhf");
    std::fs::create_dir_all(dir).unwrap();
    place(&k.image(), &dir.join("zImage"));
    place(
        &k.root.join(format!(
            "usr/lib/linux-image-{}/{ORANGEPI_ZERO_DTB}",
            k.kver
        )),
        &dir.join(ORANGEPI_ZERO_DTB),
    );
    let spl = extracted(
        "u-boot-sunxi:armhf",
        "u-boot-sunxi",
        "usr/lib/u-boot/orangepi_zero/u-boot-sunxi-with-spl.bin",
    );
    place(&spl, &dir.join("u-boot-sunxi-with-spl.bin"));
    let conf = "BOOT_LABEL=boot\nBOOT_FS=vfat\nSQUASHFS=-\nPERSIST_LABEL=persist\n\
                ROOT_LABEL=\nNO_BIND=1c10000.mmc\n";
    let lz4 = dir.join("rootfs.cpio.lz4");
    std::fs::write(&lz4, initramfs(&k, &bb, conf, SUNXI_MODULES)).unwrap();
    sh(Command::new("mkimage")
        .args([
            "-A",
            "arm",
            "-T",
            "ramdisk",
            "-C",
            "none",
            "-n",
            "initramfs",
            "-d",
        ])
        .arg(&lz4)
        .arg(dir.join("rootfs.cpio.uboot")));
    std::fs::remove_file(&lz4).unwrap();
    Expect::initramfs_root(dir)
}

const PI4_DTB: &str = "bcm2711-rpi-4-b.dtb";

/// The Pi 4 B device tree edited for what QEMU's raspi4b has, as the firmware edits a
/// tree with overlays before the kernel sees it: the HDMI/DVP block at 0x7ef00000 (absent
/// in QEMU: its interrupt controller and I2C fault at probe) is disabled; QEMU wires the SD
/// card to the Arasan SDHCI (mmc@7e300000, Wi-Fi on a real Pi 4), so that one loses its
/// Wi-Fi power sequence and `non-removable`; and the EMMC2's regulators, behind the
/// firmware's GPIO expander QEMU does not answer, are dropped.
fn fit_dtb_to_raspi4b(dtb: &Path) {
    let d = dtb.to_str().unwrap();
    let soc = sh(Command::new("fdtget").args(["-l", d, "/soc"]));
    for node in soc.lines().filter(|n| n.contains("@7ef")) {
        sh(Command::new("fdtput").args([
            "-t",
            "s",
            d,
            &format!("/soc/{node}"),
            "status",
            "disabled",
        ]));
    }
    for (node, prop) in [
        ("/soc/mmc@7e300000", "mmc-pwrseq"),
        ("/soc/mmc@7e300000", "non-removable"),
        ("/emmc2bus/mmc@7e340000", "vqmmc-supply"),
        ("/emmc2bus/mmc@7e340000", "vmmc-supply"),
    ] {
        sh(Command::new("fdtput").args(["-d", d, node, prop]));
    }
}

/// For pi/4, shaped as SkiffOS builds it (initramfs root, no squashfs): Debian's arm64
/// kernel as `Image`, the upstream Pi 4 B device tree, the lz4 initramfs as
/// `rootfs.cpio.lz4`, and a stand-in rpi-firmware/ (QEMU runs no GPU firmware).
fn pi4_images(dir: &Path) -> Expect {
    let k = kernel("linux-image-arm64:arm64");
    let bb = busybox("arm64");
    std::fs::create_dir_all(dir).unwrap();
    place(&k.image(), &dir.join("Image"));
    let broadcom = k
        .root
        .join(format!("usr/lib/linux-image-{}/broadcom", k.kver));
    let dtb = dir.join(PI4_DTB);
    std::fs::copy(broadcom.join(PI4_DTB), &dtb).unwrap();
    fit_dtb_to_raspi4b(&dtb);
    std::fs::create_dir_all(dir.join("rpi-firmware")).unwrap();
    std::fs::write(
        dir.join("rpi-firmware/README"),
        "QEMU's raspi4b loads the kernel itself; no GPU firmware here.\n",
    )
    .unwrap();
    let conf = "BOOT_LABEL=BOOT\nBOOT_FS=vfat\nSQUASHFS=-\nPERSIST_LABEL=persist\nROOT_LABEL=\n";
    std::fs::write(
        dir.join("rootfs.cpio.lz4"),
        initramfs(&k, &bb, conf, PI_MODULES),
    )
    .unwrap();
    Expect::initramfs_root(dir)
}

// ---------------------------------------------------------------------------------------
// Build, boot, check

/// A board built into `run/NAME/disk.img`.
struct Image {
    name: String,
    board: String,
    images: PathBuf,
    board_dir: Option<PathBuf>,
    img: PathBuf,
    plan: serde_json::Value,
}

impl Image {
    /// `[--board-dir DIR] --board BOARD --images DIR`.
    fn board_args(&self) -> Vec<&str> {
        let mut a = Vec::new();
        if let Some(d) = &self.board_dir {
            a.extend(["--board-dir", d.to_str().unwrap()]);
        }
        a.extend([
            "--board",
            &self.board,
            "--images",
            self.images.to_str().unwrap(),
        ]);
        a
    }

    fn build(
        name: &str,
        board: &str,
        dir: &Path,
        board_dir: Option<PathBuf>,
        extra: &[&str],
    ) -> Image {
        let mut i = Image {
            name: name.to_string(),
            board: board.to_string(),
            images: dir.join("images"),
            board_dir,
            img: dir.join("disk.img"),
            plan: serde_json::Value::Null,
        };
        let img = i.img.to_str().unwrap();
        ok(&run(&[
            &["build"][..],
            &i.board_args(),
            &["--output", img],
            extra,
        ]
        .concat()));
        let plan = ok(&run(&[&["plan"][..], &i.board_args(), &["--json"]].concat()));
        i.plan = serde_json::from_str(&plan).unwrap();
        i
    }

    fn part(&self, id: &str) -> &serde_json::Value {
        self.plan["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no partition {id} in the plan of {}", self.board))
    }

    fn partuuid(&self, id: &str) -> String {
        self.part(id)["partuuid"]
            .as_str()
            .unwrap_or_else(|| panic!("no PARTUUID for {id}: {}", self.part(id)))
            .to_ascii_lowercase()
    }

    /// After a boot: the image still verifies against the board, and the guest's boot
    /// counter is on `part`'s filesystem.
    fn check_after_boot(&self, part: &str, boots: &str) {
        let img = self.img.to_str().unwrap();
        let args = [&["verify", img][..], &self.board_args()].concat();
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}: skiff-flash {} failed after the boot ({}):\n{}{}",
            self.name,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let offset = self.part(part)["start"].as_u64().unwrap();
        let count = sh(Command::new("debugfs")
            .args(["-R", "cat /boot-count"])
            .arg(format!("{img}?offset={offset}"))
            .stderr(Stdio::null()));
        assert_eq!(
            count.trim(),
            boots,
            "{}: /boot-count on {part} after the boot",
            self.name
        );
    }
}

/// What a boot printed.
struct Booted {
    marker: BTreeMap<String, String>,
    to_marker: f64,
    to_exit: f64,
}

/// Serial output without terminal control sequences (firmware menus draw with them).
fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// The last `lines` non-blank lines, with the long runs of spaces firmware menus pad with
/// squeezed to one.
fn tail(text: &str, lines: usize) -> String {
    let squeeze = |l: &str| {
        let indent = (l.len() - l.trim_start().len()).min(12);
        let mut out = " ".repeat(indent);
        let mut spaces = 0;
        for c in l.trim().chars() {
            if c == ' ' {
                spaces += 1;
                continue;
            }
            out.push_str(&" ".repeat(if spaces >= 8 { 1 } else { spaces }));
            spaces = 0;
            out.push(c);
        }
        out
    };
    let all: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(squeeze)
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs QEMU until the guest powers off (QEMU exits), the output rests at `prompt` (the
/// bootloader gave up), or `timeout`; Ok when the marker was printed and QEMU exited
/// cleanly. The serial log goes to `log`.
fn boot(
    name: &str,
    mut qemu: Command,
    prompt: Option<&str>,
    timeout: Duration,
    log: &Path,
) -> Result<Booted, String> {
    let start = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: cannot start {qemu:?}: {e}"))?;
    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut r| {
        let buf = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    })
    .collect();
    // A whole line starting with the marker (the guest ends it with a newline).
    let marker_line = |buf: &[u8]| {
        let text = String::from_utf8_lossy(buf);
        let at = text.find(&format!("\n{MARKER}"))? + 1;
        let end = text[at..].find('\n')?;
        Some(text[at..at + end].trim_end().to_string())
    };
    let mut to_marker = None;
    let mut marker = None;
    let mut at_prompt = false;
    let mut halted = false;
    let (mut seen, mut changed) = (0, Instant::now());
    let status = loop {
        {
            let b = buf.lock().unwrap();
            if marker.is_none()
                && let Some(l) = marker_line(&b)
            {
                to_marker = Some(start.elapsed().as_secs_f64());
                marker = Some(l);
            }
            if b.len() != seen {
                (seen, changed) = (b.len(), Instant::now());
            } else if let Some(p) = prompt
                && marker.is_none()
                && changed.elapsed() > PROMPT_IDLE
                && clean(&b).ends_with(p)
            {
                at_prompt = true;
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if String::from_utf8_lossy(&buf.lock().unwrap()).contains(HALTED) {
            let _ = child.kill();
            let _ = child.wait();
            halted = true;
            break None;
        }
        if at_prompt || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let to_exit = start.elapsed().as_secs_f64();
    for r in readers {
        let _ = r.join();
    }
    let raw = buf.lock().unwrap().clone();
    std::fs::write(log, &raw).unwrap();
    let text = clean(&raw);
    if marker.is_none() {
        marker = marker_line(text.as_bytes());
    }
    let why = match (&marker, status) {
        (Some(_), Some(s)) if s.success() => None,
        (Some(_), None) if halted => None,
        (Some(_), Some(s)) => Some(format!("QEMU exited with {s} after the marker")),
        (Some(_), None) => Some(format!(
            "the marker appeared but the guest did not power off within {} s",
            timeout.as_secs()
        )),
        (None, Some(s)) => Some(format!(
            "QEMU exited ({s}) after {to_exit:.1} s without the marker"
        )),
        (None, None) if halted => Some(format!(
            "the guest halted after {to_exit:.1} s without the marker"
        )),
        (None, None) if at_prompt => Some(format!(
            "no marker: the bootloader gave up at its prompt `{}` after {to_exit:.1} s",
            prompt.unwrap_or_default().trim()
        )),
        (None, None) => Some(format!("no marker within {} s", timeout.as_secs())),
    };
    if let Some(why) = why {
        let fail = text
            .lines()
            .find(|l| l.contains("TESTINIT-FAIL"))
            .map(|l| format!("\nguest: {}", l.trim()))
            .unwrap_or_default();
        return Err(format!(
            "{name}: boot failed: {why}{fail}\nserial log: {}\n--- last lines of the serial log ---\n{}",
            log.display(),
            tail(&text, 40)
        ));
    }
    let line = marker.unwrap();
    let marker = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Booted {
        marker,
        to_marker: to_marker.unwrap_or(to_exit),
        to_exit,
    })
}

fn qemu_arm64(img: &Path) -> Command {
    let mut c = Command::new("qemu-system-aarch64");
    c.args([
        "-M",
        "virt",
        "-accel",
        "tcg",
        "-cpu",
        "cortex-a57",
        "-m",
        "512",
    ])
    .args(["-smp", "2", "-display", "none", "-serial", "stdio"])
    .args(["-monitor", "none", "-no-reboot", "-nic", "none"])
    .args(["-bios", UBOOT_ARM64])
    .arg("-drive")
    .arg(format!("if=virtio,format=raw,file={}", img.display()));
    c
}

fn qemu_x86_64(img: &Path, dir: &Path) -> Command {
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512"])
        .args(["-smp", "2", "-display", "none", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot", "-net", "none"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("if=virtio,format=raw,file={}", img.display()));
    c
}

/// Reads files from the image's FAT `boot` into `DIR/from-fat/`, as a Pi's firmware reads
/// them from the card; returns where each one went.
fn from_fat(i: &Image, dir: &Path) -> impl Fn(&str) -> PathBuf {
    let start = i.part("boot")["start"].as_u64().unwrap();
    let fat = format!("{}@@{start}", i.img.display());
    let to_dir = dir.join("from-fat");
    std::fs::create_dir_all(&to_dir).unwrap();
    move |f: &str| {
        let to = to_dir.join(f);
        sh(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-n", "-i", &fat, &format!("::{f}")])
            .arg(&to));
        to
    }
}

/// QEMU's raspi3b: no GPU firmware, so QEMU loads what the firmware would — the kernel,
/// device tree and initramfs, read back from the image's FAT — and the command line is
/// the image's cmdline.txt with the serial console (`serial0` is a firmware alias).
fn qemu_raspi3b(i: &Image, dir: &Path) -> Command {
    let get = from_fat(i, dir);
    let from_fat = dir.join("from-fat");
    for f in ["Image", PI3_DTB, "rootfs.cpio.lz4", "cmdline.txt"] {
        get(f);
    }
    let cmdline = std::fs::read_to_string(from_fat.join("cmdline.txt")).unwrap();
    let load = PiLoad {
        kernel: from_fat.join("Image"),
        dtb: from_fat.join(PI3_DTB),
        initrd: from_fat.join("rootfs.cpio.lz4"),
        cmdline,
    };
    qemu_pi(Path::new("qemu-system-aarch64"), "raspi3b", load, &i.img)
}

/// What a Pi's firmware hands the kernel, read back from the card.
struct PiLoad {
    kernel: PathBuf,
    dtb: PathBuf,
    initrd: PathBuf,
    /// The card's cmdline.txt; the serial console is added.
    cmdline: String,
}

/// QEMU (`qemu`) as Raspberry Pi `machine`, loading `load` and the card `img`.
fn qemu_pi(qemu: &Path, machine: &str, load: PiLoad, img: &Path) -> Command {
    let mut c = Command::new(qemu);
    // The Pi machines always have 4 vCPUs; the 3 the kernel has not started yet spin in the
    // boot stub, which with one host thread per vCPU starves the one that boots (2-4x
    // slower on raspi3b).
    c.args([
        "-M",
        machine,
        "-accel",
        "tcg,thread=single",
        "-display",
        "none",
    ])
    .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
    .arg("-kernel")
    .arg(load.kernel)
    .arg("-dtb")
    .arg(load.dtb)
    .arg("-initrd")
    .arg(load.initrd)
    .arg("-append")
    .arg(format!("{} console=ttyAMA0", load.cmdline.trim()))
    .arg("-drive")
    .arg(format!("if=sd,format=raw,file={}", img.display()));
    c
}

/// QEMU's orangepi-pc: its boot ROM loads the SPL from 8 KiB of the SD card, as the
/// board's does; nothing else is handed to the machine.
fn qemu_orangepi(img: &Path) -> Command {
    let mut c = Command::new("qemu-system-arm");
    c.args(["-M", "orangepi-pc", "-accel", "tcg", "-display", "none"])
        .args([
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-drive")
        .arg(format!("if=sd,format=raw,file={}", img.display()));
    c
}

/// QEMU's raspi4b (QEMU 9 and later), loading what the Pi 4's firmware would: the kernel
/// and initramfs `config.txt` on the card names (`kernel=`, `initramfs`), the Pi 4 B device
/// tree, and the card's cmdline.txt with the serial console, all read back from the FAT.
fn qemu_raspi4b(i: &Image, dir: &Path) -> Command {
    let get = from_fat(i, dir);
    let config = std::fs::read_to_string(get("config.txt")).unwrap();
    let value = |key: &str| {
        config.lines().find_map(|l| {
            let l = l.trim();
            l.strip_prefix(&format!("{key}="))
                .or_else(|| l.strip_prefix(&format!("{key} ")))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        })
    };
    let kernel = value("kernel").expect("config.txt names the kernel");
    let initramfs = value("initramfs").expect("config.txt names the initramfs");
    let load = PiLoad {
        kernel: get(&kernel),
        dtb: get(PI4_DTB),
        initrd: get(&initramfs),
        cmdline: std::fs::read_to_string(get("cmdline.txt")).unwrap(),
    };
    qemu_pi(&qemu_new("qemu-system-aarch64"), "raspi4b", load, &i.img)
}

/// What the serial line of a boot that must fail shows, or (`shown` false) does not; `why`
/// explains a failure.
struct SerialCheck {
    text: String,
    shown: bool,
    why: String,
}

/// A boot that must not happen: how to boot, why it should not, how it waits (the boot's own
/// timeout, no prompt, unless set), and what the failure says and the serial line shows.
struct MustFail<'a> {
    qemu: Command,
    what: &'a str,
    prompt: Option<&'a str>,
    timeout: Duration,
    says: Vec<String>,
    serial: Vec<SerialCheck>,
}

impl<'a> MustFail<'a> {
    /// Booting `qemu` fails (`what` says why it should not boot), saying `says`.
    fn new(qemu: Command, what: &'a str, says: &str) -> MustFail<'a> {
        MustFail {
            qemu,
            what,
            prompt: None,
            timeout: BOOT_TIMEOUT,
            says: vec![says.to_string()],
            serial: Vec::new(),
        }
    }

    fn prompt(self, prompt: &'a str) -> MustFail<'a> {
        MustFail {
            prompt: Some(prompt),
            ..self
        }
    }

    fn timeout(self, timeout: Duration) -> MustFail<'a> {
        MustFail { timeout, ..self }
    }

    /// The failure also says `text`.
    fn says(mut self, text: &str) -> MustFail<'a> {
        self.says.push(text.to_string());
        self
    }

    /// The serial line shows `text`, or (`shown` false) does not; `why` explains a failure.
    fn serial(mut self, text: &str, shown: bool, why: &str) -> MustFail<'a> {
        self.serial.push(SerialCheck {
            text: text.to_string(),
            shown,
            why: why.to_string(),
        });
        self
    }
}

/// A broken config must fail loudly: skipped where `start` says so; otherwise `prepare` fills
/// the run directory and says how to boot and how it must fail, the serial line logged to
/// `serial.log` there.
fn must_not_boot<'a>(name: &str, host: Host, prepare: impl FnOnce(&Path) -> MustFail<'a>) {
    let Some((_serial, dir)) = start(name, host) else {
        return;
    };
    let m = prepare(&dir);
    let log = dir.join("serial.log");
    let err = match boot(name, m.qemu, m.prompt, m.timeout, &log) {
        Ok(b) => panic!("{name}: booted {}: {:?}", m.what, b.marker),
        Err(e) => e,
    };
    println!("{err}");
    for text in &m.says {
        assert!(err.contains(text.as_str()), "{err}");
    }
    if m.serial.is_empty() {
        return;
    }
    let serial = clean(&std::fs::read(&log).unwrap());
    for c in &m.serial {
        assert_eq!(
            serial.contains(c.text.as_str()),
            c.shown,
            "{name}: {}:\n{serial}",
            c.why
        );
    }
}

/// The text of `file` in board `board`'s definition (`boards show --json`).
fn board_file_text(board: &str, file: &str) -> String {
    show(board)["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == file)
        .and_then(|r| r["text"].as_str())
        .unwrap()
        .to_string()
}

/// A user board directory under `dir` holding `boards/test/NAME.toml` = `toml`.
fn user_board(dir: &Path, name: &str, toml: &str) -> Option<PathBuf> {
    let boards = dir.join("user/boards/test");
    std::fs::create_dir_all(&boards).unwrap();
    std::fs::write(boards.join(format!("{name}.toml")), toml).unwrap();
    Some(dir.join("user"))
}

/// Boots, asserts the marker against `want`, then verify and the write to persist.
fn boot_and_check(
    i: &Image,
    qemu: Command,
    prompt: Option<&str>,
    want: &Expect,
    persist_part: &str,
) {
    let log = i.img.with_file_name("serial.log");
    let b = boot(&i.name, qemu, prompt, BOOT_TIMEOUT, &log).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "boot {} ({}): marker after {:.1} s, QEMU exited after {:.1} s",
        i.name, i.board, b.to_marker, b.to_exit
    );
    let m = &b.marker;
    let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("");
    let root = want.root_part.map_or("none".into(), |p| i.partuuid(p));
    let checks = [
        ("squashfs", want.squashfs.as_str()),
        ("persist", want.persist.as_str()),
        ("boots", "1"),
        ("root", root.as_str()),
        ("sqpath", want.sqpath.as_str()),
    ];
    for (k, v) in checks {
        assert_eq!(get(k), v, "{}: marker {k}= (marker: {m:?})", i.name);
    }
    i.check_after_boot(persist_part, "1");
}

// ---------------------------------------------------------------------------------------
// The paths

/// One boot path that must boot: the images directory `images` makes, built as `board`
/// with `extra`, booted by `qemu`, checked against what `images` expects. Returns the image
/// (`None` when skipped).
#[allow(clippy::too_many_arguments)]
fn boot_path(
    name: &str,
    host: Host,
    board: &str,
    extra: &[&str],
    images: impl FnOnce(&Path) -> Expect,
    qemu: impl FnOnce(&Image, &Path) -> Command,
    prompt: Option<&str>,
    persist_part: &str,
) -> Option<Image> {
    let (_serial, dir) = start(name, host)?;
    let want = images(&dir.join("images"));
    let i = Image::build(name, board, &dir, None, extra);
    boot_and_check(&i, qemu(&i, &dir), prompt, &want, persist_part);
    Some(i)
}

fn arm64_path(name: &str, board: &str) {
    boot_path(
        name,
        Host::Arm64,
        board,
        &[],
        arm64_images,
        |i, _| qemu_arm64(&i.img),
        Some(UBOOT_PROMPT),
        "persist",
    );
}

/// U-Boot runs the boot.scr skiff-flash compiled: kernel, initramfs, QEMU's device tree.
#[test]
fn qemu_boot_arm64_uboot_bootscr() {
    arm64_path("arm64-bootscr", "virt/qemu-arm64");
}

/// An image flashed with build A, upgraded in place to build B (a new squashfs: new files
/// and a new root directory, switched to in the boot sector), boots B's squashfs with A's
/// persist: U-Boot follows the moved root directory.
#[test]
fn qemu_boot_arm64_after_upgrade() {
    let name = "arm64-upgraded";
    let Some((_serial, dir)) = start(name, Host::Arm64) else {
        return;
    };
    let a = arm64_images(&dir.join("images"));
    let mut i = Image::build(name, "virt/qemu-arm64", &dir, None, &[]);
    let b = arm64_images(&dir.join("images-b"));
    // An upgrade never writes persist, and verify checks the files a build places there:
    // build B carries the persist file the card already holds, as a release that changes
    // only the system does.
    std::fs::copy(
        dir.join("images/persist_part/skiff-test-token"),
        dir.join("images-b/persist_part/skiff-test-token"),
    )
    .unwrap();
    i.images = dir.join("images-b");
    let img = i.img.to_str().unwrap().to_string();
    let out = ok(&run(&[
        &["upgrade", &img][..],
        &i.board_args(),
        &["--yes", "--json"],
    ]
    .concat()));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let changed: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "replaced")
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(changed.contains(&"/rootfs.squashfs"), "{report}");
    let want = Expect {
        persist: a.persist.clone(),
        ..b
    };
    boot_and_check(&i, qemu_arm64(&i.img), Some(UBOOT_PROMPT), &want, "persist");
}

/// U-Boot reads the extlinux.conf skiff-flash wrote.
#[test]
fn qemu_boot_arm64_uboot_extlinux() {
    arm64_path("arm64-extlinux", "virt/qemu-arm64-extlinux");
}

/// OVMF runs rEFInd from the ESP; rEFInd's ext4 driver reads the SKIFFOS filesystem
/// skiff-flash wrote, finds the versioned kernel and refind_linux.conf with the real
/// PARTUUID; the kernel loads the initrd from the same ext4.
#[test]
fn qemu_boot_x86_64_efi_refind_intel_desktop() {
    boot_path(
        "x86_64-intel-desktop",
        Host::X86,
        "intel/desktop",
        &[],
        |d| intel_images(d, include_str!("boot/refind_linux.conf")),
        |i, dir| qemu_x86_64(&i.img, dir),
        None,
        "skiffos",
    );
}

/// pi/3x64 on QEMU's raspi3b: the MBR, the FAT `BOOT`, the squashfs on it and the ext4
/// `persist` read through the Pi's SD host driver (QEMU wants an SD image of a power of 2).
#[test]
fn qemu_boot_raspi3b_pi3x64() {
    boot_path(
        "raspi3b-pi3x64",
        Host::Raspi3b,
        "pi/3x64",
        &["--size", "512MiB"],
        pi3_images,
        qemu_raspi3b,
        None,
        "persist",
    );
}

/// orangepi/zero through its raw bootloader: the boot ROM finds the SPL skiff-flash placed
/// at 8 KiB, the SPL starts U-Boot, U-Boot runs the board's own boot.scr, which loads the
/// kernel, the initramfs and the device tree from the FAT `boot`; the guest finds `boot`
/// and `persist` on the SD card (QEMU wants an SD image of a power of 2).
#[test]
fn qemu_boot_orangepi_zero_spl() {
    let name = "orangepi-zero-spl";
    let Some(i) = boot_path(
        name,
        Host::OrangePi,
        "orangepi/zero",
        &["--size", "512MiB"],
        orangepi_images,
        |i, _| qemu_orangepi(&i.img),
        Some(UBOOT_PROMPT),
        "persist",
    ) else {
        return;
    };
    let serial = clean(&std::fs::read(i.img.with_file_name("serial.log")).unwrap());
    for stage in [
        "U-Boot SPL",
        "Trying to boot from MMC1",
        "Found U-Boot script /boot.scr",
    ] {
        assert!(
            serial.contains(stage),
            "{name}: no `{stage}` on the serial line"
        );
    }
}

/// pi/4 from a SkiffOS-shaped build (initramfs root, no squashfs) on QEMU's raspi4b: the
/// kernel, initramfs and device tree the card's config.txt names, the card's cmdline.txt;
/// the guest finds `BOOT` and `persist` through the Pi 4's SD host and writes to persist.
#[test]
fn qemu_boot_raspi4b_pi4() {
    boot_path(
        "raspi4b-pi4",
        Host::Raspi4b,
        "pi/4",
        &["--size", "512MiB"],
        pi4_images,
        qemu_raspi4b,
        None,
        "persist",
    );
}

// ---------------------------------------------------------------------------------------
// Broken configs fail loudly

/// pi/4 whose config.txt (in the images directory, so on the card) names another
/// initramfs, one that looks for a persist label the card does not have: the boot follows
/// config.txt and fails loudly with the guest's own reason.
#[test]
fn qemu_boot_raspi4b_pi4_config_txt_decides_fails_loudly() {
    let name = "raspi4b-pi4-other-initramfs";
    must_not_boot(name, Host::Raspi4b, |dir| {
        let images = dir.join("images");
        pi4_images(&images);
        let k = kernel("linux-image-arm64:arm64");
        let conf =
            "BOOT_LABEL=BOOT\nBOOT_FS=vfat\nSQUASHFS=-\nPERSIST_LABEL=nolabel\nROOT_LABEL=\n";
        std::fs::create_dir_all(images.join("boot_part")).unwrap();
        std::fs::write(
            images.join("boot_part/other.cpio.lz4"),
            initramfs(&k, &busybox("arm64"), conf, PI_MODULES),
        )
        .unwrap();
        let text = board_file_text("pi/4", "config.txt")
            .replace("initramfs rootfs.cpio.lz4", "initramfs other.cpio.lz4");
        assert!(text.contains("initramfs other.cpio.lz4"), "{text}");
        std::fs::write(images.join("config.txt"), text).unwrap();
        let i = Image::build(name, "pi/4", dir, None, &["--size", "512MiB"]);
        MustFail::new(
            qemu_raspi4b(&i, dir),
            "the initramfs config.txt does not name",
            "labels BOOT/nolabel/ not found",
        )
    });
}

/// orangepi/zero with its SPL one sector past 8 KiB: the boot ROM finds no SPL, nothing
/// boots, and the failure shows the stage (no SPL banner on the serial line).
#[test]
fn qemu_boot_orangepi_zero_spl_moved_fails_loudly() {
    let name = "orangepi-zero-spl-moved";
    must_not_boot(name, Host::OrangePi, |dir| {
        orangepi_images(&dir.join("images"));
        let user = user_board(
            dir,
            "orangepi-zero-spl-moved",
            "description = \"orangepi/zero with the SPL one sector late\"\n\
             inherit = \"orangepi/zero\"\n\n\
             [[raw]]\nname = \"u-boot\"\noffset = 8704\n",
        );
        let board = "test/orangepi-zero-spl-moved";
        let i = Image::build(name, board, dir, user, &["--size", "512MiB"]);
        let spl = "the boot ROM found an SPL it should not have";
        MustFail::new(qemu_orangepi(&i.img), "with the SPL moved", "no marker")
            .timeout(Duration::from_secs(30))
            .serial("U-Boot SPL", false, spl)
    });
}

/// A user board (`--board-dir`) inheriting virt/qemu-arm64 whose boot.txt loads a kernel
/// name that is not on the disk: no marker, and the serial tail shows U-Boot's error.
#[test]
fn qemu_boot_arm64_bootscr_wrong_kernel_name_fails_loudly() {
    let name = "arm64-bootscr-broken";
    must_not_boot(name, Host::Arm64, |dir| {
        arm64_images(&dir.join("images"));
        let text = board_file_text("virt/qemu-arm64", "boot.txt");
        let good = "${kernel_addr_r} Image\n";
        assert!(text.contains(good), "{text}");
        let broken = text.replace(good, "${kernel_addr_r} Image-6.1\n");
        let user = user_board(
            dir,
            "qemu-arm64-typo",
            &format!(
                "description = \"virt/qemu-arm64 with a wrong kernel name\"\n\
                 inherit = \"virt/qemu-arm64\"\n\n\
                 [[files]]\nname = \"boot.txt\"\ntext = '''\n{broken}'''\n"
            ),
        );
        let i = Image::build(name, "test/qemu-arm64-typo", dir, user, &[]);
        let named = "U-Boot names the missing file";
        MustFail::new(qemu_arm64(&i.img), "with a wrong kernel name", "no marker")
            .prompt(UBOOT_PROMPT)
            .serial("Failed to load 'Image-6.1'", true, named)
    });
}

/// intel/desktop with a refind_linux.conf whose root= names a PARTUUID that is not on the
/// disk: the guest refuses it, no marker, the serial tail says why.
#[test]
fn qemu_boot_x86_64_refind_wrong_partuuid_fails_loudly() {
    let name = "x86_64-intel-desktop-broken";
    let wrong = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    must_not_boot(name, Host::X86, |dir| {
        let conf = include_str!("boot/refind_linux.conf").replace("{SKIFFOS_PARTUUID}", wrong);
        intel_images(&dir.join("images"), &conf);
        let i = Image::build(name, "intel/desktop", dir, None, &[]);
        let why = "with a wrong PARTUUID";
        MustFail::new(qemu_x86_64(&i.img, dir), why, "without the marker")
            .says(&format!("root=PARTUUID={wrong} names no partition"))
    });
}
