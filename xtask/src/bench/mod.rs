//! `cargo xtask bench ...`: measured performance claims, each benchmark in its own file.

pub mod infer;
