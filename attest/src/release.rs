//! Owner side of the attested key release: given evidence a runtime produced for the owner's
//! nonce, decide whether it gets the data key, and if so wrap the key to the runtime's
//! measured public key, bound to that evidence (see [`crate::keyrelease`]).
//!
//! Hardware and policy verification happen behind [`EvidenceVerifier`], so this module does
//! not depend on which verifier is plugged in; on top of whatever the verifier checks, this
//! module re-checks the event-log binding (REPORT_DATA = SHA-512(D_n || nonce)) itself.
//!
//! Trust: the evidence is untrusted until the verifier returns; the verifier and the data
//! key are trusted.

use std::fmt;

use subtle::ConstantTimeEq;

use crate::eventlog::{Digest384, EventKind, EventLog, EventLogError};
use crate::evidence::Evidence;
use crate::keyrelease::{KeyRelease, KeyReleaseError, Nonce, PUBLIC_KEY_LEN, Transcript, wrap_key};
use crate::seal::key::DataKey;

/// What a verifier established about a runtime from its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRuntime {
    /// The REPORT_DATA inside the hardware-signed report or quote.
    pub report_data: [u8; 64],
    /// What the verifier checked, for the owner's output ("snp signature: VCEK chain to Genoa ARK").
    pub checks: Vec<Check>,
}

/// One passed check, for humans and `--json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// Short name ("event-log binding").
    pub name: String,
    /// The facts behind it.
    pub detail: String,
}

impl Check {
    /// A check with its detail.
    pub fn new(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check { name: name.into(), detail: detail.into() }
    }
}

/// The seam to the hardware verifier and policy: verify `evidence` for `nonce` and return the
/// verified REPORT_DATA, or a refusal saying why.
///
/// The production implementation wraps `verify::verify_evidence(&evidence, &policy, nonce,
/// now)` and maps a failed report to [`ReleaseError::Refused`] with the report's reasons.
pub trait EvidenceVerifier: Send + Sync {
    /// Verify signatures, chains, measurements and policy.
    fn verify(&self, evidence: &Evidence, nonce: &[u8]) -> Result<VerifiedRuntime, ReleaseError>;
}

/// Why the owner refuses to release the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The evidence answers a different nonce.
    #[error("evidence is for nonce {found}, expected {expected}")]
    NonceMismatch {
        /// Hex of the expected nonce.
        expected: String,
        /// Hex of the nonce in the evidence.
        found: String,
    },
    /// The verifier or the policy refused the evidence.
    #[error("evidence refused: {0}")]
    Refused(String),
    /// REPORT_DATA does not equal SHA-512(event-log digest || nonce).
    #[error("event log is not bound to the report: REPORT_DATA differs from SHA-512(log digest || nonce)")]
    Binding,
    /// An event's inline data does not match its digest.
    #[error("{0}")]
    EventLog(#[from] EventLogError),
    /// No `PublicKey` event: nothing to wrap the key to.
    #[error("event log has no PublicKey event")]
    NoPublicKey,
    /// An event that must be unique appears more than once.
    #[error("event log has more than one {0:?} event")]
    DuplicateEvent(EventKind),
    /// The `PublicKey` event does not carry a 32-byte X25519 key.
    #[error("PublicKey event carries {0} bytes, expected 32")]
    BadPublicKey(usize),
    /// The runtime has not measured a bundle header but the owner requires one.
    #[error("event log has no BundleHeader event: the runtime has not loaded a sealed bundle")]
    NoBundleHeader,
    /// The runtime loaded another bundle than the one this key seals.
    #[error("runtime loaded bundle header {found}, but this key seals {expected}")]
    BundleMismatch {
        /// Hex SHA-384 of the owner's bundle header.
        expected: String,
        /// Hex SHA-384 measured by the runtime.
        found: String,
    },
    /// A nonce or key-wrapping failure.
    #[error("{0}")]
    KeyRelease(#[from] KeyReleaseError),
}

/// A key release ready to send, with what was checked to allow it.
#[derive(Clone, Debug)]
pub struct Release {
    /// The message for the runtime.
    pub message: KeyRelease,
    /// Every check that passed, in order.
    pub checks: Vec<Check>,
    /// The runtime key the data key was wrapped to.
    pub runtime_public_key: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(f, "  ok  {:<22} {}", c.name, c.detail)?;
        }
        Ok(())
    }
}

