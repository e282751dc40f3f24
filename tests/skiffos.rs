//! Inside a SkiffOS workspace: SkiffOS's `make cmd/<board>/<command>` exports the config
//! list, the config directories and the workspace; skiff-flash then needs no flag beyond
//! the device or the output, and takes the boot configs from the configs' `resources/` as
//! SkiffOS's scripts do (the last config that has the file wins).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::synth::{Set, skiffos_images};
use common::*;

/// A SkiffOS checkout with a workspace whose Buildroot output is the pi/4 fixture.
struct Skiff {
    dir: tempfile::TempDir,
}

impl Skiff {
    fn new() -> Skiff {
        let dir = tempfile::tempdir().unwrap();
        let s = Skiff { dir };
        for (conf, deps) in [
            ("pi/common", "skiff/moduleimg"),
            ("pi/4x64", "pi/common"),
            ("pi/4", "skiff/moduleimg,pi/common,pi/4x64"),
            ("skiff/core", "apps/docker"),
        ] {
            let meta = s.conf(conf).join("metadata");
            std::fs::create_dir_all(&meta).unwrap();
            std::fs::write(meta.join("dependencies"), format!("{deps}\n")).unwrap();
        }
        s.resource(
            "pi/common",
            "rpi/config.txt",
            "# from the config\nkernel=Image\ninitramfs rootfs.cpio.lz4\narm_64bit=1\n",
        );
        s.resource(
            "pi/common",
            "rpi/cmdline.txt",
            "console=tty1 root=/dev/ram0 ro from-the-config\n",
        );
        let images = s.workspace().join("output/images");
        std::fs::create_dir_all(&images).unwrap();
        copy_tree(&fixtures(), &images);
        s
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.root().join("configs").join(name)
    }

    fn workspace(&self) -> PathBuf {
        self.root().join("workspaces/default")
    }

    fn resource(&self, conf: &str, rel: &str, text: &str) {
        let p = self.conf(conf).join("resources").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Runs skiff-flash with the variables `make cmd/pi/common/install` exports: the
    /// config list and the directories of those configs that exist here.
    fn run(&self, config: &str, args: &[&str]) -> Output {
        let paths: Vec<String> = config
            .split(',')
            .map(|c| self.conf(c))
            .filter(|d| d.is_dir())
            .map(|d| d.to_str().unwrap().to_string())
            .collect();
        sf(args)
            .env("SKIFF_CONFIG", config)
            .env("SKIFF_CONFIG_PATH", paths.join(" "))
            .env("SKIFF_WORKSPACE", "default")
            .env("BUILDROOT_DIR", self.workspace())
            .env("SKIFF_CURRENT_CONF_DIR", self.conf("pi/common"))
            .output()
    }
}

/// The first partition's start, from the plan.
fn boot_start(plan: &serde_json::Value) -> u64 {
    plan["partitions"][0]["start"].as_u64().unwrap()
}

/// A file of the FAT boot partition of `img`, read with mtools.
fn fat_bytes(img: &Path, start: u64, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("file");
    tool_ok(
        "mcopy",
        &[
            "-n",
            "-i",
            &format!("{}@@{start}", img.display()),
            &format!("::{path}"),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

fn fat_file(img: &Path, start: u64, path: &str) -> String {
    String::from_utf8(fat_bytes(img, start, path)).unwrap()
}

/// SkiffOS's list for `pi/4,skiff/core` once its dependencies are added, in its order.
const PI4_EXPANDED: &str = "skiff/moduleimg,pi/common,pi/4x64,pi/4,apps/docker,skiff/core";

#[test]
fn builds_the_board_of_the_config_list_with_its_resources() {
    if !need("mtype", "mtools") {
        return;
    }
    let s = Skiff::new();
    let img = s.root().join("out.img");
    ok(&s.run("pi/4,skiff/core", &["build", "-o", img.to_str().unwrap()]));
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&s.run("pi/4,skiff/core", &["plan", "--json"]))).unwrap();
    assert_eq!(plan["board"], "pi/4");
    let start = boot_start(&plan);
    let config = fat_file(&img, start, "/config.txt");
    assert!(config.starts_with("# from the config\n"), "{config}");
    let cmdline = fat_file(&img, start, "/cmdline.txt");
    assert_eq!(cmdline, "console=tty1 root=/dev/ram0 ro from-the-config\n");
    // The kernel came from the workspace's output/images.
    let kernel = fat_bytes(&img, start, "/Image");
    assert_eq!(kernel, std::fs::read(fixtures().join("Image")).unwrap());

    // The list as SkiffOS expands it names pi/4x64 and pi/common too: pi/4 depends on both.
    let expanded: serde_json::Value =
        serde_json::from_str(&ok(&s.run(PI4_EXPANDED, &["plan", "--json"]))).unwrap();
    assert_eq!(expanded["board"], "pi/4");

    // The same build with the flags given explicitly and no SkiffOS variables differs only
    // where the resources differ: the built-in config.txt is used.
    let plain = s.root().join("plain.img");
    build_pi4(&s.workspace().join("output/images"), &plain, &[]);
    let builtin = fat_file(&plain, start, "/config.txt");
    assert!(!builtin.contains("# from the config"), "{builtin}");
}

#[test]
fn the_last_config_with_the_file_wins_and_images_may_be_a_link() {
    if !need("mtype", "mtools") {
        return;
    }
    let s = Skiff::new();
    s.resource("skiff/core", "rpi/config.txt", "# the later config\n");
    // Some SkiffOS scripts read $BUILDROOT_DIR/images: with no output/images, that is used.
    let ws = s.workspace();
    std::fs::rename(ws.join("output/images"), ws.join("images")).unwrap();
    let img = s.root().join("out.img");
    ok(&s.run(PI4_EXPANDED, &["build", "-o", img.to_str().unwrap()]));
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&s.run(PI4_EXPANDED, &["plan", "--json"]))).unwrap();
    let start = boot_start(&plan);
    assert_eq!(fat_file(&img, start, "/config.txt"), "# the later config\n");
    // cmdline.txt only pi/common has.
    assert!(fat_file(&img, start, "/cmdline.txt").contains("from-the-config"));

