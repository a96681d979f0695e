//! Genuine Intel TDX quotes from testdata/tdx: parsing against the README / *.expected.json
//! values, full verification of the one quote that has collateral, signature-only checks of
//! the others, and tampering (body, signature, certificates, QE report, collateral).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use chrysalis_proto::wire::tdx::TdxQuote;
use chrysalis_verify::tdx::{self, Collateral, TdxError};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// dcap-qvl's own test time: one second before the collateral's earliest expiry.
const NOW_IN_WINDOW: u64 = 1_752_919_234;
/// 2026-02-03T01:00:00Z: go-tdx-guest's verification time, inside every PCK's validity.
const NOW_SIG_ONLY: u64 = 1_770_080_400;

const QUOTES: &[&str] = &[
    "dcap-qvl/tdx_quote",
    "dcap-qvl/tdx-quote.hex",
    "dcap-qvl/quote-from-tappd.hex",
    "go-tdx-guest-v5/quote_v5_sample.dat",
    "trustee/tdx_quote_4.dat",
    "trustee/tdx_quote_5.dat",
];

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tdx").join(rel)
}

fn load(rel: &str) -> Vec<u8> {
    let raw = std::fs::read(data(rel)).unwrap();
    if rel.ends_with(".hex") {
        let text = String::from_utf8(raw).unwrap();
        let t = text.trim();
        hex::decode(t.strip_prefix("0x").unwrap_or(t)).unwrap()
    } else {
        raw
    }
}

fn expected(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(data(&format!("{rel}.expected.json"))).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_else(|| panic!("{path:?} missing"))
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path:?} missing"))
}

fn collateral() -> Collateral {
    Collateral::from_json(&std::fs::read(data("dcap-qvl/tdx_quote_collateral.json")).unwrap()).unwrap()
}

