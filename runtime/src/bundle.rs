//! The sealed model bundle on its read-only disk: its header is read (and measured) at
//! boot, before any key exists; the body is decrypted straight into memory once the owner
//! has released the key. Nothing is ever written back: the plaintext lives only in this
//! process's memory (zeroized on drop), and the VM has no writable disk at all.

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrysalis_proto::eventlog::Digest384;
use chrysalis_proto::seal::{self, DataKey, SealedHeader, StagedSink, StagedUnsealed, UnsealOptions, UnsealedFiles};

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
        self.unseal_within(key, measured, memory_budget())
    }

    /// Decrypt the bundle chunk by chunk into `sink` (the staged unseal, for a model in GPU
    /// memory: [`crate::infer::staged`]), with the checks of [`Bundle::unseal`]. Guest memory
    /// holds only the staging buffers and what the sink keeps, so no plaintext budget applies
    /// here: the sink checks its own (host files, device memory) before the first chunk.
    pub fn unseal_staged<S: StagedSink>(&self, key: &DataKey, measured: &Digest384, sink: &mut S) -> Result<StagedUnsealed> {
        let (f, opts) = self.open_measured(measured, u64::MAX)?;
        let got = seal::unseal_staged_file(&f, key, &opts, sink)?;
        check_header(&got.header_digest, measured)?;
        Ok(got)
    }

    /// The bundle file, its header checked against `measured` before anything is decrypted
    /// (a swapped bundle is refused without work), and the unseal options.
    fn open_measured(&self, measured: &Digest384, budget: u64) -> Result<(File, UnsealOptions)> {
        let f = File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let header = seal::read_header_from(&mut &f)
            .with_context(|| format!("reading the sealed header of {} again", self.path.display()))?;
        check_header(&header.digest(), measured)?;
        let opts = UnsealOptions {
            threads: std::thread::available_parallelism().ok().or(NonZeroUsize::new(1)),
            verify_sha256: true,
            max_plaintext: budget,
            // A disk's size is rounded up to whole sectors; the padding must be zeros.
            allow_zero_padding: 4095,
        };
        Ok((f, opts))
    }

    /// [`Bundle::unseal`] with at most `budget` bytes of plaintext.
    fn unseal_within(&self, key: &DataKey, measured: &Digest384, budget: u64) -> Result<UnsealedFiles> {
        let (f, opts) = self.open_measured(measured, budget)?;
        let files = seal::unseal_file(&f, key, &opts).map_err(|e| match e {
            seal::UnsealError::TooLarge { .. } => anyhow::Error::new(e).context(format!(
                "the model is too big for this VM: it may take {LOAD_FACTOR}x its plaintext while loading, and 3/4 of \
                 the memory available is {} MiB, so at most {} MiB of plaintext is unsealed; nothing was decrypted",
                budget.saturating_mul(LOAD_FACTOR) >> 20,
                budget >> 20
            )),
            other => other.into(),
        })?;
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

/// How many times its plaintext a model may take while it is loaded, at most: half-precision
/// safetensors become f32 weights on the CPU (2×; each tensor's plaintext is given back as
/// it is converted, so the two are not added), a GGUF file is held until its tensors are
/// built (about 2×), f32 safetensors take 1×. The file types are in the encrypted part of the
/// bundle, so the worst case is assumed.
pub const LOAD_FACTOR: u64 = 2;

/// Plaintext the runtime may unseal: three quarters of the memory available now (the rest is
/// for activations and the KV cache), divided by [`LOAD_FACTOR`], so that a model too big to
/// load is refused before anything is decrypted rather than running the VM out of memory.
pub fn memory_budget() -> u64 {
    crate::sys::mem_available().map(|b| b / 4 * 3 / LOAD_FACTOR).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixture::{sealed, temp_dir};

    #[test]
    fn a_model_too_big_to_load_is_refused_before_decrypting_naming_the_budget() {
        let dir = temp_dir("too-big");
        let key = DataKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("bundle.sealed");
        std::fs::write(&path, sealed("Big", &[7u8; 100_000], &key)).unwrap_or_else(|e| panic!("{e}"));
        let bundle = Bundle::open(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let measured = bundle.header.digest();
        let err = bundle.unseal_within(&key, &measured, 50_000).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("too big for this VM") && err.contains("nothing was decrypted"), "{err}");
        let files = bundle.unseal_within(&key, &measured, 1 << 30).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(files.get("weights.bin").map(<[u8]>::len), Some(100_000));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
