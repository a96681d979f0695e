//! The end-user channel end to end, against the real image in QEMU with the simulated TEE:
//! a tiny Llama is sealed, its key released to the verified runtime, then
//!
//! (a) the official `openai` Python client talks to `attest proxy` — models, plain and
//!     streaming chat and completions — and every answer's receipt verifies later with
//!     `attest verify-receipt` (and fails for an altered response);
//! (b) a proxy whose policy lacks the runtime's measurement refuses to forward and says why;
//! (c) a man in the middle that swaps the runtime's public key in its evidence is detected;
//! (d) a flipped byte in a sealed request, a sealed response or a sealed stream is rejected;
//! (e) a sealed request replayed by a relay is refused by the runtime (409 `channel_replayed`);
//!
//! and the runtime itself refuses an unencrypted request with 403. One boot serves all
//! scenarios (QEMU under TCG is slow); generated lengths are a few tokens.
// Helper functions of this test file fail the test on error, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrysalis_attest::Outcome;
use chrysalis_attest::proxy::{self, ProxyArgs};
use chrysalis_attest::release::{self, ReleaseArgs};
use chrysalis_attest::seal::{self, SealArgs};
use chrysalis_attest::verify_receipt::{self, VerifyReceiptArgs};
use chrysalis_e2e::image::{out_dir, root, scratch};
use chrysalis_e2e::qemu::VmConfig;
use chrysalis_e2e::{owner, sim};
use chrysalis_proto::eventlog::EventKind;
use chrysalis_proto::evidence::Evidence;
use chrysalis_proto::keyrelease::RuntimeKeyPair;
use chrysalis_verify::Policy;
use chrysalis_verify::PolicyVerifier;

const BOOT: Duration = Duration::from_secs(240);
const SETUP: &str = "run `cargo xtask test`, or by hand: python3 -m venv .venv && .venv/bin/pip install -r \
    tests/demo-requirements.txt && export CHRYSALIS_PYTHON=$PWD/.venv/bin/python CHRYSALIS_MODELS=$PWD/.cache/models \
    (the tiny Llama needs runtime/tests/reference/requirements.txt)";

fn python() -> PathBuf {
    let p =
        std::env::var_os("CHRYSALIS_PYTHON").map(PathBuf::from).unwrap_or_else(|| panic!("CHRYSALIS_PYTHON is not set: {SETUP}"));
    assert!(p.exists(), "CHRYSALIS_PYTHON={} does not exist: {SETUP}", p.display());
    p
}

fn client(mode: &str, base: &str, extra: &[&str]) -> (bool, String) {
    let script = root().join("tests/tests/channel_client.py");
    let out = Command::new(python()).arg(&script).arg(mode).arg(base).args(extra).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The last JSON line a client mode printed.
fn last_json(text: &str) -> serde_json::Value {
    text.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| panic!("no JSON in:\n{text}"))
}

fn proxy_args(url: &str, policy: &Path, receipts: Option<PathBuf>) -> ProxyArgs {
    ProxyArgs { url: url.to_owned(), save_bodies: receipts.is_some(), receipts, ..ProxyArgs::embedded(policy) }
}

fn start_proxy(args: &ProxyArgs) -> proxy::RunningProxy {
    let policy = Policy::load(&args.policy).unwrap();
    proxy::start(args, Box::new(PolicyVerifier::new(policy))).unwrap()
}

fn policy_text(root_hex: &str, measurement: &[u8]) -> String {
    format!(
        "[report_data]\nbinding = \"chrysalis-eventlog\"\n[simulation]\nallow_simulated = true\n\
         root_public_key = \"{root_hex}\"\nmeasurements = [\"{}\"]\n",
        hex::encode(measurement)
    )
}

// ---------------------------------------------------------------------------------------
// A man in the middle: an HTTP/1.1 relay (one request per connection) that can alter the
// runtime's evidence, a request body or a response body on its way.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tamper {
    /// Replace the runtime's PublicKey event with the relay's own key.
    SwapKey,
    /// Flip a byte of the sealed request body of inference requests.
    FlipRequest,
    /// Flip a byte of the sealed response body (whole or stream) of inference requests.
    FlipResponse,
    /// Send each sealed inference request to the runtime twice, answering with the second.
    Replay,
}

struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (head, body) of one HTTP/1.1 request read from `s`.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

fn with_content_length(head: &str, len: usize) -> String {
    let mut out: Vec<String> = head
        .trim_end()
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("content-length:") && !l.starts_with("connection:")
        })
        .map(str::to_owned)
        .collect();
    out.push(format!("content-length: {len}"));
    out.push("connection: close".into());
    out.join("\r\n") + "\r\n\r\n"
}

