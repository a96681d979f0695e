//! `cargo xtask bench unseal`: unseal throughput against OpenSSL's AES-256-GCM on the same
//! machine, in the same run.
//!
//! Call as `bench::unseal::run(&args)` where `args` are the words after `bench unseal`:
//! `[--size-mib N] [--runs N] [--skip-openssl]` (defaults: 1024 MiB, best of 3). It seals a
//! synthetic model (one large weights file plus a config) in memory, then times
//! `chrysalis_proto::seal::unseal_with` on 1 thread and on all cores, with and without the
//! per-file SHA-256 check, and `unseal_file` from a bundle file in the page cache; runs `openssl speed -evp aes-256-gcm -bytes
//! 16384 -seconds 3` (and `-multi $(nproc)`); prints the ratios and writes
//! `out/bench/unseal.json`.
//!
//! It also measures the GPU path's CPU side (`unseal_staged`, issue 15 item 6): decryption
//! into the staging buffers alone, and with a model of what the driver does per copy in
//! confidential-computing mode (the chunk copied into a bounce buffer and encrypted there
//! with AES-256-GCM, [`DeviceStandIn`]), against the path it replaces (the whole bundle
//! unsealed, then every chunk through the same model on one thread), with the resident
//! memory each takes. Use a release build for numbers you report:
//! `cargo run --release -p xtask -- bench unseal`.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use chrysalis_proto::seal::cipher::ChunkCipher;
use chrysalis_proto::seal::{
    DataKey, SealOptions, SinkError, StagedFile, StagedSink, UnsealOptions, seal_to_vec, staging_slots, unseal_file,
    unseal_staged, unseal_with,
};
use serde::Serialize;
use zeroize::Zeroizing;

#[derive(Serialize)]
struct Measurement {
    name: String,
    threads: usize,
    verify_sha256: bool,
    best_gb_s: f64,
    runs_gb_s: Vec<f64>,
}

/// The GPU path's copy as far as it runs on the CPU, without a GPU. In confidential-computing
/// mode the driver cannot let the GPU read private guest memory: for each host-to-device copy
/// it copies the staging buffer into a shared bounce buffer and encrypts it there with
/// AES-256-GCM on the CPU, which is the work modelled here (`cc: true`). `cc: false` puts
/// nothing anywhere: what is left is decryption into staging buffers that stay mapped.
struct DeviceStandIn {
    cc: Option<(ChunkCipher, Vec<u8>)>,
    counter: u32,
    put_bytes: u64,
    /// RSS before the unseal and the most seen while chunks were put, in bytes.
    rss_before: u64,
    rss_peak: u64,
}

impl DeviceStandIn {
    fn new(cc: bool, chunk: usize) -> anyhow::Result<Self> {
        let cc = if cc {
            let key = DataKey::generate().context("rng")?;
            Some((ChunkCipher::new(&key, [7; 7], [0; 48]), vec![0u8; chunk]))
        } else {
            None
        };
        Ok(DeviceStandIn { cc, counter: 0, put_bytes: 0, rss_before: rss(), rss_peak: 0 })
    }

    /// The driver's part of one copy: plaintext into the bounce buffer, encrypted there.
    fn copy(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if let Some((cipher, bounce)) = &mut self.cc {
            let b = bounce.get_mut(..bytes.len()).ok_or_else(|| SinkError("chunk larger than the bounce buffer".into()))?;
            b.copy_from_slice(bytes);
            self.counter = self.counter.wrapping_add(1);
            let tag = cipher.seal(self.counter, false, b).map_err(|_| SinkError("bounce encryption".into()))?;
            std::hint::black_box(tag);
        }
        self.put_bytes += bytes.len() as u64;
        Ok(())
    }
}

