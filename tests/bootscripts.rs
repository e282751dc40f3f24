//! Every board's boot configuration, as written to a built image, states the same facts as
//! SkiffOS's resource for that board.
//!
//! `tests/bootscripts/facts.toml` holds, per board, the facts read from SkiffOS's file (its
//! path is in `source`): for a U-Boot script every `setenv` name/value pair, the kernel
//! arguments of `bootargs` as a set of tokens, every load (interface, device:partition,
//! address, file), the `gpio` commands in order, the remaining commands (each statement
//! inside `if`/`else`/`for` with that context), and whether the
//! script has the commented `setenv silent` line the silent-console edit turns on; for a
//! Raspberry Pi the `config.txt` lines per section and the `cmdline.txt` tokens; for
//! extlinux the global lines and each label's keys (`append` as tokens); for rEFInd each
//! entry's options as tokens; for a `boot.scr` also the architecture and name of its uImage
//! header (SkiffOS's `mkimage -A … -n …`). A `deviation` entry replaces one SkiffOS fact where the
//! board deliberately differs (each listed with its reason in docs/boards.md).
//!
//! The test builds each board's image from a minimal images directory of its own, reads
//! the files back out of the image with mtools or debugfs (a `boot.scr` through its uImage
//! header, checked with `dumpimage`), extracts the same facts and compares them one by
//! one. Every board that has a boot script or config must be listed.

mod common;

use common::synth::{Set, skiffos_images};
use common::{extract, json, need_all, plan_json, run, tool, tool_ok};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FACTS: &str = include_str!("bootscripts/facts.toml");

// ---------------------------------------------------------------------------------------
// Facts: a board's facts are a map from a fact's path (`setenv`, `config.all`,
// `label.SkiffOS.append`, …) to a value.

#[derive(Debug, Clone, PartialEq)]
enum Fact {
    Flag(bool),
    Text(String),
    /// Order matters (gpio commands).
    Seq(Vec<String>),
    /// Order does not matter; duplicates count.
    Bag(Vec<String>),
}

impl Fact {
    fn bag(mut v: Vec<String>) -> Fact {
        v.sort();
        Fact::Bag(v)
    }

    fn show(&self) -> String {
        match self {
            Fact::Flag(b) => b.to_string(),
            Fact::Text(s) => format!("{s:?}"),
            Fact::Seq(v) | Fact::Bag(v) => format!("{v:?}"),
        }
    }
}

type Facts = BTreeMap<String, Fact>;

/// One item of a fact list as a string: text as is, an array as its JSON form.
fn item(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(item).collect();
            serde_json::to_string(&parts).unwrap()
        }
        other => panic!("facts.toml: unexpected item {other}"),
    }
}

fn items(v: &[String]) -> String {
    serde_json::to_string(v).unwrap()
}

/// The expected facts of one board entry (meta keys left out), flattened.
fn expected(board: &toml::Table) -> Facts {
    const META: [&str; 6] = [
        "name",
        "source",
        "kind",
        "files",
        "root_rewrite",
        "deviation",
    ];
    let mut out = Facts::new();
    fn walk(prefix: &str, v: &toml::Value, out: &mut Facts) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&format!("{prefix}.{k}"), v, out);
                }
            }
            toml::Value::Array(a) => {
                let list: Vec<String> = a.iter().map(item).collect();
                let fact = if prefix == "gpio" {
                    Fact::Seq(list)
                } else {
                    Fact::bag(list)
                };
                out.insert(prefix.to_string(), fact);
            }
            toml::Value::Boolean(b) => {
                out.insert(prefix.to_string(), Fact::Flag(*b));
            }
            toml::Value::String(s) => {
                out.insert(prefix.to_string(), Fact::Text(s.clone()));
            }
            other => panic!("facts.toml: unexpected value {other} at {prefix}"),
        }
    }
    for (k, v) in board {
        if !META.contains(&k.as_str()) {
            walk(k, v, &mut out);
        }
    }
    out
}

