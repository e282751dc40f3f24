//! genimage 16's schema over the parsed tree: which options each section has (top level,
//! `image`, `partition`, `hdimage`, `vfat`, `ext2/3/4`, `file`, `flash`, `config`), merged
//! the way libconfuse merges them (a later scalar wins, `+=` appends to a list, sections with
//! the same title are one section), with booleans and integers checked as they are read.
//! Also genimage's number syntax: `strtoull` with base prefixes and a k/K/M/G/s suffix.
//!
//! Not for what the options mean: placement is `hd`, translation is `translate`.

use super::parse::{Assign, Item, Pos, Section};
use crate::error::Result;

/// What an option holds.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    List,
    /// A section with its own schema; `titled` sections merge by title.
    Sec(&'static [(&'static str, Ty)], bool),
    /// A section genimage knows and skiff-flash does not write; the reason names it.
    Refused(&'static str),
}

const PARTITION: &[(&str, Ty)] = &[
    ("offset", Ty::Str),
    ("size", Ty::Str),
    ("align", Ty::Str),
    ("partition-type", Ty::Int),
    ("bootable", Ty::Bool),
    ("read-only", Ty::Bool),
    ("hidden", Ty::Bool),
    ("no-automount", Ty::Bool),
    ("image", Ty::Str),
    ("holes", Ty::List),
    ("autoresize", Ty::Bool),
    ("in-partition-table", Ty::Bool),
    ("partition-uuid", Ty::Str),
    ("partition-type-uuid", Ty::Str),
];

const HDIMAGE: &[(&str, Ty)] = &[
    ("align", Ty::Str),
    ("disk-signature", Ty::Str),
    ("disk-uuid", Ty::Str),
    ("partition-table", Ty::Bool),
    ("extended-partition", Ty::Int),
    ("partition-table-type", Ty::Str),
    ("gpt", Ty::Bool),
    ("gpt-location", Ty::Str),
    ("gpt-no-backup", Ty::Bool),
    ("fill", Ty::Bool),
];

const VFAT_FILE: &[(&str, Ty)] = &[("image", Ty::Str)];

const VFAT: &[(&str, Ty)] = &[
    ("extraargs", Ty::Str),
    ("label", Ty::Str),
    ("files", Ty::List),
    ("file", Ty::Sec(VFAT_FILE, true)),
];

const EXT: &[(&str, Ty)] = &[
    ("root-owner", Ty::Str),
    ("extraargs", Ty::Str),
    ("features", Ty::Str),
    ("label", Ty::Str),
    ("fs-timestamp", Ty::Str),
    ("use-mke2fs", Ty::Bool),
    ("usage-type", Ty::Str),
    ("mke2fs-conf", Ty::Str),
    ("mke2fs_conf", Ty::Str),
];

const FILE: &[(&str, Ty)] = &[("name", Ty::Str), ("copy", Ty::Bool), ("holes", Ty::List)];

const NOT_WRITTEN: &str = "is not an image type skiff-flash writes (it writes hdimage, vfat, \
                           ext4 and file images)";

/// Image types genimage 16 has, and the ones written here.
const IMAGE: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("size", Ty::Str),
    ("mountpoint", Ty::Str),
    ("srcpath", Ty::Str),
    ("empty", Ty::Bool),
    ("temporary", Ty::Bool),
    ("exec-pre", Ty::Str),
    ("exec-post", Ty::Str),
    ("flashtype", Ty::Str),
    ("partition", Ty::Sec(PARTITION, true)),
    ("hdimage", Ty::Sec(HDIMAGE, false)),
    ("vfat", Ty::Sec(VFAT, false)),
    ("ext2", Ty::Sec(EXT, false)),
    ("ext3", Ty::Sec(EXT, false)),
    ("ext4", Ty::Sec(EXT, false)),
    ("file", Ty::Sec(FILE, false)),
    ("android-sparse", Ty::Refused(NOT_WRITTEN)),
    ("cpio", Ty::Refused(NOT_WRITTEN)),
    ("cramfs", Ty::Refused(NOT_WRITTEN)),
    ("f2fs", Ty::Refused(NOT_WRITTEN)),
    ("fit", Ty::Refused(NOT_WRITTEN)),
    ("fip", Ty::Refused(NOT_WRITTEN)),
    ("flash", Ty::Refused(NOT_WRITTEN)),
    ("iso", Ty::Refused(NOT_WRITTEN)),
    ("jffs2", Ty::Refused(NOT_WRITTEN)),
    ("qemu", Ty::Refused(NOT_WRITTEN)),
    ("rauc", Ty::Refused(NOT_WRITTEN)),
    ("squashfs", Ty::Refused(NOT_WRITTEN)),
    ("tar", Ty::Refused(NOT_WRITTEN)),
    ("ubi", Ty::Refused(NOT_WRITTEN)),
    ("ubifs", Ty::Refused(NOT_WRITTEN)),
];

