//! The runtime's configuration, read from `chrysalis.*` parameters on the kernel command
//! line. The command line is part of the launch measurement (SEV-SNP kernel-hashes, TDX
//! RTMR2) and is also recorded in the runtime's event log, so every setting here is
//! attested. Unknown `chrysalis.*` keys and bad values are errors: a typo must not silently
//! fall back to a default.

use std::net::Ipv4Addr;

use serde::Serialize;

/// Which TEE backend produces evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TeeChoice {
    /// Detect SEV-SNP or TDX (configfs-tsm, then the legacy devices).
    Auto,
    /// The labelled simulated TEE, served by the host over a virtio-serial port.
    Simulated,
    /// No evidence at all (boot/health tests only; key release is impossible).
    None,
}

/// An IPv4 interface address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ipv4Cidr {
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The netmask for the prefix.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        Ipv4Addr::from(bits)
    }
}

/// The parsed configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Address of the first network interface (`chrysalis.ip=10.0.2.15/24`); none = loopback only.
    pub ip: Option<Ipv4Cidr>,
    /// Default gateway (`chrysalis.gw=10.0.2.2`).
    pub gateway: Option<Ipv4Addr>,
    /// TCP port of the API (`chrysalis.port=8000`).
    pub port: u16,
    /// Evidence backend (`chrysalis.tee=auto|sim|none`).
    pub tee: TeeChoice,
    /// Where the sealed bundle is (`chrysalis.bundle=/dev/vda`); none = no model.
    pub bundle: Option<String>,
    /// Pull-mode key-release service the runtime asks at boot (`chrysalis.key_url=http://…`).
    pub key_url: Option<String>,
    /// Accept unencrypted inference requests (`chrysalis.plaintext=1`); default: only
    /// requests encrypted to the attested key.
    pub allow_plaintext: bool,
    /// Log level (`chrysalis.log=info`).
    pub log_level: log::LevelFilter,
    /// Sequences the engine decodes together (`chrysalis.max_seqs=16`, 1–256).
    pub max_seqs: usize,
    /// KV cache budget in MiB (`chrysalis.kv_mib=N`); none = half the memory available
    /// after the weights are loaded.
    pub kv_mib: Option<u64>,
    /// Reuse cached prompt prefixes across requests (`chrysalis.prefix_cache=1`). Off
    /// (`0`) removes a timing side channel between users: with it on, a user who sends a
    /// prefix another user sent first gets the first token sooner.
    pub prefix_cache: bool,
    /// Seconds a client may make no progress (`chrysalis.client_timeout_s=10`, 1–3600):
    /// sending its headers, sending its body, or reading a response the server is blocked
    /// on writing. Past it the connection is closed and its generation cancelled.
    pub client_timeout_s: u32,
    /// Pull mode on a lease (`chrysalis.lease_s=N`, 3–86400, needs `chrysalis.key_url`): the
    /// runtime renews its key with the key service every third of the lease and stops
    /// serving, dropping the model, when a renewal is refused or none succeeded for `N`
    /// seconds. Absent: the released key is kept for the whole boot. (Left out of the
    /// canonical encoding when absent, so configs without a lease measure as before.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_s: Option<u32>,
    /// What the GPU image does when its GPU cannot be used (`chrysalis.gpu=required`, the
    /// default, or `cpu-fallback`). Only the GPU image reads it. (Left out of the canonical
    /// encoding when `required`, so configs without it measure as before.)
    #[serde(skip_serializing_if = "GpuPolicy::is_required")]
    pub gpu: GpuPolicy,
}

/// The GPU image's answer to a GPU it cannot use (none present, confidential computing off,
/// a driver module or library that fails).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuPolicy {
    /// Say why on the console and power off (fail closed).
    #[default]
    Required,
    /// Say why, then serve on the CPU without GPU evidence (a verifier whose policy requires a
    /// GPU refuses this boot's evidence).
    CpuFallback,
}

