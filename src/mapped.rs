//! Reading a file through read-only mappings of its page cache, without copying it into a
//! buffer first. A page that cannot be read (the file was cut short meanwhile, or the disk
//! failed) would end the process with SIGBUS; here a guard fills that page with zeros,
//! and the read is reported as failed, so that the caller reads the file another way (and
//! learns why).
//!
//! Not for writing, and not for sharing the mapped bytes with another thread: the guard
//! only knows the pages its own thread mapped.
//!
//! The bytes handed on are a shared mapping: another process writing the file, or the
//! guard's zero pages, can change them while they are read. Readers here only hash them,
//! and a file that changes meanwhile is refused by its stamp, or by the failed read.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering, compiler_fence};

/// Bytes mapped at a time: one window is mapped, handed on and unmapped before the next,
/// so the process's resident memory grows by at most this much per reader.
pub const WINDOW: usize = 4 << 20;

/// Reads the first `size` bytes of `f` a window at a time, in order, handing each to
/// `each`, which may end the reading early with its error.
///
/// `None` when the file cannot be mapped (a filesystem without mappings, no guard to be
/// had) or one of its pages could not be read while mapped: then what `each` was given is
/// not the file's content, and the caller reads it another way.
pub fn windows<E>(
    f: &File,
    size: u64,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Option<Result<(), E>> {
    let mut c = Cursor::new(f, size).ok()?;
    loop {
        let bytes = c.bytes()?;
        if bytes.is_empty() {
            return Some(Ok(()));
        }
        let n = bytes.len();
        let r = each(bytes);
        c.used(n);
        if let Err(e) = r {
            return (!c.faulted()).then_some(Err(e));
        }
    }
}

/// A file read through one window at a time, by the thread that made the cursor (it
/// cannot be sent to another): several may be read side by side by one thread. The window
/// is unmapped when it is used up, or when the cursor is dropped.
pub struct Cursor<F: AsFd> {
    f: F,
    size: u64,
    /// Where the window starts in the file.
    at: u64,
    map: Option<Map>,
    /// Bytes of the window used already.
    used: usize,
    slot: Claim,
    page: usize,
    /// The guard knows the thread that claimed the slot: the cursor stays on it.
    _here: std::marker::PhantomData<*const ()>,
}

impl<F: AsFd> Cursor<F> {
    /// A cursor over the first `size` bytes of `f`; `f` back when files cannot be read
    /// through mappings here (no guard, or too many readers at once).
    pub fn new(f: F, size: u64) -> Result<Cursor<F>, F> {
        let Some(page) = guard() else { return Err(f) };
        let Some(slot) = Slot::claim() else {
            return Err(f);
        };
        Ok(Cursor {
            f,
            size,
            at: 0,
            map: None,
            used: 0,
            slot,
            page,
            _here: std::marker::PhantomData,
        })
    }

    /// The bytes of the window not used yet, the next window mapped once this one is used
    /// up; empty at the end. `None` once a page could not be read (what was given before
    /// was not the file's content) or a window could not be mapped.
    pub fn bytes(&mut self) -> Option<&[u8]> {
        if self.faulted() {
            return None;
        }
        if self.map.as_ref().is_none_or(|m| self.used == m.len) {
            if let Some(m) = self.map.take() {
                self.at += m.len as u64;
                self.unmap(m);
            }
            self.used = 0;
            if self.at == self.size {
                return Some(&[]);
            }
            let len = (self.size - self.at).min(WINDOW as u64) as usize;
            let m = Map::new(self.f.as_fd(), self.at, len)?;
            // Watched before any byte of it is read.
            self.slot
                .0
                .set(m.addr, m.addr + len.next_multiple_of(self.page));
            self.map = Some(m);
        }
        self.map.as_ref().map(|m| &m.bytes()[self.used..])
    }

    /// Marks `n` more bytes of the window as used.
    pub fn used(&mut self, n: usize) {
        self.used += n;
        debug_assert!(self.map.as_ref().is_some_and(|m| self.used <= m.len));
    }

    /// Whether a page could not be read: then nothing given so far can be trusted.
    pub fn faulted(&self) -> bool {
        self.slot.faulted()
    }

    /// The file read.
    pub fn file(&self) -> &F {
        &self.f
    }

    /// The range forgotten before it is unmapped.
    fn unmap(&self, m: Map) {
        self.slot.0.set(0, 0);
        drop(m);
    }
}

impl<F: AsFd> Drop for Cursor<F> {
    fn drop(&mut self) {
        if let Some(m) = self.map.take() {
            self.unmap(m);
        }
    }
}

/// One read-only shared mapping, unmapped when dropped.
struct Map {
    addr: usize,
    len: usize,
}

impl Map {
    fn new(f: BorrowedFd<'_>, at: u64, len: usize) -> Option<Map> {
        let offset = libc::off_t::try_from(at).ok()?;
        // SAFETY: a new mapping chosen by the kernel; no existing memory is touched. It is
        // read only through `bytes` while the guard watches it, and unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                offset,
            )
        };
        (p != libc::MAP_FAILED).then_some(Map {
            addr: p as usize,
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes are mapped at `addr` until `self` is dropped; a page
        // that cannot be read is replaced with zeros by the guard instead of faulting.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, no longer borrowed.
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
        }
    }
}

