//! The policy file's TOML schema: the [`Policy`] type and its sections (serde), parsing,
//! loading from a file and validation of lengths and cross-field rules.
//!
//! Trust: the file is the owner's own and trusted; it is still validated so that a typo or a
//! wrong length is refused instead of silently accepting nothing or everything.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sim::SimRootPublicKey;

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
    /// Accept a runtime's launch measurement only if an image-release entry of the release
    /// transparency log (`[transparency]`) lists it, with a valid inclusion proof and enough
    /// witness cosignatures.
    #[serde(default)]
    pub require_transparency: bool,
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
    /// The release transparency log (attest/tlog/README.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparency: Option<TransparencyPolicy>,
}

/// `[transparency]`: the release transparency log a runtime's measurement must be in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparencyPolicy {
    /// The log: a directory (relative paths are relative to the policy file) or the
    /// `http://` URL it is served at.
    pub log: String,
    /// The log's verifier key, `<origin>+<id>+<base64>` (signed-note Ed25519).
    pub log_key: String,
    /// Witness verifier keys (`cosignature/v1`).
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// How many distinct listed witnesses must have cosigned the checkpoint. Required when
    /// witnesses are listed (no default: the owner says how many).
    #[serde(default)]
    pub min_witnesses: Option<usize>,
    /// File holding the last checkpoint accepted from the log (rollback and fork
    /// detection; relative paths are relative to the policy file).
    pub state: String,
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

/// Minimum TCB per product line (`[snp.product_min_tcb.milan]` ...). When the section is
/// present, a report from a product it does not list is refused: the policy has no minimum
/// for it. `attest policy --from` fills it from `crate::snp::minimums::MIN_TCB_TABLE`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpProductMinTcb {
    /// Milan (EPYC 7003).
    pub milan: Option<SnpMinTcb>,
    /// Genoa (EPYC 9004/8004).
    pub genoa: Option<SnpMinTcb>,
    /// Turin (EPYC 9005).
    pub turin: Option<SnpMinTcb>,
}

impl SnpProductMinTcb {
    /// The entry for `product` (none for the simulated TEE).
    pub fn for_product(&self, product: crate::claims::SnpProduct) -> Option<&SnpMinTcb> {
        use crate::claims::SnpProduct;
        match product {
            SnpProduct::Milan => self.milan.as_ref(),
            SnpProduct::Genoa => self.genoa.as_ref(),
            SnpProduct::Turin => self.turin.as_ref(),
            _ => None,
        }
    }
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
    /// Minimum TCB, required of both REPORTED_TCB (what the report's VCEK was derived from)
    /// and LAUNCH_TCB (the firmware the guest was launched under).
    #[serde(default)]
    pub min_tcb: SnpMinTcb,
    /// Highest VMPL the report may have been requested from. 0 (the default) is the guest's
    /// most privileged level, where the runtime runs without an SVSM; a report from a higher
    /// VMPL comes from less privileged code that cannot vouch for VMPL0.
    #[serde(default)]
    pub max_vmpl: u32,
    /// Minimum TCB per product, required of REPORTED_TCB and LAUNCH_TCB together with
    /// `min_tcb` (the higher of the two counts). Present: a product it does not list fails.
    pub product_min_tcb: Option<SnpProductMinTcb>,
    /// Accept a report whose firmware reports PLATFORM_INFO ALIAS_CHECK_COMPLETE (bit 5)
    /// clear: memory alias detection (the BadRAM mitigation, AMD-SB-3015) has not completed.
    /// Default false. Firmware too old to report the bit is not judged by it.
    #[serde(default)]
    pub allow_alias_check_incomplete: bool,
    /// AMD certificate revocation lists (DER or PEM, from `https://kdsintf.amd.com/vcek/v1/
    /// {Milan,Genoa,Turin}/crl`, or `.../vlek/v1/.../crl` for the ASVK), checked offline: the
    /// CRL of the chain's product must be signed by the pinned ARK, current at the
    /// verification time, and must not list the ASK/ASVK. Relative paths are relative to the
    /// policy file. Empty (the default): revocation of the ASK/ASVK is not checked.
    #[serde(default)]
    pub amd_crls: Vec<String>,
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
    /// skipped, as NVIDIA's verifier does). Default false: a measurement is skipped only when
    /// the policy says so.
    #[serde(default)]
    pub allow_nvdec0_disabled: bool,
    /// Require a fresh "good" OCSP response for every device and RIM certificate, from the
    /// bundle's stored responses (verification never fetches). Default true: a revoked GPU
    /// or RIM must not pass because nobody looked; `false` reports revocation as not checked.
    #[serde(default = "yes")]
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
            allow_nvdec0_disabled: false,
            require_ocsp: true,
        }
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

