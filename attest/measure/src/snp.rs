//! The AMD SEV launch measurement of a QEMU guest, computed ahead of time: SEV-SNP's
//! 48-byte `MEASUREMENT` (the launch digest the PSP folds page by page with
//! `SNP_LAUNCH_UPDATE`), and for completeness the SEV and SEV-ES SHA-256 launch digests.
//!
//! What is measured, in order (QEMU `target/i386/sev.c`, AMD SEV-SNP ABI spec §8.17):
//! 1. every 4 KiB page of the OVMF image, mapped to end at 4 GiB, as `PAGE_TYPE_NORMAL`;
//! 2. the pages OVMF's SEV metadata declares: zero pages (`SNP_SEC_MEMORY`, `SVSM_CAA`),
//!    the secrets page, the CPUID page, and the `SNP_KERNEL_HASHES` page, which carries the
//!    table of SHA-256 hashes of kernel, initrd and command line (`kernel-hashes=on`);
//! 3. one VMSA page per vCPU: the boot CPU starts at the reset vector, the others at the
//!    SEV-ES AP reset block, with `SEV_FEATURES` = guest features and `RDX` = CPUID
//!    signature as QEMU/KVM set them (EC2 and GCE differ in a few registers).
//!
//! Each update is `LD = SHA-384(LD || SHA-384(page) || PAGE_INFO tail)`, starting from 48 zero
//! bytes. This follows the reference tool `sev-snp-measure` (virtee, Apache-2.0) and is
//! checked against all of its test vectors and against the tool itself on our artifacts.
//!
//! Trust: inputs are our own build products; parsing is still total (errors, no panics).

use sha2::{Digest, Sha256, Sha384};

use super::ovmf::{FooterTable, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID, SVSM_INFO_GUID};
use super::{MeasureError, PAGE_SIZE, guid, slice_at, u32_at};

/// A SHA-384 launch digest (SEV-SNP `MEASUREMENT`).
pub type LaunchDigest = [u8; 48];

/// Where the firmware image ends in guest physical memory.
const FOUR_GIB: u64 = 0x1_0000_0000;
/// RIP of the boot processor at reset.
const BSP_EIP: u32 = 0xffff_fff0;
/// GPA recorded for VMSA pages: `(u64)-1` page-aligned, bits above 51 cleared.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Which hypervisor builds the initial register state (they differ in a few fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VmmType {
    /// QEMU/KVM (what Chrysalis launches).
    Qemu,
    /// AWS EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

/// The CPUID(1).EAX signature QEMU puts in RDX at reset, from family/model/stepping
/// (AMD CPUID specification #25481, Fn0000_0001_EAX).
pub const fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf { (0xf, (family - 0xf) & 0xff) } else { (family, 0) };
    (family_high << 20) | (((model >> 4) & 0xf) << 16) | (family_low << 8) | ((model & 0xf) << 4) | (stepping & 0xf)
}

/// QEMU's named EPYC CPU models and their signatures (QEMU `builtin_x86_defs`, as listed
/// by sev-snp-measure's `vcpu_types.py`).
pub const CPU_TYPES: &[(&str, u32)] = &[
    ("EPYC", cpu_sig(23, 1, 2)),
    ("EPYC-v1", cpu_sig(23, 1, 2)),
    ("EPYC-v2", cpu_sig(23, 1, 2)),
    ("EPYC-IBPB", cpu_sig(23, 1, 2)),
    ("EPYC-v3", cpu_sig(23, 1, 2)),
    ("EPYC-v4", cpu_sig(23, 1, 2)),
    ("EPYC-Rome", cpu_sig(23, 49, 0)),
    ("EPYC-Rome-v1", cpu_sig(23, 49, 0)),
    ("EPYC-Rome-v2", cpu_sig(23, 49, 0)),
    ("EPYC-Rome-v3", cpu_sig(23, 49, 0)),
    ("EPYC-Milan", cpu_sig(25, 1, 1)),
    ("EPYC-Milan-v1", cpu_sig(25, 1, 1)),
    ("EPYC-Milan-v2", cpu_sig(25, 1, 1)),
    ("EPYC-Genoa", cpu_sig(25, 17, 0)),
    ("EPYC-Genoa-v1", cpu_sig(25, 17, 0)),
    ("EPYC-Turin", cpu_sig(26, 0, 0)),
];

