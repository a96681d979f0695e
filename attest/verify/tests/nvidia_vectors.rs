//! NVIDIA H100 GPU evidence and RIM verification against the genuine vectors in
//! `testdata/nvidia/` (see its README) and the derived, test-signed RIM pair in
//! `testdata/nvidia_derived/` (see derive.py: NOT NVIDIA-signed; used only for the comparison
//! logic, because the genuine RIMs describe other versions than the genuine report).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_proto::evidence::GpuEvidence;
use chrysalis_verify::nvidia::{
    self, ChainError, NvError, OcspStatus, Rim, RimBundle, RimComparison, RimError, RimSource, SpdmReport, Trust, x509,
};
use sha2::{Digest, Sha256};

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const FWID: &str = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d";

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Seconds since the epoch to SystemTime.
fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// 2026-11-27T00:00:00Z: a date when the device chain (valid to 9999) is valid.
fn now() -> SystemTime {
    at(1_795_737_600)
}

fn nonce() -> [u8; 32] {
    hex::decode(NONCE).unwrap().try_into().unwrap()
}

fn report() -> Vec<u8> {
    let text = String::from_utf8(read("nvidia/trustee-hopper/hopperAttestationReport.txt")).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn chain(case: u8) -> Vec<Vec<u8>> {
    let pem = String::from_utf8(read(&format!("nvidia/trustee-hopper/hopper_cert_chain_case{case}.txt"))).unwrap();
    x509::pem_to_der_chain(&pem).unwrap()
}

fn evidence(case: u8) -> GpuEvidence {
    GpuEvidence { report: report(), cert_chain: chain(case) }
}

fn verify(ev: &GpuEvidence) -> Result<nvidia::GpuClaims, NvError> {
    nvidia::verify_gpu(ev, &nonce(), &RimBundle::new(), now()).map(|v| v.into_inner())
}

#[test]
fn pinned_roots_are_nvtrusts() {
    for (pinned, copy, sha) in [
        (
            "../verify/roots/nvidia/device_root.pem",
            "nvidia/nvtrust-rim/verifier_device_root.pem",
            "6e6e91e84068cb7de2c715ca73d6df168a16b23d96a895b42e553b297a471bfc",
        ),
        (
            "../verify/roots/nvidia/rim_root.pem",
            "nvidia/nvtrust-rim/verifier_RIM_root.pem",
            "afe8d01ab79b451fc6401a00bd8d3cba283e67339bd902e14bb41171eacb99d1",
        ),
    ] {
        let bytes = read(pinned);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha, "{pinned}");
        assert_eq!(bytes, read(copy));
    }
    assert_eq!(x509::DEVICE_ROOT_PEM.as_bytes(), read("../verify/roots/nvidia/device_root.pem"));
    assert_eq!(x509::RIM_ROOT_PEM.as_bytes(), read("../verify/roots/nvidia/rim_root.pem"));
}

#[test]
fn report_parses_like_the_independent_checker() {
    let expected: serde_json::Value =
        serde_json::from_slice(&read("nvidia/trustee-hopper/hopperAttestationReport.expected.json")).unwrap();
    let r = SpdmReport::parse(&report()).unwrap();
    assert_eq!(hex::encode(r.request_nonce), expected["request_nonce"].as_str().unwrap());
    assert_eq!(hex::encode(r.responder_nonce), expected["response_nonce"].as_str().unwrap());
    assert_eq!(r.measurement_record.len() as u64, expected["measurement_record_len"].as_u64().unwrap());
    assert_eq!(r.signed.len() as u64, expected["signed_len"].as_u64().unwrap());
    assert_eq!(hex::encode(r.signature), expected["signature"].as_str().unwrap());
    let blocks = expected["blocks"].as_array().unwrap();
    assert_eq!(r.blocks.len(), blocks.len());
    for (b, e) in r.blocks.iter().zip(blocks) {
        assert_eq!(u64::from(b.index), e["index"].as_u64().unwrap());
        assert_eq!(hex::encode(&b.value), e["value"].as_str().unwrap());
    }
    for (kind, value) in expected["opaque_types"].as_object().unwrap() {
        let kind: u16 = kind.parse().unwrap();
        // The checker printed at most 40 bytes of each field.
        let ours = hex::encode(r.opaque(kind).unwrap());
        assert!(ours.starts_with(value.as_str().unwrap()), "opaque {kind}");
    }
}

