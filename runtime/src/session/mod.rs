//! The attested session of one boot, as three parts with one job each:
//!
//! - [`Identity`]: what this boot is — the event log measured at boot and its digest, the
//!   X25519 key pair requests and data keys are sealed to, the receipt signer, and the
//!   launch measurement its own evidence reported. The private keys never leave it.
//! - [`Attestation`]: evidence for a verifier's nonce, and the nonce book a released key is
//!   checked against.
//! - [`Unsealer`]: the stage machine from a released key to a served model (unseal → load),
//!   with typed errors; plaintext weights go from the unsealer straight to the model loader.
//!
//! [`Session`] ties them together for the HTTP endpoints and pull mode.

mod attestation;
mod identity;
mod unseal;

use chrysalis_proto::channel::crypto::{OpenedRequest, ResponseSealer, Target};
use chrysalis_proto::channel::receipt::{Receipt, ReceiptSigner};
use chrysalis_proto::eventlog::{Digest384, EventLog};
use chrysalis_proto::evidence::{Evidence, GpuEvidence};
use chrysalis_proto::keyrelease::{KeyRelease, KeyReleaseError, Nonce, PUBLIC_KEY_LEN, RuntimeKeyPair, open_renewal};
use chrysalis_proto::seal::{DataKey, UnsealedFiles};
use serde::Serialize;

use crate::bundle::Bundle;
use crate::tee::EvidenceSource;

pub use attestation::{Attestation, Client, MAX_EVIDENCE_IN_FLIGHT, NONCE_LEN_RANGE, PER_CLIENT_NONCES};
pub use identity::{Identity, OpenError, ReceiptRequest};
pub use unseal::{Milestones, Stage, StopReason, UnsealError, Unsealer};

/// Loads unsealed files into the inference engine; returns the served model's id.
pub trait ModelSink: Send + Sync {
    /// Load and install the model. The files are dropped (and zeroized) afterwards.
    fn load(&self, files: UnsealedFiles) -> anyhow::Result<String>;

    /// Unseal and load in one step, for a model that lives in device memory (the staged
    /// unseal into GPU memory, [`Bundle::unseal_staged`]); `unsealed(plaintext bytes)` is
    /// called when decryption is done. `None` (the default): this sink loads from host
    /// memory, so the session unseals the whole bundle and calls [`ModelSink::load`].
    fn load_bundle(
        &self,
        bundle: &Bundle,
        key: &DataKey,
        measured: &Digest384,
        unsealed: &mut dyn FnMut(u64),
    ) -> Option<Result<String, BundleLoadError>> {
        let _ = (bundle, key, measured, unsealed);
        None
    }

    /// Stop serving the installed model and drop it ([`Unsealer::stop`]): the key lease
    /// ended for `reason`. Requests already generating finish; new ones are refused.
    fn unload(&self, reason: &StopReason) {
        let _ = reason;
    }
}

/// Why [`ModelSink::load_bundle`] failed: in decryption (the bundle) or in loading (the
/// model, the device).
#[derive(Debug)]
pub enum BundleLoadError {
    /// The bundle did not unseal: changed since boot, tampered, wrong key.
    Unseal(anyhow::Error),
    /// The files unsealed but do not load (malformed, out of device memory).
    Load(anyhow::Error),
}

