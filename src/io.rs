//! Small Read adapters composed around every copy: hash while reading, count, and check the
//! source still has the size the plan was made with.
//!
//! Not for buffering policy or destinations: writers and targets own those.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::plan::tree::{Source, Spooled};
use crate::sink::offload::{Batch, Consume, Offload};

/// Hashes (SHA-256) and counts everything read through it. A large source (`sized`) is
/// hashed on a thread of its own while the reader goes on copying.
pub struct HashReader<R> {
    inner: R,
    sum: Summer,
    count: u64,
}

/// Where a `HashReader`'s hash is computed.
enum Summer {
    Here(Sha256),
    Away(Offload<Sha>),
}

/// SHA-256 of every piece's bytes, on the hashing thread.
struct Sha(Sha256);

impl Consume for Sha {
    type Out = String;
    fn batch(&mut self, b: &Batch) {
        b.each(|_, bytes| self.0.update(bytes));
    }
    fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Sources from this size on are hashed on their own thread.
const AWAY_FROM: u64 = 4 << 20;

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            sum: Summer::Here(Sha256::new()),
            count: 0,
        }
    }

    /// A reader of a source of `size` bytes: a large one is hashed beside the reading.
    pub fn sized(inner: R, size: u64) -> Self {
        let sum =
            match (size >= AWAY_FROM).then(|| Offload::spawn("file hashing", Sha(Sha256::new()))) {
                Some(Ok(o)) => Summer::Away(o),
                // No thread to be had: hashed here instead.
                _ => Summer::Here(Sha256::new()),
            };
        HashReader {
            inner,
            sum,
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read so far, as lowercase hex.
    pub fn finish(self) -> String {
        match self.sum {
            Summer::Here(h) => hex(&h.finalize()),
            // Reads fail once the thread is gone, so this one has ended normally unless it
            // panicked, which is passed on.
            Summer::Away(o) => o.finish().unwrap_or_else(|e| panic!("file hashing: {e}")),
        }
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match &mut self.sum {
            Summer::Here(h) => h.update(&buf[..n]),
            Summer::Away(o) => o.data(self.count, &buf[..n])?,
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of a byte slice, as hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Opens a file's source for reading, limited to and hashed over its planned size.
pub fn open(source: &Source, size: u64) -> Result<HashReader<Box<dyn Read + '_>>> {
    let inner: Box<dyn Read> = match source {
        Source::Path(p) => {
            let f = File::open(p).map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
            let actual = f
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
                .len();
            if actual != size {
                return Err(Error::BadArtifact {
                    path: p.clone(),
                    message: format!(
                        "changed while building: planned {} bytes, now {}",
                        crate::units::bytes(size),
                        crate::units::bytes(actual)
                    ),
                });
            }
            Box::new(f.take(size))
        }
        Source::Text(t) => Box::new(t.as_bytes()),
        Source::Secret(t) => Box::new(t.expose().as_bytes()),
        Source::Bytes(b) => Box::new(&b[..]),
        Source::Spooled(s) => Box::new(SpooledReader::new(s)),
    };
    Ok(HashReader::sized(inner, size))
}

/// A source's content to copy. A large file is copied by the caller (in the kernel where
/// the destination can: `Sink::copy_file`) and hashed beside it by a thread that reads the
/// file itself, so its bytes cross into this process once, for the hash; anything else is
/// read, and hashed as it is read.
pub enum Content<'a> {
    File(FileCopy),
    Read(HashReader<Box<dyn Read + 'a>>),
}

/// Opens a source for copying (see `Content`), checked against its planned size. A file
/// that `ahead` is hashing already takes that hash; another large one gets a thread of
/// its own.
pub fn content<'a>(source: &'a Source, size: u64, ahead: Option<&Ahead>) -> Result<Content<'a>> {
    match source {
        Source::Path(p) if size >= AWAY_FROM || ahead.is_some_and(|a| a.of(p, size).is_some()) => {
            Ok(Content::File(FileCopy::open(p, size, ahead)?))
        }
        _ => Ok(Content::Read(open(source, size)?)),
    }
}

/// The large input files of a composition, hashed by a few threads from its start. Each
/// file's hash then runs beside the copying of the files before it too, not only of
/// itself, so a long hash (a kernel's) and the copies that follow it share the cores.
///
/// A file copied meanwhile does not wait for its hash: its record holds a placeholder
/// until `settle`, at the end of the composition, gives every hash (and checks that no
/// file changed while it was copied and hashed).
pub struct Ahead {
    jobs: std::collections::HashMap<PathBuf, Arc<Hashing>>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Copies done whose hashes are not settled yet, by placeholder number.
    unsettled: Mutex<Vec<Deferred>>,
    /// Placeholders given so far.
    given: std::sync::atomic::AtomicUsize,
}

/// A copy done whose hash is still being computed.
struct Deferred {
    placeholder: String,
    path: PathBuf,
    hashing: Arc<Hashing>,
}

/// One file being hashed on a thread of its own: opened (and stamped) when hashing was set
/// up, so the copy reads the very file that is hashed.
struct Hashing {
    file: File,
    size: u64,
    stamp: Stamp,
    done: Mutex<Option<Hashed>>,
    ready: Condvar,
}

/// A finished hash: the bytes read and the digest, or why the file could not be read (kept
/// as its kind and message, to be given to every waiter).
type Hashed = std::result::Result<(u64, String), (io::ErrorKind, String)>;

impl Hashing {
    fn new(file: File, meta: &std::fs::Metadata) -> Arc<Hashing> {
        Arc::new(Hashing {
            file,
            size: meta.len(),
            stamp: Stamp::of(meta),
            done: Mutex::new(None),
            ready: Condvar::new(),
        })
    }

    /// Hashes the file and hands the result to its waiters; a panic is an error for them,
    /// not a wait forever.
    fn run(&self, stop: &AtomicBool) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hash_at(&self.file, self.size, stop)
        }))
        .unwrap_or_else(|_| Err(io::Error::other("the hashing thread stopped")));
        self.report(r);
    }

    /// Hands the result to the waiters, unless one was handed already.
    fn report(&self, r: io::Result<(u64, String)>) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if done.is_none() {
            *done = Some(r.map_err(|e| (e.kind(), e.to_string())));
        }
        drop(done);
        self.ready.notify_all();
    }

    /// Waits for the hash: the bytes read and the digest.
    fn wait(&self) -> io::Result<(u64, String)> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = done.as_ref() {
                return r.clone().map_err(|(kind, m)| io::Error::new(kind, m));
            }
            done = self.ready.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl std::os::fd::AsFd for Hashing {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("files", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Files from this size on are hashed ahead; smaller ones (a device tree, a script) are
/// hashed as they are copied.
const AHEAD_FROM: u64 = 64 << 10;
/// Threads that hash ahead, at most.
const AHEAD_THREADS: usize = 4;
/// Files hashed ahead, at most: a few large ones are what matters (kernels, root
/// filesystems, firmware), and each is held open until the composition ends (many cards
/// may be written at once, each by a composition of its own).
const AHEAD_FILES: usize = 8;

impl Ahead {
    /// Starts hashing `files` (path and planned size; the largest of them, see
    /// `start_some`) on up to one thread per core, each with two files in hand where the
    /// CPU hashes two at once (`hash_queue`), at a lower priority than the copying. A file
    /// that cannot be opened, or no longer has its planned size, is left to its copy,
    /// which reports it.
    pub fn start(files: impl IntoIterator<Item = (PathBuf, u64)>) -> Ahead {
        Self::start_some(files, AHEAD_FILES)
    }

    /// `start` for the `most` largest files only: each holds its file open until the
    /// composition ends, and a tree of thousands must not run out of descriptors. The
    /// others are hashed beside their own copies.
    fn start_some(files: impl IntoIterator<Item = (PathBuf, u64)>, most: usize) -> Ahead {
        let mut files: Vec<_> = files
            .into_iter()
            .filter(|(_, size)| *size >= AHEAD_FROM)
            .collect();
        // The largest first: they take longest, and two of like size pair best.
        files.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
        let mut jobs = std::collections::HashMap::new();
        let mut queue = std::collections::VecDeque::new();
        for (path, size) in files {
            if jobs.len() == most {
                break;
            }
            if jobs.contains_key(&path) {
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if meta.len() != size {
                continue;
            }
            let h = Hashing::new(file, &meta);
            queue.push_back(h.clone());
            jobs.insert(path, h);
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Where two files hash together as fast as one alone, each thread takes two.
        let lanes = if crate::digest::paired() { 2 } else { 1 };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(AHEAD_THREADS)
            .min(queue.len().div_ceil(lanes));
        let queue: Arc<Queue> = Arc::new(Mutex::new(queue));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (queue, stop) = (queue.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("file hashing".into())
                .spawn(move || {
                    yield_to_copying();
                    // A panic has ended the hashing of the files in hand (see `Lane`); the
                    // others are still to be hashed.
                    while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        hash_queue(&queue, &stop, lanes)
                    }))
                    .is_err()
                    {}
                });
            if let Ok(w) = spawned {
                workers.push(w);
            }
        }
        if workers.is_empty() {
            // No thread to be had: every file is hashed beside its own copy instead.
            jobs.clear();
        }
        Ahead {
            jobs,
            stop,
            workers,
            unsettled: Mutex::new(Vec::new()),
            given: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Takes a finished copy whose hash is still being computed (its own handle is closed:
    /// the hashing job keeps the file open); gives its placeholder.
    fn defer(&self, path: PathBuf, hashing: Arc<Hashing>) -> String {
        let n = self.given.fetch_add(1, Ordering::Relaxed);
        let placeholder = format!("{UNSETTLED}{n}");
        self.unsettled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Deferred {
                placeholder: placeholder.clone(),
                path,
                hashing,
            });
        placeholder
    }

    /// Waits for every hash deferred since the last call: gives each placeholder's hash,
    /// or the error of the first file that could not be read or changed meanwhile.
    pub fn settle(&self) -> Result<std::collections::HashMap<String, String>> {
        let deferred =
            std::mem::take(&mut *self.unsettled.lock().unwrap_or_else(|e| e.into_inner()));
        deferred
            .into_iter()
            .map(|d| Ok((d.placeholder, d.hashing.settle(&d.path)?)))
            .collect()
    }

    /// The hashing of `path`, if it was started and the file still has `size` bytes.
    fn of(&self, path: &Path, size: u64) -> Option<Arc<Hashing>> {
        self.jobs.get(path).filter(|h| h.size == size).cloned()
    }
}

/// Files waiting for a hashing thread.
type Queue = Mutex<std::collections::VecDeque<Arc<Hashing>>>;

/// One file in a hashing thread's hands: read through its mappings and hashed as it goes.
struct Lane {
    cursor: crate::mapped::Cursor<Arc<Hashing>>,
    sum: crate::digest::Stream,
}

impl Drop for Lane {
    /// A file dropped before its hash was handed on (the thread panicked) gets an error,
    /// so its copy does not wait forever.
    fn drop(&mut self) {
        let stopped = io::Error::other("the hashing thread stopped");
        self.cursor.file().report(Err(stopped));
    }
}

/// Hashes the files of `queue` until none is left, `lanes` of them side by side: two go
/// through the CPU's SHA unit together where that is as fast as one alone
/// (`digest::update_pair`). A file that cannot be read through mappings is read instead
/// (`hash_at`).
fn hash_queue(queue: &Queue, stop: &AtomicBool, lanes: usize) {
    use crate::digest::{Stream, update_pair};
    let mut hand: Vec<Lane> = Vec::with_capacity(lanes);
    loop {
        // Taken together: two threads starting at once must not split the two largest
        // files between them, each left to hash one alone.
        let taken: Vec<Arc<Hashing>> = {
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            (hand.len()..lanes).map_while(|_| q.pop_front()).collect()
        };
        for h in taken {
            let size = h.size;
            match crate::mapped::Cursor::new(h, size) {
                Ok(cursor) => hand.push(Lane {
                    cursor,
                    sum: Stream::new(),
                }),
                Err(h) => h.run(stop),
            }
        }
        if hand.is_empty() {
            return;
        }
        if let Err(e) = stopped(stop) {
            for l in hand.drain(..) {
                l.cursor
                    .file()
                    .report(Err(io::Error::new(e.kind(), e.to_string())));
            }
            continue;
        }
        // A file read to its end, or that could not be read through its mapping, is done.
        hand.retain_mut(|l| match l.cursor.bytes().map(<[u8]>::is_empty) {
            Some(false) => true,
            read => {
                l.finish(read.is_some(), stop);
                false
            }
        });
        match hand.as_mut_slice() {
            [] => {}
            [l] => {
                if let Some(b) = l.cursor.bytes() {
                    let n = b.len();
                    l.sum.update(b);
                    l.cursor.used(n);
                }
            }
            [a, b, ..] => {
                if let (Some(x), Some(y)) = (a.cursor.bytes(), b.cursor.bytes()) {
                    let n = x.len().min(y.len());
                    update_pair(&mut a.sum, &x[..n], &mut b.sum, &y[..n]);
                    a.cursor.used(n);
                    b.cursor.used(n);
                }
            }
        }
    }
}

impl Lane {
    /// Hands on the file's hash: the one computed when it was `read` to its end through
    /// the mappings and still has its planned size; else (a page could not be read, or
    /// the end of a file cut short read as zeros) the hash of positioned reads, which
    /// tell how many bytes there were or what the error is.
    fn finish(&mut self, read: bool, stop: &AtomicBool) {
        let h = self.cursor.file().clone();
        let sum = std::mem::take(&mut self.sum);
        h.report(mapped_or_read(
            &h.file,
            h.size,
            read.then(|| sum.finish()),
            stop,
        ));
    }
}

/// Lowers the calling thread's scheduling priority (on Linux niceness is per thread), so
/// that the copying, which the composition waits on, keeps its core while the hashing
/// takes the rest. Best effort: a failure leaves the thread as it is.
fn yield_to_copying() {
    // SAFETY: a plain system call about the calling thread; nothing is borrowed.
    unsafe {
        libc::nice(NICE_AHEAD);
    }
}

/// How much nicer than the copying the hashing-ahead threads are.
const NICE_AHEAD: libc::c_int = 10;

/// How a placeholder for a hash not settled yet begins (never a hex digest).
const UNSETTLED: &str = "unsettled:";

/// Whether `hash` is a placeholder that `Ahead::settle` has not replaced.
pub fn is_unsettled(hash: &str) -> bool {
    hash.starts_with(UNSETTLED)
}

impl Drop for Ahead {
    /// Stops hashing what was not asked for (a composition that failed part way).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A source file being copied while another thread hashes it.
pub struct FileCopy {
    pub file: File,
    path: std::path::PathBuf,
    /// Where `Read` goes on from.
    pos: u64,
    hashing: Arc<Hashing>,
    /// Whether the hashing is one of a composition's `Ahead`, and so may be settled later.
    ahead: bool,
}

/// What changes when a file is written to or replaced.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: m.len(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl FileCopy {
    fn open(p: &Path, size: u64, ahead: Option<&Ahead>) -> Result<FileCopy> {
        let io = |e| Error::io(format!("opening {}", p.display()), e);
        if let Some(h) = ahead.and_then(|a| a.of(p, size)) {
            // Written to (or cut short) since hashing began: refused before any copy.
            h.check(p, size)?;
            return Ok(FileCopy {
                file: h.file.try_clone().map_err(io)?,
                path: p.to_path_buf(),
                pos: 0,
                hashing: h,
                ahead: true,
            });
        }
        let file = File::open(p).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.len() != size {
            return Err(Error::BadArtifact {
                path: p.to_path_buf(),
                message: format!(
                    "changed while building: planned {} bytes, now {}",
                    crate::units::bytes(size),
                    crate::units::bytes(meta.len())
                ),
            });
        }
        let hashing = Hashing::new(file.try_clone().map_err(io)?, &meta);
        let h = hashing.clone();
        std::thread::Builder::new()
            .name("file hashing".into())
            .spawn(move || h.run(&AtomicBool::new(false)))
            .map_err(io)?;
        Ok(FileCopy {
            file,
            path: p.to_path_buf(),
            pos: 0,
            hashing,
            ahead: false,
        })
    }

    /// The content's SHA-256, once it is copied; refuses a file that changed meanwhile
    /// (then the copy and the hash might not be of the same bytes). A file hashed ahead
    /// gives a placeholder instead, settled by `Ahead::settle`.
    pub fn finish(self, ahead: Option<&Ahead>) -> Result<String> {
        match ahead.filter(|_| self.ahead) {
            Some(a) => Ok(a.defer(self.path, self.hashing)),
            None => self.hashing.settle(&self.path),
        }
    }
}

impl Hashing {
    /// The hash, once done, of a file that did not change meanwhile (`path` names it).
    fn settle(&self, path: &Path) -> Result<String> {
        let (count, hash) = self.wait().map_err(|e| read_error(path, e))?;
        self.check(path, count)?;
        Ok(hash)
    }

    /// Refuses a file that changed since hashing began, or of which `count` bytes were
    /// hashed instead of all of it (then a copy and the hash might not be of the same
    /// bytes).
    fn check(&self, path: &Path, count: u64) -> Result<()> {
        let now = self.file.metadata().map_err(|e| read_error(path, e))?;
        if count != self.size || Stamp::of(&now) != self.stamp {
            return Err(Error::BadArtifact {
                path: path.to_path_buf(),
                message: "changed while building".into(),
            });
        }
        Ok(())
    }
}

fn read_error(path: &Path, e: io::Error) -> Error {
    Error::io(format!("reading {}", path.display()), e)
}

/// For a destination that cannot copy: the planned bytes, in order.
impl Read for FileCopy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (self.hashing.size - self.pos).min(buf.len() as u64) as usize;
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// SHA-256 of the first `size` bytes of `f` (fewer if it is shorter); gives the bytes read
/// too. Ends early, with an error, once `stop` is set.
///
/// Read through mappings of the page cache (no copy into a buffer). A file that cannot be
/// mapped, that faults while mapped (cut short, or a failing disk), or that is shorter than
/// `size` afterwards (the end of its last page reads as zeros, without a fault) is hashed
/// again with positioned reads, which tell how many bytes there were or what the error is.
fn hash_at(f: &File, size: u64, stop: &AtomicBool) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mapped = crate::mapped::windows(f, size, |bytes| {
        stopped(stop)?;
        h.update(bytes);
        Ok(())
    });
    match mapped {
        Some(Err(e)) => Err(e),
        Some(Ok(())) => mapped_or_read(f, size, Some(h.finalize().into()), stop),
        None => mapped_or_read(f, size, None, stop),
    }
}

/// The hash of the first `size` bytes of `f`: `mapped`, the digest of them read through
/// its mappings, if there is one and the file still has them all (the end of a file cut
/// short reads as zeros there, without a fault); else the hash of positioned reads.
fn mapped_or_read(
    f: &File,
    size: u64,
    mapped: Option<[u8; 32]>,
    stop: &AtomicBool,
) -> io::Result<(u64, String)> {
    match mapped {
        Some(d) if f.metadata()?.len() >= size => Ok((size, hex(&d))),
        _ => hash_read(f, size, stop),
    }
}

/// `hash_at` with positioned reads into a buffer.
fn hash_read(f: &File, size: u64, stop: &AtomicBool) -> io::Result<(u64, String)> {
    use std::os::unix::fs::FileExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        stopped(stop)?;
        let want = (size - at).min(buf.len() as u64) as usize;
        let n = f.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok((at, hex(&h.finalize())))
}

/// An error once hashing is to stop: `stop` set (the composition ended) or a signal came.
fn stopped(stop: &AtomicBool) -> io::Result<()> {
    if stop.load(Ordering::Relaxed) {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "hashing stopped",
        ));
    }
    if crate::signals::interrupted() {
        return Err(crate::signals::interrupted_error());
    }
    Ok(())
}

