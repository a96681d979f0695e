//! The guest side of the simulated TEE: find the `org.chrysalis.simtee` virtio-serial port
//! and ask the host's simulated PSP for a report over it (framing in
//! `chrysalis_proto::sim_transport`). Everything it returns is labelled simulated and is
//! rejected by verifiers unless their policy allows simulation.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrysalis_proto::sim_transport::{self, RESPONSE_HEADER_LEN};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Name of the port the host attaches.
pub const PORT_NAME: &str = "org.chrysalis.simtee";

/// The `/dev/vportNpM` node of the simulated-TEE port, if the host attached one.
pub fn find_port() -> Option<PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    dir.flatten().find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| PathBuf::from("/dev").join(e.file_name()))
    })
}

/// Ask the simulated PSP for a report binding `report_data`.
pub fn report(port: &PathBuf, report_data: &[u8; 64]) -> Result<Vec<u8>> {
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
        .with_context(|| format!("opening the simulated TEE port {}", port.display()))?;
    dev.write_all(&sim_transport::encode_request(report_data)).context("writing to the simulated TEE port")?;
    let mut header = [0u8; RESPONSE_HEADER_LEN];
    read_with_timeout(&mut dev, &mut header)?;
    let (ok, len) = sim_transport::decode_response_header(&header)?;
    let mut body = vec![0u8; len as usize];
    read_with_timeout(&mut dev, &mut body)?;
    if !ok {
        bail!("simulated TEE refused: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

fn read_with_timeout(dev: &mut std::fs::File, buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(10_000u16)).context("waiting for the simulated TEE")?;
        if n == 0 {
            bail!("the simulated TEE on the host did not answer within 10 s (is the host-side PSP running?)");
        }
        let got = dev.read(&mut buf[filled..]).context("reading from the simulated TEE port")?;
        if got == 0 {
            bail!("the simulated TEE port closed");
        }
        filled += got;
    }
    Ok(())
}
