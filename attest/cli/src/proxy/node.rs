//! One upstream runtime ("node") and its health, and the fleet of them.
//!
//! A node gets traffic only while it is *in rotation*: attested under the policy (its own
//! keys pinned) and not taken out since. Anything that casts doubt on it — a failed or
//! refused attestation, a connection failure, an answer that fails authentication, a 421
//! `channel_key_unknown` (it restarted, or someone on the path says so) — takes it out
//! (the circuit opens), and only a new attestation, retried with backoff, puts it back. A
//! node whose key or event log changed is therefore always re-attested before it gets
//! traffic again: its old key is unpinned the moment it is taken out.
//!
//! The fleet is a fixed `--url` (a fleet of one) or an `--upstreams` file, re-read when it
//! changes: new nodes are attested before they get traffic; removed nodes get no new
//! requests, and the ones they are answering finish (each holds its node).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::header;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use chrysalis_proto::channel::receipt::launch_measurement;
use chrysalis_proto::evidence::{Evidence, MAX_EVIDENCE_LEN};
use chrysalis_proto::keyrelease::fresh_nonce;
use chrysalis_proto::routes;
use chrysalis_verify::attested::{AttestedRuntime, Challenge, EvidenceVerifier, attest_runtime};

use super::Failure;

/// The shortest time between attestations that a node's (unauthenticated) "key unknown"
/// answer can trigger.
pub const MIN_REATTEST_ON_KEY_UNKNOWN: Duration = Duration::from_secs(10);

/// First wait before re-attesting a node that failed; doubled on each further failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between attempts to re-attest a failing node.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A runtime's address, split for a raw HTTP/1.1 client.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub authority: String,
    pub base_path: String,
}

