//! The HTTP/1.1 server loop with connection-level limits axum's `serve` does not expose:
//! header buffer size and count, a header read timeout, and a cap on open connections.
//! Trusts nothing: bytes come from the network. Oversized headers make hyper answer 431
//! and close the connection.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Read buffer per connection, bounding the request line plus headers (hyper's minimum
    /// is 8 KiB).
    pub max_header_bytes: usize,
    /// Most header fields per request.
    pub max_headers: usize,
    /// Time allowed to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Open connections; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_header_bytes: 16 * 1024, max_headers: 64, header_read_timeout: Duration::from_secs(10), max_connections: 256 }
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    log::warn!("serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                log::debug!("serve: connection ended: {e}");
            }
        });
    }
}
