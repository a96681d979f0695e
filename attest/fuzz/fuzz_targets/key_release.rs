//! Fuzz the key-release message decoder (`POST /v1/key` body on the runtime, `POST
//! /v1/release` answer on the owner): `KeyRelease::from_bytes` must give Ok or a typed error,
//! never a panic. The decoder refuses non-canonical input, so a message that parses must
//! re-encode with `to_bytes` to exactly the input bytes (and parse again to the same value);
//! a refused input must not be the canonical encoding of anything it decodes to.
#![no_main]

use chrysalis_proto::keyrelease::{KEY_RELEASE_VERSION, KeyRelease, KeyReleaseError, MAX_KEY_RELEASE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match KeyRelease::from_bytes(data) {
        Ok(m) => {
            assert_eq!(m.version, KEY_RELEASE_VERSION);
            let again = m.to_bytes();
            assert_eq!(again, data, "accepted key release is not canonical");
            assert_eq!(KeyRelease::from_bytes(&again).as_ref(), Ok(&m));
            // The wrapped key survives the message unchanged.
            assert_eq!(KeyRelease::new(m.nonce, &m.wrapped()), m);
        }
        Err(e) => {
            let _ = e.to_string();
            if data.len() > MAX_KEY_RELEASE_LEN {
                assert_eq!(e, KeyReleaseError::TooLarge(data.len()));
            }
        }
    }
});
