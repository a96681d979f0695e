//! A panicking request handler answers 500 instead of taking PID 1 down.
//!
//! [`layer`] wraps a router so that a panic while a handler runs is caught, the client gets
//! `500 {"error": ...}` without the panic message, the console gets only the method and the
//! path, and the server goes on with the next request. Panic messages are never shown or
//! logged here: a handler's panic may quote the request (a prompt, a key).
//!
//! The runtime's panic hook powers the VM off on any other panic. It asks [`caught_here`]
//! first: a panic on a thread that is polling a guarded handler is about to be caught, so the
//! hook must neither power off nor print the payload. This needs `panic = "unwind"`, which the
//! image's release profile sets (`xtask/src/build.rs`, `RELEASE_PROFILE`).

use std::cell::Cell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use super::ApiError;

thread_local! {
    /// How many guarded handler polls are running on this thread (nested routers nest).
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

/// Whether a panic on this thread now will be caught by [`layer`] (for the panic hook).
pub fn caught_here() -> bool {
    GUARDED.with(|g| g.get() > 0)
}

/// Marks this thread as polling a guarded handler for as long as it lives, even if the
/// poll unwinds.
struct Marked;

impl Marked {
    fn enter() -> Self {
        GUARDED.with(|g| g.set(g.get().saturating_add(1)));
        Marked
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        GUARDED.with(|g| g.set(g.get().saturating_sub(1)));
    }
}

/// The handler's future, polled under `catch_unwind`: `Err` once it panicked.
struct Guarded {
    inner: Pin<Box<dyn Future<Output = Response> + Send>>,
}

impl Future for Guarded {
    type Output = Result<Response, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let _marked = Marked::enter();
        let inner = self.inner.as_mut();
        // The payload is dropped unread: it may quote the request.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_payload) => Poll::Ready(Err(())),
        }
    }
}

async fn guard(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(128).collect();
    match (Guarded { inner: Box::pin(next.run(req)) }).await {
        Ok(r) => r,
        Err(()) => {
            log::error!("api: {method} {path}: the handler panicked; answered 500");
            ApiError::internal().into_response()
        }
    }
}

/// `router` with every handler guarded (add it last, so it wraps the other layers).
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(middleware::from_fn(guard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt as _;

    async fn boom() -> &'static str {
        assert!(caught_here(), "the hook would power off");
        let secret = "SECRET-PROMPT-TEXT";
        panic!("handler failed on {secret}")
    }

    async fn call(app: &Router, path: &str) -> (StatusCode, String) {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap_or_else(|e| panic!("{e}"));
        let r = app.clone().oneshot(req).await.unwrap_or_else(|e| match e {});
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap_or_else(|e| panic!("{e}"));
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_keeps_serving() {
        let app = layer(Router::new().route("/boom", get(boom)).route("/ok", get(|| async { "fine" })));
        let (status, body) = call(&app, "/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["error"]["type"], "server_error", "{body}");
        assert!(!body.contains("SECRET") && !body.contains("panicked"), "{body}");
        assert_eq!(call(&app, "/ok").await, (StatusCode::OK, "fine".to_owned()));
        assert!(!caught_here(), "the mark is cleared after the panic");
        assert_eq!(call(&app, "/boom").await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(call(&app, "/ok").await.0, StatusCode::OK);
    }
}
