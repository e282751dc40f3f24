//! SHA-256 of two byte streams at once.
//!
//! On x86-64 with the SHA extensions, one SHA-256 stream is bound by the latency of the
//! round instruction: each pair of rounds waits for the one before. Two independent streams
//! interleaved keep the unit busy and hash nearly twice the bytes in the same time on one
//! core. Hashing a kernel and a root filesystem side by side then costs about what the
//! kernel alone would.
//!
//! Elsewhere (another CPU, or no SHA extensions) the two streams are hashed one after the
//! other, with the same results.

use sha2::block_api::compress256;

/// One SHA-256 computation, fed in pieces of any length.
pub struct Stream {
    state: [u32; 8],
    /// Bytes taken so far.
    len: u64,
    /// The start of a block not complete yet.
    pending: [u8; 64],
    filled: usize,
}

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl Default for Stream {
    fn default() -> Self {
        Self::new()
    }
}

impl Stream {
    pub fn new() -> Stream {
        Stream {
            state: INITIAL,
            len: 0,
            pending: [0; 64],
            filled: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let rest = self.top_up(data);
        self.take_aligned(rest);
    }

    /// The digest of everything taken.
    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut last = [0u8; 128];
        last[..self.filled].copy_from_slice(&self.pending[..self.filled]);
        last[self.filled] = 0x80;
        // The length goes in the last 8 bytes of one block, or of a second one when the
        // pending bytes and the 0x80 leave fewer than 8.
        let end = if self.filled < 56 { 64 } else { 128 };
        last[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        let (blocks, _) = last[..end].as_chunks::<64>();
        compress256(&mut self.state, blocks);
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    /// Completes the pending block from the front of `data` (hashing it once full); gives
    /// what is left of `data`, which then starts on a block boundary (or is empty).
    fn top_up<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        if self.filled == 0 {
            return data;
        }
        let take = (64 - self.filled).min(data.len());
        self.pending[self.filled..self.filled + take].copy_from_slice(&data[..take]);
        self.filled += take;
        self.len += take as u64;
        if self.filled == 64 {
            compress256(&mut self.state, &[self.pending]);
            self.filled = 0;
        }
        &data[take..]
    }

    /// Takes `data`, which starts on a block boundary (what `top_up` left): its whole
    /// blocks are hashed, the rest kept for the next piece.
    fn take_aligned(&mut self, data: &[u8]) {
        debug_assert!(self.filled == 0 || data.is_empty());
        let (blocks, tail) = data.as_chunks::<64>();
        compress256(&mut self.state, blocks);
        self.len += (blocks.len() * 64) as u64;
        self.pending[self.filled..self.filled + tail.len()].copy_from_slice(tail);
        self.filled += tail.len();
        self.len += tail.len() as u64;
    }
}

/// Feeds `da` to `a` and `db` to `b`: the whole blocks both have are hashed together, the
/// rest one stream at a time.
pub fn update_pair(a: &mut Stream, da: &[u8], b: &mut Stream, db: &[u8]) {
    let (ra, rb) = (a.top_up(da), b.top_up(db));
    // A stream still short of a whole block has taken all of its data.
    let n = ra.len().min(rb.len()) / 64;
    let (both_a, rest_a) = ra.split_at(64 * n);
    let (both_b, rest_b) = rb.split_at(64 * n);
    compress_pair(
        &mut a.state,
        both_a.as_chunks::<64>().0,
        &mut b.state,
        both_b.as_chunks::<64>().0,
    );
    a.len += both_a.len() as u64;
    b.len += both_b.len() as u64;
    a.take_aligned(rest_a);
    b.take_aligned(rest_b);
}

/// Whether two streams are faster together than one after the other on this CPU.
pub fn paired() -> bool {
    // The detection is cached by the standard library.
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Both states through their blocks (`ba` and `bb` of the same length).
fn compress_pair(sa: &mut [u32; 8], ba: &[[u8; 64]], sb: &mut [u32; 8], bb: &[[u8; 64]]) {
    #[cfg(target_arch = "x86_64")]
    if paired() {
        // SAFETY: the CPU has the SHA, SSSE3 and SSE4.1 instructions (checked just above).
        unsafe { x86::compress_pair(sa, ba, sb, bb) };
        return;
    }
    compress256(sa, ba);
    compress256(sb, bb);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The state as the round instruction takes it: (A, B, E, F) and (C, D, G, H).
    #[inline(always)]
    unsafe fn load(s: &[u32; 8]) -> (__m128i, __m128i) {
        // SAFETY: 16-byte unaligned loads from the 32 bytes of `s`.
        unsafe {
            let abcd = _mm_shuffle_epi32(_mm_loadu_si128(s.as_ptr().cast()), 0xB1);
            let efgh = _mm_shuffle_epi32(_mm_loadu_si128(s.as_ptr().add(4).cast()), 0x1B);
            (
                _mm_alignr_epi8(abcd, efgh, 8),
                _mm_blend_epi16(efgh, abcd, 0xF0),
            )
        }
    }

    #[inline(always)]
    unsafe fn store(s: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        // SAFETY: 16-byte unaligned stores into the 32 bytes of `s`.
        unsafe {
            let feba = _mm_shuffle_epi32(abef, 0x1B);
            let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
            _mm_storeu_si128(s.as_mut_ptr().cast(), _mm_blend_epi16(feba, dchg, 0xF0));
            _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), _mm_alignr_epi8(dchg, feba, 8));
        }
    }

