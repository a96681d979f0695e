//! OpenAI request and response bodies (the subset this server implements) and their
//! validation into engine parameters. Trusts nothing: every field comes from a client.
//! Unknown fields are ignored, as OpenAI's own server does for forward compatibility.

use super::error::ApiError;
use crate::infer::{ChatMessage, SamplingParams};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest stop string in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    /// A single stop string.
    One(String),
    /// Up to four stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    /// Send a final chunk with token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by completions and chat completions.
#[derive(Debug, Deserialize)]
pub struct Common {
    /// The model name; must equal the served model's id.
    pub model: String,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature (default 1).
    pub temperature: Option<f64>,
    /// Nucleus mass (default 1).
    pub top_p: Option<f64>,
    /// Top-k filter (extension; vLLM and llama.cpp accept it too).
    pub top_k: Option<i64>,
    /// Sampler seed.
    pub seed: Option<i64>,
    /// Number of choices; only 1 is supported.
    pub n: Option<i64>,
    /// Server-sent events instead of one JSON body.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Stop strings.
    pub stop: Option<StopInput>,
    /// Not supported when non-zero.
    pub presence_penalty: Option<f64>,
    /// Not supported when non-zero.
    pub frequency_penalty: Option<f64>,
    /// Not supported when set (bool for chat, integer for completions).
    pub logprobs: Option<serde_json::Value>,
    /// Generate past end-of-sequence tokens (extension, as vLLM's `ignore_eos`).
    #[serde(default)]
    pub ignore_eos: bool,
}

/// Parameters validated for the engine.
#[derive(Debug, Clone)]
pub struct Validated {
    /// `max_tokens` if the client set it.
    pub max_tokens: Option<usize>,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Whether to stream.
    pub stream: bool,
    /// Whether to send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
}

impl Common {
    /// Checks every field against OpenAI's ranges and this server's support.
    pub fn validate(&self, default_max: Option<usize>) -> Result<Validated, ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(Some("n"), format!("n = {n} is not supported: this server returns one choice")));
        }
        for (param, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            match v {
                Some(x) if !(-2.0..=2.0).contains(&x) => {
                    return Err(ApiError::invalid(Some(param), format!("{x} is not between -2 and 2")));
                }
                Some(x) if x != 0.0 => {
                    return Err(ApiError::invalid(Some(param), "non-zero penalties are not supported by this server"));
                }
                _ => {}
            }
        }
        match &self.logprobs {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {}
            Some(_) => return Err(ApiError::invalid(Some("logprobs"), "logprobs are not supported by this server")),
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            None => default_max,
            Some(m) if m >= 1 => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            Some(m) => return Err(ApiError::invalid(Some("max_tokens"), format!("{m} is less than the minimum of 1"))),
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            Some(k) => return Err(ApiError::invalid(Some("top_k"), format!("{k} is not a positive integer"))),
        };
        let seed = match self.seed {
            Some(s) => s as u64,
            None => random_u64(),
        };
        let sampling =
            SamplingParams { temperature: self.temperature.unwrap_or(1.0), top_p: self.top_p.unwrap_or(1.0), top_k, seed };
        sampling.validate().map_err(ApiError::from)?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(Some("stop"), format!("{} stop strings given; at most {MAX_STOPS}", stop.len())));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(Some("stop"), format!("stop strings are limited to {MAX_STOP_BYTES} bytes")));
        }
        Ok(Validated {
            max_tokens,
            sampling,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            stream: self.stream,
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// A fresh random value (request ids, default seeds) from the OS-seeded std hasher.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// `prompt` of a completion request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// Text.
    Text(String),
    /// A batch of texts; only batches of one are supported.
    Texts(Vec<String>),
    /// Token ids.
    Tokens(Vec<u32>),
}

// Prompt text in the request types is zeroized when the request is dropped (serde builds
// them, so `Drop` does not get in its way). Copies made by allocator growth while parsing and
// by the tokenizer are not covered: see runtime/README.md, "What stays in memory".
impl Drop for PromptInput {
    fn drop(&mut self) {
        match self {
            PromptInput::Text(t) => t.zeroize(),
            PromptInput::Texts(ts) => ts.iter_mut().for_each(Zeroize::zeroize),
            PromptInput::Tokens(ids) => ids.zeroize(),
        }
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        if let Content::Text(t) = self {
            t.zeroize();
        }
    }
}

impl Drop for ContentPart {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: PromptInput,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
    /// Not supported when true.
    #[serde(default)]
    pub echo: bool,
    /// Not supported when set.
    pub suffix: Option<String>,
    /// Not supported when above 1.
    pub best_of: Option<i64>,
}

/// A message's `content`: text or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text` (others are rejected).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// One chat message from the client.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message body (absent for assistant tool calls, which are not supported).
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
    /// Not supported when non-empty.
    pub tools: Option<Vec<serde_json::Value>>,
}

impl ChatRequest {
    /// Flattens messages for the chat template.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(Some("messages"), "messages must not be empty"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(Some("tools"), "tools are not supported by this server"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "developer" => "system",
                    r @ ("system" | "user" | "assistant" | "tool") => r,
                    _ => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("messages[{i}].role must be system, developer, user, assistant or tool"),
                        ));
                    }
                };
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut s = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => s.push_str(t),
                                _ => {
                                    return Err(ApiError::invalid(
                                        Some("messages"),
                                        format!("messages[{i}]: only text content parts are supported"),
                                    ));
                                }
                            }
                        }
                        s
                    }
                };
                Ok(ChatMessage { role: role.to_owned(), content })
            })
            .collect()
    }
}

/// Token counts (`usage`).
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// OpenAI's breakdown of the prompt.
    pub prompt_tokens_details: PromptDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct PromptDetails {
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// Counts for a prompt (`cached` of them from the prefix cache) and completion.
    pub fn new(prompt_tokens: usize, cached: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptDetails { cached_tokens: cached },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(v: serde_json::Value) -> Common {
        let mut base = serde_json::json!({"model": "m"});
        if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
            b.extend(o.clone());
        }
        serde_json::from_value(base).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn validation() {
        let ok = common(serde_json::json!({"temperature": 0, "stop": "x", "seed": 3, "max_tokens": 5}))
            .validate(None)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ok.stop, vec!["x".to_owned()]);
        assert_eq!(ok.max_tokens, Some(5));
        assert_eq!(ok.sampling.seed, 3);
        for (bad, param) in [
            (serde_json::json!({"n": 2}), "n"),
            (serde_json::json!({"temperature": 3}), "temperature"),
            (serde_json::json!({"top_p": 0}), "top_p"),
            (serde_json::json!({"top_k": -5}), "top_k"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (serde_json::json!({"presence_penalty": 1.0}), "presence_penalty"),
            (serde_json::json!({"logprobs": true}), "logprobs"),
        ] {
            let e = common(bad.clone()).validate(None).err().unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(e.param, Some(param), "{bad}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn chat_messages() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "developer", "content": "a"},
                         {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let m = req.messages().unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!((m[0].role.as_str(), m[1].content.as_str()), ("system", "bc"));
        let bad: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "wizard", "content": "a"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(bad.messages().is_err());
    }
}
