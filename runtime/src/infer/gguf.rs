//! Reads a GGUF model from memory and applies the weight policy (keep, requantize or
//! dequantize) before candle's quantized Llama / Qwen2 code builds the model.
//! Trusts: the bytes come from the model owner (authenticated by unsealing); malformed
//! files give typed errors, and the loader's panics are caught one level up.
//!
//! Why a policy: candle 0.11 has SIMD dot products for Q4_0, Q8_0 and the K-quants but not
//! for Q4_1/Q5_0/Q5_1. Q4_1 runs on our own kernel on the CPU (`infer/kernels.rs`); Q5_0 and
//! Q5_1 fall back to candle's scalar code (~10× slower) unless converted once at load (a new
//! tensor table then points into a fresh buffer holding the converted blocks).

use super::InferError;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use zeroize::{Zeroize, Zeroizing};

/// What to do with GGUF weight matrices whose type has no SIMD kernel in candle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GgufWeights {
    /// Keep every tensor as stored: the owner's exact weights. The default: Q4_1 runs on
    /// our AVX2 kernel on the CPU (candle's kernels elsewhere), with the least memory and
    /// the logits closest to the f32 reference.
    #[default]
    Native,
    /// Convert Q4_1/Q5_0/Q5_1 matrices to Q8_0: candle's SIMD kernel, about 1.7× the memory
    /// of Q4_1, and further from the reference (SmolLM2's demo answer changes).
    RequantizeQ8_0,
    /// Convert them to Q4_0: same memory as Q4_1, SIMD kernel, adds quantization error.
    RequantizeQ4_0,
    /// Dequantize every quantized tensor to f32: exact reference path, ~8× Q4 memory.
    DequantizeF32,
}

impl GgufWeights {
    /// Parses the names used by the dev tools and the bench (`native`, `q8_0`, `q4_0`, `f32`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(Self::Native),
            "q8_0" => Some(Self::RequantizeQ8_0),
            "q4_0" => Some(Self::RequantizeQ4_0),
            "f32" => Some(Self::DequantizeF32),
            _ => None,
        }
    }

    /// The short name accepted by [`GgufWeights::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::RequantizeQ8_0 => "q8_0",
            Self::RequantizeQ4_0 => "q4_0",
            Self::DequantizeF32 => "f32",
        }
    }

    /// The type a stored tensor is converted to, or `None` to keep it.
    fn target(self, dtype: GgmlDType, dims: &[usize]) -> Option<GgmlDType> {
        // 1-D tensors (norms, biases) stay as stored: candle dequantizes them anyway.
        let [_, cols] = dims else { return None };
        match self {
            Self::Native => None,
            Self::DequantizeF32 => (dtype != GgmlDType::F32).then_some(GgmlDType::F32),
            Self::RequantizeQ8_0 | Self::RequantizeQ4_0 => {
                let to = if self == Self::RequantizeQ8_0 { GgmlDType::Q8_0 } else { GgmlDType::Q4_0 };
                let slow = matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
                (slow && cols % to.block_size() == 0).then_some(to)
            }
        }
    }
}

/// A GGUF file's header plus its (possibly converted) tensor data, which the model takes
/// tensor by tensor: each taken tensor's bytes are zeroed and their pages given back, so that
/// the file and the model built from it are not both in memory.
pub struct Gguf {
    /// Metadata and tensor table, pointing into `data`.
    pub content: gguf_file::Content,
    /// Tensor data addressed by `content.tensor_infos` offsets.
    data: Cursor<Vec<u8>>,
    /// Byte ranges of `data` taken: zeroed, their whole pages given back.
    taken: Vec<Range<usize>>,
}

impl Gguf {
    fn new(content: gguf_file::Content, data: Vec<u8>) -> Self {
        Gguf { content, data: Cursor::new(data), taken: Vec::new() }
    }

    /// Where tensor `name`'s bytes are in `data`.
    fn span(&self, name: &str) -> Option<Range<usize>> {
        let info = self.content.tensor_infos.get(name)?;
        stored_range(info, usize::try_from(self.content.tensor_data_offset).ok()?, self.data.get_ref().len())
    }

    /// Tensor `name`, which stays readable.
    pub fn read(&mut self, name: &str, device: &Device) -> Result<QTensor, InferError> {
        if self.span(name).is_some_and(|r| self.taken.contains(&r)) {
            return Err(InferError::InvalidFile { file: "gguf".into(), reason: format!("tensor {name} was taken already") });
        }
        Ok(self.content.tensor(&mut self.data, name, device)?)
    }

    /// Tensor `name`, for the last time: its bytes are zeroed and their pages given back.
    pub fn take(&mut self, name: &str, device: &Device) -> Result<QTensor, InferError> {
        let t = self.read(name, device)?;
        self.release(name);
        Ok(t)
    }

