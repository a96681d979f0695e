//! The inference engine: builds a model, tokenizer and chat template from unsealed
//! in-memory files, and generates text one request at a time.
//! Trusts: model files come from the model owner (authenticated by unsealing) but are still
//! parsed totally, and candle's loaders run under `catch_unwind` so a malformed model cannot
//! take PID 1 down; prompts and parameters come from API clients and are validated.
//! Never logs prompt or completion text.

use super::config::{self, ArchConfig};
use super::detok::{Delta, TextStream};
use super::gguf::{self, GgufWeights, Meta};
use super::model::Model;
use super::sampling::SamplingParams;
use super::template::{self, ChatMessage, ChatTemplate};
use super::{InferError, gguf_tokenizer};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use zeroize::Zeroizing;

/// Unsealed model files: file name → plaintext bytes (config.json, tokenizer.json,
/// tokenizer_config.json, *.safetensors shards, or one *.gguf). Entries are dropped (and so
/// zeroized) as soon as the engine has copied what it needs.
pub type ModelFiles = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// Prompt tokens processed per forward pass: bounds the attention matrix of long prompts.
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
}

impl LoadOptions {
    /// CPU, default GGUF policy.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self { model_id: model_id.into(), device: DeviceChoice::Cpu, gguf_weights: GgufWeights::default() }
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
    /// Tokens generated (including a final end-of-sequence token).
    pub completion_tokens: usize,
    /// The generated ids.
    pub tokens: Vec<u32>,
    /// Time to process the prompt and sample the first token.
    pub time_to_first_token: Duration,
    /// Time spent generating after the first token.
    pub generation_time: Duration,
}

