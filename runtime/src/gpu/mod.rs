//! GPU evidence at boot (feature `gpu-evidence`, enabled by `cuda`): check that the GPUs are
//! in confidential-computing mode, ask each one for an SPDM attestation report over the nonce
//! derived from the event log so far, record the `GpuEvidence` event that commits to all of
//! them, and only then let the GPUs accept work. Design and exact hashes:
//! `attest/GPU_BINDING.md` (`chrysalis_proto::gpubind`).
//!
//! Trust: what the driver (NVML) says about CC mode is believed (the GPU report itself does
//! not carry it); the reports and certificates are not verified here (the image carries no
//! verifier) but only checked for size and for echoing our nonce: the model owner verifies
//! them, bound to the CPU evidence, before releasing the key.

#[allow(unsafe_code)]
pub mod cuda;
pub mod devnodes;
#[allow(unsafe_code)]
pub mod nvml;

use chrysalis_proto::eventlog::EventLog;
use chrysalis_proto::evidence::GpuEvidence;
use chrysalis_proto::gpubind::{self, GPU_NONCE_LEN};

/// NVML's confidential-computing constants (nvml.h, driver 550).
pub mod cc {
    /// `NVML_CC_SYSTEM_FEATURE_ENABLED`.
    pub const FEATURE_ENABLED: u32 = 1;
    /// `NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF`.
    pub const DEVTOOLS_OFF: u32 = 0;
    /// `NVML_CC_SYSTEM_ENVIRONMENT_PROD`.
    pub const ENVIRONMENT_PROD: u32 = 2;
    /// `NVML_CC_SYSTEM_ENVIRONMENT_SIM`.
    pub const ENVIRONMENT_SIM: u32 = 1;
    /// `NVML_CC_SYSTEM_GPUS_CC_CAPABLE`.
    pub const GPUS_CAPABLE: u32 = 1;
    /// `NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV`.
    pub const CPU_AMD_SEV: u32 = 1;
    /// `NVML_CC_SYSTEM_CPU_CAPS_INTEL_TDX`.
    pub const CPU_INTEL_TDX: u32 = 2;
}

/// The system's confidential-computing state as NVML reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CcState {
    /// `nvmlConfComputeSystemCaps_t.cpuCaps` (0 none, 1 AMD SEV, 2 Intel TDX).
    pub cpu_caps: u32,
    /// `nvmlConfComputeSystemCaps_t.gpusCaps` (1 = CC capable).
    pub gpus_caps: u32,
    /// `nvmlConfComputeSystemState_t.environment` (0 unavailable, 1 simulated, 2 production).
    pub environment: u32,
    /// `nvmlConfComputeSystemState_t.ccFeature` (1 = enabled).
    pub cc_feature: u32,
    /// `nvmlConfComputeSystemState_t.devToolsMode` (1 = on: debugging allowed).
    pub dev_tools_mode: u32,
}

impl CcState {
    /// `Ok` when the GPUs run in production CC mode with developer tools off.
    pub fn require_confidential(&self) -> Result<(), GpuError> {
        let mut why = Vec::new();
        if self.gpus_caps != cc::GPUS_CAPABLE {
            why.push(format!("the GPUs are not CC capable (gpusCaps {})", self.gpus_caps));
        }
        if self.cc_feature != cc::FEATURE_ENABLED {
            why.push(format!("CC mode is off (ccFeature {})", self.cc_feature));
        }
        if self.dev_tools_mode != cc::DEVTOOLS_OFF {
            why.push(format!("CC developer-tools mode is on (devToolsMode {})", self.dev_tools_mode));
        }
        if self.environment != cc::ENVIRONMENT_PROD {
            let env = if self.environment == cc::ENVIRONMENT_SIM { "simulated" } else { "unavailable" };
            why.push(format!("the CC environment is {env} (environment {}), not production", self.environment));
        }
        if why.is_empty() { Ok(()) } else { Err(GpuError::NotConfidential(why.join("; "))) }
    }

    /// One line for the boot log.
    pub fn describe(&self) -> String {
        let cpu = match self.cpu_caps {
            cc::CPU_AMD_SEV => "AMD SEV",
            cc::CPU_INTEL_TDX => "Intel TDX",
            _ => "none",
        };
        format!(
            "CC feature {}, devtools {}, environment {}, CPU TEE {cpu}",
            self.cc_feature, self.dev_tools_mode, self.environment
        )
    }
}

