//! Fuzz the receipt decoders (what `attest verify-receipt` and the client read from the
//! `chrysalis-receipt` header or the final channel record): `Receipt::from_bytes` and
//! `Receipt::from_text_or_bytes` must give Ok or a typed error, never a panic. The binary
//! decoder refuses non-canonical input, so an accepted receipt must re-encode with `to_bytes`
//! to exactly the input, and the bytes its signature covers (`signed_bytes`) must be the
//! domain followed by the input without its signature; its base64 form (`to_base64`) must
//! decode back to it; checking its signature under a fixed key must not panic.
#![no_main]

use std::sync::OnceLock;

use chrysalis_proto::channel::receipt::{
    MAX_RECEIPT_LEN, RECEIPT_DOMAIN, RECEIPT_KEY_LEN, RECEIPT_VERSION, Receipt, ReceiptError, ReceiptSigner, SIGNATURE_LEN,
    signed_bytes,
};
use libfuzzer_sys::fuzz_target;

/// The public key of the receipt signer with seed `[1; 32]` (the one the seed receipt was
/// signed with, so the fuzzer starts from a receipt that verifies).
fn key() -> &'static [u8; RECEIPT_KEY_LEN] {
    static K: OnceLock<[u8; RECEIPT_KEY_LEN]> = OnceLock::new();
    K.get_or_init(|| ReceiptSigner::from_seed(&[1; 32]).expect("a fixed seed gives a key").public_key())
}

fuzz_target!(|data: &[u8]| {
    match Receipt::from_bytes(data) {
        Ok(r) => {
            assert_eq!(r.body.version, RECEIPT_VERSION);
            assert_eq!(r.to_bytes(), data, "accepted receipt is not canonical");
            assert_eq!(Receipt::from_bytes(&r.to_bytes()).as_ref(), Ok(&r));
            assert_eq!(Receipt::from_text_or_bytes(r.to_base64().as_bytes()).as_ref(), Ok(&r));
            let body_len = data.len() - SIGNATURE_LEN;
            let signed = signed_bytes(&r.body);
            assert_eq!(signed.get(..RECEIPT_DOMAIN.len()), Some(RECEIPT_DOMAIN));
            assert_eq!(signed.get(RECEIPT_DOMAIN.len()..), data.get(..body_len));
            assert_eq!(data.get(body_len..), Some(&r.signature[..]));
            let _ = r.verify_signature(key());
            assert!(r.verify_signature(&[0; 31]).is_err(), "a 31-byte key verified");
        }
        Err(e) => {
            let _ = e.to_string();
            if data.len() > MAX_RECEIPT_LEN {
                assert_eq!(e, ReceiptError::TooLarge(data.len()));
            }
        }
    }
    // The header/file form: base64 (whitespace around it ignored) or raw bytes.
    if let Ok(r) = Receipt::from_text_or_bytes(data) {
        let bytes = r.to_bytes();
        assert_eq!(Receipt::from_bytes(&bytes).as_ref(), Ok(&r));
    }
});