/// genimage's `config { }` options: paths and tool names.
const CONFIG: &[(&str, Ty)] = &[
    ("loglevel", Ty::Str),
    ("rootpath", Ty::Str),
    ("tmppath", Ty::Str),
    ("inputpath", Ty::Str),
    ("outputpath", Ty::Str),
    ("includepath", Ty::Str),
    ("cpio", Ty::Str),
    ("dd", Ty::Str),
    ("debugfs", Ty::Str),
    ("e2fsck", Ty::Str),
    ("genext2fs", Ty::Str),
    ("genisoimage", Ty::Str),
    ("mcopy", Ty::Str),
    ("mmd", Ty::Str),
    ("mkcramfs", Ty::Str),
    ("mkdosfs", Ty::Str),
    ("mke2fs", Ty::Str),
    ("mkfsjffs2", Ty::Str),
    ("mkfsf2fs", Ty::Str),
    ("sloadf2fs", Ty::Str),
    ("mkfsubifs", Ty::Str),
    ("mksquashfs", Ty::Str),
    ("qemu-img", Ty::Str),
    ("rauc", Ty::Str),
    ("tar", Ty::Str),
    ("tune2fs", Ty::Str),
    ("ubinize", Ty::Str),
    ("mkimage", Ty::Str),
    ("fiptool", Ty::Str),
];

const TOP: &[(&str, Ty)] = &[
    ("image", Ty::Sec(IMAGE, true)),
    (
        "flash",
        Ty::Refused("(a NAND/NOR flash type) is not supported: skiff-flash writes disk images"),
    ),
    ("config", Ty::Sec(CONFIG, false)),
];

/// One option's merged value.
#[derive(Debug, Clone)]
pub struct Value {
    pub values: Vec<String>,
    pub pos: Pos,
}

/// A section after merging: its options and its subsections, in the order first written.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub title: Option<String>,
    pub pos: Pos,
    options: Vec<(String, Value)>,
    pub children: Vec<Node>,
}

/// Checks the parsed items against genimage's schema and merges them.
pub fn load(items: &[Item], file: &Pos) -> Result<Node> {
    let mut root = Node {
        name: String::new(),
        title: None,
        pos: file.clone(),
        options: Vec::new(),
        children: Vec::new(),
    };
    merge_items(&mut root, items, TOP, "the top level")?;
    Ok(root)
}

fn merge_items(
    node: &mut Node,
    items: &[Item],
    schema: &'static [(&'static str, Ty)],
    within: &str,
) -> Result<()> {
    for item in items {
        match item {
            Item::Assign(a) => merge_assign(node, a, schema, within)?,
            Item::Section(s) => merge_section(node, s, schema, within)?,
        }
    }
    Ok(())
}

fn lookup(schema: &[(&str, Ty)], name: &str) -> Option<Ty> {
    schema.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn unknown(pos: &Pos, name: &str, within: &str) -> crate::error::Error {
    pos.error(format!("no such option `{name}` in {within}"))
}

fn merge_assign(
    node: &mut Node,
    a: &Assign,
    schema: &'static [(&'static str, Ty)],
    within: &str,
) -> Result<()> {
    let ty = lookup(schema, &a.key).ok_or_else(|| unknown(&a.pos, &a.key, within))?;
    let list = match ty {
        Ty::List => true,
        Ty::Str | Ty::Int | Ty::Bool => false,
        Ty::Sec(..) | Ty::Refused(_) => {
            return Err(a.pos.error(format!(
                "`{}` is a section: write `{} {{ … }}`, not `{} = …`",
                a.key, a.key, a.key
            )));
        }
    };
    if !list && (a.list || a.append) {
        return Err(a
            .pos
            .error(format!("option `{}` takes one value, not a list", a.key)));
    }
    for v in &a.values {
        check_value(ty, &a.key, v, &a.pos)?;
    }
    let value = Value {
        values: a.values.clone(),
        pos: a.pos.clone(),
    };
    match node.options.iter_mut().find(|(k, _)| *k == a.key) {
        Some((_, old)) if a.append => {
            old.values.extend(value.values);
            old.pos = value.pos;
        }
        Some((_, old)) => *old = value,
        None => node.options.push((a.key.clone(), value)),
    }
    Ok(())
}

