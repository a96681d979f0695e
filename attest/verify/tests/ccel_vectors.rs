//! Genuine TDX CCEL event logs from testdata/tdx-eventlog: replay to the README's RTMRs,
//! agreement with the upstream parsers' outputs (trustee *_out.json, dstack snapshot), the
//! upstream negative case, and truncated / garbled logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use chrysalis_proto::wire::WireError;
use chrysalis_verify::ccel::{self, CcelError};
use chrysalis_verify::claims::TdxClaims;
use serde_json::Value;

/// (log, event count per README including the Spec ID event, upstream trustee output).
const LOGS: &[(&str, usize, Option<&str>)] = &[
    ("trustee/CCEL_data", 6, Some("trustee/CCEL_data_out.json")),
    ("trustee/CCEL_data_ovmf", 21, Some("trustee/CCEL_data_ovmf_out.json")),
    ("trustee/CCEL_data_grub", 38, Some("trustee/CCEL_data_grub_out.json")),
    ("dstack/ccel.bin", 19, None),
];

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tdx-eventlog").join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap()
}

fn expected_rtmrs(rel: &str) -> [[u8; 48]; 4] {
    let v: Value = serde_json::from_slice(&read(&format!("{rel}.replay.expected.json"))).unwrap();
    let mut out = [[0u8; 48]; 4];
    for (i, r) in out.iter_mut().enumerate() {
        let h = v["replayed"][format!("rtmr{i}")].as_str().unwrap();
        r.copy_from_slice(&hex::decode(h).unwrap());
    }
    out
}

#[test]
fn every_log_replays_to_the_readme_rtmrs() {
    // The README's table, verbatim, so that the JSON and the README cannot drift apart.
    let readme: &[(&str, [&str; 2])] = &[
        (
            "trustee/CCEL_data",
            [
                "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
                "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
            ],
        ),
        (
            "trustee/CCEL_data_ovmf",
            [
                "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
                "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
            ],
        ),
        (
            "trustee/CCEL_data_grub",
            [
                "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
                "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
            ],
        ),
        (
            "dstack/ccel.bin",
            [
                "274c2344116db7c663470693b5ba62b8621eac28cb41d2f816ddf188f9f423f900a1c44d32386fd3c993dc814e62af9d",
                "bdcf4ee0f7fdfe7c73fbb19ded73193aee23a6726b86d3b282ea097cf4c9ed7a0db21b5c1ccd513e410d90e310836b26",
            ],
        ),
    ];
    for &(rel, count, _) in LOGS {
        let r = ccel::replay(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let want = expected_rtmrs(rel);
        assert_eq!(r.rtmr, want, "{rel}");
        r.check_rtmrs(&want).unwrap();
        let (_, first_two) = readme.iter().find(|(n, _)| *n == rel).unwrap();
        assert_eq!(hex::encode(r.rtmr[0]), first_two[0], "{rel}");
        assert_eq!(hex::encode(r.rtmr[1]), first_two[1], "{rel}");
        assert_eq!(r.events.len(), count, "{rel}");
        assert_eq!(r.events[0].event_type, ccel::EventType::NO_ACTION);
        assert_eq!(r.spec_id.algorithms, vec![(ccel::ALG_SHA384, 48)], "{rel}");
    }
    let dstack: Value = serde_json::from_slice(&read("dstack/ccel.bin.replay.expected.json")).unwrap();
    let r = ccel::replay(&read("dstack/ccel.bin")).unwrap();
    assert_eq!(r.used_len as u64, dstack["log_bytes_used"].as_u64().unwrap());
}

#[test]
fn events_agree_with_trustee_parser() {
    for &(rel, _, out) in LOGS {
        let Some(out) = out else { continue };
        let r = ccel::replay(&read(rel)).unwrap();
        let up: Value = serde_json::from_slice(&read(out)).unwrap();
        let up = up["uefi_event_logs"].as_array().unwrap();
        // trustee lists every event after the Spec ID event.
        assert_eq!(up.len(), r.events.len() - 1, "{rel}");
        for (ours, theirs) in r.events[1..].iter().zip(up) {
            let ctx = format!("{rel} event {}", ours.seq);
            assert_eq!(u64::from(ours.mr_index), theirs["index"].as_u64().unwrap(), "{ctx}");
            assert_eq!(ours.event_type.to_string(), theirs["type_name"].as_str().unwrap(), "{ctx}");
            let digest = theirs["digests"][0]["digest"].as_str().unwrap();
            assert_eq!(hex::encode(ours.sha384().unwrap()), digest, "{ctx}");
            assert_eq!(Some(ours.digest_covers_data()), theirs["digest_matches_event"].as_bool(), "{ctx}");
            let d = &theirs["details"];
            let desc = ours.description();
            for key in ["unicode_name", "string"] {
                if let Some(want) = d.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    // trustee masks firmware-volume GUIDs as X; compare the rest.
                    let want = want.split("(XXXX").next().unwrap();
                    let want = want.replace('\\', "\\\\").replace(':', "");
                    let plain = desc.replace([':', '"'], "");
                    assert!(plain.contains(&want), "{ctx}: {desc:?} lacks {want:?}");
                }
            }
        }
    }
}

