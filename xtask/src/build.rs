//! Build the guest runtime reproducibly: a static musl binary for the pinned CPU baseline,
//! with every build-machine path remapped so the bytes do not depend on where (or when)
//! the tree is checked out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::pins::BuildSettings;
use crate::util::{cargo, run};

/// What differs between the CPU image's runtime and the GPU image's.
#[derive(Clone, Debug)]
pub struct Flavour {
    /// Rust target triple.
    pub target: String,
    /// `-C target-cpu`.
    pub target_cpu: String,
    /// Cargo features of `chrysalis-runtime` (comma-separated; empty for none).
    pub features: String,
    /// The C compiler for the target (for `ring`), a recorded build input.
    pub cc: String,
    /// Extra environment for the build (the GPU image's nvcc), on top of the cleared one.
    pub env: Vec<(String, String)>,
    /// Extra directories the linker searches (`-Lnative=`): the CUDA libraries the `cuda`
    /// build links against. Search paths are not recorded in the binary.
    pub link_dirs: Vec<PathBuf>,
}

impl Flavour {
    /// The CPU image's: static musl, no features.
    pub fn cpu(settings: &BuildSettings) -> Self {
        Flavour {
            target: settings.target.clone(),
            target_cpu: settings.target_cpu.clone(),
            features: String::new(),
            cc: MUSL_CC.into(),
            env: Vec::new(),
            link_dirs: Vec::new(),
        }
    }
}

/// Build `chrysalis-runtime` in release mode into `target_dir`; return the binary's path.
///
/// What could make the bytes depend on the build machine is pinned or removed here:
/// - the environment: the build runs with a cleared environment (only what finds the
///   toolchain and the registry is kept), so host `CFLAGS`, `CC`, `RUSTFLAGS`, locale, time
///   zone or compiler caches never reach it; the C compiler for the musl target is named
///   explicitly (`x86_64-linux-musl-gcc`, Debian's musl-tools; its version is a recorded
///   build input);
/// - cargo configuration outside this tree (`~/.cargo/config.toml` may set profile options,
///   a linker or rustflags): every release-profile setting that shapes code is set through
///   `CARGO_PROFILE_RELEASE_*`, which outranks config files, and the rustflags through
///   `CARGO_ENCODED_RUSTFLAGS`, which replaces all others;
/// - paths: the cargo home, each registry's source directory (its name depends on the
///   registry or mirror configured) and the target directory are remapped to fixed names,
///   and the source tree to `/chrysalis` (through the wrapper below);
/// - the number of cores and `-j`: codegen units are fixed, so partitioning does not follow
///   the machine.
pub fn runtime(root: &Path, target_dir: &Path, flavour: &Flavour, sde: u64) -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // Fetch first, with the full environment (proxies, registry tokens), so that the
    // registry source directories exist and the build itself runs offline.
    run(cargo().current_dir(root).args(["fetch", "--locked", "--target", &flavour.target]))
        .context("cargo fetch --locked (the runtime's dependencies)")?;
    // The source tree's remap goes to the workspace crates only (through the wrapper below):
    // dependencies then get the same flags wherever the tree lives, so a second build from
    // another directory into the same target directory reuses them. Later remaps win in
    // rustc, so the per-registry ones come after the cargo home's.
    let mut flags = vec![
        format!("-Ctarget-cpu={}", flavour.target_cpu),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
    ];
    for dir in registry_source_dirs(&cargo_home)? {
        flags.push(format!("--remap-path-prefix={}=/cargo/registry/src/crates.io", dir.display()));
    }
    flags.extend(flavour.link_dirs.iter().map(|d| format!("-Lnative={}", d.display())));
    // Cargo hashes the workspace wrapper's *path* into the `-C metadata` of every workspace
    // crate (and so into symbol names and code layout): a wrapper at `<tree>/target/debug/xtask`
    // made the runtime depend on the checkout's directory. The wrapper is therefore named
    // by a fixed bare name, found through PATH in a directory that links to this binary.
    let me = std::env::current_exe().context("locating the xtask binary (the workspace rustc wrapper)")?;
    let wrapper_dir = target_dir.join("rustc-wrapper");
    std::fs::create_dir_all(&wrapper_dir).with_context(|| format!("creating {}", wrapper_dir.display()))?;
    let link = wrapper_dir.join(WRAPPER_NAME);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&me, &link).with_context(|| format!("linking {} to {}", link.display(), me.display()))?;
    // The flavour may bring its own PATH (the private nvcc first); the wrapper goes before it.
    let base_path = flavour.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.into()).or_else(|| std::env::var_os("PATH"));
    let path = std::env::join_paths(
        std::iter::once(wrapper_dir.clone())
            .chain(base_path.map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default()),
    )
    .context("building PATH for the rustc wrapper")?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "--offline", "-p", "chrysalis-runtime", "--bin", "chrysalis-runtime"])
        .args(["--target", &flavour.target])
        .env_clear();
    if !flavour.features.is_empty() {
        cmd.args(["--features", &flavour.features]);
    }
    for (k, v) in std::env::vars_os() {
        if KEEP_ENV.iter().any(|keep| k == *keep) {
            cmd.env(&k, &v);
        }
    }
    let target_env = flavour.target.replace('-', "_");
    cmd.env("CARGO_HOME", &cargo_home)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("PATH", &path)
        .env("RUSTC_WORKSPACE_WRAPPER", WRAPPER_NAME)
        .env(WRAP_ROOT_ENV, root)
        .env("SOURCE_DATE_EPOCH", sde.to_string())
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env(format!("CC_{target_env}"), &flavour.cc)
        .env(format!("CFLAGS_{target_env}"), "")
        .env("CARGO_TERM_PROGRESS_WHEN", "never");
    for (k, v) in RELEASE_PROFILE {
        cmd.env(format!("CARGO_PROFILE_RELEASE_{k}"), v);
    }
    cmd.envs(flavour.env.iter().filter(|(k, _)| k != "PATH").map(|(k, v)| (k, v)));
    run(&mut cmd).with_context(|| format!("building the runtime (cargo build --release --target {})", flavour.target))?;
    Ok(target_dir.join(&flavour.target).join("release/chrysalis-runtime"))
}