#[test]
fn every_quote_parses_to_the_expected_fields() {
    for rel in QUOTES {
        let raw = load(rel);
        let e = expected(rel);
        assert_eq!(raw.len() as u64, n(&e, &["quote_len"]), "{rel}");
        assert_eq!(hex::encode(Sha256::digest(&raw)), s(&e, &["sha256"]), "{rel}");
        let q = TdxQuote::parse(&raw).unwrap_or_else(|err| panic!("{rel}: {err}"));
        let h = &q.header;
        assert_eq!(u64::from(h.version), n(&e, &["header", "version"]), "{rel}");
        assert_eq!(u64::from(h.att_key_type), n(&e, &["header", "att_key_type"]), "{rel}");
        assert_eq!(format!("{:#x}", h.tee_type), s(&e, &["header", "tee_type"]), "{rel}");
        assert_eq!(u64::from(h.qe_svn), n(&e, &["header", "qe_svn"]), "{rel}");
        assert_eq!(u64::from(h.pce_svn), n(&e, &["header", "pce_svn"]), "{rel}");
        assert_eq!(hex::encode(h.qe_vendor_id), s(&e, &["header", "qe_vendor_id"]), "{rel}");
        assert_eq!(hex::encode(h.user_data), s(&e, &["header", "user_data"]), "{rel}");
        match e.get("body_type").and_then(Value::as_u64) {
            Some(bt) => {
                assert_eq!(q.body_type.map(u64::from), Some(bt), "{rel}");
                assert_eq!(q.signed_len as u64, 48 + 6 + n(&e, &["body_size"]), "{rel}");
            }
            None => assert_eq!(q.body_type, None, "{rel}"),
        }
        let b = &q.body;
        let td = |k: &str| s(&e, &["td_report", k]).to_string();
        assert_eq!(hex::encode(b.tee_tcb_svn), td("tee_tcb_svn"), "{rel}");
        assert_eq!(hex::encode(b.mr_seam), td("mr_seam"), "{rel}");
        assert_eq!(hex::encode(b.mr_signer_seam), td("mr_signer_seam"), "{rel}");
        assert_eq!(hex::encode(b.seam_attributes), td("seam_attributes"), "{rel}");
        assert_eq!(hex::encode(b.td_attributes.0), td("td_attributes"), "{rel}");
        assert_eq!(hex::encode(b.xfam), td("xfam"), "{rel}");
        assert_eq!(hex::encode(b.mr_td), td("mr_td"), "{rel}");
        assert_eq!(hex::encode(b.mr_config_id), td("mr_config_id"), "{rel}");
        assert_eq!(hex::encode(b.mr_owner), td("mr_owner"), "{rel}");
        assert_eq!(hex::encode(b.mr_owner_config), td("mr_owner_config"), "{rel}");
        for (i, r) in b.rtmr.iter().enumerate() {
            assert_eq!(hex::encode(r), td(&format!("rtmr{i}")), "{rel} rtmr{i}");
        }
        assert_eq!(hex::encode(b.report_data), td("report_data"), "{rel}");
        match &b.td15 {
            Some(x) => {
                assert_eq!(hex::encode(x.tee_tcb_svn2), td("tee_tcb_svn2"), "{rel}");
                assert_eq!(hex::encode(x.mr_servicetd), td("mr_servicetd"), "{rel}");
            }
            None => assert!(e["td_report"].get("tee_tcb_svn2").is_none(), "{rel}"),
        }
        let qe = &q.qe_report;
        let qr = |k: &str| s(&e, &["qe_report", k]).to_string();
        assert_eq!(hex::encode(qe.cpu_svn), qr("cpusvn"), "{rel}");
        assert_eq!(hex::encode(qe.misc_select.to_le_bytes()), qr("miscselect"), "{rel}");
        assert_eq!(hex::encode(qe.attributes), qr("attributes"), "{rel}");
        assert_eq!(hex::encode(qe.mr_enclave), qr("mrenclave"), "{rel}");
        assert_eq!(hex::encode(qe.mr_signer), qr("mrsigner"), "{rel}");
        assert_eq!(u64::from(qe.isv_prod_id), n(&e, &["qe_report", "isv_prod_id"]), "{rel}");
        assert_eq!(u64::from(qe.isv_svn), n(&e, &["qe_report", "isv_svn"]), "{rel}");
        assert_eq!(hex::encode(qe.report_data), qr("report_data"), "{rel}");
        assert_eq!(hex::encode(&q.qe_auth_data), s(&e, &["qe_auth_data"]), "{rel}");
        let sig_len = raw.len() - q.padding - q.signed_len - 4;
        assert_eq!(sig_len as u64, n(&e, &["sig_data_len"]), "{rel}");
    }
}

#[test]
fn trustee_debug_quote_reports_debug_attribute() {
    // Upstream's parsed claims for this quote (trustee parse_tdx_claims_expected.json).
    let up: Value = serde_json::from_slice(&std::fs::read(data("trustee/parse_tdx_claims_expected.json")).unwrap()).unwrap();
    let raw = load("trustee/tdx_quote_4.dat");
    let checked = tdx::verify_quote_signature_only(&raw, NOW_SIG_ONLY).unwrap();
    let a = checked.td_attributes();
    let flags = &up["td_attributes"];
    assert_eq!(Some(a.debug()), flags["debug"].as_bool());
    assert_eq!(Some(a.sept_ve_disable()), flags["septve_disable"].as_bool());
    assert_eq!(Some(a.key_locker()), flags["key_locker"].as_bool());
    assert_eq!(Some(a.perfmon()), flags["perfmon"].as_bool());
    assert_eq!(Some(a.pks()), flags["protection_keys"].as_bool());
    assert!(a.debug(), "the trustee v4 quote is a debug TD");
    assert_eq!(hex::encode(checked.quote.body.mr_td), s(&up, &["quote", "body", "mr_td"]));
    assert_eq!(hex::encode(checked.quote.body.report_data), s(&up, &["quote", "body", "report_data"]));
    // Every other quote is a production TD.
    for rel in QUOTES.iter().filter(|r| **r != "trustee/tdx_quote_4.dat") {
        let c = tdx::verify_quote_signature_only(&load(rel), NOW_SIG_ONLY).unwrap();
        assert!(!c.td_attributes().debug(), "{rel}");
    }
}

