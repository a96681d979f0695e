//! The encrypted channel in front of the inference routes (format:
//! `attest/CHANNEL_FORMAT.md`, crypto: `chrysalis_proto::channel`). A sealed request is
//! opened with the session's private key for this boot's event-log digest and the request's
//! method and path; the inner handlers see a plain JSON request. Their answer — success or
//! error alike — is sealed under keys exported from the request's HPKE context: the whole
//! body as one record, or each event-stream frame as one record, and always a final record
//! with the signed receipt. Unencrypted requests get 403 unless the measured configuration
//! says `chrysalis.plaintext=1`.
//!
//! Trust: request headers and bodies are untrusted. Errors about the channel itself are
//! plaintext OpenAI-shaped JSON (they carry nothing secret); nothing here logs bodies.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrysalis_proto::channel::crypto::{RecordSealer, ResponseMode, ResponseSealer, Target};
use chrysalis_proto::channel::receipt::{Hasher, request_hash};
use chrysalis_proto::channel::replay::ReplayError;
use chrysalis_proto::channel::{self as ch, frame};
use chrysalis_proto::eventlog::DIGEST_LEN;
use chrysalis_proto::keyrelease::PUBLIC_KEY_LEN;
use futures_util::StreamExt as _;

use crate::serve::ApiError;
use crate::session::{OpenError, ReceiptRequest, Session};

/// What the channel layer needs.
#[derive(Debug)]
pub struct ChannelState {
    session: Arc<Session>,
    allow_plaintext: bool,
    max_body_bytes: usize,
}

impl ChannelState {
    /// The layer's state: the session holding the keys, whether the measured configuration
    /// allows unencrypted requests, and the largest plaintext body.
    pub fn new(session: Arc<Session>, allow_plaintext: bool, max_body_bytes: usize) -> Self {
        ChannelState { session, allow_plaintext, max_body_bytes }
    }
}

/// Wrap the inference router: every route and the fallback go through [`guard`].
pub fn wrap(router: axum::Router, state: Arc<ChannelState>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(state, guard))
}

fn channel_error(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Response {
    ApiError { status, kind, message, param: None, code: Some(code), retry_after: None }.into_response()
}

fn bad_header(name: &'static str, why: &str) -> Response {
    channel_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        ch::CODE_BAD_REQUEST,
        format!("bad channel header {name}: {why}"),
    )
}

// The error is the finished answer to a refused request (built at most once per request).
#[allow(clippy::result_large_err)]
fn hex_header<const N: usize>(headers: &HeaderMap, name: &'static str) -> Result<[u8; N], Response> {
    let v = headers.get(name).ok_or_else(|| bad_header(name, "missing"))?;
    let v = v.to_str().map_err(|_| bad_header(name, "not ASCII"))?;
    let bytes = hex::decode(v.trim()).map_err(|_| bad_header(name, "not hex"))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| bad_header(name, &format!("{len} bytes, expected {N}")))
}

