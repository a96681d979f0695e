//! NVIDIA H100 GPU attestation, verified offline in pure Rust: the SPDM 1.1 measurement
//! report is checked against the GPU's device certificate chain (pinned NVIDIA Device
//! Identity root), its FWID and the verifier's nonce; the reference measurements come from
//! NVIDIA's signed RIMs in a local [`RimBundle`] (pinned NVIDIA CoRIM root), and OCSP
//! status from stored responses in the same bundle.
//!
//! Trusts only the two pinned roots under `roots/nvidia/` (or the [`Trust`] a caller passes)
//! and the `now` it is given. The evidence and the bundle are untrusted input.
//!
//! What is checked, in order (each failure is a distinct [`NvError`]):
//! 1. the report parses as exactly one signed GET_MEASUREMENTS exchange ([`spdm`]);
//! 2. the device chain validates to the pinned root at `now` ([`x509::verify_chain`]);
//! 3. the leaf certificate's FWID equals the report's opaque FWID;
//! 4. the ECDSA P-384/SHA-384 signature over `request || response` verifies with the leaf;
//! 5. the request nonce equals the expected nonce;
//! 6. no certificate of the device chain is revoked per a stored OCSP response;
//! 7. if the bundle holds the driver and VBIOS RIMs named by the report, both RIMs'
//!    XML-DSig signatures and chains verify, their versions match the report, and their
//!    active measurements are compared with the report's blocks ([`RimComparison`]).
//!
//! Not derivable from the report: whether CC mode is on (NVML reports it, the SPDM report
//! does not), so [`GpuClaims::cc_mode`] is `None` today.

pub mod bundle;
pub mod ocsp;
pub mod rim;
pub mod spdm;
pub mod x509;
pub mod xml;

use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha384};
use x509_cert::Certificate;

pub use bundle::{RimBundle, driver_rim_id, vbios_rim_id};
pub use ocsp::{OcspResult, OcspStatus};
pub use rim::{GoldenMeasurement, Rim, RimError, VerifiedRim};
pub use spdm::{MeasurementBlock, SpdmError, SpdmReport};
pub use x509::ChainError;

use crate::claims::Verified;
use chrysalis_proto::evidence::GpuEvidence;

/// NVDEC0 status value meaning "disabled" (then measurement index 35 is not compared, as
/// in NVIDIA's verifier).
const NVDEC0_DISABLED: u8 = 0x55;
/// RIM index whose comparison depends on NVDEC0 being enabled.
const NVDEC0_INDEX: u16 = 35;