/// Applies a board's deviations: each replaces the SkiffOS item `skiffos` of the list fact
/// `fact` by `ours` (either may be absent: an added or a dropped item).
fn apply_deviations(name: &str, board: &toml::Table, facts: &mut Facts) {
    let Some(devs) = board.get("deviation") else {
        return;
    };
    for d in devs.as_array().expect("deviation is an array of tables") {
        let d = d.as_table().unwrap();
        let fact = d["fact"].as_str().unwrap();
        assert!(
            d.get("reason")
                .and_then(|r| r.as_str())
                .is_some_and(|r| !r.trim().is_empty()),
            "{name}: deviation of {fact} without a reason"
        );
        let list = match facts.get_mut(fact) {
            Some(Fact::Bag(l) | Fact::Seq(l)) => l,
            _ => panic!("{name}: deviation names {fact}, which is not a list fact"),
        };
        if let Some(s) = d.get("skiffos") {
            let s = item(s);
            let i = list
                .iter()
                .position(|x| *x == s)
                .unwrap_or_else(|| panic!("{name}: deviation of {fact}: SkiffOS has no {s}"));
            list.remove(i);
        }
        if let Some(o) = d.get("ours") {
            list.push(item(o));
        }
        if let Some(Fact::Bag(l)) = facts.get_mut(fact) {
            l.sort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading facts out of the files.

/// `$name` → `${name}` (the two are the same to U-Boot).
fn braces(w: &str) -> String {
    let mut out = String::new();
    let mut chars = w.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_')
        {
            let mut name = String::new();
            while let Some(&n) = chars.peek() {
                if n.is_ascii_alphanumeric() || n == '_' {
                    name.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push_str(&format!("${{{name}}}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits at whitespace outside quotes, removing the quotes (as U-Boot's shell does).
fn words(stmt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut had = false;
    for c in stmt.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                had = true;
            }
            None if c.is_whitespace() => {
                if had || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    had = false;
                }
            }
            None => cur.push(c),
        }
    }
    if had || !cur.is_empty() {
        out.push(cur);
    }
    out.iter().map(|w| braces(w)).collect()
}

/// A script line's statements: the comment cut off, split at `;`, `||` and `&&` outside
/// quotes, each as its words.
fn statements(line: &str) -> Vec<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut prev = ' ';
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pair = (c, chars.get(i + 1).copied());
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c == '#' && prev.is_whitespace() => break,
            None if c == ';' => parts.push(std::mem::take(&mut cur)),
            None if pair == ('|', Some('|')) || pair == ('&', Some('&')) => {
                parts.push(std::mem::take(&mut cur));
                i += 1;
            }
            None => cur.push(c),
        }
        prev = c;
        i += 1;
    }
    parts.push(cur);
    parts
        .iter()
        .map(|p| words(p))
        .filter(|w| !w.is_empty())
        .collect()
}

/// A U-Boot script's facts. A statement inside `if`/`else`/`for` carries its context (the
/// enclosing conditions and loops): as a last item of a setenv pair or a load, as a
/// `CONTEXT => ` prefix of a command.
fn uboot_facts(script: &str) -> Facts {
    let mut setenv = Vec::new();
    let mut bootargs = BTreeSet::new();
    let mut loads = Vec::new();
    let mut gpio = Vec::new();
    let mut commands = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    for line in script.lines() {
        for mut w in statements(line) {
            loop {
                match w.first().map(String::as_str) {
                    Some("then") | Some("do") => {
                        w.remove(0);
                    }
                    Some("else") => {
                        let top = stack.last_mut().expect("else outside if");
                        *top = format!("else {}", top.trim_start_matches("if "));
                        w.remove(0);
                    }
                    _ => break,
                }
            }
            let Some(first) = w.first().cloned() else {
                continue;
            };
            if first == "fi" || first == "done" {
                stack.pop().expect("fi/done without if/for");
                continue;
            }
            let ctx = stack.join(" / ");
            let with_ctx = |s: String| {
                if ctx.is_empty() {
                    s
                } else {
                    format!("{ctx} => {s}")
                }
            };
            let item = |mut v: Vec<String>| {
                if !ctx.is_empty() {
                    v.push(ctx.clone());
                }
                items(&v)
            };
            match first.as_str() {
                "if" => {
                    let cond = w[1..].join(" ");
                    commands.push(with_ctx(cond.clone()));
                    stack.push(format!("if {cond}"));
                }
                "for" => {
                    commands.push(with_ctx(w.join(" ")));
                    stack.push(w.join(" "));
                }
                "echo" => {}
                "setenv" if w.get(1).is_some_and(|n| n == "bootargs") => {
                    for t in w[2..].join(" ").split_whitespace() {
                        bootargs.insert(t.to_string());
                    }
                }
                "setenv" => {
                    let value = w[2..].join(" ");
                    let value: Vec<&str> = value.split_whitespace().collect();
                    setenv.push(item(vec![w[1].clone(), value.join(" ")]));
                }
                "load" | "fatload" | "ext4load" | "ext2load" => loads.push(item(w[1..].to_vec())),
                "gpio" => gpio.push(with_ctx(w[1..].join(" "))),
                _ => commands.push(with_ctx(w.join(" "))),
            }
        }
    }
    if !stack.is_empty() {
        commands.push(format!("unclosed: {}", stack.join(" / ")));
    }
    let silent = script.lines().any(|l| l.starts_with("# setenv silent"));
    Facts::from([
        ("setenv".into(), Fact::bag(setenv)),
        ("bootargs".into(), Fact::bag(bootargs.into_iter().collect())),
        ("loads".into(), Fact::bag(loads)),
        ("gpio".into(), Fact::Seq(gpio)),
        ("commands".into(), Fact::bag(commands)),
        ("silent".into(), Fact::Flag(silent)),
    ])
}

fn rpi_facts(config: &str, cmdline: &str) -> Facts {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "all".to_string();
    for line in config.lines() {
        let l = line.split('#').next().unwrap().trim();
        if l.is_empty() {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let l: Vec<&str> = l.split_whitespace().collect();
        sections
            .entry(section.clone())
            .or_default()
            .push(l.join(" "));
    }
    let mut out: Facts = sections
        .into_iter()
        .map(|(s, v)| (format!("config.{s}"), Fact::bag(v)))
        .collect();
    out.insert(
        "cmdline".into(),
        Fact::bag(cmdline.split_whitespace().map(String::from).collect()),
    );
    out
}

fn extlinux_facts(text: &str) -> Facts {
    let mut global = Vec::new();
    let mut out = Facts::new();
    let mut label: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
        let (k, v) = (k.to_lowercase(), v.trim());
        if k == "label" {
            label = Some(v.to_string());
            continue;
        }
        match &label {
            None => global.push(format!("{k} {v}")),
            Some(name) if k == "append" => {
                let tokens = v.split_whitespace().map(String::from).collect();
                out.insert(format!("label.{name}.append"), Fact::bag(tokens));
            }
            Some(name) => {
                out.insert(format!("label.{name}.{k}"), Fact::Text(v.to_string()));
            }
        }
    }
    out.insert("global".into(), Fact::bag(global));
    out
}

fn refind_facts(text: &str) -> Facts {
    let mut out = Facts::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let w = words(l);
        assert_eq!(w.len(), 2, "refind_linux.conf line {l:?}");
        let tokens = w[1].split_whitespace().map(String::from).collect();
        out.insert(format!("entry.{}", w[0]), Fact::bag(tokens));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Building a board's image from a minimal images directory.

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

struct Image {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// Partition id → (number, fs kind).
    parts: BTreeMap<String, (u64, String)>,
    /// Partition number → (start byte, size in bytes, PARTUUID), read with sfdisk.
    table: BTreeMap<u64, (u64, u64, String)>,
}

fn build(board: &str, def: &Value, tweak: impl FnOnce(&Path)) -> Image {
    let dir = tempfile::tempdir().unwrap();
    // The files the board's SkiffOS build leaves that its scripts require.
    let generated = skiffos_images(board, def, Set::Required);
    let images = generated.path().to_path_buf();
    tweak(&images);
    let img = dir.path().join("disk.img");
    common::build(board, &images, &img, &[]);
    let plan = plan_json(board, &images, &[]);
    let parts = arr(&plan["partitions"])
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                (
                    p["number"].as_u64().unwrap(),
                    p["fs"]["kind"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect();
    // The table as sfdisk reads it.
    let dump: Value = serde_json::from_str(&tool_ok("sfdisk", &["-J", img.to_str().unwrap()]))
        .expect("sfdisk -J");
    let t = &dump["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let label = t["label"].as_str().unwrap();
    let disk_id = t["id"].as_str().unwrap().to_lowercase();
    let table = arr(&t["partitions"])
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u64 = node
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let uuid = if label == "gpt" {
                p["uuid"].as_str().unwrap().to_lowercase()
            } else {
                format!("{}-{n:02}", disk_id.trim_start_matches("0x"))
            };
            let start = p["start"].as_u64().unwrap() * sector;
            (n, (start, p["size"].as_u64().unwrap() * sector, uuid))
        })
        .collect();
    Image {
        _dir: dir,
        path: img,
        parts,
        table,
    }
}

impl Image {
    fn partuuid(&self, id: &str) -> Option<&str> {
        let (n, _) = self.parts.get(id)?;
        self.table.get(n).map(|(_, _, u)| u.as_str())
    }

    /// A file read back out of the image, `to` as in a rule (`boot:/boot.scr`).
    fn read(&self, to: &str) -> Result<Vec<u8>, String> {
        let (id, path) = to.split_once(":").unwrap();
        let (n, fs) = self
            .parts
            .get(id)
            .ok_or_else(|| format!("no partition {id}"))?;
        let (start, size, _) = self.table[n];
        let part = extract(&self.path, start, size);
        let pp = part.path().to_str().unwrap();
        let out = tempfile::NamedTempFile::new().unwrap();
        let op = out.path().to_str().unwrap();
        let (code, msg) = match fs.as_str() {
            "fat32" => tool("mcopy", &["-n", "-o", "-i", pp, &format!("::{path}"), op]),
            "ext4" => {
                let (code, msg) = tool("debugfs", &["-R", &format!("dump {path} {op}"), pp]);
                // debugfs exits 0 even when the file is missing; it says so instead.
                if msg.contains("File not found") {
                    (1, msg)
                } else {
                    (code, msg)
                }
            }
            other => return Err(format!("{id} has filesystem {other}")),
        };
        if code != 0 {
            return Err(format!("{to} not readable: {msg}"));
        }
        Ok(std::fs::read(out.path()).unwrap())
    }
}

/// The script inside a `boot.scr`: the legacy uImage header (64 bytes) and the one-entry
/// length table (8 bytes) stripped; `dumpimage` must extract the same bytes.
fn script_of(scr: &[u8]) -> Result<String, String> {
    if scr.len() < 72 || scr[..4] != [0x27, 0x05, 0x19, 0x56] {
        return Err("not a uImage".into());
    }
    let len = u32::from_be_bytes(scr[64..68].try_into().unwrap()) as usize;
    let payload = scr
        .get(72..72 + len)
        .ok_or("script shorter than its length")?;
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), scr).unwrap();
    let o = tempfile::NamedTempFile::new().unwrap();
    let (fp, op) = (f.path().to_str().unwrap(), o.path().to_str().unwrap());
    tool_ok("dumpimage", &["-T", "script", "-p", "0", "-o", op, fp]);
    let dumped = std::fs::read(o.path()).unwrap();
    if dumped.get(8..) != Some(payload) {
        return Err("dumpimage extracts other bytes".into());
    }
    String::from_utf8(payload.to_vec()).map_err(|e| e.to_string())
}

/// Expected text with the image's PARTUUIDs put in for `{partuuid:ID}` and rEFInd's
/// `{SKIFFOS_PARTUUID}`.
fn fill(facts: &mut Facts, img: &Image) {
    let mut subst: Vec<(String, String)> = img
        .parts
        .keys()
        .filter_map(|id| Some((format!("{{partuuid:{id}}}"), img.partuuid(id)?.to_string())))
        .collect();
    if let Some(u) = img.partuuid("skiffos") {
        subst.push(("{SKIFFOS_PARTUUID}".into(), u.to_string()));
    }
    let put = |s: &mut String| {
        for (k, v) in &subst {
            *s = s.replace(k, v);
        }
    };
    for f in facts.values_mut() {
        match f {
            Fact::Text(s) => put(s),
            Fact::Seq(v) | Fact::Bag(v) => {
                v.iter_mut().for_each(put);
                if let Fact::Bag(v) = f {
                    v.sort();
                }
            }
            Fact::Flag(_) => {}
        }
    }
}

/// The facts of the board's files in the image, and the names of the files read.
fn found_facts(kind: &str, files: &[String], img: &Image) -> Result<Vec<(String, Facts)>, String> {
    let text = |to: &str| -> Result<String, String> {
        let bytes = img.read(to)?;
        if to.ends_with(".scr") {
            script_of(&bytes).map_err(|e| format!("{to}: {e}"))
        } else {
            String::from_utf8(bytes).map_err(|e| format!("{to}: {e}"))
        }
    };
    Ok(match kind {
        "uboot-script" => files
            .iter()
            .map(|f| {
                let mut facts = uboot_facts(&text(f)?);
                if f.ends_with(".scr") {
                    let scr = img.read(f)?;
                    let arch = match scr[29] {
                        2 => "arm".to_string(),
                        22 => "arm64".to_string(),
                        26 => "riscv".to_string(),
                        n => format!("arch {n}"),
                    };
                    let name = &scr[32..64];
                    let end = name.iter().position(|&b| b == 0).unwrap_or(32);
                    let name = String::from_utf8_lossy(&name[..end]).into_owned();
                    facts.insert("uimage.arch".into(), Fact::Text(arch));
                    facts.insert("uimage.name".into(), Fact::Text(name));
                    if scr[30] != 6 || scr[31] != 0 {
                        return Err(format!("{f}: not an uncompressed script image"));
                    }
                }
                Ok((f.clone(), facts))
            })
            .collect::<Result<_, String>>()?,
        "rpi" => vec![(
            files.join(" + "),
            rpi_facts(&text(&files[0])?, &text(&files[1])?),
        )],
        "extlinux" => vec![(files[0].clone(), extlinux_facts(&text(&files[0])?))],
        "refind" => vec![(files[0].clone(), refind_facts(&text(&files[0])?))],
        other => return Err(format!("unknown kind {other}")),
    })
}

fn compare(board: &str, file: &str, want: &Facts, got: &Facts, errors: &mut Vec<String>) {
    for (k, w) in want {
        match got.get(k) {
            None => errors.push(format!(
                "{board}: {file}: {k}: expected {}, found nothing",
                w.show()
            )),
            Some(g) if g != w => {
                let diff = match (w, g) {
                    (Fact::Bag(a), Fact::Bag(b)) => {
                        let missing: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
                        let extra: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
                        format!("missing {missing:?}, unexpected {extra:?}; ")
                    }
                    _ => String::new(),
                };
                errors.push(format!(
                    "{board}: {file}: {k}: {diff}expected {}, found {}",
                    w.show(),
                    g.show()
                ));
            }
            Some(_) => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            errors.push(format!(
                "{board}: {file}: {k}: expected nothing, found {}",
                g.show()
            ));
        }
    }
}

fn facts_file() -> toml::Table {
    FACTS.parse().expect("tests/bootscripts/facts.toml parses")
}

fn entries(facts: &toml::Table, key: &str) -> Vec<toml::Table> {
    facts
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|b| b.as_table().unwrap().clone()).collect())
        .unwrap_or_default()
}

