//! The OpenAI-compatible HTTP API (`/v1/models`, `/v1/completions`,
//! `/v1/chat/completions`, streaming as server-sent events) in front of the inference
//! batching engine, with a bounded request queue, body and header limits and cancellation when a
//! client goes away. `main` mounts [`router`] next to the runtime's own endpoints and
//! calls [`InferenceState::install`] once the model is unsealed.
//! Trusts nothing from clients; never logs prompts or completions (only sizes, counts,
//! status codes and timings).

mod error;
mod handlers;
pub mod http;
pub mod panic_guard;
mod types;

pub use error::ApiError;
pub use http::{HttpLimits, serve};

use crate::infer::Engine;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use chrysalis_proto::routes;
use std::sync::{Arc, RwLock};
use tokio::sync::Semaphore;

/// Limits of the inference API.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Requests that may wait beyond those the engine decodes together; more get 429 with
    /// `Retry-After`.
    pub queue_capacity: usize,
    /// Largest request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Completion budget when a completion request sets no `max_tokens` (OpenAI uses 16);
    /// chat requests default to the rest of the context window.
    pub default_completion_tokens: usize,
    /// Time allowed to receive a request body; a body that trickles in slower gets 408.
    pub body_timeout: std::time::Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8,
            max_body_bytes: 1 << 20,
            default_completion_tokens: 16,
            body_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Shared state of the inference API: the engine once unsealed, and the queue.
pub struct InferenceState {
    /// `None` until the model is unsealed. An `Arc` so a request keeps the engine it
    /// started with for its whole generation, without holding the lock.
    engine: RwLock<Option<Arc<Engine>>>,
    /// Requests admitted (generating + waiting): `queue_capacity` permits plus, once a
    /// model is installed, one per sequence its engine decodes together.
    admission: Arc<Semaphore>,
    config: ServeConfig,
    /// Set once the model was uninstalled (its key lease ended): why.
    stopped: std::sync::OnceLock<&'static str>,
}

impl std::fmt::Debug for InferenceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceState").field("loaded", &self.engine().is_some()).field("config", &self.config).finish()
    }
}

impl InferenceState {
    /// A state with no model yet (every inference request gets 503 until [`install`]).
    ///
    /// [`install`]: InferenceState::install
    pub fn new(config: ServeConfig) -> Self {
        Self {
            engine: RwLock::new(None),
            admission: Arc::new(Semaphore::new(config.queue_capacity)),
            config,
            stopped: std::sync::OnceLock::new(),
        }
    }

    /// Makes `engine` the served model (called once the weights are unsealed).
    pub fn install(&self, engine: Engine) {
        let mut slot = self.engine.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        log::info!("serve: model {} installed", engine.info().id);
        if slot.is_none() {
            self.admission.add_permits(engine.info().max_sequences);
        }
        *slot = Some(Arc::new(engine));
    }

    /// Stop serving: the engine is dropped once the generations running on it end (they
    /// hold it), new requests get 503 `model_stopped` naming `reason`, and the admission
    /// permits the engine added are withdrawn. Final: [`install`](Self::install) is not
    /// called again in this process.
    pub fn uninstall(&self, reason: &'static str) {
        let mut slot = self.engine.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(engine) = slot.take() {
            log::warn!("serve: model {} uninstalled ({reason})", engine.info().id);
            self.admission.forget_permits(engine.info().max_sequences);
        }
        let _ = self.stopped.set(reason);
    }

    /// Why the model is no longer served, once [`uninstall`](Self::uninstall)ed.
    pub fn stopped(&self) -> Option<&'static str> {
        self.stopped.get().copied()
    }

    /// The served engine, if unsealed.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The API limits.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }
}

/// The `/v1/models`, `/v1/completions` and `/v1/chat/completions` routes, with OpenAI-shaped
/// errors for unknown routes and methods; a panicking handler answers 500 ([`panic_guard`]).
pub fn router(state: Arc<InferenceState>) -> Router {
    let routes = Router::new()
        .route(routes::MODELS, get(handlers::list_models))
        .route(routes::MODEL, get(handlers::get_model))
        .route(routes::COMPLETIONS, post(handlers::completions))
        .route(routes::CHAT_COMPLETIONS, post(handlers::chat_completions))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|uri: axum::http::Uri| async move { ApiError::not_found(uri.path()) })
        // The handlers read the body themselves with the configured limit.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(handlers::access_log))
        .with_state(state);
    panic_guard::layer(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> std::net::SocketAddr {
        let state = Arc::new(InferenceState::new(ServeConfig { max_body_bytes: 1024, ..ServeConfig::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(serve(listener, router(state), HttpLimits::default(), std::future::pending()));
        addr
    }

    /// Sends raw bytes, returns (status, body).
    async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let _ = s.write_all(req).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn limits_and_errors_without_a_model() {
        let addr = start().await;
        let (status, body) = raw(addr, b"GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status, 503);
        assert!(body.contains("model_not_ready"), "{body}");
        let (status, body) = raw(addr, b"GET /v2/nothing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status, 404);
        assert!(body.contains("invalid_request_error"), "{body}");
        let (status, _) = raw(addr, b"DELETE /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status, 405);
        // Oversized headers: hyper refuses them before any handler runs.
        let big = format!("GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
        let (status, _) = raw(addr, big.as_bytes()).await;
        assert_eq!(status, 431);
        let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (status, _) = raw(addr, format!("GET /v1/models HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes()).await;
        assert_eq!(status, 431);
    }

    #[tokio::test]
    async fn body_limit_applies_once_a_model_is_installed_or_not() {
        // Without a model the 503 comes first: clients learn the real reason.
        let addr = start().await;
        let body = "x".repeat(4096);
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, _) = raw(addr, req.as_bytes()).await;
        assert_eq!(status, 503);
    }

    /// Before unsealing, a POST's 503 leaves a kept-alive connection usable: the body is read
    /// first, so hyper does not close the connection under a client that reuses it. (The body
    /// arrives after the headers, as from a client that writes them separately.)
    #[tokio::test]
    async fn a_503_before_unsealing_keeps_the_connection_alive() {
        let addr = start().await;
        let body = r#"{"model":"m","prompt":"hi"}"#;
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        s.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // The body, then a second request on the same connection asking to close it.
        let rest = format!("{body}GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(rest.as_bytes()).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(text.matches("HTTP/1.1 503").count(), 2, "both requests answered on one connection: {text}");
    }
}
