//! Errors of the inference engine. Trusts nothing: every message carries only facts about
//! shapes, names and counts, never prompt or completion text.

/// What went wrong while loading a model or generating from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// The model files do not form a model this engine can load.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A required file is missing from the unsealed model.
    #[error("missing model file: {0}")]
    MissingFile(String),
    /// A model file is present but malformed.
    #[error("invalid {file}: {reason}")]
    InvalidFile {
        /// The file's name in the unsealed model.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request parameter is out of range or inconsistent.
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam {
        /// The request field at fault (OpenAI's `param`).
        param: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// Prompt plus requested completion do not fit the model's context window.
    #[error(
        "this model's maximum context length is {context} tokens, but {requested} tokens were \
         requested ({prompt} in the prompt, {completion} for the completion)"
    )]
    ContextLength {
        /// The model's context window.
        context: usize,
        /// Prompt plus completion tokens.
        requested: usize,
        /// Tokens in the prompt.
        prompt: usize,
        /// Tokens asked for the completion.
        completion: usize,
    },
    /// The requested device is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
    /// A tensor operation failed (shape mismatch, allocation failure, kernel error).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Model code panicked; the panic was caught so PID 1 survives.
    #[error("model code panicked while {0}")]
    Panicked(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lower_case_facts() {
        let errors = [
            InferError::Unsupported("architecture \"gpt-j\"".into()),
            InferError::MissingFile("config.json".into()),
            InferError::InvalidFile { file: "config.json".into(), reason: "eof".into() },
            InferError::Tokenizer("x".into()),
            InferError::Template("x".into()),
            InferError::InvalidParam { param: "top_p", reason: "must be in (0, 1]".into() },
            InferError::ContextLength { context: 8, requested: 9, prompt: 5, completion: 4 },
            InferError::Device("x".into()),
            InferError::Panicked("loading"),
        ];
        for e in errors {
            let m = e.to_string();
            assert!(m.chars().next().is_some_and(|c| c.is_lowercase()), "{m}");
            assert!(!m.ends_with('.'), "{m}");
        }
    }
}
