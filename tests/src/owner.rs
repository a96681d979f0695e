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

/// The tiny seeded Llama under the models folder, made once by the reference script
/// (`runtime/tests/reference/make_tiny_model.py`, with `$CHRYSALIS_PYTHON`) when missing.
pub fn tiny_llama() -> Result<PathBuf> {
    let models = models_dir();
    let dir = models.join("tiny-llama");
    if !dir.join("model.safetensors").exists() {
        let python = std::env::var_os("CHRYSALIS_PYTHON")
            .context("CHRYSALIS_PYTHON is not set (run `cargo xtask test`, which sets it and makes the models)")?;
        let script = crate::image::root().join("runtime/tests/reference/make_tiny_model.py");
        let out = std::process::Command::new(python)
            .arg(&script)
            .args(["--arch", "llama"])
            .env("CHRYSALIS_MODELS", &models)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!("{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(dir)
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

/// Fetch `<url>/v1/attestation` for `nonce` and verify it under `policy` as `attest verify`
/// does; `Err` names the HTTP status or every failed check.
pub fn verify_attestation(url: &str, policy: &Path, nonce: &[u8; 32]) -> Result<()> {
    let mut r = ureq::get(&format!("{url}/v1/attestation?nonce={}", hex::encode(nonce)))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .context("GET /v1/attestation")?;
    let body = r.body_mut().read_to_vec().context("reading the evidence")?;
    if r.status().as_u16() != 200 {
        bail!("/v1/attestation answered {}: {}", r.status(), String::from_utf8_lossy(&body));
    }
    let evidence = chrysalis_proto::evidence::Evidence::from_bytes(&body).context("decoding the evidence")?;
    let policy = Policy::load(policy).map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.display()))?;
    let report = chrysalis_verify::verify_evidence(&evidence, &policy, nonce, std::time::SystemTime::now());
    if !report.is_ok() {
        bail!("evidence does not verify:\n{report}");
    }
    Ok(())
}
