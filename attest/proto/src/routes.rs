//! The runtime's HTTP routes and media types: the one place their spelling is defined, for
//! the runtime that serves them and the owner tools, proxy and tests that call them.
//!
//! | Route                    | Method | Body in → out                                      | Channel |
//! |--------------------------|--------|----------------------------------------------------|---------|
//! | [`HEALTH`]               | GET    | – → JSON status                                    | open    |
//! | [`ATTESTATION`]          | GET    | `?nonce=<hex>` → [`EVIDENCE_MEDIA_TYPE`]           | open    |
//! | [`KEY`]                  | POST   | [`KEY_RELEASE_MEDIA_TYPE`] → JSON                  | open    |
//! | [`MODELS`], [`MODEL`]    | GET    | – → JSON (OpenAI)                                  | sealed  |
//! | [`COMPLETIONS`]          | POST   | JSON (OpenAI) → JSON or server-sent events         | sealed  |
//! | [`CHAT_COMPLETIONS`]     | POST   | JSON (OpenAI) → JSON or server-sent events         | sealed  |
//!
//! Pull mode (`attest serve-keys`, the owner's key service the runtime calls at boot):
//! [`CHALLENGE`] (GET → nonce) and [`RELEASE`] (POST evidence → key release).
//!
//! "Sealed" routes accept only requests encrypted to the runtime's attested key
//! ([`crate::channel`]); their bodies then travel as [`SEALED_REQUEST_MEDIA_TYPE`] and
//! [`SEALED_RESPONSE_MEDIA_TYPE`] (or server-sent events of sealed records).

/// Boot timings, stage and last error class of the runtime.
pub const HEALTH: &str = "/v1/health";
/// The evidence bundle for the caller's nonce (query `nonce`: 16 to 64 bytes in hex; a
/// 32-byte nonce is also registered for one key release).
pub const ATTESTATION: &str = "/v1/attestation";
/// Push mode: the owner posts a key release; the answer comes when the model is loaded.
pub const KEY: &str = "/v1/key";
/// OpenAI: list the served models.
pub const MODELS: &str = "/v1/models";
/// OpenAI: one model, in axum's path syntax.
pub const MODEL: &str = "/v1/models/{id}";
/// OpenAI: text completions.
pub const COMPLETIONS: &str = "/v1/completions";
/// OpenAI: chat completions.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// Pull mode, owner's key service: a fresh nonce for the runtime to put in its evidence.
pub const CHALLENGE: &str = "/v1/challenge";
/// Pull mode, owner's key service: evidence in, key release out.
pub const RELEASE: &str = "/v1/release";

/// Media type of an evidence bundle (postcard, [`crate::evidence::Evidence`]).
pub const EVIDENCE_MEDIA_TYPE: &str = "application/vnd.chrysalis.evidence";
/// Media type of a key release (postcard, [`crate::keyrelease::KeyRelease`]).
pub const KEY_RELEASE_MEDIA_TYPE: &str = "application/octet-stream";
/// Media type of a sealed request body.
pub const SEALED_REQUEST_MEDIA_TYPE: &str = "application/vnd.chrysalis.sealed-request";
/// Media type of a sealed whole (non-streaming) response body.
pub const SEALED_RESPONSE_MEDIA_TYPE: &str = "application/vnd.chrysalis.sealed-response";
