//! Which TEE backend produces this VM's evidence, chosen once at boot from the (measured)
//! `chrysalis.tee` setting and what the kernel exposes: real hardware through
//! configfs-tsm / the guest devices, the labelled simulated TEE on the host, or none.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrysalis_proto::evidence::PlatformEvidence;

use crate::config::TeeChoice;
use crate::evidence::{self, Paths, Tee};
use crate::simtee;

/// The evidence backend.
#[derive(Debug)]
pub enum EvidenceSource {
    /// An SEV-SNP or TDX guest: reports through configfs-tsm or the guest devices.
    Hardware {
        /// Which TEE.
        tee: Tee,
        /// Kernel interface paths.
        paths: Paths,
    },
    /// The simulated TEE: the host's simulated PSP, reached over a virtio-serial port.
    Simulated {
        /// The port's device node.
        port: PathBuf,
    },
    /// No evidence can be produced; the reason is given to every caller.
    Unavailable {
        /// Why.
        why: String,
    },
}

impl EvidenceSource {
    /// Pick the backend for `choice`.
    pub fn select(choice: TeeChoice) -> Self {
        let paths = Paths::default();
        match choice {
            TeeChoice::None => EvidenceSource::Unavailable { why: "chrysalis.tee=none: this VM produces no evidence".into() },
            TeeChoice::Simulated => match simtee::find_port() {
                Some(port) => EvidenceSource::Simulated { port },
                None => EvidenceSource::Unavailable {
                    why: format!("chrysalis.tee=sim but the host attached no {} port", simtee::PORT_NAME),
                },
            },
            TeeChoice::Auto => {
                let d = evidence::detect(&paths);
                log::info!("tee: {d}");
                if let Some(tee) = d.tee() {
                    return EvidenceSource::Hardware { tee, paths };
                }
                match simtee::find_port() {
                    Some(port) => EvidenceSource::Simulated { port },
                    None => EvidenceSource::Unavailable { why: format!("no TEE detected ({d}) and no simulated TEE attached") },
                }
            }
        }
    }

    /// One line for the boot log and /v1/health.
    pub fn describe(&self) -> String {
        match self {
            EvidenceSource::Hardware { tee: Tee::Snp, .. } => "AMD SEV-SNP".into(),
            EvidenceSource::Hardware { tee: Tee::Tdx, .. } => "Intel TDX".into(),
            EvidenceSource::Simulated { .. } => {
                "SIMULATED TEE (not hardware: evidence is only accepted by policies that allow simulation)".into()
            }
            EvidenceSource::Unavailable { why } => format!("none ({why})"),
        }
    }

    /// Whether this is the simulated backend.
    pub fn is_simulated(&self) -> bool {
        matches!(self, EvidenceSource::Simulated { .. })
    }

    /// Get the platform's signed statement binding `report_data` (blocking: file and device I/O).
    pub fn platform_evidence(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence> {
        match self {
            EvidenceSource::Hardware { paths, .. } => {
                let c = evidence::collect(paths, report_data).context("collecting hardware evidence")?;
                log::debug!("evidence from {:?}", c.source);
                Ok(c.platform)
            }
            EvidenceSource::Simulated { port } => Ok(PlatformEvidence::Simulated { report: simtee::report(port, report_data)? }),
            EvidenceSource::Unavailable { why } => bail!("{why}"),
        }
    }
}
