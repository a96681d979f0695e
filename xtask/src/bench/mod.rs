//! `cargo xtask bench <what>`: measured performance claims.
pub mod unseal;