impl GpuPolicy {
    fn is_required(&self) -> bool {
        *self == GpuPolicy::Required
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ip: None,
            gateway: None,
            port: 8000,
            tee: TeeChoice::Auto,
            bundle: None,
            key_url: None,
            allow_plaintext: false,
            log_level: log::LevelFilter::Info,
            max_seqs: 16,
            kv_mib: None,
            prefix_cache: true,
            client_timeout_s: 10,
            lease_s: None,
            gpu: GpuPolicy::Required,
        }
    }
}

/// A configuration error, naming the parameter and what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A `chrysalis.*` key this runtime does not know.
    #[error("unknown kernel parameter chrysalis.{0}")]
    UnknownKey(String),
    /// A value that does not parse.
    #[error("bad value for chrysalis.{key}: {value:?} ({why})")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// The same key twice.
    #[error("chrysalis.{0} given more than once")]
    Repeated(String),
    /// Settings that contradict each other.
    #[error("inconsistent configuration: {0}")]
    Inconsistent(&'static str),
}

impl Config {
    /// Parse a kernel command line, taking the `chrysalis.*` parameters and ignoring the
    /// kernel's own.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, ConfigError> {
        let mut cfg = Config::default();
        let mut seen = std::collections::BTreeSet::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("chrysalis.") else { continue };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            if !seen.insert(key.to_owned()) {
                return Err(ConfigError::Repeated(key.to_owned()));
            }
            let bad = |why| ConfigError::BadValue { key: key.to_owned(), value: value.to_owned(), why };
            match key {
                "ip" => cfg.ip = Some(parse_cidr(value).ok_or_else(|| bad("expected IPv4 address/prefix, e.g. 10.0.2.15/24"))?),
                "gw" => cfg.gateway = Some(value.parse().map_err(|_| bad("expected an IPv4 address"))?),
                "port" => cfg.port = value.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("expected a TCP port 1-65535"))?,
                "tee" => {
                    cfg.tee = match value {
                        "auto" => TeeChoice::Auto,
                        "sim" => TeeChoice::Simulated,
                        "none" => TeeChoice::None,
                        _ => return Err(bad("expected auto, sim or none")),
                    }
                }
                "bundle" => {
                    if !value.starts_with('/') {
                        return Err(bad("expected an absolute path such as /dev/vda"));
                    }
                    cfg.bundle = Some(value.to_owned());
                }
                "key_url" => {
                    if !value.starts_with("http://") || value.len() <= "http://".len() {
                        return Err(bad("expected http://host:port (the channel is protected by HPKE, not TLS)"));
                    }
                    cfg.key_url = Some(value.trim_end_matches('/').to_owned());
                }
                "plaintext" => {
                    cfg.allow_plaintext = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err(bad("expected 0 or 1")),
                    }
                }
                "log" => cfg.log_level = value.parse().map_err(|_| bad("expected off, error, warn, info, debug or trace"))?,
                "max_seqs" => {
                    cfg.max_seqs = value.parse().ok().filter(|n| (1..=256).contains(n)).ok_or_else(|| bad("expected 1-256"))?;
                }
                "kv_mib" => cfg.kv_mib = Some(value.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("expected MiB > 0"))?),
                "prefix_cache" => {
                    cfg.prefix_cache = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err(bad("expected 0 or 1")),
                    }
                }
                "client_timeout_s" => {
                    cfg.client_timeout_s =
                        value.parse().ok().filter(|n| (1..=3600).contains(n)).ok_or_else(|| bad("expected seconds, 1-3600"))?;
                }
                "lease_s" => {
                    cfg.lease_s = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|n| (3..=86_400).contains(n))
                            .ok_or_else(|| bad("expected seconds, 3-86400"))?,
                    );
                }
                "gpu" => {
                    cfg.gpu = match value {
                        "required" => GpuPolicy::Required,
                        "cpu-fallback" => GpuPolicy::CpuFallback,
                        _ => return Err(bad("expected required or cpu-fallback")),
                    }
                }
                _ => return Err(ConfigError::UnknownKey(key.to_owned())),
            }
        }
        if cfg.gateway.is_some() && cfg.ip.is_none() {
            return Err(ConfigError::Inconsistent("chrysalis.gw needs chrysalis.ip"));
        }
        if cfg.lease_s.is_some() && cfg.key_url.is_none() {
            return Err(ConfigError::Inconsistent("chrysalis.lease_s needs chrysalis.key_url (leases are renewed in pull mode)"));
        }
        Ok(cfg)
    }

    /// Canonical encoding recorded in the event log (stable JSON of the parsed values).
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (a, p) = s.split_once('/')?;
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    Some(Ipv4Cidr { addr: a.parse().ok()?, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys_and_ignores_kernel_params() {
        let c = Config::from_cmdline(
            "console=ttyS0 panic=-1 chrysalis.ip=10.0.2.15/24 chrysalis.gw=10.0.2.2 chrysalis.port=8080 \
             chrysalis.tee=sim chrysalis.bundle=/dev/vda chrysalis.key_url=http://10.0.2.2:9000/ \
             chrysalis.plaintext=1 chrysalis.log=debug chrysalis.max_seqs=4 chrysalis.kv_mib=512 \
             chrysalis.prefix_cache=0 chrysalis.client_timeout_s=30 chrysalis.lease_s=60 chrysalis.gpu=cpu-fallback",
        )
        .unwrap();
        assert_eq!(c.ip, Some(Ipv4Cidr { addr: Ipv4Addr::new(10, 0, 2, 15), prefix: 24 }));
        assert_eq!(c.ip.map(|i| i.netmask()), Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(c.port, 8080);
        assert_eq!(c.tee, TeeChoice::Simulated);
        assert_eq!(c.key_url.as_deref(), Some("http://10.0.2.2:9000"));
        assert!(c.allow_plaintext);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!((c.max_seqs, c.kv_mib, c.prefix_cache, c.client_timeout_s), (4, Some(512), false, 30));
        assert_eq!(c.lease_s, Some(60));
        assert_eq!(c.gpu, GpuPolicy::CpuFallback);
    }

    #[test]
    fn errors_name_the_parameter() {
        let cases = [
            ("chrysalis.port=0", "chrysalis.port"),
            ("chrysalis.port=http", "chrysalis.port"),
            ("chrysalis.ip=10.0.2.15", "chrysalis.ip"),
            ("chrysalis.ip=10.0.2.15/33", "chrysalis.ip"),
            ("chrysalis.tee=sgx", "chrysalis.tee"),
            ("chrysalis.bundle=vda", "chrysalis.bundle"),
            ("chrysalis.key_url=https://x", "chrysalis.key_url"),
            ("chrysalis.frobnicate=1", "chrysalis.frobnicate"),
            ("chrysalis.port=1 chrysalis.port=2", "chrysalis.port"),
            ("chrysalis.gw=10.0.2.2", "chrysalis.gw"),
            ("chrysalis.max_seqs=0", "chrysalis.max_seqs"),
            ("chrysalis.kv_mib=lots", "chrysalis.kv_mib"),
            ("chrysalis.prefix_cache=yes", "chrysalis.prefix_cache"),
            ("chrysalis.client_timeout_s=0", "chrysalis.client_timeout_s"),
            ("chrysalis.key_url=http://h:1 chrysalis.lease_s=2", "chrysalis.lease_s"),
            ("chrysalis.lease_s=60", "chrysalis.lease_s needs chrysalis.key_url"),
            ("chrysalis.gpu=optional", "chrysalis.gpu"),
        ];
        for (line, key) in cases {
            let err = Config::from_cmdline(line).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn canonical_encoding_changes_with_settings() {
        let a = Config::from_cmdline("chrysalis.port=1").unwrap().canonical();
        let b = Config::from_cmdline("chrysalis.port=2").unwrap().canonical();
        assert_ne!(a, b);
        // A config without a lease encodes as before the setting existed.
        assert!(!String::from_utf8(a).unwrap().contains("lease"));
    }
}
