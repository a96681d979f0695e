//! `attest verify-receipt`: prove later which runtime answered. Verifies the evidence a
//! receipt refers to under a policy (as `attest proxy` did when it was saved), takes the
//! receipt key from that verified event log, and checks the receipt's signature, event-log
//! digest, launch measurement and bundle header — and, given the bodies, its request and
//! response hashes.
//!
//! Trust: the policy is the user's; receipt, evidence and bodies are untrusted files.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::Outcome;
use chrysalis_proto::channel::receipt::{Receipt, request_hash, response_hash};
use chrysalis_proto::evidence::Evidence;
use chrysalis_verify::attested::{Challenge, EvidenceVerifier, attest_runtime};
use chrysalis_verify::channel::receipt::{ReceiptExpectations, check_receipt};
use chrysalis_verify::policy::Check;

/// Arguments of `attest verify-receipt`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyReceiptArgs {
    /// The receipt (base64 as `attest proxy` saves it, or raw bytes).
    #[arg(long)]
    pub receipt: PathBuf,
    /// The evidence the receipt refers to (postcard, as saved next to it).
    #[arg(long)]
    pub evidence: PathBuf,
    /// The nonce the evidence was fetched with (hex).
    #[arg(long)]
    pub nonce: String,
    /// Policy the evidence must satisfy.
    #[arg(long)]
    pub policy: PathBuf,
    /// The request body that was sent (checks the request hash).
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// The response body that was received (checks the response hash).
    #[arg(long)]
    pub response: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Certificates and collateral the evidence may lack.
    #[command(flatten)]
    pub inputs: super::EvidenceInputs,
}

/// The result of `attest verify-receipt`.
#[derive(Debug, Serialize)]
pub struct ReceiptReport {
    /// True when every check passed.
    pub ok: bool,
    /// The receipt's statement (hashes in hex).
    pub receipt: serde_json::Value,
    /// Every check, evidence first.
    pub checks: Vec<Check>,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Run the verification with `verifier`; prints the report, returns whether it passed.
pub fn run(args: &VerifyReceiptArgs, verifier: &dyn EvidenceVerifier) -> anyhow::Result<Outcome> {
    let receipt = Receipt::from_text_or_bytes(&read(&args.receipt)?)
        .map_err(|e| super::Refused(format!("{}: {e}", args.receipt.display())))?;
    let evidence =
        Evidence::from_bytes(&read(&args.evidence)?).map_err(|e| super::Refused(format!("{}: {e}", args.evidence.display())))?;
    let nonce = hex::decode(args.nonce.trim()).context("--nonce is not hex")?;
    let expect = ReceiptExpectations {
        target: None,
        request_id: None,
        request_sha384: args.request.as_ref().map(read).transpose()?.map(|b| request_hash(&b)),
        status: None,
        response_sha384: args.response.as_ref().map(read).transpose()?.map(|b| response_hash(&b)),
    };
    let b = &receipt.body;
    let statement = serde_json::json!({
        "target": b.target,
        "request_id": hex::encode(b.request_id),
        "status": b.status,
        "model": b.model,
        "request_sha384": hex::encode(b.request_sha384),
        "response_sha384": hex::encode(b.response_sha384),
        "bundle_header_sha384": b.bundle_header_sha384.as_ref().map(hex::encode),
        "event_log_digest": hex::encode(b.event_log_digest),
        "launch_measurement": hex::encode(&b.launch_measurement),
        "runtime_time_unix_s": b.runtime_time_unix_s,
    });
    let mut checks = Vec::new();
    // Saved evidence: when its nonce was issued is not known, so a `[freshness]` bound fails.
    match attest_runtime(evidence, Challenge::undated(&nonce), verifier) {
        Ok(rt) => {
            checks.push(Check::new("evidence", true, format!("{} checks passed", rt.steps.len()), "verified under the policy"));
            checks.extend(check_receipt(&receipt, &rt, &expect));
        }
        Err(e) => checks.push(Check::new("evidence", false, "refused", "verified under the policy").detail(e.to_string())),
    }
    let report = ReceiptReport { ok: checks.iter().all(|c| c.passed), receipt: statement, checks };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report).context("encoding JSON")?);
    } else {
        outln!("receipt {}", args.receipt.display());
        outln!("  {} -> {} (model {:?})", b.target, b.status, b.model);
        for c in &report.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            let detail = if c.detail.is_empty() { String::new() } else { format!(" ({})", c.detail) };
            if c.passed {
                outln!("  {mark} {:<22} {}{detail}", c.name, c.found);
            } else {
                outln!("  {mark} {:<22} found {}, expected {}{detail}", c.name, c.found, c.expected);
            }
        }
        outln!("{}", if report.ok { "receipt verified" } else { "receipt NOT verified" });
    }
    Ok(if report.ok { Outcome::Ok } else { Outcome::Failed })
}
