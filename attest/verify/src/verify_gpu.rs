//! The GPU part of evidence verification: GPU evidence counts only when the runtime's event
//! log (already bound to the hardware REPORT_DATA) commits to it, and each GPU must have
//! signed the nonce derived from that log (`chrysalis_proto::gpubind`, `attest/GPU_BINDING.md`).
//! Then every GPU report is verified ([`nvidia::verify_gpu_with`]) and judged by the
//! policy's `[gpu]` section. Every step is a row of the report.
//!
//! Trust: the policy, the caller's [`GpuAppraisal`] (RIM bundle, roots) and time. The GPU
//! evidence and the event log are untrusted; the log counts only when `bound` says the CPU
//! verification bound it to REPORT_DATA.

use std::path::Path;
use std::time::SystemTime;

use crate::nvidia::{self, NvError, RimBundle, SpdmReport, Trust};
use crate::policy::{Check, Policy};
use crate::verify::Report;
use chrysalis_proto::evidence::Evidence;
use chrysalis_proto::gpubind::{self, GpuBindingError};

/// What GPU appraisal uses besides the policy: the RIM bundle (by default read from the
/// policy's `[gpu] rim_bundle` directory at verification time) and the roots (by default
/// NVIDIA's pinned roots).
#[derive(Clone, Debug, Default)]
pub struct GpuAppraisal {
    rims: Option<RimBundle>,
    trust: Option<Trust>,
    #[cfg(feature = "insecure-test-hooks")]
    test_nonce: Option<[u8; gpubind::GPU_NONCE_LEN]>,
}

impl GpuAppraisal {
    /// RIMs from the policy's `rim_bundle`, NVIDIA's pinned roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this bundle instead of reading the policy's `rim_bundle` directory (e.g. one
    /// loaded once by a long-running key-release service).
    pub fn with_rims(mut self, rims: RimBundle) -> Self {
        self.rims = Some(rims);
        self
    }

    /// Trust other roots than NVIDIA's (e.g. test-signed RIMs).
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// **INSECURE, TESTS ONLY** (feature `insecure-test-hooks`, never enabled by the CLI or
    /// the runtime): expect the GPUs to have signed `nonce` instead of the nonce derived from
    /// the event log. This removes the binding of the GPU reports to this boot; it exists
    /// because genuine GPU test vectors carry a fixed nonce that no event log derives.
    /// Every report verified with it carries a loud warning.
    #[cfg(feature = "insecure-test-hooks")]
    pub fn insecure_test_nonce(mut self, nonce: [u8; gpubind::GPU_NONCE_LEN]) -> Self {
        self.test_nonce = Some(nonce);
        self
    }

    #[cfg(feature = "insecure-test-hooks")]
    fn nonce_override(&self) -> Option<[u8; gpubind::GPU_NONCE_LEN]> {
        self.test_nonce
    }

    #[cfg(not(feature = "insecure-test-hooks"))]
    fn nonce_override(&self) -> Option<[u8; gpubind::GPU_NONCE_LEN]> {
        None
    }
}

/// The warning of a verification that used `GpuAppraisal::insecure_test_nonce` (feature `insecure-test-hooks`).
pub const TEST_NONCE_WARNING: &str = "INSECURE TEST HOOK: the GPU nonce was supplied by the caller, not derived from the event log; the GPU evidence is NOT bound to this boot";

