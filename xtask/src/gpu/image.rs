//! `cargo xtask image --gpu`: the GPU image, assembled from the pinned packages of
//! `kernel/gpu-packages.toml`, NVIDIA's open modules built here ([`super::modules`]) and the
//! runtime built for glibc.
//!
//! It keeps the CPU image's rules: one program we wrote (`/init`), no shell, no package
//! manager, everything in one initramfs measured with the kernel and command line. What it
//! adds, and why each piece is there:
//!
//! - the generic kernel flavour (DRM, which `nvidia.ko` depends on, and the IOMMU drivers);
//! - `nvidia.ko` and `nvidia-uvm.ko` (debug info stripped), after DRM and its helpers, in
//!   their own load list (`/etc/chrysalis/gpu-modules`), which the runtime loads itself and
//!   judges (ENODEV from `nvidia` = no GPU);
//! - the GSP firmware for Ampere and later (`gsp_ga10x.bin`; Hopper runs it);
//! - glibc's loader and exactly the libraries reached from `/init` through `DT_NEEDED`, plus
//!   the driver libraries opened with `dlopen` ([`DLOPENED`], each with its evidence), and
//!   what those link in turn. Nothing else from the packages goes in.
//!
//! Two runtimes: [`Runtime::Cuda`] (`--features cuda`, candle's CUDA kernels compiled with
//! the private nvcc: the image a provider boots on an H100) and [`Runtime::BringUp`]
//! (`--features gpu-evidence`: the same boot, driver bring-up, NVML checks and GPU
//! attestation, with inference on the CPU; it builds without nvcc, so the GPU boot path can be
//! tested under QEMU on any machine). They go to different folders so they are never
//! confused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::elf;
use chrysalis_image::initramfs::{Contents, ExtraFile, gzip};
use chrysalis_image::manifest::{Artifact, Hashes, Input, MANIFEST_VERSION, Manifest};

use super::fetch::{Fetched, fetch_roles};
use super::{DRIVER_VERSION, KERNEL_RELEASE};
use crate::image::{CMDLINE, INITRAMFS, KERNEL, MANIFEST, initramfs_files, resolve_modules, write};
use crate::util::{Stage, run, say};
use crate::{build, kernel, pins};

/// Which runtime goes in as `/init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// `--features cuda`: inference on the GPU (needs the private nvcc; long build).
    Cuda,
    /// `--features gpu-evidence`: the GPU boot path and attestation, inference on the CPU.
    BringUp,
}

impl Runtime {
    /// Output folder, relative to the repository root.
    pub fn out_dir(self) -> &'static str {
        match self {
            Runtime::Cuda => "out/gpu",
            Runtime::BringUp => "out/gpu-bringup",
        }
    }

    /// The runtime's cargo features.
    pub fn features(self) -> &'static str {
        match self {
            Runtime::Cuda => "cuda",
            Runtime::BringUp => "gpu-evidence",
        }
    }
}

/// Options of one GPU image build.
pub struct Options {
    /// Which runtime.
    pub runtime: Runtime,
    /// Where the artifacts go.
    pub out_dir: PathBuf,
    /// Cargo target directory of the runtime build.
    pub target_dir: PathBuf,
}

impl Options {
    /// `runtime`'s folder under the root, and `target/`.
    pub fn defaults(root: &Path, runtime: Runtime) -> Self {
        Options { runtime, out_dir: root.join(runtime.out_dir()), target_dir: root.join("target") }
    }
}

