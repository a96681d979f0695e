//! X.509 chains for NVIDIA GPU evidence and RIMs: PEM/DER decoding, path validation to a
//! pinned root at a given time (names, ECDSA P-384/SHA-384 signatures, validity, CA bits,
//! unknown critical extensions), and the FWID carried by the GPU's leaf certificate.
//!
//! Trusts only the root passed in (normally [`DEVICE_ROOT_PEM`] / [`RIM_ROOT_PEM`], compiled
//! in); certificates in evidence or RIMs are untrusted input, including any copy of the root.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p384::ecdsa::{Signature, VerifyingKey, signature::Verifier};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode, oid::ObjectIdentifier};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

/// NVIDIA Device Identity CA: root of every H100 device certificate chain (from nvtrust's
/// `verifier_device_root.pem`).
pub const DEVICE_ROOT_PEM: &str = include_str!("../../roots/nvidia/device_root.pem");
/// NVIDIA CoRIM signing Root CA: root of the RIM signing chains (nvtrust's
/// `verifier_RIM_root.pem`).
pub const RIM_ROOT_PEM: &str = include_str!("../../roots/nvidia/rim_root.pem");

const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// Extensions a certificate may mark critical and still be accepted.
const KNOWN_CRITICAL: [&str; 5] = [
    "2.5.29.19",      // basicConstraints
    "2.5.29.15",      // keyUsage
    "2.5.29.37",      // extKeyUsage
    "2.5.29.17",      // subjectAltName
    "2.23.133.5.4.1", // TCG DICE TcbInfo (FWID)
];
/// TCG DICE TcbInfo extensions that carry the FWID (NVIDIA uses the first).
const FWID_OIDS: [&str; 2] = ["2.23.133.5.4.1", "2.23.133.5.4.1.1"];
/// DER of the sha384 algorithm OID (2.16.840.1.101.3.4.2.2).
const SHA384_OID_DER: [u8; 11] = [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];

/// Most certificates a chain may hold (the device chain has 5, RIM chains 4).
pub const MAX_CHAIN_LEN: usize = 8;

/// Why a certificate chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// PEM armour or base64 is broken.
    #[error("certificate PEM is malformed: {0}")]
    Pem(String),
    /// A certificate is not valid DER X.509.
    #[error("certificate {index} is not valid DER X.509: {reason}")]
    Parse {
        /// Position in the chain (0 = leaf).
        index: usize,
        /// Decoder message.
        reason: String,
    },
    /// Fewer certificates than a leaf plus its issuer.
    #[error("certificate chain must have at least the root CA and signing certificates: got {got}")]
    TooShort {
        /// Certificates supplied.
        got: usize,
    },
    /// More than [`MAX_CHAIN_LEN`].
    #[error("certificate chain too long: {got} certificates, limit {MAX_CHAIN_LEN}")]
    TooLong {
        /// Certificates supplied.
        got: usize,
    },
    /// Not ECDSA P-384 with SHA-384.
    #[error("certificate {index} ({subject}) uses unsupported {what} {oid}")]
    UnsupportedAlgorithm {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
        /// Signature or key algorithm.
        what: &'static str,
        /// The OID found.
        oid: String,
    },
    /// The next certificate's subject is not this certificate's issuer.
    #[error("certificate {index} ({subject}) names issuer {issuer}, but the next certificate is {next}")]
    IssuerMismatch {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
        /// Issuer DN it names.
        issuer: String,
        /// Subject DN of the next certificate.
        next: String,
    },
    /// Signature does not verify with the issuer's key.
    #[error("certificate {index} ({subject}): signature does not verify with its issuer's key")]
    BadSignature {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
    },
    /// Before notBefore.
    #[error("certificate {index} ({subject}) is not valid before {not_before}")]
    NotYetValid {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
        /// notBefore.
        not_before: String,
    },
    /// After notAfter.
    #[error("certificate {index} ({subject}) expired at {not_after}")]
    Expired {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
        /// notAfter.
        not_after: String,
    },
    /// An issuing certificate is not a CA (basicConstraints / keyUsage).
    #[error("certificate {index} ({subject}) issues certificates but is not a CA")]
    NotCa {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
    },
    /// A pathLenConstraint is exceeded.
    #[error("certificate {index} ({subject}) allows path length {allowed}, chain below it has {below} CAs")]
    PathLen {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
        /// pathLenConstraint.
        allowed: u8,
        /// Intermediate CAs below it.
        below: usize,
    },
    /// A critical extension this verifier does not understand.
    #[error("certificate {index} ({subject}) has unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// Position in the chain.
        index: usize,
        /// Subject DN.
        subject: String,
        /// Extension OID.
        oid: String,
    },
    /// The top certificate is not issued by the pinned root.
    #[error("chain does not end at the pinned root: top certificate {subject} is issued by {issuer}, not by {root}")]
    UntrustedRoot {
        /// Subject of the top non-root certificate.
        subject: String,
        /// Its issuer.
        issuer: String,
        /// The pinned root's subject.
        root: String,
    },
}

