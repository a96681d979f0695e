//! Note keys: the log's Ed25519 signing key (c2sp.org/signed-note, algorithm 0x01) and the
//! witnesses' cosigning keys (c2sp.org/tlog-cosignature, `cosignature/v1`, algorithm 0x04).
//!
//! Both use the standard note key encodings: a private key is
//! `PRIVATE+KEY+<name>+<id>+<base64(alg || 32-byte seed)>`, a verifier key is
//! `<name>+<id>+<base64(alg || 32-byte public key)>`, with `id` the first four bytes of
//! SHA-256(name || "\n" || alg || public key) in hex. Log keys are parsed by `signed_note`;
//! that crate knows only algorithm 0x01, so the cosignature keys (0x04) are parsed here the
//! same way.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use signed_note::{Signer, StandardSigner, StandardVerifier, Verifier, is_key_name_valid, key_id};

use crate::Error;

/// Signature algorithm byte of an Ed25519 note key.
pub const ALG_ED25519: u8 = 0x01;
/// Signature algorithm byte of a `cosignature/v1` (timestamped Ed25519) witness key.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// The log's checkpoint signing key (Ed25519 note signature).
    Log,
    /// A witness's cosigning key (`cosignature/v1`).
    Witness,
}

impl KeyKind {
    fn alg(self) -> u8 {
        match self {
            KeyKind::Log => ALG_ED25519,
            KeyKind::Witness => ALG_COSIGNATURE_V1,
        }
    }
}

/// Generate a key pair named `name`: (private key, verifier key), both in note key encoding.
pub fn keygen(name: &str, kind: KeyKind) -> Result<(String, String), Error> {
    if !is_key_name_valid(name) {
        return Err(Error::Key(format!("invalid key name {name:?} (no spaces, no '+', not empty)")));
    }
    let sk = SigningKey::generate(&mut rand_core_06::OsRng);
    Ok(encode_pair(name, kind, &sk.to_bytes()))
}

/// The (private, verifier) note key encodings of the Ed25519 key with this 32-byte seed
/// under `name` (deterministic keys: tests and fuzzing; use [`keygen`] otherwise).
pub fn encode_pair(name: &str, kind: KeyKind, seed: &[u8; 32]) -> (String, String) {
    let sk = SigningKey::from_bytes(seed);
    let alg = kind.alg();
    let mut public = vec![alg];
    public.extend_from_slice(sk.verifying_key().as_bytes());
    let id = key_id(name, &public);
    let mut private = vec![alg];
    private.extend_from_slice(&sk.to_bytes());
    (format!("PRIVATE+KEY+{name}+{id:08x}+{}", B64.encode(&private)), format!("{name}+{id:08x}+{}", B64.encode(&public)))
}

/// A parsed note key: name, id, algorithm and key bytes (32).
struct RawKey {
    name: String,
    id: u32,
    alg: u8,
    key: [u8; 32],
}

fn parse_raw(name: &str, id16: &str, b64: &str) -> Result<RawKey, String> {
    if !is_key_name_valid(name) {
        return Err("invalid key name".into());
    }
    if id16.len() != 8 {
        return Err("key id is not 8 hex digits".into());
    }
    let id = u32::from_str_radix(id16, 16).map_err(|_| "key id is not hex".to_string())?;
    let bytes = B64.decode(b64.trim()).map_err(|e| format!("key is not base64: {e}"))?;
    let Some((&alg, rest)) = bytes.split_first() else {
        return Err("empty key".into());
    };
    let key: [u8; 32] = rest.try_into().map_err(|_| format!("key is {} bytes, not 1 + 32", bytes.len()))?;
    Ok(RawKey { name: name.to_string(), id, alg, key })
}

/// A log's verifier key: checks the log's Ed25519 signature on a checkpoint.
pub fn log_verifier(vkey: &str) -> Result<StandardVerifier, Error> {
    StandardVerifier::new(vkey.trim()).map_err(|e| Error::Key(format!("log verifier key {:?}: {e}", key_label(vkey))))
}

