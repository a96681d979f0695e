//! `cargo xtask bench`: benchmarks that print ratios against a reference measured in the
//! same run and write machine-readable results to `out/bench/<name>.json`.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;

pub mod bigmodel;
pub mod boot;
pub mod channel;
pub mod e2e;
pub mod fleet;
pub mod infer;
pub mod serve;
pub mod unseal;

/// Which benchmark.
#[derive(Subcommand)]
pub enum Which {
    /// QEMU start → kernel → /init → READY, median of N boots, TCG (and KVM when usable).
    Boot {
        /// Boots per accelerator.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Inference on SmolLM2-135M Q4_1: prompt/generated tokens/s, time to first token, peak
    /// RSS, next to llama.cpp and PyTorch on the same weights in the same run.
    Infer {
        /// Arguments: [--runs N] [--gen N] [--prompt-tokens N] [--threads N] [--variants ...]
        /// [--no-llama-cpp] [--no-torch].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot to first token with the owner's verification and key release in the loop,
    /// per stage, median of N runs (simulated TEE, SmolLM2 sealed on a disk).
    E2e {
        /// Runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Serving under load: aggregate generated tokens/s, time to first token and
    /// inter-token latency (p50/p95), peak RSS at concurrency 1, 4, 8 and 16, against
    /// llama.cpp's llama-server on the same GGUF in the same run.
    Serve {
        /// Arguments: [--concurrency 1,4,8,16] [--per-client N] [--min-requests N]
        /// [--max-tokens N] [--threads N] [--no-llama-server].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The end-user channel's cost: time to first token and tokens/s through `attest proxy`
    /// (sealed requests and responses) against the plain API, same VM, same run.
    Channel {
        /// Requests per path.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tokens generated per request.
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
        /// Serve the tiny seeded Llama instead of SmolLM2 (fast under TCG).
        #[arg(long)]
        tiny: bool,
    },
    /// The attested router: aggregate tokens/s with 1, 2 and 3 nodes (tiny model, simulated
    /// TEE) and the latency it adds per request against asking one node directly.
    Fleet {
        /// Concurrent clients in the throughput runs.
        #[arg(long, default_value_t = 6)]
        clients: usize,
        /// Requests per client per run.
        #[arg(long, default_value_t = 6)]
        per_client: usize,
        /// Tokens generated per throughput request.
        #[arg(long, default_value_t = 32)]
        max_tokens: u32,
        /// One-token requests per latency path.
        #[arg(long, default_value_t = 30)]
        latency_runs: usize,
    },
    /// A synthetic bf16 Llama of 0.5 to 4 GiB sealed, then unsealed and loaded by the runtime's
    /// own code on the host: seconds, GB/s and peak RSS per stage (read, decrypt, hash,
    /// load) per size, against `openssl speed -evp aes-256-gcm` in the same run.
    Bigmodel {
        /// Arguments: [--sizes 0.5,1,2,4] [--runs N] [--keep] [--dir DIR] [--skip-openssl].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unseal throughput on a synthetic bundle against `openssl speed -evp aes-256-gcm`
    /// (one core and all cores) measured in the same run.
    Unseal {
        /// Arguments: [--size-mib N] [--runs N] [--skip-openssl].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Run a benchmark.
pub fn run(root: &Path, which: Which) -> Result<()> {
    match which {
        Which::Boot { runs } => boot::run(root, runs),
        Which::E2e { runs } => e2e::run(root, runs),
        Which::Channel { runs, max_tokens, tiny } => channel::run(root, runs, max_tokens, tiny),
        Which::Fleet { clients, per_client, max_tokens, latency_runs } => {
            fleet::run(root, &fleet::FleetBench { clients, per_client, max_tokens, latency_runs })
        }
        Which::Unseal { args } => unseal::run(&args),
        Which::Bigmodel { args } => bigmodel::run(root, &args),
        Which::Infer { args } => infer::run(&infer::InferBench::from_args(&args)?),
        Which::Serve { args } => serve::run(&serve::ServeBench::from_args(&args)?),
    }
}

/// Write a result file under out/bench/.
pub fn write_result(root: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    let dir = root.join("out/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    crate::util::say(format!("results written to {}", path.display()));
    Ok(())
}

/// What the QEMU benchmarks share: QEMU and the demo venv installed, the image built, and
/// SmolLM2-135M-Instruct sealed into `out/bench/<name>/`. Returns (out/, that folder, the
/// sealed bundle).
pub fn image_and_sealed_smollm2(
    root: &Path,
    name: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf, chrysalis_attest::seal::SealSummary)> {
    crate::deps::ensure_qemu()?;
    let python = crate::deps::ensure_venv_with(root, &[crate::demo::DEMO_REQUIREMENTS])?;
    crate::image::build(root, &crate::image::Options::defaults(root))?;
    let models = crate::deps::ensure_smollm2(root, &python)?;
    let out = root.join("out");
    let dir = out.join("bench").join(name);
    std::fs::create_dir_all(&dir)?;
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let sealed = chrysalis_e2e::owner::seal(&gguf, &dir, "SmolLM2-135M-Instruct")?;
    Ok((out, dir, sealed))
}

/// Median of a non-empty slice (0 for an empty one).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
