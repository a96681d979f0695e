//! `cargo xtask bench unseal`: unseal throughput against OpenSSL's AES-256-GCM on the same
//! machine, in the same run.
//!
//! Call as `bench::unseal::run(&args)` where `args` are the words after `bench unseal`:
//! `[--size-mib N] [--runs N] [--skip-openssl]` (defaults: 1024 MiB, best of 3). It seals a
//! synthetic model (one large weights file plus a config) in memory, then times
//! `chrysalis_proto::seal::unseal_with` on 1 thread and on all cores, with and without the
//! per-file SHA-256 check, and `unseal_file` from a bundle file in the page cache; runs `openssl speed -evp aes-256-gcm -bytes
//! 16384 -seconds 3` (and `-multi $(nproc)`); prints the ratios and writes
//! `out/bench/unseal.json`. Use a release build for numbers you report:
//! `cargo run --release -p xtask -- bench unseal`.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use chrysalis_proto::seal::{DataKey, SealOptions, UnsealOptions, seal_to_vec, unseal_file, unseal_with};
use serde::Serialize;

#[derive(Serialize)]
struct Measurement {
    name: String,
    threads: usize,
    verify_sha256: bool,
    best_gb_s: f64,
    runs_gb_s: Vec<f64>,
}

#[derive(Serialize)]
struct UnsealReport {
    plaintext_bytes: u64,
    bundle_bytes: u64,
    chunk_size: u32,
    cores: usize,
    release_build: bool,
    aead: &'static str,
    openssl_single_gb_s: Option<f64>,
    openssl_multi_gb_s: Option<f64>,
    measurements: Vec<Measurement>,
    ratios: Vec<(String, f64)>,
    first_touch_copy_gb_s: [f64; 2],
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The decrypt reference: `openssl speed -evp aes-256-gcm -bytes 16384 -seconds 3` on one
/// core and with `-multi cores`, in GB/s (10^9 bytes/s). Installs Debian's openssl if needed.
pub fn openssl_reference(cores: usize) -> anyhow::Result<(f64, f64)> {
    crate::deps::ensure_packages(&["openssl"])?;
    eprintln!("[xtask] openssl speed -evp aes-256-gcm -bytes 16384 -seconds 3 (and -multi {cores})");
    let single = openssl_speed(None)?;
    let multi = openssl_speed(Some(cores))?;
    eprintln!("[xtask] openssl: {single:.2} GB/s on 1 core, {multi:.2} GB/s with -multi {cores}");
    Ok((single, multi))
}

/// `openssl speed` throughput in GB/s (10^9 bytes/s), from its last `AES-256-GCM` line.
fn openssl_speed(multi: Option<usize>) -> anyhow::Result<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "3"]);
    if let Some(n) = multi {
        cmd.args(["-multi", &n.to_string()]);
    }
    let out = cmd.output().context("running openssl speed (is openssl installed?)")?;
    if !out.status.success() {
        bail!("openssl speed failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().to_ascii_uppercase().starts_with("AES-256-GCM"))
        .context("no AES-256-GCM line in openssl speed output")?;
    let k: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.trim_end_matches('k').parse().ok())
        .context("unparsable openssl speed value")?;
    Ok(k * 1000.0 / 1e9)
}

