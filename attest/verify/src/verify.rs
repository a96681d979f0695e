//! Top-level evidence verification: dispatch by platform to the SNP, TDX or simulated
//! verifier, check the runtime's event log and its REPORT_DATA binding for the verifier's
//! nonce, verify the GPU evidence bound into that log (`crate::verify_gpu`), apply the
//! policy, and collect everything into a [`Report`] (a table of checks plus the verified
//! claims) that prints as an aligned table or serialises to JSON.
//!
//! Trust: the policy and the caller's nonce, time and collateral. The evidence is untrusted;
//! nothing in it is believed before its platform signature chain verified, and nothing in the
//! event log before REPORT_DATA bound it.

use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use crate::claims::{SnpClaims, SnpSigner, TdxClaims, Verified};
use crate::nvidia::GpuClaims;
use crate::policy::{Binding, Check, HasReportData, Policy};
use crate::snp::cert::{rfc3339, unix_secs};
use crate::snp::{self, TcbParts};
use crate::verify_gpu::GpuAppraisal;
use crate::{sim, tdx, verify_gpu};
use chrysalis_proto::eventlog::EventLog;
use chrysalis_proto::evidence::{Evidence, PlatformEvidence};

/// Everything the verifier brings besides the evidence and the policy.
#[derive(Clone, Debug)]
pub struct VerifyContext<'a> {
    /// The nonce this verifier sent (REPORT_DATA must bind it).
    pub nonce: &'a [u8],
    /// The verification time: certificate and collateral validity are judged at it.
    pub now: SystemTime,
    /// When this verifier issued the nonce, if it did (for `[freshness]`).
    pub nonce_issued_at: Option<SystemTime>,
    /// Intel collateral for a TDX quote.
    pub tdx_collateral: Option<&'a tdx::Collateral>,
    /// Extra SNP certificates (DER or PEM), e.g. from a local VCEK cache.
    pub extra_snp_certs: &'a [Vec<u8>],
}

impl<'a> VerifyContext<'a> {
    /// A context with just a nonce and a time.
    pub fn new(nonce: &'a [u8], now: SystemTime) -> Self {
        VerifyContext { nonce, now, nonce_issued_at: None, tdx_collateral: None, extra_snp_certs: &[] }
    }
}

/// The verified hardware claims.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Claims {
    /// SEV-SNP or the simulated TEE.
    Snp(Verified<SnpClaims>),
    /// TDX.
    Tdx(Verified<TdxClaims>),
}

/// The outcome of verifying one evidence bundle.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "sev-snp", "tdx" or "simulated".
    pub platform: String,
    /// The verification time, RFC 3339.
    pub verified_at: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// The verified claims (absent when platform verification failed).
    pub claims: Option<Claims>,
    /// The verified claims of each GPU whose report verified (bound to `claims` through the
    /// event log).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Verified<GpuClaims>>,
    /// Warnings for humans (a simulated TEE, an unbound nonce, ...).
    pub warnings: Vec<String>,
}

/// The loud line printed and logged for every simulated verification.
pub const SIMULATED_WARNING: &str =
    "SIMULATED TEE: this evidence comes from the Chrysalis simulator, NOT from hardware; it proves nothing about isolation";

impl Report {
    pub(crate) fn empty(platform: &str, now: SystemTime) -> Self {
        Report {
            platform: platform.into(),
            verified_at: rfc3339(unix_secs(now)),
            checks: vec![],
            claims: None,
            gpus: vec![],
            warnings: vec![],
        }
    }

    /// The report for bytes that are not an evidence bundle: one failed `evidence.decode`
    /// check naming why.
    pub fn undecodable(now: SystemTime, why: &str) -> Self {
        let mut r = Report::empty("unknown", now);
        r.checks.push(Check::new("evidence.decode", false, "", "valid evidence bundle").detail(why));
        r
    }

    /// True when there is at least one check and every check passed.
    pub fn is_ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// Pretty JSON, with an `ok` field added.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct View<'a> {
            ok: bool,
            #[serde(flatten)]
            report: &'a Report,
        }
        serde_json::to_string_pretty(&View { ok: self.is_ok(), report: self }).unwrap_or_default()
    }

    /// Record a warning for the reader and log it.
    pub(crate) fn warn(&mut self, text: &str) {
        log::warn!("{text}");
        self.warnings.push(text.to_string());
    }

    fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    fn extend(&mut self, c: Vec<Check>) {
        self.checks.extend(c);
    }
}

