//! `attest proxy`: a local OpenAI-compatible endpoint for end users, in front of one runtime
//! (`--url`) or a fleet of them (`--upstreams FILE`). Before forwarding anything to a runtime
//! it fetches the runtime's evidence for a fresh nonce, verifies it under the user's policy
//! (the verifier `release` uses), and pins that runtime's attested keys; then every request
//! body is sealed to the key of the node it goes to (`chrysalis_proto::channel`) and every
//! answer is opened, checked against its signed receipt and passed on in plaintext — any
//! OpenAI client pointed at the proxy works unchanged, streaming included. It refuses to
//! forward, with an OpenAI-shaped error naming the failed checks, when verification fails.
//!
//! A single `--url` is a fleet of one: the same code serves both. For each request the proxy
//! picks a node in rotation ([`route`]: rendezvous hashing on the prompt's start, bounded by
//! in-flight load), and when that node fails before any byte of its answer reached the
//! client, it takes the node out (`node`) and seals the request again for another node
//! (a sealed request is bound to one node's key and answered once). A node that fails after
//! part of a stream was relayed ends that stream with an error event naming it. Every answer
//! names its node (`chrysalis-node`), and its receipt names the node's event-log digest and
//! measurement.
//!
//! Trust: the policy and the local client are trusted; the runtimes and the network between
//! are not. Listen on loopback: what the proxy serves is plaintext. Never logs bodies.

mod node;
pub mod route;

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};

use chrysalis_proto::channel::crypto::Target;
use chrysalis_proto::channel::receipt::Receipt;
use chrysalis_proto::channel::{self as ch};
use chrysalis_verify::attested::AttestedRuntime;
use chrysalis_verify::attested::EvidenceVerifier;
use chrysalis_verify::channel::client::{SealedCall, StreamReader, request_headers, seal_call};
use chrysalis_verify::policy::Policy;

use node::{Fleet, InFlight, Node, Settings};

/// Arguments of `attest proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Local address to serve the OpenAI-compatible API on. Keep it on loopback: answers are
    /// plaintext here.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The runtime's base URL, e.g. http://10.0.0.5:8000 (plain HTTP: bodies are sealed).
    /// Give this or --upstreams.
    #[arg(long, default_value_t = String::new(), hide_default_value = true)]
    pub url: String,
    /// A file listing several runtimes' base URLs, one per line (`#` starts a comment), each
    /// attested under the same policy with its own keys pinned. Re-read when it changes
    /// (checked every 2 s, or at once on SIGHUP): new runtimes are attested before they get
    /// traffic, removed ones finish what they are answering.
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    pub upstreams: Option<PathBuf>,
    /// Policy file the runtimes' evidence must satisfy.
    #[arg(long)]
    pub policy: PathBuf,
    /// Re-attest a runtime when its pinned evidence is older than this many seconds.
    #[arg(long, default_value_t = 300)]
    pub reattest_secs: u64,
    /// Save every response's receipt, with the evidence it refers to, in this directory.
    #[arg(long)]
    pub receipts: Option<PathBuf>,
    /// Also save request and response bodies next to the receipts (puts prompts and
    /// completions on disk).
    #[arg(long, requires = "receipts")]
    pub save_bodies: bool,
    /// Largest request body accepted from the local client, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Seconds to wait for a runtime's response headers (and a stream's first record).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Accept a runtime serving any sealed model: the policy then need not pin the model's
    /// bundle header (`[runtime] bundle_header_sha384`), and end users trust the provider's
    /// choice of model. Without it, a policy that pins no model is refused.
    #[arg(long)]
    pub any_model: bool,
    /// Certificates and collateral the evidence may lack.
    #[command(flatten)]
    pub inputs: super::EvidenceInputs,
}

impl ProxyArgs {
    /// A proxy embedded in a test, benchmark or the demo: loopback on a free port, the given
    /// policy, bodies up to 1 MiB, everything else as the CLI's defaults; set `url` or
    /// `upstreams` (and `receipts`) before starting it.
    pub fn embedded(policy: &Path) -> Self {
        ProxyArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            url: String::new(),
            upstreams: None,
            policy: policy.to_path_buf(),
            reattest_secs: 300,
            receipts: None,
            save_bodies: false,
            max_body_bytes: 1 << 20,
            timeout_s: 600,
            any_model: false,
            inputs: Default::default(),
        }
    }
}

