//! The `inspect` command: what is on a disk or image, as a listing or `--json`.

use std::path::PathBuf;

use clap::Args;

use skiff_flash::Result;
use skiff_flash::ops::inspect as insp;
use skiff_flash::units::{bytes, human};

#[derive(Args)]
pub struct InspectArgs {
    /// Device or image file.
    target: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn inspect(a: &InspectArgs) -> Result<()> {
    let i = insp::inspect_path(&a.target)?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
        return Ok(());
    }
    let table = match &i.table {
        insp::Table::Gpt {
            disk_guid,
            primary_ok,
            backup_ok,
            hybrid,
        } => format!(
            "GPT {disk_guid} (primary {}, backup {}{})",
            if *primary_ok { "ok" } else { "BAD" },
            if *backup_ok { "ok" } else { "BAD" },
            if *hybrid { ", hybrid MBR" } else { "" }
        ),
        insp::Table::Mbr { disk_id } => format!("MBR, disk id 0x{disk_id}"),
        insp::Table::None => "no partition table".into(),
    };
    out!(
        "{}: {} bytes ({}), {table}",
        a.target.display(),
        bytes(i.size),
        human(i.size)
    );
    for p in &i.partitions {
        out!(
            "{:>2}  start {:>14}  size {:>10}  {:<9} {:<9} {:<10} {}{}",
            p.number,
            bytes(p.start),
            human(p.size),
            p.kind,
            p.fs.kind,
            p.fs.label.clone().unwrap_or_default(),
            p.fs.uuid.clone().unwrap_or_default(),
            if p.bootable { "  bootable" } else { "" }
        );
        for f in p.fs.files.iter().flatten() {
            out!(
                "      {:>12}  {}{}",
                if f.dir { "dir".into() } else { bytes(f.size) },
                f.path,
                if f.dir { "/" } else { "" }
            );
        }
    }
    for pr in &i.problems {
        out!("problem: {pr}");
    }
    Ok(())
}
