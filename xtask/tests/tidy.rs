//! Repository hygiene that review keeps missing: every Rust file says what it is in a `//!`
//! header, and no note addressed to a person (a TODO, a FIXME, "for the lead") is left in
//! code or documentation. Runs over the files git tracks.
// The helpers below are test code: a failure to run git is a test failure.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tracked(patterns: &[&str]) -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard", "--"])
        .args(patterns)
        .current_dir(root())
        .output()
        .expect("running git ls-files (git is one of the base packages)");
    assert!(out.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout).lines().map(|l| root().join(l)).collect();
    assert!(!files.is_empty(), "git ls-files {patterns:?} found nothing: not a checkout?");
    files
}

#[test]
fn every_rust_file_has_a_module_header() {
    let missing: Vec<String> = tracked(&["*.rs"])
        .into_iter()
        .filter(|p| p.exists())
        .filter(|p| !std::fs::read_to_string(p).unwrap_or_default().starts_with("//!"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` header saying what they are:\n{}", missing.join("\n"));
}

/// Words that mark a note to a person rather than documentation.
fn leftover(line: &str) -> Option<&'static str> {
    let lower = line.to_lowercase();
    let words: Vec<&str> = line.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    for marker in ["TODO", "FIXME", "XXX", "HACK"] {
        if words.contains(&marker) {
            return Some(marker);
        }
    }
    ["for the lead", "the lead ", "fold into", "note to self"].into_iter().find(|m| lower.contains(m))
}

#[test]
fn no_notes_left_for_people() {
    let this = Path::new(file!()).file_name().map(|n| n.to_owned());
    let mut found = Vec::new();
    for p in tracked(&["*.rs", "*.md", "*.toml", "*.sh"]) {
        if p.file_name().map(|n| n.to_owned()) == this || p.components().any(|c| c.as_os_str() == "testdata") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        for (i, line) in text.lines().enumerate() {
            if let Some(m) = leftover(line) {
                found.push(format!("{}:{}: {m}: {}", p.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "notes addressed to people (finish or remove them):\n{}", found.join("\n"));
}

#[test]
fn the_markers_are_recognised() {
    assert_eq!(leftover("// TODO: later"), Some("TODO"));
    assert_eq!(leftover("For the lead to fold into kernel/README.md."), Some("for the lead"));
    assert_eq!(leftover("/tmp/chrysalis-fw-XXXXXXXX keeps"), None);
    assert_eq!(leftover("let mut todo = Vec::new();"), None);
}

/// Which workspace crate may depend on which (normal dependencies; dev-dependencies are
/// free). The guest runtime links only the shared formats, so no verifier, X.509, XML or
/// launch-measurement code can reach the image; the verifier never depends on the CLI.
const ALLOWED: &[(&str, &[&str])] = &[
    ("attest/proto", &[]),
    ("attest/verify", &["chrysalis-proto"]),
    ("attest/measure", &[]),
    ("attest/tlog", &[]),
    ("attest/cli", &["chrysalis-proto", "chrysalis-verify", "chrysalis-tlog"]),
    ("runtime", &["chrysalis-proto"]),
    ("image", &[]),
    ("tests", &["chrysalis-proto", "chrysalis-verify", "chrysalis-attest"]),
    (
        "xtask",
        &[
            "chrysalis-image",
            "chrysalis-proto",
            "chrysalis-verify",
            "chrysalis-measure",
            "chrysalis-tlog",
            "chrysalis-attest",
            "chrysalis-e2e",
        ],
    ),
];

#[test]
fn crates_depend_only_on_what_they_may() {
    let workspace: toml::Table = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml").parse().expect("toml");
    let members: Vec<String> = workspace["workspace"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let mut members = members;
    members.sort();
    let mut listed: Vec<String> = ALLOWED.iter().map(|(c, _)| (*c).to_owned()).collect();
    listed.sort();
    assert_eq!(members, listed, "every workspace member needs a row in ALLOWED (and only members)");
    let mut wrong = Vec::new();
    for (dir, allowed) in ALLOWED {
        let manifest: toml::Table =
            std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("member manifest").parse().expect("toml");
        let deps = manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();
        for name in deps.keys().filter(|n| n.starts_with("chrysalis-")) {
            if !allowed.contains(&name.as_str()) {
                wrong.push(format!("{dir} depends on {name}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies outside the allowed graph:\n{}", wrong.join("\n"));
}
