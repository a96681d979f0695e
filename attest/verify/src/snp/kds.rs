//! AMD Key Distribution Service (KDS) addressing and the local certificate cache: which URL
//! serves the VCEK for a report, what the cached file is called, how a cache directory is
//! read. No network access happens here; the owner CLI (`attest fetch-vcek`) fetches.
//!
//! Trust: none. Whatever KDS or the cache returns is verified like any supplied certificate.

use std::path::Path;

use crate::claims::SnpProduct;
use crate::snp::SnpError;
use crate::snp::cert::MAX_CERTS;
use crate::snp::report::{SnpReport, TcbParts};

/// AMD's KDS.
pub const KDS_BASE: &str = "https://kdsintf.amd.com";

/// Largest certificate file read from a cache directory.
pub const MAX_CERT_FILE: u64 = 64 * 1024;

/// KDS's name for a product line.
pub fn product_name(product: SnpProduct) -> Option<&'static str> {
    match product {
        SnpProduct::Milan => Some("Milan"),
        SnpProduct::Genoa => Some("Genoa"),
        SnpProduct::Turin => Some("Turin"),
        _ => None,
    }
}

/// Parse a product name as KDS spells it (case-insensitive).
pub fn parse_product(name: &str) -> Option<SnpProduct> {
    match name.to_ascii_lowercase().as_str() {
        "milan" => Some(SnpProduct::Milan),
        "genoa" => Some(SnpProduct::Genoa),
        "turin" => Some(SnpProduct::Turin),
        _ => None,
    }
}

/// What identifies one VCEK: product, hwID (CHIP_ID, 8 bytes on Turin) and TCB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcekId {
    /// Product line.
    pub product: SnpProduct,
    /// hwID bytes.
    pub hwid: Vec<u8>,
    /// The TCB the VCEK is issued for (the report's REPORTED_TCB).
    pub tcb: TcbParts,
}

impl VcekId {
    /// The VCEK that should have signed `report`. v3+ reports name their product; a v2 report
    /// needs `product`. A masked CHIP_ID cannot name a VCEK.
    pub fn for_report(report: &SnpReport, product: Option<SnpProduct>) -> Result<Self, SnpError> {
        let product = product
            .or_else(|| report.cpuid_product())
            .ok_or(SnpError::Decode("a v2 report does not name its product: give it explicitly".into()))?;
        if report.chip_id_masked() {
            return Err(SnpError::Decode("CHIP_ID is masked: the report does not name a VCEK".into()));
        }
        let len = if product == SnpProduct::Turin { 8 } else { 64 };
        let hwid = report.chip_id().get(..len).unwrap_or(&[]).to_vec();
        Ok(VcekId { product, hwid, tcb: TcbParts::from_raw(report.reported_tcb(), product) })
    }

    /// `{base}/vcek/v1/{product}/{hwid}?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
    pub fn url(&self, base: &str) -> String {
        let t = &self.tcb;
        let fmc = t.fmc.map(|f| format!("fmcSPL={f:02}&")).unwrap_or_default();
        format!(
            "{}/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            base.trim_end_matches('/'),
            product_name(self.product).unwrap_or("unknown"),
            hex::encode(&self.hwid),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        )
    }

    /// File name in a cache directory: `vcek-{product}-{hwid[..8]}-{tcb}.der`.
    pub fn cache_file_name(&self) -> String {
        let t = &self.tcb;
        format!(
            "vcek-{}-{}-fmc{}-bl{}-tee{}-snp{}-ucode{}.der",
            product_name(self.product).unwrap_or("unknown").to_ascii_lowercase(),
            hex::encode(self.hwid.get(..8).unwrap_or(&self.hwid)),
            t.fmc.unwrap_or(0),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        )
    }
}

/// Every certificate file (`*.der`, `*.pem`, `*.crt`, `*.cer`) in a cache directory, sorted by
/// name, each at most [`MAX_CERT_FILE`] bytes. PEM files may hold several certificates.
pub fn load_cert_dir(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "der" | "pem" | "crt" | "cer"))
        })
        .collect();
    paths.sort();
    if paths.len() > MAX_CERTS {
        return Err(std::io::Error::other(format!("{}: {} certificate files, limit {MAX_CERTS}", dir.display(), paths.len())));
    }
    let mut out = Vec::new();
    for p in paths {
        let len = std::fs::metadata(&p)?.len();
        if len > MAX_CERT_FILE {
            return Err(std::io::Error::other(format!("{}: {len} bytes, limit {MAX_CERT_FILE}", p.display())));
        }
        out.push(std::fs::read(&p)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_kds_spec() {
        let milan = VcekId {
            product: SnpProduct::Milan,
            hwid: vec![0xab; 64],
            tcb: TcbParts::from_raw(0x7308_0000_0000_0003, SnpProduct::Milan),
        };
        let u = milan.url(KDS_BASE);
        assert!(u.starts_with("https://kdsintf.amd.com/vcek/v1/Milan/abab"), "{u}");
        assert!(u.ends_with("?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"), "{u}");
        let turin = VcekId {
            product: SnpProduct::Turin,
            hwid: vec![0x1e, 0x55, 0x0a, 0x8e, 0xe5, 0xcf, 0x9f, 0x4d],
            tcb: TcbParts::from_raw(0x0900_0000_0000_0000, SnpProduct::Turin),
        };
        assert_eq!(
            turin.url("http://cache.local/"),
            "http://cache.local/vcek/v1/Turin/1e550a8ee5cf9f4d?fmcSPL=00&blSPL=00&teeSPL=00&snpSPL=00&ucodeSPL=09"
        );
        assert_eq!(turin.cache_file_name(), "vcek-turin-1e550a8ee5cf9f4d-fmc0-bl0-tee0-snp0-ucode9.der");
        assert_eq!(parse_product("GENOA"), Some(SnpProduct::Genoa));
        assert_eq!(parse_product("naples"), None);
    }
}
