//! `cargo xtask repro`: build the image twice — from the tree itself and from a copy of it
//! in another directory, into different target directories, at different times — and fail
//! unless every artifact is bit-identical. (The test suite shares the target directory so
//! that the dependencies are compiled once; see `Isolation`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::manifest::Manifest;

use crate::image;
use crate::util::{Stage, say};

/// How far apart the two builds are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Different source directories and different target directories: nothing is shared.
    SeparateTargets,
    /// Different source directories, one target directory: the registry dependencies
    /// (compiled with flags that name no source path) are built once and reused; the
    /// workspace crates, the initramfs and everything after are built again. The test
    /// suite uses this to stay within CI's time on two cores.
    SharedDependencies,
}

/// Where build 2 happens (the copy of the tree, its out/, its own target and cargo home),
/// relative to the root.
pub const SCRATCH: &str = "target/repro";

/// Run the reproducibility check.
pub fn run(root: &Path, kernel_deb: Option<PathBuf>, isolation: Isolation) -> Result<()> {
    let base = root.join(SCRATCH);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let kernel_deb = match kernel_deb {
        Some(k) => Some(k),
        None => {
            // Fetch once through the normal path so both builds use the same checked file.
            let pin = crate::pins::kernel(root)?;
            let k = crate::kernel::ensure(&pin, &root.join(".cache/kernel"), None)?;
            Some(k.deb)
        }
    };
    // Build 1 is the ordinary build (this tree, target/, out/), so CI reuses it; build 2 is
    // a copy of the tree in another directory, started later (see `Isolation`).
    let stage = Stage::start(format!("build 1 in {}", root.display()));
    let opts_a = image::Options { kernel_deb: kernel_deb.clone(), ..image::Options::defaults(root) };
    let a = image::build(root, &opts_a)?;
    stage.done();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let src = base.join("src");
    let stage = Stage::start(format!("build 2 in {}", src.display()));
    copy_tree(root, &src)?;
    let target_b = match isolation {
        Isolation::SeparateTargets => base.join("target"),
        Isolation::SharedDependencies => opts_a.target_dir.clone(),
    };
    let opts_b = image::Options { out_dir: base.join("out"), target_dir: target_b, kernel_deb };
    let b = match isolation {
        Isolation::SharedDependencies => {
            let b = image::build(&src, &opts_b)?;
            forget_workspace_fingerprints(&opts_b.target_dir, &crate::pins::image(root)?.target)?;
            b
        }
        Isolation::SeparateTargets => independent_build(&src, &base, &opts_b)?,
    };
    stage.done();
    compare(&a, &b, &opts_a.out_dir, &opts_b.out_dir)?;
    same_measurements(root, &opts_a.out_dir, &opts_b.out_dir)
}

/// Same bytes must give the same published measurements; computing both checks that the
/// measurement code is a pure function of the artifacts too.
fn same_measurements(root: &Path, a: &Path, b: &Path) -> Result<()> {
    let (ma, mb) = (crate::measure::compute(root, a)?, crate::measure::compute(root, b)?);
    if ma != mb {
        bail!("the two builds give different measurements:\n{ma}\n{mb}");
    }
    let v4 = ma["snp"].as_array().and_then(|v| v.first()).cloned().unwrap_or_default();
    say(format!(
        "measurements identical: SNP ({} vCPU {}) {}, TDX MRTD {}, RTMR1 {}, RTMR2 {}",
        v4["vcpus"], v4["vcpu_type"], v4["measurement"], ma["tdx"]["mrtd"], ma["tdx"]["rtmr1"], ma["tdx"]["rtmr2"]
    ));
    Ok(())
}

/// `cargo xtask repro --gpu`: the GPU image built here, then by an independent process in a
/// copy of the tree (isolated as [`independent_build`] says, with its own `.cache`, so the
/// pinned packages are downloaded and NVIDIA's modules built from source again), and
/// compared artifact by artifact and measurement by measurement.
pub fn run_gpu(root: &Path, runtime: crate::gpu::image::Runtime) -> Result<()> {
    use crate::gpu::image::{self as gpu_image, Runtime};
    let base = root.join(SCRATCH_GPU);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let stage = Stage::start(format!("GPU build 1 in {}", root.display()));
    let opts_a = gpu_image::Options::defaults(root, runtime);
    let a = gpu_image::build(root, &opts_a)?.manifest;
    stage.done();
    let src = base.join("src");
    let stage = Stage::start(format!("GPU build 2 in {}", src.display()));
    copy_tree(root, &src)?;
    let (out_b, target_b) = (base.join("out"), base.join("target"));
    let mut extra: Vec<std::ffi::OsString> = vec!["--gpu".into()];
    if runtime == Runtime::BringUp {
        extra.push("--bring-up-only".into());
    }
    let b = independent_image(&src, &base, &out_b, &target_b, &extra)?;
    stage.done();
    compare(&a, &b, &opts_a.out_dir, &out_b)?;
    same_measurements(root, &opts_a.out_dir, &out_b)
}

