//! GPU image inputs and GPU checks: the pinned NVIDIA/CUDA Debian packages (fetched with a
//! private apt configuration, verified by SHA-256), NVIDIA's open kernel modules built
//! reproducibly against the generic Debian kernel, the nvcc toolchain for the runtime's
//! `cuda` feature, and `gpu-check`, which a machine with a GPU runs.
//!
//! Trusts `kernel/gpu-packages.toml` (names, versions, SHA-256 taken from the archives'
//! signed indices): every downloaded .deb is checked against it before use. The host's apt
//! configuration is only read (to reuse its Debian mirror URIs), never changed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The package pins, relative to the repository root.
pub const PACKAGES_TOML: &str = "kernel/gpu-packages.toml";
/// Kernel ABI the modules are built for (the generic flavour).
pub const KERNEL_ABI: &str = "6.12.117+deb12";
/// `uname -r` of the generic kernel.
pub const KERNEL_RELEASE: &str = "6.12.117+deb12-amd64";
/// NVIDIA driver version of the pinned open modules, firmware and user-space libraries.
pub const DRIVER_VERSION: &str = "550.163.01";
/// CUDA release of the pinned nvcc (PTX ISA 8.4, which needs an R550 driver to JIT).
pub const CUDA_RELEASE: &str = "12.4";
/// Compute capability candle's kernels are built for: H100 / H200 (Hopper).
pub const COMPUTE_CAP: &str = "90";
/// SOURCE_DATE_EPOCH of module builds: the nvidia-open-kernel-source package date
/// (2025-07-21T21:45:00Z), so that the value is tied to the input, not to the build.
pub const MODULES_SOURCE_DATE_EPOCH: u64 = 1_753_134_300;
/// Debian's archive keyring, used as `signed-by` for the private sources.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const COMPONENTS: &str = "main contrib non-free non-free-firmware";
/// Modules built: nvidia-peermem needs InfiniBand peer memory, which the image does not use.
const EXCLUDED_MODULES: &str = "nvidia-peermem";

/// One pinned package.
#[derive(Clone, Debug, Deserialize)]
pub struct Package {
    /// Debian package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// `amd64` or `all`.
    pub arch: String,
    /// SHA-256 of the .deb.
    pub sha256: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// Suite that carries it (e.g. `trixie`, `bookworm-security`).
    pub suite: String,
    /// Archive component (`main`, `contrib`, `non-free`, `non-free-firmware`).
    pub component: String,
    /// `image-kernel`, `image-firmware`, `image-lib`, `module-build` or `nvcc`.
    pub role: String,
    /// Why it is needed.
    pub why: String,
}

impl Package {
    /// File name `apt-get download` gives the .deb.
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

#[derive(Deserialize)]
struct PackageList {
    package: Vec<Package>,
}

/// A pinned package whose .deb is on disk with the pinned hash.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The pin.
    pub package: Package,
    /// Path of the verified .deb.
    pub path: PathBuf,
}

/// Read the pins.
pub fn load_packages(root: &Path) -> Result<Vec<Package>> {
    let path = root.join(PACKAGES_TOML);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let list: PackageList =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(list.package)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    ensure!(status.success(), "{what} failed: {status}");
    Ok(())
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private apt configuration under `<root>/.cache/apt`: its own sources list, lists and
/// cache, so that the host's apt state is never modified.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Write the private sources for `suites`, reusing the host's Debian mirror URIs
    /// (or `CHRYSALIS_DEBIAN_MIRROR` / `CHRYSALIS_DEBIAN_SECURITY_MIRROR`).
    pub fn setup(root: &Path, suites: &BTreeSet<String>) -> Result<Self> {
        let dir = root.join(".cache/apt");
        for d in ["etc", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let (main, security) = mirrors()?;
        let mut list = String::new();
        for suite in suites {
            let uri = if suite.ends_with("-security") {
                &security
            } else {
                &main
            };
            list.push_str(&format!(
                "deb [signed-by={KEYRING}] {uri} {suite} {COMPONENTS}\n"
            ));
        }
        fs::write(dir.join("etc/sources.list"), list)?;
        Ok(PrivateApt { dir })
    }

    /// The `-o` options that point apt at the private configuration.
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::sourcelist={d}/etc/sources.list"),
            "-oDir::Etc::sourceparts=/dev/null".into(),
            "-oDir::Etc::preferencesparts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oAPT::Architecture=amd64".into(),
            "-oAcquire::Languages=none".into(),
        ]
    }

    /// `apt-get update` of the private lists.
    pub fn update(&self) -> Result<()> {
        run(
            Command::new("apt-get")
                .args(self.options())
                .args(["-q", "update"]),
            "apt-get update (private config)",
        )
    }

    /// Versions of `name` the private lists offer.
    pub fn available(&self, name: &str) -> Result<Vec<String>> {
        let out = output(
            Command::new("apt-cache")
                .args(self.options())
                .args(["madison", name]),
            "apt-cache madison",
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split('|').nth(1))
            .map(|v| v.trim().to_string())
            .collect())
    }
}

