//! A total reader for newc cpio archives: every byte string gives `Ok` or a typed error.
//! Used to check what the writer produced and to list an image's contents; it trusts
//! nothing in its input (sizes are bounded by the input length, names must be UTF-8).

use crate::ImageError;
use crate::cpio::{NEWC_MAGIC, TRAILER};

/// One record read back from an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadEntry {
    /// Path as stored.
    pub path: String,
    /// Inode number.
    pub ino: u32,
    /// Full mode (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Device number of a device node (major, minor).
    pub rdev: (u32, u32),
    /// File contents (empty for directories and nodes).
    pub data: Vec<u8>,
}

const HEADER_LEN: usize = 110;

/// Read every record up to the trailer. Bytes after the trailer must be zero padding.
pub fn read_newc(input: &[u8]) -> Result<Vec<ReadEntry>, ImageError> {
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        let header = input.get(pos..pos + HEADER_LEN).ok_or(ImageError::Truncated { offset: pos, what: "header" })?;
        if header.get(..6) != Some(NEWC_MAGIC.as_slice()) {
            return Err(ImageError::BadMagic { offset: pos });
        }
        let mut f = [0u32; 13];
        for (i, slot) in f.iter_mut().enumerate() {
            let s = 6 + i * 8;
            let hex = header.get(s..s + 8).ok_or(ImageError::Truncated { offset: pos, what: "header" })?;
            let txt = std::str::from_utf8(hex).map_err(|_| ImageError::BadField { offset: pos + s })?;
            *slot = u32::from_str_radix(txt, 16).map_err(|_| ImageError::BadField { offset: pos + s })?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, _, _, rmaj, rmin, namesize, _] = f;
        let name_start = pos + HEADER_LEN;
        let namesize = namesize as usize;
        if namesize == 0 {
            return Err(ImageError::BadField { offset: pos + 94 });
        }
        let name_raw =
            input.get(name_start..name_start + namesize).ok_or(ImageError::Truncated { offset: name_start, what: "name" })?;
        let (name_bytes, nul) = name_raw.split_at(namesize - 1);
        if nul != [0] {
            return Err(ImageError::BadField { offset: name_start });
        }
        let path = std::str::from_utf8(name_bytes).map_err(|_| ImageError::BadField { offset: name_start })?.to_owned();
        let data_start = align4(name_start + namesize);
        let data_end = data_start + filesize as usize;
        let data = input.get(data_start..data_end).ok_or(ImageError::Truncated { offset: data_start, what: "data" })?.to_vec();
        pos = align4(data_end);
        if path == TRAILER {
            if input.get(pos.min(input.len())..).is_some_and(|rest| rest.iter().any(|&b| b != 0)) {
                return Err(ImageError::TrailingData { offset: pos });
            }
            return Ok(out);
        }
        out.push(ReadEntry { path, ino, mode, uid, gid, nlink, mtime, rdev: (rmaj, rmin), data });
    }
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{Archive, EntryKind};

    fn sample() -> Vec<u8> {
        let mut a = Archive::new();
        a.add_dir_all("dev").ok();
        a.add("dev/console", EntryKind::CharDevice(5, 1), 0o600).ok();
        a.add("init", EntryKind::File(b"#!bin".to_vec()), 0o755).ok();
        a.to_newc(1234).unwrap_or_default()
    }

    #[test]
    fn round_trip() {
        let e = read_newc(&sample()).unwrap_or_default();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["dev", "dev/console", "init"]);
        assert_eq!(e[1].rdev, (5, 1));
        assert_eq!(e[1].mode, 0o020600);
        assert_eq!(e[2].data, b"#!bin");
        assert!(e.iter().all(|e| e.mtime == 1234 && e.uid == 0 && e.gid == 0));
        assert_eq!(e.iter().map(|e| e.ino).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample();
        for n in 0..full.len() {
            assert!(read_newc(&full[..n]).is_err(), "prefix of {n} bytes accepted");
        }
    }

    #[test]
    fn garbage_after_trailer_is_rejected() {
        let mut b = sample();
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert!(read_newc(&b).is_ok());
        b.push(1);
        assert!(matches!(read_newc(&b), Err(ImageError::TrailingData { .. })));
    }

    #[test]
    fn bit_flips_never_panic() {
        let base = sample();
        for i in 0..base.len() {
            for bit in [0x01u8, 0x10, 0x80] {
                let mut b = base.clone();
                b[i] ^= bit;
                let _ = read_newc(&b);
            }
        }
    }
}