/// The glibc target of the GPU runtime (cudarc and NVML need `dlopen`, which a static musl
/// binary cannot do).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Its C compiler: the one the kernel and glibc of Debian 12 were built with.
pub const CC: &str = "x86_64-linux-gnu-gcc-12";
/// The NVIDIA modules the image loads (their dependencies come along).
pub const GPU_MODULES: &[&str] = &["nvidia", "nvidia-uvm"];
/// The GSP firmware file, under `nvidia/<driver>/` (Ampere and later, Hopper included;
/// `gsp_tu10x.bin` is Turing's and stays out).
pub const GSP_FIRMWARE: &str = "gsp_ga10x.bin";
/// Libraries opened with `dlopen`, which no `DT_NEEDED` entry reveals: (soname, who opens it,
/// evidence).
pub const DLOPENED: &[(&str, &str, &str)] = &[
    ("libcuda.so.1", "/init", "runtime/src/gpu/cuda.rs opens it at boot (cudarc links it in the cuda build)"),
    ("libnvidia-ml.so.1", "/init", "runtime/src/gpu/nvml.rs: CC state and GPU attestation"),
    (
        "libnvidia-ptxjitcompiler.so.1",
        "libcuda.so.1",
        "named in libcuda's strings; JIT-compiles candle's PTX (sm_90a) at module load",
    ),
    (
        "libnvidia-pkcs11-openssl3.so.550.163.01",
        "libcuda.so.1",
        "named in libcuda's strings; the crypto of CC mode's encrypted host-GPU transfers",
    ),
];
/// Where the packages put libraries (Debian puts the driver's in `nvidia/current/`).
const LIB_DIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu/nvidia/current"];
/// The program interpreter: the loader satisfies its own soname.
const LOADER: &str = "ld-linux-x86-64.so.2";
/// Where libraries go in the initramfs (one of the loader's built-in search directories).
const IMAGE_LIB_DIR: &str = "lib/x86_64-linux-gnu";

/// One library of the image and why it is there.
#[derive(Clone, Debug)]
pub struct Library {
    /// Path in the initramfs.
    pub path: String,
    /// The package it came from.
    pub package: String,
    /// Who needs it and how (`linked by X`, `opened by X: evidence`).
    pub why: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
}

impl Library {
    /// The entry for `data`, found at `path` in the initramfs.
    fn of(path: String, package: String, why: String, data: &[u8]) -> Self {
        Library { path, package, why, size: data.len() as u64, sha256: Hashes::of(data).sha256 }
    }
}

/// A built GPU image.
pub struct GpuImage {
    /// The manifest written beside the artifacts.
    pub manifest: Manifest,
    /// Where the artifacts are.
    pub out_dir: PathBuf,
    /// The libraries, with the reason for each.
    pub libraries: Vec<Library>,
    /// Base module list, then the GPU list.
    pub modules: (Vec<String>, Vec<String>),
}

