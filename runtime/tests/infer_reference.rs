//! Correctness of candle inference against transformers on the same weights: logits within
//! a stated tolerance, greedy generation equal token for token, tokenizer and chat-template
//! ids equal. Needs CHRYSALIS_PYTHON and CHRYSALIS_MODELS (see tests/common/mod.rs); fails
//! with the setup command when they are missing. Each test prints its max absolute logit
//! difference and records it under out/test/.

mod common;

use chrysalis_runtime::infer::{ChatMessage, DeviceChoice, Engine, GgufWeights, LoadOptions};
use common::{argmax, ids};
use serde_json::json;

/// Tokens generated greedily and compared (the brief asks for at least 32).
const GREEDY: usize = 40;

const PROMPTS: [&str; 3] = [
    "The enclave measures the weights and",
    "Step 12: the verifier rejects a report in 42 ms. Then",
    "A client asks: naïve café users, 1,000 of them —",
];

fn chats() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage { role: "user".into(), content: "What does the runtime measure?".into() }],
        vec![
            ChatMessage { role: "system".into(), content: "Be brief.".into() },
            ChatMessage { role: "user".into(), content: "Hi!".into() },
            ChatMessage { role: "assistant".into(), content: "Hello.".into() },
            ChatMessage { role: "user".into(), content: "Name 3 primes.".into() },
        ],
    ]
}

/// Greedy continuation with the logits of every step (prompt pass, then one token each).
fn candle_greedy(engine: &Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut s = engine.sequence();
    let mut logits = s.feed(prompt).unwrap_or_else(|e| panic!("feed: {e}"));
    let (mut toks, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let next = argmax(&logits);
        toks.push(next);
        rows.push(logits);
        logits = s.feed(&[next]).unwrap_or_else(|e| panic!("feed: {e}"));
    }
    (toks, rows)
}

/// Logits when feeding `cont` after `prompt` (teacher forcing), one row per token of `cont`.
fn candle_forced(engine: &Engine, prompt: &[u32], cont: &[u32]) -> Vec<Vec<f32>> {
    let mut s = engine.sequence();
    let mut rows = vec![s.feed(prompt).unwrap_or_else(|e| panic!("feed: {e}"))];
    for &t in cont.iter().take(cont.len().saturating_sub(1)) {
        rows.push(s.feed(&[t]).unwrap_or_else(|e| panic!("feed: {e}")));
    }
    rows
}

struct Compared {
    max_abs_diff: f32,
    top1_agree: usize,
    rows: usize,
}

fn compare(candle: &[Vec<f32>], reference: &[f32], vocab: usize) -> Compared {
    assert_eq!(reference.len(), candle.len() * vocab, "reference rows");
    let mut c = Compared { max_abs_diff: 0.0, top1_agree: 0, rows: candle.len() };
    for (row, r) in candle.iter().zip(reference.chunks_exact(vocab)) {
        assert!(row.len() >= vocab, "candle row has {} logits, reference {vocab}", row.len());
        let row = &row[..vocab];
        for (a, b) in row.iter().zip(r) {
            c.max_abs_diff = c.max_abs_diff.max((a - b).abs());
        }
        c.top1_agree += usize::from(argmax(row) == argmax(r));
    }
    c
}

