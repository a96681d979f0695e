//! `attest`: the model owner's command-line tool.
fn main() {}