/// A log's private key: signs checkpoints.
pub fn log_signer(skey: &str) -> Result<StandardSigner, Error> {
    StandardSigner::new(skey.trim()).map_err(|e| Error::Key(format!("log private key: {e}")))
}

/// The `<name>+<id>` part of an encoded key, for messages (never the key material).
pub fn key_label(vkey: &str) -> String {
    let mut parts = vkey.trim().splitn(3, '+');
    match (parts.next(), parts.next()) {
        (Some(n), Some(id)) => format!("{n}+{id}"),
        _ => "<malformed key>".into(),
    }
}

/// The message a `cosignature/v1` signature covers: the header lines, then the checkpoint.
pub fn cosignature_message(timestamp: u64, checkpoint_text: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    msg.extend_from_slice(checkpoint_text);
    msg
}

/// A witness's verifier key (`cosignature/v1`).
#[derive(Clone, Debug)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// Parse `<name>+<id>+<base64(0x04 || key)>`.
    pub fn new(vkey: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::Key(format!("witness verifier key {:?}: {why}", key_label(vkey)));
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id16), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not <name>+<id>+<key>".into()));
        };
        let raw = parse_raw(name, id16, b64).map_err(bad)?;
        if raw.alg != ALG_COSIGNATURE_V1 {
            return Err(bad(format!("algorithm 0x{:02x} is not cosignature/v1 (0x04)", raw.alg)));
        }
        let mut public = vec![raw.alg];
        public.extend_from_slice(&raw.key);
        if key_id(&raw.name, &public) != raw.id {
            return Err(bad("key id does not match the key".into()));
        }
        let key = VerifyingKey::from_bytes(&raw.key).map_err(|_| bad("not an Ed25519 public key".into()))?;
        Ok(Self { name: raw.name, id: raw.id, key })
    }

    /// The cosignature's timestamp (seconds since the epoch), when `sig` verifies for `text`.
    pub fn verify_timestamp(&self, text: &[u8], sig: &[u8]) -> Option<u64> {
        if sig.len() != 8 + 64 {
            return None;
        }
        let (ts, sig) = sig.split_at(8);
        let ts = u64::from_be_bytes(ts.try_into().ok()?);
        let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
        self.key.verify_strict(&cosignature_message(ts, text), &sig).ok()?;
        Some(ts)
    }
}

impl Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.verify_timestamp(msg, sig).is_some()
    }
}

/// A witness's private key: produces `cosignature/v1` signatures at a given time.
pub struct CosignatureSigner {
    name: String,
    id: u32,
    key: SigningKey,
    timestamp: u64,
}

impl CosignatureSigner {
    /// Parse `PRIVATE+KEY+<name>+<id>+<base64(0x04 || seed)>`; signatures carry `timestamp`.
    pub fn new(skey: &str, timestamp: u64) -> Result<Self, Error> {
        let bad = |why: String| Error::Key(format!("witness private key: {why}"));
        let mut parts = skey.trim().splitn(5, '+');
        let (Some("PRIVATE"), Some("KEY"), Some(name), Some(id16), Some(b64)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not PRIVATE+KEY+<name>+<id>+<key>".into()));
        };
        let raw = parse_raw(name, id16, b64).map_err(bad)?;
        if raw.alg != ALG_COSIGNATURE_V1 {
            return Err(bad(format!("algorithm 0x{:02x} is not cosignature/v1 (0x04)", raw.alg)));
        }
        let key = SigningKey::from_bytes(&raw.key);
        let mut public = vec![raw.alg];
        public.extend_from_slice(key.verifying_key().as_bytes());
        if key_id(&raw.name, &public) != raw.id {
            return Err(bad("key id does not match the key".into()));
        }
        Ok(Self { name: raw.name, id: raw.id, key, timestamp })
    }
}

impl Signer for CosignatureSigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let sig = self.key.sign(&cosignature_message(self.timestamp, msg));
        let mut out = self.timestamp.to_be_bytes().to_vec();
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }
}
