//! The one place that knows how a body chunk is encrypted: AES-256-GCM with the STREAM
//! nonce construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption
//! and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015) and the header digest as associated
//! data. Swapping the AES-GCM implementation means changing only this file.
//!
//! ```text
//! nonce(i) = nonce_prefix (7 B) || u32_be(i) (4 B) || last (1 B: 0x01 on the final chunk, else 0x00)
//! aad      = SHA-384(preamble || postcard header)                                 (48 B)
//! chunk_i  = AES-256-GCM(data_key, nonce(i), aad, plaintext_i) = ciphertext_i || tag_i
//! ```
//!
//! This is byte-for-byte the nonce of RustCrypto's `aead_stream::StreamBE32` (a test checks
//! it). The implementation is `ring` (BoringSSL's AES-NI/VAES + CLMUL assembly), chosen
//! because it measured ~2.4x faster than RustCrypto `aes-gcm` on the build machine
//! (`SEALED_FORMAT.md`, "AEAD implementation"). Known gap: ring does not zeroize its expanded
//! AES key schedule on drop; the 32-byte data key itself is held in `Zeroizing`.
//!
//! Trust: decryption failures are one opaque error; callers add only the chunk index.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use super::format::{NONCE_PREFIX_LEN, TAG_LEN};
use super::key::DataKey;
use crate::eventlog::Digest384;

/// The 12-byte nonce of chunk `index`; `last` is set only on the bundle's final chunk so that
/// a body cut at a chunk boundary cannot pass as complete.
pub fn chunk_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    let (p, rest) = n.split_at_mut(NONCE_PREFIX_LEN);
    p.copy_from_slice(prefix);
    let (ctr, flag) = rest.split_at_mut(4);
    ctr.copy_from_slice(&index.to_be_bytes());
    if let Some(f) = flag.first_mut() {
        *f = u8::from(last);
    }
    n
}

/// A chunk failed authentication (wrong key, wrong header, wrong position or altered bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAuthError;

/// Keyed AES-256-GCM for one bundle (key, nonce prefix and associated data fixed).
pub struct ChunkCipher {
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    aad: Digest384,
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCipher").field("key", &"<redacted>").finish_non_exhaustive()
    }
}

impl ChunkCipher {
    /// Key the cipher for the bundle whose header digest is `aad`.
    pub fn new(key: &DataKey, prefix: [u8; NONCE_PREFIX_LEN], aad: Digest384) -> Self {
        // A 32-byte key always fits AES-256; ring's only failure here is a wrong length,
        // which the type rules out, so the fallback is unreachable.
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes()).unwrap_or_else(|_| unreachable_key_length());
        ChunkCipher { key: LessSafeKey::new(unbound), prefix, aad }
    }

    /// Encrypt `buf` in place as chunk `index`; returns the tag.
    pub fn seal(&self, index: u32, last: bool, buf: &mut [u8]) -> Result<[u8; TAG_LEN], ChunkAuthError> {
        let nonce = Nonce::assume_unique_for_key(chunk_nonce(&self.prefix, index, last));
        let tag = self.key.seal_in_place_separate_tag(nonce, Aad::from(&self.aad), buf).map_err(|_| ChunkAuthError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt `buf` in place as chunk `index`, checking `tag`. On failure `buf` holds no
    /// plaintext worth keeping and the caller discards everything.
    pub fn open(&self, index: u32, last: bool, buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), ChunkAuthError> {
        let nonce = Nonce::assume_unique_for_key(chunk_nonce(&self.prefix, index, last));
        self.key
            .open_in_place_separate_tag(nonce, Aad::from(&self.aad), Tag::from(*tag), buf, 0..)
            .map(|_| ())
            .map_err(|_| ChunkAuthError)
    }
}

#[cold]
fn unreachable_key_length() -> UnboundKey {
    // AES_256_GCM.key_len() == 32 == DataKey length: ring cannot reject it.
    unreachable!("ring rejected a 32-byte AES-256 key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
    use aes_gcm::{Aes256Gcm, KeyInit};

    #[test]
    fn nonce_layout() {
        let n = chunk_nonce(&[1, 2, 3, 4, 5, 6, 7], 0x0a0b0c0d, true);
        assert_eq!(n, [1, 2, 3, 4, 5, 6, 7, 0x0a, 0x0b, 0x0c, 0x0d, 1]);
        assert_eq!(chunk_nonce(&[0; 7], 1, false)[11], 0);
    }

    /// Our chunks are exactly RustCrypto `aead_stream::StreamBE32` over AES-256-GCM.
    #[test]
    fn matches_rustcrypto_stream_be32() {
        let key = DataKey::from_bytes([0x42; 32]);
        let prefix = [7u8; 7];
        let aad = [3u8; 48];
        let c = ChunkCipher::new(&key, prefix, aad);
        let reference = StreamBE32::from_aead(Aes256Gcm::new(key.as_bytes().into()), &prefix.into());
        for (index, last) in [(0u32, false), (1, false), (77, true)] {
            let mut ours = vec![0x5au8; 1000];
            let tag = c.seal(index, last, &mut ours).expect("seals");
            ours.extend_from_slice(&tag);
            let mut theirs = vec![0x5au8; 1000];
            reference.encrypt_in_place(index, last, &aad, &mut theirs).expect("seals");
            assert_eq!(ours, theirs, "chunk {index}");
        }
    }

    #[test]
    fn position_flag_and_aad_are_bound() {
        let key = DataKey::from_bytes([1; 32]);
        let c = ChunkCipher::new(&key, [0; 7], [0; 48]);
        let mut buf = b"weights".to_vec();
        let tag = c.seal(5, false, &mut buf).expect("seals");
        let ct = buf.clone();
        assert_eq!(c.open(5, true, &mut buf.clone(), &tag), Err(ChunkAuthError));
        assert_eq!(c.open(6, false, &mut buf.clone(), &tag), Err(ChunkAuthError));
        let other_aad = ChunkCipher::new(&key, [0; 7], [1; 48]);
        assert_eq!(other_aad.open(5, false, &mut buf.clone(), &tag), Err(ChunkAuthError));
        let other_prefix = ChunkCipher::new(&key, [1; 7], [0; 48]);
        assert_eq!(other_prefix.open(5, false, &mut buf.clone(), &tag), Err(ChunkAuthError));
        assert_eq!(c.open(5, false, &mut buf, &tag), Ok(()));
        assert_eq!(buf, b"weights");
        assert_ne!(ct, buf);
    }
}
