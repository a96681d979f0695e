//! Reads a Hugging Face `config.json` into candle's Llama or Qwen2 configuration.
//! Trusts: the file comes from the model owner; it is still parsed totally (bad JSON or
//! absurd sizes give an error, never a panic).
//!
//! transformers 5 writes `rope_parameters` instead of `rope_theta`/`rope_scaling` and may
//! leave `sliding_window` null: both are normalised here so candle's serde types accept them.

use super::InferError;
use candle_transformers::models::{llama, qwen2};
use serde_json::Value;

const FILE: &str = "config.json";
/// Upper bound on any size field: rejects configs that would make candle allocate absurdly.
const MAX_DIM: u64 = 1 << 20;

/// A parsed architecture configuration.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    /// Llama 2/3, TinyLlama, SmolLM/SmolLM2, Mistral-style dense decoders.
    Llama(llama::Config),
    /// Qwen2 / Qwen2.5 dense decoders.
    Qwen2(qwen2::Config),
}

impl ArchConfig {
    /// Tokens the model can attend to.
    pub fn context_length(&self) -> usize {
        match self {
            Self::Llama(c) => c.max_position_embeddings,
            Self::Qwen2(c) => c.max_position_embeddings,
        }
    }

    /// Token ids that end generation according to the config (may be empty).
    pub fn eos_ids(&self, raw: &Value) -> Vec<u32> {
        match raw.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
            _ => Vec::new(),
        }
    }
}

fn invalid(reason: impl Into<String>) -> InferError {
    InferError::InvalidFile { file: FILE.into(), reason: reason.into() }
}

/// Parses `config.json` bytes; returns the architecture config and the raw JSON.
pub fn parse(bytes: &[u8]) -> Result<(ArchConfig, Value), InferError> {
    let mut raw: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let obj = raw.as_object_mut().ok_or_else(|| invalid("not a JSON object"))?;
    normalise_rope(obj);
    for key in [
        "hidden_size",
        "intermediate_size",
        "vocab_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
    ] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 && n <= MAX_DIM => {}
                _ => return Err(invalid(format!("{key} must be an integer in 1..={MAX_DIM}"))),
            },
        }
    }
    let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("").to_owned();
    let heads = obj.get("num_attention_heads").and_then(Value::as_u64).unwrap_or(0);
    let hidden = obj.get("hidden_size").and_then(Value::as_u64).unwrap_or(0);
    let kv_heads = obj.get("num_key_value_heads").and_then(Value::as_u64).unwrap_or(heads);
    if heads == 0 || hidden % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(invalid(format!(
            "hidden_size {hidden}, num_attention_heads {heads} and num_key_value_heads {kv_heads} \
             are inconsistent"
        )));
    }
    if let Some(head_dim) = obj.get("head_dim").and_then(Value::as_u64)
        && head_dim != hidden / heads
    {
        return Err(InferError::Unsupported(format!(
            "head_dim {head_dim} differs from hidden_size / num_attention_heads {}",
            hidden / heads
        )));
    }
    let config = match model_type.as_str() {
        "llama" | "mistral" => {
            if obj.get("sliding_window").is_some_and(|v| !v.is_null()) && model_type == "mistral" {
                return Err(InferError::Unsupported("mistral sliding-window attention".into()));
            }
            let c: llama::LlamaConfig = serde_json::from_value(raw.clone()).map_err(|e| invalid(e.to_string()))?;
            ArchConfig::Llama(c.into_config(false))
        }
        "qwen2" => {
            let max_pos = obj.get("max_position_embeddings").cloned().unwrap_or(Value::Null);
            for (key, default) in [
                ("sliding_window", max_pos),
                ("max_window_layers", obj.get("num_hidden_layers").cloned().unwrap_or(Value::Null)),
                ("use_sliding_window", Value::Bool(false)),
                ("tie_word_embeddings", Value::Bool(false)),
                ("hidden_act", Value::String("silu".into())),
            ] {
                if obj.get(key).is_none_or(Value::is_null) {
                    obj.insert(key.into(), default);
                }
            }
            if obj.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
                return Err(InferError::Unsupported("qwen2 sliding-window attention".into()));
            }
            let c: qwen2::Config = serde_json::from_value(raw.clone()).map_err(|e| invalid(e.to_string()))?;
            ArchConfig::Qwen2(c)
        }
        other => {
            return Err(InferError::Unsupported(format!(
                "model_type {other:?} (supported: llama, mistral without sliding window, qwen2)"
            )));
        }
    };
    Ok((config, raw))
}

/// Moves transformers 5's `rope_parameters` into the v4 keys candle reads.
fn normalise_rope(obj: &mut serde_json::Map<String, Value>) {
    let Some(Value::Object(params)) = obj.get("rope_parameters").cloned() else {
        return;
    };
    if obj.get("rope_theta").is_none_or(Value::is_null)
        && let Some(theta) = params.get("rope_theta")
    {
        obj.insert("rope_theta".into(), theta.clone());
    }
    let rope_type = params.get("rope_type").and_then(Value::as_str).unwrap_or("default");
    if rope_type != "default" && obj.get("rope_scaling").is_none_or(Value::is_null) {
        obj.insert("rope_scaling".into(), Value::Object(params));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Map<String, Value> {
        let v = serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
            "eos_token_id": [2, 7]
        });
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn rope_parameters_become_rope_theta() -> Result<(), InferError> {
        let bytes = serde_json::to_vec(&base()).map_err(|e| invalid(e.to_string()))?;
        let (cfg, raw) = parse(&bytes)?;
        let ArchConfig::Llama(c) = &cfg else { panic!("expected llama") };
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(cfg.context_length(), 256);
        assert_eq!(cfg.eos_ids(&raw), vec![2, 7]);
        Ok(())
    }

    #[test]
    fn qwen2_defaults_fill_nulls() -> Result<(), InferError> {
        let mut m = base();
        m.insert("model_type".into(), "qwen2".into());
        m.insert("sliding_window".into(), Value::Null);
        let bytes = serde_json::to_vec(&m).map_err(|e| invalid(e.to_string()))?;
        let (cfg, _) = parse(&bytes)?;
        let ArchConfig::Qwen2(c) = cfg else { panic!("expected qwen2") };
        assert_eq!(c.sliding_window, 256);
        assert_eq!(c.rope_theta, 500000.0);
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes_and_unknown_types() {
        let mut m = base();
        m.insert("num_key_value_heads".into(), 3.into());
        let bytes = serde_json::to_vec(&m).unwrap_or_default();
        assert!(matches!(parse(&bytes), Err(InferError::InvalidFile { .. })));
        let mut m = base();
        m.insert("hidden_size".into(), (1u64 << 40).into());
        let bytes = serde_json::to_vec(&m).unwrap_or_default();
        assert!(matches!(parse(&bytes), Err(InferError::InvalidFile { .. })));
        let mut m = base();
        m.insert("model_type".into(), "gptj".into());
        let bytes = serde_json::to_vec(&m).unwrap_or_default();
        assert!(matches!(parse(&bytes), Err(InferError::Unsupported(_))));
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(b"{").is_err());
    }
}
