//! Continuous batching: one scheduler thread runs the model step after step; each step
//! decodes one token for every running sequence and spends the rest of its token budget on
//! prompt chunks, so a long prompt is prefilled over several steps while the others keep
//! streaming. New requests join at step boundaries and finished or cancelled ones leave.
//!
//! Admission is by free KV blocks ([`super::kv`]): a request waits until the blocks for
//! its prompt (less what the prefix cache already holds) are free. When a running sequence
//! needs a block and none is left, the most recently admitted other sequence is preempted:
//! its blocks are freed and it waits again at the head of the queue, to recompute its
//! prompt and tokens so far when blocks return (its client sees a pause, not an error).
//! Trusts: jobs were validated by the engine (ids in the vocabulary, budget within the
//! context and the cache). Never logs prompt or completion text.

use super::InferError;
use super::detok::{Delta, TextStream};
use super::engine::{Event, FinishReason, Outcome};
use super::kv::{self, BLOCK_SIZE, BlockPool, KvStore};
use super::sampling::SamplingParams;
use super::transformer::{Chunk, Transformer};
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;
use zeroize::Zeroizing;

/// The model and its cache, locked by whoever runs a step.
pub struct Core {
    /// The decoder.
    pub model: Transformer,
    /// Cache memory.
    pub kv: KvStore,
    /// Cache accounting.
    pub pool: BlockPool,
}

impl Core {
    /// Makes `blocks` cover positions `0..len`, allocating as needed; false (with what it
    /// got kept) when the pool runs out.
    pub fn grow(&mut self, blocks: &mut Vec<u32>, len: usize) -> bool {
        while blocks.len() * BLOCK_SIZE < len {
            match self.pool.allocate() {
                Some(b) => blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Returns every block in `blocks`.
    pub fn release(&mut self, blocks: &mut Vec<u32>) {
        for b in blocks.drain(..) {
            self.pool.release(b);
        }
    }
}

/// Locks `core`, surviving a poisoned lock (a caught panic leaves the cache consistent:
/// blocks are only accounted after a step succeeds).
pub fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Tokens per step (one per decoding sequence, the rest for prompt chunks).
    pub step_tokens: usize,
    /// Reuse cached blocks of identical prompt prefixes across requests.
    pub prefix_cache: bool,
}

/// A validated request on its way to the scheduler.
pub struct Job {
    /// Prompt ids (non-empty, in the vocabulary); zeroized when dropped.
    pub prompt: Zeroizing<Vec<u32>>,
    /// Most tokens to generate (≥ 1; prompt + this fits the context and the cache).
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Ignore end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Where the text goes; closed by the receiver to cancel.
    pub tx: UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
}

/// Read-only state the scheduler thread shares with the engine.
pub struct Shared {
    /// The model and cache.
    pub core: Mutex<Core>,
    /// Detokenizes the output.
    pub tokenizer: Tokenizer,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Limits.
    pub limits: BatchLimits,
    /// Sequences preempted so far (their blocks taken back to let others go on).
    pub preempted: std::sync::atomic::AtomicUsize,
    /// The threads every step runs on: one pool for our kernels and candle's rayon users,
    /// with the scheduler loop itself on one of them, so no second pool spins for cores.
    pub pool: rayon::ThreadPool,
}

struct Seq<'t> {
    /// Prompt then generated tokens (zeroized when the sequence ends; allocated once for the
    /// whole generation, so no reallocation leaves a copy behind).
    tokens: Zeroizing<Vec<u32>>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    blocks: Vec<u32>,
    /// Leading full blocks entered in the prefix index.
    registered: usize,
    max_tokens: usize,
    ignore_eos: bool,
    sampler: LogitsProcessor,
    stream: TextStream<'t>,
    tx: UnboundedSender<Event>,
    arrived: Instant,
    first_token: Option<Instant>,
    cached_tokens: usize,
}

impl Seq<'_> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn finish(mut self, core: &mut Core, reason: FinishReason) {
        core.release(&mut self.blocks);
        if reason != FinishReason::Cancelled {
            let rest = self.stream.finish();
            if !rest.is_empty() {
                let _ = self.tx.send(Event::Text(rest));
            }
        }
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let outcome = Outcome {
            finish_reason: reason,
            prompt_tokens: self.prompt_len,
            cached_prompt_tokens: self.cached_tokens,
            completion_tokens: self.generated(),
            tokens: Zeroizing::new(self.tokens[self.prompt_len..].to_vec()),
            time_to_first_token: first - self.arrived,
            generation_time: now - first,
        };
        let gen_secs = outcome.generation_time.as_secs_f64();
        log::info!(
            "serve: generated {} tokens for a {}-token prompt ({} cached, {}), first token {} ms, {:.1} tokens/s",
            outcome.completion_tokens,
            outcome.prompt_tokens,
            outcome.cached_prompt_tokens,
            outcome.finish_reason.as_str(),
            outcome.time_to_first_token.as_millis(),
            if gen_secs > 0.0 { outcome.completion_tokens.saturating_sub(1) as f64 / gen_secs } else { 0.0 }
        );
        let _ = self.tx.send(Event::Done(outcome));
    }

    fn fail(mut self, core: &mut Core, e: InferError) {
        core.release(&mut self.blocks);
        let _ = self.tx.send(Event::Failed(e));
    }
}

