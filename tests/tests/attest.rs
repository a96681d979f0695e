//! The attested key release end to end, in QEMU with the simulated TEE: the owner seals a
//! model, the image boots with the bundle as a read-only disk, the owner's `attest release`
//! verifies the evidence and releases the key, and the runtime serves the model. And the
//! negative twins: a policy with another measurement, a one-byte change to the initramfs,
//! a tampered bundle, and evidence replayed from an earlier boot.
// Helper functions of this test file fail the test on error, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use chrysalis_e2e::image::{out_dir, scratch};
use chrysalis_e2e::qemu::{Vm, VmConfig};
use chrysalis_e2e::{owner, sim};
use chrysalis_verify::sim::SimRoot;

const BOOT: Duration = Duration::from_secs(300);

struct Setup {
    dir: std::path::PathBuf,
    cfg: VmConfig,
    root: SimRoot,
    key: std::path::PathBuf,
    bundle: std::path::PathBuf,
    header_sha384: String,
}

/// Seal the tiny Llama, attach it as a disk, and make a sim root for this test.
fn setup(name: &str) -> Setup {
    let dir = scratch(name).unwrap();
    let sealed = owner::seal(&owner::model("tiny-llama").unwrap(), &dir, "tiny-llama").unwrap();
    let mut cfg = VmConfig::for_image(&out_dir().unwrap(), &dir).unwrap();
    cfg.disk = Some(sealed.bundle.clone());
    // These tests talk to the inference API directly; the encrypted channel has its own tests.
    cfg.cmdline.push_str(" chrysalis.plaintext=1");
    Setup {
        root: SimRoot::generate(),
        key: sealed.key_file.clone(),
        bundle: sealed.bundle.clone(),
        header_sha384: sealed.header_sha384.clone(),
        dir,
        cfg,
    }
}

fn get(url: &str) -> (u16, Vec<u8>) {
    match ureq::get(url).config().http_status_as_error(false).build().call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_vec().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn health(vm: &Vm) -> serde_json::Value {
    let (status, body) = get(&format!("{}/v1/health", vm.url()));
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

fn complete(vm: &Vm, model: &str) -> serde_json::Value {
    chrysalis_e2e::api::complete(&vm.url(), model).unwrap()
}

#[test]
fn owner_releases_key_and_runtime_serves_the_model() {
    let s = setup("release");
    let measurement = sim::measurement(&s.cfg).unwrap();
    let policy =
        owner::write_policy(&s.dir, &owner::sim_policy(&s.root.public_key(), &measurement, Some(&s.header_sha384))).unwrap();
    let mut vm = sim::boot(s.cfg.clone(), s.root, |_| {}).unwrap();
    vm.wait_for("READY", BOOT).unwrap();
    let h = health(&vm);
    assert_eq!(h["stage"]["state"], "waiting_for_key", "{h}");
    assert!(h["tee"].as_str().unwrap().contains("SIMULATED"), "{h}");
    // Before the key: inference answers 503 model not unsealed.
    let (status, body) = get(&format!("{}/v1/models", vm.url()));
    assert!(
        status == 503 || String::from_utf8_lossy(&body).contains("\"data\":[]"),
        "{status} {}",
        String::from_utf8_lossy(&body)
    );

    let out = owner::release(&vm.url(), &policy, &s.key).unwrap();
    assert_eq!(out.runtime_status, 200, "{}", out.runtime_answer);
    let names: Vec<&str> = out.steps.iter().map(|c| c.name.as_str()).collect();
    assert!(names.iter().any(|n| n.contains("binding") || n.contains("report_data")), "{names:?}");
    let h = health(&vm);
    assert_eq!(h["stage"]["state"], "serving", "{h}");
    assert_eq!(h["stage"]["model"], "tiny-llama", "{h}");
    for m in ["evidence_served", "key_received", "unsealed", "model_loaded"] {
        assert!(h["milestones"][m].as_f64().is_some(), "milestone {m} missing: {h}");
    }
    let c = complete(&vm, "tiny-llama");
    assert_eq!(c["usage"]["completion_tokens"], 4, "{c}");
    let console = vm.serial();
    assert!(console.contains("(memory only)"), "{console}");
    // A second key is refused: one boot, one model.
    let again = owner::release(&vm.url(), &policy, &s.key).unwrap_err();
    assert!(format!("{again:#}").contains("already unsealed"), "{again:#}");
}

#[test]
fn policy_with_another_measurement_refuses_and_runtime_gets_no_key() {
    let s = setup("wrongmeasurement");
    let other = [0x5a; 48];
    let policy = owner::write_policy(&s.dir, &owner::sim_policy(&s.root.public_key(), &other, None)).unwrap();
    let mut vm = sim::boot(s.cfg.clone(), s.root, |_| {}).unwrap();
    vm.wait_for("READY", BOOT).unwrap();
    let err = owner::release(&vm.url(), &policy, &s.key).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("measurement"), "refusal does not name the measurement: {msg}");
    assert_eq!(chrysalis_attest::exit_code(&err), chrysalis_attest::EXIT_REFUSED, "{msg}");
    let h = health(&vm);
    assert_eq!(h["stage"]["state"], "waiting_for_key", "{h}");
    assert!(h["milestones"]["key_received"].is_null(), "{h}");
}

/// One byte of the initramfs changed (the gzip header's MTIME, so it still boots): the
/// launch measurement changes and the owner's policy, written for the published image,
/// refuses the key.
#[test]
fn one_byte_changed_initramfs_changes_measurement_and_is_refused() {
    let s = setup("initramfs");
    let published = sim::measurement(&s.cfg).unwrap();
    let mut initrd = std::fs::read(&s.cfg.initrd).unwrap();
    assert_eq!(&initrd[..2], [0x1f, 0x8b], "initramfs is not gzip");
    initrd[4] ^= 0x01;
    let modified = s.dir.join("initramfs-modified.cpio.gz");
    std::fs::write(&modified, &initrd).unwrap();
    let mut cfg = s.cfg.clone();
    cfg.initrd = modified;
    let measured = sim::measurement(&cfg).unwrap();
    assert_ne!(published, measured, "a one-byte change must change the measurement");
    let policy = owner::write_policy(&s.dir, &owner::sim_policy(&s.root.public_key(), &published, None)).unwrap();
    let mut vm = sim::boot(cfg, s.root, |_| {}).unwrap();
    vm.wait_for("READY", BOOT).unwrap();
    let err = owner::release(&vm.url(), &policy, &s.key).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&hex::encode(measured)[..12]) || msg.contains("measurement"), "{msg}");
    assert!(health(&vm)["milestones"]["key_received"].is_null());
}

