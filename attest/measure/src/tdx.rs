//! Intel TDX launch measurements for a QEMU direct kernel boot of our TDVF build:
//! MRTD (what the TDX module measured while QEMU built the TD) and RTMR1/RTMR2 (what the
//! firmware and the kernel's EFI stub extend at boot).
//!
//! - **MRTD** (TDX module ABI, `TDH.MEM.PAGE.ADD` / `TDH.MR.EXTEND`; QEMU `tdx_finalize_vm`;
//!   KVM `tdx_gmem_post_populate`): SHA-384 over, for every page of every TDVF section in
//!   metadata order, a 128-byte `"MEM.PAGE.ADD"` record with the page's GPA, followed — for
//!   sections with the `MR.EXTEND` attribute — by sixteen `"MR.EXTEND"` records, each a
//!   128-byte header with the chunk's GPA and the 256 bytes of the chunk.
//! - **RTMR1** (edk2 `TdTcg2Dxe`, `DxeTpm2MeasureBootLib`): the kernel's PE/COFF image hash
//!   (edk2 `MeasurePeImageAndExtend`), "Calling EFI Application from Boot Option", the
//!   separator, "Exit Boot Services Invocation", "Exit Boot Services Returned with Success".
//! - **RTMR2** (Linux `drivers/firmware/efi/libstub`): the UTF-16 `LoadOptions` OVMF built
//!   from the command line, then the initrd bytes.
//!
//! Each RTMR is `RTMR = SHA-384(RTMR || digest)` from 48 zero bytes. RTMR0 depends on the
//! VMM (TD HOB, ACPI tables, boot variables): see `attest/MEASUREMENT.md`.
//!
//! Trust: inputs are our own build products; parsing is still total.

use sha2::{Digest, Sha384};

use super::ovmf::{FooterTable, TDX_METADATA_GUID};
use super::{MeasureError, PAGE_SIZE, slice_at, u16_at, u32_at, u64_at};

/// A SHA-384 measurement register value.
pub type Mr = [u8; 48];

/// Granularity of `TDH.MR.EXTEND`.
const MR_EXTEND_CHUNK: usize = 256;
/// Section attribute: the pages' contents are extended into MRTD.
pub const ATTR_MR_EXTEND: u32 = 1 << 0;
/// Section attribute: pages are added after boot (ignored by QEMU, which adds all).
pub const ATTR_PAGE_AUG: u32 = 1 << 1;

/// TDVF section types QEMU accepts (TDVF design guide, table "TDVF_SECTION.Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TdvfSectionType {
    /// 0: boot firmware volume (code), copied from the image and measured.
    Bfv,
    /// 1: configuration firmware volume (UEFI variables), copied from the image.
    Cfv,
    /// 2: the TD HOB page(s) QEMU fills in.
    TdHob,
    /// 3: temporary memory for the SEC phase.
    TempMem,
    /// Anything else (QEMU refuses to launch such an image).
    Unknown(u32),
}

impl From<u32> for TdvfSectionType {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            n => Self::Unknown(n),
        }
    }
}

/// One `TDVF_SECTION` entry of the TDX metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the section's bytes in the firmware image.
    pub data_offset: u32,
    /// Bytes present in the image.
    pub raw_data_size: u32,
    /// Guest physical address.
    pub memory_address: u64,
    /// Bytes in guest memory (page multiple).
    pub memory_data_size: u64,
    /// Section type.
    pub kind: TdvfSectionType,
    /// Attribute bits ([`ATTR_MR_EXTEND`], [`ATTR_PAGE_AUG`]).
    pub attributes: u32,
}

