//! The end-user channel: request bodies encrypted with HPKE to the runtime's attested
//! X25519 key, responses encrypted under keys exported from that request's HPKE context,
//! and a signed receipt at the end of every response. Normative description:
//! `attest/CHANNEL_FORMAT.md`.
//!
//! - [`crypto`]: the key schedule (HPKE `info`, exported response keys, record nonces);
//!   [`crypto::seal_request`] for the client, [`crypto::open_request`] for the runtime.
//! - [`frame`]: how records travel: length-prefixed for whole bodies, server-sent events for
//!   streams; total parsers.
//! - [`receipt`]: what the runtime signs per response, with a key measured into its event log.
//! - The client side that needs a verifier (what a client pins after verifying the runtime,
//!   one request without HTTP) is `chrysalis_verify::channel`.
//!
//! ```
//! use chrysalis_proto::channel::crypto::{open_request, seal_request, Target, ResponseMode};
//! use chrysalis_proto::keyrelease::RuntimeKeyPair;
//!
//! let runtime = RuntimeKeyPair::generate().unwrap();
//! let log_digest = [7u8; 48];
//! let target = Target::new("POST", "/v1/chat/completions");
//! // Client: seal the body to the attested key.
//! let (req, opener) = seal_request(&runtime.public_key(), &log_digest, &target, b"{}").unwrap();
//! // Runtime: open it, answer.
//! let (opened, sealer) = open_request(&runtime, &log_digest, &target, &req.enc, &req.ciphertext).unwrap();
//! assert_eq!(&opened.body[..], b"{}");
//! // The runtime answers each request id once (`replay::ReplayWindow`); the receipt names it.
//! assert_eq!(opened.meta, opener.meta());
//! let mut out = sealer.response(200, ResponseMode::Whole);
//! let records = [out.seal(b"{\"ok\":true}").unwrap(), out.seal_final(b"receipt").unwrap()];
//! // Client: open the records in order; the final one carries the receipt.
//! let mut inp = opener.response(200, ResponseMode::Whole);
//! assert_eq!(inp.open(&records[0]).unwrap().data(), Some(&b"{\"ok\":true}"[..]));
//! assert_eq!(inp.open(&records[1]).unwrap().receipt(), Some(&b"receipt"[..]));
//! assert!(inp.finish().is_ok());
//! ```
//!
//! Trust: everything received is untrusted until it opens under the keys of this module;
//! the client trusts the runtime key only after `chrysalis_verify::attest_runtime` verified the evidence.

pub mod crypto;
pub mod frame;
pub mod pad;
pub mod receipt;
pub mod replay;

/// Version of the channel, sent in [`HEADER_CHANNEL`]. Version 2 added padding, the request
/// id and issue time, and the request id in receipts; version 1 is refused.
pub const CHANNEL_VERSION: &str = "2";
/// Marks a sealed request or a sealed response; its value is [`CHANNEL_VERSION`].
pub const HEADER_CHANNEL: &str = "chrysalis-channel";
/// The HPKE encapsulated key of a request (64 lowercase hex digits).
pub const HEADER_ENC: &str = "chrysalis-enc";
/// The event-log digest the client attested and encrypted to (96 lowercase hex digits): the
/// channel's key id.
pub const HEADER_LOG_DIGEST: &str = "chrysalis-log-digest";
/// Set by `attest proxy` on its answers: the runtime's receipt for this response (base64).
pub const HEADER_RECEIPT: &str = "chrysalis-receipt";
/// OpenAI-style error `code` of a refused unencrypted request (403).
pub const CODE_CHANNEL_REQUIRED: &str = "channel_required";
/// Error `code` when the client encrypted to another runtime state (421): re-attest.
pub const CODE_KEY_UNKNOWN: &str = "channel_key_unknown";
/// Error `code` when a sealed request does not open (400).
pub const CODE_DECRYPT_FAILED: &str = "channel_decrypt_failed";
/// Error `code` for malformed channel headers (400).
pub const CODE_BAD_REQUEST: &str = "channel_bad_request";
/// Error `code` when a sealed request was received before (409): replayed.
pub const CODE_REPLAYED: &str = "channel_replayed";
/// Error `code` when a sealed request's issue time is outside the runtime's window (400).
pub const CODE_STALE: &str = "channel_stale";

/// Why a channel operation failed. Decryption failures are one opaque variant per direction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The runtime public key is not usable for X25519 (e.g. a low-order point).
    #[error("runtime public key is not a usable X25519 key")]
    InvalidPublicKey,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
    /// A sealed request did not open: wrong key, another runtime state, another route, or
    /// altered bytes.
    #[error("sealed request does not open (wrong key, another route or altered bytes)")]
    RequestDecrypt,
    /// A response record did not open: altered, reordered, replayed or from another request.
    #[error("response record {0} does not open (altered, reordered, replayed or from another request)")]
    ResponseDecrypt(u32),
    /// A record arrived after the final record.
    #[error("response record after the final record")]
    AfterFinal,
    /// The response ended before its final record.
    #[error("response truncated: ended after {0} records without the final record")]
    Truncated(u32),
    /// More records than the counter allows.
    #[error("too many response records")]
    TooManyRecords,
    /// A decrypted plaintext is not padded as the channel requires.
    #[error("plaintext padding is malformed: {0}")]
    Padding(String),
    /// The record framing is malformed.
    #[error("malformed channel framing: {0}")]
    Framing(String),
    /// A channel header is missing or malformed.
    #[error("bad channel header {name}: {why}")]
    Header {
        /// The header.
        name: &'static str,
        /// What was wrong.
        why: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_lower_case() {
        let errs = [
            ChannelError::InvalidPublicKey,
            ChannelError::Random,
            ChannelError::RequestDecrypt,
            ChannelError::ResponseDecrypt(3),
            ChannelError::AfterFinal,
            ChannelError::Truncated(2),
            ChannelError::TooManyRecords,
            ChannelError::Framing("x".into()),
            ChannelError::Padding("x".into()),
            ChannelError::Header { name: HEADER_ENC, why: "x".into() },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(s.chars().next().is_some_and(|c| c.is_lowercase()), "{s}");
        }
    }
}
