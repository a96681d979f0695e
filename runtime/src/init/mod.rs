//! Early boot of PID 1: filesystems, kernel modules, network. Inputs are the image's own
//! files and the (measured) kernel command line.

pub mod modules;
pub mod mount;
pub mod net;
pub mod power;
