//! Owner CLI end to end against an in-process fake runtime: `attest seal`, push-mode
//! `attest release`, pull-mode `attest serve-keys`, and their refusals.
//!
//! The verifier here is a test double that checks only the event-log binding (a simulated
//! report whose bytes are REPORT_DATA); hardware verification is tested with the verifiers.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrysalis_attest::release::ReleaseArgs;
use chrysalis_attest::seal::SealArgs;
use chrysalis_attest::serve_keys::{KeyService, serve};
use chrysalis_attest::{self as cli, Refused};
use chrysalis_proto::channel::receipt::ReceiptSigner;
use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, PlatformEvidence};
use chrysalis_proto::keyrelease::{KeyRelease, NonceBook, RuntimeKeyPair, renewal_nonce};
use chrysalis_proto::seal::{KeyFile, UnsealedFiles, read_header, unseal};
use chrysalis_verify::attested::{AttestError, Challenge, EvidenceVerifier, VerifiedRuntime};

/// Test double: trusts a simulated report whose bytes are the REPORT_DATA.
struct BindingOnly;

impl EvidenceVerifier for BindingOnly {
    fn verify(&self, ev: &Evidence, _: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
        match &ev.platform {
            PlatformEvidence::Simulated { report } => Ok(VerifiedRuntime {
                report_data: report.as_slice().try_into().map_err(|_| AttestError::Refused("report is not 64 bytes".into()))?,
                steps: vec![],
                warnings: vec![],
            }),
            _ => Err(AttestError::Refused("test verifier accepts only simulated evidence".into())),
        }
    }
}

fn write_model(dir: &Path) -> PathBuf {
    let m = dir.join("tiny-llama");
    std::fs::create_dir(&m).expect("mkdir");
    std::fs::write(m.join("config.json"), br#"{"hidden_size":8}"#).expect("write");
    std::fs::write(m.join("tokenizer.json"), br#"{"model":{"type":"BPE"}}"#).expect("write");
    std::fs::write(m.join("model.safetensors"), vec![3u8; 3_000_000]).expect("write");
    std::fs::write(m.join("notes.txt"), b"ignored").expect("write");
    m
}

fn seal_model(dir: &Path) -> (PathBuf, PathBuf) {
    let model = write_model(dir);
    let args = SealArgs {
        model,
        out: dir.join("tiny.sealed"),
        key_out: dir.join("tiny.key"),
        name: None,
        chunk_size: 1 << 20,
        padme: false,
        json: false,
    };
    let s = cli::seal::run(&args).expect("seals");
    assert_eq!(s.model_name, "tiny-llama");
    let names: Vec<&str> = s.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json"]);
    (args.out, args.key_out)
}

/// The runtime side as the guest implements it: evidence for nonces, one key, then unseal.
struct FakeRuntime {
    keys: RuntimeKeyPair,
    log: EventLog,
    book: Mutex<NonceBook>,
    bundle: Vec<u8>,
    unsealed: Mutex<Option<UnsealedFiles>>,
}

impl FakeRuntime {
    fn new(bundle: Vec<u8>) -> Self {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let header = read_header(&bundle).expect("header");
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"/init"));
        log.extend(Event::digest_of(EventKind::BundleHeader, &header.raw));
        log.extend(keys.public_key_event());
        log.extend(ReceiptSigner::from_seed(&[3; 32]).expect("seed").public_key_event());
        FakeRuntime { keys, log, book: Mutex::new(NonceBook::new(Duration::from_secs(60))), bundle, unsealed: Mutex::new(None) }
    }

    fn evidence(&self, nonce: &[u8]) -> Evidence {
        self.book.lock().expect("lock").issue(nonce, &self.log, Instant::now()).expect("issues");
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: nonce.to_vec(),
            platform: PlatformEvidence::Simulated { report: self.log.report_data(nonce).to_vec() },
            event_log: self.log.clone(),
            gpus: vec![],
        }
    }

    fn take_key(&self, body: &[u8]) -> Result<usize, String> {
        let msg = KeyRelease::from_bytes(body).map_err(|e| e.to_string())?;
        let mut book = self.book.lock().expect("lock");
        let key = book.accept(&msg, &self.keys, Instant::now()).map_err(|e| e.to_string())?;
        let files = unseal(&self.bundle, &key).map_err(|e| e.to_string())?;
        book.mark_unsealed();
        let n = files.files.len();
        *self.unsealed.lock().expect("lock") = Some(files);
        Ok(n)
    }
}

