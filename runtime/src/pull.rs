//! Pull-mode key release: when the (measured) configuration names a key-release service
//! (`chrysalis.key_url`), the runtime asks it for a challenge, answers with evidence for
//! that nonce, and receives the HPKE-wrapped data key — the same checks as push mode, run by
//! the owner's `attest serve-keys`. The service and the network are untrusted: the key can
//! only be opened by this runtime's private key under this boot's transcript.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrysalis_proto::keyrelease::{KeyRelease, MAX_KEY_RELEASE_LEN, Nonce, fresh_nonce, renewal_nonce};
use chrysalis_proto::routes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::session::{Session, Stage, StopReason};

/// Largest response accepted from the key service.
const MAX_RESPONSE: usize = 64 * 1024;

/// Ask the key service until the model is served, then, on a lease, keep renewing
/// (`renew_lease`). Failures are logged (once per distinct reason) and retried with
/// backoff: the owner may still be starting the service or updating the policy.
pub async fn run(key_url: String, session: Arc<Session>, lease: Option<Duration>) {
    let mut last = String::new();
    let mut delay = Duration::from_millis(500);
    loop {
        if matches!(session.status().stage, Stage::Serving { .. } | Stage::NoBundle { .. } | Stage::Stopped { .. }) {
            return;
        }
        match attempt(&key_url, &session).await {
            Ok(model) => {
                log::info!("pull: key released by {key_url}; serving {model}");
                if let Some(lease) = lease {
                    renew_lease(&key_url, &session, lease).await;
                }
                return;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last {
                    log::warn!("pull: {msg} (retrying)");
                    last = msg;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn attempt(key_url: &str, session: &Arc<Session>) -> Result<String> {
    let challenge = http(key_url, "GET", routes::CHALLENGE, Vec::new()).await?;
    let text = std::str::from_utf8(&challenge).context("challenge is not text")?.trim();
    let nonce = hex::decode(text).context("challenge is not hex")?;
    let s = session.clone();
    let evidence = tokio::task::spawn_blocking(move || s.evidence(&nonce, crate::session::Client::Local)).await??;
    let answer = http(key_url, "POST", routes::RELEASE, evidence.to_bytes()).await?;
    if answer.len() > MAX_KEY_RELEASE_LEN {
        bail!("key service answered {} bytes, more than a key release", answer.len());
    }
    let msg = KeyRelease::from_bytes(&answer).context("key service answer")?;
    let s = session.clone();
    Ok(tokio::task::spawn_blocking(move || s.release(&msg)).await??)
}

/// Keep the key lease: renew every third of `lease`, and stop serving when the key service
/// refuses a renewal (the owner revoked this node or its image: 403) or when no renewal
/// succeeded for a whole `lease` (the service is unreachable, or the host withholds it).
/// Other failures (network, a used or stale challenge) are retried, sooner than the period.
async fn renew_lease(key_url: &str, session: &Arc<Session>, lease: Duration) {
    let period = lease / 3;
    let mut expires = tokio::time::Instant::now() + lease;
    let mut wait = period;
    let mut last = String::new();
    loop {
        tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(expires)).await;
        if tokio::time::Instant::now() >= expires {
            session.stop(&StopReason::LeaseExpired { lease_s: u32::try_from(lease.as_secs()).unwrap_or(u32::MAX) });
            return;
        }
        // Bounded by what is left of the lease, so a stalled service cannot keep it alive.
        let left = expires.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, renew_once(key_url, session)).await {
            Ok(Ok(true)) => {
                expires = tokio::time::Instant::now() + lease;
                wait = period;
                if !last.is_empty() {
                    log::info!("lease: renewed by {key_url} again");
                    last.clear();
                }
            }
            // Not serving on a lease any more (stopped elsewhere): nothing to renew.
            Ok(Ok(false)) => return,
            Ok(Err(Renewal::Refused(why))) => {
                session.stop(&StopReason::RenewalRefused(why));
                return;
            }
            Ok(Err(Renewal::Failed(e))) => {
                let msg = format!("{e:#}");
                if msg != last {
                    log::warn!("lease: renewal failed: {msg} (retrying; the lease ends in {} s)", left.as_secs());
                    last = msg;
                }
                wait = (period / 4).max(Duration::from_millis(500));
            }
            Err(_) => wait = Duration::ZERO,
        }
        if matches!(session.status().stage, Stage::Stopped { .. }) {
            return;
        }
    }
}

/// Why one renewal did not renew.
enum Renewal {
    /// The key service answered 403: it will not release the key to this runtime any more.
    Refused(String),
    /// Anything else; worth retrying.
    Failed(anyhow::Error),
}

/// One renewal: a challenge bound to a fresh random `bind` (so that a replayed old challenge
/// and its answer cannot renew), evidence for it, and a key release that must open to the
/// key the model was unsealed with.
async fn renew_once(key_url: &str, session: &Arc<Session>) -> Result<bool, Renewal> {
    let bind = fresh_nonce().map_err(|e| Renewal::Failed(e.into()))?;
    let path = format!("{}?bind={}", routes::CHALLENGE, hex::encode(bind));
    let text = http(key_url, "GET", &path, Vec::new()).await.map_err(classify)?;
    let text = std::str::from_utf8(&text).map_err(|_| Renewal::Failed(anyhow::anyhow!("challenge is not text")))?;
    let nonce = parse_renewal_challenge(text, &bind).map_err(Renewal::Failed)?;
    let s = session.clone();
    let evidence = tokio::task::spawn_blocking(move || s.evidence(&nonce, crate::session::Client::Local))
        .await
        .map_err(|e| Renewal::Failed(e.into()))?
        .map_err(|e| Renewal::Failed(e.into()))?;
    let answer = http(key_url, "POST", routes::RELEASE, evidence.to_bytes()).await.map_err(classify)?;
    let msg =
        KeyRelease::from_bytes(&answer).map_err(|e| Renewal::Failed(anyhow::Error::from(e).context("key service answer")))?;
    session.renew(&nonce, &msg).map_err(|e| Renewal::Failed(e.into()))
}

/// `<nonce hex> <salt hex>`, where the nonce must be `renewal_nonce(salt, bind)`.
fn parse_renewal_challenge(text: &str, bind: &Nonce) -> Result<Nonce> {
    let (nonce, salt) = text.trim().split_once(' ').context("renewal challenge is not `<nonce> <salt>`")?;
    let decode = |h: &str| -> Result<Nonce> {
        hex::decode(h).ok().and_then(|v| Nonce::try_from(v.as_slice()).ok()).context("renewal challenge: not 32 bytes of hex")
    };
    let (nonce, salt) = (decode(nonce)?, decode(salt)?);
    if nonce != renewal_nonce(&salt, bind) {
        bail!("renewal challenge is not bound to this renewal (nonce != renewal_nonce(salt, bind)): refused as a replay");
    }
    Ok(nonce)
}

/// A 403 from the key service is its refusal; everything else may pass.
fn classify(e: anyhow::Error) -> Renewal {
    match e.downcast_ref::<StatusError>() {
        Some(s) if s.status == hyper::StatusCode::FORBIDDEN => Renewal::Refused(e.to_string()),
        _ => Renewal::Failed(e),
    }
}

/// The most one request to the key service may take, the answer's body included: neither the
/// service nor anyone on the path can hold pull mode by stalling in the middle of an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 request; non-2xx statuses become errors carrying the (bounded) body.
async fn http(base: &str, method: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>> {
    request(base, method, path, body, REQUEST_TIMEOUT).await
}

async fn request(base: &str, method: &str, path: &str, body: Vec<u8>, limit: Duration) -> Result<Vec<u8>> {
    let authority = base.strip_prefix("http://").context("key_url must start with http://")?;
    let stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(authority))
        .await
        .with_context(|| format!("connecting to {authority}: timed out"))?
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, routes::EVIDENCE_MEDIA_TYPE)
        .body(Full::new(Bytes::from(body)))?;
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?
            .to_bytes();
        anyhow::Ok((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(limit, exchange)
        .await
        .with_context(|| format!("{method} {path}: no complete answer within {} s", limit.as_secs_f64()))??;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&bytes).trim().to_owned();
        return Err(anyhow::Error::new(StatusError { status }).context(format!("{method} {path}: {status}: {body}")));
    }
    Ok(bytes.to_vec())
}

/// A non-2xx answer of the key service (the error's context carries its body).
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}")]
struct StatusError {
    status: hyper::StatusCode,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use chrysalis_proto::evidence::Evidence;
    use chrysalis_proto::keyrelease::{Transcript, wrap_key};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::session::fixture::{Fixture, nonce};

    #[test]
    fn renewal_challenges_must_be_bound_to_our_bind() {
        let (salt, bind) = ([1u8; 32], [2u8; 32]);
        let good = format!("{} {}\n", hex::encode(renewal_nonce(&salt, &bind)), hex::encode(salt));
        assert_eq!(parse_renewal_challenge(&good, &bind).unwrap(), renewal_nonce(&salt, &bind));
        // The host replays a challenge it saw for an earlier renewal (another bind).
        let old = format!("{} {}", hex::encode(renewal_nonce(&salt, &[9; 32])), hex::encode(salt));
        assert!(parse_renewal_challenge(&old, &bind).unwrap_err().to_string().contains("refused as a replay"));
        for bad in ["", "abcd", &hex::encode(salt)] {
            assert!(parse_renewal_challenge(bad, &bind).is_err(), "{bad:?}");
        }
    }

    /// A key service for the fixture's key: renews until `revoked`, then answers 403.
    async fn key_service(f: &Fixture, revoked: Arc<AtomicBool>) -> String {
        use axum::extract::{Query, State};
        use axum::http::StatusCode;
        use axum::routing::{get, post};
        #[derive(serde::Deserialize)]
        struct Q {
            bind: String,
        }
        let state = (Arc::new(chrysalis_proto::seal::DataKey::from_bytes(*f.key.as_bytes())), f.public_key, revoked);
        type St = (Arc<chrysalis_proto::seal::DataKey>, [u8; 32], Arc<AtomicBool>);
        let app = axum::Router::new()
            .route(
                routes::CHALLENGE,
                get(|Query(q): Query<Q>| async move {
                    let bind: Nonce = hex::decode(q.bind).unwrap().try_into().unwrap();
                    let salt = fresh_nonce().unwrap();
                    format!("{} {}", hex::encode(renewal_nonce(&salt, &bind)), hex::encode(salt))
                }),
            )
            .route(
                routes::RELEASE,
                post(|State((key, pk, revoked)): State<St>, body: axum::body::Bytes| async move {
                    if revoked.load(Ordering::SeqCst) {
                        return (StatusCode::FORBIDDEN, b"refused: revoked: runtime key is revoked".to_vec());
                    }
                    let ev = Evidence::from_bytes(&body).unwrap();
                    let n: Nonce = ev.nonce.as_slice().try_into().unwrap();
                    let w = wrap_key(&key, &pk, &Transcript::for_log(&n, &ev.event_log)).unwrap();
                    (StatusCode::OK, KeyRelease::new(n, &w).to_bytes())
                }),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// The lease is renewed while the service renews; once the owner revokes, the runtime
    /// stops serving at its next renewal (every third of the lease), within the lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_lease_stops_serving_within_a_renewal_period() {
        let f = Fixture::on_lease("pull-lease");
        f.session.evidence(&nonce(1), crate::session::Client::Local).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        let revoked = Arc::new(AtomicBool::new(false));
        let base = key_service(&f, revoked.clone()).await;
        let lease = Duration::from_secs(3);
        let task = tokio::spawn(renew_lease_owned(base, f.session.clone(), lease));
        // Two renewal periods pass: still serving.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(f.session.status().stage, Stage::Serving { model: "Test Model".into() });
        revoked.store(true, Ordering::SeqCst);
        let at = std::time::Instant::now();
        tokio::time::timeout(lease, task).await.expect("stops within the lease").unwrap();
        let took = at.elapsed();
        assert_eq!(f.session.status().stage, Stage::Stopped { reason: "renewal_refused" });
        eprintln!("stopped {took:?} after revocation (lease {lease:?}, renewal every {:?})", lease / 3);
    }

    /// With the service unreachable, the lease runs out and the runtime stops.
    #[tokio::test]
    async fn an_unreachable_service_lets_the_lease_expire() {
        let f = Fixture::on_lease("pull-expire");
        f.session.evidence(&nonce(1), crate::session::Client::Local).unwrap();
        f.session.release(&f.owner_release(nonce(1))).unwrap();
        // A port nothing listens on.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let at = std::time::Instant::now();
        renew_lease(&base, &f.session, Duration::from_secs(3)).await;
        assert_eq!(f.session.status().stage, Stage::Stopped { reason: "lease_expired" });
        assert!(at.elapsed() >= Duration::from_secs(3), "{:?}", at.elapsed());
    }

    async fn renew_lease_owned(base: String, session: Arc<Session>, lease: Duration) {
        renew_lease(&base, &session, lease).await;
    }

    /// A key service that sends its headers and then stalls in the body is given up on at
    /// the deadline, with a message saying so.
    #[tokio::test]
    async fn a_stalled_answer_body_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = request(&base, "GET", routes::CHALLENGE, Vec::new(), Duration::from_millis(300)).await.unwrap_err();
        assert!(e.to_string().contains("no complete answer within 0.3 s"), "{e:#}");
        server.abort();
    }
}
