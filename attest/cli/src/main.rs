//! `attest`: the model owner's command-line tool (feature `cli`). See `attest --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    chrysalis_attest::main()
}
