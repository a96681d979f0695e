//! Attested key release, cryptography and messages: how the owner wraps a bundle's data key
//! to the runtime's ephemeral X25519 key, bound to the exact evidence the owner verified,
//! and how the runtime accepts it at most once per nonce.
//!
//! HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM:
//!
//! ```text
//! transcript = SHA-384( "chrysalis/key-release/v1"          (24 ASCII bytes, no terminator)
//!                    || u16_be(len(nonce)) || nonce         (the verifier's nonce, 32 bytes)
//!                    || event_log_digest                    (48 bytes: D_n of the event log)
//!                    || report_data )                       (64 bytes: SHA-512(D_n || nonce))
//! (enc, ct)  = HPKE.SealBase(pkR = runtime PublicKey event data, info = transcript,
//!                            aad = "chrysalis/sealed-weights-data-key/v1", pt = data key)
//! KeyRelease = postcard { version: u16 = 1, nonce: [u8; 32], enc: [u8; 32], ct: [u8; 48] }
//! ```
//!
//! The transcript makes the wrapped key useless to any runtime state other than the one that
//! produced the verified evidence for that nonce: a key released for one attestation cannot be
//! replayed into another (different nonce or log ⇒ different HPKE `info` ⇒ open fails).
//!
//! Trust: [`KeyRelease`] bytes are untrusted on both sides; decoding is total. The runtime's
//! private key never leaves [`RuntimeKeyPair`] (not serialisable, zeroized on drop).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hpke::aead::{AeadTag, AesGcm256};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;
use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

use crate::eventlog::{Digest384, Event, EventKind, EventLog};
use crate::seal::key::{DATA_KEY_LEN, DataKey};

pub(crate) type Kem = X25519HkdfSha256;
pub(crate) type Kdf = HkdfSha256;
pub(crate) type Cipher = AesGcm256;

/// Version of the [`KeyRelease`] wire format.
pub const KEY_RELEASE_VERSION: u16 = 1;
/// Length of a key-release nonce.
pub const NONCE_LEN: usize = 32;
/// Domain separation prefix of the transcript hash.
pub const TRANSCRIPT_DOMAIN: &[u8] = b"chrysalis/key-release/v1";
/// HPKE associated data of the wrapped data key.
pub const WRAP_AAD: &[u8] = b"chrysalis/sealed-weights-data-key/v1";
/// X25519 public key / HPKE encapsulated key length.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Wrapped data key: 32 bytes of key + 16 bytes of tag.
pub const WRAPPED_LEN: usize = DATA_KEY_LEN + 16;
/// Largest encoded [`KeyRelease`] accepted (the real one is ~115 bytes).
pub const MAX_KEY_RELEASE_LEN: usize = 512;
/// How long a runtime accepts a key for a nonce it issued evidence for.
pub const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(300);

/// A key-release nonce.
pub type Nonce = [u8; NONCE_LEN];

