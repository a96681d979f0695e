//! `cargo xtask`: one entry point for building, reproducing, booting and testing Chrysalis.

mod bench;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bench", "infer", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            bench::infer::run(&bench::infer::InferBench::from_args(&rest)?)
        }
        _ => {
            eprintln!("usage: cargo xtask bench infer [--runs N] [--gen N] [--prompt-tokens N] [--threads N] [--variants q8_0,native,q4_0,f32] [--no-llama-cpp] [--no-torch]");
            std::process::exit(2);
        }
    }
}
