//! The published expected values: `image/expected.json` holds, for the current source, the
//! SHA-256 of every image artifact and every published measurement (SEV-SNP digests for the
//! standard launch shapes, TDX MRTD/RTMR1/RTMR2, the simulated TEE's). It is what a model
//! owner compares an independent rebuild with, and what the test command checks a fresh
//! build against, so a change that moves the measurement cannot land unnoticed.
//!
//! `cargo xtask expected` compares `out/` (built if missing) with the file;
//! `cargo xtask expected --update` rewrites the file from `out/` after an intended change.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::say;

/// The file, relative to the workspace root.
pub const EXPECTED_FILE: &str = "image/expected.json";

/// Format version of the file.
const EXPECTED_VERSION: u64 = 1;

/// Path of the published file.
pub fn path(root: &Path) -> PathBuf {
    root.join(EXPECTED_FILE)
}

/// The expected values of the image in `out` (built, with `manifest.json`).
pub fn compute(root: &Path, out: &Path) -> Result<Value> {
    let manifest: chrysalis_image::manifest::Manifest = serde_json::from_slice(
        &std::fs::read(out.join(crate::image::MANIFEST)).with_context(|| format!("reading {}/manifest.json", out.display()))?,
    )
    .context("parsing manifest.json")?;
    let artifacts: serde_json::Map<String, Value> = manifest
        .artifacts
        .iter()
        .map(|a| (a.name.clone(), json!({ "size": a.hashes.size, "sha256": a.hashes.sha256 })))
        .collect();
    let inputs: serde_json::Map<String, Value> = manifest
        .inputs
        .iter()
        .map(|i| (i.kind.clone(), json!({ "name": i.name, "version": i.version, "sha256": i.sha256 })))
        .collect();
    let measurements = crate::measure::compute(root, out)?;
    Ok(json!({
        "version": EXPECTED_VERSION,
        "about": "Expected values for this source tree: rebuild with `cargo xtask image` on any machine and compare with \
                  `cargo xtask expected` (every artifact and measurement must be equal). Update with \
                  `cargo xtask expected --update` only when a change to the image is intended.",
        "inputs": inputs,
        "artifacts": artifacts,
        "measurements": measurements,
    }))
}

/// One difference between the published file and a build.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// JSON path of the value.
    pub at: String,
    /// In the published file.
    pub published: String,
    /// In this build.
    pub built: String,
}

/// Every leaf where `published` and `built` differ (the `about` text is not compared).
pub fn diff(published: &Value, built: &Value) -> Vec<Mismatch> {
    let mut out = Vec::new();
    walk("", published, built, &mut out);
    out
}

fn walk(at: &str, a: &Value, b: &Value, out: &mut Vec<Mismatch>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if at.is_empty() && k == "about" {
                    continue;
                }
                let child = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                walk(&child, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                walk(&format!("{at}[{i}]"), x.get(i).unwrap_or(&Value::Null), y.get(i).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(Mismatch { at: at.to_owned(), published: short(a), built: short(b) }),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compare the image in `out` with the published file; fail, naming every differing value and
/// saying how to update the file, when they differ.
pub fn check(root: &Path, out: &Path) -> Result<()> {
    let file = path(root);
    let built = compute(root, out)?;
    let published: Value = serde_json::from_slice(
        &std::fs::read(&file)
            .with_context(|| format!("reading {} (create it with `cargo xtask expected --update`)", file.display()))?,
    )
    .with_context(|| format!("parsing {}", file.display()))?;
    let diffs = diff(&published, &built);
    if diffs.is_empty() {
        let n = built["artifacts"].as_object().map_or(0, |a| a.len());
        let m = built["measurements"]["snp"].as_array().map_or(0, |a| a.len());
        say(format!("{EXPECTED_FILE}: this build matches: {n} artifacts, {m} SEV-SNP digests, TDX MRTD/RTMR1/RTMR2, simulated"));
        return Ok(());
    }
    let mut msg = format!("this build differs from the published {EXPECTED_FILE} in {} value(s):\n", diffs.len());
    for d in diffs.iter().take(12) {
        msg.push_str(&format!("  {}\n    published {}\n    built     {}\n", d.at, d.published, d.built));
    }
    if diffs.len() > 12 {
        msg.push_str(&format!("  ... and {} more\n", diffs.len() - 12));
    }
    msg.push_str(
        "If your change is meant to change the image (runtime code, kernel, cmdline, modules, Cargo.lock, toolchain), \
         run `cargo xtask expected --update` and commit the file. If it is not, the build is not reproducible: \
         compare with `cargo xtask repro` and diffoscope.",
    );
    bail!(msg)
}

/// Rewrite the published file from the image in `out`.
pub fn update(root: &Path, out: &Path) -> Result<()> {
    let file = path(root);
    let built = compute(root, out)?;
    let old: Option<Value> = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    std::fs::write(&file, serde_json::to_string_pretty(&built)? + "\n").with_context(|| format!("writing {}", file.display()))?;
    match old {
        Some(old) => {
            let d = diff(&old, &built);
            say(format!("{EXPECTED_FILE} updated: {} value(s) changed", d.len()));
            for m in d.iter().take(12) {
                say(format!("  {}: {} -> {}", m.at, m.published, m.built));
            }
        }
        None => say(format!("{EXPECTED_FILE} written")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_each_changed_leaf_and_ignores_about() {
        let a =
            json!({"about": "x", "artifacts": {"vmlinuz": {"sha256": "aa"}}, "measurements": {"snp": [{"m": "1"}, {"m": "2"}]}});
        let b = json!({"about": "y", "artifacts": {"vmlinuz": {"sha256": "bb"}}, "measurements": {"snp": [{"m": "1"}]}});
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0], Mismatch { at: "artifacts.vmlinuz.sha256".into(), published: "aa".into(), built: "bb".into() });
        // A whole entry missing on one side is one difference, named by its index.
        assert_eq!(
            d[1],
            Mismatch { at: "measurements.snp[1]".into(), published: r#"{"m":"2"}"#.into(), built: "(absent)".into() }
        );
        assert!(diff(&a, &a).is_empty());
    }
}
