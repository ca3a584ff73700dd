//! The built-in analyzer: deterministic, dependency-free text analysis. Same text, same result.
//!
//! - `summary`: the first sentence or two of the content (at most 200 characters, cut at a word
//!   boundary with `…`); the title when there is no content.
//! - `keywords`: up to 5 words of 3+ letters that are not stop words, by frequency, ties broken
//!   by first appearance.
//! - `sentiment`: lexicon-based; `score = (positive - negative) / (positive + negative)` in
//!   [-1, 1] (0 when neither occurs), a negation (`not`, `no`, `never`, `n't`) just before a word
//!   flips it; `label` positive above 0.25, negative below -0.25, else neutral.
//! - `entities`: `urls` (http/https), `emails`, `mentions` (`@name`), each in order, deduplicated.
//! - `word_count`: whitespace-separated tokens of the content that contain a letter or digit.
//!
//! URLs and e-mail addresses are left out of keywords and sentiment.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Value, json};

const SUMMARY_MAX: usize = 200;
const KEYWORDS: usize = 5;

const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was",
    "one", "our", "out", "has", "have", "his", "how", "its", "may", "new", "now", "old", "see",
    "two", "way", "who", "did", "get", "got", "let", "say", "she", "too", "use", "that", "with",
    "this", "they", "them", "then", "than", "there", "their", "what", "when", "where", "which",
    "while", "will", "would", "could", "should", "from", "into", "onto", "over", "under", "about",
    "after", "before", "again", "also", "been", "being", "were", "some", "such", "only", "just",
    "very", "more", "most", "much", "many", "each", "other", "these", "those", "your", "yours",
    "ours", "here", "does", "doing", "done", "because", "until", "upon", "via", "per", "off",
    "own", "same", "both", "few", "why", "yet", "him", "she's", "it's",
];

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "success",
    "successful",
    "succeeded",
    "resolved",
    "improved",
    "improvement",
    "happy",
    "stable",
    "fast",
    "win",
    "won",
    "positive",
    "fixed",
    "recovered",
    "smooth",
    "love",
    "better",
    "best",
    "healthy",
    "restored",
    "efficient",
    "pleased",
];

const NEGATIVE: &[&str] = &[
    "bad", "fail", "failed", "failure", "failing", "error", "errors", "outage", "down", "crash",
    "crashed", "slow", "broken", "incident", "problem", "problems", "issue", "issues", "angry",
    "poor", "worse", "worst", "critical", "lost", "degraded", "unstable", "timeout", "late",
];

const NEGATIONS: &[&str] = &["not", "no", "never", "without"];

static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{L}\p{N}]+(?:['’][\p{L}]+)*").expect("valid regex"));
static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"https?://[^\s<>"'`]+"#).expect("valid regex"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
        .expect("valid regex")
});
static MENTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|[^\w@.])@([A-Za-z0-9_]{1,64})").expect("valid regex"));

/// Analyses an episode's title and content.
pub fn analyze(title: &str, content: &str) -> Value {
    // Addresses are entities, not words: "example" and "com" are no keywords.
    let prose = EMAIL
        .replace_all(&URL.replace_all(content, " "), " ")
        .into_owned();
    let words: Vec<String> = WORD
        .find_iter(&prose)
        .map(|m| m.as_str().to_lowercase())
        .collect();
    let word_count = content
        .split_whitespace()
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .count();
    let (label, score) = sentiment(&words);
    json!({
        "summary": summary(title, content),
        "keywords": keywords(&words),
        "sentiment": {"label": label, "score": score},
        "entities": entities(content),
        "word_count": word_count,
        "analyzer": "builtin",
    })
}

fn summary(title: &str, content: &str) -> String {
    let text = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return title.trim().to_owned();
    }
    let mut out = String::new();
    for (i, sentence) in sentences(&text).into_iter().enumerate() {
        if i >= 2 || (i > 0 && out.chars().count() + 1 + sentence.chars().count() > SUMMARY_MAX) {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(sentence);
    }
    if out.chars().count() > SUMMARY_MAX {
        let cut: String = out.chars().take(SUMMARY_MAX - 1).collect();
        let cut = match cut.rfind(' ') {
            Some(i) if i > SUMMARY_MAX / 2 => cut[..i].to_owned(),
            _ => cut,
        };
        out = format!("{}…", cut.trim_end_matches([',', ';', ':', ' ']));
    }
    out
}

/// Sentences of whitespace-normalised text: split after `.`, `!` or `?` followed by a space.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if matches!(b, b'.' | b'!' | b'?') && bytes.get(i + 1) == Some(&b' ') {
            out.push(text[start..=i].trim());
            start = i + 2;
        }
    }
    if start < text.len() {
        out.push(text[start..].trim());
    }
    out.retain(|s| !s.is_empty());
    out
}

