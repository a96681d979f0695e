//! A sealed model loaded straight into device memory: the sink of the staged unseal
//! (`chrysalis_proto::seal::staged`) for a model that runs on a GPU.
//!
//! In confidential-computing mode every host-to-device copy goes through a bounce buffer
//! that the driver encrypts on the CPU. Unsealing the whole bundle first would hold the
//! plaintext weights in guest memory in full and copy them only afterwards; here each
//! decrypted chunk goes from a page-locked staging buffer to its place in one device buffer
//! that holds the plaintext stream, while the workers decrypt the next chunks. The guest
//! keeps only what the host needs: the small files (config, tokenizer; a GGUF file, which
//! the engine reads on the host) and each safetensors file's header. The tensors are then
//! cut out of the device buffer on the device ([`DeviceMemory::tensor`]), and the buffer is
//! freed.
//!
//! [`DeviceMemory`] is the device: CUDA behind the `cuda` feature (`cuda_memory.rs`), host
//! memory in the tests, so that everything but the CUDA calls is tested on any machine.
//!
//! Costs: guest memory, the staging buffers (`2 · threads + 2` chunks) plus the small files;
//! device memory, the stream plus one chunk while the tensors are cut out, so the weights
//! twice at the peak (a tensor cannot own a part of another allocation in candle).
//!
//! Trust: the files come from the model owner (the AEAD proved it) but are parsed as untrusted
//! bytes anyway: a malformed header is an error naming the file, never a panic.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use chrysalis_proto::seal::{SinkError, StagedFile, StagedSink, Staging};
use zeroize::Zeroizing;

use super::{InferError, ModelFiles};

/// Largest safetensors header accepted (the safetensors crate's own limit).
pub const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// A device's memory, as the staged sink uses it.
pub trait DeviceMemory {
    /// A staging buffer the device copies from.
    type Slot: Staging;
    /// A new staging buffer of `len` bytes.
    fn staging(&mut self, len: usize) -> Result<Self::Slot, SinkError>;
    /// Allocate the device buffer for the stream: `len` bytes. Fails, naming the sizes, if the
    /// device has not that much free.
    fn reserve(&mut self, len: u64) -> Result<(), SinkError>;
    /// Start copying all of `slot` to stream offset `offset` (the buffer has one chunk of
    /// slack at its end, so a whole slot always fits).
    fn copy(&mut self, offset: u64, slot: &mut Self::Slot) -> Result<(), SinkError>;
    /// Wait for every copy.
    fn wait(&mut self) -> Result<(), SinkError>;
    /// The tensor whose bytes are at `range` of the stream, as a tensor of `dtype` on
    /// `device`, in its own allocation.
    fn tensor(&self, range: Range<u64>, dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor, InferError>;
    /// Free the stream buffer.
    fn release(&mut self);
}

/// One tensor of a safetensors file: its stored dtype, shape and bytes within the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Its name.
    pub name: String,
    /// As stored.
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes, as offsets in the file.
    pub range: Range<u64>,
}

/// Parse a safetensors header from the file's first bytes: `u64_le(N) || N bytes of JSON`,
/// the tensors' data following back to back. `prefix` must hold at least `8 + N` bytes;
/// `file_size` is the whole file's. Total: every size and offset is checked (dtype known,
/// bytes = elements × dtype size, tensors back to back from the data's start to the file's
/// end, as the format requires).
pub fn safetensors_header(file: &str, prefix: &[u8], file_size: u64) -> Result<Vec<TensorEntry>, InferError> {
    let invalid = |reason: String| InferError::InvalidFile { file: file.into(), reason };
    let n = header_len(file, prefix, file_size)?;
    let json = prefix.get(8..usize::try_from(8 + n).unwrap_or(usize::MAX)).ok_or_else(|| invalid("header cut short".into()))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| invalid(format!("safetensors header: {e}")))?;
    let data_start = 8 + n;
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| invalid(format!("tensor {name}: {what}"));
        let dtype = match v.get("dtype").and_then(|d| d.as_str()) {
            Some("BF16") => DType::BF16,
            Some("F16") => DType::F16,
            Some("F32") => DType::F32,
            Some(other) => return Err(bad(&format!("dtype {other} is not supported here (BF16, F16, F32)"))),
            None => return Err(bad("no dtype")),
        };
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|a| match a.as_slice() {
                [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let bytes = shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad("shape overflows"))?;
        if offsets.1.checked_sub(offsets.0) != Some(bytes) {
            return Err(bad(&format!("data_offsets {offsets:?} do not hold {bytes} bytes of {dtype:?} {shape:?}")));
        }
        let range = data_start.saturating_add(offsets.0)..data_start.saturating_add(offsets.1);
        out.push(TensorEntry { name, dtype, shape, range });
    }
    out.sort_by_key(|t| t.range.start);
    let mut at = data_start;
    for t in &out {
        if t.range.start != at {
            return Err(invalid(format!("tensor {} starts at byte {} of the file, expected {at}", t.name, t.range.start)));
        }
        at = t.range.end;
    }
    if at != file_size {
        return Err(invalid(format!("the tensors end at byte {at}, the file at {file_size}")));
    }
    Ok(out)
}

