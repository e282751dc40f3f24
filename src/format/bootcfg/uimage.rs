//! U-Boot legacy ("uImage") script images: writes `boot.scr` byte-identical to
//! `mkimage -A <arch> -O linux -T script -C none -a 0 -e 0 -n NAME -d boot.txt`, parses a
//! legacy header back for inspection, and applies SkiffOS's silent-console edit to a
//! `boot.txt` before it is packed.
//!
//! Not FIT images, not kernels or ramdisks, and no compression: only what a boot script
//! needs. Legacy images carry no signature; the CRCs only catch corruption.

use std::borrow::Cow;
use std::fmt;

/// Why a script image cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUImage(pub String);

impl fmt::Display for BadUImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl BadUImage {
    pub fn contains(&self, s: &str) -> bool {
        self.0.contains(s)
    }
}

/// `IH_MAGIC` from U-Boot's include/image.h.
const MAGIC: u32 = 0x2705_1956;
const HEADER_LEN: usize = 64;
/// `IH_NMLEN`: the name field is fixed-size and need not be NUL-terminated.
const NAME_LEN: usize = 32;
const NAME_AT: usize = 32;
/// `IH_OS_LINUX`: mkimage's default for -O, and what every script image says.
const OS_LINUX: u8 = 5;
/// `IH_TYPE_SCRIPT`.
const TYPE_SCRIPT: u8 = 6;
/// `IH_COMP_NONE`.
const COMP_NONE: u8 = 0;

/// Header field offsets (all big-endian), as laid out by `struct legacy_img_hdr`.
const HCRC_AT: usize = 4;
const TIME_AT: usize = 8;
const SIZE_AT: usize = 12;
const LOAD_AT: usize = 16;
const EP_AT: usize = 20;
const DCRC_AT: usize = 24;
const OS_AT: usize = 28;
const ARCH_AT: usize = 29;
const TYPE_AT: usize = 30;
const COMP_AT: usize = 31;

/// Architectures U-Boot knows by name, as mkimage's `-A` values; each maps to its
/// `IH_ARCH_*` number from U-Boot's include/image.h (which only ever appends, so the
/// numbers are stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Alpha,
    Arm,
    X86,
    Ia64,
    Mips,
    Mips64,
    Powerpc,
    S390,
    Sh,
    Sparc,
    Sparc64,
    M68k,
    Microblaze,
    Nios2,
    Arm64,
    Arc,
    X86_64,
    Xtensa,
    Riscv,
}

impl Arch {
    /// Every variant, for name lookup.
    pub const ALL: [Arch; 19] = [
        Arch::Alpha,
        Arch::Arm,
        Arch::X86,
        Arch::Ia64,
        Arch::Mips,
        Arch::Mips64,
        Arch::Powerpc,
        Arch::S390,
        Arch::Sh,
        Arch::Sparc,
        Arch::Sparc64,
        Arch::M68k,
        Arch::Microblaze,
        Arch::Nios2,
        Arch::Arm64,
        Arch::Arc,
        Arch::X86_64,
        Arch::Xtensa,
        Arch::Riscv,
    ];

    /// Looks up a mkimage `-A` name; case-insensitive, as mkimage compares with
    /// `strcasecmp`. "ppc" is mkimage's alias for powerpc.
    pub fn from_name(s: &str) -> Option<Arch> {
        if s.eq_ignore_ascii_case("ppc") {
            return Some(Arch::Powerpc);
        }
        Arch::ALL
            .into_iter()
            .find(|arch| arch.name().eq_ignore_ascii_case(s))
    }

