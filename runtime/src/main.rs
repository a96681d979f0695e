//! PID 1 of the Chrysalis image. `main` only sequences the boot (mount → modules → network
//! → serve) and owns the one fatal path: log the failed step and power off. Outside PID 1
//! (host mode, for tests) it takes the command line from `--cmdline` and skips the steps
//! that change the machine.
#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::{Context, Result};
use chrysalis_proto::channel::receipt::ReceiptSigner;
use chrysalis_proto::keyrelease::RuntimeKeyPair;
use chrysalis_runtime::boot::BootTimings;
use chrysalis_runtime::boot_log::{self, BootMeasurements};
use chrysalis_runtime::bundle::Bundle;
use chrysalis_runtime::config::Config;
use chrysalis_runtime::gpu_boot::{self, GpuUp};
use chrysalis_runtime::infer::{DeviceChoice, Engine, LoadOptions, ModelFiles};
use chrysalis_runtime::init::{self, power};
use chrysalis_runtime::serve::{self, HttpLimits, InferenceState, ServeConfig};
use chrysalis_runtime::session::{ModelSink, Session};
use chrysalis_runtime::tee::EvidenceSource;
use chrysalis_runtime::{api, channel, logger, pull, sys};

fn main() {
    let pid1 = std::process::id() == 1;
    let start = sys::uptime();
    logger::init(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        if serve::panic_guard::caught_here() {
            // A request handler under the API's panic guard: it answers 500 and the server
            // goes on. The payload may quote the request, so only where it happened is logged.
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            log::error!("api: a request handler panicked at {at}");
            return;
        }
        log::error!("fatal: panic: {info}");
        power::power_off("panic", 101);
    }));
    if let Err(e) = run(pid1, start) {
        log::error!("fatal: {e:#}");
        power::power_off("fatal error during boot", 1);
    }
    power::power_off("runtime stopped", 0);
}

