//! Reads the images directory (Buildroot's `BINARIES_DIR`) through a board's file rules and
//! produces the content tree of every filesystem: which file goes where, with which mode.
//!
//! Reads metadata only (and, for rules with a `check`, the headers of that file). Not for
//! sizes or placement.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::define::board::{Board, Check, Convert, FileRule, FsKind, split_dest};
use crate::error::{Error, Result};
use crate::format::bootcfg::template::Vars;
use crate::format::bootcfg::uimage;
use crate::plan::tree::{Entry, Node, Source, Tree};

/// Content trees keyed by partition id.
pub type Trees = BTreeMap<String, Tree>;

/// What file rules are applied with.
pub struct Context<'a> {
    pub images: &'a Path,
    /// Placeholder values (identifiers, version, the board's vars).
    pub vars: &'a Vars,
    /// Timestamp for generated images (boot.scr).
    pub epoch: i64,
    /// SkiffOS config directories, in the order of the config list: their `resources/`
    /// supply the files a rule names in `resource` (the last config that has one wins).
    pub configs: &'a [PathBuf],
}

/// Generated files larger than this are not read into memory for editing.
const MAX_EDITED: u64 = 4 << 20;

/// SkiffOS's marker for builds whose console must stay silent.
const SILENT_MARKER: &str = ".disable-serial-console";

/// Applies every file rule of `board` to the images directory and returns one tree per
/// partition that has a filesystem.
pub fn collect(board: &Board, ctx: &Context<'_>) -> Result<Trees> {
    let images = ctx.images;
    if !images.is_dir() {
        return Err(Error::Usage(format!(
            "images directory {} does not exist (give --images or set BINARIES_DIR)",
            images.display()
        )));
    }
    let mut trees: Trees = board
        .layout
        .partitions
        .iter()
        .filter(|p| p.fs.is_some())
        .map(|p| (p.id.clone(), Tree::new()))
        .collect();
    for rule in &board.files {
        let shared;
        let same = rule.same_as.as_ref();
        let rule = match same.and_then(|o| board.files.iter().find(|r| r.name == *o)) {
            Some(other) => {
                shared = FileRule {
                    from: other.from.clone(),
                    resource: other.resource.clone(),
                    text: other.text.clone(),
                    required: rule.required.or(other.required),
                    ..rule.clone()
                };
                &shared
            }
            None => rule,
        };
        apply(board, rule, ctx, &mut trees)?;
    }
    apply_attrs(board, &mut trees)?;
    Ok(trees)
}

fn fs_of(board: &Board, part: &str) -> Option<FsKind> {
    board
        .layout
        .partitions
        .iter()
        .find(|p| p.id == part)
        .and_then(|p| p.fs)
}

struct Placer<'a> {
    board: &'a Board,
    rule: &'a FileRule,
    part: &'a str,
    fs: FsKind,
    tree: &'a mut Tree,
    ctx: &'a Context<'a>,
    /// The images directory with every link resolved.
    images_real: PathBuf,
}

