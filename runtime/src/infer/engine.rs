//! The inference engine: builds a model, tokenizer and chat template from unsealed
//! in-memory files, and generates text one request at a time.
//! Trusts: model files come from the model owner (authenticated by unsealing) but are still
//! parsed totally, and candle's loaders run under `catch_unwind` so a malformed model cannot
//! take PID 1 down; prompts and parameters come from API clients and are validated.
//! Never logs prompt or completion text.

use super::batch::{self, BatchLimits, Core, Job, Shared};
use super::config::{self, ArchConfig};
use super::gguf::{self, GgufWeights, Meta};
use super::kv::{self, BLOCK_SIZE, BlockPool, KvShape, KvStore};
use super::load::{self, DenseTensors};
use super::sampling::SamplingParams;
use super::template::{self, ChatMessage, ChatTemplate};
use super::transformer::{Chunk, Transformer, Weights};
use super::{InferError, gguf_tokenizer, llama, qwen2};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use zeroize::Zeroizing;

/// Unsealed model files: file name → plaintext bytes (config.json, tokenizer.json,
/// tokenizer_config.json, *.safetensors shards, or one *.gguf). Entries are dropped (and so
/// zeroized) as soon as the engine has copied what it needs.
pub type ModelFiles = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// Prompt tokens processed per forward pass by [`Sequence::feed`]: bounds the attention
/// matrix of long prompts.
const PROMPT_CHUNK: usize = 512;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeviceChoice {
    /// The CPU (candle's SIMD kernels, rayon threads).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal; needs the `cuda` feature.
    Cuda(usize),
}

impl DeviceChoice {
    /// Parse `cpu`, `cuda` (GPU 0) or `cuda:N`: the spelling of `--device` and of
    /// `CHRYSALIS_TEST_DEVICE`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "cpu" => Some(DeviceChoice::Cpu),
            "cuda" => Some(DeviceChoice::Cuda(0)),
            other => other.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceChoice::Cuda),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The name clients use in `model` (e.g. "smollm2-135m-instruct").
    pub model_id: String,
    /// Where to run.
    pub device: DeviceChoice,
    /// What to do with GGUF weight types that have no SIMD kernel (see [`GgufWeights`]).
    pub gguf_weights: GgufWeights,
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Tokens per forward step: one per decoding sequence, the rest for prompt chunks. A
    /// long prompt takes several steps, so it never freezes the running streams for longer
    /// than one step.
    pub step_tokens: usize,
    /// KV cache budget in bytes; `None`: half the memory available after loading the
    /// weights, and no more than `max_sequences` full contexts need.
    pub kv_cache_bytes: Option<u64>,
    /// Reuse the cached keys and values of an identical prompt prefix (a shared system
    /// prompt) across requests. Off for benchmarks that repeat one prompt.
    pub prefix_cache: bool,
}

impl LoadOptions {
    /// CPU, default GGUF policy, 16 sequences, 256-token steps, automatic cache budget.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            device: DeviceChoice::Cpu,
            gguf_weights: GgufWeights::default(),
            max_sequences: 16,
            step_tokens: 256,
            kv_cache_bytes: None,
            prefix_cache: true,
        }
    }
}

/// Facts about the loaded model (served by `/v1/models`, used by the API for limits).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// The served model name.
    pub id: String,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// `llama` or `qwen2`.
    pub architecture: String,
    /// Maximum prompt + completion tokens.
    pub context_length: usize,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// How the weights are held in memory, e.g. "q8_0 (requantized)" or "f32".
    pub weights: String,
    /// Unix time the engine was loaded (OpenAI's `created`).
    pub created: u64,
    /// KV cache blocks (of [`BLOCK_SIZE`] tokens) set aside at load.
    pub kv_blocks: usize,
    /// Bytes of one block (keys and values of every layer).
    pub kv_block_bytes: u64,
    /// Sequences decoded together at most.
    pub max_sequences: usize,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the end of the context window.
    Length,
    /// The caller asked to stop (client went away).
    Cancelled,
}

