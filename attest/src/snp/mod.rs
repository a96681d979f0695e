//! AMD SEV-SNP: parse attestation reports (v2, v3, v5) with the `sev` crate's types, verify
//! their signature with the VCEK or VLEK, the VCEK/VLEK -> ASK/ASVK -> ARK chain against the
//! AMD roots pinned in this crate (Milan, Genoa, Turin), and the VCEK's TCB and hwID
//! extensions against the report. Output: [`Verified<SnpClaims>`](crate::claims::Verified).
//!
//! Certificates come with the evidence (`PlatformEvidence::Snp.certs`) or from a local cache
//! directory ([`kds::load_cert_dir`]). Fetching from AMD's KDS is never implicit: the owner
//! CLI's `attest fetch-vcek` does it on request, with the URL from [`kds::vcek_url`].
//!
//! Trust: only the pinned roots (`attest/roots/`). Reports and certificates are untrusted.

pub mod cert;
pub mod chain;
mod error;
pub mod kds;
pub mod report;
pub mod roots;
mod verify;

pub use cert::{oid, AmdCert, AmdExtensions};
pub use chain::VerifiedChain;
pub use error::{CertError, SnpError};
pub use report::{policy_bits, platform_info_bits, SnpReport, TcbParts};
pub use verify::{
    parse_certs, verify_cert_chain, verify_report, verify_report_detailed, verify_report_with_chain, SnpVerification,
};
pub(crate) use verify::check_report_signature;
