//! The runtime's own measurement log ("event log"): what the guest runtime measured about
//! itself at boot, and how that log is bound to the hardware report's REPORT_DATA.
//!
//! Wire format (postcard, versioned by [`crate::evidence::EVIDENCE_VERSION`]): a list of
//! [`Event`]s. Each event carries its SHA-384 digest and, where it is small and not secret,
//! the measured bytes themselves so that a verifier can inspect them (the kernel cmdline,
//! the runtime config, the public key). The log digest is a hash chain in the style of a
//! TPM PCR / TDX RTMR:
//!
//! ```text
//! D_0 = 0^48
//! D_i = SHA-384(D_{i-1} || kind_tag_i || digest_i)      (kind_tag: u16 little-endian)
//! REPORT_DATA = SHA-512(D_n || nonce)                   (64 bytes)
//! ```
//!
//! Trust: a log is untrusted input until [`EventLog::report_data`] of the log equals the
//! REPORT_DATA inside hardware-verified evidence, for the verifier's own nonce.

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;
use sha2::{Digest, Sha384, Sha512};

/// Length of a SHA-384 digest.
pub const DIGEST_LEN: usize = 48;

/// A SHA-384 digest.
pub type Digest384 = [u8; DIGEST_LEN];

/// What an event measures. The numeric tag is part of the hash chain: never renumber.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// SHA-384 of the runtime's own executable (`/init`).
    RuntimeBinary,
    /// The kernel command line as the runtime read it from `/proc/cmdline`.
    KernelCmdline,
    /// The runtime's parsed configuration, in its canonical encoding.
    Config,
    /// SHA-384 of the sealed bundle's header (which commits to every file's plaintext hash).
    BundleHeader,
    /// The runtime's ephemeral X25519 public key (key-release and channel key).
    PublicKey,
    /// SHA-384 of the GPU evidence the runtime collected (CUDA builds).
    GpuEvidence,
    /// The runtime's ephemeral Ed25519 public key that signs per-response receipts
    /// (`crate::channel::receipt`).
    ReceiptKey,
}

impl EventKind {
    /// The tag hashed into the chain.
    pub fn tag(self) -> u16 {
        match self {
            EventKind::RuntimeBinary => 1,
            EventKind::KernelCmdline => 2,
            EventKind::Config => 3,
            EventKind::BundleHeader => 4,
            EventKind::PublicKey => 5,
            EventKind::GpuEvidence => 6,
            EventKind::ReceiptKey => 7,
        }
    }
}

/// One measurement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What was measured.
    pub kind: EventKind,
    /// SHA-384 of the measured bytes.
    #[serde(with = "BigArray")]
    pub digest: Digest384,
    /// The measured bytes, when small and public (cmdline, config, public keys); `None` when
    /// only the digest is recorded (the binary, the bundle header, GPU evidence).
    pub data: Option<Vec<u8>>,
}

impl Event {
    /// An event that records `data` itself next to its digest.
    pub fn with_data(kind: EventKind, data: Vec<u8>) -> Self {
        Event { kind, digest: Sha384::digest(&data).into(), data: Some(data) }
    }

    /// An event that records only the digest of `data`.
    pub fn digest_of(kind: EventKind, data: &[u8]) -> Self {
        Event { kind, digest: Sha384::digest(data).into(), data: None }
    }

    /// `Ok` when the carried data (if any) hashes to the recorded digest.
    pub fn check_data(&self) -> Result<(), EventLogError> {
        match &self.data {
            Some(d) if <[u8; DIGEST_LEN]>::from(Sha384::digest(d)) != self.digest => Err(EventLogError::DataMismatch(self.kind)),
            _ => Ok(()),
        }
    }
}

/// Why an event log is inconsistent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventLogError {
    /// An event's inline data does not hash to its digest.
    #[error("event log: data of the {0:?} event does not match its digest")]
    DataMismatch(EventKind),
}

/// The ordered list of events.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EventLog {
    /// Events in the order they were extended.
    pub events: Vec<Event>,
}

impl EventLog {
    /// Append an event.
    pub fn extend(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Replay the hash chain and return the final digest `D_n`.
    pub fn digest(&self) -> Digest384 {
        self.events.iter().fold([0u8; DIGEST_LEN], |acc, e| {
            let mut h = Sha384::new();
            h.update(acc);
            h.update(e.kind.tag().to_le_bytes());
            h.update(e.digest);
            h.finalize().into()
        })
    }

    /// The REPORT_DATA that binds this log to `nonce`: SHA-512(D_n || nonce).
    pub fn report_data(&self, nonce: &[u8]) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(self.digest());
        h.update(nonce);
        h.finalize().into()
    }

    /// Check every event's inline data against its digest.
    pub fn check(&self) -> Result<(), EventLogError> {
        self.events.iter().try_for_each(Event::check_data)
    }

    /// The first event of `kind`, if any.
    pub fn find(&self, kind: EventKind) -> Option<&Event> {
        self.events.iter().find(|e| e.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_order_kind_and_nonce() {
        let a = Event::with_data(EventKind::KernelCmdline, b"console=ttyS0".to_vec());
        let b = Event::digest_of(EventKind::RuntimeBinary, b"elf");
        let mut l1 = EventLog::default();
        l1.extend(a.clone());
        l1.extend(b.clone());
        let mut l2 = EventLog::default();
        l2.extend(b);
        l2.extend(a);
        assert_ne!(l1.digest(), l2.digest());
        assert_ne!(l1.report_data(&[0; 32]), l1.report_data(&[1; 32]));
        assert_eq!(EventLog::default().digest(), [0u8; 48]);
    }

    #[test]
    fn tampered_inline_data_is_detected() {
        let mut e = Event::with_data(EventKind::Config, b"{}".to_vec());
        assert!(e.check_data().is_ok());
        e.data = Some(b"{ }".to_vec());
        assert_eq!(e.check_data(), Err(EventLogError::DataMismatch(EventKind::Config)));
    }
}
