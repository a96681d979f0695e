//! Request handlers: admission to the bounded queue, validation, tokenization, submission
//! to the engine's batching scheduler, and the JSON or server-sent-event response.
//! Trusts nothing from clients. Logs only method, path, status, timings and token counts.

use super::InferenceState;
use super::error::ApiError;
use super::types::{ChatRequest, CompletionRequest, PromptInput, Usage, Validated, random_u64};
use crate::infer::{Engine, Event, FinishReason, GenerateParams, Outcome};
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Logs one line per request: method, path, status and time to response headers.
pub(super) async fn access_log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(64).collect();
    let start = Instant::now();
    let resp = next.run(req).await;
    log::info!("serve: {method} {path} -> {} in {} ms", resp.status().as_u16(), start.elapsed().as_millis());
    resp
}

fn engine(state: &InferenceState) -> Result<Arc<Engine>, ApiError> {
    state.engine().ok_or_else(|| not_served(state))
}

/// 503: not unsealed yet, or no longer served (the key lease ended).
fn not_served(state: &InferenceState) -> ApiError {
    match state.stopped() {
        Some(reason) => ApiError::stopped(reason),
        None => ApiError::not_unsealed(),
    }
}

fn model_json(engine: &Engine) -> Value {
    let info = engine.info();
    json!({
        "id": info.id, "object": "model", "created": info.created, "owned_by": "chrysalis",
        "context_length": info.context_length,
    })
}

pub(super) async fn list_models(State(state): State<Arc<InferenceState>>) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    Ok(axum::Json(json!({"object": "list", "data": [model_json(&engine)]})).into_response())
}

pub(super) async fn get_model(State(state): State<Arc<InferenceState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let engine = engine(&state)?;
    if id != engine.info().id {
        return Err(ApiError::unknown_model(&id));
    }
    Ok(axum::Json(model_json(&engine)).into_response())
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The engine, or 503 once the request's body was read (within the usual limits) and wiped:
/// a response sent before the body is read makes hyper close the connection, and a client
/// that reuses it at that moment sees a connection error instead of the 503. (A body declared
/// larger than the limit is not read; that connection closes, as for any oversized body.)
async fn ready_engine(state: &InferenceState, req: Request) -> Result<(Arc<Engine>, Request), ApiError> {
    match state.engine() {
        Some(engine) => Ok((engine, req)),
        None => {
            if let Ok(bytes) = read_body(state, req).await {
                crate::channel::wipe(bytes);
            }
            Err(not_served(state))
        }
    }
}

/// Reads and parses a JSON body of at most `max_body_bytes`.
async fn read_json<T: DeserializeOwned>(state: &InferenceState, req: Request) -> Result<T, ApiError> {
    let bytes = read_body(state, req).await?;
    let parsed = serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")));
    crate::channel::wipe(bytes);
    parsed
}

/// Reads a body of at most `max_body_bytes` within the body deadline.
async fn read_body(state: &InferenceState, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.config().max_body_bytes;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let deadline = state.config().body_timeout;
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(req.into_body(), limit))
        .await
        .map_err(|_| ApiError::body_timeout(deadline))?;
    read.map_err(|e| {
        if is_length_limit(&e) { ApiError::too_large(limit) } else { ApiError::invalid(None, "could not read the request body") }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// Everything a generation needs, checked.
struct Job {
    kind: Kind,
    engine: Arc<Engine>,
    prompt: Vec<u32>,
    params: GenerateParams,
    validated: Validated,
    admission: OwnedSemaphorePermit,
}

pub(super) async fn completions(State(state): State<Arc<InferenceState>>, req: Request) -> Response {
    match prepare_completion(&state, req).await {
        Ok(job) => run(state, job).await,
        Err(e) => e.into_response(),
    }
}

pub(super) async fn chat_completions(State(state): State<Arc<InferenceState>>, req: Request) -> Response {
    match prepare_chat(&state, req).await {
        Ok(job) => run(state, job).await,
        Err(e) => e.into_response(),
    }
}

fn admit(state: &InferenceState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.admission.clone().try_acquire_owned().map_err(|_| ApiError::queue_full(state.config().queue_capacity))
}

async fn prepare_completion(state: &InferenceState, req: Request) -> Result<Job, ApiError> {
    let (engine, req) = ready_engine(state, req).await?;
    let body: CompletionRequest = read_json(state, req).await?;
    if body.common.model != engine.info().id {
        return Err(ApiError::unknown_model(&body.common.model));
    }
    if body.echo {
        return Err(ApiError::invalid(Some("echo"), "echo is not supported by this server"));
    }
    if body.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(Some("suffix"), "suffix is not supported by this server"));
    }
    if body.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(Some("best_of"), "best_of is not supported by this server"));
    }
    let validated = body.common.validate(Some(state.config().default_completion_tokens))?;
    let admission = admit(state)?;
    let prompt = match &body.prompt {
        PromptInput::Text(t) => engine.encode(t)?,
        PromptInput::Texts(ts) => match ts.as_slice() {
            [t] => engine.encode(t)?,
            _ => return Err(ApiError::invalid(Some("prompt"), "only a single prompt per request is supported")),
        },
        PromptInput::Tokens(ids) => {
            let vocab = engine.info().vocab_size;
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid(Some("prompt"), format!("token id {bad} is outside the vocabulary of {vocab}")));
            }
            ids.clone()
        }
    };
    job(Kind::Completion, engine, prompt, validated, admission, "prompt")
}