/// Reads a file of a decoded release image: its pieces in order, holes as zeros.
pub struct SpooledReader<'a> {
    s: &'a Spooled,
    /// The piece being read and the bytes of it already read.
    piece: usize,
    done: u64,
}

impl<'a> SpooledReader<'a> {
    pub fn new(s: &'a Spooled) -> Self {
        SpooledReader {
            s,
            piece: 0,
            done: 0,
        }
    }
}

impl Read for SpooledReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(p) = self.s.pieces.get(self.piece) {
            if self.done == p.len {
                self.piece += 1;
                self.done = 0;
                continue;
            }
            let n = ((p.len - self.done) as usize).min(buf.len());
            match p.at {
                Some(at) => {
                    std::os::unix::fs::FileExt::read_exact_at(
                        &*self.s.file,
                        &mut buf[..n],
                        at + self.done,
                    )?;
                }
                None => buf[..n].fill(0),
            }
            self.done += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// The most a configuration-type input (board, layout, genimage config, manifest, bmap,
/// checksum list) may hold: real ones are a few KiB, and reading is all in memory.
pub const CONFIG_LIMIT: u64 = 4 << 20;

/// Reads a small input file whole: refuses anything that is not a regular file (a device,
/// FIFO or directory could be endless or block) and anything over `CONFIG_LIMIT` bytes.
/// Refusals are bad input; only a failing read is an I/O error.
pub fn read_small(path: &Path, what: &str) -> Result<Vec<u8>> {
    let bad = |message: String| Error::BadArtifact {
        path: path.to_path_buf(),
        message,
    };
    // Non-blocking, so that opening a FIFO does not wait for a writer; refused below.
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => bad(format!("{what} not found")),
            _ => Error::io(format!("reading {what} {}", path.display()), e),
        })?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(bad(format!("{what} is not a regular file")));
    }
    if meta.len() > CONFIG_LIMIT {
        return Err(bad(format!(
            "{what} is {} bytes, more than the {} a {what} may have",
            crate::units::bytes(meta.len()),
            crate::units::bytes(CONFIG_LIMIT)
        )));
    }
    let mut out = Vec::new();
    f.take(CONFIG_LIMIT + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
    if out.len() as u64 > CONFIG_LIMIT {
        return Err(bad(format!(
            "{what} grew past {} bytes while read",
            CONFIG_LIMIT
        )));
    }
    Ok(out)
}

