//! Signed releases: Ed25519 keys and signatures in minisign's file formats, so that a
//! release's manifest signed here checks with `minisign -V`, and a key made with
//! `minisign -G -W` (no password) signs here.
//!
//! - A public key file: an untrusted comment line, then base64 of `"Ed"`, the 8-byte key id
//!   and the 32-byte public key. The second line alone is the printable one-line key.
//! - A secret key file (mode 0600): base64 of `"Ed"`, the KDF (`\0\0`: not encrypted),
//!   `"B2"`, 48 bytes of KDF parameters (zero), the key id, the 64-byte secret key and its
//!   BLAKE2b-256 checksum.
//! - A signature file: `"ED"` (the message's BLAKE2b-512 is signed), the key id and the
//!   signature; then a trusted comment and the signature of signature ‖ comment.
//!
//! What is signed is the manifest, which names the image file and the hash of every range a
//! device must hold; checking those bytes while they stream is the reader's business
//! (`image::read`). Password-protected (scrypt) secret keys are not read: a build machine's
//! key is a file its owner protects, as with signify.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::Digest;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{Error, Result};

/// The signature's file name beside what it signs.
pub fn sig_path(signed: &Path) -> PathBuf {
    appended(signed, ".sig")
}

/// `path` with `suffix` added to its name (`k` → `k.pub`).
fn appended(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

const ALG: &[u8; 2] = b"Ed";
const ALG_HASHED: &[u8; 2] = b"ED";
const CHK_ALG: &[u8; 2] = b"B2";
const SECRET_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";

/// A key that can check signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub id: [u8; 8],
    key: VerifyingKey,
}

/// A key that signs.
pub struct SecretKey {
    id: [u8; 8],
    key: SigningKey,
}

/// A parsed signature file.
struct SigFile {
    hashed: bool,
    id: [u8; 8],
    sig: Signature,
    trusted_comment: String,
    global: Signature,
}

/// Why a signature does not check, for the one-line error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("no signature ({} is missing)", .0.display())]
    Missing(PathBuf),
    #[error("signature is not in minisign format: {0}")]
    Malformed(String),
    #[error("signed by key {}, which is not among the trusted keys", key_id_hex(.0))]
    UnknownKey([u8; 8]),
    #[error("signature does not match the file (signed by key {})", key_id_hex(.0))]
    Wrong([u8; 8]),
}

/// The key id as minisign prints it (the 8 bytes as a little-endian number, in hex).
pub fn key_id_hex(id: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*id))
}

impl PublicKey {
    /// The one-line form (`RW…`), as `minisign -P` takes it.
    pub fn line(&self) -> String {
        let mut b = Vec::with_capacity(42);
        b.extend_from_slice(ALG);
        b.extend_from_slice(&self.id);
        b.extend_from_slice(self.key.as_bytes());
        B64.encode(b)
    }

    /// The public key file's text.
    pub fn file_text(&self) -> String {
        format!(
            "{UNTRUSTED}minisign public key {}\n{}\n",
            key_id_hex(&self.id),
            self.line()
        )
    }

    /// Parses a key file's text or the one-line form.
    pub fn parse(text: &str) -> std::result::Result<PublicKey, String> {
        let b = key_bytes(text)?;
        if b.len() != 42 || &b[..2] != ALG {
            return Err("not an Ed25519 minisign public key".into());
        }
        let key = VerifyingKey::from_bytes(b[10..42].try_into().map_err(|_| "bad length")?)
            .map_err(|e| format!("bad public key: {e}"))?;
        Ok(PublicKey {
            id: b[2..10].try_into().map_err(|_| "bad length")?,
            key,
        })
    }

    /// Reads a key file, or takes the argument itself as the one-line key.
    pub fn load(arg: &str) -> Result<PublicKey> {
        let path = Path::new(arg);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(_) if !path.exists() && arg.starts_with("RW") => arg.to_string(),
            Err(e) => return Err(Error::io(format!("reading key {arg}"), e)),
        };
        PublicKey::parse(&text).map_err(|message| Error::BadArtifact {
            path: path.to_path_buf(),
            message,
        })
    }
}