impl Policy {
    /// Parse and validate a TOML policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError::Toml(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Read, parse and validate a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.display().to_string(), source })?;
        let mut p = Policy::from_toml(&text)?;
        if let Some(dir) = path.parent() {
            let transparency = p.transparency.iter_mut().flat_map(|t| {
                let log = (!t.log.contains("://")).then_some(&mut t.log);
                log.into_iter().chain([&mut t.state])
            });
            for b in p.gpu.rim_bundle.iter_mut().chain(p.snp.amd_crls.iter_mut()).chain(transparency) {
                if Path::new(b.as_str()).is_relative() {
                    *b = dir.join(b.as_str()).display().to_string();
                }
            }
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
        if !m.tdx_mrtd.is_empty() {
            // MRTD covers only the firmware: without RTMR1 (kernel) and RTMR2 (command line and
            // initrd, measured by the kernel's EFI stub) any kernel, initrd and command line
            // would pass. RTMR0 (the VMM's ACPI tables and TD HOB) may stay unpinned.
            for (name, list) in [("measurements.tdx_rtmr1", &m.tdx_rtmr1), ("measurements.tdx_rtmr2", &m.tdx_rtmr2)] {
                if list.as_deref().is_none_or(<[HexValue]>::is_empty) {
                    return Err(PolicyError::Invalid {
                        field: name.into(),
                        reason: "a TDX policy (measurements.tdx_mrtd) must pin RTMR1 (kernel) and RTMR2 (command line and \
                                 initrd): without them any kernel, initrd and command line pass"
                            .into(),
                    });
                }
            }
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
        if self.snp.amd_crls.iter().any(|c| c.trim().is_empty()) {
            return Err(PolicyError::Invalid { field: "snp.amd_crls".into(), reason: "empty path".into() });
        }
        if self.gpu.rim_bundle.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err(PolicyError::Invalid { field: "gpu.rim_bundle".into(), reason: "empty path".into() });
        }
        self.validate_transparency()?;
        let key = self.sim_root()?;
        if self.simulation.allow_simulated && key.is_none() {
            return Err(PolicyError::Invalid {
                field: "simulation.root_public_key".into(),
                reason: "allow_simulated = true needs the simulation root's public key".into(),
            });
        }
        Ok(())
    }