/// Parses and checks the TDX metadata (`TDVF` descriptor) as QEMU's `tdvf_parse_metadata`.
pub fn tdvf_sections(fw: &[u8]) -> Result<Vec<TdvfSection>, MeasureError> {
    let bad = |reason: String| MeasureError::BadMetadata { what: "tdvf", reason };
    let table = FooterTable::parse(fw)?;
    let from_end = table.u32_of(&TDX_METADATA_GUID, "tdx metadata offset")? as usize;
    let off = fw.len().checked_sub(from_end).ok_or_else(|| bad(format!("offset {from_end:#x} beyond image start")))?;
    let sig = slice_at(fw, off, 4, "tdvf descriptor")?;
    if sig != b"TDVF" {
        return Err(bad(format!("signature {sig:02x?}, expected \"TDVF\"")));
    }
    let length = u32_at(fw, off + 4, "tdvf descriptor")? as usize;
    let version = u32_at(fw, off + 8, "tdvf descriptor")?;
    let n = u32_at(fw, off + 12, "tdvf descriptor")? as usize;
    if version != 1 {
        return Err(bad(format!("version {version}, expected 1")));
    }
    if n < 2 {
        return Err(bad(format!("{n} sections, need at least 2")));
    }
    if n.checked_mul(32).and_then(|x| x.checked_add(16)) != Some(length) {
        return Err(bad(format!("length {length} does not match {n} sections")));
    }
    slice_at(fw, off, length, "tdvf descriptor")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let e = off + 16 + 32 * i;
        let s = TdvfSection {
            data_offset: u32_at(fw, e, "tdvf section")?,
            raw_data_size: u32_at(fw, e + 4, "tdvf section")?,
            memory_address: u64_at(fw, e + 8, "tdvf section")?,
            memory_data_size: u64_at(fw, e + 16, "tdvf section")?,
            kind: TdvfSectionType::from(u32_at(fw, e + 24, "tdvf section")?),
            attributes: u32_at(fw, e + 28, "tdvf section")?,
        };
        if s.memory_data_size < u64::from(s.raw_data_size) {
            return Err(bad(format!("section {i}: memory size below raw size")));
        }
        for (what, v) in [("tdvf section address", s.memory_address), ("tdvf section size", s.memory_data_size)] {
            if !v.is_multiple_of(PAGE_SIZE as u64) {
                return Err(MeasureError::NotPageAligned { what, value: v });
            }
        }
        match s.kind {
            TdvfSectionType::Bfv | TdvfSectionType::Cfv if s.raw_data_size == 0 => {
                return Err(bad(format!("section {i}: firmware volume with no data")));
            }
            TdvfSectionType::TdHob | TdvfSectionType::TempMem if s.raw_data_size != 0 => {
                return Err(bad(format!("section {i}: hob/temp memory with image data")));
            }
            TdvfSectionType::Unknown(t) => {
                return Err(MeasureError::UnsupportedTdvfSection(format!("section {i} has type {t}")));
            }
            _ => {}
        }
        out.push(s);
    }
    Ok(out)
}

/// In which order the VMM issues page adds and extends. Upstream Linux KVM (6.16+) with
/// QEMU 10.1+ extends each page right after adding it; some older out-of-tree TDX stacks
/// added every page of a section first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageAddOrder {
    /// `PAGE.ADD(p); EXTEND(p)×16` per page (upstream KVM `tdx_gmem_post_populate`).
    #[default]
    PerPage,
    /// All `PAGE.ADD`s of a section, then all its `EXTEND`s.
    TwoPass,
}

fn mem_page_add(h: &mut Sha384, gpa: u64) {
    let mut b = [0u8; 128];
    b[..12].copy_from_slice(b"MEM.PAGE.ADD");
    b[16..24].copy_from_slice(&gpa.to_le_bytes());
    h.update(b);
}

fn mr_extend(h: &mut Sha384, gpa: u64, page: &[u8]) {
    for (i, chunk) in page.chunks(MR_EXTEND_CHUNK).enumerate() {
        let mut b = [0u8; 128];
        b[..9].copy_from_slice(b"MR.EXTEND");
        b[16..24].copy_from_slice(&(gpa + (i * MR_EXTEND_CHUNK) as u64).to_le_bytes());
        h.update(b);
        h.update(chunk);
    }
}

/// MRTD of a TD launched by QEMU from this TDVF image (upstream page order).
pub fn mrtd(fw: &[u8]) -> Result<Mr, MeasureError> {
    mrtd_with_order(fw, PageAddOrder::PerPage)
}

