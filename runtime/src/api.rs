//! The runtime's own HTTP endpoints (health now; attestation and key release join them),
//! mounted next to the OpenAI-compatible inference routes.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::boot::BootTimings;

/// State shared by the runtime's endpoints.
#[derive(Debug)]
pub struct RuntimeState {
    /// When each boot stage finished (seconds since kernel start).
    pub timings: BootTimings,
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    boot: &'a BootTimings,
}

async fn health(state: axum::extract::State<Arc<RuntimeState>>) -> Json<serde_json::Value> {
    let h = Health { status: "ok", version: env!("CARGO_PKG_VERSION"), boot: &state.timings };
    Json(serde_json::to_value(h).unwrap_or_default())
}

/// Routes served by the runtime itself.
pub fn router(state: Arc<RuntimeState>) -> Router {
    Router::new().route("/v1/health", get(health)).with_state(state)
}
