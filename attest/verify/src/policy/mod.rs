//! The model owner's verification policy (TOML, see `attest/verify/policy.example.toml`) and
//! the checks that judge verified claims against it. Every check returns a [`Check`] row for
//! the verification table, pass or fail, so that a report says what was compared and why.
//!
//! - `schema.rs`: the TOML schema (the [`Policy`] type and its sections), parsing, loading
//!   ([`Policy::load`], [`Policy::from_toml`]) and validation of the file.
//! - `check.rs`: the checks of verified claims against a policy, and the [`Check`] row.
//!
//! Trust: the policy is trusted (it is the owner's own file). Claims reach the checks only
//! as [`Verified`](crate::claims::Verified) values, i.e. after their signature chain was
//! checked; the event log is judged only after [`Policy::check_report_data`] bound it to
//! the verified REPORT_DATA.
//!
//! Defaults are closed: no allowed measurement means none is accepted, debug and simulated
//! TEEs are refused, REPORT_DATA must bind the Chrysalis event log to the verifier's nonce,
//! and only TDX TCB status "UpToDate" is accepted.

mod check;
mod schema;

pub use check::{Check, HasReportData};
pub use schema::{
    Binding, FreshnessPolicy, GpuPolicy, HexValue, Measurements, Policy, PolicyError, ReportDataPolicy, RuntimePolicy,
    SimulationPolicy, SnpMinTcb, SnpPolicy, SnpProductMinTcb, TdxPolicy, TransparencyPolicy,
};
