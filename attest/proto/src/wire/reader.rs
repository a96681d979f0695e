//! A total reader over a byte slice, in the style of rustls `msgs/codec.rs`: every read
//! either yields the bytes it asked for or `None`, never panics and never reads past the
//! end. Length-prefixed structures are read through [`Reader::sub`] so that an inner parser
//! cannot run past its own length. Input: untrusted bytes.

/// Why a wire structure could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended inside a field.
    #[error("{what} truncated: need {need} bytes at offset {offset}, {have} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
        /// Offset of the field in the structure.
        offset: usize,
    },
    /// Bytes were left after the structure ended.
    #[error("{what} has {count} trailing bytes at offset {offset}")]
    Trailing {
        /// The structure that should have ended.
        what: &'static str,
        /// Number of bytes left over.
        count: usize,
        /// Offset where the structure ended.
        offset: usize,
    },
    /// A field holds a value this parser does not support.
    #[error("unsupported {what}: {value:#x}")]
    Unsupported {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A length or size field disagrees with the structure's layout.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        /// The field.
        what: &'static str,
        /// The value the layout requires.
        expected: u64,
        /// The value found.
        got: u64,
    },
    /// Reserved or padding bytes that must be zero are not.
    #[error("{what} must be zero (non-zero byte at offset {offset})")]
    NonZero {
        /// The reserved field.
        what: &'static str,
        /// Offset of the first non-zero byte.
        offset: usize,
    },
}

/// A cursor over an untrusted byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    cursor: usize,
}