#[test]
fn report_with_case1_chain_verifies() {
    let claims = verify(&evidence(1)).unwrap();
    assert_eq!(hex::encode(&claims.nonce), NONCE);
    assert_eq!(claims.driver_version, "550.90.07");
    assert_eq!(claims.vbios_version, "96.00.9f.00.01");
    assert_eq!((claims.project.as_str(), claims.project_sku.as_str(), claims.chip_sku.as_str()), ("1010", "0200", "882"));
    assert_eq!(claims.measurements.len(), 64);
    assert!(claims.device_leaf.contains("GH100 A01 GSP FMC LF"));
    assert_eq!(claims.measurements_digest.len(), 48);
    assert_eq!(claims.cc_mode, None);
    assert_eq!(claims.nvdec0_status, Some(0x55));
    // No RIMs in the bundle: reported, not failed; OCSP: no stored responses.
    assert_eq!(
        claims.rim,
        RimComparison::NotAvailable {
            missing: vec!["NV_GPU_DRIVER_GH100_550.90.07".into(), "NV_GPU_VBIOS_1010_0200_882_96009F0001".into()]
        }
    );
    assert_eq!(claims.device_ocsp.len(), 4);
    assert!(claims.device_ocsp.iter().all(|o| o.status == OcspStatus::NoResponse));
    // The claims serialise for the CLI's --json.
    let json = serde_json::to_value(&claims).unwrap();
    assert_eq!(json["fwid"], FWID);
}

#[test]
fn fwid_matches_readme() {
    let leaf = x509::parse_cert(0, &chain(1)[0]).unwrap();
    assert_eq!(hex::encode(x509::fwid(&leaf).unwrap()), FWID);
    assert_eq!(hex::encode(verify(&evidence(1)).unwrap().fwid), FWID);
    let single = String::from_utf8(read("nvidia/trustee-hopper/hopper_signing_cert.pem")).unwrap();
    assert_eq!(x509::pem_to_der_chain(&single).unwrap()[0], chain(1)[0]);
}

/// Offset of a byte inside the first measurement block's value (signed, not a length).
fn offset_in_block_value() -> usize {
    37 + 8 + 4 + 3 + 10
}

#[test]
fn flipped_bit_in_signed_part_fails_signature() {
    let mut ev = evidence(1);
    ev.report[offset_in_block_value()] ^= 0x01;
    assert!(matches!(verify(&ev), Err(NvError::Signature)));
    // A flip in the request nonce (also signed) fails the signature before the nonce check.
    let mut ev = evidence(1);
    ev.report[4] ^= 0x80;
    assert!(matches!(verify(&ev), Err(NvError::Signature)));
}

#[test]
fn flipped_bit_in_report_fwid_is_a_fwid_mismatch() {
    let mut ev = evidence(1);
    let r = SpdmReport::parse(&ev.report).unwrap();
    let fwid = r.opaque(20).unwrap().to_vec();
    let at = ev.report.windows(48).position(|w| w == fwid.as_slice()).unwrap();
    ev.report[at + 47] ^= 0x01;
    assert!(matches!(verify(&ev), Err(NvError::FwidMismatch { .. })));
}

#[test]
fn flipped_bit_in_signature_fails() {
    let mut ev = evidence(1);
    let n = ev.report.len();
    ev.report[n - 1] ^= 0x01;
    assert!(matches!(verify(&ev), Err(NvError::Signature)));
    let mut ev = evidence(1);
    ev.report[n - 96] ^= 0x01;
    assert!(matches!(verify(&ev), Err(NvError::Signature)));
}