/// A loaded model ready to serve.
pub struct Engine {
    info: ModelInfo,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    eos_ids: Vec<u32>,
    device: Device,
    model: Mutex<Model>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish_non_exhaustive()
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

impl Engine {
    /// Builds the engine, consuming (and so zeroizing) the files.
    pub fn load(mut files: ModelFiles, opts: &LoadOptions) -> Result<Self, InferError> {
        let device = device(opts.device)?;
        let tok_config = json_file(&files, "tokenizer_config.json")?;
        let gen_config = json_file(&files, "generation_config.json")?;
        let tokenizer_json = files.remove("tokenizer.json");
        let ggufs: Vec<String> = files.keys().filter(|k| k.ends_with(".gguf")).cloned().collect();
        let (mut tpl_src, mut bos, mut eos) = tok_config.as_ref().map(template::from_tokenizer_config).unwrap_or_default();
        let mut eos_ids = Vec::new();
        let (model, tokenizer, info) = match ggufs.as_slice() {
            [name] => {
                let bytes = files.remove(name).ok_or_else(|| InferError::MissingFile(name.clone()))?;
                let g = guarded("reading the gguf file", || gguf::read(name, &bytes, opts.gguf_weights, &device))?;
                drop(bytes);
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
                let vocab_size = g
                    .content
                    .tensor_infos
                    .get("token_embd.weight")
                    .and_then(|i| i.shape.dims().first().copied())
                    .ok_or_else(|| InferError::InvalidFile { file: name.clone(), reason: "no token_embd.weight".into() })?;
                let ctx_key = format!("{arch}.context_length");
                let declared = meta.u64(&ctx_key).and_then(|v| usize::try_from(v).ok());
                let weights = describe_weights(&g.content, opts.gguf_weights);
                let gguf::Gguf { content, mut data } = g;
                let (model, context_length) = match arch.as_str() {
                    "llama" => {
                        let m = guarded("building the quantized llama model", || {
                            Ok(quantized_llama::ModelWeights::from_gguf(content, &mut data, &device)?)
                        })?;
                        // candle's quantized llama has RoPE tables for MAX_SEQ_LEN positions.
                        let ctx = declared.unwrap_or(quantized_llama::MAX_SEQ_LEN).min(quantized_llama::MAX_SEQ_LEN);
                        (Model::QLlama(m), ctx)
                    }
                    "qwen2" => {
                        let ctx = declared
                            .ok_or_else(|| InferError::InvalidFile { file: name.clone(), reason: format!("no {ctx_key}") })?;
                        let m = guarded("building the quantized qwen2 model", || {
                            Ok(quantized_qwen2::ModelWeights::from_gguf(content, &mut data, &device)?)
                        })?;
                        (Model::QQwen2(m), ctx)
                    }
                    other => {
                        return Err(InferError::Unsupported(format!("GGUF architecture {other:?} (supported: llama, qwen2)")));
                    }
                };
                let info = ModelInfo {
                    id: opts.model_id.clone(),
                    format: "gguf",
                    architecture: arch,
                    context_length,
                    vocab_size,
                    weights,
                    created: now_unix(),
                };
                (model, tokenizer, info)
            }
            [] => Self::load_safetensors(&mut files, tokenizer_json.as_ref().map(|b| b.as_slice()), opts, &device, &mut eos_ids)?,
            many => {
                return Err(InferError::Unsupported(format!("{} GGUF files; expected one", many.len())));
            }
        };
        drop(files);
        if let Some(gc) = &gen_config {
            eos_ids.extend(config_ids(gc.get("eos_token_id")));
        }
        if let Some(id) = eos.as_deref().and_then(|e| tokenizer.token_to_id(e)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let template = tpl_src.map(|src| ChatTemplate::new(&src, bos, eos)).transpose()?;
        log::info!(
            "inference: loaded {} ({} {}, {} weights, context {}, {} end-of-sequence ids, chat template: {})",
            info.id,
            info.format,
            info.architecture,
            info.weights,
            info.context_length,
            eos_ids.len(),
            if template.is_some() { "yes" } else { "no" }
        );
        Ok(Self { info, tokenizer, template, eos_ids, device, model: Mutex::new(model) })
    }

    fn load_safetensors(
        files: &mut ModelFiles,
        tokenizer_json: Option<&[u8]>,
        opts: &LoadOptions,
        device: &Device,
        eos_ids: &mut Vec<u32>,
    ) -> Result<(Model, Tokenizer, ModelInfo), InferError> {
        let cfg_bytes = files.remove("config.json").ok_or_else(|| InferError::MissingFile("config.json".into()))?;
        let (arch_cfg, raw) = config::parse(&cfg_bytes)?;
        drop(cfg_bytes);
        eos_ids.extend(config_ids(raw.get("eos_token_id")));
        let tokenizer = tokenizer_json
            .ok_or_else(|| InferError::MissingFile("tokenizer.json".into()))
            .and_then(|b| Tokenizer::from_bytes(b).map_err(tokenizer_err))?;
        let shards: Vec<String> = files.keys().filter(|k| k.ends_with(".safetensors")).cloned().collect();
        if shards.is_empty() {
            return Err(InferError::MissingFile("*.safetensors".into()));
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for shard in shards {
            let bytes = files.remove(&shard).ok_or_else(|| InferError::MissingFile(shard.clone()))?;
            let loaded = guarded("reading safetensors", || {
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                    .map_err(|e| InferError::InvalidFile { file: shard.clone(), reason: e.to_string() })
            })?;
            for (name, t) in loaded {
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(InferError::InvalidFile { file: shard, reason: format!("tensor {name} appears twice") });
                }
            }
        }
        // f32 on CPU (candle's fastest and most exact CPU path); bf16 on GPUs.
        let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        let context_length = arch_cfg.context_length();
        let (model, architecture, vocab_size) = match arch_cfg {
            ArchConfig::Llama(c) => {
                let vb = VarBuilder::from_tensors(tensors, dtype, device);
                let model = guarded("building the llama model", || Ok(llama::Llama::load(vb, &c)?))?;
                let cache = llama::Cache::new(true, dtype, &c, device)?;
                (Model::Llama { model, pristine: cache.clone(), cache }, "llama", c.vocab_size)
            }
            ArchConfig::Qwen2(c) => {
                let vb = VarBuilder::from_tensors(tensors, dtype, device);
                let model = guarded("building the qwen2 model", || Ok(qwen2::ModelForCausalLM::new(&c, vb)?))?;
                (Model::Qwen2(model), "qwen2", c.vocab_size)
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
        };
        Ok((model, tokenizer, info))
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tokenizer (for tests and tools that compare ids).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Tokenizes a completion prompt, adding the special tokens the tokenizer's
    /// post-processor adds (e.g. Llama's BOS) as transformers does by default.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, InferError> {
        self.encode_with(text, true)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>, InferError> {
        let enc = self.tokenizer.encode(text, special).map_err(tokenizer_err)?;
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

    /// Checks that `prompt_tokens` plus the requested completion fit the context; returns
    /// the completion budget (`max_tokens`, or all remaining context when `None`).
    pub fn completion_budget(&self, prompt_tokens: usize, max_tokens: Option<usize>) -> Result<usize, InferError> {
        let context = self.info.context_length;
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

    /// Locks the model for direct use (reference tests, benchmarks). Serving uses
    /// [`Engine::generate`], which takes the same lock.
    pub fn sequence(&self) -> Sequence<'_> {
        let mut guard = self.model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.reset();
        Sequence { model: guard, device: &self.device, pos: 0 }
    }

    /// Generates a completion for `prompt`, calling `sink` with each new piece of text.
    ///
    /// `sink` is also called with an empty string before the prompt is processed and
    /// after every token, so the caller can cancel (return `Break`) when its client is gone.
    /// Blocking and CPU-heavy: run it on a blocking thread.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        sink: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Outcome, InferError> {
        params.sampling.validate()?;
        let budget = self.completion_budget(prompt.len(), Some(params.max_tokens))?;
        let start = Instant::now();
        let mut outcome = Outcome {
            finish_reason: FinishReason::Length,
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            tokens: Vec::new(),
            time_to_first_token: Duration::ZERO,
            generation_time: Duration::ZERO,
        };
        if sink("").is_break() {
            outcome.finish_reason = FinishReason::Cancelled;
            return Ok(outcome);
        }
        let mut sequence = self.sequence();
        let mut logits = sequence.feed(prompt)?;
        let mut sampler = params.sampling.processor();
        let mut stream = TextStream::new(&self.tokenizer, &params.stop);
        let mut first_at = None;
        loop {
            let next = sampler.sample(&Tensor::new(logits.as_slice(), &Device::Cpu)?)?;
            first_at.get_or_insert_with(Instant::now);
            outcome.completion_tokens += 1;
            outcome.tokens.push(next);
            if !params.ignore_eos && self.eos_ids.contains(&next) {
                outcome.finish_reason = FinishReason::Stop;
                break;
            }
            let delta = match stream.push(next) {
                Delta::Text(t) => t,
                Delta::Stopped(t) => {
                    outcome.finish_reason = FinishReason::Stop;
                    if !t.is_empty() {
                        let _ = sink(&t);
                    }
                    break;
                }
            };
            if sink(&delta).is_break() {
                outcome.finish_reason = FinishReason::Cancelled;
                break;
            }
            if outcome.completion_tokens >= budget {
                break;
            }
            logits = sequence.feed(&[next])?;
        }
        if outcome.finish_reason != FinishReason::Cancelled {
            let rest = stream.finish();
            if !rest.is_empty() {
                let _ = sink(&rest);
            }
        }
        let first = first_at.unwrap_or(start);
        outcome.time_to_first_token = first - start;
        outcome.generation_time = first.elapsed();
        Ok(outcome)
    }
}

/// Exclusive access to the model's state: feed tokens, read logits.
pub struct Sequence<'a> {
    model: MutexGuard<'a, Model>,
    device: &'a Device,
    pos: usize,
}

impl Sequence<'_> {
    /// Runs `ids` after everything fed so far; returns the logits of the last one.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>, InferError> {
        let mut logits = Vec::new();
        for chunk in ids.chunks(PROMPT_CHUNK) {
            logits = self.model.forward(chunk, self.pos, self.device)?;
            self.pos += chunk.len();
        }
        if ids.is_empty() {
            return Err(InferError::InvalidParam { param: "prompt", reason: "the prompt is empty".into() });
        }
        Ok(logits)
    }

    /// Forgets everything fed so far.
    pub fn reset(&mut self) {
        self.model.reset();
        self.pos = 0;
    }

    /// Tokens fed so far.
    pub fn position(&self) -> usize {
        self.pos
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
