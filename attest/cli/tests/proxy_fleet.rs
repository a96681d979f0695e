//! `attest proxy` over many upstreams, against in-process fake runtimes that speak the
//! channel for real: they serve simulated evidence (REPORT_DATA and a launch measurement),
//! open sealed requests with `open_request` and answer sealed, with signed receipts — so the
//! proxy's verification, sealing, opening and receipt checks all run as they do against a VM.
//!
//! Shown here: prefix affinity and spread, the `/v1/models` union, receipts naming each
//! node; a node killed mid-run (traffic moves, nothing fails), one that fails before its
//! stream's first record (retried elsewhere) and one cut mid-stream (that client gets an
//! error naming it); a node with another measurement kept out and named in `/status`; a
//! restarted node (new key) re-attested before it gets traffic again; the upstreams file
//! re-read.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrysalis_attest::proxy::{self, HEADER_NODE, ProxyArgs, RunningProxy};
use chrysalis_proto::channel::crypto::{ResponseMode, Target, open_request};
use chrysalis_proto::channel::frame::{push_length_prefixed, sse_event};
use chrysalis_proto::channel::receipt::{RECEIPT_VERSION, Receipt, ReceiptBody, ReceiptSigner, request_hash, response_hash};
use chrysalis_proto::channel::{self as ch};
use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, PlatformEvidence};
use chrysalis_proto::keyrelease::RuntimeKeyPair;
use chrysalis_proto::routes;
use chrysalis_verify::attested::{AttestError, Challenge, EvidenceVerifier, VerifiedRuntime};
use futures_util::StreamExt as _;

const GOOD: [u8; 48] = [0x11; 48];
const BAD: [u8; 48] = [0xbd; 48];

/// Test verifier: a simulated report is REPORT_DATA (64 bytes), then zeros, then the launch
/// measurement at 0x90..0xC0 (where SNP has it); only [`GOOD`] passes.
struct Measured;

impl EvidenceVerifier for Measured {
    fn verify(&self, ev: &Evidence, _: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
        let PlatformEvidence::Simulated { report } = &ev.platform else {
            return Err(AttestError::Refused("test verifier accepts only simulated evidence".into()));
        };
        let m = report.get(0x90..0xC0).unwrap_or_default();
        if m != GOOD {
            // Not naming the measurement: the proxy must name it itself.
            return Err(AttestError::Refused("sim.measurement is not in the policy".into()));
        }
        Ok(VerifiedRuntime {
            report_data: report[..64].try_into().map_err(|_| AttestError::Refused("short report".into()))?,
            steps: vec![],
            warnings: vec![],
        })
    }
}

/// How a fake runtime answers the next stream that takes `FAULT`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Drop the connection before the first record.
    BeforeFirst,
    /// Drop the connection after two records.
    MidStream,
}

/// One fake runtime: its own keys and measurement, the models it lists.
struct Fake {
    keys: RuntimeKeyPair,
    signer: ReceiptSigner,
    log: EventLog,
    measurement: [u8; 48],
    models: Vec<&'static str>,
    answered: AtomicUsize,
    /// Armed faults, shared by the fleet: the first stream to take one suffers it.
    fault: Arc<std::sync::Mutex<Option<Fault>>>,
}

