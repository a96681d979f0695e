//! Pinned confidential-VM firmware: fetch Debian's `edk2` source (hash-checked), build the
//! AmdSev (SEV-SNP, kernel hashes) and IntelTdx (TDVF) OVMF images reproducibly, and check
//! them against `image/firmware/firmware.toml` before anything measures or boots them.
//!
//! Trust: the pin file (reviewed, committed) is the root: source tarballs and firmware
//! images are accepted only when their SHA-256 equals the pin. The Debian archive and the
//! build machine are not trusted beyond producing bytes that hash to the pins.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::apt::{PrivateApt, Source};
use crate::util::{run, sha256_file};

/// Where the pinned firmware images are, after [`ensure_firmware`].
#[derive(Debug, Clone)]
pub struct FirmwarePaths {
    /// `OvmfPkg/AmdSev/AmdSevX64.dsc` build: SEV-SNP with `kernel-hashes=on`.
    pub amd_sev: PathBuf,
    /// `OvmfPkg/IntelTdx/IntelTdxX64.dsc` build: the TDVF for QEMU's `tdx-guest`.
    pub intel_tdx: PathBuf,
}

/// The pin file `image/firmware/firmware.toml`.
#[derive(Debug, Deserialize)]
pub struct Pins {
    /// The Debian source package the firmware is built from.
    pub source: SourcePin,
    /// How the build is run.
    pub build: BuildPin,
    /// One entry per firmware image.
    pub firmware: Vec<FirmwarePin>,
}

/// A Debian source package pinned by the hashes of its tarballs.
#[derive(Debug, Deserialize)]
pub struct SourcePin {
    /// Source package name (`edk2`).
    pub package: String,
    /// Exact Debian version.
    pub version: String,
    /// The Debian suite that carries it.
    pub suite: String,
    /// Archive base URL for the private deb-src entry.
    pub archive: String,
    /// Top directory inside the upstream tarball.
    pub dir: String,
    /// The tarballs, applied in order (upstream, then `debian/`).
    pub files: Vec<FilePin>,
}

