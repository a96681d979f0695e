//! `verify_evidence` end to end on genuine SNP vectors and on the simulated TEE: what the
//! policy accepts, what it refuses, and that each refusal is the expected check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, PlatformEvidence};
use chrysalis_verify::sim::{SimPsp, SimRoot, sim_launch_measurement};
use chrysalis_verify::verify::{Claims, SIMULATED_WARNING, VerifyContext, verify_evidence, verify_evidence_with};
use chrysalis_verify::{Policy, Report};

const VIRTEE_MEASUREMENT: &str =
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
const VIRTEE_REPORT_DATA: &str = "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd";
const JAN_2026: u64 = 1_767_225_600;

fn data(path: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/snp").join(path)).unwrap()
}

fn virtee_evidence() -> Evidence {
    Evidence {
        version: EVIDENCE_VERSION,
        nonce: vec![],
        platform: PlatformEvidence::Snp {
            report: data("virtee-sev-milan/report_milan.bin"),
            certs: vec![data("virtee-sev-milan/vcek_milan.der"), data("virtee-sev-milan/cert_chain_milan.pem")],
        },
        event_log: EventLog::default(),
        gpus: vec![],
    }
}

fn policy(measurement: &str, extra: &str) -> Policy {
    Policy::from_toml(&format!(
        "[measurements]\nsnp = [\"{measurement}\"]\n[report_data]\nbinding = \"fixed\"\nexpected = \"{VIRTEE_REPORT_DATA}\"\n{extra}"
    ))
    .unwrap()
}

fn failed(r: &Report) -> Vec<String> {
    r.failures().map(|c| c.name.clone()).collect()
}

fn jan_2026() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(JAN_2026)
}

#[test]
fn genuine_milan_report_passes_a_matching_policy() {
    let ev = Evidence::from_bytes(&virtee_evidence().to_bytes()).unwrap();
    let p = policy(VIRTEE_MEASUREMENT, "[snp.min_tcb]\nbootloader = 3\nsnp = 8\nmicrocode = 115");
    let r = verify_evidence(&ev, &p, &[], jan_2026());
    assert!(r.is_ok(), "{r}");
    for name in ["snp.cert_chain", "snp.report_signature", "snp.vcek_tcb", "snp.vcek_hwid", "snp.measurement", "report_data"] {
        assert!(r.checks.iter().any(|c| c.name == name && c.passed), "{name} missing:\n{r}");
    }
    assert!(matches!(&r.claims, Some(Claims::Snp(v)) if !v.claims().simulated));
    assert!(r.warnings.is_empty());
    let text = r.to_string();
    assert!(text.starts_with("attestation: OK"), "{text}");
    assert!(text.contains("CN=SEV-VCEK <- CN=SEV-Milan <- CN=ARK-Milan"), "{text}");
}

#[test]
fn wrong_measurement_fails_only_that_check() {
    let p = policy(&"00".repeat(48), "");
    let r = verify_evidence(&virtee_evidence(), &p, &[], jan_2026());
    assert_eq!(failed(&r), ["snp.measurement"]);
    assert!(
        Policy::default()
            .check_snp(match &r.claims {
                Some(Claims::Snp(v)) => v,
                _ => panic!("no claims"),
            })
            .iter()
            .any(|c| c.name == "snp.measurement" && !c.passed)
    );
}

