//! `cargo xtask`: one entry point for building, reproducing, booting and testing Chrysalis.
#![forbid(unsafe_code)]

mod firmware;

use std::path::PathBuf;
use std::process::ExitCode;

fn project_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = match args.as_slice() {
        ["firmware"] => firmware::ensure_firmware(&project_root()).map(|p| {
            println!("ovmf-amdsev   {}", p.amd_sev.display());
            println!("ovmf-inteltdx {}", p.intel_tdx.display());
        }),
        ["firmware", "--verify"] => firmware::verify_firmware(&project_root()).map(|s| {
            println!("firmware rebuilt from source in {s} s: every image matches its pin")
        }),
        ["firmware", "--print-hashes"] => firmware::print_hashes(&project_root()),
        _ => {
            eprintln!("usage: cargo xtask firmware [--verify | --print-hashes]");
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
