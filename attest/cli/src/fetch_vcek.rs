//! `attest fetch-vcek`: fetch, on the owner's explicit request, the VCEK named by an SEV-SNP
//! report (product, CHIP_ID, REPORTED_TCB) from AMD's KDS or a KDS mirror, check it chains to
//! the pinned AMD root, and store it in a cache directory for `attest verify --certs DIR`.
//!
//! Trust: nothing fetched is trusted: the certificate is verified before it is cached, and
//! verification checks it again. Reaching <https://kdsintf.amd.com> needs TLS, which this build
//! does not have: use `--print-url` and fetch with another tool, or an http:// mirror.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow};
use clap::Args;

use super::{Outcome, http};
use chrysalis_verify::snp::kds::{KDS_BASE, MAX_CERT_FILE, VcekId, parse_product};
use chrysalis_verify::snp::{SnpReport, verify_cert_chain};

#[derive(Args, Debug)]
pub(crate) struct FetchVcekArgs {
    /// The SEV-SNP report whose VCEK to fetch (binary or hex).
    #[arg(long, value_name = "FILE")]
    snp_report: PathBuf,
    /// Cache directory to store the VCEK in (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "print_url")]
    out: Option<PathBuf>,
    /// Product line (milan, genoa, turin); required for v2 reports, which do not name it.
    #[arg(long)]
    product: Option<String>,
    /// KDS base URL.
    #[arg(long, default_value = KDS_BASE)]
    kds_url: String,
    /// Only print the URL (to fetch it with another tool into the cache directory).
    #[arg(long)]
    print_url: bool,
}

pub(crate) fn run(a: FetchVcekArgs) -> Result<Outcome> {
    let raw = std::fs::read(&a.snp_report).with_context(|| format!("reading {}", a.snp_report.display()))?;
    let bytes = match std::str::from_utf8(&raw).ok().map(|t| hex::decode(t.trim())) {
        Some(Ok(b)) => b,
        _ => raw,
    };
    let report = SnpReport::parse(&bytes).map_err(|e| anyhow!("{}: {e}", a.snp_report.display()))?;
    let product = a
        .product
        .as_deref()
        .map(|p| parse_product(p).ok_or_else(|| anyhow!("--product {p}: expected milan, genoa or turin")))
        .transpose()?;
    let id = VcekId::for_report(&report, product).map_err(|e| anyhow!("{e}"))?;
    let url = id.url(&a.kds_url);
    if a.print_url {
        outln!("{url}");
        if let Some(out) = &a.out {
            outln!("save the DER response as {}", out.join(id.cache_file_name()).display());
        }
        return Ok(Outcome::Ok);
    }
    let out = a.out.ok_or_else(|| anyhow!("--out is required"))?;
    if url.starts_with("https://") {
        return Err(anyhow!(
            "this build of attest has no TLS, so it cannot reach {url}\n\
             fetch it yourself, e.g.: curl -o '{}' '{url}'\n\
             (or give --kds-url http://<mirror>)",
            out.join(id.cache_file_name()).display()
        ));
    }
    let der = http::get(&url, usize::try_from(MAX_CERT_FILE).unwrap_or(usize::MAX))?;
    let (chain, _) = verify_cert_chain(std::slice::from_ref(&der), SystemTime::now())
        .map_err(|e| anyhow!("the certificate from {url} does not verify: {e}"))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(id.cache_file_name());
    std::fs::write(&path, &der).with_context(|| format!("writing {}", path.display()))?;
    outln!("{} ({:?} VCEK, chains to {}) saved as {}", url, chain.product, chain.root.name(), path.display());
    Ok(Outcome::Ok)
}
