//! `cargo xtask`: one entry point for building, reproducing, booting and testing Chrysalis.
//!
//! Minimal dispatch on the `seal` branch: only `bench unseal` (the lead merges the rest).

mod bench;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bench", "unseal", ..] => bench::unseal::run(args.get(2..).unwrap_or_default()),
        _ => anyhow::bail!("usage: cargo xtask bench unseal [--size-mib N] [--runs N] [--skip-openssl]"),
    }
}
