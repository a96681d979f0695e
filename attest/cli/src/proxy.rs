//! `attest proxy`: a local OpenAI-compatible endpoint for end users. Before forwarding
//! anything it fetches the runtime's evidence for a fresh nonce, verifies it under the user's
//! policy (the verifier `release` uses), and pins the runtime's attested keys; then every
//! request body is sealed to that key (`chrysalis_proto::channel`) and every answer is opened, checked
//! against its signed receipt and passed on in plaintext — any OpenAI client pointed at the
//! proxy works unchanged, streaming included. It re-attests every `--reattest-secs`, and at
//! once when the runtime says the key the request was sealed to is not its own (it
//! restarted); it refuses to forward, with an OpenAI-shaped error naming the failed checks,
//! when verification fails.
//!
//! Trust: the policy and the local client are trusted; the runtime and the network between
//! are not. Listen on loopback: what the proxy serves is plaintext. Never logs bodies.

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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use chrysalis_proto::channel::crypto::Target;
use chrysalis_proto::channel::receipt::Receipt;
use chrysalis_proto::channel::{self as ch};
use chrysalis_proto::evidence::{Evidence, MAX_EVIDENCE_LEN};
use chrysalis_proto::keyrelease::fresh_nonce;
use chrysalis_proto::routes;
use chrysalis_verify::attested::EvidenceVerifier;
use chrysalis_verify::attested::{AttestedRuntime, Challenge, attest_runtime};
use chrysalis_verify::channel::client::{SealedCall, StreamReader, request_headers, seal_call};
use chrysalis_verify::policy::Policy;

/// Arguments of `attest proxy`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Local address to serve the OpenAI-compatible API on. Keep it on loopback: answers are
    /// plaintext here.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The runtime's base URL, e.g. http://10.0.0.5:8000 (plain HTTP: bodies are sealed).
    #[arg(long)]
    pub url: String,
    /// Policy file the runtime's evidence must satisfy.
    #[arg(long)]
    pub policy: PathBuf,
    /// Re-attest the runtime when the pinned evidence is older than this many seconds.
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
    /// Seconds to wait for the runtime's response headers.
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

/// The runtime's address, split for a raw HTTP/1.1 client.
#[derive(Clone, Debug)]
struct Upstream {
    authority: String,
    base_path: String,
}

impl Upstream {
    fn parse(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("https://") {
            bail!("{url}: use http:// — request and response bodies are sealed to the attested key, not protected by TLS");
        }
        let rest = url.strip_prefix("http://").with_context(|| format!("{url}: expected http://host:port"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
        let base_path = path.trim_end_matches('/');
        let base_path = if base_path.is_empty() { String::new() } else { format!("/{base_path}") };
        Ok(Upstream { authority, base_path })
    }
}

struct Pinned {
    runtime: Arc<AttestedRuntime>,
    at: Instant,
    evidence_file: Option<PathBuf>,
}

/// The proxy's state.
pub struct Proxy {
    upstream: Upstream,
    url: String,
    policy: PathBuf,
    verifier: Arc<dyn EvidenceVerifier>,
    reattest: Duration,
    timeout: Duration,
    max_body: usize,
    receipts: Option<PathBuf>,
    save_bodies: bool,
    pinned: tokio::sync::Mutex<Option<Pinned>>,
    seq: AtomicU64,
}

/// Why a request was not forwarded or not answered.
#[derive(Debug)]
enum Failure {
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
}

fn error_body(kind: &str, code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

fn error_response(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (status, axum::Json(error_body(kind, code, message))).into_response()
}

type Upstreamed = hyper::Response<hyper::body::Incoming>;

/// The shortest time between attestations that a runtime's (unauthenticated) "key unknown"
/// answer can trigger.
const MIN_REATTEST_ON_KEY_UNKNOWN: Duration = Duration::from_secs(10);

/// Set on every answer the proxy relays from outside the encrypted channel: its content was
/// not authenticated and may come from anyone on the path.
pub const HEADER_UNAUTHENTICATED: &str = "chrysalis-unauthenticated";

/// Write a file only its owner can read: receipts name what was asked, and saved bodies are
/// prompts and completions in plaintext.
fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, bytes.as_ref())
}

impl Proxy {
    /// A proxy for `args` whose runtime must pass `verifier`.
    pub fn new(args: &ProxyArgs, verifier: Box<dyn EvidenceVerifier>) -> anyhow::Result<Self> {
        if let Some(dir) = &args.receipts {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Proxy {
            upstream: Upstream::parse(&args.url)?,
            url: args.url.trim_end_matches('/').to_owned(),
            policy: args.policy.clone(),
            verifier: Arc::from(verifier),
            reattest: Duration::from_secs(args.reattest_secs),
            timeout: Duration::from_secs(args.timeout_s.max(1)),
            max_body: args.max_body_bytes,
            receipts: args.receipts.clone(),
            save_bodies: args.save_bodies,
            pinned: tokio::sync::Mutex::new(None),
            seq: AtomicU64::new(0),
        })
    }

