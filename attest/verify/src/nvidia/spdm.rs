//! Wire format of the H100 attestation report: an SPDM 1.1 GET_MEASUREMENTS request
//! followed by the MEASUREMENTS response (DMTF DSP0274 1.1.x §10.11), including NVIDIA's
//! opaque-data TLVs. Only parses: nothing here is verified.
//!
//! Trusts nothing: every byte is attacker-controlled until [`super::verify_gpu`] has
//! checked the signature. Bytes are read only through the one total
//! [`chrysalis_proto::wire::Reader`]: any input gives a value or a typed error.

use chrysalis_proto::wire::{Reader, WireError};
use serde::Serialize;

/// SPDM version this parser accepts (1.1, what Hopper GPUs speak).
pub const SPDM_VERSION_11: u8 = 0x11;
/// GET_MEASUREMENTS request code.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// MEASUREMENTS response code.
pub const MEASUREMENTS: u8 = 0x60;
/// Length of the GET_MEASUREMENTS request with a nonce and slot id (SPDM 1.1).
pub const REQUEST_LEN: usize = 37;
/// Length of an ECDSA P-384 signature as `r || s`.
pub const SIGNATURE_LEN: usize = 96;
/// Largest report accepted (the real one is ~4 KiB; the 3-byte record length could claim 16 MiB).
pub const MAX_REPORT_LEN: usize = 64 * 1024;

/// Opaque-data field types (NVIDIA's `OPAQUE_FIELD_ID_*`, from nvtrust's verifier).
pub mod opaque_type {
    /// Driver version, NUL-terminated ASCII.
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU info.
    pub const GPU_INFO: u16 = 4;
    /// VBIOS version, 8 bytes little-endian.
    pub const VBIOS_VERSION: u16 = 6;
    /// NVDEC0 status: 0xAA enabled, 0x55 disabled.
    pub const NVDEC0_STATUS: u16 = 11;
    /// Measurement counts.
    pub const MSRSCNT: u16 = 12;
    /// Board id.
    pub const BOARD_ID: u16 = 14;
    /// Chip SKU, ASCII.
    pub const CHIP_SKU: u16 = 15;
    /// Chip SKU modifier, ASCII.
    pub const CHIP_SKU_MOD: u16 = 16;
    /// Project, ASCII.
    pub const PROJECT: u16 = 17;
    /// Project SKU, ASCII.
    pub const PROJECT_SKU: u16 = 18;
    /// Project SKU modifier, ASCII.
    pub const PROJECT_SKU_MOD: u16 = 19;
    /// FWID of the firmware that holds the attestation key (SHA-384).
    pub const FWID: u16 = 20;
    /// Protected PCIe status.
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
}

/// Why a report could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpdmError {
    /// Ran out of bytes.
    #[error("report truncated: {what} needs {need} bytes at offset {offset}, {have} left")]
    Truncated {
        /// Which field.
        what: &'static str,
        /// Offset of the field in the report.
        offset: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// Larger than [`MAX_REPORT_LEN`].
    #[error("report too large: {0} bytes, limit {MAX_REPORT_LEN}")]
    TooLarge(usize),
    /// Not SPDM 1.1.
    #[error("unsupported SPDM version {found:#04x} in the {msg} (expected 0x11)")]
    Version {
        /// Request or response.
        msg: &'static str,
        /// Version byte found.
        found: u8,
    },
    /// Wrong request/response code.
    #[error("unexpected SPDM code {found:#04x} in the {msg} (expected {expected:#04x})")]
    Code {
        /// Request or response.
        msg: &'static str,
        /// Code found.
        found: u8,
        /// Code expected.
        expected: u8,
    },
    /// The request did not ask for a signature over all measurements.
    #[error("request does not ask for signed measurements of all blocks (param1 {param1:#04x}, param2 {param2:#04x})")]
    RequestParams {
        /// Param1 (bit 0: signature requested).
        param1: u8,
        /// Param2 (0xFF: all measurements).
        param2: u8,
    },
    /// The response has no measurement blocks.
    #[error("response carries no measurement blocks")]
    NoBlocks,
    /// A block is not in the DMTF measurement format.
    #[error("measurement block {index} uses specification {spec:#04x}, not DMTF (0x01)")]
    NotDmtf {
        /// Block index.
        index: u8,
        /// MeasurementSpecification byte.
        spec: u8,
    },
    /// A block's inner DMTF length disagrees with its outer length.
    #[error("measurement block {index}: DMTF value size {inner} does not fit block size {outer}")]
    BlockSize {
        /// Block index.
        index: u8,
        /// Inner DMTF value size.
        inner: usize,
        /// Outer measurement size.
        outer: usize,
    },
    /// Two blocks with the same index.
    #[error("measurement block index {0} appears twice")]
    DuplicateBlock(u8),
    /// The record length is not what the blocks add up to.
    #[error("measurement record: {declared} bytes declared, blocks use {used}")]
    RecordLength {
        /// Declared record length.
        declared: usize,
        /// Bytes the blocks took.
        used: usize,
    },
    /// Opaque TLVs overran the opaque area.
    #[error("opaque data malformed at offset {0}")]
    Opaque(usize),
    /// An opaque field appears twice.
    #[error("opaque field type {0} appears twice")]
    DuplicateOpaque(u16),
    /// Bytes after the signature.
    #[error("report has {0} trailing bytes after the signature")]
    Trailing(usize),
    /// Any other malformation the wire reader reports (it only reports truncation for the
    /// reads made here, which becomes [`SpdmError::Truncated`]).
    #[error("report: {0}")]
    Wire(WireError),
}

