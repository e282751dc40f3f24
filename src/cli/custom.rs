//! The persist customisation flags `plan`, `build` and `flash` share, turned into a
//! `plan::custom::Spec`; the Wi-Fi passphrase comes from a file or a no-echo prompt on the
//! terminal, never from the command line. Checking the values is the library's.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use skiff_flash::ops::cards::read_psk;
use skiff_flash::plan::custom::{FileSpec, Secret, Spec, WifiSpec};
use skiff_flash::{Error, Result};

#[derive(Args, Clone, Default)]
pub(super) struct CustomArgs {
    /// Hostname written to persist's skiff/hostname. `flash` fills the templates `{serial}`
    /// (the card's serial number) and `n` in braces (its number in the order given).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// An OpenSSH public key file copied to persist's skiff/keys/ (root's authorized keys at
    /// boot); repeatable.
    #[arg(long = "ssh-key", value_name = "FILE")]
    ssh_keys: Vec<PathBuf>,
    /// Wi-Fi network (SSID) written as a NetworkManager keyfile in skiff/connections/; the
    /// passphrase comes from --wifi-psk-file or a prompt on the terminal.
    #[arg(long, value_name = "SSID")]
    wifi: Option<String>,
    /// File holding the Wi-Fi passphrase (WPA-PSK, one line).
    #[arg(long, value_name = "FILE", requires = "wifi")]
    wifi_psk_file: Option<PathBuf>,
    /// Copy file SRC to DEST, relative to persist's root (`flash` fills the per-card
    /// templates, as in --hostname); repeatable.
    #[arg(long = "persist-file", value_name = "SRC:DEST", value_parser = FileSpec::parse)]
    persist_files: Vec<FileSpec>,
}

impl CustomArgs {
    /// The customisation asked for; asks for the Wi-Fi passphrase when no file gives it.
    pub(super) fn spec(&self) -> Result<Spec> {
        let wifi = match &self.wifi {
            Some(ssid) => Some(WifiSpec {
                ssid: ssid.clone(),
                psk: match &self.wifi_psk_file {
                    Some(f) => read_psk(f)?,
                    None => prompt_psk(ssid)?,
                },
            }),
            None => None,
        };
        Ok(Spec {
            hostname: self.hostname.clone(),
            ssh_keys: self.ssh_keys.clone(),
            wifi,
            files: self.persist_files.clone(),
        })
    }

    /// Any customisation at all (flashing an image takes none).
    pub(super) fn any(&self) -> bool {
        self.hostname.is_some()
            || !self.ssh_keys.is_empty()
            || self.wifi.is_some()
            || !self.persist_files.is_empty()
    }
}

/// Reads the passphrase from the terminal with echo off (restored afterwards, also when
/// reading fails).
fn prompt_psk(ssid: &str) -> Result<Secret> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(format!(
            "--wifi {ssid}: give the passphrase with --wifi-psk-file (no terminal to ask on)"
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "Wi-Fi passphrase for {ssid}: ");
    let _ = err.flush();
    let fd = std::os::fd::AsFd::as_fd(&stdin);
    let saved =
        rustix::termios::tcgetattr(fd).map_err(|e| Error::io("reading the terminal", e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet)
        .map_err(|e| Error::io("turning terminal echo off", e.into()))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &saved);
    let _ = writeln!(err);
    read.map_err(|e| Error::io("reading the passphrase", e))?;
    let t = line.strip_suffix('\n').unwrap_or(&line);
    Ok(Secret::new(t.strip_suffix('\r').unwrap_or(t).to_string()))
}
