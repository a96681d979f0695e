//! Fuzz the TDX quote parser and the collateral-free verification path: every input must
//! give Ok or a typed error, never a panic; a parsed quote's ranges must lie inside the input.
#![no_main]

use chrysalis_verify::tdx;
use chrysalis_proto::wire::tdx::TdxQuote;
use libfuzzer_sys::fuzz_target;

/// 2026-02-03T01:00:00Z, inside the validity of every seed's PCK certificate.
const NOW: u64 = 1_770_080_400;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = TdxQuote::parse(data) {
        assert!(q.signed_len <= data.len());
        assert!(q.signed_bytes(data).is_some());
        assert!(q.padding <= data.len());
        assert_eq!(q.qe_report_bytes.len(), 384);
        // Re-parsing is deterministic.
        assert_eq!(TdxQuote::parse(data).ok(), Some(q));
    }
    if let Err(e) = tdx::verify_quote_signature_only(data, NOW) {
        let _ = e.to_string();
    }
});
