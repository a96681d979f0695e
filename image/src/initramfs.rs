//! The initramfs layout of a Chrysalis image and its deterministic compression.
//!
//! ```text
//! /init                       the runtime (static binary), the only program
//! /dev/console                c 5 1: the kernel opens it for init's stdio before devtmpfs
//! /etc/chrysalis/modules      kernel modules to load, in dependency order, one per line
//! /lib/modules/<name>.ko      the modules themselves (uncompressed; see `xtask image`)
//! /proc /sys /run /tmp        mount points
//! ```

use std::io::Write;

use flate2::{Compression, GzBuilder};

use crate::ImageError;
use crate::cpio::{Archive, EntryKind};

/// Where the runtime finds the module load order.
pub const MODULE_LIST_PATH: &str = "etc/chrysalis/modules";
/// Directory holding the modules.
pub const MODULE_DIR: &str = "lib/modules";

/// What goes into the initramfs.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    /// The runtime binary, installed as `/init`.
    pub init: Vec<u8>,
    /// Kernel modules as (canonical name, object bytes), in load order.
    pub modules: Vec<(String, Vec<u8>)>,
}

impl Contents {
    /// Lay the contents out as a cpio archive.
    pub fn to_archive(&self) -> Result<Archive, ImageError> {
        let mut a = Archive::new();
        for dir in ["dev", "etc/chrysalis", MODULE_DIR, "proc", "sys", "run", "tmp"] {
            a.add_dir_all(dir)?;
        }
        a.add("dev/console", EntryKind::CharDevice(5, 1), 0o600)?;
        a.add("init", EntryKind::File(self.init.clone()), 0o755)?;
        let mut list = String::new();
        for (name, object) in &self.modules {
            if name.contains('/') {
                return Err(ImageError::BadPath(name.clone()));
            }
            a.add(&format!("{MODULE_DIR}/{name}.ko"), EntryKind::File(object.clone()), 0o644)?;
            list.push_str(name);
            list.push('\n');
        }
        a.add(MODULE_LIST_PATH, EntryKind::File(list.into_bytes()), 0o644)?;
        Ok(a)
    }
}

/// gzip with a fixed header (mtime 0, no file name, OS "unknown") at level 9: the output
/// is a pure function of the input and the pinned flate2/miniz_oxide version.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut enc = GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), Compression::best());
    enc.write_all(data).map_err(ImageError::Compress)?;
    enc.finish().map_err(ImageError::Compress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::read_newc;

    #[test]
    fn layout_and_module_list() {
        let c = Contents { init: b"\x7fELF".to_vec(), modules: vec![("configfs".into(), vec![1]), ("tsm".into(), vec![2])] };
        let bytes = c.to_archive().and_then(|a| a.to_newc(0)).unwrap_or_default();
        let entries = read_newc(&bytes).unwrap_or_default();
        let list = entries.iter().find(|e| e.path == MODULE_LIST_PATH).map(|e| e.data.clone());
        assert_eq!(list.as_deref(), Some(b"configfs\ntsm\n".as_slice()));
        assert!(entries.iter().any(|e| e.path == "init" && e.mode == 0o100755));
        assert!(entries.iter().any(|e| e.path == "lib/modules/tsm.ko"));
    }

    #[test]
    fn gzip_is_deterministic_and_decodes() {
        let a = gzip(b"hello hello hello").unwrap_or_default();
        assert_eq!(a, gzip(b"hello hello hello").unwrap_or_default());
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(a.as_slice()), &mut out);
        assert_eq!(out, b"hello hello hello");
    }
}
