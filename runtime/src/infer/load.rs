//! Where a family's loader gets tensors from: a GGUF file (quantized matrices stay
//! quantized) or safetensors shards (dense, in the activation dtype). [`super::llama`] and
//! [`super::qwen2`] only say which names to ask for.
//! Trusts: the files come from the model owner; a missing or misshapen tensor is an error
//! naming it, never a panic.

use super::InferError;
use super::gguf::Gguf;
use super::kernels::{QKind, QMatrix};
use super::transformer::{Embedding, Linear, Weight};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// A source of named tensors.
pub trait Tensors {
    /// A weight matrix `[out, in]` as a linear layer, with an optional bias `[out]`.
    fn linear(&mut self, weight: &str, bias: Option<&str>, shape: (usize, usize)) -> Result<Linear, InferError>;
    /// A vector or matrix as a dense tensor in the activation dtype.
    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, InferError>;
    /// Whether the source holds `name`.
    fn contains(&self, name: &str) -> bool;
    /// The embedding table `[vocab, hidden]`.
    fn embedding(&mut self, name: &str, shape: (usize, usize)) -> Result<Embedding, InferError> {
        Ok(Embedding::Dense(self.dense(name, &[shape.0, shape.1])?))
    }
}

fn check(name: &str, got: &[usize], want: &[usize]) -> Result<(), InferError> {
    if got == want {
        Ok(())
    } else {
        Err(InferError::InvalidFile { file: name.into(), reason: format!("tensor {name} has shape {got:?}, expected {want:?}") })
    }
}

fn missing(file: &str, name: &str) -> InferError {
    InferError::InvalidFile { file: file.into(), reason: format!("no tensor {name}") }
}

/// Tensors of a GGUF file. Its matrices are stored `[out, in]` as candle reads them.
pub struct GgufTensors<'a> {
    /// File name for errors.
    pub file: &'a str,
    /// The parsed file.
    pub gguf: &'a mut Gguf,
    /// Where to put them.
    pub device: &'a Device,
}

impl GgufTensors<'_> {
    fn q(&mut self, name: &str) -> Result<candle_core::quantized::QTensor, InferError> {
        if !self.contains(name) {
            return Err(missing(self.file, name));
        }
        Ok(self.gguf.content.tensor(&mut self.gguf.data, name, self.device)?)
    }

    /// `name` as one of our CPU matrices, if its type is one our kernels run.
    fn ours(&mut self, name: &str, shape: (usize, usize)) -> Result<Option<QMatrix>, InferError> {
        let w = self.q(name)?;
        check(name, w.shape().dims(), &[shape.0, shape.1])?;
        let kind = match w.dtype() {
            GgmlDType::Q4_1 => QKind::Q4_1,
            GgmlDType::Q8_0 => QKind::Q8_0,
            _ => return Ok(None),
        };
        if !self.device.is_cpu() {
            return Ok(None);
        }
        QMatrix::from_gguf(kind, &w.data()?, shape.0, shape.1).map(Some).ok_or_else(|| InferError::InvalidFile {
            file: self.file.into(),
            reason: format!("tensor {name}: {kind:?} data does not match its shape"),
        })
    }
}

impl Tensors for GgufTensors<'_> {
    fn linear(&mut self, weight: &str, bias: Option<&str>, shape: (usize, usize)) -> Result<Linear, InferError> {
        let b = bias.map(|b| self.dense(b, &[shape.0])).transpose()?;
        // Q4_1 and Q8_0 run on our kernels on the CPU (one thread pool, batch-invariant
        // rows); other types on candle's.
        if let Some(m) = self.ours(weight, shape)? {
            return Ok(Linear::new(Weight::Ours(Arc::new(m)), b));
        }
        let w = self.q(weight)?;
        Ok(Linear::new(Weight::Candle(QMatMul::from_qtensor(w)?), b))
    }

    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, InferError> {
        let t = self.q(name)?.dequantize(self.device)?;
        check(name, t.dims(), shape)?;
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.gguf.content.tensor_infos.contains_key(name)
    }

    fn embedding(&mut self, name: &str, shape: (usize, usize)) -> Result<Embedding, InferError> {
        match self.ours(name, shape)? {
            Some(m) => Ok(Embedding::Rows(Arc::new(m))),
            None => Ok(Embedding::Dense(self.dense(name, &[shape.0, shape.1])?)),
        }
    }
}

/// Tensors of safetensors shards, converted to `dtype` on `device` as they are taken.
pub struct DenseTensors<'a> {
    /// Every tensor of every shard, by name.
    pub tensors: HashMap<String, Tensor>,
    /// Activation dtype.
    pub dtype: DType,
    /// Where to put them.
    pub device: &'a Device,
}

