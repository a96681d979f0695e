//! Intel TDX DCAP quote (version 4 and 5) as it comes out of the quoting enclave: header,
//! TD report body (TDX 1.0 "TD10" or TDX 1.5 "TD15"), and the ECDSA-256 signature data with
//! the QE report and the PCK certificate chain. Parsing only; `crate::tdx` verifies.
//!
//! Layout: Intel "TDX DCAP Quote Generation Library and Quote Verification Library API",
//! Appendix A (Quote Format): A.3 (v4), A.4 (v5); SGX REPORT body from the Intel SDM vol. 3D
//! §38.15 (REPORT). Input: untrusted bytes.

use super::reader::{Reader, WireError};

/// Quote header length.
pub const HEADER_LEN: usize = 48;
/// TDX 1.0 TD report body length.
pub const TD10_BODY_LEN: usize = 584;
/// TDX 1.5 TD report body length.
pub const TD15_BODY_LEN: usize = 648;
/// SGX REPORT body length (the QE report).
pub const QE_REPORT_LEN: usize = 384;
/// TEE type of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Attestation key type ECDSA-256-with-P-256.
pub const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// Intel's QE vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] =
    [0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07];
/// Certification data type 6: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;
/// Certification data type 5: PCK certificate chain (PEM, leaf first).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Largest signature data accepted (a PEM chain is ~4 KiB; this bounds allocations).
pub const MAX_SIGNATURE_DATA_LEN: usize = 64 * 1024;

/// Quote header (A.3.1, 48 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteHeader {
    /// 0x00, 2 B: VERSION (4 or 5).
    pub version: u16,
    /// 0x02, 2 B: ATTESTATION_KEY_TYPE (2 = ECDSA-256-with-P-256).
    pub att_key_type: u16,
    /// 0x04, 4 B: TEE_TYPE (0x81 = TDX).
    pub tee_type: u32,
    /// 0x08, 2 B: RESERVED (QE_SVN in v3 quotes).
    pub qe_svn: u16,
    /// 0x0A, 2 B: RESERVED (PCE_SVN in v3 quotes).
    pub pce_svn: u16,
    /// 0x0C, 16 B: QE_VENDOR_ID.
    pub qe_vendor_id: [u8; 16],
    /// 0x1C, 20 B: USER_DATA (first 16 bytes: platform identifier from the QE).
    pub user_data: [u8; 20],
}

impl QuoteHeader {
    /// Header length.
    pub const SIZE: usize = HEADER_LEN;

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(QuoteHeader {
            version: r.read_u16("quote header")?,
            att_key_type: r.read_u16("quote header")?,
            tee_type: r.read_u32("quote header")?,
            qe_svn: r.read_u16("quote header")?,
            pce_svn: r.read_u16("quote header")?,
            qe_vendor_id: r.array("quote header")?,
            user_data: r.array("quote header")?,
        })
    }
}

/// TD_ATTRIBUTES (TDX ABI spec, TDINFO_STRUCT): a 64-bit little-endian bit field.
///
/// | bit | name |
/// |---|---|
/// | 0 | DEBUG (TUD): the host can read and write TD memory and state |
/// | 1..=7 | TUD reserved / profiling |
/// | 28 | SEPT_VE_DISABLE |
/// | 29 | MIGRATABLE |
/// | 30 | PKS |
/// | 31 | KL (key locker) |
/// | 63 | PERFMON |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdAttributes(pub [u8; 8]);

impl TdAttributes {
    /// The attributes as a 64-bit word.
    pub fn bits(self) -> u64 {
        u64::from_le_bytes(self.0)
    }
    /// DEBUG: the TD's memory and CPU state are visible to the host. Never for production.
    pub fn debug(self) -> bool {
        self.bits() & 1 != 0
    }
    /// SEPT_VE_DISABLE: EPT violations are not turned into #VE inside the TD.
    pub fn sept_ve_disable(self) -> bool {
        self.bits() & (1 << 28) != 0
    }
    /// MIGRATABLE: the TD may be migrated (its keys leave the platform).
    pub fn migratable(self) -> bool {
        self.bits() & (1 << 29) != 0
    }
    /// PKS: supervisor protection keys enabled.
    pub fn pks(self) -> bool {
        self.bits() & (1 << 30) != 0
    }
    /// KL: key locker enabled.
    pub fn key_locker(self) -> bool {
        self.bits() & (1 << 31) != 0
    }
    /// PERFMON: the TD may use performance monitoring.
    pub fn perfmon(self) -> bool {
        self.bits() & (1 << 63) != 0
    }
}

