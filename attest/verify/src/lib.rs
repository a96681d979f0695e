//! Verifying Chrysalis evidence on the owner's and end user's side: the vendor verifiers
//! (SEV-SNP, TDX, NVIDIA, CCEL replay, the labelled simulator), the owner's policy, the
//! appraisal [`Report`] and the one step that attests a runtime ([`attest_runtime`]) used by
//! both the key release and the end-user channel.
//!
//! Trust: this crate trusts only the vendor roots pinned in `roots/` and the policy its
//! caller gives it; every byte of evidence is untrusted input.
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

pub mod attested;
pub mod ccel;
pub mod channel;
pub mod claims;
pub mod grant;
pub mod nvidia;
pub mod policy;
pub mod sim;
pub mod snp;
pub mod tdx;
pub mod verify;
pub mod verify_gpu;

pub use attested::{AttestError, AttestedRuntime, Challenge, EvidenceVerifier, PolicyVerifier, attest_runtime};
pub use policy::{Check, Policy};
pub use verify::{Report, VerifyContext, verify_evidence, verify_evidence_with, verify_evidence_with_gpu};
