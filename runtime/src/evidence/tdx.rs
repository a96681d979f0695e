//! TDX specifics inside the guest: the firmware's CCEL event log, which the verifier replays
//! into RTMR0..3 (`chrysalis_verify::ccel`), and the TDREPORT-only fallback of
//! `/dev/tdx_guest`. Input: kernel-provided files; passed on unverified.

use std::io;
use std::path::Path;

use super::CollectError;
use super::tdx_ioctl;

/// Where Linux exposes the CCEL log area (the ACPI table itself is at `../CCEL`).
pub const CCEL_LOG: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// Largest CCEL log area read (firmware reserves 64 KiB to 1 MiB).
pub const MAX_CCEL_LEN: u64 = 4 << 20;

/// The CCEL log area, or `None` when the firmware did not publish one.
pub fn read_ccel(path: &Path) -> Result<Option<Vec<u8>>, CollectError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CollectError::Ccel { path: path.to_path_buf(), source }),
    };
    let mut log = Vec::new();
    file.take(MAX_CCEL_LEN + 1)
        .read_to_end(&mut log)
        .map_err(|source| CollectError::Ccel { path: path.to_path_buf(), source })?;
    if log.len() as u64 > MAX_CCEL_LEN {
        return Err(CollectError::Ccel {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, format!("larger than {MAX_CCEL_LEN} bytes")),
        });
    }
    Ok(Some(log))
}

/// Through `/dev/tdx_guest` only a TDREPORT can be had: check that the device answers, then
/// say why that is not enough.
pub fn report_only(device: &Path, report_data: &[u8; 64]) -> CollectError {
    match tdx_ioctl::get_report0(device, report_data) {
        Ok(_) => CollectError::TdxReportOnly,
        Err(source) => CollectError::TdxIoctl { path: device.to_path_buf(), source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ccel_read_or_absent() {
        assert_eq!(read_ccel(Path::new("/nonexistent/CCEL")).ok(), Some(None));
        let p = std::env::temp_dir().join(format!("chrysalis-ccel-{}", std::process::id()));
        std::fs::write(&p, b"log").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_ccel(&p).ok(), Some(Some(b"log".to_vec())));
        let _ = std::fs::remove_file(&p);
    }
}
