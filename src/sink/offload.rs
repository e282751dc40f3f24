//! Work on the bytes of a stream on a thread of its own, so that hashing runs beside the
//! reads and writes instead of between them.
//!
//! The sending side copies what it is given into batches of up to `BATCH` bytes (small
//! pieces at different offsets share a batch) and hands full ones to the worker over a
//! bounded channel; the worker hands the emptied buffers back. At most `BUFFERS` batches
//! exist, so memory stays flat (a few MiB) whatever the stream's size, and a slow worker
//! holds the sender back rather than letting batches pile up.
//!
//! Not for deciding what is computed: that is the `Consume` given to `Offload::spawn`.

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes a batch holds before it is handed over.
pub const BATCH: usize = 512 << 10;
/// Batches in existence at once (in flight or being filled).
const BUFFERS: usize = 4;
/// Pieces a batch holds before it is handed over (many small metadata writes).
const PIECES: usize = 4096;

/// One piece of the stream, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes at stream offset `at`, the next ones in the batch's `bytes`.
    Data { at: u64, len: usize },
    /// `len` zero bytes at `at` that are part of the stream's content.
    Zeros { at: u64, len: u64 },
    /// `len` zero bytes that are only filler between content.
    Gap(u64),
    /// The `len` bytes from `at` are one file's content (`Data` for them may follow).
    File { at: u64, len: u64 },
}

/// Pieces of the stream with the bytes of their `Data` ones.
#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Batch {
    /// The pieces in order, each `Data` one with its bytes.
    pub fn each(&self, mut f: impl FnMut(Piece, &[u8])) {
        let mut off = 0;
        for p in &self.pieces {
            match *p {
                Piece::Data { len, .. } => {
                    f(*p, &self.bytes[off..off + len]);
                    off += len;
                }
                _ => f(*p, &[]),
            }
        }
    }
}

/// What the worker does with the stream.
pub trait Consume: Send + 'static {
    type Out: Send + 'static;
    fn batch(&mut self, b: &Batch);
    fn finish(self) -> Self::Out;
}

/// The sending side: batches bytes and hands them to the worker.
pub struct Offload<C: Consume> {
    to_worker: Option<SyncSender<Batch>>,
    emptied: Receiver<Batch>,
    made: usize,
    filling: Batch,
    worker: Option<JoinHandle<C::Out>>,
}

fn stopped() -> io::Error {
    io::Error::other("the hashing thread stopped")
}