/// The signature of a named QEMU CPU model.
pub fn vcpu_sig_of(name: &str) -> Option<u32> {
    CPU_TYPES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Guest feature bits (`SEV_FEATURES` in the VMSA): bit 0 SNPActive.
pub const FEATURE_SNP_ACTIVE: u64 = 1 << 0;
/// Bit 5 DebugSwap, which KVM on Linux 6.x enables by default (QEMU default: 0x21).
pub const FEATURE_DEBUG_SWAP: u64 = 1 << 5;

// ---------------------------------------------------------------------------------------
// SEV metadata (OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm)
// ---------------------------------------------------------------------------------------

/// The kind of a page range OVMF's SEV metadata asks the VMM to pre-validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionType {
    /// 1: memory OVMF's SEC phase uses before it can validate pages itself.
    SnpSecMemory,
    /// 2: the SNP secrets page.
    SnpSecrets,
    /// 3: the CPUID page.
    Cpuid,
    /// 4: the SVSM calling-area page.
    SvsmCaa,
    /// 0x10: the page holding the kernel/initrd/cmdline hashes table.
    SnpKernelHashes,
    /// Anything else, kept for the caller to reject.
    Unknown(u32),
}

impl From<u32> for SectionType {
    fn from(v: u32) -> Self {
        match v {
            1 => Self::SnpSecMemory,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::SnpKernelHashes,
            n => Self::Unknown(n),
        }
    }
}

/// One `OvmfSevMetadataSectionDesc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataSection {
    /// Guest physical address of the range.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// What the range is.
    pub kind: SectionType,
}

/// A firmware image (OVMF, or a Coconut-SVSM image) with its footer table and SEV metadata,
/// placed in guest memory so that it ends at `end_gpa`.
#[derive(Debug, Clone)]
pub struct SevFirmware<'a> {
    data: &'a [u8],
    table: FooterTable<'a>,
    sections: Vec<MetadataSection>,
    gpa: u64,
}

impl<'a> SevFirmware<'a> {
    /// Parses an OVMF image mapped just below 4 GiB (QEMU `-bios`).
    pub fn parse(data: &'a [u8]) -> Result<Self, MeasureError> {
        Self::parse_ending_at(data, FOUR_GIB)
    }

    /// Parses an image mapped to end at `end_gpa`.
    pub fn parse_ending_at(data: &'a [u8], end_gpa: u64) -> Result<Self, MeasureError> {
        let table = FooterTable::parse(data)?;
        let sections = match table.get(&SEV_METADATA_GUID) {
            None => Vec::new(),
            Some(entry) => parse_sev_metadata(data, entry)?,
        };
        let gpa = end_gpa.checked_sub(data.len() as u64).ok_or_else(|| {
            MeasureError::InvalidParameter(format!("image of {} bytes does not fit below {end_gpa:#x}", data.len()))
        })?;
        Ok(Self { data, table, sections, gpa })
    }

    /// The image bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The SEV metadata sections, in firmware order.
    pub fn sections(&self) -> &[MetadataSection] {
        &self.sections
    }

    /// The footer table.
    pub fn table(&self) -> &FooterTable<'a> {
        &self.table
    }

    /// Whether the metadata declares a section of this kind.
    pub fn has_section(&self, kind: SectionType) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }

    /// GPA of the SEV hashes table (`SEV_HASH_TABLE_RV_GUID`).
    pub fn sev_hashes_table_gpa(&self) -> Result<u32, MeasureError> {
        self.table.u32_of(&SEV_HASH_TABLE_RV_GUID, "sev hashes table")
    }

    /// Whether QEMU can place a kernel hashes table (SEV/SEV-ES rule).
    pub fn supports_sev_hashes_table(&self) -> bool {
        matches!(self.sev_hashes_table_gpa(), Ok(gpa) if gpa != 0)
    }

    /// The AP reset EIP (`SEV_ES_RESET_BLOCK_GUID`).
    pub fn sev_es_reset_eip(&self) -> Result<u32, MeasureError> {
        self.table.u32_of(&SEV_ES_RESET_BLOCK_GUID, "sev-es reset block")
    }
}

