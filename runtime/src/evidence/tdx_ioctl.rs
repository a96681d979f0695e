//! The one raw system call of evidence collection: `TDX_CMD_GET_REPORT0` on `/dev/tdx_guest`
//! (Linux `include/uapi/linux/tdx-guest.h`). It returns a TDREPORT — 1024 bytes MAC'd with a
//! key only this CPU knows — not a quote: a remote verifier cannot check it. A quote needs
//! the quoting enclave on the host, reached through configfs-tsm (`super::tsm`).
//! Input: 64 bytes of REPORT_DATA from the caller; output: the TDX module's TDREPORT.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; }`
#[repr(C)]
struct TdxReportReq {
    report_data: [u8; 64],
    td_report: [u8; TDREPORT_LEN],
}

/// Length of a TDREPORT_STRUCT.
pub const TDREPORT_LEN: usize = 1024;

/// `_IOWR('T', 1, struct tdx_report_req)`: direction read|write (3 << 30), size 1088,
/// type 'T' (0x54), number 1.
pub const TDX_CMD_GET_REPORT0: u64 = (3 << 30) | ((std::mem::size_of::<TdxReportReq>() as u64) << 16) | (0x54 << 8) | 1;

/// Ask the TDX module for a TDREPORT over `report_data`.
pub fn get_report0(device: &Path, report_data: &[u8; 64]) -> io::Result<[u8; TDREPORT_LEN]> {
    let file = OpenOptions::new().read(true).write(true).open(device)?;
    let mut req = TdxReportReq { report_data: *report_data, td_report: [0; TDREPORT_LEN] };
    // SAFETY: `file` is an open descriptor for the whole call; `req` is a live, exclusively
    // borrowed `#[repr(C)]` struct whose size (1088 bytes) is the size encoded in the request
    // number, so the kernel reads and writes exactly within it; no pointer outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TDX_CMD_GET_REPORT0 as _, &mut req as *mut TdxReportReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req.td_report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_number_matches_the_kernel_header() {
        // _IOWR('T', 1, struct tdx_report_req) on x86_64, as computed by the uapi macros.
        assert_eq!(TDX_CMD_GET_REPORT0, 0xc440_5401);
        assert_eq!(std::mem::size_of::<TdxReportReq>(), 64 + 1024);
    }

    #[test]
    fn missing_device_is_an_io_error() {
        let e = get_report0(Path::new("/nonexistent/tdx_guest"), &[0; 64]).err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::NotFound));
    }
}