    /// The canonical mkimage `-A` name.
    pub fn name(self) -> &'static str {
        self.entry().0
    }

    /// The `IH_ARCH_*` number written to the header.
    pub fn id(self) -> u8 {
        self.entry().1
    }

    /// mkimage's short name (its `uimage_arch` table) and the `IH_ARCH_*` number.
    fn entry(self) -> (&'static str, u8) {
        match self {
            Arch::Alpha => ("alpha", 1),
            Arch::Arm => ("arm", 2),
            Arch::X86 => ("x86", 3),
            Arch::Ia64 => ("ia64", 4),
            Arch::Mips => ("mips", 5),
            Arch::Mips64 => ("mips64", 6),
            Arch::Powerpc => ("powerpc", 7),
            Arch::S390 => ("s390", 8),
            Arch::Sh => ("sh", 9),
            Arch::Sparc => ("sparc", 10),
            Arch::Sparc64 => ("sparc64", 11),
            Arch::M68k => ("m68k", 12),
            Arch::Microblaze => ("microblaze", 14),
            Arch::Nios2 => ("nios2", 15),
            Arch::Arm64 => ("arm64", 22),
            Arch::Arc => ("arc", 23),
            Arch::X86_64 => ("x86_64", 24),
            Arch::Xtensa => ("xtensa", 25),
            Arch::Riscv => ("riscv", 26),
        }
    }
}

/// The fields of a legacy image header, plus whether its two CRCs hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name up to its first NUL (at most 32 bytes), invalid UTF-8 replaced.
    pub name: String,
    pub time: u32,
    /// Payload length in bytes; for a script this includes the 8-byte length table.
    pub size: u32,
    pub arch: u8,
    pub os: u8,
    pub kind: u8,
    pub comp: u8,
    pub load: u32,
    pub entry: u32,
    pub header_crc_ok: bool,
    pub data_crc_ok: bool,
}

