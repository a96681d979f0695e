//! NVIDIA's open kernel modules (550.163.01), built reproducibly against the generic Debian
//! kernel's headers from the pinned `module-build` packages, and the reproducibility check.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::fetch::{extract, fetch_roles};
use super::{DRIVER_VERSION, KERNEL_ABI, KERNEL_RELEASE, MODULES_SOURCE_DATE_EPOCH};
use crate::util::{run, sha256_file};

/// Modules not built: nvidia-peermem needs InfiniBand peer memory, which the image does not use.
const EXCLUDED_MODULES: &str = "nvidia-peermem";

/// What the module build runs on the host, beyond the pinned packages it unpacks: make and
/// the kernel's compiler (`CONFIG_CC_VERSION_TEXT`), xz for NVIDIA's source tarball, and the
/// shared libraries the unpacked kbuild tools (libelf, libcrypto) and pahole (libdw,
/// libbpf, zlib) link.
const MODULE_BUILD_PACKAGES: &[&str] =
    &["make", "gcc-12", "libc6-dev", "binutils", "xz-utils", "libelf1", "libdw1", "libbpf1", "zlib1g", "libssl3"];

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
    crate::deps::ensure_packages(MODULE_BUILD_PACKAGES)?;
    let debs = fetch_roles(root, &["module-build"])?;
    if work.exists() {
        fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    let sysroot = work.join("root");
    extract(&debs, &sysroot)?;
    let common = sysroot.join(format!("usr/src/linux-headers-{KERNEL_ABI}-common"));
    let arch_dir = sysroot.join(format!("usr/src/linux-headers-{KERNEL_RELEASE}"));
    // Debian's per-flavour Makefile includes the common one by absolute path.
    fs::write(arch_dir.join("Makefile"), format!("include {}/Makefile\n", common.display()))?;
    let src_root = work.join("src");
    fs::create_dir_all(&src_root)?;
    run(Command::new("tar").arg("-xJf").arg(sysroot.join("usr/src/nvidia-open-kernel.tar.xz")).arg("-C").arg(&src_root))
        .context("unpacking nvidia-open-kernel.tar.xz")?;
    let src = src_root.join("modules/nvidia-open-kernel");
    patch_pci_resize(&src, &common)?;

    let path = format!("{}:{}", sysroot.join("usr/bin").display(), std::env::var("PATH").unwrap_or_default());
    let kcflags = format!(
        "-ffile-prefix-map={}/=/usr/src/nvidia-{DRIVER_VERSION}/ -ffile-prefix-map={}/=/",
        src.display(),
        sysroot.display()
    );
    let start = Instant::now();
    run(Command::new("make")
        .current_dir(&src)
        .arg(format!("-j{}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)))
        .arg("modules")
        .arg(format!("KERNEL_UNAME={KERNEL_RELEASE}"))
        .arg(format!("SYSSRC={}", common.display()))
        .arg(format!("SYSOUT={}", arch_dir.display()))
        .arg("CC=x86_64-linux-gnu-gcc-12")
        .arg(format!("NV_EXCLUDE_KERNEL_MODULES={EXCLUDED_MODULES}"))
        .arg(format!("KCFLAGS={kcflags}"))
        .env("PATH", path)
        .env("SOURCE_DATE_EPOCH", MODULES_SOURCE_DATE_EPOCH.to_string())
        .env("KBUILD_BUILD_TIMESTAMP", format!("@{MODULES_SOURCE_DATE_EPOCH}"))
        .env("KBUILD_BUILD_USER", "chrysalis")
        .env("KBUILD_BUILD_HOST", "chrysalis")
        .env("LC_ALL", "C")
        .env("TZ", "UTC"))
    .context("make modules (NVIDIA open kernel modules)")?;
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
    ensure!(modules.iter().any(|(n, _)| n == "nvidia.ko"), "the build produced no nvidia.ko");
    let sums: String = modules.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(ModuleBuild { modules, out_dir: out.to_path_buf(), elapsed })
}

/// Pass `0` as `exclude_bars` to `pci_resize_resource()` when the kernel headers declare it.
fn patch_pci_resize(src: &Path, kernel_common: &Path) -> Result<()> {
    let pci_h = fs::read_to_string(kernel_common.join("include/linux/pci.h"))?;
    if !pci_h.contains("int exclude_bars);") {
        return Ok(());
    }
    let file = src.join("nvidia/nv-pci.c");
    let text = fs::read_to_string(&file)?;
    fs::write(&file, patched_nv_pci(&text).with_context(|| format!("patching {}", file.display()))?)?;
    Ok(())
}

/// `nv-pci.c` with its one `pci_resize_resource()` call given the `exclude_bars` argument.
fn patched_nv_pci(text: &str) -> Result<String> {
    let from = "pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size)";
    ensure!(text.matches(from).count() == 1, "expected exactly one `{from}` to patch");
    Ok(text.replace(from, "pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0)"))
}

/// Build the modules twice in directories with different paths and fail unless every .ko
/// is byte-identical. Returns the first build.
pub fn check_modules_reproducible(root: &Path) -> Result<ModuleBuild> {
    let base = root.join(".cache/gpu-build");
    let a = build_nvidia_modules(root, &base.join("a"), &base.join("out-a"))?;
    let b = build_nvidia_modules(root, &base.join("second-directory-b"), &base.join("out-b"))?;
    ensure!(a.modules == b.modules, "module builds differ:\n{:?}\n{:?}", a.modules, b.modules);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_resize_patch_adds_exclude_bars_once() -> Result<()> {
        let src = "x;\n    r = pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size);\ny;\n";
        assert_eq!(patched_nv_pci(src)?, "x;\n    r = pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0);\ny;\n");
        assert!(patched_nv_pci("no call here").is_err());
        assert!(patched_nv_pci(&src.repeat(2)).is_err());
        Ok(())
    }
}