impl FinishReason {
    /// OpenAI's `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A validated generation request.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    /// Most tokens to generate; must fit the context with the prompt.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks, reference tests).
    pub ignore_eos: bool,
}

/// What a finished generation reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Tokens generated (including a final end-of-sequence token).
    pub completion_tokens: usize,
    /// The generated ids (zeroized when dropped).
    pub tokens: Zeroizing<Vec<u32>>,
    /// Time from submission to the first token (queueing, prompt, first sample).
    pub time_to_first_token: Duration,
    /// Time spent generating after the first token.
    pub generation_time: Duration,
}

/// What a generation sends back, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// New text.
    Text(String),
    /// The generation ended.
    Done(Outcome),
    /// The generation failed (the message names what went wrong, never prompt text).
    Failed(InferError),
}

/// A loaded model ready to serve: a scheduler thread batches every submitted request
/// (see `infer/batch.rs`).
pub struct Engine {
    info: ModelInfo,
    template: Option<ChatTemplate>,
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    scheduler: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the job channel lets the scheduler finish its work and return.
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(t) = self.scheduler.take() {
            let _ = t.join();
        }
    }
}

fn device(choice: DeviceChoice) -> Result<Device, InferError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(i) => Device::new_cuda(i).map_err(|e| InferError::Device(e.to_string())),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(InferError::Device("this runtime was built without the cuda feature".into())),
    }
}

fn guarded<T>(what: &'static str, f: impl FnOnce() -> Result<T, InferError>) -> Result<T, InferError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(InferError::Panicked(what)))
}

fn tokenizer_err(e: impl std::fmt::Display) -> InferError {
    InferError::Tokenizer(e.to_string())
}

