//! The stage machine from a released key to a served model:
//!
//! ```text
//! NoBundle                      (no sealed bundle: attestation only, forever)
//! WaitingForKey ──key opens──▶ Unsealing ──▶ Loading ──▶ Serving ──lease ends──▶ Stopped
//!       ▲                          │             │
//!       └──────── failure ─────────┴─────────────┘   (last_error = its class)
//! ```
//!
//! A key is looked at only in `WaitingForKey`, and the stage moves only once the key has
//! opened (the `accept` step runs while the stage is held), so junk keys change nothing and
//! cannot make the owner's key find the runtime busy. One boot serves one model. On a lease
//! the data key is kept (zeroized when dropped) to check renewals against; `Stopped` drops
//! the model and the key and is final for the boot.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use chrysalis_proto::eventlog::Digest384;
use chrysalis_proto::keyrelease::KeyReleaseError;
use chrysalis_proto::seal::DataKey;
use serde::Serialize;

use super::{BundleLoadError, ModelSink, SessionError};
use crate::bundle::Bundle;
use crate::sys;

/// Where the runtime is on the way from boot to serving.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stage {
    /// No sealed bundle is configured or readable: attestation works, inference never will.
    NoBundle {
        /// Why.
        why: String,
    },
    /// Waiting for the owner to verify the evidence and release the key.
    WaitingForKey,
    /// Decrypting the bundle into memory.
    Unsealing,
    /// Building the model from the unsealed files.
    Loading,
    /// The model is served.
    Serving {
        /// Its id in the API.
        model: String,
    },
    /// The model was served and is no longer: its key lease ended. Final for this boot.
    Stopped {
        /// Why ([`StopReason::class`]).
        reason: &'static str,
    },
}

/// Why a runtime on a lease stopped serving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The key service refused a renewal (the owner revoked this node or its image).
    RenewalRefused(String),
    /// No renewal succeeded for a whole lease period.
    LeaseExpired {
        /// The lease, in seconds.
        lease_s: u32,
    },
    /// A renewal opened to another key than the one the model was unsealed with.
    KeyChanged,
}

impl StopReason {
    /// The fixed name `/v1/health` and API errors show.
    pub fn class(&self) -> &'static str {
        match self {
            StopReason::RenewalRefused(_) => "renewal_refused",
            StopReason::LeaseExpired { .. } => "lease_expired",
            StopReason::KeyChanged => "key_changed",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::RenewalRefused(why) => write!(f, "the key service refused to renew the lease: {why}"),
            StopReason::LeaseExpired { lease_s } => write!(f, "no lease renewal succeeded for {lease_s} s"),
            StopReason::KeyChanged => f.write_str("a renewal carried another data key than the one the model was unsealed with"),
        }
    }
}

/// Seconds since kernel start at each milestone (for `bench e2e`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Milestones {
    /// First evidence served.
    pub evidence_served: Option<f64>,
    /// A key opened.
    pub key_received: Option<f64>,
    /// The bundle was decrypted and checked.
    pub unsealed: Option<f64>,
    /// The model was loaded and installed.
    pub model_loaded: Option<f64>,
    /// Bytes of plaintext unsealed (the model's files).
    pub plaintext_bytes: Option<u64>,
    /// This process's resident memory (bytes) just before unsealing: the runtime itself.
    pub rss_before_unseal: Option<u64>,
    /// This process's peak resident memory (bytes) once unsealed, and once loaded: what
    /// unsealing and loading cost against `plaintext_bytes`.
    pub peak_rss_unsealed: Option<u64>,
    /// See `peak_rss_unsealed`.
    pub peak_rss_loaded: Option<u64>,
}

/// Why an opened key did not unseal the bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsealError {
    /// The event log measures no bundle header, so nothing could be checked against it.
    #[error("the event log measures no bundle header")]
    NotMeasured,
    /// The bundle on disk does not unseal under the key against the measured header
    /// (changed since boot, tampered, truncated, or another bundle).
    #[error("{0:#}")]
    Bundle(#[source] anyhow::Error),
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// The key the model was unsealed with, kept only on a lease (to check renewals).
    lease_key: Option<DataKey>,
    /// The class of the last unseal/load failure ([`SessionError::class`]); the details go
    /// to the console log only.
    last_error: Option<&'static str>,
    milestones: Milestones,
}

/// The unseal stage machine over this boot's bundle and model loader.
pub struct Unsealer {
    bundle: Result<Bundle, String>,
    state: Mutex<State>,
    sink: Box<dyn ModelSink>,
    /// Keep the data key after unsealing, for lease renewals.
    keep_key: bool,
}

impl Unsealer {
    /// Waiting for a key for `bundle` (or for nothing, when there is no bundle).
    pub fn new(bundle: Result<Bundle, String>, sink: Box<dyn ModelSink>) -> Self {
        let stage = match &bundle {
            Ok(_) => Stage::WaitingForKey,
            Err(why) => Stage::NoBundle { why: why.clone() },
        };
        let state = State { stage, lease_key: None, last_error: None, milestones: Milestones::default() };
        Unsealer { bundle, state: Mutex::new(state), sink, keep_key: false }
    }

    /// Keep the data key after unsealing so that lease renewals can be checked against it.
    pub fn keeping_key_for_lease(mut self) -> Self {
        self.keep_key = true;
        self
    }

    /// A lease renewal opened to `key`: it must be the key the model was unsealed with
    /// (constant-time comparison). `Ok(false)` when nothing is served on a lease.
    pub fn check_renewal(&self, key: &DataKey) -> Result<bool, StopReason> {
        match &self.state().lease_key {
            Some(k) if k == key => Ok(true),
            Some(_) => Err(StopReason::KeyChanged),
            None => Ok(false),
        }
    }