#[test]
fn flipped_bit_in_a_certificate_fails_the_chain() {
    // Last byte of each certificate: inside its ECDSA signature's s value.
    for index in 0..4 {
        let mut ev = evidence(1);
        let last = ev.cert_chain[index].len() - 1;
        ev.cert_chain[index][last] ^= 0x01;
        match verify(&ev) {
            Err(NvError::DeviceChain(ChainError::BadSignature { index: i, .. })) => {
                assert_eq!(i, index)
            }
            other => panic!("cert {index}: {other:?}"),
        }
    }
    // A flip in the leaf's public key: the issuer's signature over it no longer verifies.
    let mut ev = evidence(1);
    let leaf = x509::parse_cert(0, &ev.cert_chain[0]).unwrap();
    let key = leaf.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
    let at = ev.cert_chain[0].windows(key.len()).position(|w| w == key.as_slice()).unwrap();
    ev.cert_chain[0][at + 20] ^= 0x01;
    assert!(matches!(
        verify(&ev),
        Err(NvError::DeviceChain(ChainError::BadSignature { index: 0, .. } | ChainError::UnsupportedAlgorithm { index: 0, .. }))
    ));
}

#[test]
fn chain_case2_root_only_is_too_short() {
    let e = verify(&evidence(2)).unwrap_err();
    assert!(matches!(e, NvError::DeviceChain(ChainError::TooShort { got: 1 })), "{e}");
    assert_eq!(
        e.to_string(),
        "GPU device certificate chain: certificate chain must have at least the root CA and signing certificates: got 1"
    );
}

