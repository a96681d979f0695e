//! The SEV-SNP ATTESTATION_REPORT (AMD pub. 56860, SEV-SNP firmware ABI, Table 23) as bytes
//! and as the `sev` crate's [`AttestationReport`]: length and version checks, the signed
//! region and signature taken from the *original* input, and raw TCB words.
//!
//! Trust: none. Everything here is parsed from untrusted bytes; [`SnpReport::parse`] is total
//! (any input gives `Ok` or a typed [`SnpError`]). Nothing is verified here.

use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::claims::{SnpClaims, SnpProduct, SnpSigner};
use crate::sim::SIM_CHIP_ID_MARKER;
use crate::snp::SnpError;
use crate::snp::minimums::FirmwareVersion;

/// Length of every report version this crate accepts.
pub const REPORT_LEN: usize = 1184;
/// The signature covers bytes `0x000..0x2A0`.
pub const SIGNED_LEN: usize = 0x2A0;
/// SIGNATURE_ALGO value of a genuine report: ECDSA P-384 with SHA-384.
pub const SIGNATURE_ALGO_ECDSA_P384_SHA384: u32 = 1;

// Offsets from Table 23 (all little-endian).
const OFF_VERSION: usize = 0x000;
const OFF_SIG_ALGO: usize = 0x034;
const OFF_CURRENT_TCB: usize = 0x038;
const OFF_PLATFORM_INFO: usize = 0x040;
const OFF_KEY_INFO: usize = 0x048;
const OFF_REPORTED_TCB: usize = 0x180;
const OFF_CPUID_FAM: usize = 0x188;
const OFF_CPUID_MOD: usize = 0x189;
const OFF_CPUID_STEP: usize = 0x18A;
const OFF_CHIP_ID: usize = 0x1A0;
const OFF_COMMITTED_TCB: usize = 0x1E0;
const OFF_CURRENT_BUILD: usize = 0x1E8;
const OFF_CURRENT_MINOR: usize = 0x1E9;
const OFF_CURRENT_MAJOR: usize = 0x1EA;
const OFF_LAUNCH_TCB: usize = 0x1F0;
const OFF_SIG_R: usize = 0x2A0;
const OFF_SIG_S: usize = 0x2E8;
/// Each signature component is a 72-byte little-endian field; P-384 uses the low 48.
pub const SIG_COMPONENT_LEN: usize = 72;

/// Bits of the guest POLICY word (Table 10 of the ABI spec).
pub mod policy_bits {
    /// SMT allowed (bit 16). Clear: the firmware refuses to run the guest with SMT on.
    pub const SMT: u64 = 1 << 16;
    /// Reserved, must be one (bit 17).
    pub const RESERVED_ONE: u64 = 1 << 17;
    /// A migration agent may be associated with the guest (bit 18).
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Debugging is allowed: the hypervisor can read and write guest memory (bit 19).
    pub const DEBUG: u64 = 1 << 19;
    /// Guest may only run on one socket (bit 20).
    pub const SINGLE_SOCKET: u64 = 1 << 20;
}

/// Bits of the PLATFORM_INFO word.
pub mod platform_info_bits {
    /// SMT is enabled on the platform (bit 0).
    pub const SMT_EN: u64 = 1 << 0;
    /// Transparent SME is enabled (bit 1).
    pub const TSME_EN: u64 = 1 << 1;
    /// ALIAS_CHECK_COMPLETE (bit 5): memory alias detection has completed since the last
    /// reset and found no aliasing addresses (BadRAM mitigation, AMD-SB-3015). Reported from
    /// report version 3 and firmware 1.55.22 (Milan) / 1.55.38 (Genoa); see
    /// [`crate::snp::minimums::alias_check_since`].
    pub const ALIAS_CHECK_COMPLETE: u64 = 1 << 5;
}

/// Which endorsement key the report says signed it (KEY_INFO bits 4:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningKeyKind {
    /// 0: VCEK.
    Vcek,
    /// 1: VLEK.
    Vlek,
    /// 7: no key (the report is unsigned).
    None,
    /// Any other value (reserved).
    Unknown(u32),
}