/// Why GPU evidence was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NvError {
    /// The report is not a well-formed signed SPDM 1.1 measurement exchange.
    #[error("GPU report: {0}")]
    Report(#[from] SpdmError),
    /// The device certificate chain does not validate to the pinned root.
    #[error("GPU device certificate chain: {0}")]
    DeviceChain(#[source] ChainError),
    /// A pinned root failed to load (a build defect, not an evidence problem).
    #[error("pinned NVIDIA root is unusable: {0}")]
    PinnedRoot(#[source] ChainError),
    /// The leaf certificate carries no FWID extension.
    #[error("FwId oid not found in the NVIDIA signing certificate (2.23.133.5.4.1)")]
    FwidMissingInCert,
    /// The report carries no FWID opaque field.
    #[error("GPU report has no FWID opaque field")]
    FwidMissingInReport,
    /// Certificate and report name different firmware.
    #[error("FWID mismatch: certificate {cert}, report {report}")]
    FwidMismatch {
        /// FWID from the leaf certificate (hex).
        cert: String,
        /// FWID from the report (hex).
        report: String,
    },
    /// The report signature does not verify with the leaf key.
    #[error("GPU report signature does not verify with the device leaf certificate")]
    Signature,
    /// The GPU answered a different nonce.
    #[error("GPU report nonce {found} does not match the expected nonce {expected}")]
    NonceMismatch {
        /// Expected nonce (hex).
        expected: String,
        /// Nonce in the report (hex).
        found: String,
    },
    /// A signed field needed for appraisal is absent.
    #[error("GPU report lacks the {0} opaque field")]
    MissingField(&'static str),
    /// A stored OCSP response says a certificate is revoked.
    #[error("certificate {subject} is revoked (at {at})")]
    Revoked {
        /// Subject DN.
        subject: String,
        /// Revocation time.
        at: String,
    },
    /// A RIM from the bundle failed verification.
    #[error("RIM {id}: {source}")]
    Rim {
        /// NVIDIA RIM id.
        id: String,
        /// What failed.
        #[source]
        source: RimError,
    },
    /// A RIM describes another version than the report.
    #[error("RIM {id} is for version {rim_version}, the GPU reports {report_version}")]
    RimVersion {
        /// NVIDIA RIM id.
        id: String,
        /// colloquialVersion in the RIM.
        rim_version: String,
        /// Version in the report.
        report_version: String,
    },
    /// Driver and VBIOS RIMs both claim the same measurement index.
    #[error("the driver and VBIOS RIMs both have an active measurement at index {0}")]
    RimIndexConflict(u16),
}

/// Which RIM a reference measurement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RimSource {
    /// The driver RIM.
    Driver,
    /// The VBIOS (firmware) RIM.
    Vbios,
}

/// One active reference measurement that the report does not satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// RIM index (0-based; report block `index + 1`).
    pub index: u16,
    /// Which RIM.
    pub source: RimSource,
    /// Acceptable values (hex in JSON).
    #[serde(serialize_with = "hex_list")]
    pub expected: Vec<Vec<u8>>,
    /// What the report holds, if the block exists.
    #[serde(serialize_with = "hex_opt")]
    pub found: Option<Vec<u8>>,
}

/// Outcome of comparing the report with the reference measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum RimComparison {
    /// Every active reference measurement matched.
    Match {
        /// Driver RIM version compared.
        driver_version: String,
        /// VBIOS RIM version compared.
        vbios_version: String,
        /// RIM indices compared.
        compared: Vec<u16>,
    },
    /// Some did not; listed by index.
    Mismatch {
        /// Every mismatching index, ascending.
        mismatches: Vec<Mismatch>,
    },
    /// The bundle lacks the RIMs the report names: no comparison was made.
    NotAvailable {
        /// RIM ids that were looked for and not found.
        missing: Vec<String>,
    },
}

/// What verified GPU evidence establishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuClaims {
    /// The nonce the GPU signed (equals the expected nonce).
    #[serde(with = "spdm::hex_bytes")]
    pub nonce: Vec<u8>,
    /// The GPU's own nonce.
    #[serde(with = "spdm::hex_bytes")]
    pub responder_nonce: Vec<u8>,
    /// Driver version, e.g. `550.90.07`.
    pub driver_version: String,
    /// VBIOS version, e.g. `96.00.9f.00.01`.
    pub vbios_version: String,
    /// Board project, project SKU and chip SKU (select the VBIOS RIM).
    pub project: String,
    /// Project SKU.
    pub project_sku: String,
    /// Chip SKU.
    pub chip_sku: String,
    /// FWID of the attesting firmware (SHA-384).
    #[serde(with = "spdm::hex_bytes")]
    pub fwid: Vec<u8>,
    /// All measurement blocks.
    pub measurements: Vec<MeasurementBlock>,
    /// SHA-384 of the raw SPDM measurement record: one value for policies and logs.
    #[serde(with = "spdm::hex_bytes")]
    pub measurements_digest: Vec<u8>,
    /// Whether CC mode is on: not carried by the SPDM report, so `None` (see module docs).
    pub cc_mode: Option<bool>,
    /// NVDEC0 status byte (0xAA enabled, 0x55 disabled), if reported.
    pub nvdec0_status: Option<u8>,
    /// Protected-PCIe status byte, if reported.
    pub protected_pcie_status: Option<u8>,
    /// Subject of the device leaf certificate.
    pub device_leaf: String,
    /// OCSP status of each non-root device certificate.
    pub device_ocsp: Vec<OcspResult>,
    /// OCSP status of the RIM signing chains' certificates (empty without RIMs).
    pub rim_ocsp: Vec<OcspResult>,
    /// Reference-measurement comparison.
    pub rim: RimComparison,
}

/// The roots a verification trusts.
#[derive(Clone, Debug)]
pub struct Trust {
    /// Root of device certificate chains.
    pub device_root: Certificate,
    /// Root of RIM signing chains.
    pub rim_root: Certificate,
}

impl Trust {
    /// NVIDIA's roots, compiled in from `roots/nvidia/`.
    pub fn nvidia() -> Result<Self, NvError> {
        Self::from_pem(x509::DEVICE_ROOT_PEM, x509::RIM_ROOT_PEM)
    }

