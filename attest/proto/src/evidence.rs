//! The evidence bundle a runtime serves at `GET /v1/attestation?nonce=…`: the hardware
//! report or quote (or simulated report), what a verifier needs to check it offline, the
//! runtime's event log and GPU evidence.
//!
//! Wire format: postcard encoding of [`Evidence`], whose first field is the format version
//! ([`EVIDENCE_VERSION`]). Decoding rejects other versions and trailing bytes.

use serde::{Deserialize, Serialize};

use crate::eventlog::EventLog;

/// Version of the evidence wire format.
pub const EVIDENCE_VERSION: u16 = 1;

/// Largest evidence bundle a verifier accepts (certificates, collateral and event logs
/// included), so that a hostile runtime cannot exhaust a verifier's memory.
pub const MAX_EVIDENCE_LEN: usize = 4 << 20;

/// Everything a runtime presents to a verifier for one nonce.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// [`EVIDENCE_VERSION`].
    pub version: u16,
    /// The verifier's nonce, echoed back (the binding is REPORT_DATA, not this field).
    pub nonce: Vec<u8>,
    /// The platform's signed statement.
    pub platform: PlatformEvidence,
    /// The runtime's own measurements; REPORT_DATA = `event_log.report_data(nonce)`.
    pub event_log: EventLog,
    /// GPU attestation reports with their certificate chains (empty without a GPU).
    pub gpus: Vec<GpuEvidence>,
}

/// The signed statement of the CPU TEE.
///
/// Exhaustive on purpose: a new platform is a new evidence version, and every verifier must
/// then decide about it at compile time rather than through a catch-all arm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PlatformEvidence {
    /// AMD SEV-SNP: the 1184-byte ATTESTATION_REPORT and whatever certificates the host
    /// provided (DER: VCEK or VLEK, and optionally ASK/ASVK and ARK). The ARK in here is
    /// never trusted: verifiers use their pinned roots.
    Snp {
        /// Raw report bytes as returned by the firmware.
        report: Vec<u8>,
        /// DER certificates from the extended report / local cache.
        certs: Vec<Vec<u8>>,
    },
    /// Intel TDX: a DCAP quote (v4 or v5) and, where the guest exposes it, the CCEL event
    /// log that replays into RTMR0..3.
    Tdx {
        /// Raw quote bytes.
        quote: Vec<u8>,
        /// Raw CCEL log area (`/sys/firmware/acpi/tables/data/CCEL`), if available.
        ccel_log: Option<Vec<u8>>,
    },
    /// A simulated TEE (tests and the demo only). Verifiers reject it unless the policy
    /// says `allow_simulated = true`.
    Simulated {
        /// The simulated report (see `crate::sim` for its layout).
        report: Vec<u8>,
    },
}

/// One GPU's attestation evidence (NVIDIA SPDM GET_MEASUREMENTS exchange).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GpuEvidence {
    /// SPDM request || response, as returned by the driver.
    pub report: Vec<u8>,
    /// The device certificate chain, leaf first (DER).
    pub cert_chain: Vec<Vec<u8>>,
}

/// Why an evidence bundle could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// Larger than [`MAX_EVIDENCE_LEN`].
    #[error("evidence too large: {0} bytes, limit {MAX_EVIDENCE_LEN}")]
    TooLarge(usize),
    /// Not valid postcard for [`Evidence`].
    #[error("evidence is malformed: {0}")]
    Malformed(postcard::Error),
    /// Valid encoding but bytes left over.
    #[error("evidence has {0} trailing bytes")]
    Trailing(usize),
    /// A version this build does not understand.
    #[error("evidence version {found} is not supported (expected {EVIDENCE_VERSION})")]
    Version {
        /// The version found.
        found: u16,
    },
}

impl Evidence {
    /// Encode to the wire format.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain owned data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decode from the wire format, rejecting oversized input, other versions and
    /// trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(EvidenceError::TooLarge(bytes.len()));
        }
        let (ev, rest): (Evidence, &[u8]) = postcard::take_from_bytes(bytes).map_err(EvidenceError::Malformed)?;
        if !rest.is_empty() {
            return Err(EvidenceError::Trailing(rest.len()));
        }
        if ev.version != EVIDENCE_VERSION {
            return Err(EvidenceError::Version { found: ev.version });
        }
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::{Event, EventKind};

    fn sample() -> Evidence {
        let mut log = EventLog::default();
        log.extend(Event::with_data(EventKind::PublicKey, vec![7; 32]));
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: vec![1; 32],
            platform: PlatformEvidence::Simulated { report: vec![0; 16] },
            event_log: log,
            gpus: vec![],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Evidence::from_bytes(&e.to_bytes()).ok(), Some(e));
    }

    #[test]
    fn rejects_trailing_truncated_and_versions() {
        let mut b = sample().to_bytes();
        b.push(0);
        assert!(matches!(Evidence::from_bytes(&b), Err(EvidenceError::Trailing(1))));
        b.truncate(b.len() - 3);
        assert!(matches!(Evidence::from_bytes(&b), Err(EvidenceError::Malformed(_))));
        let mut e = sample();
        e.version = 9;
        assert!(matches!(Evidence::from_bytes(&e.to_bytes()), Err(EvidenceError::Version { found: 9 })));
    }
}
