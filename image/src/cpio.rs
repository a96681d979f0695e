//! A deterministic writer for the "newc" cpio format (the initramfs format the Linux kernel
//! unpacks, `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Determinism: the caller supplies entries; [`Archive`] sorts them by path, assigns inode
//! numbers in that order starting at 1, sets uid/gid 0, nlink 1 (2 for directories) and one
//! mtime for every entry (SOURCE_DATE_EPOCH). Nothing from the build machine leaks in.

use std::collections::BTreeMap;

use crate::ImageError;

/// Magic of the newc format (no checksum).
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Name of the record that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits (`S_IFMT` values) used by the image.
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;

/// What an archive entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A character device node (major, minor), e.g. `/dev/console` = (5, 1).
    CharDevice(u32, u32),
}

/// One entry: kind and permission bits (the file type bits are derived from the kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Contents or node type.
    pub kind: EntryKind,
    /// Permission bits, e.g. 0o755.
    pub perm: u32,
}

/// A set of entries keyed by path (without leading `/`), written in sorted order.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry. Paths are relative (`init`, `lib/modules/tsm.ko`); parent directories
    /// must be added too (the kernel does not create them). Rejects duplicates, absolute
    /// paths, `..` components and names the format cannot carry.
    pub fn add(&mut self, path: &str, kind: EntryKind, perm: u32) -> Result<(), ImageError> {
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.ends_with('/')
            || path.contains('\0')
            || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(ImageError::BadPath(path.to_owned()));
        }
        if perm & !0o7777 != 0 {
            return Err(ImageError::BadPerm { path: path.to_owned(), perm });
        }
        if self.entries.insert(path.to_owned(), Entry { kind, perm }).is_some() {
            return Err(ImageError::Duplicate(path.to_owned()));
        }
        Ok(())
    }

    /// Add a directory and every missing parent of it.
    pub fn add_dir_all(&mut self, path: &str) -> Result<(), ImageError> {
        let mut prefix = String::new();
        for comp in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if !self.entries.contains_key(&prefix) {
                self.add(&prefix, EntryKind::Dir, 0o755)?;
            }
        }
        Ok(())
    }

    /// Sorted paths of all entries.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Serialise as newc with every mtime set to `mtime` (SOURCE_DATE_EPOCH). Fails when a
    /// file's parent directory is missing or a size does not fit the format's 32-bit fields.
    pub fn to_newc(&self, mtime: u32) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            if let Some((parent, _)) = path.rsplit_once('/') {
                match self.entries.get(parent) {
                    Some(Entry { kind: EntryKind::Dir, .. }) => {}
                    _ => return Err(ImageError::MissingParent(path.clone())),
                }
            }
            let (ftype, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
                EntryKind::File(d) => (S_IFREG, 1, d, (0, 0)),
                EntryKind::Dir => (S_IFDIR, 2, &[], (0, 0)),
                EntryKind::CharDevice(ma, mi) => (S_IFCHR, 1, &[], (*ma, *mi)),
            };
            let size = u32::try_from(data.len()).map_err(|_| ImageError::TooLarge(path.clone()))?;
            let header = Header { ino, mode: ftype | entry.perm, nlink, mtime, filesize: size, rdev };
            write_record(&mut out, &header, path, data)?;
        }
        let trailer = Header { ino: 0, mode: 0, nlink: 1, mtime: 0, filesize: 0, rdev: (0, 0) };
        write_record(&mut out, &trailer, TRAILER, &[])?;
        Ok(out)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev: (u32, u32),
}

fn write_record(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) -> Result<(), ImageError> {
    let namesize = u32::try_from(name.len() + 1).map_err(|_| ImageError::BadPath(name.to_owned()))?;
    out.extend_from_slice(NEWC_MAGIC);
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [h.ino, h.mode, 0, 0, h.nlink, h.mtime, h.filesize, 0, 0, h.rdev.0, h.rdev.1, namesize, 0];
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut a = Archive::new();
        for p in ["", "/init", "a/../b", "a//b", "a/", "./x"] {
            assert!(matches!(a.add(p, EntryKind::Dir, 0o755), Err(ImageError::BadPath(_))), "{p}");
        }
        a.add("init", EntryKind::File(vec![1]), 0o755).ok();
        assert!(matches!(a.add("init", EntryKind::Dir, 0o755), Err(ImageError::Duplicate(_))));
        assert!(matches!(a.add("x", EntryKind::Dir, 0o10000), Err(ImageError::BadPerm { .. })));
    }

    #[test]
    fn missing_parent_is_an_error() {
        let mut a = Archive::new();
        a.add("lib/x", EntryKind::File(vec![]), 0o644).ok();
        assert!(matches!(a.to_newc(0), Err(ImageError::MissingParent(_))));
    }

    #[test]
    fn order_of_insertion_does_not_matter() {
        let mut a = Archive::new();
        a.add_dir_all("lib/modules").ok();
        a.add("init", EntryKind::File(b"x".to_vec()), 0o755).ok();
        let mut b = Archive::new();
        b.add("init", EntryKind::File(b"x".to_vec()), 0o755).ok();
        b.add_dir_all("lib/modules").ok();
        assert_eq!(a.to_newc(7).ok(), b.to_newc(7).ok());
        assert_ne!(a.to_newc(7).ok(), a.to_newc(8).ok());
    }
}
