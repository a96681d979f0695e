//! The model owner's verification policy (TOML, see `attest/policy.example.toml`) and the
//! checks that judge verified claims against it. Every check returns a [`Check`] row for the
//! verification table, pass or fail, so that a report says what was compared and why.
//!
//! Trust: the policy is trusted (it is the owner's own file). Claims reach the checks only
//! as [`Verified`] values, i.e. after their signature chain was checked; the event log is
//! judged only after [`Policy::check_report_data`] bound it to the verified REPORT_DATA.
//!
//! Defaults are closed: no allowed measurement means none is accepted, debug and simulated
//! TEEs are refused, REPORT_DATA must bind the Chrysalis event log to the verifier's nonce,
//! and only TDX TCB status "UpToDate" is accepted.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::claims::{SnpClaims, SnpProduct, TdxClaims, Verified};
use crate::eventlog::{EventKind, EventLog};
use crate::nvidia::{GpuClaims, OcspStatus, RimComparison};
use crate::sim::SimRootPublicKey;
use crate::snp::{TcbParts, platform_info_bits, policy_bits};

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML for a [`Policy`] (includes unknown keys).
    #[error("policy is not valid: {0}")]
    Toml(String),
    /// A value has the wrong form or length.
    #[error("policy field {field}: {reason}")]
    Invalid {
        /// Dotted field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("reading policy {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Bytes written as a hex string in the policy file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HexValue(pub Vec<u8>);

impl Serialize for HexValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let t = t.strip_prefix("0x").unwrap_or(t);
        hex::decode(t).map(HexValue).map_err(|e| serde::de::Error::custom(format!("not hex: {e}")))
    }
}

impl std::fmt::Display for HexValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

/// The whole policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Accept a guest whose memory the host can read (SNP policy DEBUG, TDX ATTRIBUTES.DEBUG).
    #[serde(default)]
    pub allow_debug: bool,
    /// Allowed launch measurements.
    #[serde(default)]
    pub measurements: Measurements,
    /// What REPORT_DATA must contain.
    #[serde(default)]
    pub report_data: ReportDataPolicy,
    /// SEV-SNP specifics.
    #[serde(default)]
    pub snp: SnpPolicy,
    /// TDX specifics.
    #[serde(default)]
    pub tdx: TdxPolicy,
    /// Expectations on the runtime's own event log.
    #[serde(default)]
    pub runtime: RuntimePolicy,
    /// Evidence age.
    #[serde(default)]
    pub freshness: FreshnessPolicy,
    /// The simulated TEE.
    #[serde(default)]
    pub simulation: SimulationPolicy,
    /// NVIDIA GPU evidence (CUDA images).
    #[serde(default)]
    pub gpu: GpuPolicy,
}

/// Allowed launch measurements (hex). An empty list accepts nothing; an absent RTMR list is
/// not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// SNP MEASUREMENT values (48 bytes).
    #[serde(default)]
    pub snp: Vec<HexValue>,
    /// TDX MRTD values (48 bytes).
    #[serde(default)]
    pub tdx_mrtd: Vec<HexValue>,
    /// TDX RTMR0 values; absent = not checked.
    pub tdx_rtmr0: Option<Vec<HexValue>>,
    /// TDX RTMR1 values.
    pub tdx_rtmr1: Option<Vec<HexValue>>,
    /// TDX RTMR2 values.
    pub tdx_rtmr2: Option<Vec<HexValue>>,
    /// TDX RTMR3 values.
    pub tdx_rtmr3: Option<Vec<HexValue>>,
}

/// How REPORT_DATA is bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// REPORT_DATA = `EventLog::report_data(nonce)`: the runtime's log, fresh for this nonce.
    #[default]
    ChrysalisEventlog,
    /// REPORT_DATA equals `expected` (foreign evidence with a known value).
    Fixed,
    /// Not checked (freshness and runtime identity are then unknown).
    None,
}

/// REPORT_DATA expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportDataPolicy {
    /// The binding.
    #[serde(default)]
    pub binding: Binding,
    /// The 64-byte value when `binding = "fixed"`.
    pub expected: Option<HexValue>,
}

