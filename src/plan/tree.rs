//! The content of one filesystem as plain data: every directory, file and symlink it will
//! hold, with modes and owners, and where each file's bytes come from.
//!
//! Built by `artifacts`, sized and written by the `fs` writers, printed by `plan --json`.
//! Holds no file contents except small generated configs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A file in the images directory (read when written, size checked again then).
    Path(PathBuf),
    /// Generated text (bootloader configs).
    Text(String),
    /// Generated binary content (compiled boot scripts), shown as hex.
    Bytes(#[serde(serialize_with = "as_hex")] Vec<u8>),
    /// Generated text that holds a secret (a Wi-Fi passphrase): written like `Text`, never
    /// shown.
    Secret(#[serde(serialize_with = "hidden")] crate::plan::custom::Secret),
    /// A file inside a release image, read from the image's decoded copy (see
    /// `image::release`).
    Spooled(Spooled),
}

fn hidden<S: serde::Serializer>(_: &crate::plan::custom::Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("(not shown)")
}

/// Where a file's bytes lie in a decoded release image: its pieces in file order.
#[derive(Debug, Clone, Serialize)]
pub struct Spooled {
    #[serde(skip)]
    pub file: std::sync::Arc<std::fs::File>,
    pub pieces: Vec<Piece>,
}

/// `len` bytes of a file: read at `at` in the decoded image, or zeros (a hole) when `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Piece {
    pub at: Option<u64>,
    pub len: u64,
}

impl PartialEq for Spooled {
    fn eq(&self, o: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.file, &o.file) && self.pieces == o.pieces
    }
}

impl Eq for Spooled {}

fn as_hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::io::hex(b))
}

impl Source {
    /// Generated content as a source: text when it is UTF-8.
    pub fn generated(bytes: Vec<u8>) -> Source {
        match String::from_utf8(bytes) {
            Ok(t) => Source::Text(t),
            Err(e) => Source::Bytes(e.into_bytes()),
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Node {
    Dir,
    File { source: Source, size: u64 },
    Symlink { target: String },
}

/// One entry: absolute path inside the filesystem ("/" is the root directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub path: String,
    #[serde(flatten)]
    pub node: Node,
    /// Permission bits (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A filesystem's entries in path order; parents always precede children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Serialize for Tree {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.values())
    }
}

/// Why an entry could not be added.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict(pub String);

impl Tree {
    pub fn new() -> Self {
        let mut t = Tree::default();
        t.entries.insert("/".into(), dir("/", 0o755));
        t
    }

    /// Adds or replaces an entry, creating missing parent directories (0755, root-owned).
    /// A later file replaces an earlier one; a directory never silently becomes a file.
    pub fn insert(&mut self, e: Entry) -> Result<(), Conflict> {
        let mut at = 0;
        while let Some(i) = e.path[at + 1..].find('/') {
            let parent = &e.path[..at + 1 + i];
            at += 1 + i;
            match self.entries.get(parent) {
                Some(Entry {
                    node: Node::Dir, ..
                }) => {}
                Some(_) => {
                    return Err(Conflict(format!(
                        "`{}` needs `{parent}` to be a directory, but it is a file",
                        e.path
                    )));
                }
                None => {
                    self.entries.insert(parent.to_string(), dir(parent, 0o755));
                }
            }
        }
        match (self.entries.get(&e.path), &e.node) {
            (
                Some(Entry {
                    node: Node::Dir, ..
                }),
                Node::Dir,
            )
            | (None, _) => {}
            (
                Some(Entry {
                    node: Node::Dir, ..
                }),
                _,
            ) => {
                return Err(Conflict(format!(
                    "`{}` is a directory, not replaced by a file",
                    e.path
                )));
            }
            (Some(_), Node::Dir) => {
                return Err(Conflict(format!(
                    "`{}` is a file, not replaced by a directory",
                    e.path
                )));
            }
            (Some(_), _) => {}
        }
        self.entries.insert(e.path.clone(), e);
        Ok(())
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    /// Entries in path order, the root first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.values_mut()
    }

    /// Entry count, the root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Total bytes of file content.
    pub fn file_bytes(&self) -> u64 {
        self.iter()
            .map(|e| match e.node {
                Node::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }

    /// The direct children of directory `path`, by name.
    pub fn children<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while({
                let prefix = prefix.clone();
                move |(k, _)| k.starts_with(&prefix)
            })
            .filter(move |(k, _)| k.len() > prefix.len() && !k[prefix.len()..].contains('/'))
            .map(|(_, v)| v)
    }
}

/// The last path component.
pub fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The parent directory of an absolute path ("/" for top-level entries).
pub fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        node: Node::Dir,
        mode,
        uid: 0,
        gid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            node: Node::File {
                source: Source::Text("x".into()),
                size: 1,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn parents_are_created_and_children_listed() {
        let mut t = Tree::new();
        t.insert(file("/a/b/c.txt")).unwrap();
        t.insert(file("/a/z")).unwrap();
        t.insert(file("/a.txt")).unwrap();
        let paths: Vec<_> = t.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/a.txt", "/a/b", "/a/b/c.txt", "/a/z"]);
        let kids: Vec<_> = t.children("/a").map(|e| e.path.as_str()).collect();
        assert_eq!(kids, ["/a/b", "/a/z"]);
        let top: Vec<_> = t.children("/").map(|e| e.path.as_str()).collect();
        assert_eq!(top, ["/a", "/a.txt"]);
    }

    #[test]
    fn files_and_dirs_do_not_replace_each_other() {
        let mut t = Tree::new();
        t.insert(file("/a/b")).unwrap();
        assert!(t.insert(file("/a/b/c")).is_err());
        assert!(t.insert(file("/a")).is_err());
        t.insert(file("/a/b")).unwrap();
    }

    #[test]
    fn names_and_parents() {
        assert_eq!(name_of("/a/b.txt"), "b.txt");
        assert_eq!(parent_of("/a/b.txt"), "/a");
        assert_eq!(parent_of("/a"), "/");
    }
}
