//! The attested session of one boot: the event log measured at boot, the ephemeral key
//! pair, the nonces evidence was issued for, and the path from a released key to a served
//! model (unseal → load). The private key never leaves this struct; plaintext weights go
//! from the unsealer straight to the model loader.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use chrysalis_attest::channel::ChannelError;
use chrysalis_attest::channel::crypto::{ResponseSealer, Target};
use chrysalis_attest::channel::receipt::{RECEIPT_VERSION, Receipt, ReceiptBody, ReceiptSigner};
use chrysalis_attest::eventlog::{DIGEST_LEN, Digest384, EventKind, EventLog};
use chrysalis_attest::evidence::{EVIDENCE_VERSION, Evidence, GpuEvidence};
use chrysalis_attest::keyrelease::{KeyRelease, KeyReleaseError, NonceBook, PUBLIC_KEY_LEN, RuntimeKeyPair};
use chrysalis_attest::seal::{DataKey, UnsealedFiles};
use serde::Serialize;

use crate::bundle::Bundle;
use crate::sys;
use crate::tee::EvidenceSource;

/// Loads unsealed files into the inference engine; returns the served model's id.
pub trait ModelSink: Send + Sync {
    /// Load and install the model. The files are dropped (and zeroized) afterwards.
    fn load(&self, files: UnsealedFiles) -> anyhow::Result<String>;
}

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
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// The class of the last unseal/load failure ([`SessionError::class`]); the details go
    /// to the console log only.
    last_error: Option<&'static str>,
    milestones: Milestones,
}

/// Why a session request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The nonce is missing, not hex, or of a length outside 16..=64 bytes.
    #[error("bad nonce: {0}")]
    BadNonce(String),
    /// No evidence can be produced (no TEE, or the TEE failed).
    #[error("evidence unavailable: {0}")]
    NoEvidence(String),
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
    /// There is no bundle to unseal.
    #[error("no sealed bundle: {0}")]
    NoBundle(String),
    /// The key opened but the bundle did not unseal (tampered, truncated, wrong bundle).
    #[error("unsealing failed: {0}")]
    Unseal(String),
    /// The bundle unsealed but the model did not load.
    #[error("loading the model failed: {0}")]
    Load(String),
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
            SessionError::NoBundle(_) => "no_bundle",
            SessionError::Unseal(_) => "unseal_failed",
            SessionError::Load(_) => "load_failed",
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

/// Shortest and longest nonce accepted for evidence.
pub const NONCE_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=64;

