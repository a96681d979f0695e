//! AMD SEV-SNP certificates (ARK, ASK/ASVK, VCEK/VLEK; AMD pub. 57230 "VCEK Certificate and
//! KDS Interface Specification"): DER/PEM decoding, the AMD extensions, validity periods
//! and RSASSA-PSS/SHA-384 signatures over the certificate's *original* TBS bytes.
//!
//! Trust: none. Every certificate is untrusted input until `crate::snp::chain` has tied it
//! to a pinned root; nothing in this file decides trust.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p384::ecdsa::VerifyingKey;
use rsa::signature::Verifier;
use x509_cert::der::asn1::{Ia5StringRef, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
use x509_cert::der::referenced::OwnedToRef;
use x509_cert::der::{Decode, DecodePem, Reader, SliceReader};

use crate::snp::error::CertError;

/// Most certificates accepted from one file or bundle (a chain is 3; caches hold a few).
pub const MAX_CERTS: usize = 64;

const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// AMD VCEK extension OIDs (pub. 57230, Table 8).
pub mod oid {
    /// structVersion.
    pub const STRUCT_VERSION: &str = "1.3.6.1.4.1.3704.1.1";
    /// productName (IA5String, e.g. "Milan-B0").
    pub const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    /// blSPL: bootloader security patch level.
    pub const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    /// teeSPL.
    pub const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    /// snpSPL.
    pub const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    /// ucodeSPL.
    pub const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    /// fmcSPL (Turin and later).
    pub const FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
    /// hwID: the chip's CHIP_ID (64 bytes; 8 bytes on Turin).
    pub const HWID: &str = "1.3.6.1.4.1.3704.1.4";
}

/// The AMD extensions of a VCEK/VLEK, decoded. Absent extensions are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AmdExtensions {
    /// productName.
    pub product_name: Option<String>,
    /// blSPL.
    pub bootloader: Option<u8>,
    /// teeSPL.
    pub tee: Option<u8>,
    /// snpSPL.
    pub snp: Option<u8>,
    /// ucodeSPL.
    pub microcode: Option<u8>,
    /// fmcSPL.
    pub fmc: Option<u8>,
    /// hwID bytes.
    pub hwid: Option<Vec<u8>>,
}

/// A decoded certificate with the bytes it was decoded from.
#[derive(Clone, Debug)]
pub struct AmdCert {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    cert: x509_cert::Certificate,
}

impl PartialEq for AmdCert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

/// Seconds since the epoch, saturating at zero for times before it.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// RFC 3339 rendering of a Unix time, for messages.
pub(crate) fn rfc3339(secs: u64) -> String {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .map_or_else(|| format!("unix:{secs}"), |t| humantime::format_rfc3339_seconds(t).to_string())
}

/// Offsets of the TBSCertificate TLV inside a DER certificate: right after the outer
/// SEQUENCE header.
fn tbs_range(der: &[u8]) -> Result<std::ops::Range<usize>, x509_cert::der::Error> {
    let mut r = SliceReader::new(der)?;
    let _outer = x509_cert::der::Header::decode(&mut r)?;
    let start = usize::try_from(r.position())?;
    let tbs = r.tlv_bytes()?;
    Ok(start..start.saturating_add(tbs.len()))
}