#[test]
fn chain_case3_missing_intermediate_fails() {
    let e = verify(&evidence(3)).unwrap_err();
    match &e {
        NvError::DeviceChain(ChainError::IssuerMismatch { index: 1, issuer, next, .. }) => {
            assert!(issuer.contains("Provisioner ICA 1"), "{e}");
            assert!(next.contains("GH100 Identity"), "{e}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn chain_case4_missing_leaf_has_no_fwid() {
    let e = verify(&evidence(4)).unwrap_err();
    assert!(matches!(e, NvError::FwidMissingInCert), "{e}");
    assert_eq!(e.to_string(), "FwId oid not found in the NVIDIA signing certificate (2.23.133.5.4.1)");
}

#[test]
fn wrong_nonce_fails() {
    let mut other = nonce();
    other[31] ^= 1;
    let e = nvidia::verify_gpu(&evidence(1), &other, &RimBundle::new(), now()).unwrap_err();
    assert!(matches!(e, NvError::NonceMismatch { .. }), "{e}");
}

#[test]
fn truncated_or_padded_report_is_a_parse_error() {
    let mut ev = evidence(1);
    ev.report.push(0);
    assert!(matches!(verify(&ev), Err(NvError::Report(nvidia::SpdmError::Trailing(1)))));
    let mut ev = evidence(1);
    ev.report.truncate(100);
    assert!(matches!(verify(&ev), Err(NvError::Report(nvidia::SpdmError::Truncated { .. }))));
}

const VBIOS_RIM: &str = "nvidia/nvtrust-rim/1010_0200_882_96005E0001_PROD.swidtag";
const DRIVER_RIM: &str = "nvidia/nvtrust-rim/Driver_RIM_test_no_gpu.swidtag";
/// 2024-06-01T00:00:00Z: inside every RIM certificate's validity.
const JUNE_2024: u64 = 1_717_200_000;
/// 2025-07-01T00:00:00Z: after both L4 signers expired (2025-06-22 / 2025-06-26).
const JULY_2025: u64 = 1_751_328_000;

fn rim_root() -> x509_cert::Certificate {
    x509::root_from_pem(x509::RIM_ROOT_PEM).unwrap()
}

#[test]
fn genuine_rims_verify_signature_and_chain_at_a_fixed_time() {
    let expected: serde_json::Value =
        serde_json::from_slice(&read("nvidia/nvtrust-rim/1010_0200_882_96005E0001_PROD.expected.json")).unwrap();
    for (file, version, active) in [(VBIOS_RIM, "96.00.5E.00.01", 12), (DRIVER_RIM, "545.00", 21)] {
        let rim = Rim::parse(&read(file)).unwrap();
        assert_eq!(rim.colloquial_version, version);
        assert_eq!(rim.measurements.len(), 64);
        assert_eq!(rim.active().count(), active);
        let v = rim.verify(&rim_root(), at(JUNE_2024)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(v.chain.certs.len(), 4);
        assert!(x509::subject(&v.chain.certs[0]).contains("HCC RIM L4 Signer"));
    }
    assert_eq!(Rim::parse(&read(VBIOS_RIM)).unwrap().tag_id, expected["tagId"].as_str().unwrap());
}

#[test]
fn genuine_rims_fail_after_the_l4_signer_expired() {
    for file in [VBIOS_RIM, DRIVER_RIM] {
        let e = Rim::parse(&read(file)).unwrap().verify(&rim_root(), at(JULY_2025)).unwrap_err();
        match &e {
            RimError::Chain(ChainError::Expired { index: 0, subject, not_after }) => {
                assert!(subject.contains("HCC RIM L4 Signer"));
                assert!(not_after.starts_with("2025-06-2"), "{not_after}");
            }
            other => panic!("{file}: {other}"),
        }
    }
}

#[test]
fn tampered_genuine_rim_fails_digest_or_signature() {
    let xml = String::from_utf8(read(VBIOS_RIM)).unwrap();
    // An active reference value (index 3's Hash0).
    let changed = xml.replacen("73bbf35822549e28", "73bbf35822549e29", 1);
    assert_ne!(changed, xml);
    let e = Rim::parse(changed.as_bytes()).unwrap().verify(&rim_root(), at(JUNE_2024)).unwrap_err();
    assert_eq!(e, RimError::DigestMismatch);
    // An attribute reordering is invisible to canonical XML: still valid.
    let reordered = xml.replacen("corpus=\"false\" name=\"GH100\"", "name=\"GH100\" corpus=\"false\"", 1);
    assert_ne!(reordered, xml);
    Rim::parse(reordered.as_bytes()).unwrap().verify(&rim_root(), at(JUNE_2024)).unwrap();
    // The SignedInfo's DigestMethod is signed: changing a signed byte of SignedInfo breaks it.
    let si = xml.replacen("<ds:DigestValue>D3Bc", "<ds:DigestValue>D3Bd", 1);
    let e = Rim::parse(si.as_bytes()).unwrap().verify(&rim_root(), at(JUNE_2024)).unwrap_err();
    assert_eq!(e, RimError::DigestMismatch);
    let sv = xml.replacen("<ds:SignatureValue>s5JY", "<ds:SignatureValue>s5JZ", 1);
    let e = Rim::parse(sv.as_bytes()).unwrap().verify(&rim_root(), at(JUNE_2024)).unwrap_err();
    assert_eq!(e, RimError::BadSignature);
}

#[test]
fn genuine_rims_with_other_versions_are_rejected_by_verify_gpu() {
    let mut b = RimBundle::new();
    b.insert_rim("NV_GPU_DRIVER_GH100_550.90.07", read(DRIVER_RIM));
    b.insert_rim("NV_GPU_VBIOS_1010_0200_882_96009F0001", read(VBIOS_RIM));
    let e = nvidia::verify_gpu(&evidence(1), &nonce(), &b, at(JUNE_2024)).unwrap_err();
    match e {
        NvError::RimVersion { rim_version, report_version, .. } => {
            assert_eq!((rim_version.as_str(), report_version.as_str()), ("545.00", "550.90.07"));
        }
        other => panic!("{other}"),
    }
}

// ---- Derived, test-signed pair (see testdata/nvidia_derived/derive.py) ----

fn derived_trust() -> Trust {
    let test_root = String::from_utf8(read("nvidia_derived/test_rim_root.pem")).unwrap();
    Trust::from_pem(x509::DEVICE_ROOT_PEM, &test_root).unwrap()
}

fn derived_bundle() -> RimBundle {
    RimBundle::load_dir(&data("nvidia_derived/bundle")).unwrap()
}

#[test]
fn derived_pair_compares_equal() {
    let claims =
        nvidia::verify_gpu_with(&evidence(1), &nonce(), &derived_bundle(), now(), &derived_trust()).unwrap().into_inner();
    match &claims.rim {
        RimComparison::Match { driver_version, vbios_version, compared } => {
            assert_eq!((driver_version.as_str(), vbios_version.as_str()), ("550.90.07", "96.00.9f.00.01"));
            // 21 driver + 12 VBIOS active indices; index 35 skipped (NVDEC0 disabled in the report).
            assert_eq!(compared.len(), 32);
            assert!(!compared.contains(&35));
        }
        other => panic!("{other:?}"),
    }
    // The stored OCSP response (signed by the test root) says the test L4 signer is good.
    assert_eq!(claims.rim_ocsp.len(), 2);
    assert!(claims.rim_ocsp.iter().all(|o| o.status == OcspStatus::Good), "{:?}", claims.rim_ocsp);
}

#[test]
fn derived_pair_reports_a_changed_block_by_index() {
    let bundle = derived_bundle();
    let trust = derived_trust();
    let load = |id: &str| Rim::parse(bundle.rim(id).unwrap()).unwrap().verify(&trust.rim_root, now()).unwrap().rim;
    let driver = load("NV_GPU_DRIVER_GH100_550.90.07");
    let vbios = load("NV_GPU_VBIOS_1010_0200_882_96009F0001");
    let mut r = SpdmReport::parse(&report()).unwrap();
    assert!(matches!(nvidia::compare(&r, &driver, &vbios).unwrap(), RimComparison::Match { .. }));
    // Block 4 is RIM index 3 (VBIOS); block 23 is RIM index 22 (driver).
    for b in r.blocks.iter_mut().filter(|b| b.index == 4 || b.index == 23) {
        b.value[0] ^= 0xff;
    }
    match nvidia::compare(&r, &driver, &vbios).unwrap() {
        RimComparison::Mismatch { mismatches } => {
            let got: Vec<(u16, RimSource)> = mismatches.iter().map(|m| (m.index, m.source)).collect();
            assert_eq!(got, vec![(3, RimSource::Vbios), (22, RimSource::Driver)]);
            assert_eq!(mismatches[0].found.as_ref().map(|v| v[0]), Some(0x73 ^ 0xff));
        }
        other => panic!("{other:?}"),
    }
    // A missing block is a mismatch too.
    r.blocks.retain(|b| b.index != 2);
    let RimComparison::Mismatch { mismatches } = nvidia::compare(&r, &driver, &vbios).unwrap() else { panic!() };
    assert!(mismatches.iter().any(|m| m.index == 1 && m.found.is_none()));
}

#[test]
fn derived_rims_are_not_trusted_under_nvidias_root() {
    let e = nvidia::verify_gpu(&evidence(1), &nonce(), &derived_bundle(), now()).unwrap_err();
    assert!(matches!(e, NvError::Rim { source: RimError::Chain(ChainError::UntrustedRoot { .. }), .. }), "{e}");
}

#[test]
fn revoked_rim_signer_fails() {
    let mut bundle = derived_bundle();
    let mut revoked = RimBundle::new();
    for id in bundle.rim_ids().map(str::to_string).collect::<Vec<_>>() {
        revoked.insert_rim(id.clone(), bundle.rim(&id).unwrap().to_vec());
    }
    revoked.insert_ocsp(read("nvidia_derived/revoked.der"));
    let e = nvidia::verify_gpu_with(&evidence(1), &nonce(), &revoked, now(), &derived_trust()).unwrap_err();
    assert!(matches!(e, NvError::Revoked { .. }), "{e}");
    // After the response's nextUpdate (2026-12-01) it is stale and ignored: no status.
    bundle.insert_ocsp(read("nvidia_derived/revoked.der"));
    let stale = at(1_811_808_000); // 2027-06-01
    let claims = nvidia::verify_gpu_with(&evidence(1), &nonce(), &bundle, stale, &derived_trust()).unwrap().into_inner();
    assert!(claims.rim_ocsp.iter().all(|o| o.status == OcspStatus::NoResponse), "{:?}", claims.rim_ocsp);
}
