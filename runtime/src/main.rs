//! PID 1 of the Chrysalis image.
fn main() {}