/// Refuse a policy that does not name the model the runtime must serve (unless `any_model`):
/// otherwise a provider could seal a model of its own and serve it through the genuine runtime.
pub fn require_model_pin(policy: &Policy, any_model: bool) -> anyhow::Result<()> {
    let pinned = policy.runtime.bundle_header_sha384.as_ref().is_some_and(|l| !l.is_empty());
    match (pinned, any_model) {
        (true, _) => Ok(()),
        (false, true) => {
            log::warn!("--any-model: the policy pins no model; the runtime may serve any sealed bundle the provider chose");
            Ok(())
        }
        (false, false) => bail!(
            "the policy pins no model ([runtime] bundle_header_sha384): a provider could serve a model of its own \
             through the genuine runtime. Add the bundle header SHA-384 the model owner published (`attest seal` \
             prints it; `attest policy --bundle-header-sha384`), or pass --any-model to accept any model"
        ),
    }
}

/// The proxy's state.
pub struct Proxy {
    fleet: Fleet,
    settings: Arc<Settings>,
    max_body: usize,
    receipts: Option<PathBuf>,
    save_bodies: bool,
    seq: AtomicU64,
}

/// Why a request was not forwarded or not answered.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// Verification refused the runtime (403).
    Refused(String),
    /// The runtime could not be reached or answered nonsense (502).
    Unreachable(String),
    /// The answer failed authentication (502).
    Integrity(String),
}

impl Failure {
    fn response(&self) -> Response {
        let (status, kind, code, message) = match self {
            Failure::Refused(m) => (StatusCode::FORBIDDEN, "permission_error", "attestation_failed", m),
            Failure::Unreachable(m) => (StatusCode::BAD_GATEWAY, "api_error", "runtime_unreachable", m),
            Failure::Integrity(m) => (StatusCode::BAD_GATEWAY, "api_error", "channel_integrity", m),
        };
        error_response(status, kind, code, message)
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Refused(m) | Failure::Unreachable(m) | Failure::Integrity(m) => m,
        }
    }
}

fn error_body(kind: &str, code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

fn error_response(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (status, axum::Json(error_body(kind, code, message))).into_response()
}

type Upstreamed = hyper::Response<hyper::body::Incoming>;

/// Set on every answer the proxy relays from outside the encrypted channel: its content was
/// not authenticated and may come from anyone on the path.
pub const HEADER_UNAUTHENTICATED: &str = "chrysalis-unauthenticated";

/// Names the node (its base URL) that answered, on every answer that came from one.
pub const HEADER_NODE: &str = "chrysalis-node";

/// How many nodes one request may be sealed for: the first and up to two after failures that
/// happened before any of the answer was relayed.
const MAX_ATTEMPTS: usize = 3;

/// How often the fleet is checked: nodes due for attestation, upstreams file changes.
const TICK: Duration = Duration::from_secs(1);
/// How often the upstreams file's modification time is compared.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Write a file only its owner can read: receipts name what was asked, and saved bodies are
/// prompts and completions in plaintext.
fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, bytes.as_ref())
}

/// What one exchange with a node came to, short of an answer for the client.
enum Trouble {
    /// Nothing of the answer was relayed and the node is in doubt (unreachable, reset, a
    /// plaintext 5xx): it is taken out, and the request may be sealed for another node.
    Retry(Failure),
    /// The answer for this request is final (e.g. it failed authentication).
    Fatal(Failure),
}

/// A node's answer to one sealed request.
enum Reply {
    /// A whole sealed body, opened and its receipt checked.
    Whole { status: StatusCode, plain: Vec<u8>, receipt: Box<Receipt>, retry_after: Option<HeaderValue> },
    /// A sealed event stream, relayed as it opens.
    Stream(Response),
    /// A plaintext error from outside the channel, labelled unauthenticated.
    Plain(Response),
    /// 421 `channel_key_unknown`: the node does not know the key the request was sealed to.
    KeyUnknown,
}

