//! Build the guest runtime reproducibly: a static musl binary for the pinned CPU baseline,
//! with every build-machine path remapped so the bytes do not depend on where (or when)
//! the tree is checked out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::pins::BuildSettings;
use crate::util::{cargo, run};

/// Build `chrysalis-runtime` in release mode into `target_dir`; return the binary's path.
pub fn runtime(root: &Path, target_dir: &Path, settings: &BuildSettings, sde: u64) -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let flags = [
        format!("-Ctarget-cpu={}", settings.target_cpu),
        format!("--remap-path-prefix={}=/chrysalis", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
    ];
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "--locked", "-p", "chrysalis-runtime", "--bin", "chrysalis-runtime"])
        .args(["--target", &settings.target])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .env_remove("RUSTFLAGS"))
    .context("building the runtime (cargo build --release --target x86_64-unknown-linux-musl)")?;
    Ok(target_dir.join(&settings.target).join("release/chrysalis-runtime"))
}
