//! The map of an image: what a disk byte belongs to — which file and which byte of it, which
//! structure (a GPT header, a FAT copy, an inode table), which raw blob, or only which
//! partition — from a manifest's records or, without one, from a partition table alone.
//! Byte verification names each difference through it.
//!
//! Not for reading or comparing bytes (`ops::verify`) and not for recording the map (the
//! writers report it, `image::manifest` stores it).

use std::collections::BTreeMap;

use crate::format::Span;
use crate::format::table::TableEntry;
use crate::image::manifest::Manifest;

/// What a piece of the disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A file's bytes; `offset` is the file offset of the place's first byte.
    File { path: String, offset: u64 },
    /// A structure of a filesystem or of the partition table; `offset` within it.
    Structure { name: String, offset: u64 },
    /// A raw blob; `offset` within it.
    Raw { offset: u64 },
    /// A partition's bytes in no file or structure the map knows; `offset` within it.
    Partition { offset: u64 },
    /// Outside every partition and structure.
    Outside,
}

/// One part of a queried span and what it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// "partition boot", "partition table", "raw u-boot", "image".
    pub region: String,
    /// The partition's id, when the place lies in one.
    pub partition: Option<String>,
    pub what: What,
    /// The disk bytes of this place.
    pub span: Span,
}

/// Who owns a piece of the map.
#[derive(Debug)]
struct Owner {
    region: String,
    partition: Option<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    File(String),
    Structure(String),
    Raw,
}

/// A run of disk bytes with one owner; `base` is the owner's offset of its first byte.
#[derive(Debug, Clone, Copy)]
struct Piece {
    end: u64,
    owner: usize,
    base: u64,
}

/// The map: owned pieces that never overlap (the first claim of a byte keeps it), and the
/// partitions for bytes no piece claims.
#[derive(Debug, Default)]
pub struct Map {
    pieces: BTreeMap<u64, Piece>,
    owners: Vec<Owner>,
    partitions: Vec<(String, Span)>,
}

impl Map {
    /// From a manifest: raw blobs first (they may share the table's first sector), the
    /// table's structures, then each partition's files and structures. A format 1 manifest
    /// has no files' or structures' extents: its map knows partitions and blobs only.
    pub fn of_manifest(m: &Manifest) -> Map {
        let mut map = Map::default();
        for r in &m.raw {
            let o = map.owner(format!("raw {}", r.name), None, Kind::Raw);
            map.claim(&[Span::new(r.offset, r.length)], o);
        }
        for s in &m.structures {
            let o = map.owner("partition table", None, Kind::Structure(s.name.clone()));
            map.claim(&s.extents, o);
        }
        for p in &m.partitions {
            let region = format!("partition {}", p.id);
            let id = Some(p.id.clone());
            for f in &p.files {
                let o = map.owner(&region, id.clone(), Kind::File(f.path.clone()));
                map.claim(&f.extents, o);
            }
            for s in &p.structures {
                let o = map.owner(&region, id.clone(), Kind::Structure(s.name.clone()));
                map.claim(&s.extents, o);
            }
            map.partitions
                .push((p.id.clone(), Span::new(p.start, p.size)));
        }
        map.partitions.sort_by_key(|(_, s)| s.start);
        map
    }

    /// From a partition table alone: partitions named by their GPT name, else their number.
    pub fn of_table(entries: &[TableEntry]) -> Map {
        let mut map = Map::default();
        for e in entries {
            let id = match e.name.trim() {
                "" => e.number.to_string(),
                n => n.to_string(),
            };
            map.partitions.push((id, Span::new(e.start, e.size)));
        }
        map.partitions.sort_by_key(|(_, s)| s.start);
        map
    }

    fn owner(&mut self, region: impl Into<String>, partition: Option<String>, kind: Kind) -> usize {
        self.owners.push(Owner {
            region: region.into(),
            partition,
            kind,
        });
        self.owners.len() - 1
    }

    /// Gives `owner` the bytes of `extents` (in its own order) that no one has yet.
    fn claim(&mut self, extents: &[Span], owner: usize) {
        let mut base = 0u64;
        for s in extents {
            let mut at = s.start;
            let taken: Vec<(u64, u64)> = self.overlapping(*s).map(|(a, p)| (a, p.end)).collect();
            for (start, end) in taken.into_iter().chain([(s.end(), s.end())]) {
                if start > at {
                    let piece = Piece {
                        end: start,
                        owner,
                        base: base.saturating_add(at - s.start),
                    };
                    self.pieces.insert(at, piece);
                }
                at = at.max(end);
            }
            base = base.saturating_add(s.len);
        }
    }

