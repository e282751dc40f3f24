//! Write-time customisation of the persist partition: a hostname, SSH public keys, a Wi-Fi
//! network and extra files, placed where SkiffOS's boot script
//! (`configs-base/pre/root_overlay/opt/skiff/scripts/mount-all.sh`) reads them:
//! `skiff/hostname`, `skiff/keys/*.pub` and NetworkManager keyfiles in `skiff/connections/`.
//!
//! A [`Spec`] is what was asked (values may hold the per-card templates `{n}` and
//! `{serial}`); [`Spec::resolve`] fills them for one card and checks every value, so a bad
//! one is refused before anything is written. The resolved [`Custom`] adds entries to the
//! persist content tree (`plan::make`) and yields the [`Record`] manifests and logs keep —
//! never the Wi-Fi passphrase.
//!
//! Not for finding devices or their serials (`device`), nor for reading passphrases from a
//! terminal (the CLI).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::plan::tree::{Entry, Node, Source, Tree};

/// The partition customisations go to.
pub const PERSIST: &str = "persist";

/// A Wi-Fi passphrase: kept out of `Debug`, plans, manifests and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What was asked for, before per-card templates are filled.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// May hold `{n}` and `{serial}`.
    pub hostname: Option<String>,
    pub ssh_keys: Vec<PathBuf>,
    pub wifi: Option<WifiSpec>,
    pub files: Vec<FileSpec>,
}

#[derive(Debug, Clone)]
pub struct WifiSpec {
    pub ssid: String,
    pub psk: Secret,
}

/// `--persist-file SRC:DEST`; DEST may hold `{n}` and `{serial}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub source: PathBuf,
    pub dest: String,
}

impl FileSpec {
    /// Parses `SRC:DEST` (split at the last colon: sources may hold colons, DEST rarely).
    pub fn parse(s: &str) -> std::result::Result<FileSpec, String> {
        match s.rsplit_once(':') {
            Some((src, dest)) if !src.is_empty() && !dest.is_empty() => Ok(FileSpec {
                source: PathBuf::from(src),
                dest: dest.to_string(),
            }),
            _ => Err(format!("`{s}` is not SRC:DEST")),
        }
    }
}

/// Which card a value is filled for.
#[derive(Debug, Clone)]
pub struct Card {
    /// 1-based, in the order the devices were given.
    pub n: usize,
    /// The card's serial number, else its disk id.
    pub serial: String,
}

/// A checked customisation for one disk.
#[derive(Debug, Clone, Default)]
pub struct Custom {
    pub hostname: Option<String>,
    pub ssh_keys: Vec<SshKey>,
    pub wifi: Option<Wifi>,
    pub files: Vec<PersistFile>,
}

/// An OpenSSH public key, checked.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// The name it gets in `skiff/keys/`.
    pub name: String,
    pub kind: String,
    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key line as written: type, blob, comment.
    pub line: String,
}

#[derive(Debug, Clone)]
pub struct Wifi {
    pub ssid: String,
    psk: Secret,
}

#[derive(Debug, Clone)]
pub struct PersistFile {
    pub source: PathBuf,
    /// Absolute inside persist.
    pub dest: String,
    pub size: u64,
    pub mode: u32,
}

/// What manifests and logs keep of a customisation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<KeyRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wifi: Option<WifiRecord>,
    /// Paths of the extra files inside persist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub file: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WifiRecord {
    pub ssid: String,
    pub psk_set: bool,
    /// The keyfile's path inside persist.
    pub keyfile: String,
}

impl Record {
    /// The flag that generates persist file `path`, if one does.
    fn written_by(&self, path: &str) -> Option<&'static str> {
        if self.hostname.is_some() && path == "/skiff/hostname" {
            return Some("--hostname");
        }
        if self.ssh_keys.iter().any(|k| k.file == path) {
            return Some("--ssh-key");
        }
        if self.wifi.as_ref().is_some_and(|w| w.keyfile == path) {
            return Some("--wifi");
        }
        None
    }
}

impl Spec {
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none()
            && self.ssh_keys.is_empty()
            && self.wifi.is_none()
            && self.files.is_empty()
    }

    /// Whether any value differs per card.
    pub fn per_card(&self) -> bool {
        let t = |s: &str| s.contains("{n}") || s.contains("{serial}");
        self.hostname.as_deref().is_some_and(t) || self.files.iter().any(|f| t(&f.dest))
    }

    /// Fills the templates for `card` (none outside `flash`: templates are then refused)
    /// and checks every value.
    pub fn resolve(&self, card: Option<&Card>) -> Result<Custom> {
        let hostname = match &self.hostname {
            Some(h) => Some(check_hostname(&fill(h, card, "--hostname")?)?),
            None => None,
        };
        let ssh_keys = key_set(&self.ssh_keys)?;
        let wifi = match &self.wifi {
            Some(w) => {
                check_ssid(&w.ssid)?;
                check_psk(w.psk.expose())?;
                Some(Wifi {
                    ssid: w.ssid.clone(),
                    psk: w.psk.clone(),
                })
            }
            None => None,
        };
        let files = self
            .files
            .iter()
            .map(|f| persist_file(&f.source, &fill(&f.dest, card, "--persist-file")?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Custom {
            hostname,
            ssh_keys,
            wifi,
            files,
        })
    }
}

