//! Deterministic image assembly: a newc cpio writer and reader, and the manifest that
//! records every artifact and input with its hashes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
