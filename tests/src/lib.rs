//! The QEMU harness shared by the end-to-end tests and by `cargo xtask run/bench/demo`.

pub mod api;
pub mod fleet;
pub mod image;
pub mod libvirt;
pub mod owner;
pub mod qemu;
pub mod sim;
pub mod simtee;
