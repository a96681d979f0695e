//! The command line of `cargo xtask`: every subcommand and its typed arguments, in one
//! place (as in rust-analyzer's xtask). `main.rs` dispatches; each command lives in its module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{bench, gpu, k8s, run};

/// Chrysalis build automation.
#[derive(Parser)]
#[command(name = "cargo xtask")]
pub struct Cli {
    #[command(subcommand)]
    /// The command.
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
        /// Build the GPU image instead (out/gpu/: generic kernel, NVIDIA modules, GSP
        /// firmware, the CUDA runtime and the libraries it loads); see kernel/README.md.
        #[arg(long, conflicts_with = "kernel_deb")]
        gpu: bool,
        /// With --gpu: the runtime without candle's CUDA kernels (GPU bring-up and
        /// attestation, inference on the CPU; no nvcc needed) into out/gpu-bringup/.
        #[arg(long, requires = "gpu")]
        bring_up_only: bool,
    },
    /// Build the image twice and compare every artifact: here, and as an independent rebuild
    /// (a copy of the tree elsewhere, its own xtask process, another CARGO_HOME and target
    /// directory, -j1, umask 077, another locale and time zone, later).
    Repro {
        /// Use this copy of the pinned kernel package instead of downloading it.
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
        /// The GPU image instead (build 2 downloads the pinned packages and builds NVIDIA's
        /// modules again, in its own copy of the tree).
        #[arg(long, conflicts_with = "kernel_deb")]
        gpu: bool,
        /// With --gpu: the bring-up variant (no nvcc needed).
        #[arg(long, requires = "gpu")]
        bring_up_only: bool,
    },
    /// Build the image and compare it with the published expected values (image/expected.json):
    /// every artifact hash and measurement must be equal.
    Expected {
        /// Rewrite image/expected.json from this build (after an intended image change).
        #[arg(long)]
        update: bool,
    },
    /// Package image, manifest, measurements, firmware and an SBOM with SHA256SUMS into
    /// out/release/ (what a provider downloads and an owner rebuilds and compares).
    Package {
        /// Append the release's image-release entry to this transparency log directory
        /// (attest/tlog/README.md; created if it has no checkpoint).
        #[arg(long, value_name = "DIR", requires = "log_key")]
        log: Option<PathBuf>,
        /// The log's private key (`attest log keygen`).
        #[arg(long, value_name = "FILE", requires = "log")]
        log_key: Option<PathBuf>,
        /// Also build and package the GPU image (CUDA runtime, private nvcc: about an hour on
        /// 2 cores) into `out/release/chrysalis-gpu-<version>/`.
        #[arg(long)]
        gpu: bool,
    },
    /// Boot the image in QEMU with the serial console on this terminal.
    Run(run::RunArgs),
    /// Everything CI checks, in order: `cargo fmt --check`, `cargo clippy -D warnings`,
    /// rustdoc with warnings denied, the fuzz targets' build, then `cargo xtask test`.
    /// Installs what it needs; `.ci/run` runs exactly this.
    Ci {
        /// Skip the reproducibility check (one image build instead of two).
        #[arg(long)]
        no_repro: bool,
    },
    /// The whole test suite without the lint stages of `ci` (installs what it needs).
    Test {
        /// Skip the reproducibility check (one image build instead of two).
        #[arg(long)]
        no_repro: bool,
    },
    /// Compute the SEV-SNP / TDX / simulated launch measurements of out/ into
    /// out/measurements.json (build the image first).
    Measure {
        /// The GPU image's instead (out/gpu/measurements.json; build it with image --gpu).
        #[arg(long)]
        gpu: bool,
        /// With --gpu: the bring-up variant's (out/gpu-bringup/).
        #[arg(long, requires = "gpu")]
        bring_up_only: bool,
    },
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
    /// and the one-shot check for a GPU machine (see kernel/README.md, "The GPU image").
    Gpu {
        #[command(subcommand)]
        what: GpuCmd,
    },
    /// Kubernetes manifests for a fleet into out/k8s/, from the pinned definition: a KubeVirt
    /// VirtualMachine (TDX) and a node-agent DaemonSet (SEV-SNP); see FLEET.md.
    K8s(k8s::K8sArgs),
    /// Benchmarks (results under out/bench/).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

#[derive(Subcommand)]
pub enum GpuCmd {
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
    /// Type-check and lint the `cuda` Rust code with a STUB nvcc (PTX stubbed, nothing built
    /// for a GPU; no CUDA toolchain needed). CI runs it.
    Typecheck,
    /// `prepare` here, then `run` on a GPU machine: CUDA correctness + bench, results to a file.
    Check {
        /// prepare (here: build and pack) or run (on the GPU machine).
        #[arg(value_enum)]
        stage: gpu::GpuCheckStage,
        /// Where results go.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}