impl Fake {
    fn new(measurement: [u8; 48], models: &[&'static str], fault: Arc<std::sync::Mutex<Option<Fault>>>) -> Arc<Self> {
        let keys = RuntimeKeyPair::generate().expect("rng");
        let signer = ReceiptSigner::generate().expect("rng");
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"/init"));
        log.extend(keys.public_key_event());
        log.extend(signer.public_key_event());
        Arc::new(Fake { keys, signer, log, measurement, models: models.to_vec(), answered: AtomicUsize::new(0), fault })
    }

    fn evidence(&self, nonce: &[u8]) -> Evidence {
        let mut report = vec![0u8; 0xC0];
        report[..64].copy_from_slice(&self.log.report_data(nonce));
        report[0x90..0xC0].copy_from_slice(&self.measurement);
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: nonce.to_vec(),
            platform: PlatformEvidence::Simulated { report },
            event_log: self.log.clone(),
            gpus: vec![],
        }
    }

    fn key_hex(&self) -> String {
        hex::encode(self.keys.public_key())
    }

    /// The runtime's side of one sealed request.
    async fn answer(self: Arc<Self>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if header(ch::HEADER_LOG_DIGEST) != hex::encode(self.log.digest()) {
            let e = serde_json::json!({"error": {"message": "unknown key", "type": "invalid_request_error",
                "code": ch::CODE_KEY_UNKNOWN}});
            return (StatusCode::MISDIRECTED_REQUEST, axum::Json(e)).into_response();
        }
        let enc: [u8; 32] = hex::decode(header(ch::HEADER_ENC)).ok().and_then(|e| e.try_into().ok()).unwrap_or([0; 32]);
        let target = Target::new(parts.method.as_str(), parts.uri.path_and_query().map_or("/", |q| q.as_str()));
        let Ok((opened, sealer)) = open_request(&self.keys, &self.log.digest(), &target, &enc, &body) else {
            return (StatusCode::BAD_REQUEST, "does not open").into_response();
        };
        self.answered.fetch_add(1, Ordering::SeqCst);
        let request: serde_json::Value = serde_json::from_slice(&opened.body).unwrap_or_default();
        let stream = request["stream"].as_bool().unwrap_or(false);
        let frames: Vec<Vec<u8>> = if parts.uri.path() == routes::MODELS {
            let data: Vec<_> = self.models.iter().map(|m| serde_json::json!({"id": m, "object": "model"})).collect();
            vec![serde_json::json!({"object": "list", "data": data}).to_string().into_bytes()]
        } else if stream {
            (0..3)
                .map(|i| format!("data: {}\n\n", serde_json::json!({"i": i, "key": self.key_hex()})).into_bytes())
                .chain([b"data: [DONE]\n\n".to_vec()])
                .collect()
        } else {
            vec![serde_json::json!({"key": self.key_hex()}).to_string().into_bytes()]
        };
        let receipt = self.signer.sign(ReceiptBody {
            version: RECEIPT_VERSION,
            target: target.line(),
            request_id: opened.meta.id,
            request_sha384: request_hash(&opened.body),
            status: 200,
            response_sha384: response_hash(&frames.concat()),
            model: self.models.first().copied().unwrap_or("m").into(),
            bundle_header_sha384: None,
            event_log_digest: self.log.digest(),
            launch_measurement: self.measurement.to_vec(),
            runtime_time_unix_s: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        });
        let mode = if stream { ResponseMode::Stream } else { ResponseMode::Whole };
        let mut sealer = sealer.response(200, mode);
        let mut records: Vec<Vec<u8>> = frames.iter().map(|f| sealer.seal(f).expect("seal")).collect();
        records.push(sealer.seal_final(&receipt.to_bytes()).expect("seal"));
        if !stream {
            let mut out = Vec::new();
            for r in &records {
                push_length_prefixed(&mut out, r).expect("frame");
            }
            return ([(ch::HEADER_CHANNEL, ch::CHANNEL_VERSION), ("content-type", routes::SEALED_RESPONSE_MEDIA_TYPE)], out)
                .into_response();
        }
        let fault = self.fault.lock().expect("lock").take();
        let keep = match fault {
            None => records.len(),
            Some(Fault::BeforeFirst) => 0,
            Some(Fault::MidStream) => 2,
        };
        let items: Vec<Result<Bytes, std::io::Error>> =
            records.iter().take(keep).map(|r| Ok(Bytes::from(sse_event(r).into_bytes()))).collect();
        // The cut comes a moment after the records it keeps, so that they are on the wire.
        let cut = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err(std::io::Error::other("runtime died"))
        })
        .take(usize::from(fault.is_some()));
        let body = Body::from_stream(futures_util::stream::iter(items).chain(cut));
        ([(ch::HEADER_CHANNEL, ch::CHANNEL_VERSION), ("content-type", "text/event-stream")], body).into_response()
    }
}

#[derive(serde::Deserialize)]
struct NonceQuery {
    nonce: String,
}

