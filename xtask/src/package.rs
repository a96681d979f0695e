//! `cargo xtask package`: one folder with everything a model owner needs to check a
//! provider's VM against this source: the image, its manifest, the published measurements,
//! an SBOM of what went into the image, and SHA256SUMS over all of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::image::{CMDLINE, INITRAMFS, KERNEL, MANIFEST};
use crate::util::{cargo, output, say, sha256_file};

/// Build (if needed), measure and package; with `log` (directory, private key), append
/// the release's image-release entry to that transparency log. With `gpu`, also the GPU
/// image (its CUDA build, which needs the private nvcc and takes an hour on 2 cores) into a
/// second folder, `chrysalis-gpu-<version>`.
pub fn run(root: &Path, log: Option<(&Path, &Path)>, gpu: bool) -> Result<()> {
    let manifest = crate::image::build(root, &crate::image::Options::defaults(root))?;
    let out = root.join("out");
    let measurements = crate::measure::compute(root, &out)?;
    let dir = out.join(format!("release/chrysalis-{}", env!("CARGO_PKG_VERSION")));
    // The published expected values must describe exactly this build.
    crate::expected::check(root, &out)?;
    let settings = crate::pins::image(root)?;
    let sbom = sbom(root, &manifest, &settings.target, "")?;
    write_release(root, &dir, &out, &measurements, &sbom, &[("expected.json", crate::expected::path(root))])?;
    if let Some((log_dir, key)) = log {
        let index = append_release(&dir, log_dir, key)?;
        say(format!("transparency log {}: image-release entry {index}", log_dir.display()));
    }
    if gpu {
        let runtime = crate::gpu::image::Runtime::Cuda;
        let img = crate::gpu::image::build(root, &crate::gpu::image::Options::defaults(root, runtime))?;
        crate::measure::run(root, Some(runtime))?;
        let m: Value = serde_json::from_slice(&std::fs::read(img.out_dir.join("measurements.json"))?)?;
        let mut gpu_sbom = self::sbom(root, &img.manifest, crate::gpu::image::TARGET, runtime.features())?;
        for input in img.manifest.inputs.iter().filter(|i| i.kind.starts_with("image-")) {
            if let Some(list) = gpu_sbom["components"].as_array_mut() {
                list.push(json!({
                    "type": "library", "name": input.name, "version": input.version,
                    "purl": format!("pkg:deb/debian/{}@{}?arch=amd64", input.name, input.version),
                    "hashes": [{ "alg": "SHA-256", "content": input.sha256 }],
                }));
            }
        }
        let gpu_dir = out.join(format!("release/chrysalis-gpu-{}", env!("CARGO_PKG_VERSION")));
        write_release(root, &gpu_dir, &img.out_dir, &m, &gpu_sbom, &[("libraries.txt", img.out_dir.join("libraries.txt"))])?;
    }
    Ok(())
}

/// Write one release folder: the image in `image_dir`, its measurements, both firmware
/// images, the SBOM, `extra` files, and SHA256SUMS over all of them.
fn write_release(
    root: &Path,
    dir: &Path,
    image_dir: &Path,
    measurements: &Value,
    sbom: &Value,
    extra: &[(&str, PathBuf)],
) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for f in [KERNEL, INITRAMFS, CMDLINE, MANIFEST] {
        std::fs::copy(image_dir.join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
    }
    std::fs::write(dir.join("measurements.json"), serde_json::to_string_pretty(measurements)? + "\n")?;
    for (name, from) in extra {
        std::fs::copy(from, dir.join(name)).with_context(|| format!("copying {}", from.display()))?;
    }
    let fw = crate::firmware::ensure_firmware(root)?;
    std::fs::copy(&fw.amd_sev, dir.join("ovmf-amdsev.fd"))?;
    std::fs::copy(&fw.intel_tdx, dir.join("ovmf-inteltdx.fd"))?;
    std::fs::write(dir.join("sbom.cdx.json"), serde_json::to_string_pretty(sbom)? + "\n")?;
    let mut names: Vec<String> =
        std::fs::read_dir(dir)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut sums = String::new();
    for n in &names {
        sums.push_str(&format!("{}  {n}\n", sha256_file(&dir.join(n))?));
    }
    std::fs::write(dir.join("SHA256SUMS"), &sums)?;
    print!("{sums}");
    say(format!("release folder: {} (verify with: cd {0} && sha256sum -c SHA256SUMS)", dir.display()));
    Ok(())
}

/// The canonical image-release entry of a release folder (`chrysalis-<version>`): artifact
/// SHA-256s, measurements.json, SBOM digest (attest/tlog/README.md). A witness rebuilding
/// the release derives the same bytes.
pub fn release_entry(dir: &Path) -> Result<Vec<u8>> {
    let entry = chrysalis_tlog::entry::image_release_of_release_folder(dir)?;
    Ok(chrysalis_tlog::Entry::ImageRelease(entry).to_canonical()?)
}

/// Append the release folder's entry to the log in `log_dir`, signed with `key`.
fn append_release(dir: &Path, log_dir: &Path, key: &Path) -> Result<u64> {
    let entry = release_entry(dir)?;
    let (index, _, _) = chrysalis_attest::tlog::append_bytes(log_dir, key, &entry)?;
    Ok(index)
}