/// Why a key-release step failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyReleaseError {
    /// Encoded message above [`MAX_KEY_RELEASE_LEN`].
    #[error("key release message too large: {0} bytes, limit {MAX_KEY_RELEASE_LEN}")]
    TooLarge(usize),
    /// Not valid postcard for [`KeyRelease`] (includes truncation).
    #[error("key release message is malformed: {0}")]
    Malformed(postcard::Error),
    /// Bytes after the message.
    #[error("key release message has {0} trailing bytes")]
    Trailing(usize),
    /// Decodes, but not in the canonical encoding.
    #[error("key release message is not canonically encoded")]
    NonCanonical,
    /// Unknown wire version.
    #[error("key release version {found} is not supported (expected {KEY_RELEASE_VERSION})")]
    Version {
        /// The version found.
        found: u16,
    },
    /// A nonce that is not [`NONCE_LEN`] bytes.
    #[error("nonce must be {NONCE_LEN} bytes, got {0}")]
    NonceLength(usize),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// The runtime public key is not usable for X25519 (e.g. a low-order point).
    #[error("runtime public key is not a usable X25519 key")]
    InvalidPublicKey,
    /// HPKE open failed: wrong runtime key, wrong transcript, or altered message.
    #[error("could not decrypt the data key (wrong runtime key, wrong transcript or corrupted message)")]
    Decrypt,
    /// The runtime never issued evidence for this nonce (or forgot it).
    #[error("nonce {0} was never issued here")]
    UnknownNonce(String),
    /// A key was already accepted for this nonce.
    #[error("nonce {0} was already used for a key")]
    ReplayedNonce(String),
    /// The nonce is older than the time-to-live.
    #[error("nonce {nonce} is stale: issued {age_s} s ago, limit {ttl_s} s")]
    StaleNonce {
        /// Short hex of the nonce.
        nonce: String,
        /// Its age.
        age_s: u64,
        /// The TTL.
        ttl_s: u64,
    },
    /// The model is already unsealed; the runtime takes no second key.
    #[error("model already unsealed: refusing another key")]
    AlreadyUnsealed,
    /// Every slot of the nonce book holds a live nonce; a new one is refused (rather than
    /// evicting a live one) until the oldest expires.
    #[error("too many outstanding nonces: retry in {retry_after_s} s")]
    TooManyNonces {
        /// Seconds until the oldest outstanding nonce expires and frees a slot.
        retry_after_s: u64,
    },
}

fn short(nonce: &[u8]) -> String {
    hex::encode(nonce.get(..8).unwrap_or(nonce))
}

/// A fresh random nonce.
pub fn fresh_nonce() -> Result<Nonce, KeyReleaseError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|_| KeyReleaseError::Random)?;
    Ok(n)
}

/// Domain separation prefix of a lease-renewal challenge ([`renewal_nonce`]).
pub const RENEWAL_DOMAIN: &[u8] = b"chrysalis/lease-renewal/v1";

/// The nonce of a lease-renewal challenge: `SHA-256(RENEWAL_DOMAIN || salt || bind)`.
///
/// A runtime on a lease renews its key while serving. It must know that each renewal is
/// fresh, or the host could replay an old renewal forever after the owner stopped renewing.
/// So the runtime picks `bind` at random and asks `GET /v1/challenge?bind=<hex>`; the key
/// service picks `salt` at random and answers `<nonce hex> <salt hex>`. Each side then knows
/// the nonce is new: the service because of `salt`, the runtime because of `bind` (it
/// recomputes the nonce and refuses a challenge that does not match).
pub fn renewal_nonce(salt: &Nonce, bind: &Nonce) -> Nonce {
    let mut h = Sha256::new();
    h.update(RENEWAL_DOMAIN);
    h.update(salt);
    h.update(bind);
    h.finalize().into()
}

/// Open a lease renewal on the runtime: `msg` must answer `nonce` (the [`renewal_nonce`] the
/// runtime computed from its own `bind`) and open under this boot's transcript for it. The
/// caller then checks that the key is the one the model was unsealed with. No nonce book is
/// involved: the nonce never came from a network client, and `bind` makes it unique.
pub fn open_renewal(msg: &KeyRelease, nonce: &Nonce, keys: &RuntimeKeyPair, log: &EventLog) -> Result<DataKey, KeyReleaseError> {
    if msg.nonce != *nonce {
        return Err(KeyReleaseError::UnknownNonce(short(&msg.nonce)));
    }
    unwrap_key(&msg.wrapped(), keys, &Transcript::for_log(nonce, log))
}

/// The runtime's ephemeral X25519 key pair, generated at boot, whose public half is measured
/// into the event log (`PublicKey` event). The private half is zeroized on drop and has no
/// serialisation.
pub struct RuntimeKeyPair {
    sk: <Kem as KemTrait>::PrivateKey,
    pk: [u8; PUBLIC_KEY_LEN],
}

