//! Plain-HTTP GET with a size cap and a timeout (ureq without TLS: the runtime's attestation
//! endpoint is reached over a local or tunnelled port; KDS needs TLS, see `fetch_vcek`).
//!
//! Trust: none; the body is returned as untrusted bytes.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// GET `url`, failing on a non-2xx status, a body over `limit` bytes, or after 30 s.
pub(crate) fn get(url: &str, limit: usize) -> Result<Vec<u8>> {
    if url.starts_with("https://") {
        bail!("{url}: this build of attest has no TLS support; use http:// (e.g. through an SSH tunnel)");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let mut resp = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    resp.body_mut()
        .with_config()
        .limit(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_vec()
        .with_context(|| format!("reading the body of {url} (limit {limit} bytes)"))
}