impl Reply {
    fn into_response(self, node: &Node) -> Response {
        let mut resp = match self {
            Reply::Whole { status, plain, receipt, retry_after } => {
                let mut out = (status, [(header::CONTENT_TYPE, "application/json")], plain).into_response();
                if let Ok(v) = HeaderValue::from_str(&receipt.to_base64()) {
                    out.headers_mut().insert(ch::HEADER_RECEIPT, v);
                }
                if let Some(v) = retry_after {
                    out.headers_mut().insert(header::RETRY_AFTER, v);
                }
                out
            }
            Reply::Stream(r) | Reply::Plain(r) => r,
            Reply::KeyUnknown => Failure::Unreachable(format!("{} does not know the key", node.url)).response(),
        };
        name_node(&mut resp, &node.url);
        resp
    }
}

fn name_node(resp: &mut Response, url: &str) {
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(HEADER_NODE, v);
    }
}

impl Proxy {
    /// A proxy for `args` whose runtimes must pass `verifier`.
    pub fn new(args: &ProxyArgs, verifier: Box<dyn EvidenceVerifier>) -> anyhow::Result<Self> {
        let fleet = match (&args.upstreams, args.url.is_empty()) {
            (Some(file), true) => Fleet::from_file(file)?,
            (None, false) => Fleet::single(&args.url)?,
            (Some(_), false) => bail!("give either --url or --upstreams, not both"),
            (None, true) => bail!("no runtime: give --url http://HOST:PORT or --upstreams FILE"),
        };
        if let Some(dir) = &args.receipts {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Proxy {
            fleet,
            settings: Arc::new(Settings {
                policy: args.policy.clone(),
                verifier: Arc::from(verifier),
                reattest: Duration::from_secs(args.reattest_secs),
                timeout: Duration::from_secs(args.timeout_s.max(1)),
            }),
            max_body: args.max_body_bytes,
            receipts: args.receipts.clone(),
            save_bodies: args.save_bodies,
            seq: AtomicU64::new(0),
        })
    }

    /// The node for a request with affinity `key`, among the nodes in rotation that it has
    /// not failed on yet. When none is in rotation, the nodes that are due are attested first
    /// (the first request after start, or after the backoff of a node that was taken out).
    async fn pick(&self, key: &[u8], tried: &[String]) -> Option<Arc<Node>> {
        for round in 0..2 {
            let nodes: Vec<Arc<Node>> =
                self.fleet.nodes().into_iter().filter(|n| n.routable() && !tried.contains(&n.url)).collect();
            let candidates: Vec<route::Candidate<'_>> =
                nodes.iter().map(|n| route::Candidate { url: &n.url, in_flight: n.in_flight() }).collect();
            if let Some(i) = route::choose(&candidates, key) {
                return nodes.get(i).cloned();
            }
            if round == 0 {
                self.fleet.attest_due(&self.settings).await;
            }
        }
        None
    }

    /// Why no node could take a request: the one node's own error, or each node's.
    fn no_node(&self) -> Failure {
        let nodes = self.fleet.nodes();
        let errors: Vec<(String, Option<Failure>)> = nodes.iter().map(|n| (n.url.clone(), n.last_error())).collect();
        if let [(url, e)] = errors.as_slice() {
            return e.clone().unwrap_or_else(|| Failure::Unreachable(format!("{url} is not attested yet")));
        }
        let all_refused = !errors.is_empty() && errors.iter().all(|(_, e)| matches!(e, Some(Failure::Refused(_))));
        let each: Vec<String> =
            errors.iter().map(|(url, e)| format!("{url}: {}", e.as_ref().map_or("not attested yet", Failure::message))).collect();
        let msg = format!("no runtime is in rotation ({} listed): {}", nodes.len(), each.join("; "));
        if all_refused { Failure::Refused(msg) } else { Failure::Unreachable(msg) }
    }

    /// The evidence a receipt refers to, saved once per attestation (its name is the nonce).
    fn save_evidence(dir: &Path, rt: &AttestedRuntime) -> PathBuf {
        let p = dir.join(format!("evidence-{}.bin", hex::encode(&rt.nonce)));
        if !p.exists()
            && let Err(e) = write_private(&p, rt.evidence.to_bytes())
        {
            log::error!("proxy: saving {}: {e}", p.display());
        }
        p
    }

