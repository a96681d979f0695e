//! Fuzz the evidence-bundle decoder (what an owner or client fetches from a runtime's
//! `GET /v1/attestation`): `Evidence::from_bytes` must give Ok or a typed error, never a
//! panic. Postcard accepts overlong varints, so the format is not canonical and the
//! round-trip property is on values: a decoded bundle re-encodes with `to_bytes` to at most
//! as many bytes as the input, that encoding decodes to the same bundle, and it is a fixed
//! point (`to_bytes(from_bytes(to_bytes(e))) == to_bytes(e)`). The cheap untrusted-input
//! helpers a verifier runs on a decoded bundle (event-data check, log digest and
//! REPORT_DATA, GPU binding lookup, launch measurement) must not panic either.
#![no_main]

use chrysalis_proto::channel::receipt::launch_measurement;
use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence};
use chrysalis_proto::gpubind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ev = match Evidence::from_bytes(data) {
        Ok(ev) => ev,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(ev.version, EVIDENCE_VERSION);
    let canonical = ev.to_bytes();
    assert!(canonical.len() <= data.len(), "re-encoding grew: {} > {}", canonical.len(), data.len());
    let again = Evidence::from_bytes(&canonical).expect("the re-encoding of a decoded bundle decodes");
    assert_eq!(again, ev);
    assert_eq!(again.to_bytes(), canonical, "to_bytes is not a fixed point");

    let _ = ev.event_log.check();
    let digest = ev.event_log.digest();
    assert_eq!(ev.event_log.report_data(&ev.nonce), again.event_log.report_data(&ev.nonce));
    assert_eq!(digest, again.event_log.digest());
    if let Ok(b) = gpubind::find_binding(&ev.event_log) {
        assert!(b.index < ev.event_log.events.len());
        let _ = gpubind::gpus_digest(&ev.gpus);
    }
    let _ = launch_measurement(&ev.platform);
});