#[test]
fn quotes_without_collateral_pass_signature_only_checks() {
    for rel in QUOTES {
        let e = expected(rel);
        let c = tdx::verify_quote_signature_only(&load(rel), NOW_SIG_ONLY).unwrap_or_else(|err| panic!("{rel}: {err}"));
        let fmspc = e["pck_chain"][0]["fmspc"].as_str().unwrap();
        assert_eq!(hex::encode(c.pck.fmspc), fmspc, "{rel}");
        assert_eq!(c.pck.subjects.len(), 3, "{rel}");
        assert!(c.pck.subjects[0].contains("Intel SGX PCK Certificate"), "{rel}: {:?}", c.pck.subjects);
        assert!(c.pck.subjects[2].contains("Intel SGX Root CA"), "{rel}");
    }
}

#[test]
fn signature_only_checks_certificate_validity_time() {
    // go-tdx-guest's PCK certificate is valid from 2026-01-27T14:36:27Z.
    let raw = load("go-tdx-guest-v5/quote_v5_sample.dat");
    let err = tdx::verify_quote_signature_only(&raw, 1_769_472_000).unwrap_err(); // 2026-01-27T00:00Z
    assert!(
        matches!(&err, TdxError::PckChain(m) if m.contains("valid only from 2026-01-27T14:36:27Z") && m.contains("verification time 2026-01-27T00:00:00Z")),
        "{err}"
    );
    assert!(tdx::verify_quote_signature_only(&raw, 1_769_529_600).is_ok()); // 2026-01-27T16:00Z
}

#[test]
fn pinned_root_is_the_root_of_every_chain() {
    assert_eq!(hex::encode(Sha256::digest(tdx::INTEL_SGX_ROOT_CA_DER)), tdx::INTEL_SGX_ROOT_CA_SHA256);
    for rel in QUOTES {
        let q = TdxQuote::parse(&load(rel)).unwrap();
        let pems = pem::parse_many(q.pck_chain_pem.strip_suffix(b"\0").unwrap_or(&q.pck_chain_pem)).unwrap();
        assert_eq!(pems.last().unwrap().contents(), tdx::INTEL_SGX_ROOT_CA_DER, "{rel}");
    }
    let c: Value = serde_json::from_slice(&std::fs::read(data("dcap-qvl/tdx_quote_collateral.json")).unwrap()).unwrap();
    for k in ["pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"] {
        let pems = pem::parse_many(c[k].as_str().unwrap()).unwrap();
        assert_eq!(pems.last().unwrap().contents(), tdx::INTEL_SGX_ROOT_CA_DER, "{k}");
    }
}

#[test]
fn dcap_qvl_quote_verifies_with_collateral() {
    let raw = load("dcap-qvl/tdx_quote");
    let v = tdx::verify_quote(&raw, &collateral(), NOW_IN_WINDOW).unwrap_or_else(|e| panic!("{e}"));
    let c = v.claims();
    let status: Value =
        serde_json::from_slice(&std::fs::read(data("dcap-qvl/tdx_quote.tcb_status.expected.json")).unwrap()).unwrap();
    assert_eq!(c.tcb_status, "UpToDate");
    assert_eq!(c.tcb_status, s(&status, &["platform_tdx_tcb_level", "status"]));
    assert!(c.advisory_ids.is_empty());
    assert_eq!(hex::encode(&c.fmspc), s(&status, &["pck_fmspc"]));
    assert_eq!(c.quote_version, 4);
    let e = expected("dcap-qvl/tdx_quote");
    assert_eq!(hex::encode(&c.mr_td), s(&e, &["td_report", "mr_td"]));
    assert_eq!(hex::encode(&c.report_data), s(&e, &["td_report", "report_data"]));
    assert_eq!(hex::encode(&c.tee_tcb_svn), s(&e, &["td_report", "tee_tcb_svn"]));
    assert_eq!(hex::encode(&c.xfam), s(&e, &["td_report", "xfam"]));
    for i in 0..4 {
        assert_eq!(hex::encode(&c.rtmr[i]), s(&e, &["td_report", &format!("rtmr{i}")]));
    }
    assert!(!c.debug());
}

