//! NVIDIA Reference Integrity Manifests (TCG RIM / ISO SWID tags, XML): parse the reference
//! measurements and verify the manifest's enveloped XML-DSig signature (ECDSA P-384 over
//! Canonical XML 1.1) and its embedded signing chain up to the pinned RIM root.
//!
//! Trusts only the root it is given. Measurements are read from the same parsed tree whose
//! canonical form the signature's digest covers (Reference URI="" with the
//! enveloped-signature transform), and exactly one signature, a child of the root element,
//! is allowed, so signature-wrapping tricks have nowhere to hide data.

use std::time::SystemTime;

use p384::ecdsa::{Signature, signature::Verifier};
use serde::Serialize;
use sha2::{Digest, Sha384};
use x509_cert::Certificate;

use super::x509::{self, ChainError, ValidChain};
use super::xml::{self, Element, NsScope, XmlError};

/// ISO/IEC 19770-2:2015 SWID namespace.
pub const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
/// W3C XML-DSig namespace.
pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// Namespace of the `HashN` attributes in NVIDIA's RIMs.
pub const HASH_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";

const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const C14N10: &str = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const SHA384_URI: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
/// Most alternatives one reference measurement may list.
const MAX_ALTERNATIVES: usize = 16;

/// Why a RIM was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RimError {
    /// Not acceptable XML.
    #[error("RIM XML: {0}")]
    Xml(#[from] XmlError),
    /// A required element or attribute is missing or malformed.
    #[error("RIM is malformed: {0}")]
    Malformed(String),
    /// The XML-DSig structure is not the one profile this verifier accepts.
    #[error("RIM signature uses an unsupported form: {0}")]
    UnsupportedSignature(String),
    /// The canonical document does not hash to the signed DigestValue.
    #[error("RIM digest mismatch: the signed content was changed")]
    DigestMismatch,
    /// SignatureValue does not verify over the canonical SignedInfo.
    #[error("RIM signature does not verify with the signing certificate's key")]
    BadSignature,
    /// The embedded signing chain does not validate to the pinned RIM root.
    #[error("RIM signing chain: {0}")]
    Chain(#[from] ChainError),
    /// Two reference measurements with the same index.
    #[error("RIM lists measurement index {0} twice")]
    DuplicateIndex(u16),
}

/// One reference ("golden") measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoldenMeasurement {
    /// RIM index (0-based; the report's SPDM block index is `index + 1`).
    pub index: u16,
    /// Resource name, e.g. `HashedMeasurement_3_FSP`.
    pub name: String,
    /// Whether the verifier must compare it.
    pub active: bool,
    /// Size of the measurement in bytes.
    pub size: usize,
    /// Acceptable values (any one matches).
    #[serde(serialize_with = "hex_list")]
    pub alternatives: Vec<Vec<u8>>,
}

fn hex_list<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

/// A parsed RIM: identity, reference measurements, and the raw signature material.
#[derive(Debug, Clone)]
pub struct Rim {
    /// `SoftwareIdentity/@tagId`.
    pub tag_id: String,
    /// `Meta/@colloquialVersion`: the driver or VBIOS version it describes.
    pub colloquial_version: String,
    /// `Meta/@product` (e.g. `GH100`) if present.
    pub product: Option<String>,
    /// Reference measurements.
    pub measurements: Vec<GoldenMeasurement>,
    root: Element,
}

/// A RIM whose signature and chain were checked.
#[derive(Debug, Clone)]
pub struct VerifiedRim {
    /// The manifest.
    pub rim: Rim,
    /// Its signing chain (leaf first, pinned root last).
    pub chain: ValidChain,
}

