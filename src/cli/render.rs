//! Human-readable rendering of plans, boards and results; `--json` uses serde directly.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use skiff_flash::define::board::{Board, Summary};
use skiff_flash::format::table::gpt_type_name;
use skiff_flash::plan::tree::Node;
use skiff_flash::plan::{Partition, Plan, Table};
use skiff_flash::units::{bytes, human};

pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// What a customisation adds to persist, one line each (never the passphrase).
fn custom(c: &skiff_flash::plan::custom::Record) -> String {
    let mut o = String::from("persist customised:\n");
    if let Some(h) = &c.hostname {
        let _ = writeln!(o, "  hostname  {h}");
    }
    for k in &c.ssh_keys {
        let _ = writeln!(o, "  ssh key   {} {} ({})", k.fingerprint, k.kind, k.file);
    }
    if let Some(w) = &c.wifi {
        let _ = writeln!(o, "  wifi      {} (passphrase set, {})", w.ssid, w.keyfile);
    }
    for f in &c.files {
        let _ = writeln!(o, "  file      {f}");
    }
    o
}

pub fn plan(p: &Plan, verbose: u8) -> String {
    let mut o = String::new();
    let table = match &p.table {
        Table::Gpt { disk_guid, .. } => format!("GPT, disk GUID {disk_guid}"),
        Table::Mbr { disk_id } => format!("MBR, disk id 0x{disk_id}"),
    };
    let _ = writeln!(o, "board {}  layout {}  {table}", p.board, p.layout);
    let _ = writeln!(
        o,
        "disk {} bytes ({})",
        bytes(p.disk_size),
        human(p.disk_size)
    );
    let _ = writeln!(
        o,
        "{:>2}  {:<8} {:>14} {:>14} {:>10}  {:<9} {:<6} {:<8} {:>8}  content",
        "#", "id", "start", "size", "size", "type", "fs", "label", "files"
    );
    for part in &p.partitions {
        let _ = writeln!(o, "{}", partition_row(part));
    }
    if let Some(c) = &p.custom {
        o.push_str(&custom(c));
    }
    if verbose > 0 {
        for part in &p.partitions {
            let Some(f) = &part.fs else { continue };
            let _ = writeln!(o, "\n{} ({}, PARTUUID {}):", part.id, f.uuid, part.partuuid);
            for e in f.entries.iter().skip(1) {
                let what = match &e.node {
                    Node::Dir => "dir".to_string(),
                    Node::File { size, .. } => bytes(*size),
                    Node::Symlink { target } => format!("-> {target}"),
                };
                let _ = writeln!(
                    o,
                    "  {:04o} {}:{}  {:<40} {what}",
                    e.mode, e.uid, e.gid, e.path
                );
            }
        }
    }
    o
}

/// One partition's row of the plan table.
fn partition_row(part: &Partition) -> String {
    let ty = part
        .gpt_type
        .map(|g| gpt_type_name(g).map_or(g.to_string(), str::to_string))
        .or(part.mbr_type.clone())
        .unwrap_or_default();
    let (fs, label, files, content) = match (&part.fs, &part.image) {
        (Some(f), _) => (
            format!("{:?}", f.kind).to_lowercase(),
            f.label.clone().unwrap_or_default(),
            f.entries
                .iter()
                .filter(|e| !matches!(e.node, Node::Dir))
                .count()
                .to_string(),
            format!("{} (min {})", human(f.content_bytes), human(f.min_size)),
        ),
        (None, Some(i)) => (
            "image".into(),
            String::new(),
            String::new(),
            format!(
                "{} ({})",
                i.source
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                human(i.size)
            ),
        ),
        (None, None) => Default::default(),
    };
    format!(
        "{:>2}  {:<8} {:>14} {:>14} {:>10}  {:<9} {:<6} {:<8} {:>8}  {content}",
        part.number,
        part.id,
        bytes(part.start),
        bytes(part.size),
        human(part.size),
        ty,
        fs,
        label,
        files
    )
}

pub fn boards(list: &[Summary]) -> String {
    let w = list.iter().map(|b| b.name.len()).max().unwrap_or(4);
    let mut o = String::new();
    for b in list {
        let _ = writeln!(o, "{:<w$}  {}", b.name, b.description);
    }
    o
}

pub fn board(b: &Board) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {} — {}", b.name, b.description);
    let _ = writeln!(o, "# layers: {}", b.layers.join(" -> "));
    let _ = writeln!(o, "# layout: {} — {}", b.layout.name, b.layout.description);
    let doc = toml::Value::try_from(b)
        .ok()
        .and_then(|v| toml::to_string_pretty(&v).ok())
        .unwrap_or_default();
    o.push_str(&doc);
    o
}

pub fn built(
    p: &Plan,
    out: &Path,
    r: &skiff_flash::ops::build::BuildReport,
    took: Duration,
) -> String {
    let mapped = r.written.stream.mapped_blocks * skiff_flash::sink::stream::BLOCK;
    let mut o = format!(
        "{}: {} bytes ({}), {} partitions, {} mapped, board {} in {:.2} s",
        out.display(),
        bytes(p.disk_size),
        human(p.disk_size),
        p.partitions.len(),
        human(mapped),
        p.board,
        took.as_secs_f64()
    );
    if r.written.file_size != p.disk_size {
        let _ = write!(
            o,
            "; file {} ({})",
            bytes(r.written.file_size),
            human(r.written.file_size)
        );
    }
    for e in &r.extra {
        let _ = write!(o, "\n{}", e.display());
    }
    o
}