impl RuntimeKeyPair {
    /// Generate a key pair from 32 bytes of OS randomness (RFC 9180 DeriveKeyPair).
    pub fn generate() -> Result<Self, KeyReleaseError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        getrandom::fill(ikm.as_mut()).map_err(|_| KeyReleaseError::Random)?;
        let (sk, pk) = Kem::derive_keypair(ikm.as_ref());
        let mut pk_bytes = [0u8; PUBLIC_KEY_LEN];
        pk_bytes.copy_from_slice(&pk.to_bytes());
        Ok(RuntimeKeyPair { sk, pk: pk_bytes })
    }

    /// The public key, as carried in the `PublicKey` event.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.pk
    }

    /// The event that measures the public key into the log.
    pub fn public_key_event(&self) -> Event {
        Event::with_data(EventKind::PublicKey, self.pk.to_vec())
    }

    /// HPKE base-mode receiver context for `enc` and `info` (the encrypted channel, see
    /// `crate::channel`). Crate-private so that the private key never leaves this type.
    pub(crate) fn setup_receiver(
        &self,
        enc: &[u8; PUBLIC_KEY_LEN],
        info: &[u8],
    ) -> Result<hpke::aead::AeadCtxR<Cipher, Kdf, Kem>, KeyReleaseError> {
        let enc = <Kem as KemTrait>::EncappedKey::from_bytes(enc).map_err(|_| KeyReleaseError::Decrypt)?;
        hpke::setup_receiver::<Cipher, Kdf, Kem>(&OpModeR::Base, &self.sk, &enc, info).map_err(|_| KeyReleaseError::Decrypt)
    }
}

impl std::fmt::Debug for RuntimeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeKeyPair").field("public", &hex::encode(self.pk)).field("private", &"<redacted>").finish()
    }
}

/// The HPKE `info`: binds a wrapped key to one nonce and one event-log state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript(pub Digest384);

impl Transcript {
    /// `SHA-384(domain || u16_be(len nonce) || nonce || event_log_digest || report_data)`.
    pub fn new(nonce: &[u8], event_log_digest: &Digest384, report_data: &[u8; 64]) -> Self {
        let mut h = Sha384::new();
        h.update(TRANSCRIPT_DOMAIN);
        h.update(u16::try_from(nonce.len()).unwrap_or(u16::MAX).to_be_bytes());
        h.update(nonce);
        h.update(event_log_digest);
        h.update(report_data);
        Transcript(h.finalize().into())
    }

    /// The transcript of `log` presented for `nonce` (REPORT_DATA recomputed from the log).
    pub fn for_log(nonce: &[u8], log: &EventLog) -> Self {
        Transcript::new(nonce, &log.digest(), &log.report_data(nonce))
    }
}

/// A data key encrypted to one runtime for one transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// HPKE encapsulated key (the sender's ephemeral X25519 public key).
    pub encapped_key: [u8; PUBLIC_KEY_LEN],
    /// AES-256-GCM(data key) || tag.
    pub ciphertext: [u8; WRAPPED_LEN],
}

/// Wrap `key` to the runtime key `runtime_public_key` for `transcript`.
pub fn wrap_key(
    key: &DataKey,
    runtime_public_key: &[u8; PUBLIC_KEY_LEN],
    transcript: &Transcript,
) -> Result<WrappedKey, KeyReleaseError> {
    let pk = <Kem as KemTrait>::PublicKey::from_bytes(runtime_public_key).map_err(|_| KeyReleaseError::InvalidPublicKey)?;
    let mut buf = Zeroizing::new(*key.as_bytes());
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let (enc, tag) = hpke::single_shot_seal_inout_detached_with_rng::<Cipher, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        &transcript.0,
        InOutBuf::from(&mut buf[..]),
        WRAP_AAD,
        &mut rng,
    )
    .map_err(|_| KeyReleaseError::InvalidPublicKey)?;
    let mut w = WrappedKey { encapped_key: [0; PUBLIC_KEY_LEN], ciphertext: [0; WRAPPED_LEN] };
    w.encapped_key.copy_from_slice(&enc.to_bytes());
    let (ct, t) = w.ciphertext.split_at_mut(DATA_KEY_LEN);
    ct.copy_from_slice(&buf[..]);
    t.copy_from_slice(&tag.to_bytes());
    Ok(w)
}

