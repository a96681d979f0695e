//! Why an SNP report, certificate or chain was rejected. Each variant names the stage that
//! failed ([`SnpError::stage`]) so that a verification table can put it on the right line.

use crate::claims::SnpProduct;

/// Why a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not a DER X.509 certificate.
    #[error("certificate is not valid DER X.509: {0}")]
    Der(String),
    /// Not a PEM certificate (or a PEM file with no certificate in it).
    #[error("certificate file is not valid PEM: {0}")]
    Pem(String),
    /// The subject public key is not of the kind this position in the chain needs.
    #[error("certificate {subject} has an unsupported public key: expected {expected}")]
    PublicKey {
        /// Subject of the certificate.
        subject: String,
        /// What was expected ("RSA", "ECDSA P-384").
        expected: &'static str,
    },
    /// An AMD extension has a value that does not decode.
    #[error("certificate {subject}: extension {oid} is malformed")]
    Extension {
        /// Subject of the certificate.
        subject: String,
        /// The extension OID.
        oid: String,
    },
    /// The file holds too many certificates.
    #[error("too many certificates: {0} (limit {limit})", limit = crate::snp::cert::MAX_CERTS)]
    TooMany(usize),
}

/// Why SEV-SNP evidence was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnpError {
    /// The report is not exactly 1184 bytes.
    #[error("report has the wrong length: expected {expected} bytes, got {got}")]
    ReportLength {
        /// 1184.
        expected: usize,
        /// Length of the input.
        got: usize,
    },
    /// VERSION is not 2, 3 or 5.
    #[error("report version {0} is not supported (expected 2, 3 or 5)")]
    UnsupportedVersion(u32),
    /// CPUID_FAM_ID / CPUID_MOD_ID name no product this crate has roots for.
    #[error("report names an unknown CPU: family {family:#x} model {model:#x} stepping {stepping:#x}")]
    UnknownCpu {
        /// CPUID_FAM_ID.
        family: u8,
        /// CPUID_MOD_ID.
        model: u8,
        /// CPUID_STEP.
        stepping: u8,
    },
    /// Reserved bytes after the signature (0x330..0x4A0, not signed) are not zero.
    #[error("report has a non-zero byte at offset {offset:#x}, in the unsigned reserved area after the signature")]
    UnsignedBytes {
        /// Offset of the first non-zero byte.
        offset: usize,
    },
    /// The `sev` crate refused the layout.
    #[error("report does not decode: {0}")]
    Decode(String),
    /// SIGNATURE_ALGO is not 1 (ECDSA P-384 with SHA-384).
    #[error("report signature algorithm {0:#x} is not supported (expected 1, ECDSA P-384 SHA-384)")]
    SignatureAlgorithm(u32),
    /// CHIP_ID carries the simulated-TEE marker: never accepted as hardware evidence.
    #[error("report is from the CHRYSALIS SIMULATED TEE, not hardware")]
    SimulatedReport,
    /// The R or S field is not a valid P-384 scalar (or its high 24 bytes are not zero).
    #[error("report signature is malformed: {0}")]
    SignatureEncoding(&'static str),
    /// The report signature does not verify under the endorsement key.
    #[error("report signature does not verify under the {signer} key {subject}")]
    ReportSignature {
        /// "VCEK" or "VLEK".
        signer: &'static str,
        /// Subject of the key's certificate.
        subject: String,
    },
    /// KEY_INFO says a different key signed the report (or that it is unsigned).
    #[error("report says it was signed by {report}, but the certificate is a {cert}")]
    SignerMismatch {
        /// KEY_INFO's SIGNING_KEY.
        report: String,
        /// What the certificate is.
        cert: &'static str,
    },
    /// A supplied certificate does not parse.
    #[error("certificate {index}: {source}")]
    Cert {
        /// Position in the supplied list.
        index: usize,
        /// Why.
        source: CertError,
    },
    /// No ECDSA P-384 (VCEK/VLEK) certificate was supplied.
    #[error("no VCEK or VLEK certificate among the {0} certificates supplied")]
    NoLeafCertificate(usize),
    /// The leaf's issuer is no pinned AMD ASK and no supplied ASK/ASVK signed by a pinned ARK.
    #[error("certificate {subject} is issued by {issuer}, which is not a pinned AMD signing key")]
    UnknownIssuer {
        /// Leaf subject.
        subject: String,
        /// Its issuer.
        issuer: String,
    },
    /// A certificate's signature does not verify under its issuer's key.
    #[error("certificate {subject} is not signed by {issuer}: {reason}")]
    CertSignature {
        /// The signed certificate.
        subject: String,
        /// The supposed signer.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// Outside a certificate's validity period.
    #[error("certificate {subject} is not valid at {at}: valid from {not_before} to {not_after}")]
    CertValidity {
        /// Subject.
        subject: String,
        /// The verification time (RFC 3339).
        at: String,
        /// notBefore (RFC 3339).
        not_before: String,
        /// notAfter (RFC 3339).
        not_after: String,
    },
    /// The leaf certificate is not the kind expected under its issuer.
    #[error("certificate {subject} is not a {expected} certificate")]
    LeafKind {
        /// Subject.
        subject: String,
        /// "SEV-VCEK" or "SEV-VLEK".
        expected: &'static str,
    },
    /// A TCB extension the product requires is missing from the VCEK.
    #[error("VCEK lacks the {name} extension {oid}")]
    MissingExtension {
        /// Field name (blSPL, teeSPL, snpSPL, ucodeSPL, fmcSPL, hwID).
        name: &'static str,
        /// OID.
        oid: &'static str,
    },
    /// The VCEK was issued for a different TCB than REPORTED_TCB.
    #[error("VCEK {name} is {cert}, but the report's REPORTED_TCB has {report}")]
    TcbMismatch {
        /// Field name.
        name: &'static str,
        /// Value in the certificate.
        cert: u8,
        /// Value in the report.
        report: u8,
    },
    /// The VCEK's hwID does not equal the report's CHIP_ID.
    #[error("VCEK hwID {cert} does not match the report's CHIP_ID {report}")]
    HwidMismatch {
        /// Hex of the certificate's hwID.
        cert: String,
        /// Hex of the corresponding CHIP_ID bytes.
        report: String,
    },
    /// The report's CPUID names one product, the chain another.
    #[error("report CPUID says {report:?}, but its certificate chain is {chain:?}'s")]
    ProductMismatch {
        /// From CPUID (v3+).
        report: SnpProduct,
        /// From the pinned root the chain ends in.
        chain: SnpProduct,
    },
    /// A supplied AMD CRL does not decode.
    #[error("AMD CRL does not decode: {0}")]
    CrlDecode(String),
    /// No supplied CRL is issued by the chain's ARK.
    #[error("none of the {supplied} AMD CRLs supplied is issued by {issuer}: the ASK/ASVK's revocation cannot be checked")]
    CrlMissing {
        /// The chain's ARK.
        issuer: String,
        /// How many CRLs were supplied.
        supplied: usize,
    },
    /// The CRL names another issuer than the ARK it is checked against.
    #[error("AMD CRL is issued by {issuer}, not by {expected}")]
    CrlIssuer {
        /// The CRL's issuer (RFC 4514).
        issuer: String,
        /// The ARK's subject.
        expected: String,
    },
    /// The CRL's signature does not verify under the ARK.
    #[error("AMD CRL is not signed by {issuer}: {reason}: it is not AMD's")]
    CrlSignature {
        /// The ARK.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// The verification time is outside thisUpdate..nextUpdate.
    #[error("AMD CRL is not current at {at}: issued {this_update}, next update due {next_update}")]
    CrlValidity {
        /// Verification time (RFC 3339).
        at: String,
        /// thisUpdate (RFC 3339).
        this_update: String,
        /// nextUpdate (RFC 3339).
        next_update: String,
    },
    /// The CRL lists the chain's ASK/ASVK.
    #[error("{subject} (serial {serial}) is revoked since {date} by the CRL of {issuer}")]
    Revoked {
        /// The ASK/ASVK.
        subject: String,
        /// Its serial number (hex).
        serial: String,
        /// revocationDate (RFC 3339).
        date: String,
        /// The ARK.
        issuer: String,
    },
    /// The pinned roots compiled into this crate do not parse (a build defect).
    #[error("pinned AMD root {0} does not parse")]
    PinnedRoot(&'static str),
}

impl SnpError {
    /// Which verification stage failed: "report", "cert_chain", "report_signature",
    /// "vcek_tcb", "vcek_hwid", "product" or "revocation".
    pub fn stage(&self) -> &'static str {
        match self {
            SnpError::ReportLength { .. }
            | SnpError::UnsupportedVersion(_)
            | SnpError::UnknownCpu { .. }
            | SnpError::Decode(_)
            | SnpError::UnsignedBytes { .. }
            | SnpError::SimulatedReport => "report",
            SnpError::SignatureAlgorithm(_)
            | SnpError::SignatureEncoding(_)
            | SnpError::ReportSignature { .. }
            | SnpError::SignerMismatch { .. } => "report_signature",
            SnpError::Cert { .. }
            | SnpError::NoLeafCertificate(_)
            | SnpError::UnknownIssuer { .. }
            | SnpError::CertSignature { .. }
            | SnpError::CertValidity { .. }
            | SnpError::LeafKind { .. }
            | SnpError::PinnedRoot(_) => "cert_chain",
            SnpError::MissingExtension { .. } | SnpError::TcbMismatch { .. } => "vcek_tcb",
            SnpError::HwidMismatch { .. } => "vcek_hwid",
            SnpError::ProductMismatch { .. } => "product",
            SnpError::CrlDecode(_)
            | SnpError::CrlMissing { .. }
            | SnpError::CrlIssuer { .. }
            | SnpError::CrlSignature { .. }
            | SnpError::CrlValidity { .. }
            | SnpError::Revoked { .. } => "revocation",
        }
    }
}
