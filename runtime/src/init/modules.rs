//! Load the kernel modules listed in the image, in the order the image builder computed
//! (dependencies first), then lock module loading for the rest of the VM's life.
//!
//! Two lists: [`LIST`], which every image has and whose every failure stops the boot, and
//! [`GPU_LIST`], which only the GPU image has and whose failures the GPU bring-up judges
//! (`crate::gpu_boot`): there `nvidia` answering ENODEV means "no NVIDIA GPU in this VM".

use std::os::fd::AsFd;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// Where the image builder put the load order.
pub const LIST: &str = "/etc/chrysalis/modules";
/// The GPU image's driver modules (DRM's helpers, `nvidia`, `nvidia-uvm`), in load order.
pub const GPU_LIST: &str = "/etc/chrysalis/gpu-modules";
/// Where the modules are.
pub const DIR: &str = "/lib/modules";

/// Modules whose devices exist only inside a confidential VM; ENODEV from them means
/// "not this kind of TEE", not a broken image.
const TEE_SPECIFIC: &[&str] = &["sev_guest", "tdx_guest"];

/// Outcome of loading one module.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Loaded now.
    Yes,
    /// Already loaded or built in.
    Already,
    /// The module has no device to drive here (e.g. sev_guest in a non-SNP VM).
    NoDevice,
}

/// A module the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("loading kernel module {name}: {errno}")]
pub struct LoadError {
    /// The module.
    pub name: String,
    /// What `finit_module` (or opening the file) answered.
    pub errno: Errno,
}

/// Load every module of [`LIST`]. Returns (name, outcome) in load order.
pub fn load_all() -> Result<Vec<(String, Loaded)>> {
    let mut out = Vec::new();
    for name in read_list(LIST)? {
        let outcome = load(&name)?;
        log::debug!("module {name}: {outcome:?}");
        out.push((name, outcome));
    }
    Ok(out)
}

/// The module names of a list file, in order (blank lines skipped).
pub fn read_list(path: &str) -> Result<Vec<String>> {
    let list = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(list.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

/// Load `DIR/<name>.ko`.
pub fn load(name: &str) -> Result<Loaded, LoadError> {
    let path = format!("{DIR}/{name}.ko");
    let err = |errno| LoadError { name: name.to_owned(), errno };
    let file = std::fs::File::open(&path).map_err(|e| err(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    match finit_module(file.as_fd(), c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::Yes),
        Err(Errno::EEXIST) => Ok(Loaded::Already),
        Err(Errno::ENODEV) if TEE_SPECIFIC.contains(&name) => Ok(Loaded::NoDevice),
        Err(e) => Err(err(e)),
    }
}

/// Forbid loading any further module (kernel.modules_disabled is one-way).
pub fn lock() -> Result<()> {
    std::fs::write("/proc/sys/kernel/modules_disabled", b"1").context("setting kernel.modules_disabled")
}
