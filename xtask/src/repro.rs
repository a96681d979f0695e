//! `cargo xtask repro`: build the image twice — from the tree itself and from a copy of it
//! in another directory, into different target directories, at different times — and fail
//! unless every artifact is bit-identical.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::manifest::Manifest;

use crate::image;
use crate::util::{Stage, say};

/// Run the reproducibility check.
pub fn run(root: &Path, kernel_deb: Option<PathBuf>) -> Result<()> {
    let base = root.join("target/repro");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let kernel_deb = match kernel_deb {
        Some(k) => Some(k),
        None => {
            // Fetch once through the normal path so both builds use the same checked file.
            let pin = crate::pins::kernel(root)?;
            let k = crate::kernel::ensure(&pin, &root.join(".cache/kernel"), None)?;
            Some(k.deb)
        }
    };
    // Build 1 is the ordinary build (this tree, target/, out/), so CI reuses it; build 2 is
    // a copy of the tree in another directory with its own target directory, started later.
    let stage = Stage::start(format!("build 1 in {}", root.display()));
    let opts_a = image::Options { kernel_deb: kernel_deb.clone(), ..image::Options::defaults(root) };
    let a = image::build(root, &opts_a)?;
    stage.done();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let src = base.join("src");
    let stage = Stage::start(format!("build 2 in {}", src.display()));
    copy_tree(root, &src)?;
    let opts_b = image::Options { out_dir: base.join("out"), target_dir: base.join("target"), kernel_deb };
    let b = image::build(&src, &opts_b)?;
    stage.done();
    compare(&a, &b, &opts_a.out_dir, &opts_b.out_dir)?;
    // Same bytes must give the same published measurements; computing both checks the
    // measurement code is a pure function of the artifacts too.
    let (ma, mb) = (crate::measure::compute(root, &opts_a.out_dir)?, crate::measure::compute(root, &opts_b.out_dir)?);
    if ma != mb {
        bail!("the two builds give different measurements:\n{ma}\n{mb}");
    }
    let v4 = ma["snp"].as_array().and_then(|v| v.first()).cloned().unwrap_or_default();
    say(format!(
        "measurements identical: SNP ({} vCPU {}) {}, TDX MRTD {}, RTMR1 {}, RTMR2 {}",
        v4["vcpus"], v4["vcpu_type"], v4["measurement"], ma["tdx"]["mrtd"], ma["tdx"]["rtmr1"], ma["tdx"]["rtmr2"]
    ));
    Ok(())
}

/// Copy the committed and untracked-but-not-ignored files of the tree (what a clean clone
/// would have, plus local edits) to `dst`.
fn copy_tree(root: &Path, dst: &Path) -> Result<()> {
    let files = crate::util::output(
        Command::new("git").arg("-C").arg(root).args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]),
    )
    .context("listing source files with git")?;
    for rel in files.split('\0').filter(|f| !f.is_empty()) {
        let from = root.join(rel);
        if !from.is_file() {
            continue;
        }
        let to = dst.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {rel}"))?;
    }
    Ok(())
}

fn compare(a: &Manifest, b: &Manifest, out_a: &Path, out_b: &Path) -> Result<()> {
    let mut differ = Vec::new();
    println!("{:<32} {:<64}  {}", "artifact", "sha256 (build 1)", "build 2");
    for art in &a.artifacts {
        let other = b.artifact(&art.name);
        let same = other.map(|o| o.hashes == art.hashes).unwrap_or(false);
        println!("{:<32} {}  {}", art.name, art.hashes.sha256, if same { "identical" } else { "DIFFERENT" });
        if !same {
            differ.push(art.name.clone());
        }
    }
    for name in [image::KERNEL, image::INITRAMFS, image::CMDLINE, image::MANIFEST] {
        let (x, y) = (std::fs::read(out_a.join(name))?, std::fs::read(out_b.join(name))?);
        if x != y && !differ.contains(&name.to_owned()) {
            differ.push(name.to_owned());
        }
    }
    if !differ.is_empty() {
        bail!("not reproducible: {} differ between the two builds", differ.join(", "));
    }
    say("reproducible: every artifact is bit-identical across the two builds");
    Ok(())
}
