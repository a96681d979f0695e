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
use candle_core::safetensors::SliceSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use zeroize::{Zeroize, Zeroizing};

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
    /// Tensor `name`, taken from the file (its bytes given back) unless it is the embedding
    /// table, which tied models read twice.
    fn q(&mut self, name: &str) -> Result<candle_core::quantized::QTensor, InferError> {
        if !self.contains(name) {
            return Err(missing(self.file, name));
        }
        if name == Naming::Gguf.global("embed") { self.gguf.read(name, self.device) } else { self.gguf.take(name, self.device) }
    }

    /// `name` as one of our CPU matrices, if its type is one our kernels run: built straight
    /// from the file's bytes, which are then given back (also for the embedding table: its
    /// rows serve a tied output projection without a second read). Other types are left in
    /// the file for candle's path.
    fn ours(&mut self, name: &str, shape: (usize, usize)) -> Result<Option<QMatrix>, InferError> {
        let info = self.gguf.content.tensor_infos.get(name).ok_or_else(|| missing(self.file, name))?;
        let kind = match info.ggml_dtype {
            GgmlDType::Q4_1 => QKind::Q4_1,
            GgmlDType::Q8_0 => QKind::Q8_0,
            _ => return Ok(None),
        };
        if !self.device.is_cpu() {
            return Ok(None);
        }
        check(name, info.shape.dims(), &[shape.0, shape.1])?;
        let m = QMatrix::from_gguf(kind, self.gguf.bytes(name)?, shape.0, shape.1).ok_or_else(|| InferError::InvalidFile {
            file: self.file.into(),
            reason: format!("tensor {name}: {kind:?} data does not match its shape"),
        })?;
        self.gguf.release(name);
        Ok(Some(m))
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

/// One tensor from its stored bytes, in `dtype` on the CPU: half-precision bytes become f32
/// directly (one new buffer, none in the stored type first).
fn build(data: &[u8], stored: DType, shape: &[usize], dtype: DType) -> Result<Tensor, InferError> {
    let widen = |f: fn([u8; 2]) -> f32| data.chunks_exact(2).map(|b| f([b[0], b[1]])).collect::<Vec<f32>>();
    let v = match (stored, dtype) {
        (DType::BF16, DType::F32) => widen(|b| half::bf16::from_le_bytes(b).to_f32()),
        (DType::F16, DType::F32) => widen(|b| half::f16::from_le_bytes(b).to_f32()),
        _ => return Ok(Tensor::from_raw_buffer(data, stored, shape, &Device::Cpu)?.to_dtype(dtype)?),
    };
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Every tensor of one unsealed safetensors shard, converted to `dtype` on `device`, taking
/// the shard's buffer as it goes: tensors are built in file order, and the bytes of each are
/// zeroed and their pages given back to the kernel once it is built, so that the shard and
/// the model are never both in memory (peak: the model in `dtype` plus one tensor, instead of
/// the shard, its tensors as stored and their conversion). The buffer is empty afterwards,
/// and on error it is zeroed as usual when dropped.
pub fn take_shard(
    file: &str,
    bytes: &mut Zeroizing<Vec<u8>>,
    dtype: DType,
    device: &Device,
) -> Result<Vec<(String, Tensor)>, InferError> {
    let invalid = |reason: String| InferError::InvalidFile { file: file.into(), reason };
    let mut spans: Vec<(String, DType, Vec<usize>, Range<usize>)> = {
        let st = SliceSafetensors::new(bytes.as_slice()).map_err(|e| invalid(e.to_string()))?;
        let base = bytes.as_ptr() as usize;
        st.tensors()
            .into_iter()
            .map(|(name, v)| {
                let stored = DType::try_from(v.dtype()).map_err(|e| invalid(format!("tensor {name}: {e}")))?;
                let start = (v.data().as_ptr() as usize).saturating_sub(base);
                Ok((name, stored, v.shape().to_vec(), start..start + v.data().len()))
            })
            .collect::<Result<_, InferError>>()?
    };
    spans.sort_by_key(|(.., r)| r.start);
    let mut out = Vec::with_capacity(spans.len());
    // Bytes [0, done) are zeroed; [0, released) are zeroed and given back.
    let (mut done, mut released) = (0, 0);
    for (name, stored, shape, range) in spans {
        let t = build(&bytes[range.clone()], stored, &shape, dtype)?.to_device(device)?;
        out.push((name, t));
        let end = range.end.max(done);
        bytes[done..end].zeroize();
        done = end;
        released += crate::sys::release_pages(&mut bytes[released..done]);
    }
    bytes[done..].zeroize();
    // Every byte is zero now, and most pages are gone: dropping the buffer as it is would
    // write zeros over the released pages again, and so bring them all back at once.
    drop(std::mem::take(&mut **bytes));
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `tensors` as safetensors bytes (through a file in a directory of the test's own).
    fn shard(test: &str, tensors: &[(&str, &Tensor)]) -> Zeroizing<Vec<u8>> {
        let dir = std::env::temp_dir().join(format!("chrysalis-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("shard.safetensors");
        let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| ((*n).to_owned(), (*t).clone())).collect();
        candle_core::safetensors::save(&map, &path).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        Zeroizing::new(bytes)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn take_shard_converts_every_tensor_and_empties_the_buffer() {
        let cpu = Device::Cpu;
        let ramp = |n: usize, dtype: DType| {
            Tensor::arange(0u32, n as u32, &cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| (t * 0.25)?.to_dtype(dtype))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // Big enough that pages are given back in the middle of it.
        let big = ramp(300_000, DType::BF16).reshape((1000, 300)).unwrap_or_else(|e| panic!("{e}"));
        let small = ramp(7, DType::F32);
        let half = ramp(24, DType::F16).reshape((3, 8)).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = shard("take-shard", &[("big", &big), ("small", &small), ("half", &half)]);
        let got = take_shard("test.safetensors", &mut bytes, DType::F32, &cpu).unwrap_or_else(|e| panic!("{e}"));
        assert!(bytes.is_empty(), "the shard's buffer is handed over");
        assert_eq!(got.len(), 3);
        for (name, want) in [("big", &big), ("small", &small), ("half", &half)] {
            let t = &got.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1;
            assert_eq!(t.dtype(), DType::F32, "{name}");
            assert_eq!(t.dims(), want.dims(), "{name}");
            assert_eq!(values(t), values(want), "{name}");
        }
    }

    /// Our kernels' types and candle's are each taken once from a GGUF file, and a
    /// candle-typed embedding table stays readable for a tied output projection.
    #[test]
    fn gguf_tensors_are_taken_once_on_either_path() -> Result<(), InferError> {
        use candle_core::quantized::{QTensor, gguf_file};
        let dev = Device::Cpu;
        let m = |seed: usize| {
            Tensor::from_vec((0..64 * 32).map(|i| ((i * seed % 97) as f32 - 48.0) / 20.0).collect::<Vec<_>>(), (32, 64), &dev)
        };
        let ours = QTensor::quantize(&m(7)?, GgmlDType::Q4_1)?;
        let candles = QTensor::quantize(&m(11)?, GgmlDType::Q4_0)?;
        let embed = QTensor::quantize(&m(13)?, GgmlDType::Q4_0)?;
        let mut buf = std::io::Cursor::new(Vec::new());
        let arch = gguf_file::Value::String("llama".into());
        gguf_file::write(
            &mut buf,
            &[("general.architecture", &arch)],
            &[("a", &ours), ("b", &candles), ("token_embd.weight", &embed)],
        )?;
        let mut g =
            super::super::gguf::read("t.gguf", Zeroizing::new(buf.into_inner()), super::super::gguf::GgufWeights::Native, &dev)?;
        let mut t = GgufTensors { file: "t.gguf", gguf: &mut g, device: &dev };
        t.linear("a", None, (32, 64))?;
        t.linear("b", None, (32, 64))?;
        for name in ["a", "b"] {
            assert!(t.linear(name, None, (32, 64)).is_err(), "{name} read twice");
        }
        assert!(matches!(t.embedding("token_embd.weight", (32, 64))?, Embedding::Dense(_)));
        t.linear("token_embd.weight", None, (32, 64))?;
        Ok(())
    }

    #[test]
    fn take_shard_refuses_a_damaged_shard_by_name() {
        let t = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let whole = shard("damaged-shard", &[("w", &t)]);
        for cut in [0, 7, 8, 20, whole.len() - 1] {
            let mut bytes = Zeroizing::new(whole[..cut].to_vec());
            match take_shard("model.safetensors", &mut bytes, DType::F32, &Device::Cpu) {
                Err(InferError::InvalidFile { file, .. }) => assert_eq!(file, "model.safetensors"),
                other => panic!("cut at {cut}: {:?}", other.map(|v| v.len())),
            }
        }
    }
}