    fn save_receipt(&self, node: &Node, rt: &AttestedRuntime, receipt: &Receipt, request: &[u8], response: &[u8]) {
        let Some(dir) = &self.receipts else { return };
        let evidence = Self::save_evidence(dir, rt);
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let stem = format!("{millis}-{:06}", self.seq.fetch_add(1, Ordering::Relaxed));
        let receipt_path = dir.join(format!("{stem}.receipt"));
        let mut meta = serde_json::json!({
            "receipt": receipt_path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "evidence": evidence.file_name().map(|n| n.to_string_lossy().into_owned()),
            "nonce": hex::encode(&rt.nonce),
            "runtime": node.url,
            "node": node.url,
            "public_key": hex::encode(rt.public_key),
            "target": receipt.body.target,
            "status": receipt.body.status,
            "model": receipt.body.model,
            "event_log_digest": hex::encode(receipt.body.event_log_digest),
            "launch_measurement": hex::encode(&receipt.body.launch_measurement),
        });
        let mut verify = format!(
            "attest verify-receipt --receipt {} --evidence {} --nonce {} --policy {}",
            receipt_path.display(),
            evidence.display(),
            hex::encode(&rt.nonce),
            self.settings.policy.display()
        );
        if self.save_bodies {
            let (rq, rs) = (dir.join(format!("{stem}.request")), dir.join(format!("{stem}.response")));
            let _ = write_private(&rq, request);
            let _ = write_private(&rs, response);
            verify.push_str(&format!(" --request {} --response {}", rq.display(), rs.display()));
            meta["request"] = rq.file_name().map(|n| n.to_string_lossy().into_owned()).into();
            meta["response"] = rs.file_name().map(|n| n.to_string_lossy().into_owned()).into();
        }
        meta["verify"] = verify.into();
        let r1 = write_private(&receipt_path, receipt.to_base64() + "\n");
        let r2 = write_private(&dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&meta).unwrap_or_default() + "\n");
        if let Err(e) = r1.and(r2) {
            log::error!("proxy: saving receipt {stem}: {e}");
        }
    }

    /// Keep the fleet current until the proxy stops: attest nodes that are due (new, past
    /// their backoff, or stale) and re-read the upstreams file when it changed or `reload`
    /// is notified (SIGHUP).
    async fn maintain(self: Arc<Self>, reload: Arc<tokio::sync::Notify>) {
        let mut last_check = Instant::now();
        loop {
            let forced = tokio::select! {
                () = tokio::time::sleep(TICK) => false,
                () = reload.notified() => true,
            };
            if forced || last_check.elapsed() >= RELOAD_EVERY {
                self.fleet.reload_if_changed(forced);
                last_check = Instant::now();
            }
            self.fleet.attest_due(&self.settings).await;
        }
    }
}

fn upstream_request(
    node: &Node,
    rt: &AttestedRuntime,
    method: &Method,
    path: &str,
    call: &SealedCall,
) -> Result<hyper::Request<Full<Bytes>>, Failure> {
    let mut b = hyper::Request::builder()
        .method(method.clone())
        .uri(format!("{}{path}", node.upstream.base_path))
        .header(header::HOST, &node.upstream.authority)
        .header(header::ACCEPT, "*/*");
    for (name, value) in request_headers(rt, &call.request) {
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::from(call.request.ciphertext.clone()))).map_err(|e| Failure::Unreachable(e.to_string()))
}

fn is_channel(resp: &Upstreamed) -> bool {
    resp.headers().get(ch::HEADER_CHANNEL).is_some_and(|v| v.as_bytes() == ch::CHANNEL_VERSION.as_bytes())
}

