//! The few NVML (`libnvidia-ml.so.1`) calls GPU attestation needs, loaded at run time with
//! `libloading` (no link-time dependency on the driver). Declarations and struct layouts
//! follow `nvml.h` of Debian's `libnvidia-ml-dev` 12.4.127~12.4.1-2 (the NVML API of driver
//! 550; every symbol used here was checked to be exported by `libnvidia-ml.so.550.163.01`).
//!
//! Trust: the driver's answers are taken as given, but every size it reports is checked
//! against the buffer it filled before a byte is read.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

use chrysalis_proto::evidence::GpuEvidence;
use chrysalis_proto::gpubind::GPU_NONCE_LEN;
use libloading::Library;

use super::{CcGpus, CcState, GpuError, pem_chain};

/// The soname the driver package installs.
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// `nvmlReturn_t` (`NVML_SUCCESS` = 0).
type NvmlReturn = c_int;
/// `nvmlDevice_t`: an opaque handle.
type Device = *mut c_void;

/// `NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE`.
const DRIVER_VERSION_LEN: usize = 80;
/// `NVML_GPU_CERT_CHAIN_SIZE`.
pub const CERT_CHAIN_SIZE: usize = 0x1000;
/// `NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE`.
pub const ATTESTATION_CERT_CHAIN_SIZE: usize = 0x1400;
/// `NVML_CC_GPU_ATTESTATION_REPORT_SIZE`.
pub const ATTESTATION_REPORT_SIZE: usize = 0x2000;
/// `NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE`.
pub const CEC_ATTESTATION_REPORT_SIZE: usize = 0x1000;
/// `NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE`.
const ACCEPTING_CLIENT_REQUESTS_TRUE: c_uint = 1;

/// `nvmlConfComputeSystemCaps_t`.
#[repr(C)]
#[derive(Default)]
pub struct SystemCaps {
    /// `cpuCaps`.
    pub cpu_caps: c_uint,
    /// `gpusCaps`.
    pub gpus_caps: c_uint,
}

/// `nvmlConfComputeSystemState_t`.
#[repr(C)]
#[derive(Default)]
pub struct SystemState {
    /// `environment`.
    pub environment: c_uint,
    /// `ccFeature`.
    pub cc_feature: c_uint,
    /// `devToolsMode`.
    pub dev_tools_mode: c_uint,
}

/// `nvmlConfComputeGpuCertificate_t`.
#[repr(C)]
pub struct GpuCertificate {
    /// `certChainSize`.
    pub cert_chain_size: c_uint,
    /// `attestationCertChainSize`.
    pub attestation_cert_chain_size: c_uint,
    /// `certChain`.
    pub cert_chain: [u8; CERT_CHAIN_SIZE],
    /// `attestationCertChain` (PEM, leaf first).
    pub attestation_cert_chain: [u8; ATTESTATION_CERT_CHAIN_SIZE],
}

/// `nvmlConfComputeGpuAttestationReport_t`. `nonce` is input: the caller sets it.
#[repr(C)]
pub struct GpuAttestationReport {
    /// `isCecAttestationReportPresent`.
    pub is_cec_attestation_report_present: c_uint,
    /// `attestationReportSize`.
    pub attestation_report_size: c_uint,
    /// `cecAttestationReportSize`.
    pub cec_attestation_report_size: c_uint,
    /// `nonce` (`NVML_CC_GPU_CEC_NONCE_SIZE` = 32).
    pub nonce: [u8; GPU_NONCE_LEN],
    /// `attestationReport`: SPDM GET_MEASUREMENTS request || response.
    pub attestation_report: [u8; ATTESTATION_REPORT_SIZE],
    /// `cecAttestationReport`.
    pub cec_attestation_report: [u8; CEC_ATTESTATION_REPORT_SIZE],
}

impl GpuCertificate {
    fn zeroed() -> Box<Self> {
        Box::new(GpuCertificate {
            cert_chain_size: 0,
            attestation_cert_chain_size: 0,
            cert_chain: [0; CERT_CHAIN_SIZE],
            attestation_cert_chain: [0; ATTESTATION_CERT_CHAIN_SIZE],
        })
    }
}

impl GpuAttestationReport {
    fn with_nonce(nonce: &[u8; GPU_NONCE_LEN]) -> Box<Self> {
        Box::new(GpuAttestationReport {
            is_cec_attestation_report_present: 0,
            attestation_report_size: 0,
            cec_attestation_report_size: 0,
            nonce: *nonce,
            attestation_report: [0; ATTESTATION_REPORT_SIZE],
            cec_attestation_report: [0; CEC_ATTESTATION_REPORT_SIZE],
        })
    }
}

