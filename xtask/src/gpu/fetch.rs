//! Fetch the pinned .debs of `kernel/gpu-packages.toml` with a private apt configuration
//! (the host's apt state untouched), verify size and SHA-256, and unpack them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use super::{PACKAGES_TOML, Package, load_packages};
use crate::apt::{PrivateApt, Source, mirrors};
use crate::util::{run, sha256_file};

/// Archive components of the private `deb` sources.
const COMPONENTS: &str = "main contrib non-free non-free-firmware";

/// A pinned package whose .deb is on disk with the pinned hash.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The pin.
    pub package: Package,
    /// Path of the verified .deb.
    pub path: PathBuf,
}

/// Fetch every pinned package (all roles) into `<root>/.cache/gpu-debs`, verifying hashes.
pub fn fetch_gpu_inputs(root: &Path) -> Result<Vec<Fetched>> {
    fetch_roles(root, &[])
}

/// The private apt configuration under `<root>/.cache/apt`, with a `deb` line for each of
/// `suites`, reusing the host's Debian mirror URIs (or `CHRYSALIS_DEBIAN_MIRROR` /
/// `CHRYSALIS_DEBIAN_SECURITY_MIRROR`), its lists updated.
fn private_apt(root: &Path, suites: &BTreeSet<String>) -> Result<PrivateApt> {
    let m = mirrors()?;
    let sources: Vec<Source> = suites.iter().map(|s| Source::deb(m.for_suite(s), s, COMPONENTS)).collect();
    let apt = PrivateApt::new(&root.join(".cache/apt"), &sources)?;
    apt.update()?;
    Ok(apt)
}

/// Fetch the pinned packages with one of `roles` (all when empty). Already-present files
/// with the right hash are reused; a version the archive no longer has is an error naming it.
pub fn fetch_roles(root: &Path, roles: &[&str]) -> Result<Vec<Fetched>> {
    let all = load_packages(root)?;
    let suites: BTreeSet<String> = all.iter().map(|p| p.suite.clone()).collect();
    let pins: Vec<Package> = all.into_iter().filter(|p| roles.is_empty() || roles.contains(&p.role.as_str())).collect();
    let dest = root.join(".cache/gpu-debs");
    fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut apt: Option<PrivateApt> = None;
    let mut out = Vec::new();
    for p in pins {
        let path = dest.join(p.deb_file_name());
        if !(path.exists() && sha256_file(&path)? == p.sha256) {
            let a = match apt {
                Some(ref a) => a,
                None => apt.insert(private_apt(root, &suites)?),
            };
            let spec = format!("{}={}", p.name, p.version);
            if let Err(e) = a.download(&spec, &dest) {
                let have = a.available(&p.name).unwrap_or_default();
                let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
                return Err(e.context(format!(
                    "{spec} ({} {}) is not available from the archive any more (offered: {have}); update {PACKAGES_TOML}",
                    p.suite, p.component
                )));
            }
            let len = fs::metadata(&path).with_context(|| format!("{spec} downloaded under an unexpected name"))?.len();
            ensure!(len == p.size, "{spec}: {len} bytes, the pin says {}", p.size);
            let got = sha256_file(&path)?;
            if got != p.sha256 {
                let _ = fs::remove_file(&path);
                bail!("{spec}: SHA-256 {got} does not match the pinned {}", p.sha256);
            }
        }
        out.push(Fetched { package: p, path });
    }
    Ok(out)
}

/// Unpack each .deb's data into `into` (`dpkg-deb -x`).
pub(super) fn extract(debs: &[Fetched], into: &Path) -> Result<()> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    for f in debs {
        run(Command::new("dpkg-deb").arg("-x").arg(&f.path).arg(into))
            .with_context(|| format!("unpacking {} (dpkg-deb -x)", f.package.name))?;
    }
    Ok(())
}