impl Upstream {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
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

/// What every node shares: the policy's verifier and the limits.
pub struct Settings {
    pub policy: PathBuf,
    pub verifier: Arc<dyn EvidenceVerifier>,
    pub reattest: Duration,
    pub timeout: Duration,
}

/// A node's attested keys and when they were pinned.
pub struct Pinned {
    pub runtime: Arc<AttestedRuntime>,
    pub at: Instant,
}

#[derive(Default)]
struct Health {
    pinned: Option<Pinned>,
    /// Out of rotation until a new attestation; none may be tried before this instant.
    out_until: Option<Instant>,
    /// Consecutive failures (for the backoff).
    failures: u32,
    last_error: Option<Failure>,
    /// The launch measurement the node last claimed (read before verification: named in
    /// `/status` and the logs when its evidence is refused).
    claimed_measurement: Option<[u8; 48]>,
    /// Keys of the last successful attestation, to log a change.
    last_keys: Option<([u8; 32], [u8; 48])>,
}

/// One upstream runtime.
pub struct Node {
    pub url: String,
    pub upstream: Upstream,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
    attesting: tokio::sync::Mutex<()>,
}

/// One request on a node: counted in its in-flight number until dropped.
pub struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

type Upstreamed = hyper::Response<hyper::body::Incoming>;

impl Node {
    pub fn new(url: &str) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Node {
            upstream: Upstream::parse(url)?,
            url: url.trim_end_matches('/').to_owned(),
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
            attesting: tokio::sync::Mutex::new(()),
        }))
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Count a request on this node until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Attested and not taken out since.
    pub fn routable(&self) -> bool {
        let h = self.health();
        h.pinned.is_some() && h.out_until.is_none()
    }

    /// Out of rotation and its backoff is over: attest it now.
    fn due(&self, now: Instant) -> bool {
        let h = self.health();
        h.out_until.map_or(h.pinned.is_none(), |t| now >= t)
    }

    /// Pinned so long ago that it must be attested again before more traffic.
    fn stale(&self, reattest: Duration) -> bool {
        self.health().pinned.as_ref().is_some_and(|p| p.at.elapsed() >= reattest)
    }

    pub fn last_error(&self) -> Option<Failure> {
        self.health().last_error.clone()
    }

    /// Take the node out of rotation for `why`: its keys are unpinned and it is re-attested
    /// after a backoff (or, for a "key unknown", no sooner than allowed).
    pub fn take_out(&self, why: Failure) {
        let mut h = self.health();
        let wait = BACKOFF_FIRST.saturating_mul(1 << h.failures.min(6)).min(BACKOFF_MAX);
        h.failures = h.failures.saturating_add(1);
        self.open(&mut h, Instant::now() + wait, why);
    }

    fn open(&self, h: &mut Health, until: Instant, why: Failure) {
        if h.out_until.is_none() {
            log::warn!("proxy: node {} taken out of rotation: {}", self.url, why.message());
        }
        h.pinned = None;
        h.out_until = Some(until);
        h.last_error = Some(why);
    }

    /// The node answered that it does not know the key `rt` it was attested with: it
    /// restarted, or someone on the path says so. That answer is plaintext anyone on the path
    /// can forge, so the node is re-attested on it at most once every
    /// [`MIN_REATTEST_ON_KEY_UNKNOWN`]: within that time of its last attestation it stays in
    /// rotation and only this request goes elsewhere (`Err`); after it, the node is taken
    /// out, to be attested again at once (`Ok`). Either way nothing was answered under the
    /// old key.
    pub fn key_unknown(&self, rt: &AttestedRuntime) -> Result<Failure, Failure> {
        let mut h = self.health();
        let Some(p) = h.pinned.as_ref().filter(|p| p.runtime.log_digest == rt.log_digest) else {
            // Re-attested meanwhile: the new pin may be tried.
            return Ok(Failure::Unreachable(format!("{} no longer has the key it was attested with", self.url)));
        };
        let age = p.at.elapsed();
        if age < MIN_REATTEST_ON_KEY_UNKNOWN {
            return Err(Failure::Unreachable(format!(
                "{} says it no longer has the key attested {} s ago; that answer is unauthenticated, so the proxy \
                 re-attests on it at most once every {} s: retry later",
                self.url,
                age.as_secs(),
                MIN_REATTEST_ON_KEY_UNKNOWN.as_secs()
            )));
        }
        let why = Failure::Unreachable(format!("{} no longer has the key it was attested with", self.url));
        self.open(&mut h, Instant::now(), why.clone());
        Ok(why)
    }

    /// The pinned runtime for a request: re-attested first when stale. Fails with the reason
    /// the node is out of rotation.
    pub async fn runtime(self: &Arc<Self>, s: &Settings) -> Result<Arc<AttestedRuntime>, Failure> {
        if self.stale(s.reattest) {
            self.attest(s).await;
        }
        let h = self.health();
        match (&h.pinned, h.out_until) {
            (Some(p), None) => Ok(p.runtime.clone()),
            _ => Err(h.last_error.clone().unwrap_or_else(|| Failure::Unreachable(format!("{} is not attested yet", self.url)))),
        }
    }

    /// Attest the node if it is still due (or stale) once the attestation lock is ours: a
    /// node is attested by one task at a time, and the others see its result.
    pub async fn attest(self: &Arc<Self>, s: &Settings) {
        let _one = self.attesting.lock().await;
        if !self.due(Instant::now()) && !self.stale(s.reattest) {
            return;
        }
        match self.fetch_and_verify(s).await {
            Ok(rt) => {
                let mut h = self.health();
                let keys = (rt.public_key, rt.log_digest);
                match h.last_keys {
                    Some(old) if old != keys => log::warn!(
                        "proxy: node {} changed its key or event log (restarted?): key {} -> {}, log digest {} -> {}; \
                         the new ones verified under {}",
                        self.url,
                        hex::encode(&old.0[..8]),
                        hex::encode(&keys.0[..8]),
                        hex::encode(&old.1[..8]),
                        hex::encode(&keys.1[..8]),
                        s.policy.display()
                    ),
                    _ => {}
                }
                if h.out_until.is_some() {
                    log::info!("proxy: node {} back in rotation", self.url);
                }
                h.last_keys = Some(keys);
                h.claimed_measurement = rt.launch_measurement;
                h.pinned = Some(Pinned { runtime: rt, at: Instant::now() });
                h.out_until = None;
                h.failures = 0;
            }
            Err(f) => self.take_out(f),
        }
    }

    /// Open a connection and send `req` (headers awaited at most `s.timeout`).
    pub async fn send(&self, s: &Settings, req: hyper::Request<Full<Bytes>>) -> Result<Upstreamed, Failure> {
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
        tokio::time::timeout(s.timeout, sender.send_request(req))
            .await
            .map_err(|_| Failure::Unreachable(format!("{} did not answer within {} s", self.url, s.timeout.as_secs())))?
            .map_err(|e| unreachable("request to", &e))
    }

    /// Fetch fresh evidence and verify it; the runtime to pin on success.
    async fn fetch_and_verify(&self, s: &Settings) -> Result<Arc<AttestedRuntime>, Failure> {
        let nonce = fresh_nonce().map_err(|e| Failure::Unreachable(e.to_string()))?;
        let issued_at = SystemTime::now();
        let uri = format!("{}{}?nonce={}", self.upstream.base_path, routes::ATTESTATION, hex::encode(nonce));
        let req = hyper::Request::get(uri)
            .header(header::HOST, &self.upstream.authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let resp = self.send(s, req).await?;
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
                crate::release::sanitize(&body)
            )));
        }
        let evidence = Evidence::from_bytes(&body)
            .map_err(|e| Failure::Refused(format!("refusing to forward: the runtime at {} sent bad evidence: {e}", self.url)))?;
        let claimed = launch_measurement(&evidence.platform);
        self.health().claimed_measurement = claimed;
        let verifier = s.verifier.clone();
        let verified = tokio::task::spawn_blocking(move || {
            attest_runtime(evidence, Challenge::issued(&nonce, issued_at), verifier.as_ref())
        })
        .await
        .map_err(|e| Failure::Unreachable(format!("verification task failed: {e}")))?;
        match verified {
            Ok(rt) => {
                log::info!(
                    "proxy: {} verified under {}: log digest {}, key {}, launch measurement {}",
                    self.url,
                    s.policy.display(),
                    hex::encode(&rt.log_digest[..8]),
                    hex::encode(&rt.public_key[..8]),
                    rt.launch_measurement.map_or_else(|| "unknown".into(), hex::encode)
                );
                Ok(Arc::new(rt))
            }
            Err(e) => {
                let msg = format!(
                    "refusing to forward: the runtime at {} (claimed launch measurement {}) failed verification under \
                     policy {}: {e}",
                    self.url,
                    claimed.map_or_else(|| "unknown".into(), hex::encode),
                    s.policy.display()
                );
                log::warn!("proxy: {msg}");
                Err(Failure::Refused(msg))
            }
        }
    }

    /// The node as `/chrysalis/status` shows it.
    pub fn status(&self) -> serde_json::Value {
        let h = self.health();
        let state = match (&h.pinned, h.out_until) {
            (Some(_), None) => "in_rotation",
            (None, None) => "attesting",
            (_, Some(_)) => "out",
        };
        let mut v = serde_json::json!({
            "url": self.url,
            "state": state,
            "attested": h.pinned.is_some() && h.out_until.is_none(),
            "in_flight": self.in_flight(),
            "consecutive_failures": h.failures,
            "retry_in_s": h.out_until.map(|t| t.saturating_duration_since(Instant::now()).as_secs()),
            "last_error": h.last_error.as_ref().map(Failure::message),
            "launch_measurement": h.claimed_measurement.map(hex::encode),
        });
        if let Some(p) = &h.pinned {
            let rt = &p.runtime;
            let extra = serde_json::json!({
                "attested_s_ago": p.at.elapsed().as_secs(),
                "event_log_digest": hex::encode(rt.log_digest),
                "public_key": hex::encode(rt.public_key),
                "receipt_key": hex::encode(rt.receipt_key),
                "launch_measurement": rt.launch_measurement.map(hex::encode),
                "bundle_header": rt.bundle_header.map(hex::encode),
                "checks": rt.steps,
            });
            if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
        }
        v
    }
}