fn keywords(words: &[String]) -> Vec<String> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for (pos, w) in words.iter().enumerate() {
        if w.chars().count() < 3
            || w.chars().all(|c| c.is_numeric())
            || STOP_WORDS.contains(&w.as_str())
        {
            continue;
        }
        counts.entry(w).or_insert((0, pos)).0 += 1;
    }
    let mut ranked: Vec<(&str, usize, usize)> = counts
        .into_iter()
        .map(|(w, (n, first))| (w, n, first))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .take(KEYWORDS)
        .map(|(w, _, _)| w.to_owned())
        .collect()
}

fn sentiment(words: &[String]) -> (&'static str, f64) {
    let (mut pos, mut neg) = (0i32, 0i32);
    for (i, w) in words.iter().enumerate() {
        let polarity = if POSITIVE.contains(&w.as_str()) {
            1
        } else if NEGATIVE.contains(&w.as_str()) {
            -1
        } else {
            continue;
        };
        let negated = i > 0 && {
            let prev = words[i - 1].as_str();
            NEGATIONS.contains(&prev) || prev.ends_with("n't") || prev.ends_with("n’t")
        };
        match polarity * if negated { -1 } else { 1 } {
            1 => pos += 1,
            _ => neg += 1,
        }
    }
    let score = if pos + neg == 0 {
        0.0
    } else {
        f64::from(pos - neg) / f64::from(pos + neg)
    };
    let score = (score * 100.0).round() / 100.0;
    let label = if score > 0.25 {
        "positive"
    } else if score < -0.25 {
        "negative"
    } else {
        "neutral"
    };
    (label, score)
}

fn entities(content: &str) -> Value {
    let mut urls: Vec<String> = Vec::new();
    for m in URL.find_iter(content) {
        let url = m
            .as_str()
            .trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}']);
        push_unique(&mut urls, url);
    }
    let mut emails: Vec<String> = Vec::new();
    for m in EMAIL.find_iter(content) {
        // An address inside a URL (https://x/?to=a@b.c) is part of the URL.
        if !urls.iter().any(|u| u.contains(m.as_str())) {
            push_unique(&mut emails, m.as_str());
        }
    }
    let mut mentions: Vec<String> = Vec::new();
    for c in MENTION.captures_iter(content) {
        if let Some(name) = c.get(1) {
            push_unique(&mut mentions, &format!("@{}", name.as_str()));
        }
    }
    json!({"urls": urls, "emails": emails, "mentions": mentions})
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !item.is_empty() && !list.iter().any(|x| x == item) {
        list.push(item.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "The database outage was resolved quickly. Payments failed for ten minutes \
        and customers were not happy! See https://status.example.com/incidents/42. Contact \
        ops@example.com or ping @alice and @bob_2 about the database failover; the database is \
        stable now.";

    #[test]
    fn a_fixed_text_gives_a_fixed_analysis() {
        let a = analyze("Outage", TEXT);
        assert_eq!(
            a["summary"],
            "The database outage was resolved quickly. Payments failed for ten minutes and \
             customers were not happy!"
        );
        assert_eq!(
            a["keywords"],
            json!(["database", "outage", "resolved", "quickly", "payments"])
        );
        // resolved, stable (+2); outage, failed, "not happy" (-3): (2 - 3) / 5
        assert_eq!(a["sentiment"], json!({"label": "neutral", "score": -0.2}));
        assert_eq!(
            a["entities"],
            json!({
                "urls": ["https://status.example.com/incidents/42"],
                "emails": ["ops@example.com"],
                "mentions": ["@alice", "@bob_2"],
            })
        );
        assert_eq!(a["word_count"], 34);
        assert_eq!(a["analyzer"], "builtin");
        assert_eq!(analyze("Outage", TEXT), a, "deterministic");
    }

    #[test]
    fn labels_follow_the_score() {
        assert_eq!(
            analyze("t", "Great success, everything fixed.")["sentiment"]["label"],
            "positive"
        );
        assert_eq!(
            analyze("t", "Crash after crash, broken again.")["sentiment"]["label"],
            "negative"
        );
        assert_eq!(
            analyze("t", "We met on Tuesday.")["sentiment"],
            json!({"label": "neutral", "score": 0.0})
        );
        assert_eq!(
            analyze("t", "It was not bad.")["sentiment"]["label"],
            "positive"
        );
    }

    #[test]
    fn summary_falls_back_to_the_title_and_is_bounded() {
        assert_eq!(analyze("Just a title", "  ")["summary"], "Just a title");
        let long = "word ".repeat(100);
        let s = analyze("t", &long)["summary"].as_str().unwrap().to_owned();
        assert!(s.chars().count() <= SUMMARY_MAX, "{s}");
        assert!(s.ends_with('…'));
        assert_eq!(analyze("t", "")["word_count"], 0);
    }
}
