//! Running inside a SkiffOS workspace: the board, the images directory and the boot
//! configurations come from the environment SkiffOS's `make cmd/<board>/<command>` sets up,
//! as its own format and install scripts take them.
//!
//! SkiffOS exports, for every command it runs:
//! - `SKIFF_CONFIG`: the selected config list, comma separated (`pi/4,skiff/core`);
//! - `SKIFF_CONFIG_PATH`: the directories of those configs and of their dependencies,
//!   space separated, in the order SkiffOS resolved them;
//! - `BUILDROOT_DIR` (also `SKIFF_BUILDROOT_DIR`): the workspace, whose Buildroot output
//!   is `output/images` (some scripts read `images`, a link to it);
//! - `SKIFF_CURRENT_CONF_DIR`: the config whose command runs (`configs/pi/common`).
//!
//! The boot configs a board's install script copies (`resources/rpi/config.txt`,
//! `resources/boot-scripts/boot.txt`, `resources/refind_linux.conf`…) are looked up in the
//! config directories; the last directory that has the file wins, which is what each of
//! SkiffOS's `determine_config.sh` scripts computes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::define::board::{Catalog, Kind};
use crate::error::{Error, Result};

/// The SkiffOS configuration skiff-flash runs with (empty outside SkiffOS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// Config names, in order (`pi/4`, `skiff/core`).
    pub configs: Vec<String>,
    /// Config directories, in order; their `resources/` supply boot configs.
    pub dirs: Vec<PathBuf>,
    /// The workspace directory (`BUILDROOT_DIR`).
    pub workspace: Option<PathBuf>,
    /// Each config directory's `metadata/dependencies`, by config name.
    pub deps: BTreeMap<String, Vec<String>>,
}

impl Env {
    /// Reads SkiffOS's variables from the process environment. `conf_dirs` (from
    /// `--skiff-conf`) replace `SKIFF_CONFIG_PATH` when given.
    pub fn detect(conf_dirs: &[PathBuf]) -> Env {
        Self::from_vars(|k| std::env::var_os(k).map(PathBuf::from), conf_dirs)
    }