/// The bytes of a script image, as mkimage writes them for `-T script -C none` with
/// `-O linux -a 0 -e 0` (mkimage's defaults, so the short `-A arm -T script -C none -n NAME`
/// form gives the same bytes): the 64-byte header, then the multi-file payload
/// `[len, 0]` (u32 big-endian) followed by the script, with no padding after it.
///
/// `time` is the header timestamp; mkimage takes it from SOURCE_DATE_EPOCH when set.
/// A name longer than 32 bytes is cut to 32 bytes (without a NUL), exactly as mkimage's
/// `strncpy` does — even mid-character. Refuses what mkimage refuses or cannot be given:
/// an empty script, a name containing NUL, a payload beyond 4 GiB.
pub fn script(arch: Arch, name: &str, script: &[u8], time: u32) -> Result<Vec<u8>, BadUImage> {
    if script.is_empty() {
        return Err(BadUImage(
            "the boot script is empty; mkimage refuses empty input too".to_string(),
        ));
    }
    let name = name_field(name)?;
    let payload = script_payload(script)?;
    let fields = Fields {
        time,
        load: 0,
        entry: 0,
        os: OS_LINUX,
        arch: arch.id(),
        kind: TYPE_SCRIPT,
        comp: COMP_NONE,
        name,
    };
    let mut out = header(&fields, &payload)?.to_vec();
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses a legacy image header and checks both CRCs. Bytes after the `size` payload
/// bytes are ignored, since images often sit in larger, padded regions.
pub fn parse(bytes: &[u8]) -> Result<Header, BadUImage> {
    if bytes.len() < HEADER_LEN {
        return Err(BadUImage(format!(
            "too short for a U-Boot legacy image: {} bytes, the header alone is {HEADER_LEN}",
            bytes.len()
        )));
    }
    let magic = be32(bytes, 0);
    if magic != MAGIC {
        return Err(BadUImage(format!(
            "not a U-Boot legacy image: magic {magic:#010x}, expected {MAGIC:#010x}"
        )));
    }
    let size = be32(bytes, SIZE_AT);
    let data = payload_of(bytes, size)?;
    Ok(Header {
        name: name_of(&bytes[NAME_AT..NAME_AT + NAME_LEN]),
        time: be32(bytes, TIME_AT),
        size,
        arch: bytes[ARCH_AT],
        os: bytes[OS_AT],
        kind: bytes[TYPE_AT],
        comp: bytes[COMP_AT],
        load: be32(bytes, LOAD_AT),
        entry: be32(bytes, EP_AT),
        header_crc_ok: header_crc(&bytes[..HEADER_LEN]) == be32(bytes, HCRC_AT),
        data_crc_ok: crc32fast::hash(data) == be32(bytes, DCRC_AT),
    })
}

/// A script image with its script edited by `edit`, written again as `script` writes it
/// (same arch, name and time). Refuses what is not an uncompressed script image.
pub fn edit_script(
    bytes: &[u8],
    edit: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<Vec<u8>, BadUImage> {
    let h = parse(bytes)?;
    if h.kind != TYPE_SCRIPT || h.comp != COMP_NONE {
        return Err(BadUImage("not an uncompressed script image".into()));
    }
    let arch = Arch::ALL
        .into_iter()
        .find(|a| a.id() == h.arch)
        .ok_or_else(|| BadUImage(format!("unknown arch number {}", h.arch)))?;
    // The payload: [length, 0] (u32 big-endian), then the script.
    let payload = payload_of(bytes, h.size)?;
    let len = payload
        .get(..4)
        .map(|b| be32(b, 0) as usize)
        .ok_or_else(|| BadUImage("script payload without its length table".into()))?;
    let text = payload
        .get(8..8 + len)
        .ok_or_else(|| BadUImage("script shorter than its length table says".into()))?;
    script(arch, &h.name, &edit(text), h.time)
}

/// SkiffOS's "silent console" edit of a boot.txt: lines starting with `setenv condev` are
/// commented out (`# ` prefixed) so U-Boot hands the kernel no serial console, and lines
/// starting with `# setenv silent` are uncommented. Every other byte — line endings
/// (CRLF too) and a missing final newline included — is kept as is.
pub fn silent_console(script: &str) -> String {
    script.split_inclusive('\n').map(silence_line).collect()
}

fn silence_line(line: &str) -> Cow<'_, str> {
    if line.starts_with("setenv condev") {
        Cow::Owned(format!("# {line}"))
    } else if let Some(rest) = line.strip_prefix("# setenv silent") {
        Cow::Owned(format!("setenv silent{rest}"))
    } else {
        Cow::Borrowed(line)
    }
}

/// The header fields a writer chooses; magic, size and CRCs follow from the payload.
struct Fields {
    time: u32,
    load: u32,
    entry: u32,
    os: u8,
    arch: u8,
    kind: u8,
    comp: u8,
    name: [u8; NAME_LEN],
}

fn header(f: &Fields, payload: &[u8]) -> Result<[u8; HEADER_LEN], BadUImage> {
    let size = u32::try_from(payload.len()).map_err(|_| {
        BadUImage(format!(
            "image payload of {} bytes exceeds 4 GiB",
            payload.len()
        ))
    })?;
    let mut h = [0u8; HEADER_LEN];
    put32(&mut h, 0, MAGIC);
    put32(&mut h, TIME_AT, f.time);
    put32(&mut h, SIZE_AT, size);
    put32(&mut h, LOAD_AT, f.load);
    put32(&mut h, EP_AT, f.entry);
    put32(&mut h, DCRC_AT, crc32fast::hash(payload));
    h[OS_AT] = f.os;
    h[ARCH_AT] = f.arch;
    h[TYPE_AT] = f.kind;
    h[COMP_AT] = f.comp;
    h[NAME_AT..NAME_AT + NAME_LEN].copy_from_slice(&f.name);
    let hcrc = header_crc(&h);
    put32(&mut h, HCRC_AT, hcrc);
    Ok(h)
}

/// mkimage treats a script as a multi-file image with one file: a table of lengths ended
/// by 0, then the file. Only files before the last are padded to 4 bytes, so a single
/// script is never padded.
fn script_payload(script: &[u8]) -> Result<Vec<u8>, BadUImage> {
    let len = u32::try_from(script.len()).map_err(|_| {
        BadUImage(format!(
            "boot script of {} bytes exceeds 4 GiB",
            script.len()
        ))
    })?;
    let mut payload = Vec::with_capacity(8 + script.len());
    payload.extend_from_slice(&len.to_be_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes());
    payload.extend_from_slice(script);
    Ok(payload)
}

fn name_field(name: &str) -> Result<[u8; NAME_LEN], BadUImage> {
    // A C string ends at NUL, so mkimage could never be given such a name.
    if name.contains('\0') {
        return Err(BadUImage(format!(
            "image name {name:?} contains a NUL byte"
        )));
    }
    let mut field = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN);
    field[..n].copy_from_slice(&name.as_bytes()[..n]);
    Ok(field)
}

