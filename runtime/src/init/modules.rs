//! Load the kernel modules listed in the image, in the order the image builder computed
//! (dependencies first), then lock module loading for the rest of the VM's life.

use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// Where the image builder put the load order.
pub const LIST: &str = "/etc/chrysalis/modules";
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

/// Load every listed module. Returns (name, outcome) in load order.
pub fn load_all() -> Result<Vec<(String, Loaded)>> {
    let list = std::fs::read_to_string(LIST).with_context(|| format!("reading {LIST}"))?;
    let mut out = Vec::new();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let outcome = load(name)?;
        log::debug!("module {name}: {outcome:?}");
        out.push((name.to_owned(), outcome));
    }
    Ok(out)
}

fn load(name: &str) -> Result<Loaded> {
    let path = format!("{DIR}/{name}.ko");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    match finit_module(file.as_fd(), c"", ModuleInitFlags::empty()) {
        Ok(()) => Ok(Loaded::Yes),
        Err(Errno::EEXIST) => Ok(Loaded::Already),
        Err(Errno::ENODEV) if TEE_SPECIFIC.contains(&name) => Ok(Loaded::NoDevice),
        Err(e) => bail!("loading kernel module {name}: {e}"),
    }
}

/// Forbid loading any further module (kernel.modules_disabled is one-way).
pub fn lock() -> Result<()> {
    std::fs::write("/proc/sys/kernel/modules_disabled", b"1").context("setting kernel.modules_disabled")
}