/// `N`, the header's length, from the file's first 8 bytes.
fn header_len(file: &str, prefix: &[u8], file_size: u64) -> Result<u64, InferError> {
    let invalid = |reason: String| InferError::InvalidFile { file: file.into(), reason };
    let n = prefix
        .first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b))
        .ok_or_else(|| invalid(format!("{file_size} bytes are too few for a safetensors file")))?;
    if n > MAX_SAFETENSORS_HEADER || n.saturating_add(8) > file_size {
        return Err(invalid(format!(
            "the safetensors header claims {n} bytes (at most {MAX_SAFETENSORS_HEADER}, and the file has {file_size})"
        )));
    }
    Ok(n)
}

/// Whether a file's bytes go to the device (safetensors weights) or stay on the host.
fn on_device(name: &str) -> bool {
    name.ends_with(".safetensors")
}

/// What the host keeps of one file while the stream passes.
struct Keep {
    file: StagedFile,
    /// Whole files kept on the host; for device files, the header (`8 + N` bytes, `N` known
    /// once 8 bytes are in).
    bytes: Zeroizing<Vec<u8>>,
    /// How many of the file's bytes the host keeps.
    want: u64,
}

/// The staged unseal's sink: device files into the device's stream buffer, the rest (and the
/// safetensors headers) into host memory.
pub struct DeviceSink<D: DeviceMemory> {
    device: D,
    /// At most this many host bytes (small files and headers), else `begin` refuses.
    host_budget: u64,
    keep: Vec<Keep>,
    /// Where the device files lie in the stream: a chunk outside them is not copied.
    device_spans: Vec<Range<u64>>,
}

/// What the sink holds once the unseal has succeeded.
pub struct DeviceModel<D: DeviceMemory> {
    /// The files kept on the host, by name.
    pub host: ModelFiles,
    /// Each safetensors file's tensors, at offsets of the device's stream.
    pub tensors: Vec<(String, Vec<TensorEntry>)>,
    device: D,
}

impl<D: DeviceMemory> DeviceSink<D> {
    /// A sink onto `device` that keeps at most `host_budget` bytes on the host.
    pub fn new(device: D, host_budget: u64) -> Self {
        DeviceSink { device, host_budget, keep: Vec::new(), device_spans: Vec::new() }
    }

    /// After a successful unseal: the host files and the safetensors tables (checked).
    pub fn finish_model(self) -> Result<DeviceModel<D>, InferError> {
        let mut host = ModelFiles::new();
        let mut tensors = Vec::new();
        for k in self.keep {
            if (k.bytes.len() as u64) < k.want {
                return Err(InferError::InvalidFile {
                    file: k.file.name,
                    reason: format!("only {} of its first {} bytes arrived", k.bytes.len(), k.want),
                });
            }
            if on_device(&k.file.name) {
                let mut entries = safetensors_header(&k.file.name, &k.bytes, k.file.size)?;
                for e in &mut entries {
                    e.range = k.file.offset.saturating_add(e.range.start)..k.file.offset.saturating_add(e.range.end);
                }
                tensors.push((k.file.name, entries));
            } else {
                host.insert(k.file.name, k.bytes);
            }
        }
        Ok(DeviceModel { host, tensors, device: self.device })
    }
}

impl<D: DeviceMemory> StagedSink for DeviceSink<D> {
    type Slot = D::Slot;

    fn staging(&mut self, len: usize) -> Result<Self::Slot, SinkError> {
        self.device.staging(len)
    }

