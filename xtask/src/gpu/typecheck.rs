//! `cargo xtask gpu typecheck`: type-check (and lint) every line of Rust behind the runtime's
//! `cuda` feature without a CUDA toolchain, cheap enough for CI.
//!
//! What needs nvcc in `cargo check --features cuda`, and why a stub is honest there:
//!
//! - cudarc's build script (feature `cuda-version-from-build-system`) runs `nvcc --version`
//!   from PATH and turns the release into a `cuda-12040` cfg, which selects the bindings
//!   that are compiled. The stub answers with the pinned release ([`CUDA_RELEASE`]), so the
//!   same bindings are checked as in the real build. cudarc loads the CUDA libraries at run
//!   time (`dynamic-loading`): nothing else at build time.
//! - candle-kernels' build script (through `cudaforge`) compiles its `.cu` files to PTX with
//!   `nvcc --ptx` and generates `pub const X: &str = include_str!("X.ptx")`, and builds
//!   `libmoe.a` with `nvcc -c` / `nvcc --lib`. The Rust code only embeds the PTX as string
//!   constants and declares the library's `extern "C"` functions; neither the types nor the
//!   borrow checker see what is inside, and `cargo check` links nothing. The stub writes a
//!   one-comment `.ptx` per kernel and an empty archive, so these build scripts succeed
//!   without compiling any CUDA. That is the 24 minutes `nvcc` takes for sm_90a, skipped.
//!
//! What this does not check: that candle's CUDA C++ compiles, that the PTX loads, anything at
//! run time. Those stay with `cargo xtask gpu check prepare` (real nvcc) and `gpu check run`
//! (a GPU). Nothing it produces can reach an image or a GPU check: it only writes `.rmeta`
//! files and build-script outputs into its own target directory
//! (`target/cuda-typecheck`, see [`target_dir`]), which no build reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{COMPUTE_CAP, CUDA_RELEASE};
use crate::util::{cargo, run, say};

/// The stub, relative to the repository root.
pub const STUB_DIR: &str = "xtask/cuda-stub";

/// Features checked: `cuda` (which implies `gpu-evidence`) and the development binary, so
/// that `chrysalis-infer-dev --device cuda` is checked too.
pub const FEATURES: &str = "cuda,dev-server";

/// The type-check's own target directory: `$CARGO_TARGET_DIR/cuda-typecheck` when that is
/// set, else `<root>/target/cuda-typecheck`. Never the directory image or GPU-check builds
/// use (`<root>/target` itself), so stubbed build-script outputs cannot mix with real ones.
pub fn target_dir(root: &Path) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    base.join("cuda-typecheck")
}

/// Environment for cargo: the stub first on PATH and as `NVCC` (cudaforge looks at `NVCC`
/// first, cudarc runs `nvcc` from PATH), the compute capability set so that nothing asks
/// `nvidia-smi`, and the target directory.
pub fn cargo_env(root: &Path) -> Vec<(String, String)> {
    let stub = root.join(STUB_DIR);
    let path = format!("{}:{}", stub.display(), std::env::var("PATH").unwrap_or_default());
    vec![
        ("NVCC".into(), stub.join("nvcc").display().to_string()),
        ("PATH".into(), path),
        ("CUDA_COMPUTE_CAP".into(), COMPUTE_CAP.into()),
        ("CHRYSALIS_STUB_NVCC_RELEASE".into(), CUDA_RELEASE.into()),
        ("CARGO_TARGET_DIR".into(), target_dir(root).display().to_string()),
    ]
}

/// `cargo clippy -p chrysalis-runtime --features cuda,dev-server --all-targets -D warnings`
/// with the stub nvcc; returns the wall time.
pub fn typecheck_cuda(root: &Path) -> Result<Duration> {
    let stub = root.join(STUB_DIR).join("nvcc");
    ensure!(stub.is_file(), "{} missing", stub.display());
    say(format!(
        "type-checking the `cuda` feature with the STUB nvcc ({}): PTX is stubbed, no CUDA is compiled, \
         nothing is built for a GPU; target dir {}",
        stub.display(),
        target_dir(root).display()
    ));
    let start = Instant::now();
    run(cargo()
        .current_dir(root)
        .args(["clippy", "-p", "chrysalis-runtime", "--features", FEATURES, "--all-targets", "--locked"])
        .args(["--", "-D", "warnings"])
        .envs(cargo_env(root)))
    .context("cargo clippy --features cuda (stub nvcc) failed: a type error or lint in code behind `cuda`")?;
    let took = start.elapsed();
    say(format!(
        "`cuda` Rust code type-checked and linted in {:.0} s (PTX stubbed: candle's CUDA kernels were NOT compiled; \
         `cargo xtask gpu check prepare` does that with the real nvcc)",
        took.as_secs_f64()
    ));
    Ok(took)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn env_puts_the_stub_first_in_its_own_target_dir() {
        let r = root();
        let env: std::collections::BTreeMap<_, _> = cargo_env(&r).into_iter().collect();
        assert!(env["NVCC"].ends_with("xtask/cuda-stub/nvcc"), "{}", env["NVCC"]);
        assert!(env["PATH"].starts_with(&r.join(STUB_DIR).display().to_string()), "{}", env["PATH"]);
        assert_eq!(env["CUDA_COMPUTE_CAP"], COMPUTE_CAP);
        assert!(env["CARGO_TARGET_DIR"].ends_with("cuda-typecheck"), "{}", env["CARGO_TARGET_DIR"]);
    }

    /// The stub's `--version` in the layout cudarc parses (4th line, `release X.Y`), and its
    /// `--ptx` writes one placeholder per input where cudaforge expects it.
    #[test]
    fn stub_answers_what_the_build_scripts_ask() -> Result<()> {
        let stub = root().join(STUB_DIR).join("nvcc");
        let v = crate::util::output(Command::new(&stub).arg("--version").env("CHRYSALIS_STUB_NVCC_RELEASE", CUDA_RELEASE))?;
        let line = v.lines().nth(3).unwrap_or_default();
        assert_eq!(line.split(", ").nth(1), Some(format!("release {CUDA_RELEASE}").as_str()), "{v}");
        assert!(v.contains("STUB"), "{v}");

        let dir = std::env::temp_dir().join(format!("chrysalis-stub-nvcc-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        run(Command::new(&stub)
            .args(["-gencode", "arch=compute_90,code=sm_90", "--ptx", "--output-directory"])
            .arg(&dir)
            .args(["-O3", "src/affine.cu", "src/cast.cu"]))?;
        for k in ["affine", "cast"] {
            let ptx = std::fs::read_to_string(dir.join(format!("{k}.ptx")))?;
            assert!(ptx.starts_with("// STUB PTX"), "{ptx}");
        }
        run(Command::new(&stub).args(["--lib", "-o"]).arg(dir.join("libmoe.a")).arg(dir.join("x.o")))?;
        assert_eq!(std::fs::read(dir.join("libmoe.a"))?, b"!<arch>\n");
        assert!(!Command::new(&stub).arg("--fatbin").status()?.success(), "unknown calls must fail");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
