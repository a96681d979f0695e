//! `attest release`: push mode. Fetch a runtime's evidence for a fresh nonce, verify it,
//! check the runtime loaded the bundle this key seals, wrap the key to the runtime's measured
//! public key and post it.
//!
//! Trust: the runtime's answers are untrusted (size-capped, decoded totally, printed
//! sanitised); the key file and the verifier are trusted.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use super::Refused;
use chrysalis_proto::evidence::{Evidence, MAX_EVIDENCE_LEN};
use chrysalis_proto::keyrelease::fresh_nonce;
use chrysalis_proto::routes;
use chrysalis_proto::seal::{KeyFile, read_header_from};
use chrysalis_verify::attested::{EvidenceVerifier, Step};
use chrysalis_verify::grant::grant_key;

/// Arguments of `attest release`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReleaseArgs {
    /// The runtime's base URL, e.g. http://127.0.0.1:8080 (plain HTTP: the key is HPKE-wrapped).
    #[arg(long)]
    pub url: String,
    /// Policy file the evidence must satisfy.
    #[arg(long)]
    pub policy: PathBuf,
    /// Key file written by `attest seal`.
    #[arg(long)]
    pub key: PathBuf,
    /// The sealed bundle: also check that it is the one the key file belongs to.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// HTTP timeout per request, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Certificates and collateral the evidence may lack.
    #[command(flatten)]
    pub inputs: super::EvidenceInputs,
}

/// What `attest release` did.
#[derive(Debug, Serialize)]
pub struct ReleaseOutcome {
    /// The runtime URL.
    pub url: String,
    /// Hex nonce used.
    pub nonce: String,
    /// Steps that passed.
    pub steps: Vec<Step>,
    /// HTTP status of the runtime's answer to the key.
    pub runtime_status: u16,
    /// The runtime's answer (sanitised text).
    pub runtime_answer: String,
}

/// Read at most `limit` bytes of an HTTP body as printable text.
pub(crate) fn sanitize(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body.get(..4096).unwrap_or(body));
    text.chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect::<String>().trim().to_owned()
}

pub(crate) fn agent(timeout_s: u64) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(timeout_s))).build().into()
}

/// Run the release with `verifier`; prints the outcome.
pub fn run(args: &ReleaseArgs, verifier: &dyn EvidenceVerifier) -> anyhow::Result<ReleaseOutcome> {
    run_with_log(args, verifier, &Default::default())
}

/// [`run`], logging the key release to `release_log` (`--release-log`, kept out of
/// [`ReleaseArgs`] so that callers building it stay unchanged).
pub fn run_with_log(
    args: &ReleaseArgs,
    verifier: &dyn EvidenceVerifier,
    release_log: &crate::transparency::ReleaseLogArgs,
) -> anyhow::Result<ReleaseOutcome> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(&args.key).with_context(|| format!("reading key file {}", args.key.display()))?,
    );
    let kf = KeyFile::parse(&text).with_context(|| format!("parsing key file {}", args.key.display()))?;
    if let Some(b) = &args.bundle {
        let mut f = fs::File::open(b).with_context(|| format!("opening {}", b.display()))?;
        let h = read_header_from(&mut f).with_context(|| format!("reading the header of {}", b.display()))?;
        if h.digest() != kf.header_digest {
            bail!(
                "{} (header {}) is not the bundle {} seals (header {})",
                b.display(),
                hex::encode(h.digest()),
                args.key.display(),
                hex::encode(kf.header_digest)
            );
        }
    }
    let base = args.url.trim_end_matches('/');
    let agent = agent(args.timeout_s);
    let nonce = fresh_nonce().context("drawing a nonce")?;
    let issued_at = std::time::SystemTime::now();

    let mut resp = agent
        .get(format!("{base}{}", routes::ATTESTATION))
        .query("nonce", hex::encode(nonce))
        .call()
        .with_context(|| format!("GET {base}{}", routes::ATTESTATION))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_EVIDENCE_LEN as u64)
        .read_to_vec()
        .with_context(|| format!("reading the evidence from {base}"))?;
    if !status.is_success() {
        bail!("runtime answered {status} to GET {}: {}", routes::ATTESTATION, sanitize(&body));
    }
    let evidence = Evidence::from_bytes(&body).map_err(|e| Refused(format!("runtime evidence: {e}")))?;
    let grant =
        grant_key(&evidence, &nonce, Some(issued_at), verifier, &kf.key, Some(&kf.header_digest)).map_err(Refused::from)?;
    let grant = crate::transparency::after_grant(&args.policy, release_log, &evidence, grant, &kf.header_digest)?;

    let mut resp = agent
        .post(format!("{base}{}", routes::KEY))
        .header("content-type", routes::KEY_RELEASE_MEDIA_TYPE)
        .send(&grant.message.to_bytes()[..])
        .with_context(|| format!("POST {base}{}", routes::KEY))?;
    let runtime_status = resp.status();
    let answer = resp.body_mut().with_config().limit(64 * 1024).read_to_vec().unwrap_or_default();
    let outcome = ReleaseOutcome {
        url: base.to_owned(),
        nonce: hex::encode(nonce),
        steps: grant.steps,
        runtime_status: runtime_status.as_u16(),
        runtime_answer: sanitize(&answer),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome).context("encoding JSON")?);
    } else {
        outln!("key release to {} (model {:?})", outcome.url, kf.model_name);
        outln!("  nonce {}", outcome.nonce);
        for c in &outcome.steps {
            outln!("  ok  {:<22} {}", c.name, c.detail);
        }
        outln!("  runtime answered {}: {}", runtime_status, outcome.runtime_answer);
    }
    if !runtime_status.is_success() {
        return Err(Refused(format!("runtime refused the key ({runtime_status}): {}", outcome.runtime_answer)).into());
    }
    Ok(outcome)
}