fn parse_sev_metadata(data: &[u8], entry: &[u8]) -> Result<Vec<MetadataSection>, MeasureError> {
    let bad = |reason: String| MeasureError::BadMetadata { what: "sev", reason };
    let offset_from_end = u32_at(entry, 0, "sev metadata offset")? as usize;
    let start =
        data.len().checked_sub(offset_from_end).ok_or_else(|| bad(format!("offset {offset_from_end:#x} beyond image start")))?;
    let sig = slice_at(data, start, 4, "sev metadata header")?;
    if sig != b"ASEV" {
        return Err(bad(format!("signature {sig:02x?}, expected \"ASEV\"")));
    }
    let size = u32_at(data, start + 4, "sev metadata header")? as usize;
    let version = u32_at(data, start + 8, "sev metadata header")?;
    if version != 1 {
        return Err(bad(format!("version {version}, expected 1")));
    }
    let num = u32_at(data, start + 12, "sev metadata header")? as usize;
    let items_len = size.checked_sub(16).ok_or_else(|| bad(format!("size {size} < 16")))?;
    let items = slice_at(data, start + 16, items_len, "sev metadata sections")?;
    let need = num.checked_mul(12).ok_or_else(|| bad(format!("{num} sections")))?;
    if need > items.len() {
        return Err(bad(format!("{num} sections need {need} bytes, header covers {items_len}")));
    }
    (0..num)
        .map(|i| {
            Ok(MetadataSection {
                gpa: u32_at(items, i * 12, "sev metadata section")?,
                size: u32_at(items, i * 12 + 4, "sev metadata section")?,
                kind: SectionType::from(u32_at(items, i * 12 + 8, "sev metadata section")?),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The kernel hashes table (QEMU `sev_add_kernel_loader_hashes`)
// ---------------------------------------------------------------------------------------

const HASH_TABLE_HEADER_GUID: [u8; 16] = guid(0x9438d606, 0x4f22, 0x4cc9, [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21]);
const KERNEL_ENTRY_GUID: [u8; 16] = guid(0x4de79437, 0xabd2, 0x427f, [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b]);
const INITRD_ENTRY_GUID: [u8; 16] = guid(0x44baf731, 0x3a2f, 0x4bd7, [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d]);
const CMDLINE_ENTRY_GUID: [u8; 16] = guid(0x97d02dd8, 0xbd20, 0x4c94, [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a]);
/// `{GUID, u16 len, SHA-256}`.
const HASH_ENTRY_LEN: u16 = 16 + 2 + 32;
/// Header `{GUID, u16 len}` + cmdline, initrd, kernel entries.
const HASH_TABLE_LEN: u16 = 16 + 2 + 3 * HASH_ENTRY_LEN;
/// QEMU pads the table to a multiple of 16 bytes.
const PADDED_HASH_TABLE_LEN: usize = (HASH_TABLE_LEN as usize + 15) & !15;

/// SHA-256 hashes of what QEMU hands OVMF through fw_cfg for direct kernel boot; OVMF's
/// `BlobVerifierLibSevHashes` refuses to boot anything whose hash differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevHashes {
    /// SHA-256 of the kernel file exactly as given to `-kernel`.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of the empty string when there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line followed by its NUL terminator (`"\0"` when empty).
    pub cmdline: [u8; 32],
}

impl SevHashes {
    /// Hashes the three boot inputs as QEMU does.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> Self {
        let mut c = Sha256::new();
        c.update(cmdline.as_bytes());
        c.update([0u8]);
        Self {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or_default()).into(),
            cmdline: c.finalize().into(),
        }
    }

    /// The padded table QEMU writes into guest memory (176 bytes).
    pub fn table(&self) -> [u8; PADDED_HASH_TABLE_LEN] {
        let mut t = [0u8; PADDED_HASH_TABLE_LEN];
        let mut w = Vec::with_capacity(PADDED_HASH_TABLE_LEN);
        w.extend_from_slice(&HASH_TABLE_HEADER_GUID);
        w.extend_from_slice(&HASH_TABLE_LEN.to_le_bytes());
        for (g, h) in [(CMDLINE_ENTRY_GUID, &self.cmdline), (INITRD_ENTRY_GUID, &self.initrd), (KERNEL_ENTRY_GUID, &self.kernel)]
        {
            w.extend_from_slice(&g);
            w.extend_from_slice(&HASH_ENTRY_LEN.to_le_bytes());
            w.extend_from_slice(h);
        }
        for (d, s) in t.iter_mut().zip(w) {
            *d = s;
        }
        t
    }

    /// The 4 KiB page holding the table at `offset` within it.
    fn page(&self, offset: usize) -> Result<Vec<u8>, MeasureError> {
        let mut page = vec![0u8; PAGE_SIZE];
        let dst = offset.checked_add(PADDED_HASH_TABLE_LEN).and_then(|end| page.get_mut(offset..end)).ok_or_else(|| {
            MeasureError::InvalidParameter(format!("sev hashes table at page offset {offset:#x} crosses the page"))
        })?;
        dst.copy_from_slice(&self.table());
        Ok(page)
    }
}

// ---------------------------------------------------------------------------------------
// The launch digest (GCTX)
// ---------------------------------------------------------------------------------------

/// The PSP's running launch digest.
#[derive(Debug, Clone)]
struct Gctx {
    ld: LaunchDigest,
}

#[derive(Clone, Copy)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

impl Gctx {
    /// Folds one `PAGE_INFO` (SNP ABI spec, "Layout of the PAGE_INFO structure").
    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        let mut h = Sha384::new();
        h.update(self.ld);
        h.update(contents);
        h.update(0x70u16.to_le_bytes()); // LENGTH
        h.update([page_type as u8, 0]); // PAGE_TYPE, IMI_PAGE
        h.update([0, 0, 0, 0]); // VMPL3/2/1 permissions, reserved
        h.update(gpa.to_le_bytes());
        self.ld = h.finalize().into();
    }

    fn normal_pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), MeasureError> {
        if !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(MeasureError::NotPageAligned { what: "measured image", value: data.len() as u64 });
        }
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            let d: [u8; 48] = Sha384::digest(page).into();
            self.update(PageType::Normal, gpa + (i * PAGE_SIZE) as u64, &d);
        }
        Ok(())
    }

    fn empty_pages(&mut self, t: PageType, gpa: u64, len: u64) -> Result<(), MeasureError> {
        if !len.is_multiple_of(PAGE_SIZE as u64) {
            return Err(MeasureError::NotPageAligned { what: "sev metadata section", value: len });
        }
        let mut off = 0;
        while off < len {
            self.update(t, gpa + off, &[0u8; 48]);
            off += PAGE_SIZE as u64;
        }
        Ok(())
    }
}

