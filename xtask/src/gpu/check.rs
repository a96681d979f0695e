//! The GPU check (see kernel/README.md, "GPU check"), in two stages: `prepare` builds
//! the CUDA test and bench binaries here into [`GPU_CHECK_DIR`]; `run`, on a machine with a
//! GPU that received that folder, runs them and writes `results.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};

use super::nvcc::ensure_nvcc;
use crate::util::{cargo, output, run};

/// Folder (relative to the repository root) that `gpu-check prepare` fills and the GPU
/// machine receives through the device tool's `carry`.
pub const GPU_CHECK_DIR: &str = "out/gpu-check";
/// Most bytes the carried folder may hold (the device tool carries 64 MiB in all).
pub const GPU_CHECK_MAX_BYTES: u64 = 60 << 20;

/// Which half of the GPU check to run (`prepare` / `run` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuCheckStage {
    /// On the build machine: compile the CUDA test and bench binaries into [`GPU_CHECK_DIR`].
    Prepare,
    /// On the GPU machine: run them and write the results file.
    Run,
}

/// The GPU check: build with `cuda` here, then on a GPU machine run the inference
/// correctness tests with `CHRYSALIS_TEST_DEVICE=cuda` (GPU output against the CPU
/// reference) and `bench infer --device cuda`, writing `results.json` to `$OUT` (or to
/// `out_dir`). Returns the prepared folder or the results file.
pub fn gpu_check(root: &Path, stage: GpuCheckStage, out_dir: Option<&Path>) -> Result<PathBuf> {
    match stage {
        GpuCheckStage::Prepare => prepare(root),
        GpuCheckStage::Run => run_check(root, out_dir),
    }
}

/// Compile the CUDA test binaries and xtask, copy them (debug info stripped) and libcudart
/// into [`GPU_CHECK_DIR`], and keep the folder within [`GPU_CHECK_MAX_BYTES`].
fn prepare(root: &Path) -> Result<PathBuf> {
    let dir = root.join(GPU_CHECK_DIR);
    let nvcc = ensure_nvcc(root)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("bin"))?;
    let json = output(
        cargo()
            .current_dir(root)
            .args(["test", "-p", "chrysalis-runtime", "--features", "cuda", "--release", "--no-run"])
            .args(["--message-format=json"])
            .envs(nvcc.cargo_env()),
    )
    .context("cargo test --no-run --features cuda")?;
    let tests = test_executables(&json);
    run(cargo().current_dir(root).args(["build", "-p", "xtask", "--release"])).context("cargo build -p xtask --release")?;
    let mut total = 0u64;
    for exe in tests.iter().chain(std::iter::once(&root.join("target/release/xtask"))) {
        let name = exe.file_name().ok_or_else(|| anyhow!("bad path {}", exe.display()))?;
        let dst = dir.join("bin").join(name);
        fs::copy(exe, &dst).with_context(|| format!("copying {}", exe.display()))?;
        let _ = Command::new("strip").arg("--strip-debug").arg(&dst).status();
        total += fs::metadata(&dst)?.len();
    }
    // libcudart is tiny and linked by candle-kernels; the big CUDA libraries
    // (cuBLAS) must come from the GPU machine's CUDA installation.
    let cudart = "libcudart.so.12";
    fs::copy(fs::canonicalize(nvcc.lib_dir.join(cudart))?, dir.join(cudart))?;
    total += fs::metadata(dir.join(cudart))?.len();
    ensure!(
        total <= GPU_CHECK_MAX_BYTES,
        "{GPU_CHECK_DIR} holds {total} bytes, over the {GPU_CHECK_MAX_BYTES}-byte carry budget"
    );
    Ok(dir)
}

/// The test executables in `cargo test --no-run --message-format=json` output.
fn test_executables(json: &str) -> Vec<PathBuf> {
    let mut tests = Vec::new();
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(exe) = v.get("executable").and_then(|e| e.as_str())
            && v.pointer("/profile/test").and_then(|t| t.as_bool()) == Some(true)
        {
            tests.push(PathBuf::from(exe));
        }
    }
    tests
}