    async fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<Upstreamed, Failure> {
        let unreachable = |what: &str, e: &dyn std::fmt::Display| Failure::Unreachable(format!("{what} {}: {e}", self.url));
        let stream = tokio::time::timeout(Duration::from_secs(30), tokio::net::TcpStream::connect(&self.upstream.authority))
            .await
            .map_err(|e| unreachable("connecting to", &e))?
            .map_err(|e| unreachable("connecting to", &e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable("talking to", &e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("proxy: upstream connection ended: {e}");
            }
        });
        tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| Failure::Unreachable(format!("{} did not answer within {} s", self.url, self.timeout.as_secs())))?
            .map_err(|e| unreachable("request to", &e))
    }

    /// Fetch fresh evidence and verify it; the pinned runtime on success.
    async fn attest(self: &Arc<Self>) -> Result<Arc<AttestedRuntime>, Failure> {
        let nonce = fresh_nonce().map_err(|e| Failure::Unreachable(e.to_string()))?;
        let issued_at = std::time::SystemTime::now();
        let uri = format!("{}{}?nonce={}", self.upstream.base_path, routes::ATTESTATION, hex::encode(nonce));
        let req = hyper::Request::get(uri)
            .header(header::HOST, &self.upstream.authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_EVIDENCE_LEN)
            .collect()
            .await
            .map_err(|e| Failure::Unreachable(format!("reading the evidence from {}: {e}", self.url)))?
            .to_bytes();
        if !status.is_success() {
            return Err(Failure::Unreachable(format!(
                "{} answered {status} to GET {}: {}",
                self.url,
                routes::ATTESTATION,
                super::release::sanitize(&body)
            )));
        }
        let evidence = Evidence::from_bytes(&body)
            .map_err(|e| Failure::Refused(format!("refusing to forward: the runtime at {} sent bad evidence: {e}", self.url)))?;
        let me = self.clone();
        let verified = tokio::task::spawn_blocking(move || {
            attest_runtime(evidence, Challenge::issued(&nonce, issued_at), me.verifier.as_ref())
        })
        .await
        .map_err(|e| Failure::Unreachable(format!("verification task failed: {e}")))?;
        match verified {
            Ok(rt) => {
                log::info!(
                    "proxy: {} verified under {}: log digest {}, key {}",
                    self.url,
                    self.policy.display(),
                    hex::encode(&rt.log_digest[..8]),
                    hex::encode(&rt.public_key[..8])
                );
                Ok(Arc::new(rt))
            }
            Err(e) => {
                let msg = format!(
                    "refusing to forward: the runtime at {} failed verification under policy {}: {e}",
                    self.url,
                    self.policy.display()
                );
                log::warn!("proxy: {msg}");
                Err(Failure::Refused(msg))
            }
        }
    }

