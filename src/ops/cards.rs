//! Per-card customisation when `flash` writes several cards: the templates `{n}` and
//! `{serial}` filled for each card, or a CSV (`--per-card`) whose rows give a device its own
//! hostname, keys, Wi-Fi or files.
//!
//! The CSV has a header naming `device` and any of `hostname`, `ssh_key`, `wifi`,
//! `wifi_psk_file`, `persist_file`; `ssh_key` and `persist_file` cells hold one or more
//! values separated by `;`. A non-empty cell replaces the command line's value for that
//! card. Not for checking values (`plan::custom`) or devices (`device`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::device::DeviceInfo;
use crate::error::{Error, Result};
use crate::plan::custom::{Card, Custom, FileSpec, Secret, Spec, WifiSpec};

/// A setting a CSV column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Hostname,
    SshKey,
    Wifi,
    WifiPskFile,
    PersistFile,
}

impl Column {
    fn parse(name: &str) -> Option<Column> {
        Some(match name {
            "hostname" => Column::Hostname,
            "ssh_key" => Column::SshKey,
            "wifi" => Column::Wifi,
            "wifi_psk_file" => Column::WifiPskFile,
            "persist_file" => Column::PersistFile,
            _ => return None,
        })
    }
}

/// One row: the device (as its device number) and its non-empty cells.
#[derive(Debug, Clone)]
struct Row {
    line: usize,
    device: PathBuf,
    dev: (u32, u32),
    cells: Vec<(Column, String)>,
}

/// A `--per-card` file, read and checked for its shape.
#[derive(Debug, Clone)]
pub struct PerCard {
    file: PathBuf,
    rows: Vec<Row>,
}