/// The host's Debian archive and security-archive URIs (read from its apt sources).
fn mirrors() -> Result<(String, String)> {
    if let (Ok(m), Ok(s)) = (
        std::env::var("CHRYSALIS_DEBIAN_MIRROR"),
        std::env::var("CHRYSALIS_DEBIAN_SECURITY_MIRROR"),
    ) {
        return Ok((m, s));
    }
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "sources" || x == "list")
            {
                text.push('\n');
                text.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    let (mut main, mut security) = (None, None);
    // deb822 stanzas: "URIs:" then "Suites:"; one-line: "deb URI SUITE COMPONENTS".
    let mut uri: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("URIs:") {
            uri = u.split_whitespace().next().map(str::to_string);
        } else if let Some(s) = line.strip_prefix("Suites:") {
            if let Some(u) = &uri {
                classify(u, s, &mut main, &mut security);
            }
        } else if let Some(rest) = line.strip_prefix("deb ") {
            let parts: Vec<&str> = rest
                .split_whitespace()
                .filter(|p| !p.starts_with('['))
                .collect();
            if let [u, s, ..] = parts.as_slice() {
                classify(u, s, &mut main, &mut security);
            }
        }
    }
    match (main, security) {
        (Some(m), Some(s)) => Ok((m, s)),
        _ => bail!(
            "cannot find the Debian archive and security archive in the host's apt sources; \
             set CHRYSALIS_DEBIAN_MIRROR and CHRYSALIS_DEBIAN_SECURITY_MIRROR"
        ),
    }
}

fn classify(uri: &str, suites: &str, main: &mut Option<String>, security: &mut Option<String>) {
    for s in suites.split_whitespace() {
        if s.ends_with("-security") {
            security.get_or_insert_with(|| uri.to_string());
        } else if ["bookworm", "trixie", "stable", "oldstable"].contains(&s) {
            main.get_or_insert_with(|| uri.to_string());
        }
    }
}

/// Fetch every pinned package (all roles) into `<root>/.cache/gpu-debs`, verifying hashes.
pub fn fetch_gpu_inputs(root: &Path) -> Result<Vec<Fetched>> {
    fetch_roles(root, &[])
}

/// Fetch the pinned packages with one of `roles` (all when empty). Already-present files
/// with the right hash are reused; a version the archive no longer has is an error naming it.
pub fn fetch_roles(root: &Path, roles: &[&str]) -> Result<Vec<Fetched>> {
    let pins: Vec<Package> = load_packages(root)?
        .into_iter()
        .filter(|p| roles.is_empty() || roles.contains(&p.role.as_str()))
        .collect();
    let dest = root.join(".cache/gpu-debs");
    fs::create_dir_all(&dest)?;
    let mut apt: Option<PrivateApt> = None;
    let mut out = Vec::new();
    for p in pins {
        let path = dest.join(p.deb_file_name());
        if !(path.exists() && sha256_file(&path)? == p.sha256) {
            if apt.is_none() {
                let suites = load_packages(root)?.into_iter().map(|p| p.suite).collect();
                let a = PrivateApt::setup(root, &suites)?;
                a.update()?;
                apt = Some(a);
            }
            let a = apt
                .as_ref()
                .ok_or_else(|| anyhow!("private apt not set up"))?;
            let spec = format!("{}={}", p.name, p.version);
            let status = Command::new("apt-get")
                .args(a.options())
                .args(["-q", "download", &spec])
                .current_dir(&dest)
                .status()
                .context("starting apt-get download")?;
            if !status.success() {
                let have = a.available(&p.name).unwrap_or_default();
                bail!(
                    "{spec} ({} {}) is not available from the archive any more (offered: {}); \
                     update {PACKAGES_TOML}",
                    p.suite,
                    p.component,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                );
            }
            let len = fs::metadata(&path)
                .with_context(|| format!("{spec} downloaded under an unexpected name"))?
                .len();
            ensure!(
                len == p.size,
                "{spec}: {len} bytes, the pin says {}",
                p.size
            );
            let got = sha256_file(&path)?;
            if got != p.sha256 {
                let _ = fs::remove_file(&path);
                bail!(
                    "{spec}: SHA-256 {got} does not match the pinned {}",
                    p.sha256
                );
            }
        }
        out.push(Fetched { package: p, path });
    }
    Ok(out)
}