impl Tensors for DenseTensors<'_> {
    fn linear(&mut self, weight: &str, bias: Option<&str>, shape: (usize, usize)) -> Result<Linear, InferError> {
        let w = self.dense(weight, &[shape.0, shape.1])?;
        let b = bias.map(|b| self.dense(b, &[shape.0])).transpose()?;
        Ok(Linear::new(Weight::Candle(QMatMul::Tensor(w)), b))
    }

    fn dense(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, InferError> {
        // Tied embeddings are asked for twice: clone rather than remove.
        let t = self.tensors.get(name).ok_or_else(|| missing("*.safetensors", name))?;
        check(name, t.dims(), shape)?;
        Ok(t.to_dtype(self.dtype)?.to_device(self.device)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// How a file names the decoder's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// llama.cpp's names (`blk.N.attn_q.weight`).
    Gguf,
    /// transformers' names (`model.layers.N.self_attn.q_proj.weight`).
    HuggingFace,
}

impl Naming {
    fn layer(self, i: usize, part: &str) -> String {
        match self {
            Self::Gguf => {
                let p = match part {
                    "q" => "attn_q",
                    "k" => "attn_k",
                    "v" => "attn_v",
                    "o" => "attn_output",
                    "gate" => "ffn_gate",
                    "up" => "ffn_up",
                    "down" => "ffn_down",
                    "attn_norm" => "attn_norm",
                    _ => "ffn_norm",
                };
                format!("blk.{i}.{p}")
            }
            Self::HuggingFace => {
                let p = match part {
                    "q" | "k" | "v" | "o" => format!("self_attn.{part}_proj"),
                    "gate" | "up" | "down" => format!("mlp.{part}_proj"),
                    "attn_norm" => "input_layernorm".into(),
                    _ => "post_attention_layernorm".into(),
                };
                format!("model.layers.{i}.{p}")
            }
        }
    }

    fn global(self, part: &str) -> &'static str {
        match (self, part) {
            (Self::Gguf, "embed") => "token_embd.weight",
            (Self::Gguf, "norm") => "output_norm.weight",
            (Self::Gguf, _) => "output.weight",
            (Self::HuggingFace, "embed") => "model.embed_tokens.weight",
            (Self::HuggingFace, "norm") => "model.norm.weight",
            (Self::HuggingFace, _) => "lm_head.weight",
        }
    }
}

/// Sizes a family's config gives.
#[derive(Debug, Clone)]
pub struct Dims {
    /// Everything the forward pass needs.
    pub shape: super::transformer::Shape,
    /// Decoder layers.
    pub layers: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Vocabulary rows.
    pub vocab: usize,
    /// Reuse the embeddings as the output projection (also when the file has no output
    /// projection, as GGUF files of tied models do).
    pub tied: bool,
    /// The q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
}

/// The sizes transformers' `config.json` gives both families (the fields share names).
pub struct HfSizes {
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `rms_norm_eps`.
    pub rms_eps: f64,
    /// `max_position_embeddings`.
    pub max_positions: usize,
    /// `tie_word_embeddings`.
    pub tied: bool,
}

/// [`HfSizes`] from a candle config struct: Llama's and Qwen2's name these fields alike
/// but are different types.
macro_rules! hf_sizes {
    ($c:expr) => {
        $crate::infer::load::HfSizes {
            hidden: $c.hidden_size,
            heads: $c.num_attention_heads,
            kv_heads: $c.num_key_value_heads,
            layers: $c.num_hidden_layers,
            intermediate: $c.intermediate_size,
            vocab: $c.vocab_size,
            rms_eps: $c.rms_norm_eps,
            max_positions: $c.max_position_embeddings,
            tied: $c.tie_word_embeddings,
        }
    };
}
pub(crate) use hf_sizes;

impl HfSizes {
    /// The decoder's dims (transformers' rotary pairs are split in halves).
    pub fn dims(&self, qkv_bias: bool) -> Dims {
        let shape = super::transformer::Shape {
            hidden: self.hidden,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.hidden / self.heads,
            rms_eps: self.rms_eps,
            max_positions: self.max_positions,
            rope_interleaved: false,
        };
        Dims { shape, layers: self.layers, intermediate: self.intermediate, vocab: self.vocab, tied: self.tied, qkv_bias }
    }
}

/// Takes a whole decoder from `t`.
pub fn decoder(
    t: &mut dyn Tensors,
    naming: Naming,
    dims: &Dims,
    inv_freq: Vec<f32>,
) -> Result<super::transformer::Weights, InferError> {
    let s = &dims.shape;
    let (h, q_out, kv_out) = (s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut layers = Vec::with_capacity(dims.layers);
    for i in 0..dims.layers {
        let name = |part: &str| naming.layer(i, part);
        let mut lin = |part: &str, out: usize, inp: usize, bias: bool| {
            let w = format!("{}.weight", name(part));
            let b = bias.then(|| format!("{}.bias", name(part)));
            t.linear(&w, b.as_deref(), (out, inp))
        };
        let q = lin("q", q_out, h, dims.qkv_bias)?;
        let k = lin("k", kv_out, h, dims.qkv_bias)?;
        let v = lin("v", kv_out, h, dims.qkv_bias)?;
        let o = lin("o", h, q_out, false)?;
        let gate = lin("gate", dims.intermediate, h, false)?;
        let up = lin("up", dims.intermediate, h, false)?;
        let down = lin("down", h, dims.intermediate, false)?;
        let attn_norm = t.dense(&format!("{}.weight", name("attn_norm")), &[h])?;
        let mlp_norm = t.dense(&format!("{}.weight", name("mlp_norm")), &[h])?;
        layers.push(super::transformer::Layer { attn_norm, q, k, v, o, mlp_norm, gate, up, down });
    }
    let embed = t.embedding(naming.global("embed"), (dims.vocab, h))?;
    let norm = t.dense(naming.global("norm"), &[h])?;
    let head = naming.global("lm_head");
    let lm_head = match (&embed, dims.tied || !t.contains(head)) {
        // Tied and quantized: one copy of the table serves both.
        (Embedding::Rows(m), true) => Linear::new(Weight::Ours(m.clone()), None),
        (_, true) => t.linear(naming.global("embed"), None, (dims.vocab, h))?,
        (_, false) => t.linear(head, None, (dims.vocab, h))?,
    };
    if inv_freq.len() * 2 != s.head_dim {
        return Err(InferError::Unsupported(format!("rotary over {} of {} head dimensions", inv_freq.len() * 2, s.head_dim)));
    }
    Ok(super::transformer::Weights { shape: s.clone(), embed, layers, norm, lm_head, inv_freq })
}
