//! Files and trees: copies keeping modes and links, snapshots to compare, listings, and
//! byte ranges cut out of images for tools that take a whole device. Not images themselves.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

/// Copies a tree keeping modes and symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = std::fs::symlink_metadata(&src).unwrap();
        if md.file_type().is_symlink() {
            symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if md.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(md.mode())).unwrap();
        }
    }
}

/// Every entry under `root` as (relative path, kind, mode, content or link target), sorted.
pub fn snapshot(root: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String, u32, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let mode = md.mode() & 0o7777;
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((
                    rel,
                    "link".into(),
                    0,
                    t.to_string_lossy().as_bytes().to_vec(),
                ));
            } else if md.is_dir() {
                out.push((rel, "dir".into(), mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.push((rel, "file".into(), mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Copies `len` bytes at `offset` of `image` into a new temp file (for tools that take a
/// whole device, like fsck.fat). All-zero blocks become holes, so this is cheap on sparse
/// images.
pub fn extract(image: &Path, offset: u64, len: u64) -> tempfile::NamedTempFile {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(image).unwrap();
    let dst = tempfile::NamedTempFile::new().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset + done).unwrap();
        // Slice equality is a memcmp, fast even in a debug build.
        if buf[..n] != zeros[..n] {
            dst.as_file().write_all_at(&buf[..n], done).unwrap();
        }
        done += n as u64;
    }
    dst.as_file().set_len(len).unwrap();
    dst
}

/// Names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `len` bytes of `path` at `offset`; the file must hold them.
pub fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

/// XORs the byte at `at` of `path` with `mask` in place; returns the byte it was.
pub fn xor_byte(path: &Path, at: u64, mask: u8) -> u8 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ mask], at).unwrap();
    b[0]
}

/// Copies every file of the FAT filesystem in `part` (a partition device or image file)
/// into `dest` with mtools, keeping names and times.
pub fn fat_copy_out(part: &str, dest: &Path) {
    super::run::tool_ok(
        "mcopy",
        &["-s", "-n", "-p", "-i", part, "::/*", dest.to_str().unwrap()],
    );
}