/// The session of this boot.
pub struct Session {
    /// The event log measured at boot.
    pub log: EventLog,
    /// GPU evidence collected at boot (CUDA builds; the log's GpuEvidence event commits to it).
    gpus: Vec<GpuEvidence>,
    keys: RuntimeKeyPair,
    nonces: Mutex<NonceBook>,
    source: EvidenceSource,
    bundle: Result<Bundle, String>,
    state: Mutex<State>,
    sink: Box<dyn ModelSink>,
    /// Signs per-response receipts (the encrypted channel); its key is in the log.
    receipts: Option<ReceiptSigner>,
    /// The launch measurement this runtime's own evidence reported (first evidence served).
    measurement: OnceLock<[u8; DIGEST_LEN]>,
    log_digest: Digest384,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("events", &self.log.events.len()).field("source", &self.source).finish()
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
        let stage = match &bundle {
            Ok(_) => Stage::WaitingForKey,
            Err(why) => Stage::NoBundle { why: why.clone() },
        };
        Session {
            log_digest: log.digest(),
            log,
            gpus: Vec::new(),
            keys,
            nonces: Mutex::new(NonceBook::new(chrysalis_attest::keyrelease::DEFAULT_NONCE_TTL)),
            source,
            bundle,
            state: Mutex::new(State { stage, last_error: None, milestones: Milestones::default() }),
            sink,
            receipts: None,
            measurement: OnceLock::new(),
        }
    }

    /// The session with a receipt signer whose `ReceiptKey` event is already in the log.
    pub fn with_receipt_signer(mut self, signer: ReceiptSigner) -> Self {
        self.receipts = Some(signer);
        self
    }

    /// This boot's event-log digest `D_n` (the channel's key id).
    pub fn log_digest(&self) -> Digest384 {
        self.log_digest
    }

    /// Open a request sealed to this runtime's key for `target` (the encrypted channel); the
    /// private key stays here.
    pub fn open_request(
        &self,
        target: &Target,
        enc: &[u8; PUBLIC_KEY_LEN],
        ciphertext: &[u8],
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, ResponseSealer), ChannelError> {
        chrysalis_attest::channel::crypto::open_request(&self.keys, &self.log_digest, target, enc, ciphertext)
    }

    /// Sign the receipt of one response: request and response hashes, with the served model,
    /// the bundle header and event-log digests and the launch measurement (empty until this
    /// runtime has produced evidence). Without a signer the signature is all zero, which no
    /// verifier accepts.
    pub fn sign_receipt(&self, target: String, request_sha384: Digest384, status: u16, response_sha384: Digest384) -> Receipt {
        let model = match &self.state().stage {
            Stage::Serving { model } => model.clone(),
            _ => String::new(),
        };
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            target,
            request_sha384,
            status,
            response_sha384,
            model,
            bundle_header_sha384: self.log.find(EventKind::BundleHeader).map(|e| e.digest.to_vec()),
            event_log_digest: self.log_digest,
            launch_measurement: self.measurement.get().map(|m| m.to_vec()).unwrap_or_default(),
            runtime_time_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        match &self.receipts {
            Some(s) => s.sign(body),
            None => Receipt { body, signature: [0; chrysalis_attest::channel::receipt::SIGNATURE_LEN] },
        }
    }

    /// Serve `gpus` with every evidence bundle (the GPU evidence whose `GpuEvidence` event
    /// is in the log).
    pub fn with_gpus(mut self, gpus: Vec<GpuEvidence>) -> Self {
        self.gpus = gpus;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current status.
    pub fn status(&self) -> Status {
        let s = self.state();
        Status {
            stage: s.stage.clone(),
            last_error: s.last_error,
            milestones: s.milestones.clone(),
            tee: self.source.describe(),
        }
    }

    /// Evidence for a verifier's nonce (blocking: talks to the TEE). Until the model is
    /// unsealed a 32-byte nonce is also registered for one key release, before any TEE work:
    /// when every slot holds a live nonce the request is refused with
    /// [`SessionError::TooManyNonces`] rather than evicting one (which would let anyone push
    /// out the owner's pending nonce), and no evidence is produced for a nonce that could not
    /// be registered. A nonce registered for evidence that then failed is harmless: only a key
    /// wrapped to this boot's transcript opens under it, and it expires.
    pub fn evidence(&self, nonce: &[u8]) -> Result<Evidence, SessionError> {
        if !NONCE_LEN_RANGE.contains(&nonce.len()) {
            return Err(SessionError::BadNonce(format!("{} bytes, expected 16 to 64", nonce.len())));
        }
        if nonce.len() == chrysalis_attest::keyrelease::NONCE_LEN {
            let mut book = self.nonces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Once unsealed no key is taken, so nothing is registered and a full book cannot
            // stop users (`attest proxy` uses 32-byte nonces) from verifying the served model.
            // Other refusals (a nonce already used for a key) still get evidence; only a
            // second key for that nonce is refused.
            if !book.is_unsealed()
                && let Err(KeyReleaseError::TooManyNonces { retry_after_s }) = book.issue(nonce, &self.log, Instant::now())
            {
                return Err(SessionError::TooManyNonces { retry_after_s });
            }
        }
        let report_data = self.log.report_data(nonce);
        let platform =
            self.source.platform_evidence(&report_data).map_err(|e| SessionError::NoEvidence(format!("{e:#}")))?;
        if let Some(m) = chrysalis_attest::channel::receipt::launch_measurement(&platform) {
            let _ = self.measurement.set(m);
        }
        self.state().milestones.evidence_served.get_or_insert_with(sys::uptime);
        Ok(Evidence {
            version: EVIDENCE_VERSION,
            nonce: nonce.to_vec(),
            platform,
            event_log: self.log.clone(),
            gpus: self.gpus.clone(),
        })
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
        let bundle = self.bundle.as_ref().map_err(|why| SessionError::NoBundle(why.clone()))?;
        let key = {
            let mut s = self.state();
            match &s.stage {
                Stage::Unsealing | Stage::Loading => return Err(SessionError::Busy),
                Stage::Serving { model } => return Err(SessionError::AlreadyServing(model.clone())),
                Stage::NoBundle { why } => return Err(SessionError::NoBundle(why.clone())),
                Stage::WaitingForKey => {}
            }
            // Lock order: state, then nonces (nothing takes them the other way round).
            let key = self.nonces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).accept(
                msg,
                &self.keys,
                Instant::now(),
            )?;
            s.milestones.key_received = Some(sys::uptime());
            s.stage = Stage::Unsealing;
            key
        };
        let result = self.unseal_and_load(bundle, key);
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

    fn unseal_and_load(&self, bundle: &Bundle, key: DataKey) -> Result<String, SessionError> {
        let Some(measured) = self.log.find(EventKind::BundleHeader).map(|e| e.digest) else {
            return Err(SessionError::Unseal("the event log measures no bundle header".into()));
        };
        let start = Instant::now();
        let files = bundle.unseal(&key, &measured).map_err(|e| SessionError::Unseal(format!("{e:#}")))?;
        drop(key);
        let bytes: usize = files.files.iter().map(|f| f.data.len()).sum();
        log::info!(
            "unseal: {} files, {bytes} B in {} ms (memory only)",
            files.files.len(),
            start.elapsed().as_millis()
        );
        {
            let mut s = self.state();
            s.milestones.unsealed = Some(sys::uptime());
            s.stage = Stage::Loading;
        }
        let start = Instant::now();
        let model = self.sink.load(files).map_err(|e| SessionError::Load(format!("{e:#}")))?;
        // From now on every further key is refused: one boot serves one model.
        self.nonces.lock().unwrap_or_else(std::sync::PoisonError::into_inner).mark_unsealed();
        log::info!("model {model} loaded in {} ms", start.elapsed().as_millis());
        self.state().milestones.model_loaded = Some(sys::uptime());
        Ok(model)
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

    use chrysalis_attest::eventlog::{Event, EventKind, EventLog};
    use chrysalis_attest::keyrelease::{KeyRelease, Nonce, RuntimeKeyPair, Transcript, wrap_key};
    use chrysalis_attest::seal::{DataKey, SealOptions, UnsealedFiles, seal_to_vec};
    use chrysalis_attest::sim_transport;

    use super::{ModelSink, Session};
    use crate::bundle::Bundle;
    use crate::tee::EvidenceSource;

    /// Serves the bundle's model name.
    pub struct NameSink;
    impl ModelSink for NameSink {
        fn load(&self, files: UnsealedFiles) -> anyhow::Result<String> {
            Ok(files.model_name.clone())
        }
    }

    /// A fresh directory under the system's temporary directory.
    pub fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir()
            .join(format!("chrysalis-runtime-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
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
            let session = Session::new(log, keys, fake_tee_port(&dir), Ok(bundle), Box::new(NameSink));
            Fixture { session: Arc::new(session), dir, bundle_path, key, public_key }
        }

        /// What the owner sends after verifying evidence for `nonce`.
        pub fn owner_release(&self, nonce: Nonce) -> KeyRelease {
            let w = wrap_key(&self.key, &self.public_key, &Transcript::for_log(&nonce, &self.session.log)).unwrap();
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
    use chrysalis_attest::keyrelease::{Nonce, Transcript, wrap_key};

    /// The provider swaps the bundle file after the runtime measured its header at boot,
    /// for another bundle sealed under the same key: the released key must not unseal it.
    #[test]
    fn a_bundle_swapped_after_boot_is_not_unsealed() {
        let f = Fixture::new("swap");
        let measured = f.session.log.find(EventKind::BundleHeader).map(|e| e.digest).unwrap();
        let other = sealed("Other Model", b"weights B", &f.key);
        let other_digest = chrysalis_attest::seal::read_header(&other).unwrap().digest();
        std::fs::write(&f.bundle_path, &other).unwrap();
        f.session.evidence(&nonce(1)).unwrap();
        let err = f.session.release(&f.owner_release(nonce(1))).unwrap_err();
        let want = format!(
            "the bundle on disk changed since boot: header sha384 {}, measured {}",
            hex::encode(other_digest),
            hex::encode(measured)
        );
        assert!(matches!(&err, SessionError::Unseal(m) if m.contains(&want)), "{err}");
        let st = f.session.status();
        assert_eq!(st.stage, Stage::WaitingForKey);
        assert!(st.milestones.unsealed.is_none() && st.milestones.model_loaded.is_none());
        // /v1/health shows only the class of the failure, not the details.
        assert_eq!(st.last_error, Some("unseal_failed"));
        let json = serde_json::to_string(&st).unwrap();
        assert!(!json.contains("changed since boot") && !json.contains(&hex::encode(measured)), "{json}");
        assert!(f.session.sign_receipt("t".into(), [0; 48], 200, [0; 48]).body.model.is_empty());
    }

    /// The bundle measured at boot, left in place, unseals and is served.
    #[test]
    fn the_measured_bundle_unseals() {
        let f = Fixture::new("same");
        f.session.evidence(&nonce(1)).unwrap();
        assert_eq!(f.session.release(&f.owner_release(nonce(1))).unwrap(), "Test Model");
        assert_eq!(f.session.status().stage, Stage::Serving { model: "Test Model".into() });
    }

    fn junk_keys(f: &Fixture, owner_nonce: Nonce) -> Vec<KeyRelease> {
        let mut garbage = f.owner_release(owner_nonce);
        garbage.ciphertext = [0x41; chrysalis_attest::keyrelease::WRAPPED_LEN];
        let mut other_log = f.session.log.clone();
        other_log.extend(chrysalis_attest::eventlog::Event::digest_of(EventKind::Config, b"x"));
        let w = wrap_key(&f.key, &f.public_key, &Transcript::for_log(&owner_nonce, &other_log)).unwrap();
        vec![
            f.owner_release(nonce(999)), // never issued
            garbage,                     // the owner's nonce, a key that does not open
            KeyRelease::new(owner_nonce, &w), // the right key for another log state
        ]
    }

    /// Unauthenticated junk posted to /v1/key before the owner's key changes nothing: no
    /// stage, no error, no milestone, and the owner's nonce stays usable.
    #[test]
    fn junk_keys_change_nothing_and_the_owner_key_still_opens() {
        let f = Fixture::new("junk");
        f.session.evidence(&nonce(1)).unwrap();
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
            f.session.evidence(&nonce(1)).unwrap();
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
        f.session.evidence(&nonce(1)).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        f.session.evidence(&nonce(2)).unwrap();
        for msg in [f.owner_release(nonce(1)), f.owner_release(nonce(2)), f.owner_release(nonce(3))] {
            let err = f.session.release(&msg).unwrap_err();
            assert!(matches!(&err, SessionError::AlreadyServing(m) if m == "Test Model"), "{err}");
            let st = f.session.status();
            assert_eq!(st.stage, Stage::Serving { model: "Test Model".into() });
            assert_eq!(st.last_error, None);
            assert_eq!(f.session.sign_receipt("t".into(), [0; 48], 200, [0; 48]).body.model, "Test Model");
        }
    }

    /// 300 evidence requests after the owner's cannot evict the owner's nonce: the book
    /// refuses new nonces once full, and the owner's key still opens.
    #[test]
    fn a_nonce_flood_cannot_evict_the_owners_nonce() {
        let f = Fixture::new("flood");
        f.session.evidence(&nonce(0)).unwrap();
        let (mut served, mut refused) = (0, 0);
        for i in 1..=300 {
            match f.session.evidence(&nonce(i)) {
                Ok(_) => served += 1,
                Err(SessionError::TooManyNonces { retry_after_s }) => {
                    assert!((1..=300).contains(&retry_after_s), "{retry_after_s}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let capacity = chrysalis_attest::keyrelease::OnceNonces::<()>::CAPACITY;
        assert_eq!((served, refused), (capacity - 1, 300 - (capacity - 1)));
        // Short nonces are never registered, so they are still served.
        assert!(f.session.evidence(&[1; 16]).is_ok());
        assert_eq!(f.session.release(&f.owner_release(nonce(0))).unwrap(), "Test Model");
        // Once serving, no key is taken and no nonce registered: evidence is served again.
        assert!(f.session.evidence(&nonce(1000)).is_ok());
    }
}
