//! genimage's `hdimage` placement, rule for rule: the table kind and its defaults (512-byte
//! alignment, the GPT array at 1 KiB, a disk signature of 0), where a partition without an
//! offset starts (after everything before it, aligned to its own `align`), how a partition
//! without a size is sized (its image, rounded up to the alignment when it is in the table),
//! logical partitions past the fourth MBR entry, `autoresize`, the overlap check that honours
//! `holes`, and the disk size (the end of the last partition, the GPT backup ending on a
//! 4 KiB boundary).
//!
//! Not for content or identifiers beyond what placement needs: `translate` turns the result
//! into a layout.

use super::config::Node;
use super::parse::Pos;
use crate::error::Result;
use crate::format::table::Guid;
use crate::plan::layout::{align_down, align_up};

/// GPT entry array bytes (128 entries of 128 bytes).
pub const GPT_ARRAY: u64 = 128 * 128;
/// The backup GPT: array and header.
pub const GPT_BACKUP: u64 = GPT_ARRAY + 512;

/// The partition table kinds genimage writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    None,
    Mbr,
    Gpt,
    Hybrid,
}

impl TableType {
    pub fn has_mbr(self) -> bool {
        matches!(self, TableType::Mbr | TableType::Hybrid)
    }

    pub fn has_gpt(self) -> bool {
        matches!(self, TableType::Gpt | TableType::Hybrid)
    }
}

/// The MBR disk signature as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    Fixed(u32),
    Random,
}

/// The `hdimage { }` options.
#[derive(Debug, Clone)]
pub struct Hd {
    pub table: TableType,
    pub align: u64,
    pub gpt_location: u64,
    pub gpt_no_backup: bool,
    pub disk_uuid: Option<Guid>,
    pub signature: Signature,
    /// The table entry that becomes the extended partition (0: none).
    pub extended: u32,
    pub pos: Pos,
}

/// What a partition's `image` is, as far as placement needs it.
#[derive(Debug, Clone)]
pub struct Child {
    pub size: u64,
    /// Byte ranges of the image other partitions may overlap.
    pub holes: Vec<(u64, u64)>,
}

/// One partition, placed.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub pos: Pos,
    pub offset: u64,
    pub size: u64,
    pub align: u64,
    pub in_table: bool,
    /// An MBR logical partition (inside the extended partition).
    pub logical: bool,
    pub autoresize: bool,
    /// MBR type byte (0 when unset, as genimage writes it; hybrid MBRs list the others).
    pub mbr_type: u8,
    pub gpt_type: Option<Guid>,
    pub uuid: Option<Guid>,
    pub bootable: bool,
    pub image: Option<String>,
    pub child: Option<Child>,
    /// One of the table's own areas, checked for overlaps like a partition.
    fake: bool,
}

