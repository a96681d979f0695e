//! Binary wire formats of vendor evidence, parsed from untrusted bytes: one total
//! [`reader::Reader`] and one module per vendor structure. Nothing here verifies a
//! signature; it only turns bytes into typed fields or a typed error.

pub mod cert_table;
pub mod reader;
pub mod tdx;

pub use reader::{Reader, WireError};
