//! `cargo xtask`: one entry point for building, reproducing, booting and testing Chrysalis.
fn main() {}