    /// The pieces overlapping `s`, in disk order.
    fn overlapping(&self, s: Span) -> impl Iterator<Item = (u64, Piece)> + '_ {
        let mut v: Vec<(u64, Piece)> = self
            .pieces
            .range(..s.end())
            .rev()
            .take_while(|(_, p)| p.end > s.start)
            .map(|(a, p)| (*a, *p))
            .collect();
        v.reverse();
        v.into_iter()
    }

    /// What the bytes of `span` belong to, in disk order, each place as large as its owner
    /// allows within the span.
    pub fn places(&self, span: Span) -> Vec<Place> {
        let mut out = Vec::new();
        let mut at = span.start;
        for (start, p) in self.overlapping(span) {
            if start > at {
                self.unowned(Span::new(at, start - at), &mut out);
            }
            let a = at.max(start);
            let b = p.end.min(span.end());
            out.push(self.owned(&p, start, Span::new(a, b - a)));
            at = b;
        }
        if at < span.end() {
            self.unowned(Span::new(at, span.end() - at), &mut out);
        }
        out
    }

    /// The place of one byte, as large as its owner (or its partition) goes from there.
    pub fn place_from(&self, at: u64) -> Place {
        if let Some((start, p)) = self.overlapping(Span::new(at, 1)).next() {
            return self.owned(&p, start, Span::new(at, p.end - at));
        }
        // Unowned: up to the next piece, within the partition or gap holding `at`.
        let next = self.pieces.range(at..).next().map_or(u64::MAX, |(a, _)| *a);
        let edge = self
            .partitions
            .iter()
            .flat_map(|(_, s)| [s.start, s.end()])
            .filter(|e| *e > at)
            .min()
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        self.unowned(Span::new(at, next.min(edge) - at), &mut out);
        out.remove(0)
    }

    fn owned(&self, p: &Piece, start: u64, span: Span) -> Place {
        let o = &self.owners[p.owner];
        let offset = p.base.saturating_add(span.start - start);
        let what = match &o.kind {
            Kind::File(path) => What::File {
                path: path.clone(),
                offset,
            },
            Kind::Structure(name) => What::Structure {
                name: name.clone(),
                offset,
            },
            Kind::Raw => What::Raw { offset },
        };
        Place {
            region: o.region.clone(),
            partition: o.partition.clone(),
            what,
            span,
        }
    }

    /// Bytes no piece claims: split by the partitions they fall in.
    fn unowned(&self, span: Span, out: &mut Vec<Place>) {
        let mut at = span.start;
        for (id, p) in &self.partitions {
            let (a, b) = (at.max(p.start), span.end().min(p.end()));
            if a >= b {
                continue;
            }
            if a > at {
                out.push(outside(Span::new(at, a - at)));
            }
            out.push(Place {
                region: format!("partition {id}"),
                partition: Some(id.clone()),
                what: What::Partition {
                    offset: a - p.start,
                },
                span: Span::new(a, b - a),
            });
            at = b;
        }
        if at < span.end() {
            out.push(outside(Span::new(at, span.end() - at)));
        }
    }
}

fn outside(span: Span) -> Place {
    Place {
        region: "image".into(),
        partition: None,
        what: What::Outside,
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Map {
        let mut m = Map::default();
        let raw = m.owner("raw spl", None, Kind::Raw);
        m.claim(&[Span::new(0, 440)], raw);
        let mbr = m.owner("partition table", None, Kind::Structure("MBR".into()));
        m.claim(&[Span::new(0, 512)], mbr);
        let f = m.owner(
            "partition boot",
            Some("boot".into()),
            Kind::File("/a".into()),
        );
        m.claim(&[Span::new(2000, 100), Span::new(1500, 50)], f);
        m.partitions.push(("boot".into(), Span::new(1024, 4096)));
        m
    }

    #[test]
    fn the_first_claim_keeps_a_byte() {
        let m = map();
        let p = m.places(Span::new(400, 100));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].what, What::Raw { offset: 400 });
        assert_eq!(p[0].span, Span::new(400, 40));
        assert_eq!(
            p[1].what,
            What::Structure {
                name: "MBR".into(),
                offset: 440
            }
        );
    }

    #[test]
    fn file_offsets_follow_the_extents_order() {
        let m = map();
        let p = m.place_from(1520);
        assert_eq!(
            p.what,
            What::File {
                path: "/a".into(),
                offset: 120
            }
        );
        assert_eq!(p.span, Span::new(1520, 30));
        let p = m.place_from(2050);
        assert_eq!(
            p.what,
            What::File {
                path: "/a".into(),
                offset: 50
            }
        );
    }

    #[test]
    fn unclaimed_bytes_are_named_by_partition() {
        let m = map();
        let p = m.place_from(1600);
        assert_eq!(p.what, What::Partition { offset: 576 });
        assert_eq!(p.span, Span::new(1600, 400));
        let p = m.places(Span::new(600, 500));
        assert_eq!(p[0].what, What::Outside);
        assert_eq!(p[0].span, Span::new(600, 424));
        assert_eq!(p[1].partition.as_deref(), Some("boot"));
        assert_eq!(m.place_from(9000).what, What::Outside);
    }
}
