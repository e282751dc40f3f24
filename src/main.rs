//! The `skiff-flash` binary: parses the command line, calls the library, renders the result.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
