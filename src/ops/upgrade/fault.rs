//! Simulated power loss for the power-safety tests, built only with the `fault-injection`
//! feature: the process stops before a chosen write (or the flush it falls on), and with a
//! simulated volatile write cache only a pseudo-random subset of the unflushed writes
//! reaches the medium. Not for anything a release does: without the feature none of this
//! exists and the variables below are ignored.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Environment variable that stops the process before its N+1th write.
pub const FAULT_ENV: &str = "SKIFF_FLASH_FAULT_AFTER_WRITES";
/// With the fault variable: `lose` makes writes stay in memory until the next flush, and
/// the fault keeps only a pseudo-random subset of them, as a device's volatile write cache
/// may on power loss.
pub const FAULT_CACHE_ENV: &str = "SKIFF_FLASH_FAULT_CACHE";
/// Varies which unflushed writes a `lose` fault keeps.
pub const FAULT_SEED_ENV: &str = "SKIFF_FLASH_FAULT_SEED";
/// Exit status when a fault was injected.
pub const FAULT_EXIT: i32 = 86;

/// A write held in the simulated cache.
pub struct Held {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Where power fails, and the simulated cache when there is one.
pub struct PowerLoss {
    after: u64,
    cache: Option<Vec<Held>>,
}

impl PowerLoss {
    /// The fault the environment asks for, if any.
    pub fn from_env() -> Option<PowerLoss> {
        let after = std::env::var(FAULT_ENV).ok()?.trim().parse().ok()?;
        let lose = std::env::var(FAULT_CACHE_ENV).is_ok_and(|v| v.trim() == "lose");
        Some(PowerLoss {
            after,
            cache: lose.then(Vec::new),
        })
    }

    /// Called before a write or a flush with the number of writes made so far: at the
    /// chosen point, what reached the medium stays (with a cache, a subset of it in any
    /// order) and the process ends.
    pub fn at(&mut self, file: &File, writes: u64) {
        if writes != self.after {
            return;
        }
        if let Some(held) = self.cache.take() {
            let seed = std::env::var(FAULT_SEED_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let mut kept: Vec<&Held> = survivors(&held, writes ^ seed.rotate_left(32));
            kept.reverse();
            for h in kept {
                let _ = file.write_all_at(&h.bytes, h.offset);
            }
            let _ = file.sync_all();
        }
        eprintln!(
            "skiff-flash: fault injected: stopping before write {} ({FAULT_ENV})",
            writes + 1
        );
        std::process::exit(FAULT_EXIT);
    }

    /// Keeps a write in the simulated cache; false when there is no cache.
    pub fn hold(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let Some(c) = &mut self.cache else {
            return false;
        };
        c.push(Held {
            offset,
            bytes: bytes.to_vec(),
        });
        true
    }

    /// Lays what is still in the cache over `buf`, read from the medium at `offset`.
    pub fn overlay(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        for h in self.cache.iter().flatten() {
            let o = h.offset;
            let (s, e) = (o.max(offset), (o + h.bytes.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&h.bytes[(s - o) as usize..(e - o) as usize]);
            }
        }
    }

    /// Empties the cache (a flush), handing back what it held, oldest first.
    pub fn drain(&mut self) -> Vec<Held> {
        self.cache.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

/// A pseudo-random subset of `held` (splitmix64: one well-mixed bit per write).
fn survivors(held: &[Held], mut x: u64) -> Vec<&Held> {
    let mut kept = Vec::new();
    for w in held {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        if (z ^ (z >> 31)) >> 63 == 1 {
            kept.push(w);
        }
    }
    kept
}
