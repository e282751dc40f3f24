//! Customising the persist partition at write time: hostname, SSH keys, a Wi-Fi keyfile and
//! extra files flashed onto loop devices and checked through a kernel ext4 mount
//! (contents, owners, modes), Python's configparser and ssh-keygen; per-card templates on
//! two cards; the production log; byte-identical builds; refusals that write nothing.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

/// Inputs for a customised flash: an SSH key made by ssh-keygen, a passphrase file and an
/// extra file, in a directory that lives as long as the value.
struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Option<Inputs> {
        if !need("ssh-keygen", "openssh-client") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        let key = key.to_str().unwrap();
        let args = ["-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", key];
        tool_ok("ssh-keygen", &args);
        std::fs::write(dir.path().join("psk"), "correct horse battery\n").unwrap();
        std::fs::write(dir.path().join("motd"), "welcome\n").unwrap();
        Some(Inputs { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// Every customisation flag, the hostname as given.
    fn args(&self, hostname: &str) -> Vec<String> {
        [
            "--hostname",
            hostname,
            "--ssh-key",
            &self.path("id_ed25519.pub"),
            "--wifi",
            "Home Net",
            "--wifi-psk-file",
            &self.path("psk"),
            "--persist-file",
            &format!("{}:etc/motd", self.path("motd")),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn fingerprint(&self) -> String {
        let out = tool_ok("ssh-keygen", &["-l", "-f", &self.path("id_ed25519.pub")]);
        out.split_whitespace().nth(1).unwrap().to_string()
    }
}

fn flash_pi4(devs: &[&str], extra: &[String]) -> std::process::Output {
    let f = fixtures();
    let mut args: Vec<String> = vec!["flash".into()];
    args.extend(devs.iter().map(|d| d.to_string()));
    for a in ["--board", "pi/4", "--images", f.to_str().unwrap(), "--yes"] {
        args.push(a.into());
    }
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args)
}

/// The log's text and its lines, each of which must be a JSON object.
fn log_lines(log: &Path) -> (String, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(log).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (text, lines)
}

/// Mode bits, owner and group of a path on the mounted persist.
fn stat(root: &Path, rel: &str) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(root.join(rel)).unwrap();
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn flashed_persist_holds_every_customisation_by_skiffos_conventions() {
    let Some(inputs) = Inputs::new() else { return };
    if !need_all(&[("e2fsck", "e2fsprogs"), ("python3", "python3")]) {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let mut args = inputs.args("pi-lab-1");
    args.push("--json".into());
    let stdout = ok(&flash_pi4(&[&card.dev], &args));
    let done: serde_json::Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "done")
        .unwrap();
    assert_eq!(done["custom"]["hostname"], "pi-lab-1", "{done}");
    assert_eq!(done["custom"]["wifi"]["psk_set"], true, "{done}");
    assert!(!stdout.contains("correct horse"));
    let (code, out) = tool("e2fsck", &["-fn", &card.part(3)]);
    assert_eq!(code, 0, "e2fsck persist: {out}");
    let persist = Mount::ro(&card.part(3));
    let root = persist.dir.path();
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap();
    assert_eq!(read("skiff/hostname"), "pi-lab-1\n");
    assert_eq!(stat(root, "skiff/hostname"), (0o644, 0, 0));
    let key = std::fs::read_to_string(inputs.path("id_ed25519.pub")).unwrap();
    assert_eq!(read("skiff/keys/id_ed25519.pub"), key);
    assert_eq!(stat(root, "skiff/keys/id_ed25519.pub"), (0o644, 0, 0));
    let keyfile = "skiff/connections/Home_Net.nmconnection";
    assert_eq!(stat(root, keyfile), (0o600, 0, 0));
    for dir in ["skiff", "skiff/keys", "skiff/connections", "etc"] {
        assert_eq!(stat(root, dir), (0o755, 0, 0), "{dir}");
    }
    assert_eq!(read("etc/motd"), "welcome\n");
    assert_eq!(stat(root, "etc/motd"), (0o644, 0, 0));
    // The fixture's own persist files are still there.
    assert!(root.join("skiff/keys/authorized.pub").is_file());
    let script = "import configparser,sys,json\n\
        c=configparser.ConfigParser(interpolation=None)\n\
        c.read(sys.argv[1])\n\
        print(json.dumps({s: dict(c[s]) for s in c.sections()}))";
    let parsed: serde_json::Value = serde_json::from_str(&tool_ok(
        "python3",
        &["-c", script, root.join(keyfile).to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(parsed["connection"]["id"], "Home Net");
    assert_eq!(parsed["connection"]["type"], "wifi");
    let uuid = parsed["connection"]["uuid"].as_str().unwrap();
    assert_eq!(uuid.len(), 36);
    let v5 = "import uuid; print(uuid.uuid5(uuid.NAMESPACE_URL, 'skiff-flash:wifi:pi/4:Home Net'))";
    assert_eq!(
        uuid,
        tool_ok("python3", &["-c", v5]).trim(),
        "name-based v5 UUID"
    );
    assert_eq!(parsed["wifi"]["ssid"], "Home Net");
    assert_eq!(parsed["wifi"]["mode"], "infrastructure");
    assert_eq!(parsed["wifi-security"]["key-mgmt"], "wpa-psk");
    assert_eq!(parsed["wifi-security"]["psk"], "correct horse battery");
    assert_eq!(parsed["ipv4"]["method"], "auto");
    assert_eq!(parsed["ipv6"]["method"], "auto");
    drop(persist);
    let f = fixtures();
    ok(&run(&[
        "verify",
        &card.dev,
        "--board",
        "pi/4",
        "--images",
        f.to_str().unwrap(),
    ]));
}

#[test]
fn two_cards_get_their_own_hostname_and_the_log_a_line_each() {
    let Some(inputs) = Inputs::new() else { return };
    let (Some(a), Some(b)) = (Card::new(512 << 20), Card::new(512 << 20)) else {
        return;
    };
    let log = inputs.dir.path().join("production.jsonl");
    let mut extra = inputs.args("node-{n}");
    extra.extend(["--log".to_string(), log.to_str().unwrap().to_string()]);
    let id = format!("{}:skiff/etc/id-{{serial}}", inputs.path("motd"));
    extra.extend(["--persist-file".to_string(), id]);
    ok(&flash_pi4(&[&a.dev, &b.dev], &extra));
    for (card, want) in [(&a, "node-1\n"), (&b, "node-2\n")] {
        let m = Mount::ro(&card.part(3));
        let got = std::fs::read_to_string(m.dir.path().join("skiff/hostname")).unwrap();
        assert_eq!(got, want, "{}", card.dev);
        // A loop device has no serial number: its kernel name stands in.
        let name = Path::new(&card.dev).file_name().unwrap().to_str().unwrap();
        let id = m.dir.path().join(format!("skiff/etc/id-{name}"));
        assert!(id.is_file(), "{} holds {}", card.dev, id.display());
    }
    let (text, lines) = log_lines(&log);
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        !text.contains("correct horse"),
        "the log holds no passphrase"
    );
    for (l, (card, host)) in lines.iter().zip([(&a, "node-1"), (&b, "node-2")]) {
        assert_eq!(l["device"], card.dev.as_str());
        assert_eq!(l["hostname"], host);
        assert_eq!(l["ssid"], "Home Net");
        assert_eq!(l["ssh_keys"][0], inputs.fingerprint().as_str());
        assert_eq!(l["board"], "pi/4");
        assert_eq!(l["size"], 512u64 << 20);
        assert_eq!(l["verify"], "passed");
        assert!(l["error"].is_null(), "{l}");
        assert!(l["bytes_written"].as_u64().unwrap() > 1 << 20);
        assert!(l["seconds"].as_f64().is_some());
        assert!(l.get("vendor").is_some() && l.get("model").is_some() && l.get("serial").is_some());
        let t = l["time"].as_str().unwrap();
        assert!(
            t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }
    // A refused attempt is logged too.
    let bad = flash_pi4(
        &[&a.dev],
        &[
            "--hostname".into(),
            "bad_name".into(),
            "--log".into(),
            log.to_str().unwrap().into(),
        ],
    );
    refused(&bad, 2, &["hostname `bad_name`"]);
    let (text, lines) = log_lines(&log);
    assert_eq!(lines.len(), 3, "{text}");
    let last = &lines[2];
    assert!(
        last["error"].as_str().unwrap().contains("bad_name"),
        "{last}"
    );
}

#[test]
fn per_card_csv_gives_each_device_its_values() {
    let Some(inputs) = Inputs::new() else { return };
    let (Some(a), Some(b)) = (Card::new(512 << 20), Card::new(512 << 20)) else {
        return;
    };
    let csv = inputs.dir.path().join("cards.csv");
    std::fs::write(
        &csv,
        format!("device,hostname\n{},alpha\n{},\"beta\"\n", a.dev, b.dev),
    )
    .unwrap();
    let extra = vec!["--per-card".to_string(), csv.to_str().unwrap().to_string()];
    ok(&flash_pi4(&[&a.dev, &b.dev], &extra));
    for (card, want) in [(&a, "alpha\n"), (&b, "beta\n")] {
        let m = Mount::ro(&card.part(3));
        let got = std::fs::read_to_string(m.dir.path().join("skiff/hostname")).unwrap();
        assert_eq!(got, want);
    }
    // A column or a device the file may not name is refused with file:line.
    let before = a.hash();
    std::fs::write(&csv, format!("device,colour\n{},red\n", a.dev)).unwrap();
    refused(
        &flash_pi4(&[&a.dev], &extra),
        2,
        &["cards.csv:1:", "unknown column `colour`"],
    );
    std::fs::write(
        &csv,
        format!("device,hostname\n{},alpha\n{},beta\n", a.dev, b.dev),
    )
    .unwrap();
    refused(
        &flash_pi4(&[&a.dev], &extra),
        2,
        &["cards.csv:3:", "not one of the devices"],
    );
    assert_eq!(a.hash(), before, "nothing was written");
}

#[test]
fn customised_builds_are_byte_identical_and_the_manifest_keeps_no_passphrase() {
    let Some(inputs) = Inputs::new() else { return };
    let out = tempfile::tempdir().unwrap();
    let f = fixtures();
    let extra = inputs.args("pi-lab-1");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut hashes = Vec::new();
    for name in ["a.img", "b.img"] {
        let img = out.path().join(name);
        ok(&build_cmd("pi/4", &f, &img, &extra)
            .epoch("1700000000")
            .output());
        hashes.push(skiff_flash::image::sums::sha256_file(&img).unwrap());
    }
    assert_eq!(hashes[0], hashes[1], "same inputs, same image");
    let manifest = std::fs::read_to_string(out.path().join("a.img.manifest.json")).unwrap();
    assert!(!manifest.contains("correct horse"));
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let c = &m["custom"];
    assert_eq!(c["hostname"], "pi-lab-1");
    assert_eq!(
        c["ssh_keys"][0]["fingerprint"],
        inputs.fingerprint().as_str()
    );
    assert_eq!(c["wifi"]["ssid"], "Home Net");
    assert_eq!(c["wifi"]["psk_set"], true);
    assert_eq!(c["files"][0], "/etc/motd");
    // Templates are filled per card: a build has none to fill.
    let img = out.path().join("c.img");
    let templated = build_cmd("pi/4", &f, &img, &["--hostname", "node-{n}"]).output();
    refused(&templated, 2, &["filled per card by `flash` only"]);
    assert!(!img.exists());
    let plan = ok(&plan_cmd("pi/4", &f, &extra).output());
    assert!(!plan.contains("correct horse"), "plan shows no passphrase");
    assert!(plan.contains("Home_Net.nmconnection"));
    let mut text = vec!["plan", "--board", "pi/4", "--images", f.to_str().unwrap()];
    text.extend_from_slice(&extra);
    let shown = ok(&run(&text));
    assert!(!shown.contains("correct horse"), "{shown}");
    assert!(shown.contains("hostname  pi-lab-1"), "{shown}");
    assert!(shown.contains(&inputs.fingerprint()), "{shown}");
    assert!(
        shown.contains("wifi      Home Net (passphrase set"),
        "{shown}"
    );
}

#[test]
fn bad_values_are_refused_before_anything_is_written() {
    let Some(inputs) = Inputs::new() else { return };
    let Some(card) = Card::new(512 << 20) else {
        return;
    };
    let before = card.hash();
    let d = inputs.dir.path();
    std::fs::write(d.join("short"), "1234567\n").unwrap();
    std::fs::write(
        d.join("notkey.pub"),
        "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ== me\n",
    )
    .unwrap();
    let key = inputs.path("id_ed25519.pub");
    let psk = inputs.path("psk");
    let motd = inputs.path("motd");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--hostname=-lead".into()], "hostname `-lead`"),
        (vec!["--hostname".into(), "a".repeat(64)], "1 to 63"),
        (
            vec!["--hostname".into(), "with space".into()],
            "hostname `with space`",
        ),
        (
            vec!["--ssh-key".into(), inputs.path("notkey.pub")],
            "does not hold a ssh-ed25519 key",
        ),
        (
            vec!["--ssh-key".into(), inputs.path("psk")],
            "not an OpenSSH public key type",
        ),
        (
            vec!["--ssh-key".into(), key.clone(), "--ssh-key".into(), key],
            "given twice",
        ),
        (
            vec![
                "--wifi".into(),
                "x".repeat(33),
                "--wifi-psk-file".into(),
                psk.clone(),
            ],
            "1 to 32 bytes",
        ),
        (
            vec![
                "--wifi".into(),
                "net".into(),
                "--wifi-psk-file".into(),
                inputs.path("short"),
            ],
            "8 to 63",
        ),
        (vec!["--wifi".into(), "net".into()], "--wifi-psk-file"),
        (
            vec!["--persist-file".into(), format!("{motd}:../etc/x")],
            "`..`",
        ),
        (
            vec!["--persist-file".into(), format!("{motd}:/etc/x")],
            "relative",
        ),
        (
            vec!["--persist-file".into(), format!("{motd}:data")],
            "is a directory",
        ),
        (
            vec!["--persist-file".into(), format!("{}:x", d.display())],
            "not a regular file",
        ),
        (
            vec![
                "--hostname".into(),
                "h".into(),
                "--persist-file".into(),
                format!("{motd}:skiff/hostname"),
            ],
            "--hostname writes that file",
        ),
    ];
    for (args, expect) in cases {
        refused(&flash_pi4(&[&card.dev], &args), 2, &[expect]);
    }
    // Boards without an ext4 persist, and images, take no customisation.
    let img = inputs.dir.path().join("x.img");
    let out = sf(&[
        "flash",
        &card.dev,
        "--image",
        img.to_str().unwrap(),
        "--yes",
        "--hostname",
        "h",
    ])
    .output();
    refused(&out, 2, &["an --image is written as it is"]);
    assert_eq!(card.hash(), before, "nothing was written");
}

#[test]
fn boards_without_a_persist_filesystem_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("boards/test")).unwrap();
    std::fs::create_dir_all(dir.path().join("layouts")).unwrap();
    std::fs::write(
        dir.path().join("boards/test/nopersist.toml"),
        "description = \"boot only\"\nlayout = \"plain\"\n[[files]]\nname = \"kernel\"\nfrom = \"Image\"\nto = \"boot:/\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("layouts/plain.toml"),
        "description = \"one FAT\"\ntable = \"mbr\"\n[[partition]]\nid = \"boot\"\nfs = \"fat32\"\nmbr_type = \"0x0c\"\nsize = \"fit\"\nmin = \"64MiB\"\n",
    )
    .unwrap();
    let f = fixtures();
    let args = [
        "--board-dir",
        dir.path().to_str().unwrap(),
        "--hostname",
        "h1",
    ];
    ok(&plan_cmd("test/nopersist", &f, &args[..2]).output());
    let out = plan_cmd("test/nopersist", &f, &args).output();
    refused(&out, 2, &["board test/nopersist", "no persist filesystem"]);
}

#[test]
fn a_write_that_fails_is_logged_with_its_error() {
    let Some(inputs) = Inputs::new() else { return };
    let Some(card) = Card::new(512 << 20) else {
        return;
    };
    let log = inputs.dir.path().join("production.jsonl");
    let f = fixtures();
    let mut args = pi4_flash_args(&card.dev, f.to_str().unwrap());
    args.extend(["--hostname", "doomed", "--log", log.to_str().unwrap()]);
    let out = sf(&args)
        .env("SKIFF_FLASH_FAULT_AFTER_WRITES", "20")
        .env("SKIFF_FLASH_FAULT_SIGNAL", "TERM")
        .output();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (text, lines) = log_lines(&log);
    assert_eq!(lines.len(), 1, "{text}");
    let l = &lines[0];
    assert_eq!(l["device"], card.dev.as_str());
    assert_eq!(l["hostname"], "doomed");
    assert!(l["error"].as_str().unwrap().contains("interrupted"), "{l}");
    assert!(l["bytes_written"].is_null() && l["verify"].is_null(), "{l}");
}

#[test]
fn runs_at_once_append_whole_lines_to_one_log() {
    let Some(inputs) = Inputs::new() else { return };
    let (Some(a), Some(b)) = (Card::new(512 << 20), Card::new(512 << 20)) else {
        return;
    };
    let log = inputs.dir.path().join("shared.jsonl");
    let f = fixtures();
    let motd = format!("{}:skiff/etc/", inputs.path("motd"));
    let runs: Vec<_> = [(&a, "left"), (&b, "right")]
        .into_iter()
        .map(|(card, host)| {
            let mut args = pi4_flash_args(&card.dev, f.to_str().unwrap());
            args.extend(["--hostname", host, "--log", log.to_str().unwrap()]);
            args.extend(["--persist-file", &motd]);
            sf(&args).spawn()
        })
        .collect();
    for r in runs {
        let out = r.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (text, lines) = log_lines(&log);
    assert_eq!(lines.len(), 2, "{text}");
    let mut hosts: Vec<&str> = lines
        .iter()
        .map(|l| l["hostname"].as_str().unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["left", "right"]);
    // DEST ending in `/` keeps the file's name.
    let m = Mount::ro(&a.part(3));
    assert_eq!(
        std::fs::read_to_string(m.dir.path().join("skiff/etc/motd")).unwrap(),
        "welcome\n"
    );
}