fn name_of(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn payload_of(bytes: &[u8], size: u32) -> Result<&[u8], BadUImage> {
    let data = &bytes[HEADER_LEN..];
    usize::try_from(size)
        .ok()
        .and_then(|n| data.get(..n))
        .ok_or_else(|| {
            BadUImage(format!(
                "truncated U-Boot legacy image: header says {size} payload bytes, {} present",
                data.len()
            ))
        })
}

/// The header CRC is taken over the header with its own CRC field zeroed.
fn header_crc(h: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[..HCRC_AT]);
    hasher.update(&[0; 4]);
    hasher.update(&h[HCRC_AT + 4..HEADER_LEN]);
    hasher.finalize()
}

/// Callers have checked that `at + 4` is within `b`.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf 'echo hi\n' > a.txt; SOURCE_DATE_EPOCH=1000 mkimage -A arm -T script -C none
    /// -n NAME -d a.txt` from u-boot-tools 2023.01.
    const ECHO_HI: [u8; 80] = [
        0x27, 0x05, 0x19, 0x56, 0x3f, 0xd1, 0xd9, 0x58, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00,
        0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd9, 0x34, 0x01, 0x62, 0x05, 0x02,
        0x06, 0x00, b'N', b'A', b'M', b'E', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, b'e', b'c',
        b'h', b'o', b' ', b'h', b'i', b'\n',
    ];

    #[test]
    fn matches_recorded_mkimage_output() {
        let img = script(Arch::Arm, "NAME", b"echo hi\n", 1000).expect("valid input");
        assert_eq!(img, ECHO_HI);
    }

    #[test]
    fn header_fields_sit_where_u_boot_reads_them() {
        let img = script(Arch::Riscv, "SkiffOS", b"abcde", 0x0102_0304).expect("valid input");
        assert_eq!(
            img.len(),
            HEADER_LEN + 8 + 5,
            "odd-length script is not padded"
        );
        assert_eq!(&img[0..4], &[0x27, 0x05, 0x19, 0x56]);
        assert_eq!(&img[8..12], &[1, 2, 3, 4]);
        assert_eq!(be32(&img, SIZE_AT), 13);
        assert_eq!(be32(&img, LOAD_AT), 0);
        assert_eq!(be32(&img, EP_AT), 0);
        assert_eq!(&img[28..32], &[5, 26, 6, 0]);
        assert_eq!(&img[32..39], b"SkiffOS");
        assert!(img[39..64].iter().all(|&b| b == 0));
        assert_eq!(&img[64..72], &[0, 0, 0, 5, 0, 0, 0, 0]);
        assert_eq!(&img[72..], b"abcde");
    }

    #[test]
    fn crcs_cover_header_and_payload() {
        let img = script(Arch::Arm64, "x", b"boot\n", 7).expect("valid input");
        assert_eq!(be32(&img, DCRC_AT), crc32fast::hash(&img[HEADER_LEN..]));
        let mut zeroed = img[..HEADER_LEN].to_vec();
        zeroed[HCRC_AT..HCRC_AT + 4].fill(0);
        assert_eq!(be32(&img, HCRC_AT), crc32fast::hash(&zeroed));
    }

    #[test]
    fn long_names_are_cut_like_strncpy() {
        let img = script(Arch::Arm, &"n".repeat(40), b"x", 0).expect("valid input");
        assert_eq!(&img[32..64], "n".repeat(32).as_bytes());
        assert_eq!(parse(&img).expect("parses").name, "n".repeat(32));
    }

    #[test]
    fn refuses_what_mkimage_cannot_produce() {
        assert!(script(Arch::Arm, "n", b"", 0).is_err());
        assert!(script(Arch::Arm, "a\0b", b"x", 0).is_err());
    }

    #[test]
    fn parse_round_trips_and_detects_corruption() {
        let img = script(Arch::X86_64, "boot", b"echo 1\r\n", 42).expect("valid input");
        let h = parse(&img).expect("parses");
        assert_eq!(
            h,
            Header {
                name: "boot".into(),
                time: 42,
                size: 16,
                arch: 24,
                os: OS_LINUX,
                kind: TYPE_SCRIPT,
                comp: COMP_NONE,
                load: 0,
                entry: 0,
                header_crc_ok: true,
                data_crc_ok: true,
            }
        );
        let mut bad = img.clone();
        bad[70] ^= 1;
        assert!(!parse(&bad).expect("parses").data_crc_ok);
        let mut bad = img.clone();
        bad[TIME_AT] ^= 1;
        assert!(!parse(&bad).expect("parses").header_crc_ok);
    }

    #[test]
    fn parse_rejects_non_images() {
        assert!(parse(&[0; 10]).is_err());
        assert!(parse(&[0; 64]).is_err());
        let img = script(Arch::Arm, "n", b"hello", 0).expect("valid input");
        let err = parse(&img[..img.len() - 1]).expect_err("truncated");
        assert!(err.contains("truncated"), "{err}");
        let mut padded = img.clone();
        padded.extend_from_slice(&[0xff; 512]);
        assert!(parse(&padded).expect("parses").data_crc_ok);
    }

    #[test]
    fn arch_names_and_numbers() {
        for (name, id) in [
            ("arm", 2),
            ("arm64", 22),
            ("riscv", 26),
            ("x86", 3),
            ("x86_64", 24),
            ("mips", 5),
            ("powerpc", 7),
            ("ppc", 7),
        ] {
            let arch = Arch::from_name(name).expect(name);
            assert_eq!(arch.id(), id, "{name}");
        }
        assert_eq!(Arch::from_name("ARM"), Some(Arch::Arm));
        assert_eq!(Arch::from_name("aarch64"), None);
        assert_eq!(Arch::Powerpc.name(), "powerpc");
        for arch in Arch::ALL {
            assert_eq!(Arch::from_name(arch.name()), Some(arch));
        }
    }

    #[test]
    fn silent_console_edits_only_the_two_kinds_of_line() {
        let input = "setenv condev console=ttyS2,1500000\n\
                     # setenv silent 1\n\
                     echo setenv condev\n\
                     #setenv silent 1\n\
                     \x20setenv condev x\n\
                     setenv bootargs ${condev}\n";
        let want = "# setenv condev console=ttyS2,1500000\n\
                    setenv silent 1\n\
                    echo setenv condev\n\
                    #setenv silent 1\n\
                    \x20setenv condev x\n\
                    setenv bootargs ${condev}\n";
        assert_eq!(silent_console(input), want);
    }

    #[test]
    fn silent_console_keeps_crlf_and_missing_final_newline() {
        assert_eq!(
            silent_console("setenv condev a\r\n# setenv silent 1\r\nboot"),
            "# setenv condev a\r\nsetenv silent 1\r\nboot"
        );
        assert_eq!(silent_console("# setenv silent 1"), "setenv silent 1");
        assert_eq!(silent_console("setenv condev"), "# setenv condev");
        assert_eq!(silent_console(""), "");
        assert_eq!(silent_console("\n\r\n"), "\n\r\n");
    }
}
