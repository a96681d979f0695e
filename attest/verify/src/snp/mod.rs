//! AMD SEV-SNP: parse attestation reports (v2, v3, v5) with the `sev` crate's types, verify
//! their signature with the VCEK or VLEK, the VCEK/VLEK -> ASK/ASVK -> ARK chain against the
//! AMD roots pinned in this crate (Milan, Genoa, Turin), and the VCEK's TCB and hwID
//! extensions against the report. Output: [`Verified<SnpClaims>`](crate::claims::Verified).
//!
//! Certificates come with the evidence (`PlatformEvidence::Snp.certs`) or from a local cache
//! directory ([`kds::load_cert_dir`]). Fetching from AMD's KDS is never implicit: the owner
//! CLI's `attest fetch-vcek` does it on request, with the URL from [`kds::VcekId::url`].
//!
//! Trust: only the pinned roots (`attest/roots/`). Reports and certificates are untrusted.

pub mod cert;
pub mod chain;
pub mod crl;
mod error;
pub mod kds;
pub mod minimums;
pub mod report;
pub mod roots;
mod verify;

pub use cert::{AmdCert, AmdExtensions, oid};
pub use chain::VerifiedChain;
pub use error::{CertError, SnpError};
pub use report::{SnpReport, TcbParts, platform_info_bits, policy_bits};
pub(crate) use verify::check_report_signature;
pub use verify::{
    SnpVerification, parse_certs, verify_cert_chain, verify_report, verify_report_detailed, verify_report_with_chain,
};