/// A certificate chain that validated to a pinned root: leaf first, root last (the pinned
/// root itself, not a copy from the evidence).
#[derive(Clone, Debug)]
pub struct ValidChain {
    /// Certificates, leaf first, ending with the pinned root.
    pub certs: Vec<Certificate>,
}

impl ValidChain {
    /// The leaf certificate.
    pub fn leaf(&self) -> Option<&Certificate> {
        self.certs.first()
    }

    /// The leaf's P-384 verifying key.
    pub fn leaf_key(&self) -> Result<VerifyingKey, ChainError> {
        let leaf = self.leaf().ok_or(ChainError::TooShort { got: 0 })?;
        p384_key(0, leaf)
    }
}

/// Split a PEM bundle into DER certificates (only `CERTIFICATE` blocks; other text is ignored).
pub fn pem_to_der_chain(pem: &str) -> Result<Vec<Vec<u8>>, ChainError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some((_, after)) = rest.split_once(BEGIN) {
        let (body, tail) = after.split_once(END).ok_or_else(|| ChainError::Pem("missing END CERTIFICATE line".into()))?;
        out.push(decode_base64(body).map_err(ChainError::Pem)?);
        rest = tail;
        if out.len() > MAX_CHAIN_LEN {
            return Err(ChainError::TooLong { got: out.len() });
        }
    }
    Ok(out)
}

/// Base64 with whitespace (PEM bodies, XML-DSig element text) to bytes.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()).map_err(|e| e.to_string())
}

/// Parse one DER certificate (position `index` is only for error messages).
pub fn parse_cert(index: usize, der: &[u8]) -> Result<Certificate, ChainError> {
    Certificate::from_der(der).map_err(|e| ChainError::Parse { index, reason: e.to_string() })
}

/// The pinned root from PEM (compile-time constant in production; tests pass their own).
pub fn root_from_pem(pem: &str) -> Result<Certificate, ChainError> {
    let ders = pem_to_der_chain(pem)?;
    match ders.as_slice() {
        [one] => parse_cert(0, one),
        _ => Err(ChainError::Pem(format!("expected one root certificate, found {}", ders.len()))),
    }
}

/// Subject DN for messages.
pub fn subject(c: &Certificate) -> String {
    c.tbs_certificate.subject.to_string()
}