/// MRTD with an explicit page-add order.
pub fn mrtd_with_order(fw: &[u8], order: PageAddOrder) -> Result<Mr, MeasureError> {
    let mut h = Sha384::new();
    for s in tdvf_sections(fw)? {
        let extend = s.attributes & ATTR_MR_EXTEND != 0;
        let bytes = match (s.kind, extend) {
            (TdvfSectionType::Bfv | TdvfSectionType::Cfv, true) => {
                let len = usize::try_from(s.memory_data_size)
                    .map_err(|_| MeasureError::InvalidParameter("tdvf section larger than memory".into()))?;
                Some(slice_at(fw, s.data_offset as usize, len, "tdvf section data")?)
            }
            (_, true) => {
                return Err(MeasureError::UnsupportedTdvfSection(format!(
                    "{:?} section with MR.EXTEND: its contents come from the vmm",
                    s.kind
                )));
            }
            (_, false) => None,
        };
        let pages = s.memory_data_size / PAGE_SIZE as u64;
        let page_bytes = |p: u64| -> &[u8] {
            let start = usize::try_from(p).unwrap_or(usize::MAX).saturating_mul(PAGE_SIZE);
            bytes.and_then(|b| b.get(start..start.saturating_add(PAGE_SIZE))).unwrap_or_default()
        };
        match order {
            PageAddOrder::PerPage => {
                for p in 0..pages {
                    let gpa = s.memory_address + p * PAGE_SIZE as u64;
                    mem_page_add(&mut h, gpa);
                    if extend {
                        mr_extend(&mut h, gpa, page_bytes(p));
                    }
                }
            }
            PageAddOrder::TwoPass => {
                for p in 0..pages {
                    mem_page_add(&mut h, s.memory_address + p * PAGE_SIZE as u64);
                }
                if extend {
                    for p in 0..pages {
                        mr_extend(&mut h, s.memory_address + p * PAGE_SIZE as u64, page_bytes(p));
                    }
                }
            }
        }
    }
    Ok(h.finalize().into())
}

// ---------------------------------------------------------------------------------------
// RTMRs
// ---------------------------------------------------------------------------------------

/// One event extended into an RTMR: what it is and its SHA-384 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmrEvent {
    /// Human description (event type and data, as in a CCEL log).
    pub description: String,
    /// The extended digest.
    pub digest: Mr,
}

/// `RTMR = SHA-384(RTMR || digest)` over the events, from zero.
pub fn replay<'a>(digests: impl IntoIterator<Item = &'a Mr>) -> Mr {
    digests.into_iter().fold([0u8; 48], |acc, d| {
        let mut h = Sha384::new();
        h.update(acc);
        h.update(d);
        h.finalize().into()
    })
}

fn sha384(b: &[u8]) -> Mr {
    Sha384::digest(b).into()
}

/// `EV_EFI_ACTION` strings TdTcg2Dxe measures into RTMR1 (no NUL).
pub const CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";
/// Measured when the kernel calls ExitBootServices.
pub const EXIT_BOOT_SERVICES_INVOCATION: &str = "Exit Boot Services Invocation";
/// Measured when ExitBootServices succeeded.
pub const EXIT_BOOT_SERVICES_SUCCEEDED: &str = "Exit Boot Services Returned with Success";
/// `EV_SEPARATOR` data.
pub const SEPARATOR: [u8; 4] = [0; 4];

/// The RTMR1 events for a kernel whose PE image digest is `kernel_digest`.
pub fn rtmr1_log_from_digest(kernel_digest: Mr) -> Vec<RtmrEvent> {
    let ev = |d: &str, digest| RtmrEvent { description: d.to_owned(), digest };
    vec![
        ev("EV_EFI_BOOT_SERVICES_APPLICATION File(kernel)", kernel_digest),
        ev("EV_EFI_ACTION Calling EFI Application from Boot Option", sha384(CALLING_EFI_APPLICATION.as_bytes())),
        ev("EV_SEPARATOR", sha384(&SEPARATOR)),
        ev("EV_EFI_ACTION Exit Boot Services Invocation", sha384(EXIT_BOOT_SERVICES_INVOCATION.as_bytes())),
        ev("EV_EFI_ACTION Exit Boot Services Returned with Success", sha384(EXIT_BOOT_SERVICES_SUCCEEDED.as_bytes())),
    ]
}