/// Components of a TCB_VERSION word. The byte layout depends on the product: Milan and
/// Genoa put BOOT_LOADER, TEE, SNP, MICROCODE at bytes 0, 1, 6, 7; Turin puts FMC,
/// BOOT_LOADER, TEE, SNP at bytes 0..4 and MICROCODE at byte 7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TcbParts {
    /// FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// PSP bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl TcbParts {
    /// Split a raw TCB_VERSION in the layout of `product`.
    pub fn from_raw(raw: u64, product: SnpProduct) -> Self {
        let b = raw.to_le_bytes();
        if product == SnpProduct::Turin {
            TcbParts { fmc: Some(b[0]), bootloader: b[1], tee: b[2], snp: b[3], microcode: b[7] }
        } else {
            TcbParts { fmc: None, bootloader: b[0], tee: b[1], snp: b[6], microcode: b[7] }
        }
    }
}

impl std::fmt::Display for TcbParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(f, "bl={} tee={} snp={} ucode={}", self.bootloader, self.tee, self.snp, self.microcode)
    }
}

/// A length- and version-checked SNP attestation report.
#[derive(Clone, Debug)]
pub struct SnpReport {
    raw: Box<[u8; REPORT_LEN]>,
    parsed: AttestationReport,
}

/// The `N` bytes at `off` (zeros past the end; the offsets used are constants inside the report).
fn bytes_at<const N: usize>(raw: &[u8; REPORT_LEN], off: usize) -> [u8; N] {
    raw.get(off..).and_then(<[u8]>::first_chunk::<N>).copied().unwrap_or([0; N])
}

fn u8_at(raw: &[u8; REPORT_LEN], off: usize) -> u8 {
    raw.get(off).copied().unwrap_or(0)
}

fn u32_at(raw: &[u8; REPORT_LEN], off: usize) -> u32 {
    u32::from_le_bytes(bytes_at(raw, off))
}

fn u64_at(raw: &[u8; REPORT_LEN], off: usize) -> u64 {
    u64::from_le_bytes(bytes_at(raw, off))
}

/// Start of the reserved, unsigned bytes after the signature structure.
const OFF_UNSIGNED: usize = OFF_SIG_S + SIG_COMPONENT_LEN;