impl Placer<'_> {
    fn insert(&mut self, e: Entry) -> Result<()> {
        self.tree.insert(e).map_err(|c| {
            Error::board(
                &self.board.name,
                format!("file rule `{}` on {}: {}", self.rule.name, self.part, c.0),
            )
        })
    }

    /// Places one file, directory (its contents, recursively) or symlink from `src` at `dest`.
    fn place(&mut self, src: &Path, dest: &str) -> Result<()> {
        let md = std::fs::symlink_metadata(src)
            .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
        let mode = md.mode() & 0o7777;
        let ft = md.file_type();
        if ft.is_symlink() {
            if self.fs == FsKind::Ext4 {
                let target = std::fs::read_link(src)
                    .map_err(|e| Error::io(format!("reading link {}", src.display()), e))?;
                let target = utf8(src, target.as_os_str())?;
                return self.insert(Entry {
                    path: dest.to_string(),
                    node: Node::Symlink { target },
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                });
            }
            // FAT has no symlinks: place what the link points to, which must stay inside the
            // images directory (a link to a host file would copy that file onto the card).
            let to = std::fs::metadata(src).map_err(|_| Error::BadArtifact {
                path: src.to_path_buf(),
                message: format!("dangling symlink cannot be placed on {} (FAT)", self.part),
            })?;
            let real = std::fs::canonicalize(src)
                .map_err(|e| Error::io(format!("resolving link {}", src.display()), e))?;
            if !real.starts_with(&self.images_real) {
                return Err(Error::BadArtifact {
                    path: src.to_path_buf(),
                    message: format!(
                        "symlink points outside the images directory (to {}); its content \
                         would be copied onto {} (FAT)",
                        real.display(),
                        self.part
                    ),
                });
            }
            if !to.is_file() {
                return Err(Error::BadArtifact {
                    path: src.to_path_buf(),
                    message: format!(
                        "symlink to a directory cannot be placed on {} (FAT)",
                        self.part
                    ),
                });
            }
            return self.file(src, dest, to.len(), to.mode() & 0o7777);
        }
        if ft.is_file() {
            return self.file(src, dest, md.len(), mode);
        }
        if ft.is_dir() {
            if dest != "/" {
                self.insert(Entry {
                    path: dest.to_string(),
                    node: Node::Dir,
                    mode,
                    uid: 0,
                    gid: 0,
                })?;
            }
            for (name, path) in sorted_dir(src)? {
                let child = if dest == "/" {
                    format!("/{name}")
                } else {
                    format!("{dest}/{name}")
                };
                self.place(&path, &child)?;
            }
            return Ok(());
        }
        Err(Error::BadArtifact {
            path: src.to_path_buf(),
            message: "not a regular file, directory or symlink (device nodes, fifos and \
                      sockets are not supported)"
                .into(),
        })
    }

    fn file(&mut self, src: &Path, dest: &str, size: u64, mode: u32) -> Result<()> {
        if let Some(Check::Squashfs) = self.rule.check {
            crate::format::squashfs::check(src)?;
        }
        if self.edits() {
            if size > MAX_EDITED {
                return Err(Error::BadArtifact {
                    path: src.to_path_buf(),
                    message: format!("too large to edit as a config ({} bytes)", size),
                });
            }
            let bytes = std::fs::read(src)
                .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
            return self.generated(dest, bytes, mode);
        }
        self.insert(Entry {
            path: dest.to_string(),
            node: Node::File {
                source: Source::Path(src.to_path_buf()),
                size,
            },
            mode,
            uid: 0,
            gid: 0,
        })
    }

    /// Whether this rule's content is edited before it is placed.
    fn edits(&self) -> bool {
        self.rule.substitute == Some(true)
            || self.rule.silent_console == Some(true)
            || self.rule.convert.is_some()
    }

    /// Places generated content after the rule's edits: placeholders, the silent-console
    /// edit, then conversion.
    fn generated(&mut self, dest: &str, bytes: Vec<u8>, mode: u32) -> Result<()> {
        let bytes = edit(self.rule, self.ctx, bytes).map_err(|m| {
            Error::board(
                &self.board.name,
                format!("file rule `{}`: {m}", self.rule.name),
            )
        })?;
        self.insert(Entry {
            path: dest.to_string(),
            node: Node::File {
                size: bytes.len() as u64,
                source: Source::generated(bytes),
            },
            mode,
            uid: 0,
            gid: 0,
        })
    }
}

fn edit(
    rule: &FileRule,
    ctx: &Context<'_>,
    mut bytes: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    let substitute = rule
        .substitute
        .unwrap_or(rule.text.is_some() || !rule.resource.is_empty());
    if substitute || rule.silent_console == Some(true) {
        let mut text =
            String::from_utf8(bytes).map_err(|_| "content is not UTF-8 text".to_string())?;
        if substitute {
            text = ctx.vars.apply(&text);
        }
        if rule.silent_console == Some(true) && ctx.images.join(SILENT_MARKER).exists() {
            text = uimage::silent_console(&text);
        }
        bytes = text.into_bytes();
    }
    match &rule.convert {
        None => Ok(bytes),
        Some(Convert::UbootScript { arch, name }) => {
            let a = uimage::Arch::from_name(arch)
                .ok_or_else(|| format!("unknown U-Boot arch `{arch}`"))?;
            let time = u32::try_from(ctx.epoch.max(0)).unwrap_or(u32::MAX);
            uimage::script(a, name, &bytes, time).map_err(|e| e.to_string())
        }
    }
}

