//! GPU image inputs and GPU checks: the pinned NVIDIA/CUDA Debian packages (fetched with a
//! private apt configuration, verified by SHA-256), NVIDIA's open kernel modules built
//! reproducibly against the generic Debian kernel, the nvcc toolchain for the runtime's
//! `cuda` feature, and `gpu-check`, which a machine with a GPU runs.
//!
//! Trusts `kernel/gpu-packages.toml` (names, versions, SHA-256 taken from the archives'
//! signed indices): every downloaded .deb is checked against it before use. The host's apt
//! configuration is only read (to reuse its Debian mirror URIs), never changed.
//!
//! - [`fetch`]: fetch the pinned .debs (private apt), verify and unpack them.
//! - [`modules`]: build NVIDIA's open kernel modules and check the build is reproducible.
//! - [`image`]: assemble the GPU image (`cargo xtask image --gpu`).
//! - [`nvcc`]: the private nvcc and the runtime's `cuda` build.
//! - [`check`]: the two-stage GPU check (`prepare` here, `run` on a GPU machine).
//! - [`typecheck`]: type-check the `cuda` Rust code with a stub nvcc (no CUDA toolchain; CI).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

pub mod check;
pub mod fetch;
pub mod image;
pub mod modules;
pub mod nvcc;
pub mod typecheck;

// The entry points `cargo xtask gpu ...` calls; result types stay at their module paths
// (`gpu::fetch::Fetched`, `gpu::modules::ModuleBuild`, `gpu::nvcc::Nvcc`).
pub use check::{GpuCheckStage, gpu_check};
pub use fetch::fetch_gpu_inputs;
pub use modules::{build_nvidia_modules, check_modules_reproducible};
pub use nvcc::{build_runtime_cuda, ensure_nvcc};
pub use typecheck::typecheck_cuda;

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
    /// `image-kernel`, `image-firmware`, `image-lib`, `image-cuda-lib`, `module-build` or `nvcc`.
    pub role: String,
    /// Why it is needed.
    pub why: String,
}

impl Package {
    /// File name `apt-get download` gives the .deb.
    pub fn deb_file_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version.replace(':', "%3a"), self.arch)
    }
}

#[derive(Deserialize)]
struct PackageList {
    package: Vec<Package>,
}

/// Read the pins.
pub fn load_packages(root: &Path) -> Result<Vec<Package>> {
    let path = root.join(PACKAGES_TOML);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let list: PackageList = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(list.package)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn pins_are_complete_and_well_formed() -> Result<()> {
        let pins = load_packages(&root())?;
        let roles = ["image-kernel", "image-firmware", "image-lib", "image-cuda-lib", "module-build", "nvcc"];
        for p in &pins {
            assert_eq!(p.sha256.len(), 64, "{}", p.name);
            assert!(p.sha256.chars().all(|c| c.is_ascii_hexdigit()), "{}", p.name);
            assert!(roles.contains(&p.role.as_str()), "{}: role {}", p.name, p.role);
            assert!(p.size > 0, "{}", p.name);
        }
        for must in
            ["linux-image-6.12.117+deb12-amd64", "nvidia-open-kernel-source", "firmware-nvidia-gsp", "libcuda1", "libcublas12"]
        {
            assert!(pins.iter().any(|p| p.name == must), "{must} missing");
        }
        // Driver pieces must all be the same driver release.
        for p in pins.iter().filter(|p| {
            ["libcuda1", "firmware-nvidia-gsp", "nvidia-open-kernel-source", "libnvidia-ml1"].contains(&p.name.as_str())
        }) {
            assert!(p.version.starts_with(DRIVER_VERSION), "{} {}", p.name, p.version);
        }
        Ok(())
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
}
