//! Published minimum SEV-SNP TCB levels per product, with the source of every value, and the
//! rule for when PLATFORM_INFO's ALIAS_CHECK_COMPLETE bit must be set. `attest policy --from`
//! writes [`MIN_TCB_TABLE`] into a generated policy (`[snp.product_min_tcb]`); verification
//! itself only ever compares against the policy, never against this table directly.
//!
//! A value is in the table only when a public source states it (or states the bound it is
//! derived from, named in `how`). A component no source pins is `None` ("not pinned by the
//! table"), with the reason in [`MinTcbRow::unpinned`]. A product with no row (Turin) is
//! refused by a generated policy: it lists minimums per product, and a product it does not
//! list has no minimum to meet.
//!
//! Microcode SPL: the TCB's MICROCODE byte is the low byte of the lowest microcode patch
//! level of all cores (SEV-SNP ABI, pub. 56860, TCB_VERSION; e.g. the genuine dstack Milan
//! report in the test data has patch 0x0A0011D5 and MICROCODE 213 = 0xD5). Each CPU stepping
//! has its own patch line: Milan-X (stepping 2, line 0x0A0012xx) and Bergamo/Siena (Genoa
//! product, models A0h-AFh, line 0x0AA002xx) run lower SPLs than the rows below, so a
//! generated policy refuses them; their owners set `[snp.product_min_tcb]` by hand.
//!
//! Trust: these numbers are the owner's default expectations, copied from the sources named;
//! they are reviewed by whoever regenerates a policy, not derived from evidence.

use crate::claims::SnpProduct;

/// One product's minimum TCB components and where each comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinTcbRow {
    /// Product line (the VCEK's chain).
    pub product: SnpProduct,
    /// Lowest PSP bootloader SPL.
    pub bootloader: Option<u8>,
    /// Lowest PSP OS (TEE) SPL.
    pub tee: Option<u8>,
    /// Lowest SNP firmware SPL.
    pub snp: Option<u8>,
    /// Lowest microcode SPL (classic stepping-1 parts, see the module docs).
    pub microcode: Option<u8>,
    /// Lowest FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// Source of bootloader, tee and snp.
    pub firmware_source: &'static str,
    /// Source of microcode, and how the value follows from it.
    pub microcode_source: &'static str,
    /// Components the table does not pin, and why.
    pub unpinned: &'static str,
}

/// AMD's note in linux-firmware's amd-ucode/README (commit
/// ad91544767665e911386e62ecebaa969e2cfb1c0, Oct 2025, archived on oss-security 2025-11-01,
/// "Re: Xen Security Notice 2 (CVE-2024-35347)"): for machines without the BIOS update for
/// AMD-SB-7033 (microcode signature verification, "EntrySign"; SEV side CVE-2024-56161,
/// AMD-SB-3019) it ships "the highest possible level without the microcode signing fix":
/// Milan 19/01/1 patch 0x0a0011d5, Milan-X 19/01/2 0x0a001238, Genoa 19/11/1 0x0a101148,
/// Genoa-X 19/11/2 0x0a101248, Bergamo 19/a0/2 0x0aa00215. A microcode SPL at or below
/// those can be replaced by forged microcode, which voids every SEV-SNP guarantee; the
/// minimum is the next level up.
pub const ENTRYSIGN_SOURCE: &str = "AMD, linux-firmware amd-ucode/README, commit ad91544767665e911386e62ecebaa969e2cfb1c0: \
     highest patch without the microcode signing fix (AMD-SB-7033 / AMD-SB-3019)";

/// The table. Products not listed (Turin) have no sourced minimum.
pub const MIN_TCB_TABLE: [MinTcbRow; 2] = [
    MinTcbRow {
        product: SnpProduct::Milan,
        // Microsoft CCF documents TCB_VERSION db18000000000004 (bootloader 4, tee 0, snp 24,
        // microcode 219) as the Milan (CPUID 00a00f11) value of its minimum-TCB governance
        // action: github.com/microsoft/CCF doc/operations/platforms/snp.rst, section
        // "Setting the minimum TCB Version using set_snp_minimum_tcb_version_hex", changed to
        // this value from d315000000000004 in PR #7749 (commit
        // e0fe92841860a7b769f73ffdb7126c0d6915d8fa, March 2026).
        bootloader: Some(4),
        tee: Some(0),
        snp: Some(24),
        // > 0xD5 (= 213), the highest Milan B1 patch without the signing fix (ENTRYSIGN_SOURCE).
        // CCF's value (219) is higher still; the table keeps the bound AMD states.
        microcode: Some(214),
        fmc: None,
        firmware_source: "Microsoft CCF, doc/operations/platforms/snp.rst, PR #7749 \
                          (commit e0fe92841860a7b769f73ffdb7126c0d6915d8fa): Milan TCB db18000000000004",
        microcode_source: "first level above 0x0a0011d5 (SPL 213); AMD, linux-firmware amd-ucode/README, commit \
                           ad91544767665e911386e62ecebaa969e2cfb1c0 (AMD-SB-7033 / AMD-SB-3019)",
        unpinned: "",
    },
    MinTcbRow {
        product: SnpProduct::Genoa,
        // Tinfoil's verifier (github.com/tinfoilsh/verifier, attestation/sev.go at commit
        // 77e68207bfa8b477c2f3f319e3e18026579a9c13, `mintcb`): BlSpl 0x7, TeeSpl 0x0,
        // SnpSpl 0xe for Genoa, required of REPORTED_TCB and LAUNCH_TCB.
        bootloader: Some(7),
        tee: Some(0),
        snp: Some(14),
        // Tinfoil's UcodeSpl 0x48 (72) is exactly the highest Genoa B1 patch WITHOUT the
        // signing fix (0x0a101148, ENTRYSIGN_SOURCE), so the table takes the next level up.
        microcode: Some(73),
        fmc: None,
        firmware_source: "Tinfoil verifier, attestation/sev.go (commit 77e68207bfa8b477c2f3f319e3e18026579a9c13): \
                          bl 7, tee 0, snp 14",
        microcode_source: "first level above 0x0a101148 (SPL 72); AMD, linux-firmware amd-ucode/README, commit \
                           ad91544767665e911386e62ecebaa969e2cfb1c0 (AMD-SB-7033 / AMD-SB-3019)",
        unpinned: "",
    },
];