    /// The pinned runtime, re-attested when stale, missing, or `replace` (its key changed).
    async fn runtime(self: &Arc<Self>, replace: Option<&AttestedRuntime>) -> Result<Arc<AttestedRuntime>, Failure> {
        let mut pinned = self.pinned.lock().await;
        if let Some(p) = pinned.as_ref() {
            let age = p.at.elapsed();
            let stale = age >= self.reattest;
            let replaced = replace.is_some_and(|old| old.log_digest == p.runtime.log_digest);
            if !stale && !replaced {
                return Ok(p.runtime.clone());
            }
            if replaced && !stale && age < MIN_REATTEST_ON_KEY_UNKNOWN {
                // "Key unknown" is a plaintext answer anyone on the path can forge: believing
                // every one would make each request cost an attestation.
                return Err(Failure::Unreachable(format!(
                    "{} says it no longer has the key attested {} s ago; that answer is unauthenticated, so the proxy \
                     re-attests on it at most once every {} s: retry later",
                    self.url,
                    age.as_secs(),
                    MIN_REATTEST_ON_KEY_UNKNOWN.as_secs()
                )));
            }
            if replaced {
                log::info!("proxy: the runtime no longer has the pinned key; re-attesting");
            }
        }
        *pinned = None;
        let runtime = self.attest().await?;
        let evidence_file = self.save_evidence(&runtime);
        *pinned = Some(Pinned { runtime: runtime.clone(), at: Instant::now(), evidence_file });
        Ok(runtime)
    }

    fn save_evidence(&self, rt: &AttestedRuntime) -> Option<PathBuf> {
        let dir = self.receipts.as_ref()?;
        let path = dir.join(format!("evidence-{}.bin", hex::encode(&rt.nonce)));
        match write_private(&path, rt.evidence.to_bytes()) {
            Ok(()) => Some(path),
            Err(e) => {
                log::error!("proxy: saving {}: {e}", path.display());
                None
            }
        }
    }

