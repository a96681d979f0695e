//! `attest log keygen|append|verify`, `attest witness cosign` and `attest audit`: the
//! release transparency log (`chrysalis-tlog`, layout in attest/tlog/README.md).
//!
//! Trust: key files and the command line are the caller's; the log directory is untrusted
//! for `verify`, `cosign` and `audit` (everything goes through `chrysalis_tlog`'s checks).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::{Outcome, Refused};
use chrysalis_tlog::entry::{Entry, image_release_of_release_folder};
use chrysalis_tlog::keys::{KeyKind, key_label, log_signer};
use chrysalis_tlog::{Log, LogPolicy};

/// Largest entry or key file read.
const MAX_FILE: u64 = 1 << 20;

/// `attest log …`.
#[derive(Args, Debug)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Generate a log (or, with --witness, a witness) key pair: F (private) and F.pub.
    Keygen(KeygenArgs),
    /// Append an entry (JSON) to a log, creating the log if DIR has none, and sign a new
    /// checkpoint.
    Append(AppendArgs),
    /// Verify that an entry is in a log: log signature, witnesses, consistency with the
    /// state file, inclusion proof.
    Verify(VerifyLogArgs),
}

/// `attest log keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Key name; for a log key, the log's origin (e.g. example.com/chrysalis-releases).
    #[arg(long)]
    pub name: String,
    /// Private key file to write (the verifier key goes to FILE.pub).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A witness key (cosignature/v1) instead of a log key.
    #[arg(long)]
    pub witness: bool,
}

/// `attest log append`.
#[derive(Args, Debug)]
pub struct AppendArgs {
    /// Log directory.
    #[arg(long, value_name = "DIR")]
    pub log: PathBuf,
    /// The log's private key (its name is the origin).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The entry (JSON, v1: image-release or key-release).
    #[arg(long, value_name = "FILE")]
    pub entry: PathBuf,
}

/// `attest log verify`.
#[derive(Args, Debug)]
pub struct VerifyLogArgs {
    /// Log directory, or the http:// URL it is served at.
    #[arg(long, value_name = "DIR|URL")]
    pub log: String,
    /// The entry that must be in the log (JSON; compared in canonical form).
    #[arg(long, value_name = "FILE")]
    pub entry: PathBuf,
    /// The log's verifier key (`name+id+key`), or a file holding it.
    #[arg(long, value_name = "VKEY")]
    pub log_key: String,
    /// A witness verifier key, or a file holding it (repeat).
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// How many distinct listed witnesses must have cosigned.
    #[arg(long, value_name = "N")]
    pub min_witnesses: usize,
    /// The last checkpoint accepted from this log (JSON; created on first use, updated only
    /// when verification passes).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
}

/// `attest witness …`.
#[derive(Args, Debug)]
pub struct WitnessArgs {
    #[command(subcommand)]
    command: WitnessCommand,
}

#[derive(Subcommand, Debug)]
enum WitnessCommand {
    /// Cosign the log's latest checkpoint if its latest entry equals this witness's rebuild.
    Cosign(CosignArgs),
}

/// `attest witness cosign`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expected").required(true).args(["expect_entry", "rebuild_from"])))]
pub struct CosignArgs {
    /// Log directory.
    #[arg(long, value_name = "DIR")]
    pub log: PathBuf,
    /// The witness's private key (cosignature/v1).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The log's verifier key, or a file holding it: a witness cosigns only what the log
    /// signed.
    #[arg(long, value_name = "VKEY")]
    pub log_key: String,
    /// The entry the witness expects (its own rebuild's result), JSON.
    #[arg(long, value_name = "FILE")]
    pub expect_entry: Option<PathBuf>,
    /// Rebuild instead: clone this git repository, check out --rev, run `cargo xtask repro`
    /// and `cargo xtask package` there, and build the image-release entry from the release
    /// folder. Takes as long as two image builds.
    #[arg(long, value_name = "GIT_DIR", requires = "rev")]
    pub rebuild_from: Option<PathBuf>,
    /// The release's git revision for --rebuild-from.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// The witness's own state file (last checkpoint it cosigned): rollbacks and forks are
    /// refused.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

/// `attest audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Log directory.
    #[arg(long, value_name = "DIR")]
    pub log: PathBuf,
    /// The log's verifier key, or a file holding it.
    #[arg(long, value_name = "VKEY")]
    pub log_key: String,
}