/// `read_small` for text: bytes that are not UTF-8 are bad input, located by line.
pub fn read_small_text(path: &Path, what: &str) -> Result<String> {
    let bytes = read_small(path, what)?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        Error::BadArtifact {
            path: path.to_path_buf(),
            message: format!("{what} is not UTF-8 text (line {line}, byte {at})"),
        }
    })
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Byte ranges of `buf` made of consecutive `block`-sized pieces that are not all zero (the
/// last piece may be shorter). What lies between them is all zero: writers leave it out or
/// declare it zero, the way a sparse file has holes.
pub fn nonzero_runs(buf: &[u8], block: usize) -> Vec<std::ops::Range<usize>> {
    block_runs(buf.len(), block, |r| !is_zero(&buf[r]))
}

/// Whether every byte is zero: OR-folded in 64-byte pieces, which the compiler turns into
/// wide vector instructions (a byte-by-byte search with early exit does not vectorise).
pub fn is_zero(b: &[u8]) -> bool {
    let mut pieces = b.chunks_exact(64);
    let wide = pieces
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0);
    wide && pieces.remainder().iter().all(|&x| x == 0)
}

/// Byte ranges of `new` whose `block`-sized pieces differ from `old`'s (same length): what
/// an in-place edit must write, the rest already being on the medium.
pub fn changed_runs(old: &[u8], new: &[u8], block: usize) -> Vec<std::ops::Range<usize>> {
    block_runs(new.len(), block, |r| old[r.clone()] != new[r])
}

