//! GPU evidence bound into the CPU evidence, verified end to end (`verify_evidence_with_gpu`):
//! simulated CPU evidence whose event log commits to the genuine H100 report in
//! `testdata/nvidia/trustee-hopper` (case 1 chain), appraised with the derived, test-signed
//! RIM pair in `testdata/nvidia_derived/` (NOT NVIDIA-signed; see its README).
//!
//! The genuine report signed a fixed nonce that no event log derives, so the positive path
//! uses the clearly labelled INSECURE test hook `GpuAppraisal::insecure_test_nonce`; the
//! negative test `derived_nonce_does_not_match_the_fixed_vector` shows what happens without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
use chrysalis_proto::evidence::{Evidence, GpuEvidence};
use chrysalis_proto::gpubind;
use chrysalis_verify::nvidia::{RimBundle, Trust, x509};
use chrysalis_verify::sim::{SimPsp, SimRoot};
use chrysalis_verify::verify::{SIMULATED_WARNING, VerifyContext};
use chrysalis_verify::verify_gpu::{GpuAppraisal, TEST_NONCE_WARNING};
use chrysalis_verify::{Policy, Report, verify_evidence_with_gpu};

/// The request nonce inside the genuine report (see testdata/nvidia/README.md).
const VECTOR_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const CPU_NONCE: [u8; 32] = [0x5a; 32];
const MEASUREMENT: [u8; 48] = [4; 48];

fn test_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(test_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// 2026-11-27T00:00:00Z: device chain valid, stored OCSP response of the derived bundle fresh.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_737_600)
}

fn vector_nonce() -> [u8; 32] {
    hex::decode(VECTOR_NONCE).unwrap().try_into().unwrap()
}

fn genuine_gpu() -> GpuEvidence {
    let text = String::from_utf8(read("nvidia/trustee-hopper/hopperAttestationReport.txt")).unwrap();
    let pem = String::from_utf8(read("nvidia/trustee-hopper/hopper_cert_chain_case1.txt")).unwrap();
    GpuEvidence { report: hex::decode(text.trim()).unwrap(), cert_chain: x509::pem_to_der_chain(&pem).unwrap() }
}

/// The log a CUDA runtime records: its measurements, its public key, then the GPU event.
fn boot_log() -> EventLog {
    let mut log = EventLog::default();
    log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
    log.extend(Event::with_data(EventKind::KernelCmdline, b"console=ttyS0".to_vec()));
    log.extend(Event::with_data(EventKind::PublicKey, vec![7; 32]));
    log
}

fn log_with(gpu_event: Event) -> EventLog {
    let mut log = boot_log();
    log.extend(gpu_event);
    log
}

struct Setup {
    psp: SimPsp,
}

impl Setup {
    fn new() -> Self {
        Setup { psp: SimPsp::new(SimRoot::generate(), MEASUREMENT) }
    }

    /// Simulated CPU evidence for `log` and CPU_NONCE, serving `gpus`.
    fn evidence(&self, log: EventLog, gpus: Vec<GpuEvidence>) -> Evidence {
        let mut ev = self.psp.evidence(log, &CPU_NONCE);
        ev.gpus = gpus;
        ev
    }

    /// A policy for the genuine vector, which has NVDEC0 disabled and stored OCSP responses
    /// for only part of its chain: unless `gpu` says otherwise, the policy explicitly accepts
    /// both (the defaults refuse them; see `gpu_defaults_refuse_disabled_nvdec0_and_unchecked_revocation`).
    fn policy(&self, gpu: &str) -> Policy {
        let mut gpu = gpu.to_owned();
        for (key, line) in [("allow_nvdec0_disabled", "allow_nvdec0_disabled = true"), ("require_ocsp", "require_ocsp = false")] {
            if !gpu.contains(key) {
                gpu = format!("{line}\n{gpu}");
            }
        }
        Policy::from_toml(&format!(
            "[simulation]\nallow_simulated = true\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n[gpu]\n{gpu}",
            self.psp.root.public_key().to_hex(),
            hex::encode(MEASUREMENT)
        ))
        .unwrap()
    }
}

fn derived_trust() -> Trust {
    let root = String::from_utf8(read("nvidia_derived/test_rim_root.pem")).unwrap();
    Trust::from_pem(x509::DEVICE_ROOT_PEM, &root).unwrap()
}

fn derived_bundle() -> RimBundle {
    RimBundle::load_dir(&test_path("nvidia_derived/bundle")).unwrap()
}

/// Derived RIMs and their test root, and the vector's fixed nonce (INSECURE test hook).
fn appraisal() -> GpuAppraisal {
    GpuAppraisal::new().with_rims(derived_bundle()).with_trust(derived_trust()).insecure_test_nonce(vector_nonce())
}

