//! SEV-SNP reports through `/dev/sev-guest` (SNP_GET_EXT_REPORT, then SNP_GET_REPORT), the
//! fallback when configfs-tsm is not available; uses the `sev` crate's guest firmware API.
//! Input: the report and the host-provided certificates, passed on unverified.

use super::CollectError;
use chrysalis_proto::wire::cert_table::{self, CertKind};

/// The report from `/dev/sev-guest` at VMPL 0 with the host's certificates (DER, VCEK/VLEK
/// first), if the host provides any.
pub fn get_report(report_data: &[u8; 64]) -> Result<(Vec<u8>, Vec<Vec<u8>>), CollectError> {
    let mut fw =
        sev::firmware::guest::Firmware::open().map_err(|e| CollectError::SevGuest(format!("open /dev/sev-guest: {e}")))?;
    match fw.get_ext_report(None, Some(*report_data), Some(0)) {
        Ok((report, certs)) => {
            let entries: Vec<cert_table::CertEntry> = certs
                .unwrap_or_default()
                .into_iter()
                .map(|c| cert_table::CertEntry { kind: kind(&c.cert_type), data: c.data().to_vec() })
                .collect();
            Ok((report, cert_table::certificates(&entries)))
        }
        Err(ext) => {
            log::info!("evidence: SNP_GET_EXT_REPORT failed ({ext}), trying SNP_GET_REPORT without certificates");
            let report = fw
                .get_report(None, Some(*report_data), Some(0))
                .map_err(|e| CollectError::SevGuest(format!("SNP_GET_EXT_REPORT: {ext}; SNP_GET_REPORT: {e}")))?;
            Ok((report, Vec::new()))
        }
    }
}

fn kind(t: &sev::firmware::host::CertType) -> CertKind {
    use sev::firmware::host::CertType;
    match t {
        CertType::ARK => CertKind::Ark,
        CertType::ASK => CertKind::Ask,
        CertType::VCEK => CertKind::Vcek,
        CertType::VLEK => CertKind::Vlek,
        CertType::CRL => CertKind::Crl,
        _ => CertKind::Other([0; 16]),
    }
}
