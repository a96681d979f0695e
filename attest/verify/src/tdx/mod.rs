//! Intel TDX quote verification: a DCAP quote (v4 or v5, TD10 or TD15 body) checked against
//! the pinned Intel SGX Root CA and DCAP collateral (PCK and root CRLs, TCB info, QE
//! identity) at a given time, yielding [`Verified<TdxClaims>`] with the TCB status and
//! advisory IDs for policy to judge.
//!
//! Full verification is dcap-qvl's (pure-Rust RustCrypto backend, no HTTP); before it, this
//! module runs its own parse and the collateral-free checks ([`verify_quote_signature_only`])
//! so that the common failures come back as typed errors, and afterwards it cross-checks
//! dcap-qvl's view of the body with its own. dcap-qvl's remaining failures (CRL revocation,
//! TCB info / QE identity signatures, TCB level matching, TD attribute rules) are reported
//! as [`TdxError::Collateral`] with dcap-qvl's message.
//!
//! Trust: only [`INTEL_SGX_ROOT_CA_DER`] (pinned, `roots/intel/`) and the caller's clock.
//! The quote and the collateral are untrusted input. A debug TD passes verification (its
//! `td_attributes` say so, see [`TdxClaims::debug`]); rejecting it is policy's job.

mod collateral;
mod pck;

pub use collateral::{Collateral, MAX_COLLATERAL_LEN, Validity};
pub use pck::PckInfo;

use crate::claims::{TdxClaims, Verified};
use chrysalis_proto::wire::WireError;
use chrysalis_proto::wire::tdx::{TdAttributes, TdxQuote};

/// The Intel SGX Root CA (DER), the only trust anchor for TDX quotes and their collateral.
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("../../roots/intel/intel_sgx_root_ca.der");

