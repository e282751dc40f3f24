//! genimage configs (Buildroot's `board/*/genimage.cfg`) read natively and turned into a
//! `Board` whose synthesized layout places every partition where genimage 16 would, so
//! `plan`/`compose` write the disk genimage would write from the same inputs.
//!
//! Supported: `hdimage` (MBR with logical partitions past the fourth, GPT with a moved entry
//! array or no backup, hybrid), `vfat` (FAT12, FAT16 or FAT32 as mkdosfs would choose, with
//! its `-F`/`-s`/`-S`/`-n`/`-i`), `ext4`, `file` images and prebuilt input files; template
//! variables a post-image script would fill come from `Options::defines`. Not for running genimage or the tools it calls, and not for other image types
//! (flash, ubi, squashfs, cpio, …): those fail with their file and line.

mod config;
mod hd;
mod parse;
mod translate;

use std::path::{Path, PathBuf};

use crate::define::board::Board;
use crate::error::Result;

/// What a config is read with: genimage's `--inputpath` and `--rootpath`, and a disk size.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where `image = "…"` files are looked up (genimage's inputpath: Buildroot's images dir).
    pub images: PathBuf,
    /// Where `vfat`/`ext4` images without files of their own take their content from; `None`
    /// is an empty root, as Buildroot's genimage.sh passes.
    pub rootpath: Option<PathBuf>,
    /// The disk size, overriding the hdimage's `size` (autoresize partitions grow into it).
    pub size: Option<u64>,
    /// `NAME=VALUE` template variables filled in before parsing (`%NAME%`, `UUID_TMP`).
    pub defines: Vec<(String, String)>,
}

/// Reads the genimage config at `path` (with its includes, `${VAR}` from the environment) and
/// returns the board for its disk image.
pub fn load(path: &Path, opts: &Options) -> Result<Board> {
    let env = |name: &str| std::env::var(name).ok();
    let items = parse::parse_file(path, &env, &opts.defines)?;
    let file = parse::Pos {
        file: path.display().to_string().into(),
        line: 1,
        column: 1,
    };
    let root = config::load(&items, &file)?;
    translate::board(&root, path, opts)
}
