//! `cargo xtask`: one entry point for building, reproducing, booting, benchmarking and
//! testing Chrysalis. Every command prints `[xtask]` progress lines and fails with a hint.
#![forbid(unsafe_code)]

mod bench;
mod build;
mod demo;
mod deps;
mod expected;
mod firmware;
mod gpu;
mod image;
mod kernel;
mod launch;
mod measure;
mod pins;
mod release;
mod repro;
mod run;
mod test;
mod util;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Chrysalis build automation.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The main job end to end: build, seal SmolLM2, boot in QEMU (simulated TEE), verify,
    /// release the key, stream a chat answer, shut down.
    Demo {
        /// The user's message.
        #[arg(long, default_value = "In one sentence, what is confidential computing?")]
        prompt: String,
        /// Most tokens to generate (default 32 under KVM, 12 under TCG, where a 135M model
        /// makes a few tokens a minute).
        #[arg(long)]
        max_tokens: Option<u32>,
    },
    /// Build the image into out/: kernel, initramfs, cmdline, manifest.json.
    Image {
        /// Use this copy of the pinned kernel package instead of downloading it.
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
        /// Where the artifacts go (default out/).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Cargo target directory of the runtime build (default target/).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Build the image twice and compare every artifact: here, and as an independent rebuild
    /// (a copy of the tree elsewhere, its own xtask process, another CARGO_HOME and target
    /// directory, -j1, umask 077, another locale and time zone, later).
    Repro {
        /// Use this copy of the pinned kernel package instead of downloading it.
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
    },
    /// Build the image and compare it with the published expected values (image/expected.json):
    /// every artifact hash and measurement must be equal.
    Expected {
        /// Rewrite image/expected.json from this build (after an intended image change).
        #[arg(long)]
        update: bool,
    },
    /// Package image, manifest, measurements, firmware and an SBOM with SHA256SUMS into
    /// out/release/.
    Release,
    /// Boot the image in QEMU with the serial console on this terminal.
    Run(run::RunArgs),
    /// The whole test suite (installs what it needs; this is what CI runs).
    Test {
        /// Skip the reproducibility check (one image build instead of two).
        #[arg(long)]
        no_repro: bool,
    },
    /// Compute the SEV-SNP / TDX / simulated launch measurements of out/ into
    /// out/measurements.json (build the image first).
    Measure,
    /// Make the test/demo models under .cache/models (tiny Llama/Qwen2, SmolLM2-135M).
    Models,
    /// Say whether KVM can run the guest on this host (probed in a few seconds by booting the
    /// image's kernel, then cached per host; `--redo` probes again).
    KvmProbe {
        /// Probe again instead of using the cached answer.
        #[arg(long)]
        redo: bool,
    },
    /// The pinned confidential-VM firmware (OVMF AmdSev, TDVF): locate/verify it, or rebuild
    /// it from the pinned edk2 sources and compare with the pins (--verify, ~15-20 min).
    Firmware {
        /// Rebuild from source and compare every image with its pin.
        #[arg(long)]
        verify: bool,
        /// Rebuild and print the hashes (for updating the pins).
        #[arg(long)]
        print_hashes: bool,
    },
    /// The GPU profile: pinned NVIDIA packages, open kernel modules, private nvcc, `cuda` build,
    /// and the one-shot check for a GPU machine (see kernel/README-gpu.md).
    Gpu {
        #[command(subcommand)]
        what: GpuCmd,
    },
    /// Benchmarks (results under out/bench/).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[derive(Subcommand)]
enum GpuCmd {
    /// Fetch and verify the pinned GPU packages (kernel/gpu-packages.toml).
    Fetch,
    /// Build NVIDIA's open kernel modules against the generic kernel's headers.
    Modules {
        /// Build twice in different directories and compare.
        #[arg(long)]
        repro: bool,
    },
    /// Unpack and check the private nvcc.
    Nvcc,
    /// `cargo build -p chrysalis-runtime --features cuda --release` with the private nvcc.
    BuildCuda,
    /// `prepare` here, then `run` on a GPU machine: CUDA correctness + bench, results to a file.
    Check {
        /// prepare | run
        stage: String,
        /// Where results go.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

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
        GpuCmd::Check { stage, out } => {
            let stage = match stage.as_str() {
                "prepare" => gpu::GpuCheckStage::Prepare,
                "run" => gpu::GpuCheckStage::Run,
                other => anyhow::bail!("gpu check {other}: expected prepare or run"),
            };
            let p = gpu::gpu_check(root, stage, out.as_deref())?;
            println!("{}", p.display());
        }
    }
    Ok(())
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
        Cmd::Image { kernel_deb, out_dir, target_dir } => {
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
        Cmd::Repro { kernel_deb } => repro::run(&root, kernel_deb, repro::Isolation::SeparateTargets),
        Cmd::Release => release::run(&root),
        Cmd::Expected { update } => {
            image::build(&root, &image::Options::defaults(&root))?;
            let out = root.join("out");
            if update { expected::update(&root, &out) } else { expected::check(&root, &out) }
        }
        Cmd::Run(args) => run::run(&root, args),
        Cmd::Test { no_repro } => test::run_all(&root, no_repro),
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
        Cmd::Measure => measure::run(&root),
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
    }
}