impl Part {
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// The placed disk.
#[derive(Debug, Clone)]
pub struct Disk {
    pub hd: Hd,
    /// The configured partitions in order (table areas excluded).
    pub parts: Vec<Part>,
    pub size: u64,
}

/// Reads the `hdimage` section.
pub fn options(node: &Node) -> Result<Hd> {
    let table = table_type(node)?;
    let align = table_align(node, table)?;
    let extended = extended_partition(node, table)?;
    let disk_uuid = disk_uuid(node, table)?;
    let signature = signature(node, table)?;
    let gpt_location = gpt_location(node)?;
    Ok(Hd {
        table,
        align,
        gpt_location,
        gpt_no_backup: node.bool("gpt-no-backup", false),
        disk_uuid,
        signature,
        extended,
        pos: node.pos.clone(),
    })
}

/// An error about `hdimage` option `key`, at the option (or the section when it is unset).
fn hd_error(node: &Node, key: &str, m: String) -> crate::error::Error {
    let pos = node.value(key).map_or(&node.pos, |v| &v.pos);
    pos.error(format!("hdimage: {m}"))
}

/// `partition-table-type`, overridden by the older `partition-table` and `gpt` booleans.
fn table_type(node: &Node) -> Result<TableType> {
    let mut table = match node.str("partition-table-type").unwrap_or("mbr") {
        "none" => TableType::None,
        "mbr" | "dos" => TableType::Mbr,
        "gpt" => TableType::Gpt,
        "hybrid" => TableType::Hybrid,
        other => {
            return Err(hd_error(
                node,
                "partition-table-type",
                format!("`{other}` is not a valid partition-table-type (mbr, gpt, hybrid, none)"),
            ));
        }
    };
    if node.value("partition-table").is_some() {
        table = if node.bool("partition-table", false) {
            TableType::Mbr
        } else {
            TableType::None
        };
    }
    if node.value("gpt").is_some() {
        table = if node.bool("gpt", false) {
            TableType::Gpt
        } else {
            TableType::Mbr
        };
    }
    Ok(table)
}

fn table_align(node: &Node, table: TableType) -> Result<u64> {
    let mut align = node.size("align")?.map_or(0, |(n, _)| n);
    if align == 0 {
        align = if table == TableType::None { 1 } else { 512 };
    }
    if table != TableType::None && !align.is_multiple_of(512) {
        return Err(hd_error(
            node,
            "align",
            format!("partition alignment ({align}) must be a multiple of 1 sector (512 bytes)"),
        ));
    }
    Ok(align)
}

fn extended_partition(node: &Node, table: TableType) -> Result<u32> {
    let extended = node.int("extended-partition").unwrap_or(0);
    if !(0..=4).contains(&extended) {
        return Err(hd_error(
            node,
            "extended-partition",
            format!("invalid extended partition index ({extended}); must be 0 to 4"),
        ));
    }
    if extended > 0 && table != TableType::Mbr {
        return Err(hd_error(
            node,
            "extended-partition",
            "an extended partition needs partition-table-type = \"mbr\"".into(),
        ));
    }
    Ok(extended as u32)
}

fn disk_uuid(node: &Node, table: TableType) -> Result<Option<Guid>> {
    let err = |m: String| hd_error(node, "disk-uuid", m);
    match node.str("disk-uuid") {
        None => Ok(None),
        Some(_) if !table.has_gpt() => Err(err(
            "'disk-uuid' is only valid for gpt and hybrid partition-table-type".into(),
        )),
        Some(s) => Guid::parse(s)
            .map(Some)
            .ok_or_else(|| err(format!("invalid disk UUID: {s}"))),
    }
}

fn signature(node: &Node, table: TableType) -> Result<Signature> {
    let err = |m: String| hd_error(node, "disk-signature", m);
    match node.str("disk-signature") {
        None => Ok(Signature::Fixed(0)),
        Some("random") => Ok(Signature::Random),
        Some(_) if !table.has_mbr() => Err(err(
            "'disk-signature' is only valid for mbr and hybrid partition-table-type".into(),
        )),
        Some(s) => super::config::parse_int(s)
            .and_then(|v| u32::try_from(v).ok())
            .map(Signature::Fixed)
            .ok_or_else(|| err(format!("`{s}` is not a 32-bit number or `random`"))),
    }
}

fn gpt_location(node: &Node) -> Result<u64> {
    match node.size("gpt-location")? {
        None | Some((0, _)) => Ok(2 * 512),
        Some((n, _)) if !n.is_multiple_of(512) => Err(hd_error(
            node,
            "gpt-location",
            format!("GPT table location ({n}) must be a multiple of 1 sector (512 bytes)"),
        )),
        Some((n, _)) => Ok(n),
    }
}

/// The GPT type a genimage one-letter shortcut stands for (genimage 16's set).
fn gpt_shortcut(c: char) -> Option<&'static str> {
    Some(match c {
        'L' => "0fc63daf-8483-4772-8e79-3d69d8477de4",
        'S' => "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
        'H' => "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
        'U' => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        'R' => "a19d880f-05fc-4d3b-a006-743f0f84911e",
        'V' => "e6d6d379-f507-44c2-a23c-238f2a3df928",
        'F' => "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        _ => return None,
    })
}

