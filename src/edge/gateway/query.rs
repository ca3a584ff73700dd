//! Free text read from a query string (`?queue=…`, `?tag=…`; a cursor's key is checked for the
//! same when it is decoded, in `pagination`).
//!
//! PostgreSQL text cannot hold the NUL character, so a value with one can match nothing, and
//! sent as a parameter it fails in the database instead. It is refused while the query string
//! is read: a 400 like any other malformed query, before anything is looked up.

use std::ops::Deref;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryText(String);

impl<'de> Deserialize<'de> for QueryText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.contains('\0') {
            return Err(serde::de::Error::custom(
                "text must not contain the NUL character",
            ));
        }
        Ok(QueryText(text))
    }
}

impl Deref for QueryText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Filter {
        queue: Option<QueryText>,
    }

    #[test]
    fn a_nul_character_is_refused_and_other_text_kept() {
        let read = |q: &str| actix_web::web::Query::<Filter>::from_query(q).map(|q| q.into_inner());
        assert_eq!(
            read("queue=mail%20out").unwrap().queue.as_deref(),
            Some("mail out")
        );
        assert_eq!(read("").unwrap().queue, None);
        let err = read("queue=a%00b").unwrap_err().to_string();
        assert!(err.contains("NUL"), "{err}");
    }
}
