//! The one pseudo-random generator of the tests: xorshift64*, deterministic from its seed,
//! so every run sees the same bytes and mutations. Not for anything that needs real
//! randomness.

pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (zero, which xorshift never leaves, is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Seeded from a name (FNV-1a), so each named blob has bytes of its own.
    pub fn named(name: &str) -> Rng {
        let mut s: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            s = (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng::new(s)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Deterministic pseudo-random bytes seeded from `name`.
pub fn noise(name: &str, len: u64) -> Vec<u8> {
    Rng::named(name).bytes(len as usize)
}

/// Deterministic pseudo-random bytes seeded from a number.
pub fn pseudo(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).bytes(len)
}
