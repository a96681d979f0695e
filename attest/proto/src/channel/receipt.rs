//! Per-response receipts: the runtime's signed statement "this runtime state, launched with
//! this measurement and serving this sealed model, answered this request with this
//! response". The signing key is an Ed25519 key the runtime generates at boot and measures
//! into its event log (`ReceiptKey` event), so a receipt is only as good as the evidence
//! whose verified log carries that key — which is what `attest verify-receipt` checks.
//!
//! ```text
//! request_sha384  = SHA-384("chrysalis/receipt/v2/request"  || request body plaintext)
//! response_sha384 = SHA-384("chrysalis/receipt/v2/response" || response body plaintext)
//! signature       = Ed25519(sk_receipt, "chrysalis/receipt/v2" || postcard(ReceiptBody))
//! Receipt         = postcard { body: ReceiptBody, signature: [u8; 64] }
//! ```
//!
//! For a stream, the response plaintext is the exact event-stream bytes the runtime wrote.
//! Version 2 added the request id (from inside the sealed request), so a receipt names one
//! exchange; version 1 receipts are refused with their version named.
//!
//! Trust: receipt bytes are untrusted; decoding is total, and nothing in a receipt means
//! anything until its signature verifies under a `ReceiptKey` from verified evidence.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use crate::eventlog::{DIGEST_LEN, Digest384, Event, EventKind};
use crate::evidence::PlatformEvidence;

/// Version of the receipt format.
pub const RECEIPT_VERSION: u16 = 2;
/// Prefix of the signed bytes.
pub const RECEIPT_DOMAIN: &[u8] = b"chrysalis/receipt/v2";
/// Domain of the request hash.
pub const REQUEST_HASH_DOMAIN: &[u8] = b"chrysalis/receipt/v2/request";
/// Domain of the response hash.
pub const RESPONSE_HASH_DOMAIN: &[u8] = b"chrysalis/receipt/v2/response";
/// Largest encoded receipt accepted.
pub const MAX_RECEIPT_LEN: usize = 4096;
/// Ed25519 public key length.
pub const RECEIPT_KEY_LEN: usize = 32;
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;

/// Why a receipt was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Encoded receipt above [`MAX_RECEIPT_LEN`].
    #[error("receipt too large: {0} bytes, limit {MAX_RECEIPT_LEN}")]
    TooLarge(usize),
    /// Not valid postcard (includes truncation) or not base64.
    #[error("receipt is malformed: {0}")]
    Malformed(String),
    /// Bytes after the receipt.
    #[error("receipt has {0} trailing bytes")]
    Trailing(usize),
    /// Decodes, but not in the canonical encoding.
    #[error("receipt is not canonically encoded")]
    NonCanonical,
    /// Unknown version.
    #[error("receipt version {0} is not supported (expected {RECEIPT_VERSION})")]
    Version(u16),
    /// The signature does not verify under the given key.
    #[error("receipt signature does not verify under receipt key {0}")]
    Signature(String),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
}

/// What the runtime signs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReceiptBody {
    /// [`RECEIPT_VERSION`].
    pub version: u16,
    /// `method SP path` of the request.
    pub target: String,
    /// The request's id, from inside the sealed request (`channel::crypto::RequestMeta`).
    pub request_id: crate::channel::replay::RequestId,
    /// [`request_hash`] of the request body.
    #[serde(with = "BigArray")]
    pub request_sha384: Digest384,
    /// HTTP status of the response.
    pub status: u16,
    /// [`Hasher::response`] of the response body.
    #[serde(with = "BigArray")]
    pub response_sha384: Digest384,
    /// The served model's id ("" when no model is loaded).
    pub model: String,
    /// Digest of the sealed bundle header the runtime measured (`BundleHeader` event, 48 B).
    pub bundle_header_sha384: Option<Vec<u8>>,
    /// The runtime's event-log digest `D_n`.
    #[serde(with = "BigArray")]
    pub event_log_digest: Digest384,
    /// The launch measurement its own evidence reports (SNP MEASUREMENT, TDX MRTD, simulated
    /// MEASUREMENT); empty when the runtime had not produced evidence yet.
    pub launch_measurement: Vec<u8>,
    /// The runtime's clock when it signed (seconds since 1970; the host sets it: untrusted).
    pub runtime_time_unix_s: u64,
}

/// A signed receipt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The statement.
    pub body: ReceiptBody,
    /// Ed25519 signature over [`signed_bytes`].
    #[serde(with = "BigArray")]
    pub signature: [u8; SIGNATURE_LEN],
}

/// The bytes the signature covers.
pub fn signed_bytes(body: &ReceiptBody) -> Vec<u8> {
    let mut out = RECEIPT_DOMAIN.to_vec();
    // Plain data: postcard serialisation into a Vec cannot fail.
    out.extend_from_slice(&postcard::to_allocvec(body).unwrap_or_default());
    out
}