impl SecretKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32 + 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .map_err(|e| Error::io("reading /dev/urandom", e))?;
        let key = SigningKey::from_bytes(seed[..32].try_into().expect("32 bytes"));
        let id = seed[32..].try_into().expect("8 bytes");
        Ok(SecretKey { id, key })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    fn file_text(&self) -> String {
        let mut b = Vec::with_capacity(SECRET_LEN);
        b.extend_from_slice(ALG);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(CHK_ALG);
        b.extend_from_slice(&[0u8; 48]);
        b.extend_from_slice(&self.id);
        b.extend_from_slice(&self.key.to_keypair_bytes());
        let chk = self.checksum();
        b.extend_from_slice(&chk);
        format!(
            "{UNTRUSTED}minisign secret key (not encrypted)\n{}\n",
            B64.encode(b)
        )
    }

    /// BLAKE2b-256 of the algorithm, key id and secret key, as minisign checks it.
    fn checksum(&self) -> [u8; 32] {
        let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
        h.update(ALG);
        h.update(self.id);
        h.update(self.key.to_keypair_bytes());
        h.finalize().into()
    }

    pub fn parse(text: &str) -> std::result::Result<SecretKey, String> {
        let b = key_bytes(text)?;
        if b.len() != SECRET_LEN || &b[..2] != ALG || &b[4..6] != CHK_ALG {
            return Err("not an Ed25519 minisign secret key".into());
        }
        if b[2..4] != [0, 0] {
            return Err(
                "the secret key is password-protected; make one without a password \
                 (`skiff-flash keygen`, or `minisign -G -W`)"
                    .into(),
            );
        }
        let pair: [u8; 64] = b[62..126].try_into().map_err(|_| "bad length")?;
        let key = SigningKey::from_keypair_bytes(&pair).map_err(|e| format!("bad key: {e}"))?;
        let sk = SecretKey {
            id: b[54..62].try_into().map_err(|_| "bad length")?,
            key,
        };
        // An unencrypted minisign key may leave the checksum zero; a non-zero one must hold.
        let chk = &b[126..158];
        if chk.iter().any(|&x| x != 0) && chk != sk.checksum() {
            return Err("secret key checksum does not match (damaged key file)".into());
        }
        Ok(sk)
    }

    pub fn load(path: &Path) -> Result<SecretKey> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading key {}", path.display()), e))?;
        SecretKey::parse(&text).map_err(|message| Error::BadArtifact {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Writes the secret key to `path` (mode 0600, never over an existing file) and the
    /// public key to `path.pub`.
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        let pub_path = appended(path, ".pub");
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(Error::Usage(format!(
                    "{} exists; not overwriting a key",
                    p.display()
                )));
            }
        }
        write_new(path, self.file_text().as_bytes(), 0o600)?;
        write_new(&pub_path, self.public().file_text().as_bytes(), 0o644)?;
        Ok(pub_path)
    }

    /// The signature file's text for `message` (BLAKE2b-512 prehashed, as minisign does by
    /// default), with a trusted comment naming the file and the time (the build's epoch,
    /// so signatures are reproducible: Ed25519 is deterministic).
    pub fn sign(&self, message: &[u8], file_name: &str, epoch: i64) -> String {
        let sig = self.key.sign(&blake2b512(message));
        let comment = format!("timestamp:{epoch}\tfile:{file_name}\thashed");
        let mut global_msg = sig.to_bytes().to_vec();
        global_msg.extend_from_slice(comment.as_bytes());
        let global = self.key.sign(&global_msg);
        let mut first = Vec::with_capacity(74);
        first.extend_from_slice(ALG_HASHED);
        first.extend_from_slice(&self.id);
        first.extend_from_slice(&sig.to_bytes());
        format!(
            "{UNTRUSTED}signature from skiff-flash secret key {}\n{}\n{TRUSTED}{comment}\n{}\n",
            key_id_hex(&self.id),
            B64.encode(first),
            B64.encode(global.to_bytes()),
        )
    }
}

fn blake2b512(message: &[u8]) -> Vec<u8> {
    blake2::Blake2b512::digest(message).to_vec()
}

/// A key file's (or the one-line form's) key line, decoded.
fn key_bytes(text: &str) -> std::result::Result<Vec<u8>, String> {
    let line = payload_lines(text).next().ok_or("no key line")?;
    B64.decode(line)
        .map_err(|e| format!("key is not base64: {e}"))
}

/// Lines that carry data: not comments, not blank.
fn payload_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(UNTRUSTED) && !l.starts_with(TRUSTED))
}