impl Rim {
    /// Parse a SWID-tag RIM (no verification).
    pub fn parse(bytes: &[u8]) -> Result<Rim, RimError> {
        let root = xml::parse(bytes)?;
        if !root.is(SWID_NS, "SoftwareIdentity") {
            return Err(RimError::Malformed(format!("root element is {}, not SoftwareIdentity", root.local)));
        }
        let tag_id = root.attr("tagId").unwrap_or_default().to_string();
        let meta = single(&root, SWID_NS, "Meta")?;
        let colloquial_version = meta
            .attr("colloquialVersion")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RimError::Malformed("Meta has no colloquialVersion".into()))?
            .to_string();
        let product = meta.attr("product").map(str::to_string);
        let payload = single(&root, SWID_NS, "Payload")?;
        let mut measurements: Vec<GoldenMeasurement> = Vec::new();
        for r in payload.elements() {
            if !r.is(SWID_NS, "Resource") {
                return Err(RimError::Malformed(format!("unexpected element {} in Payload", r.local)));
            }
            let m = parse_resource(r)?;
            if measurements.iter().any(|x| x.index == m.index) {
                return Err(RimError::DuplicateIndex(m.index));
            }
            measurements.push(m);
        }
        if measurements.is_empty() {
            return Err(RimError::Malformed("no reference measurements in Payload".into()));
        }
        Ok(Rim { tag_id, colloquial_version, product, measurements, root })
    }

    /// Verify the enveloped XML-DSig signature and the signing chain to `root` at `now`.
    pub fn verify(self, root: &Certificate, now: SystemTime) -> Result<VerifiedRim, RimError> {
        let sig = self.signature_element()?;
        let certs = embedded_certs(sig)?;
        // nvtrust drops the RIM's own copy of the root and uses its pinned one; verify_chain
        // drops a byte-identical copy and refuses a different top.
        let chain = x509::verify_chain(&certs, root, now, 2)?;
        let key = chain.leaf_key()?;
        self.verify_xmldsig(sig, &key)?;
        Ok(VerifiedRim { rim: self, chain })
    }

    /// Active reference measurements.
    pub fn active(&self) -> impl Iterator<Item = &GoldenMeasurement> {
        self.measurements.iter().filter(|m| m.active)
    }

    fn signature_element(&self) -> Result<&Element, RimError> {
        let all: Vec<&Element> = self.root.descendants().into_iter().filter(|e| e.is(DSIG_NS, "Signature")).collect();
        let direct: Vec<&Element> = self.root.children_named(DSIG_NS, "Signature").collect();
        match (all.len(), direct.as_slice()) {
            (1, [one]) => Ok(one),
            (0, _) => Err(RimError::Malformed("no ds:Signature element".into())),
            _ => Err(RimError::UnsupportedSignature("exactly one ds:Signature, a child of SoftwareIdentity, is required".into())),
        }
    }

    fn verify_xmldsig(&self, sig: &Element, key: &p384::ecdsa::VerifyingKey) -> Result<(), RimError> {
        let unsupported = |m: String| RimError::UnsupportedSignature(m);
        let signed_info = first_child(sig, "SignedInfo")?;
        let c14n = single(signed_info, DSIG_NS, "CanonicalizationMethod")?;
        let c14n_alg = c14n.attr("Algorithm").unwrap_or_default();
        if c14n_alg != C14N11 && c14n_alg != C14N10 {
            return Err(unsupported(format!("canonicalization {c14n_alg}")));
        }
        let method = single(signed_info, DSIG_NS, "SignatureMethod")?;
        let sig_alg = method.attr("Algorithm").unwrap_or_default();
        if sig_alg != ECDSA_SHA384 {
            return Err(unsupported(format!("signature method {sig_alg}")));
        }
        let reference = single(signed_info, DSIG_NS, "Reference")?;
        if reference.attr("URI") != Some("") {
            return Err(unsupported(format!("reference URI {:?} (only \"\" is accepted)", reference.attr("URI"))));
        }
        let transforms = single(reference, DSIG_NS, "Transforms")?;
        let algs: Vec<&str> =
            transforms.children_named(DSIG_NS, "Transform").map(|t| t.attr("Algorithm").unwrap_or_default()).collect();
        match algs.as_slice() {
            [ENVELOPED] | [ENVELOPED, C14N11] | [ENVELOPED, C14N10] => {}
            other => return Err(unsupported(format!("transforms {other:?}"))),
        }
        if transforms.elements().count() != algs.len() {
            return Err(unsupported("unknown element in Transforms".into()));
        }
        let digest_method = single(reference, DSIG_NS, "DigestMethod")?;
        let dalg = digest_method.attr("Algorithm").unwrap_or_default();
        if dalg != SHA384_URI {
            return Err(unsupported(format!("digest method {dalg}")));
        }
        let digest_value = x509::decode_base64(&single(reference, DSIG_NS, "DigestValue")?.text())
            .map_err(|e| RimError::Malformed(format!("DigestValue: {e}")))?;

        // Digest over the whole document minus the Signature element.
        let doc = xml::canonicalize(&self.root, &NsScope::new(), Some(sig));
        let digest = Sha384::digest(doc.as_bytes());
        if digest[..] != digest_value[..] {
            return Err(RimError::DigestMismatch);
        }
        // Signature over canonical SignedInfo, with the namespaces it inherits.
        let scope = xml::scope_of_parent(&self.root, signed_info)
            .ok_or_else(|| RimError::Malformed("SignedInfo not found in tree".into()))?;
        let si = xml::canonicalize(signed_info, &scope, None);
        let sig_bytes = x509::decode_base64(&first_child(sig, "SignatureValue")?.text())
            .map_err(|e| RimError::Malformed(format!("SignatureValue: {e}")))?;
        let signature = Signature::from_slice(&sig_bytes).map_err(|_| RimError::BadSignature)?;
        key.verify(si.as_bytes(), &signature).map_err(|_| RimError::BadSignature)
    }
}