/// Minimum SNP TCB components (REPORTED_TCB). Absent = not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpMinTcb {
    /// Bootloader SPL.
    pub bootloader: Option<u8>,
    /// TEE (PSP OS) SPL.
    pub tee: Option<u8>,
    /// SNP firmware SPL.
    pub snp: Option<u8>,
    /// Microcode SPL.
    pub microcode: Option<u8>,
    /// FMC SPL (Turin only; ignored on earlier products).
    pub fmc: Option<u8>,
}

/// SEV-SNP expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accept a guest policy with MIGRATE_MA set.
    #[serde(default)]
    pub allow_migration_agent: bool,
    /// Require SMT off: guest policy SMT bit clear, or PLATFORM_INFO SMT_EN clear.
    #[serde(default)]
    pub require_smt_disabled: bool,
    /// Minimum TCB.
    #[serde(default)]
    pub min_tcb: SnpMinTcb,
    /// Expected HOST_DATA (32 bytes).
    pub host_data: Option<HexValue>,
}

fn default_tcb_statuses() -> Vec<String> {
    vec!["UpToDate".to_string()]
}

/// TDX expectations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Minimum TEE_TCB_SVN (16 bytes, compared byte by byte).
    pub min_tee_tcb_svn: Option<HexValue>,
    /// Accepted TCB statuses from the collateral match.
    #[serde(default = "default_tcb_statuses")]
    pub accepted_tcb_statuses: Vec<String>,
    /// Advisory IDs that may apply.
    #[serde(default)]
    pub allowed_advisory_ids: Vec<String>,
    /// Expected MRCONFIGID (48 bytes).
    pub mr_config_id: Option<HexValue>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        TdxPolicy {
            min_tee_tcb_svn: None,
            accepted_tcb_statuses: default_tcb_statuses(),
            allowed_advisory_ids: vec![],
            mr_config_id: None,
        }
    }
}

/// Expectations on the runtime's event log. Absent = not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimePolicy {
    /// Allowed SHA-384 of the runtime binary (`RuntimeBinary` event).
    pub binary_sha384: Option<Vec<HexValue>>,
    /// Allowed SHA-384 of the sealed bundle header (`BundleHeader` event).
    pub bundle_header_sha384: Option<Vec<HexValue>>,
}

/// Evidence age.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessPolicy {
    /// Most seconds between issuing the nonce and verifying the evidence. Only a verifier that
    /// issued the nonce itself knows when (`attest verify --url`); otherwise the check fails.
    pub max_evidence_age_secs: Option<u64>,
}

/// The simulated TEE.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationPolicy {
    /// Accept simulated evidence (tests and the demo only). Default false.
    #[serde(default)]
    pub allow_simulated: bool,
    /// The simulation root's public key: SEC1 hex or SPKI PEM. Required when allowed.
    pub root_public_key: Option<String>,
    /// Allowed simulated launch measurements (`sim_launch_measurement`).
    #[serde(default)]
    pub measurements: Vec<HexValue>,
}

/// NVIDIA GPU evidence (see `attest/GPU_BINDING.md`). GPU evidence that is present is always
/// verified and must be bound to the CPU evidence; these settings say what else is required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// Refuse evidence that carries no GPU evidence. Default false (CPU-only images).
    #[serde(default)]
    pub require_gpu: bool,
    /// Directory of NVIDIA's RIMs and stored OCSP responses (`nvidia::RimBundle` layout).
    /// A relative path is relative to the policy file ([`Policy::load`]). Absent = no RIMs.
    pub rim_bundle: Option<String>,
    /// Accept a GPU whose RIMs are not in the bundle (its measurements then are NOT compared
    /// with NVIDIA's reference values). Default false.
    #[serde(default)]
    pub allow_rim_not_available: bool,
    /// Allowed driver versions (e.g. "550.163.01"); absent = not checked.
    pub allowed_driver_versions: Option<Vec<String>>,
    /// Allowed VBIOS versions (e.g. "96.00.9f.00.01", compared ignoring case); absent = not checked.
    pub allowed_vbios_versions: Option<Vec<String>>,
    /// Accept a GPU whose NVDEC0 engine is disabled (its measurement, RIM index 35, is then
    /// skipped, as NVIDIA's verifier does). Default true.
    #[serde(default = "yes")]
    pub allow_nvdec0_disabled: bool,
    /// Require a fresh "good" OCSP response for every device and RIM certificate in the
    /// bundle. Default false: without one, revocation is reported as not checked.
    #[serde(default)]
    pub require_ocsp: bool,
}

