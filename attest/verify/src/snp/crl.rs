//! AMD's certificate revocation lists for the ASK and ASVK (pub. 57230, KDS `GET
//! /vcek/v1/{product}/crl` and `/vlek/v1/{product}/crl`): X.509 CRLs signed by the product's
//! ARK with RSASSA-PSS/SHA-384. Supplied offline (`[snp] amd_crls`); never fetched here.
//!
//! A CRL is accepted for a chain only when its issuer is the chain's pinned ARK, the ARK's
//! key verifies its signature over the *original* TBS bytes, and the verification time lies
//! within thisUpdate..nextUpdate. The chain is then refused if the CRL lists the serial of
//! its ASK/ASVK.
//!
//! Trust: the CRL bytes are untrusted; only the pinned ARK's signature makes them count.
//! Parsing is total: any input gives a CRL or a typed [`SnpError`].

use std::ops::Range;
use std::time::SystemTime;

use rsa::signature::Verifier;
use x509_cert::crl::CertificateList;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Reader, SliceReader};

use crate::snp::SnpError;
use crate::snp::cert::{AmdCert, rfc3339, unix_secs};
use crate::snp::chain::VerifiedChain;

const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Largest CRL accepted (AMD's are a few KiB).
pub const MAX_CRL_LEN: usize = 1 << 20;

/// A decoded CRL with the bytes it was decoded from.
#[derive(Clone, Debug)]
pub struct AmdCrl {
    der: Vec<u8>,
    tbs: Range<usize>,
    crl: CertificateList,
}

/// What a successful check established, for the verification table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlStatus {
    /// The CRL issuer's common name (the ARK).
    pub issuer: String,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339.
    pub next_update: String,
    /// Number of revoked entries.
    pub entries: usize,
}

fn tbs_range(der: &[u8]) -> Result<Range<usize>, x509_cert::der::Error> {
    let mut r = SliceReader::new(der)?;
    let _outer = x509_cert::der::Header::decode(&mut r)?;
    let start = usize::try_from(r.position())?;
    let tbs = r.tlv_bytes()?;
    Ok(start..start.saturating_add(tbs.len()))
}

impl AmdCrl {
    /// Decode a DER or PEM (`X509 CRL`) CRL.
    pub fn from_der_or_pem(bytes: &[u8]) -> Result<Self, SnpError> {
        if bytes.len() > MAX_CRL_LEN {
            return Err(SnpError::CrlDecode(format!("{} bytes, more than the limit of {MAX_CRL_LEN}", bytes.len())));
        }
        let der = if bytes.starts_with(b"-----BEGIN") {
            let p = pem::parse(bytes).map_err(|e| SnpError::CrlDecode(format!("PEM: {e}")))?;
            if p.tag() != "X509 CRL" {
                return Err(SnpError::CrlDecode(format!("PEM block is {}, not X509 CRL", p.tag())));
            }
            p.into_contents()
        } else {
            bytes.to_vec()
        };
        let crl = CertificateList::from_der(&der).map_err(|e| SnpError::CrlDecode(e.to_string()))?;
        let tbs = tbs_range(&der).map_err(|e| SnpError::CrlDecode(e.to_string()))?;
        Ok(AmdCrl { der, tbs, crl })
    }

    /// True when this CRL names `issuer` as its issuer.
    pub fn issued_by_name(&self, issuer: &AmdCert) -> bool {
        self.crl.tbs_cert_list.issuer == issuer.x509().tbs_certificate.subject
    }

    /// Check this CRL for `chain`: signed by the chain's pinned ARK, current at `at`, and not
    /// listing the chain's ASK/ASVK.
    pub fn check(&self, chain: &VerifiedChain, at: SystemTime) -> Result<CrlStatus, SnpError> {
        let key = chain
            .root
            .rsa_key()
            .ok_or_else(|| SnpError::CrlSignature { issuer: chain.root.name(), reason: "the ARK has no RSA key".into() })?;
        self.check_with(&chain.root, &key, &chain.intermediate, at)
    }

