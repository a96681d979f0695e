//! PLACEHOLDER for Intel TDX quote verification, so that `crate::verify` compiles on this
//! branch. The TDX helper's module replaces this file when the branches merge; only the
//! signatures below are relied on: `Collateral::from_json`, `verify_quote`, `TdxError`.
//!
//! Trust: none; this placeholder verifies nothing and always fails.

use crate::claims::{TdxClaims, Verified};

/// Why a TDX quote was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TdxError {
    /// This build has no TDX verifier.
    #[error("tdx verification not built yet")]
    NotBuilt,
}

/// Intel DCAP collateral (TCB info, QE identity, CRLs) as served by Intel PCS.
#[derive(Clone, Debug)]
pub struct Collateral {
    raw: Vec<u8>,
}

impl Collateral {
    /// Decode collateral JSON. The placeholder keeps the bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TdxError> {
        Ok(Collateral { raw: bytes.to_vec() })
    }

    /// The bytes given to [`Collateral::from_json`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
}

/// Verify a DCAP quote against collateral at `now_unix_secs`. The placeholder always fails.
pub fn verify_quote(
    quote: &[u8],
    collateral: &Collateral,
    now_unix_secs: u64,
) -> Result<Verified<TdxClaims>, TdxError> {
    let _ = (quote, collateral, now_unix_secs);
    Err(TdxError::NotBuilt)
}
