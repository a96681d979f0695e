//! The checks of verified claims against a [`Policy`]: each returns [`Check`] rows for the
//! verification table, pass or fail, saying what was compared and why.
//!
//! Trust: claims reach these checks only as [`Verified`] values, i.e. after their signature
//! chain was checked; the event log is judged only after [`Policy::check_report_data`] bound
//! it to the verified REPORT_DATA.

use std::time::SystemTime;

use serde::Serialize;

use super::schema::{Binding, HexValue, Policy, SnpMinTcb};
use crate::claims::{SnpClaims, SnpProduct, TdxClaims, Verified};
use crate::nvidia::{GpuClaims, OcspStatus, RimComparison};
use crate::snp::{TcbParts, minimums, platform_info_bits, policy_bits};
use chrysalis_proto::eventlog::{EventKind, EventLog};

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
        out.push(
            Check::new("snp.vmpl", c.vmpl <= self.snp.max_vmpl, c.vmpl.to_string(), format!("<= {}", self.snp.max_vmpl))
                .detail("the VMPL the report was requested from"),
        );
        out.extend(self.check_snp_tcb(c));
        out.extend(check_alias(c, self.snp.allow_alias_check_incomplete));
        if let Some(want) = &self.snp.host_data {
            out.push(Check::new("snp.host_data", c.host_data == want.0, hex::encode(&c.host_data), want.to_string()));
        }
        out
    }

    /// The minimum TCB rows: `min_tcb` and the product's `product_min_tcb` entry (the higher
    /// of the two per component), each against REPORTED_TCB and LAUNCH_TCB. A policy with
    /// `product_min_tcb` refuses a product it does not list.
    fn check_snp_tcb(&self, c: &SnpClaims) -> Vec<Check> {
        let mut out = Vec::new();
        let per_product = match (&self.snp.product_min_tcb, c.simulated) {
            (Some(table), false) => match table.for_product(c.product) {
                Some(row) => Some(row),
                None => {
                    out.push(
                        Check::new("snp.product_min_tcb", false, format!("{:?}", c.product), "a product the policy lists")
                            .detail(format!(
                                "the policy sets minimum TCBs per product ([snp.product_min_tcb]) and none for {:?}: \
                                 its firmware and microcode levels cannot be judged",
                                c.product
                            )),
                    );
                    None
                }
            },
            _ => None,
        };
        let layout = if c.product == SnpProduct::Turin { SnpProduct::Turin } else { SnpProduct::Milan };
        let g = &self.snp.min_tcb;
        let pick = |f: fn(&SnpMinTcb) -> Option<u8>| f(g).max(per_product.and_then(f));
        let mins = [
            ("bootloader", pick(|t| t.bootloader)),
            ("tee", pick(|t| t.tee)),
            ("snp", pick(|t| t.snp)),
            ("microcode", pick(|t| t.microcode)),
            ("fmc", pick(|t| t.fmc)),
        ];
        for (prefix, field, raw) in [("snp.tcb", "REPORTED_TCB", c.reported_tcb), ("snp.launch_tcb", "LAUNCH_TCB", c.launch_tcb)]
        {
            let tcb = TcbParts::from_raw(raw, layout);
            for (part, min) in mins {
                let have = match part {
                    "bootloader" => Some(tcb.bootloader),
                    "tee" => Some(tcb.tee),
                    "snp" => Some(tcb.snp),
                    "microcode" => Some(tcb.microcode),
                    _ => tcb.fmc,
                };
                let name = format!("{prefix}.{part}");
                match (min, have) {
                    (Some(min), Some(have)) => {
                        let c = Check::new(&name, have >= min, have.to_string(), format!(">= {min}"));
                        out.push(if have >= min {
                            c
                        } else {
                            c.detail(format!("{field}.{part} = {have} is below the minimum {min}"))
                        });
                    }
                    (Some(min), None) => {
                        out.push(Check::new(&name, true, "n/a", format!(">= {min}")).detail("this product has no FMC SPL"))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Judge verified TDX claims: MRTD, RTMR0..3, debug, TEE_TCB_SVN, TCB status, advisories,
    /// MRCONFIGID.
    pub fn check_tdx(&self, verified: &Verified<TdxClaims>) -> Vec<Check> {
        let c = verified.claims();
        let m = &self.measurements;
        let mut out =
            vec![Check::new("tdx.mrtd", in_list(&c.mr_td, &m.tdx_mrtd), hex::encode(&c.mr_td), expected_list(&m.tdx_mrtd))];
        for (i, list) in [&m.tdx_rtmr0, &m.tdx_rtmr1, &m.tdx_rtmr2, &m.tdx_rtmr3].into_iter().enumerate() {
            if let (Some(list), Some(value)) = (list, c.rtmr.get(i)) {
                out.push(Check::new(&format!("tdx.rtmr{i}"), in_list(value, list), hex::encode(value), expected_list(list)));
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
            out.push(Check::new("tdx.mr_config_id", c.mr_config_id == want.0, hex::encode(&c.mr_config_id), want.to_string()));
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
                let c = Check::new(name, found == want.as_slice() && !nonce.is_empty(), hex::encode(found), hex::encode(want));
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
            RimComparison::Match { driver_version, vbios_version, compared } => {
                Check::new(&name("rim"), true, format!("{} measurements match", compared.len()), "NVIDIA reference measurements")
                    .detail(format!("driver RIM {driver_version}, VBIOS RIM {vbios_version}"))
            }
            RimComparison::Mismatch { mismatches } => {
                Check::new(&name("rim"), false, format!("{} mismatching", mismatches.len()), "NVIDIA reference measurements")
                    .detail(format!(
                        "mismatching RIM indices: {}",
                        mismatches.iter().map(|m| format!("{} ({:?})", m.index, m.source)).collect::<Vec<_>>().join(", ")
                    ))
            }
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

/// PLATFORM_INFO ALIAS_CHECK_COMPLETE (bit 5), required where the firmware reports it (see
/// [`minimums::reports_alias_check`]) unless the policy allows it clear.
fn check_alias(c: &SnpClaims, allow_incomplete: bool) -> Option<Check> {
    if c.simulated {
        return None;
    }
    let fw = c.current_firmware;
    let expected = if allow_incomplete { "any (allow_alias_check_incomplete)" } else { "set" };
    if !minimums::reports_alias_check(c.product, c.version, fw) {
        let since = minimums::alias_check_since(c.product).map_or_else(|| "never".to_string(), |v| v.to_string());
        return Some(Check::new("snp.alias_check", true, "not reported", expected).detail(format!(
            "report v{} from {:?} firmware {fw}: ALIAS_CHECK_COMPLETE is reported from report v3 and firmware {since}",
            c.version, c.product
        )));
    }
    let set = c.platform_info & platform_info_bits::ALIAS_CHECK_COMPLETE != 0;
    let check = Check::new("snp.alias_check", set || allow_incomplete, if set { "set" } else { "clear" }, expected);
    Some(if set {
        check
    } else {
        check.detail(format!(
            "PLATFORM_INFO bit 5 ALIAS_CHECK_COMPLETE is clear on {:?} firmware {fw}, which reports it: memory alias \
             detection (the BadRAM mitigation, AMD-SB-3015) has not completed since the last reset",
            c.product
        ))
    })
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
mod tests {
    use super::*;

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
            "[measurements]\ntdx_mrtd = [\"{}\"]\ntdx_rtmr1 = [\"{}\"]\ntdx_rtmr2 = [\"{}\"]\n[tdx]\nmin_tee_tcb_svn = \"{}\"\nallowed_advisory_ids = [\"INTEL-SA-00837\"]",
            hex::encode([1; 48]),
            hex::encode([3; 48]),
            hex::encode([4; 48]),
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
        log.extend(chrysalis_proto::eventlog::Event::digest_of(EventKind::RuntimeBinary, b"init"));
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

    /// The genuine dstack Milan report (v3, firmware 1.55.29, PLATFORM_INFO 0x25) parsed, then
    /// its PLATFORM_INFO bit 5 cleared in the parsed claims (a changed report would fail its
    /// signature): the check fires, names the bit, and the policy switch relaxes it.
    #[test]
    fn alias_check_complete_is_required_where_reported() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/snp/dstack-milan-v3/report.bin");
        let report = crate::snp::SnpReport::parse(&std::fs::read(path).unwrap()).unwrap();
        let mut claims = report.claims(SnpProduct::Milan, crate::claims::SnpSigner::Vcek, false);
        assert_eq!((claims.platform_info, claims.current_firmware.to_string()), (0x25, "1.55.29".to_string()));
        let row = |p: &Policy, c: &SnpClaims| {
            p.check_snp(&Verified::new(c.clone())).into_iter().find(|c| c.name == "snp.alias_check").unwrap()
        };
        assert!(row(&Policy::default(), &claims).passed);
        claims.platform_info &= !platform_info_bits::ALIAS_CHECK_COMPLETE;
        let refused = row(&Policy::default(), &claims);
        assert!(!refused.passed);
        assert_eq!(
            refused.detail,
            "PLATFORM_INFO bit 5 ALIAS_CHECK_COMPLETE is clear on Milan firmware 1.55.29, which reports it: memory alias \
             detection (the BadRAM mitigation, AMD-SB-3015) has not completed since the last reset"
        );
        let relaxed = Policy::from_toml("[snp]\nallow_alias_check_incomplete = true").unwrap();
        assert!(row(&relaxed, &claims).passed);
        // Older firmware (1.55.21) does not report the bit: not judged by it.
        claims.current_firmware.build = 21;
        let old = row(&Policy::default(), &claims);
        assert!(old.passed && old.found == "not reported", "{old:?}");
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