fn relay(upstream: SocketAddr, tamper: Tamper) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut client) = conn else { continue };
            std::thread::spawn(move || {
                let Some((head, mut body)) = read_request(&mut client) else { return };
                let inference = head.contains(" /v1/chat/") || head.contains(" /v1/completions");
                if tamper == Tamper::FlipRequest
                    && inference
                    && let Some(b) = body.last_mut()
                {
                    *b ^= 0x01;
                }
                if tamper == Tamper::Replay && inference {
                    // The first answer is read and dropped; the client sees the replay's.
                    let Ok(mut first) = TcpStream::connect(upstream) else { return };
                    let _ = first.write_all(with_content_length(&head, body.len()).as_bytes());
                    let _ = first.write_all(&body);
                    let _ = first.read_to_end(&mut Vec::new());
                }
                let Ok(mut up) = TcpStream::connect(upstream) else { return };
                let _ = up.write_all(with_content_length(&head, body.len()).as_bytes());
                let _ = up.write_all(&body);
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp);
                let split = find(&resp, b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
                let (rhead, rbody) = resp.split_at(split);
                let (rhead, mut rbody) = (String::from_utf8_lossy(rhead).into_owned(), rbody.to_vec());
                if tamper == Tamper::SwapKey
                    && head.starts_with("GET /v1/attestation")
                    && let Ok(mut ev) = Evidence::from_bytes(&rbody)
                {
                    let mallory = RuntimeKeyPair::generate().unwrap();
                    for e in &mut ev.event_log.events {
                        if e.kind == EventKind::PublicKey {
                            *e = mallory.public_key_event();
                        }
                    }
                    rbody = ev.to_bytes();
                    let _ = client.write_all(with_content_length(&rhead, rbody.len()).as_bytes());
                    let _ = client.write_all(&rbody);
                    return;
                }
                if tamper == Tamper::FlipResponse && inference && !rbody.is_empty() {
                    if let Some(i) = find(&rbody, b"data: ") {
                        // A base64 character of the first sealed event, replaced by another one.
                        let j = i + 6 + 12;
                        rbody[j] = if rbody[j] == b'A' { b'B' } else { b'A' };
                    } else {
                        let j = rbody.len() / 2;
                        rbody[j] ^= 0x01;
                    }
                }
                let _ = client.write_all(rhead.as_bytes());
                let _ = client.write_all(&rbody);
            });
        }
    });
    Relay { addr, stop }
}

// ---------------------------------------------------------------------------------------

