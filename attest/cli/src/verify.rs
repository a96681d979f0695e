//! `attest verify`: load the policy, obtain evidence (a bundle file, a runtime URL with a fresh
//! nonce, a raw SNP report with certificates, or a TDX quote with collateral), verify, print.
//!
//! Trust: the policy file and the nonce this command generates; the evidence is untrusted.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use rand_core_06::{OsRng, RngCore};

use super::{Outcome, http};
use chrysalis_proto::eventlog::EventLog;
use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, MAX_EVIDENCE_LEN, PlatformEvidence};
use chrysalis_verify::policy::{Check, Policy};
use chrysalis_verify::snp::SnpReport;
use chrysalis_verify::snp::kds::load_cert_dir;
use chrysalis_verify::tdx::Collateral;
use chrysalis_verify::verify::{Claims, Report, VerifyContext, verify_evidence_with};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["evidence", "url", "snp_report", "tdx_quote"])))]
pub(crate) struct VerifyArgs {
    /// Policy file (TOML; see policy.example.toml).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// An evidence bundle saved from a runtime (postcard `Evidence`).
    #[arg(long, value_name = "FILE")]
    evidence: Option<PathBuf>,
    /// A runtime's base URL (http://host:port): a fresh random 32-byte nonce is sent to
    /// {url}/v1/attestation?nonce={hex} and the evidence returned is verified.
    #[arg(long, value_name = "URL", conflicts_with = "nonce")]
    url: Option<String>,
    /// A raw 1184-byte SEV-SNP attestation report (binary, or hex text).
    #[arg(long, value_name = "FILE")]
    snp_report: Option<PathBuf>,
    /// Directory of VCEK/VLEK/ASK certificates (*.der, *.pem) for --snp-report or a bundle.
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// A raw Intel TDX DCAP quote (binary, or hex text).
    #[arg(long, value_name = "FILE", requires = "collateral")]
    tdx_quote: Option<PathBuf>,
    /// Intel collateral for --tdx-quote (JSON).
    #[arg(long, value_name = "FILE", requires = "tdx_quote")]
    collateral: Option<PathBuf>,
    /// The nonce the evidence must be bound to (hex). Default for --evidence: the nonce the
    /// bundle echoes (then freshness is not established, and a warning says so).
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Verify as of this time (RFC 3339, e.g. 2026-01-01T00:00:00Z) instead of now.
    #[arg(long, value_name = "RFC3339")]
    time: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len > MAX_EVIDENCE_LEN as u64 {
        bail!("{}: {len} bytes, limit {MAX_EVIDENCE_LEN}", path.display());
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// File contents, hex-decoded when the file is hex text.
fn read_binary_or_hex(path: &Path) -> Result<Vec<u8>> {
    let raw = read(path)?;
    let text = std::str::from_utf8(&raw).ok().map(str::trim).filter(|t| !t.is_empty());
    match text.map(hex::decode) {
        Some(Ok(bytes)) => Ok(bytes),
        _ => Ok(raw),
    }
}

fn bare_evidence(nonce: &[u8], platform: PlatformEvidence) -> Evidence {
    Evidence { version: EVIDENCE_VERSION, nonce: nonce.to_vec(), platform, event_log: EventLog::default(), gpus: vec![] }
}

pub(crate) fn run(a: VerifyArgs) -> Result<Outcome> {
    let policy = Policy::load(&a.policy)?;
    let now = match &a.time {
        Some(t) => humantime::parse_rfc3339_weak(t).with_context(|| format!("--time {t}: not RFC 3339"))?,
        None => SystemTime::now(),
    };
    let given_nonce =
        a.nonce.as_deref().map(|h| hex::decode(h.trim()).with_context(|| format!("--nonce {h}: not hex"))).transpose()?;
    let extra_certs = match &a.certs {
        Some(dir) => load_cert_dir(dir).with_context(|| format!("reading certificates from {}", dir.display()))?,
        None => vec![],
    };
    let collateral = match &a.collateral {
        Some(p) => Some(Collateral::from_json(&read(p)?).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?),
        None => None,
    };
    let mut warnings = Vec::new();
    let mut nonce_issued_at = None;
    let (evidence, nonce) = if let Some(url) = &a.url {
        let mut nonce = vec![0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        nonce_issued_at = Some(SystemTime::now());
        let full = format!("{}/v1/attestation?nonce={}", url.trim_end_matches('/'), hex::encode(&nonce));
        let body = http::get(&full, MAX_EVIDENCE_LEN)?;
        match Evidence::from_bytes(&body) {
            Ok(e) => (e, nonce),
            Err(e) => return print(&Report::undecodable(now, &e.to_string()), a.json),
        }
    } else if let Some(path) = &a.evidence {
        match Evidence::from_bytes(&read(path)?) {
            Ok(e) => {
                let nonce = match given_nonce {
                    Some(n) => n,
                    None => {
                        warnings.push(
                            "no --nonce given: using the nonce echoed in the evidence file, so freshness is NOT established"
                                .to_string(),
                        );
                        e.nonce.clone()
                    }
                };
                (e, nonce)
            }
            Err(e) => return print(&Report::undecodable(now, &e.to_string()), a.json),
        }
    } else if let Some(path) = &a.snp_report {
        let report = read_binary_or_hex(path)?;
        if report.len() != SnpReport::SIZE {
            log::warn!("{}: {} bytes, an SNP report has {}", path.display(), report.len(), SnpReport::SIZE);
        }
        let nonce = given_nonce.unwrap_or_default();
        (bare_evidence(&nonce, PlatformEvidence::Snp { report, certs: vec![] }), nonce)
    } else if let Some(path) = &a.tdx_quote {
        let quote = read_binary_or_hex(path)?;
        let nonce = given_nonce.unwrap_or_default();
        (bare_evidence(&nonce, PlatformEvidence::Tdx { quote, ccel_log: None }), nonce)
    } else {
        bail!("one of --evidence, --url, --snp-report, --tdx-quote is required");
    };
    let ctx =
        VerifyContext { nonce: &nonce, now, nonce_issued_at, tdx_collateral: collateral.as_ref(), extra_snp_certs: &extra_certs };
    let mut report = verify_evidence_with(&evidence, &policy, &ctx);
    if report.is_ok() && policy.require_transparency {
        report.checks.push(transparency_check(&policy, &report));
    }
    for w in warnings {
        log::warn!("{w}");
        report.warnings.push(w);
    }
    print(&report, a.json)
}

/// `require_transparency`: the verified launch measurement must be in the policy's log.
fn transparency_check(policy: &Policy, report: &Report) -> Check {
    let measurement = match &report.claims {
        Some(Claims::Snp(v)) => Some(v.claims().measurement.as_slice()),
        Some(Claims::Tdx(v)) => Some(v.claims().mr_td.as_slice()),
        _ => None,
    };
    let found = measurement.map(hex::encode).unwrap_or_else(|| "-".into());
    let expected = "in an image-release entry of the transparency log";
    match crate::transparency::require_released(policy, measurement) {
        Ok(Some(step)) => Check::new("transparency.log", true, found, expected).detail(step.detail),
        Ok(None) => Check::new("transparency.log", true, found, "not required"),
        Err(e) => Check::new("transparency.log", false, found, expected).detail(e.0),
    }
}

fn print(report: &Report, json: bool) -> Result<Outcome> {
    if json {
        outln!("{}", report.to_json());
    } else {
        out!("{report}");
    }
    Ok(if report.is_ok() { Outcome::Ok } else { Outcome::Failed })
}
