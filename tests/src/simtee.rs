//! The host side of the simulated TEE: a "simulated PSP" that QEMU's virtio-serial port
//! `org.chrysalis.simtee` connects to the guest. It holds the simulation root key (the guest
//! never sees it) and answers report requests with reports signed by it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrysalis_proto::sim_transport::{self, REQUEST_LEN};

/// Produces a report for REPORT_DATA, or a refusal message.
pub type Signer = Box<dyn Fn(&[u8; 64]) -> Result<Vec<u8>, String> + Send>;

/// Connect to QEMU's socket (created when QEMU starts) and serve requests until the VM
/// goes away. Returns the serving thread.
pub fn serve(socket: &Path, signer: Signer) -> Result<JoinHandle<()>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to the simulated TEE socket {}", socket.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Ok(std::thread::spawn(move || {
        let mut frame = [0u8; REQUEST_LEN];
        while stream.read_exact(&mut frame).is_ok() {
            let response = match sim_transport::decode_request(&frame) {
                Ok(rd) => match signer(&rd) {
                    Ok(report) => sim_transport::encode_response(Ok(&report)),
                    Err(msg) => sim_transport::encode_response(Err(&msg)),
                },
                Err(e) => sim_transport::encode_response(Err(&e.to_string())),
            };
            if stream.write_all(&response).is_err() {
                break;
            }
        }
    }))
}