impl AmdCert {
    /// Decode one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
        let tbs = tbs_range(der).map_err(|e| CertError::Der(e.to_string()))?;
        Ok(AmdCert { der: der.to_vec(), tbs, cert })
    }

    /// Decode every certificate in a PEM file (at most [`MAX_CERTS`]).
    pub fn from_pem_all(pem: &[u8]) -> Result<Vec<Self>, CertError> {
        let text = std::str::from_utf8(pem).map_err(|_| CertError::Pem("not UTF-8".into()))?;
        let mut out = Vec::new();
        let mut rest = text;
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        while let Some(start) = rest.find(BEGIN) {
            let after = rest.get(start..).unwrap_or("");
            let (block, tail) = after
                .find(END)
                .and_then(|end| end.checked_add(END.len()))
                .and_then(|end| after.split_at_checked(end))
                .ok_or_else(|| CertError::Pem("unterminated certificate".into()))?;
            let cert = x509_cert::Certificate::from_pem(block).map_err(|e| CertError::Pem(e.to_string()))?;
            let der = x509_cert::der::Encode::to_der(&cert).map_err(|e| CertError::Pem(e.to_string()))?;
            out.push(AmdCert::from_der(&der)?);
            if out.len() > MAX_CERTS {
                return Err(CertError::TooMany(out.len()));
            }
            rest = tail;
        }
        if out.is_empty() {
            return Err(CertError::Pem("no CERTIFICATE block".into()));
        }
        Ok(out)
    }

    /// Decode DER or PEM (PEM may hold several certificates).
    pub fn from_der_or_pem(bytes: &[u8]) -> Result<Vec<Self>, CertError> {
        if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            AmdCert::from_pem_all(bytes)
        } else {
            Ok(vec![AmdCert::from_der(bytes)?])
        }
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The decoded certificate.
    pub fn x509(&self) -> &x509_cert::Certificate {
        &self.cert
    }

    /// Subject, RFC 4514.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// Issuer, RFC 4514.
    pub fn issuer(&self) -> String {
        self.cert.tbs_certificate.issuer.to_string()
    }

    /// The subject's common name, if it has one.
    pub fn subject_cn(&self) -> Option<String> {
        cn_of(&self.cert.tbs_certificate.subject)
    }

    /// The issuer's common name, if it has one.
    pub fn issuer_cn(&self) -> Option<String> {
        cn_of(&self.cert.tbs_certificate.issuer)
    }

    /// A short name for messages: the CN, or the whole subject.
    pub fn name(&self) -> String {
        self.subject_cn().map_or_else(|| self.subject(), |cn| format!("CN={cn}"))
    }

    /// True when subject equals issuer (a root).
    pub fn is_self_issued(&self) -> bool {
        self.cert.tbs_certificate.subject == self.cert.tbs_certificate.issuer
    }

    /// True when `self` names `issuer` as its issuer.
    pub fn issued_by_name(&self, issuer: &AmdCert) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    /// The ECDSA P-384 key, if that is what the certificate holds.
    pub fn p384_key(&self) -> Option<VerifyingKey> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != OID_EC_PUBLIC_KEY {
            return None;
        }
        let curve = spki.algorithm.parameters.as_ref()?.decode_as::<ObjectIdentifier>().ok()?;
        if curve != OID_SECP384R1 {
            return None;
        }
        VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).ok()
    }

    /// The RSA key, if that is what the certificate holds.
    pub fn rsa_key(&self) -> Option<rsa::RsaPublicKey> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != OID_RSA_ENCRYPTION && spki.algorithm.oid != OID_RSASSA_PSS {
            return None;
        }
        rsa::RsaPublicKey::try_from(spki.owned_to_ref()).ok()
    }

    /// Check that `issuer`'s RSA key signed this certificate with RSASSA-PSS/SHA-384 (the only
    /// algorithm AMD uses for ARK, ASK, ASVK, VCEK and VLEK certificates).
    pub fn verify_signed_by(&self, issuer: &AmdCert) -> Result<(), String> {
        if self.cert.signature_algorithm.oid != OID_RSASSA_PSS {
            return Err(format!("signature algorithm {} is not RSASSA-PSS", self.cert.signature_algorithm.oid));
        }
        let key = issuer.rsa_key().ok_or("issuer has no RSA public key")?;
        let verifier = rsa::pss::VerifyingKey::<sha2::Sha384>::new(key);
        let sig =
            rsa::pss::Signature::try_from(self.cert.signature.raw_bytes()).map_err(|e| format!("malformed signature: {e}"))?;
        let tbs = self.der.get(self.tbs.clone()).ok_or("certificate bytes truncated")?;
        verifier.verify(tbs, &sig).map_err(|_| "RSASSA-PSS/SHA-384 signature does not verify".to_string())
    }

    /// notBefore and notAfter, as Unix seconds.
    pub fn validity_secs(&self) -> (u64, u64) {
        let v = &self.cert.tbs_certificate.validity;
        (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs())
    }

    /// True when `at` lies within the validity period (inclusive).
    pub fn valid_at(&self, at: SystemTime) -> bool {
        let (nb, na) = self.validity_secs();
        let t = unix_secs(at);
        nb <= t && t <= na
    }

    /// Decode the AMD extensions.
    pub fn amd_extensions(&self) -> Result<AmdExtensions, CertError> {
        let mut ext = AmdExtensions::default();
        let Some(list) = &self.cert.tbs_certificate.extensions else {
            return Ok(ext);
        };
        for e in list {
            let id = e.extn_id.to_string();
            let v = e.extn_value.as_bytes();
            let bad = || CertError::Extension { subject: self.subject(), oid: id.clone() };
            let spl = || u8::from_der(v).map_err(|_| bad());
            match id.as_str() {
                oid::PRODUCT_NAME => {
                    ext.product_name = Some(Ia5StringRef::from_der(v).map_err(|_| bad())?.to_string());
                }
                oid::BL_SPL => ext.bootloader = Some(spl()?),
                oid::TEE_SPL => ext.tee = Some(spl()?),
                oid::SNP_SPL => ext.snp = Some(spl()?),
                oid::UCODE_SPL => ext.microcode = Some(spl()?),
                oid::FMC_SPL => ext.fmc = Some(spl()?),
                // hwID is the raw CHIP_ID bytes, not DER-wrapped.
                oid::HWID => ext.hwid = Some(v.to_vec()),
                _ => {}
            }
        }
        Ok(ext)
    }
}