/// Fields added by the TDX 1.5 body (A.4.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Td15Extension {
    /// 0x248, 16 B: TEE_TCB_SVN_2 (current TCB after a TD-preserving module update).
    pub tee_tcb_svn2: [u8; 16],
    /// 0x258, 48 B: MRSERVICETD.
    pub mr_servicetd: [u8; 48],
}

/// TD report body (A.3.2 TD Quote Body, 584 bytes; A.4.4 TD 1.5 body, 648 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReportBody {
    /// 0x000, 16 B: TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// 0x010, 48 B: MRSEAM.
    pub mr_seam: [u8; 48],
    /// 0x040, 48 B: MRSIGNERSEAM (zero for Intel's module).
    pub mr_signer_seam: [u8; 48],
    /// 0x070, 8 B: SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// 0x078, 8 B: TDATTRIBUTES.
    pub td_attributes: TdAttributes,
    /// 0x080, 8 B: XFAM.
    pub xfam: [u8; 8],
    /// 0x088, 48 B: MRTD.
    pub mr_td: [u8; 48],
    /// 0x0B8, 48 B: MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// 0x0E8, 48 B: MROWNER.
    pub mr_owner: [u8; 48],
    /// 0x118, 48 B: MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// 0x148, 4 × 48 B: RTMR0..RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// 0x208, 64 B: REPORTDATA.
    pub report_data: [u8; 64],
    /// TDX 1.5 fields (v5 quotes with body type 3).
    pub td15: Option<Td15Extension>,
}

impl TdReportBody {
    fn read(r: &mut Reader<'_>, td15: bool) -> Result<Self, WireError> {
        const W: &str = "td report body";
        let mut body = TdReportBody {
            tee_tcb_svn: r.array(W)?,
            mr_seam: r.array(W)?,
            mr_signer_seam: r.array(W)?,
            seam_attributes: r.array(W)?,
            td_attributes: TdAttributes(r.array(W)?),
            xfam: r.array(W)?,
            mr_td: r.array(W)?,
            mr_config_id: r.array(W)?,
            mr_owner: r.array(W)?,
            mr_owner_config: r.array(W)?,
            rtmr: [r.array(W)?, r.array(W)?, r.array(W)?, r.array(W)?],
            report_data: r.array(W)?,
            td15: None,
        };
        if td15 {
            body.td15 = Some(Td15Extension { tee_tcb_svn2: r.array(W)?, mr_servicetd: r.array(W)? });
        }
        Ok(body)
    }
}

/// SGX REPORT body of the quoting enclave (384 bytes), signed by the PCK key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QeReport {
    /// 0x000, 16 B: CPUSVN.
    pub cpu_svn: [u8; 16],
    /// 0x010, 4 B: MISCSELECT.
    pub misc_select: u32,
    /// 0x030, 16 B: ATTRIBUTES.
    pub attributes: [u8; 16],
    /// 0x040, 32 B: MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// 0x080, 32 B: MRSIGNER.
    pub mr_signer: [u8; 32],
    /// 0x100, 2 B: ISVPRODID.
    pub isv_prod_id: u16,
    /// 0x102, 2 B: ISVSVN.
    pub isv_svn: u16,
    /// 0x140, 64 B: REPORTDATA (SHA-256(attestation key || QE auth data) || 32 zero bytes).
    pub report_data: [u8; 64],
}

impl QeReport {
    /// Report body length.
    pub const SIZE: usize = QE_REPORT_LEN;

    /// Parse the 384-byte REPORT body; reserved fields must be zero.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        const W: &str = "qe report";
        let mut r = Reader::new(bytes);
        let cpu_svn = r.array(W)?;
        let misc_select = r.read_u32(W)?;
        reserved(&mut r, 28, "qe report reserved1")?;
        let attributes = r.array(W)?;
        let mr_enclave = r.array(W)?;
        reserved(&mut r, 32, "qe report reserved2")?;
        let mr_signer = r.array(W)?;
        reserved(&mut r, 96, "qe report reserved3")?;
        let isv_prod_id = r.read_u16(W)?;
        let isv_svn = r.read_u16(W)?;
        reserved(&mut r, 60, "qe report reserved4")?;
        let report_data = r.array(W)?;
        r.expect_empty(W)?;
        Ok(QeReport { cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data })
    }
}

fn reserved(r: &mut Reader<'_>, n: usize, what: &'static str) -> Result<(), WireError> {
    let offset = r.used();
    let b = r.bytes(n, what)?;
    match b.iter().position(|&x| x != 0) {
        None => Ok(()),
        Some(i) => Err(WireError::NonZero { what, offset: offset.saturating_add(i) }),
    }
}