impl Receipt {
    /// Encode to the wire format.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decode strictly: size cap, no trailing bytes, canonical, known version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        if bytes.len() > MAX_RECEIPT_LEN {
            return Err(ReceiptError::TooLarge(bytes.len()));
        }
        // The version leads the encoding: another version is named, not "malformed".
        if let Ok((version, _)) = postcard::take_from_bytes::<u16>(bytes)
            && version != RECEIPT_VERSION
        {
            return Err(ReceiptError::Version(version));
        }
        let (r, rest): (Receipt, &[u8]) = postcard::take_from_bytes(bytes).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ReceiptError::Trailing(rest.len()));
        }
        if r.body.version != RECEIPT_VERSION {
            return Err(ReceiptError::Version(r.body.version));
        }
        if r.to_bytes() != bytes {
            return Err(ReceiptError::NonCanonical);
        }
        Ok(r)
    }

    /// Base64 (standard alphabet) of the wire format: the `chrysalis-receipt` header value.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// Decode from base64 (surrounding whitespace ignored) or, failing that, raw bytes.
    pub fn from_text_or_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        use base64::Engine as _;
        let trimmed = bytes.trim_ascii();
        match base64::engine::general_purpose::STANDARD.decode(trimmed) {
            Ok(raw) => Receipt::from_bytes(&raw),
            Err(_) => Receipt::from_bytes(bytes),
        }
    }

    /// Check the signature under `receipt_key` (the `ReceiptKey` event's data).
    pub fn verify_signature(&self, receipt_key: &[u8]) -> Result<(), ReceiptError> {
        UnparsedPublicKey::new(&ED25519, receipt_key)
            .verify(&signed_bytes(&self.body), &self.signature)
            .map_err(|_| ReceiptError::Signature(hex::encode(receipt_key)))
    }
}

/// SHA-384 of a request body, as receipts carry it.
pub fn request_hash(body: &[u8]) -> Digest384 {
    let mut h = Hasher::request();
    h.update(body);
    h.finish()
}

/// SHA-384 of a response body, as receipts carry it.
pub fn response_hash(body: &[u8]) -> Digest384 {
    let mut h = Hasher::response();
    h.update(body);
    h.finish()
}

/// Incremental request/response hash (streams are hashed as they pass).
#[derive(Clone, Debug)]
pub struct Hasher(Sha384);

impl Hasher {
    /// For a request body.
    pub fn request() -> Self {
        Hasher(Sha384::new_with_prefix(REQUEST_HASH_DOMAIN))
    }

    /// For a response body.
    pub fn response() -> Self {
        Hasher(Sha384::new_with_prefix(RESPONSE_HASH_DOMAIN))
    }

    /// Add bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest.
    pub fn finish(self) -> Digest384 {
        self.0.finalize().into()
    }
}

/// The runtime's receipt key pair, generated at boot; its public half is measured into the
/// event log. The seed is zeroized after use; `ring` keeps the expanded key (known gap, as
/// for the sealed-body AES key: ring does not zeroize on drop).
pub struct ReceiptSigner {
    key: Ed25519KeyPair,
    public: [u8; RECEIPT_KEY_LEN],
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner").field("public", &hex::encode(self.public)).field("private", &"<redacted>").finish()
    }
}

impl ReceiptSigner {
    /// A fresh key from 32 bytes of OS randomness.
    pub fn generate() -> Result<Self, ReceiptError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|_| ReceiptError::Random)?;
        Self::from_seed(&seed)
    }

    /// A key from a seed (tests).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, ReceiptError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| ReceiptError::Random)?;
        let mut public = [0u8; RECEIPT_KEY_LEN];
        public.copy_from_slice(key.public_key().as_ref());
        Ok(ReceiptSigner { key, public })
    }

    /// The public key, as carried in the `ReceiptKey` event.
    pub fn public_key(&self) -> [u8; RECEIPT_KEY_LEN] {
        self.public
    }

    /// The event that measures the public key into the log.
    pub fn public_key_event(&self) -> Event {
        Event::with_data(EventKind::ReceiptKey, self.public.to_vec())
    }

    /// Sign `body`.
    pub fn sign(&self, body: ReceiptBody) -> Receipt {
        let sig = self.key.sign(&signed_bytes(&body));
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(sig.as_ref());
        Receipt { body, signature }
    }
}

/// Offset and length of MEASUREMENT in an SEV-SNP (and simulated) ATTESTATION_REPORT.
const SNP_MEASUREMENT: std::ops::Range<usize> = 0x90..0xC0;

