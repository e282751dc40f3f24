//! The readers of untrusted bytes never panic: every input kept under `fuzz/seeds/<target>/`
//! and `fuzz/corpus/<target>/` (including the `crash-*` regression cases) goes through the
//! same calls as the fuzz target of that name, then ~2000 deterministic mutations of them
//! do. Runs on stable without libFuzzer; the calls are `skiff_flash::exercise`'s entry
//! points, the same ones the fuzz targets make.

mod common;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::Rng;
use skiff_flash::exercise;

/// The fuzz targets, by corpus directory name.
const TARGETS: [&str; 7] = [
    "inspect", "tables", "uimage", "bmap", "manifest", "genimage", "board",
];

/// How many mutated inputs to try, and the time they may take at most.
const MUTATIONS: usize = 2000;
const BUDGET: Duration = Duration::from_secs(10);

// --- the calls each fuzz target makes ------------------------------------------------

/// Feeds `data` to the entry point of fuzz target `target`, the one it calls too.
fn call(target: &str, data: &[u8]) {
    match target {
        "inspect" => exercise::inspect(data),
        "tables" => exercise::tables(data),
        "uimage" => exercise::uimage(data),
        "bmap" => exercise::bmap(data),
        "manifest" => exercise::manifest(data),
        "genimage" => exercise::genimage(data),
        "board" => exercise::board(data),
        other => panic!("no fuzz target {other}"),
    }
}

// --- catching panics -----------------------------------------------------------------

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records panics inside `try_call` (with their location) instead of printing them;
/// every other panic goes to the default hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                let msg = info.payload_as_str().unwrap_or("(no message)");
                LAST.with(|l| *l.borrow_mut() = Some(format!("panicked at {at}: {msg}")));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs the calls for `target` on `data`; a panic comes back as its location and message.
fn try_call(target: &str, data: &[u8]) -> Result<(), String> {
    install_hook();
    QUIET.with(|q| q.set(true));
    let r = panic::catch_unwind(AssertUnwindSafe(|| call(target, data)));
    QUIET.with(|q| q.set(false));
    r.map_err(|_| {
        LAST.with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| "panicked".into())
    })
}

