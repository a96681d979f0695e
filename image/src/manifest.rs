//! The image manifest (`out/manifest.json`): every artifact with its size, SHA-256 and
//! SHA-384, every input with its version and hash, and the initramfs file list. Owners
//! compare a rebuilt manifest with a published one; `xtask repro` compares two builds.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

/// Version of the manifest schema.
pub const MANIFEST_VERSION: u32 = 1;

/// Hashes and size of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
    /// Hex SHA-384.
    pub sha384: String,
}

impl Hashes {
    /// Hash `data`.
    pub fn of(data: &[u8]) -> Self {
        Hashes { size: data.len() as u64, sha256: hex::encode(Sha256::digest(data)), sha384: hex::encode(Sha384::digest(data)) }
    }
}

/// An output of the build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name inside `out/`.
    pub name: String,
    /// Its hashes.
    #[serde(flatten)]
    pub hashes: Hashes,
}

/// An input of the build, pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// What it is (`kernel-package`, `rust-toolchain`, `cargo-lock`, ...).
    pub kind: String,
    /// Name (package name, toolchain channel, ...).
    pub name: String,
    /// Version string.
    pub version: String,
    /// Hex SHA-256 of the input, where it is a file.
    pub sha256: Option<String>,
}

/// One file in the initramfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsFile {
    /// Path inside the initramfs.
    pub path: String,
    /// Mode (type and permission bits) in octal.
    pub mode: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the contents (regular files).
    pub sha256: Option<String>,
}

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// SOURCE_DATE_EPOCH used for every timestamp.
    pub source_date_epoch: u64,
    /// The kernel command line the image boots with.
    pub cmdline: String,
    /// Outputs.
    pub artifacts: Vec<Artifact>,
    /// Inputs.
    pub inputs: Vec<Input>,
    /// Kernel modules in load order.
    pub modules: Vec<String>,
    /// Initramfs contents (uncompressed cpio), sorted by path.
    pub initramfs_files: Vec<InitramfsFile>,
}

impl Manifest {
    /// Pretty JSON with a trailing newline; stable field order (struct order).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The artifact called `name`.
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }
}
