//! The SNP certificate table the host hands out with an extended report (configfs-tsm
//! `auxblob`, or the certificate buffer of SNP_GET_EXT_REPORT): GUID-tagged entries
//! pointing into the same buffer (GHCB spec 2.x, "SNP Extended Guest Request", table 8).
//! Input: untrusted bytes from the host. The certificates themselves are only passed on;
//! the verifier checks them against its pinned AMD roots.

use crate::wire::reader::Reader;

/// At most this many entries (a real table has 3–5).
const MAX_ENTRIES: usize = 64;

/// What an entry's GUID says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (signs VCEKs).
    Ask,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// Certificate revocation list(s).
    Crl,
    /// Any other GUID (kept, the verifier decides).
    Other([u8; 16]),
}

impl CertKind {
    fn from_guid(g: [u8; 16]) -> Self {
        // RFC 4122 byte order, as the kernel and the sev crate store them.
        const ARK: [u8; 16] = guid(0xc0b406a4, 0xa803, 0x4952, [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae]);
        const ASK: [u8; 16] = guid(0x4ab7b379, 0xbbac, 0x4fe4, [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82]);
        const VCEK: [u8; 16] = guid(0x63da758d, 0xe664, 0x4564, [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd]);
        const VLEK: [u8; 16] = guid(0xa8074bc2, 0xa25a, 0x483e, [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1]);
        const CRL: [u8; 16] = guid(0x92f81bc3, 0x5811, 0x4d3d, [0x97, 0xff, 0xd1, 0x9f, 0x88, 0xdc, 0x67, 0xea]);
        match g {
            ARK => CertKind::Ark,
            ASK => CertKind::Ask,
            VCEK => CertKind::Vcek,
            VLEK => CertKind::Vlek,
            CRL => CertKind::Crl,
            other => CertKind::Other(other),
        }
    }

    /// Whether the entry is an X.509 certificate (rather than a CRL or unknown blob).
    pub fn is_certificate(self) -> bool {
        matches!(self, CertKind::Ark | CertKind::Ask | CertKind::Vcek | CertKind::Vlek)
    }
}

/// Build a GUID's 16 bytes in RFC 4122 (big-endian) order.
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_be_bytes();
    let b = b.to_be_bytes();
    let c = c.to_be_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// One entry of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// What the GUID says.
    pub kind: CertKind,
    /// The entry's bytes (DER for certificates).
    pub data: Vec<u8>,
}

/// Why a certificate table could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTableError {
    /// The table ended before its all-zero terminator entry.
    #[error("certificate table has no terminator entry")]
    Unterminated,
    /// More entries than any real table has.
    #[error("certificate table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry points outside the buffer.
    #[error("certificate table entry {index} points outside the buffer (offset {offset}, length {length}, buffer {buffer})")]
    OutOfBounds {
        /// Entry number.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// Buffer size.
        buffer: usize,
    },
}

/// Parse a certificate table into its entries, in table order.
pub fn parse(buf: &[u8]) -> Result<Vec<CertEntry>, CertTableError> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    loop {
        let (Some(g), Some(offset), Some(length)) = (r.take(16), r.u32(), r.u32()) else {
            return Err(CertTableError::Unterminated);
        };
        let g: [u8; 16] = g.try_into().map_err(|_| CertTableError::Unterminated)?;
        if g == [0; 16] {
            return Ok(out);
        }
        if out.len() >= MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries);
        }
        let index = out.len();
        let oob = CertTableError::OutOfBounds { index, offset, length, buffer: buf.len() };
        let start = usize::try_from(offset).map_err(|_| oob.clone())?;
        let end = start.checked_add(usize::try_from(length).map_err(|_| oob.clone())?).ok_or(oob.clone())?;
        let data = buf.get(start..end).ok_or(oob)?;
        out.push(CertEntry { kind: CertKind::from_guid(g), data: data.to_vec() });
    }
}

/// The DER certificates of a table (VCEK/VLEK first, then ASK, then ARK), for
/// `PlatformEvidence::Snp::certs`. CRLs and unknown entries are left out.
pub fn certificates(entries: &[CertEntry]) -> Vec<Vec<u8>> {
    let rank = |k: CertKind| match k {
        CertKind::Vcek | CertKind::Vlek => 0,
        CertKind::Ask => 1,
        _ => 2,
    };
    let mut certs: Vec<&CertEntry> = entries.iter().filter(|e| e.kind.is_certificate() && !e.data.is_empty()).collect();
    certs.sort_by_key(|e| rank(e.kind));
    certs.into_iter().map(|e| e.data.clone()).collect()
}

/// Build a table (tests and the simulated TEE): entries, terminator, then the data.
pub fn build(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    // Offsets saturate to u32::MAX, which the parser then rejects as out of bounds.
    let header = entries.len().saturating_add(1).saturating_mul(24);
    let mut table = Vec::new();
    let mut data = Vec::new();
    for (g, d) in entries {
        let off = u32::try_from(header.saturating_add(data.len())).unwrap_or(u32::MAX);
        table.extend_from_slice(g);
        table.extend_from_slice(&off.to_le_bytes());
        table.extend_from_slice(&u32::try_from(d.len()).unwrap_or(u32::MAX).to_le_bytes());
        data.extend_from_slice(d);
    }
    table.extend_from_slice(&[0; 24]);
    table.extend(data);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const VCEK: [u8; 16] = guid(0x63da758d, 0xe664, 0x4564, [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd]);
    const ARK: [u8; 16] = guid(0xc0b406a4, 0xa803, 0x4952, [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae]);
    const ASK: [u8; 16] = guid(0x4ab7b379, 0xbbac, 0x4fe4, [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82]);

    #[test]
    fn round_trip_and_ordering() {
        let t = build(&[(ARK, b"ark"), (VCEK, b"vcek"), ([9; 16], b"x"), (ASK, b"ask")]);
        let e = parse(&t).unwrap_or_default();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].kind, CertKind::Ark);
        assert_eq!(e[2].kind, CertKind::Other([9; 16]));
        assert_eq!(certificates(&e), vec![b"vcek".to_vec(), b"ask".to_vec(), b"ark".to_vec()]);
    }

    #[test]
    fn rejects_bad_tables() {
        assert_eq!(parse(&[]), Err(CertTableError::Unterminated));
        let mut t = build(&[(VCEK, b"vcek")]);
        t.truncate(20);
        assert_eq!(parse(&t), Err(CertTableError::Unterminated));
        let mut t = build(&[(VCEK, b"vcek")]);
        t[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&t), Err(CertTableError::OutOfBounds { index: 0, .. })));
        let entries: Vec<([u8; 16], &[u8])> = (0..70).map(|_| (VCEK, &b"v"[..])).collect();
        assert_eq!(parse(&build(&entries)), Err(CertTableError::TooManyEntries));
    }

    #[test]
    fn sev_crate_guid_strings_match() {
        let hex = |b: [u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(VCEK), "63da758de6644564adc5f4b93be8accd");
        assert_eq!(hex(ARK), "c0b406a4a803495297433fb6014cd0ae");
    }
}
