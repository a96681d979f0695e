//! The client's side of trusting a runtime for the channel: verify its evidence for our
//! nonce (same verifier as key release: platform signature, measurement, TCB, GPU, policy),
//! re-check the event-log binding, and pin what the channel needs from the verified log —
//! the X25519 key requests are sealed to, the Ed25519 key receipts are signed with, the log
//! digest both are bound to, and the launch measurement. Also checks receipts against such a
//! verified runtime (`attest proxy`, `attest verify-receipt`).
//!
//! Trust: the evidence is untrusted until the [`EvidenceVerifier`] accepted it and
//! REPORT_DATA was re-checked here; receipts are untrusted until [`check_receipt`] passes.

use subtle::ConstantTimeEq;

use super::receipt::{RECEIPT_KEY_LEN, RECEIPT_VERSION, Receipt, launch_measurement};
use crate::eventlog::{DIGEST_LEN, Digest384, Event, EventKind, EventLog};
use crate::evidence::Evidence;
use crate::keyrelease::PUBLIC_KEY_LEN;
use crate::policy::Check;
use crate::release::{EvidenceVerifier, ReleaseError};

/// Why a runtime is not trusted for the channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence failed verification or the policy (the message lists the failed checks).
    #[error("{0}")]
    Release(#[from] ReleaseError),
    /// An event the channel needs is missing.
    #[error("event log has no {0:?} event")]
    Missing(EventKind),
    /// An event the channel needs appears more than once.
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

/// A runtime whose evidence verified for our nonce: what the channel pins.
#[derive(Clone, Debug)]
pub struct AttestedRuntime {
    /// The nonce the evidence answers.
    pub nonce: Vec<u8>,
    /// The verified evidence (kept to be stored next to receipts).
    pub evidence: Evidence,
    /// The event-log digest `D_n` (the channel's key id).
    pub log_digest: Digest384,
    /// The X25519 key requests are sealed to (`PublicKey` event).
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The Ed25519 key receipts are signed with (`ReceiptKey` event).
    pub receipt_key: [u8; RECEIPT_KEY_LEN],
    /// The launch measurement of the verified report.
    pub launch_measurement: Option<[u8; DIGEST_LEN]>,
    /// The sealed bundle header the runtime measured, if any.
    pub bundle_header: Option<Digest384>,
    /// What the verifier checked.
    pub checks: Vec<crate::release::Check>,
}

fn unique(log: &EventLog, kind: EventKind) -> Result<&Event, AttestError> {
    let mut it = log.events.iter().filter(|e| e.kind == kind);
    let first = it.next().ok_or(AttestError::Missing(kind))?;
    if it.next().is_some() {
        return Err(AttestError::Duplicate(kind));
    }
    Ok(first)
}

fn key32(log: &EventLog, kind: EventKind) -> Result<[u8; 32], AttestError> {
    let e = unique(log, kind)?;
    let data = e.data.as_deref().unwrap_or_default();
    data.try_into().map_err(|_| AttestError::KeyLength { kind, len: data.len() })
}

/// Verify `evidence` for `nonce` with `verifier` and pin the channel keys of its log.
pub fn attest_runtime(evidence: Evidence, nonce: &[u8], verifier: &dyn EvidenceVerifier) -> Result<AttestedRuntime, AttestError> {
    if evidence.nonce.as_slice() != nonce {
        return Err(ReleaseError::NonceMismatch { expected: hex::encode(nonce), found: hex::encode(&evidence.nonce) }.into());
    }
    let verified = verifier.verify(&evidence, nonce)?;
    let log = &evidence.event_log;
    // Whatever the verifier did, the channel keys are only as good as this binding.
    if !bool::from(log.report_data(nonce).ct_eq(&verified.report_data)) {
        return Err(ReleaseError::Binding.into());
    }
    log.check().map_err(ReleaseError::from)?;
    let public_key = key32(log, EventKind::PublicKey)?;
    let receipt_key = key32(log, EventKind::ReceiptKey)?;
    let bundle_header = match log.events.iter().filter(|e| e.kind == EventKind::BundleHeader).count() {
        0 => None,
        1 => log.find(EventKind::BundleHeader).map(|e| e.digest),
        _ => return Err(AttestError::Duplicate(EventKind::BundleHeader)),
    };
    Ok(AttestedRuntime {
        nonce: nonce.to_vec(),
        log_digest: log.digest(),
        public_key,
        receipt_key,
        launch_measurement: launch_measurement(&evidence.platform),
        bundle_header,
        checks: verified.checks,
        evidence,
    })
}

/// What a receipt is checked against besides the runtime.
#[derive(Clone, Debug, Default)]
pub struct ReceiptExpectations {
    /// `method SP path` of the request, when known.
    pub target: Option<String>,
    /// The request body's hash (`receipt::request_hash`), when the body is at hand.
    pub request_sha384: Option<Digest384>,
    /// The response status, when known.
    pub status: Option<u16>,
    /// The response body's hash (`receipt::response_hash`), when the body is at hand.
    pub response_sha384: Option<Digest384>,
}

fn hex_or_none(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "(none)".to_owned(), hex::encode)
}

