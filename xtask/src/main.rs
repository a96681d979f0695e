//! `cargo xtask`: one entry point for building, reproducing, booting, benchmarking and
//! testing Chrysalis. Every command prints `[xtask]` progress lines and fails with a hint.
#![forbid(unsafe_code)]

mod apt;
mod bench;
mod build;
mod ci;
mod demo;
mod deps;
mod expected;
mod firmware;
mod flags;
mod gpu;
mod image;
mod k8s;
mod kernel;
mod measure;
mod package;
mod pins;
mod repro;
mod run;
mod test;
mod util;

use anyhow::Result;
use clap::Parser;

use flags::{Cli, Cmd, GpuCmd};

fn run_gpu(root: &std::path::Path, what: GpuCmd) -> Result<()> {
    match what {
        GpuCmd::Fetch => {
            for f in gpu::fetch_gpu_inputs(root)? {
                println!("ok  {:<36} {:<30} {:<15} {}", f.package.name, f.package.version, f.package.role, f.package.sha256);
                println!("    {}", f.package.why);
            }
        }
        GpuCmd::Modules { repro } => {
            let b = if repro {
                gpu::check_modules_reproducible(root)?
            } else {
                let base = root.join(".cache/gpu-build");
                gpu::build_nvidia_modules(root, &base.join("a"), &root.join("out/nvidia-modules"))?
            };
            for (name, sha) in &b.modules {
                println!("{sha}  {name}");
            }
            println!("make modules took {:.0} s; modules in {}", b.elapsed.as_secs_f64(), b.out_dir.display());
            if repro {
                println!("reproducible: two builds in different directories are byte-identical");
            }
        }
        GpuCmd::Nvcc => {
            let n = gpu::ensure_nvcc(root)?;
            println!("{} ({})", n.nvcc.display(), n.version);
        }
        GpuCmd::BuildCuda => {
            let t = gpu::build_runtime_cuda(root)?;
            println!("cuda build took {:.0} s", t.as_secs_f64());
        }
        GpuCmd::Typecheck => {
            let t = gpu::typecheck_cuda(root)?;
            println!("cuda type-check (stub nvcc, PTX stubbed) took {:.0} s", t.as_secs_f64());
        }
        GpuCmd::Check { stage, out } => {
            let p = gpu::gpu_check(root, stage, out.as_deref())?;
            println!("{}", p.display());
        }
    }
    Ok(())
}

/// The GPU image's runtime from `--bring-up-only`.
fn gpu_runtime(bring_up_only: bool) -> gpu::image::Runtime {
    if bring_up_only { gpu::image::Runtime::BringUp } else { gpu::image::Runtime::Cuda }
}

fn main() {
    // Cargo runs this binary as the workspace rustc wrapper during image builds.
    if let Some(code) = build::rustc_wrapper_main() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.cmd) {
        eprintln!("[xtask] error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    let root = util::project_root();
    match cmd {
        Cmd::Image { gpu: true, bring_up_only, out_dir, target_dir, .. } => {
            let mut opts = gpu::image::Options::defaults(&root, gpu_runtime(bring_up_only));
            opts.out_dir = out_dir.unwrap_or(opts.out_dir);
            opts.target_dir = target_dir.unwrap_or(opts.target_dir);
            gpu::image::report(&gpu::image::build(&root, &opts)?);
            Ok(())
        }
        Cmd::Image { kernel_deb, out_dir, target_dir, .. } => {
            let mut opts = image::Options::defaults(&root);
            opts.kernel_deb = kernel_deb;
            opts.out_dir = out_dir.unwrap_or(opts.out_dir);
            opts.target_dir = target_dir.unwrap_or(opts.target_dir);
            let m = image::build(&root, &opts)?;
            for a in &m.artifacts {
                println!("{:<32} {:>10} B  sha256 {}", a.name, a.hashes.size, a.hashes.sha256);
            }
            util::say(format!("image written to {}", opts.out_dir.display()));
            Ok(())
        }
        Cmd::Demo { prompt, max_tokens } => demo::run(&root, &prompt, max_tokens),
        Cmd::Repro { gpu: true, bring_up_only, .. } => repro::run_gpu(&root, gpu_runtime(bring_up_only)),
        Cmd::Repro { kernel_deb, .. } => repro::run(&root, kernel_deb, repro::Isolation::SeparateTargets),
        Cmd::Package { log, log_key, gpu } => package::run(&root, log.as_deref().zip(log_key.as_deref()), gpu),
        Cmd::Expected { update } => {
            image::build(&root, &image::Options::defaults(&root))?;
            let out = root.join("out");
            if update { expected::update(&root, &out) } else { expected::check(&root, &out) }
        }
        Cmd::Run(args) => run::run(&root, args),
        Cmd::Test { no_repro } => test::run_all(&root, no_repro),
        Cmd::Ci { no_repro } => ci::run_all(&root, no_repro),
        Cmd::Firmware { verify, print_hashes } => {
            if verify {
                let s = firmware::verify_firmware(&root)?;
                println!("firmware rebuilt from source in {s} s: every image matches its pin");
            } else if print_hashes {
                firmware::print_hashes(&root)?;
            } else {
                let p = firmware::ensure_firmware(&root)?;
                println!("ovmf-amdsev   {}", p.amd_sev.display());
                println!("ovmf-inteltdx {}", p.intel_tdx.display());
            }
            Ok(())
        }
        Cmd::Measure { gpu, bring_up_only } => measure::run(&root, gpu.then_some(gpu_runtime(bring_up_only))),
        Cmd::Models => {
            let python = deps::ensure_venv(&root)?;
            let dir = deps::ensure_models(&root, &python)?;
            println!("{}", dir.display());
            Ok(())
        }
        Cmd::KvmProbe { redo } => {
            let kernel = root.join("out").join(image::KERNEL);
            if !kernel.exists() {
                anyhow::bail!("{} is missing: run `cargo xtask image` first (the probe boots that kernel)", kernel.display());
            }
            let p = chrysalis_e2e::qemu::kvm_probe(&kernel, redo);
            let from = if p.cached { " (cached; --redo probes again)" } else { "" };
            println!("KVM {}: {}{from}", if p.usable { "usable" } else { "not usable, TCG will be used" }, p.detail);
            Ok(())
        }
        Cmd::Gpu { what } => run_gpu(&root, what),
        Cmd::Bench { which } => bench::run(&root, which),
        Cmd::K8s(args) => k8s::run(&root, args),
    }
}
