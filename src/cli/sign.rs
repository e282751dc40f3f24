//! Keys and signatures on the command line: `keygen`, `build --sign`, and the trusted keys
//! that `flash --image` checks a release with.

use std::path::PathBuf;

use clap::Args;

use skiff_flash::Result;
use skiff_flash::image::sign::{PublicKey, SecretKey, key_id_hex};

#[derive(Args)]
pub struct KeygenArgs {
    /// Secret key file to create (mode 0600); the public key goes to KEYFILE.pub.
    keyfile: PathBuf,
}

/// Makes a key pair and prints the public key's one-line form.
pub fn keygen(a: &KeygenArgs, quiet: bool) -> Result<()> {
    let key = SecretKey::generate()?;
    let pub_path = key.save(&a.keyfile)?;
    let public = key.public();
    if !quiet {
        out!(
            "secret key {} (keep it private), public key {} (key id {})",
            a.keyfile.display(),
            pub_path.display(),
            key_id_hex(&public.id)
        );
    }
    out!("{}", public.line());
    Ok(())
}

/// Keys a release must be signed with.
#[derive(Args, Clone, Default)]
pub struct TrustedKeys {
    /// Refuse an image whose manifest is not signed by this key (a public key file, or the
    /// one-line key itself); repeatable. Without one, images are written unchecked.
    #[arg(
        long = "trusted-key",
        value_name = "PUBKEY",
        env = "SKIFF_FLASH_TRUSTED_KEYS",
        value_delimiter = ':'
    )]
    keys: Vec<String>,
}

impl TrustedKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.iter().all(|k| k.is_empty())
    }

    pub fn load(&self) -> Result<Vec<PublicKey>> {
        self.keys
            .iter()
            .filter(|k| !k.is_empty())
            .map(|k| PublicKey::load(k))
            .collect()
    }
}
