//! What hardware verification establishes, as plain data: the fields of an SNP report or a
//! TDX quote body after its signature chain has been checked. Policy (`crate::policy`)
//! judges claims; it never sees unverified bytes.
//!
//! [`Verified`] can only be constructed inside this crate, by the verifiers, so a
//! `Verified<SnpClaims>` in hand means the signature chain was checked.

use serde::Serialize;

/// Claims that passed signature/chain verification. Constructed only by this crate's verifiers.
#[derive(Clone, Debug, Serialize)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// Wrap claims whose signature chain has been verified. Crate-private on purpose.
    pub(crate) fn new(claims: T) -> Self {
        Verified(claims)
    }

    /// The verified claims.
    pub fn claims(&self) -> &T {
        &self.0
    }

    /// Consume and return the claims.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// AMD product line whose root of trust signed a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum SnpProduct {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004 (Zen 4).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
    /// The Chrysalis simulated TEE (not hardware).
    Simulated,
}

/// Which key signed an SNP report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum SnpSigner {
    /// Versioned Chip Endorsement Key (per chip, per TCB).
    Vcek,
    /// Versioned Loaded Endorsement Key (per cloud provider).
    Vlek,
    /// The simulated TEE's signing key.
    Simulated,
}

/// Fields of a verified AMD SEV-SNP ATTESTATION_REPORT (AMD pub. 56860, Table 23).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnpClaims {
    /// Report format version (2, 3 or 5).
    pub version: u32,
    /// Root of trust that signed the chain.
    pub product: SnpProduct,
    /// Key that signed the report.
    pub signer: SnpSigner,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy (bit 19 DEBUG, bit 18 MIGRATE_MA, bit 16 SMT, ...).
    pub policy: u64,
    /// VMPL the report was requested from.
    pub vmpl: u32,
    /// Launch measurement (48 bytes).
    pub measurement: Vec<u8>,
    /// REPORT_DATA supplied by the guest (64 bytes).
    pub report_data: Vec<u8>,
    /// HOST_DATA supplied at launch (32 bytes).
    pub host_data: Vec<u8>,
    /// ID key digest (48 bytes).
    pub id_key_digest: Vec<u8>,
    /// Author key digest (48 bytes).
    pub author_key_digest: Vec<u8>,
    /// Family ID (16 bytes).
    pub family_id: Vec<u8>,
    /// Image ID (16 bytes).
    pub image_id: Vec<u8>,
    /// CHIP_ID (64 bytes; zero when masked).
    pub chip_id: Vec<u8>,
    /// REPORTED_TCB as a raw 64-bit TCB_VERSION.
    pub reported_tcb: u64,
    /// CURRENT_TCB.
    pub current_tcb: u64,
    /// COMMITTED_TCB.
    pub committed_tcb: u64,
    /// LAUNCH_TCB.
    pub launch_tcb: u64,
    /// PLATFORM_INFO bits (SMT enabled, TSME enabled, ...).
    pub platform_info: u64,
    /// The SNP firmware running when the report was made (CURRENT_MAJOR.MINOR.BUILD).
    pub current_firmware: crate::snp::minimums::FirmwareVersion,
    /// True for the Chrysalis simulated TEE.
    pub simulated: bool,
}

/// Fields of a verified Intel TDX quote (TD report body, Intel TDX DCAP Quote Library spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdxClaims {
    /// Quote format version (4 or 5).
    pub quote_version: u16,
    /// TEE_TCB_SVN (16 bytes).
    pub tee_tcb_svn: Vec<u8>,
    /// MRSEAM (48 bytes): measurement of the TDX module.
    pub mr_seam: Vec<u8>,
    /// MRTD (48 bytes): the initial TD contents (firmware).
    pub mr_td: Vec<u8>,
    /// MRCONFIGID (48 bytes).
    pub mr_config_id: Vec<u8>,
    /// MROWNER (48 bytes).
    pub mr_owner: Vec<u8>,
    /// MROWNERCONFIG (48 bytes).
    pub mr_owner_config: Vec<u8>,
    /// RTMR0..RTMR3 (48 bytes each).
    pub rtmr: [Vec<u8>; 4],
    /// REPORT_DATA (64 bytes).
    pub report_data: Vec<u8>,
    /// TD_ATTRIBUTES (8 bytes, little-endian; bit 0 = DEBUG).
    pub td_attributes: Vec<u8>,
    /// XFAM (8 bytes).
    pub xfam: Vec<u8>,
    /// TCB status from the collateral match, e.g. "UpToDate", "OutOfDate", "SWHardeningNeeded".
    pub tcb_status: String,
    /// Intel security advisory IDs that apply to this TCB level.
    pub advisory_ids: Vec<String>,
    /// FMSPC of the platform (6 bytes), from the PCK certificate.
    pub fmspc: Vec<u8>,
}
