//! Inference on candle ops with our own batched decoder: loads a model handed over by the unseal step as in-memory files
//! (Llama family and Qwen2 from safetensors, or quantized GGUF) and generates text for the
//! OpenAI-compatible API in [`crate::serve`].
//! Trusts: model files come from the model owner after authenticated decryption; request
//! inputs come from untrusted clients and are validated before they reach the model.
//! Prompts and completions never go to logs.

mod batch;
mod config;
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
pub mod cuda_memory;
mod detok;
mod engine;
mod error;
pub mod gguf;
mod gguf_tokenizer;
mod kernels;
mod kv;
mod llama;
mod load;
mod qwen2;
mod sampling;
pub mod staged;
mod template;
mod transformer;

pub use config::ArchConfig;
pub use engine::{
    DeviceChoice, Engine, Event, FinishReason, GenerateParams, LoadOptions, ModelFiles, ModelInfo, Outcome, Sequence,
};
pub use error::InferError;
pub use gguf::GgufWeights;
pub use kv::BLOCK_SIZE;
pub use sampling::SamplingParams;
pub use template::{ChatMessage, ChatTemplate};