#[test]
fn openai_client_through_the_verifying_proxy_and_attacks_on_the_channel() {
    let out = out_dir().unwrap();
    let work = scratch("channel").unwrap();

    // Seal the tiny Llama; the key file stays here.
    let bundle = work.join("tiny-llama.sealed");
    let key = work.join("tiny-llama.key");
    seal::run(&SealArgs {
        model: owner::tiny_llama().unwrap(),
        out: bundle.clone(),
        key_out: key.clone(),
        name: Some("tiny-llama".into()),
        chunk_size: 1 << 20,
        padme: false,
        json: false,
    })
    .unwrap();

    let mut cfg = VmConfig::for_image(&out, &work).unwrap();
    cfg.disk = Some(bundle.clone());
    let sim_root = sim::root(&work.join("sim")).unwrap();
    let root_hex = sim_root.public_key().to_hex();
    let measurement = sim::measurement(&cfg).unwrap();
    let policy = work.join("policy.toml");
    std::fs::write(&policy, policy_text(&root_hex, &measurement)).unwrap();
    let mut other = measurement;
    other[0] ^= 0xff;
    let wrong_policy = work.join("wrong-measurement.toml");
    std::fs::write(&wrong_policy, policy_text(&root_hex, &other)).unwrap();

    let mut vm = sim::boot(cfg, sim_root, |_| {}).unwrap();
    vm.wait_for("READY", BOOT).unwrap_or_else(|e| panic!("{e:#}\n{}", vm.serial()));
    let url = vm.url();
    let verifier = PolicyVerifier::new(Policy::load(&policy).unwrap());
    release::run(
        &ReleaseArgs {
            url: url.clone(),
            policy: policy.clone(),
            key,
            bundle: Some(bundle),
            timeout_s: 600,
            json: false,
            inputs: Default::default(),
        },
        &verifier,
    )
    .unwrap_or_else(|e| panic!("key release: {e:#}\n{}", vm.serial()));
    let upstream: SocketAddr = url.trim_start_matches("http://").parse().unwrap();

    // The runtime refuses an unencrypted inference request; health stays plaintext.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(r#"{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}]}"#)
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 403, "{body}");
    assert!(body.contains("channel_required") && body.contains("encrypted"), "{body}");
    assert_eq!(agent.get(format!("{url}/v1/health")).call().unwrap().status().as_u16(), 200);

    // (a) The openai client through the proxy; receipts saved and verified afterwards.
    let receipts = work.join("receipts");
    let p = start_proxy(&proxy_args(&url, &policy, Some(receipts.clone())));
    let (ok, text) = client("ok", &format!("http://{}/v1", p.addr), &[]);
    assert!(ok, "openai client through the proxy:\n{text}\n{}", vm.serial());
    let files = proxy::receipt_files(&receipts).unwrap();
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(f.with_extension("json")).unwrap()).unwrap();
        let args = VerifyReceiptArgs {
            receipt: f.clone(),
            evidence: receipts.join(meta["evidence"].as_str().unwrap()),
            nonce: meta["nonce"].as_str().unwrap().to_owned(),
            policy: policy.clone(),
            request: Some(f.with_extension("request")),
            response: Some(f.with_extension("response")),
            json: true,
            inputs: Default::default(),
        };
        assert!(matches!(verify_receipt::run(&args, &verifier).unwrap(), Outcome::Ok), "{}", f.display());
        assert_eq!(meta["model"], "tiny-llama");
        // The same receipt does not vouch for another response, nor under another policy.
        let forged = work.join("forged.response");
        let mut resp = std::fs::read(f.with_extension("response")).unwrap();
        resp.push(b' ');
        std::fs::write(&forged, resp).unwrap();
        let bad = VerifyReceiptArgs { response: Some(forged), ..args.clone() };
        assert!(matches!(verify_receipt::run(&bad, &verifier).unwrap(), Outcome::Failed));
        let wrong = PolicyVerifier::new(Policy::load(&wrong_policy).unwrap());
        assert!(matches!(verify_receipt::run(&args, &wrong).unwrap(), Outcome::Failed));
    }
    drop(p);

    // (b) A policy without this measurement: nothing is forwarded, and the error says why.
    let p = start_proxy(&proxy_args(&url, &wrong_policy, None));
    let (_, text) = client("error", &format!("http://{}/v1", p.addr), &[]);
    let e = last_json(&text);
    assert_eq!(e["status"], 403, "{text}");
    assert_eq!(e["code"], "attestation_failed", "{text}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("sim.measurement") && msg.contains(&hex::encode(measurement)), "{msg}");
    drop(p);

    // (c) A relay swapping the runtime's key in its evidence: the binding check catches it.
    let mitm = relay(upstream, Tamper::SwapKey);
    let p = start_proxy(&proxy_args(&format!("http://{}", mitm.addr), &policy, None));
    let (_, text) = client("error", &format!("http://{}/v1", p.addr), &[]);
    let e = last_json(&text);
    assert_eq!((e["status"].as_u64(), e["code"].as_str()), (Some(403), Some("attestation_failed")), "{text}");
    assert!(e["message"].as_str().unwrap_or_default().contains("report_data"), "{text}");
    drop((p, mitm));

    // (d) Flipped bytes: a sealed request does not open in the runtime; a sealed response or
    // stream does not open in the proxy.
    let mitm = relay(upstream, Tamper::FlipRequest);
    let p = start_proxy(&proxy_args(&format!("http://{}", mitm.addr), &policy, None));
    let (_, text) = client("error", &format!("http://{}/v1", p.addr), &[]);
    let e = last_json(&text);
    assert_eq!((e["status"].as_u64(), e["code"].as_str()), (Some(400), Some("channel_decrypt_failed")), "{text}");
    drop((p, mitm));

    // (e) A captured sealed request sent again: the runtime answers it once and refuses the
    // replay (409, its request id named).
    let mitm = relay(upstream, Tamper::Replay);
    let p = start_proxy(&proxy_args(&format!("http://{}", mitm.addr), &policy, None));
    let (_, text) = client("error", &format!("http://{}/v1", p.addr), &[]);
    let e = last_json(&text);
    assert_eq!((e["status"].as_u64(), e["code"].as_str()), (Some(409), Some("channel_replayed")), "{text}");
    drop((p, mitm));

    let mitm = relay(upstream, Tamper::FlipResponse);
    let p = start_proxy(&proxy_args(&format!("http://{}", mitm.addr), &policy, None));
    let base = format!("http://{}/v1", p.addr);
    let (_, text) = client("error", &base, &[]);
    let e = last_json(&text);
    assert_eq!((e["status"].as_u64(), e["code"].as_str()), (Some(502), Some("channel_integrity")), "{text}");
    let (_, text) = client("stream-error", &base, &["tiny-llama"]);
    let e = last_json(&text);
    assert!(e["message"].as_str().unwrap_or_default().contains("failed authentication"), "{text}");
    assert_eq!(e["chunks_before"], 0, "no plaintext from a tampered record: {text}");
    drop((p, mitm));

    assert!(!vm.serial().contains("panicked"), "{}", vm.serial());
}