/// The launch measurement a platform statement reports (SNP/simulated MEASUREMENT, TDX
/// MRTD), read without verifying anything: the runtime quotes its own, the verifier compares
/// with the verified claims.
pub fn launch_measurement(platform: &PlatformEvidence) -> Option<[u8; DIGEST_LEN]> {
    match platform {
        PlatformEvidence::Snp { report, .. } | PlatformEvidence::Simulated { report } => {
            report.get(SNP_MEASUREMENT).and_then(|m| m.try_into().ok())
        }
        PlatformEvidence::Tdx { quote, .. } => crate::wire::tdx::TdxQuote::parse(quote).ok().map(|q| q.body.mr_td),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn body() -> ReceiptBody {
        ReceiptBody {
            version: RECEIPT_VERSION,
            target: "POST /v1/chat/completions".into(),
            request_id: [3; 16],
            request_sha384: request_hash(b"{\"messages\":[]}"),
            status: 200,
            response_sha384: response_hash(b"{\"choices\":[]}"),
            model: "tiny-llama".into(),
            bundle_header_sha384: Some(vec![4; 48]),
            event_log_digest: [5; 48],
            launch_measurement: vec![6; 48],
            runtime_time_unix_s: 1_800_000_000,
        }
    }

    #[test]
    fn sign_verify_encode() {
        let s = ReceiptSigner::from_seed(&[1; 32]).unwrap();
        let r = s.sign(body());
        r.verify_signature(&s.public_key()).unwrap();
        let bytes = r.to_bytes();
        assert_eq!(Receipt::from_bytes(&bytes).unwrap(), r);
        assert_eq!(Receipt::from_text_or_bytes(r.to_base64().as_bytes()).unwrap(), r);
        assert_eq!(Receipt::from_text_or_bytes(format!(" {}\n", r.to_base64()).as_bytes()).unwrap(), r);
        assert_eq!(Receipt::from_text_or_bytes(&bytes).unwrap(), r);
        let e = s.public_key_event();
        assert_eq!(e.kind, EventKind::ReceiptKey);
        assert_eq!(e.data.as_deref(), Some(&s.public_key()[..]));
        assert!(format!("{s:?}").contains("<redacted>"));
    }

    #[test]
    fn every_field_is_signed_and_wrong_key_fails() {
        let s = ReceiptSigner::from_seed(&[1; 32]).unwrap();
        let r = s.sign(body());
        type Change = Box<dyn Fn(&mut ReceiptBody)>;
        let changes: Vec<(&str, Change)> = vec![
            ("version", Box::new(|b| b.version = 1)),
            ("request id", Box::new(|b| b.request_id[15] ^= 1)),
            ("target", Box::new(|b| b.target = "POST /v1/completions".into())),
            ("request", Box::new(|b| b.request_sha384[0] ^= 1)),
            ("status", Box::new(|b| b.status = 500)),
            ("response", Box::new(|b| b.response_sha384[47] ^= 1)),
            ("model", Box::new(|b| b.model = "other".into())),
            ("bundle", Box::new(|b| b.bundle_header_sha384 = None)),
            ("log", Box::new(|b| b.event_log_digest[1] ^= 1)),
            ("measurement", Box::new(|b| b.launch_measurement[0] ^= 1)),
            ("time", Box::new(|b| b.runtime_time_unix_s += 1)),
        ];
        for (name, change) in changes {
            let mut bad = r.clone();
            change(&mut bad.body);
            assert!(matches!(bad.verify_signature(&s.public_key()), Err(ReceiptError::Signature(_))), "{name}");
        }
        for i in 0..SIGNATURE_LEN * 8 {
            let mut bad = r.clone();
            bad.signature[i / 8] ^= 1 << (i % 8);
            assert!(bad.verify_signature(&s.public_key()).is_err(), "signature bit {i}");
        }
        let other = ReceiptSigner::from_seed(&[2; 32]).unwrap();
        assert!(r.verify_signature(&other.public_key()).is_err());
        assert!(r.verify_signature(&[0; 31]).is_err());
    }

    #[test]
    fn strict_decoding() {
        let r = ReceiptSigner::from_seed(&[1; 32]).unwrap().sign(body());
        let bytes = r.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Receipt::from_bytes(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Receipt::from_bytes(&long), Err(ReceiptError::Trailing(1)));
        let mut v2 = r.clone();
        v2.body.version = 9;
        assert_eq!(Receipt::from_bytes(&v2.to_bytes()), Err(ReceiptError::Version(9)));
        assert_eq!(Receipt::from_bytes(&[0; 5000]), Err(ReceiptError::TooLarge(5000)));
    }

    #[test]
    fn hashes_are_domain_separated() {
        assert_ne!(request_hash(b"x"), response_hash(b"x"));
        let mut raw = REQUEST_HASH_DOMAIN.to_vec();
        raw.extend_from_slice(b"x");
        assert_eq!(request_hash(b"x"), <[u8; 48]>::from(Sha384::digest(&raw)));
    }

    #[test]
    fn measurement_from_platform_evidence() {
        let mut report = vec![0u8; 1184];
        report[0x90..0xC0].copy_from_slice(&[9; 48]);
        assert_eq!(launch_measurement(&PlatformEvidence::Simulated { report: report.clone() }), Some([9; 48]));
        assert_eq!(launch_measurement(&PlatformEvidence::Snp { report, certs: vec![] }), Some([9; 48]));
        assert_eq!(launch_measurement(&PlatformEvidence::Simulated { report: vec![0; 10] }), None);
        assert_eq!(launch_measurement(&PlatformEvidence::Tdx { quote: vec![0; 10], ccel_log: None }), None);
    }

    proptest! {
        #[test]
        fn decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Receipt::from_text_or_bytes(&bytes);
            if let Ok(r) = Receipt::from_bytes(&bytes) {
                prop_assert_eq!(r.to_bytes(), bytes);
            }
        }
    }
}
