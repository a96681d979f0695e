//! Evidence inside the guest: find out which TEE this is and get a hardware report or quote
//! that binds the runtime's 64-byte REPORT_DATA, with what a verifier needs beside it (SNP
//! certificates from the host, the TDX CCEL event log).
//!
//! Order of preference: configfs-tsm (`/sys/kernel/config/tsm/report`, one interface for
//! SNP and TDX, and the only way to a TDX *quote* from user space); then `/dev/sev-guest`
//! (SNP, via the `sev` crate); then `/dev/tdx_guest`, which yields only a TDREPORT (MAC'd
//! for this CPU, not remotely verifiable), so it ends in an error that says so.
//!
//! Why not the `tdx-guest` crate: it is a `no_std` library that issues TDCALL directly,
//! which only works in ring 0 (a guest kernel or firmware), and it depends on nightly-only
//! features of the `x86_64` crate, so it does not build on the pinned stable toolchain. A
//! Linux user-space program reaches the TDX module through the kernel instead: configfs-tsm
//! or the `tdx_guest` driver's ioctl ([`tdx_ioctl`]).
//!
//! Input: kernel files and devices; the outputs are untrusted until a verifier checks them.
//! Nothing here is secret (REPORT_DATA is a hash of public values).

pub mod snp;
pub mod tdx;
#[allow(unsafe_code)]
pub mod tdx_ioctl;
pub mod tsm;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use chrysalis_proto::evidence::PlatformEvidence;

use self::tsm::{ConfigFs, RealFs, Tsm};

/// Why no evidence could be collected. Each message names what is missing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// Nothing that could produce a report exists.
    #[error("no TEE detected: no {tsm} (tsm module not loaded / configfs not mounted), no {sev}, no {tdx}")]
    NoTee {
        /// The configfs-tsm report directory looked for.
        tsm: String,
        /// The SEV guest device looked for.
        sev: String,
        /// The TDX guest device looked for.
        tdx: String,
    },
    /// configfs-tsm's report directory is missing.
    #[error("tsm module not loaded / configfs not mounted: {} does not exist", path.display())]
    TsmUnavailable {
        /// The directory.
        path: PathBuf,
    },
    /// A configfs-tsm file operation failed.
    #[error("configfs-tsm {step} {}: {source}", path.display())]
    Tsm {
        /// mkdir, write, read, parse.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The provider could not produce a report or quote.
    #[error("quote generation service unavailable (provider {provider} returned {cause})")]
    QuoteService {
        /// tdx_guest, sev_guest, ...
        provider: String,
        /// The errno and what it usually means.
        cause: String,
    },
    /// Someone else wrote to our configfs-tsm entry while we read it.
    #[error("configfs-tsm generation changed from {before} to {after} while reading the report (concurrent writer)")]
    GenerationRace {
        /// Generation after our write.
        before: u64,
        /// Generation after our read.
        after: u64,
    },
    /// configfs-tsm has a provider this runtime does not know.
    #[error("configfs-tsm provider {0:?} is not supported (expected sev_guest or tdx_guest)")]
    UnknownProvider(String),
    /// The report does not carry the REPORT_DATA that was asked for.
    #[error("the {0} report does not carry the requested REPORT_DATA")]
    ReportDataMismatch(&'static str),
    /// The report from the provider does not parse.
    #[error("the {what} from the provider is malformed: {detail}")]
    Malformed {
        /// "tdx quote", "snp report", "snp certificate table".
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// `/dev/sev-guest` failed.
    #[error("sev-guest: {0}")]
    SevGuest(String),
    /// `/dev/tdx_guest` answered, but a TDREPORT is not remotely verifiable.
    #[error(
        "/dev/tdx_guest gives only a TDREPORT (MAC'd for this CPU, not a quote): load tsm (configfs-tsm) and give the guest a quote generation service"
    )]
    TdxReportOnly,
    /// The TDX_CMD_GET_REPORT0 ioctl failed.
    #[error("TDX_CMD_GET_REPORT0 on {}: {source}", path.display())]
    TdxIoctl {
        /// The device.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The CCEL log exists but cannot be read.
    #[error("reading the CCEL event log {}: {source}", path.display())]
    Ccel {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Where the kernel interfaces are (real paths by default; a fake root in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// configfs-tsm report directory.
    pub tsm_report: PathBuf,
    /// SEV guest device.
    pub sev_guest: PathBuf,
    /// TDX guest device.
    pub tdx_guest: PathBuf,
    /// CCEL log area.
    pub ccel_log: PathBuf,
    /// /proc/cpuinfo (for the `tdx_guest` / `sev_snp` CPU flags).
    pub cpuinfo: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths::under(Path::new("/"))
    }
}

impl Paths {
    /// The standard paths below `root`.
    pub fn under(root: &Path) -> Self {
        Paths {
            tsm_report: root.join(tsm::TSM_REPORT_DIR.trim_start_matches('/')),
            sev_guest: root.join("dev/sev-guest"),
            tdx_guest: root.join("dev/tdx_guest"),
            ccel_log: root.join(tdx::CCEL_LOG.trim_start_matches('/')),
            cpuinfo: root.join("proc/cpuinfo"),
        }
    }
}

/// The kind of confidential VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tee {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

/// What the guest can see of its TEE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// configfs-tsm report directory present.
    pub tsm_report_dir: bool,
    /// Provider named by a probe entry (`sev_guest`, `tdx_guest`), if the probe worked.
    pub tsm_provider: Option<String>,
    /// Why the provider probe failed, if it did.
    pub tsm_probe_error: Option<String>,
    /// `/dev/sev-guest` present.
    pub sev_guest_device: bool,
    /// `/dev/tdx_guest` present.
    pub tdx_guest_device: bool,
    /// TEE flags among /proc/cpuinfo's flags (`tdx_guest`, `sev`, `sev_es`, `sev_snp`).
    pub cpu_flags: Vec<String>,
    /// CCEL log present.
    pub ccel_log: bool,
}

impl Detection {
    /// The TEE these signs point to (provider first, then devices, then CPU flags).
    pub fn tee(&self) -> Option<Tee> {
        match self.tsm_provider.as_deref() {
            Some("sev_guest") => return Some(Tee::Snp),
            Some("tdx_guest") => return Some(Tee::Tdx),
            _ => {}
        }
        let flag = |f: &str| self.cpu_flags.iter().any(|x| x == f);
        if self.sev_guest_device || flag("sev_snp") {
            Some(Tee::Snp)
        } else if self.tdx_guest_device || flag("tdx_guest") {
            Some(Tee::Tdx)
        } else {
            None
        }
    }
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "tee={} tsm_report={} provider={} sev-guest={} tdx_guest={} ccel={} cpu_flags=[{}]",
            match self.tee() {
                Some(Tee::Snp) => "snp",
                Some(Tee::Tdx) => "tdx",
                None => "none",
            },
            yn(self.tsm_report_dir),
            self.tsm_provider.as_deref().or(self.tsm_probe_error.as_deref()).unwrap_or("-"),
            yn(self.sev_guest_device),
            yn(self.tdx_guest_device),
            yn(self.ccel_log),
            self.cpu_flags.join(",")
        )
    }
}

