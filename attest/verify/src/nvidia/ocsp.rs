//! Offline OCSP: find, in a bundle of stored DER OCSP responses, the one that speaks about a
//! certificate, check its signature (by the issuer, or by a responder certificate the issuer
//! signed for OCSP), its freshness at `now`, and report the certificate's status.
//!
//! Trusts only the issuer certificate it is given (already validated to a pinned root).
//! Responses are untrusted input. Only ECDSA P-384/SHA-384 signatures and SHA-256/SHA-384
//! CertIDs are understood (what NVIDIA's responder and verifier use); other responses are
//! ignored as "not about this certificate", never accepted.

use std::time::{SystemTime, UNIX_EPOCH};

use p384::ecdsa::{Signature, signature::Verifier};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode, oid::ObjectIdentifier};
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

use super::x509;

const BASIC_RESPONSE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");

/// What a stored OCSP response says about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum OcspStatus {
    /// Signed, fresh and "good".
    Good,
    /// Signed, fresh and "revoked".
    Revoked {
        /// Revocation time.
        at: String,
        /// CRLReason, if given.
        reason: Option<String>,
    },
    /// Signed, fresh and "unknown".
    Unknown,
    /// No valid, fresh response about this certificate was in the bundle.
    NoResponse,
}

/// The OCSP status of one certificate of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OcspResult {
    /// Subject DN of the certificate.
    pub subject: String,
    /// Its status.
    pub status: OcspStatus,
}

/// Check every non-root certificate of a validated chain (leaf first, root last) against
/// the stored responses.
pub fn check_chain(chain: &[Certificate], responses: &[Vec<u8>], now: SystemTime) -> Vec<OcspResult> {
    chain
        .windows(2)
        .filter_map(|w| match w {
            [cert, issuer] => Some(OcspResult { subject: x509::subject(cert), status: status_of(cert, issuer, responses, now) }),
            _ => None,
        })
        .collect()
}

/// The status of `cert` (issued by `issuer`) according to the first valid, fresh, matching
/// response in `responses`.
pub fn status_of(cert: &Certificate, issuer: &Certificate, responses: &[Vec<u8>], now: SystemTime) -> OcspStatus {
    responses.iter().find_map(|r| single_status(cert, issuer, r, now)).unwrap_or(OcspStatus::NoResponse)
}

fn single_status(cert: &Certificate, issuer: &Certificate, der: &[u8], now: SystemTime) -> Option<OcspStatus> {
    let resp = OcspResponse::from_der(der).ok()?;
    if resp.response_status != OcspResponseStatus::Successful {
        return None;
    }
    let bytes = resp.response_bytes?;
    if bytes.response_type != BASIC_RESPONSE {
        return None;
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).ok()?;
    let now_s = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let single = basic.tbs_response_data.responses.iter().find(|s| cert_id_matches(&s.cert_id, cert, issuer))?;
    if !signed_by_issuer_or_delegate(&basic, issuer, now) {
        return None;
    }
    if single.this_update.0.to_unix_duration().as_secs() > now_s {
        return None;
    }
    if let Some(next) = &single.next_update
        && next.0.to_unix_duration().as_secs() < now_s
    {
        return None;
    }
    Some(match &single.cert_status {
        CertStatus::Good(_) => OcspStatus::Good,
        CertStatus::Revoked(info) => OcspStatus::Revoked {
            at: info.revocation_time.0.to_date_time().to_string(),
            reason: info.revocation_reason.map(|r| format!("{r:?}")),
        },
        CertStatus::Unknown(_) => OcspStatus::Unknown,
    })
}

fn cert_id_matches(id: &x509_ocsp::CertId, cert: &Certificate, issuer: &Certificate) -> bool {
    if id.serial_number != cert.tbs_certificate.serial_number {
        return false;
    }
    let Ok(name) = issuer.tbs_certificate.subject.to_der() else {
        return false;
    };
    let Some(key) = issuer.tbs_certificate.subject_public_key_info.subject_public_key.as_bytes() else {
        return false;
    };
    let (name_hash, key_hash): (Vec<u8>, Vec<u8>) = if id.hash_algorithm.oid == SHA384 {
        (Sha384::digest(&name).to_vec(), Sha384::digest(key).to_vec())
    } else if id.hash_algorithm.oid == SHA256 {
        (Sha256::digest(&name).to_vec(), Sha256::digest(key).to_vec())
    } else {
        return false;
    };
    id.issuer_name_hash.as_bytes() == name_hash.as_slice() && id.issuer_key_hash.as_bytes() == key_hash.as_slice()
}

fn verify_with(basic: &BasicOcspResponse, signer: &Certificate) -> bool {
    if basic.signature_algorithm.oid != ECDSA_WITH_SHA384 {
        return false;
    }
    let Ok(key) = x509::p384_key(0, signer) else {
        return false;
    };
    let Ok(tbs) = basic.tbs_response_data.to_der() else {
        return false;
    };
    let Some(sig) = basic.signature.as_bytes() else {
        return false;
    };
    let Ok(sig) = Signature::from_der(sig) else {
        return false;
    };
    key.verify(&tbs, &sig).is_ok()
}

fn signed_by_issuer_or_delegate(basic: &BasicOcspResponse, issuer: &Certificate, now: SystemTime) -> bool {
    if verify_with(basic, issuer) {
        return true;
    }
    // A delegated responder: issued and signed by `issuer`, valid now, EKU id-kp-OCSPSigning.
    basic.certs.iter().flatten().any(|responder| {
        let has_eku = responder.tbs_certificate.extensions.iter().flatten().any(|e| {
            e.extn_id == EXT_KEY_USAGE
                && x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
                    .map(|eku| eku.0.contains(&KP_OCSP_SIGNING))
                    .unwrap_or(false)
        });
        has_eku && x509::issued_by(responder, issuer, now) && verify_with(basic, responder)
    })
}
