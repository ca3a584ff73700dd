//! Message templates of policy `notify` actions: literal text with `{{ field }}` placeholders,
//! where a field is named as in conditions (`topic`, `event_id`, `data`, `data.a.b`, array
//! indexes as numbers). There is nothing else — no expressions, filters, loops or includes —
//! so rendering is one pass over the parts, linear in the output.
//!
//! A string value is inserted as is, any other value as compact JSON, a missing field as the
//! empty string. The output is capped at [`MAX_RENDERED_BYTES`] (cut at a character boundary
//! and marked with `…`), because one placeholder can name a whole event payload: a message
//! stays a message, whatever the event carries.

use std::fmt::Write as _;

use serde_json::Value;

/// Largest template source. Long enough for any message worth sending; a policy's templates
/// together are also counted in its complexity budget ([`super::rules`]).
pub const MAX_TEMPLATE_BYTES: usize = 4096;
/// Most placeholders in one template.
pub const MAX_PLACEHOLDERS: usize = 64;
/// Largest rendered message: four Telegram messages' worth (4096 characters each, mostly ASCII),
/// far more than a webhook `notify` needs, and small enough that a policy firing on every event
/// cannot make the delivery log grow by more than this per message.
pub const MAX_RENDERED_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Vec<String>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template was refused (the message; the caller knows the JSON path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

fn bad<T>(m: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError(m.into()))
}

fn field(name: &str) -> Result<Vec<String>, TemplateError> {
    let segments: Vec<String> = name.split('.').map(str::to_owned).collect();
    let valid = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let root_ok = match segments.first().map(String::as_str) {
        Some("data") => true,
        Some("topic") | Some("event_id") => segments.len() == 1,
        _ => false,
    };
    if root_ok && segments.iter().all(valid) {
        Ok(segments)
    } else {
        bad(format!(
            "placeholder {{{{ {name} }}}} must name topic, event_id, data or data.<key>[.<key>...]"
        ))
    }
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return bad(format!("must be at most {MAX_TEMPLATE_BYTES} bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        let mut placeholders = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return bad("has a {{ without its }}");
            };
            placeholders += 1;
            if placeholders > MAX_PLACEHOLDERS {
                return bad(format!("has more than {MAX_PLACEHOLDERS} placeholders"));
            }
            parts.push(Part::Field(field(after[..close].trim())?));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return bad("has a }} without its {{");
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders against the evaluation document (`{"topic","event_id","data"}`), at most
    /// [`MAX_RENDERED_BYTES`].
    pub fn render(&self, doc: &Value) -> String {
        let mut out = Capped::default();
        for part in &self.parts {
            let full = match part {
                Part::Text(t) => out.push(t),
                Part::Field(path) => match lookup(doc, path) {
                    None | Some(Value::Null) => false,
                    Some(Value::String(s)) => out.push(s),
                    // Written straight into the capped buffer: a huge value is cut while
                    // serialising, never serialised whole first.
                    Some(v) => serde_json::to_writer(&mut out, v).is_err() || out.full,
                },
            };
            if full {
                break;
            }
        }
        out.finish()
    }
}

fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// An output buffer that stops at [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    full: bool,
}

impl Capped {
    /// Appends `s`; `true` once the cap is reached.
    fn push(&mut self, s: &str) -> bool {
        let _ = std::io::Write::write(self, s.as_bytes());
        self.full
    }

    fn finish(self) -> String {
        let full = self.full;
        // The cut may split a character (or JSON written byte-wise): keep the valid prefix.
        let mut text = match String::from_utf8(self.bytes) {
            Ok(s) => s,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let mut b = e.into_bytes();
                b.truncate(valid);
                String::from_utf8(b).unwrap_or_default()
            }
        };
        if full {
            let _ = write!(text, "…");
        }
        text
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_RENDERED_BYTES.saturating_sub(self.bytes.len());
        if buf.len() > room {
            self.bytes.extend_from_slice(&buf[..room]);
            self.full = true;
            return Err(std::io::Error::other("template output cap reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({"topic": "episode.analyzed", "event_id": 7,
               "data": {"episode_id": "e-1", "n": 3, "tags": ["a", "b"], "nested": {"x": true}}})
    }

    #[test]
    fn renders_fields_strings_raw_and_other_values_as_json() {
        let t = Template::parse(
            "{{topic}} #{{ event_id }}: {{data.episode_id}} n={{data.n}} {{data.tags}} {{data.tags.1}} {{data.nested}} [{{data.missing}}]",
        )
        .unwrap();
        assert_eq!(
            t.render(&doc()),
            r#"episode.analyzed #7: e-1 n=3 ["a","b"] b {"x":true} []"#
        );
    }

    #[test]
    fn text_without_placeholders_is_itself() {
        assert_eq!(Template::parse("hello").unwrap().render(&doc()), "hello");
    }

    #[test]
    fn refuses_bad_syntax_and_unknown_roots() {
        for bad in [
            "{{",
            "a {{data.x",
            "x }} y",
            "{{ env.HOME }}",
            "{{ topic.x }}",
            "{{ data..x }}",
            "{{ data.x | upper }}",
            "{{}}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn size_and_placeholder_caps() {
        assert!(Template::parse(&"x".repeat(MAX_TEMPLATE_BYTES)).is_ok());
        assert!(Template::parse(&"x".repeat(MAX_TEMPLATE_BYTES + 1)).is_err());
        assert!(Template::parse(&"{{topic}}".repeat(MAX_PLACEHOLDERS)).is_ok());
        assert!(Template::parse(&"{{topic}}".repeat(MAX_PLACEHOLDERS + 1)).is_err());
    }

    #[test]
    fn output_is_capped_however_large_the_value() {
        let big = json!({"data": {"s": "é".repeat(100_000), "arr": vec![1; 100_000]}});
        for t in ["{{data.s}}", "{{data.arr}}", "{{data}}{{data}}"] {
            let out = Template::parse(t).unwrap().render(&big);
            assert!(
                out.len() <= MAX_RENDERED_BYTES + "…".len(),
                "{t}: {}",
                out.len()
            );
            assert!(out.ends_with('…'), "{t}");
        }
    }
}