fn cn_of(name: &x509_cert::name::Name) -> Option<String> {
    name.0.iter().flat_map(|rdn| rdn.0.iter()).find(|atv| atv.oid == OID_CN).and_then(|atv| {
        atv.value
            .decode_as::<Utf8StringRef<'_>>()
            .map(|s| s.to_string())
            .or_else(|_| atv.value.decode_as::<PrintableStringRef<'_>>().map(|s| s.to_string()))
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARK_MILAN: &[u8] = include_bytes!("../../roots/milan/ark.pem");
    const ASK_MILAN: &[u8] = include_bytes!("../../roots/milan/ask.pem");

    #[test]
    fn pinned_milan_pair_verifies_and_tbs_is_exact() {
        let ark = AmdCert::from_pem_all(ARK_MILAN).unwrap_or_default();
        let ask = AmdCert::from_pem_all(ASK_MILAN).unwrap_or_default();
        let (Some(ark), Some(ask)) = (ark.first(), ask.first()) else { panic!("roots do not parse") };
        assert_eq!(ark.subject_cn().as_deref(), Some("ARK-Milan"));
        assert_eq!(ask.subject_cn().as_deref(), Some("SEV-Milan"));
        assert!(ark.is_self_issued() && !ask.is_self_issued() && ask.issued_by_name(ark));
        assert_eq!(ark.verify_signed_by(ark), Ok(()));
        assert_eq!(ask.verify_signed_by(ark), Ok(()));
        assert!(ask.verify_signed_by(ask).is_err());
        // The raw TBS is what DER re-encoding would give for a canonical certificate.
        let re = x509_cert::der::Encode::to_der(&ask.x509().tbs_certificate).unwrap_or_default();
        assert_eq!(ask.der().get(ask.tbs.clone()), Some(&re[..]));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(AmdCert::from_der(&[0x30, 0x03, 0x02, 0x01]), Err(CertError::Der(_))));
        assert!(matches!(AmdCert::from_der(&[]), Err(CertError::Der(_))));
        assert!(matches!(AmdCert::from_pem_all(b"hello"), Err(CertError::Pem(_))));
        assert!(matches!(AmdCert::from_pem_all(b"-----BEGIN CERTIFICATE-----\nAAAA\n"), Err(CertError::Pem(_))));
        assert!(matches!(AmdCert::from_pem_all(&[0xff, 0xfe]), Err(CertError::Pem(_))));
    }

    #[test]
    fn rfc3339_rendering() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
