//! The sealed model bundle on its read-only disk: its header is read (and measured) at
//! boot, before any key exists; the body is decrypted straight into memory once the owner
//! has released the key. Nothing is ever written back: the plaintext lives only in this
//! process's memory (zeroized on drop), and the VM has no writable disk at all.

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrysalis_proto::eventlog::Digest384;
use chrysalis_proto::seal::{self, DataKey, SealedHeader, UnsealOptions, UnsealedFiles};

/// The bundle read at unseal is not the one whose header was measured at boot: the disk is
/// the provider's, and the owner's key (released against the measured header) may open
/// another bundle sealed under it, such as an older or tampered model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the bundle on disk changed since boot: header sha384 {}, measured {}", hex::encode(on_disk), hex::encode(measured))]
pub struct BundleChanged {
    /// SHA-384 of the header read now.
    pub on_disk: Digest384,
    /// SHA-384 of the header in the event log.
    pub measured: Digest384,
}

/// A bundle found at boot.
pub struct Bundle {
    /// Where it is.
    pub path: PathBuf,
    /// Its parsed header (what the event log measures).
    pub header: SealedHeader,
}

impl Bundle {
    /// Open `path` and read its header.
    pub fn open(path: &Path) -> Result<Bundle> {
        let mut f = File::open(path).with_context(|| format!("opening the sealed bundle {}", path.display()))?;
        let header =
            seal::read_header_from(&mut f).with_context(|| format!("reading the sealed header of {}", path.display()))?;
        Ok(Bundle { path: path.to_path_buf(), header })
    }

    /// Decrypt the whole bundle into memory on all cores and check every file's SHA-256,
    /// refusing ([`BundleChanged`]) unless the header it is decrypted under is the one
    /// `measured` into the event log at boot. On any failure everything decrypted so far is
    /// zeroized and dropped.
    pub fn unseal(&self, key: &DataKey, measured: &Digest384) -> Result<UnsealedFiles> {
        let f = File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        // Checked before decrypting anything: a swapped bundle is refused without work.
        let header = seal::read_header_from(&mut &f)
            .with_context(|| format!("reading the sealed header of {} again", self.path.display()))?;
        check_header(&header.digest(), measured)?;
        let opts = UnsealOptions {
            threads: std::thread::available_parallelism().ok().or(NonZeroUsize::new(1)),
            verify_sha256: true,
            max_plaintext: memory_budget(),
            // A disk's size is rounded up to whole sectors; the padding must be zeros.
            allow_zero_padding: 4095,
        };
        let files = seal::unseal_file(&f, key, &opts)?;
        // The unsealer reads the header once more itself, and the provider can change the disk
        // between the two reads. Every chunk is authenticated under the digest of the header
        // it was decrypted with, so this check on that digest is the one that decides.
        check_header(&files.header_digest, measured)?;
        Ok(files)
    }
}

fn check_header(on_disk: &Digest384, measured: &Digest384) -> Result<(), BundleChanged> {
    if on_disk == measured { Ok(()) } else { Err(BundleChanged { on_disk: *on_disk, measured: *measured }) }
}

/// Plaintext the runtime may hold: three quarters of the memory available now (the model
/// also needs room for activations and the KV cache).
fn memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024 / 4 * 3)
        .unwrap_or(u64::MAX)
}