#[derive(serde::Deserialize)]
struct NonceQuery {
    nonce: String,
}

fn start_runtime(rt: &tokio::runtime::Runtime, fake: Arc<FakeRuntime>) -> SocketAddr {
    let app = axum::Router::new()
        .route(
            "/v1/attestation",
            get(|State(f): State<Arc<FakeRuntime>>, Query(q): Query<NonceQuery>| async move {
                match hex::decode(&q.nonce) {
                    Ok(n) => (StatusCode::OK, f.evidence(&n).to_bytes()),
                    Err(_) => (StatusCode::BAD_REQUEST, b"bad nonce".to_vec()),
                }
            }),
        )
        .route(
            "/v1/key",
            post(|State(f): State<Arc<FakeRuntime>>, body: Bytes| async move {
                match f.take_key(&body) {
                    Ok(n) => (StatusCode::OK, format!("unsealed {n} files")),
                    Err(e) => (StatusCode::CONFLICT, e),
                }
            }),
        )
        .with_state(fake);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, app).await });
    addr
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio")
}

#[test]
fn seal_writes_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, key) = seal_model(dir.path());
    let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let kf = KeyFile::parse(&std::fs::read_to_string(&key).expect("read")).expect("parses");
    let b = std::fs::read(&bundle).expect("read");
    assert_eq!(read_header(&b).expect("header").digest(), kf.header_digest);
    let u = unseal(&b, &kf.key).expect("unseals");
    assert_eq!(u.get("model.safetensors").map(<[u8]>::len), Some(3_000_000));

    let again = SealArgs {
        model: dir.path().join("tiny-llama"),
        out: bundle.clone(),
        key_out: dir.path().join("other.key"),
        name: None,
        chunk_size: 1 << 20,
        padme: false,
        json: true,
    };
    let e = cli::seal::run(&again).expect_err("refuses");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(cli::exit_code(&e), cli::EXIT_USAGE);
    assert!(!dir.path().join("other.key").exists());

    // A single GGUF file.
    let gguf = dir.path().join("smol.Q4_1.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00weights").expect("write");
    let a = SealArgs {
        model: gguf,
        out: dir.path().join("smol.sealed"),
        key_out: dir.path().join("smol.key"),
        name: None,
        chunk_size: 4096,
        padme: false,
        json: true,
    };
    let s = cli::seal::run(&a).expect("seals");
    assert_eq!(s.model_name, "smol.Q4_1");
    assert_eq!(s.files.len(), 1);
}

#[test]
fn release_push_mode_end_to_end_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle_path, key_path) = seal_model(dir.path());
    let bundle = std::fs::read(&bundle_path).expect("read");
    let rt = runtime();
    let fake = Arc::new(FakeRuntime::new(bundle.clone()));
    let addr = start_runtime(&rt, fake.clone());
    std::fs::write(dir.path().join("policy.toml"), "").expect("write");
    let args = ReleaseArgs {
        url: format!("http://{addr}"),
        policy: dir.path().join("policy.toml"),
        key: key_path.clone(),
        bundle: Some(bundle_path.clone()),
        timeout_s: 10,
        json: false,
        inputs: Default::default(),
    };
    let out = cli::release::run(&args, &BindingOnly).expect("releases");
    assert_eq!(out.runtime_status, 200);
    assert_eq!(out.runtime_answer, "unsealed 3 files");
    assert!(out.steps.iter().any(|c| c.name == "bundle header"));
    let u = fake.unsealed.lock().expect("lock");
    assert_eq!(u.as_ref().and_then(|u| u.get("config.json")), Some(&br#"{"hidden_size":8}"#[..]));
    drop(u);

    // A second key after unsealing: the runtime refuses, the CLI exits 1 and says why.
    let e = cli::release::run(&args, &BindingOnly).expect_err("refused");
    assert!(e.to_string().contains("model already unsealed"), "{e}");
    assert_eq!(cli::exit_code(&e), cli::EXIT_REFUSED);

    // --bundle that is not the key's bundle: usage error before any network traffic.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let (other_bundle, other_key) = seal_model(other_dir.path());
    let wrong = ReleaseArgs { bundle: Some(other_bundle), ..args.clone() };
    let e = cli::release::run(&wrong, &BindingOnly).expect_err("refused");
    assert!(e.to_string().contains("is not the bundle"), "{e}");
    assert_eq!(cli::exit_code(&e), cli::EXIT_USAGE);

    // The runtime loaded another bundle than the one this key seals: refused, exit 1.
    let fresh = Arc::new(FakeRuntime::new(bundle));
    let addr2 = start_runtime(&rt, fresh.clone());
    let mismatch = ReleaseArgs { url: format!("http://{addr2}"), key: other_key, bundle: None, ..args.clone() };
    let e = cli::release::run(&mismatch, &BindingOnly).expect_err("refused");
    assert!(e.chain().any(|c| c.downcast_ref::<Refused>().is_some()));
    assert!(e.to_string().contains("runtime loaded bundle header"), "{e}");
    assert!(fresh.unsealed.lock().expect("lock").is_none());

    // Nobody listening: I/O error, exit 2.
    let dead = ReleaseArgs { url: "http://127.0.0.1:9".into(), ..args };
    let e = cli::release::run(&dead, &BindingOnly).expect_err("fails");
    assert_eq!(cli::exit_code(&e), cli::EXIT_USAGE);
}

fn post_bytes(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut r = agent.post(url).send(body).expect("post");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_vec().expect("body"))
}

