//! The one step that decides whether a runtime is trusted: [`attest_runtime`]. The owner's
//! key release ([`crate::grant`]) and the end user's channel ([`crate::channel`]) both call
//! it, so both trust exactly the same thing:
//!
//! 1. the evidence answers our nonce;
//! 2. the [`EvidenceVerifier`] accepts it (platform signature and chain, measurement, TCB,
//!    GPU, policy) and returns the signed REPORT_DATA;
//! 3. REPORT_DATA = SHA-512(event-log digest || nonce), re-checked here whatever the
//!    verifier did (the keys below are only as good as this binding);
//! 4. every inline event payload matches its digest;
//! 5. exactly one `PublicKey` event (X25519, 32 bytes) and one `ReceiptKey` event (Ed25519,
//!    32 bytes), and at most one `BundleHeader` event.
//!
//! [`PolicyVerifier`] is the production verifier: [`crate::verify_evidence_with`] under the
//! owner's policy.
//!
//! Trust: the evidence is untrusted until [`attest_runtime`] returns; the verifier, its policy
//! and the nonce are the caller's.

use std::time::SystemTime;

use subtle::ConstantTimeEq;

use chrysalis_proto::channel::receipt::{RECEIPT_KEY_LEN, launch_measurement};
use chrysalis_proto::eventlog::{DIGEST_LEN, Digest384, Event, EventKind, EventLog, EventLogError};
use chrysalis_proto::evidence::Evidence;
use chrysalis_proto::keyrelease::PUBLIC_KEY_LEN;

use crate::policy::Policy;
use crate::verify::{Claims, VerifyContext, verify_evidence_with};

/// What a verifier established about a runtime from its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRuntime {
    /// The REPORT_DATA inside the hardware-signed report or quote.
    pub report_data: [u8; 64],
    /// What the verifier checked.
    pub steps: Vec<Step>,
    /// Warnings for humans (a simulated TEE accepted by policy, ...).
    pub warnings: Vec<String>,
}

/// One passed step of attesting a runtime, for humans and `--json` (the appraisal's
/// pass/fail rows are [`crate::policy::Check`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// Short name ("event-log binding").
    pub name: String,
    /// The facts behind it.
    pub detail: String,
}

impl Step {
    /// A step with its detail.
    pub fn new(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Step { name: name.into(), detail: detail.into() }
    }
}

/// What the verifier asked: its nonce, and when it issued it (for a policy's `[freshness]`;
/// `None` when unknown, e.g. evidence saved earlier, which then fails a freshness bound).
#[derive(Clone, Copy, Debug)]
pub struct Challenge<'a> {
    /// The nonce REPORT_DATA must bind.
    pub nonce: &'a [u8],
    /// When the nonce was issued, at the latest.
    pub issued_at: Option<SystemTime>,
}

impl<'a> Challenge<'a> {
    /// A nonce issued at `issued_at`.
    pub fn issued(nonce: &'a [u8], issued_at: SystemTime) -> Self {
        Challenge { nonce, issued_at: Some(issued_at) }
    }

    /// A nonce whose issue time is unknown.
    pub fn undated(nonce: &'a [u8]) -> Self {
        Challenge { nonce, issued_at: None }
    }
}