/// The runs of consecutive `block`-sized pieces of `0..len` (the last may be shorter) for
/// which `keep` holds, neighbouring pieces merged.
fn block_runs(
    len: usize,
    block: usize,
    keep: impl Fn(std::ops::Range<usize>) -> bool,
) -> Vec<std::ops::Range<usize>> {
    let block = block.max(1);
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for s in (0..len).step_by(block) {
        let piece = s..(s + block).min(len);
        if !keep(piece.clone()) {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.end == piece.start => last.end = piece.end,
            _ => runs.push(piece),
        }
    }
    runs
}

/// Opens a device or image file to read (inspect, verify): a missing path is bad input.
pub fn open_target(target: &std::path::Path) -> crate::Result<std::fs::File> {
    std::fs::File::open(target).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            crate::Error::Usage(format!("{} does not exist", target.display()))
        } else {
            crate::Error::io(format!("opening {}", target.display()), e)
        }
    })
}

/// Positioned reads from a disk, image or buffer (shared, no cursor).
pub trait ReadAt: Sync {
    /// Fills `buf` from `offset`; fails if that runs past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Total size in bytes.
    fn size(&self) -> u64;

    /// `len` bytes at `at`, as many as exist and zeros for the rest (all zeros when the
    /// read fails): for readers that must carry on over any bytes.
    fn read_padded(&self, at: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let size = self.size();
        if at >= size {
            return buf;
        }
        let n = ((size - at) as usize).min(len);
        if self.read_exact_at(&mut buf[..n], at).is_err() {
            buf.fill(0);
        }
        buf
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> u64 {
        use std::io::Seek;
        // Block devices report 0 in metadata; seeking to the end gives their size.
        let mut f = self;
        f.seek(std::io::SeekFrom::End(0)).unwrap_or(0)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.len() as u64);
        match end {
            Some(end) => {
                buf.copy_from_slice(&self[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end",
            )),
        }
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }
}

/// A partition of a disk as mkext4's reader sees a filesystem: offsets from the partition's
/// start, reads past its end refused.
pub struct PartReader<'a> {
    pub dev: &'a dyn ReadAt,
    pub base: u64,
    pub len: u64,
}