fn record(name: &str, value: serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/test");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("infer-reference-{name}.json")), format!("{value:#}\n"));
    println!("{name}: {value}");
}

/// The device under test: `CHRYSALIS_TEST_DEVICE=cuda` (set by `xtask gpu check` on a GPU
/// machine, with a runtime built with `cuda`) runs candle on the GPU against the same
/// transformers CPU reference; default CPU.
fn device() -> DeviceChoice {
    match std::env::var("CHRYSALIS_TEST_DEVICE") {
        Ok(d) => DeviceChoice::parse(&d).unwrap_or_else(|| panic!("CHRYSALIS_TEST_DEVICE={d}: expected cpu, cuda or cuda:N")),
        Err(_) => DeviceChoice::Cpu,
    }
}

fn load(path: &std::path::Path, weights: GgufWeights) -> Engine {
    let mut opts = LoadOptions::new("test");
    opts.gguf_weights = weights;
    opts.device = device();
    Engine::load(common::read_model(path), &opts).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Safetensors models: tokenizer and template ids, logits within `tol`, greedy equal.
fn check_safetensors(arch: &str, tol: f32) {
    let dir = common::ensure_models().join(format!("tiny-{arch}"));
    let engine = load(&dir, GgufWeights::default());
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| engine.encode(p).unwrap_or_else(|e| panic!("{e}"))).collect();
    let runs: Vec<(Vec<u32>, Vec<Vec<f32>>)> = prompts.iter().map(|p| candle_greedy(&engine, p, GREEDY)).collect();
    let chat_ids: Vec<Vec<u32>> = chats().iter().map(|m| engine.encode_chat(m).unwrap_or_else(|e| panic!("{e}"))).collect();
    let request = json!({
        "model": dir,
        "tokenize": PROMPTS,
        "chat": chats().iter().map(|c| c.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "sequences": prompts.iter().zip(&runs).map(|(p, (t, _))| json!({"prompt": p, "continuation": t, "greedy": GREEDY})).collect::<Vec<_>>(),
    });
    let (result, logits) = common::reference(&request);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(p, &ids(&result["tokenize"][i]["special"]), "{arch}: prompt {i} ids differ from transformers");
    }
    for (i, c) in chat_ids.iter().enumerate() {
        assert_eq!(c, &ids(&result["chat"][i]), "{arch}: chat {i} ids differ from transformers");
    }
    let vocab = result["vocab"].as_u64().unwrap_or(0) as usize;
    let mut offset = 0;
    let mut worst = 0f32;
    for (i, (toks, rows)) in runs.iter().enumerate() {
        let n = rows.len() * vocab;
        let c = compare(rows, &logits[offset..offset + n], vocab);
        offset += n;
        worst = worst.max(c.max_abs_diff);
        let greedy = ids(&result["sequences"][i]["greedy"]);
        let same = toks.iter().zip(&greedy).take_while(|(a, b)| a == b).count();
        assert_eq!(same, GREEDY, "{arch}: prompt {i}: greedy tokens diverge at {same}");
        assert_eq!(c.top1_agree, c.rows);
    }
    record(
        &format!("tiny-{arch}"),
        json!({
            "weights": "f32 safetensors", "prompts": PROMPTS.len(), "greedy_tokens_equal": GREEDY,
            "max_abs_logit_diff": worst, "tolerance": tol,
        }),
    );
    assert!(worst <= tol, "{arch}: max |candle - transformers| = {worst} > {tol}");
}

#[test]
fn tiny_llama_f32_matches_transformers() {
    check_safetensors("llama", 1e-4);
}

#[test]
fn tiny_qwen2_f32_matches_transformers() {
    check_safetensors("qwen2", 1e-4);
}

/// SmolLM2-135M-Instruct Q4_1 GGUF. transformers dequantizes the GGUF to f32; candle's
/// dequantized path must match it tightly (logits and 40 greedy tokens), the quantized
/// paths by top-1 agreement under teacher forcing (greedy match lengths are recorded).
#[test]
fn smollm2_gguf_matches_transformers() {
    let path = common::smollm2_path();
    let reference_engine = load(&path, GgufWeights::DequantizeF32);
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| reference_engine.encode(p).unwrap_or_else(|e| panic!("{e}"))).collect();
    let f32_runs: Vec<(Vec<u32>, Vec<Vec<f32>>)> = prompts.iter().map(|p| candle_greedy(&reference_engine, p, GREEDY)).collect();
    let request = json!({
        "model": path.parent(),
        "gguf_file": path.file_name().and_then(|n| n.to_str()),
        "sequences": prompts.iter().zip(&f32_runs).map(|(p, (t, _))| json!({"prompt": p, "continuation": t, "greedy": GREEDY})).collect::<Vec<_>>(),
    });
    let (result, logits) = common::reference(&request);
    let vocab = result["vocab"].as_u64().unwrap_or(0) as usize;
    let reference_rows = |i: usize| &logits[i * GREEDY * vocab..(i + 1) * GREEDY * vocab];
    let mut summary = serde_json::Map::new();
    drop(reference_engine);
    for (weights, tol) in
        [(GgufWeights::DequantizeF32, Some(5e-4f32)), (GgufWeights::RequantizeQ8_0, None), (GgufWeights::Native, None)]
    {
        let engine = load(&path, weights);
        let (mut worst, mut agree, mut rows, mut greedy_min) = (0f32, 0, 0, usize::MAX);
        for (i, p) in prompts.iter().enumerate() {
            let forced = candle_forced(&engine, p, &f32_runs[i].0);
            let c = compare(&forced, reference_rows(i), vocab);
            worst = worst.max(c.max_abs_diff);
            agree += c.top1_agree;
            rows += c.rows;
            let (own, _) = candle_greedy(&engine, p, GREEDY);
            let greedy = ids(&result["sequences"][i]["greedy"]);
            greedy_min = greedy_min.min(own.iter().zip(&greedy).take_while(|(a, b)| a == b).count());
        }
        summary.insert(
            weights.name().into(),
            json!({
                "max_abs_logit_diff": worst, "top1_agreement": format!("{agree}/{rows}"),
                "greedy_tokens_equal_min": greedy_min, "tolerance": tol,
            }),
        );
        println!("smollm2 {}: max |diff| {worst}, top-1 {agree}/{rows}, greedy equal for {greedy_min}", weights.name());
        match weights {
            // The dequantized path is the same arithmetic as transformers': exact greedy.
            GgufWeights::DequantizeF32 => {
                assert_eq!(greedy_min, GREEDY, "f32: greedy diverges from transformers");
                assert_eq!(agree, rows, "f32: top-1 differs from transformers");
            }
            // Quantized paths also quantize activations to 8 bits (and q8_0/q4_0 requantize
            // the weights): their argmax may flip where the top two logits are close, so
            // they are held to top-1 agreement; greedy lengths are recorded.
            GgufWeights::Native | GgufWeights::RequantizeQ8_0 => {
                assert!(agree * 10 >= rows * 9, "{}: top-1 agreement {agree}/{rows} below 90%", weights.name());
            }
            // (q4_0, which loses Q4_1's per-block offset, is measured by `bench infer` only.)
            _ => {}
        }
        if let Some(tol) = tol {
            assert!(worst <= tol, "{}: max |diff| {worst} > {tol}", weights.name());
        }
    }
    record("smollm2-q4_1-gguf", serde_json::Value::Object(summary));
}

