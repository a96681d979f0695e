//! Checking a runtime's receipts (`attest proxy`, `attest verify-receipt`) against a runtime
//! that [`crate::attested::attest_runtime`] accepted: the signature under its measured
//! `ReceiptKey`, and every field against the verified state and the exchange at hand.
//!
//! Trust: receipts are untrusted until [`check_receipt`] passes.

use chrysalis_proto::channel::receipt::{RECEIPT_VERSION, Receipt};
use chrysalis_proto::eventlog::Digest384;

use crate::attested::AttestedRuntime;
use crate::policy::Check;

/// What a receipt is checked against besides the runtime.
#[derive(Clone, Debug, Default)]
pub struct ReceiptExpectations {
    /// `method SP path` of the request, when known.
    pub target: Option<String>,
    /// The id the request was sealed with, when known (the client that sealed it knows it).
    pub request_id: Option<chrysalis_proto::channel::replay::RequestId>,
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
        (true, _) => Check::new(
            "receipt.measurement",
            true,
            "(not stated)",
            hex_or_none(runtime.launch_measurement.as_ref().map(|m| &m[..])),
        )
        .detail("the receipt states no measurement; it is bound to the verified one through the event log"),
        (false, Some(want)) => {
            Check::new("receipt.measurement", m.as_slice() == want.as_slice(), hex::encode(m), hex::encode(want))
                .detail("launch measurement of the verified report")
        }
        (false, None) => Check::new("receipt.measurement", false, hex::encode(m), "(none in the evidence)"),
    });
    out.push(
        Check::new(
            "receipt.bundle_header",
            b.bundle_header_sha384.as_deref() == runtime.bundle_header.as_ref().map(|d| &d[..]),
            hex_or_none(b.bundle_header_sha384.as_deref()),
            hex_or_none(runtime.bundle_header.as_ref().map(|d| &d[..])),
        )
        .detail(if b.model.is_empty() { "no model served".to_owned() } else { format!("model {}", b.model) }),
    );
    if let Some(t) = &expect.target {
        out.push(Check::new("receipt.target", &b.target == t, b.target.clone(), t.clone()));
    }
    if let Some(id) = expect.request_id {
        out.push(
            Check::new("receipt.request_id", b.request_id == id, hex::encode(b.request_id), hex::encode(id))
                .detail("the id sealed into this request: the receipt answers this request, not a replay of another"),
        );
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
pub(crate) mod tests {
    use super::*;
    use crate::attested::{AttestError, Challenge, EvidenceVerifier, VerifiedRuntime, attest_runtime};
    use crate::sim::{SimPsp, SimRoot};
    use chrysalis_proto::channel::receipt::{ReceiptBody, ReceiptSigner, request_hash, response_hash};
    use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
    use chrysalis_proto::evidence::Evidence;
    use chrysalis_proto::keyrelease::RuntimeKeyPair;

    /// Accepts everything, reporting the REPORT_DATA of the simulated report.
    pub(crate) struct Lenient;
    impl EvidenceVerifier for Lenient {
        fn verify(&self, evidence: &Evidence, _: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
            let chrysalis_proto::evidence::PlatformEvidence::Simulated { report } = &evidence.platform else {
                return Err(AttestError::Refused("not simulated".into()));
            };
            let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
            Ok(VerifiedRuntime { report_data: rd, steps: vec![], warnings: vec![] })
        }
    }

    pub(crate) struct Refuser;
    impl EvidenceVerifier for Refuser {
        fn verify(&self, _: &Evidence, _: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
            Err(AttestError::Refused("sim.measurement: found 00, expected 11".into()))
        }
    }

    pub(crate) fn runtime_log(keys: &RuntimeKeyPair, signer: &ReceiptSigner) -> EventLog {
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
        let rt = attest_runtime(ev.clone(), Challenge::undated(&nonce), &Lenient).unwrap();
        assert_eq!(rt.public_key, keys.public_key());
        assert_eq!(rt.receipt_key, signer.public_key());
        assert_eq!(rt.launch_measurement, Some([0x11; 48]));
        assert!(rt.bundle_header.is_some());

        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            target: "POST /v1/completions".into(),
            request_id: [7; 16],
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
            request_id: Some([7; 16]),
            request_sha384: Some(request_hash(b"req")),
            status: Some(200),
            response_sha384: Some(response_hash(b"resp")),
        };
        let good = signer.sign(body.clone());
        let rows = check_receipt(&good, &rt, &expect);
        assert!(rows.iter().all(|c| c.passed), "{rows:?}");

        // Each field changed (and re-signed by the right key) fails its own check.
        type Change = Box<dyn Fn(&mut ReceiptBody)>;
        let cases: Vec<(&str, Change)> = vec![
            ("receipt.event_log", Box::new(|b| b.event_log_digest[0] ^= 1)),
            ("receipt.measurement", Box::new(|b| b.launch_measurement[0] ^= 1)),
            ("receipt.bundle_header", Box::new(|b| b.bundle_header_sha384 = None)),
            ("receipt.target", Box::new(|b| b.target = "POST /v1/chat/completions".into())),
            ("receipt.request", Box::new(|b| b.request_sha384 = request_hash(b"other"))),
            ("receipt.request_id", Box::new(|b| b.request_id[0] ^= 1)),
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
}