impl mkext4::reader::ReadAt for PartReader<'_> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.dev.read_exact_at(buf, self.base + offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The content of a large source, which is copied, not read.
    fn copy_of(source: &Source, size: u64, ahead: Option<&Ahead>) -> FileCopy {
        match content(source, size, ahead).unwrap() {
            Content::File(c) => c,
            Content::Read(_) => panic!("a large file is copied, not read"),
        }
    }

    #[test]
    fn a_large_file_is_hashed_beside_its_copy_and_a_change_meanwhile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel");
        let data: Vec<u8> = (0..(AWAY_FROM as usize + 12345))
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let size = data.len() as u64;
        let source = Source::Path(path.clone());
        let mut c = copy_of(&source, size, None);
        let mut read = Vec::new();
        c.read_to_end(&mut read).unwrap();
        assert!(read == data);
        assert_eq!(c.finish(None).unwrap(), sha256(&data));
        // Written to while it was being copied: refused.
        let c = copy_of(&source, size, None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", 1000).unwrap();
        let e = c.finish(None).unwrap_err().to_string();
        assert!(e.contains("changed while building"), "{e}");
        // A small file is read and hashed as it is read.
        assert!(content(&source, 10, None).is_err());
        std::fs::write(&path, b"small").unwrap();
        assert!(matches!(
            content(&source, 5, None).unwrap(),
            Content::Read(_)
        ));
    }

    /// Two large files, their content as written.
    fn two_large(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        [("kernel", 3usize), ("rootfs", 7)]
            .iter()
            .map(|(name, k)| {
                let data: Vec<u8> = (0..(AWAY_FROM as usize + 999 * k))
                    .map(|i| (i * k % 251) as u8)
                    .collect();
                let path = dir.join(name);
                std::fs::write(&path, &data).unwrap();
                (path, data)
            })
            .collect()
    }

    #[test]
    fn files_hashed_ahead_settle_to_their_hashes_after_the_copies() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_large(dir.path());
        let ahead = Ahead::start(files.iter().map(|(p, d)| (p.clone(), d.len() as u64)));
        let mut placeholders = Vec::new();
        for (path, data) in &files {
            let source = Source::Path(path.clone());
            let mut c = copy_of(&source, data.len() as u64, Some(&ahead));
            let mut read = Vec::new();
            c.read_to_end(&mut read).unwrap();
            assert!(&read == data);
            let p = c.finish(Some(&ahead)).unwrap();
            assert!(p.starts_with(UNSETTLED), "{p}");
            placeholders.push(p);
        }
        let settled = ahead.settle().unwrap();
        assert_eq!(settled.len(), 2);
        for (p, (_, data)) in placeholders.iter().zip(&files) {
            assert_eq!(settled[p], sha256(data));
        }
        // A file the composition did not announce is hashed beside its own copy.
        let other = dir.path().join("other");
        std::fs::write(&other, &files[0].1).unwrap();
        let source = Source::Path(other);
        let c = copy_of(&source, files[0].1.len() as u64, Some(&ahead));
        assert_eq!(c.finish(Some(&ahead)).unwrap(), sha256(&files[0].1));
    }

    #[test]
    fn files_from_64_kib_are_hashed_ahead_and_smaller_ones_as_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [AHEAD_FROM as usize, AHEAD_FROM as usize - 1, 300_000];
        let files: Vec<(PathBuf, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data: Vec<u8> = (0..n).map(|j| (j * (i + 2) % 249) as u8).collect();
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, &data).unwrap();
                (path, data)
            })
            .collect();
        let ahead = Ahead::start(files.iter().map(|(p, d)| (p.clone(), d.len() as u64)));
        assert_eq!(ahead.jobs.len(), 2);
        for (path, data) in &files {
            let source = Source::Path(path.clone());
            let hash = match content(&source, data.len() as u64, Some(&ahead)).unwrap() {
                Content::File(c) => {
                    assert!(data.len() >= AHEAD_FROM as usize);
                    let p = c.finish(Some(&ahead)).unwrap();
                    ahead.settle().unwrap()[&p].clone()
                }
                Content::Read(mut r) => {
                    assert!(data.len() < AHEAD_FROM as usize);
                    std::io::copy(&mut r, &mut std::io::sink()).unwrap();
                    r.finish()
                }
            };
            assert_eq!(hash, sha256(data));
        }
    }

    #[test]
    fn a_file_changed_after_hashing_ahead_began_is_refused_when_settled() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_large(dir.path());
        let ahead = Ahead::start(files.iter().map(|(p, d)| (p.clone(), d.len() as u64)));
        let (path, data) = &files[1];
        let source = Source::Path(path.clone());
        let c = copy_of(&source, data.len() as u64, Some(&ahead));
        let p = c.finish(Some(&ahead)).unwrap();
        assert!(p.starts_with(UNSETTLED), "{p}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", 10).unwrap();
        let e = ahead.settle().unwrap_err().to_string();
        assert!(e.contains("changed while building"), "{e}");
        assert!(e.contains("rootfs"), "{e}");
        // Changed before its copy began: refused when opened for the copy.
        let (path, data) = &files[0];
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"y", 10).unwrap();
        let e = content(&Source::Path(path.clone()), data.len() as u64, Some(&ahead))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("changed while building"), "{e}");
        assert!(e.contains("kernel"), "{e}");
    }

    #[test]
    fn a_file_shorter_than_its_mapping_is_hashed_again_by_reads_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (path, data) = two_large(dir.path()).swap_remove(0);
        let f = File::open(&path).unwrap();
        // Whole: read through the mapping, the same digest as a plain hash.
        let len = data.len() as u64;
        assert_eq!(
            hash_at(&f, len, &AtomicBool::new(false)).unwrap(),
            (len, sha256(&data))
        );
        // Planned pages beyond its end fault while mapped; the reads that follow give the
        // bytes there really were, so the file is refused as changed, not hashed as zeros.
        let planned = len + 3 * crate::mapped::WINDOW as u64;
        assert_eq!(
            hash_at(&f, planned, &AtomicBool::new(false)).unwrap(),
            (len, sha256(&data))
        );
        // Short by less than the rest of its last page: no fault (that part of the page
        // reads as zeros), and still counted as it is.
        let short = File::create(dir.path().join("short")).unwrap();
        let data = &data[..(1 << 20) + 1000];
        std::io::Write::write_all(&mut &short, data).unwrap();
        let f = File::open(dir.path().join("short")).unwrap();
        assert_eq!(
            hash_at(&f, data.len() as u64 + 100, &AtomicBool::new(false)).unwrap(),
            (data.len() as u64, sha256(data))
        );
    }

    #[test]
    fn files_hashed_side_by_side_get_their_own_hashes_also_when_one_is_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let w = crate::mapped::WINDOW;
        // Planned size, and the size the file is cut to once its hashing is set up.
        let files = [
            (3 * w + 100, Some(5000)),
            (2 * w + 77, None),
            (1000, None),
            (64 * 1000, None),
            (w + 1000, Some(w + 900)),
            (w + 1, Some(w)),
            (0, None),
            (w / 2 + 3, None),
        ];
        for lanes in [1, 2] {
            let mut jobs = Vec::new();
            for (i, (len, cut)) in files.into_iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|j| (j * (i + 3) % 253) as u8).collect();
                let path = dir.path().join(format!("f{lanes}-{i}"));
                std::fs::write(&path, &data).unwrap();
                let f = File::open(&path).unwrap();
                let h = Hashing::new(f.try_clone().unwrap(), &f.metadata().unwrap());
                if let Some(c) = cut {
                    File::options()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(c as u64)
                        .unwrap();
                }
                jobs.push((h, data[..cut.unwrap_or(len)].to_vec()));
            }
            let queue: Queue = Mutex::new(jobs.iter().map(|(h, _)| h.clone()).collect());
            hash_queue(&queue, &AtomicBool::new(false), lanes);
            for (i, (h, data)) in jobs.iter().enumerate() {
                // A cut file is counted as it is now (so it is refused), never hashed
                // with zeros for its missing end.
                let want = (data.len() as u64, sha256(data));
                assert_eq!(h.wait().unwrap(), want, "file {i}, {lanes} lanes");
            }
        }
    }

    #[test]
    fn hashing_ahead_stops_when_the_composition_ends_early() {
        let dir = tempfile::tempdir().unwrap();
        let files = two_large(dir.path());
        // Nothing is copied or settled: dropping it stops and joins its threads.
        let ahead = Ahead::start(files.iter().map(|(p, d)| (p.clone(), d.len() as u64)));
        drop(ahead);
        // Once told to stop, a hash ends with an error, not a digest of part of the file.
        let (path, data) = &files[1];
        let f = File::open(path).unwrap();
        let e = hash_at(&f, data.len() as u64, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(hash_at(&f, data.len() as u64, &AtomicBool::new(false)).is_ok());
        // A file whose size is no longer the planned one is left to its copy, which
        // refuses it.
        let (path, data) = &files[0];
        let ahead = Ahead::start([(path.clone(), data.len() as u64 + 1)]);
        assert!(ahead.jobs.is_empty());
        // Only the largest files are hashed ahead; another one gets its own thread, and its
        // hash at once.
        let capped = Ahead::start_some(files.iter().map(|(p, d)| (p.clone(), d.len() as u64)), 1);
        assert_eq!(capped.jobs.keys().collect::<Vec<_>>(), [&files[1].0]);
        let (second, data2) = &files[0];
        let c = copy_of(
            &Source::Path(second.clone()),
            data2.len() as u64,
            Some(&capped),
        );
        assert_eq!(c.finish(Some(&capped)).unwrap(), sha256(data2));
        drop(capped);
        let e = content(
            &Source::Path(path.clone()),
            data.len() as u64 + 1,
            Some(&ahead),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("changed while building"), "{e}");
    }

    #[test]
    fn one_set_byte_anywhere_is_not_zero() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4099] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "{len}");
            for i in 0..len {
                b[i] = 0x80;
                assert!(!is_zero(&b), "{len} {i}");
                b[i] = 0;
            }
        }
    }

    #[test]
    fn hash_reader_hashes_what_passes() {
        let mut r = HashReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.count(), 3);
        assert_eq!(
            r.finish(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn zero_blocks_are_left_out_and_runs_merge() {
        let mut buf = vec![0u8; 5 * 4096 + 100];
        buf[10] = 1;
        buf[4096 + 5] = 2;
        buf[3 * 4096] = 3;
        buf[5 * 4096 + 99] = 4;
        assert_eq!(
            nonzero_runs(&buf, 4096),
            vec![0..2 * 4096, 3 * 4096..4 * 4096, 5 * 4096..5 * 4096 + 100]
        );
        assert!(nonzero_runs(&[0; 8192], 4096).is_empty());
    }
}
