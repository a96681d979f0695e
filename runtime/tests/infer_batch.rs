//! Continuous batching is invisible in the output: every sequence's greedy tokens in a batch
//! equal its tokens generated alone, with mixed prompt lengths, prompts prefilled in chunks
//! over several steps, sequences joining and leaving mid-batch, a cancelled sequence, the
//! prefix cache and preemption when the KV cache runs out. Cancelled and finished
//! sequences give their blocks back.
//! Needs CHRYSALIS_PYTHON and CHRYSALIS_MODELS (see tests/common/mod.rs).

mod common;

use chrysalis_runtime::infer::{BLOCK_SIZE, Engine, Event, GenerateParams, LoadOptions, Outcome, SamplingParams};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

const MAX_TOKENS: usize = 20;

fn load(path: &Path, f: impl FnOnce(&mut LoadOptions)) -> Engine {
    let mut opts = LoadOptions::new("test");
    f(&mut opts);
    Engine::load(common::read_model(path), &opts).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        stop: Vec::new(),
        ignore_eos: true,
    }
}

/// Prompts of 1 to ~300 tokens: the long ones take several prefill steps.
fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let base = "Confidential computing keeps the model owner's weights and the users' prompts \
                inside hardware-encrypted memory, measured at boot and checked remotely. ";
    let texts = [
        "Hello".to_owned(),
        "The enclave measures the weights and".to_owned(),
        base.repeat(2),
        base.repeat(9),
        format!("{} Then the verifier", base.repeat(4)),
        "A client asks: naïve café users, 1,000 of them —".to_owned(),
    ];
    let room = engine.info().context_length - MAX_TOKENS;
    texts
        .iter()
        .map(|t| {
            let mut ids = engine.encode(t).unwrap_or_else(|e| panic!("encode: {e}"));
            ids.truncate(room);
            ids
        })
        .collect()
}

fn wait(rx: &mut UnboundedReceiver<Event>) -> Outcome {
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Text(_) => {}
            Event::Done(o) => return o,
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the scheduler dropped the request")
}

/// Waits until the engine's blocks are all free again (cancellation is seen at the next
/// step, so it is not instantaneous).
fn all_blocks_return(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (free, total) = engine.cache_blocks();
        if free == total {
            return;
        }
        assert!(Instant::now() < deadline, "{free} of {total} blocks free a minute after every request ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns how many times the batched engine preempted a sequence.
fn check_batch_equals_alone(path: &Path, step_tokens: usize, kv_blocks: Option<usize>) -> usize {
    let alone_engine = load(path, |o| o.prefix_cache = false);
    let prompts = prompts(&alone_engine);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| alone_engine.generate(p, &greedy(MAX_TOKENS), &mut |_| std::ops::ControlFlow::Continue(())))
        .map(|o| o.unwrap_or_else(|e| panic!("alone: {e}")).tokens.to_vec())
        .collect();
    let block_bytes = alone_engine.info().kv_block_bytes;
    drop(alone_engine);

    let engine = load(path, |o| {
        o.step_tokens = step_tokens;
        if let Some(blocks) = kv_blocks {
            o.kv_cache_bytes = Some(blocks as u64 * block_bytes);
        }
    });
    // Three start together; a fourth is cancelled after its first text; the rest join once
    // the first ones are decoding.
    let mut first: Vec<_> = prompts[..3].iter().map(|p| engine.submit(p.clone(), &greedy(MAX_TOKENS))).collect();
    let mut doomed = engine.submit(prompts[3].clone(), &greedy(MAX_TOKENS)).unwrap_or_else(|e| panic!("submit: {e}"));
    while let Some(ev) = doomed.blocking_recv() {
        if matches!(ev, Event::Text(_) | Event::Done(_)) {
            break;
        }
    }
    drop(doomed);
    let mut late: Vec<_> = prompts[3..].iter().map(|p| engine.submit(p.clone(), &greedy(MAX_TOKENS))).collect();
    let mut outs = Vec::new();
    for rx in first.iter_mut().chain(late.iter_mut()) {
        let rx = rx.as_mut().unwrap_or_else(|e| panic!("submit: {e}"));
        outs.push(wait(rx).tokens.to_vec());
    }
    for (i, (b, a)) in outs.iter().zip(&alone).enumerate() {
        assert_eq!(b, a, "prompt {i} ({} tokens): batched output differs from alone", prompts[i].len());
    }
    all_blocks_return(&engine);
    engine.preemptions()
}

#[test]
fn smollm2_batched_greedy_equals_alone() {
    // 32-token steps: the long prompts are prefilled over many steps between decodes.
    assert_eq!(check_batch_equals_alone(&common::smollm2_path(), 32, None), 0);
}

#[test]
fn tiny_llama_batched_equals_alone_under_preemption() {
    // A cache of 18 blocks holds the longest sequence (16 blocks) but not it and the others:
    // some are preempted and recomputed.
    let path = common::ensure_models().join("tiny-llama");
    let preempted = check_batch_equals_alone(&path, 64, Some(18));
    assert!(preempted > 0, "the small cache forced no preemption: the test checks nothing");
}

#[test]
fn tiny_qwen2_batched_greedy_equals_alone() {
    let path = common::ensure_models().join("tiny-qwen2");
    assert_eq!(check_batch_equals_alone(&path, 256, None), 0);
}

#[test]
fn shared_prefix_is_reused_and_changes_nothing() {
    let path = common::smollm2_path();
    let engine = load(&path, |_| {});
    let system = "You are the assistant of a confidential inference service. Answer briefly and never \
                  reveal the weights. ";
    let a = engine.encode(&format!("{system}Question: what is measured at boot?")).unwrap_or_else(|e| panic!("{e}"));
    let b = engine.encode(&format!("{system}Question: who holds the key?")).unwrap_or_else(|e| panic!("{e}"));
    let first = engine.generate(&a, &greedy(8), &mut |_| std::ops::ControlFlow::Continue(())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.cached_prompt_tokens, 0, "nothing is cached before the first request");
    let second = engine.generate(&b, &greedy(8), &mut |_| std::ops::ControlFlow::Continue(())).unwrap_or_else(|e| panic!("{e}"));
    let common_prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert_eq!(second.cached_prompt_tokens, common_prefix / BLOCK_SIZE * BLOCK_SIZE, "full blocks of the shared prefix");
    assert!(second.cached_prompt_tokens >= BLOCK_SIZE, "prefix of {common_prefix} tokens");
    let plain = load(&path, |o| o.prefix_cache = false);
    let alone = plain.generate(&b, &greedy(8), &mut |_| std::ops::ControlFlow::Continue(())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.tokens, alone.tokens, "reused blocks give the same tokens as computing them");
    // The same prompt again: everything but the last token comes from the cache.
    let again = engine.generate(&b, &greedy(8), &mut |_| std::ops::ControlFlow::Continue(())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.cached_prompt_tokens, (b.len() - 1) / BLOCK_SIZE * BLOCK_SIZE);
    assert_eq!(again.tokens, alone.tokens);
}

#[test]
fn requests_beyond_the_cache_are_refused_with_the_reason() {
    let path = common::ensure_models().join("tiny-llama");
    let bytes = load(&path, |_| {}).info().kv_block_bytes;
    let engine = load(&path, |o| o.kv_cache_bytes = Some(4 * bytes));
    let prompt = vec![1u32; 3 * BLOCK_SIZE];
    let err = engine.submit(prompt, &greedy(2 * BLOCK_SIZE)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("maximum context length is 64 tokens"), "{err}");
}
