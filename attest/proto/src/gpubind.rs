//! How GPU evidence is bound into the runtime's event log (and through it into the CPU
//! report): the GPU nonce derived from the log recorded so far, the canonical encoding of
//! the GPU evidence, and the `GpuEvidence` event that commits to it. Shared by the runtime
//! (which produces the binding at boot) and the verifier (which recomputes it); the design
//! and the exact hashes are in `attest/GPU_BINDING.md`.
//!
//! ```text
//! k          = number of events before the GpuEvidence event
//! D_k        = event-log digest of those k events (crate::eventlog)
//! gpu_nonce  = SHA-256("chrysalis/gpu-nonce/v1" || 0x00 || D_k)          (32 bytes, SPDM nonce)
//! event      = GpuEvidence, digest = SHA-384(postcard(Vec<GpuEvidence>)), no inline data
//! ```
//!
//! Trust: pure functions of their inputs; whether a log is authentic is decided elsewhere
//! (REPORT_DATA binding).

use sha2::{Digest, Sha256, Sha384};

use crate::eventlog::{Digest384, Event, EventKind, EventLog};
use crate::evidence::GpuEvidence;

/// Domain separator of the GPU nonce (followed by one zero byte).
pub const GPU_NONCE_DOMAIN: &[u8] = b"chrysalis/gpu-nonce/v1";

/// Length of the nonce sent to the GPU (SPDM GET_MEASUREMENTS nonce).
pub const GPU_NONCE_LEN: usize = 32;

/// The nonce the runtime sends to every GPU, derived from the digest `D_k` of the events
/// recorded before the GPU event: `SHA-256(GPU_NONCE_DOMAIN || 0x00 || D_k)`.
pub fn gpu_nonce(prefix_digest: &Digest384) -> [u8; GPU_NONCE_LEN] {
    let mut h = Sha256::new();
    h.update(GPU_NONCE_DOMAIN);
    h.update([0u8]);
    h.update(prefix_digest);
    h.finalize().into()
}

/// [`gpu_nonce`] of a whole log: the nonce for a GPU event appended after `log`.
pub fn gpu_nonce_after(log: &EventLog) -> [u8; GPU_NONCE_LEN] {
    gpu_nonce(&log.digest())
}

/// The canonical encoding of the GPU evidence list: postcard of `Vec<GpuEvidence>`, i.e.
/// `varint(n)`, then per GPU `varint(len) || report`, `varint(m)`, and per certificate
/// `varint(len) || der` (varint = unsigned LEB128). The same bytes the runtime serves in
/// `Evidence.gpus`, so a verifier re-encodes what it received and hashes that.
pub fn encode_gpus(gpus: &[GpuEvidence]) -> Vec<u8> {
    // Serialising plain owned byte vectors into a Vec cannot fail.
    postcard::to_allocvec(gpus).unwrap_or_default()
}

/// SHA-384 of [`encode_gpus`]: the digest recorded in the `GpuEvidence` event.
pub fn gpus_digest(gpus: &[GpuEvidence]) -> Digest384 {
    Sha384::digest(encode_gpus(gpus)).into()
}

/// The `GpuEvidence` event for `gpus` (digest only: the evidence itself is served next to
/// the log, in `Evidence.gpus`).
pub fn gpu_event(gpus: &[GpuEvidence]) -> Event {
    Event { kind: EventKind::GpuEvidence, digest: gpus_digest(gpus), data: None }
}

/// Where the GPU binding sits in a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuBinding<'a> {
    /// Index of the `GpuEvidence` event.
    pub index: usize,
    /// The event.
    pub event: &'a Event,
    /// The nonce the GPUs must have signed: [`gpu_nonce`] of the events before it.
    pub nonce: [u8; GPU_NONCE_LEN],
    /// Whether a `PublicKey` event (fresh per boot) precedes it, i.e. whether the nonce is
    /// unpredictable before this boot.
    pub after_public_key: bool,
}

/// Why a log has no usable GPU binding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GpuBindingError {
    /// No `GpuEvidence` event at all.
    #[error("the event log has no GpuEvidence event")]
    Missing,
    /// More than one (the runtime records exactly one, covering every GPU).
    #[error("the event log has {0} GpuEvidence events, exactly one is expected")]
    Repeated(usize),
}