fn run(pid1: bool, start: f64) -> Result<()> {
    check_cpu()?;
    let mut t = BootTimings { init: start, ..Default::default() };
    log::info!("chrysalis runtime {} starting (pid 1: {pid1})", env!("CARGO_PKG_VERSION"));
    if pid1 {
        init::mount::basic()?;
    }
    t.mounts = sys::uptime();
    let cmdline = read_cmdline(pid1)?;
    let cfg = Config::from_cmdline(&cmdline).context("reading the kernel command line")?;
    logger::init(cfg.log_level);
    if pid1 {
        let loaded = init::modules::load_all()?;
        let summary: Vec<String> = loaded.iter().map(|(n, o)| format!("{n}:{o:?}")).collect();
        log::info!("modules: {}", summary.join(" "));
    }
    // The GPU image's driver (a no-op in the CPU image); its failure is judged with the GPU
    // evidence below, under the measured `chrysalis.gpu` policy.
    let gpu = gpu_boot::bring_up(pid1);
    if pid1 {
        init::mount::configfs()?;
        init::modules::lock()?;
        init::power::watch_power_button();
    }
    t.modules = sys::uptime();
    if pid1 {
        init::net::configure(&cfg)?;
    }
    t.network = sys::uptime();
    let timeout = std::time::Duration::from_secs(u64::from(cfg.client_timeout_s));
    let inference = Arc::new(InferenceState::new(ServeConfig { body_timeout: timeout, ..ServeConfig::default() }));
    let session = Arc::new(attested_session(&cmdline, &cfg, gpu, &inference)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    rt.block_on(serve(cfg, t, pid1, session, inference))
}

/// Measure the runtime (binary, cmdline, config, bundle header, fresh public key) and set up
/// the session that serves evidence and accepts the key.
fn attested_session(cmdline: &str, cfg: &Config, gpu: Result<GpuUp>, inference: &Arc<InferenceState>) -> Result<Session> {
    let source = EvidenceSource::select(cfg.tee);
    if source.is_simulated() {
        log::warn!(
            "*** SIMULATED TEE: this VM's evidence is NOT hardware-backed; verifiers reject it unless their policy allows simulation ***"
        );
    }
    log::info!("tee: {}", source.describe());
    let bundle = match &cfg.bundle {
        None => Err("no chrysalis.bundle configured".to_owned()),
        Some(p) => Bundle::open(std::path::Path::new(p)).map_err(|e| format!("{e:#}")),
    };
    match &bundle {
        Ok(b) => {
            log::info!("bundle: {} ({}, header sha384 {})", b.path.display(), b.header.describe(), hex::encode(b.header.digest()))
        }
        Err(e) => log::warn!("bundle: {e}"),
    }
    let keys = RuntimeKeyPair::generate().context("generating the runtime's X25519 key pair")?;
    let public_key = keys.public_key();
    let receipts = ReceiptSigner::generate().context("generating the runtime's receipt signing key")?;
    let mut log = boot_log::boot_log(
        boot_log::runtime_binary_event()?,
        &BootMeasurements {
            cmdline,
            config: cfg,
            bundle_header: bundle.as_ref().ok().map(|b| b.header.raw.as_slice()),
            public_key: &public_key,
        },
    );
    // The key that signs per-response receipts of the encrypted channel.
    log.extend(receipts.public_key_event());
    // GPU evidence (feature gpu-evidence; no-op otherwise): last, so its nonce commits to
    // everything before it, the receipt key included; see attest/GPU_BINDING.md.
    let gpus = gpu_boot::settle(gpu, &mut log, cfg.gpu)?;
    log::info!("measured {} events; log digest {}", log.events.len(), hex::encode(log.digest()));
    let opts = load_options(cfg, !gpus.is_empty());
    let session = Session::new(log, keys, source, bundle, Box::new(EngineSink(inference.clone(), opts)))
        .with_receipt_signer(receipts)
        .with_gpus(gpus);
    Ok(if cfg.lease_s.is_some() { session.on_lease() } else { session })
}

/// The engine's limits from the measured command line; GPU 0 once the GPUs are attested and
/// this runtime has CUDA kernels (the GPU image's bring-up variant attests GPUs but
/// computes on the CPU).
fn load_options(cfg: &Config, gpu_ready: bool) -> LoadOptions {
    LoadOptions {
        device: if gpu_ready && cfg!(feature = "cuda") { DeviceChoice::Cuda(0) } else { DeviceChoice::Cpu },
        max_sequences: cfg.max_seqs,
        kv_cache_bytes: cfg.kv_mib.map(|m| m << 20),
        prefix_cache: cfg.prefix_cache,
        ..LoadOptions::new("")
    }
}

/// Hands unsealed files to candle and installs the model behind the OpenAI API.
struct EngineSink(Arc<InferenceState>, LoadOptions);

impl ModelSink for EngineSink {
    fn load(&self, files: chrysalis_proto::seal::UnsealedFiles) -> Result<String> {
        let id = model_id(&files.model_name);
        let map: ModelFiles = files.files.into_iter().map(|f| (f.name, f.data)).collect();
        let opts = LoadOptions { model_id: id.clone(), ..self.1.clone() };
        let engine = Engine::load(map, &opts).context("loading the model")?;
        self.0.install(engine);
        Ok(id)
    }

    /// With CUDA kernels and a GPU: the staged unseal straight into GPU memory.
    #[cfg(feature = "cuda")]
    fn load_bundle(
        &self,
        bundle: &Bundle,
        key: &chrysalis_proto::seal::DataKey,
        measured: &chrysalis_proto::eventlog::Digest384,
        unsealed: &mut dyn FnMut(u64),
    ) -> Option<Result<String, chrysalis_runtime::session::BundleLoadError>> {
        matches!(self.1.device, DeviceChoice::Cuda(_)).then(|| self.load_to_gpu(bundle, key, measured, unsealed))
    }

    fn unload(&self, reason: &chrysalis_runtime::session::StopReason) {
        self.0.uninstall(reason.class());
    }
}

#[cfg(feature = "cuda")]
impl EngineSink {
    /// Decrypt the bundle chunk by chunk into GPU memory (safetensors weights; the other
    /// files, a GGUF file included, stay on the host), cut the tensors out there and load.
    fn load_to_gpu(
        &self,
        bundle: &Bundle,
        key: &chrysalis_proto::seal::DataKey,
        measured: &chrysalis_proto::eventlog::Digest384,
        unsealed: &mut dyn FnMut(u64),
    ) -> Result<String, chrysalis_runtime::session::BundleLoadError> {
        use chrysalis_runtime::infer::cuda_memory::CudaMemory;
        use chrysalis_runtime::infer::staged::DeviceSink;
        use chrysalis_runtime::session::BundleLoadError::{Load, Unseal};
        let device = Engine::device_for(self.1.device).map_err(|e| Load(e.into()))?;
        let memory = CudaMemory::new(&device).map_err(|e| Load(e.into()))?;
        let mut sink = DeviceSink::new(memory, chrysalis_runtime::bundle::memory_budget());
        let got = bundle.unseal_staged(key, measured, &mut sink).map_err(Unseal)?;
        unsealed(got.files.iter().map(|f| f.size).sum());
        let model = sink.finish_model().map_err(|e| Load(e.into()))?;
        let (files, tensors) = model.tensors(Engine::dense_dtype(&device), &device).map_err(|e| Load(e.into()))?;
        let id = model_id(&got.model_name);
        let opts = LoadOptions { model_id: id.clone(), ..self.1.clone() };
        let engine = Engine::load_prepared(files, tensors, &device, &opts).context("loading the model").map_err(Load)?;
        self.0.install(engine);
        Ok(id)
    }
}

/// The API's model id: the bundle's model name, lower-cased, spaces as dashes.
fn model_id(name: &str) -> String {
    name.trim().to_lowercase().split_whitespace().collect::<Vec<_>>().join("-")
}

async fn serve(cfg: Config, mut t: BootTimings, pid1: bool, session: Arc<Session>, inference: Arc<InferenceState>) -> Result<()> {
    let host = if pid1 { [0, 0, 0, 0] } else { [127, 0, 0, 1] };
    let addr = std::net::SocketAddr::from((host, cfg.port));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    t.listen = sys::uptime();
    let state = Arc::new(api::RuntimeState { timings: t.clone(), session: session.clone() });
    // The inference router carries the OpenAI-shaped fallbacks; the encrypted channel wraps
    // it (plaintext only if the measured config allows); the runtime's own routes join it.
    let sealed = channel::ChannelState::new(session.clone(), cfg.allow_plaintext, inference.config().max_body_bytes);
    let app = channel::wrap(serve::router(inference), Arc::new(sealed)).merge(api::router(state));
    if let Some(url) = cfg.key_url.clone() {
        let lease = cfg.lease_s.map(|s| std::time::Duration::from_secs(u64::from(s)));
        tokio::spawn(pull::run(url, session, lease));
    }
    log::info!("API listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    println!("{}", t.ready_line());
    let shutdown = async {
        let reason = shutdown_signal().await;
        power::power_off(reason, 0);
    };
    let timeout = std::time::Duration::from_secs(u64::from(cfg.client_timeout_s));
    let limits = HttpLimits { header_read_timeout: timeout, write_timeout: timeout, ..HttpLimits::default() };
    serve::serve(listener, app, limits, shutdown).await.context("serving the API")
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return "unreachable";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM received",
        _ = int.recv() => "SIGINT received (ctrl-alt-del)",
    }
}

fn read_cmdline(pid1: bool) -> Result<String> {
    if pid1 {
        return std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline");
    }
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--cmdline"), Some(c)) => Ok(c),
        (None, _) => Ok(String::new()),
        _ => anyhow::bail!("usage outside the image: chrysalis-runtime [--cmdline \"chrysalis.port=8000 ...\"]"),
    }
}

/// The image is built for x86-64-v3 (AVX2, FMA, F16C, BMI2): every SEV-SNP (Zen 3+) and TDX
/// (Sapphire Rapids+) host has it. Say so plainly instead of dying on an illegal instruction.
fn check_cpu() -> Result<()> {
    let missing: Vec<&str> = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("f16c", std::arch::is_x86_feature_detected!("f16c")),
        ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
    ]
    .into_iter()
    .filter_map(|(n, ok)| (!ok).then_some(n))
    .collect();
    if missing.is_empty() { Ok(()) } else { anyhow::bail!("this CPU lacks {} (the image needs x86-64-v3)", missing.join(", ")) }
}
