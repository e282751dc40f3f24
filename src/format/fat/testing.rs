//! Test fixtures shared by the FAT writers' and reader's unit tests: trees of text files and
//! the specs that format them. Not compiled outside tests.

use crate::format::{FatOptions, FsSpec};
use crate::plan::tree::{Entry, Node, Source, Tree};

/// A tree holding each `(path, text)` as a file (parents made as needed).
pub fn text_tree<P: AsRef<str>, T: AsRef<str>>(files: &[(P, T)]) -> Tree {
    let mut t = Tree::new();
    for (path, text) in files {
        let text = text.as_ref().to_string();
        t.insert(Entry {
            path: path.as_ref().into(),
            node: Node::File {
                size: text.len() as u64,
                source: Source::Text(text),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        })
        .unwrap();
    }
    t
}

/// A spec formatting `tree` as partition `boot` at offset 0 and epoch 0.
pub fn spec<'a>(tree: &'a Tree, label: Option<&'a str>, uuid: u8, fat: FatOptions) -> FsSpec<'a> {
    FsSpec {
        label,
        uuid: [uuid; 16],
        epoch: 0,
        tree,
        offset: 0,
        part: "boot",
        fat,
        ahead: None,
    }
}