/// Everything that determines an SEV-SNP launch digest for QEMU direct kernel boot.
#[derive(Debug, Clone, Copy)]
pub struct SnpLaunchInputs<'a> {
    /// The OVMF image (`-bios`), an AmdSev build for measured direct boot.
    pub ovmf: &'a [u8],
    /// The kernel (`-kernel`); `None` boots without kernel hashes (OVMF-only digest).
    pub kernel: Option<&'a [u8]>,
    /// The initrd (`-initrd`), if any. Ignored without a kernel.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line (`-append`, `""` when absent). Ignored without a kernel.
    pub cmdline: &'a str,
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// CPUID signature of the vCPU model (e.g. [`vcpu_sig_of`]`("EPYC-v4")`).
    pub vcpu_sig: u32,
    /// `SEV_FEATURES` (QEMU default with Linux KVM: `0x21` = SNPActive | DebugSwap).
    pub guest_features: u64,
    /// The hypervisor.
    pub vmm: VmmType,
    /// A precomputed digest of the OVMF pages ([`ovmf_digest`]), to seed from instead of
    /// hashing `ovmf` (whose footer is still parsed).
    pub ovmf_digest: Option<LaunchDigest>,
}

/// The digest after measuring only the OVMF image's pages (sev-snp-measure's
/// `--snp-ovmf-hash`), useful to publish a firmware once and seed per-kernel digests.
pub fn ovmf_digest(ovmf: &[u8]) -> Result<LaunchDigest, MeasureError> {
    let fw = SevFirmware::parse(ovmf)?;
    let mut g = Gctx { ld: [0; 48] };
    g.normal_pages(fw.gpa(), fw.data())?;
    Ok(g.ld)
}

