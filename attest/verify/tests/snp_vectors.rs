//! Genuine AMD SEV-SNP reports and certificates from testdata/snp (see its README.md for
//! provenance and expected values): each verifies at the time its README gives, its fields
//! equal expected.json, and every tampering fails with a specific error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_verify::claims::{SnpProduct, SnpSigner};
use chrysalis_verify::snp::{self, SnpError, SnpReport, TcbParts};

fn data(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/snp").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2026-01-01T00:00:00Z: all certificates of the Milan v2 vectors are valid (README "Notes").
const JAN_2026: u64 = 1_767_225_600;
/// 2026-07-01T00:00:00Z: the dstack VCEK is valid from 2026-06-17 (README table).
const JUL_2026: u64 = 1_782_864_000;
/// 2050-01-01: after every ASK's notAfter (2045/2048).
const JAN_2050: u64 = 2_524_608_000;

struct Vector {
    name: &'static str,
    report: &'static str,
    certs: &'static [&'static str],
    time: u64,
    version: u32,
}

const VECTORS: [Vector; 3] = [
    Vector {
        name: "virtee-sev-milan",
        report: "virtee-sev-milan/report_milan.bin",
        certs: &["virtee-sev-milan/vcek_milan.der", "virtee-sev-milan/cert_chain_milan.pem"],
        time: JAN_2026,
        version: 2,
    },
    Vector {
        name: "trustee-milan",
        report: "trustee-milan/test-report.bin",
        certs: &["trustee-milan/test-vcek.der"],
        time: JAN_2026,
        version: 2,
    },
    Vector {
        name: "dstack-milan-v3",
        report: "dstack-milan-v3/report.bin",
        certs: &["dstack-milan-v3/vcek_from_fixture.pem", "dstack-milan-v3/ask_from_fixture.pem"],
        time: JUL_2026,
        version: 3,
    },
];

fn certs(v: &Vector) -> Vec<Vec<u8>> {
    v.certs.iter().map(|c| data(c)).collect()
}

fn expected(v: &Vector) -> serde_json::Value {
    serde_json::from_slice(&data(&format!("{}/expected.json", v.name))).unwrap()
}

fn hex_field(e: &serde_json::Value, key: &str) -> Vec<u8> {
    hex::decode(e["report"][key].as_str().unwrap()).unwrap()
}

fn int_field(e: &serde_json::Value, key: &str) -> u64 {
    match &e["report"][key] {
        serde_json::Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap(),
        serde_json::Value::Number(n) => n.as_u64().unwrap(),
        other => panic!("{key}: {other}"),
    }
}