fn name_of(t: &toml::Table) -> String {
    t["name"].as_str().unwrap().to_string()
}

fn has_boot_config(def: &Value) -> bool {
    arr(&def["files"])
        .iter()
        .any(|r| r["text"].is_string() || r["same_as"].is_string() || r["convert"].is_object())
}

#[test]
fn every_board_with_a_boot_config_has_facts() {
    let facts = facts_file();
    let listed: BTreeSet<String> = entries(&facts, "board").iter().map(name_of).collect();
    let exempt: BTreeMap<String, String> = entries(&facts, "exempt")
        .iter()
        .map(|t| (name_of(t), t["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        listed.len(),
        entries(&facts, "board").len(),
        "a board is listed twice"
    );
    let boards: Vec<String> = arr(&json(&run(&["boards", "--json"])))
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    let mut errors = Vec::new();
    for b in &boards {
        let def = json(&run(&["boards", "show", b, "--json"]));
        let with = has_boot_config(&def);
        match (with, listed.contains(b), exempt.get(b)) {
            (true, false, None) => errors.push(format!("{b}: has a boot config but no facts")),
            (false, true, _) => errors.push(format!("{b}: has facts but no boot config")),
            (_, true, Some(_)) => errors.push(format!("{b}: both listed and exempt")),
            (_, _, Some(r)) if r.trim().is_empty() => {
                errors.push(format!("{b}: exempt without a reason"))
            }
            _ => {}
        }
    }
    for b in listed.iter().chain(exempt.keys()) {
        if !boards.contains(b) {
            errors.push(format!("{b}: in facts.toml but not a board"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn facts_name_their_skiffos_source() {
    for b in entries(&facts_file(), "board") {
        let name = name_of(&b);
        let src = b.get("source").and_then(|s| s.as_array());
        assert!(
            src.is_some_and(|s| !s.is_empty()
                && s.iter().all(|p| p
                    .as_str()
                    .is_some_and(|p| p.starts_with("configs/") && p.contains("/resources/")))),
            "{name}: `source` must list SkiffOS resource paths"
        );
        let kind = b["kind"].as_str().unwrap();
        let want: &[&str] = match kind {
            "uboot-script" => &["setenv", "bootargs", "loads", "gpio", "commands", "silent"],
            "rpi" => &["cmdline"],
            "extlinux" => &["global", "label"],
            "refind" => &["entry"],
            other => panic!("{name}: unknown kind {other}"),
        };
        for k in want {
            assert!(b.contains_key(*k), "{name}: no `{k}`");
        }
    }
}

/// The tools that read a built image's boot configs.
fn need_readers() -> bool {
    need_all(&[
        ("mcopy", "mtools"),
        ("debugfs", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("dumpimage", "u-boot-tools"),
    ])
}

#[test]
fn built_boot_configs_state_skiffos_facts() {
    if !need_readers() {
        return;
    }
    let only = std::env::var("BOOTSCRIPTS_BOARD").ok();
    let mut errors = Vec::new();
    let mut checked = 0;
    for b in entries(&facts_file(), "board") {
        let name = name_of(&b);
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        let def = json(&run(&["boards", "show", &name, "--json"]));
        let img = build(&name, &def, |_| {});
        let mut want = expected(&b);
        apply_deviations(&name, &b, &mut want);
        fill(&mut want, &img);
        let kind = b["kind"].as_str().unwrap();
        let files: Vec<String> = b["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        match found_facts(kind, &files, &img) {
            Ok(found) => {
                for (file, got) in found {
                    // The uImage header is the compiled file's alone.
                    let mut want = want.clone();
                    if !file.ends_with(".scr") {
                        want.retain(|k, _| !k.starts_with("uimage."));
                    }
                    compare(&name, &file, &want, &got, &mut errors);
                }
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
        checked += 1;
    }
    assert!(checked > 0, "no board checked");
    assert!(
        errors.is_empty(),
        "{} difference(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// With `.disable-serial-console` in the images directory, every U-Boot script board's
/// console line is commented out, and `setenv silent 1` is turned on exactly where SkiffOS's
/// script has the commented line.
#[test]
fn silent_console_edit_follows_skiffos() {
    if !need_readers() {
        return;
    }
    let only = std::env::var("BOOTSCRIPTS_BOARD").ok();
    let mut errors = Vec::new();
    for b in entries(&facts_file(), "board") {
        let name = name_of(&b);
        if b["kind"].as_str() != Some("uboot-script") || only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        let def = json(&run(&["boards", "show", &name, "--json"]));
        let img = build(&name, &def, |d| {
            std::fs::write(d.join(".disable-serial-console"), "").unwrap()
        });
        let silent = b["silent"].as_bool().unwrap();
        let has_condev = b["setenv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_array().unwrap()[0].as_str() == Some("condev"));
        for f in b["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            let text = match img.read(f).and_then(|bytes| {
                if f.ends_with(".scr") {
                    script_of(&bytes)
                } else {
                    String::from_utf8(bytes).map_err(|e| e.to_string())
                }
            }) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{name}: {f}: {e}"));
                    continue;
                }
            };
            let lines: Vec<&str> = text.lines().collect();
            if lines.iter().any(|l| l.starts_with("setenv condev")) {
                errors.push(format!("{name}: {f}: `setenv condev` left on"));
            }
            if has_condev != lines.iter().any(|l| l.starts_with("# setenv condev")) {
                errors.push(format!(
                    "{name}: {f}: commented console line: expected {has_condev}"
                ));
            }
            let on = lines.iter().any(|l| l.starts_with("setenv silent 1"));
            if on != silent {
                errors.push(format!(
                    "{name}: {f}: `setenv silent 1`: expected {silent}, found {on}"
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn script_reader_sees_through_quotes_comments_and_conditions() {
    let f = uboot_facts(
        "# setenv silent 1\n\
         setenv a \"x  y\" # trailing note\n\
         if test \"${b}\" = \"1\"; then load mmc 0:1 $addr f.dtb; setenv c 1; fi\n\
         fdt apply ${o} || echo \"not applied\"\n\
         gpio set 98\ngpio clear 98\n\
         setenv bootargs \"${a} k=v\"\n",
    );
    assert_eq!(
        f["setenv"],
        Fact::bag(vec![
            r#"["a","x y"]"#.into(),
            r#"["c","1","if test ${b} = 1"]"#.into()
        ])
    );
    assert_eq!(
        f["loads"],
        Fact::bag(vec![
            r#"["mmc","0:1","${addr}","f.dtb","if test ${b} = 1"]"#.into()
        ])
    );
    assert_eq!(
        f["commands"],
        Fact::bag(vec!["test ${b} = 1".into(), "fdt apply ${o}".into()])
    );
    assert_eq!(
        f["gpio"],
        Fact::Seq(vec!["set 98".into(), "clear 98".into()])
    );
    assert_eq!(f["bootargs"], Fact::bag(vec!["${a}".into(), "k=v".into()]));
    assert_eq!(f["silent"], Fact::Flag(true));
    // Multi-line blocks, `else` and loops nest.
    let n = uboot_facts(
        "if test -n ${x}; then\n  setenv y 1;\nelse\n  setenv y 2;\nfi;\n\
         for o in ${l}; do\n  gpio set ${o}\ndone\n",
    );
    assert_eq!(
        n["setenv"],
        Fact::bag(vec![
            r#"["y","1","if test -n ${x}"]"#.into(),
            r#"["y","2","else test -n ${x}"]"#.into()
        ])
    );
    assert_eq!(
        n["gpio"],
        Fact::Seq(vec!["for o in ${l} => set ${o}".into()])
    );
    // A difference in any of them is seen.
    let g = uboot_facts("setenv a \"x y z\"\n");
    let mut errors = Vec::new();
    compare("b", "f", &f, &g, &mut errors);
    assert!(errors.iter().any(|e| e.contains("setenv")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("gpio")), "{errors:?}");
}
