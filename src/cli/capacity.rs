//! The `check-capacity` command: confirm, probe, report. The probing is the library's
//! (`ops::capacity`).

use std::path::PathBuf;

use clap::Args;

use skiff_flash::Result;
use skiff_flash::ops::capacity::{self, PROBE};
use skiff_flash::units::{bytes, human};

#[derive(Args)]
pub struct CapacityArgs {
    /// Whole-disk device to check.
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    yes: bool,
    /// Accept disks that are not removable, USB, SD or MMC.
    #[arg(long)]
    allow_fixed_disk: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn check(a: &CapacityArgs, quiet: bool) -> Result<()> {
    if !a.yes {
        super::flash::need_terminal()?;
        super::flash::ask(&format!(
            "Write test patterns over several hundred blocks of {} on {} and put their contents back \
             afterwards (an interruption can leave patterns behind). Continue? [y/N] ",
            human(PROBE),
            a.device.display()
        ))?;
    }
    let report = capacity::check_capacity(&a.device, a.allow_fixed_disk)?;
    if a.json {
        out!("{}", super::render::json(&report));
    } else if !quiet {
        out!(
            "{}: stores all {} ({} bytes) it claims: {} probes of {} read back, contents restored, {:.1} s",
            report.device.display(),
            human(report.claimed),
            bytes(report.claimed),
            report.probes,
            human(PROBE),
            report.seconds
        );
    }
    Ok(())
}