    /// Both states through their blocks, `ba` and `bb` of the same length, the rounds of
    /// the two interleaved.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    // The words moved down by the last schedule are not read again.
    #[allow(unused_assignments)]
    pub(super) unsafe fn compress_pair(
        sa: &mut [u32; 8],
        ba: &[[u8; 64]],
        sb: &mut [u32; 8],
        bb: &[[u8; 64]],
    ) {
        debug_assert_eq!(ba.len(), bb.len());
        // SAFETY: register arithmetic, and unaligned loads within the blocks and `K`.
        unsafe {
            let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
            let word = |x: &[u8; 64], i: usize| {
                _mm_shuffle_epi8(_mm_loadu_si128(x.as_ptr().add(16 * i).cast()), swap)
            };
            let (mut a0, mut a1) = load(sa);
            let (mut b0, mut b1) = load(sb);
            for (xa, xb) in ba.iter().zip(bb) {
                let (was_a0, was_a1, was_b0, was_b1) = (a0, a1, b0, b1);
                let (mut wa0, mut wa1, mut wa2, mut wa3) =
                    (word(xa, 0), word(xa, 1), word(xa, 2), word(xa, 3));
                let (mut wb0, mut wb1, mut wb2, mut wb3) =
                    (word(xb, 0), word(xb, 1), word(xb, 2), word(xb, 3));
                // Four rounds of each stream, with message words `$wa` and `$wb`.
                macro_rules! rounds {
                    ($i:expr, $wa:expr, $wb:expr) => {{
                        let k = _mm_loadu_si128(K.as_ptr().add(4 * $i).cast());
                        let (ma, mb) = (_mm_add_epi32($wa, k), _mm_add_epi32($wb, k));
                        a1 = _mm_sha256rnds2_epu32(a1, a0, ma);
                        b1 = _mm_sha256rnds2_epu32(b1, b0, mb);
                        a0 = _mm_sha256rnds2_epu32(a0, a1, _mm_shuffle_epi32(ma, 0x0E));
                        b0 = _mm_sha256rnds2_epu32(b0, b1, _mm_shuffle_epi32(mb, 0x0E));
                    }};
                }
                // The next four message words from the last sixteen, which move down.
                macro_rules! schedule {
                    ($w0:ident, $w1:ident, $w2:ident, $w3:ident) => {{
                        let next = _mm_sha256msg2_epu32(
                            _mm_add_epi32(
                                _mm_sha256msg1_epu32($w0, $w1),
                                _mm_alignr_epi8($w3, $w2, 4),
                            ),
                            $w3,
                        );
                        ($w0, $w1, $w2, $w3) = ($w1, $w2, $w3, next);
                    }};
                }
                rounds!(0, wa0, wb0);
                rounds!(1, wa1, wb1);
                rounds!(2, wa2, wb2);
                rounds!(3, wa3, wb3);
                macro_rules! more {
                    ($($i:expr),*) => {$(
                        schedule!(wa0, wa1, wa2, wa3);
                        schedule!(wb0, wb1, wb2, wb3);
                        rounds!($i, wa3, wb3);
                    )*};
                }
                more!(4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
                a0 = _mm_add_epi32(a0, was_a0);
                a1 = _mm_add_epi32(a1, was_a1);
                b0 = _mm_add_epi32(b0, was_b0);
                b1 = _mm_add_epi32(b1, was_b1);
            }
            store(sa, a0, a1);
            store(sb, b0, b1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn data(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7 + i / 251)) as u8)
            .collect()
    }

    fn reference(d: &[u8]) -> [u8; 32] {
        Sha256::digest(d).into()
    }

    #[test]
    fn one_stream_in_pieces_of_any_length_matches_sha256() {
        for len in [
            0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 70_001,
        ] {
            let d = data(len, len);
            for piece in [1, 7, 63, 64, 65, 200, usize::MAX] {
                let mut s = Stream::new();
                for c in d.chunks(piece.min(len.max(1))) {
                    s.update(c);
                }
                assert_eq!(s.finish(), reference(&d), "len {len} piece {piece}");
            }
        }
    }

    #[test]
    fn two_streams_fed_together_match_sha256_each() {
        // Lengths around block boundaries and the padding limit, pieces of differing
        // sizes, so that blocks are hashed both in pairs and alone.
        let lens = [0, 1, 63, 64, 65, 120, 128, 4096, 4097, 65_599, 200_000];
        for (i, &la) in lens.iter().enumerate() {
            for &lb in &lens[i..] {
                let (da, db) = (data(la, 1), data(lb, 2));
                for (pa, pb) in [(64, 64), (100, 3000), (4096, 640), (usize::MAX, 1000)] {
                    let (mut a, mut b) = (Stream::new(), Stream::new());
                    let (mut ca, mut cb) =
                        (da.chunks(pa.min(la.max(1))), db.chunks(pb.min(lb.max(1))));
                    loop {
                        match (ca.next(), cb.next()) {
                            (None, None) => break,
                            (x, y) => {
                                update_pair(&mut a, x.unwrap_or(&[]), &mut b, y.unwrap_or(&[]))
                            }
                        }
                    }
                    assert_eq!(a.finish(), reference(&da), "a: {la} bytes in {pa}");
                    assert_eq!(b.finish(), reference(&db), "b: {lb} bytes in {pb}");
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_paired_rounds_match_the_single_ones() {
        // Straight at the SHA instructions: the same blocks from different states give what
        // one stream at a time gives.
        if !paired() {
            assert!(
                std::env::var_os("SKIFF_FLASH_TEST_ALLOW_MISSING").is_some(),
                "this CPU has no SHA extensions, so the paired rounds cannot run here; set \
                 SKIFF_FLASH_TEST_ALLOW_MISSING=1 to skip this test"
            );
            return;
        }
        let blocks = |seed| data(64 * 300, seed).as_chunks::<64>().0.to_vec();
        let (one, other) = (blocks(5), blocks(9));
        for n in [0, 1, 2, 3, 17, 300] {
            let (mut a, mut b) = (INITIAL, [7u32; 8]);
            let (mut ra, mut rb) = (a, b);
            // SAFETY: `paired` found the SHA, SSSE3 and SSE4.1 instructions.
            unsafe { x86::compress_pair(&mut a, &one[..n], &mut b, &other[..n]) };
            compress256(&mut ra, &one[..n]);
            compress256(&mut rb, &other[..n]);
            assert_eq!((a, b), (ra, rb), "{n} blocks");
        }
    }
}
