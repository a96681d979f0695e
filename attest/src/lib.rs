//! Chrysalis attestation: the evidence a runtime presents, how a model owner verifies it,
//! the policy that decides, the sealed-weights format and the attested key release.
//!
//! Trust: this crate trusts only the vendor roots pinned in `roots/` and the policy its
//! caller gives it; every byte of evidence is untrusted input.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod claims;
pub mod eventlog;
pub mod evidence;
pub mod nvidia;
