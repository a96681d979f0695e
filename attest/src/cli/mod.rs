//! The owner CLI (`attest`, feature `cli`): argument parsing and dispatch. Each subcommand
//! lives in its own file. Results go to stdout (a table, or JSON with `--json`), diagnostics
//! to stderr. Exit codes: 0 ok, 1 verification or policy failure, 2 usage or I/O error.
//!
//! Trust: the policy file and the command line are the owner's; everything fetched or read
//! as evidence is untrusted and goes through `crate::verify`.

mod fetch_vcek;
mod http;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Chrysalis owner tool: verify attestation evidence against your policy.
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
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