fn content_type(resp: &Upstreamed) -> String {
    resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

async fn handle(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, p.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                &format!("request body is larger than the proxy's limit of {} bytes", p.max_body),
            );
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |q| q.as_str()).to_owned();
    if parts.method == Method::GET && parts.uri.path() == "/v1/models" && p.fleet.nodes().len() > 1 {
        return models_union(&p, &path).await;
    }
    let key = route::affinity_key(&body);
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<Failure> = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some(node) = p.pick(&key, &tried).await else { break };
        let flight = node.begin();
        let rt = match node.runtime(&p.settings).await {
            Ok(rt) => rt,
            Err(f) => {
                // Re-attesting it (it was stale) failed, and took it out.
                tried.push(node.url.clone());
                last = Some(f);
                continue;
            }
        };
        match exchange(&p, &node, flight, &rt, &parts.method, &path, &body).await {
            Ok(Reply::KeyUnknown) => match node.key_unknown(&rt) {
                // Taken out: attested again before it is picked again (by this request too).
                Ok(f) => last = Some(f),
                Err(f) => {
                    tried.push(node.url.clone());
                    last = Some(f);
                }
            },
            Ok(reply) => {
                let resp = reply.into_response(&node);
                log::info!(
                    "proxy: {} {} -> {} via {} in {} ms",
                    parts.method,
                    parts.uri.path(),
                    resp.status().as_u16(),
                    node.url,
                    start.elapsed().as_millis()
                );
                return resp;
            }
            Err(Trouble::Retry(f)) => {
                log::warn!("proxy: {} {} on {}: {}; trying another node", parts.method, parts.uri.path(), node.url, f.message());
                node.take_out(f.clone());
                tried.push(node.url.clone());
                last = Some(f);
            }
            Err(Trouble::Fatal(f)) => {
                log::warn!("proxy: {} {} on {}: {}", parts.method, parts.uri.path(), node.url, f.message());
                let mut resp = f.response();
                name_node(&mut resp, &node.url);
                return resp;
            }
        }
    }
    let f = match last {
        Some(f) if p.fleet.nodes().len() == 1 => f,
        Some(f) => Failure::Unreachable(format!(
            "no runtime could answer after {} attempt(s); last: {}; {}",
            tried.len().max(1),
            f.message(),
            p.no_node().message()
        )),
        None => p.no_node(),
    };
    f.response()
}