/// The tokenizer built from GGUF metadata gives transformers' ids, and the GGUF chat
/// template renders to the same ids as transformers' apply_chat_template.
#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let path = common::smollm2_path();
    let engine = load(&path, GgufWeights::Native);
    let texts = [
        "Hello world",
        "  leading spaces and\ttabs\nnew lines\n\n",
        "Numbers: 12345 3.14159 1,000,000 and 0x1F",
        "Unicode: naïve café, Ελληνικά, 日本語, emoji 🎉👍",
        "Code: fn main() { println!(\"{}\", x[0]); } // end",
        "Special tokens in text: <|im_start|>user\nhi<|im_end|>",
        "won't can't they're I'm we've you'll he'd",
        "",
    ];
    let chat = chats();
    let request = json!({
        "model": path.parent(),
        "gguf_file": path.file_name().and_then(|n| n.to_str()),
        "tokenize": texts,
        "chat": chat.iter().map(|c| c.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>()).collect::<Vec<_>>(),
    });
    let (result, _) = common::reference(&request);
    let tok = engine.tokenizer();
    for (i, t) in texts.iter().enumerate() {
        for (special, key) in [(false, "plain"), (true, "special")] {
            let ours = tok.encode(*t, special).map(|e| e.get_ids().to_vec()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ours, ids(&result["tokenize"][i][key]), "text {i} ({key}) ids differ: {t:?}");
        }
    }
    for (i, c) in chat.iter().enumerate() {
        let ours = engine.encode_chat(c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ours, ids(&result["chat"][i]), "chat {i} ids differ");
    }
    record("smollm2-tokenizer", json!({"texts": texts.len(), "chats": chat.len(), "ids_equal": true}));
}
