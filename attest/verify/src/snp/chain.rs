//! Building and checking VCEK/VLEK -> ASK/ASVK -> ARK against the pinned roots.
//!
//! Trust: only [`crate::snp::roots`]. A supplied ASK/ASVK is usable only when a pinned ARK
//! signed it; a supplied ARK (or any self-issued certificate) is ignored.

use std::time::SystemTime;

use crate::claims::{SnpProduct, SnpSigner};
use crate::snp::SnpError;
use crate::snp::cert::{AmdCert, rfc3339, unix_secs};
use crate::snp::roots::{self, ProductRoots};

/// A chain that ends in a pinned ARK and is valid at the verification time.
#[derive(Clone, Debug)]
pub struct VerifiedChain {
    /// Product line of the pinned root.
    pub product: SnpProduct,
    /// VCEK (under an ASK) or VLEK (under an ASVK).
    pub signer: SnpSigner,
    /// The VCEK or VLEK.
    pub leaf: AmdCert,
    /// The ASK or ASVK that signed it.
    pub intermediate: AmdCert,
    /// True when the intermediate is the pinned ASK, false when it was supplied (and checked
    /// against the pinned ARK).
    pub intermediate_pinned: bool,
    /// The pinned ARK.
    pub root: AmdCert,
}

fn check_validity(cert: &AmdCert, at: SystemTime) -> Result<(), SnpError> {
    if cert.valid_at(at) {
        return Ok(());
    }
    let (nb, na) = cert.validity_secs();
    Err(SnpError::CertValidity {
        subject: cert.name(),
        at: rfc3339(unix_secs(at)),
        not_before: rfc3339(nb),
        not_after: rfc3339(na),
    })
}

fn signed_by(cert: &AmdCert, issuer: &AmdCert) -> Result<(), SnpError> {
    cert.verify_signed_by(issuer).map_err(|reason| SnpError::CertSignature {
        subject: cert.name(),
        issuer: issuer.name(),
        reason,
    })
}

fn try_candidate(
    leaf: &AmdCert,
    inter: &AmdCert,
    pinned: bool,
    roots: &ProductRoots,
    at: SystemTime,
) -> Result<VerifiedChain, SnpError> {
    if !pinned {
        signed_by(inter, &roots.ark)?;
    }
    signed_by(leaf, inter)?;
    let is_asvk = inter.subject_cn().is_some_and(|cn| cn.starts_with("SEV-VLEK"));
    let (signer, expected_cn) = if is_asvk { (SnpSigner::Vlek, "SEV-VLEK") } else { (SnpSigner::Vcek, "SEV-VCEK") };
    if leaf.subject_cn().as_deref() != Some(expected_cn) {
        return Err(SnpError::LeafKind { subject: leaf.name(), expected: expected_cn });
    }
    check_validity(&roots.ark, at)?;
    check_validity(inter, at)?;
    check_validity(leaf, at)?;
    Ok(VerifiedChain {
        product: roots.product,
        signer,
        leaf: leaf.clone(),
        intermediate: inter.clone(),
        intermediate_pinned: pinned,
        root: roots.ark.clone(),
    })
}

/// Verify `leaf` (a VCEK or VLEK) up to a pinned ARK. Intermediates are the pinned ASKs and
/// any non-self-issued certificate in `supplied` that a pinned ARK signed.
pub fn verify_leaf(leaf: &AmdCert, supplied: &[AmdCert], at: SystemTime) -> Result<VerifiedChain, SnpError> {
    if leaf.p384_key().is_none() {
        return Err(SnpError::Cert {
            index: 0,
            source: crate::snp::CertError::PublicKey { subject: leaf.name(), expected: "ECDSA P-384" },
        });
    }
    let pinned = roots::pinned()?;
    let mut candidates: Vec<(&AmdCert, bool, &ProductRoots)> = Vec::new();
    for r in pinned {
        if leaf.issued_by_name(&r.ask) {
            candidates.push((&r.ask, true, r));
        }
    }
    for c in supplied {
        if c.is_self_issued() || !leaf.issued_by_name(c) || c.rsa_key().is_none() {
            continue;
        }
        if pinned.iter().any(|r| r.ask == *c) {
            continue;
        }
        if let Some(r) = pinned.iter().find(|r| c.issued_by_name(&r.ark)) {
            candidates.push((c, false, r));
        }
    }
    let mut first_err = None;
    for (inter, is_pinned, r) in candidates {
        match try_candidate(leaf, inter, is_pinned, r, at) {
            Ok(chain) => return Ok(chain),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| SnpError::UnknownIssuer { subject: leaf.name(), issuer: leaf.issuer() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_pinned_ask_is_not_a_leaf() {
        let r = roots::for_product(SnpProduct::Genoa).unwrap().unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert!(matches!(verify_leaf(&r.ask, &[], at), Err(SnpError::Cert { .. })));
    }
}