fn verify(ev: &Evidence, p: &Policy, a: &GpuAppraisal) -> Report {
    let ev = Evidence::from_bytes(&ev.to_bytes()).unwrap();
    verify_evidence_with_gpu(&ev, p, &VerifyContext::new(&CPU_NONCE, now()), a)
}

fn failed(r: &Report) -> Vec<String> {
    r.failures().map(|c| c.name.clone()).collect()
}

fn row<'a>(r: &'a Report, name: &str) -> &'a chrysalis_verify::Check {
    r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no row {name}:\n{r}"))
}

const STRICT: &str =
    "require_gpu = true\nallowed_driver_versions = [\"550.90.07\"]\nallowed_vbios_versions = [\"96.00.9F.00.01\"]";

#[test]
fn bound_genuine_gpu_evidence_passes() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    let r = verify(&ev, &s.policy(STRICT), &appraisal());
    assert!(r.is_ok(), "{r}");
    for name in [
        "report_data",
        "gpu.present",
        "gpu.event",
        "gpu[0].nonce",
        "gpu[0].report",
        "gpu[0].rim",
        "gpu[0].driver_version",
        "gpu[0].vbios_version",
        "gpu[0].nvdec0",
        "gpu[0].ocsp",
    ] {
        assert!(row(&r, name).passed, "{name}");
    }
    assert_eq!(row(&r, "gpu[0].rim").found, "32 measurements match");
    assert_eq!(row(&r, "gpu[0].nonce").found, VECTOR_NONCE);
    assert!(row(&r, "gpu[0].nonce").detail.starts_with("TEST OVERRIDE"));
    assert_eq!(row(&r, "gpu.event").expected, hex::encode(gpubind::gpus_digest(&ev.gpus)));
    // The test hook is loud, like the simulated TEE.
    assert_eq!(r.warnings, vec![SIMULATED_WARNING.to_string(), TEST_NONCE_WARNING.to_string()]);
    assert_eq!(r.gpus.len(), 1);
    assert_eq!(r.gpus[0].claims().driver_version, "550.90.07");
    let text = r.to_string();
    assert!(text.contains("verified GPU claims (gpu[0])") && text.contains("GH100 A01 GSP FMC LF"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["gpus"][0]["driver_version"], "550.90.07");

    // Two GPUs (the same vector twice) are one event over both.
    let two = vec![genuine_gpu(), genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&two)), two);
    let r = verify(&ev, &s.policy(STRICT), &appraisal());
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.gpus.len(), 2);
    assert!(row(&r, "gpu[1].report").passed);
}

#[test]
fn derived_nonce_does_not_match_the_fixed_vector() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let log = log_with(gpubind::gpu_event(&gpus));
    let derived = gpubind::gpu_nonce_after(&boot_log());
    let ev = s.evidence(log, gpus);
    let honest = GpuAppraisal::new().with_rims(derived_bundle()).with_trust(derived_trust());
    let r = verify(&ev, &s.policy(STRICT), &honest);
    assert_eq!(failed(&r), ["gpu[0].nonce", "gpu[0].report"], "{r}");
    let n = row(&r, "gpu[0].nonce");
    assert_eq!((n.found.as_str(), n.expected.clone()), (VECTOR_NONCE, hex::encode(derived)));
    assert_eq!(
        n.detail,
        "the GPU signed another nonce than the one derived from this event log; expected SHA-256(\"chrysalis/gpu-nonce/v1\" || 0x00 || event-log digest before the GpuEvidence event)"
    );
    assert_eq!(
        row(&r, "gpu[0].report").detail,
        format!(
            "device chain, FWID and signature are valid, but RIMs and OCSP were not checked: GPU report nonce {VECTOR_NONCE} does not match the expected nonce {}",
            hex::encode(derived)
        )
    );
    assert!(r.warnings.iter().all(|w| w != TEST_NONCE_WARNING));
    assert!(r.gpus.is_empty());
}

#[test]
fn no_gpu_evidence_fails_only_when_required() {
    let s = Setup::new();
    let ev = s.evidence(boot_log(), vec![]);
    let r = verify(&ev, &s.policy("require_gpu = true"), &appraisal());
    assert_eq!(failed(&r), ["gpu.present"], "{r}");
    assert_eq!(row(&r, "gpu.present").detail, "refused: [gpu] require_gpu = true and the evidence carries no GPU evidence");
    let r = verify(&ev, &s.policy(""), &appraisal());
    assert!(r.is_ok(), "{r}");
    assert!(r.checks.iter().all(|c| !c.name.starts_with("gpu")), "{r}");
}

