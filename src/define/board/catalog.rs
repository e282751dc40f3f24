//! Where definition files come from: directories the user names (searched first, so their
//! files override shipped ones of the same name) and the `boards/` and `layouts/` embedded in
//! the binary. Reads text and turns parse errors into `file:line:column` errors.
//!
//! Not for inheritance or validation: that is `board::resolve`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// The kinds of definition file.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Board,
    Layout,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Board => "boards",
            Kind::Layout => "layouts",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Board => "board file",
            Kind::Layout => "layout file",
        }
    }
}

/// One definition file's text and the name to show in errors.
pub struct Text {
    pub shown_as: String,
    pub text: String,
}

/// The set of places definitions are read from.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    user_dirs: Vec<PathBuf>,
}

impl Catalog {
    /// `user_dirs` each hold `boards/` and/or `layouts/`; earlier directories win.
    pub fn new(user_dirs: &[PathBuf]) -> Self {
        Catalog {
            user_dirs: user_dirs.to_vec(),
        }
    }

    /// The text of `boards/NAME.toml` or `layouts/NAME.toml`, if any source has it.
    pub fn read(&self, kind: Kind, name: &str) -> Result<Option<Text>> {
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Ok(None);
        }
        let rel = format!("{}/{name}.toml", kind.dir());
        for dir in &self.user_dirs {
            let p = dir.join(&rel);
            if p.is_file() {
                let text = crate::io::read_small_text(&p, kind.what())?;
                return Ok(Some(Text {
                    shown_as: p.display().to_string(),
                    text,
                }));
            }
        }
        Ok(embedded::FILES
            .iter()
            .find(|(p, _)| *p == rel)
            .map(|(p, t)| Text {
                shown_as: format!("{p} (built in)"),
                text: t.to_string(),
            }))
    }

    /// Every name of this kind, sorted, each once.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        let prefix = format!("{}/", kind.dir());
        let mut names: Vec<String> = embedded::FILES
            .iter()
            .filter_map(|(p, _)| p.strip_prefix(&prefix)?.strip_suffix(".toml"))
            .map(str::to_string)
            .collect();
        for dir in &self.user_dirs {
            let base = dir.join(kind.dir());
            collect(&base, &base, &mut names);
        }
        names.sort();
        names.dedup();
        names
    }
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(base, &p, out);
        } else if p.extension().is_some_and(|x| x == "toml")
            && let Ok(rel) = p.with_extension("").strip_prefix(base)
        {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Parses one definition file, with errors pointing at the line and column.
pub fn parse<T: DeserializeOwned>(t: &Text) -> Result<T> {
    toml::from_str(&t.text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_col(&t.text, s.start))
            .unwrap_or((1, 1));
        Error::DefinitionFile {
            file: t.shown_as.clone(),
            line,
            column,
            message: e.message().trim().replace('\n', "; "),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Names within a small edit distance of `name`, closest first (at most three).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut scored: Vec<(usize, &String)> = candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= (name.len() / 3).max(2) || c.contains(name))
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, c)| c.clone()).collect()
}

fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 5), (3, 1));
    }

    #[test]
    fn closest_names_come_first() {
        let names: Vec<String> = ["pi/4", "pi/3", "pi/5", "odroid/xu", "intel/desktop"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = closest("pi/6", &names);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|n| n.starts_with("pi/")));
        assert_eq!(closest("odroid/xu4", &names), vec!["odroid/xu".to_string()]);
        assert!(closest("zzzzzzzz", &names).is_empty());
    }
}