fn extract(debs: &[Fetched], into: &Path) -> Result<()> {
    fs::create_dir_all(into)?;
    for f in debs {
        run(
            Command::new("dpkg-deb").arg("-x").arg(&f.path).arg(into),
            &format!("dpkg-deb -x {}", f.package.name),
        )?;
    }
    Ok(())
}

/// Result of one module build.
#[derive(Debug, Clone)]
pub struct ModuleBuild {
    /// (file name, SHA-256) of each .ko, sorted.
    pub modules: Vec<(String, String)>,
    /// Where the .ko files were copied.
    pub out_dir: PathBuf,
    /// Wall time of `make modules`.
    pub elapsed: Duration,
}

/// Build NVIDIA's open kernel modules (550.163.01) against the generic kernel's headers in
/// `work` (wiped first) and copy them to `out` with a SHA256SUMS file.
///
/// Reproducibility: fixed SOURCE_DATE_EPOCH/KBUILD_BUILD_*, LC_ALL=C, TZ=UTC, and
/// `-ffile-prefix-map` for the source and header trees, so the bytes do not depend on `work`.
/// One source patch is applied: Linux 6.12.117 added an `exclude_bars` argument to
/// `pci_resize_resource()` (upstream "PCI: Fix restoring BARs on BAR resize rollback",
/// backported to 6.12.y) that 550.163.01 does not know; the call gets `0`, as in-tree
/// drivers pass.
pub fn build_nvidia_modules(root: &Path, work: &Path, out: &Path) -> Result<ModuleBuild> {
    let debs = fetch_roles(root, &["module-build"])?;
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    let sysroot = work.join("root");
    extract(&debs, &sysroot)?;
    let common = sysroot.join(format!("usr/src/linux-headers-{KERNEL_ABI}-common"));
    let arch_dir = sysroot.join(format!("usr/src/linux-headers-{KERNEL_RELEASE}"));
    // Debian's per-flavour Makefile includes the common one by absolute path.
    fs::write(
        arch_dir.join("Makefile"),
        format!("include {}/Makefile\n", common.display()),
    )?;
    let src_root = work.join("src");
    fs::create_dir_all(&src_root)?;
    run(
        Command::new("tar")
            .arg("-xJf")
            .arg(sysroot.join("usr/src/nvidia-open-kernel.tar.xz"))
            .arg("-C")
            .arg(&src_root),
        "unpacking nvidia-open-kernel.tar.xz",
    )?;
    let src = src_root.join("modules/nvidia-open-kernel");
    patch_pci_resize(&src, &common)?;

    let path = format!(
        "{}:{}",
        sysroot.join("usr/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kcflags = format!(
        "-ffile-prefix-map={}/=/usr/src/nvidia-{DRIVER_VERSION}/ -ffile-prefix-map={}/=/",
        src.display(),
        sysroot.display()
    );
    let start = Instant::now();
    run(
        Command::new("make")
            .current_dir(&src)
            .arg(format!(
                "-j{}",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            ))
            .arg("modules")
            .arg(format!("KERNEL_UNAME={KERNEL_RELEASE}"))
            .arg(format!("SYSSRC={}", common.display()))
            .arg(format!("SYSOUT={}", arch_dir.display()))
            .arg("CC=x86_64-linux-gnu-gcc-12")
            .arg(format!("NV_EXCLUDE_KERNEL_MODULES={EXCLUDED_MODULES}"))
            .arg(format!("KCFLAGS={kcflags}"))
            .env("PATH", path)
            .env("SOURCE_DATE_EPOCH", MODULES_SOURCE_DATE_EPOCH.to_string())
            .env(
                "KBUILD_BUILD_TIMESTAMP",
                format!("@{MODULES_SOURCE_DATE_EPOCH}"),
            )
            .env("KBUILD_BUILD_USER", "chrysalis")
            .env("KBUILD_BUILD_HOST", "chrysalis")
            .env("LC_ALL", "C")
            .env("TZ", "UTC"),
        "make modules (NVIDIA open kernel modules)",
    )?;
    let elapsed = start.elapsed();
    fs::create_dir_all(out)?;
    let mut modules = Vec::new();
    for e in fs::read_dir(&src)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "ko") {
            let name = e.file_name().to_string_lossy().into_owned();
            fs::copy(&p, out.join(&name))?;
            modules.push((name.clone(), sha256_file(&p)?));
        }
    }
    modules.sort();
    ensure!(
        modules.iter().any(|(n, _)| n == "nvidia.ko"),
        "the build produced no nvidia.ko"
    );
    let sums: String = modules.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(ModuleBuild {
        modules,
        out_dir: out.to_path_buf(),
        elapsed,
    })
}

