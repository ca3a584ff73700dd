//! Analysis through an OpenAI-compatible chat completions API (`analysis.llm_url`). The model
//! writes `summary`, `keywords` and `sentiment`; entities and the word count come from the
//! built-in analyzer, which is exact for them. Any failure (unreachable, non-2xx, timeout,
//! malformed answer) is an error the caller answers by falling back to the built-in analyzer.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::{Value, json};

use super::builtin;
use crate::config::ServiceUrl;
use crate::jobs::JobContext;

const SYSTEM_PROMPT: &str = "You analyse incident and operations reports. Answer with one JSON \
object and nothing else: {\"summary\": string (one or two sentences), \"keywords\": array of up \
to 5 lowercase strings, \"sentiment\": {\"label\": \"positive\"|\"neutral\"|\"negative\", \
\"score\": number from -1 to 1}}.";

/// `POST {llm_url}/v1/chat/completions` (or `llm_url` itself when it already names the
/// endpoint; `.../v1` gets `/chat/completions`).
pub fn endpoint(base: &ServiceUrl) -> String {
    let base = base.expose().trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_owned()
    } else if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// Why the LLM could not be used. `reason` is short and fixed ("llm unavailable: timeout"):
/// it is stored in the tenant-visible `analysis.llm_error`, so it never names the endpoint,
/// a host or a credential. `detail` is the full chain, for the log only.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct LlmError {
    pub reason: String,
    #[source]
    pub detail: anyhow::Error,
}

impl LlmError {
    fn new(reason: impl Into<String>, detail: anyhow::Error) -> Self {
        LlmError {
            reason: reason.into(),
            detail,
        }
    }

    fn malformed(what: &str, detail: anyhow::Error) -> Self {
        Self::new(format!("llm answer malformed: {what}"), detail)
    }
}

/// The class of a failed request, from reqwest's own flags and the cause it wraps.
fn request_reason(e: &reqwest::Error) -> &'static str {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(cause) = source {
        chain.push_str(&cause.to_string().to_ascii_lowercase());
        source = cause.source();
    }
    if e.is_timeout() || chain.contains("timed out") {
        "llm unavailable: timeout"
    } else if chain.contains("connection refused") {
        "llm unavailable: connection refused"
    } else if chain.contains("dns") || chain.contains("lookup") {
        "llm unavailable: host not found"
    } else if e.is_connect() {
        "llm unavailable: cannot connect"
    } else {
        "llm unavailable: request failed"
    }
}

pub async fn analyze(
    ctx: &JobContext,
    url: &ServiceUrl,
    title: &str,
    content: &str,
) -> Result<Value, LlmError> {
    let cfg = &ctx.config.analysis;
    let body = json!({
        "model": cfg.llm_model,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": format!("Title: {title}\n\n{content}")},
        ],
    });
    let mut request = ctx
        .http
        .post(endpoint(url))
        .timeout(Duration::from_secs(cfg.llm_timeout_secs.max(1)))
        .json(&body);
    if let Some(key) = &cfg.llm_api_key {
        request = request.bearer_auth(key.expose());
    }
    let response = request.send().await.map_err(|e| {
        let reason = request_reason(&e);
        LlmError::new(
            reason,
            anyhow::Error::new(e).context(format!("LLM request to {} failed", url.host_port())),
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(LlmError::new(
            format!("llm unavailable: HTTP {}", status.as_u16()),
            anyhow!("LLM at {} answered {status}", url.host_port()),
        ));
    }
    let reply: Value = response
        .json()
        .await
        .map_err(|e| LlmError::malformed("not JSON", anyhow::Error::new(e)))?;
    let text = reply
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            LlmError::malformed(
                "no choices[0].message.content",
                anyhow!("LLM answer has no choices[0].message.content"),
            )
        })?;
    let parsed: Value = serde_json::from_str(strip_fences(text)).map_err(|e| {
        LlmError::malformed(
            "message content is not a JSON object",
            anyhow::Error::new(e).context("LLM message content is not a JSON object"),
        )
    })?;
    let mut analysis = builtin::analyze(title, content);
    analysis["summary"] =
        json!(summary(&parsed).map_err(|e| LlmError::malformed("invalid summary", e))?);
    analysis["keywords"] =
        json!(keywords(&parsed).map_err(|e| LlmError::malformed("invalid keywords", e))?);
    analysis["sentiment"] =
        sentiment(&parsed).map_err(|e| LlmError::malformed("invalid sentiment", e))?;
    analysis["analyzer"] = json!(format!("llm:{}", cfg.llm_model));
    Ok(analysis)
}

/// Models sometimes wrap JSON in a ```json fence despite being asked not to.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .unwrap_or(t);
    t.strip_suffix("```").unwrap_or(t).trim()
}

fn summary(v: &Value) -> anyhow::Result<String> {
    match v.get("summary").and_then(Value::as_str).map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.chars().take(1000).collect()),
        _ => bail!("LLM answer lacks a summary"),
    }
}

fn keywords(v: &Value) -> anyhow::Result<Vec<String>> {
    let list = v
        .get("keywords")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("LLM answer lacks keywords"))?;
    list.iter()
        .take(10)
        .map(|k| {
            k.as_str()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| anyhow!("LLM keywords must be non-empty strings"))
        })
        .collect()
}

fn sentiment(v: &Value) -> anyhow::Result<Value> {
    let s = v
        .get("sentiment")
        .ok_or_else(|| anyhow!("LLM answer lacks sentiment"))?;
    let label = s.get("label").and_then(Value::as_str).unwrap_or_default();
    if !matches!(label, "positive" | "neutral" | "negative") {
        bail!("LLM sentiment label {label:?} is not positive, neutral or negative");
    }
    let score = s
        .get("score")
        .and_then(Value::as_f64)
        .filter(|x| (-1.0..=1.0).contains(x))
        .ok_or_else(|| anyhow!("LLM sentiment score must be a number from -1 to 1"))?;
    Ok(json!({"label": label, "score": score}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_a_base_a_v1_base_or_the_full_url() {
        let u = |s| ServiceUrl::parse(s).unwrap();
        assert_eq!(endpoint(&u("http://h:1")), "http://h:1/v1/chat/completions");
        assert_eq!(
            endpoint(&u("http://h:1/v1/")),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint(&u("http://h:1/api/chat/completions")),
            "http://h:1/api/chat/completions"
        );
    }

    #[test]
    fn fenced_json_is_accepted() {
        assert_eq!(strip_fences("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_fences(" {\"a\":1} "), "{\"a\":1}");
    }
}