    /// Stop serving for `reason`: the model is unloaded, the kept key dropped (zeroized).
    /// Final for this boot; a second call changes nothing. Returns whether this call stopped.
    pub fn stop(&self, reason: &StopReason) -> bool {
        {
            let mut s = self.state();
            if !matches!(s.stage, Stage::Serving { .. }) {
                return false;
            }
            s.stage = Stage::Stopped { reason: reason.class() };
            s.lease_key = None;
        }
        self.sink.unload(reason);
        true
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stage, last error class and milestones.
    pub fn snapshot(&self) -> (Stage, Option<&'static str>, Milestones) {
        let s = self.state();
        (s.stage.clone(), s.last_error, s.milestones.clone())
    }

    /// The served model's id, once serving.
    pub fn serving(&self) -> Option<String> {
        match &self.state().stage {
            Stage::Serving { model } => Some(model.clone()),
            _ => None,
        }
    }

    /// Note the first evidence served.
    pub fn record_evidence_served(&self) {
        self.state().milestones.evidence_served.get_or_insert_with(sys::uptime);
    }

    /// Take a key: `accept` opens it (run while the stage is held, only in `WaitingForKey`),
    /// then unseal against the `measured` header and load; `close` runs once the model is
    /// served. On failure the stage returns to `WaitingForKey` with the failure's class.
    pub fn run(
        &self,
        measured: Option<Digest384>,
        accept: impl FnOnce() -> Result<DataKey, KeyReleaseError>,
        close: impl FnOnce(),
    ) -> Result<String, SessionError> {
        let bundle = self.bundle.as_ref().map_err(|why| SessionError::NoBundle(why.clone()))?;
        let key = {
            let mut s = self.state();
            match &s.stage {
                Stage::Unsealing | Stage::Loading => return Err(SessionError::Busy),
                Stage::Serving { model } => return Err(SessionError::AlreadyServing(model.clone())),
                Stage::Stopped { reason } => return Err(SessionError::Stopped(reason)),
                Stage::NoBundle { why } => return Err(SessionError::NoBundle(why.clone())),
                Stage::WaitingForKey => {}
            }
            // Lock order: state, then the nonce book inside `accept` (nothing takes them the
            // other way round).
            let key = accept()?;
            s.milestones.key_received = Some(sys::uptime());
            s.stage = Stage::Unsealing;
            key
        };
        let result = self.unseal_and_load(bundle, measured, key, close);
        let mut s = self.state();
        match &result {
            Ok(model) => {
                s.stage = Stage::Serving { model: model.clone() };
                s.last_error = None;
            }
            Err(e) => {
                // /v1/health shows only the class; the callers (`POST /v1/key`, pull mode) log
                // the details to the console.
                s.stage = Stage::WaitingForKey;
                s.last_error = Some(e.class());
            }
        }
        result
    }

    fn unseal_and_load(
        &self,
        bundle: &Bundle,
        measured: Option<Digest384>,
        key: DataKey,
        close: impl FnOnce(),
    ) -> Result<String, SessionError> {
        let measured = measured.ok_or(UnsealError::NotMeasured)?;
        let start = Instant::now();
        self.state().milestones.rss_before_unseal = sys::rss();
        let mut unsealed = |bytes: u64| {
            let peak = sys::peak_rss();
            log::info!(
                "unseal: {bytes} B in {} ms, chunk by chunk into device memory, peak RSS {} MiB",
                start.elapsed().as_millis(),
                peak.unwrap_or(0) >> 20
            );
            let mut s = self.state();
            s.milestones.unsealed = Some(sys::uptime());
            s.milestones.plaintext_bytes = Some(bytes);
            s.milestones.peak_rss_unsealed = peak;
            s.stage = Stage::Loading;
        };
        if let Some(loaded) = self.sink.load_bundle(bundle, &key, &measured, &mut unsealed) {
            let model = loaded.map_err(|e| match e {
                BundleLoadError::Unseal(e) => SessionError::from(UnsealError::Bundle(e)),
                BundleLoadError::Load(e) => SessionError::Load(e),
            })?;
            return Ok(self.loaded(model, key, close));
        }
        let files = bundle.unseal(&key, &measured).map_err(UnsealError::Bundle)?;
        let bytes: usize = files.files.iter().map(|f| f.data.len()).sum();
        let peak = sys::peak_rss();
        log::info!(
            "unseal: {} files, {bytes} B in {} ms (memory only), peak RSS {} MiB",
            files.files.len(),
            start.elapsed().as_millis(),
            peak.unwrap_or(0) >> 20
        );
        {
            let mut s = self.state();
            s.milestones.unsealed = Some(sys::uptime());
            s.milestones.plaintext_bytes = Some(bytes as u64);
            s.milestones.peak_rss_unsealed = peak;
            s.stage = Stage::Loading;
        }
        let start = Instant::now();
        let model = self.sink.load(files).map_err(SessionError::Load)?;
        log::info!("model {model} loaded in {} ms", start.elapsed().as_millis());
        Ok(self.loaded(model, key, close))
    }

    /// The model is installed: refuse every further key, keep this one on a lease.
    fn loaded(&self, model: String, key: DataKey, close: impl FnOnce()) -> String {
        // From now on every further key is refused: one boot serves one model.
        close();
        let peak = sys::peak_rss();
        log::info!("model {model} serving, peak RSS {} MiB", peak.unwrap_or(0) >> 20);
        let mut s = self.state();
        s.milestones.model_loaded = Some(sys::uptime());
        s.milestones.peak_rss_loaded = peak;
        s.lease_key = self.keep_key.then_some(key);
        model
    }
}