/// The seam to the hardware verifier and policy: verify `evidence` for the challenge and
/// return the verified REPORT_DATA, or a refusal saying why. [`PolicyVerifier`] is the
/// production one; tests plug in their own.
pub trait EvidenceVerifier: Send + Sync {
    /// Verify signatures, chains, measurements and policy.
    fn verify(&self, evidence: &Evidence, challenge: Challenge<'_>) -> Result<VerifiedRuntime, AttestError>;
}

/// Why a runtime is not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence answers a different nonce.
    #[error("evidence is for nonce {found}, expected {expected}")]
    NonceMismatch {
        /// Hex of the expected nonce.
        expected: String,
        /// Hex of the nonce in the evidence.
        found: String,
    },
    /// The verifier or the policy refused the evidence (the message lists the failed checks).
    #[error("evidence refused: {0}")]
    Refused(String),
    /// REPORT_DATA does not equal SHA-512(event-log digest || nonce).
    #[error("event log is not bound to the report: REPORT_DATA differs from SHA-512(log digest || nonce)")]
    Binding,
    /// An event's inline data does not match its digest.
    #[error("{0}")]
    EventLog(#[from] EventLogError),
    /// An event the runtime must measure is missing.
    #[error("event log has no {0:?} event")]
    Missing(EventKind),
    /// An event that must be unique appears more than once.
    #[error("event log has more than one {0:?} event")]
    Duplicate(EventKind),
    /// A key event carries the wrong number of bytes.
    #[error("{kind:?} event carries {len} bytes, expected 32")]
    KeyLength {
        /// The event.
        kind: EventKind,
        /// Its data length.
        len: usize,
    },
}

/// A runtime whose evidence verified for our nonce, and what its verified log pins.
#[derive(Clone, Debug)]
pub struct AttestedRuntime {
    /// The nonce the evidence answers.
    pub nonce: Vec<u8>,
    /// The verified evidence (kept to be stored next to receipts).
    pub evidence: Evidence,
    /// The event-log digest `D_n` (the channel's key id, part of the key-release transcript).
    pub log_digest: Digest384,
    /// The signed REPORT_DATA (= SHA-512(`log_digest` || nonce)).
    pub report_data: [u8; 64],
    /// The X25519 key requests and data keys are sealed to (`PublicKey` event).
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The Ed25519 key receipts are signed with (`ReceiptKey` event).
    pub receipt_key: [u8; RECEIPT_KEY_LEN],
    /// The launch measurement of the verified report.
    pub launch_measurement: Option<[u8; DIGEST_LEN]>,
    /// The sealed bundle header the runtime measured, if any.
    pub bundle_header: Option<Digest384>,
    /// Every step that passed, in order.
    pub steps: Vec<Step>,
    /// The verifier's warnings.
    pub warnings: Vec<String>,
}

fn at_most_one(log: &EventLog, kind: EventKind) -> Result<Option<&Event>, AttestError> {
    let mut it = log.events.iter().filter(|e| e.kind == kind);
    let first = it.next();
    if it.next().is_some() {
        return Err(AttestError::Duplicate(kind));
    }
    Ok(first)
}

fn key32(log: &EventLog, kind: EventKind) -> Result<[u8; 32], AttestError> {
    let e = at_most_one(log, kind)?.ok_or(AttestError::Missing(kind))?;
    let data = e.data.as_deref().unwrap_or_default();
    data.try_into().map_err(|_| AttestError::KeyLength { kind, len: data.len() })
}

/// Verify `evidence` for `challenge` with `verifier` and pin the keys of its event log (the
/// steps are listed in the module documentation).
pub fn attest_runtime(
    evidence: Evidence,
    challenge: Challenge<'_>,
    verifier: &dyn EvidenceVerifier,
) -> Result<AttestedRuntime, AttestError> {
    let nonce = challenge.nonce;
    if !bool::from(evidence.nonce.as_slice().ct_eq(nonce)) {
        return Err(AttestError::NonceMismatch { expected: hex::encode(nonce), found: hex::encode(&evidence.nonce) });
    }
    let verified = verifier.verify(&evidence, challenge)?;
    let mut steps = verified.steps;
    let log = &evidence.event_log;
    if !bool::from(log.report_data(nonce).ct_eq(&verified.report_data)) {
        return Err(AttestError::Binding);
    }
    steps
        .push(Step::new("event-log binding", format!("REPORT_DATA = SHA-512(log digest || nonce), {} events", log.events.len())));
    log.check()?;
    steps.push(Step::new("event data", "every inline event payload matches its digest"));
    let public_key = key32(log, EventKind::PublicKey)?;
    steps.push(Step::new("runtime public key", hex::encode(public_key)));
    let receipt_key = key32(log, EventKind::ReceiptKey)?;
    steps.push(Step::new("receipt key", hex::encode(receipt_key)));
    let bundle_header = at_most_one(log, EventKind::BundleHeader)?.map(|e| e.digest);
    Ok(AttestedRuntime {
        nonce: nonce.to_vec(),
        log_digest: log.digest(),
        report_data: verified.report_data,
        public_key,
        receipt_key,
        launch_measurement: launch_measurement(&evidence.platform),
        bundle_header,
        steps,
        warnings: verified.warnings,
        evidence,
    })
}

/// The production [`EvidenceVerifier`]: [`verify_evidence_with`] under the owner's policy,
/// with the certificates and collateral the evidence does not carry.
#[derive(Clone, Debug)]
pub struct PolicyVerifier {
    policy: Policy,
    snp_certs: Vec<Vec<u8>>,
    tdx_collateral: Option<crate::tdx::Collateral>,
}

impl PolicyVerifier {
    /// A verifier for `policy` with only what the evidence itself carries.
    pub fn new(policy: Policy) -> Self {
        PolicyVerifier { policy, snp_certs: Vec::new(), tdx_collateral: None }
    }

    /// Add SNP certificates (VCEK/VLEK/ASK, DER) the host did not put in the report.
    pub fn with_snp_certs(mut self, certs: Vec<Vec<u8>>) -> Self {
        self.snp_certs = certs;
        self
    }