/// A parsed TDX quote. Byte ranges refer to the input given to [`TdxQuote::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxQuote {
    /// The header.
    pub header: QuoteHeader,
    /// v5 only: BODY_TYPE (2 = TD10, 3 = TD15).
    pub body_type: Option<u16>,
    /// The TD report body.
    pub body: TdReportBody,
    /// ECDSA signature (r || s, big-endian) over header and body by the attestation key.
    pub signature: [u8; 64],
    /// The attestation public key (x || y, big-endian P-256 point).
    pub attestation_key: [u8; 64],
    /// The raw QE report (the bytes the PCK key signed).
    pub qe_report_bytes: Vec<u8>,
    /// The parsed QE report.
    pub qe_report: QeReport,
    /// ECDSA signature over `qe_report_bytes` by the PCK key (r || s).
    pub qe_report_signature: [u8; 64],
    /// QE authentication data (hashed into the QE report's REPORTDATA).
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain as carried in the quote (PEM, leaf first).
    pub pck_chain_pem: Vec<u8>,
    /// Length of the signed part: header (+ v5 type/size) + body.
    pub signed_len: usize,
    /// Zero bytes after the signature data (some producers pad quotes to a fixed size).
    pub padding: usize,
}

impl TdxQuote {
    /// Parse a v4 or v5 TDX quote. Trailing bytes are accepted only if they are zero
    /// padding (they are outside the signature either way).
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let header = QuoteHeader::read(&mut r)?;
        if header.tee_type != TEE_TYPE_TDX {
            return Err(WireError::Unsupported { what: "tee type", value: header.tee_type.into() });
        }
        if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256 {
            return Err(WireError::Unsupported { what: "attestation key type", value: header.att_key_type.into() });
        }
        let (body_type, body) = match header.version {
            4 => {
                let mut b = r.sub_named(TD10_BODY_LEN, "td report body")?;
                (None, TdReportBody::read(&mut b, false)?)
            }
            5 => {
                let body_type = r.read_u16("quote body type")?;
                let body_size = r.read_u32("quote body size")?;
                let (expected, td15) = match body_type {
                    2 => (TD10_BODY_LEN, false),
                    3 => (TD15_BODY_LEN, true),
                    other => return Err(WireError::Unsupported { what: "quote body type", value: other.into() }),
                };
                if usize::try_from(body_size).ok() != Some(expected) {
                    return Err(WireError::Mismatch {
                        what: "quote body size",
                        expected: expected as u64,
                        got: body_size.into(),
                    });
                }
                let mut b = r.sub_named(expected, "td report body")?;
                let body = TdReportBody::read(&mut b, td15)?;
                b.expect_empty("td report body")?;
                (Some(body_type), body)
            }
            v => return Err(WireError::Unsupported { what: "quote version", value: v.into() }),
        };
        let signed_len = r.used();

        let sig_len = r.read_u32("signature data length")?;
        let sig_len = usize::try_from(sig_len).unwrap_or(usize::MAX);
        if sig_len > MAX_SIGNATURE_DATA_LEN {
            return Err(WireError::Mismatch {
                what: "signature data length (maximum)",
                expected: MAX_SIGNATURE_DATA_LEN as u64,
                got: sig_len as u64,
            });
        }
        let mut s = r.sub_named(sig_len, "signature data")?;
        let signature = s.array("quote signature")?;
        let attestation_key = s.array("attestation key")?;
        let cert_type = s.read_u16("certification data type")?;
        if cert_type != CERT_TYPE_QE_REPORT {
            return Err(WireError::Unsupported { what: "certification data type", value: cert_type.into() });
        }
        let cert_len = s.read_u32("certification data size")?;
        let mut c = s.sub_named(usize::try_from(cert_len).unwrap_or(usize::MAX), "certification data")?;
        s.expect_empty("signature data")?;

        let qe_report_bytes = c.bytes(QE_REPORT_LEN, "qe report")?.to_vec();
        let qe_report = QeReport::parse(&qe_report_bytes)?;
        let qe_report_signature = c.array("qe report signature")?;
        let auth_len = c.read_u16("qe auth data size")?;
        let qe_auth_data = c.bytes(auth_len.into(), "qe auth data")?.to_vec();
        let inner_type = c.read_u16("pck certification data type")?;
        if inner_type != CERT_TYPE_PCK_CHAIN {
            return Err(WireError::Unsupported { what: "pck certification data type", value: inner_type.into() });
        }
        let inner_len = c.read_u32("pck certification data size")?;
        let pck_chain_pem = c.bytes(usize::try_from(inner_len).unwrap_or(usize::MAX), "pck certificate chain")?.to_vec();
        c.expect_empty("certification data")?;

