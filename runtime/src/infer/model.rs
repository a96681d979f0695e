//! The four model variants the engine runs, behind one `forward` that returns the logits of
//! the last position as an f32 vector. Model code is candle's own (candle-transformers
//! `llama`, `qwen2`, `quantized_llama`, `quantized_qwen2`); this file only adapts them.
//! Trusts: token ids are below the vocabulary size (checked by the engine).

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, quantized_llama, quantized_qwen2, qwen2};

/// A loaded model with its per-request state (KV cache).
pub enum Model {
    /// Llama family from safetensors. `pristine` is an empty cache with the RoPE tables,
    /// cloned to reset without recomputing them.
    Llama { model: llama::Llama, pristine: llama::Cache, cache: llama::Cache },
    /// Qwen2 from safetensors.
    Qwen2(qwen2::ModelForCausalLM),
    /// Llama family from GGUF.
    QLlama(quantized_llama::ModelWeights),
    /// Qwen2 from GGUF.
    QQwen2(quantized_qwen2::ModelWeights),
}

impl Model {
    /// Forgets all cached positions.
    pub fn reset(&mut self) {
        match self {
            Self::Llama { pristine, cache, .. } => *cache = pristine.clone(),
            Self::Qwen2(m) => m.clear_kv_cache(),
            Self::QLlama(m) => m.clear_kv_cache(),
            Self::QQwen2(m) => m.clear_kv_cache(),
        }
    }

    /// Runs `ids` (non-empty) at positions `pos..pos + ids.len()` and returns the last
    /// position's logits.
    pub fn forward(&mut self, ids: &[u32], pos: usize, device: &Device) -> candle_core::Result<Vec<f32>> {
        if ids.is_empty() {
            candle_core::bail!("forward on an empty sequence");
        }
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let logits = match self {
            Self::Llama { model, cache, .. } => model.forward(&input, pos, cache)?,
            Self::Qwen2(m) => m.forward(&input, pos)?,
            Self::QLlama(m) => m.forward(&input, pos)?,
            Self::QQwen2(m) => m.forward(&input, pos)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }
}