fn yes() -> bool {
    true
}

impl Default for GpuPolicy {
    fn default() -> Self {
        GpuPolicy {
            require_gpu: false,
            rim_bundle: None,
            allow_rim_not_available: false,
            allowed_driver_versions: None,
            allowed_vbios_versions: None,
            allow_nvdec0_disabled: true,
            require_ocsp: false,
        }
    }
}

/// One line of the verification table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `snp.measurement`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// The value found in the evidence.
    pub found: String,
    /// What the policy expects.
    pub expected: String,
    /// Why it passed or failed.
    pub detail: String,
}

impl Check {
    /// A row.
    pub fn new(name: &str, passed: bool, found: impl Into<String>, expected: impl Into<String>) -> Self {
        Check { name: name.to_string(), passed, found: found.into(), expected: expected.into(), detail: String::new() }
    }

    /// The same row with a detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

fn check_len(field: &str, v: &HexValue, len: usize) -> Result<(), PolicyError> {
    if v.0.len() == len {
        Ok(())
    } else {
        Err(PolicyError::Invalid { field: field.into(), reason: format!("expected {len} bytes, got {}", v.0.len()) })
    }
}

fn check_all(field: &str, list: &[HexValue], len: usize) -> Result<(), PolicyError> {
    list.iter().try_for_each(|v| check_len(field, v, len))
}

fn in_list(found: &[u8], list: &[HexValue]) -> bool {
    list.iter().any(|v| v.0 == found)
}

fn expected_list(list: &[HexValue]) -> String {
    match list {
        [] => "(none allowed)".into(),
        [one] => one.to_string(),
        many => format!("one of {} values", many.len()),
    }
}

/// Claims that carry a REPORT_DATA.
pub trait HasReportData {
    /// The 64-byte REPORT_DATA.
    fn report_data(&self) -> &[u8];
}

impl HasReportData for SnpClaims {
    fn report_data(&self) -> &[u8] {
        &self.report_data
    }
}

impl HasReportData for TdxClaims {
    fn report_data(&self) -> &[u8] {
        &self.report_data
    }
}

impl Policy {
    /// Parse and validate a TOML policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Read, parse and validate a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Io { path: path.display().to_string(), source })?;
        let mut p = Policy::from_toml(&text)?;
        if let (Some(dir), Some(b)) = (path.parent(), p.gpu.rim_bundle.as_mut())
            && Path::new(b.as_str()).is_relative()
        {
            *b = dir.join(b.as_str()).display().to_string();
        }
        Ok(p)
    }