impl PerCard {
    /// Reads the CSV; an unknown column, a row of the wrong width, a device that is not a
    /// block device or a device named twice is refused with file:line.
    pub fn load(file: &Path) -> Result<PerCard> {
        let text = crate::io::read_small_text(file, "per-card file")?;
        let at = |line: usize, m: String| Error::Usage(format!("{}:{line}: {m}", file.display()));
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let (hline, header) = lines
            .next()
            .ok_or_else(|| at(1, "no header (`device,hostname,…`)".into()))?;
        let header = split(header).map_err(|m| at(hline, m))?;
        if header.first().map(String::as_str) != Some("device") {
            return Err(at(hline, "the first column must be `device`".into()));
        }
        let columns = header[1..]
            .iter()
            .map(|h| {
                Column::parse(h).ok_or_else(|| {
                    at(hline, format!("unknown column `{h}` (device, hostname, ssh_key, wifi, wifi_psk_file, persist_file)"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rows: Vec<Row> = Vec::new();
        for (line, l) in lines {
            let row = row(&columns, line, l).map_err(|m| at(line, m))?;
            if rows.iter().any(|r| r.dev == row.dev) {
                return Err(at(
                    line,
                    format!("{} has a row already", row.device.display()),
                ));
            }
            rows.push(row);
        }
        Ok(PerCard {
            file: file.to_path_buf(),
            rows,
        })
    }
}

fn row(columns: &[Column], line: usize, text: &str) -> std::result::Result<Row, String> {
    let cells = split(text)?;
    if cells.len() != columns.len() + 1 {
        return Err(format!(
            "{} cells, the header has {}",
            cells.len(),
            columns.len() + 1
        ));
    }
    let device = PathBuf::from(&cells[0]);
    let meta = std::fs::metadata(&device).map_err(|e| format!("{}: {e}", device.display()))?;
    if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        return Err(format!("{} is not a block device", device.display()));
    }
    let rdev = meta.rdev();
    Ok(Row {
        line,
        device,
        dev: (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
        cells: columns
            .iter()
            .copied()
            .zip(cells.into_iter().skip(1))
            .filter(|(_, v)| !v.is_empty())
            .collect(),
    })
}

/// One CSV line into cells: `,`-separated, `"…"` quoting with `""` for a quote.
fn split(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let cell = cells.last_mut().ok_or("empty line")?;
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if cell.is_empty() => quoted = true,
            (',', false) => cells.push(String::new()),
            (c, _) => cell.push(c),
        }
    }
    if quoted {
        return Err("a quoted cell is not closed".into());
    }
    Ok(cells.into_iter().map(|c| c.trim().to_string()).collect())
}

/// The card-numbering and serial `{n}`/`{serial}` use: the serial made safe for names.
fn card(n: usize, serial: Option<&str>, name: &str) -> Card {
    let serial = crate::plan::custom::safe_name(serial.unwrap_or(name).trim());
    Card { n, serial }
}

/// Every card's customisation, in the order the devices were given (`None` where nothing
/// is asked). Rows naming a device not being written are refused.
pub fn resolve_all(
    spec: &Spec,
    per: Option<&PerCard>,
    infos: &[DeviceInfo],
) -> Result<Vec<Option<Custom>>> {
    if let Some(per) = per
        && let Some(r) = per
            .rows
            .iter()
            .find(|r| !infos.iter().any(|i| (i.major, i.minor) == r.dev))
    {
        return Err(Error::Usage(format!(
            "{}:{}: {} is not one of the devices being written",
            per.file.display(),
            r.line,
            r.device.display()
        )));
    }
    infos
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let row = per.and_then(|p| {
                let r = p.rows.iter().find(|r| r.dev == (info.major, info.minor))?;
                Some((p, r))
            });
            let spec = match row {
                Some((p, r)) => overridden(spec, r).map_err(|e| at_row(p, r, e))?,
                None => spec.clone(),
            };
            if spec.is_empty() {
                return Ok(None);
            }
            let resolved = spec.resolve(Some(&card(i + 1, info.serial.as_deref(), &info.name)));
            match row {
                Some((p, r)) => resolved.map(Some).map_err(|e| at_row(p, r, e)),
                None => resolved.map(Some),
            }
        })
        .collect()
}

fn at_row(p: &PerCard, r: &Row, e: Error) -> Error {
    Error::Usage(format!("{}:{}: {e}", p.file.display(), r.line))
}

/// The command line's spec with a row's cells in place of its values.
fn overridden(spec: &Spec, row: &Row) -> Result<Spec> {
    let mut s = spec.clone();
    let mut ssid = None;
    let mut psk = None;
    for (col, v) in &row.cells {
        match col {
            Column::Hostname => s.hostname = Some(v.clone()),
            Column::SshKey => s.ssh_keys = list(v).map(PathBuf::from).collect(),
            Column::Wifi => ssid = Some(v.clone()),
            Column::WifiPskFile => psk = Some(read_psk(Path::new(v))?),
            Column::PersistFile => {
                s.files = list(v)
                    .map(FileSpec::parse)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(Error::Usage)?
            }
        }
    }
    let old = s.wifi.take();
    s.wifi = match (ssid, psk, old) {
        (None, None, old) => old,
        (ssid, psk, old) => {
            let ssid = ssid.or(old.as_ref().map(|w| w.ssid.clone()));
            let psk = psk.or(old.map(|w| w.psk));
            match (ssid, psk) {
                (Some(ssid), Some(psk)) => Some(WifiSpec { ssid, psk }),
                (None, _) => return Err(Error::Usage("wifi_psk_file without a wifi SSID".into())),
                (Some(_), None) => {
                    return Err(Error::Usage(
                        "wifi without a passphrase (a wifi_psk_file cell or --wifi-psk-file)"
                            .into(),
                    ));
                }
            }
        }
    };
    Ok(s)
}

/// A cell's `;`-separated values.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(';').map(str::trim).filter(|x| !x.is_empty())
}

/// A passphrase file: its text without the final line break.
pub fn read_psk(path: &Path) -> Result<Secret> {
    let text = crate::io::read_small_text(path, "Wi-Fi passphrase file")?;
    let t = text.strip_suffix('\n').unwrap_or(&text);
    Ok(Secret::new(t.strip_suffix('\r').unwrap_or(t).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_split_with_quotes() {
        assert_eq!(split("a,b , c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split(r#""x,y","say ""hi""""#).unwrap(),
            ["x,y", r#"say "hi""#]
        );
        assert!(split(r#""open"#).is_err());
        assert_eq!(split("a,,").unwrap(), ["a", "", ""]);
    }

    #[test]
    fn serials_are_made_safe_for_names() {
        assert_eq!(card(3, Some(" AB 12/x"), "sdb").serial, "AB_12_x");
        assert_eq!(card(1, None, "loop7").serial, "loop7");
    }
}