fn synthetic(len: usize) -> Vec<u8> {
    // xorshift: incompressible enough, fast to make; AES speed does not depend on content.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Run the benchmark; `args` are the words after `bench unseal`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut size_mib: usize = 1024;
    let mut runs: usize = 3;
    let mut skip_openssl = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size-mib" => size_mib = it.next().context("--size-mib needs a value")?.parse().context("--size-mib")?,
            "--runs" => runs = it.next().context("--runs needs a value")?.parse().context("--runs")?,
            "--skip-openssl" => skip_openssl = true,
            other => bail!("unknown argument {other:?} (expected --size-mib N, --runs N, --skip-openssl)"),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let release_build = !cfg!(debug_assertions);
    if !release_build {
        eprintln!("[xtask] warning: debug build of xtask; report numbers from `cargo run --release -p xtask -- bench unseal`");
    }

    eprintln!("[xtask] bench unseal: sealing {size_mib} MiB of synthetic weights in memory");
    let key = DataKey::generate().context("rng")?;
    let weights = synthetic(size_mib << 20);
    let config = br#"{"architectures":["LlamaForCausalLM"],"hidden_size":576}"#;
    let opts = SealOptions::default();
    let bundle = seal_to_vec("bench", &[("config.json", config), ("model.gguf", &weights)], &key, &opts).context("sealing")?;
    let plaintext = (weights.len() + config.len()) as u64;
    drop(weights);

    let dir = project_root().join("out/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_path = dir.join("unseal-bench.sealed");
    std::fs::write(&file_path, &bundle).with_context(|| format!("writing {}", file_path.display()))?;
    let file = std::fs::File::open(&file_path).context("opening the bench bundle")?;
    let mut measurements = Vec::new();
    let mut time = |name: &str, threads: usize, verify: bool, from_file: bool| -> anyhow::Result<f64> {
        let o = UnsealOptions { threads: NonZeroUsize::new(threads), verify_sha256: verify, ..UnsealOptions::default() };
        let mut all = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let files =
                if from_file { unseal_file(&file, &key, &o) } else { unseal_with(&bundle, &key, &o) }.context("unsealing")?;
            let secs = t.elapsed().as_secs_f64();
            if files.total_bytes() != plaintext {
                bail!("unsealed {} bytes, expected {plaintext}", files.total_bytes());
            }
            drop(files);
            all.push(plaintext as f64 / secs / 1e9);
        }
        let best = all.iter().copied().fold(0.0, f64::max);
        eprintln!("[xtask]   {name:<34} threads={threads:<3} sha256={verify:<5} best {best:.2} GB/s  runs {all:.2?}");
        measurements.push(Measurement { name: name.into(), threads, verify_sha256: verify, best_gb_s: best, runs_gb_s: all });
        Ok(best)
    };
    // Memory ceiling: first-touch copy of the body into fresh buffers (page faults + memcpy),
    // what every unseal pays before any AES.
    let touch = |threads: usize| -> f64 {
        let mut best: f64 = 0.0;
        for _ in 0..runs {
            let t = Instant::now();
            let mut dst = vec![0u8; bundle.len()];
            let per = bundle.len().div_ceil(threads);
            std::thread::scope(|s| {
                for (d, src) in dst.chunks_mut(per).zip(bundle.chunks(per)) {
                    s.spawn(move || d.copy_from_slice(src));
                }
            });
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(&dst);
            best = best.max(bundle.len() as f64 / secs / 1e9);
        }
        eprintln!("[xtask]   {:<34} threads={threads:<3} best {best:.2} GB/s", "first-touch copy (memory ceiling)");
        best
    };
    let touch1 = touch(1);
    let touchn = touch(cores);
    let one = time("unseal (decrypt only)", 1, false, false)?;
    let all = time("unseal (decrypt only)", cores, false, false)?;
    let one_sha = time("unseal (decrypt + sha256)", 1, true, false)?;
    let all_sha = time("unseal (decrypt + sha256)", cores, true, false)?;
    let file_one = time("unseal_file, page cache (decrypt only)", 1, false, true)?;
    let file_all = time("unseal_file, page cache (decrypt only)", cores, false, true)?;
    let reader = time("unseal_file, page cache (decrypt + sha256)", cores, true, true)?;
    let _ = std::fs::remove_file(&file_path);

    let (ossl1, osslm) = if skip_openssl {
        (None, None)
    } else {
        let (s, m) = openssl_reference(cores)?;
        (Some(s), Some(m))
    };
    let mut ratios = Vec::new();
    if let (Some(s), Some(m)) = (ossl1, osslm) {
        let x = s * cores as f64;
        ratios = vec![
            ("decrypt 1 thread / openssl 1 core".to_owned(), one / s),
            (format!("decrypt {cores} threads / (openssl 1 core x {cores})"), all / x),
            (format!("decrypt {cores} threads / openssl -multi {cores}"), all / m),
            ("decrypt+sha256 1 thread / openssl 1 core".to_owned(), one_sha / s),
            (format!("decrypt+sha256 {cores} threads / (openssl 1 core x {cores})"), all_sha / x),
            ("file decrypt 1 thread / openssl 1 core".to_owned(), file_one / s),
            (format!("file decrypt {cores} threads / (openssl 1 core x {cores})"), file_all / x),
            (format!("file decrypt+sha256 {cores} threads / (openssl 1 core x {cores})"), reader / x),
            (format!("decrypt {cores} threads / first-touch copy {cores} threads"), all / touchn),
        ];
        for (n, r) in &ratios {
            println!("{n:<62} {:>6.1}%", r * 100.0);
        }
    }
    let report = UnsealReport {
        plaintext_bytes: plaintext,
        bundle_bytes: bundle.len() as u64,
        chunk_size: opts.chunk_size,
        cores,
        release_build,
        aead: "AES-256-GCM STREAM (ring 0.17)",
        openssl_single_gb_s: ossl1,
        openssl_multi_gb_s: osslm,
        measurements,
        ratios,
        first_touch_copy_gb_s: [touch1, touchn],
    };
    let path = dir.join("unseal.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("[xtask] wrote {}", path.display());
    Ok(())
}