/// Exit status and output of a finished command, or why it could not start, as JSON.
fn outcome(o: std::io::Result<std::process::Output>) -> serde_json::Value {
    match o {
        Ok(o) => serde_json::json!({
            "status": o.status.code(),
            "stdout": String::from_utf8_lossy(&o.stdout),
            "stderr": String::from_utf8_lossy(&o.stderr),
        }),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> String {
    let skip = text.chars().count().saturating_sub(n);
    text.chars().skip(skip).collect()
}

/// On the GPU machine: probe the driver and libraries, run the prepared test binaries and
/// `bench infer --device cuda`, and write `results.json`.
fn run_check(root: &Path, out_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = root.join(GPU_CHECK_DIR);
    let out = match out_dir {
        Some(o) => o.to_path_buf(),
        None => PathBuf::from(std::env::var("OUT").unwrap_or_else(|_| dir.display().to_string())),
    };
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = serde_json::Map::new();
    let probe = |cmd: &str, args: &[&str]| outcome(Command::new(cmd).args(args).output());
    results.insert(
        "nvidia_smi".into(),
        probe("nvidia-smi", &["--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv"]),
    );
    results.insert("cc_mode".into(), probe("nvidia-smi", &["conf-compute", "-f"]));
    results.insert(
        "libraries".into(),
        probe("sh", &["-c", "ldconfig -p | grep -E 'libcuda.so|libcublas|libcurand|libnvrtc' || true"]),
    );
    let ld = format!("{}:{}", dir.display(), std::env::var("LD_LIBRARY_PATH").unwrap_or_default());
    let mut test_results = Vec::new();
    let bin_dir = dir.join("bin");
    let mut bins: Vec<PathBuf> = fs::read_dir(&bin_dir)
        .with_context(|| format!("reading {} (run `gpu check prepare` first)", bin_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    bins.sort();
    for exe in bins.iter().filter(|p| p.file_name().is_some_and(|n| n != "xtask")) {
        let start = Instant::now();
        let o = Command::new(exe)
            .args(["--test-threads=1"])
            .current_dir(root.join("runtime"))
            .env("CHRYSALIS_TEST_DEVICE", "cuda")
            .env("LD_LIBRARY_PATH", &ld)
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        test_results.push(serde_json::json!({
            "binary": exe.file_name().map(|n| n.to_string_lossy().into_owned()),
            "status": o.status.code(), "seconds": start.elapsed().as_secs_f64(), "output_tail": tail(&text, 4000),
        }));
    }
    results.insert("tests".into(), serde_json::Value::Array(test_results));
    let bench = Command::new(dir.join("bin/xtask"))
        .args(["bench", "infer", "--device", "cuda", "--json"])
        .current_dir(root)
        .env("LD_LIBRARY_PATH", &ld)
        .output();
    results.insert("bench_infer".into(), outcome(bench));
    let path = out.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&serde_json::Value::Object(results))?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn stage_parses_as_a_typed_argument() {
        assert_eq!(GpuCheckStage::from_str("prepare", false), Ok(GpuCheckStage::Prepare));
        assert_eq!(GpuCheckStage::from_str("run", false), Ok(GpuCheckStage::Run));
        assert!(GpuCheckStage::from_str("build", false).is_err());
        let names: Vec<String> = GpuCheckStage::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        assert_eq!(names, ["prepare", "run"]);
    }

    #[test]
    fn test_executables_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/infer-1"}
{"reason":"compiler-artifact","profile":{"test":false},"executable":"/t/bin"}
{"reason":"compiler-artifact","profile":{"test":true},"executable":null}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(test_executables(json), [PathBuf::from("/t/infer-1")]);
    }

    #[test]
    fn tail_keeps_the_last_chars() {
        assert_eq!(tail("héllo", 3), "llo");
        assert_eq!(tail("hé", 10), "hé");
    }
}
