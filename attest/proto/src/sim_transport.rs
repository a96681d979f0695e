//! How a guest asks the host-side simulated TEE for a report: a tiny framed protocol over a
//! virtio-serial port (`org.chrysalis.simtee`). The simulated PSP runs on the host, outside
//! the guest, so its signing key is never in guest memory — the closest a simulation gets
//! to firmware that the guest cannot read.
//!
//! ```text
//! request:  "CSIM" | version u8 (=1) | REPORT_DATA [64]
//! response: "CSIM" | status u8 (0 = ok) | length u32 LE | body (report, or UTF-8 error)
//! ```

use crate::wire::Reader;

/// Frame magic.
pub const MAGIC: &[u8; 4] = b"CSIM";
/// Protocol version.
pub const VERSION: u8 = 1;
/// Length of a request frame.
pub const REQUEST_LEN: usize = 4 + 1 + 64;
/// Largest response body accepted.
pub const MAX_RESPONSE: u32 = 64 * 1024;
/// Length of a response header.
pub const RESPONSE_HEADER_LEN: usize = 4 + 1 + 4;

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimTransportError {
    /// Wrong magic or version.
    #[error("simulated TEE frame: bad magic or version")]
    BadFrame,
    /// Body length over [`MAX_RESPONSE`].
    #[error("simulated TEE response of {0} bytes exceeds {MAX_RESPONSE}")]
    TooLarge(u32),
    /// The simulated PSP refused.
    #[error("simulated TEE refused: {0}")]
    Refused(String),
}

/// Encode a request for `report_data`.
pub fn encode_request(report_data: &[u8; 64]) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4] = VERSION;
    out[5..].copy_from_slice(report_data);
    out
}

/// Decode a request frame.
pub fn decode_request(frame: &[u8; REQUEST_LEN]) -> Result<[u8; 64], SimTransportError> {
    let mut r = Reader::new(frame);
    let (magic, version) = (r.array::<4>("magic"), r.u8());
    match (magic, version, r.array::<64>("report data")) {
        (Ok(m), Some(VERSION), Ok(rd)) if &m == MAGIC => Ok(rd),
        _ => Err(SimTransportError::BadFrame),
    }
}

/// Encode a response: `Ok(report)` or `Err(message)`.
pub fn encode_response(result: Result<&[u8], &str>) -> Vec<u8> {
    let (status, body) = match result {
        Ok(b) => (0u8, b),
        Err(m) => (1u8, m.as_bytes()),
    };
    let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN.saturating_add(body.len()));
    out.extend_from_slice(MAGIC);
    out.push(status);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Decode a response header: returns (ok, body length).
pub fn decode_response_header(h: &[u8; RESPONSE_HEADER_LEN]) -> Result<(bool, u32), SimTransportError> {
    let mut r = Reader::new(h);
    let (Ok(magic), Some(status), Some(len)) = (r.array::<4>("magic"), r.u8(), r.u32()) else {
        return Err(SimTransportError::BadFrame);
    };
    if &magic != MAGIC {
        return Err(SimTransportError::BadFrame);
    }
    if len > MAX_RESPONSE {
        return Err(SimTransportError::TooLarge(len));
    }
    Ok((status == 0, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_rejects() {
        let f = encode_request(&[7; 64]);
        assert_eq!(decode_request(&f), Ok([7; 64]));
        let mut bad = f;
        bad[0] = b'X';
        assert_eq!(decode_request(&bad), Err(SimTransportError::BadFrame));
        let mut bad = f;
        bad[4] = 2;
        assert_eq!(decode_request(&bad), Err(SimTransportError::BadFrame));
    }

    #[test]
    fn response_header() {
        let r = encode_response(Ok(b"report"));
        let h: [u8; RESPONSE_HEADER_LEN] = r[..RESPONSE_HEADER_LEN].try_into().unwrap();
        assert_eq!(decode_response_header(&h), Ok((true, 6)));
        let r = encode_response(Err("no"));
        let h: [u8; RESPONSE_HEADER_LEN] = r[..RESPONSE_HEADER_LEN].try_into().unwrap();
        assert_eq!(decode_response_header(&h), Ok((false, 2)));
        let mut h = h;
        h[5..9].copy_from_slice(&(MAX_RESPONSE + 1).to_le_bytes());
        assert_eq!(decode_response_header(&h), Err(SimTransportError::TooLarge(MAX_RESPONSE + 1)));
    }
}
