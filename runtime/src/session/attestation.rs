//! Evidence for a verifier's nonce, and the nonce book a released key is checked against.
//!
//! Until the model is unsealed a 32-byte nonce is also registered for one key release,
//! before any TEE work: when every slot holds a live nonce the request is refused with
//! [`SessionError::TooManyNonces`] rather than evicting one (which would let anyone push out
//! the owner's pending nonce), and no evidence is produced for a nonce that could not be
//! registered. A nonce registered for evidence that then failed is harmless: only a key
//! wrapped to this boot's transcript opens under it, and it expires.
//!
//! Bounds, so that one caller cannot hold off everyone else (the owner included):
//! - per client ([`Client`]: an IPv4 address, or an IPv6 /64): at most
//!   [`PER_CLIENT_NONCES`] key-release nonces registered per nonce lifetime; the next one gets
//!   [`SessionError::ClientNonces`] (429) while other clients are still served;
//! - in total: the book's capacity, and at most [`MAX_EVIDENCE_IN_FLIGHT`] evidence requests
//!   talking to the TEE at once ([`SessionError::EvidenceBusy`], 429).
//!
//! The host can forge any source address, so these bounds stop network clients, not the host,
//! which can withhold the network anyway.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, GpuEvidence};
use chrysalis_proto::keyrelease::{DEFAULT_NONCE_TTL, KeyRelease, KeyReleaseError, NONCE_LEN, NonceBook};
use chrysalis_proto::seal::DataKey;

use super::{Identity, SessionError};
use crate::tee::EvidenceSource;

/// Shortest and longest nonce accepted for evidence.
pub const NONCE_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=64;
/// Key-release nonces one client may register per nonce lifetime (an owner needs one per
/// release; a few spare for retries).
pub const PER_CLIENT_NONCES: usize = 8;
/// Evidence requests served at once; more get 429 (the TEE serialises report requests anyway).
pub const MAX_EVIDENCE_IN_FLIGHT: usize = 4;
/// Clients tracked before expired entries are pruned.
const TRACKED_CLIENTS: usize = 1024;

/// Who asked for evidence, for the per-client bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address (also IPv4-mapped IPv6).
    V4(u32),
    /// The /64 prefix of an IPv6 address: one host's usual allocation.
    V6(u64),
    /// The runtime itself (pull mode), or a caller whose address is unknown (in-process tests).
    Local,
}

impl Client {
    /// The client behind a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Client::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Client::V4(u32::from(v4)),
                None => Client::V6(u64::try_from(u128::from(a) >> 64).unwrap_or(u64::MAX)),
            },
        }
    }
}

/// When each client registered its recent key-release nonces.
#[derive(Default)]
struct ClientNonces(HashMap<Client, VecDeque<Instant>>);

impl ClientNonces {
    /// Whether `client` may register one more nonce now; `Err(seconds until it may)`.
    fn check(&mut self, client: Client, now: Instant, ttl: Duration) -> Result<(), u64> {
        if self.0.len() >= TRACKED_CLIENTS {
            self.0.retain(|_, times| times.back().is_some_and(|t| now.saturating_duration_since(*t) < ttl));
        }
        let times = self.0.entry(client).or_default();
        while times.front().is_some_and(|t| now.saturating_duration_since(*t) >= ttl) {
            times.pop_front();
        }
        match times.front() {
            Some(oldest) if times.len() >= PER_CLIENT_NONCES => {
                Err(ttl.saturating_sub(now.saturating_duration_since(*oldest)).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    fn record(&mut self, client: Client, now: Instant) {
        self.0.entry(client).or_default().push_back(now);
    }
}

/// Holds one of the [`MAX_EVIDENCE_IN_FLIGHT`] slots until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TEE behind this boot's evidence and the nonces it was issued for.
pub struct Attestation {
    nonces: Mutex<NonceBook>,
    clients: Mutex<ClientNonces>,
    in_flight: AtomicUsize,
    source: EvidenceSource,
    /// GPU evidence collected at boot (the log's `GpuEvidence` event commits to it).
    gpus: Vec<GpuEvidence>,
}

impl Attestation {
    /// Evidence from `source`, nonces valid for the default lifetime.
    pub fn new(source: EvidenceSource) -> Self {
        Attestation {
            nonces: Mutex::new(NonceBook::new(DEFAULT_NONCE_TTL)),
            clients: Mutex::new(ClientNonces::default()),
            in_flight: AtomicUsize::new(0),
            source,
            gpus: Vec::new(),
        }
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

    /// Evidence binding `identity`'s event log to `nonce` for `client` (blocking: talks to
    /// the TEE).
    pub fn evidence(&self, identity: &Identity, nonce: &[u8], client: Client) -> Result<Evidence, SessionError> {
        if !NONCE_LEN_RANGE.contains(&nonce.len()) {
            return Err(SessionError::BadNonce(format!("{} bytes, expected 16 to 64", nonce.len())));
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_EVIDENCE_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SessionError::EvidenceBusy);
        }
        let _slot = InFlight(&self.in_flight);
        if nonce.len() == NONCE_LEN {
            let mut book = self.book();
            // Once unsealed no key is taken, so nothing is registered and a full book cannot
            // stop users (`attest proxy` uses 32-byte nonces) from verifying the served model.
            // Other refusals (a nonce already used for a key) still get evidence; only a
            // second key for that nonce is refused.
            if !book.is_unsealed() {
                let now = Instant::now();
                let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
                if client != Client::Local {
                    clients
                        .check(client, now, DEFAULT_NONCE_TTL)
                        .map_err(|retry_after_s| SessionError::ClientNonces { retry_after_s })?;
                }
                match book.issue(nonce, identity.log(), now) {
                    Err(KeyReleaseError::TooManyNonces { retry_after_s }) => {
                        return Err(SessionError::TooManyNonces { retry_after_s });
                    }
                    Ok(()) => clients.record(client, now),
                    Err(_) => {}
                }
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
