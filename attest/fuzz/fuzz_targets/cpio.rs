//! Fuzz the initramfs newc cpio reader (`chrysalis_image::reader::read_newc`, which lists an
//! image's contents and checks what the writer produced): Ok or a typed error, never a panic.
//! An accepted archive's records lie inside the input. Round trip with the writer
//! (`chrysalis_image::cpio::Archive::to_newc`): when the records read fit the writer's model
//! (regular files, directories without data, character devices without data; only type and
//! permission bits in the mode; paths the writer accepts, each once), writing them out must
//! read back to the same paths, modes, contents and device numbers, with the writer's
//! deterministic metadata (inodes 1.. in path order, uid/gid 0, nlink 1 or 2 for
//! directories, one mtime), and writing what was read back again gives the same bytes.
#![no_main]

use chrysalis_image::cpio::{Archive, EntryKind};
use chrysalis_image::reader::{ReadEntry, read_newc};
use libfuzzer_sys::fuzz_target;

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;

/// The writer's view of a record, or `None` when the writer cannot express it.
fn kind_of(e: &ReadEntry) -> Option<EntryKind> {
    // The writer sets the type bits and permission bits (0o7777) only; a 32-bit mode field
    // may carry more.
    if e.mode & !(S_IFMT | 0o7777) != 0 {
        return None;
    }
    match e.mode & S_IFMT {
        S_IFREG => Some(EntryKind::File(e.data.clone())),
        S_IFDIR if e.data.is_empty() => Some(EntryKind::Dir),
        S_IFCHR if e.data.is_empty() => Some(EntryKind::CharDevice(e.rdev.0, e.rdev.1)),
        _ => None,
    }
}

/// An archive of `entries`, or `None` when one does not fit the writer's model.
fn archive_of(entries: &[ReadEntry]) -> Option<Archive> {
    let mut a = Archive::new();
    for e in entries {
        a.add(&e.path, kind_of(e)?, e.mode & 0o7777).ok()?;
    }
    Some(a)
}

fuzz_target!(|data: &[u8]| {
    let entries = match read_newc(data) {
        Ok(entries) => entries,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // Every record takes a 110-byte header plus a name; the trailer too.
    assert!((entries.len() + 1) * 112 <= data.len() + 3);
    assert!(entries.iter().map(|e| e.data.len()).sum::<usize>() <= data.len());

    let Some(archive) = archive_of(&entries) else { return };
    let mtime = entries.first().map_or(0, |e| e.mtime);
    // A record whose parent directory is not in the archive is the writer's to refuse.
    let Ok(written) = archive.to_newc(mtime) else { return };
    let back = read_newc(&written).expect("the writer's output reads back");

    let mut want: Vec<&ReadEntry> = entries.iter().collect();
    want.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(back.len(), want.len());
    for ((b, w), ino) in back.iter().zip(&want).zip(1u32..) {
        assert_eq!(b.path, w.path);
        assert_eq!(b.mode, w.mode, "{}", w.path);
        assert_eq!(b.data, w.data, "{}", w.path);
        let is_dir = w.mode & S_IFMT == S_IFDIR;
        let rdev = if w.mode & S_IFMT == S_IFCHR { w.rdev } else { (0, 0) };
        assert_eq!((b.ino, b.uid, b.gid, b.nlink, b.mtime, b.rdev), (ino, 0, 0, if is_dir { 2 } else { 1 }, mtime, rdev));
    }
    let again = archive_of(&back).expect("what the writer wrote fits its model");
    assert_eq!(again.to_newc(mtime).ok(), Some(written), "writer output is not a fixed point");
});
