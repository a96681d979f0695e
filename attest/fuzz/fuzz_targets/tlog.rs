//! Fuzz the transparency log's readers of untrusted bytes: the checkpoint note (signed-note
//! parsing, log signature, cosignatures, checkpoint body), note keys, entry bundles and
//! entries (canonical JSON, kinds): Ok or a typed error, never a panic.
#![no_main]

use std::sync::OnceLock;

use chrysalis_tlog::LogPolicy;
use chrysalis_tlog::entry::{Entry, canonical_json};
use chrysalis_tlog::keys::{CosignatureSigner, CosignatureVerifier, KeyKind, encode_pair, log_signer, log_verifier};
use chrysalis_tlog::log::{MAX_TREE_SIZE, decode_bundle, encode_bundle};
use chrysalis_tlog::verify::verify_checkpoint_bytes;
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static LogPolicy {
    static P: OnceLock<LogPolicy> = OnceLock::new();
    P.get_or_init(|| LogPolicy {
        log_key: encode_pair("example.com/fuzz-log", KeyKind::Log, &[1; 32]).1,
        witnesses: vec![encode_pair("w1", KeyKind::Witness, &[2; 32]).1],
        min_witnesses: 1,
    })
}

fuzz_target!(|data: &[u8]| {
    match verify_checkpoint_bytes(data, policy()) {
        Ok(cp) => {
            assert!(cp.size <= MAX_TREE_SIZE);
            assert!(!cp.witnesses.is_empty());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = log_verifier(text);
        let _ = log_signer(text);
        let _ = CosignatureVerifier::new(text);
        let _ = CosignatureSigner::new(text, 0);
    }
    // Entry bundle: the first byte is how many entries the tile width says it holds.
    let want = data.first().map_or(0, |&b| usize::from(b));
    let bundle = data.get(1..).unwrap_or_default();
    if let Ok(entries) = decode_bundle(bundle, want) {
        assert_eq!(entries.len(), want);
        assert_eq!(encode_bundle(&entries).ok().as_deref(), Some(bundle), "bundles round-trip");
    }
    // Entries: canonical form is a fixed point.
    if let Ok(c) = canonical_json(data) {
        assert_eq!(canonical_json(&c).ok().as_ref(), Some(&c));
        if let Ok(e) = Entry::parse(&c) {
            assert!(e.to_canonical().is_ok());
        }
    }
});