/// Readers that may be inside a mapping at once, at most; a reader beyond them reads
/// another way.
const SLOTS: usize = 32;

/// The address range one thread is reading through a mapping, and whether a page of it
/// faulted. Written by its thread and read by that thread's signal handler.
struct Slot {
    taken: AtomicBool,
    /// The thread reading (its kernel thread id): a fault is only ever its own thread's.
    owner: AtomicI32,
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

static WATCHED: [Slot; SLOTS] = [const {
    Slot {
        taken: AtomicBool::new(false),
        owner: AtomicI32::new(0),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; SLOTS];

/// A claimed slot, given back when dropped.
struct Claim(&'static Slot);

impl Slot {
    fn claim() -> Option<Claim> {
        let s = WATCHED.iter().find(|s| {
            s.taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        s.faulted.store(false, Ordering::SeqCst);
        s.owner.store(gettid(), Ordering::SeqCst);
        Some(Claim(s))
    }

    fn set(&self, start: usize, end: usize) {
        self.start.store(start, Ordering::SeqCst);
        self.end.store(end, Ordering::SeqCst);
        // The handler must see the range before any access to it (and the range cleared
        // only after the last): no read of the mapping may move across this.
        compiler_fence(Ordering::SeqCst);
    }
}

impl Claim {
    fn faulted(&self) -> bool {
        self.0.faulted.load(Ordering::SeqCst)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.set(0, 0);
        self.0.owner.store(0, Ordering::SeqCst);
        self.0.taken.store(false, Ordering::Release);
    }
}

/// The calling thread's kernel id (async-signal safe: a plain system call).
fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The SIGBUS disposition before the guard, for faults that are not in a watched range.
static PREVIOUS: OnceLock<Previous> = OnceLock::new();
/// The page size, once the guard is installed (`None`: it could not be).
static GUARD: OnceLock<Option<usize>> = OnceLock::new();

struct Previous(libc::sigaction);
// SAFETY: plain data (a handler address, flags and a mask), only read after it is set.
unsafe impl Sync for Previous {}
unsafe impl Send for Previous {}

/// Installs the SIGBUS guard once; gives the page size.
fn guard() -> Option<usize> {
    *GUARD.get_or_init(|| {
        // SAFETY: sysconf and sigaction with valid pointers; the handler only does what is
        // async-signal safe (atomics, mmap, sigaction, or the previous handler).
        unsafe {
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).ok()?;
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return None;
            }
            PREVIOUS.set(Previous(old)).ok()?;
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) != 0 {
                return None;
            }
            Some(page)
        }
    })
}

/// A page that cannot be read in the range the faulting thread watches becomes zeros, to
/// the end of that range at once (on a failing disk, each further page would wait for its
/// own I/O error), and the range is marked faulted; the access then goes on. Any other
/// SIGBUS (another mapping, or one sent with kill) goes where it went before.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let page = GUARD.get().copied().flatten().unwrap_or(4096);
    // A memory fault has a positive code; a signal sent by a process has none.
    let me = if code > 0 { gettid() } else { 0 };
    for s in WATCHED
        .iter()
        .filter(|s| me != 0 && s.owner.load(Ordering::SeqCst) == me)
    {
        let (start, end) = (s.start.load(Ordering::SeqCst), s.end.load(Ordering::SeqCst));
        if start != 0 && (start..end).contains(&addr) {
            let from = addr & !(page - 1);
            // SAFETY: replaces pages inside this thread's own read-only mapping.
            let p = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                s.faulted.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    // SAFETY: calls the handler that was installed before, with what it expects, or puts
    // the default back so that the fault, repeated on return, ends the process as it would
    // have.
    unsafe {
        match PREVIOUS.get().map(|p| p.0) {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(old.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&bytes).unwrap();
        (t, bytes)
    }

    /// Reads `len` bytes of `t` through `windows`: its answer and the bytes it gave.
    fn read_all(t: &tempfile::NamedTempFile, len: usize) -> (Option<Result<(), ()>>, Vec<u8>) {
        let mut seen = Vec::new();
        let r = windows(t.as_file(), len as u64, |b| {
            seen.extend_from_slice(b);
            Ok(())
        });
        (r, seen)
    }

    /// Reads every byte of `b` (so that each page is touched).
    fn touch(b: &[u8]) {
        std::hint::black_box(b.iter().map(|&x| x as u64).sum::<u64>());
    }

    #[test]
    fn windows_give_the_file_in_order() {
        let len = 2 * WINDOW + 12345;
        let (t, bytes) = file_of(len);
        assert_eq!(read_all(&t, len), (Some(Ok(())), bytes));
    }

    #[test]
    fn an_error_of_the_reader_ends_the_reading() {
        let (t, _) = file_of(3 * WINDOW);
        let mut calls = 0;
        let r = windows(t.as_file(), (3 * WINDOW) as u64, |_| {
            calls += 1;
            Err("enough")
        });
        assert_eq!(r, Some(Err("enough")));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_file_cut_short_while_mapped_is_a_failed_read_not_a_crash() {
        let len = 2 * WINDOW;
        let (t, _) = file_of(len);
        let mut windows_seen = 0;
        let r = windows(t.as_file(), len as u64, |b| {
            windows_seen += 1;
            // Cut the file to a page inside the first window, then read all of it.
            t.as_file().set_len(4096).unwrap();
            touch(b);
            Ok::<(), ()>(())
        });
        assert_eq!(r, None, "a read past the cut must be reported");
        assert_eq!(windows_seen, 1, "the reading stops at the faulted window");
        // The guard is given back: the next reading of a whole file succeeds.
        let (t2, bytes) = file_of(WINDOW + 1);
        assert_eq!(read_all(&t2, WINDOW + 1), (Some(Ok(())), bytes));
    }

    #[test]
    fn a_fault_is_remembered_even_when_the_file_is_whole_again() {
        let len = 2 * WINDOW;
        let (t, _) = file_of(len);
        let mut c = Cursor::new(t.as_file(), len as u64).ok().unwrap();
        let mut other = Cursor::new(t.as_file(), len as u64).ok().unwrap();
        let n = c.bytes().unwrap().len();
        assert_eq!(other.bytes().unwrap().len(), n);
        // Cut while the window is mapped: its pages past the cut fault, and read as zeros.
        t.as_file().set_len(4096).unwrap();
        touch(c.bytes().unwrap());
        // The same length again: only the fault tells that the bytes read were not the
        // file's. The next window, and the end, are refused.
        t.as_file().set_len(len as u64).unwrap();
        c.used(n);
        assert!(c.faulted());
        assert!(c.bytes().is_none());
        // The other cursor in this thread never read past the cut: it is not faulted.
        assert!(!other.faulted());
        other.used(n);
        assert!(other.bytes().is_some());
    }

    #[test]
    fn a_file_shorter_than_asked_is_a_failed_read() {
        let (t, _) = file_of(10_000);
        let r = windows(t.as_file(), 3 * 4096 + 50_000, |b| {
            touch(b);
            Ok::<(), ()>(())
        });
        assert_eq!(r, None);
    }
}
