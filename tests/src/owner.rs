//! What a model owner does, for the tests and the demo: seal a model folder into a bundle
//! and a key file (`attest seal`), write a policy that accepts exactly one launch
//! measurement, and release the key to a runtime (`attest release`) — through the same
//! library functions the `attest` CLI runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrysalis_attest as cli;
use chrysalis_attest::release::{ReleaseArgs, ReleaseOutcome};
use chrysalis_attest::seal::{SealArgs, SealSummary};
use chrysalis_verify::PolicyVerifier;
use chrysalis_verify::policy::Policy;
use chrysalis_verify::sim::SimRootPublicKey;

/// The models folder (`$CHRYSALIS_MODELS`, default `<root>/.cache/models`), which
/// `cargo xtask test` / `cargo xtask models` fill.
pub fn models_dir() -> PathBuf {
    std::env::var_os("CHRYSALIS_MODELS").map(PathBuf::from).unwrap_or_else(|| crate::image::root().join(".cache/models"))
}

/// A model folder or file under the models folder, checked to exist.
pub fn model(rel: &str) -> Result<PathBuf> {
    let p = models_dir().join(rel);
    if !p.exists() {
        bail!("{} is missing: run `cargo xtask models` (or the suite with `cargo xtask test`)", p.display());
    }
    Ok(p)
}

/// `attest seal --model <model> --out <dir>/model.sealed --key-out <dir>/model.key`.
pub fn seal(model: &Path, dir: &Path, name: &str) -> Result<SealSummary> {
    let args = SealArgs {
        model: model.to_path_buf(),
        out: dir.join("model.sealed"),
        key_out: dir.join("model.key"),
        name: Some(name.into()),
        chunk_size: 1 << 20,
        padme: false,
        json: false,
    };
    let _ = std::fs::remove_file(&args.out);
    let _ = std::fs::remove_file(&args.key_out);
    cli::seal::run(&args)
}

/// A policy that accepts only the simulated TEE with `root` and `measurement`, bound to
/// the runtime's event log, optionally pinning the bundle header the runtime must load.
pub fn sim_policy(root: &SimRootPublicKey, measurement: &[u8; 48], bundle_header_sha384: Option<&str>) -> String {
    let runtime = bundle_header_sha384.map(|h| format!("[runtime]\nbundle_header_sha384 = [\"{h}\"]\n")).unwrap_or_default();
    format!(
        "allow_debug = false\n\n[measurements]\nsnp = []\ntdx_mrtd = []\n\n[report_data]\nbinding = \"chrysalis-eventlog\"\n\n\
         {runtime}\n[simulation]\nallow_simulated = true\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n",
        root.to_hex(),
        hex::encode(measurement)
    )
}

/// Write `policy` to `<dir>/policy.toml`, checking it parses.
pub fn write_policy(dir: &Path, policy: &str) -> Result<PathBuf> {
    Policy::from_toml(policy).map_err(|e| anyhow::anyhow!("test policy does not parse: {e}"))?;
    let p = dir.join("policy.toml");
    std::fs::write(&p, policy)?;
    Ok(p)
}

/// `attest release --url <url> --policy <policy> --key <key>`.
pub fn release(url: &str, policy: &Path, key: &Path) -> Result<ReleaseOutcome> {
    let p = Policy::load(policy).map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.display()))?;
    let args = ReleaseArgs {
        url: url.into(),
        policy: policy.to_path_buf(),
        key: key.to_path_buf(),
        bundle: None,
        timeout_s: 600,
        json: false,
        inputs: Default::default(),
    };
    cli::release::run(&args, &PolicyVerifier::new(p)).context("attest release")
}
