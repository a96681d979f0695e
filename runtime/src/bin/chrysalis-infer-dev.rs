//! Development tool, never part of the image (feature `dev-server`): serves a plaintext
//! model folder through the same inference API the runtime mounts after unsealing, and
//! measures generation speed for `cargo xtask bench infer`.
//! Trusts: the model files on the local disk and the command line.
//!
//! ```text
//! chrysalis-infer-dev serve --model DIR|FILE.gguf [--id NAME] [--addr 127.0.0.1:0]
//!                           [--queue N] [--max-body BYTES] [--weights native|q8_0|q4_0|f32] [--device cpu|cuda[:N]]
//!                           [--max-seqs 16] [--step-tokens 256] [--kv-mib N] [--prefix-cache 1|0]
//!                           [--client-timeout-s 10] [--send-buffer BYTES]
//!                           [--no-model]
//! chrysalis-infer-dev bench --model FILE.gguf [--weights ...] [--prompt-tokens 100]
//!                           [--gen 64] [--runs 3]
//! ```
//! `--max-seqs`, `--step-tokens`, `--kv-mib` and `--prefix-cache` set the batching engine's
//! limits (see `LoadOptions`); `bench` always runs without the prefix cache, since it
//! repeats one prompt.
//! `serve` prints `listening on ADDR` once the socket is bound (tests read it).
//! `--no-model` serves without ever installing a model (every request gets 503).
//! `bench` prints one JSON object per run and a summary line on stdout.

use anyhow::{Context, Result, bail};
use chrysalis_runtime::infer::{DeviceChoice, Engine, GenerateParams, GgufWeights, LoadOptions, ModelFiles, SamplingParams};
use chrysalis_runtime::serve::{self, HttpLimits, InferenceState, ServeConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use zeroize::Zeroizing;

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

struct Args {
    cmd: String,
    flags: BTreeMap<String, String>,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut it = std::env::args().skip(1);
        let cmd = it.next().unwrap_or_default();
        let mut flags = BTreeMap::new();
        while let Some(a) = it.next() {
            let key = a.strip_prefix("--").with_context(|| format!("unexpected argument {a:?}"))?;
            if key == "no-model" {
                flags.insert(key.to_owned(), "true".to_owned());
            } else {
                let v = it.next().with_context(|| format!("--{key} needs a value"))?;
                flags.insert(key.to_owned(), v);
            }
        }
        Ok(Self { cmd, flags })
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.flags.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow::anyhow!("--{key}: cannot parse {v:?}")),
        }
    }
}

/// Reads a model folder (every regular file in it) or a single .gguf file into memory, the
/// shape the unseal step hands over.
fn read_model(path: &Path) -> Result<ModelFiles> {
    let mut files = ModelFiles::new();
    let paths: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_owned()]
    };
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).context("file name is not UTF-8")?.to_owned();
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        files.insert(name, Zeroizing::new(bytes));
    }
    Ok(files)
}

fn load(args: &Args) -> Result<Engine> {
    let model: PathBuf = args.flags.get("model").context("--model is required")?.into();
    let id = args.get("id", "local-model".to_owned())?;
    let weights = args.get("weights", "native".to_owned())?;
    let mut opts = LoadOptions::new(id);
    opts.gguf_weights = GgufWeights::from_name(&weights).with_context(|| format!("unknown --weights {weights}"))?;
    let device = args.get("device", "cpu".to_owned())?;
    opts.device = DeviceChoice::parse(&device).with_context(|| format!("--device {device}: expected cpu, cuda or cuda:N"))?;
    opts.max_sequences = args.get("max-seqs", opts.max_sequences)?;
    opts.step_tokens = args.get("step-tokens", opts.step_tokens)?;
    opts.kv_cache_bytes = args.flags.get("kv-mib").map(|v| v.parse::<u64>().map(|m| m << 20)).transpose().context("--kv-mib")?;
    opts.prefix_cache = args.get("prefix-cache", 1u8)? == 1 && args.cmd != "bench";
    let files = read_model(&model)?;
    Engine::load(files, &opts).context("loading the model")
}