impl From<WireError> for SpdmError {
    /// The shared reader's truncation keeps its field name and offset; anything else it
    /// reports is carried as is.
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated { what, need, have, offset } => SpdmError::Truncated { what, offset, need, have },
            other => SpdmError::Wire(other),
        }
    }
}

/// One DMTF measurement block of the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeasurementBlock {
    /// SPDM block index (1-based on Hopper: RIM index `i` is block `i + 1`).
    pub index: u8,
    /// DMTFSpecMeasurementValueType (bit 7: raw bit stream; low bits: kind).
    pub value_type: u8,
    /// The measurement value (a SHA-384 digest on Hopper).
    #[serde(with = "hex_bytes")]
    pub value: Vec<u8>,
}

/// One opaque-data TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueField {
    /// Field type (see [`opaque_type`]).
    pub kind: u16,
    /// Raw value.
    pub value: Vec<u8>,
}

/// A parsed (not yet verified) GET_MEASUREMENTS exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdmReport {
    /// The requester's nonce (what the verifier asked the GPU to sign).
    pub request_nonce: [u8; 32],
    /// Slot id of the certificate chain the GPU signed with.
    pub slot_id: u8,
    /// Response param1/param2.
    pub response_params: (u8, u8),
    /// Measurement blocks in report order.
    pub blocks: Vec<MeasurementBlock>,
    /// The raw measurement record (what [`super::GpuClaims::measurements_digest`] hashes).
    pub measurement_record: Vec<u8>,
    /// The responder's nonce.
    pub responder_nonce: [u8; 32],
    /// Opaque TLVs in report order.
    pub opaque: Vec<OpaqueField>,
    /// `request || response-without-signature`: the bytes the signature covers.
    pub signed: Vec<u8>,
    /// ECDSA P-384 signature `r || s`.
    pub signature: [u8; SIGNATURE_LEN],
}