/// The resolved entry points (plain function pointers, valid while `Nvml::_lib` is loaded).
struct Fns {
    init: unsafe extern "C" fn() -> NvmlReturn,
    shutdown: unsafe extern "C" fn() -> NvmlReturn,
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> NvmlReturn,
    device_count: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
    device_handle: unsafe extern "C" fn(c_uint, *mut Device) -> NvmlReturn,
    cc_caps: unsafe extern "C" fn(*mut SystemCaps) -> NvmlReturn,
    cc_state: unsafe extern "C" fn(*mut SystemState) -> NvmlReturn,
    ready_get: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
    ready_set: unsafe extern "C" fn(c_uint) -> NvmlReturn,
    report: unsafe extern "C" fn(Device, *mut GpuAttestationReport) -> NvmlReturn,
    certificate: unsafe extern "C" fn(Device, *mut GpuCertificate) -> NvmlReturn,
}

/// An initialised NVML; shut down and unloaded on drop.
pub struct Nvml {
    fns: Fns,
    _lib: Library,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

/// Resolve `name` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the exact C signature `nvml.h` declares for `name`.
unsafe fn symbol<T: Copy>(lib: &Library, name: &'static str) -> Result<T, GpuError> {
    // SAFETY: the caller guarantees that T is the symbol's C signature; the pointer is
    // copied out and used only while `lib` stays loaded (Nvml owns both).
    unsafe { lib.get::<T>(name.as_bytes()) }.map(|s| *s).map_err(|source| GpuError::Symbol { name, source })
}

impl Nvml {
    /// Load [`LIBRARY`] from the loader path and initialise NVML.
    pub fn open() -> Result<Self, GpuError> {
        Self::open_path(LIBRARY)
    }

    /// Load an NVML library from `path` (tests load a fake) and initialise it.
    pub fn open_path(path: &str) -> Result<Self, GpuError> {
        // SAFETY: loading runs the library's initialisers; libnvidia-ml's (or a test fake's)
        // do not depend on anything this process must set up first.
        let lib = unsafe { Library::new(path) }.map_err(|source| GpuError::Load { path: path.into(), source })?;
        // SAFETY: each signature below is copied from nvml.h (driver 550's NVML API).
        let fns = unsafe {
            Fns {
                init: symbol(&lib, "nvmlInit_v2")?,
                shutdown: symbol(&lib, "nvmlShutdown")?,
                error_string: symbol(&lib, "nvmlErrorString")?,
                driver_version: symbol(&lib, "nvmlSystemGetDriverVersion")?,
                device_count: symbol(&lib, "nvmlDeviceGetCount_v2")?,
                device_handle: symbol(&lib, "nvmlDeviceGetHandleByIndex_v2")?,
                cc_caps: symbol(&lib, "nvmlSystemGetConfComputeCapabilities")?,
                cc_state: symbol(&lib, "nvmlSystemGetConfComputeState")?,
                ready_get: symbol(&lib, "nvmlSystemGetConfComputeGpusReadyState")?,
                ready_set: symbol(&lib, "nvmlSystemSetConfComputeGpusReadyState")?,
                report: symbol(&lib, "nvmlDeviceGetConfComputeGpuAttestationReport")?,
                certificate: symbol(&lib, "nvmlDeviceGetConfComputeGpuCertificate")?,
            }
        };
        let nvml = Nvml { fns, _lib: lib };
        // SAFETY: nvmlInit_v2 takes no arguments.
        nvml.check("nvmlInit_v2", unsafe { (nvml.fns.init)() })?;
        Ok(nvml)
    }

    fn check(&self, call: &'static str, code: NvmlReturn) -> Result<(), GpuError> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: nvmlErrorString accepts any code and returns a static NUL-terminated
        // string (or NULL, handled).
        let ptr = unsafe { (self.fns.error_string)(code) };
        let message = if ptr.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-NULL, NUL-terminated, static per the NVML documentation.
            unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
        };
        Err(GpuError::Call { call, code, message })
    }

    fn device(&self, index: u32) -> Result<Device, GpuError> {
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: `dev` is a valid out-pointer for one handle.
        self.check("nvmlDeviceGetHandleByIndex_v2", unsafe { (self.fns.device_handle)(index, &raw mut dev) })?;
        Ok(dev)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialised in open_path; shutdown takes no arguments.
        let code = unsafe { (self.fns.shutdown)() };
        if code != 0 {
            log::warn!("gpu: nvmlShutdown returned {code}");
        }
    }
}

/// Bytes `[..size]` of `buf`, or an error when NVML reported more than the buffer holds.
fn filled(gpu: u32, what: &'static str, buf: &[u8], size: c_uint) -> Result<Vec<u8>, GpuError> {
    usize::try_from(size).ok().and_then(|n| buf.get(..n)).map(<[u8]>::to_vec).ok_or(GpuError::Oversized {
        gpu,
        what,
        size,
        max: buf.len(),
    })
}

