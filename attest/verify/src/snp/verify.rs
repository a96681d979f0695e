//! Verifying an SNP report: certificate chain to a pinned root, report signature with the
//! VCEK/VLEK, the VCEK's TCB and hwID extensions against the report, and the product named
//! by CPUID against the chain's product.
//!
//! Trust: the pinned roots only. The report and every supplied certificate are untrusted.

use std::time::SystemTime;

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};

use crate::claims::{SnpClaims, SnpProduct, SnpSigner, Verified};
use crate::snp::cert::{AmdCert, AmdExtensions, MAX_CERTS};
use crate::snp::chain::{self, VerifiedChain};
use crate::snp::report::{SIGNATURE_ALGO_ECDSA_P384_SHA384, SigningKeyKind, SnpReport, TcbParts};
use crate::snp::{SnpError, oid};

/// What the verification established, beyond the claims: for the verification table.
#[derive(Clone, Debug)]
pub struct SnpVerification {
    /// The verified report fields.
    pub claims: Verified<SnpClaims>,
    /// The chain used.
    pub chain: VerifiedChain,
    /// The TCB the VCEK/VLEK was issued for (equal to REPORTED_TCB).
    pub cert_tcb: TcbParts,
    /// The decoded AMD extensions of the leaf.
    pub extensions: AmdExtensions,
    /// False when CHIP_ID is masked (or the key is a VLEK) and no hwID comparison was possible.
    pub hwid_checked: bool,
}

/// Decode the report's little-endian R||S into a P-384 signature.
pub(crate) fn report_signature(report: &SnpReport) -> Result<Signature, SnpError> {
    fn be48(le: &[u8]) -> Result<[u8; 48], SnpError> {
        let (low, high) = le.split_at(48.min(le.len()));
        if low.len() != 48 || high.iter().any(|&b| b != 0) {
            return Err(SnpError::SignatureEncoding("component has non-zero bytes above bit 384"));
        }
        let mut out = [0u8; 48];
        out.copy_from_slice(low);
        out.reverse();
        Ok(out)
    }
    let r = be48(report.signature_r_le())?;
    let s = be48(report.signature_s_le())?;
    Signature::from_scalars(r, s).map_err(|_| SnpError::SignatureEncoding("r or s is not a valid P-384 scalar"))
}

/// Check the report's ECDSA P-384/SHA-384 signature over bytes 0x000..0x2A0 of the input.
pub(crate) fn check_report_signature(
    report: &SnpReport,
    key: &VerifyingKey,
    signer: &'static str,
    subject: String,
) -> Result<(), SnpError> {
    let sig = report_signature(report)?;
    key.verify(report.signed_bytes(), &sig).map_err(|_| SnpError::ReportSignature { signer, subject })
}

/// Decode DER or PEM certificates as supplied with evidence or from a cache.
pub fn parse_certs(certs: &[Vec<u8>]) -> Result<Vec<AmdCert>, SnpError> {
    let mut out = Vec::new();
    for (index, c) in certs.iter().enumerate() {
        let parsed = AmdCert::from_der_or_pem(c).map_err(|source| SnpError::Cert { index, source })?;
        out.extend(parsed);
        if out.len() > MAX_CERTS {
            return Err(SnpError::Cert { index, source: crate::snp::CertError::TooMany(out.len()) });
        }
    }
    Ok(out)
}

fn check_tcb(ext: &AmdExtensions, report: &TcbParts, product: SnpProduct) -> Result<TcbParts, SnpError> {
    fn field(v: Option<u8>, name: &'static str, oid: &'static str, report: u8) -> Result<u8, SnpError> {
        let cert = v.ok_or(SnpError::MissingExtension { name, oid })?;
        if cert != report {
            return Err(SnpError::TcbMismatch { name, cert, report });
        }
        Ok(cert)
    }
    let fmc = match (product, report.fmc) {
        (SnpProduct::Turin, Some(r)) => Some(field(ext.fmc, "fmcSPL", oid::FMC_SPL, r)?),
        _ => None,
    };
    Ok(TcbParts {
        fmc,
        bootloader: field(ext.bootloader, "blSPL", oid::BL_SPL, report.bootloader)?,
        tee: field(ext.tee, "teeSPL", oid::TEE_SPL, report.tee)?,
        snp: field(ext.snp, "snpSPL", oid::SNP_SPL, report.snp)?,
        microcode: field(ext.microcode, "ucodeSPL", oid::UCODE_SPL, report.microcode)?,
    })
}

/// Expected hwID length: 8 bytes on Turin, the full 64-byte CHIP_ID before.
fn hwid_len(product: SnpProduct) -> usize {
    if product == SnpProduct::Turin { 8 } else { 64 }
}

fn check_hwid(ext: &AmdExtensions, chip_id: &[u8; 64], product: SnpProduct) -> Result<(), SnpError> {
    let hwid = ext.hwid.as_deref().ok_or(SnpError::MissingExtension { name: "hwID", oid: oid::HWID })?;
    let want = chip_id.get(..hwid_len(product)).unwrap_or(&[]);
    if hwid != want {
        return Err(SnpError::HwidMismatch { cert: hex::encode(hwid), report: hex::encode(want) });
    }
    Ok(())
}