/// A flipped byte in the sealed body on the disk: the key opens (the owner's checks pass),
/// the runtime reports the tamper with the failing chunk, keeps nothing, keeps serving
/// attestation, and refuses inference.
#[test]
fn tampered_bundle_is_reported_and_attestation_keeps_working() {
    let s = setup("tamper");
    let mut b = std::fs::read(&s.bundle).unwrap();
    let at = b.len() - 100;
    b[at] ^= 0x40;
    std::fs::write(&s.bundle, &b).unwrap();
    let measurement = sim::measurement(&s.cfg).unwrap();
    let policy = owner::write_policy(&s.dir, &owner::sim_policy(&s.root.public_key(), &measurement, None)).unwrap();
    let mut vm = sim::boot(s.cfg.clone(), s.root, |_| {}).unwrap();
    vm.wait_for("READY", BOOT).unwrap();
    let err = owner::release(&vm.url(), &policy, &s.key).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("decryption failed at chunk"), "runtime did not report the tamper: {msg}");
    let h = health(&vm);
    assert_eq!(h["stage"]["state"], "waiting_for_key", "{h}");
    // /v1/health names only the class; the details went to the owner and the console.
    assert_eq!(h["last_error"], "unseal_failed", "{h}");
    // Attestation still works and still verifies under the policy.
    owner::verify_attestation(&vm.url(), &policy, &[7u8; 32]).unwrap();
    let (status, _) = get(&format!("{}/v1/models/tiny-llama", vm.url()));
    assert_ne!(status, 200);
}

/// Evidence from an earlier boot (answering an old nonce) replayed by a man in the middle:
/// the owner's tool refuses it, and the key message it would produce could not be used.
#[test]
fn evidence_replayed_from_an_earlier_boot_is_refused() {
    let s = setup("replay");
    let measurement = sim::measurement(&s.cfg).unwrap();
    let policy = owner::write_policy(&s.dir, &owner::sim_policy(&s.root.public_key(), &measurement, None)).unwrap();
    let old_nonce = [1u8; 32];
    let old_evidence = {
        let mut vm = sim::boot(s.cfg.clone(), s.root, |_| {}).unwrap();
        vm.wait_for("READY", BOOT).unwrap();
        let (status, body) = get(&format!("{}/v1/attestation?nonce={}", vm.url(), hex::encode(old_nonce)));
        assert_eq!(status, 200);
        vm.press_power_button().unwrap();
        vm.wait_exit(Duration::from_secs(60)).unwrap();
        body
    };
    // A relay that answers every attestation request with the recorded evidence.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", old_evidence.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&old_evidence);
        }
    });
    let err = owner::release(&url, &policy, &s.key).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("nonce"), "replay not refused for its nonce: {msg}");
    assert_eq!(chrysalis_attest::exit_code(&err), chrysalis_attest::EXIT_REFUSED, "{msg}");
}

