//! Fuzz the SNP certificate-table parser (`chrysalis_proto::wire::cert_table::parse`), which
//! a runtime feeds with the host's `auxblob` / extended-report certificate buffer: Ok or a
//! typed error, never a panic. An accepted table's entries point inside the input, carry
//! the GUID read at their slot, and round-trip through the writer: `build` of the parsed
//! entries parses to the same entries, and that build is a fixed point of parse-then-build.
//! `certificates` must return only non-empty certificate entries.
#![no_main]

use chrysalis_proto::wire::cert_table::{CertEntry, CertKind, build, certificates, parse};
use libfuzzer_sys::fuzz_target;

/// Writer input for `entries`, whose GUIDs are `guids`.
fn rebuild(guids: &[[u8; 16]], entries: &[CertEntry]) -> Vec<u8> {
    let items: Vec<([u8; 16], &[u8])> = guids.iter().copied().zip(entries.iter().map(|e| e.data.as_slice())).collect();
    build(&items)
}

fuzz_target!(|data: &[u8]| {
    let entries = match parse(data) {
        Ok(entries) => entries,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(entries.len() <= 64);
    // Entry i's GUID is at slot i (24 bytes per slot, GUID first).
    let guids: Vec<[u8; 16]> = (0..entries.len())
        .map(|i| {
            let g = data.get(i * 24..i * 24 + 16).expect("an accepted entry's slot is inside the input");
            g.try_into().expect("16 bytes")
        })
        .collect();
    for (e, g) in entries.iter().zip(&guids) {
        assert_ne!(g, &[0; 16]);
        if let CertKind::Other(o) = e.kind {
            assert_eq!(&o, g);
        }
        assert!(e.data.len() <= data.len());
    }

    let built = rebuild(&guids, &entries);
    let again = parse(&built).expect("a built table parses");
    assert_eq!(again, entries, "cert table round trip");
    assert_eq!(rebuild(&guids, &again), built, "build is not a fixed point");

    let certs = certificates(&entries);
    let wanted = entries.iter().filter(|e| e.kind.is_certificate() && !e.data.is_empty()).count();
    assert_eq!(certs.len(), wanted);
    for c in &certs {
        assert!(!c.is_empty() && entries.iter().any(|e| &e.data == c));
    }
});
