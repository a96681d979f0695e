//! The CUDA driver library (`libcuda.so.1`) as PID 1 checks it at boot, before any model is
//! loaded: that the image's copy opens and has the driver API the runtime needs, and, once
//! the NVIDIA modules are loaded, that CUDA sees the GPUs. candle (through cudarc) opens the
//! same library again later to run inference; this check makes a broken image fail at boot
//! with the library's own error instead of at the first request.
//!
//! Declarations follow `cuda.h` of Debian's `nvidia-cuda-dev` 12.4.127~12.4.1-2. The library
//! is loaded at run time with `libloading`, as NVML is ([`super::nvml`]).

use std::ffi::{CStr, c_char, c_int, c_uint};

use libloading::Library;

/// The soname the driver package installs.
pub const LIBRARY: &str = "libcuda.so.1";

/// `CUresult` (`CUDA_SUCCESS` = 0).
type CuResult = c_int;

/// `CUDA_ERROR_NO_DEVICE`: the driver found no CUDA-capable device.
pub const ERROR_NO_DEVICE: i32 = 100;

/// Why the driver library is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// `libcuda.so.1` could not be loaded (missing, or a library it needs is missing).
    #[error("loading {path}: {source} (the GPU image must carry the driver's libcuda.so.1 and what it links)")]
    Load {
        /// What was loaded.
        path: String,
        /// Why it failed.
        source: libloading::Error,
    },
    /// The library lacks a function this runtime calls.
    #[error("{path} lacks {name}: {source}")]
    Symbol {
        /// The library.
        path: String,
        /// The function.
        name: &'static str,
        /// The loader's error.
        source: libloading::Error,
    },
    /// A driver API call failed.
    #[error("{call} failed: {name} (CUresult {code})")]
    Call {
        /// The function.
        call: &'static str,
        /// `CUresult`.
        code: i32,
        /// `cuGetErrorName`, or "unknown".
        name: String,
    },
}

struct Fns {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    driver_version: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// The opened driver library. Opening runs no driver code that touches a device:
/// `cuDriverGetVersion` works before `cuInit` and without a GPU.
pub struct Cuda {
    fns: Fns,
    /// `cuDriverGetVersion`: 1000 × major + 10 × minor (12040 for CUDA 12.4).
    pub driver_api: i32,
    _lib: Library,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda(driver API {})", self.driver_api)
    }
}

/// Resolve `name` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the exact C signature `cuda.h` declares for `name`.
unsafe fn symbol<T: Copy>(lib: &Library, path: &str, name: &'static str) -> Result<T, CudaError> {
    // SAFETY: the caller guarantees that T is the symbol's C signature; the pointer is
    // copied out and used only while `lib` stays loaded (`Cuda` owns both).
    unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|source| CudaError::Symbol { path: path.into(), name, source })
}

impl Cuda {
    /// Open [`LIBRARY`] from the loader path.
    pub fn open() -> Result<Self, CudaError> {
        Self::open_path(LIBRARY)
    }

    /// Open a driver library at `path` and read its API version.
    pub fn open_path(path: &str) -> Result<Self, CudaError> {
        // SAFETY: loading runs libcuda's initialisers, which only set up the library itself.
        let lib = unsafe { Library::new(path) }.map_err(|source| CudaError::Load { path: path.into(), source })?;
        // SAFETY: each signature is copied from cuda.h (CUDA 12.4).
        let fns = unsafe {
            Fns {
                init: symbol(&lib, path, "cuInit")?,
                driver_version: symbol(&lib, path, "cuDriverGetVersion")?,
                device_count: symbol(&lib, path, "cuDeviceGetCount")?,
                error_name: symbol(&lib, path, "cuGetErrorName")?,
            }
        };
        let mut version: c_int = 0;
        let mut cuda = Cuda { fns, driver_api: 0, _lib: lib };
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
        cuda.check("cuDriverGetVersion", unsafe { (cuda.fns.driver_version)(&mut version) })?;
        cuda.driver_api = version;
        Ok(cuda)
    }

    /// `cuInit(0)` then `cuDeviceGetCount`: how many GPUs CUDA can use (0 when `cuInit`
    /// answers `CUDA_ERROR_NO_DEVICE`). Needs the NVIDIA modules loaded and the device nodes
    /// created.
    pub fn device_count(&self) -> Result<u32, CudaError> {
        // SAFETY: cuInit takes a flags word that must be 0.
        let init = unsafe { (self.fns.init)(0) };
        if init == ERROR_NO_DEVICE {
            // The driver is fine; there is simply no GPU for it.
            return Ok(0);
        }
        self.check("cuInit", init)?;
        let mut n: c_int = 0;
        // SAFETY: cuDeviceGetCount writes one int through a valid pointer.
        self.check("cuDeviceGetCount", unsafe { (self.fns.device_count)(&mut n) })?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    fn check(&self, call: &'static str, code: CuResult) -> Result<(), CudaError> {
        if code == 0 {
            return Ok(());
        }
        let mut ptr: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName accepts any code and stores a static NUL-terminated string
        // (or leaves NULL, handled) through a valid pointer.
        let ok = unsafe { (self.fns.error_name)(code, &mut ptr) } == 0 && !ptr.is_null();
        // SAFETY: non-NULL and static per cuda.h.
        let name = if ok { unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned() } else { "unknown".into() };
        Err(CudaError::Call { call, code, name })
    }
}

/// `12040` as `12.4`.
pub fn api_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named() {
        let e = Cuda::open_path("libcuda-not-here.so.1").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("libcuda-not-here.so.1") && e.contains("must carry the driver's libcuda.so.1"), "{e}");
    }

    #[test]
    fn a_library_without_the_driver_api_is_refused_by_symbol() {
        // libc is loadable and has none of the CUDA entry points.
        let e = Cuda::open_path("libc.so.6").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("lacks cuInit"), "{e}");
    }

    #[test]
    fn api_versions_read_as_cuda_releases() {
        assert_eq!(api_version(12040), "12.4");
        assert_eq!(api_version(11080), "11.8");
    }
}
