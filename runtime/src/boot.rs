//! Boot-stage bookkeeping and the machine-readable READY line.

use serde::Serialize;

/// Seconds since kernel start (CLOCK_BOOTTIME) at the end of each boot stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BootTimings {
    /// When /init started.
    pub init: f64,
    /// After /proc, /sys, /dev, /run were mounted.
    pub mounts: f64,
    /// After kernel modules were loaded and configfs mounted.
    pub modules: f64,
    /// After the network was configured.
    pub network: f64,
    /// When the API socket was listening.
    pub listen: f64,
}

impl BootTimings {
    /// The one line test harnesses and benchmarks wait for: `READY {json}`.
    pub fn ready_line(&self) -> String {
        format!("READY {}", serde_json::to_string(self).unwrap_or_default())
    }
}