#[test]
fn events_agree_with_dstack_snapshot() {
    // dstack's insta snapshot lists imr_index, event_type, digests and event (hex data).
    let snap = String::from_utf8(read("dstack/cc_eventlog__tests__parse_ccel.snap")).unwrap();
    let field = |key: &str| -> Vec<String> {
        snap.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_end_matches(',').trim_matches('"').to_string())
            .collect()
    };
    let idx = field("imr_index:");
    let ty = field("event_type:");
    let ev = field("event:");
    let digests: Vec<String> = snap
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .filter(|l| l.len() == 98 && l.starts_with('"'))
        .map(|l| l.trim_matches('"').to_string())
        .collect();
    let r = ccel::replay(&read("dstack/ccel.bin")).unwrap();
    let ours: Vec<_> = r.events.iter().filter(|e| e.seq > 0).collect();
    assert_eq!(idx.len(), ours.len());
    for (i, e) in ours.iter().enumerate() {
        assert_eq!(e.mr_index.to_string(), idx[i], "event {}", e.seq);
        assert_eq!(e.event_type.0.to_string(), ty[i], "event {}", e.seq);
        assert_eq!(hex::encode(&e.data), ev[i], "event {}", e.seq);
        assert_eq!(hex::encode(e.sha384().unwrap()), digests[i], "event {}", e.seq);
    }
}

#[test]
fn listing_is_human_readable() {
    let r = ccel::replay(&read("trustee/CCEL_data")).unwrap();
    let s = r.to_string();
    assert!(s.contains("td_payload_info: \"root=/dev/vda1 console=hvc0 rw\""), "{s}");
    assert!(s.contains("replayed RTMR1: 0fa3be56"), "{s}");
    let s = ccel::replay(&read("trustee/CCEL_data_ovmf")).unwrap().to_string();
    for want in [
        "EV_EFI_VARIABLE_DRIVER_CONFIG",
        "SecureBoot",
        "BootOrder = 0000",
        "File(kernel)",
        "Linux initrd",
        "Exit Boot Services Invocation",
    ] {
        assert!(s.contains(want), "missing {want}:\n{s}");
    }
    let s = ccel::replay(&read("trustee/CCEL_data_grub")).unwrap().to_string();
    for want in ["MokList", "SbatLevel", "File(\\\\EFI\\\\ubuntu\\\\grubx64.efi)", "8BE4DF61-93CA-11D2-AA0D-00E098032B8C"] {
        assert!(s.contains(want), "missing {want}:\n{s}");
    }
}

#[test]
fn upstream_negative_case_fails() {
    let r = ccel::replay(&read("trustee/CCEL_data")).unwrap();
    let mut quoted = expected_rtmrs("trustee/CCEL_data");
    // trustee test_rtmr_integrity_error: RTMR1 = 2fa3be56… (first nibble changed).
    assert_eq!(quoted[1][0], 0x0f);
    quoted[1][0] = 0x2f;
    match r.check_rtmrs(&quoted) {
        Err(CcelError::RtmrMismatch { index: 1, replayed, quoted }) => {
            assert!(replayed.starts_with("0fa3be56") && quoted.starts_with("2fa3be56"));
        }
        other => panic!("expected RtmrMismatch for RTMR1, got {other:?}"),
    }
}

