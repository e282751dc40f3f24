//! NVIDIA Linux for Tegra (L4T) partition layouts: reads the `flash.xml` that L4T's
//! `flash.sh --no-flash --sign` leaves in `bootloader/signed/`, and turns the partitions of
//! one storage device (`sdcard` on the Jetson Nano) into a board's layout.
//!
//! What is read is what NVIDIA's `nvptparser.py` reads, and the table built is the one
//! SkiffOS's jetson format makes from its output:
//! - `<partition>` elements directly under every `<device type="DEVICE">` of the root, in
//!   document order; per partition its `name` attribute, `<size>` (bytes; a `UDA` without
//!   one is 128 MiB) and `<filename>` (optional). Nothing else is used.
//! - `GP1`, `GPT`, `primary_gpt`, `secondary_gpt` are the tables themselves: no partition.
//!   `master_boot_record` is not a partition either (our protective MBR stays).
//! - `APP` is partition 1 and lies after all the others; the others are numbered from 2 in
//!   document order, each starting on the next alignment boundary, `size` bytes rounded
//!   down to whole sectors, GPT type Linux filesystem, GPT name = the XML name.
//! - A partition with a file gets that file from `signed/` if it is there, else from the
//!   directory `signed/` is in (`bootloader/`); one without a file stays empty.
//! - `APP` becomes the layout's own partition (the ext4 `persist`): its XML size and file
//!   are not used.
//!
//! Not for placement or writing: the expanded layout goes through `plan` like any other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::define::board::{Board, PartitionDef, SizeSpec};
use crate::error::{Error, Result};
use crate::units::{Size, bytes};

/// The signed layout file, inside `<dir>/signed/`.
pub const FLASH_XML: &str = "flash.xml";

/// Names that are partition tables, not partitions.
const TABLES: [&str; 4] = ["GP1", "GPT", "primary_gpt", "secondary_gpt"];

/// The protective MBR entry of some layouts.
const MBR: &str = "master_boot_record";

/// The partition SkiffOS installs into (partition 1).
pub const APP: &str = "APP";

/// UTF-16 code units of a GPT partition name.
const GPT_NAME: usize = 36;

/// Entries of the GPT array we write.
const GPT_ENTRIES: usize = crate::format::table::gpt::ENTRIES as usize;

/// Size L4T's tools give a `UDA` partition that has no `<size>`.
const UDA_DEFAULT: u64 = 128 << 20;

/// A layout whose partitions come from L4T's signed `flash.xml` (layout key `l4t`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// L4T's bootloader directory, relative to the images directory; `flash.xml` and the
    /// signed files are in its `signed/`.
    pub dir: String,
    /// The `<device type="…">` to take partitions from.
    pub device: String,
    /// The layout partition `APP` becomes (it keeps its filesystem, label and size rule).
    pub app: String,
}

/// One partition of the device, as the XML gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlPartition {
    pub name: String,
    /// Bytes, as written.
    pub size: u64,
    /// Empty when the partition has no file.
    pub filename: String,
    /// Line of the `<partition>` element.
    pub line: u32,
}

/// What a flash.xml says about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its partitions in document order, tables and the protective MBR left out.
    pub partitions: Vec<XmlPartition>,
    /// The file `master_boot_record` names, with its line: SkiffOS copies it over sector 0;
    /// here the protective MBR stays ours.
    pub mbr_file: Option<(String, u32)>,
}

/// The partitions of `device` in `text` (a flash.xml shown as `shown` in errors).
pub fn parse(text: &str, shown: &str, device: &str) -> Result<Device> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| error_at(shown, e.pos(), format!("not valid XML: {e}")))?;
    let xml = Xml { doc: &doc, shown };
    let root = doc.root_element();
    if !root.has_tag_name("partition_layout") {
        let name = root.tag_name().name();
        let message = format!("root element is <{name}>, not <partition_layout>");
        return Err(xml.error(root, message));
    }
    let devices: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("device"))
        .collect();
    let chosen: Vec<_> = (devices.iter())
        .filter(|d| d.attribute("type") == Some(device))
        .collect();
    if chosen.is_empty() {
        return Err(xml.no_device(root, device, &devices));
    }
    let mut out = Device {
        partitions: Vec::new(),
        mbr_file: None,
    };
    let parts = (chosen.iter())
        .flat_map(|d| d.children())
        .filter(|n| n.has_tag_name("partition"));
    for part in parts {
        match xml.entry(part)? {
            Entry::Table => {}
            Entry::Mbr(file) => out.mbr_file = file,
            Entry::Partition(x) => {
                if let Some(first) = out.partitions.iter().find(|q| q.name == x.name) {
                    let message = format!(
                        "partition {} is defined twice (first at line {})",
                        x.name, first.line
                    );
                    return Err(xml.error(part, message));
                }
                out.partitions.push(x);
            }
        }
    }
    if !out.partitions.iter().any(|p| p.name == APP) {
        return Err(xml.error(root, format!("device `{device}` has no {APP} partition")));
    }
    Ok(out)
}

