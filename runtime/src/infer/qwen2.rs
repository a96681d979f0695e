//! Qwen2 / Qwen2.5 dense decoders: config in, [`Weights`] out, for GGUF and safetensors.
//! Differs from [`super::llama`] in biases on the q/k/v projections and split-half rotary
//! pairs in GGUF too; the forward pass is [`super::transformer`]'s.
//! Trusts: the files come from the model owner; sizes are checked against the tensors.

use super::InferError;
use super::gguf::Gguf;
use super::load::{self, GgufTensors, Naming, Tensors};
use super::transformer::{Weights, default_inv_freq};
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
    let sizes = load::hf_sizes!(c);
    let dims = sizes.dims(true);
    let inv_freq = default_inv_freq(dims.shape.head_dim, c.rope_theta as f32);
    load::decoder(t, Naming::HuggingFace, &dims, inv_freq)
}