/// `{n}` and `{serial}` filled for `card`; without a card they are refused.
fn fill(value: &str, card: Option<&Card>, flag: &str) -> Result<String> {
    match card {
        Some(c) => Ok(value
            .replace("{n}", &c.n.to_string())
            .replace("{serial}", &c.serial)),
        None if value.contains("{n}") || value.contains("{serial}") => Err(Error::Usage(format!(
            "{flag} `{value}`: {{n}} and {{serial}} are filled per card by `flash` only"
        ))),
        None => Ok(value.to_string()),
    }
}

/// A hostname as RFC 1123 allows: dot-separated labels of 1–63 letters, digits and
/// hyphens, not starting or ending with a hyphen; 253 characters at most.
pub fn check_hostname(h: &str) -> Result<String> {
    let bad = |why: &str| Err(Error::Usage(format!("hostname `{h}`: {why}")));
    if h.is_empty() || h.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with a hyphen");
        }
    }
    Ok(h.to_string())
}

/// An SSID NetworkManager takes: 1–32 bytes, no control characters.
pub fn check_ssid(s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 32 {
        return Err(Error::Usage(format!(
            "Wi-Fi SSID `{s}` is {} bytes; an SSID is 1 to 32 bytes",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "Wi-Fi SSID {s:?} holds control characters"
        )));
    }
    Ok(())
}

/// A WPA-PSK: 8–63 printable ASCII characters, or 64 hex digits (the raw key).
pub fn check_psk(p: &str) -> Result<()> {
    let printable = p.bytes().all(|b| (0x20..0x7f).contains(&b));
    let hex = p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit());
    if hex || (printable && (8..=63).contains(&p.len())) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "Wi-Fi passphrase of {} bytes refused: WPA-PSK takes 8 to 63 printable ASCII characters or 64 hex digits",
        p.len()
    )))
}

/// Key types OpenSSH accepts in `authorized_keys`.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Reads and checks every key file; names in `skiff/keys/` follow the files' own names
/// (`id_ed25519.pub`), numbered when two share one. The same key twice is refused.
fn key_set(paths: &[PathBuf]) -> Result<Vec<SshKey>> {
    let mut keys: Vec<SshKey> = Vec::new();
    for path in paths {
        let mut key = read_key(path)?;
        if keys.iter().any(|k| k.fingerprint == key.fingerprint) {
            return Err(Error::BadArtifact {
                path: path.clone(),
                message: format!("SSH key {} is given twice", key.fingerprint),
            });
        }
        let stem = key.name.trim_end_matches(".pub").to_string();
        let mut i = 1;
        while keys.iter().any(|k| k.name == key.name) {
            i += 1;
            key.name = format!("{stem}-{i}.pub");
        }
        keys.push(key);
    }
    Ok(keys)
}

/// One OpenSSH public key file: a single `TYPE BASE64 [COMMENT]` line whose blob decodes
/// and names the same type.
pub fn read_key(path: &Path) -> Result<SshKey> {
    let text = crate::io::read_small_text(path, "SSH public key")?;
    let bad = |m: String| Error::BadArtifact {
        path: path.to_path_buf(),
        message: m,
    };
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return Err(bad("not one OpenSSH public key line".into()));
    };
    let (kind, blob, comment) = parse_key_line(line).map_err(bad)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .unwrap_or_else(|| "key.pub".into());
    let name = if name.ends_with(".pub") {
        name
    } else {
        format!("{name}.pub")
    };
    let line = match comment {
        Some(c) => format!("{kind} {} {c}\n", STANDARD.encode(&blob)),
        None => format!("{kind} {}\n", STANDARD.encode(&blob)),
    };
    Ok(SshKey {
        name: name.replace(|c: char| c.is_whitespace() || c == ':', "_"),
        fingerprint: format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob))),
        kind: kind.to_string(),
        line,
    })
}