/// A fake runtime listening on a port; [`Up::kill`] closes the port.
struct Up {
    addr: SocketAddr,
    url: String,
    fake: Arc<Fake>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn serve(rt: &tokio::runtime::Runtime, fake: Arc<Fake>, at: Option<SocketAddr>) -> Up {
    let app = axum::Router::new()
        .route(
            routes::ATTESTATION,
            axum::routing::get(|State(f): State<Arc<Fake>>, Query(q): Query<NonceQuery>| async move {
                f.evidence(&hex::decode(&q.nonce).expect("hex")).to_bytes()
            }),
        )
        .fallback(|State(f): State<Arc<Fake>>, req: Request| f.answer(req))
        .with_state(fake.clone());
    let listener = rt.block_on(async {
        let at = at.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
        // The port of a killed node may take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::TcpListener::bind(at).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {at}: {e}"),
            }
        }
    });
    let addr = listener.local_addr().expect("addr");
    let task = rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Up { addr, url: format!("http://{addr}"), fake, task: Some(task) }
}

impl Up {
    /// Stop listening (new connections are refused).
    fn kill(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = rt.block_on(t);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio")
}

fn start_proxy(upstreams: &Path, receipts: Option<&Path>) -> RunningProxy {
    let args = ProxyArgs {
        upstreams: Some(upstreams.to_owned()),
        receipts: receipts.map(Path::to_owned),
        timeout_s: 30,
        ..ProxyArgs::embedded(&upstreams.with_file_name("policy.toml"))
    };
    proxy::start(&args, Box::new(Measured)).expect("proxy starts")
}

fn write_upstreams(path: &Path, ups: &[&Up]) {
    let text: String = ups.iter().map(|u| format!("{}\n", u.url)).collect();
    std::fs::write(path, format!("# test fleet\n{text}")).expect("write upstreams");
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// One answer through the proxy: status, the node that answered, the body, the receipt.
struct Answer {
    status: u16,
    node: String,
    body: String,
    receipt: Option<Receipt>,
}

fn call(proxy: &RunningProxy, method: &str, path: &str, body: Option<serde_json::Value>) -> Answer {
    let url = format!("http://{}{path}", proxy.addr);
    let a = agent();
    let mut r = match body {
        Some(b) => a.post(&url).header("content-type", "application/json").send(b.to_string().as_bytes()),
        None if method == "GET" => a.get(&url).call(),
        None => panic!("{method} without a body"),
    }
    .expect("the proxy answers");
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let node = header(HEADER_NODE);
    let receipt = Some(header(ch::HEADER_RECEIPT))
        .filter(|s| !s.is_empty())
        .map(|s| Receipt::from_text_or_bytes(s.as_bytes()).expect("receipt parses"));
    let status = r.status().as_u16();
    Answer { status, node, body: r.body_mut().read_to_string().unwrap_or_default(), receipt }
}

fn chat(proxy: &RunningProxy, system: &str, stream: bool) -> Answer {
    let body = serde_json::json!({"model": "m", "stream": stream,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]});
    call(proxy, "POST", "/v1/chat/completions", Some(body))
}

fn status(proxy: &RunningProxy) -> serde_json::Value {
    serde_json::from_str(&call(proxy, "GET", "/chrysalis/status", None).body).expect("status is JSON")
}

fn node_status(s: &serde_json::Value, url: &str) -> serde_json::Value {
    s["nodes"].as_array().and_then(|n| n.iter().find(|n| n["url"] == url)).cloned().unwrap_or_default()
}

/// Wait (up to 30 s) until `/chrysalis/status` satisfies `ok`.
fn wait_for(proxy: &RunningProxy, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(proxy);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn in_rotation(s: &serde_json::Value, url: &str, key: &str) -> bool {
    let n = node_status(s, url);
    n["state"] == "in_rotation" && n["public_key"] == key
}

fn no_fault() -> Arc<std::sync::Mutex<Option<Fault>>> {
    Arc::new(std::sync::Mutex::new(None))
}

/// Same system prompt, same node; distinct prompts reach every node; `/v1/models` is the
/// union; every answer names its node and carries that node's receipt, also saved with the
/// node named.
#[test]
fn affinity_spread_models_union_and_receipts_name_the_node() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = no_fault();
    let ups: Vec<Up> = [&["shared", "alpha"][..], &["shared", "beta"], &["shared"]]
        .into_iter()
        .map(|m| serve(&rt, Fake::new(GOOD, m, fault.clone()), None))
        .collect();
    let file = dir.path().join("upstreams");
    write_upstreams(&file, &ups.iter().collect::<Vec<_>>());
    let receipts = dir.path().join("receipts");
    let p = start_proxy(&file, Some(&receipts));
    wait_for(&p, "three nodes in rotation", |s| s["in_rotation"] == 3);

    let system = "You are a terse assistant. ".repeat(50);
    let first = chat(&p, &system, false);
    assert_eq!(first.status, 200, "{}", first.body);
    for _ in 0..5 {
        assert_eq!(chat(&p, &system, false).node, first.node, "the same system prompt went to another node");
    }
    let mut seen = BTreeSet::new();
    for i in 0..40 {
        let a = chat(&p, &format!("prompt number {i}"), i % 2 == 0);
        assert_eq!(a.status, 200, "{}", a.body);
        let up = ups.iter().find(|u| u.url == a.node).unwrap_or_else(|| panic!("unknown node {:?}", a.node));
        assert!(a.body.contains(&up.fake.key_hex()), "the body came from another node than named: {}", a.body);
        if let Some(r) = &a.receipt {
            assert_eq!(r.body.event_log_digest, up.fake.log.digest(), "the receipt names another node's state");
            assert_eq!(r.body.launch_measurement, GOOD);
        } else {
            assert!(a.body.contains(": chrysalis-receipt "), "a stream without its receipt: {}", a.body);
        }
        seen.insert(a.node);
    }
    assert_eq!(seen.len(), 3, "40 distinct prompts reached only {seen:?}");

    let models = call(&p, "GET", "/v1/models", None);
    assert_eq!(models.status, 200, "{}", models.body);
    let v: serde_json::Value = serde_json::from_str(&models.body).expect("JSON");
    let ids: Vec<&str> = v["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from(["shared", "alpha", "beta"]));
    assert_eq!(ids.len(), 3, "each model once: {ids:?}");
    assert_eq!(models.node.split(", ").count(), 3, "{}", models.node);

    let saved = proxy::receipt_files(&receipts).expect("receipts");
    assert!(saved.len() >= 46, "{} receipts saved", saved.len());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved[0].with_extension("json")).expect("meta")).expect("JSON");
    assert!(ups.iter().any(|u| meta["node"] == u.url.as_str()), "{meta}");
    let s = status(&p);
    for u in &ups {
        assert_eq!(node_status(&s, &u.url)["public_key"], u.fake.key_hex());
        assert_eq!(node_status(&s, &u.url)["launch_measurement"], hex::encode(GOOD));
    }
}