    /// [`AmdCrl::check`] with the issuer's name and key given explicitly (production passes
    /// the pinned ARK; tests a synthetic CA, to reach the validity and revocation branches).
    fn check_with(
        &self,
        issuer: &AmdCert,
        key: &rsa::RsaPublicKey,
        intermediate: &AmdCert,
        at: SystemTime,
    ) -> Result<CrlStatus, SnpError> {
        let tbs = &self.crl.tbs_cert_list;
        if !self.issued_by_name(issuer) {
            return Err(SnpError::CrlIssuer { issuer: tbs.issuer.to_string(), expected: issuer.subject() });
        }
        let sig_err = |reason: String| SnpError::CrlSignature { issuer: issuer.name(), reason };
        if self.crl.signature_algorithm.oid != OID_RSASSA_PSS || tbs.signature.oid != OID_RSASSA_PSS {
            return Err(sig_err(format!("signature algorithm {} is not RSASSA-PSS", self.crl.signature_algorithm.oid)));
        }
        let sig = rsa::pss::Signature::try_from(self.crl.signature.raw_bytes())
            .map_err(|e| sig_err(format!("malformed signature: {e}")))?;
        let signed = self.der.get(self.tbs.clone()).ok_or_else(|| sig_err("CRL bytes truncated".into()))?;
        rsa::pss::VerifyingKey::<sha2::Sha384>::new(key.clone())
            .verify(signed, &sig)
            .map_err(|_| sig_err("RSASSA-PSS/SHA-384 signature does not verify".into()))?;
        let this_update = tbs.this_update.to_unix_duration().as_secs();
        let next_update = tbs.next_update.map(|t| t.to_unix_duration().as_secs());
        let now = unix_secs(at);
        let Some(next) = next_update else {
            return Err(SnpError::CrlValidity {
                at: rfc3339(now),
                this_update: rfc3339(this_update),
                next_update: "(none: the CRL gives no nextUpdate)".into(),
            });
        };
        if now < this_update || now > next {
            return Err(SnpError::CrlValidity {
                at: rfc3339(now),
                this_update: rfc3339(this_update),
                next_update: rfc3339(next),
            });
        }
        let serial = &intermediate.x509().tbs_certificate.serial_number;
        let revoked = tbs.revoked_certificates.as_deref().unwrap_or(&[]);
        if let Some(entry) = revoked.iter().find(|r| &r.serial_number == serial) {
            return Err(SnpError::Revoked {
                subject: intermediate.name(),
                serial: hex::encode(serial.as_bytes()),
                date: rfc3339(entry.revocation_date.to_unix_duration().as_secs()),
                issuer: issuer.name(),
            });
        }
        Ok(CrlStatus {
            issuer: issuer.name(),
            this_update: rfc3339(this_update),
            next_update: rfc3339(next),
            entries: revoked.len(),
        })
    }
}

