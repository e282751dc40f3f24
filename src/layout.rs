//! Size, alignment and placement math: where each partition starts and how large it is,
//! given the layout's rules, the content each partition must hold and the disk size.
//!
//! Pure arithmetic in bytes, no I/O. Everything that decides an offset goes through here so
//! that the invariants (aligned, in order, no overlap, inside the disk) are tested once.

use crate::units::Headroom;

/// How a partition's size is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Exactly this many bytes.
    Fixed(u64),
    /// The content's minimum plus headroom, at least `min`.
    Fit { headroom: Headroom, min: u64 },
    /// Everything left on the disk, at least `min`; at most one partition may fill.
    Fill { min: u64 },
}

/// One partition to place: its rule and, for `Fit` (and to check `Fixed`), what the content
/// needs as a function of the partition size (`needs(size)` is `None` when it fits).
pub struct Request<'a> {
    pub name: &'a str,
    pub rule: SizeRule,
    /// Smallest size the content fits in (0 for no content).
    pub content_min: u64,
    /// Checks a candidate size; returns the bytes the content would need when it does not fit.
    pub fits: &'a dyn Fn(u64) -> Result<(), u64>,
}

/// A placed partition: byte offset and length, both multiples of the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start: u64,
    pub size: u64,
}

impl Placed {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The geometry a table kind imposes.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Partition starts and sizes are multiples of this.
    pub align: u64,
    /// The first partition starts at or after this.
    pub first_start: u64,
    /// Bytes the table keeps at the end of the disk (backup GPT).
    pub tail: u64,
}

/// Why placement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceError {
    /// A partition's content does not fit its size.
    DoesNotFit {
        partition: String,
        needs: u64,
        has: u64,
    },
    /// The disk is too small for the layout.
    DiskTooSmall { needs: u64, has: u64 },
    /// More than one `Fill` partition.
    TwoFills(String, String),
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a).saturating_mul(a)
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// Whether two half-open byte ranges share a byte.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1 && a.1 > 0 && b.1 > 0
}

