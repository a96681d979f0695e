//! The decoder both supported families share (pre-norm RMSNorm, rotary attention with
//! grouped key/value heads, SwiGLU MLP), run over a batch of sequences at different
//! positions with keys and values in the paged cache ([`super::kv`]).
//!
//! Why our own and not candle-transformers': candle's models keep one KV cache per model and
//! take one position offset per forward, so they cannot decode sequences at different
//! positions in one pass. Here every matmul runs once per step over the rows of all
//! sequences (weights are read once per step, not once per sequence), and only attention
//! runs per sequence, against that sequence's cache slots.
//! [`super::llama`] and [`super::qwen2`] map their weight names and configs onto [`Weights`].
//! Trusts: token ids are below the vocabulary size and slots come from the block pool
//! (both checked by the engine).

use super::kernels;
use super::kv::KvStore;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};

/// Sizes and constants of a decoder.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Positions the rotary tables cover (the context length).
    pub max_positions: usize,
    /// Rotary pairs are adjacent (GGUF Llama) rather than split in halves (Hugging Face).
    pub rope_interleaved: bool,
}

/// A linear layer's weights.
#[derive(Debug)]
pub enum Weight {
    /// candle's quantized or dense matmul.
    Candle(QMatMul),
    /// Q4_1 or Q8_0 on the CPU through our kernel ([`kernels::QMatrix`]); shared with the
    /// embedding table when the model ties them.
    Ours(std::sync::Arc<kernels::QMatrix>),
}

/// A linear layer: weights quantized (GGUF) or dense, and an optional bias (Qwen2's q/k/v).
#[derive(Debug)]
pub struct Linear {
    w: Weight,
    b: Option<Tensor>,
}

impl Linear {
    /// A layer from its weight and bias.
    pub fn new(w: Weight, b: Option<Tensor>) -> Self {
        Self { w, b }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.w {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Ours(w) => {
                let m = x.dim(0)?;
                let y = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m);
                let n = y_len(&y, m)?;
                Tensor::from_vec(y, (m, n), x.device())?
            }
        };
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The token embedding table.
#[derive(Debug)]
pub enum Embedding {
    /// Dense, in the activation dtype, on the model's device.
    Dense(Tensor),
    /// Quantized on the CPU: rows are dequantized as tokens are looked up, instead of
    /// holding an f32 copy of the table (113 MiB for SmolLM2).
    Rows(std::sync::Arc<kernels::QMatrix>),
}

impl Embedding {
    /// Vocabulary rows.
    pub fn rows(&self) -> candle_core::Result<usize> {
        match self {
            Self::Dense(t) => t.dim(0),
            Self::Rows(m) => Ok(m.rows()),
        }
    }

    fn lookup(&self, ids: &[u32], hidden: usize, dev: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(t) => t.index_select(&u32s(ids, dev)?, 0),
            Self::Rows(m) => {
                let mut x = Vec::with_capacity(ids.len() * hidden);
                for &id in ids {
                    if id as usize >= m.rows() {
                        candle_core::bail!("token id {id} is outside the embedding table");
                    }
                    m.dequantize_row(id as usize, &mut x);
                }
                Tensor::from_vec(x, (ids.len(), hidden), dev)
            }
        }
    }
}

/// One decoder layer's weights.
#[derive(Debug)]
pub struct Layer {
    /// Norm before attention.
    pub attn_norm: Tensor,
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Attention output projection.
    pub o: Linear,
    /// Norm before the MLP.
    pub mlp_norm: Tensor,
    /// SwiGLU gate.
    pub gate: Linear,
    /// SwiGLU up projection.
    pub up: Linear,
    /// SwiGLU down projection.
    pub down: Linear,
}

/// A whole decoder's weights.
#[derive(Debug)]
pub struct Weights {
    /// Sizes.
    pub shape: Shape,
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Embedding,
    /// The layers.
    pub layers: Vec<Layer>,
    /// Final norm.
    pub norm: Tensor,
    /// Output projection to the vocabulary.
    pub lm_head: Linear,
    /// Rotary inverse frequencies, one per pair.
    pub inv_freq: Vec<f32>,
}

/// One sequence's part of a step.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// Tokens to run, at positions `start..start + tokens.len()`.
    pub tokens: &'a [u32],
    /// Position of the first token.
    pub start: usize,
    /// Cache slot of every position `0..start + tokens.len()`.
    pub slots: &'a [u32],
    /// Return the logits after the last token.
    pub logits: bool,
}

/// A decoder ready to run: weights plus rotary tables on the device.
#[derive(Debug)]
pub struct Transformer {
    w: Weights,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
}

fn u32s(v: &[u32], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(v, v.len(), device)
}