#[test]
fn collateral_window_is_enforced() {
    let raw = load("dcap-qvl/tdx_quote");
    let col = collateral();
    let win: Value =
        serde_json::from_slice(&std::fs::read(data("dcap-qvl/tdx_quote_collateral.expected.json")).unwrap()).unwrap();
    let (start, end) = col.window().unwrap();
    assert_eq!(start, n(&win, &["collateral_validity_window", "not_before_unix"]));
    assert_eq!(end, n(&win, &["collateral_validity_window", "not_after_unix"]));
    // Like webpki's CRL check, an item is stale from its nextUpdate second on.
    assert!(tdx::verify_quote(&raw, &col, end - 1).is_ok(), "last second of the window");
    match tdx::verify_quote(&raw, &col, end) {
        Err(TdxError::CollateralExpired { item: "pck crl", next_update, now }) => {
            assert_eq!((next_update, now), (end, end));
        }
        other => panic!("expected CollateralExpired(pck crl), got {other:?}"),
    }
    match tdx::verify_quote(&raw, &col, start - 1) {
        Err(TdxError::CollateralNotYetValid { item: "qe identity", issued, .. }) => assert_eq!(issued, start),
        other => panic!("expected CollateralNotYetValid(qe identity), got {other:?}"),
    }
    // A year later everything is stale; the first stale item is reported.
    assert!(matches!(
        tdx::verify_quote(&raw, &col, NOW_IN_WINDOW + 365 * 86_400),
        Err(TdxError::CollateralExpired { item: "tcb info", .. })
    ));
}

#[test]
fn collateral_from_another_platform_is_rejected() {
    // Collateral is per platform (FMSPC) and per TCB evaluation: a quote from another
    // platform, or with a TCB level the TCB info does not list, must be refused.
    let col = collateral();
    let other = tdx::verify_quote(&load("trustee/tdx_quote_4.dat"), &col, NOW_IN_WINDOW).unwrap_err();
    assert!(matches!(&other, TdxError::Collateral(m) if m.contains("Fmspc mismatch")), "{other}");
    let other = tdx::verify_quote(&load("trustee/tdx_quote_5.dat"), &col, NOW_IN_WINDOW).unwrap_err();
    assert!(matches!(&other, TdxError::Collateral(m) if m.contains("Fmspc mismatch")), "{other}");
    // Same FMSPC, but an older platform TCB that this TCB info (evaluation 17) no longer lists.
    for rel in ["dcap-qvl/tdx-quote.hex", "dcap-qvl/quote-from-tappd.hex"] {
        let e = tdx::verify_quote(&load(rel), &col, NOW_IN_WINDOW).unwrap_err();
        assert!(matches!(&e, TdxError::Collateral(m) if m.contains("No matching TCB level found")), "{rel}: {e}");
    }
    // go-tdx-guest's PCK certificate was issued after this collateral expired.
    let e = tdx::verify_quote(&load("go-tdx-guest-v5/quote_v5_sample.dat"), &col, NOW_IN_WINDOW).unwrap_err();
    assert!(matches!(&e, TdxError::PckChain(m) if m.contains("valid only from") && !m.contains("UnixTime")), "{e}");
}

