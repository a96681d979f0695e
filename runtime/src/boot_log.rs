//! The runtime's self-measurement at boot: SHA-384 of its own executable, the kernel
//! command line, its parsed configuration, the sealed bundle's header and its ephemeral
//! public key, in that order, into an event log whose digest is bound into every report's
//! REPORT_DATA (see `chrysalis_proto::eventlog`).

use anyhow::{Context, Result};
use chrysalis_proto::eventlog::{Event, EventKind, EventLog};

use crate::config::Config;

/// What the runtime measured about itself at boot.
pub struct BootMeasurements<'a> {
    /// The command line as read from /proc/cmdline (or --cmdline in host mode).
    pub cmdline: &'a str,
    /// The parsed configuration.
    pub config: &'a Config,
    /// The sealed bundle's header bytes, when a bundle is configured and readable.
    pub bundle_header: Option<&'a [u8]>,
    /// The runtime's X25519 public key.
    pub public_key: &'a [u8],
}

/// SHA-384 event of the running executable (`/proc/self/exe`: `/init` in the image).
pub fn runtime_binary_event() -> Result<Event> {
    let exe = std::fs::read("/proc/self/exe").context("reading /proc/self/exe to measure the runtime")?;
    Ok(Event::digest_of(EventKind::RuntimeBinary, &exe))
}

/// Build the boot event log.
pub fn boot_log(binary: Event, m: &BootMeasurements<'_>) -> EventLog {
    let mut log = EventLog::default();
    log.extend(binary);
    log.extend(Event::with_data(EventKind::KernelCmdline, m.cmdline.trim_end().as_bytes().to_vec()));
    log.extend(Event::with_data(EventKind::Config, m.config.canonical()));
    if let Some(h) = m.bundle_header {
        log.extend(Event::digest_of(EventKind::BundleHeader, h));
    }
    log.extend(Event::with_data(EventKind::PublicKey, m.public_key.to_vec()));
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_each_input_and_changes_with_it() {
        let cfg = Config::default();
        let base = BootMeasurements { cmdline: "a", config: &cfg, bundle_header: Some(b"h"), public_key: &[1; 32] };
        let bin = Event::digest_of(EventKind::RuntimeBinary, b"elf");
        let log = boot_log(bin.clone(), &base);
        assert!(log.check().is_ok());
        let kinds: Vec<_> = log.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::RuntimeBinary,
                EventKind::KernelCmdline,
                EventKind::Config,
                EventKind::BundleHeader,
                EventKind::PublicKey
            ]
        );
        let other_key = BootMeasurements { public_key: &[2; 32], ..base };
        assert_ne!(boot_log(bin.clone(), &other_key).digest(), log.digest());
        let other_header = BootMeasurements { bundle_header: Some(b"H"), ..other_key };
        assert_ne!(boot_log(bin, &other_header).digest(), log.digest());
    }
}
