//! The OVMF footer GUID table: the list of `(GUID, data)` entries OVMF places just before
//! the last 32 bytes of its image (the reset vector), which tells a VMM (and us) where the
//! SEV metadata, the SEV-ES AP reset block, the SEV hashes table and the TDX metadata are.
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm`): reading backwards from
//! `len - 32`, a footer entry `{ u16 size; GUID 96b582de-… }` whose `size` covers the whole
//! table including itself; inside it, entries `{ data[..]; u16 size; GUID }` where each
//! `size` covers data, length and GUID.
//!
//! Trust: the image is parsed totally; a missing footer is an empty table (as QEMU and
//! sev-snp-measure treat it), a malformed one is an error.

use super::{MeasureError, array_at, guid, u16_at};

/// `OVMF_TABLE_FOOTER_GUID` 96b582de-1fb2-45f7-baea-a366c55a082d.
pub const FOOTER_GUID: [u8; 16] = guid(0x96b582de, 0x1fb2, 0x45f7, [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d]);
/// `SEV_HASH_TABLE_RV_GUID` 7255371f-3a3b-4b04-927b-1da6efa8d454: GPA and size of the
/// area where QEMU writes the kernel/initrd/cmdline hashes table.
pub const SEV_HASH_TABLE_RV_GUID: [u8; 16] = guid(0x7255371f, 0x3a3b, 0x4b04, [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54]);
/// `SEV_ES_RESET_BLOCK_GUID` 00f771de-1a7e-4fcb-890e-68c77e2fb44e: the AP reset vector.
pub const SEV_ES_RESET_BLOCK_GUID: [u8; 16] = guid(0x00f771de, 0x1a7e, 0x4fcb, [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e]);
/// `OVMF_SEV_META_DATA_GUID` dc886566-984a-4798-a75e-5585a7bf67cc.
pub const SEV_METADATA_GUID: [u8; 16] = guid(0xdc886566, 0x984a, 0x4798, [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc]);
/// `TDX_METADATA_OFFSET_GUID` e47a6535-984a-4798-865e-4685a7bf8ec2.
pub const TDX_METADATA_GUID: [u8; 16] = guid(0xe47a6535, 0x984a, 0x4798, [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2]);
/// `SVSM_INFO_GUID` a789a612-0597-4c4b-a49f-cbb1fe9d1ddd (Coconut-SVSM images).
pub const SVSM_INFO_GUID: [u8; 16] = guid(0xa789a612, 0x0597, 0x4c4b, [0xa4, 0x9f, 0xcb, 0xb1, 0xfe, 0x9d, 0x1d, 0xdd]);

/// Bytes after the table: the 16-byte reset vector and padding up to the 4 GiB boundary.
const BYTES_AFTER_TABLE: usize = 32;
/// `u16 size` + GUID.
const ENTRY_HEADER: usize = 18;

/// The parsed footer table of one firmware image.
#[derive(Debug, Clone, Default)]
pub struct FooterTable<'a> {
    entries: Vec<([u8; 16], &'a [u8])>,
}

impl<'a> FooterTable<'a> {
    /// Parses the table at the end of `image`. No footer GUID means an empty table.
    pub fn parse(image: &'a [u8]) -> Result<Self, MeasureError> {
        let Some(footer_off) = image.len().checked_sub(BYTES_AFTER_TABLE + ENTRY_HEADER) else {
            return Ok(Self::default());
        };
        let footer_size = usize::from(u16_at(image, footer_off, "ovmf footer entry")?);
        let footer_guid: [u8; 16] = array_at(image, footer_off + 2, "ovmf footer guid")?;
        if footer_guid != FOOTER_GUID {
            return Ok(Self::default());
        }
        let table_len =
            footer_size.checked_sub(ENTRY_HEADER).ok_or(MeasureError::BadFooterTable("footer size smaller than its header"))?;
        let table_start = footer_off.checked_sub(table_len).ok_or(MeasureError::BadFooterTable("table longer than the image"))?;
        let mut rest = image.get(table_start..footer_off).ok_or(MeasureError::BadFooterTable("table longer than the image"))?;
        let mut entries: Vec<([u8; 16], &'a [u8])> = Vec::new();
        while rest.len() >= ENTRY_HEADER {
            let hdr = rest.len() - ENTRY_HEADER;
            let size = usize::from(u16_at(rest, hdr, "ovmf table entry")?);
            let g: [u8; 16] = array_at(rest, hdr + 2, "ovmf table entry guid")?;
            if size < ENTRY_HEADER {
                return Err(MeasureError::BadFooterTable("entry size smaller than its header"));
            }
            let start = rest.len().checked_sub(size).ok_or(MeasureError::BadFooterTable("entry longer than the table"))?;
            let data = rest.get(start..hdr).ok_or(MeasureError::BadFooterTable("entry longer than the table"))?;
            if entries.iter().any(|(e, _)| *e == g) {
                return Err(MeasureError::BadFooterTable("duplicate guid"));
            }
            entries.push((g, data));
            rest = rest.get(..start).ok_or(MeasureError::BadFooterTable("entry longer than the table"))?;
        }
        Ok(Self { entries })
    }

    /// The data of the entry with this GUID.
    pub fn get(&self, g: &[u8; 16]) -> Option<&'a [u8]> {
        self.entries.iter().find(|(e, _)| e == g).map(|(_, d)| *d)
    }

    /// The little-endian u32 at the start of an entry (GPAs and offsets are stored so).
    pub fn u32_of(&self, g: &[u8; 16], name: &'static str) -> Result<u32, MeasureError> {
        let d = self.get(g).ok_or(MeasureError::MissingTableEntry(name))?;
        array_at::<4>(d, 0, name).map(u32::from_le_bytes)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the image had no footer table.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn image_with(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let mut table = Vec::new();
        for (g, d) in entries.iter().rev() {
            table.extend_from_slice(d);
            table.extend_from_slice(&((d.len() + 18) as u16).to_le_bytes());
            table.extend_from_slice(g);
        }
        let mut img = vec![0u8; 64];
        img.extend_from_slice(&table);
        img.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
        img.extend_from_slice(&FOOTER_GUID);
        img.extend_from_slice(&[0u8; 32]);
        img
    }

    #[test]
    fn parses_entries_and_rejects_garbage() {
        let img = image_with(&[(SEV_ES_RESET_BLOCK_GUID, &[1, 2, 3, 4, 9]), (TDX_METADATA_GUID, &[7; 4])]);
        let t = FooterTable::parse(&img).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.u32_of(&SEV_ES_RESET_BLOCK_GUID, "r").unwrap(), 0x04030201);
        assert!(matches!(t.u32_of(&SEV_METADATA_GUID, "m"), Err(MeasureError::MissingTableEntry("m"))));
        // No footer at all: empty table.
        assert!(FooterTable::parse(&[0u8; 100]).unwrap().is_empty());
        assert!(FooterTable::parse(&[]).unwrap().is_empty());
        // Footer claiming more than the image holds.
        let mut bad = img.clone();
        let off = bad.len() - 32 - 18;
        bad[off..off + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(FooterTable::parse(&bad).is_err());
        // An entry with size < 18.
        let mut bad = img;
        let off = bad.len() - 32 - 18 - 18;
        bad[off..off + 2].copy_from_slice(&3u16.to_le_bytes());
        assert!(FooterTable::parse(&bad).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_or_ok_never_a_panic() {
        let img = image_with(&[(SEV_ES_RESET_BLOCK_GUID, &[1, 2, 3, 4]), (SEV_METADATA_GUID, &[5; 4])]);
        for cut in 0..img.len() {
            let _ = FooterTable::parse(&img[cut..]);
            let _ = FooterTable::parse(&img[..cut]);
        }
    }
}
