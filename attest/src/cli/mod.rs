//! The owner CLI's sealing and key-release subcommands (`attest seal`, `attest release`,
//! `attest serve-keys`), as a library so that tests drive them with their own verifier.
//!
//! Exit codes: 0 ok; 1 verification or policy refusal (this side's or the runtime's);
//! 2 usage or I/O error. Results go to stdout (a table, or JSON with `--json`), diagnostics to
//! stderr.
//!
//! Trust: everything received over HTTP is untrusted; the key file and policy are the owner's.

pub mod release;
pub mod seal;
pub mod serve_keys;

use std::path::Path;

use crate::release::{EvidenceVerifier, ReleaseError};

/// The subcommands this module provides (the binary flattens them into its own enum).
#[derive(clap::Subcommand, Debug)]
pub enum SealCommand {
    /// Encrypt a model (directory or single GGUF file) into a sealed bundle and a key file.
    Seal(seal::SealArgs),
    /// Push mode: fetch a runtime's evidence, verify it and send it the data key.
    Release(release::ReleaseArgs),
    /// Pull mode: serve the data key to runtimes that prove themselves at boot.
    ServeKeys(serve_keys::ServeKeysArgs),
}

/// Exit status for a verification or policy refusal.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status for usage and I/O errors.
pub const EXIT_USAGE: u8 = 2;

/// A refusal (exit 1) rather than a usage or I/O problem (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

impl From<ReleaseError> for Refused {
    fn from(e: ReleaseError) -> Self {
        Refused(e.to_string())
    }
}

/// The exit status an error maps to.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.downcast_ref::<Refused>().is_some() || e.downcast_ref::<ReleaseError>().is_some()) {
        EXIT_REFUSED
    } else {
        EXIT_USAGE
    }
}

/// Run one subcommand with the production verifier.
pub fn run(cmd: &SealCommand) -> anyhow::Result<()> {
    match cmd {
        SealCommand::Seal(a) => seal::run(a).map(|_| ()),
        SealCommand::Release(a) => release::run(a, load_verifier(&a.policy)?.as_ref()).map(|_| ()),
        SealCommand::ServeKeys(a) => serve_keys::run(a, load_verifier(&a.policy)?),
    }
}

/// Merge seam: the production verifier for a policy file. This branch carries no hardware
/// verifier; the lead replaces the body with an adapter over `verify::verify_evidence`
/// (SNP/TDX/simulated + policy) that returns [`crate::release::VerifiedRuntime`] with the
/// verified REPORT_DATA, or [`ReleaseError::Refused`] with the report's reasons.
pub fn load_verifier(policy: &Path) -> anyhow::Result<Box<dyn EvidenceVerifier>> {
    anyhow::bail!(
        "no evidence verifier is built into this binary yet (policy {}): the hardware verifier is merged separately",
        policy.display()
    )
}