fn tcb_field(e: &serde_json::Value, key: &str) -> u64 {
    let s = e["report"][key]["raw"].as_str().unwrap();
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn every_genuine_report_verifies_with_expected_fields() {
    for v in &VECTORS {
        let e = expected(v);
        let res = snp::verify_report_detailed(&data(v.report), &certs(v), at(v.time));
        let res = res.unwrap_or_else(|err| panic!("{}: {err}", v.name));
        let c = res.claims.claims();
        assert_eq!(c.version, v.version, "{}", v.name);
        assert_eq!((c.product, c.signer, c.simulated), (SnpProduct::Milan, SnpSigner::Vcek, false));
        assert_eq!(c.measurement, hex_field(&e, "measurement"), "{}", v.name);
        assert_eq!(c.report_data, hex_field(&e, "report_data"), "{}", v.name);
        assert_eq!(c.chip_id, hex_field(&e, "chip_id"), "{}", v.name);
        assert_eq!(c.host_data, hex_field(&e, "host_data"), "{}", v.name);
        assert_eq!(c.id_key_digest, hex_field(&e, "id_key_digest"), "{}", v.name);
        assert_eq!(c.author_key_digest, hex_field(&e, "author_key_digest"), "{}", v.name);
        assert_eq!(c.family_id, hex_field(&e, "family_id"), "{}", v.name);
        assert_eq!(c.image_id, hex_field(&e, "image_id"), "{}", v.name);
        assert_eq!(c.policy, int_field(&e, "policy"), "{}", v.name);
        assert_eq!(u64::from(c.guest_svn), int_field(&e, "guest_svn"), "{}", v.name);
        assert_eq!(u64::from(c.vmpl), int_field(&e, "vmpl"), "{}", v.name);
        assert_eq!(c.platform_info, int_field(&e, "platform_info"), "{}", v.name);
        assert_eq!(c.reported_tcb, tcb_field(&e, "reported_tcb"), "{}", v.name);
        assert_eq!(c.current_tcb, tcb_field(&e, "current_tcb"), "{}", v.name);
        assert_eq!(c.committed_tcb, tcb_field(&e, "committed_tcb"), "{}", v.name);
        assert_eq!(c.launch_tcb, tcb_field(&e, "launch_tcb"), "{}", v.name);
        // The component split agrees with the independent parser.
        let parts = TcbParts::from_raw(c.reported_tcb, SnpProduct::Milan);
        let rt = &e["report"]["reported_tcb"];
        assert_eq!(u64::from(parts.bootloader), rt["bootloader"].as_u64().unwrap());
        assert_eq!(u64::from(parts.snp), rt["snp"].as_u64().unwrap());
        assert_eq!(u64::from(parts.microcode), rt["microcode"].as_u64().unwrap());
        assert_eq!(res.cert_tcb, parts);
        assert!(res.hwid_checked);
        assert_eq!(res.chain.root.subject_cn().as_deref(), Some("ARK-Milan"));
        assert_eq!(res.chain.leaf.issuer_cn().as_deref(), Some("SEV-Milan"));
        assert_eq!(hex::encode(sha256(res.chain.leaf.der())), e["vcek"]["sha256_der"].as_str().unwrap());
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

#[test]
fn readme_values_for_virtee_and_dstack() {
    let r = SnpReport::parse(&data("virtee-sev-milan/report_milan.bin")).unwrap();
    assert_eq!(
        hex::encode(r.sev().measurement),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(r.reported_tcb(), 0x7308_0000_0000_0003);
    let d = SnpReport::parse(&data("dstack-milan-v3/report.bin")).unwrap();
    assert!(d.sev().report_data.starts_with(b"attest-test-fixture-2026"));
    assert_eq!(d.reported_tcb(), 0xd517_0000_0000_0004);
    assert_eq!(d.cpuid_product(), Some(SnpProduct::Milan));
    let hex_report = String::from_utf8(data("virtee-sev-milan/report_milan.hex")).unwrap();
    assert_eq!(hex::decode(hex_report.trim()).unwrap(), data("virtee-sev-milan/report_milan.bin"));
}

fn verify_err(report: &[u8], certs: &[Vec<u8>], time: u64) -> SnpError {
    match snp::verify_report(report, certs, at(time)) {
        Ok(_) => panic!("tampered evidence verified"),
        Err(e) => e,
    }
}

#[test]
fn flipped_bit_in_signed_body_fails_with_report_signature() {
    for v in &VECTORS {
        let mut rep = data(v.report);
        rep[0x90] ^= 0x01; // MEASUREMENT
        let e = verify_err(&rep, &certs(v), v.time);
        assert!(matches!(e, SnpError::ReportSignature { signer: "VCEK", .. }), "{}: {e}", v.name);
        let mut rep = data(v.report);
        rep[0x50] ^= 0x80; // REPORT_DATA
        let e = verify_err(&rep, &certs(v), v.time);
        assert!(matches!(e, SnpError::ReportSignature { .. }), "{}: {e}", v.name);
    }
}

/// A P-384 verification costs ~25 ms in the test profile on the CI machine, so each vector
/// gets every 7th byte, at a different phase: together they cover 3/7 of all offsets, and the
/// unsigned tail (checked by the parser, no signature needed) is covered byte by byte.
#[test]
fn single_byte_changes_anywhere_in_the_report_fail() {
    for (k, v) in VECTORS.iter().enumerate() {
        let good = data(v.report);
        // Verify the chain once, then every altered report against it.
        let (chain, _) = snp::verify_cert_chain(&certs(v), at(v.time)).unwrap();
        assert!(snp::verify_report_with_chain(&good, &chain).is_ok());
        for i in (k..good.len()).step_by(7).chain(0x330..good.len()) {
            let mut rep = good.clone();
            rep[i] ^= 0x04;
            assert!(snp::verify_report_with_chain(&rep, &chain).is_err(), "{}: byte {i:#x} changed and still verified", v.name);
        }
    }
}

#[test]
fn flipped_bit_in_signature_fails() {
    for v in &VECTORS {
        let mut rep = data(v.report);
        rep[0x2A0] ^= 0x01; // R, lowest byte
        let e = verify_err(&rep, &certs(v), v.time);
        assert!(matches!(e, SnpError::ReportSignature { .. }), "{}: {e}", v.name);
        let mut rep = data(v.report);
        rep[0x2E8 + 10] ^= 0x10; // S
        let e = verify_err(&rep, &certs(v), v.time);
        assert!(matches!(e, SnpError::ReportSignature { .. }), "{}: {e}", v.name);
        let mut rep = data(v.report);
        rep[0x2A0 + 60] ^= 0x01; // R's must-be-zero high bytes
        let e = verify_err(&rep, &certs(v), v.time);
        assert!(matches!(e, SnpError::SignatureEncoding(_)), "{}: {e}", v.name);
        let mut rep = data(v.report);
        rep[0x400] ^= 0x01; // unsigned reserved tail
        let e = verify_err(&rep, &certs(v), v.time);
        assert_eq!(e, SnpError::UnsignedBytes { offset: 0x400 }, "{}", v.name);
    }
}

/// The VCEK as DER (the dstack one is PEM).
fn vcek_der(v: &Vector) -> Vec<u8> {
    let raw = data(v.certs[0]);
    snp::AmdCert::from_der_or_pem(&raw).unwrap()[0].der().to_vec()
}

fn with_vcek(v: &Vector, vcek: Vec<u8>) -> Vec<Vec<u8>> {
    let mut c = certs(v);
    c[0] = vcek;
    c
}

#[test]
fn flipped_bit_in_vcek_fails_with_cert_signature() {
    for v in &VECTORS {
        // In the certificate's signature value (last byte of the DER).
        let mut der = vcek_der(v);
        let n = der.len();
        der[n - 1] ^= 0x01;
        let e = verify_err(&data(v.report), &with_vcek(v, der), v.time);
        assert!(
            matches!(&e, SnpError::CertSignature { subject, issuer, .. } if subject == "CN=SEV-VCEK" && issuer == "CN=SEV-Milan"),
            "{}: {e}",
            v.name
        );
        // In the signed TBS: the last digit of notBefore's seconds ("...SSZ").
        let mut der = vcek_der(v);
        let pos = der.windows(2).position(|w| w == [0x17, 0x0D]).expect("UTCTime") + 2 + 11;
        der[pos] ^= 0x01;
        let e = verify_err(&data(v.report), &with_vcek(v, der), v.time);
        assert!(matches!(e, SnpError::CertSignature { .. }), "{}: {e}", v.name);
        // In the ucodeSPL extension value (signed): still a CertSignature failure, never a
        // TCB mismatch, because the chain is checked before the extensions are believed.
        let mut der = vcek_der(v);
        let oid_ucode = [0x06, 0x0A, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x9C, 0x78, 0x01, 0x03, 0x08];
        let p = der.windows(oid_ucode.len()).position(|w| w == oid_ucode).expect("ucodeSPL ext");
        // extnValue: 04 L (02 n value...): flip the INTEGER's last byte.
        let octet_len = usize::from(der[p + oid_ucode.len() + 1]);
        der[p + oid_ucode.len() + 1 + octet_len] ^= 0x01;
        let e = verify_err(&data(v.report), &with_vcek(v, der), v.time);
        assert!(matches!(e, SnpError::CertSignature { .. }), "{}: {e}", v.name);
    }
}

#[test]
fn supplied_roots_and_asks_are_never_trusted() {
    // A tampered ARK/ASK in the bundle is ignored: the pinned ones are used.
    let v = &VECTORS[0];
    let mut chain = data("virtee-sev-milan/cert_chain_milan.pem");
    let text = String::from_utf8(chain.clone()).unwrap();
    let idx = text.rfind("-----END CERTIFICATE-----").unwrap() - 10;
    chain[idx] = if chain[idx] == b'A' { b'B' } else { b'A' };
    let bundle = vec![data(v.certs[0]), chain];
    // Either the PEM no longer decodes (a typed error) or the altered ARK is ignored.
    match snp::verify_report(&data(v.report), &bundle, at(v.time)) {
        Ok(c) => assert_eq!(c.claims().product, SnpProduct::Milan),
        Err(e) => assert!(matches!(e, SnpError::Cert { index: 1, .. }), "{e}"),
    }
    // A Genoa ASK supplied next to a Milan VCEK is not used to build its chain.
    let genoa_ask = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("roots/genoa/ask.pem")).unwrap();
    let r = snp::verify_report(&data(v.report), &[data(v.certs[0]), genoa_ask], at(v.time)).unwrap();
    assert_eq!(r.claims().product, SnpProduct::Milan);
}

#[test]
fn missing_wrong_or_expired_certificates_fail() {
    let v = &VECTORS[1];
    let rep = data(v.report);
    assert_eq!(verify_err(&rep, &[], JAN_2026), SnpError::NoLeafCertificate(0));
    // Only the ASK/ARK: no leaf.
    assert_eq!(verify_err(&rep, &[data("virtee-sev-milan/cert_chain_milan.pem")], JAN_2026), SnpError::NoLeafCertificate(2));
    // Another chip's VCEK (valid chain): the hwID does not match and the signature fails.
    let e = verify_err(&rep, &[data("virtee-sev-milan/vcek_milan.der")], JAN_2026);
    assert!(matches!(e, SnpError::ReportSignature { .. }), "{e}");
    // The Turin VCEK chains to ARK-Turin but did not sign this report.
    let e = verify_err(
        &rep,
        &[data("virtee-sev-turin-chain-only/vcek_turin.der"), data("virtee-sev-turin-chain-only/cert_chain_turin.pem")],
        JAN_2026,
    );
    assert!(matches!(e, SnpError::ReportSignature { .. }), "{e}");
    // dstack's VCEK is valid only from 2026-06-17.
    let d = &VECTORS[2];
    let e = verify_err(&data(d.report), &certs(d), JAN_2026);
    assert!(
        matches!(&e, SnpError::CertValidity { subject, not_before, .. } if subject == "CN=SEV-VCEK" && not_before == "2026-06-17T01:05:04Z"),
        "{e}"
    );
    for v in &VECTORS {
        let e = verify_err(&data(v.report), &certs(v), JAN_2050);
        assert!(matches!(e, SnpError::CertValidity { .. }), "{}: {e}", v.name);
    }
    // Garbage in the certificate list is a typed error naming its position.
    let e = verify_err(&rep, &[data(v.certs[0]), vec![0x30, 0x01]], JAN_2026);
    assert!(matches!(e, SnpError::Cert { index: 1, .. }), "{e}");
}

#[test]
fn trustee_invalid_vceks_fail() {
    let rep = data("trustee-milan/test-report.bin");
    for f in ["trustee-milan/test-vcek-invalid-legacy.der", "trustee-milan/test-vcek-invalid-new.der"] {
        // They parse...
        let c = snp::AmdCert::from_der(&data(f)).unwrap();
        assert_eq!(c.subject_cn().as_deref(), Some("SEV-VCEK"));
        // ...but the pinned ASK did not sign them.
        let e = verify_err(&rep, &[data(f)], JAN_2026);
        assert!(
            matches!(&e, SnpError::CertSignature { subject, issuer, .. } if subject == "CN=SEV-VCEK" && issuer == "CN=SEV-Milan"),
            "{f}: {e}"
        );
        assert!(snp::verify_cert_chain(&[data(f)], at(JAN_2026)).is_err(), "{f}");
    }
    // A cache directory holding the valid and both invalid VCEKs still verifies.
    let all: Vec<Vec<u8>> = ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der", "test-vcek.der"]
        .iter()
        .map(|f| data(&format!("trustee-milan/{f}")))
        .collect();
    assert!(snp::verify_report(&rep, &all, at(JAN_2026)).is_ok());
}

#[test]
fn turin_chain_only_verifies_and_extensions_parse() {
    let certs =
        vec![data("virtee-sev-turin-chain-only/vcek_turin.der"), data("virtee-sev-turin-chain-only/cert_chain_turin.pem")];
    let (chain, ext) = snp::verify_cert_chain(&certs, at(JAN_2026)).unwrap();
    assert_eq!(chain.product, SnpProduct::Turin);
    assert_eq!(chain.signer, SnpSigner::Vcek);
    assert_eq!(chain.root.subject_cn().as_deref(), Some("ARK-Turin"));
    assert_eq!(chain.intermediate.subject_cn().as_deref(), Some("SEV-Turin"));
    assert_eq!(ext.hwid.as_deref(), Some(&hex::decode("1e550a8ee5cf9f4d").unwrap()[..]));
    assert_eq!((ext.fmc, ext.microcode, ext.bootloader, ext.tee, ext.snp), (Some(0), Some(9), Some(0), Some(0), Some(0)));
    assert_eq!(ext.product_name.as_deref(), Some("Turin"));
    // The VCEK alone verifies too (the Turin ASK is pinned); before its notBefore it does not.
    assert!(snp::verify_cert_chain(&certs[..1], at(JAN_2026)).is_ok());
    assert!(matches!(snp::verify_cert_chain(&certs[..1], at(1_700_000_000)), Err(SnpError::CertValidity { .. })));
    // Milan's VCEK extensions parse to the README values.
    let milan = snp::AmdCert::from_der(&data("virtee-sev-milan/vcek_milan.der")).unwrap().amd_extensions().unwrap();
    assert_eq!((milan.bootloader, milan.snp, milan.microcode, milan.fmc), (Some(3), Some(8), Some(115), None));
    assert_eq!(milan.product_name.as_deref(), Some("Milan-B0"));
    assert_eq!(milan.hwid.map(|h| h.len()), Some(64));
}

#[test]
fn kds_url_for_a_genuine_report() {
    let r = SnpReport::parse(&data("dstack-milan-v3/report.bin")).unwrap();
    let id = snp::kds::VcekId::for_report(&r, None).unwrap();
    assert_eq!(
        id.url(snp::kds::KDS_BASE),
        "https://kdsintf.amd.com/vcek/v1/Milan/38d174589d2dff97a6d40cb9f9d90b9507c027491219083cef3ce73ed18f7289142d941ad61eabecd27d25f268c1095d665f6001358e98a4769c82734a6bb877?blSPL=04&teeSPL=00&snpSPL=23&ucodeSPL=213"
    );
    let v2 = SnpReport::parse(&data("trustee-milan/test-report.bin")).unwrap();
    assert!(snp::kds::VcekId::for_report(&v2, None).is_err());
    assert!(snp::kds::VcekId::for_report(&v2, Some(SnpProduct::Milan)).is_ok());
}