/// Verify `evidence` against `policy` for `nonce` at time `now` (no TDX collateral, no
/// extra certificates, nonce issue time unknown). See [`verify_evidence_with`].
///
/// ```
/// use chrysalis_proto::eventlog::EventLog;
/// use chrysalis_verify::sim::{SimPsp, SimRoot};
/// use chrysalis_verify::{verify_evidence, Policy};
///
/// let psp = SimPsp::new(SimRoot::generate(), [0; 48]);
/// let nonce = [7u8; 32];
/// let evidence = psp.evidence(EventLog::default(), &nonce);
/// let report = verify_evidence(&evidence, &Policy::default(), &nonce, std::time::SystemTime::now());
/// // The default policy refuses simulated evidence, and says why.
/// assert!(!report.is_ok());
/// assert_eq!(report.failures().next().map(|c| c.name.as_str()), Some("simulation"));
/// ```
pub fn verify_evidence(evidence: &Evidence, policy: &Policy, nonce: &[u8], now: SystemTime) -> Report {
    verify_evidence_with(evidence, policy, &VerifyContext::new(nonce, now))
}

/// Verify `evidence` against `policy` with everything in `ctx`; GPU evidence is appraised
/// with the policy's RIM bundle and NVIDIA's pinned roots.
pub fn verify_evidence_with(evidence: &Evidence, policy: &Policy, ctx: &VerifyContext<'_>) -> Report {
    verify_evidence_with_gpu(evidence, policy, ctx, &GpuAppraisal::new())
}

/// [`verify_evidence_with`] with an explicit GPU appraisal (a preloaded RIM bundle, other roots).
pub fn verify_evidence_with_gpu(evidence: &Evidence, policy: &Policy, ctx: &VerifyContext<'_>, gpu: &GpuAppraisal) -> Report {
    let platform = match &evidence.platform {
        PlatformEvidence::Snp { .. } => "sev-snp",
        PlatformEvidence::Tdx { .. } => "tdx",
        PlatformEvidence::Simulated { .. } => "simulated",
    };
    let mut r = Report::empty(platform, ctx.now);
    r.push(
        Check::new("evidence.nonce", evidence.nonce == ctx.nonce, short_hex(&evidence.nonce), short_hex(ctx.nonce))
            .detail("the echoed nonce; the binding itself is REPORT_DATA"),
    );
    r.push(match evidence.event_log.check() {
        Ok(()) => Check::new("event_log.data", true, format!("{} events", evidence.event_log.events.len()), "consistent"),
        Err(e) => Check::new("event_log.data", false, format!("{} events", evidence.event_log.events.len()), "consistent")
            .detail(e.to_string()),
    });
    let bound = match &evidence.platform {
        PlatformEvidence::Snp { report, certs } => verify_snp(&mut r, report, certs, evidence, policy, ctx),
        PlatformEvidence::Simulated { report } => verify_simulated(&mut r, report, evidence, policy, ctx),
        PlatformEvidence::Tdx { quote, ccel_log } => verify_tdx(&mut r, quote, ccel_log.as_deref(), evidence, policy, ctx),
    };
    verify_gpu::check(&mut r, evidence, policy, ctx.now, gpu, bound);
    if let Some(c) = policy.check_freshness(ctx.nonce_issued_at, ctx.now) {
        r.push(c);
    }
    r
}

/// REPORT_DATA binding, then (only if bound to the event log) the runtime expectations.
/// Returns whether the event log is bound.
fn bind_and_check_runtime<T: HasReportData>(
    r: &mut Report,
    claims: &Verified<T>,
    log: &EventLog,
    policy: &Policy,
    nonce: &[u8],
) -> bool {
    let binding = policy.check_report_data(claims, log, nonce);
    let bound = binding.passed && policy.report_data.binding == Binding::ChrysalisEventlog;
    r.push(binding);
    if bound {
        r.extend(policy.check_runtime(log));
    } else {
        for c in policy.check_runtime(log) {
            r.push(Check { passed: false, detail: "event log is not bound to REPORT_DATA".into(), ..c });
        }
    }
    bound
}