/// Look at the kernel interfaces (probing configfs-tsm for its provider).
pub fn detect(paths: &Paths) -> Detection {
    detect_with(paths, RealFs)
}

/// [`detect`] with an explicit file system for configfs.
pub fn detect_with<F: ConfigFs>(paths: &Paths, fs: F) -> Detection {
    let (tsm_report_dir, tsm_provider, tsm_probe_error) = match Tsm::open(&paths.tsm_report, fs) {
        Ok(t) => match t.provider() {
            Ok(p) => (true, Some(p), None),
            Err(e) => (true, None, Some(e.to_string())),
        },
        Err(_) => (false, None, None),
    };
    let cpu_flags = std::fs::read_to_string(&paths.cpuinfo)
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("flags")).map(|l| {
                l.split_whitespace()
                    .filter(|f| matches!(*f, "tdx_guest" | "sev" | "sev_es" | "sev_snp"))
                    .map(String::from)
                    .collect()
            })
        })
        .unwrap_or_default();
    Detection {
        tsm_report_dir,
        tsm_provider,
        tsm_probe_error,
        sev_guest_device: paths.sev_guest.exists(),
        tdx_guest_device: paths.tdx_guest.exists(),
        cpu_flags,
        ccel_log: paths.ccel_log.exists(),
    }
}

/// How the evidence was obtained (for the boot log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// configfs-tsm with this provider and entry generation.
    ConfigfsTsm {
        /// Provider name.
        provider: String,
        /// Entry generation.
        generation: u64,
    },
    /// `/dev/sev-guest` ioctls.
    SevGuestDevice,
}