/// Reads one `partition NAME { }` section; `child` sizes its image.
pub fn partition(
    node: &Node,
    hd: &Hd,
    child: &mut dyn FnMut(&Node) -> Result<Option<Child>>,
) -> Result<Part> {
    let name = node.title().to_string();
    let at = |key: &str| node.value(key).map_or(&node.pos, |v| &v.pos).clone();
    let err = |key: &str, m: String| at(key).error(format!("partition {name}: {m}"));
    let table = hd.table;
    let mut in_table = node.bool("in-partition-table", true);
    if table == TableType::None {
        in_table = false;
    }
    let mbr_type = node.int("partition-type").unwrap_or(0);
    if node.value("partition-type").is_some() && !table.has_mbr() {
        return Err(err(
            "partition-type",
            "'partition-type' is only valid for mbr and hybrid partition-table-type".into(),
        ));
    }
    let mbr_type = u8::try_from(mbr_type).map_err(|_| {
        err(
            "partition-type",
            format!("partition-type {mbr_type} is not a byte"),
        )
    })?;
    let type_uuid = node.str("partition-type-uuid");
    if type_uuid.is_some() && !table.has_gpt() {
        return Err(err(
            "partition-type-uuid",
            "'partition-type-uuid' is only valid for gpt and hybrid partition-table-type".into(),
        ));
    }
    let (gpt_type, uuid) = if table.has_gpt() && in_table {
        gpt_ids(node, &name, type_uuid.unwrap_or("L"))?
    } else {
        (None, None)
    };
    for flag in ["read-only", "hidden", "no-automount"] {
        if node.bool(flag, false) {
            return Err(err(
                flag,
                format!("the GPT attribute `{flag}` is not supported (only `bootable`)"),
            ));
        }
    }
    let part_align = node.size("align")?.map_or(0, |(n, _)| n);
    let align = match part_align {
        0 if in_table || table == TableType::None => hd.align,
        0 => 1,
        n => n,
    };
    Ok(Part {
        pos: node.pos.clone(),
        offset: node.size("offset")?.map_or(0, |(n, _)| n),
        size: node.size("size")?.map_or(0, |(n, _)| n),
        align,
        in_table,
        logical: false,
        autoresize: node.bool("autoresize", false),
        mbr_type,
        gpt_type,
        uuid,
        bootable: node.bool("bootable", false),
        image: node.str("image").map(str::to_string),
        child: child(node)?,
        fake: false,
        name,
    })
}