#[test]
fn policy_minimums_and_bindings_fail_as_expected() {
    let r = verify_evidence(&virtee_evidence(), &policy(VIRTEE_MEASUREMENT, "[snp.min_tcb]\nmicrocode = 200"), &[], jan_2026());
    assert_eq!(failed(&r), ["snp.tcb.microcode", "snp.launch_tcb.microcode"]);
    let r = verify_evidence(
        &virtee_evidence(),
        &policy(VIRTEE_MEASUREMENT, &format!("[snp]\nhost_data = \"{}\"", "11".repeat(32))),
        &[],
        jan_2026(),
    );
    assert_eq!(failed(&r), ["snp.host_data"]);
    // The default binding needs the runtime's event log and a nonce: a foreign report fails it.
    let p = Policy::from_toml(&format!("[measurements]\nsnp = [\"{VIRTEE_MEASUREMENT}\"]")).unwrap();
    let r = verify_evidence(&virtee_evidence(), &p, &[], jan_2026());
    assert_eq!(failed(&r), ["report_data"]);
    // Runtime expectations cannot pass when the log is not bound.
    let r = verify_evidence(
        &virtee_evidence(),
        &policy(VIRTEE_MEASUREMENT, &format!("[runtime]\nbinary_sha384 = [\"{}\"]", "22".repeat(48))),
        &[],
        jan_2026(),
    );
    assert_eq!(failed(&r), ["runtime.binary"]);
    // Certificates from a cache directory work like certificates in the bundle.
    let mut bare = virtee_evidence();
    bare.platform = PlatformEvidence::Snp { report: data("virtee-sev-milan/report_milan.bin"), certs: vec![] };
    let r = verify_evidence(&bare, &policy(VIRTEE_MEASUREMENT, ""), &[], jan_2026());
    assert_eq!(failed(&r), ["snp.cert_chain"]);
    let cache = vec![data("virtee-sev-milan/vcek_milan.der")];
    let ctx = VerifyContext { extra_snp_certs: &cache, ..VerifyContext::new(&[], jan_2026()) };
    assert!(verify_evidence_with(&bare, &policy(VIRTEE_MEASUREMENT, ""), &ctx).is_ok());
}

#[test]
fn tampered_genuine_report_fails_at_the_signature() {
    let mut ev = virtee_evidence();
    if let PlatformEvidence::Snp { report, .. } = &mut ev.platform {
        report[0x90] ^= 1;
    }
    let r = verify_evidence(&ev, &policy(VIRTEE_MEASUREMENT, ""), &[], jan_2026());
    assert_eq!(failed(&r), ["snp.report_signature"]);
    assert!(r.claims.is_none());
    let detail = &r.failures().next().unwrap().detail;
    assert!(detail.contains("report signature does not verify under the VCEK key CN=SEV-VCEK"), "{detail}");
}

fn runtime_log() -> EventLog {
    let mut log = EventLog::default();
    log.extend(Event::digest_of(EventKind::RuntimeBinary, b"chrysalis-runtime"));
    log.extend(Event::with_data(EventKind::KernelCmdline, b"console=ttyS0".to_vec()));
    log.extend(Event::with_data(EventKind::PublicKey, vec![9; 32]));
    log
}

fn sim_policy(root_hex: &str, measurement: &[u8; 48], allow: bool, extra: &str) -> Policy {
    Policy::from_toml(&format!(
        "[simulation]\nallow_simulated = {allow}\nroot_public_key = \"{root_hex}\"\nmeasurements = [\"{}\"]\n{extra}",
        hex::encode(measurement)
    ))
    .unwrap()
}

#[test]
fn simulated_evidence_rejected_by_default_accepted_with_warning_when_allowed() {
    let m = sim_launch_measurement(b"vmlinuz", b"initrd", "console=ttyS0");
    let psp = SimPsp::new(SimRoot::generate(), m);
    let nonce = [0x42u8; 32];
    let ev = Evidence::from_bytes(&psp.evidence(runtime_log(), &nonce).to_bytes()).unwrap();
    let now = SystemTime::now();

    let r = verify_evidence(&ev, &Policy::default(), &nonce, now);
    assert_eq!(failed(&r), ["simulation"]);
    assert_eq!(r.warnings, [SIMULATED_WARNING]);

    let bin = hex::encode(runtime_log().find(EventKind::RuntimeBinary).unwrap().digest);
    let root = psp.root.public_key().to_hex();
    let p = sim_policy(&root, &m, true, &format!("[runtime]\nbinary_sha384 = [\"{bin}\"]"));
    let r = verify_evidence(&ev, &p, &nonce, now);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.warnings, [SIMULATED_WARNING]);
    assert!(r.checks.iter().any(|c| c.name == "simulation" && c.passed && c.detail.contains("WARNING")));
    assert!(r.checks.iter().any(|c| c.name == "runtime.binary" && c.passed));
    assert!(r.to_string().contains("!!! WARNING: SIMULATED TEE"));
    assert!(r.to_json().contains("\"simulated\": true"));

    // A sim report signed by a different root fails.
    let other = SimPsp::new(SimRoot::generate(), m);
    let r = verify_evidence(&other.evidence(runtime_log(), &nonce), &p, &nonce, now);
    assert_eq!(failed(&r), ["sim.signature"]);

    // A tampered event log no longer matches REPORT_DATA.
    let mut t = ev.clone();
    t.event_log.extend(Event::with_data(EventKind::Config, b"{}".to_vec()));
    assert_eq!(failed(&verify_evidence(&t, &p, &nonce, now)), ["report_data", "runtime.binary"]);
}