#[test]
fn serve_keys_pull_mode_end_to_end_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle_path, key_path) = seal_model(dir.path());
    let bundle = std::fs::read(&bundle_path).expect("read");
    let key = KeyFile::parse(&std::fs::read_to_string(&key_path).expect("read")).expect("parses");
    let rt = runtime();
    let svc = Arc::new(KeyService::new(Box::new(BindingOnly), key, Duration::from_secs(60)));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(serve(listener, svc));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let challenge = |agent: &ureq::Agent| -> Vec<u8> {
        let hexn = agent.get(format!("{base}/v1/challenge")).call().expect("get").body_mut().read_to_string().expect("body");
        hex::decode(hexn.trim()).expect("hex")
    };

    // The runtime boots, asks for a challenge, proves itself, gets the key, unseals.
    let fake = FakeRuntime::new(bundle.clone());
    let nonce = challenge(&agent);
    assert_eq!(nonce.len(), 32);
    let ev = fake.evidence(&nonce).to_bytes();
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(fake.take_key(&body), Ok(3));

    // Same evidence again: the challenge was used.
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev);
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).starts_with("refused: nonce"));

    // A nonce the service never issued.
    let ev = FakeRuntime::new(bundle.clone()).evidence(&[9; 32]).to_bytes();
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev);
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("never issued"));

    // Garbage.
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), b"\x01\x02");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("evidence is malformed"));

    // A runtime that loaded another bundle.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let (other_bundle, _) = seal_model(other_dir.path());
    let stranger = FakeRuntime::new(std::fs::read(other_bundle).expect("read"));
    let ev = stranger.evidence(&challenge(&agent)).to_bytes();
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev);
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("runtime loaded bundle header"));

    // Evidence whose log is not bound to the report.
    let mut ev = fake.evidence(&challenge(&agent));
    ev.event_log.extend(Event::digest_of(EventKind::Config, b"late"));
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev.to_bytes());
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("not bound"));
}

/// A runtime on a lease renews with a challenge bound to its own random `bind`; the owner
/// revokes it by listing its runtime key (or `all`; measurements: the unit tests) in the file
/// given to `--revoked`, which is read at every release.
#[test]
fn serve_keys_renewal_challenges_and_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle_path, key_path) = seal_model(dir.path());
    let bundle = std::fs::read(&bundle_path).expect("read");
    let key = KeyFile::parse(&std::fs::read_to_string(&key_path).expect("read")).expect("parses");
    let revoked = dir.path().join("revoked");
    std::fs::write(&revoked, "# nothing revoked yet\n").expect("write");
    let rt = runtime();
    let svc = Arc::new(KeyService::new(Box::new(BindingOnly), key, Duration::from_secs(60)).with_revocations(revoked.clone()));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(serve(listener, svc));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let fake = FakeRuntime::new(bundle);
    let renew = |agent: &ureq::Agent| -> (u16, String) {
        let bind = [7u8; 32];
        let text = agent
            .get(format!("{base}/v1/challenge?bind={}", hex::encode(bind)))
            .call()
            .expect("get")
            .body_mut()
            .read_to_string()
            .expect("body");
        let (nonce, salt) = text.trim().split_once(' ').expect("nonce and salt");
        let salt: [u8; 32] = hex::decode(salt).expect("hex").try_into().expect("32 bytes");
        let nonce = hex::decode(nonce).expect("hex");
        assert_eq!(nonce, renewal_nonce(&salt, &bind), "the challenge is bound to the runtime's bind");
        let (status, body) = post_bytes(agent, &format!("{base}/v1/release"), &fake.evidence(&nonce).to_bytes());
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = renew(&agent);
    assert_eq!(status, 200, "{body}");

    // A malformed bind is refused.
    let mut r = agent.get(format!("{base}/v1/challenge?bind=abcd")).call().expect("get");
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.body_mut().read_to_string().expect("body").contains("bind must be 32 bytes"));

    // The owner lists this runtime's key: the next renewal is refused, naming it.
    let runtime_key = hex::encode(fake.keys.public_key());
    std::fs::write(&revoked, format!("key {runtime_key}  # node-3\n")).expect("write");
    let (status, body) = renew(&agent);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("revoked: runtime key {runtime_key} is revoked in {}", revoked.display())), "{body}");

    // A malformed list refuses everything (fail closed), naming the line.
    std::fs::write(&revoked, "key nothex\n").expect("write");
    let (status, body) = renew(&agent);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("line 1: not hex") && body.contains("refusing every release"), "{body}");
    std::fs::write(&revoked, "all\n").expect("write");
    let (status, body) = renew(&agent);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("every release is revoked"), "{body}");
}