/// Validate `chain` (DER, leaf first; may end with a copy of the root) to `root` at `now`.
///
/// A trailing certificate byte-identical to the pinned root is dropped; the remaining top
/// certificate must be issued and signed by `root`. `min_len` is how many certificates the
/// caller insists on before any root copy is removed (NVIDIA: leaf and root at least).
pub fn verify_chain(chain: &[Vec<u8>], root: &Certificate, now: SystemTime, min_len: usize) -> Result<ValidChain, ChainError> {
    if chain.len() > MAX_CHAIN_LEN {
        return Err(ChainError::TooLong { got: chain.len() });
    }
    if chain.len() < min_len {
        return Err(ChainError::TooShort { got: chain.len() });
    }
    let root_der = root.to_der().map_err(|e| ChainError::Parse { index: chain.len(), reason: e.to_string() })?;
    let mut certs = chain.iter().enumerate().map(|(i, der)| parse_cert(i, der)).collect::<Result<Vec<_>, _>>()?;
    if chain.last().map(|d| d.as_slice()) == Some(root_der.as_slice()) {
        certs.pop();
    }
    if certs.is_empty() {
        return Err(ChainError::TooShort { got: chain.len() });
    }
    certs.push(root.clone());
    // `certs` is not empty: the root was just pushed.
    let root_index = certs.len().saturating_sub(1);
    let now_s = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for (i, cert) in certs.iter().enumerate() {
        check_algorithms(i, cert)?;
        check_validity(i, cert, now_s)?;
        check_critical(i, cert)?;
        if i > 0 {
            check_ca(i, cert, i.saturating_sub(1))?;
        }
    }
    // Each certificate with the next one, its issuer.
    let issuers = certs.iter().enumerate().skip(1);
    for ((i, cert), (issuer_index, issuer)) in certs.iter().enumerate().zip(issuers) {
        if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
            if issuer_index == root_index {
                return Err(ChainError::UntrustedRoot {
                    subject: subject(cert),
                    issuer: cert.tbs_certificate.issuer.to_string(),
                    root: subject(issuer),
                });
            }
            return Err(ChainError::IssuerMismatch {
                index: i,
                subject: subject(cert),
                issuer: cert.tbs_certificate.issuer.to_string(),
                next: subject(issuer),
            });
        }
        let key = p384_key(issuer_index, issuer)?;
        if !signature_ok(cert, &key) {
            return Err(ChainError::BadSignature { index: i, subject: subject(cert) });
        }
    }
    // The root must be self-signed with its own key (guards against a broken pin).
    if let Some(root) = certs.last() {
        let key = p384_key(root_index, root)?;
        if !signature_ok(root, &key) {
            return Err(ChainError::BadSignature { index: root_index, subject: subject(root) });
        }
    }
    Ok(ValidChain { certs })
}

/// Whether `cert` names `issuer` as issuer, is signed by it and is valid at `now` (for
/// one-step checks such as delegated OCSP responders).
pub fn issued_by(cert: &Certificate, issuer: &Certificate, now: SystemTime) -> bool {
    let now_s = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    cert.tbs_certificate.issuer == issuer.tbs_certificate.subject
        && check_algorithms(0, cert).is_ok()
        && check_validity(0, cert, now_s).is_ok()
        && p384_key(1, issuer).is_ok_and(|k| signature_ok(cert, &k))
}

fn signature_ok(cert: &Certificate, key: &VerifyingKey) -> bool {
    let Ok(tbs) = cert.tbs_certificate.to_der() else {
        return false;
    };
    let Some(sig_der) = cert.signature.as_bytes() else {
        return false;
    };
    let Ok(sig) = Signature::from_der(sig_der) else {
        return false;
    };
    key.verify(&tbs, &sig).is_ok()
}

fn check_algorithms(index: usize, cert: &Certificate) -> Result<(), ChainError> {
    let unsupported = |what, oid: &ObjectIdentifier| ChainError::UnsupportedAlgorithm {
        index,
        subject: subject(cert),
        what,
        oid: oid.to_string(),
    };
    if cert.signature_algorithm.oid != ECDSA_WITH_SHA384 {
        return Err(unsupported("signature algorithm", &cert.signature_algorithm.oid));
    }
    if cert.tbs_certificate.signature.oid != ECDSA_WITH_SHA384 {
        return Err(unsupported("signature algorithm", &cert.tbs_certificate.signature.oid));
    }
    p384_key(index, cert).map(|_| ())
}

/// The certificate's subject public key as P-384 (anything else is rejected).
pub fn p384_key(index: usize, cert: &Certificate) -> Result<VerifyingKey, ChainError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let unsupported = |oid: String| ChainError::UnsupportedAlgorithm { index, subject: subject(cert), what: "public key", oid };
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(unsupported(spki.algorithm.oid.to_string()));
    }
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if curve != Some(SECP384R1) {
        return Err(unsupported(curve.map(|c| c.to_string()).unwrap_or_else(|| "without curve".into())));
    }
    let bytes = spki.subject_public_key.as_bytes().ok_or_else(|| unsupported("unaligned key".into()))?;
    VerifyingKey::from_sec1_bytes(bytes).map_err(|_| unsupported("invalid P-384 point".into()))
}

fn check_validity(index: usize, cert: &Certificate, now_s: u64) -> Result<(), ChainError> {
    let v = &cert.tbs_certificate.validity;
    if now_s < v.not_before.to_unix_duration().as_secs() {
        return Err(ChainError::NotYetValid { index, subject: subject(cert), not_before: v.not_before.to_string() });
    }
    if now_s > v.not_after.to_unix_duration().as_secs() {
        return Err(ChainError::Expired { index, subject: subject(cert), not_after: v.not_after.to_string() });
    }
    Ok(())
}