/// Why GPU evidence could not be produced. Each of these stops the boot: a CUDA runtime
/// never serves without GPU evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// `libnvidia-ml.so.1` could not be loaded.
    #[error("loading {path}: {source} (the image must carry the driver's libnvidia-ml.so.1)")]
    Load {
        /// What was loaded.
        path: String,
        /// Why it failed.
        source: libloading::Error,
    },
    /// The library lacks a function this runtime needs.
    #[error("libnvidia-ml lacks {name}: {source} (a driver with confidential computing, R535 or later, is needed)")]
    Symbol {
        /// The function.
        name: &'static str,
        /// The loader's error.
        source: libloading::Error,
    },
    /// An NVML call failed.
    #[error("{call} failed: {message} (NVML error {code})")]
    Call {
        /// The NVML function.
        call: &'static str,
        /// `nvmlReturn_t`.
        code: i32,
        /// `nvmlErrorString`.
        message: String,
    },
    /// The GPUs are not in production confidential-computing mode.
    #[error("GPU confidential computing is not usable: {0}")]
    NotConfidential(String),
    /// NVML sees no GPU.
    #[error("no NVIDIA GPU is visible to NVML")]
    NoGpu,
    /// NVML reported a size larger than its own buffer.
    #[error("GPU {gpu}: NVML reported {size} bytes of {what}, more than its {max}-byte buffer")]
    Oversized {
        /// GPU index.
        gpu: u32,
        /// "attestation report" or "certificate chain".
        what: &'static str,
        /// Reported size.
        size: u32,
        /// Buffer size.
        max: usize,
    },
    /// The certificate chain is not the PEM NVML returns.
    #[error("GPU {gpu}: the attestation certificate chain is not usable PEM: {why}")]
    CertChain {
        /// GPU index.
        gpu: u32,
        /// What is wrong.
        why: String,
    },
    /// The report's request does not carry the nonce the runtime sent.
    #[error("GPU {gpu}: the attestation report does not carry the nonce the runtime sent")]
    NonceEcho {
        /// GPU index.
        gpu: u32,
    },
    /// Setting the ready state did not take.
    #[error("the GPUs do not accept work after nvmlSystemSetConfComputeGpusReadyState")]
    NotReady,
}

/// The NVML operations GPU attestation needs (the real one is [`nvml::Nvml`]; tests use a fake).
pub trait CcGpus {
    /// The driver version string (for the log).
    fn driver_version(&self) -> Result<String, GpuError>;
    /// Capabilities and state of confidential computing.
    fn cc_state(&self) -> Result<CcState, GpuError>;
    /// Whether the GPUs accept work (`nvmlSystemGetConfComputeGpusReadyState`).
    fn ready(&self) -> Result<bool, GpuError>;
    /// Let the GPUs accept work (`nvmlSystemSetConfComputeGpusReadyState(TRUE)`).
    fn set_ready(&self) -> Result<(), GpuError>;
    /// Number of GPUs.
    fn count(&self) -> Result<u32, GpuError>;
    /// GPU `index`'s SPDM attestation report over `nonce` and its attestation certificate
    /// chain (DER, leaf first).
    fn evidence(&self, index: u32, nonce: &[u8; GPU_NONCE_LEN]) -> Result<GpuEvidence, GpuError>;
}

/// Offset of the nonce in the SPDM GET_MEASUREMENTS request that starts a report
/// (`11 e0 <param1> <param2>`, then the 32-byte nonce).
const REQUEST_NONCE_OFFSET: usize = 4;