#[test]
fn serve_keys_stale_challenge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle_path, key_path) = seal_model(dir.path());
    let key = KeyFile::parse(&std::fs::read_to_string(&key_path).expect("read")).expect("parses");
    let rt = runtime();
    let svc = Arc::new(KeyService::new(Box::new(BindingOnly), key, Duration::from_millis(1)));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(serve(listener, svc));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let hexn = agent.get(format!("{base}/v1/challenge")).call().expect("get").body_mut().read_to_string().expect("body");
    std::thread::sleep(Duration::from_millis(1100));
    let fake = FakeRuntime::new(std::fs::read(bundle_path).expect("read"));
    let ev = fake.evidence(&hex::decode(hexn.trim()).expect("hex")).to_bytes();
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev);
    assert_eq!(status, 410, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("stale"));
}

/// Answers from outside the encrypted channel are plaintext that anyone on the path can
/// forge. The proxy labels the errors it relays, and a forged "key unknown" (421) cannot make
/// it attest the runtime again on every request: after one attestation it re-attests on that
/// answer at most once every 10 s and says so.
#[test]
fn proxy_labels_plaintext_errors_and_rate_limits_forged_key_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, _) = seal_model(dir.path());
    let fake = Arc::new(FakeRuntime::new(std::fs::read(&bundle).expect("read")));
    let attestations = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attestations.clone();
    let app = axum::Router::new()
        .route(
            "/v1/attestation",
            get(move |State(f): State<Arc<FakeRuntime>>, Query(q): Query<NonceQuery>| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { f.evidence(&hex::decode(&q.nonce).expect("hex")).to_bytes() }
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|| async {
                let body = r#"{"error":{"message":"forged","type":"invalid_request_error","code":"channel_key_unknown"}}"#;
                (StatusCode::MISDIRECTED_REQUEST, [("content-type", "application/json")], body)
            }),
        )
        .route(
            "/v1/completions",
            post(|| async {
                let body = r#"{"error":{"message":"sealed request does not open","type":"invalid_request_error","code":"channel_decrypt_failed"}}"#;
                (StatusCode::BAD_REQUEST, [("content-type", "application/json")], body)
            }),
        )
        .with_state(fake);
    let rt = runtime();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let upstream = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, app).await });
    let args = cli::proxy::ProxyArgs {
        url: format!("http://{upstream}"),
        timeout_s: 30,
        ..cli::proxy::ProxyArgs::embedded(&dir.path().join("unused-policy.toml"))
    };
    let proxy = cli::proxy::start(&args, Box::new(BindingOnly)).expect("proxy");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let call = |path: &str| {
        let mut r = agent
            .post(format!("http://{}{path}", proxy.addr))
            .header("content-type", "application/json")
            .send(&br#"{"model":"m","messages":[]}"#[..])
            .expect("proxy answers");
        let unauthenticated = r.headers().get(cli::proxy::HEADER_UNAUTHENTICATED).is_some();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default(), unauthenticated)
    };
    for _ in 0..3 {
        let (status, body, _) = call("/v1/chat/completions");
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("at most once every 10 s"), "{body}");
    }
    assert_eq!(attestations.load(std::sync::atomic::Ordering::SeqCst), 1, "a forged 421 forced re-attestation");
    let (status, body, unauthenticated) = call("/v1/completions");
    assert_eq!(status, 400, "{body}");
    assert!(unauthenticated && body.contains("UNAUTHENTICATED"), "{body}");
}