#[test]
fn debug_enabled_report_fails_under_the_default_policy() {
    let m = [7u8; 48];
    let mut psp = SimPsp::new(SimRoot::generate(), m);
    psp.set_debug(true);
    let nonce = [1u8; 16];
    let ev = psp.evidence(runtime_log(), &nonce);
    let root = psp.root.public_key().to_hex();
    let r = verify_evidence(&ev, &sim_policy(&root, &m, true, ""), &nonce, SystemTime::now());
    assert_eq!(failed(&r), ["snp.debug"]);
    let p = Policy::from_toml(&format!(
        "allow_debug = true\n[simulation]\nallow_simulated = true\nroot_public_key = \"{root}\"\nmeasurements = [\"{}\"]",
        hex::encode(m)
    ))
    .unwrap();
    assert!(verify_evidence(&ev, &p, &nonce, SystemTime::now()).is_ok());
    // Migration agent and SMT policy bits.
    psp.set_debug(false);
    psp.policy |= chrysalis_verify::snp::policy_bits::MIGRATE_MA;
    psp.platform_info = chrysalis_verify::snp::platform_info_bits::SMT_EN;
    let ev = psp.evidence(runtime_log(), &nonce);
    let r = verify_evidence(&ev, &sim_policy(&root, &m, true, "[snp]\nrequire_smt_disabled = true"), &nonce, SystemTime::now());
    assert_eq!(failed(&r), ["snp.migration_agent", "snp.smt"]);
}

#[test]
fn freshness_uses_the_nonce_issue_time() {
    let m = [7u8; 48];
    let psp = SimPsp::new(SimRoot::generate(), m);
    let nonce = [1u8; 32];
    let ev = psp.evidence(runtime_log(), &nonce);
    let root = psp.root.public_key().to_hex();
    let p = sim_policy(&root, &m, true, "[freshness]\nmax_evidence_age_secs = 60");
    let now = SystemTime::now();
    let ctx = VerifyContext { nonce_issued_at: Some(now - Duration::from_secs(5)), ..VerifyContext::new(&nonce, now) };
    assert!(verify_evidence_with(&ev, &p, &ctx).is_ok());
    let ctx = VerifyContext { nonce_issued_at: Some(now - Duration::from_secs(120)), ..VerifyContext::new(&nonce, now) };
    assert_eq!(failed(&verify_evidence_with(&ev, &p, &ctx)), ["freshness"]);
    assert_eq!(failed(&verify_evidence(&ev, &p, &nonce, now)), ["freshness"]);
}

#[test]
fn gpu_evidence_not_committed_to_by_the_event_log_fails_closed() {
    // Full GPU verification is covered by tests/gpu_binding.rs; here: GPU evidence the
    // (bound) event log does not commit to is refused before it is even parsed.
    let m = [7u8; 48];
    let psp = SimPsp::new(SimRoot::generate(), m);
    let mut ev = psp.evidence(runtime_log(), &[1]);
    ev.gpus.push(chrysalis_proto::evidence::GpuEvidence { report: vec![1], cert_chain: vec![] });
    let p = sim_policy(&psp.root.public_key().to_hex(), &m, true, "");
    let r = verify_evidence(&ev, &p, &[1], SystemTime::now());
    assert_eq!(failed(&r), ["gpu.event"]);
}