impl SpdmReport {
    /// Parse `request || response`, rejecting anything that is not exactly one signed
    /// SPDM 1.1 GET_MEASUREMENTS exchange.
    pub fn parse(report: &[u8]) -> Result<Self, SpdmError> {
        if report.len() > MAX_REPORT_LEN {
            return Err(SpdmError::TooLarge(report.len()));
        }
        let mut r = Reader::new(report);
        // Request.
        let version = r.read_u8("request version")?;
        if version != SPDM_VERSION_11 {
            return Err(SpdmError::Version { msg: "request", found: version });
        }
        let code = r.read_u8("request code")?;
        if code != GET_MEASUREMENTS {
            return Err(SpdmError::Code { msg: "request", found: code, expected: GET_MEASUREMENTS });
        }
        let param1 = r.read_u8("request param1")?;
        let param2 = r.read_u8("request param2")?;
        if param1 & 1 != 1 || param2 != 0xFF {
            return Err(SpdmError::RequestParams { param1, param2 });
        }
        let request_nonce = r.array::<32>("request nonce")?;
        let slot_id = r.read_u8("request slot id")?;

        // Response.
        let version = r.read_u8("response version")?;
        if version != SPDM_VERSION_11 {
            return Err(SpdmError::Version { msg: "response", found: version });
        }
        let code = r.read_u8("response code")?;
        if code != MEASUREMENTS {
            return Err(SpdmError::Code { msg: "response", found: code, expected: MEASUREMENTS });
        }
        let p1 = r.read_u8("response param1")?;
        let p2 = r.read_u8("response param2")?;
        let num_blocks = r.read_u8("number of blocks")?;
        if num_blocks == 0 {
            return Err(SpdmError::NoBlocks);
        }
        let record_len = r.read_u24("measurement record length")?;
        let record = r.bytes(usize::try_from(record_len).unwrap_or(usize::MAX), "measurement record")?;
        let blocks = parse_record(record, num_blocks)?;
        let responder_nonce = r.array::<32>("responder nonce")?;
        let opaque_len = usize::from(r.read_u16("opaque length")?);
        let opaque_bytes = r.bytes(opaque_len, "opaque data")?;
        let opaque = parse_opaque(opaque_bytes)?;
        let signed_len = r.used();
        let signature = r.array::<SIGNATURE_LEN>("signature")?;
        if r.any_left() {
            return Err(SpdmError::Trailing(r.left()));
        }
        let signed = report.get(..signed_len).unwrap_or_default().to_vec();
        Ok(SpdmReport {
            request_nonce,
            slot_id,
            response_params: (p1, p2),
            blocks,
            measurement_record: record.to_vec(),
            responder_nonce,
            opaque,
            signed,
            signature,
        })
    }

    /// The value of an opaque field, if present.
    pub fn opaque(&self, kind: u16) -> Option<&[u8]> {
        self.opaque.iter().find(|f| f.kind == kind).map(|f| f.value.as_slice())
    }

    /// The measurement block with SPDM index `index`.
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }

    /// Driver version string (opaque field 3), NULs stripped.
    pub fn driver_version(&self) -> Option<String> {
        self.opaque(opaque_type::DRIVER_VERSION).map(ascii_field)
    }

    /// VBIOS version as NVIDIA prints it, e.g. `96.00.9f.00.01` (opaque field 6).
    pub fn vbios_version(&self) -> Option<String> {
        self.opaque(opaque_type::VBIOS_VERSION).and_then(format_vbios_version)
    }
}

/// NVIDIA's VBIOS version formatting (nvtrust `format_vbios_version`): the 8-byte
/// little-endian value `0x00000001_96009f00` prints as `96.00.9f.00.01`.
pub fn format_vbios_version(raw: &[u8]) -> Option<String> {
    // Low word 0x96009f00 printed big-endian, then the low byte of the high word (0x01).
    let [l0, l1, l2, l3, h0, _, _, _]: [u8; 8] = raw.try_into().ok()?;
    Some(format!("{l3:02x}.{l2:02x}.{l1:02x}.{l0:02x}.{h0:02x}"))
}

/// ASCII opaque field with trailing NULs and spaces removed; non-ASCII bytes become `?`.
pub fn ascii_field(raw: &[u8]) -> String {
    let s: String = raw
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| if b.is_ascii_graphic() || *b == b' ' { char::from(*b) } else { '?' })
        .collect();
    s.trim().to_string()
}