/// The name the workspace rustc wrapper (this binary) is run by, through PATH.
const WRAPPER_NAME: &str = "chrysalis-rustc-wrapper";

/// The C compiler for the musl target (ring's C and assembly): Debian's musl-tools.
pub const MUSL_CC: &str = "x86_64-linux-musl-gcc";

/// Environment variables the image build keeps: what finds the toolchain (rustup), the
/// cargo home and the network. Everything else is cleared.
const KEEP_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "CARGO_HOME",
    "CARGO_BUILD_JOBS",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// The release profile of the image, set through the environment so that no cargo config
/// file outside the tree can change it (they outrank `Cargo.toml`'s `[profile.release]`).
const RELEASE_PROFILE: &[(&str, &str)] = &[
    ("OPT_LEVEL", "3"),
    ("DEBUG", "false"),
    ("DEBUG_ASSERTIONS", "false"),
    ("OVERFLOW_CHECKS", "false"),
    ("LTO", "false"),
    ("PANIC", "unwind"),
    ("INCREMENTAL", "false"),
    ("CODEGEN_UNITS", "16"),
    ("STRIP", "symbols"),
    ("RPATH", "false"),
    ("SPLIT_DEBUGINFO", "off"),
];

/// `$CARGO_HOME/registry/src/*`: one directory per registry, named after the registry (or
/// the mirror that replaces it) and a hash of its URL.
fn registry_source_dirs(cargo_home: &Path) -> Result<Vec<PathBuf>> {
    let src = cargo_home.join("registry/src");
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&src) {
        for e in entries {
            let e = e.with_context(|| format!("listing {}", src.display()))?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    dirs.sort();
    Ok(dirs)
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
