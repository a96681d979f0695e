//! The AMD roots this crate trusts: ARK and ASK of Milan, Genoa and Turin, compiled in from
//! `attest/roots/` (copies of AMD's published certificates, as shipped by virtee/sev).
//! A test checks each file's SHA-256 against the provenance table in attest/testdata/SOURCES.md.
//!
//! Trust: these bytes are the trust anchor. Nothing supplied with evidence can replace them.

use std::sync::OnceLock;

use crate::claims::SnpProduct;
use crate::snp::SnpError;
use crate::snp::cert::AmdCert;

/// (product, file, PEM bytes) of every pinned root.
pub const PINNED_PEMS: [(SnpProduct, &str, &[u8]); 6] = [
    (SnpProduct::Milan, "milan/ark.pem", include_bytes!("../../roots/milan/ark.pem")),
    (SnpProduct::Milan, "milan/ask.pem", include_bytes!("../../roots/milan/ask.pem")),
    (SnpProduct::Genoa, "genoa/ark.pem", include_bytes!("../../roots/genoa/ark.pem")),
    (SnpProduct::Genoa, "genoa/ask.pem", include_bytes!("../../roots/genoa/ask.pem")),
    (SnpProduct::Turin, "turin/ark.pem", include_bytes!("../../roots/turin/ark.pem")),
    (SnpProduct::Turin, "turin/ask.pem", include_bytes!("../../roots/turin/ask.pem")),
];

/// The pinned ARK and ASK of one product line.
#[derive(Clone, Debug)]
pub struct ProductRoots {
    /// Product line.
    pub product: SnpProduct,
    /// AMD Root Key (self-signed RSA-4096).
    pub ark: AmdCert,
    /// AMD SEV Signing Key, signed by the ARK; signs VCEKs.
    pub ask: AmdCert,
}

fn parse_one(file: &'static str, pem: &[u8]) -> Result<AmdCert, SnpError> {
    AmdCert::from_pem_all(pem).ok().and_then(|v| v.into_iter().next()).ok_or(SnpError::PinnedRoot(file))
}

fn load() -> Result<Vec<ProductRoots>, SnpError> {
    PINNED_PEMS
        .chunks_exact(2)
        .map(|pair| match pair {
            [(product, ark_file, ark), (_, ask_file, ask)] => {
                Ok(ProductRoots { product: *product, ark: parse_one(ark_file, ark)?, ask: parse_one(ask_file, ask)? })
            }
            _ => Err(SnpError::PinnedRoot("roots table")),
        })
        .collect()
}

/// The pinned roots, decoded once.
pub fn pinned() -> Result<&'static [ProductRoots], SnpError> {
    static ROOTS: OnceLock<Result<Vec<ProductRoots>, SnpError>> = OnceLock::new();
    match ROOTS.get_or_init(load) {
        Ok(v) => Ok(v.as_slice()),
        Err(e) => Err(e.clone()),
    }
}

/// The pinned roots of one product.
pub fn for_product(product: SnpProduct) -> Result<Option<&'static ProductRoots>, SnpError> {
    Ok(pinned()?.iter().find(|r| r.product == product))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// SHA-256 of each pinned file, from attest/testdata/SOURCES.md (virtee/sev at 9cf2adbf).
    const EXPECTED_SHA256: [(&str, &str); 6] = [
        ("milan/ark.pem", "8c109952166431ffad8cb9a3d54f3d20ffbbb58164f0d54be3457bf0ece9e0d8"),
        ("milan/ask.pem", "8da3a65af1cb7cb90a21fac78431a2431a9ee7811f48c36569c53fb80ad31fee"),
        ("genoa/ark.pem", "96bff94e97e2b7ddf4bf3b9b7f780f94a46b8c51f52abfdcc283be7df36ce405"),
        ("genoa/ask.pem", "22fea250e0390b22008c9a415f4bd915ae8cef4a240f9d21702e84eb250b9186"),
        ("turin/ark.pem", "b69c981fe0216c3d8e682eb6f480c6879497103071e52b5e603178638db8f68d"),
        ("turin/ask.pem", "c72a54fb75a0a06b0c8dbf68b04893d0891751b94ce4da8231d11fd18a0da944"),
    ];

    #[test]
    fn pinned_files_have_the_recorded_sha256() {
        for ((_, file, pem), (exp_file, exp)) in PINNED_PEMS.iter().zip(EXPECTED_SHA256) {
            assert_eq!(*file, exp_file);
            assert_eq!(hex::encode(Sha256::digest(pem)), exp, "{file}");
        }
    }

    #[test]
    fn ark_milan_der_matches_readme() {
        let r = for_product(SnpProduct::Milan).unwrap().unwrap();
        assert_eq!(hex::encode(Sha256::digest(r.ark.der())), "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd");
    }

    #[test]
    fn each_ark_is_self_signed_and_signs_its_ask() {
        let roots = pinned().unwrap();
        assert_eq!(roots.len(), 3);
        for r in roots {
            let name = format!("{:?}", r.product);
            assert_eq!(r.ark.subject_cn(), Some(format!("ARK-{name}")));
            assert_eq!(r.ask.subject_cn(), Some(format!("SEV-{name}")));
            assert_eq!(r.ark.verify_signed_by(&r.ark), Ok(()), "{name}");
            assert_eq!(r.ask.verify_signed_by(&r.ark), Ok(()), "{name}");
            assert!(r.ask.issued_by_name(&r.ark));
        }
        // Roots of different products do not cross-sign.
        assert!(roots[1].ask.verify_signed_by(&roots[0].ark).is_err());
    }
}