/// What one `<partition>` element is.
enum Entry {
    /// A partition table (`GP1`, `GPT`, ...): nothing to place.
    Table,
    /// `master_boot_record`, with its file and line when it names one.
    Mbr(Option<(String, u32)>),
    Partition(XmlPartition),
}

/// A flash.xml being read: where its nodes are and errors that point at them.
struct Xml<'a, 'input> {
    doc: &'a roxmltree::Document<'input>,
    shown: &'a str,
}

type Node<'a, 'input> = roxmltree::Node<'a, 'input>;

impl Xml<'_, '_> {
    fn error(&self, node: Node<'_, '_>, message: String) -> Error {
        error_at(
            self.shown,
            self.doc.text_pos_at(node.range().start),
            message,
        )
    }

    fn entry(&self, part: Node<'_, '_>) -> Result<Entry> {
        let line = self.doc.text_pos_at(part.range().start).row;
        let Some(name) = part.attribute("name").map(str::trim) else {
            return Err(self.error(part, "<partition> has no name".into()));
        };
        if name.is_empty() {
            return Err(self.error(part, "<partition> has an empty name".into()));
        }
        if name == MBR {
            let file = child_text(part, "filename").filter(|f| !f.is_empty());
            return Ok(Entry::Mbr(file.map(|f| (f.to_string(), line))));
        }
        if TABLES.contains(&name) {
            return Ok(Entry::Table);
        }
        if name.encode_utf16().count() > GPT_NAME {
            let message = format!(
                "partition name `{name}` is longer than a GPT name's {GPT_NAME} characters"
            );
            return Err(self.error(part, message));
        }
        let size = self.size(part, name)?;
        let filename = child_text(part, "filename").unwrap_or("").to_string();
        if filename.contains('/') || filename == ".." {
            let message =
                format!("partition {name}: filename `{filename}` is not a plain file name");
            return Err(self.error(part, message));
        }
        Ok(Entry::Partition(XmlPartition {
            name: name.to_string(),
            size,
            filename,
            line,
        }))
    }

    /// `<size>` in bytes; a `UDA` without one gets L4T's default.
    fn size(&self, part: Node<'_, '_>, name: &str) -> Result<u64> {
        let Some(s) = part.children().find(|n| n.has_tag_name("size")) else {
            if name == "UDA" {
                return Ok(UDA_DEFAULT);
            }
            return Err(self.error(part, format!("partition {name} has no <size>")));
        };
        let t = s.text().unwrap_or("").trim();
        match t.parse::<u64>() {
            Ok(n) if n >= 512 => Ok(n),
            Ok(n) => Err(self.error(
                s,
                format!("partition {name}: size {n} is less than one 512-byte sector"),
            )),
            Err(_) => Err(self.error(
                s,
                format!(
                    "partition {name}: size `{t}` is not a byte count (was flash.sh's substitution run? use the signed/ flash.xml)"
                ),
            )),
        }
    }

    /// No `<device>` of the wanted type: the error lists the types there are.
    fn no_device(&self, root: Node<'_, '_>, device: &str, devices: &[Node<'_, '_>]) -> Error {
        let types: Vec<String> = devices
            .iter()
            .filter_map(|d| d.attribute("type"))
            .map(|t| format!("`{t}`"))
            .collect();
        let listed = if types.is_empty() {
            "none".to_string()
        } else {
            types.join(", ")
        };
        let message = format!("no <device type=\"{device}\"> (devices here: {listed})");
        self.error(root, message)
    }
}

fn error_at(shown: &str, pos: roxmltree::TextPos, message: String) -> Error {
    Error::DefinitionFile {
        file: shown.to_string(),
        line: pos.row as usize,
        column: pos.col as usize,
        message,
    }
}

/// The trimmed text of `node`'s first `<tag>` child.
fn child_text<'a>(node: Node<'a, '_>, tag: &str) -> Option<&'a str> {
    (node.children().find(|n| n.has_tag_name(tag)))
        .and_then(|f| f.text())
        .map(str::trim)
}

