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
    // The source tree's remap goes to the workspace crates only (through the wrapper below):
    // dependencies then get the same flags wherever the tree lives, so a second build from
    // another directory into the same target directory reuses them.
    let flags = [
        format!("-Ctarget-cpu={}", settings.target_cpu),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
    ];
    let me = std::env::current_exe().context("locating the xtask binary (the workspace rustc wrapper)")?;
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "--locked", "-p", "chrysalis-runtime", "--bin", "chrysalis-runtime"])
        .args(["--target", &settings.target])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("RUSTC_WORKSPACE_WRAPPER", &me)
        .env(WRAP_ROOT_ENV, root)
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .env_remove("RUSTFLAGS")
        // A compiler cache in front of rustc (sccache) gave a runtime with different code
        // layout than a plain build of the same tree: the image is always built plainly.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTC_WRAPPER"))
    .context("building the runtime (cargo build --release --target x86_64-unknown-linux-musl)")?;
    Ok(target_dir.join(&settings.target).join("release/chrysalis-runtime"))
}

/// Set for the xtask binary when cargo runs it as `RUSTC_WORKSPACE_WRAPPER`: the source
/// root to remap to `/chrysalis`.
const WRAP_ROOT_ENV: &str = "CHRYSALIS_WRAP_REMAP_ROOT";

/// When this process is cargo's workspace rustc wrapper (`xtask <rustc> <args>...`), run
/// rustc with the source root remapped and return its exit code.
pub fn rustc_wrapper_main() -> Option<i32> {
    let root = std::env::var_os(WRAP_ROOT_ENV)?;
    let mut args = std::env::args_os().skip(1);
    let rustc = args.next()?;
    let args: Vec<_> = args.collect();
    let mut cmd = std::process::Command::new(rustc);
    cmd.args(&args);
    // `rustc -vV` and friends (cargo probing the compiler) take no extra flags.
    if !args.iter().any(|a| a == "-vV" || a == "-") {
        let mut flag = std::ffi::OsString::from("--remap-path-prefix=");
        flag.push(&root);
        flag.push("=/chrysalis");
        cmd.arg(flag);
    }
    match cmd.status() {
        Ok(s) => Some(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask (rustc wrapper): running rustc: {e}");
            Some(1)
        }
    }
}