/// Build the GPU image into `opts.out_dir`.
pub fn build(root: &Path, opts: &Options) -> Result<GpuImage> {
    let runtime = opts.runtime;
    crate::deps::ensure_build(root)?;
    let settings = pins::image(root)?;
    let sde = pins::source_date_epoch(&settings)?;
    let stage = Stage::start("GPU image packages (kernel/gpu-packages.toml)");
    let roles: &[&str] = match runtime {
        Runtime::Cuda => &["image-kernel", "image-firmware", "image-lib", "image-cuda-lib"],
        Runtime::BringUp => &["image-kernel", "image-firmware", "image-lib"],
    };
    let debs = fetch_roles(root, roles)?;
    stage.done();

    let kernel_deb = debs.iter().find(|d| d.package.role == "image-kernel").context("no image-kernel package is pinned")?;
    let pin = pins::KernelPackage {
        package: kernel_deb.package.name.clone(),
        version: kernel_deb.package.version.clone(),
        sha256: kernel_deb.package.sha256.clone(),
        archive: format!("{} {}", kernel_deb.package.suite, kernel_deb.package.component),
        release: KERNEL_RELEASE.into(),
    };
    let k = kernel::ensure(&pin, &root.join(".cache/kernel"), Some(&kernel_deb.path))?;

    let stage = Stage::start("NVIDIA modules (stripped of debug info)");
    let nvidia = stripped_nvidia_modules(root)?;
    stage.done();

    let unpacked = unpack(root, debs.iter().filter(|d| d.package.role != "image-kernel"))?;
    let stage = Stage::start(format!("runtime (glibc, release, --features {})", runtime.features()));
    let flavour = build::Flavour {
        target: TARGET.into(),
        target_cpu: settings.target_cpu.clone(),
        features: runtime.features().into(),
        cc: CC.into(),
        env: Vec::new(),
        link_dirs: Vec::new(),
    };
    let flavour = match runtime {
        Runtime::BringUp => flavour,
        Runtime::Cuda => {
            // Link against the toolkit's libraries and the driver's stub libcuda (its soname
            // is libcuda.so.1, which the image's driver library answers at run time).
            let nvcc = super::ensure_nvcc(root)?;
            let link_dirs = vec![link_dir(root, &unpacked)?, nvcc.lib_dir.join("stubs")];
            build::Flavour { env: nvcc.cargo_env(), link_dirs, ..flavour }
        }
    };
    let runtime_path = build::runtime(root, &opts.target_dir, &flavour, sde)?;
    let init = fs::read(&runtime_path).with_context(|| format!("reading {}", runtime_path.display()))?;
    stage.done();

    let stage = Stage::start("libraries and firmware");
    let libraries = libraries(&init, &unpacked)?;
    let firmware_src = format!("usr/lib/firmware/nvidia/{DRIVER_VERSION}/{GSP_FIRMWARE}");
    let (fw_pkg, fw_path) = find_file(&unpacked, &firmware_src).with_context(|| format!("no package carries {firmware_src}"))?;
    let firmware = fs::read(&fw_path).with_context(|| format!("reading {}", fw_path.display()))?;
    stage.done();

    let stage = Stage::start("initramfs");
    let base_wanted = pins::modules(root)?;
    let kernel_tree = k.modules_dir.join("kernel");
    let base = resolve_modules(std::slice::from_ref(&kernel_tree), &base_wanted)?;
    let base_names: BTreeSet<String> = base.iter().map(|m| m.name.clone()).collect();
    let gpu_wanted: Vec<String> = GPU_MODULES.iter().map(|s| (*s).to_owned()).collect();
    let gpu: Vec<_> =
        resolve_modules(&[nvidia, kernel_tree], &gpu_wanted)?.into_iter().filter(|m| !base_names.contains(&m.name)).collect();
    // The bytes move into the archive; only the list of what went in stays.
    let (all_libs, mut files): (Vec<Library>, Vec<ExtraFile>) = libraries
        .into_iter()
        .map(|(l, data)| {
            let path = l.path.clone();
            (l, ExtraFile { path, data, perm: 0o755 })
        })
        .unzip();
    files.push(ExtraFile { path: format!("lib/firmware/nvidia/{DRIVER_VERSION}/{GSP_FIRMWARE}"), data: firmware, perm: 0o644 });
    let contents = Contents {
        init,
        modules: base.iter().map(|m| (m.name.clone(), m.object.clone())).collect(),
        gpu_modules: gpu.iter().map(|m| (m.name.clone(), m.object.clone())).collect(),
        files,
    };
    let mtime = u32::try_from(sde).context("SOURCE_DATE_EPOCH does not fit the cpio format (after 2106)")?;
    let cpio = contents.to_archive()?.to_newc(mtime)?;
    let initramfs = gzip(&cpio)?;
    stage.done();

    let out_dir = opts.out_dir.clone();
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let cmdline = pins::cmdline(root)?;
    let cmdline_hashes = Hashes::of(cmdline.as_bytes());
    let kernel_bytes = fs::read(&k.vmlinuz).with_context(|| format!("reading {}", k.vmlinuz.display()))?;
    write(&out_dir.join(KERNEL), &kernel_bytes)?;
    write(&out_dir.join(INITRAMFS), &initramfs)?;
    write(&out_dir.join(CMDLINE), cmdline.as_bytes())?;
    write(&out_dir.join("libraries.txt"), library_report(&all_libs, &fw_pkg).as_bytes())?;

    let mut inputs = crate::image::inputs(root, &pin, &k.deb, &settings, sde)?;
    for input in inputs.iter_mut().filter(|i| i.kind == "runtime-target") {
        input.name = TARGET.into();
        input.version = format!("target-cpu={} features={}", settings.target_cpu, runtime.features());
    }
    for input in inputs.iter_mut().filter(|i| i.kind == "c-toolchain") {
        input.name = format!("{CC} (gcc, binutils)");
    }
    for d in debs.iter().filter(|d| d.package.role != "image-kernel") {
        inputs.push(Input {
            kind: d.package.role.clone(),
            name: d.package.name.clone(),
            version: d.package.version.clone(),
            sha256: Some(d.package.sha256.clone()),
        });
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        source_date_epoch: sde,
        cmdline,
        artifacts: vec![
            Artifact { name: KERNEL.into(), hashes: Hashes::of(&kernel_bytes) },
            Artifact { name: INITRAMFS.into(), hashes: Hashes::of(&initramfs) },
            Artifact { name: CMDLINE.into(), hashes: cmdline_hashes },
            Artifact { name: "init (runtime)".into(), hashes: Hashes::of(&contents.init) },
            Artifact { name: "initramfs.cpio (uncompressed)".into(), hashes: Hashes::of(&cpio) },
        ],
        inputs,
        modules: base.iter().chain(&gpu).map(|m| m.name.clone()).collect(),
        initramfs_files: initramfs_files(&cpio)?,
    };
    write(&out_dir.join(MANIFEST), manifest.to_json().as_bytes())?;
    Ok(GpuImage {
        manifest,
        out_dir,
        libraries: all_libs,
        modules: (base.into_iter().map(|m| m.name).collect(), gpu.into_iter().map(|m| m.name).collect()),
    })
}