/// Collected platform evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    /// What goes into the evidence bundle.
    pub platform: PlatformEvidence,
    /// Where it came from.
    pub source: Source,
}

/// Get a report or quote binding `report_data` from whatever TEE interface exists.
pub fn collect(paths: &Paths, report_data: &[u8; 64]) -> Result<Collected, CollectError> {
    collect_with(paths, RealFs, report_data)
}

/// [`collect`] with an explicit file system for configfs.
pub fn collect_with<F: ConfigFs>(paths: &Paths, fs: F, report_data: &[u8; 64]) -> Result<Collected, CollectError> {
    match Tsm::open(&paths.tsm_report, fs) {
        Ok(tsm) => return from_tsm(&tsm, paths, report_data),
        Err(e) => log::info!("evidence: {e}; trying the guest devices"),
    }
    if paths.sev_guest.exists() {
        let (report, certs) = snp::get_report(report_data)?;
        check_snp_report_data(&report, report_data)?;
        return Ok(Collected { platform: PlatformEvidence::Snp { report, certs }, source: Source::SevGuestDevice });
    }
    if paths.tdx_guest.exists() {
        return Err(tdx::report_only(&paths.tdx_guest, report_data));
    }
    Err(CollectError::NoTee {
        tsm: paths.tsm_report.display().to_string(),
        sev: paths.sev_guest.display().to_string(),
        tdx: paths.tdx_guest.display().to_string(),
    })
}

fn from_tsm<F: ConfigFs>(tsm: &Tsm<F>, paths: &Paths, report_data: &[u8; 64]) -> Result<Collected, CollectError> {
    let r = tsm.request(report_data)?;
    let source = Source::ConfigfsTsm { provider: r.provider.clone(), generation: r.generation };
    let platform = match r.provider.as_str() {
        "sev_guest" => {
            check_snp_report_data(&r.outblob, report_data)?;
            let certs = match &r.auxblob {
                Some(table) => {
                    let entries = chrysalis_proto::wire::cert_table::parse(table)
                        .map_err(|e| CollectError::Malformed { what: "snp certificate table", detail: e.to_string() })?;
                    chrysalis_proto::wire::cert_table::certificates(&entries)
                }
                None => Vec::new(),
            };
            PlatformEvidence::Snp { report: r.outblob, certs }
        }
        "tdx_guest" => {
            let q = chrysalis_proto::wire::tdx::TdxQuote::parse(&r.outblob)
                .map_err(|e| CollectError::Malformed { what: "tdx quote", detail: e.to_string() })?;
            if &q.body.report_data != report_data {
                return Err(CollectError::ReportDataMismatch("tdx"));
            }
            PlatformEvidence::Tdx { quote: r.outblob, ccel_log: tdx::read_ccel(&paths.ccel_log)? }
        }
        other => return Err(CollectError::UnknownProvider(other.to_string())),
    };
    Ok(Collected { platform, source })
}