/// Unwrap a data key with the runtime's private key, for the transcript the runtime itself
/// computed from its log and the nonce.
pub fn unwrap_key(w: &WrappedKey, keys: &RuntimeKeyPair, transcript: &Transcript) -> Result<DataKey, KeyReleaseError> {
    let enc = <Kem as KemTrait>::EncappedKey::from_bytes(&w.encapped_key).map_err(|_| KeyReleaseError::Decrypt)?;
    let (ct, tag) = w.ciphertext.split_at(DATA_KEY_LEN);
    let tag = AeadTag::<Cipher>::from_bytes(tag).map_err(|_| KeyReleaseError::Decrypt)?;
    let mut buf = Zeroizing::new([0u8; DATA_KEY_LEN]);
    buf.copy_from_slice(ct);
    hpke::single_shot_open_inout_detached::<Cipher, Kdf, Kem>(
        &OpModeR::Base,
        &keys.sk,
        &enc,
        &transcript.0,
        InOutBuf::from(&mut buf[..]),
        WRAP_AAD,
        &tag,
    )
    .map_err(|_| KeyReleaseError::Decrypt)?;
    Ok(DataKey::from_zeroizing(buf))
}

/// The key-release message (`POST /v1/key` body, `POST /v1/release` answer).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyRelease {
    /// [`KEY_RELEASE_VERSION`].
    pub version: u16,
    /// The nonce of the evidence this key was released for.
    pub nonce: Nonce,
    /// HPKE encapsulated key.
    pub encapped_key: [u8; PUBLIC_KEY_LEN],
    /// Wrapped data key.
    #[serde(with = "BigArray")]
    pub ciphertext: [u8; WRAPPED_LEN],
}

impl KeyRelease {
    /// Build the message for a wrapped key.
    pub fn new(nonce: Nonce, w: &WrappedKey) -> Self {
        KeyRelease { version: KEY_RELEASE_VERSION, nonce, encapped_key: w.encapped_key, ciphertext: w.ciphertext }
    }

    /// The wrapped key it carries.
    pub fn wrapped(&self) -> WrappedKey {
        WrappedKey { encapped_key: self.encapped_key, ciphertext: self.ciphertext }
    }

    /// Encode to the wire format.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Fixed-size plain data: serialisation into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decode, rejecting oversized input, trailing bytes and other versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyReleaseError> {
        if bytes.len() > MAX_KEY_RELEASE_LEN {
            return Err(KeyReleaseError::TooLarge(bytes.len()));
        }
        let (m, rest): (KeyRelease, &[u8]) = postcard::take_from_bytes(bytes).map_err(KeyReleaseError::Malformed)?;
        if !rest.is_empty() {
            return Err(KeyReleaseError::Trailing(rest.len()));
        }
        if m.version != KEY_RELEASE_VERSION {
            return Err(KeyReleaseError::Version { found: m.version });
        }
        if m.to_bytes() != bytes {
            return Err(KeyReleaseError::NonCanonical);
        }
        Ok(m)
    }
}

/// Single-use nonces with a time-to-live: what both ends of a key release keep. Bounded: when
/// `capacity` are open, [`insert`](Self::insert) forgets the oldest and
/// [`insert_unless_full`](Self::insert_unless_full) refuses the new one.
#[derive(Debug)]
pub struct OnceNonces<T> {
    ttl: Duration,
    capacity: usize,
    outstanding: VecDeque<(Nonce, Instant, T)>,
    used: VecDeque<Nonce>,
}

