//! Fetch the pinned kernel package, check its SHA-256, and unpack it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pins::KernelPackage;
use crate::util::{run, say, sha256_file};

/// The unpacked kernel: its bzImage and module tree.
pub struct Kernel {
    /// Path of the .deb it came from.
    pub deb: PathBuf,
    /// `boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>/`.
    pub modules_dir: PathBuf,
}

/// Make sure the pinned package is in `cache` (downloading it with `apt-get download` if
/// needed, or copying `offline`), check its hash and unpack it.
pub fn ensure(pin: &KernelPackage, cache: &Path, offline: Option<&Path>) -> Result<Kernel> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let deb = cache.join(pin.deb_name());
    if let Some(src) = offline {
        // Copying a file onto itself truncates it: `repro` hands build 1 the cached .deb.
        if !same_file(src, &deb) {
            std::fs::copy(src, &deb).with_context(|| format!("copying {}", src.display()))?;
        }
    } else if !deb.exists() {
        download(pin, cache)?;
    }
    let got = sha256_file(&deb)?;
    if got != pin.sha256 {
        bail!(
            "{} has SHA-256 {got}, but kernel/kernel.toml pins {} for {} {}: refusing to build with it",
            deb.display(),
            pin.sha256,
            pin.package,
            pin.version
        );
    }
    let unpacked = cache.join(format!("{}-{}", pin.package, pin.version));
    let stamp = unpacked.join(".complete");
    if !stamp.exists() {
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::create_dir_all(&unpacked)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked)).context("unpacking the kernel package")?;
        std::fs::write(&stamp, b"")?;
    }
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{}", pin.release));
    let modules_dir = unpacked.join(format!("lib/modules/{}", pin.release));
    if !vmlinuz.exists() || !modules_dir.is_dir() {
        bail!("{} does not contain boot/vmlinuz-{0} and lib/modules/{0}/", pin.release);
    }
    Ok(Kernel { deb, vmlinuz, modules_dir })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn download(pin: &KernelPackage, cache: &Path) -> Result<()> {
    let spec = format!("{}={}", pin.package, pin.version);
    say(format!("downloading {spec} with apt-get download"));
    let attempt = || Command::new("apt-get").args(["download", &spec]).current_dir(cache).status();
    let mut ok = attempt().map(|s| s.success()).unwrap_or(false);
    if !ok && crate::util::is_root() {
        say("apt-get download failed; refreshing the package lists (apt-get update) and retrying");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        ok = attempt().map(|s| s.success()).unwrap_or(false);
    }
    if !ok {
        bail!(
            "could not download kernel package {} version {} from {}: the archive may no longer carry this \
             version. Get the .deb (e.g. from snapshot.debian.org) and pass it with --kernel-deb PATH; its \
             SHA-256 must be {}",
            pin.package,
            pin.version,
            pin.archive,
            pin.sha256
        );
    }
    Ok(())
}