impl<'a> Reader<'a> {
    /// Start reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, cursor: 0 }
    }

    /// The next `n` bytes, or `None` (consuming nothing) if fewer are left.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.cursor.checked_add(n)?;
        let out = self.buf.get(self.cursor..end)?;
        self.cursor = end;
        Some(out)
    }

    /// The next `n` bytes, or a [`WireError::Truncated`] naming `what`.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let (have, offset) = (self.left(), self.cursor);
        self.take(n).ok_or(WireError::Truncated { what, need: n, have, offset })
    }

    /// The next `N` bytes as an array, or a [`WireError::Truncated`] naming `what`.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self.bytes(N, what)?;
        // `bytes` returned exactly N bytes, so the conversion cannot fail.
        b.try_into().map_err(|_| WireError::Truncated { what, need: N, have: 0, offset: self.cursor })
    }

    /// A little-endian `u8`.
    pub fn u8(&mut self) -> Option<u8> {
        match self.take(1) {
            Some(&[a]) => Some(a),
            _ => None,
        }
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        match self.take(2) {
            Some(&[a, b]) => Some(u16::from_le_bytes([a, b])),
            _ => None,
        }
    }

    /// A little-endian 24-bit unsigned integer (e.g. an SPDM record length), widened to `u32`.
    pub fn u24(&mut self) -> Option<u32> {
        match self.take(3) {
            Some(&[a, b, c]) => Some(u32::from_le_bytes([a, b, c, 0])),
            _ => None,
        }
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        match self.take(4) {
            Some(&[a, b, c, d]) => Some(u32::from_le_bytes([a, b, c, d])),
            _ => None,
        }
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        match self.take(8) {
            Some(&[a, b, c, d, e, f, g, h]) => Some(u64::from_le_bytes([a, b, c, d, e, f, g, h])),
            _ => None,
        }
    }

    /// A `u8` or a [`WireError::Truncated`] naming `what`.
    pub fn read_u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let (have, offset) = (self.left(), self.cursor);
        self.u8().ok_or(WireError::Truncated { what, need: 1, have, offset })
    }

    /// A little-endian `u16` or a [`WireError::Truncated`] naming `what`.
    pub fn read_u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let (have, offset) = (self.left(), self.cursor);
        self.u16().ok_or(WireError::Truncated { what, need: 2, have, offset })
    }

    /// A little-endian 24-bit unsigned integer or a [`WireError::Truncated`] naming `what`.
    pub fn read_u24(&mut self, what: &'static str) -> Result<u32, WireError> {
        let (have, offset) = (self.left(), self.cursor);
        self.u24().ok_or(WireError::Truncated { what, need: 3, have, offset })
    }

    /// A little-endian `u32` or a [`WireError::Truncated`] naming `what`.
    pub fn read_u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let (have, offset) = (self.left(), self.cursor);
        self.u32().ok_or(WireError::Truncated { what, need: 4, have, offset })
    }

    /// A little-endian `u64` or a [`WireError::Truncated`] naming `what`.
    pub fn read_u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let (have, offset) = (self.left(), self.cursor);
        self.u64().ok_or(WireError::Truncated { what, need: 8, have, offset })
    }

    /// A reader over the next `len` bytes, which this reader skips; `None` if fewer are left.
    pub fn sub(&mut self, len: usize) -> Option<Reader<'a>> {
        self.take(len).map(Reader::new)
    }

    /// Like [`Reader::sub`], with a [`WireError::Truncated`] naming `what`.
    pub fn sub_named(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, WireError> {
        self.bytes(len, what).map(Reader::new)
    }

    /// Everything not yet read (consumes it).
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.cursor..).unwrap_or_default();
        self.cursor = self.buf.len();
        out
    }

    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.cursor)
    }

    /// Whether any bytes are left.
    pub fn any_left(&self) -> bool {
        self.left() > 0
    }

    /// Bytes read so far (the offset of the next read).
    pub fn used(&self) -> usize {
        self.cursor
    }

    /// The bytes not yet read, without consuming them.
    pub fn peek_rest(&self) -> &'a [u8] {
        self.buf.get(self.cursor..).unwrap_or_default()
    }

    /// Succeeds only if everything was read; otherwise a [`WireError::Trailing`] naming `what`.
    pub fn expect_empty(&self, what: &'static str) -> Result<(), WireError> {
        match self.left() {
            0 => Ok(()),
            count => Err(WireError::Trailing { what, count, offset: self.cursor }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_end() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut r = Reader::new(&data);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.u16(), Some(0x0302));
        assert_eq!(r.u32(), Some(0x0706_0504));
        assert_eq!(r.left(), 8);
        assert_eq!(r.u64(), Some(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(r.u8(), None);
        assert!(r.expect_empty("t").is_ok());
    }

    #[test]
    fn u24_is_little_endian_and_total() {
        let data = [0x01u8, 0x02, 0x03, 0xff, 0xff];
        let mut r = Reader::new(&data);
        assert_eq!(r.read_u24("len"), Ok(0x0003_0201));
        assert_eq!(r.read_u24("len"), Err(WireError::Truncated { what: "len", need: 3, have: 2, offset: 3 }));
        assert_eq!(r.used(), 3);
        assert_eq!(Reader::new(&[0xff; 3]).u24(), Some(0x00ff_ffff));
    }

    #[test]
    fn failed_take_consumes_nothing() {
        let data = [0u8; 3];
        let mut r = Reader::new(&data);
        assert_eq!(r.take(4), None);
        assert_eq!(r.take(usize::MAX), None);
        assert_eq!(r.used(), 0);
        assert_eq!(r.take(3), Some(&data[..]));
    }

    #[test]
    fn sub_is_bounded_and_errors_name_the_field() {
        let data = [9u8, 8, 7, 6, 5];
        let mut r = Reader::new(&data);
        let mut s = r.sub(2).unwrap_or_else(|| Reader::new(&[]));
        assert_eq!(s.u8(), Some(9));
        assert_eq!(s.u16(), None);
        assert_eq!(s.expect_empty("inner"), Err(WireError::Trailing { what: "inner", count: 1, offset: 1 }));
        assert_eq!(r.read_u32("field"), Err(WireError::Truncated { what: "field", need: 4, have: 3, offset: 2 }));
        assert_eq!(r.array::<3>("arr"), Ok([7, 6, 5]));
        assert_eq!(
            format!("{}", WireError::Truncated { what: "x", need: 4, have: 1, offset: 2 }),
            "x truncated: need 4 bytes at offset 2, 1 left"
        );
        assert_eq!(format!("{}", WireError::Trailing { what: "x", count: 3, offset: 9 }), "x has 3 trailing bytes at offset 9");
    }
}
