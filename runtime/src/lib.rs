//! The Chrysalis guest runtime as a library: everything `main` sequences at boot, kept
//! testable on the host (the binary is PID 1 only inside the image).

pub mod api;
pub mod boot;
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
pub mod measure;
pub mod pull;
pub mod serve;
pub mod session;
pub mod simtee;
pub mod sys;
pub mod tee;
