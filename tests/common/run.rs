//! Running programs: the built skiff-flash binary (one builder for arguments, environment,
//! working directory, standard input and a time limit) and the oracle tools. Not the
//! judging of a refusal (`refuse`) nor the decision to skip (`need`).

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The SOURCE_DATE_EPOCH every run gets unless it asks for another.
pub const EPOCH: &str = "1700000000";

/// Variables of the calling environment a run must never inherit: each changes what the
/// binary reads or does.
const SCRUBBED: [&str; 3] = [
    "BINARIES_DIR",
    "SKIFF_FLASH_BOARD_PATH",
    "SKIFF_FLASH_FAULT_AFTER_WRITES",
];

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff-flash")
}

/// One run of skiff-flash, built up and then run with `output` or `spawn`.
pub struct Sf {
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    limit: Option<u32>,
}

/// skiff-flash with `args`, SOURCE_DATE_EPOCH = `EPOCH`, and the `SCRUBBED` variables unset.
pub fn sf<S: AsRef<OsStr>>(args: &[S]) -> Sf {
    let mut env: Vec<_> = SCRUBBED.iter().map(|k| (k.into(), None)).collect();
    env.push(("SOURCE_DATE_EPOCH".into(), Some(EPOCH.into())));
    Sf {
        args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
        env,
        dir: None,
        stdin: None,
        limit: None,
    }
}

impl Sf {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Sf {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Sf {
        self.env.push((k.into(), Some(v.as_ref().to_owned())));
        self
    }

    pub fn envs(self, vars: &[(&str, &str)]) -> Sf {
        vars.iter().fold(self, |s, (k, v)| s.env(k, v))
    }

    pub fn env_remove(mut self, k: &str) -> Sf {
        self.env.push((k.into(), None));
        self
    }

    pub fn epoch(self, epoch: &str) -> Sf {
        self.env("SOURCE_DATE_EPOCH", epoch)
    }

    pub fn dir(mut self, dir: &Path) -> Sf {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Bytes for standard input (else it is empty).
    pub fn stdin(mut self, bytes: &[u8]) -> Sf {
        self.stdin = Some(bytes.to_vec());
        self
    }

    /// Killed (SIGKILL) after `secs`, so an endless run fails the test, not the machine.
    pub fn limit(mut self, secs: u32) -> Sf {
        self.limit = Some(secs);
        self
    }

    fn command(&self) -> Command {
        let mut c = match self.limit {
            Some(secs) => {
                let mut c = Command::new("timeout");
                c.args(["-s", "KILL", &secs.to_string(), bin()]);
                c
            }
            None => Command::new(bin()),
        };
        c.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    /// Runs to the end; stdout and stderr captured.
    pub fn output(self) -> Output {
        let mut c = self.command();
        let Some(input) = &self.stdin else {
            return c.output().expect("running skiff-flash");
        };
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("running skiff-flash");
        // A run that exits without reading its input closes the pipe: not a test failure.
        let _ = child.stdin.take().map(|mut i| i.write_all(input));
        child.wait_with_output().expect("running skiff-flash")
    }

    /// Runs to the end writing to a pipe whose reader is already gone (`| head -0`), so
    /// every write to stdout fails with EPIPE; stderr captured, stdout empty.
    pub fn closed_stdout(self) -> Output {
        let (reader, writer) = std::io::pipe().expect("making a pipe");
        drop(reader);
        let mut c = self.command();
        c.stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped());
        c.output().expect("running skiff-flash")
    }

    /// Started in the background: stdout discarded, stderr piped.
    pub fn spawn(self) -> Child {
        self.command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting skiff-flash")
    }
}

/// Runs skiff-flash with `args` (see `sf`).
pub fn run(args: &[&str]) -> Output {
    sf(args).output()
}

/// Runs skiff-flash killed after `secs`.
pub fn run_limited(secs: u32, args: &[&str]) -> Output {
    sf(args).limit(secs).output()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "skiff-flash failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The parsed stdout of a run that must succeed and print JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON on stdout")
}

/// An oracle tool with the system directories on PATH (root's tools in sbin are found as
/// any user) and mtools' geometry check off.
fn tool_command(cmd: &str, args: &[&str]) -> Command {
    let mut c = Command::new(cmd);
    c.args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("MTOOLS_SKIP_CHECK", "1");
    c
}

/// Runs a tool and returns (exit code, stdout+stderr).
pub fn tool(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = tool_command(cmd, args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s += &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), s)
}

pub fn tool_ok(cmd: &str, args: &[&str]) -> String {
    let (code, out) = tool(cmd, args);
    assert_eq!(code, 0, "{cmd} {args:?} failed:\n{out}");
    out
}

/// Runs a tool with `input` on its standard input; it must succeed. Returns stdout+stderr.
pub fn tool_input_ok(cmd: &str, args: &[&str], input: &str) -> String {
    let out = tool_command(cmd, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(input.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// Runs a prepared command, panicking with its output when it fails; returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
