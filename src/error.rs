//! The library's error type: every variant carries the context a user needs to act on it
//! (board, file, partition, offset), and says whether the input or the machine was at fault.
//!
//! Not for rendering: the CLI decides how to print; `exit_code` says how to exit.

use std::path::PathBuf;

use crate::units::bytes;

/// What went wrong, with where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A board name that no board file defines.
    #[error("unknown board `{name}`{}", suggest(.suggestions))]
    UnknownBoard {
        name: String,
        suggestions: Vec<String>,
    },

    /// A board or layout file that cannot be parsed or has a bad value.
    #[error("{file}:{line}:{column}: {message}")]
    DefinitionFile {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// A board whose resolved definition is inconsistent.
    #[error("board {board}: {message}")]
    Board { board: String, message: String },

    /// An artifact the board requires is not in the images directory.
    #[error("board {board}: missing artifact `{artifact}` (looked in {})", list(.looked_in))]
    MissingArtifact {
        board: String,
        artifact: String,
        looked_in: Vec<PathBuf>,
    },

    /// A partition on a card or image that is not what the operation needs.
    #[error("partition {partition}: {message}")]
    Partition { partition: String, message: String },

    /// An input file that exists but is not what it must be.
    #[error("{}: {message}", .path.display())]
    BadArtifact { path: PathBuf, message: String },

    /// Content that does not fit the room a partition has.
    #[error("{partition} needs {} bytes, partition has {}", bytes(*.needs), bytes(*.has))]
    DoesNotFit {
        partition: String,
        needs: u64,
        has: u64,
    },

    /// The layout does not fit the requested image or device size.
    #[error("{what} needs {} bytes, {target} has {}", bytes(*.needs), bytes(*.has))]
    TooSmall {
        what: String,
        target: String,
        needs: u64,
        has: u64,
    },

    /// A bad value given on the command line or in the environment.
    #[error("{0}")]
    Usage(String),

    /// What is on a card or image differs from what it must hold (a read-back after a
    /// write, or `verify`). `at` is the disk offset where the difference starts, if known.
    #[error("{target}: {what}{}", at_offset(*.at))]
    Mismatch {
        target: String,
        what: String,
        at: Option<u64>,
    },

    /// A failure inside the tool itself (a worker thread that died), not the input's or the
    /// device's fault.
    #[error("internal error: {0}")]
    Internal(String),

    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// 2 when the input was bad (usage, board, artifacts, sizes), 1 when an operation failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } | Error::Mismatch { .. } | Error::Internal(_) => 1,
            _ => 2,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn partition(partition: &str, message: impl Into<String>) -> Self {
        Error::Partition {
            partition: partition.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn board(board: &str, message: impl Into<String>) -> Self {
        Error::Board {
            board: board.to_string(),
            message: message.into(),
        }
    }
}

/// Library result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn suggest(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("; did you mean `{one}`?"),
        many => format!(
            "; did you mean one of {}?",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn at_offset(at: Option<u64>) -> String {
    at.map(|o| format!(" (disk offset {})", bytes(o)))
        .unwrap_or_default()
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