fn check_value(ty: Ty, key: &str, v: &str, pos: &Pos) -> Result<()> {
    match ty {
        Ty::Bool if parse_bool(v).is_none() => Err(pos.error(format!(
            "invalid boolean value `{v}` for option `{key}` (use true or false)"
        ))),
        Ty::Int if parse_int(v).is_none() => {
            Err(pos.error(format!("invalid integer value `{v}` for option `{key}`")))
        }
        _ => Ok(()),
    }
}

fn merge_section(
    node: &mut Node,
    s: &Section,
    schema: &'static [(&'static str, Ty)],
    within: &str,
) -> Result<()> {
    let Some(ty) = lookup(schema, &s.name) else {
        let what = if schema.iter().any(|(n, _)| *n == "hdimage") {
            format!("unknown image type or option `{}` in {within}", s.name)
        } else {
            format!("no such section `{}` in {within}", s.name)
        };
        return Err(s.pos.error(what));
    };
    let (sub, titled) = match ty {
        Ty::Sec(sub, titled) => (sub, titled),
        Ty::Refused(why) => {
            return Err(s.pos.error(format!("`{}` {why}", s.name)));
        }
        _ => {
            return Err(s.pos.error(format!(
                "`{}` is an option: write `{} = …`, not a section",
                s.name, s.name
            )));
        }
    };
    if titled != s.title.is_some() {
        return Err(s.pos.error(if titled {
            format!("missing title for section `{}`", s.name)
        } else {
            format!("section `{}` takes no title", s.name)
        }));
    }
    let inner = match &s.title {
        Some(t) => format!("`{} {t}`", s.name),
        None => format!("`{}`", s.name),
    };
    let existing = node
        .children
        .iter()
        .position(|c| titled && c.name == s.name && c.title == s.title);
    let child = match existing {
        Some(i) => &mut node.children[i],
        None => {
            node.children.push(Node {
                name: s.name.clone(),
                title: s.title.clone(),
                pos: s.pos.clone(),
                options: Vec::new(),
                children: Vec::new(),
            });
            let last = node.children.len() - 1;
            &mut node.children[last]
        }
    };
    merge_items(child, &s.items, sub, &inner)
}

impl Node {
    /// The section's title (sections in this schema that have one always do).
    pub fn title(&self) -> &str {
        self.title.as_deref().unwrap_or_default()
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A scalar option's text and position.
    pub fn str_at(&self, key: &str) -> Option<(&str, &Pos)> {
        let v = self.value(key)?;
        Some((v.values.last()?.as_str(), &v.pos))
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.str_at(key).map(|(s, _)| s)
    }

    /// A boolean option (checked when merged), or `default`.
    pub fn bool(&self, key: &str, default: bool) -> bool {
        self.str(key).and_then(parse_bool).unwrap_or(default)
    }

    /// An integer option (checked when merged).
    pub fn int(&self, key: &str) -> Option<i64> {
        self.str(key).and_then(parse_int)
    }

    /// A list option's values.
    pub fn list(&self, key: &str) -> &[String] {
        self.value(key).map_or(&[], |v| &v.values)
    }

    /// A size option with genimage's suffixes; `None` when unset.
    pub fn size(&self, key: &str) -> Result<Option<(u64, Pos)>> {
        let Some((text, pos)) = self.str_at(key) else {
            return Ok(None);
        };
        match parse_size(text, false).map_err(|m| pos.error(format!("option `{key}`: {m}")))? {
            Size::Bytes(n) => Ok(Some((n, pos.clone()))),
            Size::Percent(_) => Err(pos.error(format!("option `{key}`: `%` is not allowed here"))),
        }
    }

    /// Subsections named `name`.
    pub fn sections<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// libconfuse's booleans.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" => Some(true),
        "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// libconfuse's integers: `0x` hex, `0b` binary, a leading `0` octal, else decimal.
pub fn parse_int(s: &str) -> Option<i64> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = t.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(b) = t.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        i64::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse().ok()?
    };
    Some(if neg { -v } else { v })
}

/// A size as genimage reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    Percent(u64),
}

