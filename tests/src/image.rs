//! Locating the built image for the tests. The README's test command (`cargo xtask test`)
//! builds it first; run alone, a test fails with that hint instead of skipping.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The image directory: `$CHRYSALIS_OUT` or `<root>/out`, checked to contain an image.
pub fn out_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CHRYSALIS_OUT").map(PathBuf::from).unwrap_or_else(|| root().join("out"));
    for f in ["vmlinuz", "initramfs.cpio.gz", "cmdline", "manifest.json"] {
        if !dir.join(f).exists() {
            bail!(
                "{} has no {f}: build the image first (`cargo xtask image`, or run the suite with `cargo xtask test`)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// A fresh scratch directory for one test's VM (serial log, sockets, disks).
pub fn scratch(name: &str) -> Result<PathBuf> {
    let dir = root().join("target/e2e").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