fn single<'a>(parent: &'a Element, ns: &'a str, local: &'a str) -> Result<&'a Element, RimError> {
    let mut it = parent.children_named(ns, local);
    match (it.next(), it.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(RimError::Malformed(format!("{} has no {local}", parent.local))),
        (Some(_), Some(_)) => Err(RimError::Malformed(format!("{} has more than one {local}", parent.local))),
    }
}

fn first_child<'a>(sig: &'a Element, local: &'a str) -> Result<&'a Element, RimError> {
    single(sig, DSIG_NS, local)
}

fn embedded_certs(sig: &Element) -> Result<Vec<Vec<u8>>, RimError> {
    let key_info = single(sig, DSIG_NS, "KeyInfo")?;
    let data = single(key_info, DSIG_NS, "X509Data")?;
    let certs = data
        .children_named(DSIG_NS, "X509Certificate")
        .enumerate()
        .map(|(i, c)| x509::decode_base64(&c.text()).map_err(|e| RimError::Malformed(format!("X509Certificate {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(RimError::Malformed("no X509Certificate in KeyInfo".into()));
    }
    Ok(certs)
}

fn parse_resource(r: &Element) -> Result<GoldenMeasurement, RimError> {
    let bad = |what: &str| RimError::Malformed(format!("Resource {}: {what}", r.attr("name").unwrap_or("?")));
    let index: u16 = r.attr("index").and_then(|v| v.parse().ok()).ok_or_else(|| bad("bad index"))?;
    if index > 254 {
        return Err(bad("index above 254"));
    }
    let active = match r.attr("active") {
        Some("True") | Some("true") => true,
        Some("False") | Some("false") => false,
        _ => return Err(bad("bad active flag")),
    };
    let count: usize = r.attr("alternatives").and_then(|v| v.parse().ok()).ok_or_else(|| bad("bad alternatives"))?;
    if count == 0 || count > MAX_ALTERNATIVES {
        return Err(bad("alternatives out of range"));
    }
    let size: usize = r.attr("size").and_then(|v| v.parse().ok()).ok_or_else(|| bad("bad size"))?;
    let mut alternatives = Vec::with_capacity(count);
    for i in 0..count {
        let v = r.attr_ns(HASH_NS, &format!("Hash{i}")).ok_or_else(|| bad("missing HashN attribute"))?;
        let bytes = hex::decode(v).map_err(|_| bad("HashN is not hex"))?;
        if bytes.len() != size {
            return Err(bad("HashN length differs from size"));
        }
        alternatives.push(bytes);
    }
    Ok(GoldenMeasurement { index, name: r.attr("name").unwrap_or_default().to_string(), active, size, alternatives })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" xmlns:h="http://www.w3.org/2001/04/xmlenc#sha384" tagId="t"><Meta colloquialVersion="1.0"/><Payload><Resource type="Measurement" index="0" active="True" alternatives="2" h:Hash0="00" h:Hash1="01" name="m0" size="1"/></Payload></SoftwareIdentity>"#;

    #[test]
    fn parses_resources() {
        let rim = Rim::parse(MINI.as_bytes()).unwrap();
        assert_eq!(rim.colloquial_version, "1.0");
        assert_eq!(rim.measurements[0].alternatives, vec![vec![0], vec![1]]);
        assert!(matches!(rim.signature_element(), Err(RimError::Malformed(_))));
    }

    #[test]
    fn rejects_bad_resources() {
        for (from, to) in [
            ("index=\"0\"", "index=\"255\""),
            ("alternatives=\"2\"", "alternatives=\"3\""),
            ("size=\"1\"", "size=\"2\""),
            ("active=\"True\"", "active=\"maybe\""),
            ("h:Hash1=\"01\"", "h:Hash1=\"zz\""),
        ] {
            let doc = MINI.replace(from, to);
            assert!(matches!(Rim::parse(doc.as_bytes()), Err(RimError::Malformed(_))), "{to}");
        }
        let dup = MINI
            .replace("</Payload>", r#"<Resource index="0" active="False" alternatives="1" h:Hash0="00" size="1"/></Payload>"#);
        assert_eq!(Rim::parse(dup.as_bytes()).err(), Some(RimError::DuplicateIndex(0)));
    }
}