fn unique(log: &EventLog, kind: EventKind) -> Result<Option<&crate::eventlog::Event>, ReleaseError> {
    let mut it = log.events.iter().filter(|e| e.kind == kind);
    let first = it.next();
    if it.next().is_some() {
        return Err(ReleaseError::DuplicateEvent(kind));
    }
    Ok(first)
}

/// Check `evidence` for `nonce` and wrap `key` to the runtime it proves.
///
/// `expected_header`: the SHA-384 of the bundle header this key seals; when given, the
/// runtime must have measured exactly that header (`BundleHeader` event).
pub fn prepare_release(
    evidence: &Evidence,
    nonce: &Nonce,
    verifier: &dyn EvidenceVerifier,
    key: &DataKey,
    expected_header: Option<&Digest384>,
) -> Result<Release, ReleaseError> {
    let mut checks = Vec::new();
    if evidence.nonce.as_slice() != nonce.as_slice() {
        return Err(ReleaseError::NonceMismatch { expected: hex::encode(nonce), found: hex::encode(&evidence.nonce) });
    }
    let verified = verifier.verify(evidence, nonce)?;
    checks.extend(verified.checks);

    let log = &evidence.event_log;
    let bound = log.report_data(nonce);
    if !bool::from(bound.ct_eq(&verified.report_data)) {
        return Err(ReleaseError::Binding);
    }
    checks.push(Check::new("event-log binding", format!("REPORT_DATA = SHA-512(log digest || nonce), {} events", log.events.len())));
    log.check()?;
    checks.push(Check::new("event data", "every inline event payload matches its digest"));

    let pk_event = unique(log, EventKind::PublicKey)?.ok_or(ReleaseError::NoPublicKey)?;
    let pk_data = pk_event.data.as_deref().unwrap_or_default();
    let pk: [u8; PUBLIC_KEY_LEN] = pk_data.try_into().map_err(|_| ReleaseError::BadPublicKey(pk_data.len()))?;
    checks.push(Check::new("runtime public key", hex::encode(pk)));

    let header_event = unique(log, EventKind::BundleHeader)?;
    match (expected_header, header_event) {
        (Some(want), Some(e)) if bool::from(e.digest.ct_eq(want)) => {
            checks.push(Check::new("bundle header", format!("runtime loaded {}", hex::encode(want))));
        }
        (Some(want), Some(e)) => {
            return Err(ReleaseError::BundleMismatch { expected: hex::encode(want), found: hex::encode(e.digest) });
        }
        (Some(_), None) => return Err(ReleaseError::NoBundleHeader),
        (None, Some(e)) => checks.push(Check::new("bundle header", format!("not compared; runtime loaded {}", hex::encode(e.digest)))),
        (None, None) => checks.push(Check::new("bundle header", "not compared; none measured")),
    }

    let transcript = Transcript::new(nonce, &log.digest(), &verified.report_data);
    let wrapped = wrap_key(key, &pk, &transcript)?;
    checks.push(Check::new("key wrapped", format!("HPKE X25519/HKDF-SHA256/AES-256-GCM, info = transcript {}", hex::encode(&transcript.0[..8]))));
    Ok(Release { message: KeyRelease::new(*nonce, &wrapped), checks, runtime_public_key: pk })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::eventlog::Event;
    use crate::evidence::{EVIDENCE_VERSION, PlatformEvidence};
    use crate::keyrelease::{RuntimeKeyPair, unwrap_key};

    /// Test-only: trusts a simulated report whose bytes *are* REPORT_DATA.
    struct BindingOnly;
    impl EvidenceVerifier for BindingOnly {
        fn verify(&self, ev: &Evidence, _nonce: &[u8]) -> Result<VerifiedRuntime, ReleaseError> {
            match &ev.platform {
                PlatformEvidence::Simulated { report } => Ok(VerifiedRuntime {
                    report_data: report.as_slice().try_into().map_err(|_| ReleaseError::Refused("bad test report".into()))?,
                    checks: vec![],
                }),
                _ => Err(ReleaseError::Refused("not simulated".into())),
            }
        }
    }

    fn evidence(keys: &RuntimeKeyPair, nonce: &Nonce, header: Option<&[u8]>) -> Evidence {
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        if let Some(h) = header {
            log.extend(Event::digest_of(EventKind::BundleHeader, h));
        }
        log.extend(keys.public_key_event());
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: nonce.to_vec(),
            platform: PlatformEvidence::Simulated { report: log.report_data(nonce).to_vec() },
            event_log: log,
            gpus: vec![],
        }
    }

    #[test]
    fn releases_to_the_measured_key_and_refuses_the_rest() {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let key = DataKey::generate().expect("rng");
        let nonce = [7u8; 32];
        let hdr = b"header bytes";
        let want: Digest384 = <sha2::Sha384 as sha2::Digest>::digest(hdr).into();
        let ev = evidence(&keys, &nonce, Some(hdr));
        let r = prepare_release(&ev, &nonce, &BindingOnly, &key, Some(&want)).expect("releases");
        let t = Transcript::for_log(&nonce, &ev.event_log);
        assert_eq!(unwrap_key(&r.message.wrapped(), &keys, &t).expect("opens"), key);
        assert!(r.to_string().contains("bundle header"));

        let refuse = |ev: &Evidence, n: &Nonce, h: Option<&Digest384>| prepare_release(ev, n, &BindingOnly, &key, h).err();
        assert!(matches!(refuse(&ev, &[8; 32], None), Some(ReleaseError::NonceMismatch { .. })));
        assert!(matches!(refuse(&ev, &nonce, Some(&[0; 48])), Some(ReleaseError::BundleMismatch { .. })));
        assert!(matches!(refuse(&evidence(&keys, &nonce, None), &nonce, Some(&want)), Some(ReleaseError::NoBundleHeader)));

        let mut tampered = ev.clone();
        tampered.event_log.extend(Event::digest_of(EventKind::Config, b"x"));
        assert!(matches!(refuse(&tampered, &nonce, None), Some(ReleaseError::Binding)));

        let mut no_pk = ev.clone();
        no_pk.event_log.events.retain(|e| e.kind != EventKind::PublicKey);
        no_pk.platform = PlatformEvidence::Simulated { report: no_pk.event_log.report_data(&nonce).to_vec() };
        assert!(matches!(refuse(&no_pk, &nonce, None), Some(ReleaseError::NoPublicKey)));

        let mut two_pk = ev.clone();
        two_pk.event_log.extend(keys.public_key_event());
        two_pk.platform = PlatformEvidence::Simulated { report: two_pk.event_log.report_data(&nonce).to_vec() };
        assert!(matches!(refuse(&two_pk, &nonce, None), Some(ReleaseError::DuplicateEvent(EventKind::PublicKey))));

        let mut short_pk = ev.clone();
        short_pk.event_log.events.retain(|e| e.kind != EventKind::PublicKey);
        short_pk.event_log.extend(Event::with_data(EventKind::PublicKey, vec![1; 31]));
        short_pk.platform = PlatformEvidence::Simulated { report: short_pk.event_log.report_data(&nonce).to_vec() };
        assert!(matches!(refuse(&short_pk, &nonce, None), Some(ReleaseError::BadPublicKey(31))));

        let mut lying = ev.clone();
        if let Some(e) = lying.event_log.events.iter_mut().find(|e| e.kind == EventKind::PublicKey) {
            e.data = Some(vec![2; 32]);
        }
        assert!(matches!(refuse(&lying, &nonce, None), Some(ReleaseError::EventLog(_))));
    }
}