/// A CycloneDX 1.5 SBOM: the runtime's Rust dependencies as resolved for the image (target,
/// features and Cargo.lock), the kernel package, its modules and the firmware.
fn sbom(root: &Path, manifest: &chrysalis_image::manifest::Manifest, target: &str, features: &str) -> Result<Value> {
    let mut cmd = cargo();
    cmd.current_dir(root).args(["tree", "--locked", "-p", "chrysalis-runtime", "--target", target, "-e", "normal"]);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    let tree = output(cmd.args(["--prefix", "none", "--no-dedupe", "-f", "{p}\t{l}"])).context("cargo tree for the SBOM")?;
    let mut seen = std::collections::BTreeSet::new();
    let mut components = Vec::new();
    for line in tree.lines() {
        let (pkg, license) = line.split_once('\t').unwrap_or((line, ""));
        let mut parts = pkg.split_whitespace();
        let (Some(name), Some(version)) = (parts.next(), parts.next()) else { continue };
        let version = version.trim_start_matches('v');
        if !seen.insert((name.to_owned(), version.to_owned())) {
            continue;
        }
        let local = pkg.contains('(');
        let mut c = json!({
            "type": if local { "application" } else { "library" },
            "name": name, "version": version,
            "purl": format!("pkg:cargo/{name}@{version}"),
        });
        if !license.trim().is_empty() {
            c["licenses"] = json!([{ "expression": license.trim() }]);
        }
        components.push(c);
    }
    for input in &manifest.inputs {
        if input.kind == "kernel-package" {
            components.push(json!({
                "type": "operating-system", "name": input.name, "version": input.version,
                "purl": format!("pkg:deb/debian/{}@{}?arch=amd64", input.name, input.version),
                "hashes": [{ "alg": "SHA-256", "content": input.sha256 }],
            }));
        }
    }
    for m in &manifest.modules {
        components.push(json!({ "type": "file", "name": format!("{m}.ko"), "description": if m.starts_with("nvidia") {
                "NVIDIA open kernel module, built here from the pinned nvidia-open-kernel-source"
            } else {
                "kernel module from the pinned kernel package"
            } }));
    }
    let fw = crate::firmware::read_pins(root)?;
    for f in &fw.firmware {
        components.push(json!({
            "type": "firmware", "name": f.name, "version": fw.source.version,
            "description": format!("edk2 {} built from Debian's source package", f.dsc),
            "hashes": [{ "alg": "SHA-256", "content": f.sha256 }],
        }));
    }
    let rustc = output(Command::new("rustc").arg("-V").current_dir(root)).unwrap_or_default();
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": humantime_epoch(manifest.source_date_epoch),
            "component": { "type": "operating-system", "name": "chrysalis-image", "version": env!("CARGO_PKG_VERSION"),
                           "hashes": manifest.artifacts.iter().map(|a| json!({"alg": "SHA-256", "content": a.hashes.sha256})).collect::<Vec<_>>() },
            "tools": [{ "name": "cargo xtask package", "version": env!("CARGO_PKG_VERSION") }, { "name": "rustc", "version": rustc.trim() }],
        },
        "components": components,
    }))
}

/// RFC 3339 for SOURCE_DATE_EPOCH (so the SBOM is as reproducible as the image).
fn humantime_epoch(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small fake release folder: its entry lists every file but SHA256SUMS, the
    /// measurements verbatim and the SBOM digest, and lands in a log where it verifies.
    #[test]
    fn release_entry_of_a_fake_release_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("chrysalis-9.8.7");
        std::fs::create_dir_all(&dir).unwrap();
        let m = format!(r#"{{"snp":[{{"vcpus":1,"measurement":"{}"}}]}}"#, "ab".repeat(48));
        for (name, body) in [
            ("initramfs.cpio.gz", "initramfs"),
            ("vmlinuz", "kernel"),
            ("measurements.json", m.as_str()),
            ("sbom.cdx.json", "{\"bomFormat\":\"CycloneDX\"}"),
            ("SHA256SUMS", "not an artifact"),
        ] {
            std::fs::write(dir.join(name), body).unwrap();
        }
        let bytes = release_entry(&dir).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let sha = |s: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()));
        assert_eq!(v["kind"], "image-release");
        assert_eq!(v["version"], "9.8.7");
        assert_eq!(v["artifacts"]["vmlinuz"], sha("kernel").as_str());
        assert_eq!(v["artifacts"].as_object().unwrap().len(), 4, "{v}");
        assert_eq!(v["measurements"]["snp"][0]["measurement"], "ab".repeat(48).as_str());
        assert_eq!(v["sbom_sha256"], sha("{\"bomFormat\":\"CycloneDX\"}").as_str());

        let (skey, vkey) = chrysalis_tlog::keygen("example.com/releases", chrysalis_tlog::KeyKind::Log).unwrap();
        let key = tmp.path().join("log.key");
        std::fs::write(&key, skey).unwrap();
        let log = tmp.path().join("log");
        assert_eq!(append_release(&dir, &log, &key).unwrap(), 0);
        let policy = chrysalis_tlog::LogPolicy { log_key: vkey, witnesses: vec![], min_witnesses: 0 };
        let state = tmp.path().join("state.json");
        assert_eq!(chrysalis_tlog::verify_inclusion(&log, &bytes, &policy, &state).unwrap().index, 0);

        std::fs::rename(&dir, tmp.path().join("release")).unwrap();
        assert!(release_entry(&tmp.path().join("release")).is_err(), "not chrysalis-<version>");
    }

    #[test]
    fn epoch_formatting() {
        assert_eq!(super::humantime_epoch(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::humantime_epoch(1_764_201_600), "2025-11-27T00:00:00Z");
        assert_eq!(super::humantime_epoch(951_782_400), "2000-02-29T00:00:00Z");
    }
}
