//! The GPU steps of the boot, kept out of `main.rs` so that the boot sequence only calls
//! [`bring_up`], [`collect`] and [`settle`]. Without the `gpu-evidence` feature (the CPU
//! image) they do nothing.
//!
//! With it (the GPU image, `cuda` implies it):
//! 1. [`bring_up`], as PID 1 while modules may still be loaded: open `libcuda.so.1` (a
//!    broken image fails here, with or without a GPU), load the driver modules of
//!    [`crate::init::modules::GPU_LIST`] in order, create the device nodes, and ask CUDA how
//!    many GPUs it sees. `nvidia` answering ENODEV is "no NVIDIA GPU in this VM".
//! 2. [`collect`], after every other measurement (the public key included): check through
//!    NVML that confidential computing is on in production mode with developer tools off,
//!    collect every GPU's evidence over the nonce derived from the log, append the
//!    `GpuEvidence` event and only then set the GPUs ready ([`crate::gpu::attest`],
//!    `attest/GPU_BINDING.md`). Nothing may follow the GPU event.
//! 3. [`settle`] applies the measured command line's `chrysalis.gpu` to a failure of either
//!    step: `required` (the default) stops the boot with one line naming what was wrong;
//!    `cpu-fallback` says the same and serves on the CPU with no GPU evidence in the log, so
//!    a verifier whose policy requires a GPU refuses this boot.

use anyhow::Result;
use chrysalis_proto::eventlog::EventLog;
use chrysalis_proto::evidence::GpuEvidence;

use crate::config::GpuPolicy;

/// What the GPU bring-up found.
#[derive(Debug)]
pub struct GpuUp {
    /// GPUs CUDA can use.
    pub cuda_devices: u32,
}