    fn begin(&mut self, stream_len: u64, chunk_size: usize, files: &[StagedFile]) -> Result<(), SinkError> {
        let host: u64 = files.iter().filter(|f| !on_device(&f.name)).map(|f| f.size).sum();
        if host > self.host_budget {
            return Err(SinkError(format!(
                "the files that stay in guest memory (all but *.safetensors) take {} MiB, more than the {} MiB this VM \
                 allows; nothing was loaded",
                host >> 20,
                self.host_budget >> 20
            )));
        }
        // One chunk of slack: a staging buffer is copied whole, also for a short last chunk.
        self.device.reserve(stream_len.saturating_add(chunk_size as u64))?;
        for f in files {
            let want = if on_device(&f.name) { 8.min(f.size) } else { f.size };
            let cap = usize::try_from(want).map_err(|_| SinkError(format!("{} is too big for this machine", f.name)))?;
            self.keep.push(Keep { file: f.clone(), bytes: Zeroizing::new(Vec::with_capacity(cap)), want });
            if on_device(&f.name) {
                self.device_spans.push(f.offset..f.offset.saturating_add(f.size));
            }
        }
        Ok(())
    }

    fn put(&mut self, _index: u32, offset: u64, len: usize, slot: &mut Self::Slot) -> Result<(), SinkError> {
        let end = offset.saturating_add(len as u64);
        {
            let bytes = slot.host()?;
            for k in &mut self.keep {
                let (f_start, f_end) = (k.file.offset, k.file.offset.saturating_add(k.file.size));
                if f_end <= offset || f_start >= end {
                    continue;
                }
                take(k, offset, bytes)?;
                // A safetensors file's first 8 bytes say how long its header is.
                if on_device(&k.file.name) && k.want == 8.min(k.file.size) && k.bytes.len() as u64 == k.want {
                    let n = header_len(&k.file.name, &k.bytes, k.file.size).map_err(|e| SinkError(e.to_string()))?;
                    k.want = 8 + n;
                    take(k, offset, bytes)?;
                }
            }
        }
        if self.device_spans.iter().any(|s| s.start < end && s.end > offset) {
            self.device.copy(offset, slot)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.device.wait()
    }
}

/// Append to `k` the bytes it still wants from the chunk at stream `offset`.
fn take(k: &mut Keep, offset: u64, chunk: &[u8]) -> Result<(), SinkError> {
    let have = k.bytes.len() as u64;
    if have >= k.want {
        return Ok(());
    }
    // File bytes [have, want) at stream [file.offset + have, file.offset + want).
    let from = k.file.offset.saturating_add(have);
    let to = k.file.offset.saturating_add(k.want).min(offset.saturating_add(chunk.len() as u64));
    if from < offset {
        // Chunks come in stream order and cover it: bytes before this chunk were missed.
        return Err(SinkError(format!("{}: bytes from {from} of the stream never arrived", k.file.name)));
    }
    if from >= to {
        return Ok(());
    }
    let at = |x: u64| usize::try_from(x.saturating_sub(offset)).unwrap_or(usize::MAX);
    let piece = chunk.get(at(from)..at(to)).ok_or_else(|| SinkError("chunk shorter than its length".into()))?;
    if k.bytes.capacity() - k.bytes.len() < piece.len() {
        // Grow into a fresh buffer: a reallocation would leave plaintext behind.
        let cap = usize::try_from(k.want).unwrap_or(usize::MAX);
        let mut grown = Zeroizing::new(Vec::with_capacity(cap));
        grown.extend_from_slice(&k.bytes);
        k.bytes = grown;
    }
    k.bytes.extend_from_slice(piece);
    Ok(())
}

impl<D: DeviceMemory> DeviceModel<D> {
    /// Every tensor of every safetensors file, on `device`, in `dtype`; the stream buffer is
    /// freed afterwards (and on error).
    pub fn tensors(mut self, dtype: DType, device: &Device) -> Result<(ModelFiles, HashMap<String, Tensor>), InferError> {
        let mut out = HashMap::new();
        let result = (|| {
            for (file, entries) in &self.tensors {
                for e in entries {
                    let t = self.device.tensor(e.range.clone(), e.dtype, &e.shape, device)?.to_dtype(dtype)?;
                    if out.insert(e.name.clone(), t).is_some() {
                        return Err(InferError::InvalidFile {
                            file: file.clone(),
                            reason: format!("tensor {} appears twice", e.name),
                        });
                    }
                }
            }
            Ok(())
        })();
        self.device.release();
        result.map(|()| (std::mem::take(&mut self.host), out))
    }
}

/// Host memory posing as a device, for the tests.
#[cfg(test)]
#[derive(Default)]
pub struct HostMemory {
    stream: Zeroizing<Vec<u8>>,
}

#[cfg(test)]
impl DeviceMemory for HostMemory {
    type Slot = Zeroizing<Vec<u8>>;