#[test]
fn tampered_collateral_is_rejected() {
    let raw = load("dcap-qvl/tdx_quote");
    let base: Value = serde_json::from_slice(&std::fs::read(data("dcap-qvl/tdx_quote_collateral.json")).unwrap()).unwrap();
    let with = |key: &str, f: &dyn Fn(&str) -> String| {
        let mut v = base.clone();
        let new = f(v[key].as_str().unwrap());
        v[key] = Value::String(new);
        Collateral::from_json(&serde_json::to_vec(&v).unwrap()).unwrap()
    };
    // An UpToDate level made to look different: TCB info JSON changed, signature now invalid.
    let c = with("tcb_info", &|t| t.replacen("\"tcbEvaluationDataNumber\":17", "\"tcbEvaluationDataNumber\":18", 1));
    let err = tdx::verify_quote(&raw, &c, NOW_IN_WINDOW).unwrap_err();
    assert!(matches!(&err, TdxError::Collateral(m) if m.contains("Signature is invalid for tcb_info")), "{err}");
    let c = with("qe_identity", &|t| t.replacen("\"isvprodid\":2", "\"isvprodid\":3", 1));
    let err = tdx::verify_quote(&raw, &c, NOW_IN_WINDOW).unwrap_err();
    assert!(matches!(&err, TdxError::Collateral(m) if m.contains("Signature is invalid for qe_identity")), "{err}");
    // Flip one bit inside the PCK CRL's signature (last bytes of the DER, hex-encoded).
    let c = with("pck_crl", &|t| {
        let mut b = hex::decode(t).unwrap();
        let last = b.len() - 5;
        b[last] ^= 1;
        hex::encode(b)
    });
    let err = tdx::verify_quote(&raw, &c, NOW_IN_WINDOW).unwrap_err();
    assert!(matches!(&err, TdxError::Collateral(m) if m.contains("InvalidCrlSignatureForPublicKey")), "{err}");
}

// ---- tampering with the quote ------------------------------------------------------------

fn flip(raw: &[u8], offset: usize) -> Vec<u8> {
    let mut t = raw.to_vec();
    t[offset] ^= 0x01;
    t
}

/// Find `needle` inside the DER of PCK chain certificate `index` and flip a bit there,
/// re-encoding the base64 in place so that every length in the quote stays the same.
fn flip_in_certificate(raw: &[u8], index: usize, needle: &[u8]) -> Vec<u8> {
    let q = TdxQuote::parse(raw).unwrap();
    let chain_start = q.signed_len + 4 + 64 + 64 + 6 + 384 + 64 + 2 + q.qe_auth_data.len() + 6;
    assert_eq!(&raw[chain_start..chain_start + 27], b"-----BEGIN CERTIFICATE-----");
    let text = &raw[chain_start..chain_start + q.pck_chain_pem.len()];
    let begin = b"-----BEGIN CERTIFICATE-----";
    let starts: Vec<usize> = (0..text.len()).filter(|&i| text[i..].starts_with(begin)).collect();
    let body_start = starts[index] + begin.len();
    let body_end = body_start + text[body_start..].windows(5).position(|w| w == b"-----").unwrap();
    let positions: Vec<usize> = (body_start..body_end).filter(|&i| !text[i].is_ascii_whitespace()).collect();
    let b64: Vec<u8> = positions.iter().map(|&i| text[i]).collect();
    let mut der = b64_decode(&b64);
    let at = der.windows(needle.len()).position(|w| w == needle).expect("needle in certificate");
    der[at + needle.len() / 2] ^= 0x01;
    let new = b64_encode(&der);
    assert_eq!(new.len(), b64.len());
    let mut out = raw.to_vec();
    for (p, c) in positions.iter().zip(new) {
        out[chain_start + p] = c;
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_decode(s: &[u8]) -> Vec<u8> {
    let val = |c: u8| B64.iter().position(|&x| x == c).map(|p| p as u32);
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let v: Vec<u32> = chunk.iter().filter_map(|&c| val(c)).collect();
        let mut acc = 0u32;
        for (i, x) in v.iter().enumerate() {
            acc |= x << (18 - 6 * i);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..v.len().saturating_sub(1)]);
    }
    out
}

