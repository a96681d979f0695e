//! The runtime's raw system interface: the few syscalls PID 1 needs that have no safe
//! wrapper in `nix` (interface configuration ioctls). Every `unsafe` block states why it is
//! sound. Inputs are the runtime's own validated configuration, never network data.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An `AF_INET` datagram socket used only as a handle for interface ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions; a negative result is an error.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    // SAFETY: ifreq is a plain C struct of integers, arrays and a union of such; all-zero
    // bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux and sockaddr
    // is the generic view the kernel expects for these ioctls.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live, correctly typed struct (ifreq or rtentry)
    // for the given request; the kernel reads/writes only within that struct.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Set `IFF_UP` on an interface.
pub fn link_up(name: &str) -> io::Result<()> {
    let fd = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, (&raw mut req).cast())?;
    // SAFETY: SIOCGIFFLAGS filled the ifru_flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(&fd, libc::SIOCSIFFLAGS, (&raw mut req).cast())
}

/// Assign an IPv4 address and netmask to an interface.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let fd = ioctl_socket()?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&fd, libc::SIOCSIFADDR, (&raw mut req).cast())?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask);
    ioctl(&fd, libc::SIOCSIFNETMASK, (&raw mut req).cast())
}

/// Add a default IPv4 route through `gateway`.
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let fd = ioctl_socket()?;
    // SAFETY: rtentry is a plain C struct; all-zero is a valid (empty) value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    ioctl(&fd, libc::SIOCADDRT, (&raw mut rt).cast())
}

/// Seconds since boot on CLOCK_BOOTTIME (includes time before /init started).
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// The `<field> <n> kB` line of a /proc status-style file (`/proc/<pid>/status`,
/// `/proc/meminfo`), in bytes.
fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kib: u64 = text.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's peak resident memory in bytes (`VmHWM`).
pub fn peak_rss() -> Option<u64> {
    kib_field("/proc/self/status", "VmHWM:")
}

/// Process `pid`'s peak resident memory in bytes (`VmHWM`; tests watch a child with it).
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// This process's resident memory now in bytes (`VmRSS`).
pub fn rss() -> Option<u64> {
    kib_field("/proc/self/status", "VmRSS:")
}

/// Memory the kernel says can be allocated without swapping (`MemAvailable`), in bytes.
pub fn mem_available() -> Option<u64> {
    kib_field("/proc/meminfo", "MemAvailable:")
}

/// Give the whole pages inside `buf` back to the kernel (`MADV_DONTNEED`) and return how many
/// bytes from the start of `buf` end with the last page given back (0 when `buf` holds no
/// whole page). Call it on bytes already zeroed: for a buffer that is consumed front to back
/// (an unsealed shard turned into tensors), so that its memory shrinks as the model grows.
/// Failure is harmless (the pages simply stay) and is not reported.
pub fn release_pages(buf: &mut [u8]) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let addr = buf.as_mut_ptr() as usize;
    let start = addr.next_multiple_of(page);
    let end = (addr + buf.len()) / page * page;
    if end <= start {
        return 0;
    }
    // SAFETY: [start, end) lies inside `buf`, which is borrowed mutably, so nothing else reads
    // or writes it meanwhile. The buffers passed here come from the allocator (private
    // anonymous memory), where MADV_DONTNEED only makes the pages read as zero on the next
    // access, and the caller has zeroed them already: the bytes `buf` holds do not change.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    end - addr
}

#[cfg(test)]
mod tests {
    use super::{kib_field, mem_available, peak_rss, peak_rss_of, rss};

    /// Resident anonymous memory of this process, in KiB.
    fn rss_anon_kib() -> u64 {
        kib_field("/proc/self/status", "RssAnon:").unwrap_or(0) / 1024
    }

    #[test]
    fn memory_figures_read_proc() {
        let (peak, now) = (peak_rss().unwrap_or(0), rss().unwrap_or(0));
        assert!(now > 0 && peak >= now, "VmHWM {peak} < VmRSS {now}");
        assert!(peak_rss_of(std::process::id()).is_some_and(|p| p >= now));
        assert!(peak_rss_of(u32::MAX).is_none(), "no such process");
        assert!(mem_available().is_some_and(|m| m > 0));
    }

    #[test]
    fn release_pages_gives_back_whole_pages_only() {
        const MIB: usize = 1 << 20;
        let mut buf = vec![1u8; 256 * MIB];
        let before = rss_anon_kib();
        // An odd start and end: the partial pages at both ends stay.
        let (from, to) = (100, 256 * MIB - 100);
        buf[from..to].fill(0);
        let n = super::release_pages(&mut buf[from..to]);
        let page = 4096;
        assert!(n > 0 && n <= to - from && (buf[from..].as_ptr() as usize + n).is_multiple_of(page), "{n}");
        assert!(buf[from..to].iter().all(|&b| b == 0));
        assert_eq!((buf[from - 1], buf[to]), (1, 1), "bytes outside the slice are kept");
        let after = rss_anon_kib();
        // Other tests run alongside: only a clear drop counts (the buffer is 256 MiB).
        assert!(before.saturating_sub(after) > 128 * 1024, "RssAnon {before} KiB -> {after} KiB");
        assert_eq!(super::release_pages(&mut buf[..10]), 0, "no whole page in 10 bytes");
    }
}