    fn staging(&mut self, len: usize) -> Result<Self::Slot, SinkError> {
        Ok(Zeroizing::new(vec![0; len]))
    }

    fn reserve(&mut self, len: u64) -> Result<(), SinkError> {
        let len = usize::try_from(len).map_err(|_| SinkError(format!("{len} bytes do not fit this machine")))?;
        self.stream = Zeroizing::new(vec![0; len]);
        Ok(())
    }

    fn copy(&mut self, offset: u64, slot: &mut Self::Slot) -> Result<(), SinkError> {
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let dst = self
            .stream
            .get_mut(at..at.saturating_add(slot.len()))
            .ok_or_else(|| SinkError(format!("chunk at {offset} beyond the reserved stream")))?;
        dst.copy_from_slice(slot);
        Ok(())
    }

    fn wait(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn tensor(&self, range: Range<u64>, dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor, InferError> {
        let at = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        let bytes = self.stream.get(at(range.start)..at(range.end)).ok_or_else(|| InferError::InvalidFile {
            file: "stream".into(),
            reason: format!("bytes {range:?} beyond the stream"),
        })?;
        Ok(Tensor::from_raw_buffer(bytes, dtype, shape, device)?)
    }

    fn release(&mut self) {
        self.stream = Zeroizing::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_proto::seal::{DataKey, SealOptions, UnsealOptions, seal_to_vec, unseal_staged};
    use std::num::NonZeroUsize;

    fn shard() -> Vec<u8> {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        let a = Tensor::arange(0f32, 6000., &dev).and_then(|t| t.reshape((60, 100))).and_then(|t| t.to_dtype(DType::BF16));
        let b = Tensor::arange(0f32, 37., &dev).and_then(|t| t.to_dtype(DType::F16));
        let c = Tensor::arange(0f32, 5., &dev);
        m.insert("model.embed_tokens.weight".to_owned(), a.unwrap_or_else(|e| panic!("{e}")));
        m.insert("model.norm.weight".to_owned(), b.unwrap_or_else(|e| panic!("{e}")));
        m.insert("lm_head.bias".to_owned(), c.unwrap_or_else(|e| panic!("{e}")));
        let dir = std::env::temp_dir().join(format!("chrysalis-staged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("s.safetensors");
        candle_core::safetensors::save(&m, &path).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    }

    #[test]
    fn the_header_parser_agrees_with_candle_and_refuses_what_is_wrong() {
        let bytes = shard();
        let entries = safetensors_header("s.safetensors", &bytes, bytes.len() as u64).unwrap_or_else(|e| panic!("{e}"));
        let st = candle_core::safetensors::SliceSafetensors::new(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries.len(), 3);
        for e in &entries {
            let view = st.get(&e.name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(view.shape(), e.shape.as_slice(), "{}", e.name);
            let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(e.range, at as u64..(at + view.data().len()) as u64, "{}", e.name);
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
        let refuse = |b: &[u8], size: u64, want: &str| {
            let e = safetensors_header("s.safetensors", b, size).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        };
        refuse(&bytes[..5], 5, "too few");
        refuse(&bytes, bytes.len() as u64 + 1, "the tensors end at byte");
        refuse(&bytes, 8 + n as u64 - 1, "header claims");
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&(MAX_SAFETENSORS_HEADER + 1).to_le_bytes());
        refuse(&huge, u64::MAX, "header claims");
        let text = String::from_utf8_lossy(&bytes[8..8 + n]).into_owned();
        let edit = |from: &str, to: &str| {
            let t = text.replacen(from, to, 1);
            let mut b = (t.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(t.as_bytes());
            b.extend_from_slice(&bytes[8 + n..]);
            b
        };
        let b = edit("\"BF16\"", "\"I64\"");
        refuse(&b, b.len() as u64, "I64 is not supported");
        let b = edit("[60,100]", "[61,100]");
        refuse(&b, b.len() as u64, "do not hold");
        let b = edit("\"dtype\"", "\"dtipe\"");
        refuse(&b, b.len() as u64, "no dtype");
        let b = edit("{", "[");
        refuse(&b, b.len() as u64, "safetensors header");
    }

    #[test]
    fn staged_tensors_equal_the_host_path_and_only_small_files_stay_on_the_host() {
        let st = shard();
        let config = br#"{"hidden_size":100}"#.to_vec();
        let key = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        // Small chunks: the header and tensors span several, files share chunks.
        let bundle = seal_to_vec(
            "m",
            &[("config.json", &config), ("model.safetensors", &st), ("tokenizer.json", b"{}")],
            &key,
            &SealOptions { chunk_size: 4096, ..SealOptions::default() },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut host_shard = Zeroizing::new(st.clone());
        let want: HashMap<String, Tensor> = super::super::load::take_shard("s", &mut host_shard, DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect();
        for threads in [1, 3] {
            let opts = UnsealOptions { threads: NonZeroUsize::new(threads), ..UnsealOptions::default() };
            let mut sink = DeviceSink::new(HostMemory::default(), 1 << 20);
            unseal_staged(&bundle, &key, &opts, &mut sink).unwrap_or_else(|e| panic!("{e}"));
            let model = sink.finish_model().unwrap_or_else(|e| panic!("{e}"));
            let kept: Vec<&String> = model.host.keys().collect();
            assert_eq!(kept, ["config.json", "tokenizer.json"]);
            assert_eq!(model.host.get("config.json").map(|b| b.as_slice()), Some(&config[..]));
            let (_, tensors) = model.tensors(DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tensors.len(), want.len());
            for (name, w) in &want {
                let got = tensors.get(name).unwrap_or_else(|| panic!("{name} missing"));
                let diff = (got - w).and_then(|d| d.abs()?.flatten_all()?.max(0)).and_then(|d| d.to_scalar::<f32>());
                assert_eq!(diff.unwrap_or(f32::NAN), 0.0, "{name}");
            }
        }
        // Too much for the host: refused before anything is decrypted past the manifest.
        let mut sink = DeviceSink::new(HostMemory::default(), 10);
        let e = unseal_staged(&bundle, &key, &UnsealOptions::default(), &mut sink).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("stay in guest memory")), "{e:?}");
    }

    /// On a GPU (`CHRYSALIS_TEST_DEVICE=cuda`, as `cargo xtask gpu check run` sets it): the
    /// same bundle through page-locked staging buffers into GPU memory gives the same
    /// tensors as the host path. Elsewhere there is no GPU to check, and it says so.
    #[cfg(feature = "cuda")]
    #[test]
    fn on_a_gpu_the_staged_tensors_equal_the_host_path() {
        if std::env::var("CHRYSALIS_TEST_DEVICE").as_deref() != Ok("cuda") {
            eprintln!("skipped: CHRYSALIS_TEST_DEVICE is not cuda");
            return;
        }
        let device = Device::new_cuda(0).unwrap_or_else(|e| panic!("{e}"));
        let st = shard();
        let key = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let bundle =
            seal_to_vec("m", &[("model.safetensors", &st)], &key, &SealOptions { chunk_size: 4096, ..SealOptions::default() })
                .unwrap_or_else(|e| panic!("{e}"));
        let mut host_shard = Zeroizing::new(st.clone());
        let want =
            super::super::load::take_shard("s", &mut host_shard, DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let memory = super::super::cuda_memory::CudaMemory::new(&device).unwrap_or_else(|e| panic!("{e}"));
        let mut sink = DeviceSink::new(memory, 1 << 20);
        unseal_staged(&bundle, &key, &UnsealOptions::default(), &mut sink).unwrap_or_else(|e| panic!("{e}"));
        let (_, tensors) = sink.finish_model().and_then(|m| m.tensors(DType::F32, &device)).unwrap_or_else(|e| panic!("{e}"));
        for (name, w) in &want {
            let got = tensors.get(name).and_then(|t| t.to_device(&Device::Cpu).ok()).unwrap_or_else(|| panic!("{name}"));
            let diff = (got - w).and_then(|d| d.abs()?.flatten_all()?.max(0)).and_then(|d| d.to_scalar::<f32>());
            assert_eq!(diff.unwrap_or(f32::NAN), 0.0, "{name}");
        }
    }

    #[test]
    fn a_lying_safetensors_header_length_is_refused_by_name() {
        let mut st = shard();
        st[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let key = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let bundle =
            seal_to_vec("m", &[("w.safetensors", &st)], &key, &SealOptions { chunk_size: 4096, ..SealOptions::default() })
                .unwrap_or_else(|e| panic!("{e}"));
        let mut sink = DeviceSink::new(HostMemory::default(), 1 << 20);
        let e = unseal_staged(&bundle, &key, &UnsealOptions::default(), &mut sink).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("w.safetensors") && e.contains("header claims")), "{e:?}");
    }
}
