//! Fuzz the simulated-TEE transport decoders (`chrysalis_proto::sim_transport`): the host's
//! `decode_request` on a request frame and the guest runtime's `decode_response_header` on
//! what comes back over the virtio-serial port. Both must give Ok or a typed error, never a
//! panic. Round trips: an accepted request re-encodes with `encode_request` to the same
//! frame; an accepted response header (status 0, or status 1 with a UTF-8 body) followed by
//! its body re-encodes with `encode_response` to the same bytes; whatever `encode_request`
//! and `encode_response` write decodes back to what they were given.
#![no_main]

use chrysalis_proto::sim_transport::{
    MAGIC, MAX_RESPONSE, REQUEST_LEN, RESPONSE_HEADER_LEN, SimTransportError, VERSION, decode_request, decode_response_header,
    encode_request, encode_response,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Host side: a request frame.
    if let Some(frame) = data.first_chunk::<REQUEST_LEN>() {
        match decode_request(frame) {
            Ok(rd) => assert_eq!(&encode_request(&rd), frame, "request round trip"),
            Err(e) => {
                assert_eq!(e, SimTransportError::BadFrame);
                assert!(&frame[..4] != MAGIC || frame[4] != VERSION);
            }
        }
    }
    let mut rd = [0u8; 64];
    let n = data.len().min(64);
    rd[..n].copy_from_slice(&data[..n]);
    assert_eq!(decode_request(&encode_request(&rd)), Ok(rd));

    // Guest side: a response header, then its body.
    if let Some(h) = data.first_chunk::<RESPONSE_HEADER_LEN>() {
        match decode_response_header(h) {
            Ok((ok, len)) => {
                assert!(len <= MAX_RESPONSE);
                assert_eq!(ok, h[4] == 0);
                let end = RESPONSE_HEADER_LEN + len as usize;
                if let Some(body) = data.get(RESPONSE_HEADER_LEN..end) {
                    let framed = &data[..end];
                    if ok {
                        assert_eq!(encode_response(Ok(body)), framed, "ok response round trip");
                    } else if let (1, Ok(msg)) = (h[4], std::str::from_utf8(body)) {
                        assert_eq!(encode_response(Err(msg)), framed, "refusal round trip");
                    }
                }
            }
            Err(SimTransportError::BadFrame) => assert!(&h[..4] != MAGIC),
            Err(SimTransportError::TooLarge(len)) => {
                assert!(len > MAX_RESPONSE);
                assert_eq!(len.to_le_bytes(), h[5..9]);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // Writer to reader, with the input as the body.
    if data.len() <= MAX_RESPONSE as usize {
        let msg = String::from_utf8_lossy(data);
        for (r, ok, body) in [(encode_response(Ok(data)), true, data), (encode_response(Err(&msg)), false, msg.as_bytes())] {
            let h = r.first_chunk::<RESPONSE_HEADER_LEN>().expect("a response has a header");
            assert_eq!(decode_response_header(h), Ok((ok, body.len() as u32)));
            assert_eq!(&r[RESPONSE_HEADER_LEN..], body);
        }
    }
});
