//! The cpio writer's output read back by an independent implementation, GNU cpio: it must
//! list the same entries with the same modes, owners, times and device numbers, and
//! extract byte-identical contents.
// Helper functions of this test file fail the test on error, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use chrysalis_image::cpio::{Archive, EntryKind};

fn gnu_cpio() -> &'static str {
    // The README's test command installs cpio; a missing tool is a setup error, not a skip.
    match Command::new("cpio").arg("--version").output() {
        Ok(o) if o.status.success() => "cpio",
        _ => panic!("GNU cpio not found: run `cargo xtask test` (installs it) or `apt-get install cpio`"),
    }
}

fn sample() -> (Archive, Vec<(String, Vec<u8>)>) {
    let mut a = Archive::new();
    let files = vec![
        ("init".to_string(), (0..=255u8).cycle().take(70_001).collect::<Vec<u8>>()),
        ("etc/chrysalis/modules".to_string(), b"configfs\ntsm\n".to_vec()),
        ("lib/modules/a.ko".to_string(), vec![]),
        ("lib/modules/b.ko".to_string(), vec![7; 3]),
    ];
    for d in ["etc/chrysalis", "lib/modules", "dev"] {
        a.add_dir_all(d).expect("dir");
    }
    a.add("dev/console", EntryKind::CharDevice(5, 1), 0o600).expect("node");
    for (p, d) in &files {
        let perm = if p == "init" { 0o755 } else { 0o644 };
        a.add(p, EntryKind::File(d.clone()), perm).expect("file");
    }
    (a, files)
}

#[test]
fn gnu_cpio_lists_what_we_wrote() {
    let cpio = gnu_cpio();
    let (a, _) = sample();
    let bytes = a.to_newc(1_700_000_000).expect("newc");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.cpio");
    std::fs::write(&path, &bytes).expect("write");
    let out = Command::new(cpio)
        .args(["-t", "-v", "--numeric-uid-gid", "-F"])
        .arg(&path)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .output()
        .expect("run cpio");
    assert!(out.status.success(), "cpio -t failed: {}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    let names: Vec<&str> = lines.iter().filter_map(|l| l.split_whitespace().last()).collect();
    let expected: Vec<&str> = a.paths().collect();
    assert_eq!(names, expected, "listing:\n{listing}");
    for l in &lines {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!((cols[2], cols[3]), ("0", "0"), "owner in {l}");
        assert!(l.contains("Nov 14  2023"), "mtime in {l}");
    }
    let console = lines.iter().find(|l| l.ends_with("dev/console")).expect("console");
    assert!(console.starts_with("crw-------") && console.contains("5,") && console.contains(" 1 "), "{console}");
    let init = lines.iter().find(|l| l.ends_with(" init")).expect("init");
    assert!(init.starts_with("-rwxr-xr-x") && init.contains(" 70001 "), "{init}");
}

#[test]
fn gnu_cpio_extracts_identical_contents() {
    let cpio = gnu_cpio();
    let (a, files) = sample();
    let bytes = a.to_newc(0).expect("newc");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("a.cpio");
    std::fs::write(&archive, &bytes).expect("write");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    // Device nodes need privileges; extract only regular files and directories.
    let out = Command::new(cpio)
        .args(["-i", "-d", "--no-absolute-filenames", "-F"])
        .arg(&archive)
        .args(["init", "etc/*", "lib/*"])
        .current_dir(&root)
        .output()
        .expect("run cpio");
    assert!(out.status.success(), "cpio -i failed: {}", String::from_utf8_lossy(&out.stderr));
    for (p, d) in files {
        assert_eq!(std::fs::read(root.join(&p)).expect("read back"), d, "{p}");
    }
}
