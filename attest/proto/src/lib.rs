//! What a Chrysalis guest and its owner share, and nothing else: the evidence bundle and
//! event log, the attested key release, the GPU binding, the simulated-TEE transport, the
//! sealed-weights format, the end-user channel and the runtime's HTTP routes.
//!
//! The guest runtime links this crate and no other crate of `attest/`, so it carries no
//! verifier, no X.509, no RSA, no XML and no launch-measurement code. Normative wire
//! formats: `EVIDENCE_FORMAT.md`, `SEALED_FORMAT.md`, `CHANNEL_FORMAT.md`, `GPU_BINDING.md`
//! next to this crate.
//!
//! Trust: every byte parsed here is untrusted input; parsers go through the one total
//! [`wire::Reader`] or postcard and return typed errors.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation
    )
)]

pub mod channel;
pub mod eventlog;
pub mod evidence;
pub mod gpubind;
pub mod keyrelease;
pub mod routes;
pub mod seal;
pub mod sim_transport;
pub mod wire;
