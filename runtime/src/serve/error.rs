//! API errors in OpenAI's JSON shape (`{"error": {"message", "type", "param", "code"}}`)
//! with the matching HTTP status. Messages carry facts about the request's shape, never
//! prompt text; they are sent to the client and not logged.

use crate::infer::InferError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error the API returns to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<&'static str>,
    /// OpenAI's machine-readable `code`, if any.
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    /// 400: a parameter is invalid.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self { param, ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// 404: the requested model is not served here.
    pub fn unknown_model(model: &str) -> Self {
        let shown: String = model.chars().take(128).collect();
        Self {
            param: Some("model"),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{shown}` does not exist or you do not have access to it."),
            )
        }
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        let shown: String = path.chars().take(128).collect();
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no route for {shown}"))
    }

    /// 405: the route exists with other methods.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method not allowed for this route")
    }

    /// 413: the body exceeds the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is larger than the limit of {limit} bytes"),
            )
        }
    }

    /// 408: the body did not arrive within the deadline.
    pub fn body_timeout(deadline: std::time::Duration) -> Self {
        Self {
            code: Some("request_timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!("the request body did not arrive within {} s", deadline.as_secs()),
            )
        }
    }

    /// 429: the request queue is full.
    pub fn queue_full(capacity: usize) -> Self {
        Self {
            code: Some("queue_full"),
            retry_after: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("the server is busy: {capacity} requests are already waiting; retry later"),
            )
        }
    }

    /// 503: no model has been unsealed yet.
    pub fn not_unsealed() -> Self {
        Self {
            code: Some("model_not_ready"),
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the model is not loaded yet: the enclave is waiting for the model owner to verify \
                 its attestation and release the weights key",
            )
        }
    }

    /// 503: the model was served and is no longer: its key lease ended (`reason`, e.g.
    /// `renewal_refused`, `lease_expired`). Final for this boot: no Retry-After.
    pub fn stopped(reason: &'static str) -> Self {
        Self {
            code: Some("model_stopped"),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!(
                    "the model is no longer served ({reason}): the model owner's key lease for this enclave ended, \
                     and the weights were dropped from memory"
                ),
            )
        }
    }

    /// 500: an internal failure (details go to the log, not to the client).
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "inference failed; see the server log")
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::InvalidParam { param, reason } => Self::invalid(Some(param), reason),
            InferError::ContextLength { .. } => {
                Self { code: Some("context_length_exceeded"), param: Some("messages"), ..Self::invalid(None, e.to_string()) }
            }
            InferError::Tokenizer(_) | InferError::Template(_) => Self::invalid(None, e.to_string()),
            other => {
                log::error!("inference: {other}");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_status() {
        let e = ApiError::queue_full(4);
        let r = e.clone().into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let b = e.body();
        for key in ["message", "type", "param", "code"] {
            assert!(b["error"].get(key).is_some(), "missing {key}");
        }
        assert_eq!(b["error"]["code"], "queue_full");
        let ctx: ApiError = InferError::ContextLength { context: 8, requested: 9, prompt: 5, completion: 4 }.into();
        assert_eq!(ctx.status, StatusCode::BAD_REQUEST);
        assert_eq!(ctx.code, Some("context_length_exceeded"));
        let bad: ApiError = InferError::InvalidParam { param: "top_p", reason: "x".into() }.into();
        assert_eq!(bad.param, Some("top_p"));
        assert_eq!(ApiError::unknown_model("m").status, StatusCode::NOT_FOUND);
        assert_eq!(ApiError::too_large(10).status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ApiError::not_unsealed().status, StatusCode::SERVICE_UNAVAILABLE);
        let internal: ApiError = InferError::Panicked("x").into();
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!internal.message.contains("panicked"), "internal details stay in the log");
    }
}