impl Transformer {
    /// Builds rotary tables for `shape.max_positions` and keeps the weights.
    pub fn new(w: Weights, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let n = w.shape.max_positions;
        let pairs = w.inv_freq.len();
        let angles: Vec<f32> = (0..n).flat_map(|p| w.inv_freq.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (n, pairs), device)?;
        let cos = angles.cos()?.to_dtype(dtype)?;
        let sin = angles.sin()?.to_dtype(dtype)?;
        Ok(Self { w, cos, sin, dtype, device: device.clone() })
    }

    /// Runs one step over `chunks` (each non-empty), writing their keys and values into
    /// `kv`; returns the f32 logits of every chunk that asked for them, in order.
    pub fn forward<'a>(&self, chunks: &'a [Chunk<'a>], kv: &'a mut KvStore) -> candle_core::Result<Vec<Vec<f32>>> {
        let s = &self.w.shape;
        let dev = &self.device;
        let ids: Vec<u32> = chunks.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let total = ids.len();
        if total == 0 || chunks.iter().any(|c| c.tokens.is_empty() || c.slots.len() != c.start + c.tokens.len()) {
            candle_core::bail!("a step needs non-empty chunks with a slot per position");
        }
        let positions: Vec<u32> = chunks.iter().flat_map(|c| (c.start..c.start + c.tokens.len()).map(|p| p as u32)).collect();
        let write: Vec<u32> = chunks.iter().flat_map(|c| c.slots[c.start..].iter().copied()).collect();
        let pos = u32s(&positions, dev)?;
        let cos = self.cos.index_select(&pos, 0)?;
        let sin = self.sin.index_select(&pos, 0)?;
        let mut attention = match kv {
            KvStore::Host { k, v } => Attention::Host { k, v, write, rows: host_rows(chunks) },
            KvStore::Device { k, v } => Attention::Device { k, v, plan: self.device_plan(chunks, &write)? },
        };
        let mut x = self.w.embed.lookup(&ids, s.hidden, dev)?;
        for (i, layer) in self.w.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, s.rms_eps as f32)?;
            let q = self.rope(&layer.q.forward(&h)?, s.heads, &cos, &sin)?;
            let k = self.rope(&layer.k.forward(&h)?, s.kv_heads, &cos, &sin)?;
            let v = layer.v.forward(&h)?;
            let attn = match &mut attention {
                Attention::Host { k: kc, v: vc, write, rows } => self.host_attention(i, &q, &k, &v, (kc, vc), write, rows)?,
                Attention::Device { k: kc, v: vc, plan } => self.device_attention(i, &q, &k, &v, (kc, vc), chunks, plan)?,
            };
            x = (x + layer.o.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, s.rms_eps as f32)?;
            let mlp = layer.down.forward(&(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?)?;
            x = (x + mlp)?;
        }
        let mut last = Vec::new();
        let mut row = 0;
        for c in chunks {
            row += c.tokens.len();
            if c.logits {
                last.push((row - 1) as u32);
            }
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let x = x.index_select(&u32s(&last, dev)?, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.w.norm, s.rms_eps as f32)?;
        self.w.lm_head.forward(&x)?.to_dtype(DType::F32)?.to_vec2()
    }

