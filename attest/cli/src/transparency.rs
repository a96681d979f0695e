//! The owner policy's `require_transparency` check, and logging key releases (issue 19).
//!
//! Both are called once per command after the existing verification passed:
//! [`require_released`] by `attest verify` and `attest release` (a runtime's measurement is
//! accepted only if an image-release entry of the policy's log lists it), and
//! [`ReleaseLog::append`] by `attest release` and `attest serve-keys` (a key-release entry
//! for every key granted, written before the key is sent).
//!
//! Trust: the policy file and the log's private key are the owner's; the log directory read
//! for `require_released` is untrusted and goes through `chrysalis_tlog`'s checks.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::Refused;
use chrysalis_proto::evidence::{Evidence, PlatformEvidence};
use chrysalis_tlog::entry::{Entry, KIND_KEY_RELEASE, KeyRelease};
use chrysalis_tlog::{LogPolicy, verify_measurement_released};
use chrysalis_verify::attested::{AttestError, Challenge, EvidenceVerifier, Step, VerifiedRuntime};
use chrysalis_verify::grant::KeyGrant;
use chrysalis_verify::policy::Policy;

/// Offset and length of CHIP_ID in an SEV-SNP (or simulated) report.
const SNP_CHIP_ID: std::ops::Range<usize> = 0x1A0..0x1E0;

/// One log check at a time in this process: each one reads and replaces the state file
/// (`serve-keys` and `proxy` verify runtimes concurrently).
static STATE_LOCK: Mutex<()> = Mutex::new(());

/// If the policy sets `require_transparency`, check that an image-release entry listing
/// `measurement` is in the policy's log (log signature, witnesses, consistency with the
/// state file, inclusion). `Ok(None)`: not required.
pub fn require_released(policy: &Policy, measurement: Option<&[u8]>) -> Result<Option<Step>, Refused> {
    if !policy.require_transparency {
        return Ok(None);
    }
    let Some(t) = &policy.transparency else {
        return Err(Refused("require_transparency = true but the policy has no [transparency] table".into()));
    };
    let Some(m) = measurement else {
        return Err(Refused("transparency: the evidence has no launch measurement to look up".into()));
    };
    let lp =
        LogPolicy { log_key: t.log_key.clone(), witnesses: t.witnesses.clone(), min_witnesses: t.min_witnesses.unwrap_or(0) };
    let hex_m = hex::encode(m);
    let _guard = STATE_LOCK.lock().map_err(|_| Refused("transparency: state lock poisoned".into()))?;
    let src = crate::tlog::LogSource::open(&t.log, &lp).map_err(|e| Refused(format!("transparency: log {}: {e:#}", t.log)))?;
    match verify_measurement_released(src.dir(), &hex_m, &lp, Path::new(&t.state)) {
        Ok((inc, Entry::ImageRelease(r))) => Ok(Some(Step::new(
            "transparency log",
            format!(
                "measurement in image-release {} (entry {} of {}, log {}, {} witness cosignature(s))",
                r.version,
                inc.index,
                inc.checkpoint.size,
                inc.checkpoint.origin,
                inc.checkpoint.witnesses.len()
            ),
        ))),
        Ok((inc, _)) => Err(Refused(format!("transparency: entry {} is not an image release", inc.index))),
        Err(e) => Err(Refused(format!("transparency: measurement {hex_m}: {e}"))),
    }
}

/// What runs after a key grant and before the key is sent: the policy's
/// `require_transparency` check, then the key-release entry (if a release log is set).
pub struct GrantHook {
    policy: Policy,
    release_log: Option<ReleaseLog>,
}

impl GrantHook {
    /// The hook for a policy file (loaded again: the commands hold only a verifier) and the
    /// release-log arguments.
    pub fn new(policy: &Path, release_log: &ReleaseLogArgs) -> Result<Self> {
        let p = Policy::load(policy).map_err(|e| anyhow::anyhow!("policy {}: {e}", policy.display()))?;
        Ok(Self { policy: p, release_log: ReleaseLog::from_args(release_log, policy)? })
    }

    /// Check and log `grant`; the steps that passed are added to it. A refusal is a
    /// [`Refused`]; a failure to log is an error too (no key leaves unlogged).
    pub fn after_grant(&self, evidence: &Evidence, mut grant: KeyGrant, bundle_header: &[u8]) -> Result<KeyGrant> {
        let m = chrysalis_proto::channel::receipt::launch_measurement(&evidence.platform);
        if let Some(step) = require_released(&self.policy, m.as_ref().map(|m| &m[..]))? {
            grant.steps.push(step);
        }
        if let Some(log) = &self.release_log {
            let index = log.append(evidence, &grant, bundle_header)?;
            grant.steps.push(Step::new("release logged", format!("key-release entry {index} in {}", log.dir.display())));
        }
        Ok(grant)
    }
}