fn verify_with_leaf(report: &SnpReport, leaf: &AmdCert, all: &[AmdCert], at: SystemTime) -> Result<SnpVerification, SnpError> {
    let chain = chain::verify_leaf(leaf, all, at)?;
    check_against_chain(report, chain)
}

/// Everything after the chain: signer kind, report signature, product, TCB and hwID.
fn check_against_chain(report: &SnpReport, chain: VerifiedChain) -> Result<SnpVerification, SnpError> {
    let leaf = &chain.leaf;
    let (signer_name, expected_kind) = match chain.signer {
        SnpSigner::Vlek => ("VLEK", SigningKeyKind::Vlek),
        _ => ("VCEK", SigningKeyKind::Vcek),
    };
    let kind = report.signing_key();
    if kind != expected_kind {
        return Err(SnpError::SignerMismatch { report: format!("{kind:?}"), cert: signer_name });
    }
    let key = leaf.p384_key().ok_or(SnpError::LeafKind { subject: leaf.name(), expected: "SEV-VCEK" })?;
    check_report_signature(report, &key, signer_name, leaf.name())?;
    if let Some(cpu) = report.cpuid_product()
        && cpu != chain.product
    {
        return Err(SnpError::ProductMismatch { report: cpu, chain: chain.product });
    }
    let ext = leaf.amd_extensions().map_err(|source| SnpError::Cert { index: 0, source })?;
    let report_tcb = TcbParts::from_raw(report.reported_tcb(), chain.product);
    let cert_tcb = check_tcb(&ext, &report_tcb, chain.product)?;
    let hwid_checked = chain.signer == SnpSigner::Vcek && !report.chip_id_masked();
    if hwid_checked {
        check_hwid(&ext, report.chip_id(), chain.product)?;
    }
    let claims = Verified::new(report.claims(chain.product, chain.signer, false));
    Ok(SnpVerification { claims, chain, cert_tcb, extensions: ext, hwid_checked })
}

/// Verify a report against a chain verified earlier by [`verify_cert_chain`] (e.g. a cached
/// VCEK verifying many reports of one chip). The chain's validity period was judged at the
/// time given to [`verify_cert_chain`]; everything about the report is checked here.
pub fn verify_report_with_chain(report: &[u8], chain: &VerifiedChain) -> Result<SnpVerification, SnpError> {
    let report = SnpReport::parse(report)?;
    if report.is_simulated() {
        return Err(SnpError::SimulatedReport);
    }
    let algo = report.signature_algo();
    if algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
        return Err(SnpError::SignatureAlgorithm(algo));
    }
    check_against_chain(&report, chain.clone())
}

/// Verify a report with the certificates supplied (DER or PEM; VCEK or VLEK, optionally ASK,
/// ASVK, ARK: supplied roots are ignored) at time `at`, and say what was checked.
pub fn verify_report_detailed(report: &[u8], certs: &[Vec<u8>], at: SystemTime) -> Result<SnpVerification, SnpError> {
    let report = SnpReport::parse(report)?;
    if report.is_simulated() {
        return Err(SnpError::SimulatedReport);
    }
    let algo = report.signature_algo();
    if algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
        return Err(SnpError::SignatureAlgorithm(algo));
    }
    let all = parse_certs(certs)?;
    let mut leaves: Vec<&AmdCert> = all.iter().filter(|c| !c.is_self_issued() && c.p384_key().is_some()).collect();
    if leaves.is_empty() {
        return Err(SnpError::NoLeafCertificate(all.len()));
    }
    // With several candidate keys (a cache directory), try those whose hwID matches first.
    let matches_chip = |c: &&AmdCert| {
        c.amd_extensions().ok().and_then(|e| e.hwid).is_some_and(|h| !h.is_empty() && report.chip_id().starts_with(&h))
    };
    leaves.sort_by_key(|c| !matches_chip(c));
    let mut first_err = None;
    for leaf in leaves {
        match verify_with_leaf(&report, leaf, &all, at) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(SnpError::NoLeafCertificate(all.len())))
}

/// Verify a report (see [`verify_report_detailed`]) and return only the claims.
pub fn verify_report(report: &[u8], certs: &[Vec<u8>], at: SystemTime) -> Result<Verified<SnpClaims>, SnpError> {
    verify_report_detailed(report, certs, at).map(|v| v.claims)
}

/// Verify a VCEK/VLEK certificate chain alone (no report), e.g. one fetched from KDS.
pub fn verify_cert_chain(certs: &[Vec<u8>], at: SystemTime) -> Result<(VerifiedChain, AmdExtensions), SnpError> {
    let all = parse_certs(certs)?;
    let leaf =
        all.iter().find(|c| !c.is_self_issued() && c.p384_key().is_some()).ok_or(SnpError::NoLeafCertificate(all.len()))?;
    let chain = chain::verify_leaf(leaf, &all, at)?;
    let ext = leaf.amd_extensions().map_err(|source| SnpError::Cert { index: 0, source })?;
    Ok((chain, ext))
}
