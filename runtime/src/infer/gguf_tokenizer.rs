//! Builds a Hugging Face tokenizer from GGUF metadata (`tokenizer.ggml.*`) when a model
//! ships without tokenizer.json. Supports GPT-2 style byte-level BPE (`tokenizer.ggml.model
//! = "gpt2"`), with the pre-tokenizer chosen from `tokenizer.ggml.pre` as llama.cpp does.
//! Trusts: metadata comes from the model owner; it is checked for type and consistency and
//! any inconsistency is an error.

use super::InferError;
use super::gguf::Meta;
use candle_core::quantized::gguf_file::Value as GValue;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
/// Padding rows of the embedding with no text (llama.cpp names them `[PAD<id>]`): left out
/// of the vocabulary, so they decode to nothing, as in transformers, and no input text
/// encodes to them.
const TOKEN_UNUSED: i64 = 5;

/// Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3).
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer split (tokenizer.json of Qwen2).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special tokens GGUF metadata names.
pub struct GgufTokenizer {
    /// The tokenizer, equivalent to the model's original tokenizer.json.
    pub tokenizer: Tokenizer,
    /// Text of the BOS token, if any (for chat templates).
    pub bos: Option<String>,
    /// Text of the EOS token, if any (for chat templates).
    pub eos: Option<String>,
}

fn bad(file: &str, reason: impl Into<String>) -> InferError {
    InferError::InvalidFile { file: file.into(), reason: reason.into() }
}

fn pre_tokenizer(pre: &str) -> Value {
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    match pre {
        "llama3" | "llama-bpe" | "llama-v3" => split(LLAMA3_SPLIT),
        "qwen2" => split(QWEN2_SPLIT),
        "gpt2" | "smollm" | "default" | "starcoder" | "refact" | "codeshell" | "" => byte_level(true),
        other => {
            log::warn!("gguf tokenizer: unknown pre-tokenizer {other:?}, using GPT-2's");
            byte_level(true)
        }
    }
}

