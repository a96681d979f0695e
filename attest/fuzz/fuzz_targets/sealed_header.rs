//! Fuzz the sealed-bundle parsers: `read_header` on arbitrary bytes must return Ok or a typed
//! error, and an accepted header must re-encode to exactly its input bytes; the whole-bundle
//! path (`unseal_with`, structural checks then AEAD) must never panic either.
#![no_main]

use std::num::NonZeroUsize;

use chrysalis_proto::seal::{DataKey, UnsealOptions, read_header, unseal_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = read_header(data) {
        let again = h.header.to_sealed().expect("an accepted header re-encodes");
        assert_eq!(again.raw, h.raw, "accepted header is not canonical");
        assert_eq!(again.layout, h.layout);
        let key = DataKey::from_bytes([7; 32]);
        let opts = UnsealOptions { threads: NonZeroUsize::new(1), verify_sha256: true, max_plaintext: 1 << 20, allow_zero_padding: 0 };
        assert!(unseal_with(data, &key, &opts).is_err() || h.layout.total_plaintext <= 1 << 20);
    }
});
