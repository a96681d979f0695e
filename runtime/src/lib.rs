//! The Chrysalis guest runtime as a library: everything `main` sequences at boot, kept
//! testable on the host (the binary is PID 1 only inside the image).
//!
//! `unsafe` is denied crate-wide and allowed only in the three modules that talk to the
//! kernel or a C library directly: [`sys`] (reboot, clock), `evidence::tdx_ioctl` (the TDX
//! guest ioctl) and `gpu::nvml` (NVML through `libloading`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod boot;
pub mod boot_log;
pub mod bundle;
pub mod channel;
pub mod config;
pub mod evidence;
#[cfg(feature = "gpu-evidence")]
pub mod gpu;
pub mod gpu_boot;
pub mod infer;
pub mod init;
pub mod logger;
pub mod pull;
pub mod serve;
pub mod session;
pub mod simtee;
#[allow(unsafe_code)]
pub mod sys;
pub mod tee;