fn check_critical(index: usize, cert: &Certificate) -> Result<(), ChainError> {
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.critical && !KNOWN_CRITICAL.contains(&ext.extn_id.to_string().as_str()) {
            return Err(ChainError::UnknownCriticalExtension { index, subject: subject(cert), oid: ext.extn_id.to_string() });
        }
    }
    Ok(())
}

/// `below`: how many CA certificates sit between this one and the leaf.
fn check_ca(index: usize, cert: &Certificate, below: usize) -> Result<(), ChainError> {
    let not_ca = || ChainError::NotCa { index, subject: subject(cert) };
    let mut is_ca = false;
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == BASIC_CONSTRAINTS {
            let bc = BasicConstraints::from_der(ext.extn_value.as_bytes()).map_err(|_| not_ca())?;
            is_ca = bc.ca;
            if let Some(allowed) = bc.path_len_constraint
                && below > usize::from(allowed)
            {
                return Err(ChainError::PathLen { index, subject: subject(cert), allowed, below });
            }
        } else if ext.extn_id == KEY_USAGE {
            let ku = KeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|_| not_ca())?;
            if !ku.key_cert_sign() {
                return Err(not_ca());
            }
        }
    }
    if is_ca { Ok(()) } else { Err(not_ca()) }
}

/// The FWID (SHA-384) in the certificate's TCG DICE TcbInfo extension, if any.
///
/// NVIDIA's extension is `SEQUENCE { INTEGER, SubjectPublicKeyInfo, SEQUENCE { sha384,
/// OCTET STRING } }`; this finds the first `SEQUENCE { OID sha384, OCTET STRING(48) }`
/// inside, rather than assuming fixed offsets.
pub fn fwid(cert: &Certificate) -> Option<Vec<u8>> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| FWID_OIDS.contains(&e.extn_id.to_string().as_str()))
        .find_map(|e| find_fwid(e.extn_value.as_bytes(), 0))
}

/// One DER TLV: (tag, content, rest). Total: `None` on anything malformed.
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, mut rest) = rest.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let (lb, r) = (rest.get(..n)?, rest.get(n..)?);
        rest = r;
        lb.iter().fold(0usize, |a, b| a << 8 | usize::from(*b))
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

fn find_fwid(mut b: &[u8], depth: u8) -> Option<Vec<u8>> {
    if depth > 6 {
        return None;
    }
    while !b.is_empty() {
        let (tag, content, rest) = der_tlv(b)?;
        if tag == 0x30
            && let Some(oid_len) = content.strip_prefix(&SHA384_OID_DER[..])
            && let Some((0x04, digest, [])) = der_tlv(oid_len)
            && digest.len() == 48
        {
            return Some(digest.to_vec());
        }
        if tag & 0x20 != 0
            // `depth <= 6` here (checked above), so this cannot saturate.
            && let Some(found) = find_fwid(content, depth.saturating_add(1))
        {
            return Some(found);
        }
        b = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_roots_parse_and_self_verify() {
        for pem in [DEVICE_ROOT_PEM, RIM_ROOT_PEM] {
            let root = root_from_pem(pem).unwrap();
            let key = p384_key(0, &root).unwrap();
            assert!(signature_ok(&root, &key));
        }
    }

    #[test]
    fn der_walker_is_total() {
        assert_eq!(der_tlv(&[]), None);
        assert_eq!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der_tlv(&[0x30, 0x02, 0x01]), None);
        assert_eq!(find_fwid(&[0x30, 0x81], 0), None);
    }

    #[test]
    fn pem_errors_are_typed() {
        assert!(matches!(pem_to_der_chain("-----BEGIN CERTIFICATE-----\nAAAA"), Err(ChainError::Pem(_))));
        assert!(matches!(
            pem_to_der_chain("-----BEGIN CERTIFICATE-----\n*!*\n-----END CERTIFICATE-----"),
            Err(ChainError::Pem(_))
        ));
        assert_eq!(pem_to_der_chain("no certs").unwrap().len(), 0);
    }
}