fn read_small(p: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len();
    if len > MAX_FILE {
        bail!("{}: {len} bytes, limit {MAX_FILE}", p.display());
    }
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// A verifier key given inline (`name+id+key`) or as a file holding one.
pub fn vkey_arg(s: &str) -> Result<String> {
    let p = Path::new(s);
    if !s.contains('+') || p.is_file() {
        let text = String::from_utf8(read_small(p)?).with_context(|| format!("{s}: not text"))?;
        return Ok(text.trim().to_string());
    }
    Ok(s.trim().to_string())
}

fn read_key(p: &Path) -> Result<String> {
    let text = zeroize::Zeroizing::new(String::from_utf8(read_small(p)?).with_context(|| format!("{}: not text", p.display()))?);
    Ok(text.trim().to_string())
}

/// Dispatch `attest log …`.
pub fn run_log(a: &LogArgs) -> Result<Outcome> {
    match &a.command {
        LogCommand::Keygen(k) => keygen(k),
        LogCommand::Append(k) => append(k).map(|_| Outcome::Ok),
        LogCommand::Verify(k) => verify(k),
    }
}

/// Dispatch `attest witness …`.
pub fn run_witness(a: &WitnessArgs) -> Result<Outcome> {
    match &a.command {
        WitnessCommand::Cosign(c) => cosign(c, now()),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `attest log keygen`: writes the private key (mode 0600) and FILE.pub.
pub fn keygen(a: &KeygenArgs) -> Result<Outcome> {
    let kind = if a.witness { KeyKind::Witness } else { KeyKind::Log };
    let (skey, vkey) = chrysalis_tlog::keygen(&a.name, kind)?;
    let skey = zeroize::Zeroizing::new(skey);
    if a.out.exists() {
        bail!("{} exists; not overwriting a key", a.out.display());
    }
    write_private(&a.out, skey.as_bytes())?;
    let mut pubp = a.out.as_os_str().to_owned();
    pubp.push(".pub");
    std::fs::write(&pubp, format!("{vkey}\n")).with_context(|| format!("writing {}", Path::new(&pubp).display()))?;
    outln!(
        "{} key {}: private {}, verifier {}",
        if a.witness { "witness" } else { "log" },
        key_label(&vkey),
        a.out.display(),
        Path::new(&pubp).display()
    );
    outln!("{vkey}");
    Ok(Outcome::Ok)
}

fn write_private(p: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(p).with_context(|| format!("creating {}", p.display()))?;
    f.write_all(bytes).and_then(|()| f.write_all(b"\n")).with_context(|| format!("writing {}", p.display()))
}

/// `attest log append`: returns the new entry's index.
pub fn append(a: &AppendArgs) -> Result<u64> {
    let entry = read_small(&a.entry)?;
    let (index, origin, size) = append_bytes(&a.log, &a.key, &entry)?;
    outln!("appended entry {index} to {}: checkpoint size {size}, signed by {origin}", a.log.display());
    Ok(index)
}

/// Append `entry` to the log in `dir` with the private key in `key` (creating the log when
/// `dir` has no checkpoint): (index, origin, new size).
pub fn append_bytes(dir: &Path, key: &Path, entry: &[u8]) -> Result<(u64, String, u64)> {
    let signer = log_signer(&read_key(key)?)?;
    let origin = chrysalis_tlog::signed_note::Signer::name(&signer).to_string();
    let mut log = if dir.join("checkpoint").exists() {
        Log::open(dir, signer).with_context(|| format!("opening log {}", dir.display()))?
    } else {
        Log::create(dir, &origin, signer).with_context(|| format!("creating log {}", dir.display()))?
    };
    let index = log.append(entry)?;
    Ok((index, origin, log.size()))
}

/// Most entries a log mirrored over HTTP may have (one request per 256).
const MAX_HTTP_LOG_SIZE: u64 = 1 << 24;

/// A log to read: a local directory, or a temporary mirror of one served over `http://`
/// (removed when dropped).
pub struct LogSource {
    dir: PathBuf,
    mirror: bool,
}

impl LogSource {
    /// `log` is a directory or an `http://` URL of a log (its checkpoint, tiles and bundles
    /// are fetched; the checkpoint is checked against `policy` before anything else is).
    pub fn open(log: &str, policy: &LogPolicy) -> Result<Self> {
        if !(log.starts_with("http://") || log.starts_with("https://")) {
            return Ok(Self { dir: PathBuf::from(log), mirror: false });
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("chrysalis-log-mirror-{}-{n}", std::process::id()));
        let src = Self { dir, mirror: true };
        let base = log.trim_end_matches('/');
        let checkpoint = crate::http::get(&format!("{base}/checkpoint"), chrysalis_tlog::log::MAX_CHECKPOINT_LEN as usize)?;
        let cp = chrysalis_tlog::verify::verify_checkpoint_bytes(&checkpoint, policy).map_err(|e| Refused(e.to_string()))?;
        if cp.size > MAX_HTTP_LOG_SIZE {
            return Err(
                Refused(format!("{log}: {} entries, more than the {MAX_HTTP_LOG_SIZE} fetched over HTTP", cp.size)).into()
            );
        }
        for (rel, limit) in chrysalis_tlog::log::tree_files(cp.size)? {
            let body = crate::http::get(&format!("{base}/{rel}"), usize::try_from(limit).unwrap_or(usize::MAX))?;
            chrysalis_tlog::log::write_atomic(&src.dir.join(&rel), &body)?;
        }
        chrysalis_tlog::log::write_atomic(&src.dir.join("checkpoint"), &checkpoint)?;
        Ok(src)
    }

    /// The directory to read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LogSource {
    fn drop(&mut self) {
        if self.mirror {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn policy_of(log_key: &str, witnesses: &[String], min: usize) -> Result<LogPolicy> {
    Ok(LogPolicy {
        log_key: vkey_arg(log_key)?,
        witnesses: witnesses.iter().map(|w| vkey_arg(w)).collect::<Result<_>>()?,
        min_witnesses: min,
    })
}

/// `attest log verify`: prints each check; exit 1 when one fails.
pub fn verify(a: &VerifyLogArgs) -> Result<Outcome> {
    let policy = policy_of(&a.log_key, &a.witnesses, a.min_witnesses)?;
    let entry = read_small(&a.entry)?;
    outln!("log {} (key {})", a.log, key_label(&policy.log_key));
    let src = match LogSource::open(&a.log, &policy) {
        Ok(s) => s,
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            outln!("  FAIL {}", e.downcast_ref::<Refused>().map(|r| r.0.as_str()).unwrap_or_default());
            return Ok(Outcome::Failed);
        }
        Err(e) => return Err(e),
    };
    match chrysalis_tlog::verify_inclusion(src.dir(), &entry, &policy, &a.state) {
        Ok(inc) => {
            print_inclusion(&inc, policy.min_witnesses);
            Ok(Outcome::Ok)
        }
        Err(e) => {
            outln!("  FAIL {e}");
            Ok(Outcome::Failed)
        }
    }
}

fn print_inclusion(inc: &chrysalis_tlog::verify::Inclusion, min: usize) {
    let cp = &inc.checkpoint;
    outln!("  ok   log signature      checkpoint {} size {} root {}", cp.origin, cp.size, cp.root);
    let names: Vec<String> = cp.witnesses.iter().map(|(n, t)| format!("{n} (time {t})")).collect();
    outln!(
        "  ok   witnesses          {} of {min} required: {}",
        cp.witnesses.len(),
        if names.is_empty() { "none".into() } else { names.join(", ") }
    );
    match inc.previous_size {
        Some(s) => outln!("  ok   consistency        extends the checkpoint of size {s} seen before"),
        None => outln!("  ok   consistency        first checkpoint seen from this log (state file created)"),
    }
    outln!("  ok   inclusion          entry {} of {}", inc.index, cp.size);
}

/// `attest witness cosign` at time `timestamp`.
pub fn cosign(a: &CosignArgs, timestamp: u64) -> Result<Outcome> {
    let key = read_key(&a.key)?;
    let log_key = vkey_arg(&a.log_key)?;
    let expected = match (&a.expect_entry, &a.rebuild_from, &a.rev) {
        (Some(p), _, _) => read_small(p)?,
        (None, Some(git), Some(rev)) => rebuild_entry(git, rev)?,
        _ => bail!("--expect-entry FILE or --rebuild-from DIR --rev REV is required"),
    };
    match chrysalis_tlog::cosign_latest(&a.log, &log_key, &key, &expected, a.state.as_deref(), timestamp) {
        Ok(c) => {
            outln!(
                "cosigned checkpoint {} size {} root {} at time {timestamp}: entry {} equals the rebuild",
                c.checkpoint.origin,
                c.checkpoint.size,
                c.checkpoint.root,
                c.index
            );
            Ok(Outcome::Ok)
        }
        Err(e) => Err(Refused(e.to_string()).into()),
    }
}

/// Rebuild a release from source: a fresh clone of `git` at `rev`, `cargo xtask repro`
/// (two independent builds must agree), `cargo xtask package`, and the image-release entry
/// of its release folder. Not exercised by the tests (it takes two full image builds).
fn rebuild_entry(git: &Path, rev: &str) -> Result<Vec<u8>> {
    let work = std::env::temp_dir().join(format!("chrysalis-witness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let run = |c: &mut Command, what: &str| -> Result<()> {
        let st = c.status().with_context(|| format!("running {what}"))?;
        if !st.success() {
            bail!("{what} failed ({st})");
        }
        Ok(())
    };
    run(Command::new("git").arg("clone").arg("--no-local").arg(git).arg(&work), "git clone")?;
    run(Command::new("git").arg("-C").arg(&work).args(["checkout", "--detach", rev]), "git checkout")?;
    run(Command::new("cargo").current_dir(&work).args(["xtask", "repro"]), "cargo xtask repro")?;
    run(Command::new("cargo").current_dir(&work).args(["xtask", "package"]), "cargo xtask package")?;
    let release = work.join("out/release");
    let folder = std::fs::read_dir(&release)
        .with_context(|| format!("reading {}", release.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .with_context(|| format!("no release folder under {}", release.display()))?;
    let entry = image_release_of_release_folder(&folder)?;
    Ok(Entry::ImageRelease(entry).to_canonical()?)
}

/// `attest audit`: list every entry and check that each leaf hashes into the checkpoint.
pub fn audit(a: &AuditArgs) -> Result<Outcome> {
    let policy = policy_of(&a.log_key, &[], 0)?;
    let (cp, entries) = match chrysalis_tlog::audit(&a.log, &policy) {
        Ok(r) => r,
        Err(e) => {
            outln!("audit of {}: FAIL {e}", a.log.display());
            return Ok(Outcome::Failed);
        }
    };
    outln!("audit of {}: checkpoint {} size {} root {}", a.log.display(), cp.origin, cp.size, cp.root);
    for e in &entries {
        match &e.entry {
            Ok(Entry::KeyRelease(k)) => outln!(
                "{:>5}  {}  key-release  measurement={} platform={} runtime_key={} bundle={} policy={}",
                e.index,
                k.time,
                k.measurement,
                k.platform_id.as_deref().unwrap_or("-"),
                k.runtime_key,
                k.bundle_digest,
                k.policy_sha256
            ),
            Ok(Entry::ImageRelease(r)) => outln!(
                "{:>5}  -  image-release  version={} measurements={} sbom={}",
                e.index,
                r.version,
                r.measurement_values().join(","),
                r.sbom_sha256
            ),
            Err(why) => outln!("{:>5}  -  unknown  {why}", e.index),
        }
    }
    outln!("ok: all {} entries hash into the signed checkpoint", entries.len());
    Ok(Outcome::Ok)
}
