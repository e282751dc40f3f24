//! `--keep` patterns: files on the card that are not in the build and stay. Parsing and
//! matching only; what keeping a file means is each partition's edit (`boot`, `rootfs`).

use crate::define::board::{Board, FsKind};
use crate::error::{Error, Result};
use crate::plan::artifacts::glob;

/// One `--keep` pattern: the partition it names (none: the default one) and its path's
/// components.
#[derive(Debug, Clone)]
struct Pattern {
    part: Option<String>,
    comps: Vec<String>,
}

/// `--keep` patterns: `PATH` (the boot partition) or `PARTITION:PATH`; `*` and `?` match
/// within one path component; a directory keeps everything under it.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    patterns: Vec<Pattern>,
    /// The partition a pattern without one names: the layout's first FAT partition.
    default_part: String,
}

impl Keep {
    pub fn parse(list: &[String], board: &Board) -> Result<Keep> {
        let patterns = list
            .iter()
            .map(|k| parse_one(k, board))
            .collect::<Result<_>>()?;
        let default_part = board
            .layout
            .partitions
            .iter()
            .find(|d| d.fs.is_some_and(FsKind::is_fat))
            .or(board.layout.partitions.first())
            .map_or_else(|| "boot".to_string(), |d| d.id.clone());
        Ok(Keep {
            patterns,
            default_part,
        })
    }

    fn part_of<'a>(&'a self, p: &'a Pattern) -> &'a str {
        p.part.as_deref().unwrap_or(&self.default_part)
    }

    /// Whether any pattern names partition `part`.
    pub fn names(&self, part: &str) -> bool {
        self.patterns.iter().any(|p| self.part_of(p) == part)
    }

    /// Whether `path` in partition `part` is kept. Patterns without a partition name the
    /// layout's first FAT partition (`boot` on most boards); paths compare without case.
    pub fn matches(&self, part: &str, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        self.patterns.iter().any(|p| {
            self.part_of(p) == part
                && p.comps.len() <= comps.len()
                && p.comps
                    .iter()
                    .zip(&comps)
                    .all(|(a, b)| glob(&a.to_lowercase(), &b.to_lowercase()))
        })
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_one(k: &str, board: &Board) -> Result<Pattern> {
    let (part, path) = match k.split_once(':') {
        Some((p, path)) => {
            if !board.layout.partitions.iter().any(|d| d.id == p) {
                return Err(Error::Usage(format!(
                    "--keep {k}: board {} has no partition `{p}` (it has {})",
                    board.name,
                    board
                        .layout
                        .partitions
                        .iter()
                        .map(|d| d.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            (Some(p.to_string()), path)
        }
        None => (None, k),
    };
    let comps = components(path);
    if comps.is_empty() {
        return Err(Error::Usage(format!(
            "--keep {k}: give a path, e.g. /overlays/my.dtbo"
        )));
    }
    Ok(Pattern { part, comps })
}

#[cfg(test)]
mod tests {
    use super::{Keep, Pattern, components};

    fn keep(list: &[(&str, &str)]) -> Keep {
        Keep {
            patterns: list
                .iter()
                .map(|(p, path)| Pattern {
                    part: (!p.is_empty()).then(|| p.to_string()),
                    comps: components(path),
                })
                .collect(),
            default_part: "boot".into(),
        }
    }

    #[test]
    fn keep_patterns_match_paths_directories_and_globs() {
        let k = keep(&[
            ("", "/overlays/my-*.dtbo"),
            ("", "/user"),
            ("rootfs", "/extra"),
        ]);
        assert!(k.matches("boot", "/overlays/my-hat.dtbo"));
        assert!(
            k.matches("boot", "/OVERLAYS/MY-HAT.DTBO"),
            "FAT ignores case"
        );
        assert!(!k.matches("boot", "/overlays/other.dtbo"));
        assert!(
            k.matches("boot", "/user/a/b.txt"),
            "a directory keeps its content"
        );
        assert!(!k.matches("rootfs", "/user/a"), "no partition means boot");
        assert!(k.matches("rootfs", "/extra/x"));
        assert!(!k.matches("boot", "/extra/x"));
        assert!(!k.matches("boot", "/us"));
    }
}