/// The SEV-SNP launch digest (`MEASUREMENT` of the attestation report).
pub fn launch_digest(inp: &SnpLaunchInputs<'_>) -> Result<LaunchDigest, MeasureError> {
    check_vcpus(inp.vcpus)?;
    let fw = SevFirmware::parse(inp.ovmf)?;
    let mut g = Gctx { ld: [0; 48] };
    match inp.ovmf_digest {
        Some(seed) => g.ld = seed,
        None => g.normal_pages(fw.gpa(), fw.data())?,
    }
    let hashes = inp.kernel.map(|k| SevHashes::new(k, inp.initrd, inp.cmdline));
    metadata_pages(&mut g, &fw, &fw, hashes.as_ref(), inp.vmm)?;
    let ap_eip = ap_eip(&fw, inp.vcpus)?;
    let bsp = vmsa_page(BSP_EIP, inp.guest_features, inp.vcpu_sig, inp.vmm);
    let ap = vmsa_page(ap_eip, inp.guest_features, inp.vcpu_sig, inp.vmm);
    for i in 0..inp.vcpus {
        let page = if i == 0 { &bsp } else { &ap };
        let d: [u8; 48] = Sha384::digest(page).into();
        g.update(PageType::Vmsa, VMSA_GPA, &d);
    }
    Ok(g.ld)
}

/// The AP reset EIP; OVMF without one can only start a single vCPU.
fn ap_eip(fw: &SevFirmware<'_>, vcpus: u32) -> Result<u32, MeasureError> {
    let eip = fw.sev_es_reset_eip()?;
    if eip == 0 && vcpus > 1 {
        return Err(MeasureError::InvalidParameter("ap reset eip is 0 but vcpus > 1".into()));
    }
    Ok(eip)
}

fn check_vcpus(vcpus: u32) -> Result<(), MeasureError> {
    if vcpus == 0 || vcpus > 512 {
        return Err(MeasureError::InvalidParameter(format!("vcpus must be 1..=512, got {vcpus}")));
    }
    Ok(())
}