        let padding_start = r.used();
        let rest = r.rest();
        if let Some(i) = rest.iter().position(|&b| b != 0) {
            return Err(WireError::NonZero { what: "quote padding", offset: padding_start.saturating_add(i) });
        }
        Ok(TdxQuote {
            header,
            body_type,
            body,
            signature,
            attestation_key,
            qe_report_bytes,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
            signed_len,
            padding: rest.len(),
        })
    }

    /// The bytes the attestation key signed, taken from the original input (not re-encoded).
    pub fn signed_bytes<'a>(&self, original: &'a [u8]) -> Option<&'a [u8]> {
        original.get(..self.signed_len)
    }
}

/// A synthetic, well-formed v4 quote for parser and verifier tests (feature `test-support`,
/// enabled only by dev-dependencies; never part of the image or the CLI).
#[cfg(any(test, feature = "test-support"))]
pub mod tests_support {
    use super::*;

    /// A structurally valid v4 quote with zeroed crypto material.
    pub fn synthetic_v4() -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&4u16.to_le_bytes());
        q.extend_from_slice(&2u16.to_le_bytes());
        q.extend_from_slice(&0x81u32.to_le_bytes());
        q.extend_from_slice(&[0; 4]);
        q.extend_from_slice(&INTEL_QE_VENDOR_ID);
        q.extend_from_slice(&[0; 20]);
        q.extend_from_slice(&[0xAB; TD10_BODY_LEN]);
        let chain = b"-----BEGIN CERTIFICATE-----\n";
        let mut cert = Vec::new();
        cert.extend_from_slice(&[0; QE_REPORT_LEN]);
        cert.extend_from_slice(&[0; 64]);
        cert.extend_from_slice(&32u16.to_le_bytes());
        cert.extend_from_slice(&[7; 32]);
        cert.extend_from_slice(&5u16.to_le_bytes());
        cert.extend_from_slice(&u32::try_from(chain.len()).unwrap_or(u32::MAX).to_le_bytes());
        cert.extend_from_slice(chain);
        let mut sig = Vec::new();
        sig.extend_from_slice(&[1; 64]);
        sig.extend_from_slice(&[2; 64]);
        sig.extend_from_slice(&6u16.to_le_bytes());
        sig.extend_from_slice(&u32::try_from(cert.len()).unwrap_or(u32::MAX).to_le_bytes());
        sig.extend_from_slice(&cert);
        q.extend_from_slice(&u32::try_from(sig.len()).unwrap_or(u32::MAX).to_le_bytes());
        q.extend_from_slice(&sig);
        q
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::synthetic_v4;
    use super::*;

    #[test]
    fn parses_synthetic_and_rejects_every_truncation() {
        let q = synthetic_v4();
        let parsed = TdxQuote::parse(&q);
        assert!(parsed.is_ok(), "{parsed:?}");
        let parsed = parsed.unwrap_or_else(|_| unreachable!());
        assert_eq!(parsed.signed_len, HEADER_LEN + TD10_BODY_LEN);
        assert_eq!(parsed.qe_auth_data, vec![7; 32]);
        assert_eq!(parsed.body.td_attributes.0, [0xAB; 8]);
        for n in 0..q.len() {
            assert!(TdxQuote::parse(&q[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn padding_must_be_zero() {
        let mut q = synthetic_v4();
        q.extend_from_slice(&[0; 70]);
        assert_eq!(TdxQuote::parse(&q).map(|p| p.padding), Ok(70));
        let n = q.len();
        q[n - 3] = 1;
        assert_eq!(TdxQuote::parse(&q), Err(WireError::NonZero { what: "quote padding", offset: n - 3 }));
    }

    #[test]
    fn rejects_unsupported_header_values() {
        let mut q = synthetic_v4();
        q[0] = 3;
        assert_eq!(TdxQuote::parse(&q), Err(WireError::Unsupported { what: "quote version", value: 3 }));
        let mut q = synthetic_v4();
        q[4] = 0;
        assert_eq!(TdxQuote::parse(&q), Err(WireError::Unsupported { what: "tee type", value: 0 }));
        let mut q = synthetic_v4();
        q[2] = 3;
        assert_eq!(TdxQuote::parse(&q), Err(WireError::Unsupported { what: "attestation key type", value: 3 }));
    }

    #[test]
    fn td_attribute_bits() {
        let a = TdAttributes([0x01, 0, 0, 0x10, 0, 0, 0, 0x80]);
        assert!(a.debug() && a.sept_ve_disable() && a.perfmon());
        assert!(!a.migratable() && !a.pks() && !a.key_locker());
    }
}
