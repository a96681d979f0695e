//! The initramfs layout of a Chrysalis image and its deterministic compression.
//!
//! ```text
//! /init                       the runtime (static binary), the only program
//! /dev/console                c 5 1: the kernel opens it for init's stdio before devtmpfs
//! /etc/chrysalis/modules      kernel modules to load, in dependency order, one per line
//! /lib/modules/<name>.ko      the modules themselves (uncompressed; see `xtask image`)
//! /proc /sys /run /tmp        mount points
//! ```
//!
//! The GPU image adds (`xtask image --gpu`; the CPU image has none of these):
//!
//! ```text
//! /etc/chrysalis/gpu-modules  the GPU driver's modules, in load order, loaded after the list above
//! /lib64/ld-linux-x86-64.so.2 glibc's loader (the GPU runtime is dynamically linked)
//! /lib/x86_64-linux-gnu/…     the libraries it links and the driver libraries it opens
//! /lib/firmware/nvidia/…      the GPU's GSP firmware
//! ```

use std::io::Write;

use flate2::{Compression, GzBuilder};

use crate::ImageError;
use crate::cpio::{Archive, EntryKind};

/// Where the runtime finds the module load order.
pub const MODULE_LIST_PATH: &str = "etc/chrysalis/modules";
/// Directory holding the modules.
pub const MODULE_DIR: &str = "lib/modules";
/// Where the GPU runtime finds the GPU driver's module load order.
pub const GPU_MODULE_LIST_PATH: &str = "etc/chrysalis/gpu-modules";

/// A file other than `/init` and the modules (libraries, firmware).
#[derive(Clone, Debug)]
pub struct ExtraFile {
    /// Path inside the initramfs, without the leading `/`.
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub perm: u32,
}

/// What goes into the initramfs.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    /// The runtime binary, installed as `/init`.
    pub init: Vec<u8>,
    /// Kernel modules as (canonical name, object bytes), in load order.
    pub modules: Vec<(String, Vec<u8>)>,
    /// The GPU driver's modules, in load order, after `modules` (GPU image only).
    pub gpu_modules: Vec<(String, Vec<u8>)>,
    /// Other files, with their parent directories created (GPU image only).
    pub files: Vec<ExtraFile>,
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
        let list = add_modules(&mut a, &self.modules)?;
        a.add(MODULE_LIST_PATH, EntryKind::File(list), 0o644)?;
        if !self.gpu_modules.is_empty() {
            let list = add_modules(&mut a, &self.gpu_modules)?;
            a.add(GPU_MODULE_LIST_PATH, EntryKind::File(list), 0o644)?;
        }
        for f in &self.files {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                a.add_dir_all(parent)?;
            }
            a.add(&f.path, EntryKind::File(f.data.clone()), f.perm)?;
        }
        Ok(a)
    }
}

/// Add `modules` under [`MODULE_DIR`]; returns their list file.
fn add_modules(a: &mut Archive, modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>, ImageError> {
    let mut list = String::new();
    for (name, object) in modules {
        if name.contains('/') {
            return Err(ImageError::BadPath(name.clone()));
        }
        a.add(&format!("{MODULE_DIR}/{name}.ko"), EntryKind::File(object.clone()), 0o644)?;
        list.push_str(name);
        list.push('\n');
    }
    Ok(list.into_bytes())
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
        let c = Contents {
            init: b"\x7fELF".to_vec(),
            modules: vec![("configfs".into(), vec![1]), ("tsm".into(), vec![2])],
            ..Contents::default()
        };
        let bytes = c.to_archive().and_then(|a| a.to_newc(0)).unwrap_or_default();
        let entries = read_newc(&bytes).unwrap_or_default();
        let list = entries.iter().find(|e| e.path == MODULE_LIST_PATH).map(|e| e.data.clone());
        assert_eq!(list.as_deref(), Some(b"configfs\ntsm\n".as_slice()));
        assert!(entries.iter().any(|e| e.path == "init" && e.mode == 0o100755));
        assert!(entries.iter().any(|e| e.path == "lib/modules/tsm.ko"));
    }

    #[test]
    fn gpu_layout_adds_its_list_libraries_and_parents() {
        let cpu = Contents { init: b"\x7fELF".to_vec(), modules: vec![("tsm".into(), vec![2])], ..Contents::default() };
        let gpu = Contents {
            gpu_modules: vec![("drm".into(), vec![3]), ("nvidia".into(), vec![4])],
            files: vec![ExtraFile { path: "lib/firmware/nvidia/550/gsp.bin".into(), data: vec![5], perm: 0o644 }],
            ..cpu.clone()
        };
        let paths = |c: &Contents| c.to_archive().map(|a| a.paths().map(str::to_owned).collect::<Vec<_>>()).unwrap_or_default();
        assert!(!paths(&cpu).iter().any(|p| p == GPU_MODULE_LIST_PATH), "the CPU image has no GPU list");
        let entries = gpu.to_archive().and_then(|a| a.to_newc(0)).map(|b| read_newc(&b).unwrap_or_default()).unwrap_or_default();
        let file = |p: &str| entries.iter().find(|e| e.path == p).map(|e| e.data.clone());
        assert_eq!(file(GPU_MODULE_LIST_PATH).as_deref(), Some(b"drm\nnvidia\n".as_slice()));
        assert_eq!(file(MODULE_LIST_PATH).as_deref(), Some(b"tsm\n".as_slice()));
        assert_eq!(file("lib/modules/nvidia.ko").as_deref(), Some([4u8].as_slice()));
        assert!(entries.iter().any(|e| e.path == "lib/firmware/nvidia/550" && e.mode == 0o040755));
        let clash = Contents { gpu_modules: vec![("tsm".into(), vec![9])], ..gpu };
        assert!(matches!(clash.to_archive(), Err(ImageError::Duplicate(_))), "one module in both lists is refused");
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
