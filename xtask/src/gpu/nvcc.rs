//! A private nvcc (CUDA 12.4 from Debian's packages, unpacked under `.cache/cuda`) and the
//! runtime's `cuda` build with it. Nothing is installed on the host.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::fetch::{extract, fetch_roles};
use super::{COMPUTE_CAP, CUDA_RELEASE};
use crate::util::{cargo, output, run};

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
        let mut path: Vec<String> = self.path_prefix.iter().map(|p| p.display().to_string()).collect();
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
    let want: String = debs.iter().map(|d| format!("{} {}\n", d.package.name, d.package.sha256)).collect();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        if prefix.exists() {
            fs::remove_dir_all(&prefix).with_context(|| format!("removing {}", prefix.display()))?;
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
    let version = output(Command::new(&nvcc.nvcc).arg("--version").envs(env.iter().cloned())).context("nvcc --version")?;
    ensure!(version.contains(&format!("release {CUDA_RELEASE}")), "unexpected nvcc: {version}");
    let probe_dir = root.join(".cache/cuda/probe");
    fs::create_dir_all(&probe_dir)?;
    let cu = probe_dir.join("probe.cu");
    fs::write(
        &cu,
        "#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include <cuda_fp8.h>\n\
         extern \"C\" __global__ void k(const __nv_bfloat16* a, float* o, int n) {\n\
           int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) o[i] = __bfloat162float(a[i]); }\n",
    )?;
    run(Command::new(&nvcc.nvcc)
        .args(["-arch=sm_90", "--ptx", "-o"])
        .arg(probe_dir.join("probe.ptx"))
        .arg(&cu)
        .envs(env.iter().cloned()))
    .context("nvcc probe compile (sm_90)")?;
    let line = version.lines().find(|l| l.contains("release")).unwrap_or_default().trim().to_string();
    Ok(Nvcc { version: line, ..nvcc })
}

/// `cargo build -p chrysalis-runtime --features cuda --release` with the private nvcc;
/// returns the wall time.
pub fn build_runtime_cuda(root: &Path) -> Result<Duration> {
    let nvcc = ensure_nvcc(root)?;
    let start = Instant::now();
    run(cargo()
        .current_dir(root)
        .args(["build", "-p", "chrysalis-runtime", "--features", "cuda", "--release"])
        .envs(nvcc.cargo_env()))
    .context("cargo build -p chrysalis-runtime --features cuda")?;
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_env_puts_private_tools_first() {
        let n = Nvcc {
            nvcc: "/c/bin/nvcc".into(),
            path_prefix: vec!["/c/bin".into(), "/c/usr/bin".into()],
            lib_dir: "/c/lib".into(),
            version: String::new(),
        };
        let env: std::collections::BTreeMap<_, _> = n.cargo_env().into_iter().collect();
        assert_eq!(env["NVCC"], "/c/bin/nvcc");
        assert!(env["PATH"].starts_with("/c/bin:/c/usr/bin:"), "{}", env["PATH"]);
        assert_eq!(env["CUDA_COMPUTE_CAP"], COMPUTE_CAP);
        assert_eq!(env["LIBRARY_PATH"], "/c/lib");
    }
}