/// The RTMR1 events of a direct boot of `kernel` (the `-kernel` file, unmodified: QEMU ≥
/// 10.0 hands it to OVMF as `etc/boot/kernel`, which edk2 2025.02 prefers).
pub fn rtmr1_log(kernel: &[u8]) -> Result<Vec<RtmrEvent>, MeasureError> {
    Ok(rtmr1_log_from_digest(pe_image_digest(kernel)?))
}

/// RTMR1 after ExitBootServices.
pub fn rtmr1(kernel: &[u8]) -> Result<Mr, MeasureError> {
    Ok(replay(rtmr1_log(kernel)?.iter().map(|e| &e.digest)))
}

/// The `LoadOptions` OVMF gives the kernel image (edk2 `X86QemuLoadImageLib`): the
/// command line widened byte by byte to UTF-16LE, plus `" initrd=initrd"` when an initrd is
/// present, NUL-terminated; empty (no load options at all) when both are absent.
pub fn load_options(cmdline: &str, has_initrd: bool) -> Vec<u8> {
    let suffix: &[u8] = if has_initrd { b" initrd=initrd" } else { b"" };
    if cmdline.is_empty() && suffix.is_empty() {
        return Vec::new();
    }
    cmdline.as_bytes().iter().chain(suffix).chain(&[0u8]).flat_map(|b| [*b, 0]).collect()
}

/// The RTMR2 events the Linux EFI stub extends through the CC measurement protocol (6.12 does):
/// its load options, then the initrd it loaded through OVMF's LoadFile2 protocol. An empty
/// initrd is not handed over by QEMU/OVMF and is therefore absent.
pub fn rtmr2_log(cmdline: &str, initrd: Option<&[u8]>) -> Vec<RtmrEvent> {
    let initrd = initrd.filter(|i| !i.is_empty());
    let mut out = Vec::new();
    let opts = load_options(cmdline, initrd.is_some());
    if !opts.is_empty() {
        out.push(RtmrEvent { description: "EV_EVENT_TAG LOADED_IMAGE::LoadOptions".into(), digest: sha384(&opts) });
    }
    if let Some(i) = initrd {
        out.push(RtmrEvent { description: "EV_EVENT_TAG Linux initrd".into(), digest: sha384(i) });
    }
    out
}

/// RTMR2 after the kernel's EFI stub ran.
pub fn rtmr2(cmdline: &str, initrd: Option<&[u8]>) -> Mr {
    replay(rtmr2_log(cmdline, initrd).iter().map(|e| &e.digest))
}

/// The TDX values a direct boot of these inputs produces. None of them depends on the
/// vCPU count or memory size (RTMR0 does, and is not computed here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxMeasurements {
    /// MRTD of the TDVF image.
    pub mrtd: Mr,
    /// RTMR1 after ExitBootServices.
    pub rtmr1: Mr,
    /// RTMR2 after the kernel's EFI stub.
    pub rtmr2: Mr,
    /// The events behind RTMR1, for publication next to the value.
    pub rtmr1_log: Vec<RtmrEvent>,
    /// The events behind RTMR2.
    pub rtmr2_log: Vec<RtmrEvent>,
}