// --- inputs --------------------------------------------------------------------------

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file in `fuzz/seeds/<target>/` and `fuzz/corpus/<target>/`, sorted by path.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in ["seeds", "corpus"] {
        let Ok(rd) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
            continue;
        };
        out.extend(
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && !name_of(p).starts_with('.')),
        );
    }
    out.sort();
    out
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn shown(p: &Path) -> String {
    p.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn every_corpus_input_is_read_without_panicking() {
    let mut failures = Vec::new();
    let mut total = 0;
    for target in TARGETS {
        let files = inputs(target);
        assert!(
            !files.is_empty(),
            "no inputs for fuzz target {target} under fuzz/seeds or fuzz/corpus"
        );
        for f in files {
            let data = std::fs::read(&f).unwrap();
            total += 1;
            if let Err(e) = try_call(target, &data) {
                failures.push(format!("{} ({} bytes): {e}", shown(&f), data.len()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} inputs panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- mutations -----------------------------------------------------------------------

/// Values that sit on boundaries of the fields the readers parse.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x1FF,
    0x200,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    0x0FFF_FFF7,
    // An LBA whose byte offset (x 512) no longer fits in 64 bits, and one just below.
    0x0040_0000_0000_0000,
    0x0080_0000_0000_0000,
    0x8000_0000_0000_0000,
    u64::MAX,
];

const NUMBERS: [&str; 6] = [
    "0",
    "-1",
    "4294967296",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
];

/// An offset to mutate, biased to where the parsed fields are: the first KiB (boot sectors,
/// MBR, GPT header, image and text headers), the first GPT entries after it, and the last
/// sector (the backup GPT); else anywhere.
fn offset(rng: &mut Rng, len: usize) -> usize {
    let at = match rng.below(10) {
        0..=3 => rng.below(1024),
        4 | 5 => 1024 + rng.below(512),
        6 => len.saturating_sub(512) + rng.below(512),
        _ => rng.below(len),
    };
    at.min(len - 1)
}

/// Where disk images keep the numbers the readers compute with, and their widths: the MBR
/// entries, a FAT32 boot sector at offset 0, the GPT header at LBA 1 and its first entries
/// at LBA 2.
fn fields() -> Vec<(usize, usize)> {
    let mut f = vec![
        (11, 2),
        (13, 1),
        (14, 2),
        (16, 1),
        (19, 2),
        (22, 2),
        (32, 4),
        (36, 4),
        (44, 4),
    ];
    for k in 0..4 {
        let e = 446 + 16 * k;
        f.extend([(e + 4, 1), (e + 8, 4), (e + 12, 4)]);
        let g = 1024 + 128 * k;
        f.extend([(g + 32, 8), (g + 40, 8), (g + 48, 8)]);
    }
    for (at, width) in [
        (12, 4),
        (24, 8),
        (32, 8),
        (40, 8),
        (48, 8),
        (72, 8),
        (80, 4),
        (84, 4),
    ] {
        f.push((512 + at, width));
    }
    f
}

/// One to four stacked edits: bit flips, boundary values written as 1, 2, 4 or 8
/// little-endian bytes (anywhere, or for the binary formats over a known field),
/// truncation, splices from another input, inserted or removed ranges, and (for the text
/// formats) big or negative numbers.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], text: bool) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        if v.is_empty() {
            v.extend_from_slice(&other[..other.len().min(64)]);
            continue;
        }
        let len = v.len();
        match rng.below(8) {
            0 => {
                let i = offset(rng, len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = offset(rng, len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let width = 1 << rng.below(4);
                let mut i = offset(rng, len);
                if rng.below(2) == 0 {
                    i &= !(width - 1);
                }
                let bytes = value.to_le_bytes();
                for (k, b) in bytes[..width].iter().enumerate() {
                    if let Some(x) = v.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            3 => {
                let keep = match rng.below(3) {
                    0 => rng.below(len),
                    1 => len - rng.below(len.min(600)),
                    _ => rng.below(len.min(2048)),
                };
                v.truncate(keep);
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = rng.below((other.len() - from).min(4096)) + 1;
                let to = offset(rng, len);
                let end = (to + n).min(len);
                v[to..end].copy_from_slice(&other[from..from + (end - to)]);
            }
            4 | 5 => {
                let i = rng.below(len);
                let n = rng.below(64) + 1;
                if rng.below(2) == 0 {
                    let end = (i + n).min(len);
                    v.drain(i..end);
                } else {
                    let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    v.splice(i..i, fill);
                }
            }
            _ if text => {
                let i = rng.below(len);
                let n = NUMBERS[rng.below(NUMBERS.len())];
                let digits = v[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                v.splice(i..i + digits, n.bytes());
            }
            _ => {
                let fields = fields();
                let (at, width) = fields[rng.below(fields.len())];
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                for (k, b) in value[..width].iter().enumerate() {
                    if let Some(x) = v.get_mut(at + k) {
                        *x = *b;
                    }
                }
            }
        }
    }
    v
}

/// Seed files of one target: (name, bytes).
type Pool = Vec<(String, Vec<u8>)>;

#[test]
fn mutated_inputs_are_read_without_panicking() {
    // Seeds and kept corpus entries (not the crash cases: the test above runs those).
    let pools: Vec<(&str, usize, Pool)> = TARGETS
        .iter()
        .map(|t| {
            let mut files = inputs(t)
                .into_iter()
                .filter(|p| !name_of(p).starts_with("crash-"))
                .map(|p| (shown(&p), std::fs::read(&p).unwrap()))
                .collect::<Vec<_>>();
            assert!(!files.is_empty(), "no inputs for fuzz target {t}");
            // Hand-made seeds first: they are picked half of the time.
            files.sort_by_key(|(name, _)| !name.starts_with("fuzz/seeds/"));
            let seeds = files
                .iter()
                .filter(|(name, _)| name.starts_with("fuzz/seeds/"))
                .count();
            (*t, seeds, files)
        })
        .collect();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("corpus-mutations");
    let mut rng = Rng::new(0x5EED_F1A5_0000_0001);
    let start = Instant::now();
    let mut ran = 0;
    // Panics grouped by where and why: (message, first input, how many).
    let mut seen: Vec<(String, String, usize)> = Vec::new();
    for i in 0..MUTATIONS {
        if start.elapsed() > BUDGET {
            break;
        }
        // inspect gets twice the share of the others: it reaches the most code.
        let (target, seeds, pool) = &pools[[0, 0, 1, 2, 3, 4][i % 6]];
        let pick = match rng.below(2) {
            0 if *seeds > 0 => rng.below(*seeds),
            _ => rng.below(pool.len()),
        };
        let (name, input) = &pool[pick];
        let other = &pool[rng.below(pool.len())].1;
        let text = matches!(*target, "bmap" | "manifest" | "genimage" | "board");
        let data = mutate(&mut rng, input, other, text);
        ran += 1;
        if let Err(e) = try_call(target, &data) {
            match seen.iter_mut().find(|(m, _, _)| *m == e) {
                Some(s) => s.2 += 1,
                None => {
                    std::fs::create_dir_all(&keep).unwrap();
                    let saved = keep.join(format!("{target}-{i}"));
                    std::fs::write(&saved, &data).unwrap();
                    let what = format!(
                        "mutation {i} of {name} for target {target}, saved as {}",
                        saved.display()
                    );
                    seen.push((e, what, 1));
                }
            }
        }
    }
    eprintln!(
        "{ran} mutated inputs in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        ran >= MUTATIONS / 4,
        "only {ran} mutations ran in {BUDGET:?}"
    );
    assert!(
        seen.is_empty(),
        "mutated inputs panicked ({} distinct panics):\n{}",
        seen.len(),
        seen.iter()
            .map(|(m, w, n)| format!("{m}\n    {n}x, first: {w}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