/// SHA-256 of [`INTEL_SGX_ROOT_CA_DER`], as published by Intel and recorded in `roots/intel/README.md`.
pub const INTEL_SGX_ROOT_CA_SHA256: &str = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// Why a TDX quote or its collateral was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TdxError {
    /// The quote bytes do not parse as a v4/v5 ECDSA-P256 TDX quote.
    #[error("malformed tdx quote: {0}")]
    Wire(#[from] WireError),
    /// The QE vendor is not Intel.
    #[error("qe vendor id {0} is not intel's")]
    QeVendor(String),
    /// The PCK certificate chain in the quote is not a PEM list of certificates.
    #[error("pck certificate chain is malformed: {0}")]
    PckChainFormat(String),
    /// The PCK chain does not lead to the pinned Intel SGX Root CA at the given time.
    #[error("pck certificate chain does not verify to the pinned intel sgx root ca: {0}")]
    PckChain(String),
    /// The chain in the quote carries a root certificate other than the pinned one.
    #[error("pck certificate chain ends in a root that is not the pinned intel sgx root ca")]
    ForeignRoot,
    /// The PCK certificate lacks a readable SGX extension (FMSPC, TCB).
    #[error("pck certificate sgx extension is unreadable: {0}")]
    PckExtension(String),
    /// The QE report is not signed by the PCK key.
    #[error("qe report signature does not verify with the pck certificate key")]
    QeReportSignature,
    /// The QE report does not commit to the attestation key and QE auth data.
    #[error("qe report data does not bind the attestation key (sha256(key || auth data) mismatch)")]
    QeReportBinding,
    /// The attestation key is not a P-256 point.
    #[error("attestation key is not a valid p-256 public key")]
    AttestationKey,
    /// The header and body are not signed by the attestation key.
    #[error("quote signature does not verify with the attestation key")]
    QuoteSignature,
    /// The collateral document exceeds [`MAX_COLLATERAL_LEN`].
    #[error("collateral too large: {0} bytes, limit {MAX_COLLATERAL_LEN}")]
    CollateralTooLarge(usize),
    /// The collateral is not dcap-qvl's JSON format, or a date in it is unreadable.
    #[error("collateral is malformed: {0}")]
    CollateralFormat(String),
    /// A collateral item is past its next update at the verification time.
    #[error("collateral expired: {item} next update {next_update}, now {now} (unix seconds)")]
    CollateralExpired {
        /// The item ("tcb info", "qe identity", "root ca crl", "pck crl").
        item: &'static str,
        /// Its nextUpdate.
        next_update: u64,
        /// The verification time.
        now: u64,
    },
    /// A collateral item was issued after the verification time.
    #[error("collateral not yet valid: {item} issued {issued}, now {now} (unix seconds)")]
    CollateralNotYetValid {
        /// The item.
        item: &'static str,
        /// Its issueDate / thisUpdate.
        issued: u64,
        /// The verification time.
        now: u64,
    },
    /// dcap-qvl rejected the quote with this collateral (its message, with causes).
    #[error("dcap verification failed: {0}")]
    Collateral(String),
    /// dcap-qvl and this crate's parser disagree about a field: a bug in one of them.
    #[error("quote parsers disagree on {0}")]
    Inconsistent(&'static str),
}

/// The outcome of [`verify_quote_signature_only`]. Deliberately not a [`Verified`]: without
/// collateral nothing is known about revocation or the TCB level, so policy cannot take it.
#[derive(Clone, Debug)]
pub struct SignatureChecked {
    /// The parsed quote.
    pub quote: TdxQuote,
    /// What the PCK chain established.
    pub pck: PckInfo,
}

impl SignatureChecked {
    /// The TD attributes of the checked quote.
    pub fn td_attributes(&self) -> TdAttributes {
        self.quote.body.td_attributes
    }
}

/// Check everything in a quote that needs no collateral, at `now_unix_secs`: the PCK chain
/// to the pinned root (certificate validity, no revocation), the QE report signature, the
/// QE report's binding of the attestation key, and the quote signature.
///
/// This is what can be checked for a quote that arrives without collateral; it does not
/// establish that the platform's TCB is current or that the PCK is not revoked.
pub fn verify_quote_signature_only(quote: &[u8], now_unix_secs: u64) -> Result<SignatureChecked, TdxError> {
    let parsed = TdxQuote::parse(quote)?;
    check_vendor(&parsed)?;
    let pck = pck::check(quote, &parsed, now_unix_secs)?;
    Ok(SignatureChecked { quote: parsed, pck })
}

/// Fully verify a TDX quote with its collateral at `now_unix_secs`.
///
/// Order: parse; collateral freshness; the collateral-free checks; dcap-qvl's full DCAP
/// verification (CRLs, TCB info and QE identity signatures and matching, TD attribute rules
/// with DEBUG allowed); cross-check of dcap-qvl's body against this crate's parse.
pub fn verify_quote(quote: &[u8], collateral: &Collateral, now_unix_secs: u64) -> Result<Verified<TdxClaims>, TdxError> {
    let parsed = TdxQuote::parse(quote)?;
    check_vendor(&parsed)?;
    collateral.check_fresh(now_unix_secs)?;
    let pck = pck::check(quote, &parsed, now_unix_secs)?;

    // The PCK chain is always the one inside the quote (checked above), never a substitute
    // carried in the collateral.
    let mut dcap_collateral = collateral.inner.clone();
    dcap_collateral.pck_certificate_chain = None;
    let verifier =
        dcap_qvl::verify::QuoteVerifier::<dcap_qvl::configs::RustCryptoConfig>::new_with_config(INTEL_SGX_ROOT_CA_DER.to_vec())
            .allow_debug(true);
    let claims = verifier
        .verify_with_policy(quote, dcap_collateral, now_unix_secs, &dcap_qvl::QuotePolicy::claims_only(now_unix_secs))
        .map_err(|e| TdxError::Collateral(format!("{e:#}")))?;

    let dcap_body = claims.report.as_td10().ok_or(TdxError::Inconsistent("report type"))?;
    let b = &parsed.body;
    let same = dcap_body.mr_td == b.mr_td
        && dcap_body.report_data == b.report_data
        && [dcap_body.rt_mr0, dcap_body.rt_mr1, dcap_body.rt_mr2, dcap_body.rt_mr3] == b.rtmr
        && dcap_body.td_attributes == b.td_attributes.0
        && dcap_body.tee_tcb_svn == b.tee_tcb_svn
        && dcap_body.mr_seam == b.mr_seam;
    if !same {
        return Err(TdxError::Inconsistent("td report body"));
    }
    if claims.platform.pck.fmspc != pck.fmspc {
        return Err(TdxError::Inconsistent("fmspc"));
    }
    if claims.tee_type != chrysalis_proto::wire::tdx::TEE_TYPE_TDX {
        return Err(TdxError::Inconsistent("tee type"));
    }

    Ok(Verified::new(claims_from(&parsed, claims.tcb.status.to_string(), claims.tcb.advisory_ids, pck.fmspc)))
}

fn check_vendor(q: &TdxQuote) -> Result<(), TdxError> {
    if q.header.qe_vendor_id != chrysalis_proto::wire::tdx::INTEL_QE_VENDOR_ID {
        return Err(TdxError::QeVendor(hex::encode(q.header.qe_vendor_id)));
    }
    Ok(())
}

fn claims_from(q: &TdxQuote, tcb_status: String, advisory_ids: Vec<String>, fmspc: [u8; 6]) -> TdxClaims {
    let b = &q.body;
    TdxClaims {
        quote_version: q.header.version,
        tee_tcb_svn: b.tee_tcb_svn.to_vec(),
        mr_seam: b.mr_seam.to_vec(),
        mr_td: b.mr_td.to_vec(),
        mr_config_id: b.mr_config_id.to_vec(),
        mr_owner: b.mr_owner.to_vec(),
        mr_owner_config: b.mr_owner_config.to_vec(),
        rtmr: b.rtmr.map(|r| r.to_vec()),
        report_data: b.report_data.to_vec(),
        td_attributes: b.td_attributes.0.to_vec(),
        xfam: b.xfam.to_vec(),
        tcb_status,
        advisory_ids,
        fmspc: fmspc.to_vec(),
    }
}

impl TdxClaims {
    /// TD_ATTRIBUTES as a typed bit field (all-zero if the claim is malformed).
    pub fn td_attributes_bits(&self) -> TdAttributes {
        TdAttributes(self.td_attributes.as_slice().try_into().unwrap_or([0; 8]))
    }

    /// TD_ATTRIBUTES.DEBUG: the host can read and modify the TD. Policy must reject it in
    /// production.
    pub fn debug(&self) -> bool {
        self.td_attributes_bits().debug()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn pinned_root_sha256() {
        assert_eq!(hex::encode(Sha256::digest(INTEL_SGX_ROOT_CA_DER)), INTEL_SGX_ROOT_CA_SHA256);
        let pem = include_str!("../../roots/intel/intel_sgx_root_ca.pem");
        let parsed = pem::parse(pem).map(|p| p.into_contents());
        assert_eq!(parsed.ok().as_deref(), Some(INTEL_SGX_ROOT_CA_DER));
    }

    #[test]
    fn every_error_formats_lower_case() {
        let errors = [
            TdxError::Wire(WireError::Unsupported { what: "quote version", value: 3 }),
            TdxError::QeVendor("00".into()),
            TdxError::PckChainFormat("x".into()),
            TdxError::PckChain("x".into()),
            TdxError::ForeignRoot,
            TdxError::PckExtension("x".into()),
            TdxError::QeReportSignature,
            TdxError::QeReportBinding,
            TdxError::AttestationKey,
            TdxError::QuoteSignature,
            TdxError::CollateralTooLarge(1),
            TdxError::CollateralFormat("x".into()),
            TdxError::CollateralExpired { item: "pck crl", next_update: 1, now: 2 },
            TdxError::CollateralNotYetValid { item: "tcb info", issued: 2, now: 1 },
            TdxError::Collateral("x".into()),
            TdxError::Inconsistent("x"),
        ];
        for e in errors {
            let s = e.to_string();
            assert!(s.chars().next().is_some_and(|c| c.is_lowercase()), "{s}");
            assert!(!s.ends_with('.'), "{s}");
        }
    }

    #[test]
    fn claims_expose_debug_bit() {
        let mut c = claims_from(
            &TdxQuote::parse(&chrysalis_proto::wire::tdx::tests_support::synthetic_v4()).unwrap_or_else(|e| panic!("{e}")),
            "UpToDate".into(),
            vec![],
            [0; 6],
        );
        c.td_attributes = vec![1, 0, 0, 0x10, 0, 0, 0, 0];
        assert!(c.debug());
        c.td_attributes = vec![0, 0, 0, 0x10, 0, 0, 0, 0];
        assert!(!c.debug());
    }
}