impl StagedSink for DeviceStandIn {
    type Slot = Zeroizing<Vec<u8>>;
    fn staging(&mut self, len: usize) -> Result<Self::Slot, SinkError> {
        Ok(Zeroizing::new(vec![0; len]))
    }
    fn begin(&mut self, _: u64, _: usize, _: &[StagedFile]) -> Result<(), SinkError> {
        Ok(())
    }
    fn put(&mut self, _: u32, _: u64, len: usize, slot: &mut Self::Slot) -> Result<(), SinkError> {
        if self.put_bytes.is_multiple_of(64 << 20) {
            self.rss_peak = self.rss_peak.max(rss());
        }
        self.copy(slot.get(..len).unwrap_or_default())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// This process's resident memory in bytes (0 if /proc cannot be read).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kib| kib << 10)
}

/// How the GPU path compares with unsealing the whole bundle first (issue 15 item 6): GB/s of
/// plaintext end to end, and the memory the plaintext takes meanwhile.
#[derive(Serialize)]
struct StagedMeasurement {
    name: String,
    threads: usize,
    verify_sha256: bool,
    cc_bounce_model: bool,
    best_gb_s: f64,
    runs_gb_s: Vec<f64>,
    /// Resident memory above the start while the plaintext went through, MiB.
    extra_rss_mib: f64,
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
    staged: Vec<StagedMeasurement>,
    staging_mib: f64,
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
    // The GPU path first, while the process holds only the bundle.
    let cs = opts.chunk_size as usize;
    let mut staged = Vec::new();
    let mut stage = |name: &str, threads: usize, verify: bool, cc: bool| -> anyhow::Result<f64> {
        let o = UnsealOptions { threads: NonZeroUsize::new(threads), verify_sha256: verify, ..UnsealOptions::default() };
        let (mut all, mut extra) = (Vec::new(), 0u64);
        for _ in 0..runs {
            let mut sink = DeviceStandIn::new(cc, cs)?;
            let t = Instant::now();
            let got = unseal_staged(&bundle, &key, &o, &mut sink).context("staged unseal")?;
            let secs = t.elapsed().as_secs_f64();
            let files: u64 = got.files.iter().map(|f| f.size).sum();
            if files != plaintext {
                bail!("staged unseal found {files} file bytes, expected {plaintext}");
            }
            extra = extra.max(sink.rss_peak.saturating_sub(sink.rss_before));
            all.push(plaintext as f64 / secs / 1e9);
        }
        let best = all.iter().copied().fold(0.0, f64::max);
        let mib = extra as f64 / f64::from(1 << 20);
        eprintln!(
            "[xtask]   {name:<34} threads={threads:<3} sha256={verify:<5} best {best:.2} GB/s  runs {all:.2?}  +{mib:.0} MiB RSS"
        );
        staged.push(StagedMeasurement {
            name: name.into(),
            threads,
            verify_sha256: verify,
            cc_bounce_model: cc,
            best_gb_s: best,
            runs_gb_s: all,
            extra_rss_mib: mib,
        });
        Ok(best)
    };
    let staged_only = stage("staged (decrypt into staging)", cores, false, false)?;
    let staged_cc = stage("staged + CC bounce model", cores, false, true)?;
    let staged_cc_sha = stage("staged + CC bounce model", cores, true, true)?;
    // What the GPU path replaces: the whole bundle unsealed into memory on every core, then
    // copied to the device tensor by tensor, each copy through the driver on one thread.
    let whole_then_copy = {
        let o = UnsealOptions { threads: NonZeroUsize::new(cores), verify_sha256: true, ..UnsealOptions::default() };
        let (mut all, mut extra) = (Vec::new(), 0u64);
        for _ in 0..runs {
            let mut sink = DeviceStandIn::new(true, cs)?;
            let t = Instant::now();
            let files = unseal_with(&bundle, &key, &o).context("unsealing")?;
            extra = extra.max(rss().saturating_sub(sink.rss_before));
            for f in &files.files {
                for c in f.data.chunks(cs) {
                    sink.copy(c).map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            drop(files);
            all.push(plaintext as f64 / secs / 1e9);
        }
        let best = all.iter().copied().fold(0.0, f64::max);
        let mib = extra as f64 / f64::from(1 << 20);
        eprintln!(
            "[xtask]   {:<34} threads={cores:<3} sha256=true  best {best:.2} GB/s  runs {all:.2?}  +{mib:.0} MiB RSS",
            "whole unseal, then CC bounce model"
        );
        staged.push(StagedMeasurement {
            name: "whole unseal, then CC bounce model".into(),
            threads: cores,
            verify_sha256: true,
            cc_bounce_model: true,
            best_gb_s: best,
            runs_gb_s: all,
            extra_rss_mib: mib,
        });
        best
    };
    let staging_mib = (staging_slots(cores) * cs) as f64 / f64::from(1 << 20);
    eprintln!("[xtask]   staging buffers: {} of {} KiB = {staging_mib:.0} MiB", staging_slots(cores), cs >> 10);

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
            (format!("staged decrypt {cores} threads / (openssl 1 core x {cores})"), staged_only / x),
            (format!("staged + CC model {cores} threads / (openssl 1 core x {cores})"), staged_cc / x),
            ("staged + CC model + sha256 / whole unseal then CC model".to_owned(), staged_cc_sha / whole_then_copy),
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
        staged,
        staging_mib,
        ratios,
        first_touch_copy_gb_s: [touch1, touchn],
    };
    let path = dir.join("unseal.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("[xtask] wrote {}", path.display());
    Ok(())
}
