//! Bring up loopback and, when configured, the first virtio-net interface with a static
//! address and default route from the (measured) command line.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::sys;

/// The interface the virtio-net driver registers first (no udev renames it).
pub const IFACE: &str = "eth0";

/// Configure `lo` and, if `chrysalis.ip` is set, `eth0`.
pub fn configure(cfg: &Config) -> Result<()> {
    sys::link_up("lo").context("bringing up lo")?;
    let Some(ip) = cfg.ip else {
        log::info!("network: loopback only (no chrysalis.ip)");
        return Ok(());
    };
    wait_for_interface(IFACE, Duration::from_secs(5))?;
    sys::set_ipv4(IFACE, ip.addr, ip.netmask()).with_context(|| format!("setting {IFACE} address"))?;
    sys::link_up(IFACE).with_context(|| format!("bringing up {IFACE}"))?;
    if let Some(gw) = cfg.gateway {
        sys::add_default_route(gw).with_context(|| format!("adding default route via {gw}"))?;
    }
    log::info!("network: {IFACE} {}/{}{}", ip.addr, ip.prefix, cfg.gateway.map(|g| format!(" via {g}")).unwrap_or_default());
    Ok(())
}

fn wait_for_interface(name: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let path = format!("/sys/class/net/{name}");
    while !std::path::Path::new(&path).exists() {
        if start.elapsed() > timeout {
            anyhow::bail!("network interface {name} did not appear within {timeout:?} (is a virtio-net device attached?)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