fn apply(board: &Board, rule: &FileRule, ctx: &Context<'_>, trees: &mut Trees) -> Result<()> {
    let images = ctx.images;
    let to = destination(board, rule, ctx)?;
    let (part, path) = split_dest(&to).ok_or_else(|| Error::board(&board.name, "bad `to`"))?;
    let fs = fs_of(board, part).ok_or_else(|| Error::board(&board.name, "bad `to`"))?;
    let dest = Dest {
        path,
        dir: path.trim_end_matches('/'),
        into_dir: path.ends_with('/'),
    };
    let tree = trees
        .get_mut(part)
        .ok_or_else(|| Error::board(&board.name, "bad `to`"))?;
    let images_real = std::fs::canonicalize(images)
        .map_err(|e| Error::io(format!("resolving {}", images.display()), e))?;
    let mut p = Placer {
        board,
        rule,
        part,
        fs,
        tree,
        ctx,
        images_real,
    };
    if let Some(src) = resource(rule, ctx.configs) {
        let bytes = crate::io::read_small(&src, "SkiffOS resource")?;
        return p.generated(&dest.for_name(&rule.name), bytes, 0o644);
    }
    let mut looked_in = Vec::new();
    for from in &rule.from {
        if p.place_from(from, &dest, &mut looked_in)? {
            return Ok(());
        }
    }
    if let Some(text) = &rule.text {
        return p.generated(&dest.for_name(&rule.name), text.clone().into_bytes(), 0o644);
    }
    if rule.required == Some(true) {
        return Err(Error::MissingArtifact {
            board: board.name.clone(),
            artifact: rule.from.join("` or `"),
            looked_in,
        });
    }
    Ok(())
}

/// The rule's `to` with the variables filled in; a variable without a value is an error.
fn destination(board: &Board, rule: &FileRule, ctx: &Context<'_>) -> Result<String> {
    let to = ctx.vars.apply(rule.to.as_deref().unwrap_or_default());
    let unknown = ctx.vars.unknown(&to);
    let Some(name) = unknown.first() else {
        return Ok(to);
    };
    let hint = if name == "version" {
        " (it comes from the VERSION= line of skiff-release in the images directory)"
    } else {
        ""
    };
    Err(Error::board(
        &board.name,
        format!(
            "file rule `{}`: `{{{name}}}` in `to` has no value{hint}",
            rule.name
        ),
    ))
}

/// Where a rule's files go inside their partition: `path` names the file itself, or with a
/// trailing `/` the directory (`dir`) the files go into under their own names.
struct Dest<'a> {
    path: &'a str,
    dir: &'a str,
    into_dir: bool,
}

impl Dest<'_> {
    fn for_name(&self, name: &str) -> String {
        if self.into_dir {
            format!("{}/{name}", self.dir)
        } else {
            self.path.to_string()
        }
    }
}

