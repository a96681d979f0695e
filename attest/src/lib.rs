//! Chrysalis attestation: the evidence a runtime presents, how a model owner verifies it,
//! the policy that decides, the sealed-weights format and the attested key release.
//!
//! Trust: this crate trusts only the vendor roots pinned in `roots/` and the policy its
//! caller gives it; every byte of evidence is untrusted input.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod ccel;
pub mod channel;
pub mod claims;
pub mod eventlog;
pub mod evidence;
pub mod gpubind;
pub mod keyrelease;
pub mod measure;
#[cfg(feature = "verify")]
pub mod nvidia;
#[cfg(feature = "verify")]
pub mod policy;
#[cfg(feature = "verify")]
pub mod release;
pub mod seal;
#[cfg(feature = "verify")]
pub mod sim;
pub mod sim_transport;
#[cfg(feature = "verify")]
pub mod snp;
#[cfg(feature = "verify")]
pub mod tdx;
#[cfg(feature = "verify")]
pub mod verify;
#[cfg(feature = "verify")]
pub mod verify_gpu;
pub mod wire;

#[cfg(feature = "verify")]
pub use policy::{Check, Policy};
#[cfg(feature = "verify")]
pub use verify::{verify_evidence, verify_evidence_with, verify_evidence_with_gpu, Report, VerifyContext};

