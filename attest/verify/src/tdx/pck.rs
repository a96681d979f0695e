//! The signature checks of a TDX quote that need no collateral: the PCK certificate chain to
//! the pinned Intel SGX Root CA (validity at a given time, no revocation), the PCK key's
//! signature over the QE report, the QE report's binding of the attestation key, and the
//! attestation key's signature over header and body. Input: a parsed, untrusted quote.
//!
//! Certificate path building and X.509 checks are webpki's (the same fork dcap-qvl uses),
//! ECDSA is RustCrypto's `p256`; nothing here is hand-written cryptography.

use core::time::Duration;

use der::Decode as _;
use p256::ecdsa::signature::Verifier as _;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use sha2::{Digest as _, Sha256};

use super::{INTEL_SGX_ROOT_CA_DER, TdxError};
use chrysalis_proto::wire::tdx::TdxQuote;

/// Intel's chains are leaf, intermediate CA, root: more is refused before path building.
const MAX_CHAIN_LEN: usize = 4;

/// What the collateral-free checks established about the platform key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PckInfo {
    /// FMSPC from the PCK certificate's SGX extension (6 bytes).
    pub fmspc: [u8; 6],
    /// Subjects of the PCK chain as carried in the quote, leaf first (RFC 4514 form).
    pub subjects: Vec<String>,
}

fn sig_alg() -> &'static dyn SignatureVerificationAlgorithm {
    webpki::rustcrypto::ECDSA_P256_SHA256
}

/// Decode the PEM chain of a quote into DER certificates, leaf first.
pub(crate) fn chain_der(pem_chain: &[u8]) -> Result<Vec<Vec<u8>>, TdxError> {
    // Quote generators often NUL-terminate the chain.
    let end = pem_chain.iter().rposition(|&b| b != 0).map_or(0, |i| i.saturating_add(1));
    let text = pem_chain.get(..end).unwrap_or_default();
    let pems = pem::parse_many(text).map_err(|e| TdxError::PckChainFormat(e.to_string()))?;
    if pems.is_empty() {
        return Err(TdxError::PckChainFormat("no certificate in the quote".into()));
    }
    if pems.len() > MAX_CHAIN_LEN {
        return Err(TdxError::PckChainFormat(format!("{} certificates, at most {MAX_CHAIN_LEN}", pems.len())));
    }
    pems.into_iter()
        .map(|p| {
            if p.tag() == "CERTIFICATE" {
                Ok(p.into_contents())
            } else {
                Err(TdxError::PckChainFormat(format!("unexpected PEM block {:?}", p.tag())))
            }
        })
        .collect()
}

/// Run every collateral-free check, in the order DCAP prescribes: PCK chain, QE report
/// signature, QE report binding, quote signature.
pub(crate) fn check(raw: &[u8], quote: &TdxQuote, now_unix_secs: u64) -> Result<PckInfo, TdxError> {
    let certs = chain_der(&quote.pck_chain_pem)?;
    let (leaf_der, rest) = certs.split_first().ok_or_else(|| TdxError::PckChainFormat("empty chain".into()))?;

    // Every certificate must at least be DER (webpki would silently skip a broken spare).
    let parsed: Vec<x509_cert_03::Certificate> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            x509_cert_03::Certificate::from_der(c).map_err(|e| TdxError::PckChainFormat(format!("certificate {i}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    // Type-5 chains are leaf, intermediate CA, root. The root carried in the quote is never
    // trusted, but one that differs from the pinned root means the chain was altered.
    if certs.len() >= 3 && certs.last().map(Vec::as_slice) != Some(INTEL_SGX_ROOT_CA_DER) {
        return Err(TdxError::ForeignRoot);
    }

    // 1. PCK chain to the pinned root, at `now`, without revocation (no CRL here).
    let root = CertificateDer::from_slice(INTEL_SGX_ROOT_CA_DER);
    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| TdxError::PckChain(e.to_string()))?;
    let leaf_cert = CertificateDer::from_slice(leaf_der);
    let leaf = webpki::EndEntityCert::try_from(&leaf_cert).map_err(|e| TdxError::PckChain(format!("pck certificate: {e}")))?;
    let intermediates: Vec<CertificateDer<'_>> = rest.iter().map(|c| CertificateDer::from_slice(c)).collect();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(now_unix_secs));
    leaf.verify_for_usage(&[sig_alg()], &[anchor], &intermediates, now, webpki::KeyUsage::server_auth(), None, None)
        .map_err(|e| TdxError::PckChain(chain_error(&e)))?;

    // 2. The PCK key signed the QE report.
    let qe_sig = p256::ecdsa::Signature::from_slice(&quote.qe_report_signature).map_err(|_| TdxError::QeReportSignature)?;
    leaf.verify_signature(sig_alg(), &quote.qe_report_bytes, qe_sig.to_der().as_bytes())
        .map_err(|_| TdxError::QeReportSignature)?;

    // 3. The QE report binds the attestation key: REPORTDATA = SHA-256(key || auth data) || 0^32.
    let mut h = Sha256::new();
    h.update(quote.attestation_key);
    h.update(&quote.qe_auth_data);
    let expected = h.finalize();
    let (bound, tail) = quote.qe_report.report_data.split_at(32);
    if bound != expected.as_slice() || tail.iter().any(|&b| b != 0) {
        return Err(TdxError::QeReportBinding);
    }

    // 4. The attestation key signed header and body (the original bytes, not a re-encoding).
    let mut sec1 = [0x04u8; 65];
    if let Some(dst) = sec1.get_mut(1..) {
        dst.copy_from_slice(&quote.attestation_key);
    }
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| TdxError::AttestationKey)?;
    let sig = p256::ecdsa::Signature::from_slice(&quote.signature).map_err(|_| TdxError::QuoteSignature)?;
    let signed = quote.signed_bytes(raw).ok_or(TdxError::QuoteSignature)?;
    key.verify(signed, &sig).map_err(|_| TdxError::QuoteSignature)?;

    let ext = dcap_qvl::intel::parse_pck_extension(leaf_der).map_err(|e| TdxError::PckExtension(format!("{e:#}")))?;
    let subjects = parsed.iter().map(|c| c.tbs_certificate().subject().to_string()).collect();
    Ok(PckInfo { fmspc: ext.fmspc, subjects })
}

/// Why the PCK chain failed, in words and dates (webpki's `Display` is its `Debug`).
fn chain_error(e: &webpki::Error) -> String {
    let date = |t: &UnixTime| crate::snp::cert::rfc3339(t.as_secs());
    match e {
        webpki::Error::CertExpired { time, not_after } => {
            format!("a certificate of the chain expired at {} (verification time {})", date(not_after), date(time))
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            format!("a certificate of the chain is valid only from {} (verification time {})", date(not_before), date(time))
        }
        webpki::Error::UnknownIssuer => "the chain does not lead to the pinned Intel SGX root CA".into(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate's signature does not verify under its issuer's key (altered certificate)".into()
        }
        other => format!("certificate chain refused: {other:?}"),
    }
}