/// Runs until every sender of `jobs` is gone and no work is left.
pub fn run(shared: Arc<Shared>, jobs: Receiver<Job>) {
    let limits = shared.limits;
    let mut waiting: VecDeque<Seq<'_>> = VecDeque::new();
    let mut running: Vec<Seq<'_>> = Vec::new();
    let mut open = true;
    loop {
        // Intake: block only when idle.
        if running.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(job) => waiting.push_back(seq(&shared, job)),
                Err(_) => return,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(seq(&shared, job)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let mut core = lock(&shared.core);
        // Cancellations free their blocks at once.
        for s in take(&mut running, |s| s.tx.is_closed()) {
            s.finish(&mut core, FinishReason::Cancelled);
        }
        waiting.retain(|s| !s.tx.is_closed());
        admit(&mut core, &mut waiting, &mut running, limits);
        if running.is_empty() {
            // Nothing fits yet (cannot happen with an empty batch unless the pool is
            // smaller than one request, which the engine refuses at submission).
            if let Some(s) = waiting.pop_front() {
                s.fail(&mut core, InferError::Device("the KV cache cannot hold this request".into()));
            }
            continue;
        }
        let planned = plan(&mut core, &mut waiting, &mut running, limits.step_tokens, &shared.preempted);
        let result = {
            let views: Vec<Chunk<'_>> = planned
                .iter()
                .map(|p| {
                    let s = &running[p.seq];
                    Chunk {
                        tokens: &s.tokens[s.computed..s.computed + p.tokens],
                        start: s.computed,
                        slots: &p.slots,
                        logits: s.computed + p.tokens == s.tokens.len(),
                    }
                })
                .collect();
            let Core { model, kv, .. } = &mut *core;
            catch_unwind(AssertUnwindSafe(|| model.forward(&views, kv)))
                .unwrap_or(Err(candle_core::Error::Msg("model code panicked".into())))
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                log::error!("inference: a step of {} sequences failed: {e}", planned.len());
                for s in running.drain(..) {
                    s.fail(&mut core, InferError::Candle(candle_core::Error::Msg(format!("{e}"))));
                }
                continue;
            }
        };
        let mut logits = logits.into_iter();
        let mut done = Vec::new();
        for p in &planned {
            let s = &mut running[p.seq];
            s.computed += p.tokens;
            if limits.prefix_cache {
                register(&mut core.pool, s);
            }
            if s.computed < s.tokens.len() {
                continue;
            }
            let Some(row) = logits.next() else { continue };
            match step_token(&shared, s, &row) {
                Ok(None) => {}
                Ok(Some(reason)) => done.push((p.seq, Ok(reason))),
                Err(e) => done.push((p.seq, Err(e))),
            }
        }
        done.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, end) in done {
            let s = running.remove(i);
            match end {
                Ok(reason) => s.finish(&mut core, reason),
                // The client gets the error and nothing after it.
                Err(e) => s.fail(&mut core, e),
            }
        }
    }
}

fn seq<'t>(shared: &'t Shared, job: Job) -> Seq<'t> {
    let mut tokens = Zeroizing::new(Vec::with_capacity(job.prompt.len().saturating_add(job.max_tokens)));
    tokens.extend_from_slice(&job.prompt);
    Seq {
        prompt_len: job.prompt.len(),
        tokens,
        computed: 0,
        blocks: Vec::new(),
        registered: 0,
        max_tokens: job.max_tokens,
        ignore_eos: job.ignore_eos,
        sampler: job.sampling.processor(),
        stream: TextStream::new(&shared.tokenizer, job.stop),
        tx: job.tx,
        arrived: job.arrived,
        first_token: None,
        cached_tokens: 0,
    }
}

/// Removes and returns the elements matching `pred`, keeping the others in order.
fn take<T>(v: &mut Vec<T>, pred: impl Fn(&T) -> bool) -> Vec<T> {
    let (out, keep): (Vec<T>, Vec<T>) = v.drain(..).partition(|x| pred(x));
    *v = keep;
    out
}

