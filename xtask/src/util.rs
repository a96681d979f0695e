//! Helpers shared by the xtask commands: the project root, running processes with a clear
//! message when they fail, hashing files, and the `[xtask]` progress line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The workspace root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Print a progress line.
pub fn say(msg: impl AsRef<str>) {
    eprintln!("[xtask] {}", msg.as_ref());
}

/// Run a command to completion; fail with its command line and exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Run a command and return its stdout; fail with stderr included.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Hex SHA-256 of a file, streamed (packages and images can be large).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// The `cargo` that runs xtask (so builds use the pinned toolchain). Incremental compilation
/// is off: xtask runs whole builds and suites, not an edit-compile loop, and the incremental
/// caches doubled the test build's size on disk (CI ran out of disk with them).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("CARGO_INCREMENTAL", "0");
    cmd
}

/// Whether this runs on a CI machine (`CI` set and not `false`, as `.ci/run` is run). There a
/// clean clone is built once and disk is what runs out first, so scratch build trees are
/// removed as soon as their step has passed ([`remove_scratch`]).
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// On a CI machine ([`on_ci`]), remove a scratch directory that no later step reads (a
/// separate target directory, the reproducibility copy) and say how much disk is free.
/// Elsewhere keep it, so that a rerun is incremental.
pub fn remove_scratch(path: &Path, what: &str) -> Result<()> {
    if !on_ci() || !path.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(path).with_context(|| format!("removing {what} ({})", path.display()))?;
    say(format!("removed {what} ({}), no later step reads it; {}", path.display(), free_disk(path)));
    Ok(())
}

/// `N.N GiB free on MOUNT` for the file system holding `path` (its nearest existing
/// ancestor), from `df`; "free disk unknown" when `df` cannot tell.
pub fn free_disk(path: &Path) -> String {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let out = Command::new("df").args(["-Pk"]).arg(existing).output();
    let line = out.ok().and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.lines().nth(1).map(str::to_owned));
    let fields: Vec<&str> = line.as_deref().unwrap_or("").split_whitespace().collect();
    match (fields.get(3).and_then(|k| k.parse::<f64>().ok()), fields.get(5)) {
        (Some(kib), Some(mount)) => format!("{:.1} GiB free on {mount}", kib / (1024.0 * 1024.0)),
        _ => "free disk unknown".into(),
    }
}

/// Measures a stage and prints its duration when done.
pub struct Stage {
    name: String,
    start: Instant,
    heartbeat: Option<Heartbeat>,
}

/// A thread that prints "still running" lines until its stage is done.
struct Heartbeat {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Stage {
    /// Start a stage and print its name.
    pub fn start(name: impl Into<String>) -> Self {
        let name = name.into();
        say(format!("{name} ..."));
        Stage { name, start: Instant::now(), heartbeat: None }
    }

    /// Start a stage that prints a progress line every `every` until it is done, with
    /// `what` (called each time) saying what it is waiting for. For stages that can be silent
    /// for long (a model loading under emulation, the first token).
    pub fn start_watched(
        name: impl Into<String>,
        every: std::time::Duration,
        what: impl Fn() -> String + Send + 'static,
    ) -> Self {
        let mut stage = Stage::start(name);
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let (label, start) = (stage.name.clone(), stage.start);
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                say(format!("    ... {label}: {:.0} s, {}", start.elapsed().as_secs_f64(), what()));
            }
        });
        stage.heartbeat = Some(Heartbeat { stop, thread });
        stage
    }

    /// Seconds since start.
    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Print the stage's duration.
    pub fn done(mut self) -> f64 {
        self.stop_heartbeat();
        let s = self.secs();
        say(format!("{} done in {s:.1} s", self.name));
        s
    }
}

impl Stage {
    fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            let _ = h.stop.send(());
            let _ = h.thread.join();
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

/// Whether we run as root (apt can install packages).
pub fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || output(Command::new("id").arg("-u")).map(|s| s.trim() == "0").unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_file_streams_the_whole_file() -> Result<()> {
        let p = std::env::temp_dir().join(format!("chrysalis-sha256-test-{}", std::process::id()));
        // More than one `io::copy` buffer (8 KiB), so the streaming path is exercised.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data)?;
        let got = sha256_file(&p);
        std::fs::remove_file(&p)?;
        assert_eq!(got?, hex::encode(Sha256::digest(&data)));
        std::fs::write(&p, b"abc")?;
        let got = sha256_file(&p);
        std::fs::remove_file(&p)?;
        assert_eq!(got?, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(sha256_file(&p).is_err());
        Ok(())
    }
}