    /// Tensor `name`'s stored bytes (for a loader that builds its own matrix from them).
    pub fn bytes(&self, name: &str) -> Result<&[u8], InferError> {
        let gone = |why: &str| InferError::InvalidFile { file: "gguf".into(), reason: format!("tensor {name} {why}") };
        let r = self.span(name).ok_or_else(|| gone("is not in the file"))?;
        if self.taken.contains(&r) {
            return Err(gone("was taken already"));
        }
        self.data.get_ref().get(r).ok_or_else(|| gone("lies outside the file"))
    }

    /// Zero tensor `name`'s bytes and give their pages back: it is not read again.
    pub fn release(&mut self, name: &str) {
        if let Some(r) = self.span(name).filter(|r| r.end <= self.data.get_ref().len() && !self.taken.contains(r)) {
            let bytes = &mut self.data.get_mut()[r.clone()];
            bytes.zeroize();
            crate::sys::release_pages(bytes);
            self.taken.push(r);
        }
    }
}

impl Drop for Gguf {
    /// Zero what was not taken, then free the buffer without writing over the pages given
    /// back (which would bring them all back at once).
    fn drop(&mut self) {
        self.taken.sort_by_key(|r| r.start);
        let data = self.data.get_mut();
        let mut from = 0;
        for r in self.taken.iter().chain(std::iter::once(&(data.len()..data.len()))) {
            if let Some(gap) = data.get_mut(from..r.start.max(from)) {
                gap.zeroize();
            }
            from = from.max(r.end);
        }
        drop(std::mem::take(data));
    }
}

fn invalid(file: &str, reason: impl Into<String>) -> InferError {
    InferError::InvalidFile { file: file.into(), reason: reason.into() }
}

/// Bytes tensor `info` takes in the file: whole blocks of its type.
fn stored_len(info: &gguf_file::TensorInfo) -> usize {
    info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
}

/// Where `info`'s bytes are in a file of `file_len` bytes whose tensor data starts at `base`;
/// `None` when they are not all inside it.
fn stored_range(info: &gguf_file::TensorInfo, base: usize, file_len: usize) -> Option<Range<usize>> {
    let start = usize::try_from(info.offset).ok()?.checked_add(base)?;
    let end = start.checked_add(stored_len(info))?;
    (end <= file_len).then_some(start..end)
}

/// Parses `bytes` (a whole GGUF file) and converts tensors as `policy` says.
///
/// The returned [`Gguf`] owns the tensor data: `bytes` itself when nothing is converted (no
/// copy), else a new buffer with the converted tensors (and `bytes` is zeroized).
pub fn read(file: &str, mut bytes: Zeroizing<Vec<u8>>, policy: GgufWeights, device: &Device) -> Result<Gguf, InferError> {
    let mut cursor = Cursor::new(bytes.as_slice());
    let content = gguf_file::Content::read(&mut cursor).map_err(|e| invalid(file, e.to_string()))?;
    let base = usize::try_from(content.tensor_data_offset)
        .ok()
        .filter(|&b| b <= bytes.len())
        .ok_or_else(|| invalid(file, "tensor data offset past the end of the file"))?;
    let converts = content.tensor_infos.values().any(|i| policy.target(i.ggml_dtype, i.shape.dims()).is_some());
    if !converts {
        for (name, info) in &content.tensor_infos {
            if stored_range(info, base, bytes.len()).is_none() {
                return Err(invalid(file, format!("tensor {name} lies outside the file")));
            }
        }
        // The file's own buffer becomes the model's source: `Gguf` zeroizes it.
        return Ok(Gguf::new(content, std::mem::take(&mut *bytes)));
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos.get(*n).map(|i| i.offset));
    let mut infos = HashMap::with_capacity(names.len());
    let mut out = Vec::new();
    for name in names {
        let Some(info) = content.tensor_infos.get(name) else { continue };
        let stored =
            stored_range(info, base, bytes.len()).ok_or_else(|| invalid(file, format!("tensor {name} lies outside the file")))?;
        let align = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(32), 0);
        align(&mut out);
        let offset = out.len() as u64;
        let target = policy.target(info.ggml_dtype, info.shape.dims());
        let dtype = match target {
            None => {
                out.extend_from_slice(bytes.get(stored).unwrap_or_default());
                info.ggml_dtype
            }
            Some(to) => {
                let q = info.read(&mut cursor, content.tensor_data_offset, device)?;
                let f: Tensor = q.dequantize(device)?;
                let converted = QTensor::quantize(&f, to)?;
                out.extend_from_slice(&converted.data()?);
                to
            }
        };
        infos.insert(name.clone(), gguf_file::TensorInfo { ggml_dtype: dtype, shape: info.shape.clone(), offset });
    }
    let content =
        gguf_file::Content { magic: content.magic, metadata: content.metadata, tensor_infos: infos, tensor_data_offset: 0 };
    Ok(Gguf::new(content, out))
}

