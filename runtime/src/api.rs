//! The runtime's own HTTP endpoints, mounted next to the OpenAI-compatible inference routes:
//!
//! - `GET /v1/health`: boot timings, stage (waiting for key, serving, ...), TEE backend.
//! - `GET /v1/attestation?nonce=<hex>`: the evidence bundle for the verifier's nonce
//!   (postcard, `application/vnd.chrysalis.evidence`; format in `chrysalis_proto::evidence`).
//! - `POST /v1/key`: a postcard `KeyRelease` (HPKE-wrapped data key); answers when the model
//!   is unsealed and loaded, or with the reason it was refused.
//!
//! Request bodies and nonces are untrusted; errors are JSON `{"error": {"message", "type"}}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrysalis_proto::keyrelease::{KeyRelease, KeyReleaseError, MAX_KEY_RELEASE_LEN};
use chrysalis_proto::routes::{self, EVIDENCE_MEDIA_TYPE};
use serde::{Deserialize, Serialize};

use crate::boot::BootTimings;
use crate::session::{Session, SessionError};

/// State shared by the runtime's endpoints.
#[derive(Debug)]
pub struct RuntimeState {
    /// When each boot stage finished (seconds since kernel start).
    pub timings: BootTimings,
    /// The attested session.
    pub session: Arc<Session>,
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    boot: &'a BootTimings,
    #[serde(flatten)]
    session: crate::session::Status,
}

async fn health(State(state): State<Arc<RuntimeState>>) -> Response {
    let h = Health { status: "ok", version: env!("CARGO_PKG_VERSION"), boot: &state.timings, session: state.session.status() };
    Json(serde_json::to_value(h).unwrap_or_default()).into_response()
}

/// A JSON error in the OpenAI shape, with the status that fits.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "param": null, "code": null } });
    (status, Json(body)).into_response()
}

fn session_error(e: &SessionError) -> Response {
    let status = match e {
        SessionError::BadNonce(_) => StatusCode::BAD_REQUEST,
        SessionError::NoEvidence(_) | SessionError::NoBundle(_) => StatusCode::SERVICE_UNAVAILABLE,
        SessionError::Busy | SessionError::AlreadyServing(_) | SessionError::Stopped(_) => StatusCode::CONFLICT,
        SessionError::Renewal(_) => StatusCode::FORBIDDEN,
        SessionError::EvidenceBusy => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
            return r;
        }
        SessionError::TooManyNonces { retry_after_s } | SessionError::ClientNonces { retry_after_s } => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after_s));
            return r;
        }
        SessionError::Key(k) => match k {
            KeyReleaseError::AlreadyUnsealed | KeyReleaseError::ReplayedNonce(_) => StatusCode::CONFLICT,
            KeyReleaseError::StaleNonce { .. } => StatusCode::GONE,
            KeyReleaseError::UnknownNonce(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        },
        SessionError::Unseal(_) | SessionError::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
        #[allow(unreachable_patterns)]
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, "attestation_error", e.to_string())
}

/// A blocking task that did not finish. A `JoinError` shows the panic message, which may
/// quote the request: neither the answer nor the log carries it.
fn task_failed(what: &str, e: &tokio::task::JoinError) -> Response {
    let how = if e.is_panic() { "panicked" } else { "was cancelled" };
    log::error!("api: the {what} task {how}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("the {what} task failed; see the console log"))
}

#[derive(Deserialize)]
struct NonceQuery {
    nonce: Option<String>,
}

async fn attestation(
    State(state): State<Arc<RuntimeState>>,
    extensions: axum::http::Extensions,
    q: Result<Query<NonceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // The peer address, set by `serve::http::serve` for every connection.
    let client = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(crate::session::Client::Local, |c| crate::session::Client::of(c.0.ip()));
    let Some(hex_nonce) = q.ok().and_then(|Query(q)| q.nonce) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "missing query parameter nonce=<hex>".into());
    };
    let nonce = match hex::decode(&hex_nonce) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("bad nonce: not hex ({e})")),
    };
    let session = state.session.clone();
    match tokio::task::spawn_blocking(move || session.evidence(&nonce, client)).await {
        Ok(Ok(ev)) => ([(header::CONTENT_TYPE, EVIDENCE_MEDIA_TYPE)], ev.to_bytes()).into_response(),
        Ok(Err(e)) => {
            // A flood of nonces is refused cheaply; one console line each would not be.
            if matches!(e, SessionError::TooManyNonces { .. } | SessionError::ClientNonces { .. } | SessionError::EvidenceBusy) {
                log::debug!("attestation: {e}");
            } else {
                log::warn!("attestation: {e}");
            }
            session_error(&e)
        }
        Err(e) => task_failed("evidence", &e),
    }
}

async fn key(State(state): State<Arc<RuntimeState>>, body: Bytes) -> Response {
    let msg = match KeyRelease::from_bytes(&body) {
        Ok(m) => m,
        Err(e) => return session_error(&SessionError::Key(e)),
    };
    let session = state.session.clone();
    match tokio::task::spawn_blocking(move || session.release(&msg)).await {
        Ok(Ok(model)) => Json(serde_json::json!({ "status": "serving", "model": model })).into_response(),
        Ok(Err(e)) => {
            log::warn!("key release: {e}");
            session_error(&e)
        }
        Err(e) => task_failed("key", &e),
    }
}