    /// Other roots (tests with derived, test-signed RIMs).
    pub fn from_pem(device_root: &str, rim_root: &str) -> Result<Self, NvError> {
        Ok(Trust {
            device_root: x509::root_from_pem(device_root).map_err(NvError::PinnedRoot)?,
            rim_root: x509::root_from_pem(rim_root).map_err(NvError::PinnedRoot)?,
        })
    }
}

/// Verify one GPU's evidence against NVIDIA's pinned roots; see the module docs for the checks.
pub fn verify_gpu(
    ev: &GpuEvidence,
    expected_nonce: &[u8; 32],
    rims: &RimBundle,
    now: SystemTime,
) -> Result<Verified<GpuClaims>, NvError> {
    verify_gpu_with(ev, expected_nonce, rims, now, &Trust::nvidia()?)
}

/// [`verify_gpu`] with explicit roots.
pub fn verify_gpu_with(
    ev: &GpuEvidence,
    expected_nonce: &[u8; 32],
    rims: &RimBundle,
    now: SystemTime,
    trust: &Trust,
) -> Result<Verified<GpuClaims>, NvError> {
    let report = SpdmReport::parse(&ev.report)?;
    let chain = x509::verify_chain(&ev.cert_chain, &trust.device_root, now, 2).map_err(NvError::DeviceChain)?;
    let leaf = chain.leaf().ok_or(NvError::DeviceChain(ChainError::TooShort { got: 0 }))?;

    let cert_fwid = x509::fwid(leaf).ok_or(NvError::FwidMissingInCert)?;
    let report_fwid = report.opaque(spdm::opaque_type::FWID).ok_or(NvError::FwidMissingInReport)?;
    if cert_fwid.as_slice() != report_fwid {
        return Err(NvError::FwidMismatch { cert: hex::encode(&cert_fwid), report: hex::encode(report_fwid) });
    }

    let key = chain.leaf_key().map_err(NvError::DeviceChain)?;
    let sig = p384::ecdsa::Signature::from_slice(&report.signature).map_err(|_| NvError::Signature)?;
    p384::ecdsa::signature::Verifier::verify(&key, &report.signed, &sig).map_err(|_| NvError::Signature)?;

    if &report.request_nonce != expected_nonce {
        return Err(NvError::NonceMismatch { expected: hex::encode(expected_nonce), found: hex::encode(report.request_nonce) });
    }

    let device_ocsp = ocsp::check_chain(&chain.certs, rims.ocsp(), now);
    reject_revoked(&device_ocsp)?;

    let driver_version = report.driver_version().ok_or(NvError::MissingField("driver version"))?;
    let vbios_version = report.vbios_version().ok_or(NvError::MissingField("VBIOS version"))?;
    let field = |kind, name| report.opaque(kind).map(spdm::ascii_field).ok_or(NvError::MissingField(name));
    let project = field(spdm::opaque_type::PROJECT, "project")?;
    let project_sku = field(spdm::opaque_type::PROJECT_SKU, "project SKU")?;
    let chip_sku = field(spdm::opaque_type::CHIP_SKU, "chip SKU")?;

    let driver_id = driver_rim_id(&driver_version);
    let vbios_id = vbios_rim_id(&project, &project_sku, &chip_sku, &vbios_version);
    let mut rim_ocsp = Vec::new();
    let rim = match (rims.rim(&driver_id), rims.rim(&vbios_id)) {
        (Some(d), Some(v)) => {
            let d = load_rim(&driver_id, d, &driver_version, trust, now)?;
            let v = load_rim(&vbios_id, v, &vbios_version, trust, now)?;
            rim_ocsp.extend(ocsp::check_chain(&d.chain.certs, rims.ocsp(), now));
            rim_ocsp.extend(ocsp::check_chain(&v.chain.certs, rims.ocsp(), now));
            reject_revoked(&rim_ocsp)?;
            compare(&report, &d.rim, &v.rim)?
        }
        (d, v) => RimComparison::NotAvailable {
            missing: [(d.is_none(), driver_id), (v.is_none(), vbios_id)]
                .into_iter()
                .filter_map(|(miss, id)| miss.then_some(id))
                .collect(),
        },
    };

    let byte = |kind| report.opaque(kind).and_then(|v| v.first().copied());
    Ok(Verified::new(GpuClaims {
        nonce: report.request_nonce.to_vec(),
        responder_nonce: report.responder_nonce.to_vec(),
        driver_version,
        vbios_version,
        project,
        project_sku,
        chip_sku,
        fwid: cert_fwid,
        measurements_digest: Sha384::digest(&report.measurement_record).to_vec(),
        measurements: report.blocks.clone(),
        cc_mode: None,
        nvdec0_status: byte(spdm::opaque_type::NVDEC0_STATUS),
        protected_pcie_status: byte(spdm::opaque_type::PROTECTED_PCIE_STATUS),
        device_leaf: x509::subject(leaf),
        device_ocsp,
        rim_ocsp,
        rim,
    }))
}