/// The channel middleware.
pub async fn guard(State(st): State<Arc<ChannelState>>, req: Request, next: Next) -> Response {
    let Some(version) = req.headers().get(ch::HEADER_CHANNEL) else {
        if st.allow_plaintext {
            return next.run(req).await;
        }
        return channel_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            ch::CODE_CHANNEL_REQUIRED,
            "this runtime accepts only requests encrypted to its attested key (chrysalis channel v2): \
             send them through `attest proxy`, which verifies the runtime's evidence first; \
             unencrypted requests are enabled only by the measured setting chrysalis.plaintext=1"
                .into(),
        );
    };
    if version.as_bytes() != ch::CHANNEL_VERSION.as_bytes() {
        return bad_header(
            ch::HEADER_CHANNEL,
            &format!("version {:?} is not supported (expected {})", version, ch::CHANNEL_VERSION),
        );
    }
    let enc: [u8; PUBLIC_KEY_LEN] = match hex_header(req.headers(), ch::HEADER_ENC) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let digest: [u8; DIGEST_LEN] = match hex_header(req.headers(), ch::HEADER_LOG_DIGEST) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let own = st.session.log_digest();
    if digest != own {
        return channel_error(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            ch::CODE_KEY_UNKNOWN,
            format!(
                "the request is encrypted to event-log digest {}, but this runtime's is {}: fetch and verify its evidence again",
                hex::encode(digest),
                hex::encode(own)
            ),
        );
    }
    let target = Target::new(req.method().as_str(), req.uri().path_and_query().map_or_else(|| req.uri().path(), |p| p.as_str()));
    let (mut parts, body) = req.into_parts();
    let limit = chrysalis_proto::channel::crypto::sealed_request_len(st.max_body_bytes);
    let sealed = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(st.max_body_bytes).into_response(),
    };
    let (opened, sealer) = match st.session.open_request(&target, &enc, &sealed) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("channel: {} {}: {e}", target.method, target.path);
            let (status, code) = match &e {
                OpenError::Channel(_) => (StatusCode::BAD_REQUEST, ch::CODE_DECRYPT_FAILED),
                OpenError::Replay(ReplayError::Replayed(_)) => (StatusCode::CONFLICT, ch::CODE_REPLAYED),
                OpenError::Replay(_) => (StatusCode::BAD_REQUEST, ch::CODE_STALE),
            };
            return channel_error(status, "invalid_request_error", code, format!("{e}; nothing was processed"));
        }
    };
    let mut plaintext = opened.body;
    // The sealed limit is the padded bucket of the largest body; the body itself is checked
    // here.
    if plaintext.len() > st.max_body_bytes {
        return ApiError::too_large(st.max_body_bytes).into_response();
    }
    let request = ReceiptRequest { target: target.line(), id: opened.meta.id, sha384: request_hash(&plaintext) };
    for name in [ch::HEADER_CHANNEL, ch::HEADER_ENC, ch::HEADER_LOG_DIGEST] {
        parts.headers.remove(name);
    }
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(plaintext.len()));
    if plaintext.is_empty() {
        parts.headers.remove(header::CONTENT_TYPE);
    } else {
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let inner = Request::from_parts(parts, Body::from(std::mem::take(&mut *plaintext)));
    let resp = next.run(inner).await;
    seal_response(st.session.clone(), request, sealer, resp).await
}

/// Zeroize a plaintext buffer that is no longer needed, when this is its only reference
/// (request bodies and response bytes are; a shared buffer is left to its other owner).
pub(crate) fn wipe(bytes: Bytes) {
    if let Ok(mut owned) = bytes.try_into_mut() {
        zeroize::Zeroize::zeroize(owned.as_mut());
    }
}

fn copy_advisory_headers(from: &HeaderMap, to: &mut HeaderMap) {
    if let Some(v) = from.get(header::RETRY_AFTER) {
        to.insert(header::RETRY_AFTER, v.clone());
    }
}

fn channel_headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 2] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (HeaderName::from_static(ch::HEADER_CHANNEL), HeaderValue::from_static(ch::CHANNEL_VERSION)),
    ]
}

async fn seal_response(session: Arc<Session>, request: ReceiptRequest, sealer: ResponseSealer, resp: Response) -> Response {
    let status = resp.status();
    let streaming = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let (parts, body) = resp.into_parts();
    if streaming {
        let records = sealer.response(status.as_u16(), ResponseMode::Stream);
        let stream = SealedStream { session, request, status: status.as_u16(), records, hasher: Hasher::response() };
        let mut out = (status, channel_headers("text/event-stream"), Body::from_stream(stream.into_stream(body))).into_response();
        out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        copy_advisory_headers(&parts.headers, out.headers_mut());
        return out;
    }
    let plain = match axum::body::to_bytes(body, frame::MAX_DATA_LEN).await {
        Ok(b) => b,
        Err(e) => {
            log::error!("channel: reading the inner response failed: {e}");
            return ApiError::internal().into_response();
        }
    };
    let mut records = sealer.response(status.as_u16(), ResponseMode::Whole);
    let receipt = session.sign_receipt(request, status.as_u16(), {
        let mut h = Hasher::response();
        h.update(&plain);
        h.finish()
    });
    let sealed = records.seal(&plain).and_then(|r0| {
        let r1 = records.seal_final(&receipt.to_bytes())?;
        let mut out = Vec::with_capacity(r0.len() + r1.len() + 8);
        frame::push_length_prefixed(&mut out, &r0)?;
        frame::push_length_prefixed(&mut out, &r1)?;
        Ok(out)
    });
    wipe(plain);
    match sealed {
        Ok(bytes) => {
            let mut out = (status, channel_headers(chrysalis_proto::routes::SEALED_RESPONSE_MEDIA_TYPE), bytes).into_response();
            copy_advisory_headers(&parts.headers, out.headers_mut());
            out
        }
        Err(e) => {
            log::error!("channel: sealing the response failed: {e}");
            ApiError::internal().into_response()
        }
    }
}