/// A report requested from a VMPL above the policy's (default 0) is refused, and so is a
/// guest launched under firmware below the minimum TCB even when the TCB it reports now meets
/// it; each names its field.
#[test]
fn vmpl_and_launch_tcb_are_checked() {
    let mut psp = SimPsp::new(SimRoot::generate(), [7; 48]);
    // Milan layout: microcode 0x73 = 115, SNP 8, boot loader 3.
    psp.reported_tcb = 0x7308_0000_0000_0003;
    let policy = Policy::from_toml(&format!(
        "[simulation]\nallow_simulated = true\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n[snp.min_tcb]\nmicrocode = 100\n",
        psp.root.public_key().to_hex(),
        hex::encode(psp.measurement)
    ))
    .unwrap();
    let nonce = [1u8; 32];
    let mut log = EventLog::default();
    log.extend(Event::digest_of(EventKind::RuntimeBinary, b"runtime"));
    let check = |psp: &SimPsp| {
        let r = verify_evidence(&psp.evidence(log.clone(), &nonce), &policy, &nonce, SystemTime::now());
        failed(&r)
    };
    assert!(check(&psp).is_empty(), "{:?}", check(&psp));
    psp.vmpl = 1;
    assert_eq!(check(&psp), ["snp.vmpl"]);
    psp.vmpl = 0;
    psp.launch_tcb = Some(0x6308_0000_0000_0003); // launched under microcode 99
    assert_eq!(check(&psp), ["snp.launch_tcb.microcode"]);
}

const DSTACK_MEASUREMENT: &str =
    "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d";

fn dstack_evidence() -> Evidence {
    Evidence {
        version: EVIDENCE_VERSION,
        nonce: vec![],
        platform: PlatformEvidence::Snp {
            report: data("dstack-milan-v3/report.bin"),
            certs: vec![data("dstack-milan-v3/vcek_from_fixture.pem"), data("dstack-milan-v3/ask_from_fixture.pem")],
        },
        event_log: EventLog::default(),
        gpus: vec![],
    }
}

/// `[snp.product_min_tcb]` holding the sourced table's rows, as `attest policy --from` writes it.
fn table_section() -> String {
    let mut s = String::from("[snp.product_min_tcb]\n");
    for r in chrysalis_verify::snp::minimums::MIN_TCB_TABLE {
        s.push_str(&format!(
            "{} = {{ bootloader = {}, tee = {}, snp = {}, microcode = {} }}\n",
            format!("{:?}", r.product).to_lowercase(),
            r.bootloader.unwrap(),
            r.tee.unwrap(),
            r.snp.unwrap(),
            r.microcode.unwrap()
        ));
    }
    s
}

fn detail_of<'a>(r: &'a Report, name: &str) -> &'a str {
    r.checks.iter().find(|c| c.name == name).map_or("(no such row)", |c| c.detail.as_str())
}

