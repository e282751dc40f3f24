//! What an upgrade decided or did, as data: per file ([`Change`]), per partition
//! ([`PartitionReport`]) and for the whole card ([`UpgradeReport`]), serialized as the
//! `--json` output. Not how it is shown as text (the command line does that).

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// What happens to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Added,
    Replaced,
    Removed,
    Unchanged,
    /// On the card, not (or not as) in the build, and left as it is.
    Kept,
}

/// One file's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub partition: String,
    pub path: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What happens to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// FAT: the new set written beside the old one, then the atomic switch.
    #[serde(rename = "edited")]
    Edited,
    /// ext4: written again in place.
    #[serde(rename = "rewritten")]
    Rewritten,
    #[serde(rename = "unchanged")]
    Unchanged,
    /// User data: never written.
    #[serde(rename = "untouched")]
    Untouched,
    /// A prebuilt image: only `flash` writes it.
    #[serde(rename = "not updated")]
    NotUpdated,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Edited => "edited",
            Outcome::Rewritten => "rewritten",
            Outcome::Unchanged => "unchanged",
            Outcome::Untouched => "untouched",
            Outcome::NotUpdated => "not updated",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that width and alignment apply.
        f.pad(self.as_str())
    }
}

/// What one partition goes through.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub id: String,
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An upgrade's plan (`dry_run`: what it would do) or its result.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub target: PathBuf,
    pub board: String,
    pub dry_run: bool,
    pub partitions: Vec<PartitionReport>,
    pub changes: Vec<Change>,
    /// Notes: bootloader blobs that differ from the build (never written by an upgrade).
    pub notes: Vec<String>,
    pub writes: u64,
    pub bytes_written: u64,
    /// Whether what was written was read back from the medium and matched.
    pub verified: bool,
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn outcomes_serialize_and_print_as_their_words() {
        for o in [
            Outcome::Edited,
            Outcome::Rewritten,
            Outcome::Unchanged,
            Outcome::Untouched,
            Outcome::NotUpdated,
        ] {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::json!(o.as_str())
            );
        }
        assert_eq!(format!("{:<12}|", Outcome::NotUpdated), "not updated |");
    }
}