fn patch_pci_resize(src: &Path, kernel_common: &Path) -> Result<()> {
    let pci_h = fs::read_to_string(kernel_common.join("include/linux/pci.h"))?;
    if !pci_h.contains("int exclude_bars);") {
        return Ok(());
    }
    let file = src.join("nvidia/nv-pci.c");
    let text = fs::read_to_string(&file)?;
    let from = "pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size)";
    ensure!(
        text.matches(from).count() == 1,
        "{}: expected exactly one `{from}` to patch",
        file.display()
    );
    fs::write(
        &file,
        text.replace(
            from,
            "pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0)",
        ),
    )?;
    Ok(())
}

/// Build the modules twice in directories with different paths and fail unless every .ko
/// is byte-identical. Returns the first build.
pub fn check_modules_reproducible(root: &Path) -> Result<ModuleBuild> {
    let base = root.join(".cache/gpu-build");
    let a = build_nvidia_modules(root, &base.join("a"), &base.join("out-a"))?;
    let b = build_nvidia_modules(root, &base.join("second-directory-b"), &base.join("out-b"))?;
    ensure!(
        a.modules == b.modules,
        "module builds differ:\n{:?}\n{:?}",
        a.modules,
        b.modules
    );
    Ok(a)
}

/// A working nvcc from Debian's CUDA packages, unpacked under `<root>/.cache/cuda/root`.
#[derive(Debug, Clone)]
pub struct Nvcc {
    /// The nvcc binary.
    pub nvcc: PathBuf,
    /// Directories to put first on PATH (nvcc, cicc, ptxas, the g++ selector).
    pub path_prefix: Vec<PathBuf>,
    /// Where libcudart.so etc. are, for linking.
    pub lib_dir: PathBuf,
    /// `nvcc --version` release line.
    pub version: String,
}

impl Nvcc {
    /// Environment for `cargo build --features cuda` (candle-kernels/cudaforge, cudarc).
    pub fn cargo_env(&self) -> Vec<(String, String)> {
        let mut path: Vec<String> = self
            .path_prefix
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        path.push(std::env::var("PATH").unwrap_or_default());
        vec![
            ("NVCC".into(), self.nvcc.display().to_string()),
            ("PATH".into(), path.join(":")),
            ("CUDA_COMPUTE_CAP".into(), COMPUTE_CAP.into()),
            ("LIBRARY_PATH".into(), self.lib_dir.display().to_string()),
            ("NVCC_CCBIN".into(), "g++-12".into()),
        ]
    }
}