fn parse_sig(text: &str) -> std::result::Result<SigFile, String> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let [first, sig_line, trusted, global_line, ..] = lines.as_slice() else {
        return Err("expected four lines".into());
    };
    if !first.starts_with(UNTRUSTED) {
        return Err("first line is not an untrusted comment".into());
    }
    let trusted_comment = trusted
        .strip_prefix(TRUSTED)
        .ok_or("third line is not a trusted comment")?;
    let b = B64
        .decode(sig_line.trim())
        .map_err(|e| format!("signature is not base64: {e}"))?;
    if b.len() != 74 || (&b[..2] != ALG && &b[..2] != ALG_HASHED) {
        return Err("not an Ed25519 minisign signature".into());
    }
    let g = B64
        .decode(global_line.trim())
        .map_err(|e| format!("comment signature is not base64: {e}"))?;
    let global = Signature::from_slice(&g).map_err(|e| format!("comment signature: {e}"))?;
    Ok(SigFile {
        hashed: &b[..2] == ALG_HASHED,
        id: b[2..10].try_into().map_err(|_| "bad length")?,
        sig: Signature::from_slice(&b[10..74]).map_err(|e| format!("signature: {e}"))?,
        trusted_comment: trusted_comment.to_string(),
        global,
    })
}

/// Checks `message` against the signature file's text with the trusted keys; gives the key
/// that signed it.
pub fn check(
    message: &[u8],
    sig_text: &str,
    trusted: &[PublicKey],
) -> std::result::Result<PublicKey, BadSignature> {
    let s = parse_sig(sig_text).map_err(BadSignature::Malformed)?;
    let key = trusted
        .iter()
        .find(|k| k.id == s.id)
        .ok_or(BadSignature::UnknownKey(s.id))?;
    let signed = if s.hashed {
        blake2b512(message)
    } else {
        message.to_vec()
    };
    let mut global_msg = s.sig.to_bytes().to_vec();
    global_msg.extend_from_slice(s.trusted_comment.as_bytes());
    key.key
        .verify(&signed, &s.sig)
        .and_then(|()| key.key.verify(&global_msg, &s.global))
        .map_err(|_| BadSignature::Wrong(s.id))?;
    Ok(key.clone())
}

/// Checks the file at `signed` against its `.sig` beside it; gives its bytes.
pub fn check_file(signed: &Path, trusted: &[PublicKey]) -> Result<(Vec<u8>, PublicKey)> {
    let message =
        std::fs::read(signed).map_err(|e| Error::io(format!("reading {}", signed.display()), e))?;
    let sig = sig_path(signed);
    let text = match std::fs::read_to_string(&sig) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("reading {}", sig.display()), e)),
    };
    let key = check_named(signed, &message, text.as_deref(), trusted)?;
    Ok((message, key))
}

/// Checks `message` (named `origin`, its signature beside it) against the signature's text,
/// `None` when there is none.
pub fn check_named(
    origin: &Path,
    message: &[u8],
    sig_text: Option<&str>,
    trusted: &[PublicKey],
) -> Result<PublicKey> {
    let bad = |e: BadSignature| Error::BadArtifact {
        path: origin.to_path_buf(),
        message: e.to_string(),
    };
    let text = sig_text.ok_or_else(|| bad(BadSignature::Missing(sig_path(origin))))?;
    check(message, text, trusted).map_err(bad)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| Error::io(format!("writing {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey {
            id: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
            key: SigningKey::from_bytes(&[7u8; 32]),
        }
    }

    #[test]
    fn a_signature_checks_and_a_changed_message_does_not() {
        let k = key();
        let sig = k.sign(b"manifest", "x.manifest.json", 1700000000);
        assert_eq!(check(b"manifest", &sig, &[k.public()]), Ok(k.public()));
        assert_eq!(
            check(b"manifesT", &sig, &[k.public()]),
            Err(BadSignature::Wrong(k.id))
        );
        let tampered = sig.replace("1700000000", "1700000001");
        assert_eq!(
            check(b"manifest", &tampered, &[k.public()]),
            Err(BadSignature::Wrong(k.id))
        );
    }

    #[test]
    fn another_key_is_unknown() {
        let k = key();
        let other = SecretKey::generate().unwrap();
        let sig = k.sign(b"m", "m", 0);
        assert_eq!(
            check(b"m", &sig, &[other.public()]),
            Err(BadSignature::UnknownKey(k.id))
        );
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let k = key();
        let back = SecretKey::parse(&k.file_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(PublicKey::parse(&k.public().file_text()), Ok(k.public()));
        assert_eq!(PublicKey::parse(&k.public().line()), Ok(k.public()));
        assert!(PublicKey::parse("RWQnonsense").is_err());
    }
}