/// The state of one sealed event stream.
struct SealedStream {
    session: Arc<Session>,
    request: ReceiptRequest,
    status: u16,
    records: RecordSealer,
    hasher: Hasher,
}

impl SealedStream {
    /// One sealed event per inner frame, then the final event with the receipt. If the inner
    /// stream fails, the sealed stream ends without its final record (the client sees a
    /// truncation, never a forged end).
    fn into_stream(self, body: Body) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
        futures_util::stream::unfold((Some(self), body.into_data_stream()), |(state, mut inner)| async move {
            let mut s = state?;
            loop {
                match inner.next().await {
                    Some(Ok(bytes)) if bytes.is_empty() => continue,
                    Some(Ok(bytes)) => {
                        s.hasher.update(&bytes);
                        let sealed = s.records.seal(&bytes);
                        wipe(bytes);
                        return match sealed {
                            Ok(r) => Some((Ok(Bytes::from(frame::sse_event(&r))), (Some(s), inner))),
                            Err(e) => {
                                log::error!("channel: sealing a stream record failed: {e}");
                                None
                            }
                        };
                    }
                    Some(Err(e)) => {
                        log::warn!("channel: inner stream failed: {e}");
                        return None;
                    }
                    None => {
                        let SealedStream { session, request, status, mut records, hasher } = s;
                        let receipt = session.sign_receipt(request, status, hasher.finish());
                        return match records.seal_final(&receipt.to_bytes()) {
                            Ok(r) => Some((Ok(Bytes::from(frame::sse_event(&r))), (None, inner))),
                            Err(e) => {
                                log::error!("channel: sealing the final record failed: {e}");
                                None
                            }
                        };
                    }
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::session::ModelSink;
    use crate::tee::EvidenceSource;
    use axum::Router;
    use axum::routing::{get, post};
    use chrysalis_proto::channel::crypto::{ResponseOpener, seal_request};
    use chrysalis_proto::channel::receipt::{Receipt, ReceiptSigner, response_hash};
    use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
    use chrysalis_proto::keyrelease::RuntimeKeyPair;
    use tower::ServiceExt as _;

    struct NoSink;
    impl ModelSink for NoSink {
        fn load(&self, _: chrysalis_proto::seal::UnsealedFiles) -> anyhow::Result<String> {
            anyhow::bail!("no model in this test")
        }
    }

    fn session() -> (Arc<Session>, [u8; 32], [u8; 32]) {
        let keys = RuntimeKeyPair::generate().unwrap();
        let signer = ReceiptSigner::generate().unwrap();
        let (pk, rk) = (keys.public_key(), signer.public_key());
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        log.extend(keys.public_key_event());
        log.extend(signer.public_key_event());
        let s = Session::new(log, keys, EvidenceSource::Unavailable { why: "test".into() }, Err("test".into()), Box::new(NoSink))
            .with_receipt_signer(signer);
        (Arc::new(s), pk, rk)
    }

    async fn echo(body: Bytes) -> Response {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }

    async fn events() -> Response {
        let chunks = ["data: {\"a\":1}\n\n", "data: {\"b\":2}\n\n", "data: [DONE]\n\n"];
        let s = futures_util::stream::iter(chunks.map(|c| Ok::<_, Infallible>(Bytes::from(c))));
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(s)).into_response()
    }

    fn app(session: Arc<Session>, plaintext: bool) -> Router {
        let r = Router::new()
            .route("/v1/echo", post(echo))
            .route("/v1/stream", post(events))
            .route("/v1/models", get(|| async { axum::Json(serde_json::json!({"data": []})) }));
        wrap(r, Arc::new(ChannelState::new(session, plaintext, 1024)))
    }

    fn sealed(session: &Session, pk: &[u8; 32], method: &str, path: &str, body: &[u8]) -> (Request, ResponseOpener) {
        let (req, opener) = seal_request(pk, &session.log_digest(), &Target::new(method, path), body).unwrap();
        let r = Request::builder()
            .method(method)
            .uri(path)
            .header(ch::HEADER_CHANNEL, ch::CHANNEL_VERSION)
            .header(ch::HEADER_ENC, hex::encode(req.enc))
            .header(ch::HEADER_LOG_DIGEST, hex::encode(session.log_digest()))
            .body(Body::from(req.ciphertext))
            .unwrap();
        (r, opener)
    }

    async fn body_of(r: Response) -> (StatusCode, HeaderMap, Vec<u8>) {
        let (p, b) = r.into_parts();
        (p.status, p.headers, axum::body::to_bytes(b, usize::MAX).await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn whole_and_streamed_responses_open_and_carry_receipts() {
        let (s, pk, rk) = session();
        let (req, opener) = sealed(&s, &pk, "POST", "/v1/echo", b"{\"prompt\":\"hi\"}");
        let (status, headers, body) = body_of(app(s.clone(), false).oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], chrysalis_proto::routes::SEALED_RESPONSE_MEDIA_TYPE);
        let recs = frame::split_length_prefixed(&body).unwrap();
        assert_eq!(recs.len(), 2);
        let mut o = opener.response(200, ResponseMode::Whole);
        assert_eq!(o.open(recs[0]).unwrap().data(), Some(&b"{\"prompt\":\"hi\"}"[..]));
        let receipt = Receipt::from_bytes(o.open(recs[1]).unwrap().receipt().unwrap()).unwrap();
        receipt.verify_signature(&rk).unwrap();
        assert_eq!(receipt.body.target, "POST /v1/echo");
        assert_eq!(receipt.body.request_sha384, request_hash(b"{\"prompt\":\"hi\"}"));
        assert_eq!(receipt.body.response_sha384, response_hash(b"{\"prompt\":\"hi\"}"));
        assert_eq!(receipt.body.event_log_digest, s.log_digest());

        let (req, opener) = sealed(&s, &pk, "POST", "/v1/stream", b"{}");
        let (status, headers, body) = body_of(app(s.clone(), false).oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
        let mut d = frame::SseDecoder::new();
        let recs = d.push(&body).unwrap();
        let mut o = opener.response(200, ResponseMode::Stream);
        let mut text = Vec::new();
        let mut receipt = None;
        for r in recs {
            match o.open(&r).unwrap() {
                chrysalis_proto::channel::crypto::Opened::Data(d) => text.extend_from_slice(&d),
                chrysalis_proto::channel::crypto::Opened::Final(r) => receipt = Some(Receipt::from_bytes(&r).unwrap()),
            }
        }
        o.finish().unwrap();
        assert_eq!(text, b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n");
        assert_eq!(receipt.unwrap().body.response_sha384, response_hash(&text));

        // GET with an empty sealed body.
        let (req, opener) = sealed(&s, &pk, "GET", "/v1/models", b"");
        let (status, _, body) = body_of(app(s.clone(), false).oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let recs = frame::split_length_prefixed(&body).unwrap();
        assert_eq!(opener.response(200, ResponseMode::Whole).open(recs[0]).unwrap().data(), Some(&b"{\"data\":[]}"[..]));
    }

    #[tokio::test]
    async fn refusals_are_openai_shaped() {
        let (s, pk, _) = session();
        let code_of =
            |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap()["error"]["code"].as_str().unwrap().to_owned();

        // Unencrypted: 403 unless the configuration allows plaintext.
        let plain = || Request::builder().method("POST").uri("/v1/echo").body(Body::from("{}")).unwrap();
        let (status, _, body) = body_of(app(s.clone(), false).oneshot(plain()).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(code_of(&body), ch::CODE_CHANNEL_REQUIRED);
        assert!(String::from_utf8_lossy(&body).contains("chrysalis.plaintext=1"));
        let (status, _, body) = body_of(app(s.clone(), true).oneshot(plain()).await.unwrap()).await;
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"{}"[..]));

        // Encrypted to another runtime state: 421, re-attest.
        let (mut req, _) = sealed(&s, &pk, "POST", "/v1/echo", b"{}");
        req.headers_mut().insert(ch::HEADER_LOG_DIGEST, HeaderValue::from_str(&hex::encode([0u8; 48])).unwrap());
        let (status, _, body) = body_of(app(s.clone(), false).oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(code_of(&body), ch::CODE_KEY_UNKNOWN);

        // Replayed to another route, or a flipped byte: 400, nothing processed.
        let (req, _) = sealed(&s, &pk, "POST", "/v1/echo", b"{}");
        let (mut parts, body) = req.into_parts();
        parts.uri = "/v1/stream".parse().unwrap();
        let (status, _, body) = body_of(app(s.clone(), false).oneshot(Request::from_parts(parts, body)).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code_of(&body), ch::CODE_DECRYPT_FAILED);
        let (req, _) = sealed(&s, &pk, "POST", "/v1/echo", b"{}");
        let (parts, body) = req.into_parts();
        let mut bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
        bytes[0] ^= 0x80;
        let (status, _, body) =
            body_of(app(s.clone(), false).oneshot(Request::from_parts(parts, Body::from(bytes))).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code_of(&body), ch::CODE_DECRYPT_FAILED);

        // Malformed headers and oversized bodies.
        let (mut req, _) = sealed(&s, &pk, "POST", "/v1/echo", b"{}");
        req.headers_mut().insert(ch::HEADER_ENC, HeaderValue::from_static("zz"));
        let (status, _, body) = body_of(app(s.clone(), false).oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code_of(&body), ch::CODE_BAD_REQUEST);
        // Over the body limit but within its padded bucket (checked after opening), and
        // beyond the bucket (checked before).
        for n in [1025, 2000, 5000] {
            let (req, _) = sealed(&s, &pk, "POST", "/v1/echo", &vec![b'x'; n]);
            let (status, _, _) = body_of(app(s.clone(), false).oneshot(req).await.unwrap()).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{n} bytes");
        }
    }

    fn sealed_with(
        session: &Session,
        pk: &[u8; 32],
        meta: chrysalis_proto::channel::crypto::RequestMeta,
        body: &[u8],
    ) -> (Vec<u8>, [u8; 32], ResponseOpener) {
        let target = Target::new("POST", "/v1/echo");
        let (req, opener) =
            chrysalis_proto::channel::crypto::seal_request_with(pk, &session.log_digest(), &target, meta, body).unwrap();
        (req.ciphertext, req.enc, opener)
    }

    fn request_of(session: &Session, enc: &[u8; 32], ciphertext: Vec<u8>) -> Request {
        Request::builder()
            .method("POST")
            .uri("/v1/echo")
            .header(ch::HEADER_CHANNEL, ch::CHANNEL_VERSION)
            .header(ch::HEADER_ENC, hex::encode(enc))
            .header(ch::HEADER_LOG_DIGEST, hex::encode(session.log_digest()))
            .body(Body::from(ciphertext))
            .unwrap()
    }

    /// A captured sealed request sent again is refused (409, its id named), a request issued
    /// outside the window is refused as stale (400), and the receipt names the request id.
    #[tokio::test]
    async fn replayed_and_stale_requests_are_refused() {
        let (s, pk, rk) = session();
        let code_of =
            |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap()["error"]["code"].as_str().unwrap().to_owned();
        let meta = chrysalis_proto::channel::crypto::RequestMeta::fresh().unwrap();
        let (ct, enc, opener) = sealed_with(&s, &pk, meta, b"{\"prompt\":\"hi\"}");
        let (status, _, body) = body_of(app(s.clone(), false).oneshot(request_of(&s, &enc, ct.clone())).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let recs = frame::split_length_prefixed(&body).unwrap();
        let mut o = opener.response(200, ResponseMode::Whole);
        o.open(recs[0]).unwrap();
        let receipt = Receipt::from_bytes(o.open(recs[1]).unwrap().receipt().unwrap()).unwrap();
        receipt.verify_signature(&rk).unwrap();
        assert_eq!(receipt.body.request_id, meta.id);

        // The same bytes again.
        let (status, headers, body) = body_of(app(s.clone(), false).oneshot(request_of(&s, &enc, ct)).await.unwrap()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(headers.get(ch::HEADER_CHANNEL).is_none(), "a plaintext refusal");
        assert_eq!(code_of(&body), ch::CODE_REPLAYED);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(&hex::encode(meta.id)) && text.contains("replayed"), "{text}");

        // Issued an hour ago, or an hour ahead.
        for shift in [-3600i64, 3600] {
            let meta = chrysalis_proto::channel::crypto::RequestMeta {
                id: chrysalis_proto::channel::crypto::RequestMeta::fresh().unwrap().id,
                issued_unix_s: meta.issued_unix_s.saturating_add_signed(shift),
            };
            let (ct, enc, _) = sealed_with(&s, &pk, meta, b"{}");
            let (status, _, body) = body_of(app(s.clone(), false).oneshot(request_of(&s, &enc, ct)).await.unwrap()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{shift}");
            assert_eq!(code_of(&body), ch::CODE_STALE);
            assert!(String::from_utf8_lossy(&body).contains("check the client's clock"));
        }
    }
}
