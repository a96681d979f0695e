//! `cargo xtask image`: assemble `out/` — kernel, initramfs, cmdline and manifest — from
//! the pinned inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::initramfs::{Contents, gzip};
use chrysalis_image::kmod::{self, Module};
use chrysalis_image::manifest::{Artifact, Hashes, InitramfsFile, Input, MANIFEST_VERSION, Manifest};
use chrysalis_image::reader::read_newc;

use crate::util::{Stage, output, sha256_file};
use crate::{build, kernel, pins};

/// Artifact file names in `out/`.
pub const KERNEL: &str = "vmlinuz";
/// The compressed initramfs.
pub const INITRAMFS: &str = "initramfs.cpio.gz";
/// The kernel command line (one line, no newline).
pub const CMDLINE: &str = "cmdline";
/// The manifest.
pub const MANIFEST: &str = "manifest.json";

/// Options of one image build.
pub struct Options {
    /// Where artifacts go (`out/`).
    pub out_dir: PathBuf,
    /// Cargo target directory for the runtime build.
    pub target_dir: PathBuf,
    /// An offline copy of the kernel package.
    pub kernel_deb: Option<PathBuf>,
}

impl Options {
    /// The defaults: `out/`, `target/`, kernel from apt.
    pub fn defaults(root: &Path) -> Self {
        Options { out_dir: root.join("out"), target_dir: root.join("target"), kernel_deb: None }
    }
}

/// Build the image; returns its manifest (also written to `out/manifest.json`).
pub fn build(root: &Path, opts: &Options) -> Result<Manifest> {
    crate::deps::ensure_build(root)?;
    let settings = pins::image(root)?;
    let sde = pins::source_date_epoch(&settings)?;
    let pin = pins::kernel(root)?;
    let stage = Stage::start(format!("kernel {} {}", pin.package, pin.version));
    let k = kernel::ensure(&pin, &root.join(".cache/kernel"), opts.kernel_deb.as_deref())?;
    stage.done();

    let stage = Stage::start("runtime (static musl, release)");
    let runtime_path = build::runtime(root, &opts.target_dir, &build::Flavour::cpu(&settings), sde)?;
    let runtime = std::fs::read(&runtime_path).with_context(|| format!("reading {}", runtime_path.display()))?;
    stage.done();

    let stage = Stage::start("initramfs");
    let wanted = pins::modules(root)?;
    let modules = resolve_modules(&[k.modules_dir.join("kernel")], &wanted)?;
    let contents = Contents {
        init: runtime,
        modules: modules.iter().map(|m| (m.name.clone(), m.object.clone())).collect(),
        ..Contents::default()
    };
    let mtime = u32::try_from(sde).context("SOURCE_DATE_EPOCH does not fit the cpio format (after 2106)")?;
    let cpio = contents.to_archive()?.to_newc(mtime)?;
    let initramfs = gzip(&cpio)?;
    stage.done();

    let cmdline = pins::cmdline(root)?;
    let kernel_bytes = std::fs::read(&k.vmlinuz).with_context(|| format!("reading {}", k.vmlinuz.display()))?;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    write(&opts.out_dir.join(KERNEL), &kernel_bytes)?;
    write(&opts.out_dir.join(INITRAMFS), &initramfs)?;
    write(&opts.out_dir.join(CMDLINE), cmdline.as_bytes())?;

    let manifest = Manifest {
        version: MANIFEST_VERSION,
        source_date_epoch: sde,
        cmdline: cmdline.clone(),
        artifacts: vec![
            Artifact { name: KERNEL.into(), hashes: Hashes::of(&kernel_bytes) },
            Artifact { name: INITRAMFS.into(), hashes: Hashes::of(&initramfs) },
            Artifact { name: CMDLINE.into(), hashes: Hashes::of(cmdline.as_bytes()) },
            Artifact { name: "init (runtime)".into(), hashes: Hashes::of(&contents.init) },
            Artifact { name: "initramfs.cpio (uncompressed)".into(), hashes: Hashes::of(&cpio) },
        ],
        inputs: inputs(root, &pin, &k.deb, &settings, sde)?,
        modules: modules.iter().map(|m| m.name.clone()).collect(),
        initramfs_files: initramfs_files(&cpio)?,
    };
    write(&opts.out_dir.join(MANIFEST), manifest.to_json().as_bytes())?;
    Ok(manifest)
}