/// Genuine Milan reports from 2023 (virtee, firmware 1.52) and 2026 (dstack, firmware 1.55.29)
/// are below the sourced minimums of the table a generated policy carries; each refusal names
/// the TCB field, the component, the value and the minimum.
#[test]
fn genuine_reports_below_the_table_minimum_are_refused_naming_the_field() {
    let p = policy(VIRTEE_MEASUREMENT, &table_section());
    let r = verify_evidence(&virtee_evidence(), &p, &[], jan_2026());
    assert_eq!(
        failed(&r),
        [
            "snp.tcb.bootloader",
            "snp.tcb.snp",
            "snp.tcb.microcode",
            "snp.launch_tcb.bootloader",
            "snp.launch_tcb.snp",
            "snp.launch_tcb.microcode"
        ]
    );
    assert_eq!(detail_of(&r, "snp.tcb.snp"), "REPORTED_TCB.snp = 8 is below the minimum 24");
    assert_eq!(detail_of(&r, "snp.launch_tcb.microcode"), "LAUNCH_TCB.microcode = 115 is below the minimum 214");
    // Old v2 firmware does not report ALIAS_CHECK_COMPLETE: not judged by it, and said so.
    let alias = r.checks.iter().find(|c| c.name == "snp.alias_check").unwrap();
    assert!(alias.passed && alias.found == "not reported", "{alias:?}");

    // dstack: REPORTED_TCB snp 23 (LAUNCH_TCB 24), microcode 213 = patch 0x0A0011D5, the
    // highest Milan microcode without the EntrySign fix.
    let p = Policy::from_toml(&format!(
        "[measurements]\nsnp = [\"{DSTACK_MEASUREMENT}\"]\n[report_data]\nbinding = \"fixed\"\nexpected = \"{}\"\n{}",
        hex::encode(b"attest-test-fixture-2026".iter().copied().chain([0; 40]).collect::<Vec<u8>>()),
        table_section()
    ))
    .unwrap();
    let july = UNIX_EPOCH + Duration::from_secs(1_782_864_000); // 2026-07-01
    let r = verify_evidence(&dstack_evidence(), &p, &[], july);
    assert_eq!(failed(&r), ["snp.tcb.snp", "snp.tcb.microcode", "snp.launch_tcb.microcode"], "{r}");
    assert_eq!(detail_of(&r, "snp.tcb.snp"), "REPORTED_TCB.snp = 23 is below the minimum 24");
    assert_eq!(detail_of(&r, "snp.tcb.microcode"), "REPORTED_TCB.microcode = 213 is below the minimum 214");
    // Firmware 1.55.29 on Milan reports the alias check (from 1.55.22); PLATFORM_INFO 0x25 has it set.
    let alias = r.checks.iter().find(|c| c.name == "snp.alias_check").unwrap();
    assert!(alias.passed && alias.found == "set", "{alias:?}");
}

/// A policy with per-product minimums refuses a product it does not list.
#[test]
fn a_product_without_a_minimum_is_refused() {
    let p = policy(VIRTEE_MEASUREMENT, "[snp.product_min_tcb.genoa]\nsnp = 1\n");
    let r = verify_evidence(&virtee_evidence(), &p, &[], jan_2026());
    assert_eq!(failed(&r), ["snp.product_min_tcb"]);
    assert!(detail_of(&r, "snp.product_min_tcb").contains("none for Milan"), "{r}");
    // The owner may opt a genuine old fixture down explicitly.
    let p = policy(VIRTEE_MEASUREMENT, "[snp.product_min_tcb.milan]\nbootloader = 3\nsnp = 8\nmicrocode = 115\n");
    assert!(verify_evidence(&virtee_evidence(), &p, &[], jan_2026()).is_ok());
}

/// CRLs named by the policy are read and checked; one that cannot be read fails the row.
#[test]
fn an_unreadable_amd_crl_fails_the_chain() {
    let p = policy(VIRTEE_MEASUREMENT, "[snp]\namd_crls = [\"/nonexistent/milan.crl\"]\n");
    let r = verify_evidence(&virtee_evidence(), &p, &[], jan_2026());
    assert_eq!(failed(&r), ["snp.amd_crl"]);
    assert!(detail_of(&r, "snp.amd_crl").starts_with("reading /nonexistent/milan.crl:"), "{r}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.crl");
    std::fs::write(&junk, b"not a crl").unwrap();
    let p = policy(VIRTEE_MEASUREMENT, &format!("[snp]\namd_crls = [\"{}\"]\n", junk.display()));
    let r = verify_evidence(&virtee_evidence(), &p, &[], jan_2026());
    assert_eq!(failed(&r), ["snp.amd_crl"]);
    assert!(detail_of(&r, "snp.amd_crl").starts_with("AMD CRL does not decode:"), "{r}");
}