/// `nvidia.ko` and `nvidia-uvm.ko` from `out/nvidia-modules` (built there first when
/// missing), with debug info stripped into `.cache/gpu-image/nvidia/`. Returns that folder.
fn stripped_nvidia_modules(root: &Path) -> Result<PathBuf> {
    let built = root.join("out/nvidia-modules");
    if !GPU_MODULES.iter().all(|m| built.join(format!("{m}.ko")).exists()) {
        say("the NVIDIA modules are not built yet: building them (cargo xtask gpu modules; minutes)");
        super::build_nvidia_modules(root, &root.join(".cache/gpu-build/a"), &built)?;
    }
    let dir = root.join(".cache/gpu-image/nvidia");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for m in GPU_MODULES {
        let (src, dst) = (built.join(format!("{m}.ko")), dir.join(format!("{m}.ko")));
        // `strip` from binutils is deterministic: same input, same output.
        run(Command::new("strip").arg("--strip-debug").arg("-o").arg(&dst).arg(&src))
            .with_context(|| format!("stripping {}", src.display()))?;
    }
    Ok(dir)
}

/// The CUDA libraries the `cuda` build links (`-l<name>`), by soname.
const CUDA_LINKED: &[&str] = &["libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcurand.so.10", "libnvrtc.so.12"];

/// A folder of `lib<name>.so` links to the very CUDA libraries the image carries (the
/// runtime packages have no unversioned development links), for the linker.
fn link_dir(root: &Path, unpacked: &[(String, PathBuf)]) -> Result<PathBuf> {
    let dir = root.join(".cache/gpu-image/link");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for soname in CUDA_LINKED {
        let (_, real) = LIB_DIRS
            .iter()
            .find_map(|d| find_file(unpacked, &format!("{d}/{soname}")))
            .with_context(|| format!("{soname} is in none of the pinned image-cuda-lib packages"))?;
        let dev_name = soname.split_once(".so").map(|(stem, _)| format!("{stem}.so")).unwrap_or_default();
        std::os::unix::fs::symlink(&real, dir.join(&dev_name)).with_context(|| format!("linking {dev_name}"))?;
    }
    Ok(dir)
}

/// Unpack each package into its own folder under `.cache/gpu-image/debs/<name>`.
fn unpack<'a>(root: &Path, debs: impl Iterator<Item = &'a Fetched>) -> Result<Vec<(String, PathBuf)>> {
    let base = root.join(".cache/gpu-image/debs");
    let mut out = Vec::new();
    for d in debs {
        let dir = base.join(&d.package.name);
        let stamp = dir.join(format!(".{}", d.package.sha256));
        if !stamp.exists() {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            run(Command::new("dpkg-deb").arg("-x").arg(&d.path).arg(&dir))
                .with_context(|| format!("unpacking {} (dpkg-deb -x)", d.package.name))?;
            fs::write(&stamp, b"")?;
        }
        out.push((d.package.name.clone(), dir));
    }
    Ok(out)
}

