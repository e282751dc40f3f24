//! The `skiff-flash` binary: parses the command line, calls the library, renders the result.

mod cli;

fn main() {
    keep_buffers_mapped();
    std::process::exit(cli::run());
}

/// Buffers of a few MiB (copy buffers, the ext4 writer's) are taken from the heap and kept
/// there once freed, instead of being mapped fresh and unmapped each time: each fresh
/// mapping costs a page fault and a zeroed page per 4 KiB, about a millisecond for every
/// 4 MiB. At most 32 MiB of freed memory is kept.
fn keep_buffers_mapped() {
    // SAFETY: mallopt only tunes glibc's allocator; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}