/// Check `chain` against the CRLs supplied (each DER or PEM): the one issued by the chain's
/// ARK must exist and pass [`AmdCrl::check`]. `crls` pairs a name for messages with bytes.
pub fn check_chain(chain: &VerifiedChain, crls: &[(String, Vec<u8>)], at: SystemTime) -> Result<CrlStatus, SnpError> {
    let mut first_err = None;
    for (name, bytes) in crls {
        let crl = match AmdCrl::from_der_or_pem(bytes) {
            Ok(c) => c,
            Err(SnpError::CrlDecode(e)) => {
                first_err.get_or_insert(SnpError::CrlDecode(format!("{name}: {e}")));
                continue;
            }
            Err(e) => return Err(e),
        };
        if crl.issued_by_name(&chain.root) {
            return crl.check(chain, at);
        }
    }
    Err(first_err.unwrap_or_else(|| SnpError::CrlMissing { issuer: chain.root.name(), supplied: crls.len() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::SnpProduct;
    use crate::snp::roots;
    use rsa::signature::RandomizedSigner;
    use std::time::{Duration, UNIX_EPOCH};
    use x509_cert::crl::{RevokedCert, TbsCertList};
    use x509_cert::der::Encode;
    use x509_cert::der::asn1::BitString;
    use x509_cert::time::Time;

    const JAN_2026: u64 = 1_767_225_600;
    const DAY: u64 = 86_400;

    fn time(secs: u64) -> Time {
        Time::UtcTime(x509_cert::der::asn1::UtcTime::from_unix_duration(Duration::from_secs(secs)).unwrap())
    }

    /// A CRL issued in the name of Milan's ARK, signed with `key`, listing `serials`.
    fn synthetic_crl(key: &rsa::RsaPrivateKey, serials: &[x509_cert::serial_number::SerialNumber], next: u64) -> Vec<u8> {
        let ark = &roots::for_product(SnpProduct::Milan).unwrap().unwrap().ark;
        let alg = ark.x509().signature_algorithm.clone();
        let tbs = TbsCertList {
            version: x509_cert::Version::V2,
            signature: alg.clone(),
            issuer: ark.x509().tbs_certificate.subject.clone(),
            this_update: time(JAN_2026 - DAY),
            next_update: Some(time(next)),
            revoked_certificates: Some(
                serials
                    .iter()
                    .map(|s| RevokedCert {
                        serial_number: s.clone(),
                        revocation_date: time(JAN_2026 - DAY),
                        crl_entry_extensions: None,
                    })
                    .collect(),
            ),
            crl_extensions: None,
        };
        let signer = rsa::pss::SigningKey::<sha2::Sha384>::new(key.clone());
        let sig = signer.sign_with_rng(&mut rand_core_06::OsRng, &tbs.to_der().unwrap());
        let sig: Box<[u8]> = sig.into();
        CertificateList { tbs_cert_list: tbs, signature_algorithm: alg, signature: BitString::from_bytes(&sig).unwrap() }
            .to_der()
            .unwrap()
    }

    fn milan() -> (&'static AmdCert, &'static AmdCert) {
        let r = roots::for_product(SnpProduct::Milan).unwrap().unwrap();
        (&r.ark, &r.ask)
    }

    fn test_key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::new(&mut rand_core_06::OsRng, 1024).unwrap()
    }

    /// Synthetic: signed by a test key in ARK-Milan's name. Checked as production does
    /// (against the pinned ARK) it is refused as not AMD's, whatever it lists.
    #[test]
    fn a_crl_not_signed_by_the_ark_is_refused() {
        let (ark, ask) = milan();
        let crl = AmdCrl::from_der_or_pem(&synthetic_crl(&test_key(), &[], JAN_2026 + DAY)).unwrap();
        let e = crl.check_with(ark, &ark.rsa_key().unwrap(), ask, UNIX_EPOCH + Duration::from_secs(JAN_2026)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "AMD CRL is not signed by CN=ARK-Milan: RSASSA-PSS/SHA-384 signature does not verify: it is not AMD's"
        );
    }

    /// Synthetic CA key standing in for the ARK (same code path after the key is chosen): a
    /// current CRL passes, one listing the ASK's serial refuses the chain, an expired one is
    /// refused with its dates, and a tampered one fails the signature.
    #[test]
    fn revoked_expired_and_tampered_crls_are_refused() {
        let (ark, ask) = milan();
        let key = test_key();
        let public = key.to_public_key();
        let at = UNIX_EPOCH + Duration::from_secs(JAN_2026);
        let good = AmdCrl::from_der_or_pem(&synthetic_crl(&key, &[], JAN_2026 + 7 * DAY)).unwrap();
        let st = good.check_with(ark, &public, ask, at).unwrap();
        assert_eq!((st.entries, st.next_update.as_str()), (0, "2026-01-08T00:00:00Z"));

        let serial = ask.x509().tbs_certificate.serial_number.clone();
        let listed = AmdCrl::from_der_or_pem(&synthetic_crl(&key, &[serial], JAN_2026 + 7 * DAY)).unwrap();
        let e = listed.check_with(ark, &public, ask, at).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CN=SEV-Milan (serial 010001) is revoked since 2025-12-31T00:00:00Z by the CRL of CN=ARK-Milan"
        );
        assert_eq!(e.stage(), "revocation");

        let e = good.check_with(ark, &public, ask, at + Duration::from_secs(8 * DAY)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "AMD CRL is not current at 2026-01-09T00:00:00Z: issued 2025-12-31T00:00:00Z, next update due 2026-01-08T00:00:00Z"
        );

        let mut bytes = synthetic_crl(&key, &[], JAN_2026 + 7 * DAY);
        // Flip a bit inside the issuer name (inside the signed TBS, still valid DER).
        let pos = bytes.windows(9).position(|w| w == b"ARK-Milan").unwrap();
        bytes[pos + 4] ^= 0x20;
        let tampered = AmdCrl::from_der_or_pem(&bytes).unwrap();
        assert!(matches!(tampered.check_with(ark, &public, ask, at), Err(SnpError::CrlIssuer { .. })));
        // Move nextUpdate a year on (inside the signed TBS): the signature no longer verifies.
        let mut bytes = synthetic_crl(&key, &[], JAN_2026 + 7 * DAY);
        let pos = bytes.windows(13).position(|w| w == b"260108000000Z").unwrap();
        bytes[pos + 1] = b'7';
        let e = AmdCrl::from_der_or_pem(&bytes).unwrap().check_with(ark, &public, ask, at).unwrap_err();
        assert!(matches!(e, SnpError::CrlSignature { .. }), "{e}");
    }

    #[test]
    fn garbage_and_missing_crls_are_typed_errors() {
        for bad in [&b""[..], b"\x30\x03\x02\x01", b"-----BEGIN X509 CRL-----\nAAAA\n", &[0xff; 16]] {
            assert!(matches!(AmdCrl::from_der_or_pem(bad), Err(SnpError::CrlDecode(_))));
        }
        assert!(matches!(AmdCrl::from_der_or_pem(&vec![0x30; MAX_CRL_LEN + 1]), Err(SnpError::CrlDecode(_))));
    }
}
