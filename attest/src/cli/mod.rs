//! The owner CLI (`attest`, feature `cli`): argument parsing and dispatch. Each subcommand
//! lives in its own file and is a library function so that tests drive it directly.
//! Results go to stdout (a table, or JSON with `--json`), diagnostics to stderr.
//!
//! Exit codes: 0 ok; 1 verification or policy refusal (this side's or the runtime's);
//! 2 usage or I/O error.
//!
//! Trust: the policy file, key file and command line are the owner's; everything fetched or
//! read as evidence is untrusted and goes through `crate::verify`.

mod fetch_vcek;
mod http;
pub mod policy_from;
pub mod release;
pub mod seal;
pub mod serve_keys;
mod verify;

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::evidence::Evidence;
use crate::policy::Policy;
use crate::release::{EvidenceVerifier, ReleaseError, VerifiedRuntime};
use crate::verify::{Claims, VerifyContext, verify_evidence_with};

/// Chrysalis owner tool: seal model weights, verify attestation evidence against your
/// policy, and release the weights key only to runtimes that pass.
#[derive(Parser, Debug)]
#[command(name = "attest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify evidence (a runtime's bundle, a raw SEV-SNP report or a TDX quote) against a
    /// policy and print what passed and failed.
    Verify(verify::VerifyArgs),
    /// Encrypt a model (directory or single GGUF file) into a sealed bundle and a key file.
    Seal(seal::SealArgs),
    /// Push mode: fetch a runtime's evidence, verify it and send it the data key.
    Release(release::ReleaseArgs),
    /// Pull mode: serve the data key to runtimes that prove themselves at boot.
    ServeKeys(serve_keys::ServeKeysArgs),
    /// Write a ready policy from an image's published measurements (out/measurements.json).
    Policy(policy_from::PolicyArgs),
    /// Fetch the VCEK that signed an SEV-SNP report from AMD's KDS into a cache directory
    /// (explicit network access; verification itself never fetches).
    FetchVcek(fetch_vcek::FetchVcekArgs),
}

/// Outcome of a subcommand that ran to completion.
pub(crate) enum Outcome {
    /// Everything passed.
    Ok,
    /// Verification or policy failure.
    Failed,
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

/// Entry point of the `attest` binary.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Verify(a) => verify::run(a),
        Command::FetchVcek(a) => fetch_vcek::run(a),
        Command::Policy(a) => policy_from::run(a),
        Command::Seal(a) => seal::run(&a).map(|_| Outcome::Ok),
        Command::Release(a) => load_verifier(&a.policy).and_then(|v| release::run(&a, v.as_ref())).map(|_| Outcome::Ok),
        Command::ServeKeys(a) => load_verifier(&a.policy).and_then(|v| serve_keys::run(&a, v)).map(|_| Outcome::Ok),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(EXIT_REFUSED),
        Err(e) => {
            eprintln!("attest: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The production verifier for key release: hardware (or, if the policy allows, simulated)
/// evidence checked by [`crate::verify`] under the owner's policy.
pub struct PolicyVerifier {
    policy: Policy,
}

impl PolicyVerifier {
    /// A verifier for `policy`.
    pub fn new(policy: Policy) -> Self {
        PolicyVerifier { policy }
    }
}

impl EvidenceVerifier for PolicyVerifier {
    fn verify(&self, evidence: &Evidence, nonce: &[u8]) -> Result<VerifiedRuntime, ReleaseError> {
        let ctx = VerifyContext::new(nonce, SystemTime::now());
        let report = verify_evidence_with(evidence, &self.policy, &ctx);
        for w in &report.warnings {
            eprintln!("attest: WARNING: {w}");
        }
        if !report.is_ok() {
            let reasons: Vec<String> =
                report.failures().map(|c| format!("{}: found {}, expected {} ({})", c.name, c.found, c.expected, c.detail)).collect();
            return Err(ReleaseError::Refused(reasons.join("; ")));
        }
        let report_data: [u8; 64] = match &report.claims {
            Some(Claims::Snp(c)) => c.claims().report_data.as_slice().try_into(),
            Some(Claims::Tdx(c)) => c.claims().report_data.as_slice().try_into(),
            None => return Err(ReleaseError::Refused("verification produced no claims".into())),
        }
        .map_err(|_| ReleaseError::Refused("REPORT_DATA is not 64 bytes".into()))?;
        let checks = report
            .checks
            .iter()
            .map(|c| crate::release::Check::new(c.name.clone(), format!("{} ({})", c.found, c.detail)))
            .collect();
        Ok(VerifiedRuntime { report_data, checks })
    }
}

/// The production verifier for a policy file.
pub fn load_verifier(policy: &Path) -> anyhow::Result<Box<dyn EvidenceVerifier>> {
    let p = Policy::load(policy).map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.display()))?;
    Ok(Box::new(PolicyVerifier::new(p)))
}
