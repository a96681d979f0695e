//! Fuzz AMD certificate handling: DER/PEM decoding, the AMD extensions, key extraction,
//! signature checks against the pinned ASK, chain building to the pinned roots, and a
//! genuine report verified with the fuzzed certificate as its VCEK. Never a panic.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use chrysalis_verify::snp::{self, AmdCert};
use libfuzzer_sys::fuzz_target;

const REPORT: &[u8] = include_bytes!("../../testdata/snp/trustee-milan/test-report.bin");

fuzz_target!(|data: &[u8]| {
    let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    if let Ok(certs) = AmdCert::from_der_or_pem(data) {
        let pinned = snp::roots::pinned().ok();
        for c in &certs {
            let _ = (c.subject(), c.issuer(), c.subject_cn(), c.name(), c.validity_secs(), c.valid_at(at));
            let _ = (c.amd_extensions(), c.p384_key().is_some(), c.rsa_key().is_some(), c.is_self_issued());
            if let Some(r) = pinned.and_then(|p| p.first()) {
                let _ = c.verify_signed_by(&r.ask);
                let _ = r.ask.verify_signed_by(c);
            }
        }
    }
    let der = vec![data.to_vec()];
    let _ = snp::verify_cert_chain(&der, at);
    let _ = snp::verify_report(REPORT, &der, at);
});
