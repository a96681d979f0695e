//! DCAP collateral for one TDX platform (TCB info, QE identity, their signing chain, the PCK
//! and root CRLs) in dcap-qvl's JSON form, and the time window in which it may be used.
//! Input: untrusted JSON; its signatures are checked by dcap-qvl during `verify_quote`.

use dcap_qvl::QuoteCollateralV3;
use der::Decode as _;
use serde::Deserialize;
use x509_cert_03::crl::CertificateList;

use super::TdxError;

/// Largest collateral document accepted (Intel's are ~16 KiB; the PCK CRL grows slowly).
pub const MAX_COLLATERAL_LEN: usize = 1 << 20;

/// Verification collateral for TDX quotes of one platform (FMSPC), as fetched from Intel PCS
/// or a PCCS and stored next to the evidence.
///
/// The JSON form is dcap-qvl's `QuoteCollateralV3` (hex-encoded CRLs and signatures, PEM
/// issuer chains, TCB info and QE identity as the exact signed JSON strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    pub(crate) inner: QuoteCollateralV3,
}

/// One dated item of the collateral, for freshness errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// What the dates belong to ("tcb info", "qe identity", "root ca crl", "pck crl").
    pub item: &'static str,
    /// issueDate / thisUpdate (Unix seconds).
    pub issued: u64,
    /// nextUpdate (Unix seconds).
    pub next_update: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dated {
    issue_date: String,
    next_update: String,
}

impl Collateral {
    /// Parse dcap-qvl's JSON collateral format (as in `attest/testdata/tdx/dcap-qvl/tdx_quote_collateral.json`).
    pub fn from_json(bytes: &[u8]) -> Result<Collateral, TdxError> {
        if bytes.len() > MAX_COLLATERAL_LEN {
            return Err(TdxError::CollateralTooLarge(bytes.len()));
        }
        let inner: QuoteCollateralV3 = serde_json::from_slice(bytes).map_err(|e| TdxError::CollateralFormat(e.to_string()))?;
        let c = Collateral { inner };
        // Reject documents whose dates cannot be read now, not at verification time.
        c.validity()?;
        Ok(c)
    }

    /// The collateral as dcap-qvl's type (e.g. to serialise it again).
    pub fn as_dcap(&self) -> &QuoteCollateralV3 {
        &self.inner
    }

    /// The issue and expiry dates of the four dated collateral items.
    pub fn validity(&self) -> Result<[Validity; 4], TdxError> {
        let c = &self.inner;
        Ok([
            json_dates("tcb info", &c.tcb_info)?,
            json_dates("qe identity", &c.qe_identity)?,
            crl_dates("root ca crl", &c.root_ca_crl)?,
            crl_dates("pck crl", &c.pck_crl)?,
        ])
    }

    /// The window [latest issue, earliest next update) in which every item is current.
    pub fn window(&self) -> Result<(u64, u64), TdxError> {
        let v = self.validity()?;
        let start = v.iter().map(|v| v.issued).max().unwrap_or(0);
        let end = v.iter().map(|v| v.next_update).min().unwrap_or(0);
        Ok((start, end))
    }

    /// Fails with the first item that is not yet issued, or at or past its next update, at `now`.
    pub fn check_fresh(&self, now: u64) -> Result<(), TdxError> {
        for v in self.validity()? {
            if now < v.issued {
                return Err(TdxError::CollateralNotYetValid { item: v.item, issued: v.issued, now });
            }
            // Stale from the nextUpdate second on, as webpki judges CRLs.
            if now >= v.next_update {
                return Err(TdxError::CollateralExpired { item: v.item, next_update: v.next_update, now });
            }
        }
        Ok(())
    }
}

fn json_dates(item: &'static str, json: &str) -> Result<Validity, TdxError> {
    let d: Dated = serde_json::from_str(json).map_err(|e| TdxError::CollateralFormat(format!("{item}: {e}")))?;
    Ok(Validity { item, issued: rfc3339(item, &d.issue_date)?, next_update: rfc3339(item, &d.next_update)? })
}

fn crl_dates(item: &'static str, der: &[u8]) -> Result<Validity, TdxError> {
    let crl = CertificateList::<x509_cert_03::certificate::Rfc5280>::from_der(der)
        .map_err(|e| TdxError::CollateralFormat(format!("{item}: {e}")))?;
    let tbs = crl.tbs_cert_list;
    let next = tbs.next_update.ok_or_else(|| TdxError::CollateralFormat(format!("{item}: no nextUpdate")))?;
    Ok(Validity { item, issued: tbs.this_update.to_unix_duration().as_secs(), next_update: next.to_unix_duration().as_secs() })
}

/// Parse Intel's `YYYY-MM-DDTHH:MM:SSZ` (optionally with fractional seconds) to Unix seconds.
fn rfc3339(item: &'static str, s: &str) -> Result<u64, TdxError> {
    let bad = || TdxError::CollateralFormat(format!("{item}: bad date {s:?}"));
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Result<u16, TdxError> {
        let part = s.get(from..to).ok_or_else(bad)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u16>().map_err(|_| bad())
    };
    let sep_ok = b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
        && b.get(10) == Some(&b'T')
        && b.get(13) == Some(&b':')
        && b.get(16) == Some(&b':')
        && b.last() == Some(&b'Z');
    if !sep_ok {
        return Err(bad());
    }
    // Fractional seconds (".123") may follow the seconds; they are ignored.
    let tail = s.get(19..s.len().saturating_sub(1)).ok_or_else(bad)?;
    if !(tail.is_empty() || (tail.starts_with('.') && tail.bytes().skip(1).all(|c| c.is_ascii_digit()))) {
        return Err(bad());
    }
    let small = |v: u16| u8::try_from(v).map_err(|_| bad());
    let dt = der::DateTime::new(
        num(0, 4)?,
        small(num(5, 7)?)?,
        small(num(8, 10)?)?,
        small(num(11, 13)?)?,
        small(num(14, 16)?)?,
        small(num(17, 19)?)?,
    )
    .map_err(|_| bad())?;
    Ok(dt.unix_duration().as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_intel_dates() {
        assert_eq!(rfc3339("x", "2025-07-19T10:16:03Z").ok(), Some(1_752_920_163));
        assert_eq!(rfc3339("x", "1970-01-01T00:00:00.5Z").ok(), Some(0));
        for bad in [
            "2025-07-19 10:16:03Z",
            "2025-07-19T10:16:03",
            "2025-13-19T10:16:03Z",
            "",
            "2025-07-19T10:16:0xZ",
            "2025-07-19T10:16:03+Z",
        ] {
            assert!(rfc3339("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_oversized_and_malformed_json() {
        assert!(matches!(Collateral::from_json(&vec![b' '; MAX_COLLATERAL_LEN + 1]), Err(TdxError::CollateralTooLarge(_))));
        assert!(matches!(Collateral::from_json(b"{}"), Err(TdxError::CollateralFormat(_))));
    }
}