/// Splits and checks a key line: the type, the decoded blob, the comment.
fn parse_key_line(line: &str) -> std::result::Result<(&str, Vec<u8>, Option<&str>), String> {
    let mut parts = line.splitn(3, char::is_whitespace);
    let kind = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "`{}` is not an OpenSSH public key type ({})",
            kind.chars().take(40).collect::<String>(),
            KEY_TYPES.join(", ")
        ));
    }
    let b64 = parts.next().unwrap_or_default();
    let blob = STANDARD
        .decode(b64)
        .map_err(|e| format!("{kind} key: the key data is not base64 ({e})"))?;
    let named = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) || blob.len() <= 4 + kind.len() {
        return Err(format!(
            "{kind} key: the key data does not hold a {kind} key"
        ));
    }
    let comment = parts.next().map(str::trim).filter(|c| !c.is_empty());
    Ok((kind, blob, comment))
}

/// A file to copy onto persist: DEST relative, without `..`, `.` or empty components; a
/// DEST ending in `/` is a directory the file keeps its name in.
fn persist_file(source: &Path, dest: &str) -> Result<PersistFile> {
    let named;
    let dest = match (dest.ends_with('/'), source.file_name()) {
        (true, Some(name)) => {
            named = format!("{dest}{}", name.to_string_lossy());
            named.as_str()
        }
        _ => dest,
    };
    let bad = |why: &str| {
        Err(Error::Usage(format!(
            "--persist-file {}:{dest}: {why}",
            source.display()
        )))
    };
    if dest.starts_with('/') {
        return bad("DEST must be relative to the persist partition's root");
    }
    let parts: Vec<&str> = dest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return bad("DEST may not hold `..`, `.` or empty components");
    }
    let meta = match std::fs::metadata(source) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return bad("SRC is not a regular file"),
        Err(e) => return bad(&format!("SRC: {e}")),
    };
    let exec = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
    Ok(PersistFile {
        source: source.to_path_buf(),
        dest: format!("/{}", parts.join("/")),
        size: meta.len(),
        mode: if exec { 0o755 } else { 0o644 },
    })
}

impl Custom {
    /// Adds every customisation to persist's content tree, by SkiffOS's conventions:
    /// root-owned, files 0644 (keyfiles 0600: NetworkManager ignores others), new
    /// directories 0755 as `mkdir -p` makes them.
    pub fn apply(&self, board: &str, tree: &mut Tree) -> Result<()> {
        let mut put = |path: String, source: Source, mode: u32| {
            let size = match &source {
                Source::Text(t) => t.len() as u64,
                Source::Secret(t) => t.expose().len() as u64,
                Source::Bytes(b) => b.len() as u64,
                Source::Path(_) | Source::Spooled(_) => 0,
            };
            insert(tree, path, source, size, mode)
        };
        if let Some(h) = &self.hostname {
            put(
                "/skiff/hostname".into(),
                Source::Text(format!("{h}\n")),
                0o644,
            )?;
        }
        for k in &self.ssh_keys {
            let path = format!("/skiff/keys/{}", k.name);
            put(path, Source::Text(k.line.clone()), 0o644)?;
        }
        if let Some(w) = &self.wifi {
            let body = Secret::new(keyfile(w, board));
            put(keyfile_path(&w.ssid), Source::Secret(body), 0o600)?;
        }
        let generated = self.record();
        for f in &self.files {
            if let Some(flag) = generated.written_by(&f.dest) {
                return Err(Error::Usage(format!(
                    "--persist-file {}:{}: {flag} writes that file",
                    f.source.display(),
                    &f.dest[1..]
                )));
            }
            let source = Source::Path(f.source.clone());
            insert(tree, f.dest.clone(), source, f.size, f.mode)?;
        }
        Ok(())
    }

    /// What manifests and logs keep.
    pub fn record(&self) -> Record {
        Record {
            hostname: self.hostname.clone(),
            ssh_keys: self
                .ssh_keys
                .iter()
                .map(|k| KeyRecord {
                    file: format!("/skiff/keys/{}", k.name),
                    kind: k.kind.clone(),
                    fingerprint: k.fingerprint.clone(),
                })
                .collect(),
            wifi: self.wifi.as_ref().map(|w| WifiRecord {
                ssid: w.ssid.clone(),
                psk_set: true,
                keyfile: keyfile_path(&w.ssid),
            }),
            files: self.files.iter().map(|f| f.dest.clone()).collect(),
        }
    }
}

/// A root-owned file in persist's tree; a path a directory holds is refused.
fn insert(tree: &mut Tree, path: String, source: Source, size: u64, mode: u32) -> Result<()> {
    let node = Node::File { source, size };
    let e = Entry {
        path,
        node,
        mode,
        uid: 0,
        gid: 0,
    };
    tree.insert(e)
        .map_err(|c| Error::Usage(format!("persist partition: {}", c.0)))
}

