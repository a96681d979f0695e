//! Binary wire formats of vendor evidence, parsed from untrusted bytes: one total
//! [`reader::Reader`] and one module per vendor structure. Nothing here verifies a
//! signature; it only turns bytes into typed fields or a typed error.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

pub mod reader;
pub mod tdx;

pub use reader::{Reader, WireError};
