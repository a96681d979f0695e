//! Pull-mode key release: when the (measured) configuration names a key-release service
//! (`chrysalis.key_url`), the runtime asks it for a challenge, answers with evidence for
//! that nonce, and receives the HPKE-wrapped data key — the same checks as push mode, run by
//! the owner's `attest serve-keys`. The service and the network are untrusted: the key can
//! only be opened by this runtime's private key under this boot's transcript.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrysalis_proto::keyrelease::{KeyRelease, MAX_KEY_RELEASE_LEN};
use chrysalis_proto::routes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::session::{Session, Stage};

/// Largest response accepted from the key service.
const MAX_RESPONSE: usize = 64 * 1024;

/// Ask the key service until the model is served. Failures are logged (once per distinct
/// reason) and retried with backoff: the owner may still be starting the service or
/// updating the policy.
pub async fn run(key_url: String, session: Arc<Session>) {
    let mut last = String::new();
    let mut delay = Duration::from_millis(500);
    loop {
        if matches!(session.status().stage, Stage::Serving { .. } | Stage::NoBundle { .. }) {
            return;
        }
        match attempt(&key_url, &session).await {
            Ok(model) => {
                log::info!("pull: key released by {key_url}; serving {model}");
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
        bail!("{method} {path}: {status}: {}", String::from_utf8_lossy(&bytes).trim());
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
