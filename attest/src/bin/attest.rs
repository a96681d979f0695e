//! `attest`: the model owner's command-line tool.
//!
//! Minimal dispatch for this branch's subcommands (seal, release, serve-keys); the full
//! binary adds `verify` and others.

use std::process::ExitCode;

use clap::Parser;

/// Chrysalis owner tool: seal model weights and release their key to attested runtimes.
#[derive(Parser, Debug)]
#[command(name = "attest", version)]
struct Cli {
    #[command(subcommand)]
    command: chrysalis_attest::cli::SealCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match chrysalis_attest::cli::run(&cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attest: {e:#}");
            ExitCode::from(chrysalis_attest::cli::exit_code(&e))
        }
    }
}