/// Poll `/v1/health` until the stage is `state` (pull mode gets its key on its own).
fn wait_stage(vm: &Vm, state: &str, timeout: Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let h = health(vm);
        if h["stage"]["state"] == state {
            return h;
        }
        assert!(start.elapsed() < timeout, "stage {state} not reached in {timeout:?}: {h}\n{}", vm.serial());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Keys on a lease (issue 19): in pull mode with `chrysalis.lease_s`, the runtime renews
/// its key with `attest serve-keys` every third of the lease and keeps serving; once the
/// owner revokes its image (its launch measurement in `--revoked`), it stops serving at the
/// next renewal: within one lease period, with `model_stopped` for requests and the reason
/// in `/v1/health`.
#[test]
fn a_revoked_lease_stops_serving_within_one_lease_period() {
    use chrysalis_attest::serve_keys::{KeyService, serve};
    const LEASE: Duration = Duration::from_secs(9);
    let mut s = setup("lease");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    // QEMU's user network shows the host's loopback to the guest as 10.0.2.2.
    s.cfg.cmdline.push_str(&format!(" chrysalis.key_url=http://10.0.2.2:{port} chrysalis.lease_s={}", LEASE.as_secs()));
    let measurement = sim::measurement(&s.cfg).unwrap();
    let policy = owner::sim_policy(&s.root.public_key(), &measurement, Some(&s.header_sha384));
    let verifier = chrysalis_verify::PolicyVerifier::new(chrysalis_verify::policy::Policy::from_toml(&policy).unwrap());
    let key = chrysalis_proto::seal::KeyFile::parse(&std::fs::read_to_string(&s.key).unwrap()).unwrap();
    let revoked = s.dir.join("revoked");
    std::fs::write(&revoked, "# nothing revoked\n").unwrap();
    let svc = KeyService::new(Box::new(verifier), key, Duration::from_secs(120)).with_revocations(revoked.clone());
    rt.spawn(serve(listener, std::sync::Arc::new(svc)));

    let mut vm = sim::boot(s.cfg.clone(), s.root, |_| {}).unwrap();
    vm.wait_for("READY", BOOT).unwrap();
    wait_stage(&vm, "serving", BOOT);
    complete(&vm, "tiny-llama");
    // More than one lease later it still serves: the renewals worked.
    std::thread::sleep(LEASE + Duration::from_secs(2));
    assert_eq!(health(&vm)["stage"]["state"], "serving");
    complete(&vm, "tiny-llama");

    std::fs::write(&revoked, format!("measurement {}  # this image\n", hex::encode(measurement))).unwrap();
    let revoked_at = std::time::Instant::now();
    let body = serde_json::json!({"model": "tiny-llama", "prompt": "The sky is", "max_tokens": 1}).to_string();
    let refusal = loop {
        let mut r = ureq::post(&format!("{}/v1/completions", vm.url()))
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        if r.status().as_u16() == 503 {
            break r.body_mut().read_to_string().unwrap();
        }
        assert!(revoked_at.elapsed() < 3 * LEASE, "still serving {:?} after revocation\n{}", revoked_at.elapsed(), vm.serial());
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = revoked_at.elapsed();
    eprintln!("lease {LEASE:?}: requests refused {took:?} after the owner revoked the image");
    assert!(took <= LEASE, "stopped {took:?} after revocation, more than the lease {LEASE:?}");
    assert!(refusal.contains("model_stopped") && refusal.contains("renewal_refused"), "{refusal}");
    let h = health(&vm);
    assert_eq!(h["stage"], serde_json::json!({"state": "stopped", "reason": "renewal_refused"}), "{h}");
    let console = vm.serial();
    assert!(console.contains("lease: stopped serving: the key service refused to renew the lease"), "{console}");
    assert!(console.contains("launch measurement") && console.contains("is revoked"), "{console}");
    // A key pushed afterwards is refused: the stop is final for this boot.
    let again = owner::release(&vm.url(), &owner::write_policy(&s.dir, &policy).unwrap(), &s.key).unwrap_err();
    assert!(format!("{again:#}").contains("409") || format!("{again:#}").contains("already unsealed"), "{again:#}");
}