fn peak_rss_kib() -> u64 {
    chrysalis_runtime::sys::peak_rss().unwrap_or(0) / 1024
}

fn serve_cmd(args: &Args) -> Result<()> {
    let timeout = std::time::Duration::from_secs(args.get("client-timeout-s", 10)?);
    let config = ServeConfig {
        queue_capacity: args.get("queue", ServeConfig::default().queue_capacity)?,
        max_body_bytes: args.get("max-body", ServeConfig::default().max_body_bytes)?,
        body_timeout: timeout,
        ..ServeConfig::default()
    };
    let limits = HttpLimits {
        header_read_timeout: timeout,
        write_timeout: timeout,
        send_buffer_bytes: args.flags.get("send-buffer").map(|v| v.parse()).transpose().context("--send-buffer")?,
        ..HttpLimits::default()
    };
    let state = Arc::new(InferenceState::new(config));
    if !args.flags.contains_key("no-model") {
        state.install(load(args)?);
    }
    let addr = args.get("addr", "127.0.0.1:0".to_owned())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve::serve(listener, serve::router(state), limits, shutdown).await?;
        Ok(())
    })
}

/// Fixed English text; its first `n` token ids are the benchmark prompt.
const BENCH_TEXT: &str = "The history of computing is a story of layers. At the bottom, transistors switch \
    on and off billions of times per second; above them, logic gates combine those switches into \
    adders and memories; above those, instruction sets give programmers a vocabulary of simple \
    operations. Operating systems then share the machine among many programs, and languages let \
    people describe what they want without thinking about registers. Each layer hides the one \
    below it, and each layer must be trusted. Confidential computing asks a different question: \
    what if the operator of the machine is not trusted at all? The answer is hardware that \
    encrypts memory, measures what it boots, and signs a report that a remote party can check \
    before it sends any secret. Models, prompts and answers then stay inside the enclave.";

fn bench_cmd(args: &Args) -> Result<()> {
    let n_prompt: usize = args.get("prompt-tokens", 100)?;
    let n_gen: usize = args.get("gen", 64)?;
    let runs: usize = args.get("runs", 3)?;
    let t0 = Instant::now();
    let engine = load(args)?;
    let load_s = t0.elapsed().as_secs_f64();
    let ids = engine.encode(BENCH_TEXT)?;
    if ids.len() < n_prompt {
        bail!("bench text has only {} tokens, {n_prompt} requested", ids.len());
    }
    let prompt = ids.get(..n_prompt).context("prompt slice")?.to_vec();
    let params = GenerateParams {
        max_tokens: n_gen,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        stop: Vec::new(),
        ignore_eos: true,
    };
    for run in 0..runs {
        let o = engine.generate(&prompt, &params, &mut |_| std::ops::ControlFlow::Continue(()))?;
        let ttft = o.time_to_first_token.as_secs_f64();
        let gen_s = o.generation_time.as_secs_f64();
        let line = serde_json::json!({
            "run": run,
            "prompt_tokens": o.prompt_tokens,
            "generated_tokens": o.completion_tokens,
            "time_to_first_token_s": ttft,
            "prompt_tokens_per_s": o.prompt_tokens as f64 / ttft,
            // The first token comes with the prompt pass; the rest are decode steps.
            "gen_tokens_per_s": (o.completion_tokens.saturating_sub(1)) as f64 / gen_s,
            "peak_rss_kib": peak_rss_kib(),
            "load_s": load_s,
            "weights": engine.info().weights,
            "first_tokens": o.tokens.iter().take(8).collect::<Vec<_>>(),
            "prompt_ids": prompt,
        });
        println!("{line}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    let args = Args::parse()?;
    match args.cmd.as_str() {
        "serve" => serve_cmd(&args),
        "bench" => bench_cmd(&args),
        _ => {
            eprintln!("usage: chrysalis-infer-dev serve|bench --model PATH [options] (see the source header)");
            std::process::exit(2);
        }
    }
}