#[test]
fn gpu_event_digest_mismatch_fails() {
    let s = Setup::new();
    // The log commits to other GPU evidence (another chain) than the one served.
    let other = vec![GpuEvidence { cert_chain: vec![vec![1, 2, 3]], ..genuine_gpu() }];
    let ev = s.evidence(log_with(gpubind::gpu_event(&other)), vec![genuine_gpu()]);
    let r = verify(&ev, &s.policy(STRICT), &appraisal());
    assert_eq!(failed(&r), ["gpu.event"], "{r}");
    let e = row(&r, "gpu.event");
    assert_eq!(e.found, hex::encode(gpubind::gpus_digest(&other)));
    assert_eq!(e.detail, "the GpuEvidence event digest does not match SHA-384 of the served GPU evidence");

    // GPU evidence served, but the log has no GPU event: not bound.
    let ev = s.evidence(boot_log(), vec![genuine_gpu()]);
    let r = verify(&ev, &s.policy(STRICT), &appraisal());
    assert_eq!(failed(&r), ["gpu.event"], "{r}");
    assert_eq!(
        row(&r, "gpu.event").detail,
        "the event log has no GpuEvidence event: the GPU evidence is not bound to the CPU evidence"
    );

    // The log has a GPU event but the GPU evidence was stripped from the bundle.
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), vec![]);
    let r = verify(&ev, &s.policy(""), &appraisal());
    assert_eq!(failed(&r), ["gpu.event"], "{r}");

    // Two GPU events.
    let mut log = log_with(gpubind::gpu_event(&gpus));
    log.extend(gpubind::gpu_event(&gpus));
    let r = verify(&s.evidence(log, gpus), &s.policy(""), &appraisal());
    assert_eq!(failed(&r), ["gpu.event"], "{r}");
    assert!(row(&r, "gpu.event").detail.starts_with("the event log has 2 GpuEvidence events, exactly one is expected"));
}

#[test]
fn tampered_gpu_report_fails() {
    let s = Setup::new();
    // A bit flipped inside the first measurement block's value (signed): the runtime's log
    // commits to the tampered bytes, so only the signature can catch it.
    let mut bad = genuine_gpu();
    bad.report[37 + 8 + 4 + 3 + 10] ^= 0x01;
    let gpus = vec![bad];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    let r = verify(&ev, &s.policy(STRICT), &appraisal());
    assert_eq!(failed(&r), ["gpu[0].report"], "{r}");
    assert_eq!(row(&r, "gpu[0].report").detail, "GPU report signature does not verify with the device leaf certificate");
    assert!(r.gpus.is_empty());

    // Tampered after the runtime logged it: the event no longer matches.
    let good = vec![genuine_gpu()];
    let mut ev = s.evidence(log_with(gpubind::gpu_event(&good)), good);
    ev.gpus[0].report[100] ^= 0x01;
    let r = verify(&ev, &s.policy(STRICT), &appraisal());
    assert_eq!(failed(&r), ["gpu.event"], "{r}");

    // A truncated report is a parse error row.
    let mut short = genuine_gpu();
    short.report.truncate(100);
    let gpus = vec![short];
    let r = verify(&s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus), &s.policy(""), &appraisal());
    assert_eq!(failed(&r), ["gpu[0].report"], "{r}");
    assert!(row(&r, "gpu[0].report").detail.starts_with("GPU report: "), "{r}");
}

#[test]
fn driver_and_vbios_versions_outside_the_lists_fail() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    let r = verify(&ev, &s.policy("allowed_driver_versions = [\"550.163.01\"]"), &appraisal());
    assert_eq!(failed(&r), ["gpu[0].driver_version"], "{r}");
    let d = row(&r, "gpu[0].driver_version");
    assert_eq!((d.found.as_str(), d.expected.as_str()), ("550.90.07", "550.163.01"));
    let r = verify(&ev, &s.policy("allowed_vbios_versions = [\"96.00.9f.00.02\"]"), &appraisal());
    assert_eq!(failed(&r), ["gpu[0].vbios_version"], "{r}");
    let r = verify(&ev, &s.policy("allowed_driver_versions = []"), &appraisal());
    assert_eq!(row(&r, "gpu[0].driver_version").expected, "(none allowed)");
    assert!(!r.is_ok());
}