    /// TOML text of this policy.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        toml::to_string_pretty(self).map_err(|e| PolicyError::Toml(e.to_string()))
    }

    /// Check lengths and cross-field rules.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let m = &self.measurements;
        check_all("measurements.snp", &m.snp, 48)?;
        check_all("measurements.tdx_mrtd", &m.tdx_mrtd, 48)?;
        for (name, list) in [
            ("measurements.tdx_rtmr0", &m.tdx_rtmr0),
            ("measurements.tdx_rtmr1", &m.tdx_rtmr1),
            ("measurements.tdx_rtmr2", &m.tdx_rtmr2),
            ("measurements.tdx_rtmr3", &m.tdx_rtmr3),
        ] {
            check_all(name, list.as_deref().unwrap_or(&[]), 48)?;
        }
        match (self.report_data.binding, &self.report_data.expected) {
            (Binding::Fixed, Some(v)) => check_len("report_data.expected", v, 64)?,
            (Binding::Fixed, None) => {
                return Err(PolicyError::Invalid {
                    field: "report_data.expected".into(),
                    reason: "binding = \"fixed\" needs an expected value".into(),
                });
            }
            (_, Some(_)) => {
                return Err(PolicyError::Invalid {
                    field: "report_data.expected".into(),
                    reason: "only used with binding = \"fixed\"".into(),
                });
            }
            _ => {}
        }
        if let Some(v) = &self.snp.host_data {
            check_len("snp.host_data", v, 32)?;
        }
        if let Some(v) = &self.tdx.min_tee_tcb_svn {
            check_len("tdx.min_tee_tcb_svn", v, 16)?;
        }
        if let Some(v) = &self.tdx.mr_config_id {
            check_len("tdx.mr_config_id", v, 48)?;
        }
        check_all("runtime.binary_sha384", self.runtime.binary_sha384.as_deref().unwrap_or(&[]), 48)?;
        check_all("runtime.bundle_header_sha384", self.runtime.bundle_header_sha384.as_deref().unwrap_or(&[]), 48)?;
        check_all("simulation.measurements", &self.simulation.measurements, 48)?;
        if self.gpu.rim_bundle.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err(PolicyError::Invalid { field: "gpu.rim_bundle".into(), reason: "empty path".into() });
        }
        let key = self.sim_root()?;
        if self.simulation.allow_simulated && key.is_none() {
            return Err(PolicyError::Invalid {
                field: "simulation.root_public_key".into(),
                reason: "allow_simulated = true needs the simulation root's public key".into(),
            });
        }
        Ok(())
    }

    /// The simulation root public key, if the policy names one.
    pub fn sim_root(&self) -> Result<Option<SimRootPublicKey>, PolicyError> {
        self.simulation
            .root_public_key
            .as_deref()
            .map(SimRootPublicKey::parse)
            .transpose()
            .map_err(|e| PolicyError::Invalid { field: "simulation.root_public_key".into(), reason: e.to_string() })
    }

    /// Judge verified SNP (or simulated) claims: measurement, debug, migration agent, SMT,
    /// minimum TCB, HOST_DATA, and whether a simulated TEE is acceptable.
    pub fn check_snp(&self, verified: &Verified<SnpClaims>) -> Vec<Check> {
        let c = verified.claims();
        let mut out = Vec::new();
        let list = if c.simulated {
            out.push(
                Check::new(
                    "simulation",
                    self.simulation.allow_simulated,
                    "SIMULATED TEE (not hardware)",
                    if self.simulation.allow_simulated { "simulated allowed by policy" } else { "hardware TEE" },
                )
                .detail(if self.simulation.allow_simulated {
                    "WARNING: simulated evidence proves nothing about isolation"
                } else {
                    "simulated evidence is refused unless [simulation] allow_simulated = true"
                }),
            );
            &self.simulation.measurements
        } else {
            &self.measurements.snp
        };
        let name = if c.simulated { "sim.measurement" } else { "snp.measurement" };
        out.push(
            Check::new(name, in_list(&c.measurement, list), hex::encode(&c.measurement), expected_list(list))
                .detail(if list.is_empty() { "the policy allows no measurement" } else { "" }),
        );
        let debug = c.policy & policy_bits::DEBUG != 0;
        out.push(Check::new(
            "snp.debug",
            !debug || self.allow_debug,
            on_off(debug),
            if self.allow_debug { "any" } else { "disabled" },
        ));
        let ma = c.policy & policy_bits::MIGRATE_MA != 0;
        out.push(Check::new(
            "snp.migration_agent",
            !ma || self.snp.allow_migration_agent,
            if ma { "allowed" } else { "not allowed" },
            if self.snp.allow_migration_agent { "any" } else { "not allowed" },
        ));
        if self.snp.require_smt_disabled {
            let policy_smt = c.policy & policy_bits::SMT != 0;
            let platform_smt = c.platform_info & platform_info_bits::SMT_EN != 0;
            out.push(
                Check::new("snp.smt", !policy_smt || !platform_smt, on_off(platform_smt), "disabled")
                    .detail(format!("guest policy SMT bit {}", u8::from(policy_smt))),
            );
        }
        let layout = if c.product == SnpProduct::Turin { SnpProduct::Turin } else { SnpProduct::Milan };
        let tcb = TcbParts::from_raw(c.reported_tcb, layout);
        let t = &self.snp.min_tcb;
        for (name, min, have) in [
            ("snp.tcb.bootloader", t.bootloader, Some(tcb.bootloader)),
            ("snp.tcb.tee", t.tee, Some(tcb.tee)),
            ("snp.tcb.snp", t.snp, Some(tcb.snp)),
            ("snp.tcb.microcode", t.microcode, Some(tcb.microcode)),
            ("snp.tcb.fmc", t.fmc, tcb.fmc),
        ] {
            match (min, have) {
                (Some(min), Some(have)) => {
                    out.push(Check::new(name, have >= min, have.to_string(), format!(">= {min}")))
                }
                (Some(min), None) => {
                    out.push(Check::new(name, true, "n/a", format!(">= {min}")).detail("this product has no FMC SPL"))
                }
                _ => {}
            }
        }
        if let Some(want) = &self.snp.host_data {
            out.push(Check::new("snp.host_data", c.host_data == want.0, hex::encode(&c.host_data), want.to_string()));
        }
        out
    }

    /// Judge verified TDX claims: MRTD, RTMR0..3, debug, TEE_TCB_SVN, TCB status, advisories,
    /// MRCONFIGID.
    pub fn check_tdx(&self, verified: &Verified<TdxClaims>) -> Vec<Check> {
        let c = verified.claims();
        let m = &self.measurements;
        let mut out = vec![Check::new(
            "tdx.mrtd",
            in_list(&c.mr_td, &m.tdx_mrtd),
            hex::encode(&c.mr_td),
            expected_list(&m.tdx_mrtd),
        )];
        for (i, list) in [&m.tdx_rtmr0, &m.tdx_rtmr1, &m.tdx_rtmr2, &m.tdx_rtmr3].into_iter().enumerate() {
            if let (Some(list), Some(value)) = (list, c.rtmr.get(i)) {
                out.push(Check::new(
                    &format!("tdx.rtmr{i}"),
                    in_list(value, list),
                    hex::encode(value),
                    expected_list(list),
                ));
            }
        }
        let debug = c.td_attributes.first().is_some_and(|b| b & 1 != 0);
        out.push(Check::new(
            "tdx.debug",
            !debug || self.allow_debug,
            on_off(debug),
            if self.allow_debug { "any" } else { "disabled" },
        ));
        if let Some(min) = &self.tdx.min_tee_tcb_svn {
            let ok = c.tee_tcb_svn.len() == min.0.len() && c.tee_tcb_svn.iter().zip(&min.0).all(|(h, m)| h >= m);
            out.push(
                Check::new("tdx.tee_tcb_svn", ok, hex::encode(&c.tee_tcb_svn), format!(">= {min}"))
                    .detail("compared byte by byte"),
            );
        }
        let st = &self.tdx.accepted_tcb_statuses;
        out.push(Check::new("tdx.tcb_status", st.contains(&c.tcb_status), c.tcb_status.clone(), st.join(", ")));
        let bad: Vec<&String> = c.advisory_ids.iter().filter(|a| !self.tdx.allowed_advisory_ids.contains(a)).collect();
        out.push(
            Check::new(
                "tdx.advisory_ids",
                bad.is_empty(),
                if c.advisory_ids.is_empty() { "none".to_string() } else { c.advisory_ids.join(", ") },
                if self.tdx.allowed_advisory_ids.is_empty() {
                    "none".to_string()
                } else {
                    self.tdx.allowed_advisory_ids.join(", ")
                },
            )
            .detail(if bad.is_empty() {
                String::new()
            } else {
                format!("not allowed: {}", bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            }),
        );
        if let Some(want) = &self.tdx.mr_config_id {
            out.push(Check::new(
                "tdx.mr_config_id",
                c.mr_config_id == want.0,
                hex::encode(&c.mr_config_id),
                want.to_string(),
            ));
        }
        out
    }

    /// Judge the verified REPORT_DATA: bound to `log` and `nonce` (`chrysalis-eventlog`), equal
    /// to a fixed value, or not checked. Pass this before trusting anything in `log`.
    pub fn check_report_data<T: HasReportData>(&self, verified: &Verified<T>, log: &EventLog, nonce: &[u8]) -> Check {
        let found = verified.claims().report_data();
        let name = "report_data";
        match self.report_data.binding {
            Binding::ChrysalisEventlog => {
                let want = log.report_data(nonce);
                let c = Check::new(
                    name,
                    found == want.as_slice() && !nonce.is_empty(),
                    hex::encode(found),
                    hex::encode(want),
                );
                if nonce.is_empty() {
                    c.detail("no nonce: freshness cannot be established")
                } else {
                    c.detail("SHA-512(event log digest || nonce)")
                }
            }
            Binding::Fixed => {
                let want = self.report_data.expected.clone().unwrap_or_default();
                Check::new(name, found == want.0.as_slice(), hex::encode(found), want.to_string())
                    .detail("fixed value from the policy")
            }
            Binding::None => Check::new(name, true, hex::encode(found), "not checked")
                .detail("policy binding = \"none\": freshness and runtime identity unknown"),
        }
    }

    /// Judge the runtime's event log (only after [`Policy::check_report_data`] passed with the
    /// `chrysalis-eventlog` binding): allowed runtime binary and bundle header digests.
    pub fn check_runtime(&self, log: &EventLog) -> Vec<Check> {
        let mut out = Vec::new();
        for (name, kind, list) in [
            ("runtime.binary", EventKind::RuntimeBinary, &self.runtime.binary_sha384),
            ("runtime.bundle_header", EventKind::BundleHeader, &self.runtime.bundle_header_sha384),
        ] {
            if let Some(list) = list {
                let check = match log.find(kind) {
                    Some(e) => Check::new(name, in_list(&e.digest, list), hex::encode(e.digest), expected_list(list)),
                    None => Check::new(name, false, "(no event)", expected_list(list))
                        .detail(format!("the event log has no {kind:?} event")),
                };
                out.push(check);
            }
        }
        out
    }

    /// Judge one GPU's verified claims (row names `gpu[<index>].…`): RIM comparison, driver
    /// and VBIOS versions, NVDEC0, OCSP.
    pub fn check_gpu(&self, index: usize, verified: &Verified<GpuClaims>) -> Vec<Check> {
        let c = verified.claims();
        let g = &self.gpu;
        let name = |what: &str| format!("gpu[{index}].{what}");
        let mut out = vec![match &c.rim {
            RimComparison::Match { driver_version, vbios_version, compared } => Check::new(
                &name("rim"),
                true,
                format!("{} measurements match", compared.len()),
                "NVIDIA reference measurements",
            )
            .detail(format!("driver RIM {driver_version}, VBIOS RIM {vbios_version}")),
            RimComparison::Mismatch { mismatches } => Check::new(
                &name("rim"),
                false,
                format!("{} mismatching", mismatches.len()),
                "NVIDIA reference measurements",
            )
            .detail(format!(
                "mismatching RIM indices: {}",
                mismatches.iter().map(|m| format!("{} ({:?})", m.index, m.source)).collect::<Vec<_>>().join(", ")
            )),
            RimComparison::NotAvailable { missing } => Check::new(
                &name("rim"),
                g.allow_rim_not_available,
                "RIMs not available",
                if g.allow_rim_not_available { "compared if available" } else { "NVIDIA reference measurements" },
            )
            .detail(format!(
                "measurements NOT compared: the RIM bundle lacks {}{}",
                missing.join(", "),
                if g.allow_rim_not_available { " (allowed by allow_rim_not_available)" } else { "" }
            )),
        }];
        if let Some(list) = &g.allowed_driver_versions {
            out.push(Check::new(
                &name("driver_version"),
                list.iter().any(|v| v == &c.driver_version),
                c.driver_version.clone(),
                version_list(list),
            ));
        }
        if let Some(list) = &g.allowed_vbios_versions {
            out.push(Check::new(
                &name("vbios_version"),
                list.iter().any(|v| v.eq_ignore_ascii_case(&c.vbios_version)),
                c.vbios_version.clone(),
                version_list(list),
            ));
        }
        if let Some(status) = c.nvdec0_status {
            let disabled = status == NVDEC0_DISABLED;
            let found = match status {
                NVDEC0_DISABLED => "disabled".to_string(),
                NVDEC0_ENABLED => "enabled".to_string(),
                other => format!("unknown status 0x{other:02x}"),
            };
            let ok = status == NVDEC0_ENABLED || (disabled && g.allow_nvdec0_disabled);
            out.push(
                Check::new(&name("nvdec0"), ok, found, if g.allow_nvdec0_disabled { "any" } else { "enabled" })
                    .detail(if disabled { "RIM index 35 (NVDEC0) not compared" } else { "" }),
            );
        }
        let all: Vec<_> = c.device_ocsp.iter().chain(&c.rim_ocsp).collect();
        let good = all.iter().filter(|o| o.status == OcspStatus::Good).count();
        let not_good: Vec<String> = all
            .iter()
            .filter(|o| o.status != OcspStatus::Good)
            .map(|o| format!("{} ({})", o.subject, ocsp_word(&o.status)))
            .collect();
        out.push(
            Check::new(
                &name("ocsp"),
                !g.require_ocsp || not_good.is_empty(),
                format!("{good} of {} good", all.len()),
                if g.require_ocsp { "all good" } else { "not required" },
            )
            .detail(if not_good.is_empty() {
                String::new()
            } else {
                format!("revocation not established for: {}", not_good.join("; "))
            }),
        );
        out
    }

    /// Judge the evidence's age, when the policy limits it.
    pub fn check_freshness(&self, nonce_issued_at: Option<SystemTime>, now: SystemTime) -> Option<Check> {
        let max = self.freshness.max_evidence_age_secs?;
        let expected = format!("<= {max} s");
        Some(match nonce_issued_at {
            Some(t) => {
                let age = now.duration_since(t).map_or(0, |d| d.as_secs());
                Check::new("freshness", age <= max, format!("{age} s"), expected)
                    .detail("time from issuing the nonce to verification")
            }
            None => Check::new("freshness", false, "unknown", expected)
                .detail("the nonce was not issued by this verifier: evidence age unknown"),
        })
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

/// NVDEC0 status byte values in the GPU report's opaque data.
const NVDEC0_ENABLED: u8 = 0xAA;
const NVDEC0_DISABLED: u8 = 0x55;

fn version_list(list: &[String]) -> String {
    if list.is_empty() { "(none allowed)".into() } else { list.join(", ") }
}

fn ocsp_word(s: &OcspStatus) -> &'static str {
    match s {
        OcspStatus::Good => "good",
        OcspStatus::Revoked { .. } => "revoked",
        OcspStatus::Unknown => "unknown",
        OcspStatus::NoResponse => "no response",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn example_policy_parses_and_round_trips() {
        let p = Policy::from_toml(include_str!("../policy.example.toml")).unwrap();
        assert!(!p.allow_debug && !p.simulation.allow_simulated);
        assert_eq!(p.report_data.binding, Binding::ChrysalisEventlog);
        assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
    }

    #[test]
    fn defaults_are_closed() {
        let p = Policy::from_toml("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(!p.allow_debug);
        assert!(p.measurements.snp.is_empty());
        assert_eq!(p.tdx.accepted_tcb_statuses, vec!["UpToDate".to_string()]);
        assert_eq!(p.report_data.binding, Binding::ChrysalisEventlog);
        assert!(!p.simulation.allow_simulated);
    }

    #[test]
    fn gpu_section_defaults_open_for_cpu_images_and_is_strictly_parsed() {
        let p = Policy::from_toml("").unwrap();
        assert!(!p.gpu.require_gpu && p.gpu.allow_nvdec0_disabled && !p.gpu.require_ocsp);
        assert_eq!(p.gpu.rim_bundle, None);
        let p = Policy::from_toml("[gpu]\nrequire_gpu = true").unwrap();
        assert!(p.gpu.require_gpu);
        assert!(matches!(Policy::from_toml("[gpu]\nrequire_gpus = true"), Err(PolicyError::Toml(_))));
        let e = Policy::from_toml("[gpu]\nrim_bundle = \" \"").unwrap_err();
        assert!(matches!(&e, PolicyError::Invalid { field, .. } if field == "gpu.rim_bundle"), "{e}");
    }

    #[test]
    fn bad_policies_are_rejected() {
        assert!(matches!(Policy::from_toml("allow_debg = true"), Err(PolicyError::Toml(_))));
        assert!(matches!(Policy::from_toml("[measurements]\nsnp = [\"abcd\"]"), Err(PolicyError::Invalid { .. })));
        assert!(matches!(Policy::from_toml("[measurements]\nsnp = [\"xyz\"]"), Err(PolicyError::Toml(_))));
        assert!(matches!(Policy::from_toml("[report_data]\nbinding = \"fixed\""), Err(PolicyError::Invalid { .. })));
        assert!(matches!(Policy::from_toml("[report_data]\nbinding = \"bogus\""), Err(PolicyError::Toml(_))));
        assert!(matches!(Policy::from_toml("[simulation]\nallow_simulated = true"), Err(PolicyError::Invalid { .. })));
        assert!(matches!(
            Policy::from_toml("[simulation]\nroot_public_key = \"00\""),
            Err(PolicyError::Invalid { .. })
        ));
        let e = Policy::from_toml("[snp]\nhost_data = \"00\"").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("policy field snp.host_data: expected 32 bytes, got 1"));
    }

    fn tdx(status: &str, advisories: &[&str], attrs: u8) -> Verified<TdxClaims> {
        Verified::new(TdxClaims {
            quote_version: 4,
            tee_tcb_svn: vec![3; 16],
            mr_seam: vec![0; 48],
            mr_td: vec![1; 48],
            mr_config_id: vec![0; 48],
            mr_owner: vec![0; 48],
            mr_owner_config: vec![0; 48],
            rtmr: [vec![2; 48], vec![3; 48], vec![4; 48], vec![5; 48]],
            report_data: vec![0; 64],
            td_attributes: vec![attrs, 0, 0, 0, 0, 0, 0, 0],
            xfam: vec![0; 8],
            tcb_status: status.into(),
            advisory_ids: advisories.iter().map(|s| s.to_string()).collect(),
            fmspc: vec![0; 6],
        })
    }

    #[test]
    fn tdx_checks() {
        let p = Policy::from_toml(&format!(
            "[measurements]\ntdx_mrtd = [\"{}\"]\ntdx_rtmr1 = [\"{}\"]\n[tdx]\nmin_tee_tcb_svn = \"{}\"\nallowed_advisory_ids = [\"INTEL-SA-00837\"]",
            hex::encode([1; 48]),
            hex::encode([3; 48]),
            hex::encode([2; 16])
        ))
        .unwrap();
        let ok = p.check_tdx(&tdx("UpToDate", &["INTEL-SA-00837"], 0));
        assert!(ok.iter().all(|c| c.passed), "{ok:#?}");
        assert!(ok.iter().any(|c| c.name == "tdx.rtmr1") && !ok.iter().any(|c| c.name == "tdx.rtmr0"));
        let failed = |v: Vec<Check>| v.into_iter().filter(|c| !c.passed).map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(failed(p.check_tdx(&tdx("OutOfDate", &[], 0))), ["tdx.tcb_status"]);
        assert_eq!(failed(p.check_tdx(&tdx("UpToDate", &["INTEL-SA-1"], 0))), ["tdx.advisory_ids"]);
        assert_eq!(failed(p.check_tdx(&tdx("UpToDate", &[], 1))), ["tdx.debug"]);
    }

    #[test]
    fn report_data_bindings() {
        let mut log = EventLog::default();
        log.extend(crate::eventlog::Event::digest_of(EventKind::RuntimeBinary, b"init"));
        let nonce = [9u8; 32];
        let mut claims = tdx("UpToDate", &[], 0).into_inner();
        claims.report_data = log.report_data(&nonce).to_vec();
        let v = Verified::new(claims);
        let p = Policy::default();
        assert!(p.check_report_data(&v, &log, &nonce).passed);
        assert!(!p.check_report_data(&v, &log, &[8u8; 32]).passed);
        assert!(!p.check_report_data(&v, &EventLog::default(), &nonce).passed);
        let fixed = Policy::from_toml(&format!(
            "[report_data]\nbinding = \"fixed\"\nexpected = \"{}\"",
            hex::encode(log.report_data(&nonce))
        ))
        .unwrap();
        assert!(fixed.check_report_data(&v, &EventLog::default(), &[]).passed);
        let digest = hex::encode(log.find(EventKind::RuntimeBinary).unwrap().digest);
        let rt = Policy::from_toml(&format!("[runtime]\nbinary_sha384 = [\"{digest}\"]")).unwrap();
        assert!(rt.check_runtime(&log).iter().all(|c| c.passed));
        assert!(rt.check_runtime(&EventLog::default()).iter().all(|c| !c.passed));
    }

    #[test]
    fn freshness() {
        let p = Policy::from_toml("[freshness]\nmax_evidence_age_secs = 60").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        assert!(p.check_freshness(Some(t0), t0 + std::time::Duration::from_secs(30)).is_some_and(|c| c.passed));
        assert!(p.check_freshness(Some(t0), t0 + std::time::Duration::from_secs(61)).is_some_and(|c| !c.passed));
        assert!(p.check_freshness(None, t0).is_some_and(|c| !c.passed));
        assert!(Policy::default().check_freshness(None, t0).is_none());
    }
}
