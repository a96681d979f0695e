//! Setting up what the commands need on a fresh Debian 12 machine that has only Rust:
//! Debian packages (installed with apt when running as root, else named in a clear error),
//! the musl target, and the Python virtual environment with the reference tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{Stage, is_root, output, run, say};

/// Debian packages every image/test run needs: QEMU to boot the image, GNU cpio as the
/// independent reader of our archives, dpkg-deb to unpack the kernel package, Python for
/// the reference tools and the OpenAI client, openssl as the AES-GCM reference.
pub const BASE_PACKAGES: &[&str] = &["qemu-system-x86", "cpio", "dpkg", "python3", "python3-venv", "openssl", "git"];

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

/// Make sure the Debian packages are installed.
pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    if Command::new("dpkg-query").arg("--version").output().is_err() {
        bail!("this is not a Debian/Ubuntu system (no dpkg-query): install {} by hand", pkgs.join(" "));
    }
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages: {0}. Install them with: sudo apt-get install -y {0}", missing.join(" "));
    }
    let stage = Stage::start(format!("apt-get install {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    stage.done();
    Ok(())
}

/// What building the image needs: dpkg-deb (kernel package) and the runtime's Rust target.
pub fn ensure_build(root: &Path) -> Result<()> {
    ensure_packages(&["dpkg"])?;
    ensure_rust_target(root, &crate::pins::image(root)?.target)
}

/// What booting the image needs.
pub fn ensure_qemu() -> Result<()> {
    ensure_packages(&["qemu-system-x86"])
}

/// Make sure the runtime's Rust target is installed.
pub fn ensure_rust_target(root: &Path, target: &str) -> Result<()> {
    let have = output(Command::new("rustup").args(["target", "list", "--installed"]).current_dir(root)).unwrap_or_default();
    if have.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    say(format!("rustup target add {target}"));
    run(Command::new("rustup").args(["target", "add", target]).current_dir(root))
}

/// Requirement files of the Python reference tools, relative to the root.
pub const PYTHON_REQUIREMENTS: &[&str] = &["tests/requirements.txt"];

/// Create `.venv` and install the pinned Python requirements into it (skipped when the
/// requirement files have not changed since the last install). Returns the interpreter.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let stage = Stage::start("python3 -m venv .venv");
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the Python virtual environment (Debian: apt-get install python3-venv)")?;
        stage.done();
    }
    let mut wanted = String::new();
    for req in PYTHON_REQUIREMENTS {
        let path = root.join(req);
        wanted.push_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {req}"))?);
    }
    let stamp = venv.join(".chrysalis-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let stage = Stage::start("pip install (reference tools: openai, torch, transformers, sev-snp-measure, ...)");
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    for req in PYTHON_REQUIREMENTS {
        pip.arg("-r").arg(root.join(req));
    }
    run(&mut pip).context("installing the Python requirements")?;
    std::fs::write(&stamp, wanted)?;
    stage.done();
    Ok(python)
}