/// Send `body` sealed to node `rt` and open its answer. `flight` counts the request on the
/// node until the answer (for a stream: its end) is out.
async fn exchange(
    p: &Arc<Proxy>,
    node: &Arc<Node>,
    flight: InFlight,
    rt: &Arc<AttestedRuntime>,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Result<Reply, Trouble> {
    let upstream_path = format!("{}{path}", node.upstream.base_path);
    let call = seal_call(rt, Target::new(method.as_str(), upstream_path), body)
        .map_err(|e| Trouble::Fatal(Failure::Integrity(e.to_string())))?;
    let req = upstream_request(node, rt, method, path, &call).map_err(Trouble::Fatal)?;
    let resp = node.send(&p.settings, req).await.map_err(Trouble::Retry)?;
    let status = resp.status();
    if !is_channel(&resp) {
        let bytes =
            http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let code = json.as_ref().and_then(|v| v["error"]["code"].as_str().map(str::to_owned)).unwrap_or_default();
        if status == StatusCode::MISDIRECTED_REQUEST && code == ch::CODE_KEY_UNKNOWN {
            return Ok(Reply::KeyUnknown);
        }
        if status.is_success() {
            return Err(Trouble::Fatal(Failure::Integrity(format!(
                "{} answered {status} outside the encrypted channel: discarded",
                node.url
            ))));
        }
        let said = json
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::release::sanitize(&bytes));
        if status.is_server_error() {
            // Not the runtime's channel speaking (that answers sealed): whatever is in front
            // of it failed, so another node may do.
            return Err(Trouble::Retry(Failure::Unreachable(format!(
                "{} answered {status} outside the encrypted channel (unauthenticated): {said}",
                node.url
            ))));
        }
        // An error about the channel itself (plaintext by design, unauthenticated): labelled.
        let message = format!(
            "UNAUTHENTICATED answer from outside the encrypted channel (anyone on the path could have sent it): \
             the runtime refused the sealed request ({status}): {said}"
        );
        let code = if code.is_empty() { "channel_error".to_owned() } else { code };
        let mut resp = error_response(status, "invalid_request_error", &code, &message);
        resp.headers_mut().insert(HEADER_UNAUTHENTICATED, HeaderValue::from_static("true"));
        return Ok(Reply::Plain(resp));
    }
    let ctype = content_type(&resp);
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    if ctype.starts_with("text/event-stream") {
        let relay = Relay::start(p, node, flight, rt, call.open_stream(status.as_u16()), body, resp.into_body()).await?;
        let mut out = (
            status,
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            Body::from_stream(relay.stream()),
        )
            .into_response();
        if let Some(v) = retry_after {
            out.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(Reply::Stream(out));
    }
    if !ctype.starts_with(chrysalis_proto::routes::SEALED_RESPONSE_MEDIA_TYPE) {
        return Err(Trouble::Fatal(Failure::Integrity(format!("{} answered with unexpected content type {ctype:?}", node.url))));
    }
    let sealed = http_body_util::Limited::new(resp.into_body(), ch::frame::MAX_RECORD_LEN + 4096)
        .collect()
        .await
        .map_err(|e| Trouble::Retry(Failure::Unreachable(format!("reading the response from {}: {e}", node.url))))?
        .to_bytes();
    let (plain, receipt) = call.open_whole(rt, status.as_u16(), &sealed).map_err(|e| {
        Trouble::Fatal(Failure::Integrity(format!(
            "the runtime's response from {} failed authentication and was discarded: {e}",
            node.url
        )))
    })?;
    p.save_receipt(node, rt, &receipt, body, &plain);
    drop(flight);
    Ok(Reply::Whole { status, plain, receipt: Box::new(receipt), retry_after })
}

/// `GET /v1/models` over a fleet: every node in rotation is asked (each through its own
/// channel, each receipt saved), and the answer lists each model id once. A fleet of one
/// forwards the node's answer as it is, receipt header included.
async fn models_union(p: &Arc<Proxy>, path: &str) -> Response {
    if p.pick(b"", &[]).await.is_none() {
        return p.no_node().response();
    }
    let asks: Vec<_> = p
        .fleet
        .nodes()
        .into_iter()
        .filter(|n| n.routable())
        .map(|node| {
            let (p, path) = (p.clone(), path.to_owned());
            tokio::spawn(async move {
                let flight = node.begin();
                let rt = node.runtime(&p.settings).await.map_err(Trouble::Retry)?;
                let reply = exchange(&p, &node, flight, &rt, &Method::GET, &path, &Bytes::new()).await;
                if let Err(Trouble::Retry(f)) = &reply {
                    node.take_out(f.clone());
                }
                reply.map(|r| (node, r))
            })
        })
        .collect();
    let mut data: Vec<serde_json::Value> = Vec::new();
    let mut answered: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for ask in asks {
        match ask.await {
            Ok(Ok((node, Reply::Whole { status, plain, .. }))) if status.is_success() => {
                let list = serde_json::from_slice::<serde_json::Value>(&plain).ok();
                for m in list.as_ref().and_then(|v| v["data"].as_array()).into_iter().flatten() {
                    if !data.iter().any(|d| d["id"] == m["id"]) {
                        data.push(m.clone());
                    }
                }
                answered.push(node.url.clone());
            }
            Ok(Ok((node, _))) => errors.push(format!("{}: no model list", node.url)),
            Ok(Err(Trouble::Retry(f) | Trouble::Fatal(f))) => errors.push(f.message().to_owned()),
            Err(e) => errors.push(format!("asking for models: {e}")),
        }
    }
    if answered.is_empty() {
        return Failure::Unreachable(format!("no runtime listed its models: {}", errors.join("; "))).response();
    }
    for e in &errors {
        log::warn!("proxy: /v1/models: {e}");
    }
    let mut resp = axum::Json(serde_json::json!({ "object": "list", "data": data })).into_response();
    name_node(&mut resp, &answered.join(", "));
    resp
}

/// The client's event stream from one node: plaintext as records open; at the end, the held
/// `[DONE]` and a comment with the receipt, or an error event if the stream was cut (the
/// node is then taken out) or tampered with.
struct Relay {
    p: Arc<Proxy>,
    node: Arc<Node>,
    _flight: InFlight,
    rt: Arc<AttestedRuntime>,
    reader: Option<StreamReader>,
    /// What to send before reading on: the first plaintext (read before answering, so that
    /// a node that fails before it can be replaced).
    pending: Option<Bytes>,
    ended: bool,
    request: Bytes,
    seen: Vec<u8>,
    relayed: usize,
    upstream: http_body_util::BodyDataStream<hyper::body::Incoming>,
}

impl Relay {
    /// Read up to the first plaintext of the stream. A node that fails before it (reset,
    /// cut, silent past the timeout) is a [`Trouble::Retry`]: nothing reached the client.
    async fn start(
        p: &Arc<Proxy>,
        node: &Arc<Node>,
        flight: InFlight,
        rt: &Arc<AttestedRuntime>,
        reader: StreamReader,
        request: &Bytes,
        upstream: hyper::body::Incoming,
    ) -> Result<Relay, Trouble> {
        let mut r = Relay {
            p: p.clone(),
            node: node.clone(),
            _flight: flight,
            rt: rt.clone(),
            reader: Some(reader),
            pending: None,
            ended: false,
            request: request.clone(),
            seen: Vec::new(),
            relayed: 0,
            upstream: upstream.into_data_stream(),
        };
        let url = node.url.clone();
        let lost = |e: &dyn std::fmt::Display| {
            Trouble::Retry(Failure::Unreachable(format!("{url} dropped the stream before its first record: {e}")))
        };
        let timeout = p.settings.timeout;
        let first = tokio::time::timeout(timeout, async {
            loop {
                match r.upstream.next().await {
                    Some(Ok(bytes)) => match r.reader.as_mut().map(|rd| rd.push(&bytes)) {
                        Some(Ok(plain)) if plain.is_empty() => continue,
                        Some(Ok(plain)) => break Ok(Some(Bytes::from(plain))),
                        Some(Err(e)) => break Ok(Some(r.fail_integrity(&e.to_string()))),
                        None => break Ok(None),
                    },
                    Some(Err(e)) => break Err(e),
                    None => {
                        r.ended = true;
                        break Ok(None);
                    }
                }
            }
        })
        .await
        .map_err(|_| Trouble::Retry(Failure::Unreachable(format!("{} sent no record within {} s", node.url, timeout.as_secs()))))?
        .map_err(|e| lost(&e))?;
        if let Some(plain) = &first
            && r.reader.is_some()
            && p.save_bodies
        {
            r.seen.extend_from_slice(plain);
        }
        r.pending = first;
        Ok(r)
    }

    /// The error event for a stream that failed authentication; nothing more is relayed.
    fn fail_integrity(&mut self, msg: &str) -> Bytes {
        log::warn!("proxy: stream from {} discarded: {msg}", self.node.url);
        self.reader = None;
        let e = error_body(
            "api_error",
            "channel_integrity",
            &format!("the runtime's stream from {} failed authentication: {msg}", self.node.url),
        );
        Bytes::from(format!("data: {e}\n\n"))
    }

    /// The error event for a node lost mid-stream; it is taken out of rotation.
    fn fail_upstream(&mut self, e: &dyn std::fmt::Display) -> Bytes {
        let msg = format!(
            "node {} failed mid-stream after {} bytes were relayed ({e}); the answer is incomplete, and it was not \
             retried on another node because part of it was already sent",
            self.node.url, self.relayed
        );
        self.node.take_out(Failure::Unreachable(format!("{} failed mid-stream: {e}", self.node.url)));
        self.reader = None;
        Bytes::from(format!("data: {}\n\n", error_body("api_error", "upstream_failed", &msg)))
    }

    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.pending.take() {
            self.relayed += b.len();
            return Some(b);
        }
        let reader = self.reader.as_mut()?;
        loop {
            let next = if self.ended { None } else { self.upstream.next().await };
            match next {
                Some(Ok(bytes)) => match reader.push(&bytes) {
                    Ok(plain) if plain.is_empty() => continue,
                    Ok(plain) => {
                        if self.p.save_bodies {
                            self.seen.extend_from_slice(&plain);
                        }
                        self.relayed += plain.len();
                        return Some(Bytes::from(plain));
                    }
                    Err(e) => return Some(self.fail_integrity(&e.to_string())),
                },
                Some(Err(e)) => return Some(self.fail_upstream(&e)),
                None => {
                    let reader = self.reader.take()?;
                    return match reader.finish(&self.rt) {
                        Ok((tail, receipt)) => {
                            self.seen.extend_from_slice(&tail);
                            self.p.save_receipt(&self.node, &self.rt, &receipt, &self.request, &self.seen);
                            let mut out = tail;
                            out.extend_from_slice(format!(": {} {}\n\n", ch::HEADER_RECEIPT, receipt.to_base64()).as_bytes());
                            Some(Bytes::from(out))
                        }
                        Err(e) => Some(self.fail_integrity(&e.to_string())),
                    };
                }
            }
        }
    }

    fn stream(self) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        futures_util::stream::unfold(self, |mut r| async move { r.next().await.map(|b| (Ok(b), r)) })
    }
}

