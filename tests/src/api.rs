//! Plain requests to a runtime's OpenAI API, for runtimes booted with
//! `chrysalis.plaintext=1` (the encrypted channel has its own tests).

use anyhow::{Context, Result, bail};

/// `POST <url>/v1/completions` of "The sky is" for 4 greedy tokens from `model`; the answer
/// must be 200 with a JSON body, which is returned.
pub fn complete(url: &str, model: &str) -> Result<serde_json::Value> {
    let body = serde_json::json!({"model": model, "prompt": "The sky is", "max_tokens": 4, "temperature": 0});
    let mut r = ureq::post(&format!("{url}/v1/completions"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .context("POST /v1/completions")?;
    let status = r.status().as_u16();
    let v: serde_json::Value = serde_json::from_slice(&r.body_mut().read_to_vec()?).context("the answer is not JSON")?;
    if status != 200 {
        bail!("/v1/completions answered {status}: {v}");
    }
    Ok(v)
}
