//! The one skip guard: a test whose tool, package or privilege is missing fails naming what
//! to install, unless SKIFF_FLASH_TEST_ALLOW_MISSING=1 opts out, and then it is skipped
//! (returns early) with a `SKIPPED:` line. Not for optional behaviour inside a test.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const OPT_OUT: &str = "SKIFF_FLASH_TEST_ALLOW_MISSING";

/// Decides about a missing prerequisite: false (skip) when opted out, else panics naming
/// `what` is missing and the `fix`.
pub fn unavailable(what: &str, fix: &str) -> bool {
    if std::env::var_os(OPT_OUT).is_some() {
        eprintln!("SKIPPED: {what} ({fix})");
        return false;
    }
    panic!("{what}: {fix} (or set {OPT_OUT}=1 to skip)");
}

/// Whether an oracle tool is present (on PATH, in /usr/sbin or /sbin).
pub fn need(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file();
    found
        || unavailable(
            &format!("`{tool}` is required by this test"),
            &format!("apt-get install {package}"),
        )
}

/// Whether every (tool, package) is present.
pub fn need_all(tools: &[(&str, &str)]) -> bool {
    tools.iter().all(|(t, p)| need(t, p))
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether loop devices can be made here: their tools, and root.
pub fn need_loop_devices() -> bool {
    need_all(&[("losetup", "mount"), ("partx", "util-linux")])
        && (is_root() || unavailable("loop devices need root", "run the tests as root (CI does)"))
}

/// Whether the host has Debian `packages` installed (and dpkg architecture `arch`, for
/// `apt-get download`).
pub fn need_packages(packages: &[&str], arch: Option<&str>) -> bool {
    let mut missing: Vec<String> = match Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${db:Status-Status}\n")
        .args(packages)
        .output()
    {
        Err(_) => packages.iter().map(|p| p.to_string()).collect(),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            packages
                .iter()
                .filter(|p| !text.lines().any(|l| l == format!("{p} installed")))
                .map(|p| p.to_string())
                .collect()
        }
    };
    let mut hints = Vec::new();
    if !missing.is_empty() {
        hints.push(format!(
            "apt-get install --no-install-recommends {} (scripts/test.sh installs them)",
            missing.join(" ")
        ));
    }
    if let Some(arch) = arch
        && !dpkg_arches().iter().any(|a| a == arch)
    {
        missing.push(format!("dpkg architecture {arch}"));
        hints.push(format!(
            "dpkg --add-architecture {arch} && apt-get update (scripts/test.sh does this)"
        ));
    }
    missing.is_empty()
        || unavailable(
            &format!("this test needs {}", missing.join(", ")),
            &hints.join("; "),
        )
}

/// The host's dpkg architectures, native first.
pub fn dpkg_arches() -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["--print-architecture"][..],
        &["--print-foreign-architectures"][..],
    ] {
        if let Ok(o) = Command::new("dpkg").args(args).output() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string),
            );
        }
    }
    out
}