/// A file with its SHA-256.
#[derive(Debug, Deserialize)]
pub struct FilePin {
    /// File name as in the archive.
    pub name: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// Build settings shared by all images.
#[derive(Debug, Deserialize)]
pub struct BuildPin {
    /// `SOURCE_DATE_EPOCH` for the build.
    pub source_date_epoch: i64,
    /// edk2 toolchain tag.
    pub toolchain: String,
    /// Debian packages (and versions the pinned hashes were produced with).
    pub tools: Vec<ToolPin>,
    /// Content of the stub that replaces the AmdSev grub.efi (see README).
    pub grub_stub: String,
}

/// A build tool package.
#[derive(Debug, Deserialize)]
pub struct ToolPin {
    /// Debian package name.
    pub package: String,
    /// Version the pinned outputs were built with.
    pub version: String,
}

/// One firmware image.
#[derive(Debug, Deserialize)]
pub struct FirmwarePin {
    /// Short name (`ovmf-amdsev`, `ovmf-inteltdx`).
    pub name: String,
    /// Platform description file.
    pub dsc: String,
    /// Output path relative to the source tree.
    pub output: String,
    /// Extra `build` arguments.
    #[serde(default)]
    pub flags: Vec<String>,
    /// SHA-256 of the image.
    pub sha256: String,
}

/// Reads the pin file.
pub fn read_pins(root: &Path) -> Result<Pins> {
    let p = root.join("image/firmware/firmware.toml");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Returns pinned firmware images, building them on a cache miss. Looks in
/// `.cache/firmware/out/<name>.fd`, then in the committed `image/firmware/bin/<name>.fd`, and
/// only then builds from source; every image returned has the pinned SHA-256.
pub fn ensure_firmware(root: &Path) -> Result<FirmwarePaths> {
    let pins = read_pins(root)?;
    let cache = root.join(".cache/firmware");
    let mut found = Vec::new();
    let mut missing = false;
    for fw in &pins.firmware {
        let hit = [cache.join(format!("out/{}.fd", fw.name)), root.join(format!("image/firmware/bin/{}.fd", fw.name))]
            .into_iter()
            .find(|p| p.is_file() && sha256_file(p).is_ok_and(|h| h == fw.sha256));
        missing |= hit.is_none();
        found.push(hit);
    }
    if missing {
        found = build_all(root, &pins, true)?.into_iter().map(Some).collect();
    }
    let path_of = |name: &str| -> Result<PathBuf> {
        pins.firmware
            .iter()
            .zip(&found)
            .find(|(f, _)| f.name == name)
            .and_then(|(_, p)| p.clone())
            .with_context(|| format!("firmware.toml has no {name} entry"))
    };
    Ok(FirmwarePaths { amd_sev: path_of("ovmf-amdsev")?, intel_tdx: path_of("ovmf-inteltdx")? })
}

/// Rebuilds everything from source in a fresh directory and compares with the pins
/// (`cargo xtask firmware --verify`). Returns the build's wall-clock seconds.
pub fn verify_firmware(root: &Path) -> Result<u64> {
    let pins = read_pins(root)?;
    let t = Instant::now();
    build_all(root, &pins, true)?;
    Ok(t.elapsed().as_secs())
}

/// Checks the build tools; installs missing ones from Debian main when running as root.
fn ensure_tools(pins: &Pins) -> Result<()> {
    let mut missing = Vec::new();
    for t in &pins.build.tools {
        let out = Command::new("dpkg-query").args(["-W", "-f", "${Status} ${Version}", &t.package]).output();
        match out {
            Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("install ok installed") => {
                let v = String::from_utf8_lossy(&o.stdout).rsplit(' ').next().unwrap_or_default().to_owned();
                if v != t.version {
                    eprintln!(
                        "firmware: warning: {} is {v}, pins were built with {}; the output hash may differ",
                        t.package, t.version
                    );
                }
            }
            _ => missing.push(t.package.clone()),
        }
    }
    if !missing.is_empty() {
        eprintln!("firmware: installing build tools from Debian: {}", missing.join(" "));
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends"]).args(&missing))
            .with_context(|| format!("installing {} (run as root, or install them)", missing.join(" ")))?;
    }
    Ok(())
}

/// Downloads the pinned source tarballs into `dir` with apt (private source list, the
/// host's apt configuration untouched) and checks their hashes.
fn fetch_source(pins: &Pins, dir: &Path) -> Result<Vec<PathBuf>> {
    let src = &pins.source;
    let paths: Vec<PathBuf> = src.files.iter().map(|f| dir.join(&f.name)).collect();
    let ok = |p: &Path, f: &FilePin| sha256_file(p).is_ok_and(|h| h == f.sha256);
    if paths.iter().zip(&src.files).all(|(p, f)| ok(p, f)) {
        return Ok(paths);
    }
    let apt = PrivateApt::new(&dir.join("apt"), &[Source::deb_src(&src.archive, &src.suite, "main")])?;
    apt.update()?;
    // `source --download-only` also wants the .dsc, which some mirrors do not serve; the
    // tarballs are what we pin, so its exit status is not what decides.
    let st = apt.source_download(&format!("{}={}", src.package, src.version), dir)?;
    for (p, f) in paths.iter().zip(&src.files) {
        ensure!(p.is_file(), "apt-get source ({st}) did not fetch {}", f.name);
        let h = sha256_file(p)?;
        ensure!(h == f.sha256, "{}: sha256 {h}, pinned {}", f.name, f.sha256);
    }
    Ok(paths)
}

/// A fresh build directory whose absolute path always has the same length.
///
/// edk2's GenFw reserves room for the CodeView record naming each module's `.dll` by its
/// absolute path; `--zero` (RELEASE) clears the bytes but not the room, so the images
/// depend on the *length* of the build path (not on its characters). A fixed-length
/// `/tmp/chrysalis-fw-XXXXXXXX` keeps the output independent of where the checkout is.
fn fresh_work_dir() -> Result<PathBuf> {
    let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
    let tag = u32::from_le_bytes(Sha256::digest(seed.as_bytes())[..4].try_into()?);
    let dir = PathBuf::from(format!("/tmp/chrysalis-fw-{tag:08x}"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Builds from source and prints the images' hashes without checking them against the
/// pins (`cargo xtask firmware --print-hashes`): how new pins are made.
pub fn print_hashes(root: &Path) -> Result<()> {
    let pins = read_pins(root)?;
    for (fw, p) in pins.firmware.iter().zip(build_all(root, &pins, false)?) {
        println!("{} {} {}", fw.name, sha256_file(&p)?, p.display());
    }
    Ok(())
}

/// Extracts, patches and builds every pinned image in a fresh directory; copies them to
/// `.cache/firmware/out/` and returns their paths there. With `check`, fails unless each
/// image has its pinned SHA-256.
fn build_all(root: &Path, pins: &Pins, check: bool) -> Result<Vec<PathBuf>> {
    ensure_tools(pins)?;
    let dl = root.join(".cache/firmware/src");
    std::fs::create_dir_all(&dl)?;
    let tarballs = fetch_source(pins, &dl)?;
    let work_dir = fresh_work_dir()?;
    let work = work_dir.as_path();
    eprintln!("firmware: building in {}", work.display());
    let tree = work.join(&pins.source.dir);
    let started = Instant::now();
    let [orig, debian] = tarballs.as_slice() else { bail!("firmware.toml must pin exactly two tarballs") };
    run(Command::new("tar").arg("xf").arg(orig).current_dir(work))?;
    run(Command::new("tar").arg("xf").arg(debian).current_dir(&tree))?;
    apply_debian_patches(&tree)?;

    // AmdSevX64's PREBUILD runs grub.sh unless grub.efi is newer than its inputs (upstream's
    // own escape hatch): a fixed stub keeps grub (never used for direct boot) out.
    let g = tree.join("OvmfPkg/AmdSev/Grub");
    std::fs::write(g.join("grub.efi"), &pins.build.grub_stub)?;
    let epoch = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(pins.build.source_date_epoch.unsigned_abs());
    for (f, t) in [("grub.cfg", epoch), ("grub.sh", epoch), ("grub.efi", epoch + std::time::Duration::from_secs(1))] {
        std::fs::File::options().write(true).open(g.join(f))?.set_modified(t)?;
    }

    let envs = |c: &mut Command| {
        c.current_dir(&tree)
            .env("SOURCE_DATE_EPOCH", pins.build.source_date_epoch.to_string())
            .env("PYTHONHASHSEED", "0")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("PYTHON_COMMAND", "/usr/bin/python3")
            .env("WORKSPACE", &tree)
            .env("EDK_TOOLS_PATH", tree.join("BaseTools"))
            .env("CONF_PATH", tree.join("Conf"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    tree.join("BaseTools/BinWrappers/PosixLike").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
    };
    let t_tools = Instant::now();
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).to_string();
    let mut make = Command::new("make");
    make.args(["-s", "-C", "BaseTools", "-j", &jobs]);
    envs(&mut make);
    run(&mut make).context("building edk2 BaseTools")?;
    let tools_secs = t_tools.elapsed().as_secs();
    std::fs::create_dir_all(tree.join("Conf"))?;
    for f in ["target", "tools_def", "build_rule"] {
        std::fs::copy(tree.join(format!("BaseTools/Conf/{f}.template")), tree.join(format!("Conf/{f}.txt")))?;
    }
    let out_dir = root.join(".cache/firmware/out");
    std::fs::create_dir_all(&out_dir)?;
    let mut outs = Vec::new();
    let mut times = Vec::new();
    for fw in &pins.firmware {
        let t = Instant::now();
        let mut b = Command::new("build");
        b.args(["-q", "-a", "X64", "-t", &pins.build.toolchain, "-b", "RELEASE", "-n", &jobs, "-p", &fw.dsc]);
        b.args(&fw.flags);
        envs(&mut b);
        run(&mut b).with_context(|| format!("building {}", fw.dsc))?;
        let out = tree.join(&fw.output);
        let h = sha256_file(&out)?;
        times.push(format!("\"{}\": {}", fw.name, t.elapsed().as_secs()));
        ensure!(
            !check || h == fw.sha256,
            "{} built to sha256 {h}, pinned {} (toolchain versions: see firmware.toml [build.tools])",
            fw.name,
            fw.sha256
        );
        let kept = out_dir.join(format!("{}.fd", fw.name));
        std::fs::copy(&out, &kept)?;
        outs.push(kept);
    }
    let record = format!(
        "{{\"total_seconds\": {}, \"basetools_seconds\": {tools_secs}, {}, \"jobs\": {jobs}}}\n",
        started.elapsed().as_secs(),
        times.join(", ")
    );
    std::fs::write(root.join(".cache/firmware/build-time.json"), &record)?;
    eprintln!("firmware: built and verified in {}", record.trim());
    std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    Ok(outs)
}

/// Applies `debian/patches/series` in order, as dpkg-source would.
fn apply_debian_patches(tree: &Path) -> Result<()> {
    let series = std::fs::read_to_string(tree.join("debian/patches/series"))?;
    for p in series.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        run(Command::new("patch")
            .args(["-p1", "-s", "--no-backup-if-mismatch", "-i"])
            .arg(tree.join("debian/patches").join(p))
            .current_dir(tree))
        .with_context(|| format!("applying debian patch {p}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
    }

    #[test]
    fn pin_file_is_complete() -> Result<()> {
        let p = read_pins(&root())?;
        assert_eq!(p.source.files.len(), 2);
        for h in p.source.files.iter().map(|f| &f.sha256).chain(p.firmware.iter().map(|f| &f.sha256)) {
            assert_eq!(h.len(), 64, "{h}");
            assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{h}");
        }
        let names: Vec<&str> = p.firmware.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["ovmf-amdsev", "ovmf-inteltdx"]);
        Ok(())
    }

    #[test]
    fn committed_firmware_matches_its_pins() -> Result<()> {
        let p = read_pins(&root())?;
        for fw in &p.firmware {
            let bin = root().join(format!("image/firmware/bin/{}.fd", fw.name));
            assert_eq!(sha256_file(&bin)?, fw.sha256, "{}", bin.display());
        }
        Ok(())
    }
}