    // --skiff-conf names the config directories instead of SKIFF_CONFIG_PATH.
    let other = s.root().join("other.img");
    ok(&s.run(
        "pi/4",
        &[
            "build",
            "--skiff-conf",
            s.conf("pi/common").to_str().unwrap(),
            "-o",
            other.to_str().unwrap(),
        ],
    ));
    assert!(fat_file(&other, start, "/config.txt").starts_with("# from the config\n"));
}

#[test]
fn a_boot_script_from_resources_is_compiled_into_boot_scr() {
    if !need("mtype", "mtools") || !need("dumpimage", "u-boot-tools") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("configs/odroid/xu");
    let script = "setenv bootargs \"from the config\"\nbootz 0x40008000\n";
    std::fs::create_dir_all(conf.join("resources/boot-scripts")).unwrap();
    std::fs::write(conf.join("resources/boot-scripts/boot.txt"), script).unwrap();
    // The files odroid/xu's SkiffOS build leaves that its scripts require.
    let def: serde_json::Value =
        serde_json::from_str(&ok(&run(&["boards", "show", "odroid/xu", "--json"]))).unwrap();
    let generated = skiffos_images("odroid/xu", &def, Set::Required);
    let images = generated.path();
    let img = dir.path().join("xu.img");
    let run = |args: &[&str]| {
        sf(args)
            .env("SKIFF_CONFIG", "odroid/xu,skiff/core")
            .env("SKIFF_CONFIG_PATH", conf.to_str().unwrap())
            .arg("--images")
            .arg(images)
            .output()
    };
    ok(&run(&["build", "-o", img.to_str().unwrap()]));
    let plan: serde_json::Value = serde_json::from_str(&ok(&run(&["plan", "--json"]))).unwrap();
    assert_eq!(plan["board"], "odroid/xu");
    let start = boot_start(&plan);
    assert_eq!(fat_file(&img, start, "/boot.txt"), script);
    let scr = dir.path().join("boot.scr");
    tool_ok(
        "mcopy",
        &[
            "-n",
            "-i",
            &format!("{}@@{start}", img.display()),
            "::/boot.scr",
            scr.to_str().unwrap(),
        ],
    );
    let listed = tool_ok("dumpimage", &["-l", scr.to_str().unwrap()]);
    assert!(listed.contains("Script"), "{listed}");
    let bytes = std::fs::read(&scr).unwrap();
    // 64-byte image header, then the script's length table (one length, a zero end).
    let body = &bytes[64 + 8..];
    assert!(body.starts_with(script.as_bytes()), "{listed}");
}

#[test]
fn flash_and_verify_need_only_the_device() {
    if !need("mtype", "mtools") || !need("sgdisk", "gdisk") {
        return;
    }
    let Some(card) = Card::new(1 << 30) else {
        return;
    };
    let s = Skiff::new();
    let out = s.run(PI4_EXPANDED, &[&card.dev, "--yes"]);
    ok(&out);
    let (code, v) = tool("sgdisk", &["-v", &card.dev]);
    assert!(v.contains("No problems found"), "{v}");
    assert_eq!(code, 0, "{v}");
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&s.run(PI4_EXPANDED, &["plan", "--json"]))).unwrap();
    let start = boot_start(&plan);
    assert!(fat_file(&card.backing, start, "/config.txt").starts_with("# from the config\n"));
    ok(&s.run(PI4_EXPANDED, &["verify", &card.dev]));
    // A card whose config.txt differs from the configs' does not verify.
    s.resource("skiff/core", "rpi/config.txt", "# edited since\n");
    let out = s.run(PI4_EXPANDED, &["verify", &card.dev]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.txt"));
}

#[test]
fn a_config_list_without_one_board_is_refused_naming_the_list() {
    let s = Skiff::new();
    let out = s.run("skiff/core", &["plan"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no board in the SkiffOS config list"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = s.run("pi/4,odroid/xu", &["plan"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pi/4, odroid/xu"), "{err}");

    // Outside SkiffOS, no board is a usage error naming the flag.
    let out = sf(&["plan", "--images", "."])
        .env_remove("SKIFF_CONFIG")
        .env_remove("SKIFF_CONFIG_PATH")
        .env_remove("BUILDROOT_DIR")
        .env_remove("SKIFF_BUILDROOT_DIR")
        .env_remove("SKIFF_CURRENT_CONF_DIR")
        .output();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --board"));
}