/// A node killed while clients are busy: no request fails (the ones sealed for it are sealed
/// again for another node), it is taken out, and when it comes back with a new key it is
/// re-attested — the new key pinned — before it answers again.
#[test]
fn a_node_killed_mid_run_moves_its_traffic_and_comes_back_re_attested() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = no_fault();
    let mut ups: Vec<Up> = (0..3).map(|_| serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), None)).collect();
    let file = dir.path().join("upstreams");
    write_upstreams(&file, &ups.iter().collect::<Vec<_>>());
    let p = Arc::new(start_proxy(&file, None));
    wait_for(&p, "three nodes in rotation", |s| s["in_rotation"] == 3);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) || i < 10 {
                    let a = chat(&p, &format!("client {c} request {i}"), i % 3 == 0);
                    answers.push((a.status, a.node, a.body));
                    i += 1;
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let victim = ups[1].url.clone();
    let before = ups[1].fake.answered.load(Ordering::SeqCst);
    ups[1].kill(&rt);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let answers: Vec<_> = clients.into_iter().flat_map(|c| c.join().expect("client")).collect();
    for (status, node, body) in &answers {
        assert_eq!(*status, 200, "a request failed although nothing of it had been relayed ({node}): {body}");
        assert!(!body.contains("\"error\""), "{body}");
    }
    assert!(before > 0, "the victim had no traffic before it died");
    let s = wait_for(&p, "the killed node out", |s| node_status(s, &victim)["state"] == "out");
    let n = node_status(&s, &victim);
    assert!(n["last_error"].as_str().unwrap_or_default().contains(&victim), "{n}");
    let old_key = ups[1].fake.key_hex();
    for i in 0..20 {
        assert_ne!(chat(&p, &format!("while out {i}"), false).node, victim, "a node that is out got traffic");
    }

    // It restarts on the same port with a new key: attested again (the backoff passes)
    // before it answers, and it answers under the new key.
    let addr = ups[1].addr;
    ups[1] = serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), Some(addr));
    let new_key = ups[1].fake.key_hex();
    assert_ne!(new_key, old_key);
    wait_for(&p, "the restarted node re-attested", |s| in_rotation(s, &victim, &new_key));
    let back = (0..60).map(|i| chat(&p, &format!("after restart {i}"), false)).find(|a| a.node == victim);
    let back = back.expect("the restarted node got no traffic");
    assert!(back.body.contains(&new_key), "{}", back.body);
    assert_eq!(back.receipt.expect("receipt").body.event_log_digest, ups[1].fake.log.digest());
}