/// Find the one `GpuEvidence` event of `log` and derive the nonce it implies.
pub fn find_binding(log: &EventLog) -> Result<GpuBinding<'_>, GpuBindingError> {
    let mut found = log.events.iter().enumerate().filter(|(_, e)| e.kind == EventKind::GpuEvidence);
    let (index, event) = found.next().ok_or(GpuBindingError::Missing)?;
    if found.next().is_some() {
        let count = log.events.iter().filter(|e| e.kind == EventKind::GpuEvidence).count();
        return Err(GpuBindingError::Repeated(count));
    }
    let prefix = EventLog { events: log.events.iter().take(index).cloned().collect() };
    Ok(GpuBinding {
        index,
        event,
        nonce: gpu_nonce_after(&prefix),
        after_public_key: prefix.find(EventKind::PublicKey).is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(report: &[u8], certs: &[&[u8]]) -> GpuEvidence {
        GpuEvidence { report: report.to_vec(), cert_chain: certs.iter().map(|c| c.to_vec()).collect() }
    }

    #[test]
    fn nonce_is_sha256_of_domain_zero_and_prefix_digest() {
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        log.extend(Event::with_data(EventKind::PublicKey, vec![1; 32]));
        let mut manual = Vec::new();
        manual.extend_from_slice(b"chrysalis/gpu-nonce/v1");
        manual.push(0);
        manual.extend_from_slice(&log.digest());
        let want: [u8; 32] = Sha256::digest(&manual).into();
        assert_eq!(gpu_nonce_after(&log), want);
        // A different public key (another boot) gives another nonce.
        let mut other = EventLog::default();
        other.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        other.extend(Event::with_data(EventKind::PublicKey, vec![2; 32]));
        assert_ne!(gpu_nonce_after(&other), want);
    }

    #[test]
    fn encoding_is_postcard_with_varint_lengths() {
        let gpus = vec![ev(&[0xaa; 3], &[&[1, 2], &[3]]), ev(&[], &[])];
        let bytes = encode_gpus(&gpus);
        assert_eq!(bytes, [2, 3, 0xaa, 0xaa, 0xaa, 2, 2, 1, 2, 1, 3, 0, 0]);
        assert_eq!(gpus_digest(&gpus), <[u8; 48]>::from(Sha384::digest(&bytes)));
        // Long fields use multi-byte LEB128 lengths.
        let long = encode_gpus(&[ev(&[0; 300], &[])]);
        assert_eq!(long.get(..3), Some(&[1, 0xac, 0x02][..]));
        // Order of GPUs and of certificates matters.
        let swapped = vec![gpus[1].clone(), gpus[0].clone()];
        assert_ne!(gpus_digest(&swapped), gpus_digest(&gpus));
    }

    #[test]
    fn binding_is_found_with_the_nonce_of_its_prefix() {
        let gpus = vec![ev(b"report", &[b"leaf"])];
        let mut log = EventLog::default();
        log.extend(Event::digest_of(EventKind::RuntimeBinary, b"init"));
        log.extend(Event::with_data(EventKind::PublicKey, vec![1; 32]));
        let nonce = gpu_nonce_after(&log);
        log.extend(gpu_event(&gpus));
        assert!(log.check().is_ok());
        let b = find_binding(&log).unwrap();
        assert_eq!((b.index, b.nonce, b.after_public_key), (2, nonce, true));
        assert_eq!(b.event.digest, gpus_digest(&gpus));

        assert_eq!(find_binding(&EventLog::default()), Err(GpuBindingError::Missing));
        log.extend(gpu_event(&gpus));
        assert_eq!(find_binding(&log), Err(GpuBindingError::Repeated(2)));
        assert_eq!(GpuBindingError::Repeated(2).to_string(), "the event log has 2 GpuEvidence events, exactly one is expected");

        let mut early = EventLog::default();
        early.extend(gpu_event(&gpus));
        early.extend(Event::with_data(EventKind::PublicKey, vec![1; 32]));
        let b = find_binding(&early).unwrap();
        assert_eq!((b.index, b.after_public_key), (0, false));
        assert_eq!(b.nonce, gpu_nonce(&[0; 48]));
    }
}