    /// Add Intel collateral for TDX quotes.
    pub fn with_tdx_collateral(mut self, collateral: crate::tdx::Collateral) -> Self {
        self.tdx_collateral = Some(collateral);
        self
    }
}

impl EvidenceVerifier for PolicyVerifier {
    fn verify(&self, evidence: &Evidence, challenge: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
        let ctx = VerifyContext {
            tdx_collateral: self.tdx_collateral.as_ref(),
            extra_snp_certs: &self.snp_certs,
            nonce_issued_at: challenge.issued_at,
            ..VerifyContext::new(challenge.nonce, SystemTime::now())
        };
        let report = verify_evidence_with(evidence, &self.policy, &ctx);
        for w in &report.warnings {
            log::warn!("{w}");
        }
        if !report.is_ok() {
            let reasons: Vec<String> = report
                .failures()
                .map(|c| format!("{}: found {}, expected {} ({})", c.name, c.found, c.expected, c.detail))
                .collect();
            return Err(AttestError::Refused(reasons.join("; ")));
        }
        let report_data: [u8; 64] = match &report.claims {
            Some(Claims::Snp(c)) => c.claims().report_data.as_slice().try_into(),
            Some(Claims::Tdx(c)) => c.claims().report_data.as_slice().try_into(),
            None => return Err(AttestError::Refused("verification produced no claims".into())),
        }
        .map_err(|_| AttestError::Refused("REPORT_DATA is not 64 bytes".into()))?;
        let steps = report.checks.iter().map(|c| Step::new(c.name.clone(), format!("{} ({})", c.found, c.detail))).collect();
        Ok(VerifiedRuntime { report_data, steps, warnings: report.warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::receipt::tests::{Lenient, Refuser, runtime_log};
    use crate::sim::{SimPsp, SimRoot};
    use chrysalis_proto::channel::receipt::ReceiptSigner;
    use chrysalis_proto::keyrelease::RuntimeKeyPair;

    #[test]
    fn attest_refusals() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let signer = ReceiptSigner::from_seed(&[3; 32]).unwrap();
        let psp = SimPsp::new(SimRoot::generate(), [0x11; 48]);
        let nonce = [8u8; 32];
        let ev = psp.evidence(runtime_log(&keys, &signer), &nonce);
        let e = attest_runtime(ev.clone(), Challenge::undated(&nonce), &Refuser).unwrap_err();
        assert!(e.to_string().contains("sim.measurement"), "{e}");
        assert!(matches!(
            attest_runtime(ev.clone(), Challenge::undated(&[9; 32]), &Lenient),
            Err(AttestError::NonceMismatch { .. })
        ));
        // A swapped PublicKey event (a man in the middle's key) breaks the binding.
        let mut swapped = ev.clone();
        let mallory = RuntimeKeyPair::generate().unwrap();
        for e in &mut swapped.event_log.events {
            if e.kind == EventKind::PublicKey {
                *e = mallory.public_key_event();
            }
        }
        assert!(matches!(attest_runtime(swapped, Challenge::undated(&nonce), &Lenient), Err(AttestError::Binding)));
        // A log without a receipt key is refused.
        let mut log = EventLog::default();
        log.extend(keys.public_key_event());
        let ev = psp.evidence(log, &nonce);
        assert!(matches!(
            attest_runtime(ev, Challenge::undated(&nonce), &Lenient),
            Err(AttestError::Missing(EventKind::ReceiptKey))
        ));
    }

    /// The production verifier judges a policy's `[freshness]` by the challenge's issue time:
    /// recent passes, too old or unknown (saved evidence) fails, naming the check.
    #[test]
    fn policy_verifier_judges_freshness_by_the_challenge() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let signer = ReceiptSigner::from_seed(&[3; 32]).unwrap();
        let psp = SimPsp::new(SimRoot::generate(), [0x11; 48]);
        let nonce = [8u8; 32];
        let ev = psp.evidence(runtime_log(&keys, &signer), &nonce);
        let policy = Policy::from_toml(&format!(
            "[simulation]\nallow_simulated = true\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n[freshness]\nmax_evidence_age_secs = 60\n",
            psp.root.public_key().to_hex(),
            hex::encode(psp.measurement)
        ))
        .unwrap();
        let v = PolicyVerifier::new(policy);
        let now = SystemTime::now();
        assert!(attest_runtime(ev.clone(), Challenge::issued(&nonce, now), &v).is_ok());
        let old = now.checked_sub(std::time::Duration::from_secs(120)).unwrap();
        for challenge in [Challenge::issued(&nonce, old), Challenge::undated(&nonce)] {
            let e = attest_runtime(ev.clone(), challenge, &v).unwrap_err();
            assert!(matches!(&e, AttestError::Refused(m) if m.contains("freshness")), "{e}");
        }
    }
}