fn verify_snp(
    r: &mut Report,
    report: &[u8],
    certs: &[Vec<u8>],
    evidence: &Evidence,
    policy: &Policy,
    ctx: &VerifyContext<'_>,
) -> bool {
    let mut all = certs.to_vec();
    all.extend_from_slice(ctx.extra_snp_certs);
    let v = match snp::verify_report_detailed(report, &all, ctx.now) {
        Ok(v) => v,
        Err(e) => {
            r.push(Check::new(&format!("snp.{}", e.stage()), false, "", "valid").detail(e.to_string()));
            return false;
        }
    };
    let c = v.claims.claims();
    let signer = if c.signer == SnpSigner::Vlek { "VLEK" } else { "VCEK" };
    r.push(Check::new("snp.report", true, format!("v{} {:?}", c.version, c.product), "v2, v3 or v5"));
    r.push(
        Check::new(
            "snp.cert_chain",
            true,
            format!("{} <- {} <- {}", v.chain.leaf.name(), v.chain.intermediate.name(), v.chain.root.name()),
            "pinned AMD root",
        )
        .detail(if v.chain.intermediate_pinned { "ASK pinned" } else { "intermediate supplied, signed by pinned ARK" }),
    );
    r.push(Check::new("snp.report_signature", true, format!("ECDSA P-384 by {signer}"), "valid"));
    let reported = TcbParts::from_raw(c.reported_tcb, c.product);
    r.push(
        Check::new("snp.vcek_tcb", true, v.cert_tcb.to_string(), reported.to_string()).detail("certificate TCB = REPORTED_TCB"),
    );
    r.push(if v.hwid_checked {
        Check::new("snp.vcek_hwid", true, short_hex(v.extensions.hwid.as_deref().unwrap_or(&[])), "CHIP_ID")
    } else {
        Check::new("snp.vcek_hwid", true, "not compared", "CHIP_ID")
            .detail(format!("{signer}{}", if c.chip_id.iter().all(|&b| b == 0) { ", CHIP_ID masked" } else { "" }))
    });
    if !policy.snp.amd_crls.is_empty() {
        r.push(check_amd_crls(&v.chain, &policy.snp.amd_crls, ctx.now));
    }
    r.extend(policy.check_snp(&v.claims));
    let bound = bind_and_check_runtime(r, &v.claims, &evidence.event_log, policy, ctx.nonce);
    r.claims = Some(Claims::Snp(v.claims));
    bound
}

/// The `snp.amd_crl` row: the chain's ASK/ASVK against the policy's AMD CRLs (read here).
fn check_amd_crls(chain: &snp::VerifiedChain, paths: &[String], now: std::time::SystemTime) -> Check {
    let expected = "CRL of the pinned ARK, current, not listing the ASK/ASVK";
    let mut crls = Vec::new();
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => crls.push((path.clone(), bytes)),
            Err(e) => return Check::new("snp.amd_crl", false, "unreadable", expected).detail(format!("reading {path}: {e}")),
        }
    }
    match snp::crl::check_chain(chain, &crls, now) {
        Ok(st) => Check::new("snp.amd_crl", true, format!("{} not listed", chain.intermediate.name()), expected).detail(format!(
            "CRL of {} issued {}, next update {}, {} entries",
            st.issuer, st.this_update, st.next_update, st.entries
        )),
        Err(e) => Check::new("snp.amd_crl", false, "refused", expected).detail(e.to_string()),
    }
}

fn verify_simulated(r: &mut Report, report: &[u8], evidence: &Evidence, policy: &Policy, ctx: &VerifyContext<'_>) -> bool {
    r.warn(SIMULATED_WARNING);
    if !policy.simulation.allow_simulated {
        r.push(
            Check::new("simulation", false, "SIMULATED TEE (not hardware)", "hardware TEE")
                .detail("refused: the policy does not set [simulation] allow_simulated = true"),
        );
        return false;
    }
    let key = match policy.sim_root() {
        Ok(Some(k)) => k,
        Ok(None) | Err(_) => {
            r.push(Check::new("sim.signature", false, "", "valid").detail("the policy has no usable simulation root key"));
            return false;
        }
    };
    let v = match sim::verify_sim(report, &key) {
        Ok(v) => v,
        Err(e) => {
            r.push(Check::new("sim.signature", false, "", "valid").detail(e.to_string()));
            return false;
        }
    };
    r.push(
        Check::new("sim.signature", true, "ECDSA P-384 by simulation root", "valid").detail("WARNING: simulated, NOT hardware"),
    );
    r.extend(policy.check_snp(&v));
    let bound = bind_and_check_runtime(r, &v, &evidence.event_log, policy, ctx.nonce);
    r.claims = Some(Claims::Snp(v));
    bound
}