fn json_file(files: &ModelFiles, name: &str) -> Result<Option<serde_json::Value>, InferError> {
    files
        .get(name)
        .map(|b| serde_json::from_slice(b).map_err(|e| InferError::InvalidFile { file: name.into(), reason: e.to_string() }))
        .transpose()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What the loaders hand to [`Engine::load`].
struct Loaded {
    weights: Weights,
    tokenizer: Tokenizer,
    info: ModelInfo,
    dtype: DType,
}

impl Engine {
    /// Builds the engine, consuming (and so zeroizing) the files, sets aside the KV cache
    /// and starts the scheduler.
    pub fn load(files: ModelFiles, opts: &LoadOptions) -> Result<Self, InferError> {
        let device = device(opts.device)?;
        Self::load_on(files, None, &device, opts)
    }

    /// [`Engine::load`] from a model whose weights are already tensors on `device` (the
    /// staged unseal into GPU memory, [`super::staged`]); `files` holds the rest. `device`
    /// must be the one the tensors are on (from [`Engine::device_for`]): candle tells two
    /// handles on one GPU apart.
    pub fn load_prepared(
        files: ModelFiles,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self, InferError> {
        Self::load_on(files, Some(tensors), device, opts)
    }

    /// The device [`Engine::load`] uses for `choice`.
    pub fn device_for(choice: DeviceChoice) -> Result<Device, InferError> {
        device(choice)
    }

    fn load_on(
        mut files: ModelFiles,
        prepared: Option<HashMap<String, Tensor>>,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<Self, InferError> {
        let device = device.clone();
        let tok_config = json_file(&files, "tokenizer_config.json")?;
        let gen_config = json_file(&files, "generation_config.json")?;
        let tokenizer_json = files.remove("tokenizer.json");
        let ggufs: Vec<String> = files.keys().filter(|k| k.ends_with(".gguf")).cloned().collect();
        let (mut tpl_src, mut bos, mut eos) = tok_config.as_ref().map(template::from_tokenizer_config).unwrap_or_default();
        let mut eos_ids = Vec::new();
        let loaded = match ggufs.as_slice() {
            [name] => {
                let bytes = files.remove(name).ok_or_else(|| InferError::MissingFile(name.clone()))?;
                let mut g = guarded("reading the gguf file", || gguf::read(name, bytes, opts.gguf_weights, &device))?;
                let meta = Meta { file: name, md: &g.content.metadata };
                let arch = meta.str("general.architecture").unwrap_or("").to_owned();
                let tokenizer = match &tokenizer_json {
                    Some(b) => Tokenizer::from_bytes(b.as_slice()).map_err(tokenizer_err)?,
                    None => {
                        let t = gguf_tokenizer::build(&meta)?;
                        bos = bos.or(t.bos);
                        eos = eos.or(t.eos);
                        t.tokenizer
                    }
                };
                eos_ids.extend(meta.u32("tokenizer.ggml.eos_token_id"));
                if tpl_src.is_none() {
                    tpl_src = meta.str("tokenizer.chat_template").map(str::to_owned);
                }
                let weights_desc = describe_weights(&g.content, opts.gguf_weights);
                let (weights, context_length) = match arch.as_str() {
                    "llama" => guarded("building the llama model", || llama::from_gguf(name, &mut g, &device))?,
                    "qwen2" => guarded("building the qwen2 model", || qwen2::from_gguf(name, &mut g, &device))?,
                    other => {
                        return Err(InferError::Unsupported(format!("GGUF architecture {other:?} (supported: llama, qwen2)")));
                    }
                };
                drop(g);
                let info = ModelInfo {
                    id: opts.model_id.clone(),
                    format: "gguf",
                    architecture: arch,
                    context_length,
                    vocab_size: weights.embed.rows()?,
                    weights: weights_desc,
                    created: now_unix(),
                    kv_blocks: 0,
                    kv_block_bytes: 0,
                    max_sequences: 0,
                };
                Loaded { weights, tokenizer, info, dtype: DType::F32 }
            }
            [] => Self::load_safetensors(
                &mut files,
                prepared,
                tokenizer_json.as_ref().map(|b| b.as_slice()),
                opts,
                &device,
                &mut eos_ids,
            )?,
            many => {
                return Err(InferError::Unsupported(format!("{} GGUF files; expected one", many.len())));
            }
        };
        drop(files);
        let Loaded { weights, tokenizer, mut info, dtype } = loaded;
        if let Some(gc) = &gen_config {
            eos_ids.extend(config_ids(gc.get("eos_token_id")));
        }
        if let Some(id) = eos.as_deref().and_then(|e| tokenizer.token_to_id(e)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let template = tpl_src.map(|src| ChatTemplate::new(&src, bos, eos)).transpose()?;
        let kv_shape =
            KvShape { layers: weights.layers.len(), kv_heads: weights.shape.kv_heads, head_dim: weights.shape.head_dim };
        let model = Transformer::new(weights, dtype, &device)?;
        let max_sequences = opts.max_sequences.max(1);
        let per_context = info.context_length.div_ceil(BLOCK_SIZE);
        let block_bytes = kv_shape.block_bytes(dtype) as u64;
        let budget = opts.kv_cache_bytes.or_else(|| crate::sys::mem_available().map(|m| m / 2)).unwrap_or(1 << 30);
        let kv_blocks = usize::try_from(budget / block_bytes).unwrap_or(usize::MAX).min(max_sequences * per_context).max(1);
        let kv = KvStore::new(kv_shape, kv_blocks, dtype, &device)?;
        info.kv_blocks = kv_blocks;
        info.kv_block_bytes = block_bytes;
        info.max_sequences = max_sequences;
        log::info!(
            "inference: loaded {} ({} {}, {} weights, context {}, {} end-of-sequence ids, chat template: {}); KV cache {} blocks \
             of {BLOCK_SIZE} tokens ({} MiB, {} full contexts), up to {max_sequences} sequences per step",
            info.id,
            info.format,
            info.architecture,
            info.weights,
            info.context_length,
            eos_ids.len(),
            if template.is_some() { "yes" } else { "no" },
            kv_blocks,
            (kv_blocks as u64 * block_bytes) >> 20,
            kv_blocks / per_context.max(1),
        );
        let limits = BatchLimits { max_sequences, step_tokens: opts.step_tokens.max(1), prefix_cache: opts.prefix_cache };
        let core = Core { model, kv, pool: BlockPool::new(kv_blocks) };
        // Without `num_threads`, rayon takes RAYON_NUM_THREADS or one thread per core.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("chrysalis-infer-{i}"))
            .build()
            .map_err(|e| InferError::Device(format!("starting the inference threads: {e}")))?;
        let shared = Arc::new(Shared { core: Mutex::new(core), tokenizer, eos_ids, limits, preempted: Default::default(), pool });
        let (tx, rx) = mpsc::channel();
        let for_thread = shared.clone();
        let scheduler = std::thread::Builder::new()
            .name("chrysalis-batch".into())
            .spawn(move || {
                let s = for_thread.clone();
                s.pool.install(|| batch::run(for_thread, rx));
            })
            .map_err(|e| InferError::Device(format!("starting the scheduler thread: {e}")))?;
        Ok(Self { info, template, shared, jobs: Mutex::new(Some(tx)), scheduler: Some(scheduler) })
    }

    fn load_safetensors(
        files: &mut ModelFiles,
        prepared: Option<HashMap<String, Tensor>>,
        tokenizer_json: Option<&[u8]>,
        opts: &LoadOptions,
        device: &Device,
        eos_ids: &mut Vec<u32>,
    ) -> Result<Loaded, InferError> {
        let cfg_bytes = files.remove("config.json").ok_or_else(|| InferError::MissingFile("config.json".into()))?;
        let (arch_cfg, raw) = config::parse(&cfg_bytes)?;
        drop(cfg_bytes);
        eos_ids.extend(config_ids(raw.get("eos_token_id")));
        let tokenizer = tokenizer_json
            .ok_or_else(|| InferError::MissingFile("tokenizer.json".into()))
            .and_then(|b| Tokenizer::from_bytes(b).map_err(tokenizer_err))?;
        let shards: Vec<String> = files.keys().filter(|k| k.ends_with(".safetensors")).cloned().collect();
        if shards.is_empty() && prepared.is_none() {
            return Err(InferError::MissingFile("*.safetensors".into()));
        }
        let dtype = Self::dense_dtype(device);
        let mut tensors: HashMap<String, Tensor> = prepared.unwrap_or_default();
        for shard in shards {
            let mut bytes = files.remove(&shard).ok_or_else(|| InferError::MissingFile(shard.clone()))?;
            let loaded = guarded("reading safetensors", || load::take_shard(&shard, &mut bytes, dtype, device))?;
            for (name, t) in loaded {
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(InferError::InvalidFile { file: shard, reason: format!("tensor {name} appears twice") });
                }
            }
        }
        let context_length = arch_cfg.context_length();
        let mut source = DenseTensors { tensors, dtype, device };
        let (weights, architecture, vocab_size) = match &arch_cfg {
            ArchConfig::Llama(c) => {
                (guarded("building the llama model", || llama::from_safetensors(c, &mut source))?, "llama", c.vocab_size)
            }
            ArchConfig::Qwen2(c) => {
                (guarded("building the qwen2 model", || qwen2::from_safetensors(c, &mut source))?, "qwen2", c.vocab_size)
            }
        };
        let info = ModelInfo {
            id: opts.model_id.clone(),
            format: "safetensors",
            architecture: architecture.into(),
            context_length,
            vocab_size,
            weights: format!("{dtype:?}").to_lowercase(),
            created: now_unix(),
            kv_blocks: 0,
            kv_block_bytes: 0,
            max_sequences: 0,
        };
        Ok(Loaded { weights, tokenizer, info, dtype })
    }

    /// The dtype safetensors weights take on `device`: f32 on the CPU (candle's fastest and
    /// most exact CPU path), bf16 on GPUs.
    pub fn dense_dtype(device: &Device) -> DType {
        if device.is_cpu() { DType::F32 } else { DType::BF16 }
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tokenizer (for tests and tools that compare ids).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Token ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.shared.eos_ids
    }

    /// Tokenizes a completion prompt, adding the special tokens the tokenizer's
    /// post-processor adds (e.g. Llama's BOS) as transformers does by default.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, InferError> {
        self.encode_with(text, true)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>, InferError> {
        let enc = self.shared.tokenizer.encode(text, special).map_err(tokenizer_err)?;
        let ids = enc.get_ids().to_vec();
        if let Some(bad) = ids.iter().find(|&&id| usize::try_from(id).map_or(true, |i| i >= self.info.vocab_size)) {
            return Err(InferError::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.info.vocab_size
            )));
        }
        Ok(ids)
    }

    /// Renders a conversation with the model's chat template and tokenizes it (the template
    /// supplies special tokens itself, as in transformers' `apply_chat_template`).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, InferError> {
        let template = self.template.as_ref().ok_or_else(|| InferError::InvalidParam {
            param: "messages",
            reason: "this model has no chat template; use /v1/completions".into(),
        })?;
        let prompt = Zeroizing::new(template.render(messages)?);
        self.encode_with(&prompt, false)
    }

    /// Checks that `prompt_tokens` plus the requested completion fit the context and the KV
    /// cache; returns the completion budget (`max_tokens`, or all remaining room when `None`).
    pub fn completion_budget(&self, prompt_tokens: usize, max_tokens: Option<usize>) -> Result<usize, InferError> {
        // A sequence can never hold more positions than the whole cache.
        let context = self.info.context_length.min(self.info.kv_blocks * BLOCK_SIZE);
        if prompt_tokens == 0 {
            return Err(InferError::InvalidParam { param: "prompt", reason: "the prompt is empty".into() });
        }
        let completion = max_tokens.unwrap_or(context.saturating_sub(prompt_tokens));
        if max_tokens == Some(0) {
            return Err(InferError::InvalidParam { param: "max_tokens", reason: "must be at least 1".into() });
        }
        let requested = prompt_tokens.saturating_add(completion.max(1));
        if requested > context {
            return Err(InferError::ContextLength { context, requested, prompt: prompt_tokens, completion: completion.max(1) });
        }
        Ok(completion)
    }

    /// Queues a generation; its text and outcome arrive on the returned receiver. Dropping
    /// the receiver cancels it (its cache blocks are freed at the next step).
    pub fn submit(&self, prompt: Vec<u32>, params: &GenerateParams) -> Result<UnboundedReceiver<Event>, InferError> {
        params.sampling.validate()?;
        let max_tokens = self.completion_budget(prompt.len(), Some(params.max_tokens))?;
        if let Some(bad) = prompt.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return Err(InferError::InvalidParam {
                param: "prompt",
                reason: format!("token id {bad} is outside the vocabulary of {}", self.info.vocab_size),
            });
        }
        let (tx, rx) = unbounded_channel();
        let job = Job {
            prompt: Zeroizing::new(prompt),
            max_tokens,
            sampling: params.sampling.clone(),
            stop: params.stop.clone(),
            ignore_eos: params.ignore_eos,
            tx,
            arrived: Instant::now(),
        };
        let jobs = self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match jobs.as_ref().map(|j| j.send(job).is_ok()) {
            Some(true) => Ok(rx),
            _ => Err(InferError::Device("the scheduler has stopped".into())),
        }
    }

    /// Generates a completion for `prompt` through the scheduler, calling `sink` with each
    /// new piece of text; `sink` returning `Break` cancels. Blocks the calling thread: not
    /// for async code (use [`Engine::submit`]).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        sink: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Outcome, InferError> {
        let mut rx = self.submit(prompt.to_vec(), params)?;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Text(t) => {
                    if sink(&t).is_break() {
                        drop(rx);
                        return Ok(Outcome {
                            finish_reason: FinishReason::Cancelled,
                            prompt_tokens: prompt.len(),
                            cached_prompt_tokens: 0,
                            completion_tokens: 0,
                            tokens: Zeroizing::default(),
                            time_to_first_token: Duration::ZERO,
                            generation_time: Duration::ZERO,
                        });
                    }
                }
                Event::Done(o) => return Ok(o),
                Event::Failed(e) => return Err(e),
            }
        }
        Err(InferError::Device("the scheduler dropped a request".into()))
    }

    /// KV cache blocks free now (cached prefixes count as free: they are evicted on demand)
    /// and in all.
    pub fn cache_blocks(&self) -> (usize, usize) {
        (batch::lock(&self.shared.core).pool.free(), self.info.kv_blocks)
    }

    /// Sequences preempted so far because the KV cache ran out (each resumed later).
    pub fn preemptions(&self) -> usize {
        self.shared.preempted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A private sequence outside the scheduler, for reference tests and tools that read
    /// logits: same model and cache, its own blocks, freed when it is dropped.
    pub fn sequence(&self) -> Sequence<'_> {
        Sequence { shared: &self.shared, tokens: Vec::new(), blocks: Vec::new() }
    }
}

