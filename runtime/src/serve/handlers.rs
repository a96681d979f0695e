//! Request handlers: admission to the bounded queue, validation, tokenization, one
//! generation at a time on a blocking thread, and the JSON or server-sent-event response.
//! Trusts nothing from clients. Logs only method, path, status, timings and token counts.

use super::InferenceState;
use super::error::ApiError;
use super::types::{ChatRequest, CompletionRequest, PromptInput, Usage, Validated, random_u64};
use crate::infer::{Engine, FinishReason, GenerateParams, Outcome};
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Text pieces buffered between the generating thread and the HTTP response; when full,
/// generation waits for the client (bounded memory for slow readers).
const CHANNEL_DEPTH: usize = 64;

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
    state.engine().ok_or_else(ApiError::not_unsealed)
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

/// Reads and parses a JSON body of at most `max_body_bytes`.
async fn read_json<T: DeserializeOwned>(state: &InferenceState, req: Request) -> Result<T, ApiError> {
    let limit = state.config().max_body_bytes;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        if is_length_limit(&e) { ApiError::too_large(limit) } else { ApiError::invalid(None, "could not read the request body") }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(None, format!("invalid request body: {e}")))
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
    let engine = engine(state)?;
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
    let engine = engine(state)?;
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

enum Msg {
    Text(String),
    Done(Outcome),
    Failed(ApiError),
}

/// Waits for the worker, then generates on a blocking thread, sending text to the returned
/// receiver. Dropping the receiver cancels the generation at the next token.
fn spawn_generation(state: &InferenceState, job: Job) -> mpsc::Receiver<Msg> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let worker = state.worker.clone();
    let Job { engine, prompt, params, admission, .. } = job;
    tokio::spawn(async move {
        let Ok(permit) = worker.acquire_owned().await else { return };
        if tx.is_closed() {
            log::info!("serve: client left while queued");
            return;
        }
        let res = tokio::task::spawn_blocking(move || {
            let _held = (permit, admission);
            let mut sink = |delta: &str| {
                if delta.is_empty() {
                    if tx.is_closed() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                } else if tx.blocking_send(Msg::Text(delta.to_owned())).is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let result = engine.generate(&prompt, &params, &mut sink);
            let msg = match result {
                Ok(outcome) => {
                    let gen_secs = outcome.generation_time.as_secs_f64();
                    log::info!(
                        "serve: generated {} tokens for a {}-token prompt ({}), first token {} ms, {:.1} tokens/s",
                        outcome.completion_tokens,
                        outcome.prompt_tokens,
                        outcome.finish_reason.as_str(),
                        outcome.time_to_first_token.as_millis(),
                        if gen_secs > 0.0 { outcome.completion_tokens.saturating_sub(1) as f64 / gen_secs } else { 0.0 }
                    );
                    Msg::Done(outcome)
                }
                Err(e) => Msg::Failed(ApiError::from(e)),
            };
            let _ = tx.blocking_send(msg);
        })
        .await;
        if res.is_err() {
            log::error!("serve: generation thread panicked");
        }
    });
    rx
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
    let mut rx = spawn_generation(&state, job);
    let meta = Meta { kind, id, created, model };
    if validated.stream {
        return Sse::new(sse_stream(rx, meta, validated.include_usage)).into_response();
    }
    let mut text = String::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Text(t) => text.push_str(&t),
            Msg::Failed(e) => return e.into_response(),
            Msg::Done(outcome) => return axum::Json(meta.full(&text, &outcome)).into_response(),
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
        let usage = Usage::new(o.prompt_tokens, o.completion_tokens);
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
            "choices": [], "usage": Usage::new(o.prompt_tokens, o.completion_tokens),
        })
    }
}

fn event(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// OpenAI's stream: a role chunk (chat), content chunks, a finish chunk, an optional usage
/// chunk, then `data: [DONE]`. Errors after the headers are sent as an `error` object.
fn sse_stream(rx: mpsc::Receiver<Msg>, meta: Meta, include_usage: bool) -> impl Stream<Item = Result<Event, Infallible>> + Send {
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
                Some(Msg::Text(t)) => pending.push_back(event(&meta.chunk(Some(&t), false, None))),
                Some(Msg::Done(o)) => {
                    pending.push_back(event(&meta.chunk(None, false, Some(finish_str(o.finish_reason)))));
                    if include_usage {
                        pending.push_back(event(&meta.usage_chunk(&o)));
                    }
                    pending.push_back(Event::default().data("[DONE]"));
                    done = true;
                }
                Some(Msg::Failed(e)) => {
                    pending.push_back(event(&e.body()));
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
