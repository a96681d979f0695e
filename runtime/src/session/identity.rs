//! What this boot is, cryptographically: the event log measured at boot and its digest
//! `D_n`, the X25519 key pair that requests and data keys are sealed to, the Ed25519 signer
//! of receipts (its key is a `ReceiptKey` event in the log), and the launch measurement the
//! runtime's own evidence reported. The private keys never leave this type. It also keeps the
//! replay window of sealed requests, whose ids live as long as the key they are sealed to.

use std::sync::{Mutex, OnceLock};

use chrysalis_proto::channel::ChannelError;
use chrysalis_proto::channel::crypto::{OpenedRequest, ResponseSealer, Target};
use chrysalis_proto::channel::receipt::{RECEIPT_VERSION, Receipt, ReceiptBody, ReceiptSigner, SIGNATURE_LEN};
use chrysalis_proto::channel::replay::{ReplayError, ReplayWindow, RequestId};
use chrysalis_proto::eventlog::{DIGEST_LEN, Digest384, EventKind, EventLog};
use chrysalis_proto::evidence::PlatformEvidence;
use chrysalis_proto::keyrelease::{PUBLIC_KEY_LEN, RuntimeKeyPair};

/// The measured identity of this boot.
pub struct Identity {
    log: EventLog,
    log_digest: Digest384,
    keys: RuntimeKeyPair,
    receipts: Option<ReceiptSigner>,
    measurement: OnceLock<[u8; DIGEST_LEN]>,
    replay: Mutex<ReplayWindow>,
}

/// Why a sealed request is not handled.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It does not open (or is not padded as the channel requires).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// It opened, but was received before or is outside the window.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// What a receipt says about the request it answers.
#[derive(Clone, Debug)]
pub struct ReceiptRequest {
    /// `method SP path-and-query`.
    pub target: String,
    /// The id sealed into the request.
    pub id: RequestId,
    /// `receipt::request_hash` of its body.
    pub sha384: Digest384,
}

impl Identity {
    /// The identity measured into `log`, whose `PublicKey` event is `keys`' public key.
    pub fn new(log: EventLog, keys: RuntimeKeyPair) -> Self {
        Identity {
            log_digest: log.digest(),
            log,
            keys,
            receipts: None,
            measurement: OnceLock::new(),
            replay: Mutex::new(ReplayWindow::default()),
        }
    }

    /// With a receipt signer whose `ReceiptKey` event is already in the log.
    pub fn with_receipt_signer(mut self, signer: ReceiptSigner) -> Self {
        self.receipts = Some(signer);
        self
    }

    /// The event log measured at boot.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// `D_n`: the digest every evidence bundle's REPORT_DATA binds and the channel's key id.
    pub fn log_digest(&self) -> Digest384 {
        self.log_digest
    }

    /// The key pair key releases are wrapped to.
    pub(super) fn keys(&self) -> &RuntimeKeyPair {
        &self.keys
    }

    /// The sealed bundle header measured at boot, if any.
    pub fn bundle_header(&self) -> Option<Digest384> {
        self.log.find(EventKind::BundleHeader).map(|e| e.digest)
    }

    /// Remember the launch measurement of this runtime's first evidence (for receipts).
    pub(super) fn record_measurement(&self, platform: &PlatformEvidence) {
        if let Some(m) = chrysalis_proto::channel::receipt::launch_measurement(platform) {
            let _ = self.measurement.set(m);
        }
    }

    /// Open a request sealed to this runtime's key for `target` (the encrypted channel) and
    /// admit its id to the replay window: each id is answered once.
    pub fn open_request(
        &self,
        target: &Target,
        enc: &[u8; PUBLIC_KEY_LEN],
        ciphertext: &[u8],
    ) -> Result<(OpenedRequest, ResponseSealer), OpenError> {
        let (opened, sealer) =
            chrysalis_proto::channel::crypto::open_request(&self.keys, &self.log_digest, target, enc, ciphertext)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // A panic elsewhere while holding the lock leaves the window consistent (admit has no
        // partial state visible to others), so a poisoned lock is used as is.
        self.replay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(
            opened.meta.id,
            opened.meta.issued_unix_s,
            now,
        )?;
        Ok((opened, sealer))
    }

    /// Sign the receipt of one response: request and response hashes, with the served model,
    /// the bundle header and event-log digests and the launch measurement (empty until this
    /// runtime has produced evidence). Without a signer the signature is all zero, which no
    /// verifier accepts.
    pub fn sign_receipt(&self, model: String, request: ReceiptRequest, status: u16, response_sha384: Digest384) -> Receipt {
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            target: request.target,
            request_id: request.id,
            request_sha384: request.sha384,
            status,
            response_sha384,
            model,
            bundle_header_sha384: self.bundle_header().map(|d| d.to_vec()),
            event_log_digest: self.log_digest,
            launch_measurement: self.measurement.get().map(|m| m.to_vec()).unwrap_or_default(),
            runtime_time_unix_s: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        match &self.receipts {
            Some(s) => s.sign(body),
            None => Receipt { body, signature: [0; SIGNATURE_LEN] },
        }
    }
}
