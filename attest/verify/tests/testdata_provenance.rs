//! The vendor evidence under attest/testdata is the shared collection byte for byte: every file
//! listed in testdata/SOURCES.md (origin repository, commit, path) must be present with
//! the listed size and SHA-256. When the collection is also checked out beside the project
//! (`../shared/testdata`, as on the build machines), each file must equal that copy too.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

#[test]
fn every_listed_vector_matches_its_recorded_size_and_sha256() {
    let sources = std::fs::read_to_string(data_dir().join("SOURCES.md")).expect("testdata/SOURCES.md");
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata");
    let mut checked = 0;
    for line in sources.lines().filter(|l| l.starts_with("| shared/testdata/")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let rel = cols[1].strip_prefix("shared/testdata/").expect("row path");
        let size: u64 = cols[2].parse().unwrap_or_else(|_| panic!("size column of {rel}"));
        let want = cols[6].strip_prefix("sha256 ").unwrap_or_else(|| panic!("sha256 column of {rel}"));
        let bytes = std::fs::read(data_dir().join(rel)).unwrap_or_else(|e| panic!("testdata/{rel}: {e}"));
        assert_eq!(bytes.len() as u64, size, "testdata/{rel}: size differs from SOURCES.md");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), want, "testdata/{rel}: SHA-256 differs from SOURCES.md");
        if let Ok(original) = std::fs::read(shared.join(rel)) {
            assert_eq!(original, bytes, "testdata/{rel} differs from ../shared/testdata/{rel}");
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} rows found in SOURCES.md");
}