#[test]
fn replay_compared_with_quote_rtmrs() {
    // dstack's log and dstack's tappd quote share firmware and VM config (RTMR0), not the kernel.
    let quote_hex =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tdx/dcap-qvl/quote-from-tappd.hex"))
            .unwrap();
    let quote = chrysalis_proto::wire::tdx::TdxQuote::parse(&hex::decode(quote_hex.trim()).unwrap()).unwrap();
    let claims = TdxClaims {
        quote_version: quote.header.version,
        tee_tcb_svn: quote.body.tee_tcb_svn.to_vec(),
        mr_seam: quote.body.mr_seam.to_vec(),
        mr_td: quote.body.mr_td.to_vec(),
        mr_config_id: quote.body.mr_config_id.to_vec(),
        mr_owner: quote.body.mr_owner.to_vec(),
        mr_owner_config: quote.body.mr_owner_config.to_vec(),
        rtmr: quote.body.rtmr.map(|r| r.to_vec()),
        report_data: quote.body.report_data.to_vec(),
        td_attributes: quote.body.td_attributes.0.to_vec(),
        xfam: quote.body.xfam.to_vec(),
        tcb_status: String::new(),
        advisory_ids: vec![],
        fmspc: vec![],
    };
    let r = ccel::replay(&read("dstack/ccel.bin")).unwrap();
    let cmp = r.check_against(&claims);
    assert_eq!(cmp[0], (0, true));
    assert_eq!(cmp[1], (1, false));
    assert!(matches!(r.check_claims(&claims), Err(CcelError::RtmrMismatch { index: 1, .. })));
}

#[test]
fn truncated_logs_give_typed_errors() {
    for &(rel, _, _) in LOGS {
        let log = read(rel);
        let r = ccel::replay(&log).unwrap();
        let want = r.rtmr;
        let last = r.events.last().unwrap().offset;
        // Cut inside the last event: the event is incomplete.
        for cut in [last + 1, last + 8, last + 20, r.used_len - 1] {
            match ccel::replay(&log[..cut]) {
                Err(CcelError::Wire(WireError::Truncated { .. })) => {}
                other => panic!("{rel}: cut at {cut}: {other:?}"),
            }
        }
        // Cut at the last event boundary: a valid shorter log that no longer replays.
        let shorter = ccel::replay(&log[..last]).unwrap();
        assert_eq!(shorter.events.len(), r.events.len() - 1);
        assert!(matches!(shorter.check_rtmrs(&want), Err(CcelError::RtmrMismatch { .. })), "{rel}");
        // Cut inside the Spec ID event.
        assert!(matches!(ccel::replay(&log[..30]), Err(CcelError::Wire(WireError::Truncated { .. }))));
        assert!(matches!(ccel::replay(&[]), Err(CcelError::Wire(WireError::Truncated { .. }))));
    }
}

#[test]
fn garbled_logs_give_typed_errors() {
    let log = read("trustee/CCEL_data_ovmf");
    let r = ccel::replay(&log).unwrap();
    let e3 = r.events[3].offset;

    let mut g = log.clone();
    g[32] ^= 0x20; // "Spec ID Event03" -> "spec ID Event03"
    assert_eq!(ccel::replay(&g), Err(CcelError::SpecId("signature is not \"Spec ID Event03\"")));

    let mut g = log.clone();
    g[e3 + 12] = 0x0B; // digest algorithm SHA-384 -> SHA-256, not declared
    assert_eq!(ccel::replay(&g), Err(CcelError::UnknownAlgorithm { seq: 3, alg: 0x000B }));

    let mut g = log.clone();
    g[e3 + 8] = 7; // digest count
    assert_eq!(ccel::replay(&g), Err(CcelError::DigestCount { seq: 3, count: 7, declared: 1 }));

    let mut g = log.clone();
    g[e3] = 9; // MR index 9
    assert_eq!(ccel::replay(&g), Err(CcelError::MrIndex { seq: 3, index: 9 }));

    let mut g = log.clone();
    let size_at = e3 + 4 + 4 + 4 + 2 + 48;
    g[size_at..size_at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    assert!(matches!(ccel::replay(&g), Err(CcelError::Wire(WireError::Truncated { what: "event data", .. }))));

    // A flipped digest bit parses but no longer replays to the same RTMR.
    let mut g = log.clone();
    g[e3 + 14] ^= 0x80;
    let bad = ccel::replay(&g).unwrap();
    assert!(matches!(bad.check_rtmrs(&r.rtmr), Err(CcelError::RtmrMismatch { index: 0, .. })));
}
