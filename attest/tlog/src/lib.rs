//! Chrysalis transparency log: an append-only log of JSON release entries (image releases,
//! key releases) stored as static files per c2sp.org/tlog-tiles, with checkpoints signed per
//! c2sp.org/tlog-checkpoint and c2sp.org/signed-note (Ed25519), witness cosignatures per
//! c2sp.org/tlog-cosignature (`cosignature/v1`), and client-side verification: log
//! signature, enough distinct witnesses, consistency with the last checkpoint seen, and
//! inclusion of an entry. See README.md for the entry format and the on-disk layout.
//!
//! The Merkle tree, tiles and notes are `tlog_tiles` and `signed_note` (cloudflare/azul);
//! this crate adds the C2SP tile paths (the crate writes Go sumdb paths), entry bundles,
//! cosignature keys (the crate knows only algorithm 0x01) and the policy checks.
//!
//! Everything read from a log directory is untrusted: parsing is total (bounded sizes,
//! tree sizes capped at 2^40 so tile arithmetic cannot overflow) and every failure is an
//! [`Error`] that says what was wrong.

pub mod entry;
pub mod keys;
pub mod log;
pub mod verify;

pub use signed_note;
pub use tlog_tiles;

pub use entry::{Entry, ImageRelease, KeyRelease};
pub use keys::{CosignatureSigner, CosignatureVerifier, KeyKind, keygen};
pub use log::{Log, LogFiles};
pub use verify::{LogPolicy, audit, cosign_latest, verify_inclusion, verify_measurement_released};

/// Why the log, a checkpoint or an entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The checkpoint carries no valid signature by the policy's log key.
    #[error("checkpoint not signed by log {log}")]
    NotSignedByLog {
        /// The log key's name (and what was wrong with its signature, if there was one).
        log: String,
    },
    /// Fewer distinct listed witnesses cosigned than required.
    #[error("only {have} of {need} required witness cosignatures (have: {}; missing: {})", list(have_names), list(missing))]
    NotEnoughWitnesses {
        /// How many verified.
        have: usize,
        /// How many are required.
        need: usize,
        /// Witnesses that cosigned.
        have_names: Vec<String>,
        /// Listed witnesses that did not (or whose cosignature did not verify).
        missing: Vec<String>,
    },
    /// The entry is not in the log, or its inclusion proof failed.
    #[error("entry {} not included in checkpoint of size {size}: {why}", if *index >= *size { "?".to_string() } else { index.to_string() })]
    NotIncluded {
        /// The entry's index (equal to `size` when no entry of the log matched).
        index: u64,
        /// The checkpoint's size.
        size: u64,
        /// What failed.
        why: String,
    },
    /// A checkpoint smaller than one seen before.
    #[error("checkpoint size {size} is smaller than the {seen} seen before (rolled back)")]
    RolledBack {
        /// The checkpoint's size.
        size: u64,
        /// The size seen before.
        seen: u64,
    },
    /// A checkpoint that is not an extension of the one seen before.
    #[error("fork: {0}")]
    Fork(String),
    /// Tiles that do not hash to the signed root.
    #[error("log tile hash mismatch: {0}")]
    TileMismatch(String),
    /// The witness's rebuild differs from the log's entry.
    #[error("not cosigning: {0}")]
    Mismatch(String),
    /// Malformed log files.
    #[error("malformed log: {0}")]
    Malformed(String),
    /// A malformed or unknown entry.
    #[error("entry: {0}")]
    Entry(String),
    /// A malformed key.
    #[error("key: {0}")]
    Key(String),
    /// The local state file.
    #[error("state file: {0}")]
    State(String),
    /// Reading or writing files.
    #[error("{0}")]
    Io(String),
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(", ") }
}