/// Why a session request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The nonce is missing, not hex, or of a length outside 16..=64 bytes.
    #[error("bad nonce: {0}")]
    BadNonce(String),
    /// No evidence can be produced (no TEE, or the TEE failed).
    #[error("evidence unavailable: {0:#}")]
    NoEvidence(#[source] anyhow::Error),
    /// The key release message was refused.
    #[error("key refused: {0}")]
    Key(#[from] KeyReleaseError),
    /// Unsealing or loading is already running.
    #[error("a key is already being processed (unsealing or loading)")]
    Busy,
    /// The model is already served: this boot takes no further key. (The wording keeps
    /// "already unsealed", which owners' scripts and tests/tests/attest.rs look for.)
    #[error("model already unsealed (serving {0}): refusing another key")]
    AlreadyServing(String),
    /// Every nonce slot holds a live nonce: evidence for a new 32-byte nonce is refused
    /// until the oldest expires.
    #[error("too many outstanding nonces: retry in {retry_after_s} s")]
    TooManyNonces {
        /// Seconds until a slot frees.
        retry_after_s: u64,
    },
    /// This client registered its share of key-release nonces in the last nonce lifetime.
    #[error(
        "this client asked for {} key-release nonces in the last {} s, the most one client may: retry in {retry_after_s} s",
        attestation::PER_CLIENT_NONCES,
        chrysalis_proto::keyrelease::DEFAULT_NONCE_TTL.as_secs()
    )]
    ClientNonces {
        /// Seconds until its oldest one expires.
        retry_after_s: u64,
    },
    /// The most evidence requests are being served at once.
    #[error("{} evidence requests are in progress, the most served at once: retry in 1 s", attestation::MAX_EVIDENCE_IN_FLIGHT)]
    EvidenceBusy,
    /// There is no bundle to unseal.
    #[error("no sealed bundle: {0}")]
    NoBundle(String),
    /// The key opened but the bundle did not unseal (tampered, truncated, wrong bundle).
    #[error("unsealing failed: {0}")]
    Unseal(#[from] UnsealError),
    /// The bundle unsealed but the model did not load.
    #[error("loading the model failed: {0:#}")]
    Load(#[source] anyhow::Error),
    /// The model's key lease ended: this boot serves no model any more.
    #[error("the model is no longer served ({0}): this boot takes no further key")]
    Stopped(&'static str),
    /// A lease renewal did not open under this boot's key and transcript.
    #[error("lease renewal refused: {0}")]
    Renewal(KeyReleaseError),
}

impl SessionError {
    /// A short, fixed name for the kind of failure: what `/v1/health` shows to anyone, while
    /// the details (file names, chunk numbers, loader messages) stay on the console log.
    pub fn class(&self) -> &'static str {
        match self {
            SessionError::BadNonce(_) => "bad_nonce",
            SessionError::NoEvidence(_) => "no_evidence",
            SessionError::Key(_) => "key_refused",
            SessionError::Busy => "busy",
            SessionError::AlreadyServing(_) => "already_serving",
            SessionError::TooManyNonces { .. } => "too_many_nonces",
            SessionError::ClientNonces { .. } => "client_nonces",
            SessionError::EvidenceBusy => "evidence_busy",
            SessionError::NoBundle(_) => "no_bundle",
            SessionError::Unseal(_) => "unseal_failed",
            SessionError::Load(_) => "load_failed",
            SessionError::Stopped(_) => "stopped",
            SessionError::Renewal(_) => "renewal_failed",
        }
    }
}

/// Snapshot for /v1/health (unauthenticated: it carries no error details).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Current stage.
    pub stage: Stage,
    /// The class of the last unseal/load failure, if any ([`SessionError::class`], e.g.
    /// `unseal_failed`); the runtime keeps serving attestation.
    pub last_error: Option<&'static str>,
    /// Milestone timings.
    pub milestones: Milestones,
    /// The evidence backend.
    pub tee: String,
}

/// The session of this boot.
pub struct Session {
    identity: Identity,
    attestation: Attestation,
    unsealer: Unsealer,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("events", &self.identity.log().events.len())
            .field("tee", &self.attestation.describe())
            .finish()
    }
}

impl Session {
    /// A session over what boot measured.
    pub fn new(
        log: EventLog,
        keys: RuntimeKeyPair,
        source: EvidenceSource,
        bundle: Result<Bundle, String>,
        sink: Box<dyn ModelSink>,
    ) -> Self {
        Session {
            identity: Identity::new(log, keys),
            attestation: Attestation::new(source),
            unsealer: Unsealer::new(bundle, sink),
        }
    }

    /// The session of a runtime on a key lease: the data key is kept after unsealing so
    /// that renewals can be checked against it ([`Session::renew`]).
    pub fn on_lease(mut self) -> Self {
        self.unsealer = self.unsealer.keeping_key_for_lease();
        self
    }

    /// A lease renewal for `nonce` (a [`renewal_nonce`](chrysalis_proto::keyrelease::renewal_nonce)
    /// this runtime bound): it must open under this boot's key and transcript, to the key
    /// the model was unsealed with. `Ok(true)`: renewed. `Ok(false)`: nothing is served on a
    /// lease. A renewal with another key stops serving ([`StopReason::KeyChanged`]).
    pub fn renew(&self, nonce: &Nonce, msg: &KeyRelease) -> Result<bool, SessionError> {
        let key = open_renewal(msg, nonce, self.identity.keys(), self.identity.log()).map_err(SessionError::Renewal)?;
        match self.unsealer.check_renewal(&key) {
            Ok(renewed) => Ok(renewed),
            Err(reason) => {
                self.stop(&reason);
                Err(SessionError::Stopped(reason.class()))
            }
        }
    }