/// Builds the tokenizer from `meta`; `file` names the GGUF file in errors.
pub fn build(meta: &Meta<'_>) -> Result<GgufTokenizer, InferError> {
    let file = meta.file;
    match meta.str("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => {
            return Err(InferError::Unsupported(format!(
                "GGUF tokenizer model {other:?} without tokenizer.json (only \"gpt2\" byte-level \
                 BPE is built from metadata; ship tokenizer.json for others)"
            )));
        }
        None => return Err(bad(file, "no tokenizer.ggml.model and no tokenizer.json")),
    }
    let tokens = meta.array("tokenizer.ggml.tokens")?.ok_or_else(|| bad(file, "no tokenizer.ggml.tokens"))?;
    let tokens: Vec<&str> = tokens
        .iter()
        .map(|t| t.to_string().map(String::as_str))
        .collect::<Result<_, _>>()
        .map_err(|_| bad(file, "tokenizer.ggml.tokens holds a non-string"))?;
    let types: Vec<i64> = match meta.array("tokenizer.ggml.token_type")? {
        None => vec![1; tokens.len()],
        Some(a) => a
            .iter()
            .map(|v| match v {
                GValue::I32(t) => Ok(i64::from(*t)),
                GValue::U32(t) => Ok(i64::from(*t)),
                GValue::I8(t) => Ok(i64::from(*t)),
                GValue::U8(t) => Ok(i64::from(*t)),
                _ => Err(bad(file, "tokenizer.ggml.token_type holds a non-integer")),
            })
            .collect::<Result<_, _>>()?,
    };
    if types.len() != tokens.len() {
        return Err(bad(file, format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let merges: Vec<&str> = match meta.array("tokenizer.ggml.merges")? {
        None => Vec::new(),
        Some(a) => a
            .iter()
            .map(|t| t.to_string().map(String::as_str))
            .collect::<Result<_, _>>()
            .map_err(|_| bad(file, "tokenizer.ggml.merges holds a non-string"))?,
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty == TOKEN_UNUSED {
            continue;
        }
        if vocab.contains_key(*tok) {
            log::warn!("gguf tokenizer: duplicate token at id {id}; keeping the first");
            continue;
        }
        vocab.insert((*tok).to_owned(), json!(id));
        if *ty == TOKEN_CONTROL || *ty == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == TOKEN_CONTROL,
            }));
        }
    }
    let text_of = |key: &str| -> Option<(u32, String)> {
        let id = meta.u32(key)?;
        let text = tokens.get(usize::try_from(id).ok()?)?;
        Some((id, (*text).to_owned()))
    };
    let bos = text_of("tokenizer.ggml.bos_token_id");
    let eos = text_of("tokenizer.ggml.eos_token_id");
    let post_processor = match (&bos, meta.bool("tokenizer.ggml.add_bos_token")) {
        (Some((id, text)), Some(true)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {text.as_str(): {"id": text, "ids": [id], "tokens": [text]}},
        }),
        _ => Value::Null,
    };
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("");
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre),
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    let bytes = serde_json::to_vec(&doc).map_err(|e| InferError::Tokenizer(e.to_string()))?;
    let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| InferError::Tokenizer(e.to_string()))?;
    Ok(GgufTokenizer { tokenizer, bos: bos.map(|(_, t)| t), eos: eos.map(|(_, t)| t) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn strings(v: &[&str]) -> GValue {
        GValue::Array(v.iter().map(|s| GValue::String((*s).into())).collect())
    }

    fn md() -> HashMap<String, GValue> {
        // A toy byte-level vocabulary: 'Ġ' is the byte-level form of a space.
        let tokens = ["<s>", "</s>", "h", "i", "Ġ", "hi", "Ġhi", "!", "[PAD8]"];
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), GValue::String("gpt2".into()));
        m.insert("tokenizer.ggml.pre".into(), GValue::String("smollm".into()));
        m.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
        m.insert(
            "tokenizer.ggml.token_type".into(),
            GValue::Array([3, 3, 1, 1, 1, 1, 1, 1, 5].iter().map(|t| GValue::I32(*t)).collect()),
        );
        m.insert("tokenizer.ggml.merges".into(), strings(&["h i", "Ġ hi"]));
        m.insert("tokenizer.ggml.bos_token_id".into(), GValue::U32(0));
        m.insert("tokenizer.ggml.eos_token_id".into(), GValue::U32(1));
        m
    }

    #[test]
    fn builds_byte_level_bpe() -> Result<(), InferError> {
        let mut m = md();
        let t = build(&Meta { file: "t.gguf", md: &m })?;
        let enc = t.tokenizer.encode("hi hi!</s>", false).map_err(|e| InferError::Tokenizer(e.to_string()))?;
        assert_eq!(enc.get_ids(), &[5, 6, 7, 1]);
        assert_eq!(t.eos.as_deref(), Some("</s>"));
        assert_eq!(t.tokenizer.decode(&[5, 6, 7], false).ok().as_deref(), Some("hi hi!"));
        // An unused padding row decodes to nothing, and its name is plain text.
        assert_eq!(t.tokenizer.decode(&[5, 8], true).ok().as_deref(), Some("hi"));
        let enc = t.tokenizer.encode("[PAD8]", false).map_err(|e| InferError::Tokenizer(e.to_string()))?;
        assert!(!enc.get_ids().contains(&8));
        // add_bos_token prepends BOS when special tokens are requested.
        m.insert("tokenizer.ggml.add_bos_token".into(), GValue::Bool(true));
        let t = build(&Meta { file: "t.gguf", md: &m })?;
        let enc = t.tokenizer.encode("hi", true).map_err(|e| InferError::Tokenizer(e.to_string()))?;
        assert_eq!(enc.get_ids(), &[0, 5]);
        Ok(())
    }

    #[test]
    fn rejects_inconsistent_metadata() {
        let mut m = md();
        m.insert("tokenizer.ggml.token_type".into(), GValue::Array(vec![GValue::I32(1)]));
        assert!(build(&Meta { file: "t", md: &m }).is_err());
        let mut m = md();
        m.insert("tokenizer.ggml.model".into(), GValue::String("llama".into()));
        assert!(matches!(build(&Meta { file: "t", md: &m }), Err(InferError::Unsupported(_))));
        let mut m = md();
        m.insert("tokenizer.ggml.tokens".into(), GValue::U32(3));
        assert!(build(&Meta { file: "t", md: &m }).is_err());
    }
}
