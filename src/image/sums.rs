//! `SHA256SUMS` in coreutils' format: read, merged (our lines replaced, every other line kept
//! byte for byte), and the SHA-256 of a file for it.

use std::path::Path;

use crate::error::{Error, Result};

/// The current content of a checksum list, if there is one: refused (not rewritten) when
/// it cannot be read whole.
pub fn read_sha256sums(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        Ok(_) => crate::io::read_small(path, "checksum list").map(Some),
    }
}

/// The file name a checksum line is for: coreutils' `HASH  name` (text) and `HASH *name`
/// (binary), with `\`-escaped names, and the tagged `SHA256 (name) = HASH`. `None` for
/// comments and anything else.
fn sums_line_name(line: &[u8]) -> Option<Vec<u8>> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let raw = if let Some(rest) = line.strip_prefix(b"SHA256 (") {
        let end = rest.windows(4).rposition(|w| w == b") = ")?;
        rest[..end].to_vec()
    } else {
        let sp = line.iter().position(|b| *b == b' ')?;
        let (hash, rest) = line.split_at(sp);
        if hash.is_empty() || !hash.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        match rest {
            [b' ', b' ' | b'*', name @ ..] if !name.is_empty() => name.to_vec(),
            _ => return None,
        }
    };
    if !escaped {
        return Some(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = raw.iter();
    while let Some(&b) = i.next() {
        if b == b'\\' {
            match i.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'r') => out.push(b'\r'),
                Some(&c) => out.push(c),
                None => out.push(b),
            }
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// One checksum line in coreutils' text mode, escaping names as `sha256sum` does.
fn sums_line(name: &str, hash: &str) -> Vec<u8> {
    if name.contains(['\\', '\n', '\r']) {
        let esc = name
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{hash}  {esc}\n").into_bytes()
    } else {
        format!("{hash}  {name}\n").into_bytes()
    }
}

/// `old` (a SHA256SUMS file's bytes) with the lines for `entries`' names replaced: every
/// other line (other files, binary-mode lines, tagged lines, comments, bytes that are not
/// UTF-8) is kept byte for byte and in place; a replaced name keeps its first line's place,
/// and names not listed yet are appended in name order.
pub fn merge_sha256sums(old: &[u8], entries: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(old.len() + entries.len() * 100);
    let mut placed: Vec<&str> = Vec::new();
    let mut rest = old;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..=i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let ours = sums_line_name(body)
            .and_then(|n| entries.iter().find(|(e, _)| e.as_bytes() == n.as_slice()));
        match ours {
            Some((name, hash)) => {
                if !placed.contains(&name.as_str()) {
                    placed.push(name);
                    out.extend(sums_line(name, hash));
                }
            }
            None => {
                out.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
    }
    let mut new: Vec<&(String, String)> = entries
        .iter()
        .filter(|(n, _)| !placed.contains(&n.as_str()))
        .collect();
    new.sort();
    new.dedup_by(|a, b| a.0 == b.0);
    for (n, h) in new {
        out.extend(sums_line(n, h));
    }
    out
}

/// SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut h = crate::io::HashReader::new(&mut f);
    std::io::copy(&mut h, &mut std::io::sink())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_keep_every_line_they_do_not_replace() {
        let old: &[u8] = b"# comment\n\xff\xfe not utf-8\naaaa *bin.img\nbbbb  x.img\ncccc  other\nSHA256 (t) = dd\nbbbb  x.img\nlast-without-newline";
        let new = merge_sha256sums(
            old,
            &[
                ("x.img".into(), "1234".into()),
                ("bin.img".into(), "5678".into()),
                ("a".into(), "9".into()),
            ],
        );
        assert_eq!(
            new,
            b"# comment\n\xff\xfe not utf-8\n5678  bin.img\n1234  x.img\ncccc  other\nSHA256 (t) = dd\nlast-without-newline\n9  a\n"
        );
        assert_eq!(sums_line_name(b"SHA256 (t) = dd"), Some(b"t".to_vec()));
        assert_eq!(sums_line_name(b"\\ab  a\\nb"), Some(b"a\nb".to_vec()));
        assert_eq!(sums_line("a\nb", "ab"), b"\\ab  a\\nb\n");
    }
}
