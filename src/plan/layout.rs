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
    /// A fixed start; `None` places it after the previous partition, aligned.
    pub start: Option<u64>,
    /// Bytes kept free before an unfixed start (an MBR logical partition's boot record).
    pub gap: u64,
}

/// A placed partition: byte offset and length, both multiples of the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start: u64,
    pub size: u64,
}

impl Placed {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
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
    /// A partition with a fixed start that shares bytes with an earlier one.
    Overlap { partition: String, other: String },
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a).saturating_mul(a)
}

pub fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// Whether two half-open byte ranges share a byte.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1) && a.1 > 0 && b.1 > 0
}

/// Places the partitions in order. With `disk = None` the disk is as small as the rules
/// allow (a `Fill` partition gets its minimum); the returned disk size includes the tail.
pub fn place(
    geo: Geometry,
    reqs: &[Request<'_>],
    disk: Option<u64>,
) -> Result<(Vec<Placed>, u64), PlaceError> {
    let a = geo.align.max(512);
    let (mut sizes, fill) = sizes(reqs, a)?;
    let start = align_up(geo.first_start, a);
    let (mut placed, mut end, exact_end) = lay(reqs, &sizes, start, a)?;
    let min_disk = align_up(end.saturating_add(geo.tail), a);
    let disk_size = match disk {
        None => min_disk,
        Some(d) => {
            // Without a fill partition only the bytes used must fit; with one, the disk must
            // reach the aligned end so the fill can grow to the last boundary.
            let needs = match fill {
                Some(_) => min_disk,
                None => align_up(exact_end.saturating_add(geo.tail), 512),
            };
            if d < needs {
                return Err(PlaceError::DiskTooSmall { needs, has: d });
            }
            if let Some(f) = fill {
                let usable_end = align_down(d - geo.tail, a);
                sizes[f] += usable_end - end;
                (placed, end, _) = lay(reqs, &sizes, start, a)?;
                debug_assert!(end <= usable_end);
            }
            d
        }
    };
    for ((r, &size), p) in reqs.iter().zip(&sizes).zip(&placed) {
        if let Err(needs) = (r.fits)(size) {
            return Err(PlaceError::DoesNotFit {
                partition: r.name.to_string(),
                needs,
                has: p.size,
            });
        }
    }
    Ok((placed, disk_size))
}

/// Each partition's size before any fill grows, and which one fills.
fn sizes(reqs: &[Request<'_>], a: u64) -> Result<(Vec<u64>, Option<usize>), PlaceError> {
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
    Ok((sizes, fill))
}

/// Starts for the given sizes: fixed ones as given, the others after everything before them,
/// aligned. Returns the placements, the aligned end and the exact end of the last byte used.
fn lay(
    reqs: &[Request<'_>],
    sizes: &[u64],
    start: u64,
    a: u64,
) -> Result<(Vec<Placed>, u64, u64), PlaceError> {
    let mut placed: Vec<Placed> = Vec::with_capacity(reqs.len());
    let mut at = start;
    let mut exact = start;
    for (r, &size) in reqs.iter().zip(sizes) {
        let s = r
            .start
            .unwrap_or_else(|| align_up(at.saturating_add(r.gap), a));
        if let Some(q) = placed
            .iter()
            .position(|p| overlaps((s, size), (p.start, p.size)))
        {
            return Err(PlaceError::Overlap {
                partition: r.name.to_string(),
                other: reqs[q].name.to_string(),
            });
        }
        placed.push(Placed { start: s, size });
        at = at.max(align_up(s.saturating_add(size), a));
        exact = exact.max(s.saturating_add(size));
    }
    Ok((placed, at, exact))
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
                start: None,
                gap: 0,
            },
            Request {
                name: "persist",
                rule: SizeRule::Fill { min: 64 * MIB },
                content_min: 0,
                fits: &ok,
                start: None,
                gap: 0,
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
            start: None,
            gap: 0,
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
                start: None,
                gap: 0,
            },
            Request {
                name: "b",
                rule: SizeRule::Fill { min: 0 },
                content_min: 0,
                fits: &ok,
                start: None,
                gap: 0,
            },
        ];
        assert!(matches!(
            place(geo(), &reqs, None),
            Err(PlaceError::TwoFills(..))
        ));
    }

    #[test]
    fn fixed_starts_gaps_and_overlaps() {
        let fixed = |name, start, size| Request {
            name,
            rule: SizeRule::Fixed(size),
            content_min: 0,
            fits: &ok,
            start,
            gap: 0,
        };
        let mut reqs = [
            fixed("a", Some(4 * MIB), MIB),
            fixed("b", None, MIB),
            fixed("c", Some(20 * MIB), 512),
        ];
        reqs[1].gap = 512;
        let (p, disk) = place(geo(), &reqs, None).unwrap();
        assert_eq!(p[0].start, 4 * MIB);
        assert_eq!(p[1].start, 6 * MIB, "after a, aligned, past its gap");
        assert_eq!(p[2].start, 20 * MIB);
        assert_eq!(disk, 22 * MIB);
        // Without a fill partition, a given disk only needs room for the bytes used.
        let exact = 20 * MIB + 512 + 33 * 512;
        assert!(place(geo(), &reqs, Some(exact)).is_ok());
        reqs[2].start = Some(4 * MIB + 512);
        assert_eq!(
            place(geo(), &reqs, None),
            Err(PlaceError::Overlap {
                partition: "c".into(),
                other: "a".into()
            })
        );
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
                start: None,
                gap: 0,
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
            let reqs = [Request { name: "p", rule: SizeRule::Fixed(s), content_min: 0, fits: &ok, start: None, gap: 0 }];
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
