//! Qwen2 / Qwen2.5 dense decoders: config in, [`Weights`] out, for GGUF and safetensors.
//! Differs from [`super::llama`] in biases on the q/k/v projections and split-half rotary
//! pairs in GGUF too; the forward pass is [`super::transformer`]'s.
//! Trusts: the files come from the model owner; sizes are checked against the tensors.

use super::InferError;
use super::gguf::Gguf;
use super::load::{self, Dims, GgufTensors, Naming, Tensors};
use super::transformer::{Shape, Weights, default_inv_freq};
use candle_core::Device;
use candle_transformers::models::qwen2::Config;

/// Reads a Qwen2 GGUF file's metadata and tensors.
pub fn from_gguf(file: &str, g: &mut Gguf, device: &Device) -> Result<(Weights, usize), InferError> {
    let (dims, inv_freq, context) = super::llama::gguf_dims(file, g, "qwen2")?;
    let mut t = GgufTensors { file, gguf: g, device };
    Ok((load::decoder(&mut t, Naming::Gguf, &dims, inv_freq)?, context))
}

/// Builds a Qwen2 decoder from a transformers config and its safetensors.
pub fn from_safetensors(c: &Config, t: &mut dyn Tensors) -> Result<Weights, InferError> {
    let head_dim = c.hidden_size / c.num_attention_heads;
    let shape = Shape {
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim,
        rms_eps: c.rms_norm_eps,
        max_positions: c.max_position_embeddings,
        rope_interleaved: false,
    };
    let dims = Dims {
        shape,
        layers: c.num_hidden_layers,
        intermediate: c.intermediate_size,
        vocab: c.vocab_size,
        tied: c.tie_word_embeddings,
        qkv_bias: true,
    };
    load::decoder(t, Naming::HuggingFace, &dims, default_inv_freq(head_dim, c.rope_theta as f32))
}