/// Every library `/init` reaches through `DT_NEEDED` and [`DLOPENED`], transitively, each
/// found in exactly the packages unpacked, by soname, then the loader (`lib64/…`); each with
/// its bytes.
fn libraries(init: &[u8], unpacked: &[(String, PathBuf)]) -> Result<Vec<(Library, Vec<u8>)>> {
    let me = elf::dynamic("/init", init)?;
    let interp = me.interpreter.clone().context("/init is not dynamically linked (no PT_INTERP): is this the glibc build?")?;
    let (pkg, path) =
        find_file(unpacked, interp.trim_start_matches('/')).with_context(|| format!("no package carries {interp}"))?;
    let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let loader = (Library::of(interp.trim_start_matches('/').into(), pkg, "program interpreter of /init".into(), &data), data);
    // Breadth first, so that a library is explained by the first thing that needs it.
    let mut todo: VecDeque<(String, String)> = me.needed.iter().map(|n| (n.clone(), "linked by /init".to_owned())).collect();
    todo.extend(DLOPENED.iter().map(|(so, by, ev)| ((*so).to_owned(), format!("opened by {by}: {ev}"))));
    let mut found: BTreeMap<String, (Library, Vec<u8>)> = BTreeMap::new();
    while let Some((soname, why)) = todo.pop_front() {
        if soname == LOADER || found.contains_key(&soname) {
            continue;
        }
        let Some((pkg, path)) = LIB_DIRS.iter().find_map(|d| find_file(unpacked, &format!("{d}/{soname}"))) else {
            bail!("{soname} ({why}) is in none of the pinned image-lib packages: add its package to kernel/gpu-packages.toml");
        };
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let dynamic = elf::dynamic(&soname, &data)?;
        todo.extend(dynamic.needed.iter().map(|n| (n.clone(), format!("linked by {soname}"))));
        let library = Library::of(format!("{IMAGE_LIB_DIR}/{soname}"), pkg, why, &data);
        found.insert(soname, (library, data));
    }
    Ok(found.into_values().chain([loader]).collect())
}

/// `rel` in one of the unpacked packages, symlinks followed inside that package (an absolute
/// link target is taken relative to the package root). Returns (package, real file).
fn find_file(unpacked: &[(String, PathBuf)], rel: &str) -> Option<(String, PathBuf)> {
    unpacked.iter().find_map(|(pkg, dir)| resolve_in(dir, rel).map(|p| (pkg.clone(), p)))
}

fn resolve_in(dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = dir.join(rel);
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = fs::read_link(&path).ok()?;
        path = if target.is_absolute() { dir.join(target.strip_prefix("/").ok()?) } else { path.parent()?.join(target) };
    }
    None
}

/// `libraries.txt`: each file, its size, SHA-256, package and why it is in the image.
fn library_report(libs: &[Library], firmware_package: &str) -> String {
    let mut s = String::from("# What the GPU image carries besides /init and the kernel modules, and why (xtask image --gpu).\n");
    s.push_str("# path  size  sha256  package  why\n");
    for l in libs {
        s.push_str(&format!("/{}  {}  {}  {}  {}\n", l.path, l.size, l.sha256, l.package, l.why));
    }
    s.push_str(&format!(
        "/lib/firmware/nvidia/{DRIVER_VERSION}/{GSP_FIRMWARE}  -  -  {firmware_package}  GSP firmware the open modules run the GPU's resource manager on\n"
    ));
    s
}

/// Print what was built: artifacts, module lists, libraries and sizes.
pub fn report(img: &GpuImage) {
    for a in &img.manifest.artifacts {
        println!("{:<32} {:>10} B  sha256 {}", a.name, a.hashes.size, a.hashes.sha256);
    }
    println!("modules: {}", img.modules.0.join(" "));
    println!("gpu modules: {}", img.modules.1.join(" "));
    for l in &img.libraries {
        println!("  {:<48} {:>10} B  {:<28} {}", format!("/{}", l.path), l.size, l.package, l.why);
    }
    say(format!("GPU image written to {}", img.out_dir.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_package() -> Result<()> {
        let t = tempfile::tempdir()?;
        let d = t.path();
        fs::create_dir_all(d.join("usr/lib/x86_64-linux-gnu/nvidia/current"))?;
        fs::create_dir_all(d.join("lib64"))?;
        fs::write(d.join("usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.550"), b"elf")?;
        std::os::unix::fs::symlink("libcuda.so.550", d.join("usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1"))?;
        std::os::unix::fs::symlink("/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1", d.join("lib64/abs.so"))?;
        std::os::unix::fs::symlink("loop.so", d.join("lib64/loop.so"))?;
        let pkgs = vec![("libcuda1".to_owned(), d.to_path_buf())];
        let got = find_file(&pkgs, "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1");
        assert_eq!(got.as_ref().map(|(p, f)| (p.as_str(), f.ends_with("libcuda.so.550"))), Some(("libcuda1", true)));
        assert!(find_file(&pkgs, "lib64/abs.so").is_some_and(|(_, f)| f.starts_with(d)), "absolute targets stay in the package");
        assert!(find_file(&pkgs, "lib64/loop.so").is_none(), "a symlink loop is not followed forever");
        assert!(find_file(&pkgs, "lib64/none.so").is_none());
        Ok(())
    }
}