impl<T> OnceNonces<T> {
    /// Outstanding nonces kept at most.
    pub const CAPACITY: usize = 256;
    /// Used nonces remembered (to tell "replayed" from "unknown").
    pub const USED_CAPACITY: usize = 1024;

    /// An empty book whose nonces expire after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        OnceNonces { ttl, capacity: Self::CAPACITY, outstanding: VecDeque::new(), used: VecDeque::new() }
    }

    /// Record `nonce` as issued at `now` with `data`; a nonce issued again is refreshed.
    pub fn insert(&mut self, nonce: Nonce, now: Instant, data: T) -> Result<(), KeyReleaseError> {
        if self.used.contains(&nonce) {
            return Err(KeyReleaseError::ReplayedNonce(short(&nonce)));
        }
        self.outstanding.retain(|(n, _, _)| *n != nonce);
        if self.outstanding.len() >= self.capacity {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((nonce, now, data));
        Ok(())
    }

    /// Like [`insert`](Self::insert), but a full book refuses the new nonce instead of
    /// forgetting its oldest one: where nonces are issued to anyone who asks (the runtime's
    /// `/v1/attestation`), eviction would let a flood of requests push out the nonce the owner
    /// is about to release a key for. Expired nonces are dropped first to make room.
    pub fn insert_unless_full(&mut self, nonce: Nonce, now: Instant, data: T) -> Result<(), KeyReleaseError> {
        // Only a new nonce needs a free slot: a refresh or a replay is [`insert`]'s to answer.
        let new = !self.used.contains(&nonce) && !self.outstanding.iter().any(|(n, _, _)| *n == nonce);
        if new && self.outstanding.len() >= self.capacity {
            let ttl = self.ttl;
            self.outstanding.retain(|(_, at, _)| now.saturating_duration_since(*at) <= ttl);
            if self.outstanding.len() >= self.capacity {
                let oldest = self.outstanding.iter().map(|(_, at, _)| *at).min().unwrap_or(now);
                let left = ttl_left(self.ttl, now.saturating_duration_since(oldest));
                return Err(KeyReleaseError::TooManyNonces { retry_after_s: left });
            }
        }
        self.insert(nonce, now, data)
    }

    /// The data of an outstanding, fresh nonce, without using it up.
    pub fn check(&self, nonce: &Nonce, now: Instant) -> Result<&T, KeyReleaseError> {
        if self.used.contains(nonce) {
            return Err(KeyReleaseError::ReplayedNonce(short(nonce)));
        }
        let Some((_, at, data)) = self.outstanding.iter().find(|(n, _, _)| n == nonce) else {
            return Err(KeyReleaseError::UnknownNonce(short(nonce)));
        };
        let age = now.saturating_duration_since(*at);
        if age > self.ttl {
            return Err(KeyReleaseError::StaleNonce { nonce: short(nonce), age_s: age.as_secs(), ttl_s: self.ttl.as_secs() });
        }
        Ok(data)
    }

    /// Mark `nonce` used: any later [`check`](Self::check) says "replayed".
    pub fn consume(&mut self, nonce: &Nonce) {
        self.outstanding.retain(|(n, _, _)| n != nonce);
        if self.used.len() >= Self::USED_CAPACITY {
            self.used.pop_front();
        }
        self.used.push_back(*nonce);
    }

    /// [`check`](Self::check) then [`consume`](Self::consume).
    pub fn redeem(&mut self, nonce: &Nonce, now: Instant) -> Result<T, KeyReleaseError>
    where
        T: Clone,
    {
        let data = self.check(nonce, now)?.clone();
        self.consume(nonce);
        Ok(data)
    }
}

/// Whole seconds (at least 1) until a nonce of age `age` passes `ttl`.
fn ttl_left(ttl: Duration, age: Duration) -> u64 {
    let left = ttl.saturating_sub(age);
    left.as_secs().saturating_add(u64::from(left.subsec_nanos() > 0)).max(1)
}