/// Routes served by the runtime itself; a panicking handler answers 500
/// ([`crate::serve::panic_guard`]).
pub fn router(state: Arc<RuntimeState>) -> Router {
    let routes = Router::new()
        .route(routes::HEALTH, get(health))
        .route(routes::ATTESTATION, get(attestation))
        .route(routes::KEY, post(key).layer(DefaultBodyLimit::max(MAX_KEY_RELEASE_LEN)))
        .with_state(state);
    crate::serve::panic_guard::layer(routes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::session::fixture::{Fixture, nonce};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn app(f: &Fixture) -> Router {
        router(Arc::new(RuntimeState { timings: BootTimings::default(), session: f.session.clone() }))
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let req = Request::builder().method(method).uri(uri).body(Body::from(body)).unwrap();
        let r = app.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    async fn attest(app: &Router, n: &[u8]) -> (StatusCode, axum::http::HeaderMap) {
        let (status, headers, _) = call(app, "GET", &format!("/v1/attestation?nonce={}", hex::encode(n)), Vec::new()).await;
        (status, headers)
    }

    /// A key posted once the runtime serves gets 409 with a JSON error; health, and so the
    /// model in later receipts, stay as they were.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_posted_while_serving_gets_409_and_changes_nothing() {
        let f = Fixture::new("api-409");
        let app = app(&f);
        assert_eq!(attest(&app, &nonce(1)).await.0, StatusCode::OK);
        // Junk first: refused, and health shows nothing of it.
        let mut junk = f.owner_release(nonce(1));
        junk.ciphertext[0] ^= 1;
        let (status, _, body) = call(&app, "POST", "/v1/key", junk.to_bytes()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (_, _, h) = call(&app, "GET", "/v1/health", Vec::new()).await;
        assert_eq!((h["stage"]["state"].as_str(), h["last_error"].is_null()), (Some("waiting_for_key"), true), "{h}");
        // The owner's key.
        let (status, _, body) = call(&app, "POST", "/v1/key", f.owner_release(nonce(1)).to_bytes()).await;
        assert_eq!((status, body["model"].as_str()), (StatusCode::OK, Some("Test Model")), "{body}");
        for msg in [f.owner_release(nonce(1)), f.owner_release(nonce(7))] {
            let (status, _, body) = call(&app, "POST", "/v1/key", msg.to_bytes()).await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert!(body["error"]["message"].as_str().unwrap_or("").contains("already unsealed"), "{body}");
            let (_, _, h) = call(&app, "GET", "/v1/health", Vec::new()).await;
            assert_eq!(h["stage"], serde_json::json!({"state": "serving", "model": "Test Model"}), "{h}");
            assert!(h["last_error"].is_null(), "{h}");
        }
        assert_eq!(
            f.session
                .sign_receipt(crate::session::ReceiptRequest { target: "t".into(), id: [0; 16], sha384: [0; 48] }, 200, [0; 48])
                .body
                .model,
            "Test Model"
        );
    }

    /// A flood of 32-byte nonces gets 429 with Retry-After once the book is full, and the
    /// owner's key for the nonce issued before the flood still opens.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_attestation_flood_gets_429_and_the_owner_key_still_opens() {
        let f = Fixture::new("api-429");
        let app = app(&f);
        assert_eq!(attest(&app, &nonce(0)).await.0, StatusCode::OK);
        let mut statuses = Vec::new();
        for i in 1..=300 {
            let (status, headers) = attest(&app, &nonce(i)).await;
            if status == StatusCode::TOO_MANY_REQUESTS {
                let after: u64 = headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
                assert!((1..=300).contains(&after), "{after}");
            }
            statuses.push(status);
        }
        let capacity = chrysalis_proto::keyrelease::OnceNonces::<()>::CAPACITY;
        assert!(statuses[..capacity - 1].iter().all(|s| *s == StatusCode::OK));
        assert!(statuses[capacity - 1..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
        let (status, _, body) = call(&app, "POST", "/v1/key", f.owner_release(nonce(0)).to_bytes()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// /v1/health after a failed unseal shows the class only.
    #[tokio::test(flavor = "multi_thread")]
    async fn health_shows_the_error_class_not_the_details() {
        let f = Fixture::new("api-health");
        let app = app(&f);
        std::fs::write(&f.bundle_path, crate::session::fixture::sealed("Other", b"x", &f.key)).unwrap();
        assert_eq!(attest(&app, &nonce(1)).await.0, StatusCode::OK);
        let (status, _, body) = call(&app, "POST", "/v1/key", f.owner_release(nonce(1)).to_bytes()).await;
        // The owner, who posted the key, learns why.
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("changed since boot"), "{body}");
        let (_, _, h) = call(&app, "GET", "/v1/health", Vec::new()).await;
        assert_eq!(h["last_error"], "unseal_failed", "{h}");
        assert!(!h.to_string().contains("changed since boot"), "{h}");
    }
}