/// Typed access to GGUF metadata values.
pub struct Meta<'a> {
    /// The file name, for error messages.
    pub file: &'a str,
    /// The metadata table.
    pub md: &'a HashMap<String, gguf_file::Value>,
}

impl<'a> Meta<'a> {
    /// A string value, if present.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.md.get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }

    /// An unsigned integer value of any width, if present and non-negative.
    pub fn u64(&self, key: &str) -> Option<u64> {
        use gguf_file::Value as V;
        match self.md.get(key)? {
            V::U8(v) => Some(u64::from(*v)),
            V::U16(v) => Some(u64::from(*v)),
            V::U32(v) => Some(u64::from(*v)),
            V::U64(v) => Some(*v),
            V::I8(v) => u64::try_from(*v).ok(),
            V::I16(v) => u64::try_from(*v).ok(),
            V::I32(v) => u64::try_from(*v).ok(),
            V::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A token id value, if present and within u32.
    pub fn u32(&self, key: &str) -> Option<u32> {
        self.u64(key).and_then(|v| u32::try_from(v).ok())
    }

    /// A boolean value, if present.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.md.get(key).and_then(|v| v.to_bool().ok())
    }

    /// An array value; an error if present with another type.
    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<gguf_file::Value>>, InferError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v.to_vec().map(Some).map_err(|_| invalid(self.file, format!("{key} is not an array"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_targets() {
        let p = GgufWeights::RequantizeQ8_0;
        assert_eq!(p.target(GgmlDType::Q4_1, &[64, 576]), Some(GgmlDType::Q8_0));
        assert_eq!(p.target(GgmlDType::Q4_1, &[64, 50]), None, "rows not a block multiple");
        assert_eq!(p.target(GgmlDType::Q4_1, &[576]), None, "vectors stay");
        assert_eq!(p.target(GgmlDType::Q8_0, &[64, 576]), None);
        assert_eq!(p.target(GgmlDType::Q4K, &[64, 512]), None);
        assert_eq!(GgufWeights::Native.target(GgmlDType::Q4_1, &[64, 576]), None);
        assert_eq!(GgufWeights::DequantizeF32.target(GgmlDType::Q8_0, &[64, 576]), Some(GgmlDType::F32));
        for p in [GgufWeights::Native, GgufWeights::RequantizeQ8_0, GgufWeights::RequantizeQ4_0, GgufWeights::DequantizeF32] {
            assert_eq!(GgufWeights::from_name(p.name()), Some(p));
        }
    }

    /// Writes a small GGUF with candle's writer, converts it, and checks the converted
    /// tensors decode to (nearly) the same values.
    #[test]
    fn requantize_round_trip() -> Result<(), InferError> {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..64 * 32).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let t = Tensor::from_vec(vals, (32, 64), &dev)?;
        let q41 = QTensor::quantize(&t, GgmlDType::Q4_1)?;
        let norm = QTensor::quantize(&Tensor::ones(64, candle_core::DType::F32, &dev)?, GgmlDType::F32)?;
        let mut buf = Cursor::new(Vec::new());
        let arch = gguf_file::Value::String("llama".into());
        gguf_file::write(&mut buf, &[("general.architecture", &arch)], &[("w", &q41), ("n", &norm)])?;
        let bytes = buf.into_inner();
        let reference = q41.dequantize(&dev)?;
        for (policy, dtype, tol) in [
            (GgufWeights::Native, GgmlDType::Q4_1, 0.0),
            (GgufWeights::RequantizeQ8_0, GgmlDType::Q8_0, 0.02),
            (GgufWeights::DequantizeF32, GgmlDType::F32, 0.0),
        ] {
            let mut g = read("t.gguf", Zeroizing::new(bytes.clone()), policy, &dev)?;
            assert_eq!(g.content.tensor_infos.get("w").map(|i| i.ggml_dtype), Some(dtype));
            let w = g.take("w", &dev)?.dequantize(&dev)?;
            let diff = (w - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= tol, "{policy:?}: max diff {diff}");
            // Taken once: a second read is refused, never zeros.
            assert!(g.take("w", &dev).is_err() && g.read("w", &dev).is_err());
            let n = g.read("n", &dev)?.dequantize(&dev)?;
            assert_eq!(n.to_vec1::<f32>()?, vec![1.0; 64]);
            assert_eq!(g.read("n", &dev)?.dequantize(&dev)?.to_vec1::<f32>()?, vec![1.0; 64], "read keeps it");
            assert_eq!(Meta { file: "t", md: &g.content.metadata }.str("general.architecture"), Some("llama"));
        }
        assert!(read("t.gguf", Zeroizing::new(bytes[..bytes.len() - 10].to_vec()), GgufWeights::Native, &dev).is_err());
        assert!(read("t.gguf", Zeroizing::new(b"GGUF".to_vec()), GgufWeights::Native, &dev).is_err());
        Ok(())
    }
}