/// `s` with anything but letters, digits, `.`, `_` and `-` replaced by `_`: safe as a file
/// name.
pub(crate) fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `skiff/connections/NAME.nmconnection`, NAME the SSID with anything but letters, digits,
/// `.`, `_` and `-` replaced.
fn keyfile_path(ssid: &str) -> String {
    let mut name = safe_name(ssid);
    if name.starts_with('.') {
        name.insert_str(0, "wifi");
    }
    format!("/skiff/connections/{name}.nmconnection")
}

/// A NetworkManager keyfile for a WPA-PSK network, as `nmcli device wifi connect` writes
/// one (SkiffOS's README example).
fn keyfile(w: &Wifi, board: &str) -> String {
    let uuid = uuid_v5(
        &NAMESPACE_URL,
        &format!("skiff-flash:wifi:{board}:{}", w.ssid),
    );
    format!(
        "[connection]\nid={}\nuuid={uuid}\ntype=wifi\n\n[wifi]\nmode=infrastructure\nssid={}\n\n\
         [wifi-security]\nkey-mgmt=wpa-psk\npsk={}\n\n[ipv4]\nmethod=auto\n\n[ipv6]\n\
         addr-gen-mode=stable-privacy\nmethod=auto\n",
        escape(&w.ssid),
        ssid_value(&w.ssid),
        escape(w.psk.expose())
    )
}

/// A value as GLib's key files read it back: backslashes, a leading space and line breaks
/// escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' ' if i == 0 => out.push_str("\\s"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// An SSID as NetworkManager reads it: the text, or its bytes as a `;`-terminated list
/// when the text would be read as a list or lose spaces.
fn ssid_value(ssid: &str) -> String {
    let plain = !ssid.contains(';') && !ssid.ends_with(' ') && !ssid.contains('\\');
    if plain {
        return escape(ssid);
    }
    ssid.bytes().map(|b| format!("{b};")).collect()
}

/// RFC 4122's URL namespace.
const NAMESPACE_URL: [u8; 16] = [
    0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8,
];

/// A name-based (version 5, SHA-1) UUID, lowercase and hyphenated.
pub fn uuid_v5(namespace: &[u8; 16], name: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(namespace);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    let x = crate::io::hex(&u);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc_1123() {
        for ok in ["node-1", "a", "pi4.lab.example", &"a".repeat(63)] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a_b",
            "a..b",
            &"a".repeat(64),
            "sp ace",
            "{n}",
        ] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(check_hostname(&long).is_err());
    }

    #[test]
    fn passphrases_and_ssids() {
        assert!(check_psk("12345678").is_ok());
        assert!(check_psk(&"ab".repeat(32)).is_ok());
        assert!(check_psk("1234567").is_err());
        assert!(check_psk(&"a".repeat(64)).is_ok());
        assert!(check_psk(&"g".repeat(64)).is_err());
        assert!(check_psk("pass\u{e9}word").is_err());
        assert!(check_ssid("").is_err());
        assert!(check_ssid(&"s".repeat(33)).is_err());
        assert!(check_ssid("home net").is_ok());
    }

    #[test]
    fn v5_uuids_match_the_rfc_example() {
        // Python: uuid.uuid5(uuid.NAMESPACE_URL, "http://python.org/")
        assert_eq!(
            uuid_v5(&NAMESPACE_URL, "http://python.org/"),
            "4c565f0d-3f5a-5890-b41b-20cf47701c5e"
        );
    }

    #[test]
    fn key_blobs_must_name_their_type() {
        let blob = |t: &str| {
            let mut b = (t.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(t.as_bytes());
            b.extend_from_slice(&[0, 0, 0, 1, 7]);
            STANDARD.encode(b)
        };
        let good = format!("ssh-ed25519 {} me@host", blob("ssh-ed25519"));
        assert!(parse_key_line(&good).is_ok());
        let other = format!("ssh-ed25519 {}", blob("ssh-rsa"));
        assert!(parse_key_line(&other).is_err());
        assert!(parse_key_line("ssh-ed25519 not*base64").is_err());
        assert!(parse_key_line("hello world").is_err());
    }

    #[test]
    fn templates_are_per_card_only() {
        let card = Card {
            n: 2,
            serial: "0xabc".into(),
        };
        assert_eq!(fill("node-{n}", Some(&card), "x").unwrap(), "node-2");
        assert!(fill("node-{n}", None, "x").is_err());
        assert_eq!(
            keyfile_path("my net;5"),
            "/skiff/connections/my_net_5.nmconnection"
        );
        assert_eq!(ssid_value("a;b"), "97;59;98;");
    }
}