/// MRTD, RTMR1 and RTMR2 of a QEMU direct boot of `kernel`/`initrd`/`cmdline` on `tdvf`.
pub fn measure(tdvf: &[u8], kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> Result<TdxMeasurements, MeasureError> {
    let rtmr1_log = rtmr1_log(kernel)?;
    let rtmr2_log = rtmr2_log(cmdline, initrd);
    Ok(TdxMeasurements {
        mrtd: mrtd(tdvf)?,
        rtmr1: replay(rtmr1_log.iter().map(|e| &e.digest)),
        rtmr2: replay(rtmr2_log.iter().map(|e| &e.digest)),
        rtmr1_log,
        rtmr2_log,
    })
}

// ---------------------------------------------------------------------------------------
// PE/COFF image hash (edk2 OvmfPkg/Tcg/TdTcg2Dxe/MeasureBootPeCoff.c)
// ---------------------------------------------------------------------------------------

const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;
const DIRECTORY_ENTRY_SECURITY: u32 = 4;

/// The SHA-384 image hash edk2 extends for a loaded EFI application: the Authenticode
/// procedure of the PE/COFF spec (headers without checksum and certificate directory,
/// sections by file offset, then trailing data minus the certificate table), with no
/// padding of the file length.
pub fn pe_image_digest(img: &[u8]) -> Result<Mr, MeasureError> {
    Ok(pe_image_hash::<Sha384>(img)?.into())
}

/// The same image hash with any digest: with SHA-256 it is the Authenticode digest a
/// signed kernel carries in its signature, which lets us check this code against it.
pub fn pe_image_hash<D: Digest>(img: &[u8]) -> Result<sha2::digest::Output<D>, MeasureError> {
    let bad = MeasureError::BadPeImage;
    let pe = if u16_at(img, 0, "dos header")? == 0x5a4d { u32_at(img, 0x3c, "dos header")? as usize } else { 0 };
    if slice_at(img, pe, 4, "pe signature")? != b"PE\0\0" {
        return Err(bad("no PE signature"));
    }
    let coff = pe + 4;
    let n_sections = usize::from(u16_at(img, coff + 2, "coff header")?);
    let opt_size = usize::from(u16_at(img, coff + 16, "coff header")?);
    let opt = coff + 20;
    let (nrva_off, dir_off) = match u16_at(img, opt, "optional header")? {
        PE32_MAGIC => (opt + 92, opt + 96),
        PE32_PLUS_MAGIC => (opt + 108, opt + 112),
        _ => return Err(bad("unknown optional header magic")),
    };
    let nrva = u32_at(img, nrva_off, "optional header")?;
    let size_of_headers = u32_at(img, opt + 60, "optional header")? as usize;
    let checksum = opt + 64;
    let cert_dir = dir_off + 8 * DIRECTORY_ENTRY_SECURITY as usize;

    let mut h = D::new();
    let mut hash_range = |a: usize, b: usize| -> Result<(), MeasureError> {
        let len = b.checked_sub(a).ok_or(bad("headers shorter than the optional header"))?;
        h.update(slice_at(img, a, len, "pe headers")?);
        Ok(())
    };
    hash_range(0, checksum)?;
    let cert_size = if nrva <= DIRECTORY_ENTRY_SECURITY {
        hash_range(checksum + 4, size_of_headers)?;
        0
    } else {
        hash_range(checksum + 4, cert_dir)?;
        hash_range(cert_dir + 8, size_of_headers)?;
        u32_at(img, cert_dir + 4, "certificate directory")? as usize
    };

    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(n_sections);
    for i in 0..n_sections {
        let s = table + 40 * i;
        let raw_size = u32_at(img, s + 16, "section header")? as usize;
        let raw_ptr = u32_at(img, s + 20, "section header")? as usize;
        if raw_size != 0 {
            sections.push((raw_ptr, raw_size));
        }
    }
    sections.sort_by_key(|(ptr, _)| *ptr); // stable, like edk2's insertion sort
    let mut sum = size_of_headers;
    for (ptr, size) in sections {
        h.update(slice_at(img, ptr, size, "section data")?);
        sum = sum.checked_add(size).ok_or(bad("section sizes overflow"))?;
    }
    if img.len() > sum {
        let end = img.len().checked_sub(cert_size);
        match end {
            Some(end) if end > sum => h.update(slice_at(img, sum, end - sum, "trailing data")?),
            Some(end) if end == sum => {}
            _ => return Err(bad("certificate table larger than the trailing data")),
        }
    }
    Ok(h.finalize())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn load_options_encoding() {
        assert_eq!(load_options("", false), Vec::<u8>::new());
        assert_eq!(load_options("", true), " initrd=initrd\0".bytes().flat_map(|b| [b, 0]).collect::<Vec<_>>());
        assert_eq!(load_options("a", false), vec![b'a', 0, 0, 0]);
        assert_eq!(load_options("é", false), vec![0xc3, 0, 0xa9, 0, 0, 0]);
    }

    #[test]
    fn rtmr2_changes_with_every_input_byte() {
        let base = rtmr2("console=hvc0", Some(b"cpio"));
        assert_ne!(base, rtmr2("console=hvc1", Some(b"cpio")));
        assert_ne!(base, rtmr2("console=hvc0", Some(b"cpiO")));
        assert_ne!(base, rtmr2("console=hvc0", None));
        assert_eq!(rtmr2("", None), [0u8; 48]);
        assert_eq!(rtmr2_log("x", Some(b"")).len(), 1);
    }

    #[test]
    fn replay_is_the_rtmr_extend_chain() {
        let d = [7u8; 48];
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(d);
        let one: Mr = h.finalize().into();
        assert_eq!(replay([&d]), one);
        assert_eq!(replay(std::iter::empty()), [0u8; 48]);
    }

    /// A minimal PE32+ image: headers, two sections (listed out of file order), a 3-byte
    /// tail and an 8-byte "certificate table".
    fn tiny_pe(cert: bool) -> Vec<u8> {
        let mut img = vec![0u8; 0x400 + 3 + if cert { 8 } else { 0 }];
        img[0..2].copy_from_slice(b"MZ");
        img[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        img[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        img[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        img[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        img[opt..opt + 2].copy_from_slice(&PE32_PLUS_MAGIC.to_le_bytes());
        img[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        img[opt + 64..opt + 68].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        img[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        if cert {
            let cd = opt + 112 + 32;
            img[cd..cd + 4].copy_from_slice(&0x403u32.to_le_bytes());
            img[cd + 4..cd + 8].copy_from_slice(&8u32.to_le_bytes());
        }
        let t = opt + 240;
        for (i, (ptr, size)) in [(0x300u32, 0x100u32), (0x200, 0x100)].iter().enumerate() {
            let s = t + 40 * i;
            img[s + 16..s + 20].copy_from_slice(&size.to_le_bytes());
            img[s + 20..s + 24].copy_from_slice(&ptr.to_le_bytes());
        }
        for (i, b) in img.iter_mut().enumerate().skip(0x200) {
            *b = (i % 251) as u8;
        }
        img
    }

    #[test]
    fn pe_hash_follows_the_authenticode_ranges() {
        for cert in [false, true] {
            let img = tiny_pe(cert);
            let opt = 0x84 + 20;
            let cd = opt + 112 + 32;
            let mut h = Sha384::new();
            h.update(&img[..opt + 64]);
            h.update(&img[opt + 68..cd]);
            h.update(&img[cd + 8..0x200]);
            h.update(&img[0x200..0x300]);
            h.update(&img[0x300..0x400]);
            h.update(&img[0x400..0x403]);
            let want: Mr = h.finalize().into();
            assert_eq!(pe_image_digest(&img).unwrap(), want, "cert={cert}");
            // The checksum and certificate directory are excluded from the hash...
            let mut c = img.clone();
            c[opt + 64] ^= 1;
            assert_eq!(pe_image_digest(&c).unwrap(), want);
            // ...every other header or section byte is not.
            let mut c = img.clone();
            c[0x250] ^= 1;
            assert_ne!(pe_image_digest(&c).unwrap(), want);
        }
    }

    #[test]
    fn pe_hash_rejects_garbage_without_panicking() {
        assert!(pe_image_digest(b"").is_err());
        assert!(pe_image_digest(&[0u8; 4096]).is_err());
        let img = tiny_pe(true);
        for cut in 0..img.len() {
            let _ = pe_image_digest(&img[..cut]);
        }
    }

    #[test]
    fn tdvf_parser_rejects_garbage_without_panicking() {
        assert!(tdvf_sections(&[]).is_err());
        assert!(tdvf_sections(&[0u8; 8192]).is_err());
    }
}
