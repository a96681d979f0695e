//! Renders a model's Jinja chat template (from tokenizer_config.json or GGUF metadata
//! `tokenizer.chat_template`) into a prompt, with the same environment settings
//! transformers uses (trim_blocks, lstrip_blocks, loop controls, `raise_exception`).
//! Trusts: the template comes from the model owner; messages come from API clients and are
//! passed as data, never as template source. Rendering is bounded by minijinja's recursion
//! limit; template errors are returned, not panicked.

use super::InferError;
use minijinja::{Environment, Error, ErrorKind, Value, context};

/// One chat message after the API layer has flattened content parts to text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Drop for ChatMessage {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.content);
    }
}

/// A compiled chat template plus the special-token strings templates refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)` as transformers provides it (Llama 3.1+ templates print the date).
/// Supports the `%d %b %Y %m %B` directives those templates use.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Civil-from-days (H. Hinnant), proleptic Gregorian, UTC.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const NAMES: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = usize::try_from(month - 1).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("");
    fmt.replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%B", name)
        .replace("%b", name.get(..3).unwrap_or(""))
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the token strings exposed as `bos_token`/`eos_token`.
    pub fn new(source: &str, bos: Option<String>, eos: Option<String>) -> Result<Self, InferError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| InferError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_owned()).map_err(|e| InferError::Template(e.to_string()))?;
        Ok(Self { env, bos: bos.unwrap_or_default(), eos: eos.unwrap_or_default() })
    }

    /// Renders the conversation, ending with the assistant's turn opener.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, InferError> {
        let tmpl = self.env.get_template("chat").map_err(|e| InferError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => Value::from(
                messages
                    .iter()
                    .map(|m| Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
                    .collect::<Vec<_>>()
            ),
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| InferError::Template(e.to_string()))
    }
}

/// Reads `chat_template` (a string, or a list of `{name, template}` where `default` wins)
/// and the BOS/EOS strings from tokenizer_config.json.
pub fn from_tokenizer_config(raw: &serde_json::Value) -> (Option<String>, Option<String>, Option<String>) {
    use serde_json::Value as J;
    let template = match raw.get("chat_template") {
        Some(J::String(s)) => Some(s.clone()),
        Some(J::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(J::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template").and_then(J::as_str))
            .map(str::to_owned),
        _ => None,
    };
    let token = |key: &str| match raw.get(key) {
        Some(J::String(s)) => Some(s.clone()),
        Some(J::Object(o)) => o.get("content").and_then(J::as_str).map(str::to_owned),
        _ => None,
    };
    (template, token("bos_token"), token("eos_token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage { role: "system".into(), content: "Be brief.".into() },
            ChatMessage { role: "user".into(), content: " Hi {{ 7*7 }} ".into() },
        ]
    }

    #[test]
    fn renders_chatml_with_hf_whitespace_rules() -> Result<(), InferError> {
        let src = "{% for m in messages %}\n{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].strip() + '<|im_end|>\\n' }}\n{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(src, None, Some("<|im_end|>".into()))?;
        let out = t.render(&msgs())?;
        // Client text is data: "{{ 7*7 }}" is not evaluated. Expected string produced by
        // Python jinja2 with transformers' settings (trim_blocks, lstrip_blocks): the newline
        // after `{% for %}` goes, the one after `}}` stays.
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n\n<|im_start|>user\nHi {{ 7*7 }}<|im_end|>\n\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn raise_exception_and_bad_templates_are_errors() -> Result<(), InferError> {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None)?;
        assert!(matches!(t.render(&msgs()), Err(InferError::Template(m)) if m.contains("roles must alternate")));
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
        let t = ChatTemplate::new("{{ bos_token }}{{ strftime_now('%d %b %Y') | length }}", Some("<s>".into()), None)?;
        assert_eq!(t.render(&[])?, "<s>11");
        Ok(())
    }

    #[test]
    fn tokenizer_config_shapes() {
        let raw = serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
            "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"
        });
        let (t, b, e) = from_tokenizer_config(&raw);
        assert_eq!((t.as_deref(), b.as_deref(), e.as_deref()), (Some("D"), Some("<s>"), Some("</s>")));
        assert_eq!(from_tokenizer_config(&serde_json::json!({})), (None, None, None));
    }
}