/// A sequence fed by hand: feed tokens, read the last position's logits.
pub struct Sequence<'a> {
    shared: &'a Shared,
    tokens: Vec<u32>,
    blocks: Vec<u32>,
}

impl Sequence<'_> {
    /// Runs `ids` after everything fed so far; returns the logits of the last one.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>, InferError> {
        if ids.is_empty() {
            return Err(InferError::InvalidParam { param: "prompt", reason: "the prompt is empty".into() });
        }
        // On the caller's thread (its kernels use rayon's global pool), not through
        // `pool.install`: one of the engine's pool threads runs the scheduler loop and
        // blocks in its job queue when idle, and an outside `install` then hung in CI.
        let mut core = batch::lock(&self.shared.core);
        let mut logits = Vec::new();
        for chunk in ids.chunks(PROMPT_CHUNK) {
            let start = self.tokens.len();
            self.tokens.extend_from_slice(chunk);
            if !core.grow(&mut self.blocks, self.tokens.len()) {
                return Err(InferError::Device("the KV cache has no free block".into()));
            }
            let slots = kv::slots(&self.blocks, self.tokens.len());
            let view = Chunk { tokens: chunk, start, slots: &slots, logits: true };
            let Core { model, kv, .. } = &mut *core;
            logits = model.forward(&[view], kv)?.pop().unwrap_or_default();
        }
        Ok(logits)
    }

    /// Forgets everything fed so far.
    pub fn reset(&mut self) {
        batch::lock(&self.shared.core).release(&mut self.blocks);
        self.tokens.clear();
    }

    /// Tokens fed so far.
    pub fn position(&self) -> usize {
        self.tokens.len()
    }
}

impl Drop for Sequence<'_> {
    fn drop(&mut self) {
        self.reset();
    }
}

fn config_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
        _ => Vec::new(),
    }
}

fn describe_weights(content: &candle_core::quantized::gguf_file::Content, policy: GgufWeights) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for info in content.tensor_infos.values() {
        if info.shape.dims().len() == 2 {
            *counts.entry(format!("{:?}", info.ggml_dtype).to_lowercase()).or_default() += 1;
        }
    }
    let types: Vec<String> = counts.into_iter().map(|(t, n)| format!("{n}×{t}")).collect();
    format!("{} (policy {})", types.join(", "), policy.name())
}