/// Make nvcc 12.4 available without touching the host: fetch the `nvcc` role packages,
/// unpack them privately, point nvcc.profile at the private tree, and prove it works by
/// compiling a bf16/fp8 kernel for sm_90.
///
/// The binaries come from Debian 13 (trixie) but are NVIDIA's builds needing only glibc
/// 2.7, so they run on the Debian 12 host; the host's g++-12 is a supported host compiler.
pub fn ensure_nvcc(root: &Path) -> Result<Nvcc> {
    let debs = fetch_roles(root, &["nvcc"])?;
    let prefix = root.join(".cache/cuda/root");
    let stamp = prefix.join(".chrysalis-stamp");
    let want: String = debs
        .iter()
        .map(|d| format!("{} {}\n", d.package.name, d.package.sha256))
        .collect();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        if prefix.exists() {
            fs::remove_dir_all(&prefix)?;
        }
        extract(&debs, &prefix)?;
        let lib = prefix.join("usr/lib/x86_64-linux-gnu");
        // Debian resolves libnvvm.so.4 through the NVIDIA alternatives; do it by hand.
        let nvvm = lib.join("libnvvm.so.4");
        let _ = fs::remove_file(&nvvm);
        std::os::unix::fs::symlink("nvidia/current/libnvidia-nvvm.so.4", &nvvm)?;
        let profile = prefix.join("usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile");
        let _ = fs::remove_file(&profile); // a symlink to the host's /etc/nvcc.profile
        let p = prefix.display();
        fs::write(
            &profile,
            format!(
                "TOP = $(_HERE_)/..\nNVVMIR_LIBRARY_DIR = $(TOP)/libdevice\nLD_LIBRARY_PATH += {p}/usr/lib/x86_64-linux-gnu:\n\
                 PATH += $(_HERE_):{p}/usr/bin:\nINCLUDES += \"-I{p}/usr/include\" $(_SPACE_)\n\
                 LIBRARIES =+ $(_SPACE_) \"-L{p}/usr/lib/x86_64-linux-gnu\"\n"
            ),
        )?;
        fs::write(&stamp, &want)?;
    }
    let bin = prefix.join("usr/lib/nvidia-cuda-toolkit/bin");
    let nvcc = Nvcc {
        nvcc: bin.join("nvcc"),
        path_prefix: vec![bin.clone(), prefix.join("usr/bin")],
        lib_dir: prefix.join("usr/lib/x86_64-linux-gnu"),
        version: String::new(),
    };
    let env = nvcc.cargo_env();
    let version = output(
        Command::new(&nvcc.nvcc)
            .arg("--version")
            .envs(env.iter().cloned()),
        "nvcc --version",
    )?;
    ensure!(
        version.contains(&format!("release {CUDA_RELEASE}")),
        "unexpected nvcc: {version}"
    );
    let probe_dir = root.join(".cache/cuda/probe");
    fs::create_dir_all(&probe_dir)?;
    let cu = probe_dir.join("probe.cu");
    fs::write(
        &cu,
        "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include <cuda_fp8.h>\n\
         extern \"C\" __global__ void k(const __nv_bfloat16* a, float* o, int n) {\n\
           int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) o[i] = __bfloat162float(a[i]); }\n",
    )?;
    run(
        Command::new(&nvcc.nvcc)
            .args(["-arch=sm_90", "--ptx", "-o"])
            .arg(probe_dir.join("probe.ptx"))
            .arg(&cu)
            .envs(env.iter().cloned()),
        "nvcc probe compile (sm_90)",
    )?;
    let line = version
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(Nvcc {
        version: line,
        ..nvcc
    })
}

/// `cargo build -p chrysalis-runtime --features cuda --release` with the private nvcc;
/// returns the wall time.
pub fn build_runtime_cuda(root: &Path) -> Result<Duration> {
    let nvcc = ensure_nvcc(root)?;
    let start = Instant::now();
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args([
                "build",
                "-p",
                "chrysalis-runtime",
                "--features",
                "cuda",
                "--release",
            ])
            .envs(nvcc.cargo_env()),
        "cargo build --features cuda",
    )?;
    Ok(start.elapsed())
}

/// Folder (relative to the repository root) that `gpu-check prepare` fills and the GPU
/// machine receives through the device tool's `carry`.
pub const GPU_CHECK_DIR: &str = "out/gpu-check";
/// Most bytes the carried folder may hold (the device tool carries 64 MiB in all).
pub const GPU_CHECK_MAX_BYTES: u64 = 60 << 20;