/// A runtime that restarts between two requests (the proxy saw no connection fail) answers
/// 421 "key unknown": the request is sealed again for another node and succeeds, and the
/// restarted node gets traffic only after it was attested again with its new key.
#[test]
fn a_restarted_node_is_re_attested_before_it_gets_traffic() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = no_fault();
    let mut ups: Vec<Up> = (0..2).map(|_| serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), None)).collect();
    let file = dir.path().join("upstreams");
    write_upstreams(&file, &ups.iter().collect::<Vec<_>>());
    let p = start_proxy(&file, None);
    wait_for(&p, "two nodes in rotation", |s| s["in_rotation"] == 2);
    // Prompts that prefer node 1.
    let to_one: Vec<String> =
        (0..200).map(|i| format!("affine {i}")).filter(|q| chat(&p, q, false).node == ups[1].url).take(5).collect();
    assert_eq!(to_one.len(), 5);
    let addr = ups[1].addr;
    ups[1].kill(&rt);
    ups[1] = serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), Some(addr));
    let new_key = ups[1].fake.key_hex();
    for q in &to_one {
        let a = chat(&p, q, false);
        assert_eq!((a.status, a.node.as_str()), (200, ups[0].url.as_str()), "{}", a.body);
    }
    assert_eq!(ups[1].fake.answered.load(Ordering::SeqCst), 0, "the restarted node answered under its old pin");
    // The 421 is unauthenticated, so the node is re-attested on it only once its pin is 10 s
    // old; until then its requests go elsewhere, and none fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        let a = chat(&p, &to_one[0], false);
        assert_eq!(a.status, 200, "{}", a.body);
        if a.node == ups[1].url {
            break a;
        }
        assert!(Instant::now() < deadline, "the restarted node never came back: {:#}", status(&p));
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(back.body.contains(&new_key), "{}", back.body);
    assert!(in_rotation(&status(&p), &ups[1].url, &new_key), "the new key is pinned");
}