    fn save_receipt(&self, rt: &AttestedRuntime, receipt: &Receipt, request: &[u8], response: &[u8]) {
        let Some(dir) = &self.receipts else { return };
        let evidence = {
            let p = dir.join(format!("evidence-{}.bin", hex::encode(&rt.nonce)));
            if !p.exists() {
                let _ = write_private(&p, rt.evidence.to_bytes());
            }
            p
        };
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let stem = format!("{millis}-{:06}", self.seq.fetch_add(1, Ordering::Relaxed));
        let receipt_path = dir.join(format!("{stem}.receipt"));
        let mut meta = serde_json::json!({
            "receipt": receipt_path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "evidence": evidence.file_name().map(|n| n.to_string_lossy().into_owned()),
            "nonce": hex::encode(&rt.nonce),
            "runtime": self.url,
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
            self.policy.display()
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

    fn upstream_request(
        &self,
        rt: &AttestedRuntime,
        method: &axum::http::Method,
        path: &str,
        call: &SealedCall,
    ) -> Result<hyper::Request<Full<Bytes>>, Failure> {
        let mut b = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.upstream.authority)
            .header(header::ACCEPT, "*/*");
        for (name, value) in request_headers(rt, &call.request) {
            b = b.header(name, value);
        }
        b.body(Full::new(Bytes::from(call.request.ciphertext.clone()))).map_err(|e| Failure::Unreachable(e.to_string()))
    }
}

fn is_channel(resp: &Upstreamed) -> bool {
    resp.headers().get(ch::HEADER_CHANNEL).is_some_and(|v| v.as_bytes() == ch::CHANNEL_VERSION.as_bytes())
}

fn content_type(resp: &Upstreamed) -> String {
    resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

enum Outcome {
    Done(Response),
    KeyUnknown,
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
    let path = format!("{}{}", p.upstream.base_path, parts.uri.path_and_query().map_or("/", |q| q.as_str()));
    let mut stale: Option<Arc<AttestedRuntime>> = None;
    for attempt in 0..2 {
        let rt = match p.runtime(stale.as_deref()).await {
            Ok(rt) => rt,
            Err(f) => return f.response(),
        };
        match forward(&p, &rt, &parts.method, &path, &body).await {
            Ok(Outcome::Done(resp)) => {
                log::info!(
                    "proxy: {} {} -> {} in {} ms",
                    parts.method,
                    parts.uri.path(),
                    resp.status().as_u16(),
                    start.elapsed().as_millis()
                );
                return resp;
            }
            Ok(Outcome::KeyUnknown) if attempt == 0 => stale = Some(rt),
            Ok(Outcome::KeyUnknown) => {
                return Failure::Integrity(format!("{} refused the key it was just attested with", p.url)).response();
            }
            Err(f) => {
                log::warn!("proxy: {} {}: {f:?}", parts.method, parts.uri.path());
                return f.response();
            }
        }
    }
    Failure::Unreachable("unreachable retry state".into()).response()
}

async fn forward(
    p: &Arc<Proxy>,
    rt: &Arc<AttestedRuntime>,
    method: &axum::http::Method,
    path: &str,
    body: &Bytes,
) -> Result<Outcome, Failure> {
    let call = seal_call(rt, Target::new(method.as_str(), path), body).map_err(|e| Failure::Integrity(e.to_string()))?;
    let resp = p.send(p.upstream_request(rt, method, path, &call)?).await?;
    let status = resp.status();
    if !is_channel(&resp) {
        let bytes =
            http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if status == StatusCode::MISDIRECTED_REQUEST && code == ch::CODE_KEY_UNKNOWN {
            return Ok(Outcome::KeyUnknown);
        }
        if status.is_success() {
            return Err(Failure::Integrity(format!("{} answered {status} outside the encrypted channel: discarded", p.url)));
        }
        // An error about the channel itself (plaintext by design, unauthenticated): labelled.
        let message = format!(
            "UNAUTHENTICATED answer from outside the encrypted channel (anyone on the path could have sent it): \
             the runtime refused the sealed request ({status}): {}",
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| super::release::sanitize(&bytes))
        );
        let code = if code.is_empty() { "channel_error".to_owned() } else { code };
        let mut resp = error_response(status, "invalid_request_error", &code, &message);
        resp.headers_mut().insert(HEADER_UNAUTHENTICATED, HeaderValue::from_static("true"));
        return Ok(Outcome::Done(resp));
    }
    let ctype = content_type(&resp);
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    if ctype.starts_with("text/event-stream") {
        let reader = call.open_stream(status.as_u16());
        let mut out = (
            status,
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            Body::from_stream(relay(p.clone(), rt.clone(), reader, body.clone(), resp.into_body())),
        )
            .into_response();
        if let Some(v) = retry_after {
            out.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(Outcome::Done(out));
    }
    if !ctype.starts_with(chrysalis_proto::routes::SEALED_RESPONSE_MEDIA_TYPE) {
        return Err(Failure::Integrity(format!("{} answered with unexpected content type {ctype:?}", p.url)));
    }
    let sealed = http_body_util::Limited::new(resp.into_body(), ch::frame::MAX_RECORD_LEN + 4096)
        .collect()
        .await
        .map_err(|e| Failure::Unreachable(format!("reading the response from {}: {e}", p.url)))?
        .to_bytes();
    let (plain, receipt) = call
        .open_whole(rt, status.as_u16(), &sealed)
        .map_err(|e| Failure::Integrity(format!("the runtime's response failed authentication and was discarded: {e}")))?;
    p.save_receipt(rt, &receipt, body, &plain);
    let mut out = (status, [(header::CONTENT_TYPE, "application/json")], plain).into_response();
    if let Ok(v) = HeaderValue::from_str(&receipt.to_base64()) {
        out.headers_mut().insert(ch::HEADER_RECEIPT, v);
    }
    if let Some(v) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(Outcome::Done(out))
}

/// The client's event stream: plaintext as records open; at the end, the held `[DONE]` and a
/// comment with the receipt, or an error event if the stream was cut or tampered with.
fn relay(
    p: Arc<Proxy>,
    rt: Arc<AttestedRuntime>,
    reader: StreamReader,
    request: Bytes,
    upstream: hyper::body::Incoming,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    struct S {
        p: Arc<Proxy>,
        rt: Arc<AttestedRuntime>,
        reader: Option<StreamReader>,
        request: Bytes,
        seen: Vec<u8>,
        upstream: http_body_util::BodyDataStream<hyper::body::Incoming>,
    }
    let s = S { p, rt, reader: Some(reader), request, seen: Vec::new(), upstream: upstream.into_data_stream() };
    futures_util::stream::unfold(s, |mut s| async move {
        let reader = s.reader.as_mut()?;
        loop {
            let fail = |msg: String| {
                log::warn!("proxy: stream from {} discarded: {msg}", s.p.url);
                let e =
                    error_body("api_error", "channel_integrity", &format!("the runtime's stream failed authentication: {msg}"));
                Bytes::from(format!("data: {e}\n\n"))
            };
            match s.upstream.next().await {
                Some(Ok(bytes)) => match reader.push(&bytes) {
                    Ok(plain) if plain.is_empty() => continue,
                    Ok(plain) => {
                        if s.p.save_bodies {
                            s.seen.extend_from_slice(&plain);
                        }
                        return Some((Ok(Bytes::from(plain)), s));
                    }
                    Err(e) => {
                        let out = fail(e.to_string());
                        s.reader = None;
                        return Some((Ok(out), s));
                    }
                },
                Some(Err(e)) => {
                    let out = fail(format!("connection lost: {e}"));
                    s.reader = None;
                    return Some((Ok(out), s));
                }
                None => {
                    let reader = s.reader.take()?;
                    return match reader.finish(&s.rt) {
                        Ok((tail, receipt)) => {
                            s.seen.extend_from_slice(&tail);
                            s.p.save_receipt(&s.rt, &receipt, &s.request, &s.seen);
                            let mut out = tail;
                            out.extend_from_slice(format!(": {} {}\n\n", ch::HEADER_RECEIPT, receipt.to_base64()).as_bytes());
                            Some((Ok(Bytes::from(out)), s))
                        }
                        Err(e) => {
                            let out = fail(e.to_string());
                            Some((Ok(out), s))
                        }
                    };
                }
            }
        }
    })
}

async fn status(State(p): State<Arc<Proxy>>) -> Response {
    let pinned = p.pinned.lock().await;
    let body = match pinned.as_ref() {
        None => serde_json::json!({ "runtime": p.url, "attested": false }),
        Some(pin) => serde_json::json!({
            "runtime": p.url,
            "attested": true,
            "attested_s_ago": pin.at.elapsed().as_secs(),
            "policy": p.policy.display().to_string(),
            "event_log_digest": hex::encode(pin.runtime.log_digest),
            "public_key": hex::encode(pin.runtime.public_key),
            "receipt_key": hex::encode(pin.runtime.receipt_key),
            "launch_measurement": pin.runtime.launch_measurement.map(hex::encode),
            "bundle_header": pin.runtime.bundle_header.map(hex::encode),
            "evidence_file": pin.evidence_file.as_ref().map(|f| f.display().to_string()),
            "checks": pin.runtime.steps,
        }),
    };
    axum::Json(body).into_response()
}

/// The proxy's routes: `GET /chrysalis/status` (what is pinned), everything else forwarded.
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
            let _ = axum::serve(listener, router(proxy))
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
    })?;
    Ok(RunningProxy { addr, stop: Some(tx), thread: Some(thread) })
}