/// Where `signed/flash.xml` is for `src` under `images`.
pub fn flash_xml(images: &Path, src: &Source) -> PathBuf {
    images.join(&src.dir).join("signed").join(FLASH_XML)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// `board` with its layout's partitions read from L4T's signed flash.xml, or `None` when
/// its layout is not an L4T one. Checks every partition file: present, and no larger than
/// its partition.
pub fn expand(board: &Board, images: &Path) -> Result<Option<Board>> {
    let Some(src) = &board.layout.l4t else {
        return Ok(None);
    };
    if !images.is_dir() {
        // Reported by the artifacts step with the usual advice.
        return Ok(None);
    }
    let files = Files::new(board, images, src);
    let device = parse(&files.read_xml()?, &files.shown, &src.device)?;
    let parts = &device.partitions;
    if parts.len() > GPT_ENTRIES {
        return Err(Error::board(
            &board.name,
            format!(
                "{}: device `{}` has {} partitions, a GPT holds {GPT_ENTRIES}",
                files.shown,
                src.device,
                parts.len()
            ),
        ));
    }
    let layout = &board.layout;
    let Some(app) = layout.partitions.iter().find(|p| p.id == src.app) else {
        return Err(Error::board(
            &board.name,
            format!("layout `{}` has no partition `{}`", layout.name, src.app),
        ));
    };
    let align = layout.align.0;
    let mut at = layout.start.map_or(align, |s| s.0);
    let mut others = Vec::new();
    for x in parts.iter().filter(|x| x.name != APP) {
        if x.name == src.app || layout.partitions.iter().any(|p| p.id == x.name) {
            return Err(Error::DefinitionFile {
                file: files.shown.clone(),
                line: x.line as usize,
                column: 1,
                message: format!(
                    "partition {} has the name of layout `{}`'s own partition",
                    x.name, layout.name
                ),
            });
        }
        let size = x.size / 512 * 512;
        let image = files.partition_file(x, size)?;
        let start = align_up(at, align);
        at = start + size;
        others.push(partition_def(x, start, size, image));
    }
    let mut first = app.clone();
    first.gpt_name = Some(APP.into());
    first.offset = Some(Size(align_up(at, align)));
    let mut out = board.clone();
    out.layout.partitions = std::iter::once(first).chain(others).collect();
    if let Some((file, line)) = device.mbr_file {
        out.warnings.push(format!(
            "{}:{line}: master_boot_record's `{file}` is not written (sector 0 keeps the \
             protective MBR of the GPT)",
            files.shown
        ));
    }
    out.validate()?;
    Ok(Some(out))
}

/// The layout partition an L4T partition becomes, placed at `start`.
fn partition_def(x: &XmlPartition, start: u64, size: u64, image: Option<String>) -> PartitionDef {
    PartitionDef {
        id: x.name.clone(),
        fs: None,
        label: None,
        gpt_name: Some(x.name.clone()),
        gpt_type: Some("linux".into()),
        mbr_type: None,
        bootable: false,
        size: SizeSpec::Fixed(size),
        headroom: None,
        min: None,
        offset: Some(Size(start)),
        image,
        fs_size: None,
        partuuid: None,
        logical: false,
        fat: Default::default(),
    }
}

/// Where one board's L4T files are.
struct Files<'a> {
    board: &'a str,
    images: &'a Path,
    /// L4T's `bootloader/`.
    bootloader: PathBuf,
    /// Its `signed/`, where flash.xml and the signed files are.
    signed: PathBuf,
    xml: PathBuf,
    /// flash.xml as errors name it.
    shown: String,
}