    fn validate_transparency(&self) -> Result<(), PolicyError> {
        let invalid = |field: &str, reason: &str| Err(PolicyError::Invalid { field: field.into(), reason: reason.into() });
        let Some(t) = &self.transparency else {
            if self.require_transparency {
                return invalid(
                    "transparency",
                    "require_transparency = true needs a [transparency] table (log, log_key, state, and witnesses with \
                     min_witnesses)",
                );
            }
            return Ok(());
        };
        for (field, v) in [("transparency.log", &t.log), ("transparency.state", &t.state)] {
            if v.trim().is_empty() {
                return invalid(field, "empty");
            }
        }
        let is_vkey = |k: &str| k.trim().splitn(3, '+').filter(|p| !p.is_empty()).count() == 3;
        if !is_vkey(&t.log_key) {
            return invalid("transparency.log_key", "not a note verifier key <name>+<id>+<base64>");
        }
        if !t.witnesses.iter().all(|w| is_vkey(w)) {
            return invalid("transparency.witnesses", "not a note verifier key <name>+<id>+<base64>");
        }
        match t.min_witnesses {
            None if !t.witnesses.is_empty() => invalid(
                "transparency.min_witnesses",
                "required when witnesses are listed (how many distinct witnesses must cosign)",
            ),
            Some(n) if n > t.witnesses.len() => {
                invalid("transparency.min_witnesses", "more than the witnesses listed: no checkpoint could pass")
            }
            _ => Ok(()),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_policy_parses_and_round_trips() {
        let p = Policy::from_toml(include_str!("../../policy.example.toml")).unwrap();
        assert!(!p.allow_debug && !p.simulation.allow_simulated);
        assert_eq!(p.report_data.binding, Binding::ChrysalisEventlog);
        assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
    }

    /// MRTD alone pins only the firmware: a TDX policy without RTMR1 and RTMR2 would accept
    /// any kernel, initrd and command line, so it does not load.
    #[test]
    fn tdx_policy_without_rtmr1_and_rtmr2_does_not_load() {
        let h = |b: u8| hex::encode([b; 48]);
        let load = |extra: &str| Policy::from_toml(&format!("[measurements]\ntdx_mrtd = [\"{}\"]\n{extra}", h(1)));
        for (extra, missing) in [
            ("", "measurements.tdx_rtmr1"),
            (&format!("tdx_rtmr1 = [\"{}\"]\n", h(2)) as &str, "measurements.tdx_rtmr2"),
            (&format!("tdx_rtmr1 = [\"{}\"]\ntdx_rtmr2 = []\n", h(2)), "measurements.tdx_rtmr2"),
            (&format!("tdx_rtmr2 = [\"{}\"]\n", h(3)), "measurements.tdx_rtmr1"),
        ] {
            let e = load(extra).unwrap_err();
            assert!(e.to_string().contains(missing) && e.to_string().contains("any kernel"), "{e}");
        }
        assert!(load(&format!("tdx_rtmr1 = [\"{}\"]\ntdx_rtmr2 = [\"{}\"]\n", h(2), h(3))).is_ok());
        // No TDX measurement at all: TDX evidence fails the MRTD check instead.
        assert!(Policy::from_toml("[measurements]\nsnp = []\n").is_ok());
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
    fn gpu_section_defaults_are_closed_and_strictly_parsed() {
        let p = Policy::from_toml("").unwrap();
        // A CPU image carries no GPU evidence; a GPU that is there must be complete and
        // checked for revocation unless the policy says otherwise.
        assert!(!p.gpu.require_gpu && !p.gpu.allow_nvdec0_disabled && p.gpu.require_ocsp);
        assert_eq!(p.gpu, GpuPolicy::default());
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
        assert!(matches!(Policy::from_toml("[simulation]\nroot_public_key = \"00\""), Err(PolicyError::Invalid { .. })));
        let e = Policy::from_toml("[snp]\nhost_data = \"00\"").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("policy field snp.host_data: expected 32 bytes, got 1"));
    }

    #[test]
    fn transparency_table_rules() {
        let err = |t: &str| Policy::from_toml(t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err("require_transparency = true\n")
                .starts_with("policy field transparency: require_transparency = true needs a [transparency] table")
        );
        let table = |extra: &str| {
            format!(
                "require_transparency = true\n[transparency]\nlog = \"log\"\nstate = \"s.json\"\nlog_key = \"l+01020304+AQ\"\n{extra}"
            )
        };
        let p = Policy::from_toml(&table("")).unwrap();
        assert!(p.require_transparency);
        assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
        assert_eq!(
            err(&table("witnesses = [\"w1+01020304+BA\", \"w2+01020304+BA\"]\n")),
            "policy field transparency.min_witnesses: required when witnesses are listed (how many distinct witnesses must cosign)"
        );
        assert!(err(&table("witnesses = [\"w1+01020304+BA\"]\nmin_witnesses = 2\n")).contains("more than the witnesses"));
        let p = Policy::from_toml(&table("witnesses = [\"w1+01020304+BA\"]\nmin_witnesses = 1\n")).unwrap();
        assert_eq!(p.transparency.as_ref().map(|t| t.min_witnesses), Some(Some(1)));
        assert!(err(&table("url = \"x\"\n")).contains("unknown field"));
        assert!(err("[transparency]\nlog = \"l\"\nstate = \"s\"\nlog_key = \"nokey\"\n").contains("transparency.log_key"));
        // A [transparency] table without require_transparency is allowed (used by --release-log
        // style tooling and for a gradual rollout).
        assert!(Policy::from_toml("[transparency]\nlog = \"l\"\nstate = \"s\"\nlog_key = \"l+01020304+AQ\"\n").is_ok());
    }
}