impl<C: Consume> Offload<C> {
    /// Starts a worker thread named `name` running `c`.
    pub fn spawn(name: &str, mut c: C) -> io::Result<Self> {
        let (to_worker, batches) = sync_channel::<Batch>(BUFFERS);
        let (give_back, emptied) = sync_channel::<Batch>(BUFFERS);
        let worker = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for mut b in batches {
                    c.batch(&b);
                    b.bytes.clear();
                    b.pieces.clear();
                    // The sender may be gone (finished or failed): the buffer is dropped.
                    let _ = give_back.try_send(b);
                }
                c.finish()
            })?;
        Ok(Offload {
            to_worker: Some(to_worker),
            emptied,
            made: 1,
            filling: Batch {
                bytes: Vec::with_capacity(BATCH),
                pieces: Vec::new(),
            },
            worker: Some(worker),
        })
    }

    /// Hands the batch being filled to the worker and takes an empty one.
    fn hand_over(&mut self) -> io::Result<()> {
        if self.filling.pieces.is_empty() {
            return Ok(());
        }
        let next = match self.emptied.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < BUFFERS => {
                self.made += 1;
                Batch {
                    bytes: Vec::with_capacity(BATCH),
                    pieces: Vec::new(),
                }
            }
            Err(_) => self.emptied.recv().map_err(|_| stopped())?,
        };
        let full = std::mem::replace(&mut self.filling, next);
        let tx = self.to_worker.as_ref().ok_or_else(stopped)?;
        tx.send(full).map_err(|_| stopped())
    }

    fn piece(&mut self, p: Piece) -> io::Result<()> {
        if self.filling.pieces.len() >= PIECES {
            self.hand_over()?;
        }
        self.filling.pieces.push(p);
        Ok(())
    }

    /// `bytes` at stream offset `at`.
    pub fn data(&mut self, at: u64, mut bytes: &[u8]) -> io::Result<()> {
        let mut at = at;
        while !bytes.is_empty() {
            if self.filling.bytes.len() == BATCH {
                self.hand_over()?;
            }
            let n = (BATCH - self.filling.bytes.len()).min(bytes.len());
            let follows = match self.filling.pieces.last_mut() {
                Some(Piece::Data { at: a, len }) if *a + *len as u64 == at => {
                    *len += n;
                    true
                }
                _ => false,
            };
            if !follows {
                self.piece(Piece::Data { at, len: n })?;
            }
            self.filling.bytes.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            at += n as u64;
        }
        Ok(())
    }

    /// Zeros that are content.
    pub fn zeros(&mut self, at: u64, len: u64) -> io::Result<()> {
        if len > 0 {
            self.piece(Piece::Zeros { at, len })?;
        }
        Ok(())
    }

    /// Announces a file's content at `at`.
    pub fn file(&mut self, at: u64, len: u64) -> io::Result<()> {
        self.piece(Piece::File { at, len })
    }

    /// Zeros that are filler.
    pub fn gap(&mut self, len: u64) -> io::Result<()> {
        if len > 0 {
            self.piece(Piece::Gap(len))?;
        }
        Ok(())
    }

    /// Hands over what is left, waits for the worker and returns its result.
    pub fn finish(mut self) -> io::Result<C::Out> {
        self.hand_over()?;
        drop(self.to_worker.take());
        let w = self.worker.take().ok_or_else(stopped)?;
        w.join().map_err(|_| stopped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every piece with its bytes.
    struct Log(Vec<(Piece, Vec<u8>)>);

    impl Consume for Log {
        type Out = Vec<(Piece, Vec<u8>)>;
        fn batch(&mut self, b: &Batch) {
            b.each(|p, d| self.0.push((p, d.to_vec())));
        }
        fn finish(self) -> Self::Out {
            self.0
        }
    }

    #[test]
    fn pieces_arrive_in_order_and_contiguous_data_merges() {
        let mut o = Offload::spawn("test", Log(Vec::new())).unwrap();
        let big: Vec<u8> = (0..BATCH * 3 + 17).map(|i| (i % 253) as u8).collect();
        o.data(0, b"ab").unwrap();
        o.data(2, b"cd").unwrap();
        o.gap(10).unwrap();
        o.data(100, &big).unwrap();
        o.zeros(100 + big.len() as u64, 5).unwrap();
        o.data(1, b"x").unwrap();
        let log = o.finish().unwrap();
        assert_eq!(log[0], (Piece::Data { at: 0, len: 4 }, b"abcd".to_vec()));
        assert_eq!(log[1], (Piece::Gap(10), vec![]));
        // The large write is split at batch edges, in order, with nothing lost.
        let mut joined = Vec::new();
        let mut i = 2;
        while let (Piece::Data { at, len }, d) = &log[i] {
            assert_eq!(*at, 100 + joined.len() as u64);
            assert_eq!(*len, d.len());
            joined.extend_from_slice(d);
            i += 1;
        }
        assert!(joined == big);
        assert_eq!(
            log[i],
            (
                Piece::Zeros {
                    at: 100 + big.len() as u64,
                    len: 5
                },
                vec![]
            )
        );
        assert_eq!(log[i + 1], (Piece::Data { at: 1, len: 1 }, b"x".to_vec()));
        assert_eq!(log.len(), i + 2);
    }

    #[test]
    fn many_small_pieces_are_batched_without_loss() {
        let mut o = Offload::spawn("test", Log(Vec::new())).unwrap();
        for i in 0..(PIECES as u64 * 3) {
            o.data(i * 4096, &[i as u8; 3]).unwrap();
        }
        let log = o.finish().unwrap();
        assert_eq!(log.len(), PIECES * 3);
        for (i, (p, d)) in log.iter().enumerate() {
            assert_eq!(
                *p,
                Piece::Data {
                    at: i as u64 * 4096,
                    len: 3
                }
            );
            assert_eq!(*d, vec![i as u8; 3]);
        }
    }
}