/// Where `repro --gpu`'s build 2 happens, relative to the root.
pub const SCRATCH_GPU: &str = "target/repro-gpu";

/// After build 2 from the copy into the shared target directory, cargo's fingerprints of the
/// workspace crates list the *copy's* source files, so a later build from the tree would
/// check those for changes and call a stale runtime fresh. Dropping the workspace crates'
/// fingerprints makes the next build compile them again (the registry dependencies stay).
fn forget_workspace_fingerprints(target_dir: &Path, triple: &str) -> Result<()> {
    for dir in [target_dir.join("release/.fingerprint"), target_dir.join(triple).join("release/.fingerprint")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("chrysalis-") {
                std::fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Build 2 of `cargo xtask repro`: what another machine would do, as far as one machine can
/// vary it. Its own `cargo xtask image` process (xtask compiled from the copy), its own
/// CARGO_HOME (the registry downloaded again), its own target directory, one job instead of
/// all cores, umask 077, another locale and time zone.
fn independent_build(src: &Path, base: &Path, opts: &image::Options) -> Result<Manifest> {
    let mut extra = Vec::new();
    if let Some(k) = &opts.kernel_deb {
        extra.push("--kernel-deb".into());
        extra.push(k.clone().into_os_string());
    }
    independent_image(src, base, &opts.out_dir, &opts.target_dir, &extra)
}

/// `cargo xtask image --out-dir OUT --target-dir TARGET EXTRA…` in `src`, isolated as
/// [`independent_build`] says; returns the manifest it wrote.
fn independent_image(src: &Path, base: &Path, out: &Path, target: &Path, extra: &[std::ffi::OsString]) -> Result<Manifest> {
    let cargo_home = base.join("cargo-home");
    std::fs::create_dir_all(&cargo_home)?;
    let mut cmd = Command::new("sh");
    cmd.current_dir(src)
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["xtask", "image", "--out-dir"])
        .arg(out)
        .arg("--target-dir")
        .arg(target)
        .args(extra);
    cmd.env("CARGO_HOME", &cargo_home)
        .env("CARGO_TARGET_DIR", base.join("xtask-target"))
        .env("CARGO_BUILD_JOBS", "1")
        .env("LC_ALL", "C.UTF-8")
        .env("LANG", "de_DE.UTF-8")
        .env("TZ", "Pacific/Kiritimati");
    // The rustup proxies in the usual cargo home stay on PATH; only cargo's own home moves.
    say(format!(
        "build 2: cargo xtask image in {} (CARGO_HOME {}, -j1, umask 077, TZ Pacific/Kiritimati)",
        src.display(),
        cargo_home.display()
    ));
    crate::util::run(&mut cmd).context("the independent build (build 2)")?;
    let bytes = std::fs::read(out.join(image::MANIFEST)).context("reading build 2's manifest")?;
    serde_json::from_slice(&bytes).context("parsing build 2's manifest")
}

/// Copy the committed and untracked-but-not-ignored files of the tree (what a clean clone
/// would have, plus local edits) to `dst`.
fn copy_tree(root: &Path, dst: &Path) -> Result<()> {
    let files = crate::util::output(Command::new("git").arg("-C").arg(root).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]))
    .context("listing source files with git")?;
    for rel in files.split('\0').filter(|f| !f.is_empty()) {
        let from = root.join(rel);
        if !from.is_file() {
            continue;
        }
        let to = dst.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {rel}"))?;
    }
    Ok(())
}

fn compare(a: &Manifest, b: &Manifest, out_a: &Path, out_b: &Path) -> Result<()> {
    let mut differ = Vec::new();
    println!("{:<32} {:<64}  build 2", "artifact", "sha256 (build 1)");
    for art in &a.artifacts {
        let other = b.artifact(&art.name);
        let same = other.map(|o| o.hashes == art.hashes).unwrap_or(false);
        println!("{:<32} {}  {}", art.name, art.hashes.sha256, if same { "identical" } else { "DIFFERENT" });
        if !same {
            differ.push(art.name.clone());
        }
    }
    for name in [image::KERNEL, image::INITRAMFS, image::CMDLINE, image::MANIFEST] {
        let (x, y) = (std::fs::read(out_a.join(name))?, std::fs::read(out_b.join(name))?);
        if x != y && !differ.contains(&name.to_owned()) {
            differ.push(name.to_owned());
        }
    }
    if !differ.is_empty() {
        bail!("not reproducible: {} differ between the two builds", differ.join(", "));
    }
    say("reproducible: every artifact is bit-identical across the two builds");
    Ok(())
}