#[test]
fn missing_rims_fail_unless_allowed_and_other_gpu_policies() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    let no_rims = GpuAppraisal::new().with_rims(RimBundle::new()).insecure_test_nonce(vector_nonce());
    let r = verify(&ev, &s.policy(""), &no_rims);
    assert_eq!(failed(&r), ["gpu[0].rim"], "{r}");
    assert_eq!(
        row(&r, "gpu[0].rim").detail,
        "measurements NOT compared: the RIM bundle lacks NV_GPU_DRIVER_GH100_550.90.07, NV_GPU_VBIOS_1010_0200_882_96009F0001"
    );
    let r = verify(&ev, &s.policy("allow_rim_not_available = true"), &no_rims);
    assert!(r.is_ok(), "{r}");
    // The vector has NVDEC0 disabled; a policy may refuse that.
    let r = verify(&ev, &s.policy("allow_nvdec0_disabled = false"), &appraisal());
    assert_eq!(failed(&r), ["gpu[0].nvdec0"], "{r}");
    // No stored OCSP responses for the device chain: fails only when required.
    let r = verify(&ev, &s.policy("require_ocsp = true"), &appraisal());
    assert_eq!(failed(&r), ["gpu[0].ocsp"], "{r}");
    assert_eq!(row(&r, "gpu[0].ocsp").found, "2 of 6 good");
    // The derived RIMs are not trusted under NVIDIA's pinned root.
    let nvidia_roots = GpuAppraisal::new().with_rims(derived_bundle()).insecure_test_nonce(vector_nonce());
    let r = verify(&ev, &s.policy(""), &nvidia_roots);
    assert_eq!(failed(&r), ["gpu[0].report"], "{r}");
    assert!(row(&r, "gpu[0].report").detail.starts_with("RIM NV_GPU_"), "{r}");
}

#[test]
fn unbound_event_log_makes_gpu_evidence_worthless() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    // Verified for another CPU nonce: REPORT_DATA does not bind the log.
    let r = verify_evidence_with_gpu(&ev, &s.policy(""), &VerifyContext::new(&[0x11; 32], now()), &appraisal());
    assert_eq!(failed(&r), ["evidence.nonce", "report_data", "gpu.event"], "{r}");
    assert!(row(&r, "gpu.event").detail.starts_with("event log is not bound to REPORT_DATA"));
}

#[test]
fn gpu_event_before_the_public_key_is_refused() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let mut log = EventLog::default();
    log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
    log.extend(gpubind::gpu_event(&gpus));
    log.extend(Event::with_data(EventKind::PublicKey, vec![7; 32]));
    let honest = GpuAppraisal::new().with_rims(derived_bundle()).with_trust(derived_trust());
    let r = verify(&s.evidence(log, gpus), &s.policy(""), &honest);
    assert_eq!(failed(&r), ["gpu.nonce"], "{r}");
    assert_eq!(
        row(&r, "gpu.nonce").detail,
        "no PublicKey event precedes the GpuEvidence event: the GPU nonce is not fresh per boot"
    );
}

#[test]
fn policy_rim_bundle_is_read_relative_to_the_policy_file() {
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("rims");
    std::fs::create_dir_all(bundle.join("ocsp")).unwrap();
    for f in ["NV_GPU_DRIVER_GH100_550.90.07.swidtag", "NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag", "ocsp/good.der"] {
        std::fs::copy(test_path("nvidia_derived/bundle").join(f), bundle.join(f)).unwrap();
    }
    let text = s.policy("rim_bundle = \"rims\"").to_toml().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, text).unwrap();
    let p = Policy::load(&file).unwrap();
    assert_eq!(p.gpu.rim_bundle.as_deref(), Some(bundle.display().to_string().as_str()));
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    let a = GpuAppraisal::new().with_trust(derived_trust()).insecure_test_nonce(vector_nonce());
    let r = verify(&ev, &p, &a);
    assert!(r.is_ok(), "{r}");
    assert_eq!(row(&r, "gpu.rim_bundle").found, "2 RIMs, 1 OCSP responses");
    // A bundle directory that does not exist fails its own row.
    std::fs::remove_dir_all(&bundle).unwrap();
    let r = verify(&ev, &p, &a);
    assert_eq!(failed(&r), ["gpu.rim_bundle"], "{r}");
    assert!(row(&r, "gpu.rim_bundle").detail.starts_with("reading the RIM bundle: "), "{r}");
}

/// Under an empty `[gpu]` section the genuine vector is refused twice, each naming its row:
/// its NVDEC0 is disabled (a measurement would be skipped) and the bundle holds "good" OCSP
/// responses for only part of its chain (revocation not fully checked).
#[test]
fn gpu_defaults_refuse_disabled_nvdec0_and_unchecked_revocation() {
    let s = Setup::new();
    let gpus = vec![genuine_gpu()];
    let ev = s.evidence(log_with(gpubind::gpu_event(&gpus)), gpus);
    let defaults = Policy::from_toml(&format!(
        "[simulation]\nallow_simulated = true\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n",
        s.psp.root.public_key().to_hex(),
        hex::encode(MEASUREMENT)
    ))
    .unwrap();
    let r = verify(&ev, &defaults, &appraisal());
    assert_eq!(failed(&r), ["gpu[0].nvdec0", "gpu[0].ocsp"], "{r}");
    assert!(verify(&ev, &s.policy(""), &appraisal()).is_ok());
}
