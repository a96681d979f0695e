//! Fuzz the sealed-bundle parsers: `read_header` on arbitrary bytes (format v1 and v2) must
//! return Ok or a typed error, and an accepted header must re-encode to exactly its input
//! bytes; the v2 manifest parser (`Manifest::declared_len`, `Manifest::decode`, `spans`) the
//! same; the whole-bundle path (`unseal_with`, structural checks then AEAD) must never
//! panic either. The v2 stream behind the AEAD is reached by sealing the input itself as the
//! manifest bytes under a fixed key, so a key holder's hostile manifest is covered too.
#![no_main]

use std::num::NonZeroUsize;

use chrysalis_proto::seal::cipher::ChunkCipher;
use chrysalis_proto::seal::format::{FORMAT_V2, MANIFEST_LEN_PREFIX, MIN_CHUNK_SIZE};
use chrysalis_proto::seal::{BundleHeader, DataKey, HeaderV2, Manifest, UnsealOptions, read_header, unseal_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = DataKey::from_bytes([7; 32]);
    let opts =
        UnsealOptions { threads: NonZeroUsize::new(1), verify_sha256: true, max_plaintext: 1 << 20, allow_zero_padding: 0 };
    if let Ok(h) = read_header(data) {
        let again = h.header.to_sealed().expect("an accepted header re-encodes");
        assert_eq!(again.raw, h.raw, "accepted header is not canonical");
        assert_eq!(again.layout, h.layout);
        assert!(unseal_with(data, &key, &opts).is_err() || h.layout.stream_len <= 1 << 20);
    }

    // The input as a v2 plaintext stream (length prefix, manifest, files, padding), sealed
    // under the fixed key: every manifest check runs after a successful decryption.
    let _ = Manifest::declared_len(data, 1 << 20);
    if let Some(body) = data.get(MANIFEST_LEN_PREFIX..) {
        if let Ok(m) = Manifest::decode(body) {
            let enc = m.encode().expect("an accepted manifest re-encodes");
            assert_eq!(enc.get(MANIFEST_LEN_PREFIX..), Some(body), "accepted manifest is not canonical");
        }
    }
    let cs = MIN_CHUNK_SIZE as usize;
    let count = data.len().div_ceil(cs).clamp(1, 8);
    let Ok(h) = BundleHeader::V2(HeaderV2 {
        format_version: FORMAT_V2,
        chunk_size: MIN_CHUNK_SIZE,
        nonce_prefix: [1; 7],
        chunk_count: count as u32,
    })
    .to_sealed() else {
        return;
    };
    let cipher = ChunkCipher::new(&key, [1; 7], h.digest());
    let mut stream = data.get(..count * cs).unwrap_or(data).to_vec();
    stream.resize(count * cs, 0);
    let mut bundle = h.raw.clone();
    for (i, c) in stream.chunks_mut(cs).enumerate() {
        let tag = cipher.seal(i as u32, i + 1 == count, c).expect("seals");
        bundle.extend_from_slice(c);
        bundle.extend_from_slice(&tag);
    }
    if let Ok(u) = unseal_with(&bundle, &key, &opts) {
        assert!(u.total_bytes() <= (count * cs) as u64);
    }
});