/// Collect evidence from every GPU for the nonce derived from `log`, extend `log` with the
/// `GpuEvidence` event, then set the GPUs ready. Returns the evidence to serve.
pub fn attest(gpus: &dyn CcGpus, log: &mut EventLog) -> Result<Vec<GpuEvidence>, GpuError> {
    let driver = gpus.driver_version()?;
    let state = gpus.cc_state()?;
    log::info!("gpu: driver {driver}; {}", state.describe());
    state.require_confidential()?;
    if gpus.ready()? {
        log::warn!("gpu: the GPUs already accepted work before this runtime attested them");
    }
    let count = gpus.count()?;
    if count == 0 {
        return Err(GpuError::NoGpu);
    }
    let nonce = gpubind::gpu_nonce_after(log);
    log::info!("gpu: requesting evidence from {count} GPU(s) for nonce {}", hex::encode(nonce));
    let mut evidence = Vec::new();
    for i in 0..count {
        let ev = gpus.evidence(i, &nonce)?;
        let echoed = ev.report.get(REQUEST_NONCE_OFFSET..REQUEST_NONCE_OFFSET + GPU_NONCE_LEN);
        if echoed != Some(&nonce[..]) {
            return Err(GpuError::NonceEcho { gpu: i });
        }
        log::info!("gpu {i}: report {} bytes, {} certificates", ev.report.len(), ev.cert_chain.len());
        evidence.push(ev);
    }
    let event = gpubind::gpu_event(&evidence);
    log::info!("gpu: GpuEvidence event {}", hex::encode(event.digest));
    log.extend(event);
    gpus.set_ready()?;
    if !gpus.ready()? {
        return Err(GpuError::NotReady);
    }
    log::info!("gpu: ready state set; GPUs accept work");
    Ok(evidence)
}