impl<'a> Files<'a> {
    fn new(board: &'a Board, images: &'a Path, src: &Source) -> Files<'a> {
        let bootloader = images.join(&src.dir);
        let xml = flash_xml(images, src);
        Files {
            board: &board.name,
            images,
            signed: bootloader.join("signed"),
            shown: xml.display().to_string(),
            xml,
            bootloader,
        }
    }

    /// flash.xml's text; when it is missing, says how it is made.
    fn read_xml(&self) -> Result<String> {
        let xml = &self.xml;
        match std::fs::read(xml) {
            Ok(b) => String::from_utf8(b).map_err(|e| Error::BadArtifact {
                path: xml.clone(),
                message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let what = if self.signed.is_dir() {
                    format!("{} is missing", xml.display())
                } else {
                    format!("{} does not exist", self.signed.display())
                };
                let bootloader = &self.bootloader;
                Err(Error::board(
                    self.board,
                    format!(
                        "{what}: the signed partition layout and bootloader files are made by \
                         NVIDIA's `flash.sh --no-flash --sign`, run in {} (the first step of \
                         SkiffOS's format; docs/boards.md gives the command)",
                        bootloader.parent().unwrap_or(bootloader).display(),
                    ),
                ))
            }
            Err(e) => Err(Error::io(format!("reading {}", xml.display()), e)),
        }
    }

    /// The file of partition `x` (from `signed/`, else `bootloader/`) relative to the images
    /// directory, checked to fit its `size` bytes; `None` when it has no file.
    fn partition_file(&self, x: &XmlPartition, size: u64) -> Result<Option<String>> {
        if x.filename.is_empty() {
            return Ok(None);
        }
        let candidates = [
            self.signed.join(&x.filename),
            self.bootloader.join(&x.filename),
        ];
        let Some((path, len)) = candidates.iter().find_map(|p| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (p.clone(), m.len()))
        }) else {
            return Err(Error::board(
                self.board,
                format!(
                    "partition {} ({}:{}): `{}` is in neither {} nor {}",
                    x.name,
                    self.shown,
                    x.line,
                    x.filename,
                    self.signed.display(),
                    self.bootloader.display()
                ),
            ));
        };
        if len > size {
            return Err(Error::BadArtifact {
                path,
                message: format!(
                    "{} bytes do not fit partition {} of {} bytes ({}:{})",
                    bytes(len),
                    x.name,
                    bytes(size),
                    self.shown,
                    x.line
                ),
            });
        }
        let relative = path.strip_prefix(self.images).unwrap_or(&path);
        Ok(Some(relative.to_string_lossy().into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0"?>
<!-- test -->
<partition_layout version="01.00.0000">
    <device type="spi" instance="0">
        <partition name="BCT" type="boot_config_table"><size> 262144 </size></partition>
    </device>
    <device type="sdcard" instance="0">
        <partition name="GP1" type="GP1"><size> 512 </size></partition>
        <partition name="APP" id="1" type="data">
            <size> 14680064 </size>
            <filename> system.img </filename>
        </partition>
        <partition name="TBC" type="data">
            <size> 131072 </size>
            <filename> nvtboot_cpu.bin.encrypt </filename>
        </partition>
        <partition name="FX" type="data"><size> 65536 </size></partition>
        <partition name="GPT" type="GPT"><size> 512 </size></partition>
    </device>
</partition_layout>
"#;

    #[test]
    fn reads_the_device_partitions_in_order() {
        let p = parse(XML, "flash.xml", "sdcard").unwrap().partitions;
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["APP", "TBC", "FX"]);
        assert_eq!(p[1].size, 131072);
        assert_eq!(p[1].filename, "nvtboot_cpu.bin.encrypt");
        assert_eq!(p[1].line, 13);
        assert_eq!(p[2].filename, "");
        let with_mbr = XML.replace(
            "<partition name=\"GP1\" type=\"GP1\"><size> 512 </size></partition>",
            "<partition name=\"master_boot_record\"><size> 512 </size>\
             <filename> mbr.bin </filename></partition>",
        );
        let d = parse(&with_mbr, "flash.xml", "sdcard").unwrap();
        assert_eq!(d.partitions.len(), 3);
        assert_eq!(d.mbr_file, Some(("mbr.bin".to_string(), 8)));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse(XML, "flash.xml", "emmc").unwrap_err().to_string();
        assert!(e.starts_with("flash.xml:3:1:"), "{e}");
        assert!(e.contains("`spi`, `sdcard`"), "{e}");
        let bad = XML.replace("<size> 131072 </size>", "<size> TBCSIZE </size>");
        let e = parse(&bad, "flash.xml", "sdcard").unwrap_err().to_string();
        assert!(e.starts_with("flash.xml:14:"), "{e}");
        assert!(e.contains("TBCSIZE"), "{e}");
        let e = parse(&XML[..200], "f.xml", "sdcard")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.xml:"), "{e}");
        assert!(e.contains("not valid XML"), "{e}");
        let dup = XML.replace("name=\"FX\"", "name=\"TBC\"");
        let e = parse(&dup, "flash.xml", "sdcard").unwrap_err().to_string();
        assert!(e.contains("defined twice (first at line 13)"), "{e}");
        let long = XML.replace("name=\"FX\"", &format!("name=\"{}\"", "X".repeat(37)));
        let e = parse(&long, "flash.xml", "sdcard").unwrap_err().to_string();
        assert!(e.starts_with("flash.xml:17:"), "{e}");
        assert!(e.contains("longer than a GPT name's 36"), "{e}");
    }
}
