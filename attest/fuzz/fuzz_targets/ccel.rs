//! Fuzz the CCEL ACPI table parser and the TCG event log parser/replayer, including the
//! human-readable listing (which decodes event data): Ok or a typed error, never a panic.
#![no_main]

use chrysalis_verify::ccel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ccel::CcelTable::parse(data);
    match ccel::replay(data) {
        Ok(r) => {
            assert!(r.used_len <= data.len());
            assert_eq!(r.events.first().map(|e| e.seq), Some(0));
            let listing = r.to_string();
            assert!(listing.starts_with("TCG event log"));
            for e in &r.events {
                let _ = e.description();
                assert!(e.offset < data.len());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