impl CcGpus for Nvml {
    fn driver_version(&self) -> Result<String, GpuError> {
        let mut buf = [0 as c_char; DRIVER_VERSION_LEN];
        let len = c_uint::try_from(buf.len()).unwrap_or(0);
        // SAFETY: `buf` has `len` writable bytes; NVML NUL-terminates within them.
        self.check("nvmlSystemGetDriverVersion", unsafe { (self.fns.driver_version)(buf.as_mut_ptr(), len) })?;
        let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn cc_state(&self) -> Result<CcState, GpuError> {
        let mut caps = SystemCaps::default();
        // SAFETY: `caps` is a valid nvmlConfComputeSystemCaps_t.
        self.check("nvmlSystemGetConfComputeCapabilities", unsafe { (self.fns.cc_caps)(&raw mut caps) })?;
        let mut state = SystemState::default();
        // SAFETY: `state` is a valid nvmlConfComputeSystemState_t.
        self.check("nvmlSystemGetConfComputeState", unsafe { (self.fns.cc_state)(&raw mut state) })?;
        Ok(CcState {
            cpu_caps: caps.cpu_caps,
            gpus_caps: caps.gpus_caps,
            environment: state.environment,
            cc_feature: state.cc_feature,
            dev_tools_mode: state.dev_tools_mode,
        })
    }

    fn ready(&self) -> Result<bool, GpuError> {
        let mut v: c_uint = 0;
        // SAFETY: `v` is a valid out-pointer.
        self.check("nvmlSystemGetConfComputeGpusReadyState", unsafe { (self.fns.ready_get)(&raw mut v) })?;
        Ok(v == ACCEPTING_CLIENT_REQUESTS_TRUE)
    }

    fn set_ready(&self) -> Result<(), GpuError> {
        // SAFETY: plain integer argument.
        self.check("nvmlSystemSetConfComputeGpusReadyState", unsafe { (self.fns.ready_set)(ACCEPTING_CLIENT_REQUESTS_TRUE) })
    }

    fn count(&self) -> Result<u32, GpuError> {
        let mut n: c_uint = 0;
        // SAFETY: `n` is a valid out-pointer.
        self.check("nvmlDeviceGetCount_v2", unsafe { (self.fns.device_count)(&raw mut n) })?;
        Ok(n)
    }

    fn evidence(&self, index: u32, nonce: &[u8; GPU_NONCE_LEN]) -> Result<GpuEvidence, GpuError> {
        let dev = self.device(index)?;
        let mut rep = GpuAttestationReport::with_nonce(nonce);
        // SAFETY: `dev` came from NVML; `rep` is a valid, boxed nvmlConfComputeGpuAttestationReport_t
        // with the nonce set, as the call expects.
        self.check("nvmlDeviceGetConfComputeGpuAttestationReport", unsafe { (self.fns.report)(dev, &raw mut *rep) })?;
        let report = filled(index, "attestation report", &rep.attestation_report, rep.attestation_report_size)?;
        let mut cert = GpuCertificate::zeroed();
        // SAFETY: `dev` came from NVML; `cert` is a valid, boxed nvmlConfComputeGpuCertificate_t.
        self.check("nvmlDeviceGetConfComputeGpuCertificate", unsafe { (self.fns.certificate)(dev, &raw mut *cert) })?;
        let pem = filled(index, "certificate chain", &cert.attestation_cert_chain, cert.attestation_cert_chain_size)?;
        Ok(GpuEvidence { report, cert_chain: pem_chain(index, &pem)? })
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    /// Sizes and offsets computed from nvml.h by hand (all members 4-byte aligned).
    #[test]
    fn layouts_match_nvml_h() {
        assert_eq!(size_of::<SystemCaps>(), 8);
        assert_eq!(size_of::<SystemState>(), 12);
        assert_eq!(offset_of!(GpuCertificate, cert_chain), 8);
        assert_eq!(offset_of!(GpuCertificate, attestation_cert_chain), 8 + 0x1000);
        assert_eq!(size_of::<GpuCertificate>(), 8 + 0x1000 + 0x1400);
        assert_eq!(offset_of!(GpuAttestationReport, nonce), 12);
        assert_eq!(offset_of!(GpuAttestationReport, attestation_report), 44);
        assert_eq!(offset_of!(GpuAttestationReport, cec_attestation_report), 44 + 0x2000);
        assert_eq!(size_of::<GpuAttestationReport>(), 44 + 0x2000 + 0x1000);
    }

    #[test]
    fn sizes_beyond_the_buffer_are_refused() {
        let buf = [7u8; 8];
        assert_eq!(filled(0, "x", &buf, 3).ok(), Some(vec![7; 3]));
        let e = filled(2, "attestation report", &buf, 9).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("GPU 2: NVML reported 9 bytes of attestation report, more than its 8-byte buffer"));
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let e = Nvml::open_path("/nonexistent/libnvidia-ml.so.1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("loading /nonexistent/libnvidia-ml.so.1: "), "{e}");
        assert!(e.ends_with("(the image must carry the driver's libnvidia-ml.so.1)"), "{e}");
    }
}