/// SNP ATTESTATION_REPORT: REPORT_DATA at 0x50..0x90 of a 1184-byte report.
fn check_snp_report_data(report: &[u8], report_data: &[u8; 64]) -> Result<(), CollectError> {
    if report.len() != 1184 {
        return Err(CollectError::Malformed { what: "snp report", detail: format!("expected 1184 bytes, got {}", report.len()) });
    }
    if report.get(0x50..0x90) != Some(report_data.as_slice()) {
        return Err(CollectError::ReportDataMismatch("snp"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tsm::fake::FakeTsm;
    use super::*;

    fn vector(rel: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../attest/testdata").join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn rd(b: &[u8]) -> [u8; 64] {
        b.try_into().unwrap_or([0; 64])
    }

    #[test]
    fn tdx_quote_through_fake_configfs_with_ccel() {
        let quote = vector("tdx/trustee/tdx_quote_5.dat");
        let q = chrysalis_proto::wire::tdx::TdxQuote::parse(&quote).unwrap_or_else(|e| panic!("{e}"));
        let want = q.body.report_data;
        let served = quote.clone();
        let fake = FakeTsm::new(
            "tdx",
            "tdx_guest",
            Box::new(move |inblob| if inblob == want { Ok(served.clone()) } else { Ok(vec![0; 10]) }),
        );
        let paths = Paths::under(&fake.root);
        let ccel = vector("tdx-eventlog/trustee/CCEL_data_ovmf");
        std::fs::create_dir_all(paths.ccel_log.parent().unwrap_or(&fake.root)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&paths.ccel_log, &ccel).unwrap_or_else(|e| panic!("{e}"));

        let d = detect_with(&paths, &fake);
        assert_eq!(d.tee(), Some(Tee::Tdx));
        assert_eq!(d.tsm_provider.as_deref(), Some("tdx_guest"));
        assert!(d.ccel_log);

        let c = collect_with(&paths, &fake, &want).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.source, Source::ConfigfsTsm { provider: "tdx_guest".into(), generation: 1 });
        assert_eq!(c.platform, PlatformEvidence::Tdx { quote, ccel_log: Some(ccel) });
        // A provider that answers with a quote for other REPORT_DATA is caught.
        let mut other = want;
        other[0] ^= 1;
        let err = collect_with(&paths, &fake, &other).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("malformed") || err.contains("REPORT_DATA"), "{err}");
    }

    #[test]
    fn snp_report_and_certificates_through_fake_configfs() {
        let report = vector("snp/trustee-milan/test-report.bin");
        let vcek = vector("snp/trustee-milan/test-vcek.der");
        let want = rd(&report[0x50..0x90]);
        let served = report.clone();
        let mut fake = FakeTsm::new("snp", "sev_guest", Box::new(move |_| Ok(served.clone())));
        let vcek_guid =
            chrysalis_proto::wire::cert_table::guid(0x63da758d, 0xe664, 0x4564, [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd]);
        fake.auxblob = Some(chrysalis_proto::wire::cert_table::build(&[(vcek_guid, &vcek)]));
        let paths = Paths::under(&fake.root);
        assert_eq!(detect_with(&paths, &fake).tee(), Some(Tee::Snp));
        let c = collect_with(&paths, &fake, &want).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.platform, PlatformEvidence::Snp { report, certs: vec![vcek] });
        let err = collect_with(&paths, &fake, &[0; 64]).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "the snp report does not carry the requested REPORT_DATA");
    }

    #[test]
    fn nothing_present_names_what_is_missing() {
        let fake = FakeTsm::new("none", "x", Box::new(|_| Err(5)));
        let paths = Paths::under(&fake.root.join("empty"));
        let d = detect_with(&paths, &fake);
        assert_eq!(d.tee(), None);
        assert!(d.to_string().starts_with("tee=none tsm_report=no"), "{d}");
        let err = collect_with(&paths, &fake, &[0; 64]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("no TEE detected"), "{err}");
        assert!(err.contains("tsm module not loaded / configfs not mounted"), "{err}");
    }

    #[test]
    fn unknown_provider_and_cpu_flags() {
        let fake = FakeTsm::new("arm", "arm_cca_guest", Box::new(|i| Ok(i.to_vec())));
        let paths = Paths::under(&fake.root);
        let err = collect_with(&paths, &fake, &[0; 64]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("provider \"arm_cca_guest\" is not supported"), "{err}");
        std::fs::create_dir_all(fake.root.join("proc")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&paths.cpuinfo, "processor : 0\nflags : fpu sse tdx_guest avx\n").unwrap_or_else(|e| panic!("{e}"));
        let paths = Paths { tsm_report: fake.root.join("no-tsm"), ..paths };
        let d = detect_with(&paths, &fake);
        assert_eq!(d.cpu_flags, vec!["tdx_guest".to_string()]);
        assert_eq!(d.tee(), Some(Tee::Tdx));
    }

    #[test]
    fn tdx_device_without_tsm_says_quote_needs_configfs() {
        let fake = FakeTsm::new("tdxdev", "x", Box::new(|_| Err(5)));
        let paths = Paths { tsm_report: fake.root.join("no-tsm"), ..Paths::under(&fake.root) };
        std::fs::create_dir_all(fake.root.join("dev")).unwrap_or_else(|e| panic!("{e}"));
        // A regular file stands in for the device: the ioctl fails with ENOTTY, named as such.
        std::fs::write(&paths.tdx_guest, b"").unwrap_or_else(|e| panic!("{e}"));
        let err = collect_with(&paths, &fake, &[0; 64]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("TDX_CMD_GET_REPORT0 on "), "{err}");
        assert_eq!(
            CollectError::TdxReportOnly.to_string().split(':').next(),
            Some("/dev/tdx_guest gives only a TDREPORT (MAC'd for this CPU, not a quote)")
        );
    }
}