fn parse_record(record: &[u8], num_blocks: u8) -> Result<Vec<MeasurementBlock>, SpdmError> {
    let mut r = Reader::new(record);
    let mut blocks: Vec<MeasurementBlock> = Vec::with_capacity(usize::from(num_blocks));
    for _ in 0..num_blocks {
        let index = r.read_u8("block index")?;
        let spec = r.read_u8("block measurement specification")?;
        if spec != 1 {
            return Err(SpdmError::NotDmtf { index, spec });
        }
        let size = usize::from(r.read_u16("block measurement size")?);
        let mut b = r.sub_named(size, "block measurement")?;
        let value_type = b.read_u8("DMTF value type")?;
        let inner = usize::from(b.read_u16("DMTF value size")?);
        if inner != b.left() {
            return Err(SpdmError::BlockSize { index, inner, outer: size });
        }
        let value = b.bytes(inner, "DMTF value")?.to_vec();
        if blocks.iter().any(|x| x.index == index) {
            return Err(SpdmError::DuplicateBlock(index));
        }
        blocks.push(MeasurementBlock { index, value_type, value });
    }
    if r.any_left() {
        return Err(SpdmError::RecordLength { declared: record.len(), used: r.used() });
    }
    Ok(blocks)
}

fn parse_opaque(data: &[u8]) -> Result<Vec<OpaqueField>, SpdmError> {
    let mut r = Reader::new(data);
    let mut out: Vec<OpaqueField> = Vec::new();
    while r.any_left() {
        let at = r.used();
        let kind = r.read_u16("opaque type").map_err(|_| SpdmError::Opaque(at))?;
        let len = usize::from(r.read_u16("opaque size").map_err(|_| SpdmError::Opaque(at))?);
        let value = r.bytes(len, "opaque value").map_err(|_| SpdmError::Opaque(at))?.to_vec();
        if out.iter().any(|f| f.kind == kind) {
            return Err(SpdmError::DuplicateOpaque(kind));
        }
        out.push(OpaqueField { kind, value });
    }
    Ok(out)
}

pub(crate) mod hex_bytes {
    //! Serialise byte vectors as lower-case hex strings in JSON output.
    pub(crate) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed report: one 48-byte block, one opaque field.
    pub(crate) fn tiny() -> Vec<u8> {
        let mut v = vec![0x11, 0xE0, 0x01, 0xFF];
        v.extend([7u8; 32]);
        v.push(0);
        v.extend([0x11, 0x60, 0, 0, 1]);
        let block_len = 4 + 3 + 48;
        v.extend([(block_len & 0xff) as u8, 0, 0]);
        v.extend([1, 1, 51, 0, 1, 48, 0]);
        v.extend([0xAB; 48]);
        v.extend([9u8; 32]);
        v.extend([14, 0]);
        v.extend([3, 0, 10, 0]);
        v.extend(b"550.90.07\0");
        v.extend([0x5A; SIGNATURE_LEN]);
        v
    }

    #[test]
    fn parses_tiny_report() {
        let r = SpdmReport::parse(&tiny()).unwrap();
        assert_eq!(r.request_nonce, [7; 32]);
        assert_eq!(r.blocks.len(), 1);
        assert_eq!(r.block(1).map(|b| b.value.len()), Some(48));
        assert_eq!(r.driver_version().as_deref(), Some("550.90.07"));
        assert_eq!(r.signed.len(), tiny().len() - SIGNATURE_LEN);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let t = tiny();
        for n in 0..t.len() {
            assert!(SpdmReport::parse(&t[..n]).is_err(), "prefix {n} parsed");
        }
    }

    #[test]
    fn rejects_trailing_and_bad_codes() {
        let mut t = tiny();
        t.push(0);
        assert_eq!(SpdmReport::parse(&t), Err(SpdmError::Trailing(1)));
        let mut t = tiny();
        t[1] = 0xE1;
        assert!(matches!(SpdmReport::parse(&t), Err(SpdmError::Code { msg: "request", .. })));
        let mut t = tiny();
        t[3] = 0x01;
        assert!(matches!(SpdmReport::parse(&t), Err(SpdmError::RequestParams { .. })));
    }

    #[test]
    fn vbios_format_matches_nvtrust() {
        let raw = hex::decode("009f009601000000").unwrap();
        assert_eq!(format_vbios_version(&raw).as_deref(), Some("96.00.9f.00.01"));
        assert_eq!(format_vbios_version(&raw[..7]), None);
    }

    #[test]
    fn error_messages_carry_facts() {
        let e = SpdmReport::parse(&[0x11, 0xE0]).unwrap_err();
        assert_eq!(e.to_string(), "report truncated: request param1 needs 1 bytes at offset 2, 0 left");
    }
}