/// genimage's `strtoul_suffix`: `strtoull(s, 0)` (so `0x…` is hex and a leading `0` octal),
/// then an optional `k`/`K`, `M`, `G` (binary) or `s` (512-byte sectors) suffix, or `%` where
/// allowed.
pub fn parse_size(text: &str, percent: bool) -> std::result::Result<Size, String> {
    let t = text.trim_start();
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
        (h, 16)
    } else if t.starts_with('0') {
        (t, 8)
    } else {
        (t, 10)
    };
    let n = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    let value = if n == 0 {
        0
    } else {
        u64::from_str_radix(&digits[..n], radix).map_err(|_| format!("`{text}` is too large"))?
    };
    let suffix = if n == 0 && radix != 16 {
        t
    } else {
        &digits[n..]
    };
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "s" => 512,
        "%" if percent => return Ok(Size::Percent(value)),
        _ => {
            return Err(format!(
                "invalid size suffix `{suffix}` in `{text}` (genimage takes k, K, M, G or s)"
            ));
        }
    };
    value
        .checked_mul(mult)
        .map(Size::Bytes)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A one-option node, for tests elsewhere in the module.
#[cfg(test)]
pub(super) fn tests_node(name: &str, key: &str, value: &str) -> Node {
    let pos = Pos {
        file: "t.cfg".into(),
        line: 1,
        column: 1,
    };
    Node {
        name: name.to_string(),
        title: Some(name.to_string()),
        pos: pos.clone(),
        options: vec![(
            key.to_string(),
            Value {
                values: vec![value.to_string()],
                pos,
            },
        )],
        children: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::define::genimage::parse::parse_str;

    fn load_text(text: &str) -> Result<Node> {
        let items = parse_str("t.cfg", text, &|_| None)?;
        let pos = Pos {
            file: "t.cfg".into(),
            line: 1,
            column: 1,
        };
        load(&items, &pos)
    }

    #[test]
    fn sizes_follow_strtoul_suffix() {
        assert_eq!(parse_size("32M", false), Ok(Size::Bytes(32 << 20)));
        assert_eq!(parse_size("1016K", false), Ok(Size::Bytes(1016 << 10)));
        assert_eq!(parse_size("8k", false), Ok(Size::Bytes(8192)));
        assert_eq!(parse_size("2G", false), Ok(Size::Bytes(2 << 30)));
        assert_eq!(parse_size("0x8000", false), Ok(Size::Bytes(0x8000)));
        assert_eq!(parse_size("010", false), Ok(Size::Bytes(8)));
        assert_eq!(parse_size("0", false), Ok(Size::Bytes(0)));
        assert_eq!(parse_size("34s", false), Ok(Size::Bytes(34 * 512)));
        assert_eq!(parse_size("150%", true), Ok(Size::Percent(150)));
        assert!(parse_size("150%", false).is_err());
        assert!(parse_size("1T", false).is_err());
        assert!(parse_size("1MiB", false).is_err());
        assert!(parse_size("1.5M", false).is_err());
    }

    #[test]
    fn ints_and_bools() {
        assert_eq!(parse_int("0xC"), Some(12));
        assert_eq!(parse_int("0x83"), Some(0x83));
        assert_eq!(parse_int("131"), Some(131));
        assert_eq!(parse_int("017"), Some(15));
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("12x"), None);
        assert_eq!(parse_bool("TRUE"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("1"), None);
    }

    #[test]
    fn merges_like_libconfuse() {
        let n = load_text(
            "image a { size = 1M size = 2M partition p { image = x } partition p { offset = 8K }\n\
             vfat { files = { a } files += b } }",
        )
        .unwrap();
        let img = n.sections("image").next().unwrap();
        assert_eq!(img.str("size"), Some("2M"));
        let parts: Vec<_> = img.sections("partition").collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].str("image"), Some("x"));
        assert_eq!(parts[0].str("offset"), Some("8K"));
        let vfat = img.sections("vfat").next().unwrap();
        assert_eq!(vfat.list("files"), ["a", "b"]);
    }

    #[test]
    fn schema_errors_name_the_option() {
        let e = load_text("image a {\n  sise = 1M\n}")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.cfg:2:3: no such option `sise` in `image a`");
        let e = load_text("image a {\n  ubi { }\n}")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.cfg:2:3: `ubi` is not an image type"),
            "{e}"
        );
        let e = load_text("image a {\n  btrfs { }\n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown image type or option `btrfs`"), "{e}");
        let e = load_text("flash nand { }").unwrap_err().to_string();
        assert!(
            e.starts_with("t.cfg:1:1: `flash` (a NAND/NOR flash type)"),
            "{e}"
        );
        let e = load_text("image a { partition p { bootable = maybe } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid boolean value `maybe`"), "{e}");
        let e = load_text("image a { partition { } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing title for section `partition`"), "{e}");
    }
}
