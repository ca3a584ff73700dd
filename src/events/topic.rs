//! Topic names and subscription filters: a topic is `<domain>.<action>` (lowercase letters,
//! digits, `_`); a filter is an exact topic or `<domain>.*`.

/// The topics the platform itself emits (CONTRACT §6): the only topics that get a metric
/// label of their own. Tenants may publish any other topic (policy `publish` actions); those
/// are labelled [`OTHER`], so a tenant cannot add series to `/metrics`.
pub const KNOWN_TOPICS: &[&str] = super::payloads::TOPICS;

/// The metric label of every topic not in [`KNOWN_TOPICS`].
pub const OTHER: &str = "other";

/// `topic` itself when the platform knows it, else [`OTHER`]: a bounded label.
pub fn metric_label(topic: &str) -> &'static str {
    KNOWN_TOPICS
        .iter()
        .find(|known| **known == topic)
        .copied()
        .unwrap_or(OTHER)
}

/// Why a topic or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {0:?}: expected <domain>.<action> or <domain>.* in lowercase")]
pub struct BadTopic(pub String);

/// [`validate`] as an ECMA-262 pattern, for the OpenAPI document (a unit test keeps them
/// in step).
pub const TOPIC_PATTERN: &str = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$";
/// [`Filter::parse`] as an ECMA-262 pattern, for the OpenAPI document.
pub const FILTER_PATTERN: &str = r"^[a-z][a-z0-9_]*\.([a-z][a-z0-9_]*|\*)$";

fn is_word(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a topic an event is recorded under.
pub fn validate(topic: &str) -> Result<(), BadTopic> {
    match topic.split_once('.') {
        Some((domain, action)) if is_word(domain) && is_word(action) => Ok(()),
        _ => Err(BadTopic(topic.to_owned())),
    }
}

/// One subscription filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Exact(String),
    /// `domain.*`: every action of the domain.
    Domain(String),
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, BadTopic> {
        match s.split_once('.') {
            Some((domain, "*")) if is_word(domain) => Ok(Filter::Domain(domain.to_owned())),
            _ => validate(s).map(|()| Filter::Exact(s.to_owned())),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Filter::Exact(t) => t == topic,
            Filter::Domain(d) => topic
                .strip_prefix(d.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Filter::Exact(t) => t.clone(),
            Filter::Domain(d) => format!("{d}.*"),
        }
    }
}

/// A set of filters; empty means every topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub Vec<Filter>);

impl Filters {
    /// Parses a comma-separated list (`episode.created,policy.*`); blank means all.
    pub fn parse(list: &str) -> Result<Filters, BadTopic> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Filter::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Filters)
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPICS: &[&str] = &["system.state", "episode.created", "a1.b_2"];
    const NOT_TOPICS: &[&str] = &[
        "",
        "system",
        "System.state",
        "system.",
        ".state",
        "a.b.c",
        "a.*",
        "1a.b",
        "a b.c",
    ];

    #[test]
    fn topics() {
        for ok in TOPICS {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in NOT_TOPICS {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_documented_patterns_agree_with_the_parsers() {
        let topic = regex::Regex::new(TOPIC_PATTERN).unwrap();
        let filter = regex::Regex::new(FILTER_PATTERN).unwrap();
        let more = [
            "policy.*",
            "*.b",
            "a.**",
            "a.1b",
            "_a.b",
            "a.b\n",
            "\u{e9}.b",
            "a.\u{2a}x",
        ];
        for s in TOPICS.iter().chain(NOT_TOPICS).chain(&more) {
            assert_eq!(topic.is_match(s), validate(s).is_ok(), "topic {s:?}");
            assert_eq!(filter.is_match(s), Filter::parse(s).is_ok(), "filter {s:?}");
        }
    }

    #[test]
    fn only_known_topics_are_their_own_metric_label() {
        for known in KNOWN_TOPICS {
            assert!(validate(known).is_ok(), "{known}");
            assert_eq!(metric_label(known), *known);
        }
        for other in ["ops.escalated", "episode.createdx", "system", ""] {
            assert_eq!(metric_label(other), OTHER);
        }
    }

    #[test]
    fn filters() {
        let f = Filters::parse("episode.created, policy.*").unwrap();
        assert!(f.matches("episode.created"));
        assert!(f.matches("policy.triggered"));
        assert!(!f.matches("episode.analyzed"));
        assert!(!f.matches("policyx.created"));
        assert!(Filters::parse("").unwrap().matches("anything.at_all"));
        for bad in [
            "*",
            "policy.**",
            "*.created",
            "Policy.*",
            "a.b.c",
            "episode",
        ] {
            assert!(Filters::parse(bad).is_err(), "{bad}");
        }
    }
}