/// Check `receipt` against the verified `runtime` and `expect`; one row per check.
pub fn check_receipt(receipt: &Receipt, runtime: &AttestedRuntime, expect: &ReceiptExpectations) -> Vec<Check> {
    let b = &receipt.body;
    let mut out = Vec::new();
    out.push(match receipt.verify_signature(&runtime.receipt_key) {
        Ok(()) => Check::new("receipt.signature", true, "valid", "Ed25519 by the ReceiptKey event")
            .detail(format!("key {}", hex::encode(runtime.receipt_key))),
        Err(e) => Check::new("receipt.signature", false, "invalid", "Ed25519 by the ReceiptKey event").detail(e.to_string()),
    });
    out.push(Check::new("receipt.version", b.version == RECEIPT_VERSION, b.version.to_string(), RECEIPT_VERSION.to_string()));
    out.push(
        Check::new(
            "receipt.event_log",
            b.event_log_digest == runtime.log_digest,
            hex::encode(b.event_log_digest),
            hex::encode(runtime.log_digest),
        )
        .detail("the runtime state whose evidence was verified"),
    );
    let m = &b.launch_measurement;
    out.push(match (m.is_empty(), runtime.launch_measurement) {
        (true, _) => Check::new("receipt.measurement", true, "(not stated)", hex_or_none(runtime.launch_measurement.as_ref().map(|m| &m[..])))
            .detail("the receipt states no measurement; it is bound to the verified one through the event log"),
        (false, Some(want)) => Check::new("receipt.measurement", m.as_slice() == want.as_slice(), hex::encode(m), hex::encode(want))
            .detail("launch measurement of the verified report"),
        (false, None) => Check::new("receipt.measurement", false, hex::encode(m), "(none in the evidence)"),
    });
    out.push(Check::new(
        "receipt.bundle_header",
        b.bundle_header_sha384.as_deref() == runtime.bundle_header.as_ref().map(|d| &d[..]),
        hex_or_none(b.bundle_header_sha384.as_deref()),
        hex_or_none(runtime.bundle_header.as_ref().map(|d| &d[..])),
    )
    .detail(if b.model.is_empty() { "no model served".to_owned() } else { format!("model {}", b.model) }));
    if let Some(t) = &expect.target {
        out.push(Check::new("receipt.target", &b.target == t, b.target.clone(), t.clone()));
    }
    if let Some(h) = expect.request_sha384 {
        out.push(Check::new("receipt.request", b.request_sha384 == h, hex::encode(b.request_sha384), hex::encode(h)));
    }
    if let Some(s) = expect.status {
        out.push(Check::new("receipt.status", b.status == s, b.status.to_string(), s.to_string()));
    }
    if let Some(h) = expect.response_sha384 {
        out.push(Check::new("receipt.response", b.response_sha384 == h, hex::encode(b.response_sha384), hex::encode(h)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::channel::receipt::{ReceiptBody, ReceiptSigner, request_hash, response_hash};
    use crate::keyrelease::RuntimeKeyPair;
    use crate::release::VerifiedRuntime;
    use crate::sim::{SimPsp, SimRoot};

    /// Accepts everything, reporting the REPORT_DATA of the simulated report.
    struct Lenient;
    impl EvidenceVerifier for Lenient {
        fn verify(&self, evidence: &Evidence, _nonce: &[u8]) -> Result<VerifiedRuntime, ReleaseError> {
            let crate::evidence::PlatformEvidence::Simulated { report } = &evidence.platform else {
                return Err(ReleaseError::Refused("not simulated".into()));
            };
            let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
            Ok(VerifiedRuntime { report_data: rd, checks: vec![] })
        }
    }

    struct Refuser;
    impl EvidenceVerifier for Refuser {
        fn verify(&self, _: &Evidence, _: &[u8]) -> Result<VerifiedRuntime, ReleaseError> {
            Err(ReleaseError::Refused("sim.measurement: found 00, expected 11".into()))
        }
    }

    fn runtime_log(keys: &RuntimeKeyPair, signer: &ReceiptSigner) -> EventLog {
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        log.extend(Event::digest_of(EventKind::BundleHeader, b"header"));
        log.extend(keys.public_key_event());
        log.extend(signer.public_key_event());
        log
    }

    #[test]
    fn attest_pins_keys_and_checks_receipts() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let signer = ReceiptSigner::from_seed(&[3; 32]).unwrap();
        let psp = SimPsp::new(SimRoot::generate(), [0x11; 48]);
        let nonce = [8u8; 32];
        let ev = psp.evidence(runtime_log(&keys, &signer), &nonce);
        let rt = attest_runtime(ev.clone(), &nonce, &Lenient).unwrap();
        assert_eq!(rt.public_key, keys.public_key());
        assert_eq!(rt.receipt_key, signer.public_key());
        assert_eq!(rt.launch_measurement, Some([0x11; 48]));
        assert!(rt.bundle_header.is_some());

        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            target: "POST /v1/completions".into(),
            request_sha384: request_hash(b"req"),
            status: 200,
            response_sha384: response_hash(b"resp"),
            model: "m".into(),
            bundle_header_sha384: rt.bundle_header.map(|d| d.to_vec()),
            event_log_digest: rt.log_digest,
            launch_measurement: vec![0x11; 48],
            runtime_time_unix_s: 0,
        };
        let expect = ReceiptExpectations {
            target: Some("POST /v1/completions".into()),
            request_sha384: Some(request_hash(b"req")),
            status: Some(200),
            response_sha384: Some(response_hash(b"resp")),
        };
        let good = signer.sign(body.clone());
        let rows = check_receipt(&good, &rt, &expect);
        assert!(rows.iter().all(|c| c.passed), "{rows:?}");

        // Each field changed (and re-signed by the right key) fails its own check.
        let cases: Vec<(&str, Box<dyn Fn(&mut ReceiptBody)>)> = vec![
            ("receipt.event_log", Box::new(|b| b.event_log_digest[0] ^= 1)),
            ("receipt.measurement", Box::new(|b| b.launch_measurement[0] ^= 1)),
            ("receipt.bundle_header", Box::new(|b| b.bundle_header_sha384 = None)),
            ("receipt.target", Box::new(|b| b.target = "POST /v1/chat/completions".into())),
            ("receipt.request", Box::new(|b| b.request_sha384 = request_hash(b"other"))),
            ("receipt.status", Box::new(|b| b.status = 400)),
            ("receipt.response", Box::new(|b| b.response_sha384 = response_hash(b"other"))),
        ];
        for (name, change) in cases {
            let mut b = body.clone();
            change(&mut b);
            let rows = check_receipt(&signer.sign(b), &rt, &expect);
            let failed: Vec<&str> = rows.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
            assert_eq!(failed, vec![name]);
        }
        // Signed by another key (e.g. a man in the middle's).
        let mallory = ReceiptSigner::from_seed(&[4; 32]).unwrap();
        let rows = check_receipt(&mallory.sign(body.clone()), &rt, &expect);
        let failed: Vec<&str> = rows.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        assert_eq!(failed, vec!["receipt.signature"]);
        // An empty measurement passes, bound through the log.
        let rows = check_receipt(&signer.sign(ReceiptBody { launch_measurement: vec![], ..body }), &rt, &expect);
        assert!(rows.iter().all(|c| c.passed));
    }

    #[test]
    fn attest_refusals() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let signer = ReceiptSigner::from_seed(&[3; 32]).unwrap();
        let psp = SimPsp::new(SimRoot::generate(), [0x11; 48]);
        let nonce = [8u8; 32];
        let ev = psp.evidence(runtime_log(&keys, &signer), &nonce);
        let e = attest_runtime(ev.clone(), &nonce, &Refuser).unwrap_err();
        assert!(e.to_string().contains("sim.measurement"), "{e}");
        assert!(matches!(attest_runtime(ev.clone(), &[9; 32], &Lenient), Err(AttestError::Release(ReleaseError::NonceMismatch { .. }))));
        // A swapped PublicKey event (a man in the middle's key) breaks the binding.
        let mut swapped = ev.clone();
        let mallory = RuntimeKeyPair::generate().unwrap();
        for e in &mut swapped.event_log.events {
            if e.kind == EventKind::PublicKey {
                *e = mallory.public_key_event();
            }
        }
        assert!(matches!(attest_runtime(swapped, &nonce, &Lenient), Err(AttestError::Release(ReleaseError::Binding))));
        // A log without a receipt key is refused.
        let mut log = EventLog::default();
        log.extend(keys.public_key_event());
        let ev = psp.evidence(log, &nonce);
        assert!(matches!(attest_runtime(ev, &nonce, &Lenient), Err(AttestError::Missing(EventKind::ReceiptKey))));
    }
}