fn verify_tdx(
    r: &mut Report,
    quote: &[u8],
    ccel_log: Option<&[u8]>,
    evidence: &Evidence,
    policy: &Policy,
    ctx: &VerifyContext<'_>,
) -> bool {
    let Some(collateral) = ctx.tdx_collateral else {
        r.push(Check::new("tdx.quote", false, "", "valid").detail("no Intel collateral was given"));
        return false;
    };
    let v = match tdx::verify_quote(quote, collateral, unix_secs(ctx.now)) {
        Ok(v) => v,
        Err(e) => {
            r.push(Check::new("tdx.quote", false, "", "valid").detail(e.to_string()));
            return false;
        }
    };
    r.push(Check::new("tdx.quote", true, format!("v{}", v.claims().quote_version), "valid"));
    r.extend(policy.check_tdx(&v));
    if let Some(log) = ccel_log {
        // The firmware's event log is informational (policy judges the RTMRs themselves), but
        // a log that does not replay to the quoted RTMRs is a lie worth failing on.
        r.push(match crate::ccel::replay(log).and_then(|rep| rep.check_claims(v.claims()).map(|()| rep)) {
            Ok(rep) => Check::new("tdx.ccel_replay", true, format!("{} events", rep.events.len()), "replays to RTMR0..3"),
            Err(e) => Check::new("tdx.ccel_replay", false, "", "replays to RTMR0..3").detail(e.to_string()),
        });
    }
    let bound = bind_and_check_runtime(r, &v, &evidence.event_log, policy, ctx.nonce);
    r.claims = Some(Claims::Tdx(v));
    bound
}

/// Hex, shortened to `first12…last8` when longer than 32 digits.
fn short_hex(b: &[u8]) -> String {
    abbreviate(&hex::encode(b))
}