/// Append the GPU rows to `r`. `bound`: the CPU verification bound the event log to
/// REPORT_DATA for the verifier's nonce.
pub(crate) fn check(
    r: &mut Report,
    evidence: &Evidence,
    policy: &Policy,
    now: SystemTime,
    appraisal: &GpuAppraisal,
    bound: bool,
) {
    let gpus = &evidence.gpus;
    let binding = gpubind::find_binding(&evidence.event_log);
    if gpus.is_empty() && binding == Err(GpuBindingError::Missing) {
        if policy.gpu.require_gpu {
            r.checks.push(
                Check::new("gpu.present", false, "no GPU evidence", "GPU evidence")
                    .detail("refused: [gpu] require_gpu = true and the evidence carries no GPU evidence"),
            );
        }
        return;
    }
    r.checks.push(Check::new(
        "gpu.present",
        !gpus.is_empty() || !policy.gpu.require_gpu,
        format!("{} GPU reports", gpus.len()),
        if policy.gpu.require_gpu { "at least one" } else { "any" },
    ));
    let expected_digest = gpubind::gpus_digest(gpus);
    let binding = match binding {
        Ok(b) => b,
        Err(e) => {
            r.checks.push(
                Check::new("gpu.event", false, "", hex::encode(expected_digest))
                    .detail(format!("{e}: the GPU evidence is not bound to the CPU evidence")),
            );
            return;
        }
    };
    if !bound {
        r.checks.push(
            Check::new("gpu.event", false, hex::encode(binding.event.digest), hex::encode(expected_digest))
                .detail("event log is not bound to REPORT_DATA: the GPU evidence cannot be tied to this CPU evidence"),
        );
        return;
    }
    let digest_ok = binding.event.digest == expected_digest;
    r.checks.push(Check::new("gpu.event", digest_ok, hex::encode(binding.event.digest), hex::encode(expected_digest)).detail(
        if digest_ok {
            "GpuEvidence event = SHA-384(canonical encoding of the served GPU evidence)"
        } else {
            "the GpuEvidence event digest does not match SHA-384 of the served GPU evidence"
        },
    ));
    if !digest_ok {
        return;
    }
    let nonce = match appraisal.nonce_override() {
        Some(n) => {
            r.warn(TEST_NONCE_WARNING);
            n
        }
        None => {
            if !binding.after_public_key {
                r.checks.push(
                    Check::new("gpu.nonce", false, "", "")
                        .detail("no PublicKey event precedes the GpuEvidence event: the GPU nonce is not fresh per boot"),
                );
                return;
            }
            binding.nonce
        }
    };
    let (rims, rim_bundle_row) = load_rims(policy, appraisal);
    if let Some(row) = rim_bundle_row {
        let failed = !row.passed;
        r.checks.push(row);
        if failed {
            return;
        }
    }
    let trust = match appraisal.trust.clone().map_or_else(Trust::nvidia, Ok) {
        Ok(t) => t,
        Err(e) => {
            r.checks.push(Check::new("gpu.roots", false, "", "pinned NVIDIA roots").detail(e.to_string()));
            return;
        }
    };
    let nonce_detail = if appraisal.nonce_override().is_some() {
        "TEST OVERRIDE: supplied by the caller, not derived from the event log"
    } else {
        "SHA-256(\"chrysalis/gpu-nonce/v1\" || 0x00 || event-log digest before the GpuEvidence event)"
    };
    for (i, ev) in gpus.iter().enumerate() {
        let row = |what: &str| format!("gpu[{i}].{what}");
        let report = match SpdmReport::parse(&ev.report) {
            Ok(rep) => rep,
            Err(e) => {
                r.checks.push(
                    Check::new(&row("report"), false, "", "valid SPDM measurement report").detail(NvError::Report(e).to_string()),
                );
                continue;
            }
        };
        let nonce_ok = report.request_nonce == nonce;
        r.checks.push(Check::new(&row("nonce"), nonce_ok, hex::encode(report.request_nonce), hex::encode(nonce)).detail(
            if nonce_ok {
                nonce_detail.to_string()
            } else {
                format!("the GPU signed another nonce than the one derived from this event log; expected {nonce_detail}")
            },
        ));
        match nvidia::verify_gpu_with(ev, &nonce, &rims, now, &trust) {
            Ok(v) => {
                let c = v.claims();
                r.checks.push(
                    Check::new(
                        &row("report"),
                        true,
                        format!("driver {}, VBIOS {}", c.driver_version, c.vbios_version),
                        "signed by a device chain to the pinned root",
                    )
                    .detail(c.device_leaf.clone()),
                );
                r.checks.extend(policy.check_gpu(i, &v));
                r.gpus.push(v);
            }
            Err(e @ NvError::NonceMismatch { .. }) => r.checks.push(
                Check::new(&row("report"), false, "not appraised", "signed by a device chain to the pinned root")
                    .detail(format!("device chain, FWID and signature are valid, but RIMs and OCSP were not checked: {e}")),
            ),
            Err(e) => r
                .checks
                .push(Check::new(&row("report"), false, "", "signed by a device chain to the pinned root").detail(e.to_string())),
        }
    }
}

/// The bundle to use, and a row saying where it came from (a failing row when the policy's
/// directory cannot be read).
fn load_rims(policy: &Policy, appraisal: &GpuAppraisal) -> (RimBundle, Option<Check>) {
    if let Some(b) = &appraisal.rims {
        return (b.clone(), None);
    }
    let Some(dir) = policy.gpu.rim_bundle.as_deref() else {
        return (RimBundle::new(), None);
    };
    match RimBundle::load_dir(Path::new(dir)) {
        Ok(b) => {
            let row = Check::new(
                "gpu.rim_bundle",
                true,
                format!("{} RIMs, {} OCSP responses", b.rim_ids().count(), b.ocsp().len()),
                dir,
            );
            (b, Some(row))
        }
        Err(e) => {
            (RimBundle::new(), Some(Check::new("gpu.rim_bundle", false, "", dir).detail(format!("reading the RIM bundle: {e}"))))
        }
    }
}
