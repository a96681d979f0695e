//! `cargo xtask ci`: everything CI checks, in the order that fails fastest — formatting,
//! lints, the `cuda` type-check (stub nvcc), rustdoc, the fuzz targets' build — then the
//! whole test suite ([`crate::test`]).
//! `.ci/run` runs exactly this from a clean clone; the README's test command is this.

use std::path::Path;

use anyhow::{Context, Result};

use crate::util::{Stage, cargo, free_disk, remove_scratch, run, say};
use crate::{deps, gpu, test};

/// Features the workspace is checked with: everything that builds without a GPU toolchain.
/// `cuda` needs nvcc: its Rust code is type-checked and linted with a stub nvcc
/// ([`gpu::typecheck`]), and built for real only by `cargo xtask gpu check prepare`.
const FEATURES: &str = "chrysalis-runtime/dev-server,chrysalis-runtime/gpu-evidence";

/// The fuzz crate (its own workspace and lock file, so fuzzing dependencies stay out of
/// the main lock file).
const FUZZ_MANIFEST: &str = "attest/fuzz/Cargo.toml";
/// Its target directory (a workspace of its own).
const FUZZ_TARGET: &str = "attest/fuzz/target";

/// Run every check, then the test suite.
pub fn run_all(root: &Path, skip_repro: bool) -> Result<()> {
    let total = Stage::start("ci");
    say(format!("disk at the start: {}", free_disk(root)));
    lint(root)?;
    test::run_all(root, skip_repro)?;
    let secs = total.done();
    say(format!("ci passed in {:.1} min", secs / 60.0));
    Ok(())
}

/// The static checks: fmt, clippy, the `cuda` type-check, rustdoc, fuzz build.
pub fn lint(root: &Path) -> Result<()> {
    // libFuzzer (built by libfuzzer-sys) is C++.
    deps::ensure_packages(&["g++"])?;
    step(root, "cargo fmt --check", &["fmt", "--all", "--check"], &[]).context("formatting differs: run `cargo fmt --all`")?;
    step(
        root,
        "cargo clippy -D warnings",
        &["clippy", "--workspace", "--all-targets", "--locked", "--features", FEATURES, "--", "-D", "warnings"],
        &[],
    )?;
    // Every line of Rust behind `cuda`, with candle's PTX stubbed (no CUDA compiled); its own
    // target dir, so about 5 min from cold on 2 cores.
    let stage = Stage::start("cuda type-check (stub nvcc, PTX stubbed)");
    gpu::typecheck_cuda(root)?;
    stage.done();
    remove_scratch(&gpu::typecheck::target_dir(root), "the cuda type-check's target directory")?;
    step(
        root,
        "cargo doc (warnings denied)",
        &["doc", "--workspace", "--no-deps", "--locked", "--features", FEATURES],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    step(root, "fuzz targets build", &["build", "--manifest-path", FUZZ_MANIFEST, "--locked", "--bins"], &[])?;
    remove_scratch(&root.join(FUZZ_TARGET), "the fuzz crate's target directory")?;
    Ok(())
}

fn step(root: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let stage = Stage::start(name);
    let mut cmd = cargo();
    cmd.current_dir(root).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd).with_context(|| format!("{name} failed (see above)"))?;
    stage.done();
    Ok(())
}
