//! The Chrysalis guest runtime as a library: everything `main` sequences at boot, kept
//! testable on the host (the binary is PID 1 only inside the image).

pub mod infer;
pub mod serve;