/// `attest release`'s one call: [`GrantHook::after_grant`] for this policy file and
/// release log.
pub fn after_grant(
    policy: &Path,
    release_log: &ReleaseLogArgs,
    evidence: &Evidence,
    grant: KeyGrant,
    bundle_header: &[u8],
) -> Result<KeyGrant> {
    GrantHook::new(policy, release_log)?.after_grant(evidence, grant, bundle_header)
}

/// `--release-log DIR --release-log-key FILE` of `attest release` and `attest serve-keys`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReleaseLogArgs {
    /// Append a key-release entry for every key granted to this transparency log directory
    /// (created if it has no checkpoint yet). The entry is written before the key is sent.
    #[arg(long, value_name = "DIR", requires = "release_log_key")]
    pub release_log: Option<PathBuf>,
    /// The release log's private key (`attest log keygen`).
    #[arg(long, value_name = "FILE", requires = "release_log")]
    pub release_log_key: Option<PathBuf>,
}

/// An open release log (appends are serialised: `serve-keys` grants concurrently).
pub struct ReleaseLog {
    dir: PathBuf,
    key: PathBuf,
    policy_sha256: String,
    lock: Mutex<()>,
}

impl ReleaseLog {
    /// The release log named by `args`, if any; `policy` is the policy file whose digest
    /// goes into every entry.
    pub fn from_args(args: &ReleaseLogArgs, policy: &Path) -> Result<Option<Self>> {
        let (Some(dir), Some(key)) = (&args.release_log, &args.release_log_key) else {
            if args.release_log.is_some() || args.release_log_key.is_some() {
                bail!("--release-log and --release-log-key go together");
            }
            return Ok(None);
        };
        let bytes = std::fs::read(policy).with_context(|| format!("reading {}", policy.display()))?;
        Ok(Some(Self {
            dir: dir.clone(),
            key: key.clone(),
            policy_sha256: hex::encode(Sha256::digest(&bytes)),
            lock: Mutex::new(()),
        }))
    }

    /// The key-release entry for `grant` of a key sealing `bundle_header`, to a runtime
    /// whose verified evidence is `evidence`, at `time` (RFC 3339).
    pub fn entry(&self, evidence: &Evidence, grant: &KeyGrant, bundle_header: &[u8], time: String) -> KeyRelease {
        let measurement =
            chrysalis_proto::channel::receipt::launch_measurement(&evidence.platform).map(hex::encode).unwrap_or_default();
        let platform_id = match &evidence.platform {
            PlatformEvidence::Snp { report, .. } | PlatformEvidence::Simulated { report } => {
                report.get(SNP_CHIP_ID).filter(|c| c.iter().any(|&b| b != 0)).map(hex::encode)
            }
            _ => None,
        };
        KeyRelease {
            v: chrysalis_tlog::entry::ENTRY_VERSION,
            kind: KIND_KEY_RELEASE.into(),
            time,
            measurement,
            platform_id,
            runtime_key: hex::encode(grant.runtime_public_key),
            bundle_digest: hex::encode(bundle_header),
            policy_sha256: self.policy_sha256.clone(),
        }
    }

    /// Append the key-release entry of `grant` (now); returns its index.
    pub fn append(&self, evidence: &Evidence, grant: &KeyGrant, bundle_header: &[u8]) -> Result<u64> {
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let entry = Entry::KeyRelease(self.entry(evidence, grant, bundle_header, time)).to_canonical()?;
        let _guard = self.lock.lock().map_err(|_| anyhow::anyhow!("release log lock poisoned"))?;
        let (index, _, _) = crate::tlog::append_bytes(&self.dir, &self.key, &entry)
            .with_context(|| format!("logging the key release to {}", self.dir.display()))?;
        Ok(index)
    }
}

/// A verifier that also requires the policy's transparency log (`require_transparency`) to
/// list the launch measurement of every runtime `inner` accepts; used for `attest proxy`,
/// whose verification runs per node and again on every re-attestation. The measurement is
/// read from the report `inner` has just verified.
pub struct TransparencyVerifier {
    inner: Box<dyn EvidenceVerifier>,
    policy: Policy,
}

impl TransparencyVerifier {
    /// Wrap `inner`; a policy without `require_transparency` adds nothing.
    pub fn wrap(inner: Box<dyn EvidenceVerifier>, policy: Policy) -> Box<dyn EvidenceVerifier> {
        if policy.require_transparency { Box::new(Self { inner, policy }) } else { inner }
    }
}

impl EvidenceVerifier for TransparencyVerifier {
    fn verify(&self, evidence: &Evidence, challenge: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
        let mut v = self.inner.verify(evidence, challenge)?;
        let m = chrysalis_proto::channel::receipt::launch_measurement(&evidence.platform);
        match require_released(&self.policy, m.as_ref().map(|m| &m[..])) {
            Ok(Some(step)) => v.steps.push(step),
            Ok(None) => {}
            Err(e) => return Err(AttestError::Refused(e.0)),
        }
        Ok(v)
    }
}
