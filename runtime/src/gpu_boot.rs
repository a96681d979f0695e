//! The boot step that adds GPU evidence to the event log, kept out of `main.rs` so that the
//! boot sequence only calls [`collect`]. With the `gpu-evidence` feature (implied by `cuda`)
//! it creates the NVIDIA device nodes (as PID 1), checks CC mode, collects every GPU's
//! evidence over the nonce derived from the log and appends the `GpuEvidence` event
//! ([`crate::gpu::attest`], `attest/GPU_BINDING.md`); without the feature it does nothing.
//!
//! It must run after every other measurement (the public key included): the GPU nonce
//! commits to everything before it, and nothing may follow the GPU event.

use anyhow::Result;
use chrysalis_proto::eventlog::EventLog;
use chrysalis_proto::evidence::GpuEvidence;

/// Collect GPU evidence and append its event to `log`. Any failure stops the boot: a CUDA
/// runtime never serves without GPU evidence.
#[cfg(feature = "gpu-evidence")]
pub fn collect(log: &mut EventLog) -> Result<Vec<GpuEvidence>> {
    use anyhow::Context;

    use crate::gpu::{self, devnodes, nvml::Nvml};
    if std::process::id() == 1 {
        let nodes = devnodes::create().context("creating the NVIDIA device nodes")?;
        log::info!("gpu: device nodes {}", nodes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "));
    }
    let nvml = Nvml::open().context("GPU attestation: opening NVML")?;
    gpu::attest(&nvml, log).context("GPU attestation (refusing to serve without GPU evidence)")
}

/// Without GPU support there is no GPU evidence and the log is left as it is.
#[cfg(not(feature = "gpu-evidence"))]
pub fn collect(_log: &mut EventLog) -> Result<Vec<GpuEvidence>> {
    Ok(Vec::new())
}