/// Run `attest proxy` in the foreground until Ctrl-C.
pub fn run(args: &ProxyArgs, verifier: Box<dyn EvidenceVerifier>) -> anyhow::Result<()> {
    let proxy = Arc::new(Proxy::new(args, verifier)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    rt.block_on(async move {
        // Attest once up front so that a bad runtime or policy shows before the first request.
        match proxy.runtime(None).await {
            Ok(r) => eprintln!(
                "attest proxy: {} verified under {} (log digest {}, launch measurement {})",
                proxy.url,
                proxy.policy.display(),
                hex::encode(r.log_digest),
                r.launch_measurement.map(hex::encode).unwrap_or_else(|| "unknown".into())
            ),
            Err(f) => eprintln!("attest proxy: WARNING: {f:?}; requests are refused until it verifies"),
        }
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        eprintln!("attest proxy: OpenAI-compatible API on http://{}/v1 -> {}", listener.local_addr()?, proxy.url);
        axum::serve(listener, router(proxy))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}

/// Where the receipts of a proxy go, for `--help` readers of the code: one
/// `<millis>-<seq>.receipt` (base64) and `.json` (what to run to verify it) per response,
/// and the `evidence-<nonce>.bin` it refers to.
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

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("http://10.0.0.5:8000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.authority.as_str(), u.base_path.as_str()), ("10.0.0.5:8000", ""));
        let u = Upstream::parse("http://runtime/prefix/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.authority.as_str(), u.base_path.as_str()), ("runtime:80", "/prefix"));
        assert!(Upstream::parse("https://x").is_err());
        assert!(Upstream::parse("x:1").is_err());
        assert!(Upstream::parse("http:///x").is_err());
    }
}