    /// Per-chunk index tensors of the candle-op attention path.
    fn device_plan(&self, chunks: &[Chunk<'_>], write: &[u32]) -> candle_core::Result<DevicePlan> {
        let s = &self.w.shape;
        let dev = &self.device;
        let total = write.len();
        // scatter_set wants an index shaped like its source: [kv_heads, total, head_dim].
        let write = u32s(write, dev)?.reshape((1, total, 1))?.broadcast_as((s.kv_heads, total, s.head_dim))?.contiguous()?;
        let per_chunk = chunks
            .iter()
            .map(|c| {
                let n = c.tokens.len();
                let mask = (n > 1).then(|| causal_mask(n, c.start, self.dtype, dev)).transpose()?;
                Ok((u32s(c.slots, dev)?, mask))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(DevicePlan { write, per_chunk })
    }

    /// Attention with our CPU kernel, reading the cache in place.
    #[allow(clippy::too_many_arguments)]
    fn host_attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (kc, vc): (&mut [Vec<f32>], &mut [Vec<f32>]),
        write: &[u32],
        rows: &[kernels::Row<'_>],
    ) -> candle_core::Result<Tensor> {
        let s = &self.w.shape;
        let row = s.kv_heads * s.head_dim;
        let total = write.len();
        // [heads, total, d] → [total, heads, d] rows.
        let q = q.transpose(0, 1)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let k = k.transpose(0, 1)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let v = v.flatten_all()?.to_vec1::<f32>()?;
        let (kl, vl) = (&mut kc[layer], &mut vc[layer]);
        for (t, &slot) in write.iter().enumerate() {
            let at = slot as usize * row;
            kl[at..at + row].copy_from_slice(&k[t * row..(t + 1) * row]);
            vl[at..at + row].copy_from_slice(&v[t * row..(t + 1) * row]);
        }
        let heads = kernels::Heads { heads: s.heads, kv_heads: s.kv_heads, head_dim: s.head_dim };
        let mut out = vec![0f32; total * s.heads * s.head_dim];
        kernels::attention(heads, rows, &q, kl, vl, &mut out);
        Tensor::from_vec(out, (total, s.heads * s.head_dim), &self.device)
    }

    /// Attention with candle ops (any device): keys and values are scattered into the cache
    /// tensors and gathered back per sequence.
    #[allow(clippy::too_many_arguments)]
    fn device_attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (kc, vc): (&[Tensor], &[Tensor]),
        chunks: &[Chunk<'_>],
        plan: &DevicePlan,
    ) -> candle_core::Result<Tensor> {
        let s = &self.w.shape;
        let total = q.dim(1)?;
        let v = v.reshape((total, s.kv_heads, s.head_dim))?.transpose(0, 1)?.contiguous()?;
        kc[layer].scatter_set(&plan.write, k, 1)?;
        vc[layer].scatter_set(&plan.write, &v, 1)?;
        let mut outs = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for (c, (gather, mask)) in chunks.iter().zip(&plan.per_chunk) {
            let n = c.tokens.len();
            outs.push(self.attend(&q.narrow(1, row, n)?, &kc[layer], &vc[layer], gather, mask.as_ref())?);
            row += n;
        }
        Tensor::cat(&outs, 0)
    }

    /// `[total, heads * head_dim]` → rotated `[heads, total, head_dim]`.
    fn rope(&self, x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let s = &self.w.shape;
        let total = x.dim(0)?;
        let x = x.reshape((total, heads, s.head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
        let x = if s.rope_interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)?
        };
        x.squeeze(0)
    }

    /// Attention of one sequence's `q` (`[heads, n, head_dim]`) over its cached keys and
    /// values; returns `[n, heads * head_dim]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, gather: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let s = &self.w.shape;
        let n = q.dim(1)?;
        let len = gather.dim(0)?;
        let group = s.heads / s.kv_heads;
        // Query heads sharing a key/value head become rows of one matmul: no key copies.
        let q = q.contiguous()?.reshape((s.kv_heads, group * n, s.head_dim))?;
        let k = k.index_select(gather, 1)?;
        let v = v.index_select(gather, 1)?;
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            att = att.reshape((s.kv_heads, group, n, len))?.broadcast_add(mask)?.reshape((s.kv_heads, group * n, len))?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att.to_dtype(DType::F32)?)?.to_dtype(self.dtype)?;
        att.matmul(&v)?.reshape((s.heads, n, s.head_dim))?.transpose(0, 1)?.reshape((n, s.heads * s.head_dim))
    }
}

fn y_len(y: &[f32], m: usize) -> candle_core::Result<usize> {
    if m == 0 || !y.len().is_multiple_of(m) {
        candle_core::bail!("a matmul over {m} rows returned {} values", y.len());
    }
    Ok(y.len() / m)
}

/// What each layer's attention needs, built once per step.
enum Attention<'a> {
    Host { k: &'a mut [Vec<f32>], v: &'a mut [Vec<f32>], write: Vec<u32>, rows: Vec<kernels::Row<'a>> },
    Device { k: &'a [Tensor], v: &'a [Tensor], plan: DevicePlan },
}

/// Index tensors of the candle-op path: write slots, and per chunk its gather slots and
/// causal mask.
struct DevicePlan {
    write: Tensor,
    per_chunk: Vec<(Tensor, Option<Tensor>)>,
}

/// Every query row of the step: its position and its sequence's slots.
fn host_rows<'a>(chunks: &'a [Chunk<'a>]) -> Vec<kernels::Row<'a>> {
    chunks.iter().flat_map(|c| (c.start..c.start + c.tokens.len()).map(move |pos| kernels::Row { pos, slots: c.slots })).collect()
}

/// `[n, start + n]`: 0 where query `i` (at position `start + i`) may attend, −∞ after it.
fn causal_mask(n: usize, start: usize, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    let len = start + n;
    let m: Vec<f32> = (0..n).flat_map(|i| (0..len).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(m, (n, len), dev)?.to_dtype(dtype)
}

/// Rotary inverse frequencies `1 / theta^(2i / head_dim)`.
pub fn default_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim).step_by(2).map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_from_the_offset() -> candle_core::Result<()> {
        let m = causal_mask(2, 3, DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(m[0][..4], [0.0; 4]);
        assert!(m[0][4].is_infinite());
        assert_eq!(m[1], vec![0.0; 5]);
        Ok(())
    }
}