#[derive(Debug, Clone)]
struct LogBinding {
    log_digest: Digest384,
    report_data: [u8; 64],
}

/// The runtime's record of nonces it served evidence for, and whether the model is unsealed.
/// Each nonce yields at most one key; a key is accepted only for the event-log state that the
/// evidence for that nonce showed.
#[derive(Debug)]
pub struct NonceBook {
    nonces: OnceNonces<LogBinding>,
    unsealed: bool,
}

impl NonceBook {
    /// A book with nonce lifetime `ttl` ([`DEFAULT_NONCE_TTL`] is a sensible value).
    pub fn new(ttl: Duration) -> Self {
        NonceBook { nonces: OnceNonces::new(ttl), unsealed: false }
    }

    /// Record that evidence for `nonce` was produced from `log` (call when serving evidence).
    /// A full book refuses with [`KeyReleaseError::TooManyNonces`] rather than forget a live
    /// nonce (anyone may ask for evidence; only the owner's nonce matters).
    pub fn issue(&mut self, nonce: &[u8], log: &EventLog, now: Instant) -> Result<(), KeyReleaseError> {
        let n: Nonce = nonce.try_into().map_err(|_| KeyReleaseError::NonceLength(nonce.len()))?;
        let binding = LogBinding { log_digest: log.digest(), report_data: log.report_data(nonce) };
        self.nonces.insert_unless_full(n, now, binding)
    }

    /// Accept a key release: the nonce must be outstanding and fresh, the model not yet
    /// unsealed, and the key must open under the transcript of the evidence served for that
    /// nonce. The nonce is used up only when the key opens.
    pub fn accept(&mut self, msg: &KeyRelease, keys: &RuntimeKeyPair, now: Instant) -> Result<DataKey, KeyReleaseError> {
        if self.unsealed {
            return Err(KeyReleaseError::AlreadyUnsealed);
        }
        let b = self.nonces.check(&msg.nonce, now)?;
        let transcript = Transcript::new(&msg.nonce, &b.log_digest, &b.report_data);
        let key = unwrap_key(&msg.wrapped(), keys, &transcript)?;
        self.nonces.consume(&msg.nonce);
        Ok(key)
    }

    /// Record that the model was unsealed: every later key is refused.
    pub fn mark_unsealed(&mut self) {
        self.unsealed = true;
    }

