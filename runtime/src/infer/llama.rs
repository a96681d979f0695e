//! The Llama family (Llama 2/3, TinyLlama, SmolLM/SmolLM2, Mistral without sliding window):
//! config in, [`Weights`] out, for GGUF and safetensors. The forward pass is
//! [`super::transformer`]'s.
//! Trusts: the files come from the model owner; sizes are checked against the tensors.

use super::InferError;
use super::gguf::{Gguf, Meta};
use super::load::{self, Dims, GgufTensors, Naming, Tensors};
use super::transformer::{Shape, Weights, default_inv_freq};
use candle_core::Device;
use candle_transformers::models::llama::{Config, Llama3RopeConfig, Llama3RopeType};

/// Reads a Llama GGUF file's metadata and tensors.
pub fn from_gguf(file: &str, g: &mut Gguf, device: &Device) -> Result<(Weights, usize), InferError> {
    let (dims, mut inv_freq, context) = gguf_dims(file, g, "llama")?;
    let mut t = GgufTensors { file, gguf: g, device };
    // Llama 3.1+ GGUF files carry their rotary scaling as per-pair divisors.
    if t.contains("rope_freqs.weight") {
        let f = t.dense("rope_freqs.weight", &[inv_freq.len()])?.to_vec1::<f32>()?;
        for (x, d) in inv_freq.iter_mut().zip(f) {
            *x /= d;
        }
    }
    Ok((load::decoder(&mut t, Naming::Gguf, &dims, inv_freq)?, context))
}

/// The sizes of a llama.cpp-named decoder (`arch` is `llama` or `qwen2`); returns them with
/// the default rotary frequencies and the context length.
pub fn gguf_dims(file: &str, g: &Gguf, arch: &str) -> Result<(Dims, Vec<f32>, usize), InferError> {
    let meta = Meta { file, md: &g.content.metadata };
    let get = |key: &str| {
        meta.u64(&format!("{arch}.{key}"))
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0 && v <= 1 << 24)
            .ok_or_else(|| InferError::InvalidFile { file: file.into(), reason: format!("no usable {arch}.{key}") })
    };
    let hidden = get("embedding_length")?;
    let heads = get("attention.head_count")?;
    let kv_heads = meta.u64(&format!("{arch}.attention.head_count_kv")).map_or(Ok(heads), |_| get("attention.head_count_kv"))?;
    if hidden % heads != 0 || heads % kv_heads != 0 {
        return Err(InferError::InvalidFile { file: file.into(), reason: "head counts do not divide the width".into() });
    }
    let head_dim = hidden / heads;
    if meta.u64(&format!("{arch}.rope.dimension_count")).is_some_and(|d| d as usize != head_dim) {
        return Err(InferError::Unsupported("rotary over part of the head (rope.dimension_count)".into()));
    }
    let eps = match g.content.metadata.get(&format!("{arch}.attention.layer_norm_rms_epsilon")) {
        Some(v) => v.to_f32().map_err(|e| InferError::InvalidFile { file: file.into(), reason: e.to_string() })?,
        None => 1e-5,
    };
    let theta = g.content.metadata.get(&format!("{arch}.rope.freq_base")).and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0);
    let vocab = g
        .content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|i| i.shape.dims().first().copied())
        .ok_or_else(|| InferError::InvalidFile { file: file.into(), reason: "no token_embd.weight".into() })?;
    let intermediate = get("feed_forward_length")?;
    let context = get("context_length")?;
    let shape = Shape {
        hidden,
        heads,
        kv_heads,
        head_dim,
        rms_eps: f64::from(eps),
        max_positions: context,
        // llama.cpp permutes Llama's q/k rows so that rotary pairs are adjacent; Qwen2's
        // are not permuted (llama_model_rope_type() in llama.cpp).
        rope_interleaved: arch == "llama",
    };
    let dims = Dims { shape, layers: get("block_count")?, intermediate, vocab, tied: false, qkv_bias: arch == "qwen2" };
    Ok((dims, default_inv_freq(head_dim, theta), context))
}

/// Builds a Llama decoder from a transformers config and its safetensors.
pub fn from_safetensors(c: &Config, t: &mut dyn Tensors) -> Result<Weights, InferError> {
    let sizes = load::hf_sizes!(c);
    let dims = sizes.dims(false);
    let mut inv_freq = default_inv_freq(dims.shape.head_dim, c.rope_theta);
    if let Some(r) = &c.rope_scaling {
        llama3_scaling(&mut inv_freq, r);
    }
    load::decoder(t, Naming::HuggingFace, &dims, inv_freq)
}

/// Llama 3.1's frequency-dependent rotary scaling (transformers' `_compute_llama3_parameters`).
fn llama3_scaling(inv_freq: &mut [f32], r: &Llama3RopeConfig) {
    if matches!(r.rope_type, Llama3RopeType::Default) {
        return;
    }
    let orig = r.original_max_position_embeddings as f32;
    let low_wavelen = orig / r.low_freq_factor;
    let high_wavelen = orig / r.high_freq_factor;
    for f in inv_freq {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        *f = if wavelen < high_wavelen {
            *f
        } else if wavelen > low_wavelen {
            *f / r.factor
        } else {
            let smooth = (orig / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
            (1.0 - smooth) * *f / r.factor + smooth * *f
        };
    }
}