/// Long hex strings shortened for the table; other text is left whole.
fn abbreviate(s: &str) -> String {
    let n = s.chars().count();
    if n <= 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return s.to_string();
    }
    let head: String = s.chars().take(12).collect();
    // `n > 32` here, so this cannot saturate.
    let tail: String = s.chars().skip(n.saturating_sub(8)).collect();
    format!("{head}…{tail}")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.failures().count();
        if self.is_ok() {
            writeln!(f, "attestation: OK ({} checks passed)", self.checks.len())?;
        } else {
            writeln!(f, "attestation: FAILED ({failed} of {} checks failed)", self.checks.len())?;
        }
        writeln!(f, "platform: {}   verified at: {}", self.platform, self.verified_at)?;
        for w in &self.warnings {
            writeln!(f, "!!! WARNING: {w} !!!")?;
        }
        writeln!(f)?;
        let rows: Vec<[String; 5]> = self
            .checks
            .iter()
            .map(|c| {
                [
                    c.name.clone(),
                    if c.passed { "pass" } else { "FAIL" }.to_string(),
                    abbreviate(&c.found),
                    abbreviate(&c.expected),
                    c.detail.clone(),
                ]
            })
            .collect();
        let header = ["CHECK", "RESULT", "FOUND", "EXPECTED", "DETAIL"].map(String::from);
        let mut w = [0usize; 4];
        for row in std::iter::once(&header).chain(rows.iter()) {
            for (i, cell) in row.iter().take(4).enumerate() {
                if let Some(slot) = w.get_mut(i) {
                    *slot = (*slot).max(cell.chars().count());
                }
            }
        }
        for row in std::iter::once(&header).chain(rows.iter()) {
            let [a, b, c, d, e] = row;
            let line = format!("{a:<w0$}  {b:<w1$}  {c:<w2$}  {d:<w3$}  {e}", w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3]);
            writeln!(f, "{}", line.trim_end())?;
        }
        match &self.claims {
            Some(Claims::Snp(v)) => {
                let c = v.claims();
                writeln!(f)?;
                writeln!(f, "verified claims ({}):", if c.simulated { "SIMULATED" } else { "SEV-SNP" })?;
                writeln!(f, "  product       {:?} (signer {:?}), report v{}", c.product, c.signer, c.version)?;
                writeln!(f, "  measurement   {}", hex::encode(&c.measurement))?;
                writeln!(f, "  report_data   {}", hex::encode(&c.report_data))?;
                writeln!(f, "  host_data     {}", hex::encode(&c.host_data))?;
                writeln!(f, "  chip_id       {}", hex::encode(&c.chip_id))?;
                writeln!(f, "  policy        {:#x}", c.policy)?;
                writeln!(f, "  reported_tcb  {:#018x} ({})", c.reported_tcb, TcbParts::from_raw(c.reported_tcb, c.product))?;
                writeln!(f, "  platform_info {:#x}", c.platform_info)?;
            }
            Some(Claims::Tdx(v)) => {
                let c = v.claims();
                writeln!(f)?;
                writeln!(f, "verified claims (TDX quote v{}):", c.quote_version)?;
                writeln!(f, "  mr_td         {}", hex::encode(&c.mr_td))?;
                for (i, m) in c.rtmr.iter().enumerate() {
                    writeln!(f, "  rtmr{i}         {}", hex::encode(m))?;
                }
                writeln!(f, "  report_data   {}", hex::encode(&c.report_data))?;
                writeln!(f, "  tcb_status    {}", c.tcb_status)?;
            }
            None => {}
        }
        for (i, g) in self.gpus.iter().enumerate() {
            let c = g.claims();
            writeln!(f)?;
            writeln!(f, "verified GPU claims (gpu[{i}]):")?;
            writeln!(f, "  device        {}", c.device_leaf)?;
            writeln!(f, "  driver        {}   VBIOS {}", c.driver_version, c.vbios_version)?;
            writeln!(f, "  board         project {} SKU {} chip SKU {}", c.project, c.project_sku, c.chip_sku)?;
            writeln!(f, "  nonce         {}", hex::encode(&c.nonce))?;
            writeln!(f, "  measurements  {} blocks, SHA-384 {}", c.measurements.len(), hex::encode(&c.measurements_digest))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimPsp, SimRoot};
    use chrysalis_proto::eventlog::{Event, EventKind};
    use chrysalis_proto::evidence::EVIDENCE_VERSION;

    fn sim_policy(root: &SimRoot, m: [u8; 48], allow: bool) -> Policy {
        Policy::from_toml(&format!(
            "[simulation]\nallow_simulated = {allow}\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]",
            root.public_key().to_hex(),
            hex::encode(m)
        ))
        .unwrap()
    }

    fn log() -> EventLog {
        let mut l = EventLog::default();
        l.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        l.extend(Event::with_data(EventKind::PublicKey, vec![1; 32]));
        l
    }

    #[test]
    fn sim_evidence_accepted_only_when_allowed() {
        let psp = SimPsp::new(SimRoot::generate(), [4; 48]);
        let nonce = [3u8; 32];
        let ev = psp.evidence(log(), &nonce);
        let now = SystemTime::now();
        let allowed = verify_evidence(&ev, &sim_policy(&psp.root, [4; 48], true), &nonce, now);
        assert!(allowed.is_ok(), "{allowed}");
        assert_eq!(allowed.warnings, vec![SIMULATED_WARNING.to_string()]);
        assert!(allowed.to_string().contains("!!! WARNING: SIMULATED TEE"));
        let refused = verify_evidence(&ev, &sim_policy(&psp.root, [4; 48], false), &nonce, now);
        assert!(!refused.is_ok());
        assert_eq!(refused.failures().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["simulation"]);
        // A stale nonce fails the echo and the binding.
        let stale = verify_evidence(&ev, &sim_policy(&psp.root, [4; 48], true), &[5u8; 32], now);
        let failed: Vec<_> = stale.failures().map(|c| c.name.as_str()).collect();
        assert_eq!(failed, ["evidence.nonce", "report_data"]);
    }

    #[test]
    fn unknown_root_and_tdx_placeholder_fail() {
        let psp = SimPsp::new(SimRoot::generate(), [4; 48]);
        let ev = psp.evidence(log(), &[1]);
        let other = SimRoot::generate();
        let r = verify_evidence(&ev, &sim_policy(&other, [4; 48], true), &[1], SystemTime::now());
        assert_eq!(r.failures().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["sim.signature"]);

        let tdx_ev = Evidence {
            version: EVIDENCE_VERSION,
            nonce: vec![1],
            platform: PlatformEvidence::Tdx { quote: vec![0; 100], ccel_log: None },
            event_log: EventLog::default(),
            gpus: vec![],
        };
        let r = verify_evidence(&tdx_ev, &Policy::default(), &[1], SystemTime::now());
        assert!(!r.is_ok());
        let json = r.to_json();
        assert!(json.contains("\"ok\": false") && json.contains("tdx.quote"), "{json}");
    }

    #[test]
    fn abbreviation() {
        assert_eq!(abbreviate("abcd"), "abcd");
        assert_eq!(abbreviate(&"0123456789".repeat(5)), "012345678901…23456789");
        let text = "CN=SEV-VCEK <- CN=SEV-Milan <- CN=ARK-Milan";
        assert_eq!(abbreviate(text), text);
    }
}