/// Measures the pages `meta`'s SEV metadata declares; the hashes page goes where `hashes_fw`
/// (the OVMF image) says the table lives.
fn metadata_pages(
    g: &mut Gctx,
    meta: &SevFirmware<'_>,
    hashes_fw: &SevFirmware<'_>,
    hashes: Option<&SevHashes>,
    vmm: VmmType,
) -> Result<(), MeasureError> {
    if hashes.is_some() && !meta.has_section(SectionType::SnpKernelHashes) {
        return Err(MeasureError::NoKernelHashesSupport("SNP_KERNEL_HASHES metadata section"));
    }
    for s in meta.sections() {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match s.kind {
            SectionType::SnpSecMemory if vmm == VmmType::Gce => g.empty_pages(PageType::Unmeasured, gpa, size)?,
            SectionType::SnpSecMemory | SectionType::SvsmCaa => g.empty_pages(PageType::Zero, gpa, size)?,
            SectionType::SnpSecrets => g.update(PageType::Secrets, gpa, &[0; 48]),
            SectionType::Cpuid => {
                if vmm != VmmType::Ec2 {
                    g.update(PageType::Cpuid, gpa, &[0; 48])
                }
            }
            SectionType::SnpKernelHashes => match hashes {
                Some(h) => {
                    if size != PAGE_SIZE as u64 {
                        return Err(MeasureError::InvalidParameter(format!(
                            "SNP_KERNEL_HASHES section is {size:#x} bytes, expected one page"
                        )));
                    }
                    let table_gpa = hashes_fw.sev_hashes_table_gpa()?;
                    let page = h.page(table_gpa as usize & (PAGE_SIZE - 1))?;
                    g.normal_pages(gpa, &page)?;
                }
                None => g.empty_pages(PageType::Zero, gpa, size)?,
            },
            SectionType::Unknown(n) => return Err(MeasureError::UnknownSectionType(n)),
        }
    }
    // EC2 measures the CPUID page(s) last.
    if vmm == VmmType::Ec2 {
        for s in meta.sections().iter().filter(|s| s.kind == SectionType::Cpuid) {
            g.update(PageType::Cpuid, u64::from(s.gpa), &[0; 48]);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// VMSA (AMD APM vol. 2, table B-4 "VMSA layout, state save area for SEV-ES")
// ---------------------------------------------------------------------------------------

/// A VMSA page under construction: offsets are those of the APM's save-area table.
struct Vmsa([u8; PAGE_SIZE]);

impl Vmsa {
    fn put(&mut self, off: usize, bytes: &[u8]) {
        if let Some(d) = off.checked_add(bytes.len()).and_then(|e| self.0.get_mut(off..e)) {
            d.copy_from_slice(bytes);
        }
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
    /// `struct vmcb_seg { u16 selector; u16 attrib; u32 limit; u64 base; }`.
    fn seg(&mut self, off: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.u16(off, selector);
        self.u16(off + 2, attrib);
        self.u32(off + 4, limit);
        self.u64(off + 8, base);
    }
}

mod off {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const EFER: usize = 0x0d0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3b0;
    pub const XCR0: usize = 0x3e8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

/// The initial VMSA of one vCPU starting at `eip` (real mode, CS base = `eip & 0xffff0000`).
fn vmsa_page(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: VmmType) -> [u8; PAGE_SIZE] {
    let mut g_pat: u64 = 0x0007_0406_0007_0406; // PAT MSR reset value (APM vol. 2 §A.3)
    let (cs_flags, ss_flags, tr_flags, rdx, mxcsr, fcw) = match vmm {
        VmmType::Qemu => (0x9b, 0x93, 0x8b, u64::from(vcpu_sig), 0x1f80, 0x37f),
        VmmType::Ec2 => (if eip == BSP_EIP { 0x9a } else { 0x9b }, 0x92, 0x83, 0x600, 0, 0),
        VmmType::Gce => {
            g_pat = 0x0007_0106; // GCE overrides the default PAT
            (0x9b, 0x93, 0x8b, 0x600, 0, 0)
        }
    };
    let mut v = Vmsa([0; PAGE_SIZE]);
    v.seg(off::ES, 0, 0x93, 0xffff, 0);
    v.seg(off::CS, 0xf000, cs_flags, 0xffff, u64::from(eip & 0xffff_0000));
    v.seg(off::SS, 0, ss_flags, 0xffff, 0);
    v.seg(off::DS, 0, 0x93, 0xffff, 0);
    v.seg(off::FS, 0, 0x93, 0xffff, 0);
    v.seg(off::GS, 0, 0x93, 0xffff, 0);
    v.seg(off::GDTR, 0, 0, 0xffff, 0);
    v.seg(off::IDTR, 0, 0, 0xffff, 0);
    v.seg(off::LDTR, 0, 0x82, 0xffff, 0);
    v.seg(off::TR, 0, tr_flags, 0xffff, 0);
    v.u64(off::EFER, 0x1000); // KVM sets EFER.SVME
    v.u64(off::CR4, 0x40); // KVM sets CR4.MCE
    v.u64(off::CR0, 0x10);
    v.u64(off::DR7, 0x400);
    v.u64(off::DR6, 0xffff_0ff0);
    v.u64(off::RFLAGS, 0x2);
    v.u64(off::RIP, u64::from(eip & 0xffff));
    v.u64(off::G_PAT, g_pat);
    v.u64(off::RDX, rdx);
    v.u64(off::SEV_FEATURES, sev_features);
    v.u64(off::XCR0, 0x1);
    v.u32(off::MXCSR, mxcsr);
    v.u16(off::X87_FCW, fcw);
    v.0
}

/// The VMSA Coconut-SVSM's QEMU builds: 32-bit protected mode at the SVSM entry point.
fn svsm_vmsa_page(eip: u64, vcpu_sig: u32) -> [u8; PAGE_SIZE] {
    let mut v = Vmsa([0; PAGE_SIZE]);
    v.seg(off::ES, 16, 0xc93, 0xffff_ffff, 0);
    v.seg(off::CS, 8, 0xc9b, 0xffff_ffff, 0);
    v.seg(off::SS, 16, 0xc93, 0xffff_ffff, 0);
    v.seg(off::DS, 16, 0xc93, 0xffff_ffff, 0);
    v.seg(off::FS, 16, 0xc93, 0xffff_ffff, 0);
    v.seg(off::GS, 0, 0x093, 0xffff, 0);
    v.seg(off::GDTR, 0, 0, 0xffff, 0);
    v.seg(off::IDTR, 0, 0, 0xffff, 0);
    v.seg(off::LDTR, 0, 0x82, 0xffff, 0);
    v.seg(off::TR, 0, 0x8b, 0xffff, 0);
    v.u64(off::EFER, 0x1000);
    v.u64(off::CR4, 0x40);
    v.u64(off::CR0, 0x11);
    v.u64(off::DR7, 0x400);
    v.u64(off::DR6, 0xffff_0ff0);
    v.u64(off::RFLAGS, 0x2);
    v.u64(off::RIP, eip);
    v.u64(off::G_PAT, 0x0007_0406_0007_0406);
    v.u64(off::RDX, u64::from(vcpu_sig));
    v.u64(off::SEV_FEATURES, FEATURE_SNP_ACTIVE);
    v.u64(off::XCR0, 0x1);
    v.u32(off::MXCSR, 0x1f80);
    // x87 FCW stays 0: the reference measurement (taken on hardware) has it so.
    v.0
}

/// Inputs of an SNP launch of Coconut-SVSM with OVMF above it (sev-snp-measure
/// `snp:svsm`; QEMU only).
#[derive(Debug, Clone, Copy)]
pub struct SvsmLaunchInputs<'a> {
    /// The OVMF image built for the SVSM.
    pub ovmf: &'a [u8],
    /// The SVSM image, mapped right below OVMF and its variable store.
    pub svsm: &'a [u8],
    /// Size of the OVMF variable store between them.
    pub ovmf_vars_size: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// CPUID signature.
    pub vcpu_sig: u32,
}

/// The launch digest of an SVSM launch.
pub fn svsm_launch_digest(inp: &SvsmLaunchInputs<'_>) -> Result<LaunchDigest, MeasureError> {
    check_vcpus(inp.vcpus)?;
    let ovmf = SevFirmware::parse(inp.ovmf)?;
    let end = ovmf
        .gpa()
        .checked_sub(inp.ovmf_vars_size)
        .ok_or_else(|| MeasureError::InvalidParameter("ovmf_vars_size larger than the ovmf gpa".into()))?;
    let svsm = SevFirmware::parse_ending_at(inp.svsm, end)?;
    let info = svsm.table().u32_of(&SVSM_INFO_GUID, "svsm info")?;
    let eip = u64::from(info) + svsm.gpa();
    let mut g = Gctx { ld: [0; 48] };
    g.normal_pages(ovmf.gpa(), ovmf.data())?;
    g.normal_pages(svsm.gpa(), svsm.data())?;
    metadata_pages(&mut g, &svsm, &svsm, None, VmmType::Qemu)?;
    let page = svsm_vmsa_page(eip, inp.vcpu_sig);
    let d: [u8; 48] = Sha384::digest(page).into();
    for _ in 0..inp.vcpus {
        g.update(PageType::Vmsa, VMSA_GPA, &d);
    }
    Ok(g.ld)
}

fn sev_hash_prefix(
    fw: &SevFirmware<'_>,
    kernel: Option<&[u8]>,
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<Sha256, MeasureError> {
    let mut h = Sha256::new();
    h.update(fw.data());
    if let Some(k) = kernel {
        if !fw.supports_sev_hashes_table() {
            return Err(MeasureError::NoKernelHashesSupport("SEV hashes table"));
        }
        h.update(SevHashes::new(k, initrd, cmdline).table());
    }
    Ok(h)
}

/// The SEV (plain, non-ES) launch digest: SHA-256 over the OVMF image and hashes table.
pub fn sev_launch_digest(
    ovmf: &[u8],
    kernel: Option<&[u8]>,
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<[u8; 32], MeasureError> {
    let fw = SevFirmware::parse(ovmf)?;
    Ok(sev_hash_prefix(&fw, kernel, initrd, cmdline)?.finalize().into())
}

/// The SEV-ES launch digest: SHA-256 over OVMF, hashes table and the VMSA pages.
pub fn sev_es_launch_digest(inp: &SnpLaunchInputs<'_>) -> Result<[u8; 32], MeasureError> {
    check_vcpus(inp.vcpus)?;
    let fw = SevFirmware::parse(inp.ovmf)?;
    let mut h = sev_hash_prefix(&fw, inp.kernel, inp.initrd, inp.cmdline)?;
    let ap_eip = ap_eip(&fw, inp.vcpus)?;
    for i in 0..inp.vcpus {
        let eip = if i == 0 { BSP_EIP } else { ap_eip };
        h.update(vmsa_page(eip, 0, inp.vcpu_sig, inp.vmm));
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn cpu_signatures() {
        assert_eq!(vcpu_sig_of("EPYC-v4"), Some(0x0080_0f12));
        assert_eq!(vcpu_sig_of("EPYC-Milan"), Some(0x00a0_0f11));
        assert_eq!(vcpu_sig_of("EPYC-Genoa"), Some(0x00a1_0f10));
        assert_eq!(vcpu_sig_of("EPYC-Turin"), Some(0x00b0_0f00));
        assert_eq!(vcpu_sig_of("Skylake"), None);
    }

    #[test]
    fn hashes_table_layout() {
        let h = SevHashes::new(b"", None, "");
        let t = h.table();
        assert_eq!(t.len(), 176);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        // cmdline entry first, hash of a lone NUL.
        assert_eq!(&t[18..34], &CMDLINE_ENTRY_GUID);
        assert_eq!(&t[36..68], Sha256::digest([0u8]).as_slice());
        assert_eq!(&t[168..], &[0u8; 8]);
        assert!(h.page(4096 - 176).is_ok());
        assert!(h.page(4096 - 175).is_err());
    }

    #[test]
    fn vmsa_layout_spot_checks() {
        let p = vmsa_page(0xffff_fff0, 0x21, 0x0083_0f12, VmmType::Qemu);
        assert_eq!(&p[0x10..0x20], &[0x00, 0xf0, 0x9b, 0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(u64::from_le_bytes(p[0x178..0x180].try_into().unwrap()), 0xfff0);
        assert_eq!(u64::from_le_bytes(p[0x3b0..0x3b8].try_into().unwrap()), 0x21);
        assert_eq!(p.iter().skip(0x420).filter(|b| **b != 0).count(), 0);
    }

    #[test]
    fn bad_vcpus_rejected() {
        let inp = SnpLaunchInputs {
            ovmf: &[],
            kernel: None,
            initrd: None,
            cmdline: "",
            vcpus: 0,
            vcpu_sig: 0,
            guest_features: 1,
            vmm: VmmType::Qemu,
            ovmf_digest: None,
        };
        assert!(matches!(launch_digest(&inp), Err(MeasureError::InvalidParameter(_))));
    }

    #[test]
    fn truncated_images_never_panic() {
        let mut img = vec![0u8; 8192];
        // A footer pointing at a metadata entry whose offset is out of range.
        let n = img.len();
        let mut table = Vec::new();
        table.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
        table.extend_from_slice(&22u16.to_le_bytes());
        table.extend_from_slice(&SEV_METADATA_GUID);
        let foot = n - 32 - 18;
        img[foot - table.len()..foot].copy_from_slice(&table);
        img[foot..foot + 2].copy_from_slice(&((table.len() + 18) as u16).to_le_bytes());
        img[foot + 2..foot + 18].copy_from_slice(&crate::ovmf::FOOTER_GUID);
        assert!(SevFirmware::parse(&img).is_err());
        for cut in (0..img.len()).step_by(97) {
            let _ = SevFirmware::parse(&img[cut..]);
        }
    }
}
