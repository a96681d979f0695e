//! [`DeviceMemory`] on an NVIDIA GPU (feature `cuda`): page-locked staging buffers, copies
//! on candle's stream, tensors cut out of the stream buffer on the device.
//!
//! The staging buffers are page-locked (`cuMemHostAlloc` with no flags) so that the copies
//! are asynchronous: `cuMemcpyHtoDAsync` from pageable memory would first copy into the
//! driver's own staging memory and return only then. They are not write-combined (cudarc's
//! `alloc_pinned` default), because the workers read every buffer back while decrypting in
//! place, and reads from write-combined memory bypass the cache. In confidential-computing
//! mode the driver still copies each buffer into an encrypted bounce buffer; what the
//! pipeline gains there is that this work overlaps with decryption, and that no second copy
//! of the weights is held in guest memory.
//!
//! Each buffer carries a CUDA event recorded after its copy (cudarc does this for
//! `PinnedHostSlice`); [`Staging::host`] waits on it, so a buffer is never overwritten while
//! the GPU may still read it.

use std::ops::Range;
use std::sync::Arc;

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};
use candle_core::cuda::{CudaDevice, CudaStorage, CudaStorageSlice};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use chrysalis_proto::seal::{SinkError, Staging};

use super::InferError;
use super::staged::DeviceMemory;

/// A page-locked staging buffer.
pub struct Pinned(PinnedHostSlice<u8>);

impl Staging for Pinned {
    fn host(&mut self) -> Result<&mut [u8], SinkError> {
        // Waits for the copy recorded on the buffer's event.
        self.0.as_mut_slice().map_err(|e| SinkError(format!("waiting for a copy to the GPU: {e:?}")))
    }
}

/// The GPU's memory for one model load.
pub struct CudaMemory {
    device: CudaDevice,
    stream: Arc<CudaStream>,
    buf: Option<CudaSlice<u8>>,
}

impl CudaMemory {
    /// Copies on `device`'s stream, the one candle computes on.
    pub fn new(device: &Device) -> Result<Self, InferError> {
        let device = device.as_cuda_device()?.clone();
        let stream = device.cuda_stream();
        Ok(CudaMemory { device, stream, buf: None })
    }
}

fn driver(what: &str) -> impl Fn(candle_core::cuda::cudarc::driver::DriverError) -> SinkError + '_ {
    move |e| SinkError(format!("{what}: {e:?}"))
}

impl DeviceMemory for CudaMemory {
    type Slot = Pinned;

    fn staging(&mut self, len: usize) -> Result<Pinned, SinkError> {
        let ctx = self.stream.context();
        // SAFETY: the memory is uninitialized until written; it is zeroed here, through the
        // raw pointer, before any reference to it exists.
        let mut slice =
            unsafe { ctx.alloc_pinned_with_flags::<u8>(len, 0) }.map_err(driver("allocating a page-locked staging buffer"))?;
        let ptr = slice.as_mut_ptr().map_err(driver("a new staging buffer"))?;
        // SAFETY: `ptr` points to `len` bytes that this process owns exclusively.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Pinned(slice))
    }

    fn reserve(&mut self, len: u64) -> Result<(), SinkError> {
        let (free, total) = self.stream.context().mem_get_info().map_err(driver("reading the GPU's free memory"))?;
        let want = usize::try_from(len).unwrap_or(usize::MAX);
        // The stream and the tensors cut out of it are both on the GPU for a while.
        if want.saturating_mul(2) > free {
            return Err(SinkError(format!(
                "the model needs {} MiB of GPU memory while it loads (its {} MiB twice: the decrypted stream and the \
                 tensors cut out of it), and the GPU has {} MiB free of {} MiB; no weights were decrypted",
                (len >> 20).saturating_mul(2),
                len >> 20,
                free >> 20,
                total >> 20
            )));
        }
        self.buf = Some(self.stream.alloc_zeros::<u8>(want).map_err(driver("allocating GPU memory for the model"))?);
        Ok(())
    }

    fn copy(&mut self, offset: u64, slot: &mut Pinned) -> Result<(), SinkError> {
        let buf = self.buf.as_mut().ok_or_else(|| SinkError("no GPU memory reserved".into()))?;
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = at.saturating_add(slot.0.len());
        if end > buf.len() {
            return Err(SinkError(format!("chunk at byte {offset} beyond the reserved GPU memory")));
        }
        let mut dst = buf.slice_mut(at..end);
        self.stream.memcpy_htod(&slot.0, &mut dst).map_err(driver("copying a chunk to the GPU"))
    }

    fn wait(&mut self) -> Result<(), SinkError> {
        self.stream.synchronize().map_err(driver("waiting for the copies to the GPU"))
    }

    fn tensor(&self, range: Range<u64>, dtype: DType, shape: &[usize], _device: &Device) -> Result<Tensor, InferError> {
        let invalid = |reason: String| InferError::InvalidFile { file: "*.safetensors".into(), reason };
        let buf = self.buf.as_ref().ok_or_else(|| invalid("the model's GPU memory was released".into()))?;
        let at = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        let (start, end) = (at(range.start), at(range.end));
        if start > end || end > buf.len() {
            return Err(invalid(format!("bytes {range:?} beyond the model's GPU memory")));
        }
        let src = buf.slice(start..end);
        let elements = shape.iter().product::<usize>();
        let gpu = |e: candle_core::cuda::cudarc::driver::DriverError| InferError::Device(format!("cutting out a tensor: {e:?}"));
        macro_rules! cut {
            ($t:ty, $variant:ident) => {{
                // SAFETY: the view covers exactly `elements` values of `$t` (checked by the
                // header parser: bytes = elements × size); every bit pattern is a valid
                // `$t`, and the copy is a byte copy on the device.
                let view = unsafe { src.transmute::<$t>(elements) }.ok_or_else(|| invalid(format!("bytes {range:?} too few")))?;
                // SAFETY: fully written by the copy below before any read.
                let mut dst = unsafe { self.stream.alloc::<$t>(elements) }.map_err(gpu)?;
                self.stream.memcpy_dtod(&view, &mut dst).map_err(gpu)?;
                CudaStorageSlice::$variant(dst)
            }};
        }
        let slice = match dtype {
            DType::BF16 => cut!(half::bf16, BF16),
            DType::F16 => cut!(half::f16, F16),
            DType::F32 => cut!(f32, F32),
            other => return Err(invalid(format!("dtype {other:?} is not loaded on the GPU"))),
        };
        let storage = Storage::Cuda(CudaStorage { slice, device: self.device.clone() });
        Ok(Tensor::from_storage(storage, shape, BackpropOp::none(), false))
    }

    fn release(&mut self) {
        if let Some(mut buf) = self.buf.take() {
            // The plaintext weights do not outlive the load in freed GPU memory.
            let _ = self.stream.memset_zeros(&mut buf);
            let _ = self.stream.synchronize();
        }
    }
}