fn file_name_of(from: &str) -> String {
    Path::new(from)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Placer<'_> {
    /// Places what `from` (a path or pattern under the images directory) names; `false`, with
    /// where it looked added to `looked_in`, when it names nothing.
    fn place_from(
        &mut self,
        from: &str,
        dest: &Dest,
        looked_in: &mut Vec<PathBuf>,
    ) -> Result<bool> {
        let rule = self.rule;
        let src = self.ctx.images.join(from);
        if is_pattern(from) {
            let (sub, pattern) = from.rsplit_once('/').unwrap_or(("", from));
            let matches: Vec<(String, PathBuf)> = sorted_dir(&self.ctx.images.join(sub))
                .unwrap_or_default()
                .into_iter()
                .filter(|(n, _)| glob(pattern, n))
                .collect();
            looked_in.push(src);
            for (name, path) in &matches {
                if !rule.verbatim {
                    file_artifact(path, name)?;
                }
                self.place(path, &dest.for_name(name))?;
            }
            return Ok(!matches.is_empty());
        }
        match std::fs::symlink_metadata(&src) {
            Ok(_) if !rule.verbatim && (names_file(from) || rule.check.is_some()) => {
                let name = file_name_of(from);
                if rule.check.is_none() {
                    file_artifact(&src, &name)?;
                } else {
                    regular_file(&src)?;
                }
                self.place(&src, &dest.for_name(&name))?;
            }
            Ok(md) if md.is_dir() => {
                let dir = if dest.dir.is_empty() { "/" } else { dest.dir };
                self.place(&src, dir)?;
            }
            Ok(_) => self.place(&src, &dest.for_name(&file_name_of(from)))?,
            Err(_) => {
                looked_in.push(src);
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The SkiffOS resource a rule takes: in the last config directory that has one of the
/// rule's `resource` paths, the first of them.
fn resource(rule: &FileRule, configs: &[PathBuf]) -> Option<PathBuf> {
    configs.iter().rev().find_map(|dir| {
        rule.resource
            .iter()
            .map(|r| dir.join("resources").join(r))
            .find(|p| p.is_file())
    })
}

fn apply_attrs(board: &Board, trees: &mut Trees) -> Result<()> {
    for a in &board.attrs {
        let (part, path) = split_dest(&a.path).unwrap_or_default();
        let Some(tree) = trees.get_mut(part) else {
            continue;
        };
        let mode = a
            .mode
            .as_deref()
            .map(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).unwrap_or(0));
        let sub = format!("{}/", path.trim_end_matches('/'));
        for e in tree.iter_mut() {
            if e.path == path || (a.recursive && (e.path.starts_with(&sub) || path == "/")) {
                if let Some(m) = mode
                    && !matches!(e.node, Node::Symlink { .. })
                {
                    e.mode = m;
                }
                e.uid = a.uid.unwrap_or(e.uid);
                e.gid = a.gid.unwrap_or(e.gid);
            }
        }
    }
    Ok(())
}

/// Kernel names that carry no extension.
const KERNEL_NAMES: &[&str] = &["Image", "zImage", "bzImage", "uImage", "vmlinuz", "vmlinux"];

/// Whether an images-directory name stands for one file rather than a directory: it has an
/// extension (`rootfs.squashfs`, `boot.txt`, `*.dtb`) or is a kernel or first-stage loader
/// name. Directory sources (`boot_part`, `rpi-firmware`, `skiff-init`) have neither.
fn names_file(from: &str) -> bool {
    let base = from.rsplit('/').next().unwrap_or(from);
    base.contains('.') || KERNEL_NAMES.contains(&base) || base == "MLO" || base == "SPL"
}

/// A file artifact must be a non-empty regular file (or a link to one).
fn regular_file(path: &Path) -> Result<std::fs::Metadata> {
    let md =
        std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let what = if md.is_dir() {
        "a directory"
    } else if !md.is_file() {
        "not a regular file"
    } else if md.len() == 0 {
        "empty"
    } else {
        return Ok(md);
    };
    Err(Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!("is {what}, expected a non-empty file").replace("is not a", "not a"),
    })
}

/// What a kernel or device tree must start with: (offset, magic, description).
fn magic_for(name: &str) -> Option<(u64, &'static [u8], &'static str)> {
    Some(match name {
        "Image" => (
            0x38,
            b"ARM\x64",
            "an arm64 kernel Image (\"ARM\\x64\" at 0x38)",
        ),
        "zImage" => (
            0x24,
            &[0x18, 0x28, 0x6f, 0x01],
            "an ARM zImage (magic 0x016f2818 at 0x24)",
        ),
        "bzImage" => (0x202, b"HdrS", "an x86 bzImage (\"HdrS\" at 0x202)"),
        "uImage" => (
            0,
            &[0x27, 0x05, 0x19, 0x56],
            "a U-Boot uImage (magic 0x27051956)",
        ),
        n if n.ends_with(".dtb") || n.ends_with(".dtbo") => (
            0,
            &[0xd0, 0x0d, 0xfe, 0xed],
            "a flattened device tree (magic 0xd00dfeed)",
        ),
        _ => return None,
    })
}

/// Checks a source that names a file (see `names_file`): a non-empty regular file, and for
/// kernels and device trees, the format's magic.
fn file_artifact(path: &Path, name: &str) -> Result<()> {
    if !names_file(name) {
        return Ok(());
    }
    regular_file(path)?;
    let Some((at, magic, what)) = magic_for(name) else {
        return Ok(());
    };
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut got = vec![0u8; magic.len()];
    let ok = f.read_exact_at(&mut got, at).is_ok() && got == magic;
    if ok {
        return Ok(());
    }
    Err(Error::BadArtifact {
        path: path.to_path_buf(),
        message: format!("not {what}"),
    })
}

/// Directory entries sorted by name; names must be UTF-8 (ext4 and FAT names are text).
fn sorted_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let name = utf8(&e.path(), &e.file_name())?;
        out.push((name, e.path()));
    }
    out.sort();
    Ok(out)
}

fn utf8(path: &Path, s: &std::ffi::OsStr) -> Result<String> {
    s.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::BadArtifact {
            path: path.to_path_buf(),
            message: "name is not valid UTF-8".into(),
        })
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// `*` and `?` matching over one path component.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some('?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    m(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_one_component() {
        assert!(glob("*.dtb", "bcm2711-rpi-4-b.dtb"));
        assert!(!glob("*.dtb", "a.dtbo"));
        assert!(glob("start?.elf", "start4.elf"));
        assert!(glob("*", "x"));
        assert!(!glob("a*b", "ac"));
    }
}
