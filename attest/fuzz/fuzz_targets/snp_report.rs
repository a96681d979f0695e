//! Fuzz the SEV-SNP report parser and everything that reads a report: the hardware verifier
//! (without certificates, and against a genuine pre-verified VCEK chain), the simulated-TEE
//! verifier, and KDS addressing. Any input must give Ok or a typed error, never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use chrysalis_verify::sim::{verify_sim, SimRootPublicKey};
use chrysalis_verify::snp::{self, kds::VcekId, SnpReport, VerifiedChain};
use libfuzzer_sys::fuzz_target;

const VCEK: &[u8] = include_bytes!("../../testdata/snp/trustee-milan/test-vcek.der");
/// A fixed P-384 point (the generator's SEC1 encoding) standing in for a simulation root.
const SIM_ROOT: &str = "04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab73617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f";

fn chain() -> Option<&'static VerifiedChain> {
    static CHAIN: OnceLock<Option<VerifiedChain>> = OnceLock::new();
    CHAIN
        .get_or_init(|| {
            let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
            snp::verify_cert_chain(&[VCEK.to_vec()], at).ok().map(|(c, _)| c)
        })
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = SnpReport::parse(data) {
        let _ = (r.signing_key(), r.cpuid_product(), r.chip_id_masked(), r.is_simulated(), r.reported_tcb());
        let _ = r.sev().to_string();
        if let Ok(id) = VcekId::for_report(&r, None) {
            let _ = (id.url(snp::kds::KDS_BASE), id.cache_file_name());
        }
    }
    let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let _ = snp::verify_report(data, &[], at);
    if let Some(c) = chain() {
        let _ = snp::verify_report_with_chain(data, c);
    }
    if let Ok(k) = SimRootPublicKey::parse(SIM_ROOT) {
        let _ = verify_sim(data, &k);
    }
});
