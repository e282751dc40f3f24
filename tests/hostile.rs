//! Hostile inputs and interrupted runs: every case must end in a clear refusal (one line,
//! the exit code of the contract, nothing left behind, no device byte changed) or in a
//! correct result. `outputs` covers what is written (output paths, sidecars, signals),
//! `readers` what is read (tables, offsets, artifacts, squashfs, symlinks, devices), and
//! `sweep` runs a table of hostile inputs through the binary.

mod common;

#[path = "hostile/outputs.rs"]
mod outputs;
#[path = "hostile/readers.rs"]
mod readers;
#[path = "hostile/sweep.rs"]
mod sweep;
