//! Placeholders in bootloader configs and destination paths: `{partuuid:ID}`, `{fsuuid:ID}`,
//! `{label:ID}`, `{version}` and a board's own `vars` (which may use the others, e.g.
//! `SKIFFOS_PARTUUID = "{partuuid:persist}"`).
//!
//! Only known names are replaced, and never `${…}`, so U-Boot and shell variables in the
//! same file pass through untouched.

use std::collections::BTreeMap;

/// Known placeholder values.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    /// Adds a board's vars, whose values may themselves hold placeholders.
    pub fn extend_board(&mut self, board: &BTreeMap<String, String>) {
        for (k, v) in board {
            let v = self.apply(v);
            self.values.insert(k.clone(), v);
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Replaces every known `{name}` not preceded by `$`.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('{') {
            let (before, from) = rest.split_at(i);
            out.push_str(before);
            let dollar = out.ends_with('$');
            match from.find('}').map(|j| &from[1..j]) {
                Some(name) if !dollar && self.values.contains_key(name) => {
                    out.push_str(&self.values[name]);
                    rest = &from[name.len() + 2..];
                }
                _ => {
                    out.push('{');
                    rest = &from[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Placeholders in `text` (outside `${…}`) that have no value.
    pub fn unknown(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find('{') {
            let dollar = i > 0 && rest.as_bytes()[i - 1] == b'$';
            let from = &rest[i..];
            let Some(j) = from.find('}') else { break };
            let name = &from[1..j];
            let looks_like = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c));
            if !dollar && looks_like && !self.values.contains_key(name) {
                out.push(name.to_string());
            }
            rest = &from[1..];
        }
        out
    }
}

/// The `VERSION=` value of an os-release style file (quotes removed).
pub fn release_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("partuuid:persist", "1234-02");
        v.set("version", "1.2.3");
        let mut board = BTreeMap::new();
        board.insert("SKIFFOS_PARTUUID".into(), "{partuuid:persist}".into());
        v.extend_board(&board);
        v
    }

    #[test]
    fn known_names_are_replaced_and_others_kept() {
        let v = vars();
        assert_eq!(
            v.apply("root=PARTUUID={SKIFFOS_PARTUUID} f=bzImage-{version}-1 ${kernel_addr_r} {x}"),
            "root=PARTUUID=1234-02 f=bzImage-1.2.3-1 ${kernel_addr_r} {x}"
        );
        assert_eq!(v.apply("${version}"), "${version}");
        assert_eq!(v.apply("{"), "{");
        assert_eq!(
            v.unknown("{version} {nope} ${also} {partuuid:boot}"),
            ["nope", "partuuid:boot"]
        );
    }

    #[test]
    fn version_from_release_file() {
        assert_eq!(
            release_version("NAME=SkiffOS\nVERSION=\"2025.1-3-gabc\"\nID=skiff\n").as_deref(),
            Some("2025.1-3-gabc")
        );
        assert_eq!(release_version("NAME=x\n"), None);
    }
}
