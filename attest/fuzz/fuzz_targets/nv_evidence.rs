//! Fuzz the NVIDIA GPU evidence path: SPDM report parsing and full verification against
//! the genuine device chain, RIM XML parsing / canonicalisation / verification, and PEM
//! chain parsing. Every input must give Ok or a typed error; canonical XML must be a fixed
//! point (canonicalising the canonical form changes nothing).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use chrysalis_proto::evidence::GpuEvidence;
use chrysalis_verify::nvidia::{self, Rim, RimBundle, SpdmReport, x509, xml};
use libfuzzer_sys::fuzz_target;

const CASE1: &str =
    include_str!("../../testdata/nvidia/trustee-hopper/hopper_cert_chain_case1.txt");

fn chain() -> &'static Vec<Vec<u8>> {
    static C: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| x509::pem_to_der_chain(CASE1).unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_717_200_000);
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            let _ = SpdmReport::parse(rest);
            let ev = GpuEvidence {
                report: rest.to_vec(),
                cert_chain: chain().clone(),
            };
            let _ = nvidia::verify_gpu(&ev, &[0u8; 32], &RimBundle::new(), now);
        }
        1 => {
            if let Ok(root) = xml::parse(rest) {
                let c1 = xml::canonicalize(&root, &xml::NsScope::new(), None);
                let again = xml::parse(c1.as_bytes()).expect("canonical XML must re-parse");
                let c2 = xml::canonicalize(&again, &xml::NsScope::new(), None);
                assert_eq!(c1, c2, "C14N is not idempotent");
            }
        }
        2 => {
            if let Ok(rim) = Rim::parse(rest) {
                if let Ok(root) = x509::root_from_pem(x509::RIM_ROOT_PEM) {
                    let _ = rim.verify(&root, now);
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(ders) = x509::pem_to_der_chain(text) {
                    if let Ok(root) = x509::root_from_pem(x509::DEVICE_ROOT_PEM) {
                        let _ = x509::verify_chain(&ders, &root, now, 1);
                    }
                }
            }
            let ev = GpuEvidence {
                report: Vec::new(),
                cert_chain: vec![rest.to_vec()],
            };
            let _ = nvidia::verify_gpu(&ev, &[0u8; 32], &RimBundle::new(), now);
        }
    }
});