async fn status(State(p): State<Arc<Proxy>>) -> Response {
    let nodes: Vec<serde_json::Value> = p.fleet.nodes().iter().map(|n| n.status()).collect();
    let mut body = serde_json::json!({
        "policy": p.settings.policy.display().to_string(),
        "in_rotation": p.fleet.nodes().iter().filter(|n| n.routable()).count(),
        "nodes": nodes,
    });
    // A fleet of one also shows its node at the top level, as before fleets.
    if let ([one], Some(obj)) = (nodes.as_slice(), body.as_object_mut())
        && let Some(fields) = one.as_object()
    {
        obj.insert("runtime".into(), fields.get("url").cloned().unwrap_or_default());
        for (k, v) in fields {
            obj.entry(k.clone()).or_insert(v.clone());
        }
    }
    axum::Json(body).into_response()
}

/// The proxy's routes: `GET /chrysalis/status` (the nodes and what is pinned for each),
/// everything else forwarded.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new().route("/chrysalis/status", axum::routing::get(status)).fallback(handle).with_state(proxy)
}

/// A proxy serving on a background thread (tests, benchmarks); stops when dropped.
pub struct RunningProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start a proxy for `args` on a background thread.
pub fn start(args: &ProxyArgs, verifier: Box<dyn EvidenceVerifier>) -> anyhow::Result<RunningProxy> {
    let proxy = Arc::new(Proxy::new(args, verifier)?);
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("attest-proxy".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("proxy: starting tokio: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let maintain = tokio::spawn(proxy.clone().maintain(Arc::new(tokio::sync::Notify::new())));
            let _ = axum::serve(listener, router(proxy))
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            maintain.abort();
        });
    })?;
    Ok(RunningProxy { addr, stop: Some(tx), thread: Some(thread) })
}