/// Type names genimage 17 and later accept (genimage 16 takes one letter or a GUID): its
/// own, and the Discoverable Partitions Specification's for the architectures Buildroot
/// builds.
const GPT_NAMES: &[(&str, &str)] = &[
    ("linux", "0fc63daf-8483-4772-8e79-3d69d8477de4"),
    ("swap", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
    ("home", "933ac7e1-2eb4-4f13-b844-0e14e2aef915"),
    ("uefi", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ("esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ("raid", "a19d880f-05fc-4d3b-a006-743f0f84911e"),
    ("lvm", "e6d6d379-f507-44c2-a23c-238f2a3df928"),
    ("fat32", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"),
    ("xbootldr", "bc13c2ff-59e6-4262-a352-b275fd6f7172"),
    ("srv", "3b8f8425-20e0-4f3b-907f-1a25a76f98e8"),
    ("var", "4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
    ("tmp", "7ec6f557-3bc5-4aca-b293-16ef5df639d1"),
    ("user-home", "773f91ef-66d4-49b5-bd83-d683bf40ad16"),
    ("linux-reserved", "8da63339-0007-60c0-c436-083ac8230908"),
    ("u-boot-env", "3de21764-95bd-54bd-a5c3-4abe786f38a8"),
    ("barebox-state", "4778ed65-bf42-45fa-9c5b-287a1dc4aab1"),
    ("barebox-env", "6c3737f2-07f8-45d1-ad45-15d260aab24d"),
    ("root-arm", "69dad710-2ce4-4e3c-b16c-21a1d49abed3"),
    ("root-arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae"),
    ("root-x86", "44479540-f297-41b2-9af7-d131d5f0458a"),
    ("root-x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
    ("root-riscv32", "60d5a7fe-8e7d-435c-b714-3dd8162144e1"),
    ("root-riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224"),
    ("root-loongarch64", "77055800-792c-4f94-b39a-98c91b762bb6"),
    ("usr-arm", "7d0359a3-02b3-4f0a-865c-654403e70625"),
    ("usr-arm64", "b0e01050-ee5f-4390-949a-9101b17104e9"),
    ("usr-x86", "75250d76-8cc6-458e-bd66-bd47cc81a812"),
    ("usr-x86-64", "8484680c-9521-48c6-9c11-b0720656f69e"),
    ("usr-riscv32", "b933fb22-5c3f-4f91-af90-e2bb0fa50702"),
    ("usr-riscv64", "beaec34b-8442-439b-a40b-984381ed097d"),
    ("usr-loongarch64", "e611c702-575c-4cbe-9a46-434fa0bf7e3f"),
];

fn gpt_ids(node: &Node, name: &str, ty: &str) -> Result<(Option<Guid>, Option<Guid>)> {
    let at = |key: &str| node.value(key).map_or(&node.pos, |v| &v.pos).clone();
    let mut chars = ty.chars();
    let full = match (chars.next(), chars.next()) {
        (Some(c), None) => gpt_shortcut(c).ok_or_else(|| {
            at("partition-type-uuid").error(format!(
                "partition {name} has invalid type shortcut: {c} (genimage 16 knows L, S, H, U, \
                 R, V, F)"
            ))
        })?,
        _ => GPT_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(ty))
            .map_or(ty, |(_, g)| g),
    };
    let gpt_type = Guid::parse(full).ok_or_else(|| {
        at("partition-type-uuid").error(format!(
            "partition {name} has invalid partition type UUID: {ty}"
        ))
    })?;
    let uuid = match node.str("partition-uuid") {
        None => None,
        Some(s) => Some(Guid::parse(s).ok_or_else(|| {
            at("partition-uuid").error(format!("partition {name} has invalid partition UUID: {s}"))
        })?),
    };
    Ok((Some(gpt_type), uuid))
}

fn fake(name: &str, offset: u64, size: u64, pos: &Pos) -> Part {
    Part {
        name: name.to_string(),
        pos: pos.clone(),
        offset,
        size,
        align: 1,
        in_table: false,
        logical: false,
        autoresize: false,
        mbr_type: 0,
        gpt_type: None,
        uuid: None,
        bootable: false,
        image: None,
        child: None,
        fake: true,
    }
}

/// Places `parts` as genimage does; `size` is the image size (0: as small as possible).
pub fn place(hd: Hd, parts: Vec<Part>, size: u64, image_pos: &Pos) -> Result<Disk> {
    let n_user = parts.len();
    let entries = parts.iter().filter(|p| p.in_table).count() as u32;
    let extended = match hd.extended {
        0 if hd.table == TableType::Mbr && entries > 4 => 4,
        e => e,
    };
    let mut all = parts;
    let mut now = table_areas(&hd, size, &mut all);
    let mut counted = 0;
    for i in 0..all.len() {
        if all[i].in_table {
            counted += 1;
        }
        let logical = extended > 0 && all[i].in_table && counted >= extended;
        now = place_one(&mut all, i, logical, now, &hd, size)?;
    }
    let hybrid = all.iter().filter(|p| p.in_table && p.mbr_type != 0).count();
    if hd.table == TableType::Hybrid && !(1..=3).contains(&hybrid) {
        return Err(hd.pos.error(format!(
            "hdimage: a hybrid MBR lists 1 to 3 partitions with a partition-type, not {hybrid}"
        )));
    }
    if size > 0 && now > size {
        return Err(image_pos.error(format!(
            "partitions exceed device size ({now} bytes needed, size is {size})"
        )));
    }
    let size = if size == 0 { now } else { size };
    all.truncate(n_user);
    Ok(Disk {
        hd,
        parts: all,
        size,
    })
}

/// Appends the table's own areas to `all` (checked for overlaps like partitions) and returns
/// where the first partition may start.
fn table_areas(hd: &Hd, size: u64, all: &mut Vec<Part>) -> u64 {
    if hd.table == TableType::None {
        return 0;
    }
    all.push(fake("[MBR]", 440, 72, &hd.pos));
    if !hd.table.has_gpt() {
        return 512;
    }
    all.push(fake("[GPT header]", 512, 512, &hd.pos));
    all.push(fake("[GPT array]", hd.gpt_location, GPT_ARRAY, &hd.pos));
    let backup = if size > 0 { size - GPT_BACKUP } else { 0 };
    all.push(fake("[GPT backup]", backup, GPT_BACKUP, &hd.pos));
    hd.gpt_location + GPT_ARRAY
}

/// Places `all[i]` (a `logical` one inside the extended partition) when everything before
/// ends at `now`; returns where the placed ones now end.
fn place_one(
    all: &mut [Part],
    i: usize,
    logical: bool,
    mut now: u64,
    hd: &Hd,
    size: u64,
) -> Result<u64> {
    let p = &mut all[i];
    if p.autoresize && size == 0 {
        return Err(perr(
            p,
            "the image size must be specified when using an 'autoresize' partition (set \
             `size` or give --size)"
                .into(),
        ));
    }
    p.logical = logical;
    if p.logical {
        now = align_up(now + hd.align, p.align);
    }
    if p.name == "[GPT backup]" && p.offset == 0 {
        now += p.size;
        p.offset = align_up(now, 4096) - p.size;
    }
    if p.offset == 0 && (p.in_table || hd.table == TableType::None) {
        p.offset = align_up(now, p.align);
    }
    if !p.offset.is_multiple_of(p.align) {
        return Err(perr(
            p,
            format!(
                "offset ({}) must be a multiple of {} bytes",
                p.offset, p.align
            ),
        ));
    }
    if p.autoresize {
        let backup_size = if hd.table.has_gpt() { GPT_BACKUP } else { 0 };
        grow(p, size.saturating_sub(backup_size))?;
    }
    size_from_child(p)?;
    if p.logical {
        if now > p.offset {
            return Err(perr(p, "overlaps with previous partition".into()));
        }
    } else {
        check_overlap(all, i)?;
    }
    let p = &all[i];
    if p.in_table && !p.size.is_multiple_of(512) {
        return Err(p.pos.error(format!(
            "partition {}: size ({}) must be a multiple of 1 sector (512 bytes)",
            p.name, p.size
        )));
    }
    Ok(now.max(p.end()))
}

/// `autoresize`: the partition takes the room up to `usable_end` (aligned down), which must
/// be at least its configured size.
fn grow(p: &mut Part, usable_end: u64) -> Result<()> {
    let room = usable_end.saturating_sub(p.offset);
    let grown = align_down(room, p.align);
    if grown == 0 {
        return Err(perr(p, "partitions exceed device size".into()));
    }
    if grown < p.size {
        return Err(perr(
            p,
            format!(
                "auto-resize partition ends up with a size {grown} smaller than minimum {}",
                p.size
            ),
        ));
    }
    p.size = grown;
    Ok(())
}

fn perr(p: &Part, m: String) -> crate::error::Error {
    p.pos.error(format!("partition {}: {m}", p.name))
}

/// A partition without a size takes its image's; an image larger than the partition fails.
fn size_from_child(p: &mut Part) -> Result<()> {
    if let Some(c) = &p.child {
        if p.size == 0 {
            p.size = if p.in_table {
                align_up(c.size, p.align)
            } else {
                c.size
            };
        }
        if c.size > p.size {
            return Err(p.pos.error(format!(
                "partition {}: size ({}) too small for {} ({})",
                p.name,
                p.size,
                p.image.as_deref().unwrap_or_default(),
                c.size
            )));
        }
    }
    if p.size == 0 {
        return Err(p.pos.error(format!(
            "partition {}: size must not be zero (give `size` or `image`)",
            p.name
        )));
    }
    Ok(())
}

/// genimage's overlap rule: partition `i` may not share a byte with an earlier one, unless
/// the earlier one's image declares that range a hole.
fn check_overlap(all: &[Part], i: usize) -> Result<()> {
    let p = &all[i];
    for q in &all[..i] {
        if p.offset >= q.end() || q.offset >= p.end() {
            continue;
        }
        let start = p.offset.max(q.offset) - q.offset;
        let end = p.end().min(q.end()) - q.offset;
        let holed = q
            .child
            .as_ref()
            .is_some_and(|c| c.holes.iter().any(|(s, e)| *s <= start && end <= *e));
        if holed {
            continue;
        }
        let mut msg = format!(
            "partition {} (offset {:#x}, size {:#x}) overlaps previous partition {} (offset \
             {:#x}, size {:#x})",
            p.name, p.offset, p.size, q.name, q.offset, q.size
        );
        if p.fake && !q.in_table {
            msg.push_str(
                "; bootloaders and the like that overlap the partition table must declare the \
                 overlapping area as a hole",
            );
        }
        // Point at a line the user wrote: the partition, or the one a table area hits.
        let pos = if p.fake { &q.pos } else { &p.pos };
        return Err(pos.error(msg));
    }
    Ok(())
}

/// genimage's `holes` entries: `"(START; END)"`, each a decimal size with a suffix.
pub fn parse_hole(text: &str) -> Option<(u64, u64)> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(';')?;
    fn ok(s: &str) -> Option<&str> {
        let s = s.trim();
        (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || "skKMG".contains(c))).then_some(s)
    }
    let num = |s: &str| match super::config::parse_size(s, false) {
        Ok(super::config::Size::Bytes(n)) => Some(n),
        _ => None,
    };
    Some((num(ok(a)?)?, num(ok(b)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos() -> Pos {
        Pos {
            file: "t.cfg".into(),
            line: 1,
            column: 1,
        }
    }

    fn hd(table: TableType) -> Hd {
        Hd {
            table,
            align: 512,
            gpt_location: 1024,
            gpt_no_backup: false,
            disk_uuid: None,
            signature: Signature::Fixed(0),
            extended: 0,
            pos: pos(),
        }
    }

    fn part(name: &str, offset: u64, size: u64, in_table: bool, child: Option<u64>) -> Part {
        let mut p = fake(name, offset, size, &pos());
        p.fake = false;
        p.in_table = in_table;
        p.align = if in_table { 512 } else { 1 };
        p.child = child.map(|size| Child {
            size,
            holes: Vec::new(),
        });
        p.image = child.map(|_| "x".to_string());
        p
    }

    #[test]
    fn mbr_defaults_pack_after_the_table() {
        let parts = vec![
            part("uboot", 8192, 0, false, Some(300_000)),
            part("boot", 0, 0, true, Some(40 << 20)),
            part("root", 0, 4 << 20, true, None),
        ];
        let d = place(hd(TableType::Mbr), parts, 0, &pos()).unwrap();
        assert_eq!(d.parts[0].size, 300_000);
        assert_eq!(d.parts[1].offset, 308_224);
        assert_eq!(d.parts[2].offset, 308_224 + (40 << 20));
        assert_eq!(d.size, d.parts[2].end());
    }

    #[test]
    fn gpt_starts_after_the_array_and_ends_on_4k() {
        let parts = vec![part("a", 0, 1 << 20, true, None)];
        let d = place(hd(TableType::Gpt), parts, 0, &pos()).unwrap();
        assert_eq!(d.parts[0].offset, 17408);
        assert_eq!(d.size, align_up(17408 + (1 << 20) + GPT_BACKUP, 4096));
    }

    #[test]
    fn logical_partitions_leave_room_for_their_ebr() {
        let parts = (0..6)
            .map(|i| part(&format!("p{i}"), 0, 1 << 20, true, None))
            .collect();
        let d = place(hd(TableType::Mbr), parts, 0, &pos()).unwrap();
        let logical: Vec<bool> = d.parts.iter().map(|p| p.logical).collect();
        assert_eq!(logical, [false, false, false, true, true, true]);
        assert_eq!(d.parts[3].offset, d.parts[2].end() + 512);
        assert_eq!(d.parts[4].offset, d.parts[3].end() + 512);
    }

    #[test]
    fn overlaps_fail_unless_holed() {
        let parts = vec![part("boot", 0, 1024, false, Some(1024))];
        let e = place(hd(TableType::Mbr), parts, 0, &pos())
            .unwrap_err()
            .to_string();
        assert!(e.contains("partition [MBR]"), "{e}");
        assert!(e.contains("as a hole"), "{e}");
        let mut p = part("boot", 0, 1024, false, Some(1024));
        if let Some(c) = &mut p.child {
            c.holes.push((440, 512));
        }
        assert!(place(hd(TableType::Mbr), vec![p], 0, &pos()).is_ok());
    }

    #[test]
    fn gpt_types_take_letters_guids_and_names() {
        let ty = |v: &str| {
            let node = super::super::config::tests_node("p", "partition-type-uuid", v);
            gpt_ids(&node, "p", v).map(|(t, _)| t.map(|g| g.to_string()).unwrap_or_default())
        };
        assert_eq!(ty("U").unwrap(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            ty("ROOT-ARM64").unwrap(),
            "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
        );
        let linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
        assert_eq!(ty(linux).unwrap(), linux);
        assert!(
            ty("Q")
                .unwrap_err()
                .to_string()
                .contains("invalid type shortcut: Q")
        );
        assert!(
            ty("nonsense")
                .unwrap_err()
                .to_string()
                .contains("invalid partition type UUID")
        );
    }

    #[test]
    fn holes_parse() {
        assert_eq!(parse_hole("(440; 512)"), Some((440, 512)));
        assert_eq!(parse_hole(" ( 1K ; 32K ) "), Some((1024, 32768)));
        assert_eq!(parse_hole("(0x10;20)"), None);
        assert_eq!(parse_hole("440;512"), None);
    }
}
