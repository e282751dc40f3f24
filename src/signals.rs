//! SIGINT, SIGTERM and SIGHUP during a long write: the handler only sets a flag (async-signal
//! safe), the writer loops ask `interrupted()` and stop cleanly (wiping what must not look
//! valid). A second signal while the first is being handled ends the process at once.
//!
//! Not for choosing what to clean up: the caller does.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs the handlers (once; later calls do nothing).
pub fn install_interrupt_flag() -> std::io::Result<()> {
    if FLAG.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // Order matters: the shutdown check sees the flag as the earlier signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    let _ = FLAG.set(flag);
    Ok(())
}

/// Whether one of the signals arrived since `install_interrupt_flag`.
pub fn interrupted() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// The error a writer returns when it stops for a signal.
pub fn interrupted_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "interrupted by a signal (SIGINT, SIGTERM or SIGHUP)",
    )
}
