//! The owner CLI (`attest`, feature `cli`): argument parsing and dispatch. Each subcommand
//! lives in its own file and is a library function so that tests drive it directly.
//! Results go to stdout (a table, or JSON with `--json`), diagnostics to stderr.
//!
//! Exit codes: 0 ok; 1 verification or policy refusal (this side's or the runtime's);
//! 2 usage or I/O error.
//!
//! Trust: the policy file, key file and command line are the owner's; everything fetched or
//! read as evidence is untrusted and goes through `chrysalis_verify::verify`.

/// `println!` for results on stdout that exits quietly, as a SIGPIPE would, when the reader
/// went away (`attest verify … | head`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => { $crate::stdout::write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` with the same broken-pipe behaviour as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => { $crate::stdout::write(format_args!($($t)*)) };
}

mod stdout {
    use std::io::Write;

    /// Exit status of a process ended by SIGPIPE (128 + 13), what a shell reports for a
    /// writer whose reader closed the pipe.
    const EXIT_BROKEN_PIPE: i32 = 141;

    /// Write to stdout; a closed pipe ends the process quietly, another error is reported.
    pub(crate) fn write(args: std::fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        match out.write_fmt(args).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(EXIT_BROKEN_PIPE),
            Err(e) => eprintln!("attest: writing to stdout: {e}"),
        }
    }
}

mod fetch_vcek;
mod http;
pub mod policy_from;
pub mod proxy;
pub mod release;
pub mod seal;
pub mod serve_keys;
pub mod tlog;
pub mod transparency;
mod verify;
pub mod verify_receipt;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chrysalis_verify::attested::{EvidenceVerifier, PolicyVerifier};
use chrysalis_verify::grant::GrantError;
use chrysalis_verify::policy::Policy;

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
    Release(ReleaseCmd),
    /// Pull mode: serve the data key to runtimes that prove themselves at boot.
    ServeKeys(serve_keys::ServeKeysArgs),
    /// End users: a local OpenAI-compatible endpoint that verifies the runtime, seals every
    /// request to its attested key and checks every answer's receipt.
    Proxy(proxy::ProxyArgs),
    /// Check a receipt saved by `attest proxy` against the evidence it refers to.
    VerifyReceipt(verify_receipt::VerifyReceiptArgs),
    /// Write a ready policy from an image's published measurements (out/measurements.json).
    Policy(policy_from::PolicyArgs),
    /// Fetch the VCEK that signed an SEV-SNP report from AMD's KDS into a cache directory
    /// (explicit network access; verification itself never fetches).
    FetchVcek(fetch_vcek::FetchVcekArgs),
    /// Release transparency log: generate keys, append entries, verify an entry's inclusion.
    Log(tlog::LogArgs),
    /// Witness a release log: cosign its latest checkpoint if the latest entry matches a
    /// rebuild.
    Witness(tlog::WitnessArgs),
    /// List and check every entry of a release log (key releases: who got the key, when).
    Audit(tlog::AuditArgs),
}

/// `attest release`: its arguments and `--release-log`.
#[derive(clap::Args, Debug)]
struct ReleaseCmd {
    #[command(flatten)]
    args: release::ReleaseArgs,
    #[command(flatten)]
    release_log: transparency::ReleaseLogArgs,
}

/// Outcome of a subcommand that ran to completion.
pub enum Outcome {
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

impl From<GrantError> for Refused {
    fn from(e: GrantError) -> Self {
        Refused(e.to_string())
    }
}

/// The exit status an error maps to.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.downcast_ref::<Refused>().is_some() || e.downcast_ref::<GrantError>().is_some()) {
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
        Command::Release(ReleaseCmd { args: a, release_log }) => load_verifier(&a.policy, &a.inputs)
            .and_then(|v| release::run_with_log(&a, v.as_ref(), &release_log))
            .map(|_| Outcome::Ok),
        Command::ServeKeys(a) => load_verifier(&a.policy, &a.inputs).and_then(|v| serve_keys::run(&a, v)).map(|_| Outcome::Ok),
        Command::Proxy(a) => Policy::load(&a.policy)
            .map_err(|e| anyhow::anyhow!("policy {}: {e}", a.policy.display()))
            .and_then(|p| proxy::require_model_pin(&p, a.any_model).map(|()| p))
            .and_then(|p| load_verifier(&a.policy, &a.inputs).map(|v| transparency::TransparencyVerifier::wrap(v, p)))
            .and_then(|v| proxy::run(&a, v))
            .map(|_| Outcome::Ok),
        Command::Log(a) => tlog::run_log(&a),
        Command::Witness(a) => tlog::run_witness(&a),
        Command::Audit(a) => tlog::audit(&a),
        Command::VerifyReceipt(a) => load_verifier(&a.policy, &a.inputs).and_then(|v| verify_receipt::run(&a, v.as_ref())),
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

/// What verifying a runtime may need beyond the evidence it serves: AMD certificates when
/// the SNP host does not put them in the extended report, and Intel collateral for TDX
/// (verification never fetches; `attest fetch-vcek` and Intel PCS are explicit steps).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EvidenceInputs {
    /// Directory of VCEK/VLEK/ASK certificates (*.der, *.pem), e.g. from `attest fetch-vcek`.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Intel collateral (JSON: TCB info, QE identity, PCK and root CRLs) for TDX runtimes.
    #[arg(long, value_name = "FILE")]
    pub tdx_collateral: Option<PathBuf>,
}

impl EvidenceInputs {
    /// Load the certificates and collateral named here into `verifier`.
    pub fn apply(&self, mut verifier: PolicyVerifier) -> anyhow::Result<PolicyVerifier> {
        if let Some(dir) = &self.certs {
            let certs = chrysalis_verify::snp::kds::load_cert_dir(dir)
                .map_err(|e| anyhow::anyhow!("reading certificates from {}: {e}", dir.display()))?;
            verifier = verifier.with_snp_certs(certs);
        }
        if let Some(p) = &self.tdx_collateral {
            let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            let collateral =
                chrysalis_verify::tdx::Collateral::from_json(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            verifier = verifier.with_tdx_collateral(collateral);
        }
        Ok(verifier)
    }
}

/// The production verifier for a policy file.
pub fn load_verifier(policy: &Path, inputs: &EvidenceInputs) -> anyhow::Result<Box<dyn EvidenceVerifier>> {
    let p = Policy::load(policy).map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.display()))?;
    Ok(Box::new(inputs.apply(PolicyVerifier::new(p))?))
}