fn reject_revoked(results: &[OcspResult]) -> Result<(), NvError> {
    for r in results {
        if let OcspStatus::Revoked { at, .. } = &r.status {
            return Err(NvError::Revoked { subject: r.subject.clone(), at: at.clone() });
        }
    }
    Ok(())
}

fn load_rim(id: &str, xml: &[u8], report_version: &str, trust: &Trust, now: SystemTime) -> Result<VerifiedRim, NvError> {
    let wrap = |source| NvError::Rim { id: id.to_string(), source };
    let rim = Rim::parse(xml).map_err(wrap)?.verify(&trust.rim_root, now).map_err(wrap)?;
    if !rim.rim.colloquial_version.eq_ignore_ascii_case(report_version) {
        return Err(NvError::RimVersion {
            id: id.to_string(),
            rim_version: rim.rim.colloquial_version.clone(),
            report_version: report_version.to_string(),
        });
    }
    Ok(rim)
}

/// Compare the report's blocks with the active reference measurements of a driver and a
/// VBIOS RIM (as NVIDIA's verifier does: RIM index `i` is report block `i + 1`; any
/// alternative of the right size matches; index 35 is skipped when NVDEC0 is disabled).
///
/// Takes RIMs whose signatures the caller has verified (or derived test RIMs).
pub fn compare(report: &SpdmReport, driver: &Rim, vbios: &Rim) -> Result<RimComparison, NvError> {
    let mut golden: Vec<(&GoldenMeasurement, RimSource)> = driver.active().map(|m| (m, RimSource::Driver)).collect();
    for m in vbios.active() {
        if golden.iter().any(|(g, _)| g.index == m.index) {
            return Err(NvError::RimIndexConflict(m.index));
        }
        golden.push((m, RimSource::Vbios));
    }
    golden.sort_by_key(|(g, _)| g.index);
    let nvdec_disabled = report.opaque(spdm::opaque_type::NVDEC0_STATUS) == Some(&[NVDEC0_DISABLED][..]);
    let mut compared = Vec::new();
    let mut mismatches = Vec::new();
    for (g, source) in golden {
        if g.index == NVDEC0_INDEX && nvdec_disabled {
            continue;
        }
        // RIM index `i` is SPDM block `i + 1`; an index without a block is a mismatch.
        let found =
            g.index.checked_add(1).and_then(|i| u8::try_from(i).ok()).and_then(|i| report.block(i)).map(|b| b.value.clone());
        let ok = found.as_ref().is_some_and(|v| v.len() == g.size && g.alternatives.iter().any(|a| a == v));
        compared.push(g.index);
        if !ok {
            mismatches.push(Mismatch { index: g.index, source, expected: g.alternatives.clone(), found });
        }
    }
    if mismatches.is_empty() {
        Ok(RimComparison::Match {
            driver_version: driver.colloquial_version.clone(),
            vbios_version: vbios.colloquial_version.clone(),
            compared,
        })
    } else {
        Ok(RimComparison::Mismatch { mismatches })
    }
}

fn hex_list<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_formats() {
        let errs = [
            NvError::Signature,
            NvError::FwidMissingInCert,
            NvError::FwidMissingInReport,
            NvError::MissingField("driver version"),
            NvError::RimIndexConflict(3),
            NvError::NonceMismatch { expected: "00".into(), found: "01".into() },
            NvError::Revoked { subject: "CN=x".into(), at: "2025-01-01T00:00:00Z".into() },
        ];
        for e in errs {
            assert!(!e.to_string().is_empty(), "{e:?}");
        }
    }

    #[test]
    fn nvidia_trust_loads() {
        let t = Trust::nvidia().unwrap();
        assert!(x509::subject(&t.device_root).contains("NVIDIA Device Identity CA"));
        assert!(x509::subject(&t.rim_root).contains("NVIDIA CoRIM signing Root CA"));
    }
}