/// Where the list of nodes comes from.
enum Source {
    /// `--url`: a fleet of one, for good.
    Fixed,
    /// `--upstreams FILE`, and the modification time of the version read last.
    File { path: PathBuf, seen: Mutex<Option<SystemTime>> },
}

/// The nodes requests may go to.
pub struct Fleet {
    nodes: RwLock<Vec<Arc<Node>>>,
    source: Source,
}

/// The URLs of an upstreams file: one per line; blank lines and `#` comments ignored.
pub fn parse_upstreams(text: &str, path: &Path) -> anyhow::Result<Vec<String>> {
    let mut urls: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let url = line.split('#').next().unwrap_or_default().trim().trim_end_matches('/');
        if url.is_empty() {
            continue;
        }
        Upstream::parse(url).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        if !urls.iter().any(|u| u == url) {
            urls.push(url.to_owned());
        }
    }
    if urls.is_empty() {
        bail!("{}: no upstream URLs (one http://host:port per line)", path.display());
    }
    Ok(urls)
}

impl Fleet {
    /// A fleet of one node.
    pub fn single(url: &str) -> anyhow::Result<Self> {
        Ok(Fleet { nodes: RwLock::new(vec![Node::new(url)?]), source: Source::Fixed })
    }

    /// The fleet an upstreams file lists.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let f = Fleet { nodes: RwLock::new(Vec::new()), source: Source::File { path: path.to_owned(), seen: Mutex::new(None) } };
        f.reload()?;
        Ok(f)
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Re-read the upstreams file if it changed since it was read last (or `force`). A file
    /// that does not parse leaves the fleet as it was.
    pub fn reload_if_changed(&self, force: bool) {
        let Source::File { path, seen } = &self.source else { return };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let changed = *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) != mtime;
        if (changed || force)
            && let Err(e) = self.reload()
        {
            log::error!("proxy: keeping the current upstreams: {e:#}");
        }
    }

    fn reload(&self) -> anyhow::Result<()> {
        let Source::File { path, seen } = &self.source else { return Ok(()) };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = mtime;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading upstreams {}", path.display()))?;
        let urls = parse_upstreams(&text, path)?;
        let mut nodes = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Vec::with_capacity(urls.len());
        for url in &urls {
            match nodes.iter().find(|n| &n.url == url) {
                Some(n) => next.push(n.clone()),
                None => {
                    log::info!("proxy: node {url} added from {}; attesting it before it gets traffic", path.display());
                    next.push(Node::new(url)?);
                }
            }
        }
        for gone in nodes.iter().filter(|n| !urls.contains(&n.url)) {
            log::info!(
                "proxy: node {} removed from {}; draining its {} request(s) in flight",
                gone.url,
                path.display(),
                gone.in_flight()
            );
        }
        *nodes = next;
        Ok(())
    }

    /// Attest, concurrently, every node that is due (out and past its backoff, never
    /// attested, or stale); returns when all are done.
    pub async fn attest_due(&self, s: &Arc<Settings>) {
        let now = Instant::now();
        let due: Vec<_> = self.nodes().into_iter().filter(|n| n.due(now) || n.stale(s.reattest)).collect();
        let tasks: Vec<_> = due
            .into_iter()
            .map(|n| {
                let s = s.clone();
                tokio::spawn(async move { n.attest(&s).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn upstreams_files() {
        let p = Path::new("up.txt");
        let urls = parse_upstreams("# fleet\nhttp://a:1\n\n  http://b:2/  # second\nhttp://a:1\n", p).unwrap_or_default();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
        let e = parse_upstreams("http://a:1\nhttps://b:2\n", p).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("up.txt line 2") && e.contains("use http://"), "{e}");
        assert!(parse_upstreams("# nothing\n", p).is_err());
    }
}
