//! The files a build writes, as one set: every path is checked before anything is written
//! (an existing output must be a regular file and must not be one of the build's inputs),
//! every file is written under a temporary name, and all of them are renamed together at
//! the end. A failure, or SIGINT/SIGTERM/SIGHUP once `cleanup_on_signals` ran, removes
//! what this run wrote, so a build leaves either the complete set or nothing.
//!
//! Not for the content of the files (`release`, `manifest`, `target::image` make it).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::plan::tree::{Node, Source};

/// Temporary and committed files of this process, for the signal cleanup.
struct Registry {
    /// Temporary files that exist now.
    partials: Vec<PathBuf>,
    /// Files renamed into place by a set that is not finished yet.
    committed: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    partials: Vec::new(),
    committed: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` with the registry locked: the signal cleanup waits for it, so a file is never
/// created, renamed or forgotten half-way through a cleanup.
pub(crate) fn with_registry<T>(f: impl FnOnce(&mut Vec<PathBuf>, &mut Vec<PathBuf>) -> T) -> T {
    let mut r = registry();
    let Registry {
        partials,
        committed,
    } = &mut *r;
    f(partials, committed)
}

/// From now on SIGINT, SIGTERM and SIGHUP remove this process's temporary files (and the
/// files of an unfinished set already renamed), then exit with 128 + the signal number.
/// The handler itself only writes to a pipe; the removal runs on an ordinary thread.
pub fn cleanup_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                result = Err(Error::io("installing signal handlers", e));
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Held until exit: nothing new is created or renamed after this point.
                let r = registry();
                for p in r.partials.iter().chain(&r.committed) {
                    let _ = fs::remove_file(p);
                }
                let name = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                eprintln!("skiff-flash: interrupted by {name}; removed the unfinished outputs");
                std::process::exit(128 + sig);
            }
        });
    });
    result
}

/// The temporary name of `dest` for process `pid`: `.NAME.partial-PID` beside it.
pub fn partial_name(dest: &Path, pid: u32) -> Option<PathBuf> {
    let name = dest.file_name()?;
    Some(dest.with_file_name(format!(".{}.partial-{pid}", name.to_string_lossy())))
}

/// Removes temporary files of `dest` left by processes that no longer exist (killed with
/// SIGKILL, or a crash): `.NAME.partial-PID` whose PID is not running.
pub fn remove_stale_partials(dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if pid != me && regular && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// What a build reads, to refuse writing over it: files by device and inode (hard links
/// and symlinks included), and the directories whose content is copied.
#[derive(Debug, Default)]
pub struct Inputs {
    files: HashSet<(u64, u64)>,
    paths: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Inputs {
    /// Every file `plan` reads: filesystem content, prebuilt partition images, raw blobs.
    pub fn of_plan(plan: &Plan) -> Inputs {
        let mut inputs = Inputs::default();
        let images = fs::canonicalize(&plan.images).ok();
        for p in &plan.partitions {
            if let Some(fs) = &p.fs {
                for e in fs.entries.iter() {
                    if let Node::File {
                        source: Source::Path(path),
                        ..
                    } = &e.node
                    {
                        inputs.add(path, images.as_deref());
                    }
                }
            }
            if let Some(img) = &p.image {
                inputs.add(&img.source, images.as_deref());
            }
        }
        for r in &plan.raw {
            inputs.add(&r.source, images.as_deref());
        }
        inputs
    }

    /// Adds a file read by the build (and its directory, unless that is the images
    /// directory itself, where outputs such as `sdcard.img` commonly go).
    pub fn add(&mut self, path: &Path, images: Option<&Path>) {
        if let Ok(m) = fs::metadata(path) {
            self.files.insert((m.dev(), m.ino()));
        }
        let real = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(dir) = real.parent()
            && Some(dir) != images
            && !self.dirs.iter().any(|d| d == dir)
        {
            self.dirs.push(dir.to_path_buf());
        }
        self.paths.push(real);
    }

    /// Why writing `out` would destroy an input, if it would.
    fn clash(&self, out: &Path) -> Option<String> {
        for m in [fs::symlink_metadata(out), fs::metadata(out)]
            .into_iter()
            .flatten()
        {
            if self.files.contains(&(m.dev(), m.ino())) {
                return Some("is (or links to) an input of this build".into());
            }
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()?;
        let real = dir.join(out.file_name()?);
        if self.paths.contains(&real) {
            return Some("is an input of this build".into());
        }
        if self.dirs.iter().any(|d| dir.starts_with(d)) {
            return Some(format!(
                "lies in {}, a directory of this build's inputs",
                dir.display()
            ));
        }
        None
    }
}

/// Refuses an output path that exists as anything but a regular file (or a symlink to
/// one), or that is or lies among the build's inputs. Nothing is written.
pub fn check_output(out: &Path, what: &str, inputs: &Inputs) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::Usage(format!(
            "refusing to write {what} {}: it {why}",
            out.display()
        )))
    };
    use std::os::unix::ffi::OsStrExt;
    if out.file_name().is_none() || out.as_os_str().as_bytes().ends_with(b"/") {
        return refuse("is not a file name".into());
    }
    match fs::metadata(out) {
        Ok(m) if !m.is_file() => {
            let t = m.file_type();
            let kind = if t.is_dir() {
                "a directory"
            } else if t.is_block_device() {
                "a block device"
            } else if t.is_char_device() {
                "a character device"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            return refuse(format!("exists and is {kind}, not a regular file"));
        }
        _ => {}
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent
        && !dir.is_dir()
    {
        return refuse(format!("is in {}, which is not a directory", dir.display()));
    }
    if let Some(why) = inputs.clash(out) {
        return refuse(why);
    }
    Ok(())
}

/// Staged files renamed into place together by `commit`.
#[derive(Default)]
pub struct Set {
    staged: Vec<crate::image::file::Staged>,
}

impl Set {
    pub fn new() -> Set {
        Set::default()
    }

    pub fn push(&mut self, s: crate::image::file::Staged) {
        self.staged.push(s);
    }

    /// Renames every file into place, in order; if one fails, the ones already renamed are
    /// removed again (and the others' temporary files), so nothing of this run stays.
    /// `stale` are files of earlier builds that this set makes wrong (a bmap of an older
    /// image): removed once everything is in place.
    pub fn commit(self, stale: &[PathBuf], inputs: &Inputs) -> Result<()> {
        let mut done: Vec<PathBuf> = Vec::new();
        let rollback = |done: &[PathBuf]| {
            with_registry(|_, committed| {
                for d in done {
                    let _ = fs::remove_file(d);
                }
                committed.retain(|c| !done.contains(c));
            });
        };
        for s in self.staged {
            match s.commit_in_set() {
                Ok(dest) => done.push(dest),
                Err(e) => {
                    rollback(&done);
                    return Err(e);
                }
            }
        }
        for p in stale {
            if let Err(e) = remove_stale(p, inputs) {
                rollback(&done);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The set is complete: a signal from now on no longer removes its files.
pub fn finished() {
    with_registry(|_, committed| committed.clear());
}

/// Removes a file this build owns but did not write this time (a bmap left by an earlier
/// build with `--bmap`), unless it is not a regular file or is an input.
pub fn remove_stale(path: &Path, inputs: &Inputs) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && inputs.clash(path).is_none() => fs::remove_file(path)
            .map_err(|e| Error::io(format!("removing the stale {}", path.display()), e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::file::Staged;

    #[test]
    fn a_failing_commit_removes_what_it_renamed() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut set = Set::new();
        set.push(Staged::create(&a).unwrap());
        set.push(Staged::create(&b).unwrap());
        // `b` becomes a non-empty directory after the checks: its rename fails.
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("x"), b"x").unwrap();
        assert!(set.commit(&[], &Inputs::default()).is_err());
        let mut left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["b"]);
        assert!(with_registry(|p, c| p.is_empty() && c.is_empty()));
    }
}