/// `--release-log`: every key granted by `attest release` and `attest serve-keys` is logged
/// (a key-release entry, before the key is sent); `require_transparency` refuses a runtime
/// whose measurement is not in the log.
#[test]
fn key_releases_are_logged_and_transparency_is_required() {
    use chrysalis_attest::transparency::{GrantHook, ReleaseLogArgs};
    use chrysalis_tlog::keys::KeyKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle_path, key_path) = seal_model(dir.path());
    let bundle = std::fs::read(&bundle_path).expect("read");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "allow_debug = false\n").expect("write");
    let (skey, vkey) = chrysalis_tlog::keygen("example.com/key-releases", KeyKind::Log).expect("keygen");
    let log_key = dir.path().join("log.key");
    std::fs::write(&log_key, &skey).expect("write");
    let log_dir = dir.path().join("release-log");
    let release_log = ReleaseLogArgs { release_log: Some(log_dir.clone()), release_log_key: Some(log_key) };

    // Push mode.
    let rt = runtime();
    let fake = Arc::new(FakeRuntime::new(bundle.clone()));
    let addr = start_runtime(&rt, fake.clone());
    let args = ReleaseArgs {
        url: format!("http://{addr}"),
        policy: policy.clone(),
        key: key_path.clone(),
        bundle: None,
        timeout_s: 10,
        json: true,
        inputs: Default::default(),
    };
    let out = cli::release::run_with_log(&args, &BindingOnly, &release_log).expect("releases");
    let logged = out.steps.iter().find(|s| s.name == "release logged").expect("logged step");
    assert!(logged.detail.starts_with("key-release entry 0 in "), "{}", logged.detail);

    // Pull mode, through the same hook.
    let key = KeyFile::parse(&std::fs::read_to_string(&key_path).expect("read")).expect("parses");
    let header_digest = key.header_digest;
    let hook = GrantHook::new(&policy, &release_log).expect("hook");
    let svc = Arc::new(KeyService::new(Box::new(BindingOnly), key, Duration::from_secs(60)).with_grant_hook(hook));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(serve(listener, svc));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let hexn = agent.get(format!("{base}/v1/challenge")).call().expect("get").body_mut().read_to_string().expect("body");
    let pulled = FakeRuntime::new(bundle.clone());
    let ev = pulled.evidence(&hex::decode(hexn.trim()).expect("hex")).to_bytes();
    let (status, body) = post_bytes(&agent, &format!("{base}/v1/release"), &ev);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // The log holds both releases: runtime keys, bundle header, policy digest.
    let lp = chrysalis_tlog::LogPolicy { log_key: vkey.clone(), witnesses: vec![], min_witnesses: 0 };
    let (cp, entries) = chrysalis_tlog::audit(&log_dir, &lp).expect("audit");
    assert_eq!(cp.size, 2);
    let policy_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&policy).expect("read")))
    };
    for (e, rt_keys) in entries.iter().zip([&fake.keys, &pulled.keys]) {
        let Ok(chrysalis_tlog::Entry::KeyRelease(k)) = &e.entry else { panic!("not a key release: {:?}", e.entry) };
        assert_eq!(k.runtime_key, hex::encode(rt_keys.public_key()));
        assert_eq!(k.bundle_digest, hex::encode(header_digest));
        assert_eq!(k.policy_sha256, policy_sha);
    }

    // require_transparency with a log that has no image release for this runtime: refused
    // before the key is sent, and nothing is logged.
    let image_log = dir.path().join("image-log");
    std::fs::create_dir_all(&image_log).expect("mkdir");
    std::fs::write(
        &policy,
        format!(
            "require_transparency = true\n[transparency]\nlog = \"{}\"\nlog_key = \"{vkey}\"\nstate = \"state.json\"\n",
            log_dir.display()
        ),
    )
    .expect("write");
    let fresh = Arc::new(FakeRuntime::new(bundle));
    let addr = start_runtime(&rt, fresh.clone());
    let e = cli::release::run_with_log(&ReleaseArgs { url: format!("http://{addr}"), ..args }, &BindingOnly, &release_log)
        .expect_err("refused");
    assert_eq!(cli::exit_code(&e), cli::EXIT_REFUSED, "{e:#}");
    assert!(format!("{e:#}").contains("transparency: the evidence has no launch measurement"), "{e:#}");
    assert!(fresh.unsealed.lock().expect("lock").is_none());
    assert_eq!(chrysalis_tlog::audit(&log_dir, &lp).expect("audit").0.size, 2);
}