/// Which half of the GPU check to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuCheckStage {
    /// On the build machine: compile the CUDA test and bench binaries into [`GPU_CHECK_DIR`].
    Prepare,
    /// On the GPU machine: run them and write the results file.
    Run,
}

/// The GPU check (see kernel/README-gpu.md, "GPU check"): build with `cuda` here, then on
/// a GPU machine run the inference correctness tests with `CHRYSALIS_TEST_DEVICE=cuda`
/// (GPU output against the CPU reference) and `bench infer --device cuda`, writing
/// `results.json` to `$OUT` (or to `out_dir`).
pub fn gpu_check(root: &Path, stage: GpuCheckStage, out_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = root.join(GPU_CHECK_DIR);
    match stage {
        GpuCheckStage::Prepare => {
            let nvcc = ensure_nvcc(root)?;
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
            }
            fs::create_dir_all(dir.join("bin"))?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let json = output(
                Command::new(&cargo)
                    .current_dir(root)
                    .args([
                        "test",
                        "-p",
                        "chrysalis-runtime",
                        "--features",
                        "cuda",
                        "--release",
                        "--no-run",
                    ])
                    .args(["--message-format=json"])
                    .envs(nvcc.cargo_env()),
                "cargo test --no-run --features cuda",
            )?;
            let mut tests = Vec::new();
            for line in json.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if let Some(exe) = v.get("executable").and_then(|e| e.as_str())
                    && v.pointer("/profile/test").and_then(|t| t.as_bool()) == Some(true)
                {
                    tests.push(PathBuf::from(exe));
                }
            }
            run(
                Command::new(&cargo)
                    .current_dir(root)
                    .args(["build", "-p", "xtask", "--release"]),
                "cargo build -p xtask --release",
            )?;
            let mut total = 0u64;
            for exe in tests
                .iter()
                .chain(std::iter::once(&root.join("target/release/xtask")))
            {
                let name = exe
                    .file_name()
                    .ok_or_else(|| anyhow!("bad path {}", exe.display()))?;
                let dst = dir.join("bin").join(name);
                fs::copy(exe, &dst)?;
                let _ = Command::new("strip")
                    .arg("--strip-debug")
                    .arg(&dst)
                    .status();
                total += fs::metadata(&dst)?.len();
            }
            // libcudart is tiny and linked by candle-kernels; the big CUDA libraries
            // (cuBLAS) must come from the GPU machine's CUDA installation.
            let cudart = "libcudart.so.12";
            fs::copy(
                fs::canonicalize(nvcc.lib_dir.join(cudart))?,
                dir.join(cudart),
            )?;
            total += fs::metadata(dir.join(cudart))?.len();
            ensure!(
                total <= GPU_CHECK_MAX_BYTES,
                "{GPU_CHECK_DIR} holds {total} bytes, over the {GPU_CHECK_MAX_BYTES}-byte carry budget"
            );
            Ok(dir)
        }
        GpuCheckStage::Run => {
            let out = match out_dir {
                Some(o) => o.to_path_buf(),
                None => PathBuf::from(
                    std::env::var("OUT").unwrap_or_else(|_| dir.display().to_string()),
                ),
            };
            fs::create_dir_all(&out)?;
            let mut results = serde_json::Map::new();
            let probe = |cmd: &str, args: &[&str]| -> serde_json::Value {
                match Command::new(cmd).args(args).output() {
                    Ok(o) => {
                        serde_json::json!({"status": o.status.code(), "stdout": String::from_utf8_lossy(&o.stdout), "stderr": String::from_utf8_lossy(&o.stderr)})
                    }
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
            };
            results.insert(
                "nvidia_smi".into(),
                probe(
                    "nvidia-smi",
                    &[
                        "--query-gpu=name,driver_version,compute_cap,memory.total",
                        "--format=csv",
                    ],
                ),
            );
            results.insert(
                "cc_mode".into(),
                probe("nvidia-smi", &["conf-compute", "-f"]),
            );
            results.insert(
                "libraries".into(),
                probe(
                    "sh",
                    &[
                        "-c",
                        "ldconfig -p | grep -E 'libcuda.so|libcublas|libcurand|libnvrtc' || true",
                    ],
                ),
            );
            let ld = format!(
                "{}:{}",
                dir.display(),
                std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
            );
            let mut test_results = Vec::new();
            let mut bins: Vec<PathBuf> = fs::read_dir(dir.join("bin"))?
                .flatten()
                .map(|e| e.path())
                .collect();
            bins.sort();
            for exe in bins
                .iter()
                .filter(|p| p.file_name().is_some_and(|n| n != "xtask"))
            {
                let start = Instant::now();
                let o = Command::new(exe)
                    .args(["--test-threads=1"])
                    .current_dir(root.join("runtime"))
                    .env("CHRYSALIS_TEST_DEVICE", "cuda")
                    .env("LD_LIBRARY_PATH", &ld)
                    .output()
                    .with_context(|| format!("running {}", exe.display()))?;
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                let tail: String = text
                    .chars()
                    .rev()
                    .take(4000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                test_results.push(serde_json::json!({
                    "binary": exe.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "status": o.status.code(), "seconds": start.elapsed().as_secs_f64(), "output_tail": tail,
                }));
            }
            results.insert("tests".into(), serde_json::Value::Array(test_results));
            let xtask = dir.join("bin/xtask");
            let bench = Command::new(&xtask)
                .args(["bench", "infer", "--device", "cuda", "--json"])
                .current_dir(root)
                .env("LD_LIBRARY_PATH", &ld)
                .output();
            results.insert(
                "bench_infer".into(),
                match bench {
                    Ok(o) => serde_json::json!({"status": o.status.code(), "stdout": String::from_utf8_lossy(&o.stdout), "stderr": String::from_utf8_lossy(&o.stderr)}),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                },
            );
            let path = out.join("results.json");
            fs::write(
                &path,
                serde_json::to_string_pretty(&serde_json::Value::Object(results))?,
            )?;
            Ok(path)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn pins_are_complete_and_well_formed() {
        let pins = load_packages(&root()).unwrap();
        let roles = [
            "image-kernel",
            "image-firmware",
            "image-lib",
            "module-build",
            "nvcc",
        ];
        for p in &pins {
            assert_eq!(p.sha256.len(), 64, "{}", p.name);
            assert!(
                p.sha256.chars().all(|c| c.is_ascii_hexdigit()),
                "{}",
                p.name
            );
            assert!(
                roles.contains(&p.role.as_str()),
                "{}: role {}",
                p.name,
                p.role
            );
            assert!(p.size > 0, "{}", p.name);
        }
        for must in [
            "linux-image-6.12.117+deb12-amd64",
            "nvidia-open-kernel-source",
            "firmware-nvidia-gsp",
            "libcuda1",
            "libcublas12",
        ] {
            assert!(pins.iter().any(|p| p.name == must), "{must} missing");
        }
        // Driver pieces must all be the same driver release.
        for p in pins.iter().filter(|p| {
            [
                "libcuda1",
                "firmware-nvidia-gsp",
                "nvidia-open-kernel-source",
                "libnvidia-ml1",
            ]
            .contains(&p.name.as_str())
        }) {
            assert!(
                p.version.starts_with(DRIVER_VERSION),
                "{} {}",
                p.name,
                p.version
            );
        }
    }

    #[test]
    fn deb_names_encode_epochs() {
        let p = Package {
            name: "x".into(),
            version: "1:2.0-1".into(),
            arch: "amd64".into(),
            sha256: String::new(),
            size: 1,
            suite: "trixie".into(),
            component: "main".into(),
            role: "nvcc".into(),
            why: String::new(),
        };
        assert_eq!(p.deb_file_name(), "x_1%3a2.0-1_amd64.deb");
    }

    #[test]
    fn mirrors_classify_deb822_and_one_line_sources() {
        let (mut m, mut s) = (None, None);
        classify(
            "http://a/debian",
            "bookworm bookworm-updates",
            &mut m,
            &mut s,
        );
        classify(
            "http://a/debian-security",
            "bookworm-security",
            &mut m,
            &mut s,
        );
        assert_eq!(
            (m.as_deref(), s.as_deref()),
            (Some("http://a/debian"), Some("http://a/debian-security"))
        );
    }
}