/// A node that fails before its stream's first record: the request is sealed again for the
/// other node and the client sees one whole stream. A node cut mid-stream: that client gets
/// the records already relayed, then an `upstream_failed` error naming the node, never
/// `[DONE]`.
#[test]
fn streams_fail_over_before_the_first_record_and_fail_clearly_after() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = no_fault();
    let ups: Vec<Up> = (0..2).map(|_| serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), None)).collect();
    let file = dir.path().join("upstreams");
    write_upstreams(&file, &ups.iter().collect::<Vec<_>>());
    let p = start_proxy(&file, None);
    wait_for(&p, "two nodes in rotation", |s| s["in_rotation"] == 2);

    *fault.lock().expect("lock") = Some(Fault::BeforeFirst);
    let a = chat(&p, "fail before the first record", true);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("data: [DONE]") && !a.body.contains("error"), "{}", a.body);
    assert_eq!(a.body.matches("\"i\":").count(), 3, "{}", a.body);
    let failed = ups.iter().find(|u| u.url != a.node).expect("the other node");
    let s = wait_for(&p, "the failed node out", |s| node_status(s, &failed.url)["state"] == "out");
    // Cut before its first record: before or after its response headers, depending on
    // when the connection drops; either way nothing reached the client.
    let why = node_status(&s, &failed.url)["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains(&failed.url) && (why.contains("before its first record") || why.contains("request to")), "{why}");

    wait_for(&p, "both nodes back", |s| s["in_rotation"] == 2);
    *fault.lock().expect("lock") = Some(Fault::MidStream);
    let a = chat(&p, "fail mid-stream", true);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("\"i\":0") && a.body.contains("\"i\":1"), "the records before the cut: {}", a.body);
    assert!(!a.body.contains("[DONE]") && !a.body.contains("\"i\":2"), "{}", a.body);
    let last = a.body.lines().rev().find(|l| l.starts_with("data: ")).unwrap_or_default();
    let e: serde_json::Value = serde_json::from_str(&last["data: ".len()..]).expect("an error event");
    assert_eq!(e["error"]["code"], "upstream_failed", "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains(&a.node), "the error names the node: {e}");
    wait_for(&p, "the cut node out", |s| node_status(s, &a.node)["state"] == "out");
}

/// A node whose launch measurement the policy does not allow never gets traffic, and
/// `/status` names the measurement it claimed and why it is out.
#[test]
fn a_node_with_another_measurement_is_kept_out_and_named() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = no_fault();
    let good = serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), None);
    let bad = serve(&rt, Fake::new(BAD, &["m"], fault.clone()), None);
    let file = dir.path().join("upstreams");
    write_upstreams(&file, &[&good, &bad]);
    let p = start_proxy(&file, None);
    let s = wait_for(&p, "the bad node refused", |s| node_status(s, &bad.url)["state"] == "out");
    let n = node_status(&s, &bad.url);
    assert_eq!(n["launch_measurement"], hex::encode(BAD), "{n}");
    let why = n["last_error"].as_str().unwrap_or_default();
    assert!(why.contains(&hex::encode(BAD)) && why.contains("failed verification"), "{why}");
    assert!(n["public_key"].is_null(), "a refused node has no pinned key: {n}");
    for i in 0..20 {
        let a = chat(&p, &format!("q {i}"), false);
        assert_eq!((a.status, a.node.as_str()), (200, good.url.as_str()), "{}", a.body);
    }
    assert_eq!(bad.fake.answered.load(Ordering::SeqCst), 0, "the refused node was sent a request");
}

/// The upstreams file is re-read when it changes: a new node is attested and then gets
/// traffic; a removed one gets none; a file that does not parse changes nothing.
#[test]
fn the_upstreams_file_is_reloaded() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = no_fault();
    let a = serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), None);
    let b = serve(&rt, Fake::new(GOOD, &["m"], fault.clone()), None);
    let file = dir.path().join("upstreams");
    write_upstreams(&file, &[&a]);
    let p = start_proxy(&file, None);
    for i in 0..5 {
        assert_eq!(chat(&p, &format!("q {i}"), false).node, a.url);
    }
    write_upstreams(&file, &[&a, &b]);
    wait_for(&p, "the added node in rotation", |s| in_rotation(s, &b.url, &b.fake.key_hex()));
    let nodes: BTreeSet<String> = (0..30).map(|i| chat(&p, &format!("r {i}"), false).node).collect();
    assert_eq!(nodes, BTreeSet::from([a.url.clone(), b.url.clone()]));

    std::fs::write(&file, format!("{}\nhttps://not-sealed.example\n", b.url)).expect("write");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&p)["nodes"].as_array().map(Vec::len), Some(2), "a bad file changed the fleet");

    write_upstreams(&file, &[&b]);
    wait_for(&p, "the removed node gone", |s| s["nodes"].as_array().map(Vec::len) == Some(1));
    let before = a.fake.answered.load(Ordering::SeqCst);
    for i in 0..10 {
        assert_eq!(chat(&p, &format!("s {i}"), false).node, b.url);
    }
    assert_eq!(a.fake.answered.load(Ordering::SeqCst), before, "a removed node got traffic");
}