    /// Stop serving for `reason` (lease ended): the model is dropped; final for this boot.
    pub fn stop(&self, reason: &StopReason) {
        if self.unsealer.stop(reason) {
            log::warn!("lease: stopped serving: {reason}; the model and its key were dropped");
        }
    }

    /// The session with a receipt signer whose `ReceiptKey` event is already in the log.
    pub fn with_receipt_signer(mut self, signer: ReceiptSigner) -> Self {
        self.identity = self.identity.with_receipt_signer(signer);
        self
    }

    /// Serve `gpus` with every evidence bundle (the GPU evidence whose `GpuEvidence` event
    /// is in the log).
    pub fn with_gpus(mut self, gpus: Vec<GpuEvidence>) -> Self {
        self.attestation = self.attestation.with_gpus(gpus);
        self
    }

    /// The event log measured at boot.
    pub fn log(&self) -> &EventLog {
        self.identity.log()
    }

    /// This boot's event-log digest `D_n` (the channel's key id).
    pub fn log_digest(&self) -> Digest384 {
        self.identity.log_digest()
    }

    /// Open a request sealed to this runtime's key for `target` (the encrypted channel).
    pub fn open_request(
        &self,
        target: &Target,
        enc: &[u8; PUBLIC_KEY_LEN],
        ciphertext: &[u8],
    ) -> Result<(OpenedRequest, ResponseSealer), OpenError> {
        self.identity.open_request(target, enc, ciphertext)
    }

    /// Sign the receipt of one response, naming the served model (if any).
    pub fn sign_receipt(&self, request: ReceiptRequest, status: u16, response_sha384: Digest384) -> Receipt {
        let model = self.unsealer.serving().unwrap_or_default();
        self.identity.sign_receipt(model, request, status, response_sha384)
    }

    /// Current status.
    pub fn status(&self) -> Status {
        let (stage, last_error, milestones) = self.unsealer.snapshot();
        Status { stage, last_error, milestones, tee: self.attestation.describe() }
    }

    /// Evidence for a verifier's nonce (blocking: talks to the TEE); see
    /// [`Attestation::evidence`].
    pub fn evidence(&self, nonce: &[u8], client: Client) -> Result<Evidence, SessionError> {
        let evidence = self.attestation.evidence(&self.identity, nonce, client)?;
        self.unsealer.record_evidence_served();
        Ok(evidence)
    }

    /// Accept a released key, unseal the bundle and load the model (blocking). On failure
    /// nothing decrypted is kept and the runtime keeps serving attestation.
    ///
    /// `POST /v1/key` is unauthenticated, so a key that does not open changes nothing: the
    /// stage moves to unsealing only once the key has opened under a nonce this runtime
    /// issued (checked while holding the stage, so no junk key can make the owner's key find
    /// the runtime busy), and a key posted while unsealing, loading or serving is refused
    /// before anything else is looked at.
    pub fn release(&self, msg: &KeyRelease) -> Result<String, SessionError> {
        let measured = self.identity.bundle_header();
        self.unsealer.run(measured, || self.attestation.accept(msg, &self.identity), || self.attestation.close())
    }
}

