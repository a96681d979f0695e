//! The pinned build inputs: `kernel/kernel.toml`, `kernel/modules.txt`,
//! `kernel/cmdline.txt` and `image/image.toml`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// `kernel/kernel.toml`.
#[derive(Debug, Deserialize)]
pub struct KernelPin {
    /// The `[kernel]` table.
    pub kernel: KernelPackage,
}

/// A Debian kernel package pinned by version and hash.
#[derive(Debug, Deserialize, Clone)]
pub struct KernelPackage {
    /// Package name.
    pub package: String,
    /// Exact Debian version.
    pub version: String,
    /// SHA-256 of the .deb.
    pub sha256: String,
    /// Where it comes from (for error messages).
    pub archive: String,
    /// `uname -r` of the kernel.
    pub release: String,
}

impl KernelPackage {
    /// The file name `apt-get download` writes.
    pub fn deb_name(&self) -> String {
        // apt escapes ':' in epochs as %3a; our versions have none.
        format!("{}_{}_amd64.deb", self.package, self.version)
    }
}

/// `image/image.toml`.
#[derive(Debug, Deserialize)]
pub struct ImagePin {
    /// The `[build]` table.
    pub build: BuildSettings,
}

/// Runtime build settings.
#[derive(Debug, Deserialize)]
pub struct BuildSettings {
    /// Default SOURCE_DATE_EPOCH.
    pub source_date_epoch: u64,
    /// Rust target triple of the runtime.
    pub target: String,
    /// `-C target-cpu` of the runtime.
    pub target_cpu: String,
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Load the kernel pin.
pub fn kernel(root: &Path) -> Result<KernelPackage> {
    Ok(read_toml::<KernelPin>(&root.join("kernel/kernel.toml"))?.kernel)
}

/// Load the image build settings.
pub fn image(root: &Path) -> Result<BuildSettings> {
    Ok(read_toml::<ImagePin>(&root.join("image/image.toml"))?.build)
}

/// The SOURCE_DATE_EPOCH for this build: the environment's if set, else the pinned one.
pub fn source_date_epoch(settings: &BuildSettings) -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number")),
        Err(_) => Ok(settings.source_date_epoch),
    }
}

/// Module names from `kernel/modules.txt` (comments and blank lines dropped).
pub fn modules(root: &Path) -> Result<Vec<String>> {
    let path = root.join("kernel/modules.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

/// The kernel command line from `kernel/cmdline.txt` (one line, whitespace normalised).
pub fn cmdline(root: &Path) -> Result<String> {
    let path = root.join("kernel/cmdline.txt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}
