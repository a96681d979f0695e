//! `cargo xtask`: one entry point for building, reproducing, booting and testing Chrysalis.
#![forbid(unsafe_code)]

mod gpu;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \x20 gpu-fetch                 fetch and verify the pinned GPU packages (kernel/gpu-packages.toml)\n\
         \x20 gpu-modules [--repro]     build NVIDIA's open kernel modules (twice with --repro)\n\
         \x20 gpu-nvcc                  unpack and check the private nvcc\n\
         \x20 gpu-build-cuda            cargo build -p chrysalis-runtime --features cuda --release\n\
         \x20 gpu-check prepare|run [--out DIR]   see kernel/README-gpu.md"
    );
    std::process::exit(2)
}

/// The repository root: `CHRYSALIS_ROOT`, else where this xtask was built from, else the
/// current directory (a copied binary on the GPU machine runs from the repository root).
fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("CHRYSALIS_ROOT") {
        return PathBuf::from(r);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("kernel").is_dir() {
        built
    } else {
        PathBuf::from(".")
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = std::fs::canonicalize(repo_root()).context("locating the repository root")?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["gpu-fetch"] => {
            for f in gpu::fetch_gpu_inputs(&root)? {
                println!(
                    "ok  {:<36} {:<30} {:<15} {}",
                    f.package.name, f.package.version, f.package.role, f.package.sha256
                );
                println!("    {}", f.package.why);
            }
        }
        ["gpu-modules", rest @ ..] => {
            let b = if rest == ["--repro"] {
                gpu::check_modules_reproducible(&root)?
            } else if rest.is_empty() {
                let base = root.join(".cache/gpu-build");
                gpu::build_nvidia_modules(&root, &base.join("a"), &root.join("out/nvidia-modules"))?
            } else {
                usage()
            };
            for (name, sha) in &b.modules {
                println!("{sha}  {name}");
            }
            println!(
                "make modules took {:.0} s; modules in {}",
                b.elapsed.as_secs_f64(),
                b.out_dir.display()
            );
            if rest == ["--repro"] {
                println!("reproducible: two builds in different directories are byte-identical");
            }
        }
        ["gpu-nvcc"] => {
            let n = gpu::ensure_nvcc(&root)?;
            println!("{} ({})", n.nvcc.display(), n.version);
        }
        ["gpu-build-cuda"] => {
            let t = gpu::build_runtime_cuda(&root)?;
            println!("cuda build took {:.0} s", t.as_secs_f64());
        }
        ["gpu-check", stage, rest @ ..] => {
            let stage = match *stage {
                "prepare" => gpu::GpuCheckStage::Prepare,
                "run" => gpu::GpuCheckStage::Run,
                _ => usage(),
            };
            let out = match rest {
                [] => None,
                ["--out", dir] => Some(PathBuf::from(dir)),
                _ => usage(),
            };
            let p = gpu::gpu_check(&root, stage, out.as_deref())?;
            println!("{}", p.display());
        }
        [] => usage(),
        [other, ..] => bail!("unknown command {other}"),
    }
    Ok(())
}