async fn prepare_chat(state: &InferenceState, req: Request) -> Result<Job, ApiError> {
    let (engine, req) = ready_engine(state, req).await?;
    let body: ChatRequest = read_json(state, req).await?;
    if body.common.model != engine.info().id {
        return Err(ApiError::unknown_model(&body.common.model));
    }
    let validated = body.common.validate(None)?;
    let messages = body.messages()?;
    let admission = admit(state)?;
    let prompt = engine.encode_chat(&messages)?;
    job(Kind::Chat, engine, prompt, validated, admission, "messages")
}

fn job(
    kind: Kind,
    engine: Arc<Engine>,
    prompt: Vec<u32>,
    validated: Validated,
    admission: OwnedSemaphorePermit,
    prompt_param: &'static str,
) -> Result<Job, ApiError> {
    let max_tokens = engine.completion_budget(prompt.len(), validated.max_tokens).map_err(|e| {
        let mut e = ApiError::from(e);
        if e.param.is_some() {
            e.param = Some(prompt_param);
        }
        e
    })?;
    let params = GenerateParams {
        max_tokens,
        sampling: validated.sampling.clone(),
        stop: validated.stop.clone(),
        ignore_eos: validated.ignore_eos,
    };
    Ok(Job { kind, engine, prompt, params, validated, admission })
}

/// Hands the job to the engine's scheduler (which logs each outcome); the returned
/// receiver gets the text. Dropping it cancels the generation at the next step.
fn spawn_generation(job: Job) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    let Job { engine, prompt, params, admission, .. } = job;
    let mut from_engine = engine.submit(prompt, &params)?;
    let (tx, rx) = mpsc::unbounded_channel();
    // Relays events, holding the admission permit until the generation ends or the client
    // leaves.
    tokio::spawn(async move {
        let _held = admission;
        loop {
            tokio::select! {
                ev = from_engine.recv() => {
                    let Some(ev) = ev else { break };
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
                () = tx.closed() => break,
            }
        }
    });
    Ok(rx)
}

async fn run(state: Arc<InferenceState>, job: Job) -> Response {
    let kind = job.kind;
    let model = job.engine.info().id.clone();
    let validated = job.validated.clone();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let id = match kind {
        Kind::Completion => format!("cmpl-{:016x}", random_u64()),
        Kind::Chat => format!("chatcmpl-{:016x}", random_u64()),
    };
    let _ = state;
    let mut rx = match spawn_generation(job) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let meta = Meta { kind, id, created, model };
    if validated.stream {
        return Sse::new(sse_stream(rx, meta, validated.include_usage)).into_response();
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    while let Some(msg) = rx.recv().await {
        match msg {
            Event::Text(mut t) => {
                text.push_str(&t);
                zeroize::Zeroize::zeroize(&mut t);
            }
            Event::Failed(e) => return ApiError::from(e).into_response(),
            Event::Done(outcome) => return axum::Json(meta.full(&text, &outcome)).into_response(),
        }
    }
    ApiError::internal().into_response()
}

struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        // A cancelled request has no client left to read this; report it as a stop.
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

impl Meta {
    fn full(&self, text: &str, o: &Outcome) -> Value {
        let usage = Usage::new(o.prompt_tokens, o.cached_prompt_tokens, o.completion_tokens);
        let finish = finish_str(o.finish_reason);
        match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
                "usage": usage,
            }),
            Kind::Chat => json!({
                "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": null, "finish_reason": finish}],
                "usage": usage,
            }),
        }
    }

    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"text": text.unwrap_or(""), "index": 0, "logprobs": null, "finish_reason": finish}],
            }),
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
        }
    }

    fn usage_chunk(&self, o: &Outcome) -> Value {
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": Usage::new(o.prompt_tokens, o.cached_prompt_tokens, o.completion_tokens),
        })
    }
}

fn event(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// OpenAI's stream: a role chunk (chat), content chunks, a finish chunk, an optional usage
/// chunk, then `data: [DONE]`. Errors after the headers are sent as an `error` object.
fn sse_stream(
    rx: mpsc::UnboundedReceiver<Event>,
    meta: Meta,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let mut pending = VecDeque::new();
    if meta.kind == Kind::Chat {
        pending.push_back(event(&meta.chunk(Some(""), true, None)));
    }
    stream::unfold((rx, meta, pending, false), move |(mut rx, meta, mut pending, mut done)| async move {
        loop {
            if let Some(ev) = pending.pop_front() {
                return Some((Ok(ev), (rx, meta, pending, done)));
            }
            if done {
                return None;
            }
            match rx.recv().await {
                Some(Event::Text(t)) => pending.push_back(event(&meta.chunk(Some(&t), false, None))),
                Some(Event::Done(o)) => {
                    pending.push_back(event(&meta.chunk(None, false, Some(finish_str(o.finish_reason)))));
                    if include_usage {
                        pending.push_back(event(&meta.usage_chunk(&o)));
                    }
                    pending.push_back(SseEvent::default().data("[DONE]"));
                    done = true;
                }
                Some(Event::Failed(e)) => {
                    pending.push_back(event(&ApiError::from(e).body()));
                    done = true;
                }
                None => {
                    pending.push_back(event(&ApiError::internal().body()));
                    done = true;
                }
            }
        }
    })
}
