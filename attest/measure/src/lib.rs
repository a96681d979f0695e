//! Published launch measurements: what an SEV-SNP or TDX guest booted from our pinned
//! firmware, kernel, initrd and command line must report, computed ahead of time so a model
//! owner can pin them in policy without ever trusting the host.
//!
//! - [`snp`]: the SEV-SNP launch digest (`MEASUREMENT`) of a QEMU direct kernel boot with
//!   `kernel-hashes=on`, as the AMD secure processor computes it (also SEV and SEV-ES).
//! - [`tdx`]: MRTD from the TDVF image, and RTMR1/RTMR2 for direct kernel boot under our
//!   edk2 build.
//! - [`ovmf`]: the OVMF footer GUID table both of them start from.
//!
//! Trust: every input here is something *we* build and pin (firmware, kernel, initrd,
//! command line), but the parsers are still total: a malformed firmware image is a typed
//! error, never a panic, so the same code can check an image somebody else hands us.
//! See `MEASUREMENT.md` next to this crate for the derivation of each value and what it was checked
//! against.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)]

pub mod ovmf;
pub mod snp;
pub mod tdx;

/// Why a measurement could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// A structure ran past the end of the firmware image (or of its enclosing table).
    #[error("{what} out of bounds: needs bytes {start}..{end}, image has {len}")]
    OutOfBounds {
        /// The structure being read.
        what: &'static str,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// Length of the buffer it was read from.
        len: u64,
    },
    /// A required OVMF footer-table entry is absent.
    #[error("ovmf footer table has no {0} entry")]
    MissingTableEntry(&'static str),
    /// The OVMF footer table is malformed.
    #[error("malformed ovmf footer table: {0}")]
    BadFooterTable(&'static str),
    /// A firmware metadata header (SEV `ASEV` or TDX `TDVF`) is wrong.
    #[error("bad {what} metadata: {reason}")]
    BadMetadata {
        /// `sev` or `tdvf`.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A length that must be a multiple of 4 KiB is not.
    #[error("{what} is not page aligned: {value:#x}")]
    NotPageAligned {
        /// What was measured.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// The firmware cannot measure a kernel (no SEV hashes table / SNP_KERNEL_HASHES page).
    #[error("kernel given but the firmware has no {0}: use the AmdSev (kernel-hashes) build")]
    NoKernelHashesSupport(&'static str),
    /// An SEV metadata section type this code does not know how to measure.
    #[error("unknown sev metadata section type {0:#x}")]
    UnknownSectionType(u32),
    /// A TDVF section type QEMU would reject, or one whose measurement needs VMM data.
    #[error("unsupported tdvf section: {0}")]
    UnsupportedTdvfSection(String),
    /// A parameter outside what the platform allows.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The kernel is not a PE/COFF image OVMF can measure.
    #[error("kernel is not a measurable pe/coff image: {0}")]
    BadPeImage(&'static str),
}

/// Reads `N` bytes at `off` of `buf`, or says which structure ran out.
pub(crate) fn array_at<const N: usize>(buf: &[u8], off: usize, what: &'static str) -> Result<[u8; N], MeasureError> {
    let end = off.checked_add(N);
    end.and_then(|e| buf.get(off..e)).and_then(|s| <[u8; N]>::try_from(s).ok()).ok_or(MeasureError::OutOfBounds {
        what,
        start: off as u64,
        end: (off as u64).saturating_add(N as u64),
        len: buf.len() as u64,
    })
}

/// The sub-slice `off..off+len` of `buf`, or which structure ran out.
pub(crate) fn slice_at<'a>(buf: &'a [u8], off: usize, len: usize, what: &'static str) -> Result<&'a [u8], MeasureError> {
    off.checked_add(len).and_then(|e| buf.get(off..e)).ok_or(MeasureError::OutOfBounds {
        what,
        start: off as u64,
        end: (off as u64).saturating_add(len as u64),
        len: buf.len() as u64,
    })
}

pub(crate) fn u16_at(buf: &[u8], off: usize, what: &'static str) -> Result<u16, MeasureError> {
    array_at::<2>(buf, off, what).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(buf: &[u8], off: usize, what: &'static str) -> Result<u32, MeasureError> {
    array_at::<4>(buf, off, what).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(buf: &[u8], off: usize, what: &'static str) -> Result<u64, MeasureError> {
    array_at::<8>(buf, off, what).map(u64::from_le_bytes)
}

/// A GUID in its on-disk (mixed-endian, `EFI_GUID`) byte order, from its textual fields.
pub(crate) const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]]
}

/// Size of a guest page: the unit of SNP page measurement and TDX `MEM.PAGE.ADD`.
pub const PAGE_SIZE: usize = 4096;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn guid_matches_uuid_bytes_le() {
        // 96b582de-1fb2-45f7-baea-a366c55a082d, as Python's uuid.UUID(...).bytes_le.
        let g = guid(0x96b582de, 0x1fb2, 0x45f7, [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d]);
        assert_eq!(hex::encode(g), "de82b596b21ff745baeaa366c55a082d");
    }

    #[test]
    fn readers_are_total() {
        let b = [1u8, 2, 3];
        assert_eq!(u16_at(&b, 1, "x"), Ok(0x0302));
        assert!(u32_at(&b, 0, "x").is_err());
        assert!(u64_at(&b, usize::MAX, "x").is_err());
        assert!(slice_at(&b, 2, usize::MAX, "x").is_err());
        let e = u32_at(&b, 2, "field").unwrap_err();
        assert_eq!(e.to_string(), "field out of bounds: needs bytes 2..6, image has 3");
    }
}