    /// Whether [`mark_unsealed`](Self::mark_unsealed) was called.
    pub fn is_unsealed(&self) -> bool {
        self.unsealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_with(keys: &RuntimeKeyPair) -> EventLog {
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        log.extend(keys.public_key_event());
        log
    }

    fn release_for(key: &DataKey, keys: &RuntimeKeyPair, log: &EventLog, nonce: Nonce) -> KeyRelease {
        let w = wrap_key(key, &keys.public_key(), &Transcript::for_log(&nonce, log)).expect("wraps");
        KeyRelease::new(nonce, &w)
    }

    #[test]
    fn renewals_open_only_for_the_bound_nonce_and_this_boot() {
        let (salt, bind) = ([1; 32], [2; 32]);
        let nonce = renewal_nonce(&salt, &bind);
        assert_ne!(nonce, renewal_nonce(&salt, &[3; 32]), "bind changes the nonce");
        assert_ne!(nonce, renewal_nonce(&[3; 32], &bind), "salt changes the nonce");
        let keys = RuntimeKeyPair::generate().expect("rng");
        let log = log_with(&keys);
        let key = DataKey::generate().expect("rng");
        let msg = release_for(&key, &keys, &log, nonce);
        assert_eq!(open_renewal(&msg, &nonce, &keys, &log).expect("opens"), key);
        // An old renewal (another nonce) replayed for this challenge.
        let old = release_for(&key, &keys, &log, renewal_nonce(&salt, &[9; 32]));
        assert!(matches!(open_renewal(&old, &nonce, &keys, &log), Err(KeyReleaseError::UnknownNonce(_))));
        // The right nonce, but wrapped for another boot's log.
        let other = log_with(&RuntimeKeyPair::generate().expect("rng"));
        let forged = release_for(&key, &keys, &other, nonce);
        assert_eq!(open_renewal(&forged, &nonce, &keys, &log).err(), Some(KeyReleaseError::Decrypt));
    }

    #[test]
    fn wrap_unwrap_and_wrong_transcript_or_recipient() {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let key = DataKey::generate().expect("rng");
        let t = Transcript::new(&[1; 32], &[2; 48], &[3; 64]);
        let w = wrap_key(&key, &keys.public_key(), &t).expect("wraps");
        assert_eq!(unwrap_key(&w, &keys, &t).expect("opens"), key);
        for other in [
            Transcript::new(&[9; 32], &[2; 48], &[3; 64]),
            Transcript::new(&[1; 32], &[9; 48], &[3; 64]),
            Transcript::new(&[1; 32], &[2; 48], &[9; 64]),
        ] {
            assert_eq!(unwrap_key(&w, &keys, &other).err(), Some(KeyReleaseError::Decrypt));
        }
        let stranger = RuntimeKeyPair::generate().expect("rng");
        assert_eq!(unwrap_key(&w, &stranger, &t).err(), Some(KeyReleaseError::Decrypt));
        for i in 0..(PUBLIC_KEY_LEN + WRAPPED_LEN) * 8 {
            let mut bad = w.clone();
            if i < PUBLIC_KEY_LEN * 8 {
                bad.encapped_key[i / 8] ^= 1 << (i % 8);
            } else {
                let j = i - PUBLIC_KEY_LEN * 8;
                bad.ciphertext[j / 8] ^= 1 << (j % 8);
            }
            assert_eq!(unwrap_key(&bad, &keys, &t).err(), Some(KeyReleaseError::Decrypt), "bit {i}");
        }
        // The all-zero (low-order) point is refused when wrapping.
        assert_eq!(wrap_key(&key, &[0; 32], &t).err(), Some(KeyReleaseError::InvalidPublicKey));
    }

    #[test]
    fn transcript_layout_is_as_documented() {
        let mut raw = b"chrysalis/key-release/v1".to_vec();
        raw.extend_from_slice(&[0, 32]);
        raw.extend_from_slice(&[1; 32]);
        raw.extend_from_slice(&[2; 48]);
        raw.extend_from_slice(&[3; 64]);
        let want: [u8; 48] = Sha384::digest(&raw).into();
        assert_eq!(Transcript::new(&[1; 32], &[2; 48], &[3; 64]).0, want);
    }

    #[test]
    fn message_decoding_is_strict() {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let key = DataKey::generate().expect("rng");
        let m = release_for(&key, &keys, &log_with(&keys), [4; 32]);
        let bytes = m.to_bytes();
        assert_eq!(KeyRelease::from_bytes(&bytes), Ok(m.clone()));
        for cut in 0..bytes.len() {
            assert!(matches!(KeyRelease::from_bytes(&bytes[..cut]), Err(KeyReleaseError::Malformed(_))), "cut {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(KeyRelease::from_bytes(&long), Err(KeyReleaseError::Trailing(1)));
        let mut v2 = m;
        v2.version = 2;
        assert_eq!(KeyRelease::from_bytes(&v2.to_bytes()), Err(KeyReleaseError::Version { found: 2 }));
        assert_eq!(KeyRelease::from_bytes(&[0; 600]), Err(KeyReleaseError::TooLarge(600)));
    }

    #[test]
    fn nonce_book_rules() {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let key = DataKey::generate().expect("rng");
        let mut log = log_with(&keys);
        let t0 = Instant::now();
        let mut book = NonceBook::new(Duration::from_secs(60));
        assert_eq!(book.issue(&[1; 31], &log, t0), Err(KeyReleaseError::NonceLength(31)));

        // Unknown nonce.
        let m = release_for(&key, &keys, &log, [1; 32]);
        assert!(matches!(book.accept(&m, &keys, t0), Err(KeyReleaseError::UnknownNonce(_))));

        // Issued, accepted once, then replayed.
        book.issue(&[1; 32], &log, t0).expect("issues");
        assert_eq!(book.accept(&m, &keys, t0).expect("accepts"), key);
        assert!(matches!(book.accept(&m, &keys, t0), Err(KeyReleaseError::ReplayedNonce(_))));
        assert!(matches!(book.issue(&[1; 32], &log, t0), Err(KeyReleaseError::ReplayedNonce(_))));

        // Stale.
        book.issue(&[2; 32], &log, t0).expect("issues");
        let m2 = release_for(&key, &keys, &log, [2; 32]);
        let late = t0 + Duration::from_secs(61);
        assert!(matches!(book.accept(&m2, &keys, late), Err(KeyReleaseError::StaleNonce { age_s: 61, ttl_s: 60, .. })));

        // Key wrapped for a different log state than the evidence served for the nonce.
        book.issue(&[3; 32], &log, t0).expect("issues");
        let before = log.clone();
        log.extend(Event::digest_of(EventKind::BundleHeader, b"h"));
        let m3 = release_for(&key, &keys, &log, [3; 32]);
        assert_eq!(book.accept(&m3, &keys, t0).err(), Some(KeyReleaseError::Decrypt));
        // A failed open does not use the nonce up: the right key still works.
        let m3ok = release_for(&key, &keys, &before, [3; 32]);
        assert!(book.accept(&m3ok, &keys, t0).is_ok());

        // Second key after unsealing.
        book.mark_unsealed();
        book.issue(&[5; 32], &log, t0).expect("issues");
        let m5 = release_for(&key, &keys, &log, [5; 32]);
        assert_eq!(book.accept(&m5, &keys, t0).err(), Some(KeyReleaseError::AlreadyUnsealed));
    }

    #[test]
    fn capacity_forgets_oldest() {
        let mut b: OnceNonces<()> = OnceNonces::new(Duration::from_secs(10));
        let t = Instant::now();
        for i in 0..=OnceNonces::<()>::CAPACITY {
            let mut n = [0u8; 32];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            b.insert(n, t, ()).expect("inserts");
        }
        assert!(matches!(b.check(&[0; 32], t), Err(KeyReleaseError::UnknownNonce(_))));
        let mut last = [0u8; 32];
        last[..8].copy_from_slice(&(OnceNonces::<()>::CAPACITY as u64).to_le_bytes());
        assert!(b.redeem(&last, t).is_ok());
    }

    #[test]
    fn debug_is_redacted_and_errors_format() {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let d = format!("{keys:?}");
        assert!(d.contains("<redacted>") && d.contains(&hex::encode(keys.public_key())));
        let errs = [
            KeyReleaseError::TooLarge(1),
            KeyReleaseError::Malformed(postcard::Error::DeserializeUnexpectedEnd),
            KeyReleaseError::Trailing(1),
            KeyReleaseError::NonCanonical,
            KeyReleaseError::Version { found: 2 },
            KeyReleaseError::NonceLength(3),
            KeyReleaseError::Random,
            KeyReleaseError::InvalidPublicKey,
            KeyReleaseError::Decrypt,
            KeyReleaseError::UnknownNonce("ab".into()),
            KeyReleaseError::ReplayedNonce("ab".into()),
            KeyReleaseError::StaleNonce { nonce: "ab".into(), age_s: 2, ttl_s: 1 },
            KeyReleaseError::AlreadyUnsealed,
            KeyReleaseError::TooManyNonces { retry_after_s: 1 },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(s.chars().next().is_some_and(|c| !c.is_uppercase()), "{s}");
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = KeyRelease::from_bytes(&bytes) {
                prop_assert_eq!(m.to_bytes(), bytes);
            }
        }
    }
}