/// Places the partitions in order. With `disk = None` the disk is as small as the rules
/// allow (a `Fill` partition gets its minimum); the returned disk size includes the tail.
pub fn place(
    geo: Geometry,
    reqs: &[Request<'_>],
    disk: Option<u64>,
) -> Result<(Vec<Placed>, u64), PlaceError> {
    let a = geo.align.max(512);
    let mut fill: Option<usize> = None;
    let mut sizes = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let size = match r.rule {
            SizeRule::Fixed(s) => align_up(s, 512),
            SizeRule::Fit { headroom, min } => {
                let mut s = align_up(headroom.on(r.content_min).max(min), a);
                // A larger size can change the filesystem's geometry (cluster size); grow
                // until the content really fits.
                while let Err(needs) = (r.fits)(s) {
                    s = align_up(s.max(needs).saturating_add(1), a);
                }
                s
            }
            SizeRule::Fill { min } => {
                if let Some(f) = fill {
                    return Err(PlaceError::TwoFills(
                        reqs[f].name.to_string(),
                        r.name.to_string(),
                    ));
                }
                fill = Some(i);
                align_up(min.max(r.content_min), a)
            }
        };
        sizes.push(size);
    }
    let fixed_total: u64 = sizes.iter().map(|s| align_up(*s, a)).sum();
    let start = align_up(geo.first_start, a);
    let min_disk = align_up(start + fixed_total + geo.tail, a);
    let disk_size = match disk {
        None => min_disk,
        Some(d) => {
            if d < min_disk {
                return Err(PlaceError::DiskTooSmall {
                    needs: min_disk,
                    has: d,
                });
            }
            if let Some(f) = fill {
                let usable_end = align_down(d - geo.tail, a);
                sizes[f] += usable_end - (start + fixed_total);
            }
            d
        }
    };
    let mut placed = Vec::with_capacity(reqs.len());
    let mut at = start;
    for (r, &size) in reqs.iter().zip(&sizes) {
        if let Err(needs) = (r.fits)(size) {
            return Err(PlaceError::DoesNotFit {
                partition: r.name.to_string(),
                needs,
                has: size,
            });
        }
        placed.push(Placed { start: at, size });
        at = align_up(at + size, a);
    }
    Ok((placed, disk_size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn ok(_: u64) -> Result<(), u64> {
        Ok(())
    }

    fn geo() -> Geometry {
        Geometry {
            align: MIB,
            first_start: MIB,
            tail: 33 * 512,
        }
    }

    #[test]
    fn minimal_disk_gives_fill_its_minimum() {
        let fits = |s: u64| if s >= 10 * MIB { Ok(()) } else { Err(10 * MIB) };
        let reqs = [
            Request {
                name: "boot",
                rule: SizeRule::Fit {
                    headroom: Headroom::Percent(100),
                    min: 0,
                },
                content_min: 5 * MIB,
                fits: &fits,
            },
            Request {
                name: "persist",
                rule: SizeRule::Fill { min: 64 * MIB },
                content_min: 0,
                fits: &ok,
            },
        ];
        let (p, disk) = place(geo(), &reqs, None).unwrap();
        assert_eq!(
            p[0],
            Placed {
                start: MIB,
                size: 10 * MIB
            }
        );
        assert_eq!(
            p[1],
            Placed {
                start: 11 * MIB,
                size: 64 * MIB
            }
        );
        assert_eq!(disk, 76 * MIB);
    }

    #[test]
    fn fixed_partition_too_small_names_both_sizes() {
        let fits = |s: u64| {
            if s >= 71_303_168 {
                Ok(())
            } else {
                Err(71_303_168)
            }
        };
        let reqs = [Request {
            name: "boot",
            rule: SizeRule::Fixed(64 * MIB),
            content_min: 71_303_168,
            fits: &fits,
        }];
        assert_eq!(
            place(geo(), &reqs, None),
            Err(PlaceError::DoesNotFit {
                partition: "boot".into(),
                needs: 71_303_168,
                has: 64 * MIB
            })
        );
    }

    #[test]
    fn two_fills_are_refused() {
        let reqs = [
            Request {
                name: "a",
                rule: SizeRule::Fill { min: 0 },
                content_min: 0,
                fits: &ok,
            },
            Request {
                name: "b",
                rule: SizeRule::Fill { min: 0 },
                content_min: 0,
                fits: &ok,
            },
        ];
        assert!(matches!(
            place(geo(), &reqs, None),
            Err(PlaceError::TwoFills(..))
        ));
    }

    proptest! {
        #[test]
        fn placement_is_aligned_ordered_and_inside(
            sizes in proptest::collection::vec(0u64..(64 * MIB), 1..6),
            fill_at in 0usize..6,
            extra in 0u64..(4096 * MIB),
        ) {
            let g = geo();
            let reqs: Vec<Request> = sizes.iter().enumerate().map(|(i, s)| Request {
                name: "p",
                rule: if i == fill_at { SizeRule::Fill { min: *s } } else { SizeRule::Fixed(*s) },
                content_min: 0,
                fits: &ok,
            }).collect();
            let (_, min_disk) = place(g, &reqs, None).unwrap();
            let disk = min_disk + extra;
            let (placed, d) = place(g, &reqs, Some(disk)).unwrap();
            prop_assert_eq!(d, disk);
            let mut prev_end = 0;
            for (p, s) in placed.iter().zip(&sizes) {
                prop_assert_eq!(p.start % g.align, 0);
                prop_assert!(p.start >= g.first_start);
                prop_assert!(p.start >= prev_end);
                prop_assert!(p.size >= align_up(*s, 512));
                prev_end = p.end();
            }
            prop_assert!(prev_end + g.tail <= disk);
            if fill_at < sizes.len() {
                // The fill partition reaches the last aligned boundary before the tail.
                prop_assert_eq!(placed.last().unwrap().end() <= align_down(disk - g.tail, g.align), true);
                let total_gap = align_down(disk - g.tail, g.align) - prev_end;
                prop_assert!(total_gap < g.align || fill_at + 1 < sizes.len());
            }
        }

        #[test]
        fn too_small_disk_is_an_error_not_a_panic(
            s in 1u64..(64 * MIB),
            disk in 0u64..(8 * MIB),
        ) {
            let reqs = [Request { name: "p", rule: SizeRule::Fixed(s), content_min: 0, fits: &ok }];
            let r = place(geo(), &reqs, Some(disk));
            if let Ok((placed, _)) = &r {
                prop_assert!(placed[0].end() + geo().tail <= disk);
            }
        }

        #[test]
        fn overlap_is_symmetric(a in 0u64..100, al in 0u64..50, b in 0u64..100, bl in 0u64..50) {
            prop_assert_eq!(overlaps((a, al), (b, bl)), overlaps((b, bl), (a, al)));
            if al > 0 && bl > 0 && a == b {
                prop_assert!(overlaps((a, al), (b, bl)));
            }
        }
    }
}