/// Run `attest proxy` in the foreground until Ctrl-C.
pub fn run(args: &ProxyArgs, verifier: Box<dyn EvidenceVerifier>) -> anyhow::Result<()> {
    let proxy = Arc::new(Proxy::new(args, verifier)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    rt.block_on(async move {
        // Attest up front so that a bad runtime or policy shows before the first request.
        proxy.fleet.attest_due(&proxy.settings).await;
        for n in proxy.fleet.nodes() {
            match (n.routable(), n.last_error()) {
                (true, _) => eprintln!(
                    "attest proxy: {} verified under {} ({})",
                    n.url,
                    proxy.settings.policy.display(),
                    n.status()["launch_measurement"]
                        .as_str()
                        .map_or("launch measurement unknown".into(), |m| format!("launch measurement {m}"))
                ),
                (false, e) => eprintln!(
                    "attest proxy: WARNING: {}: {}; it gets no requests until it verifies",
                    n.url,
                    e.as_ref().map_or("not attested", Failure::message)
                ),
            }
        }
        let reload = Arc::new(tokio::sync::Notify::new());
        if args.upstreams.is_some() {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP handler")?;
            let reload = reload.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    reload.notify_one();
                }
            });
        }
        tokio::spawn(proxy.clone().maintain(reload));
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let upstream = args.upstreams.as_ref().map_or_else(|| args.url.clone(), |f| format!("the runtimes in {}", f.display()));
        eprintln!("attest proxy: OpenAI-compatible API on http://{}/v1 -> {upstream}", listener.local_addr()?);
        axum::serve(listener, router(proxy))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

/// Where the receipts of a proxy go, for `--help` readers of the code: one
/// `<millis>-<seq>.receipt` (base64) and `.json` (what to run to verify it, and which node
/// answered) per response, and the `evidence-<nonce>.bin` it refers to.
pub fn receipt_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "receipt"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Receipts and saved bodies (always new files: their names carry a fresh nonce or a
    /// sequence number) are readable by their owner only, whatever the umask.
    #[test]
    fn saved_files_are_private() {
        let dir = std::env::temp_dir().join(format!("chrysalis-proxy-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.response");
        write_private(&p, b"completion").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"completion");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
