//! Every launch digest upstream `sev-snp-measure`'s own test suite computes
//! (`attest/testdata/measure/sev-snp-measure/vectors.expected.json`) must come out of our code
//! byte for byte: SEV, SEV-ES, SEV-SNP (QEMU, EC2, GCE; precomputed OVMF hash) and
//! SNP with Coconut-SVSM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use chrysalis_measure::MeasureError;
use chrysalis_measure::snp::{self, SnpLaunchInputs, SvsmLaunchInputs, VmmType};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/measure/sev-snp-measure")
}

/// Upstream paths are relative to its repo (`tests/fixtures/...`) or its tests dir.
fn fixture(p: &str) -> Vec<u8> {
    let name = Path::new(p).file_name().unwrap();
    std::fs::read(data_dir().join("fixtures").join(name)).unwrap()
}

/// `/dev/null` is an empty file; `null` means "not given".
fn file_arg(v: &serde_json::Value) -> Option<Vec<u8>> {
    match v.as_str() {
        None => None,
        Some("/dev/null") => Some(Vec::new()),
        Some(p) => Some(fixture(p)),
    }
}

fn vmm(v: &serde_json::Value) -> VmmType {
    match v.as_str().unwrap() {
        "VMMType.QEMU" => VmmType::Qemu,
        "VMMType.ec2" => VmmType::Ec2,
        "VMMType.gce" => VmmType::Gce,
        other => panic!("unknown vmm {other}"),
    }
}

fn compute(a: &serde_json::Value) -> Result<Vec<u8>, MeasureError> {
    let ovmf = fixture(a["ovmf_file"].as_str().unwrap());
    let kernel = file_arg(&a["kernel"]);
    let initrd = file_arg(&a["initrd"]);
    let cmdline = a["append"].as_str().unwrap_or("");
    let vcpus = a["vcpus"].as_u64().unwrap() as u32;
    // `vcpu_sig: null` is only used with GCE (RDX fixed) or SEV (no VMSA).
    let vcpu_sig = a["vcpu_sig"].as_u64().unwrap_or(0) as u32;
    let seed =
        a["snp_ovmf_hash_str"].as_str().filter(|s| !s.is_empty()).map(|s| <[u8; 48]>::try_from(hex::decode(s).unwrap()).unwrap());
    let inp = SnpLaunchInputs {
        ovmf: &ovmf,
        kernel: kernel.as_deref(),
        initrd: initrd.as_deref(),
        cmdline,
        vcpus,
        vcpu_sig,
        guest_features: a["guest_features"].as_u64().unwrap(),
        vmm: vmm(&a["vmm_type"]),
        ovmf_digest: seed,
    };
    match a["mode"].as_str().unwrap() {
        "SevMode.SEV" => snp::sev_launch_digest(&ovmf, kernel.as_deref(), initrd.as_deref(), cmdline).map(|d| d.to_vec()),
        "SevMode.SEV_ES" => snp::sev_es_launch_digest(&inp).map(|d| d.to_vec()),
        "SevMode.SEV_SNP" => snp::launch_digest(&inp).map(|d| d.to_vec()),
        "SevMode.SEV_SNP_SVSM" => {
            let svsm = fixture(a["svsm_file"].as_str().unwrap());
            snp::svsm_launch_digest(&SvsmLaunchInputs {
                ovmf: &ovmf,
                svsm: &svsm,
                ovmf_vars_size: a["ovmf_vars_size"].as_u64().unwrap(),
                vcpus,
                vcpu_sig,
            })
            .map(|d| d.to_vec())
        }
        m => panic!("unknown mode {m}"),
    }
}

#[test]
fn every_upstream_vector_is_reproduced() {
    let text = std::fs::read_to_string(data_dir().join("vectors.expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vectors = v["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 26, "the vector file changed: review this test");
    let mut failures = Vec::new();
    for t in vectors {
        let name = t["test"].as_str().unwrap();
        let want = t["launch_digest"].as_str().unwrap();
        match compute(&t["args"]) {
            Ok(got) if hex::encode(&got) == want => println!("ok   {name} {want}"),
            Ok(got) => failures.push(format!("{name}: got {}, want {want}", hex::encode(got))),
            Err(e) => failures.push(format!("{name}: error {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} vectors differ:\n{}", failures.len(), vectors.len(), failures.join("\n"));
}

#[test]
fn ovmf_only_digest_matches_upstream_precomputed_hash() {
    // README: calc_snp_ovmf_hash over the 4 KiB AmdSev suffix.
    let ovmf = fixture("ovmf_AmdSev_suffix.bin");
    assert_eq!(
        hex::encode(snp::ovmf_digest(&ovmf).unwrap()),
        "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
    );
}

#[test]
fn plain_ovmf_x64_refuses_a_kernel() {
    // Upstream negative case: OvmfPkgX64 has no SNP_KERNEL_HASHES section.
    let ovmf = fixture("ovmf_OvmfX64_suffix.bin");
    let inp = SnpLaunchInputs {
        ovmf: &ovmf,
        kernel: Some(b""),
        initrd: None,
        cmdline: "",
        vcpus: 1,
        vcpu_sig: snp::vcpu_sig_of("EPYC-v4").unwrap(),
        guest_features: 0x21,
        vmm: VmmType::Qemu,
        ovmf_digest: None,
    };
    assert!(matches!(snp::launch_digest(&inp), Err(MeasureError::NoKernelHashesSupport(_))));
    assert!(matches!(snp::sev_es_launch_digest(&inp), Err(MeasureError::NoKernelHashesSupport(_))));
}
