//! Deterministic image assembly: a newc cpio writer and reader, kernel-module ordering,
//! deterministic compression and the manifest that records every artifact and input with
//! its hashes.
//!
//! Everything here is a pure function of its inputs: the same kernel package, runtime
//! binary, module list, cmdline and SOURCE_DATE_EPOCH give bit-identical output on any
//! machine, in any directory, at any time.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cpio;
pub mod elf;
pub mod initramfs;
pub mod kmod;
pub mod manifest;
pub mod reader;

/// Why an image could not be assembled or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A path the cpio format or the image layout does not allow.
    #[error("invalid archive path {0:?}")]
    BadPath(String),
    /// Permission bits outside 0o7777.
    #[error("invalid permission bits {perm:#o} for {path:?}")]
    BadPerm {
        /// Path.
        path: String,
        /// Bits given.
        perm: u32,
    },
    /// The same path twice.
    #[error("duplicate archive path {0:?}")]
    Duplicate(String),
    /// A file whose parent directory is not in the archive.
    #[error("parent directory of {0:?} is not in the archive")]
    MissingParent(String),
    /// A file larger than the format's 4 GiB limit.
    #[error("{0:?} is too large for a newc archive")]
    TooLarge(String),
    /// Input ended inside a record.
    #[error("archive truncated at offset {offset} (in {what})")]
    Truncated {
        /// Offset where more bytes were needed.
        offset: usize,
        /// Which part of the record.
        what: &'static str,
    },
    /// A record that does not start with the newc magic.
    #[error("bad cpio magic at offset {offset}")]
    BadMagic {
        /// Offset of the record.
        offset: usize,
    },
    /// A header field that is not 8 hex digits, or a malformed name.
    #[error("malformed cpio field at offset {offset}")]
    BadField {
        /// Offset of the field.
        offset: usize,
    },
    /// Non-zero bytes after the trailer.
    #[error("non-padding bytes after the cpio trailer at offset {offset}")]
    TrailingData {
        /// Offset of the first such byte.
        offset: usize,
    },
    /// An ELF file whose dynamic section could not be read.
    #[error("{file}: {why}")]
    Elf {
        /// File name.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// A kernel module that could not be read.
    #[error("kernel module {module}: {why}")]
    Module {
        /// File name.
        module: String,
        /// What went wrong.
        why: String,
    },
    /// A module (or a dependency) not in the kernel package.
    #[error("kernel module {module} not found in the kernel package{}", needed_by.as_ref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    MissingModule {
        /// The missing module.
        module: String,
        /// The module that depends on it, if any.
        needed_by: Option<String>,
    },
    /// Modules that depend on each other.
    #[error("kernel module dependency cycle: {0}")]
    DependencyCycle(String),
    /// Compression failed (I/O into a Vec cannot, but the API is fallible).
    #[error("compressing the initramfs: {0}")]
    Compress(std::io::Error),
}
