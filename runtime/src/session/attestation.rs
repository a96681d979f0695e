//! Evidence for a verifier's nonce, and the nonce book a released key is checked against.
//!
//! Until the model is unsealed a 32-byte nonce is also registered for one key release,
//! before any TEE work: when every slot holds a live nonce the request is refused with
//! [`SessionError::TooManyNonces`] rather than evicting one (which would let anyone push out
//! the owner's pending nonce), and no evidence is produced for a nonce that could not be
//! registered. A nonce registered for evidence that then failed is harmless: only a key
//! wrapped to this boot's transcript opens under it, and it expires.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, GpuEvidence};
use chrysalis_proto::keyrelease::{DEFAULT_NONCE_TTL, KeyRelease, KeyReleaseError, NONCE_LEN, NonceBook};
use chrysalis_proto::seal::DataKey;

use super::{Identity, SessionError};
use crate::tee::EvidenceSource;

/// Shortest and longest nonce accepted for evidence.
pub const NONCE_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=64;

/// The TEE behind this boot's evidence and the nonces it was issued for.
pub struct Attestation {
    nonces: Mutex<NonceBook>,
    source: EvidenceSource,
    /// GPU evidence collected at boot (the log's `GpuEvidence` event commits to it).
    gpus: Vec<GpuEvidence>,
}

impl Attestation {
    /// Evidence from `source`, nonces valid for the default lifetime.
    pub fn new(source: EvidenceSource) -> Self {
        Attestation { nonces: Mutex::new(NonceBook::new(DEFAULT_NONCE_TTL)), source, gpus: Vec::new() }
    }

    /// Serve `gpus` with every evidence bundle.
    pub fn with_gpus(mut self, gpus: Vec<GpuEvidence>) -> Self {
        self.gpus = gpus;
        self
    }

    /// The evidence backend, for `/v1/health`.
    pub fn describe(&self) -> String {
        self.source.describe()
    }

    fn book(&self) -> MutexGuard<'_, NonceBook> {
        self.nonces.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Evidence binding `identity`'s event log to `nonce` (blocking: talks to the TEE).
    pub fn evidence(&self, identity: &Identity, nonce: &[u8]) -> Result<Evidence, SessionError> {
        if !NONCE_LEN_RANGE.contains(&nonce.len()) {
            return Err(SessionError::BadNonce(format!("{} bytes, expected 16 to 64", nonce.len())));
        }
        if nonce.len() == NONCE_LEN {
            let mut book = self.book();
            // Once unsealed no key is taken, so nothing is registered and a full book cannot
            // stop users (`attest proxy` uses 32-byte nonces) from verifying the served model.
            // Other refusals (a nonce already used for a key) still get evidence; only a
            // second key for that nonce is refused.
            if !book.is_unsealed()
                && let Err(KeyReleaseError::TooManyNonces { retry_after_s }) = book.issue(nonce, identity.log(), Instant::now())
            {
                return Err(SessionError::TooManyNonces { retry_after_s });
            }
        }
        let report_data = identity.log().report_data(nonce);
        let platform = self.source.platform_evidence(&report_data).map_err(SessionError::NoEvidence)?;
        identity.record_measurement(&platform);
        Ok(Evidence {
            version: EVIDENCE_VERSION,
            nonce: nonce.to_vec(),
            platform,
            event_log: identity.log().clone(),
            gpus: self.gpus.clone(),
        })
    }

    /// Open a released key: it must be wrapped to `identity`'s key and transcript under a
    /// nonce this runtime issued and that was not used yet.
    pub fn accept(&self, msg: &KeyRelease, identity: &Identity) -> Result<DataKey, KeyReleaseError> {
        self.book().accept(msg, identity.keys(), Instant::now())
    }

    /// The model is served: take no further key and register no further nonce.
    pub fn close(&self) {
        self.book().mark_unsealed();
    }
}