/// The product a v3+ report's CPUID family/model names (AMD PPR family/model tables).
pub fn product_from_cpuid(family: u8, model: u8) -> Option<SnpProduct> {
    match (family, model) {
        (0x19, 0x00..=0x0F) => Some(SnpProduct::Milan),
        (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(SnpProduct::Genoa),
        (0x1A, 0x00..=0x11) => Some(SnpProduct::Turin),
        _ => None,
    }
}

impl SnpReport {
    /// Size of the wire structure.
    pub const SIZE: usize = REPORT_LEN;

    /// Check length and version, then decode with the `sev` crate.
    pub fn parse(bytes: &[u8]) -> Result<Self, SnpError> {
        let raw: [u8; REPORT_LEN] =
            bytes.try_into().map_err(|_| SnpError::ReportLength { expected: REPORT_LEN, got: bytes.len() })?;
        let raw = Box::new(raw);
        let version = u32_at(&raw, OFF_VERSION);
        if !matches!(version, 2 | 3 | 5) {
            return Err(SnpError::UnsupportedVersion(version));
        }
        // The signature structure ends at 0x330; the rest up to 0x4A0 is reserved and unsigned.
        // Require zeros so that unsigned bytes cannot be varied undetected.
        if let Some((offset, _)) = raw.iter().enumerate().skip(OFF_UNSIGNED).find(|&(_, &b)| b != 0) {
            return Err(SnpError::UnsignedBytes { offset });
        }
        if version >= 3 {
            let (fam, model) = (u8_at(&raw, OFF_CPUID_FAM), u8_at(&raw, OFF_CPUID_MOD));
            if product_from_cpuid(fam, model).is_none() {
                return Err(SnpError::UnknownCpu { family: fam, model, stepping: u8_at(&raw, OFF_CPUID_STEP) });
            }
        }
        // sev 8 guesses the TCB layout of a v2 report from CHIP_ID and refuses an all-zero
        // (masked) CHIP_ID. This crate takes the layout from the verified chain instead, so a
        // masked v2 report is decoded from a copy with a non-zero CHIP_ID, then restored.
        let chip_masked = bytes_at::<64>(&raw, OFF_CHIP_ID).iter().all(|&b| b == 0);
        let mut parsed = if version == 2 && chip_masked {
            let mut copy = *raw;
            copy[OFF_CHIP_ID + 63] = 1;
            let mut p = AttestationReport::from_bytes(&copy).map_err(|e| SnpError::Decode(e.to_string()))?;
            p.chip_id = [0; 64];
            p
        } else {
            AttestationReport::from_bytes(raw.as_slice()).map_err(|e| SnpError::Decode(e.to_string()))?
        };
        parsed.version = version;
        Ok(SnpReport { raw, parsed })
    }

    /// The `sev` crate's decoded view (its `Display` is a full field dump).
    pub fn sev(&self) -> &AttestationReport {
        &self.parsed
    }

    /// The original bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw[..]
    }

    /// Report format version (2, 3 or 5).
    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    /// SIGNATURE_ALGO.
    pub fn signature_algo(&self) -> u32 {
        u32_at(&self.raw, OFF_SIG_ALGO)
    }

    /// The bytes the signature covers, from the original input.
    pub fn signed_bytes(&self) -> &[u8] {
        let raw: &[u8; REPORT_LEN] = &self.raw;
        &raw[..SIGNED_LEN]
    }

    /// Signature R, little-endian 72-byte field.
    pub fn signature_r_le(&self) -> &[u8] {
        let raw: &[u8; REPORT_LEN] = &self.raw;
        &raw[OFF_SIG_R..OFF_SIG_R + SIG_COMPONENT_LEN]
    }

    /// Signature S, little-endian 72-byte field.
    pub fn signature_s_le(&self) -> &[u8] {
        let raw: &[u8; REPORT_LEN] = &self.raw;
        &raw[OFF_SIG_S..OFF_SIG_S + SIG_COMPONENT_LEN]
    }

    /// REPORTED_TCB as a raw word (the TCB the signing VCEK was derived for).
    pub fn reported_tcb(&self) -> u64 {
        u64_at(&self.raw, OFF_REPORTED_TCB)
    }

    /// CHIP_ID (all zero when MASK_CHIP_ID was set).
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.parsed.chip_id
    }

    /// True when CHIP_ID is all zero.
    pub fn chip_id_masked(&self) -> bool {
        self.parsed.chip_id.iter().all(|&b| b == 0)
    }

    /// KEY_INFO's SIGNING_KEY field.
    pub fn signing_key(&self) -> SigningKeyKind {
        match (u32_at(&self.raw, OFF_KEY_INFO) >> 2) & 0b111 {
            0 => SigningKeyKind::Vcek,
            1 => SigningKeyKind::Vlek,
            7 => SigningKeyKind::None,
            n => SigningKeyKind::Unknown(n),
        }
    }

    /// The product named by CPUID_FAM_ID / CPUID_MOD_ID (v3 and later; `None` for v2).
    pub fn cpuid_product(&self) -> Option<SnpProduct> {
        let (fam, model) = (u8_at(&self.raw, OFF_CPUID_FAM), u8_at(&self.raw, OFF_CPUID_MOD));
        if self.version() >= 3 { product_from_cpuid(fam, model) } else { None }
    }

    /// CURRENT_MAJOR.CURRENT_MINOR.CURRENT_BUILD: the firmware that made the report.
    pub fn current_firmware(&self) -> FirmwareVersion {
        FirmwareVersion {
            major: u8_at(&self.raw, OFF_CURRENT_MAJOR),
            minor: u8_at(&self.raw, OFF_CURRENT_MINOR),
            build: u8_at(&self.raw, OFF_CURRENT_BUILD),
        }
    }

    /// True when CHIP_ID carries the simulated-TEE marker ([`SIM_CHIP_ID_MARKER`]).
    pub fn is_simulated(&self) -> bool {
        self.parsed.chip_id.starts_with(SIM_CHIP_ID_MARKER)
    }

    /// The claims, once a verifier has established who signed the report.
    pub(crate) fn claims(&self, product: SnpProduct, signer: SnpSigner, simulated: bool) -> SnpClaims {
        let p = &self.parsed;
        SnpClaims {
            version: p.version,
            product,
            signer,
            guest_svn: p.guest_svn,
            policy: u64::from(p.policy),
            vmpl: p.vmpl,
            measurement: p.measurement.to_vec(),
            report_data: p.report_data.to_vec(),
            host_data: p.host_data.to_vec(),
            id_key_digest: p.id_key_digest.to_vec(),
            author_key_digest: p.author_key_digest.to_vec(),
            family_id: p.family_id.to_vec(),
            image_id: p.image_id.to_vec(),
            chip_id: p.chip_id.to_vec(),
            reported_tcb: self.reported_tcb(),
            current_tcb: u64_at(&self.raw, OFF_CURRENT_TCB),
            committed_tcb: u64_at(&self.raw, OFF_COMMITTED_TCB),
            launch_tcb: u64_at(&self.raw, OFF_LAUNCH_TCB),
            platform_info: u64_at(&self.raw, OFF_PLATFORM_INFO),
            current_firmware: self.current_firmware(),
            simulated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> Vec<u8> {
        let mut r = vec![0u8; REPORT_LEN];
        r[..4].copy_from_slice(&version.to_le_bytes());
        r[OFF_CHIP_ID] = 0xAA;
        r[OFF_CHIP_ID + 40] = 0xBB;
        r
    }

    #[test]
    fn wrong_lengths_are_typed_errors() {
        for len in [0, 1, 12, REPORT_LEN - 1, REPORT_LEN + 1, 4096] {
            let e = SnpReport::parse(&vec![2u8; len]).err();
            assert!(matches!(e, Some(SnpError::ReportLength { expected: REPORT_LEN, got }) if got == len), "{len}: {e:?}");
        }
        let msg = SnpReport::parse(&[0; 12]).err().map(|e| e.to_string());
        assert_eq!(msg.as_deref(), Some("report has the wrong length: expected 1184 bytes, got 12"));
    }

    #[test]
    fn unknown_versions_are_rejected() {
        for v in [0u32, 1, 4, 6, 0xFFFF_FFFF] {
            assert!(matches!(SnpReport::parse(&blank(v)), Err(SnpError::UnsupportedVersion(x)) if x == v));
        }
    }

    #[test]
    fn v3_with_unknown_cpu_is_rejected() {
        let mut r = blank(3);
        r[OFF_CPUID_FAM] = 0x17;
        assert!(matches!(SnpReport::parse(&r), Err(SnpError::UnknownCpu { family: 0x17, .. })));
        r[OFF_CPUID_FAM] = 0x19;
        r[OFF_CPUID_MOD] = 0x11;
        let rep = SnpReport::parse(&r).ok();
        assert_eq!(rep.and_then(|r| r.cpuid_product()), Some(SnpProduct::Genoa));
    }

    #[test]
    fn v5_turin_parses_and_masked_v2_is_accepted() {
        let mut r = blank(5);
        r[OFF_CPUID_FAM] = 0x1A;
        r[OFF_CPUID_MOD] = 0x02;
        let rep = SnpReport::parse(&r).ok();
        assert_eq!(rep.as_ref().map(|r| r.version()), Some(5));
        assert_eq!(rep.and_then(|r| r.cpuid_product()), Some(SnpProduct::Turin));

        let mut m = blank(2);
        m[OFF_CHIP_ID..OFF_CHIP_ID + 64].fill(0);
        let rep = SnpReport::parse(&m);
        assert!(rep.as_ref().is_ok_and(|r| r.chip_id_masked()), "{rep:?}");
    }

    #[test]
    fn unsigned_tail_must_be_zero() {
        let mut r = blank(2);
        r[REPORT_LEN - 1] = 1;
        assert!(matches!(SnpReport::parse(&r), Err(SnpError::UnsignedBytes { offset: 0x49F })));
    }

    #[test]
    fn tcb_layouts() {
        let milan = TcbParts::from_raw(0x7308_0000_0000_0003, SnpProduct::Milan);
        assert_eq!(milan, TcbParts { fmc: None, bootloader: 3, tee: 0, snp: 8, microcode: 115 });
        let turin = TcbParts::from_raw(0x0900_0000_0403_0201, SnpProduct::Turin);
        assert_eq!(turin, TcbParts { fmc: Some(1), bootloader: 2, tee: 3, snp: 4, microcode: 9 });
        assert_eq!(turin.to_string(), "fmc=1 bl=2 tee=3 snp=4 ucode=9");
    }

    #[test]
    fn key_info_signing_key() {
        let mut r = blank(2);
        assert_eq!(SnpReport::parse(&r).map(|r| r.signing_key()).ok(), Some(SigningKeyKind::Vcek));
        r[OFF_KEY_INFO] = 1 << 2;
        assert_eq!(SnpReport::parse(&r).map(|r| r.signing_key()).ok(), Some(SigningKeyKind::Vlek));
        r[OFF_KEY_INFO] = 7 << 2;
        assert_eq!(SnpReport::parse(&r).map(|r| r.signing_key()).ok(), Some(SigningKeyKind::None));
    }
}