/// Moves waiting sequences into the batch while their prompts' blocks are free.
fn admit<'t>(core: &mut Core, waiting: &mut VecDeque<Seq<'t>>, running: &mut Vec<Seq<'t>>, limits: BatchLimits) {
    while running.len() < limits.max_sequences {
        let Some(s) = waiting.front_mut() else { return };
        if limits.prefix_cache && s.blocks.is_empty() {
            // Reuse full blocks of the prefix; the last token is always computed (its
            // logits are needed).
            let reusable = (s.tokens.len() - 1) / BLOCK_SIZE;
            for b in 0..reusable {
                let parent = s.blocks.last().copied();
                match core.pool.lookup(parent, &s.tokens[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE]) {
                    Some(block) => s.blocks.push(block),
                    None => break,
                }
            }
            s.computed = s.blocks.len() * BLOCK_SIZE;
            s.registered = s.blocks.len();
            if s.first_token.is_none() {
                s.cached_tokens = s.computed.min(s.prompt_len);
            }
        }
        // Blocks still needed for the prompt, plus one per running sequence so the batch
        // can keep decoding for a while.
        let need = s.tokens.len().div_ceil(BLOCK_SIZE) - s.blocks.len() + running.len();
        if core.pool.free() < need && !running.is_empty() {
            core.release(&mut s.blocks);
            s.computed = 0;
            s.registered = 0;
            return;
        }
        if let Some(s) = waiting.pop_front() {
            running.push(s);
        }
    }
}

/// One sequence's share of a step.
struct Planned {
    /// Cache slots of its positions up to the end of this step's tokens.
    slots: Vec<u32>,
    /// Its index in `running`.
    seq: usize,
    /// How many of its tokens this step computes.
    tokens: usize,
}

/// Chooses this step's tokens: one for each decoding sequence, then prompt chunks up to
/// the budget; makes sure their blocks exist, preempting if the pool is dry.
fn plan<'t>(
    core: &mut Core,
    waiting: &mut VecDeque<Seq<'t>>,
    running: &mut Vec<Seq<'t>>,
    budget: usize,
    preempted: &std::sync::atomic::AtomicUsize,
) -> Vec<Planned> {
    // Decoding sequences first, so prompts never delay the running streams' next token.
    running.sort_by_key(|s| s.tokens.len() - s.computed > 1);
    let mut left = budget.max(1);
    let mut counts = Vec::with_capacity(running.len());
    for s in running.iter() {
        let pending = s.tokens.len() - s.computed;
        let n = if pending == 1 { 1 } else { pending.min(left) };
        left = left.saturating_sub(n);
        counts.push(n);
    }
    let mut i = 0;
    while i < running.len() {
        let n = counts[i];
        if n == 0 {
            i += 1;
            continue;
        }
        let need = running[i].computed + n;
        let mut blocks = std::mem::take(&mut running[i].blocks);
        let ok = core.grow(&mut blocks, need);
        running[i].blocks = blocks;
        if ok {
            i += 1;
            continue;
        }
        // Preempt the most recently admitted other sequence.
        let victim = (0..running.len()).rev().find(|&j| j != i);
        match victim {
            Some(j) => {
                let mut v = running.remove(j);
                counts.remove(j);
                core.release(&mut v.blocks);
                v.computed = 0;
                v.registered = 0;
                log::info!("inference: KV cache full, a sequence waits to be recomputed");
                preempted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                waiting.push_front(v);
                if j < i {
                    i -= 1;
                }
            }
            None => {
                // Alone and still short: the engine sized requests to the pool, so this is
                // a bug; end the sequence rather than spin.
                counts[i] = 0;
                let s = running.remove(i);
                counts.remove(i);
                s.fail(core, InferError::Device("the KV cache ran out of blocks".into()));
            }
        }
    }
    running
        .iter()
        .zip(&counts)
        .enumerate()
        .filter(|(_, (_, n))| **n > 0)
        .map(|(i, (s, n))| Planned { slots: kv::slots(&s.blocks, s.computed + n), seq: i, tokens: *n })
        .collect()
}

/// Enters the sequence's newly filled blocks into the prefix index.
fn register(pool: &mut BlockPool, s: &mut Seq<'_>) {
    while (s.registered + 1) * BLOCK_SIZE <= s.computed {
        let b = s.registered;
        let parent = b.checked_sub(1).map(|p| s.blocks[p]);
        pool.register(s.blocks[b], parent, &s.tokens[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE]);
        s.registered += 1;
    }
}

/// Samples the next token from `logits`, streams its text; `Some` when the sequence ends,
/// an error when sampling failed (the sequence then fails, with no `Done` after it).
fn step_token(shared: &Shared, s: &mut Seq<'_>, logits: &[f32]) -> Result<Option<FinishReason>, InferError> {
    let next = Tensor::new(logits, &Device::Cpu).and_then(|t| s.sampler.sample(&t)).map_err(InferError::Candle)?;
    s.first_token.get_or_insert_with(Instant::now);
    s.tokens.push(next);
    if !s.ignore_eos && shared.eos_ids.contains(&next) {
        return Ok(Some(FinishReason::Stop));
    }
    match s.stream.push(next) {
        Delta::Text(t) => {
            if !t.is_empty() && s.tx.send(Event::Text(t)).is_err() {
                return Ok(Some(FinishReason::Cancelled));
            }
        }
        Delta::Stopped(t) => {
            if !t.is_empty() {
                let _ = s.tx.send(Event::Text(t));
            }
            return Ok(Some(FinishReason::Stop));
        }
    }
    Ok((s.generated() >= s.max_tokens).then_some(FinishReason::Length))
}