/// The manifest's list of what `cpio` holds: path, mode, size and (for files) SHA-256.
pub(crate) fn initramfs_files(cpio: &[u8]) -> Result<Vec<InitramfsFile>> {
    Ok(read_newc(cpio)?
        .into_iter()
        .map(|e| InitramfsFile {
            sha256: (e.mode & 0o170000 == 0o100000).then(|| Hashes::of(&e.data).sha256),
            size: e.data.len() as u64,
            mode: format!("{:o}", e.mode),
            path: e.path,
        })
        .collect())
}

pub(crate) fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Find the wanted modules and their dependencies in module trees `dirs` (an earlier tree's
/// module wins over a later one's of the same name), parse them and return them in load
/// order.
pub(crate) fn resolve_modules(dirs: &[PathBuf], wanted: &[String]) -> Result<Vec<Module>> {
    let mut files = BTreeMap::new();
    for dir in dirs.iter().rev() {
        index_modules(dir, &mut files)?;
    }
    let mut parsed: BTreeMap<String, Module> = BTreeMap::new();
    let mut todo: Vec<String> = wanted.iter().map(|w| kmod::canonical(w)).collect();
    while let Some(name) = todo.pop() {
        if parsed.contains_key(&name) {
            continue;
        }
        let Some(path) = files.get(&name) else {
            // load_order names the module that needed it.
            continue;
        };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let module = kmod::parse_module(file_name, &bytes)?;
        if module.name != name {
            bail!("{} declares name={} (expected {name})", path.display(), module.name);
        }
        todo.extend(module.depends.iter().cloned());
        parsed.insert(name, module);
    }
    let order = kmod::load_order(wanted, &parsed)?;
    Ok(order.into_iter().filter_map(|n| parsed.remove(&n)).collect())
}

fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, out)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && let Some(stem) = name.strip_suffix(".ko.xz").or_else(|| name.strip_suffix(".ko"))
        {
            out.insert(kmod::canonical(stem), path.clone());
        }
    }
    Ok(())
}

pub(crate) fn inputs(
    root: &Path,
    pin: &pins::KernelPackage,
    deb: &Path,
    settings: &pins::BuildSettings,
    sde: u64,
) -> Result<Vec<Input>> {
    let rustc = output(Command::new("rustc").arg("-V").current_dir(root)).unwrap_or_default();
    Ok(vec![
        Input {
            kind: "kernel-package".into(),
            name: pin.package.clone(),
            version: pin.version.clone(),
            sha256: Some(sha256_file(deb)?),
        },
        Input { kind: "rust-toolchain".into(), name: "rustc".into(), version: rustc.trim().into(), sha256: None },
        Input {
            kind: "cargo-lock".into(),
            name: "Cargo.lock".into(),
            version: String::new(),
            sha256: Some(sha256_file(&root.join("Cargo.lock"))?),
        },
        Input {
            kind: "runtime-target".into(),
            name: settings.target.clone(),
            version: format!("target-cpu={}", settings.target_cpu),
            sha256: None,
        },
        Input { kind: "source-date-epoch".into(), name: "SOURCE_DATE_EPOCH".into(), version: sde.to_string(), sha256: None },
        Input {
            kind: "c-toolchain".into(),
            name: format!("{} (musl-tools, gcc, binutils)", crate::build::MUSL_CC),
            version: c_toolchain_versions(),
            sha256: None,
        },
    ])
}

/// The Debian versions of the C toolchain ring is compiled and the runtime linked with.
pub(crate) fn c_toolchain_versions() -> String {
    ["musl-tools", "musl-dev", "gcc-12", "binutils"]
        .iter()
        .map(|p| {
            let v = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", p])).unwrap_or_else(|_| "?".into());
            format!("{p} {}", v.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
