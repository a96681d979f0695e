//! Sealed weights: the encrypted bundle format a model owner produces (`attest seal`) and
//! the runtime decrypts in memory after an attested key release.
//!
//! A bundle is `preamble || header || body`. In format v2 (written) the clear header holds
//! only the chunk size, the chunk count and a random nonce prefix; the body is AES-256-GCM in
//! the STREAM construction over fixed-size chunks, with SHA-384 of the header as associated
//! data, and its plaintext is `u32_le(M) || manifest || files back to back || zero padding`:
//! the manifest (model name, file names, sizes, SHA-256) is encrypted, and only the total
//! rounded up to whole chunks shows. Format v1 (read only) listed the files in the clear
//! header. Normative description, what leaks, threat model and error list:
//! `attest/proto/SEALED_FORMAT.md`.
//!
//! ```
//! use chrysalis_proto::seal::{DataKey, SealOptions, read_header, seal_to_vec, unseal};
//! let key = DataKey::generate().unwrap();
//! let bundle = seal_to_vec("tiny", &[("config.json", b"{}"), ("model.gguf", b"GGUF...")],
//!                          &key, &SealOptions::default()).unwrap();
//! // The runtime measures the header before it has the key; it names no file.
//! let header = read_header(&bundle).unwrap();
//! assert_eq!(header.header.clear_manifest(), None);
//! assert_eq!(header.layout.chunk_count, 1);
//! let files = unseal(&bundle, &key).unwrap();
//! assert_eq!(files.model_name, "tiny");
//! assert_eq!(files.get("model.gguf"), Some(&b"GGUF..."[..]));
//! ```
//!
//! Trust: bundle bytes are untrusted; the data key is the secret.

pub mod cipher;
pub mod format;
pub mod key;
pub mod keyfile;
pub mod sealer;
pub mod staged;
pub mod unseal;

pub use format::{
    BundleHeader, FileEntry, HeaderError, HeaderV1, HeaderV2, Layout, Manifest, ManifestError, Padding, SealedHeader, read_header,
};
pub use key::DataKey;
pub use keyfile::{KeyFile, KeyFileError};
pub use sealer::{SealError, SealOptions, SealSource, Sealed, model_files, seal, seal_to_vec};
pub use staged::{SinkError, StagedFile, StagedSink, StagedUnsealed, Staging, staging_slots, unseal_staged, unseal_staged_file};
pub use unseal::{
    UnsealError, UnsealOptions, UnsealedFile, UnsealedFiles, read_header_from, unseal, unseal_file, unseal_reader, unseal_with,
};