    /// [`Env::detect`] with the variables given by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<PathBuf>, conf_dirs: &[PathBuf]) -> Env {
        let text = |k: &str| {
            var(k)
                .map(|v| v.to_string_lossy().trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let dirs: Vec<PathBuf> = if conf_dirs.is_empty() {
            let mut dirs: Vec<PathBuf> = text("SKIFF_CONFIG_PATH")
                .map(|v| v.split_whitespace().map(PathBuf::from).collect())
                .unwrap_or_default();
            // The config whose command runs is in the path; if not, it ranks lowest.
            if let Some(current) = var("SKIFF_CURRENT_CONF_DIR").filter(|d| !dirs.contains(d)) {
                dirs.insert(0, current);
            }
            dirs
        } else {
            conf_dirs.to_vec()
        };
        let mut configs: Vec<String> = text("SKIFF_CONFIG")
            .map(|v| {
                v.split([',', ' '])
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        // A config directory is configs/<category>/<name>: its name is the last two parts.
        for d in &dirs {
            if let Some(name) = config_name(d)
                && !configs.contains(&name)
            {
                configs.push(name);
            }
        }
        let deps = dirs
            .iter()
            .filter_map(|d| {
                let name = config_name(d)?;
                let text =
                    crate::io::read_small_text(&d.join("metadata/dependencies"), "dependency list")
                        .ok()?;
                let list = text
                    .split([',', ' ', '\n'])
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect();
                Some((name, list))
            })
            .collect();
        let workspace = text("BUILDROOT_DIR")
            .or_else(|| text("SKIFF_BUILDROOT_DIR"))
            .map(PathBuf::from);
        Env {
            configs,
            dirs,
            workspace,
            deps,
        }
    }

    /// Whether any SkiffOS configuration is in effect.
    pub fn active(&self) -> bool {
        !self.configs.is_empty() || !self.dirs.is_empty() || self.workspace.is_some()
    }

    /// The workspace's images directory: `output/images`, else `images`.
    pub fn images(&self) -> Option<PathBuf> {
        let ws = self.workspace.as_ref()?;
        let output = ws.join("output/images");
        if output.is_dir() || !ws.join("images").is_dir() {
            Some(output)
        } else {
            Some(ws.join("images"))
        }
    }

    /// The board of the config list. SkiffOS's list holds the dependencies of the configs
    /// too (`pi/4` brings `pi/4x64`, `odroid/xu4` brings `odroid/xu`): a board that another
    /// board of the list depends on (by SkiffOS's `metadata/dependencies`, or by the board
    /// definitions' inheritance) is not the one meant. More than one left is refused.
    pub fn board(&self, catalog: &Catalog) -> Result<String> {
        let known = catalog.names(Kind::Board);
        let boards: Vec<(&String, Vec<String>)> = self
            .configs
            .iter()
            .filter(|c| known.contains(c))
            .filter_map(|c| Some((c, catalog.board(c).ok()?.layers)))
            .collect();
        let below = |c: &str, other: &str| {
            c != other
                && (self.depends(other, c)
                    || boards
                        .iter()
                        .any(|(o, layers)| o.as_str() == other && layers.iter().any(|l| l == c)))
        };
        let found: Vec<&String> = boards
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| !boards.iter().any(|(o, _)| below(c, o)))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::Usage(format!(
                "no board in the SkiffOS config list `{}` (give --board)",
                self.configs.join(",")
            ))),
            many => Err(Error::Usage(format!(
                "the SkiffOS config list `{}` names several boards ({}): give --board",
                self.configs.join(","),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Whether config `a` depends on `b`, directly or through other configs.
    fn depends(&self, a: &str, b: &str) -> bool {
        let mut seen = vec![a.to_string()];
        let mut next = vec![a.to_string()];
        while let Some(c) = next.pop() {
            for d in self.deps.get(&c).into_iter().flatten() {
                if d == b {
                    return true;
                }
                if !seen.contains(d) {
                    seen.push(d.clone());
                    next.push(d.clone());
                }
            }
        }
        false
    }
}

/// `configs/pi/4` → `pi/4`.
fn config_name(dir: &Path) -> Option<String> {
    let mut parts = dir.components().rev().filter_map(|c| match c {
        std::path::Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let name = parts.next()?;
    let category = parts.next()?;
    Some(format!("{category}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], conf: &[&str]) -> Env {
        let vars: Vec<(String, PathBuf)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        let conf: Vec<PathBuf> = conf.iter().map(PathBuf::from).collect();
        Env::from_vars(
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &conf,
        )
    }

    #[test]
    fn outside_skiffos_nothing_is_active() {
        assert!(!env(&[], &[]).active());
    }

    #[test]
    fn config_list_and_paths() {
        let e = env(
            &[
                ("SKIFF_CONFIG", "pi/4, skiff/core"),
                (
                    "SKIFF_CONFIG_PATH",
                    "/s/configs/pi/common /s/configs/pi/4 /s/configs/skiff/core",
                ),
                ("SKIFF_CURRENT_CONF_DIR", "/s/configs/pi/common"),
                ("BUILDROOT_DIR", "/s/workspaces/default"),
            ],
            &[],
        );
        assert_eq!(e.configs, ["pi/4", "skiff/core", "pi/common"]);
        assert_eq!(e.dirs[0], Path::new("/s/configs/pi/common"));
        assert_eq!(e.dirs.len(), 3);
        assert_eq!(
            e.images().unwrap(),
            Path::new("/s/workspaces/default/output/images")
        );
    }

    #[test]
    fn conf_dirs_replace_the_path() {
        let e = env(
            &[("SKIFF_CONFIG_PATH", "/a/configs/pi/common")],
            &["/b/configs/odroid/xu"],
        );
        assert_eq!(e.dirs, [PathBuf::from("/b/configs/odroid/xu")]);
        assert_eq!(e.configs, ["odroid/xu"]);
        assert!(e.images().is_none());
    }
}
