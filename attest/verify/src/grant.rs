//! The owner's key grant: given evidence a runtime produced for the owner's nonce, decide
//! whether it gets the data key ([`crate::attested::attest_runtime`], the same step the
//! end-user channel uses), and if so wrap the key to the runtime's measured public key,
//! bound to that evidence (wire format: `chrysalis_proto::keyrelease`).
//!
//! Trust: the evidence is untrusted until `attest_runtime` returns; the verifier and the data
//! key are trusted.

use std::fmt;
use std::time::SystemTime;

use subtle::ConstantTimeEq;

use chrysalis_proto::eventlog::Digest384;
use chrysalis_proto::evidence::Evidence;
use chrysalis_proto::keyrelease::{KeyRelease, KeyReleaseError, Nonce, PUBLIC_KEY_LEN, Transcript, wrap_key};
use chrysalis_proto::seal::key::DataKey;

use crate::attested::{AttestError, Challenge, EvidenceVerifier, Step, attest_runtime};

/// Why the owner refuses to release the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The runtime is not trusted.
    #[error("{0}")]
    Attest(#[from] AttestError),
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
    /// A key-wrapping failure.
    #[error("{0}")]
    KeyRelease(#[from] KeyReleaseError),
}

/// A key release ready to send, with what was checked to allow it.
#[derive(Clone, Debug)]
pub struct KeyGrant {
    /// The message for the runtime.
    pub message: KeyRelease,
    /// Every step that passed, in order.
    pub steps: Vec<Step>,
    /// The verifier's warnings.
    pub warnings: Vec<String>,
    /// The runtime key the data key was wrapped to.
    pub runtime_public_key: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Display for KeyGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.steps {
            writeln!(f, "  ok  {:<22} {}", c.name, c.detail)?;
        }
        Ok(())
    }
}

/// Attest the runtime behind `evidence` for `nonce` and wrap `key` to it.
///
/// `issued_at`: when the owner issued `nonce` (at the latest), for a policy's `[freshness]`.
/// `expected_header`: the SHA-384 of the bundle header this key seals; when given, the
/// runtime must have measured exactly that header (`BundleHeader` event).
pub fn grant_key(
    evidence: &Evidence,
    nonce: &Nonce,
    issued_at: Option<SystemTime>,
    verifier: &dyn EvidenceVerifier,
    key: &DataKey,
    expected_header: Option<&Digest384>,
) -> Result<KeyGrant, GrantError> {
    let rt = attest_runtime(evidence.clone(), Challenge { nonce, issued_at }, verifier)?;
    let mut steps = rt.steps;
    match (expected_header, rt.bundle_header) {
        (Some(want), Some(found)) if bool::from(found.ct_eq(want)) => {
            steps.push(Step::new("bundle header", format!("runtime loaded {}", hex::encode(want))));
        }
        (Some(want), Some(found)) => {
            return Err(GrantError::BundleMismatch { expected: hex::encode(want), found: hex::encode(found) });
        }
        (Some(_), None) => return Err(GrantError::NoBundleHeader),
        (None, Some(found)) => {
            steps.push(Step::new("bundle header", format!("not compared; runtime loaded {}", hex::encode(found))))
        }
        (None, None) => steps.push(Step::new("bundle header", "not compared; none measured")),
    }
    let transcript = Transcript::new(nonce, &rt.log_digest, &rt.report_data);
    let wrapped = wrap_key(key, &rt.public_key, &transcript)?;
    steps.push(Step::new(
        "key wrapped",
        format!("HPKE X25519/HKDF-SHA256/AES-256-GCM, info = transcript {}", hex::encode(&transcript.0[..8])),
    ));
    Ok(KeyGrant { message: KeyRelease::new(*nonce, &wrapped), steps, warnings: rt.warnings, runtime_public_key: rt.public_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attested::VerifiedRuntime;
    use chrysalis_proto::channel::receipt::ReceiptSigner;
    use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
    use chrysalis_proto::evidence::{EVIDENCE_VERSION, PlatformEvidence};
    use chrysalis_proto::keyrelease::{RuntimeKeyPair, unwrap_key};

    /// Test-only: trusts a simulated report whose bytes *are* REPORT_DATA.
    struct BindingOnly;
    impl EvidenceVerifier for BindingOnly {
        fn verify(&self, ev: &Evidence, _: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
            match &ev.platform {
                PlatformEvidence::Simulated { report } => Ok(VerifiedRuntime {
                    report_data: report.as_slice().try_into().map_err(|_| AttestError::Refused("bad test report".into()))?,
                    steps: vec![],
                    warnings: vec![],
                }),
                _ => Err(AttestError::Refused("not simulated".into())),
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
        log.extend(ReceiptSigner::from_seed(&[3; 32]).expect("seed").public_key_event());
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
        let r = grant_key(&ev, &nonce, None, &BindingOnly, &key, Some(&want)).expect("releases");
        let t = Transcript::for_log(&nonce, &ev.event_log);
        assert_eq!(unwrap_key(&r.message.wrapped(), &keys, &t).expect("opens"), key);
        assert!(r.to_string().contains("bundle header"));

        let refuse = |ev: &Evidence, n: &Nonce, h: Option<&Digest384>| grant_key(ev, n, None, &BindingOnly, &key, h).err();
        assert!(matches!(refuse(&ev, &[8; 32], None), Some(GrantError::Attest(AttestError::NonceMismatch { .. }))));
        assert!(matches!(refuse(&ev, &nonce, Some(&[0; 48])), Some(GrantError::BundleMismatch { .. })));
        assert!(matches!(refuse(&evidence(&keys, &nonce, None), &nonce, Some(&want)), Some(GrantError::NoBundleHeader)));

        let mut tampered = ev.clone();
        tampered.event_log.extend(Event::digest_of(EventKind::Config, b"x"));
        assert!(matches!(refuse(&tampered, &nonce, None), Some(GrantError::Attest(AttestError::Binding))));

        let mut no_pk = ev.clone();
        no_pk.event_log.events.retain(|e| e.kind != EventKind::PublicKey);
        no_pk.platform = PlatformEvidence::Simulated { report: no_pk.event_log.report_data(&nonce).to_vec() };
        assert!(matches!(refuse(&no_pk, &nonce, None), Some(GrantError::Attest(AttestError::Missing(EventKind::PublicKey)))));

        let mut two_pk = ev.clone();
        two_pk.event_log.extend(keys.public_key_event());
        two_pk.platform = PlatformEvidence::Simulated { report: two_pk.event_log.report_data(&nonce).to_vec() };
        assert!(matches!(refuse(&two_pk, &nonce, None), Some(GrantError::Attest(AttestError::Duplicate(EventKind::PublicKey)))));

        let mut short_pk = ev.clone();
        short_pk.event_log.events.retain(|e| e.kind != EventKind::PublicKey);
        short_pk.event_log.extend(Event::with_data(EventKind::PublicKey, vec![1; 31]));
        short_pk.platform = PlatformEvidence::Simulated { report: short_pk.event_log.report_data(&nonce).to_vec() };
        assert!(matches!(
            refuse(&short_pk, &nonce, None),
            Some(GrantError::Attest(AttestError::KeyLength { kind: EventKind::PublicKey, len: 31 }))
        ));

        let mut lying = ev.clone();
        if let Some(e) = lying.event_log.events.iter_mut().find(|e| e.kind == EventKind::PublicKey) {
            e.data = Some(vec![2; 32]);
        }
        assert!(matches!(refuse(&lying, &nonce, None), Some(GrantError::Attest(AttestError::EventLog(_)))));
    }
}