fn b64_encode(d: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in d.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let acc = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((acc >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

/// A tamper case: its name, the tampered quote, and the error it must produce.
type TamperCase = (&'static str, Vec<u8>, fn(&TdxError) -> bool);

/// Each tamper case with the exact error it must produce, for any quote.
fn tamper_cases(raw: &[u8]) -> Vec<TamperCase> {
    let q = TdxQuote::parse(raw).unwrap();
    let body = q.signed_len - if q.body_type.is_some() { 648 } else { 584 };
    let sig = q.signed_len + 4;
    let qe_report = sig + 64 + 64 + 6;
    let auth = qe_report + 384 + 64 + 2;
    vec![
        ("body: mr_td bit", flip(raw, body + 0x88), |e| matches!(e, TdxError::QuoteSignature)),
        ("body: report_data bit", flip(raw, body + 0x208), |e| matches!(e, TdxError::QuoteSignature)),
        ("body: td_attributes DEBUG bit", flip(raw, body + 0x78), |e| matches!(e, TdxError::QuoteSignature)),
        ("header: user_data bit", flip(raw, 0x1C), |e| matches!(e, TdxError::QuoteSignature)),
        ("quote signature: r bit", flip(raw, sig + 5), |e| matches!(e, TdxError::QuoteSignature)),
        ("quote signature: s bit", flip(raw, sig + 40), |e| matches!(e, TdxError::QuoteSignature)),
        ("attestation key bit", flip(raw, sig + 64 + 10), |e| matches!(e, TdxError::QeReportBinding | TdxError::AttestationKey)),
        ("qe report: isv_svn bit", flip(raw, qe_report + 0x102), |e| matches!(e, TdxError::QeReportSignature)),
        ("qe report signature bit", flip(raw, qe_report + 384 + 3), |e| matches!(e, TdxError::QeReportSignature)),
        ("qe auth data bit", flip(raw, auth + 1), |e| matches!(e, TdxError::QeReportBinding)),
        (
            "pck leaf certificate: subject bit",
            flip_in_certificate(raw, 0, b"Intel SGX PCK Certificate"),
            |e| matches!(e, TdxError::PckChain(m) if m.contains("signature does not verify")),
        ),
        (
            "pck platform ca certificate: subject bit",
            flip_in_certificate(raw, 1, b"Intel SGX PCK Platform CA"),
            |e| matches!(e, TdxError::PckChain(m) if m.contains("signature does not verify") || m.contains("does not lead to the pinned")),
        ),
        ("root ca copy in the quote: subject bit", flip_in_certificate(raw, 2, b"Intel SGX Root CA"), |e| {
            matches!(e, TdxError::ForeignRoot)
        }),
        (
            "version field",
            {
                let mut t = raw.to_vec();
                t[0] = 3;
                t
            },
            |e| matches!(e, TdxError::Wire(chrysalis_proto::wire::WireError::Unsupported { what: "quote version", value: 3 })),
        ),
    ]
}

#[test]
fn tampered_quotes_fail_signature_only_checks_with_specific_errors() {
    for rel in QUOTES {
        let raw = load(rel);
        for (name, bad, want) in tamper_cases(&raw) {
            match tdx::verify_quote_signature_only(&bad, NOW_SIG_ONLY) {
                Err(e) if want(&e) => {}
                other => panic!("{rel}: {name}: unexpected result {other:?}"),
            }
        }
    }
}

#[test]
fn tampered_quote_fails_full_verification_with_specific_errors() {
    let raw = load("dcap-qvl/tdx_quote");
    let col = collateral();
    for (name, bad, want) in tamper_cases(&raw) {
        match tdx::verify_quote(&bad, &col, NOW_IN_WINDOW) {
            Err(e) if want(&e) => {}
            other => panic!("{name}: unexpected result {other:?}"),
        }
    }
}

#[test]
fn truncated_quotes_give_typed_errors() {
    for rel in QUOTES {
        let raw = load(rel);
        let q = TdxQuote::parse(&raw).unwrap();
        let end = raw.len() - q.padding;
        for cut in (0..end).step_by(97).chain([end - 1]) {
            match TdxQuote::parse(&raw[..cut]) {
                Err(_) => {}
                Ok(_) => panic!("{rel}: prefix of {cut} bytes parsed"),
            }
            assert!(tdx::verify_quote_signature_only(&raw[..cut], NOW_SIG_ONLY).is_err());
        }
    }
}