/// Step 1: the driver library, modules and device nodes (PID 1 only; outside PID 1 the host's
/// driver is already up). Errors name the step that failed.
#[cfg(feature = "gpu-evidence")]
pub fn bring_up(pid1: bool) -> Result<GpuUp> {
    use anyhow::Context;

    use crate::gpu::cuda::{self, Cuda};
    use crate::gpu::devnodes;
    use crate::init::modules::{self, GPU_LIST, Loaded};

    let lib = Cuda::open().context("opening the CUDA driver library")?;
    log::info!("gpu: {} opened (driver API {})", cuda::LIBRARY, cuda::api_version(lib.driver_api));
    if pid1 {
        let mut loaded = Vec::new();
        for name in modules::read_list(GPU_LIST).context("this runtime is built for the GPU image")? {
            match modules::load(&name) {
                Ok(outcome) => loaded.push(format!("{name}:{}", if outcome == Loaded::Already { "already" } else { "ok" })),
                Err(e) if name == "nvidia" && e.errno == nix::errno::Errno::ENODEV => {
                    log::info!("gpu modules: {}", loaded.join(" "));
                    anyhow::bail!("no NVIDIA GPU: the nvidia module found no device it drives (ENODEV)")
                }
                Err(e) => return Err(e.into()),
            }
        }
        log::info!("gpu modules: {}", loaded.join(" "));
        let nodes = devnodes::create().context("creating the NVIDIA device nodes")?;
        log::info!("gpu: device nodes {}", nodes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "));
    }
    let cuda_devices = lib.device_count().context("CUDA")?;
    if cuda_devices == 0 {
        anyhow::bail!("no NVIDIA GPU: CUDA sees no device");
    }
    log::info!("gpu: CUDA sees {cuda_devices} GPU(s)");
    Ok(GpuUp { cuda_devices })
}

/// Without GPU support there is nothing to bring up.
#[cfg(not(feature = "gpu-evidence"))]
pub fn bring_up(_pid1: bool) -> Result<GpuUp> {
    Ok(GpuUp { cuda_devices: 0 })
}

/// Step 2: collect GPU evidence and append its event to `log`.
#[cfg(feature = "gpu-evidence")]
pub fn collect(log: &mut EventLog) -> Result<Vec<GpuEvidence>> {
    use anyhow::Context;

    use crate::gpu::{self, nvml::Nvml};
    let nvml = Nvml::open().context("GPU attestation: opening NVML")?;
    gpu::attest(&nvml, log).context("GPU attestation")
}

/// Without GPU support there is no GPU evidence and the log is left as it is.
#[cfg(not(feature = "gpu-evidence"))]
pub fn collect(_log: &mut EventLog) -> Result<Vec<GpuEvidence>> {
    Ok(Vec::new())
}

/// Step 3: run [`collect`] on the outcome of [`bring_up`] and apply `policy` to a failure of
/// either. On success `log` ends with the GPU event; on a CPU fallback it is left as it was
/// (a failure halfway through [`collect`] leaves no partial event).
pub fn settle(up: Result<GpuUp>, log: &mut EventLog, policy: GpuPolicy) -> Result<Vec<GpuEvidence>> {
    settle_with(up, log, policy, collect)
}

fn settle_with(
    up: Result<GpuUp>,
    log: &mut EventLog,
    policy: GpuPolicy,
    collect: impl FnOnce(&mut EventLog) -> Result<Vec<GpuEvidence>>,
) -> Result<Vec<GpuEvidence>> {
    let mut trial = log.clone();
    let outcome = up.and_then(|_| collect(&mut trial));
    match (outcome, policy) {
        (Ok(gpus), _) => {
            *log = trial;
            Ok(gpus)
        }
        (Err(e), GpuPolicy::CpuFallback) => {
            log::warn!(
                "*** GPU NOT USED: {e:#}. Serving on the CPU without GPU evidence, as the measured command line asks \
                 (chrysalis.gpu=cpu-fallback) ***"
            );
            Ok(Vec::new())
        }
        (Err(e), GpuPolicy::Required) => Err(e.context(
            "the GPU image refuses to serve without a usable confidential GPU (chrysalis.gpu=cpu-fallback on the \
             measured command line would serve on the CPU instead)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use chrysalis_proto::eventlog::{Event, EventKind};

    use super::*;

    fn log() -> EventLog {
        let mut l = EventLog::default();
        l.extend(Event::with_data(EventKind::Config, b"cfg".to_vec()));
        l
    }

    fn partial_then_fail(l: &mut EventLog) -> Result<Vec<GpuEvidence>> {
        l.extend(Event::with_data(EventKind::Config, b"half".to_vec()));
        anyhow::bail!("GPU confidential computing is not usable: CC mode is off (ccFeature 0)")
    }

    #[test]
    fn required_fails_closed_naming_the_cause() {
        let mut l = log();
        let before = l.digest();
        let e = settle_with(
            Err(anyhow::anyhow!("no NVIDIA GPU: the nvidia module found no device")),
            &mut l,
            GpuPolicy::Required,
            |_| unreachable!("no evidence is collected after a failed bring-up"),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("no NVIDIA GPU") && msg.contains("refuses to serve"), "{msg}");
        assert_eq!(l.digest(), before);
        let e = settle_with(Ok(GpuUp { cuda_devices: 1 }), &mut l, GpuPolicy::Required, partial_then_fail).unwrap_err();
        assert!(format!("{e:#}").contains("CC mode is off"), "{e:#}");
    }

    #[test]
    fn cpu_fallback_serves_with_the_log_untouched() {
        let mut l = log();
        let before = l.digest();
        let gpus = settle_with(Ok(GpuUp { cuda_devices: 1 }), &mut l, GpuPolicy::CpuFallback, partial_then_fail).unwrap();
        assert!(gpus.is_empty());
        assert_eq!(l.digest(), before, "a half-collected GPU event must not stay in the log");
    }

    #[test]
    fn success_keeps_the_gpu_event() {
        let mut l = log();
        let before = l.events.len();
        let gpus = settle_with(Ok(GpuUp { cuda_devices: 1 }), &mut l, GpuPolicy::Required, |l| {
            l.extend(Event::with_data(EventKind::Config, b"gpu".to_vec()));
            Ok(Vec::new())
        })
        .unwrap();
        assert!(gpus.is_empty());
        assert_eq!(l.events.len(), before + 1);
    }
}