/// Split NVML's PEM certificate chain into DER certificates (in the order given: leaf first).
pub fn pem_chain(gpu: u32, pem: &[u8]) -> Result<Vec<Vec<u8>>, GpuError> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    /// More than any NVIDIA chain (5 today); bounds the work on garbage.
    const MAX_CERTS: usize = 16;
    let err = |why: String| GpuError::CertChain { gpu, why };
    // NVML pads the buffer with zero bytes; everything else must be text.
    let text = std::str::from_utf8(pem).map_err(|e| err(format!("not text: {e}")))?.trim_end_matches('\0');
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = rest.get(start + BEGIN.len()..).unwrap_or_default();
        let end = after.find(END).ok_or_else(|| err("a certificate has no END line".into()))?;
        let body: String = after.get(..end).unwrap_or_default().chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| err(format!("certificate {}: {e}", out.len())))?;
        out.push(der);
        if out.len() > MAX_CERTS {
            return Err(err(format!("more than {MAX_CERTS} certificates")));
        }
        rest = after.get(end + END.len()..).unwrap_or_default();
    }
    if out.is_empty() {
        return Err(err("no certificate".into()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::cell::RefCell;

    use chrysalis_proto::eventlog::{Event, EventKind};

    use super::*;

    const GOOD: CcState = CcState { cpu_caps: 1, gpus_caps: 1, environment: 2, cc_feature: 1, dev_tools_mode: 0 };

    /// A fake NVML: records calls; its reports echo the nonce like a GPU does.
    struct Fake {
        state: CcState,
        count: u32,
        echo: bool,
        ready: RefCell<bool>,
        calls: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new() -> Self {
            Fake { state: GOOD, count: 2, echo: true, ready: RefCell::new(false), calls: RefCell::new(vec![]) }
        }
    }

    impl CcGpus for Fake {
        fn driver_version(&self) -> Result<String, GpuError> {
            Ok("550.163.01".into())
        }
        fn cc_state(&self) -> Result<CcState, GpuError> {
            Ok(self.state)
        }
        fn ready(&self) -> Result<bool, GpuError> {
            Ok(*self.ready.borrow())
        }
        fn set_ready(&self) -> Result<(), GpuError> {
            self.calls.borrow_mut().push("set_ready".into());
            *self.ready.borrow_mut() = true;
            Ok(())
        }
        fn count(&self) -> Result<u32, GpuError> {
            Ok(self.count)
        }
        fn evidence(&self, index: u32, nonce: &[u8; 32]) -> Result<GpuEvidence, GpuError> {
            self.calls.borrow_mut().push(format!("evidence {index} ready={}", self.ready.borrow()));
            let mut report = vec![0x11, 0xe0, 0x01, 0xff];
            report.extend_from_slice(if self.echo { nonce } else { &[0; 32] });
            report.push(u8::try_from(index).unwrap());
            Ok(GpuEvidence { report, cert_chain: vec![vec![0x30, 0x00]] })
        }
    }

    fn log() -> EventLog {
        let mut l = EventLog::default();
        l.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        l.extend(Event::with_data(EventKind::PublicKey, vec![9; 32]));
        l
    }

    #[test]
    fn evidence_for_the_derived_nonce_is_logged_before_the_gpus_are_ready() {
        let fake = Fake::new();
        let mut l = log();
        let before = l.clone();
        let evs = attest(&fake, &mut l).unwrap();
        assert_eq!(evs.len(), 2);
        let nonce = gpubind::gpu_nonce_after(&before);
        assert!(evs.iter().all(|e| e.report.get(4..36) == Some(&nonce[..])));
        // One event, last, committing to exactly the served evidence; the verifier's view agrees.
        assert_eq!(l.events.len(), before.events.len() + 1);
        let b = gpubind::find_binding(&l).unwrap();
        assert_eq!((b.index, b.nonce, b.after_public_key), (2, nonce, true));
        assert_eq!(b.event.digest, gpubind::gpus_digest(&evs));
        assert_eq!(*fake.calls.borrow(), ["evidence 0 ready=false", "evidence 1 ready=false", "set_ready"]);
    }

    #[test]
    fn cc_state_accepts_only_production_cc_mode_with_devtools_off() {
        assert!(GOOD.require_confidential().is_ok());
        // Intel TDX host: the CPU capability does not matter, only the GPU side.
        assert!(CcState { cpu_caps: cc::CPU_INTEL_TDX, ..GOOD }.require_confidential().is_ok());
        // CC mode off (what NVML reports for a GPU not switched to CC): refused, every reason named.
        let off = CcState { cpu_caps: 0, gpus_caps: 1, environment: 0, cc_feature: 0, dev_tools_mode: 0 };
        let e = off.require_confidential().unwrap_err();
        assert!(matches!(e, GpuError::NotConfidential(_)));
        assert_eq!(
            e.to_string(),
            "GPU confidential computing is not usable: CC mode is off (ccFeature 0); \
             the CC environment is unavailable (environment 0), not production"
        );
        assert_eq!(off.describe(), "CC feature 0, devtools 0, environment 0, CPU TEE none");
        assert_eq!(GOOD.describe(), "CC feature 1, devtools 0, environment 2, CPU TEE AMD SEV");
    }

    #[test]
    fn refuses_without_production_cc_mode_and_never_sets_ready() {
        for (state, text) in [
            (CcState { cc_feature: 0, ..GOOD }, "CC mode is off (ccFeature 0)"),
            (CcState { dev_tools_mode: 1, ..GOOD }, "CC developer-tools mode is on (devToolsMode 1)"),
            (CcState { environment: 1, ..GOOD }, "the CC environment is simulated (environment 1), not production"),
            (CcState { gpus_caps: 0, ..GOOD }, "the GPUs are not CC capable (gpusCaps 0)"),
        ] {
            let fake = Fake { state, ..Fake::new() };
            let mut l = log();
            let e = attest(&fake, &mut l).unwrap_err();
            assert_eq!(e.to_string(), format!("GPU confidential computing is not usable: {text}"));
            assert_eq!(l, log());
            assert!(fake.calls.borrow().is_empty());
        }
    }

    #[test]
    fn refuses_no_gpu_and_a_report_without_our_nonce() {
        let fake = Fake { count: 0, ..Fake::new() };
        assert!(matches!(attest(&fake, &mut log()), Err(GpuError::NoGpu)));
        let fake = Fake { echo: false, ..Fake::new() };
        let mut l = log();
        let e = attest(&fake, &mut l).unwrap_err();
        assert_eq!(e.to_string(), "GPU 0: the attestation report does not carry the nonce the runtime sent");
        assert_eq!(l, log());
        assert!(!*fake.ready.borrow());
    }

    #[test]
    fn pem_chain_splits_and_rejects_garbage() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMAEA\n-----END CERTIFICATE-----\n\0\0\0";
        assert_eq!(pem_chain(0, pem).unwrap(), vec![vec![0x30, 0x00], vec![0x30, 0x01, 0x00]]);
        for (bad, why) in [
            (&b""[..], "no certificate"),
            (b"\xff\xfe", "not text"),
            (b"-----BEGIN CERTIFICATE-----\nMAA=\n", "a certificate has no END line"),
            (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----", "certificate 0: "),
        ] {
            let e = pem_chain(3, bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("GPU 3: the attestation certificate chain is not usable PEM: {why}")), "{e}");
        }
        let many = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".repeat(17);
        assert!(pem_chain(0, many.as_bytes()).unwrap_err().to_string().ends_with("more than 16 certificates"));
    }
}