/// Why Turin has no row: no verifier or AMD text found states Turin minimums (its TCB
/// layout differs and its microcode SPLs are small sequential numbers, not patch bytes).
pub const TURIN_UNPINNED: &str =
    "no published Turin minimum was found (AMD bulletins and well-kept verifiers searched); a generated policy refuses Turin";

/// The row of `product`, if the table has one.
pub fn row(product: SnpProduct) -> Option<&'static MinTcbRow> {
    MIN_TCB_TABLE.iter().find(|r| r.product == product)
}

/// A firmware version as CURRENT_MAJOR.CURRENT_MINOR.CURRENT_BUILD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct FirmwareVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Build.
    pub build: u8,
}

impl std::fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// The first SNP firmware of `product` that reports PLATFORM_INFO bit 5 ALIAS_CHECK_COMPLETE.
///
/// Source: the `sev` crate (virtee/sev 8.0.0, src/firmware/host/types/snp.rs, PlatformInit
/// `alias_check_complete`: "Added in firmware version: Milan family: 1.55.22, Genoa family:
/// 1.55.38"; src/firmware/guest/types/snp.rs: the bit appears in PLATFORM_INFO from report
/// version 3). The bit means "alias detection has completed since the last system reset and
/// there are no aliasing addresses", the BadRAM mitigation (AMD-SB-3015, CVE-2024-21944;
/// go-sev-guest abi/abi.go `AliasCheckComplete`).
///
/// Turin: no version is published; every Turin report is v3 or later, and the rule requires
/// the bit on all of them (fail closed; `[snp] allow_alias_check_incomplete` relaxes it).
pub fn alias_check_since(product: SnpProduct) -> Option<FirmwareVersion> {
    match product {
        SnpProduct::Milan => Some(FirmwareVersion { major: 1, minor: 55, build: 22 }),
        SnpProduct::Genoa => Some(FirmwareVersion { major: 1, minor: 55, build: 38 }),
        SnpProduct::Turin => Some(FirmwareVersion { major: 0, minor: 0, build: 0 }),
        _ => None,
    }
}

/// Whether a report of `version` from `product` firmware `fw` carries the alias-check bit.
pub fn reports_alias_check(product: SnpProduct, report_version: u32, fw: FirmwareVersion) -> bool {
    report_version >= 3 && alias_check_since(product).is_some_and(|since| fw >= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_sourced_and_microcode_is_above_the_unfixed_patches() {
        for r in MIN_TCB_TABLE {
            assert!(!r.firmware_source.is_empty() && !r.microcode_source.is_empty(), "{r:?}");
            assert!(r.microcode_source.contains(ENTRYSIGN_SOURCE.split(':').next().unwrap_or("?")), "{r:?}");
        }
        // The highest patches without the signing fix, from AMD's note (low byte = SPL).
        assert!(row(SnpProduct::Milan).and_then(|r| r.microcode).is_some_and(|m| m > 0xD5));
        assert!(row(SnpProduct::Genoa).and_then(|r| r.microcode).is_some_and(|m| m > 0x48));
        assert!(row(SnpProduct::Turin).is_none());
    }

    #[test]
    fn alias_rule_follows_report_version_and_firmware() {
        let v = |major, minor, build| FirmwareVersion { major, minor, build };
        assert!(!reports_alias_check(SnpProduct::Milan, 2, v(1, 55, 29)));
        assert!(!reports_alias_check(SnpProduct::Milan, 3, v(1, 55, 21)));
        assert!(reports_alias_check(SnpProduct::Milan, 3, v(1, 55, 22)));
        assert!(!reports_alias_check(SnpProduct::Genoa, 3, v(1, 55, 37)));
        assert!(reports_alias_check(SnpProduct::Genoa, 5, v(1, 56, 0)));
        assert!(reports_alias_check(SnpProduct::Turin, 3, v(1, 55, 0)));
        assert!(!reports_alias_check(SnpProduct::Simulated, 3, v(9, 9, 9)));
        assert_eq!(v(1, 55, 22).to_string(), "1.55.22");
    }
}