/// A session over a real sealed bundle in a temporary directory, with a stand-in for the
/// simulated TEE's port (for this crate's tests).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod fixture {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
    use chrysalis_proto::keyrelease::{KeyRelease, Nonce, RuntimeKeyPair, Transcript, wrap_key};
    use chrysalis_proto::seal::{DataKey, SealOptions, UnsealedFiles, seal_to_vec};
    use chrysalis_proto::sim_transport;

    use super::{BundleLoadError, ModelSink, Session};
    use crate::bundle::Bundle;
    use crate::tee::EvidenceSource;

    /// Serves the bundle's model name.
    pub struct NameSink;
    impl ModelSink for NameSink {
        fn load(&self, files: UnsealedFiles) -> anyhow::Result<String> {
            Ok(files.model_name.clone())
        }
    }

    /// Loads through the staged unseal into host memory posing as a device (what the GPU
    /// path does), checks the file's bytes there and serves the bundle's model name.
    pub struct StagedNameSink;
    impl ModelSink for StagedNameSink {
        fn load(&self, _: UnsealedFiles) -> anyhow::Result<String> {
            anyhow::bail!("this sink loads only through load_bundle")
        }

        fn load_bundle(
            &self,
            bundle: &Bundle,
            key: &DataKey,
            measured: &chrysalis_proto::eventlog::Digest384,
            unsealed: &mut dyn FnMut(u64),
        ) -> Option<Result<String, BundleLoadError>> {
            use crate::infer::staged::{DeviceSink, HostMemory};
            let mut sink = DeviceSink::new(HostMemory::default(), 1 << 20);
            Some((|| {
                let got = bundle.unseal_staged(key, measured, &mut sink).map_err(BundleLoadError::Unseal)?;
                unsealed(got.files.iter().map(|f| f.size).sum());
                let model = sink.finish_model().map_err(|e| BundleLoadError::Load(e.into()))?;
                match model.host.get("weights.bin").map(|b| b.as_slice()) {
                    Some(b"weights A") => Ok(got.model_name),
                    other => Err(BundleLoadError::Load(anyhow::anyhow!("weights.bin holds {other:?}"))),
                }
            })())
        }
    }

    /// A fresh directory under the system's temporary directory.
    pub fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "chrysalis-runtime-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A file that answers like the simulated TEE's port: `simtee::report` writes its request
    /// over the first bytes and reads the canned answer that follows.
    pub fn fake_tee_port(dir: &Path) -> EvidenceSource {
        let port = dir.join("vport");
        let mut bytes = vec![0u8; sim_transport::REQUEST_LEN];
        bytes.extend(sim_transport::encode_response(Ok(&[0x5a; 64])));
        std::fs::write(&port, bytes).unwrap();
        EvidenceSource::Simulated { port }
    }

    /// A bundle of one file sealed under `key`.
    pub fn sealed(model: &str, data: &[u8], key: &DataKey) -> Vec<u8> {
        seal_to_vec(model, &[("weights.bin", data)], key, &SealOptions::default()).unwrap()
    }

    pub struct Fixture {
        pub session: Arc<Session>,
        pub dir: PathBuf,
        pub bundle_path: PathBuf,
        pub key: DataKey,
        pub public_key: [u8; 32],
    }

    impl Fixture {
        /// A session waiting for the key of the bundle "Test Model".
        pub fn new(name: &str) -> Self {
            Self::build(name, false)
        }

        /// The same, on a key lease ([`Session::on_lease`]).
        pub fn on_lease(name: &str) -> Self {
            Self::build(name, true)
        }

        /// A session waiting for the key, loading through `sink`.
        pub fn with_sink(name: &str, sink: Box<dyn ModelSink>) -> Self {
            Self::build_with(name, false, sink)
        }

        fn build(name: &str, lease: bool) -> Self {
            Self::build_with(name, lease, Box::new(NameSink))
        }

        fn build_with(name: &str, lease: bool, sink: Box<dyn ModelSink>) -> Self {
            let dir = temp_dir(name);
            let key = DataKey::generate().unwrap();
            let bundle_path = dir.join("bundle.sealed");
            std::fs::write(&bundle_path, sealed("Test Model", b"weights A", &key)).unwrap();
            let bundle = Bundle::open(&bundle_path).unwrap();
            let keys = RuntimeKeyPair::generate().unwrap();
            let public_key = keys.public_key();
            let mut log = EventLog::default();
            log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
            log.extend(Event::digest_of(EventKind::BundleHeader, &bundle.header.raw));
            log.extend(keys.public_key_event());
            let session = Session::new(log, keys, fake_tee_port(&dir), Ok(bundle), sink);
            let session = if lease { session.on_lease() } else { session };
            Fixture { session: Arc::new(session), dir, bundle_path, key, public_key }
        }

        /// What the owner sends after verifying evidence for `nonce`.
        pub fn owner_release(&self, nonce: Nonce) -> KeyRelease {
            let w = wrap_key(&self.key, &self.public_key, &Transcript::for_log(&nonce, self.session.log())).unwrap();
            KeyRelease::new(nonce, &w)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The 32-byte nonce numbered `i`.
    pub fn nonce(i: u32) -> Nonce {
        let mut n = [0xeeu8; 32];
        n[..4].copy_from_slice(&i.to_le_bytes());
        n
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::fixture::{Fixture, nonce, sealed};
    use super::*;
    use chrysalis_proto::eventlog::EventKind;
    use chrysalis_proto::keyrelease::{Nonce, Transcript, wrap_key};

    /// The provider swaps the bundle file after the runtime measured its header at boot,
    /// for another bundle sealed under the same key: the released key must not unseal it.
    #[test]
    fn a_bundle_swapped_after_boot_is_not_unsealed() {
        let f = Fixture::new("swap");
        let measured = f.session.log().find(EventKind::BundleHeader).map(|e| e.digest).unwrap();
        let other = sealed("Other Model", b"weights B", &f.key);
        let other_digest = chrysalis_proto::seal::read_header(&other).unwrap().digest();
        std::fs::write(&f.bundle_path, &other).unwrap();
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        let err = f.session.release(&f.owner_release(nonce(1))).unwrap_err();
        let want = format!(
            "the bundle on disk changed since boot: header sha384 {}, measured {}",
            hex::encode(other_digest),
            hex::encode(measured)
        );
        assert!(matches!(&err, SessionError::Unseal(_)) && err.to_string().contains(&want), "{err}");
        let st = f.session.status();
        assert_eq!(st.stage, Stage::WaitingForKey);
        assert!(st.milestones.unsealed.is_none() && st.milestones.model_loaded.is_none());
        // /v1/health shows only the class of the failure, not the details.
        assert_eq!(st.last_error, Some("unseal_failed"));
        let json = serde_json::to_string(&st).unwrap();
        assert!(!json.contains("changed since boot") && !json.contains(&hex::encode(measured)), "{json}");
        assert!(
            f.session
                .sign_receipt(ReceiptRequest { target: "t".into(), id: [0; 16], sha384: [0; 48] }, 200, [0; 48])
                .body
                .model
                .is_empty()
        );
    }

    /// A sink whose model lives in device memory gets the bundle through the staged unseal,
    /// with the same checks: the milestones are set, and a bundle swapped after boot is
    /// refused before it reaches the device.
    #[test]
    fn a_device_memory_sink_unseals_chunk_by_chunk_with_the_same_checks() {
        use super::fixture::StagedNameSink;
        let f = Fixture::with_sink("staged", Box::new(StagedNameSink));
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        let st = f.session.status();
        assert_eq!(st.stage, Stage::Serving { model: "Test Model".into() });
        assert_eq!(st.milestones.plaintext_bytes, Some(b"weights A".len() as u64));
        assert!(st.milestones.unsealed.is_some() && st.milestones.model_loaded.is_some());

        let g = Fixture::with_sink("staged-swap", Box::new(StagedNameSink));
        std::fs::write(&g.bundle_path, sealed("Other Model", b"weights B", &g.key)).unwrap();
        g.session.evidence(&nonce(1), Client::Local).unwrap();
        let err = g.session.release(&g.owner_release(nonce(1))).unwrap_err();
        assert!(matches!(&err, SessionError::Unseal(_)) && err.to_string().contains("changed since boot"), "{err}");
        let st = g.session.status();
        assert_eq!(st.stage, Stage::WaitingForKey);
        assert_eq!(st.last_error, Some("unseal_failed"));
        assert!(st.milestones.unsealed.is_none());
    }

    /// On a lease, a renewal for a bound nonce that carries the model's key renews; an old
    /// renewal replayed for a new challenge does not open; a renewal with another key stops
    /// serving for good (no key, no renewal, no model in receipts afterwards).
    #[test]
    fn a_lease_renews_only_with_the_models_key_and_a_stop_is_final() {
        use chrysalis_proto::keyrelease::renewal_nonce;
        let f = Fixture::on_lease("lease");
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        let first = renewal_nonce(&[1; 32], &[2; 32]);
        assert!(f.session.renew(&first, &f.owner_release(first)).unwrap());
        let second = renewal_nonce(&[3; 32], &[4; 32]);
        let replayed = f.session.renew(&second, &f.owner_release(first)).unwrap_err();
        assert!(matches!(replayed, SessionError::Renewal(KeyReleaseError::UnknownNonce(_))), "{replayed}");
        assert_eq!(f.session.status().stage, Stage::Serving { model: "Test Model".into() });

        let other = chrysalis_proto::seal::DataKey::generate().unwrap();
        let w = wrap_key(&other, &f.public_key, &Transcript::for_log(&second, f.session.log())).unwrap();
        let e = f.session.renew(&second, &KeyRelease::new(second, &w)).unwrap_err();
        assert!(matches!(e, SessionError::Stopped("key_changed")), "{e}");
        assert_eq!(f.session.status().stage, Stage::Stopped { reason: "key_changed" });

        // Final for the boot.
        let third = renewal_nonce(&[5; 32], &[6; 32]);
        assert!(!f.session.renew(&third, &f.owner_release(third)).unwrap(), "nothing left to renew");
        f.session.evidence(&nonce(2), Client::Local).unwrap();
        let e = f.session.release(&f.owner_release(nonce(2))).unwrap_err();
        assert!(matches!(e, SessionError::Stopped("key_changed")), "{e}");
        let receipt = f.session.sign_receipt(ReceiptRequest { target: "t".into(), id: [0; 16], sha384: [0; 48] }, 503, [0; 48]);
        assert!(receipt.body.model.is_empty());
        let json = serde_json::to_value(f.session.status()).unwrap();
        assert_eq!(json["stage"], serde_json::json!({"state": "stopped", "reason": "key_changed"}));
    }

    /// Without a lease the key is not kept: a "renewal" renews nothing, and stop is a no-op
    /// before serving.
    #[test]
    fn without_a_lease_no_key_is_kept() {
        use chrysalis_proto::keyrelease::renewal_nonce;
        let f = Fixture::new("nolease");
        assert!(!f.session.unsealer.stop(&StopReason::LeaseExpired { lease_s: 3 }), "not serving yet");
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        let n = renewal_nonce(&[1; 32], &[2; 32]);
        assert!(!f.session.renew(&n, &f.owner_release(n)).unwrap());
        f.session.stop(&StopReason::RenewalRefused("revoked".into()));
        assert_eq!(f.session.status().stage, Stage::Stopped { reason: "renewal_refused" });
    }

    /// The bundle measured at boot, left in place, unseals and is served.
    #[test]
    fn the_measured_bundle_unseals() {
        let f = Fixture::new("same");
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        assert_eq!(f.session.release(&f.owner_release(nonce(1))).unwrap(), "Test Model");
        assert_eq!(f.session.status().stage, Stage::Serving { model: "Test Model".into() });
    }

    fn junk_keys(f: &Fixture, owner_nonce: Nonce) -> Vec<KeyRelease> {
        let mut garbage = f.owner_release(owner_nonce);
        garbage.ciphertext = [0x41; chrysalis_proto::keyrelease::WRAPPED_LEN];
        let mut other_log = f.session.log().clone();
        other_log.extend(chrysalis_proto::eventlog::Event::digest_of(EventKind::Config, b"x"));
        let w = wrap_key(&f.key, &f.public_key, &Transcript::for_log(&owner_nonce, &other_log)).unwrap();
        vec![
            f.owner_release(nonce(999)),      // never issued
            garbage,                          // the owner's nonce, a key that does not open
            KeyRelease::new(owner_nonce, &w), // the right key for another log state
        ]
    }

    /// Unauthenticated junk posted to /v1/key before the owner's key changes nothing: no
    /// stage, no error, no milestone, and the owner's nonce stays usable.
    #[test]
    fn junk_keys_change_nothing_and_the_owner_key_still_opens() {
        let f = Fixture::new("junk");
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        for junk in junk_keys(&f, nonce(1)).iter().cycle().take(30) {
            assert!(matches!(f.session.release(junk), Err(SessionError::Key(_))));
            let st = f.session.status();
            assert_eq!(st.stage, Stage::WaitingForKey);
            assert_eq!(st.last_error, None, "a junk key left an error");
            assert!(st.milestones.key_received.is_none());
        }
        assert_eq!(f.session.release(&f.owner_release(nonce(1))).unwrap(), "Test Model");
    }

    /// Junk keys arriving while the owner's key is processed never make it fail.
    #[test]
    fn a_burst_of_junk_does_not_make_the_owner_key_find_the_runtime_busy() {
        for round in 0..20 {
            let f = Fixture::new("burst");
            f.session.evidence(&nonce(1), Client::Local).unwrap();
            let junk = junk_keys(&f, nonce(1));
            let stop = std::sync::atomic::AtomicBool::new(false);
            let owner = f.owner_release(nonce(1));
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            for j in &junk {
                                let _ = f.session.release(j);
                            }
                        }
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
                let r = f.session.release(&owner);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                assert_eq!(r.map_err(|e| e.to_string()), Ok("Test Model".to_owned()), "round {round}");
            });
            assert_eq!(f.session.status().stage, Stage::Serving { model: "Test Model".into() });
        }
    }

    /// Once serving, a further key (even one that would open) is refused as such and changes
    /// nothing: the stage, and the model named in receipts, stay.
    #[test]
    fn a_key_after_serving_is_refused_and_changes_nothing() {
        let f = Fixture::new("after");
        f.session.evidence(&nonce(1), Client::Local).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        f.session.evidence(&nonce(2), Client::Local).unwrap();
        for msg in [f.owner_release(nonce(1)), f.owner_release(nonce(2)), f.owner_release(nonce(3))] {
            let err = f.session.release(&msg).unwrap_err();
            assert!(matches!(&err, SessionError::AlreadyServing(m) if m == "Test Model"), "{err}");
            let st = f.session.status();
            assert_eq!(st.stage, Stage::Serving { model: "Test Model".into() });
            assert_eq!(st.last_error, None);
            assert_eq!(
                f.session
                    .sign_receipt(ReceiptRequest { target: "t".into(), id: [0; 16], sha384: [0; 48] }, 200, [0; 48])
                    .body
                    .model,
                "Test Model"
            );
        }
    }

    /// 300 evidence requests after the owner's cannot evict the owner's nonce: the book
    /// refuses new nonces once full, and the owner's key still opens.
    #[test]
    fn a_nonce_flood_cannot_evict_the_owners_nonce() {
        let f = Fixture::new("flood");
        f.session.evidence(&nonce(0), Client::Local).unwrap();
        let (mut served, mut refused) = (0, 0);
        for i in 1..=300 {
            match f.session.evidence(&nonce(i), Client::Local) {
                Ok(_) => served += 1,
                Err(SessionError::TooManyNonces { retry_after_s }) => {
                    assert!((1..=300).contains(&retry_after_s), "{retry_after_s}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let capacity = chrysalis_proto::keyrelease::OnceNonces::<()>::CAPACITY;
        assert_eq!((served, refused), (capacity - 1, 300 - (capacity - 1)));
        // Short nonces are never registered, so they are still served.
        assert!(f.session.evidence(&[1; 16], Client::Local).is_ok());
        assert_eq!(f.session.release(&f.owner_release(nonce(0))).unwrap(), "Test Model");
        // Once serving, no key is taken and no nonce registered: evidence is served again.
        assert!(f.session.evidence(&nonce(1000), Client::Local).is_ok());
    }

    /// One client flooding gets its own 429s after its share; the book is not filled, and the
    /// owner, from another address, gets a nonce and releases the key.
    #[test]
    fn one_client_cannot_hold_off_the_owner() {
        let f = Fixture::new("per-client");
        let flooder = Client::of("203.0.113.7".parse().unwrap());
        let (mut served, mut refused) = (0, 0);
        for i in 1..=300 {
            match f.session.evidence(&nonce(i), flooder) {
                Ok(_) => served += 1,
                Err(e @ SessionError::ClientNonces { retry_after_s }) => {
                    assert!((1..=300).contains(&retry_after_s), "{retry_after_s}");
                    assert!(e.to_string().contains("the most one client may"), "{e}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((served, refused), (PER_CLIENT_NONCES, 300 - PER_CLIENT_NONCES));
        // Another address of the same IPv6 /64 counts as the same client.
        let a = Client::of("2001:db8:1:2::1".parse().unwrap());
        assert_eq!(a, Client::of("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_ne!(a, Client::of("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(Client::of("::ffff:203.0.113.7".parse().unwrap()), flooder);
        let owner = Client::of("198.51.100.1".parse().unwrap());
        f.session.evidence(&nonce(5000), owner).unwrap();
        assert_eq!(f.session.release(&f.owner_release(nonce(5000))).unwrap(), "Test Model");
    }
}
