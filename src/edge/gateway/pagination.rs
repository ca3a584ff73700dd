//! Keyset pagination for every list (CONTRACT §4): `?limit=` (default 50, at most 500) and an
//! opaque `?cursor=` naming the last row of the previous page; responses are
//! `{"items":[...],"next_cursor":"..."|null}`. A page is read with `limit + 1` rows to know
//! whether another follows, so walking the cursors visits every row exactly once even while
//! rows are being inserted (new rows sort after the cursor or before the first page).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request: how many rows, and the key of the row to continue after.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: i64,
    pub after: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let after = match &self.cursor {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => {
                Some(decode(c).ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))?)
            }
        };
        Ok(Page { limit, after })
    }
}

impl Page {
    /// The cursor's key as the type the list is ordered by (a UUID, a version…).
    pub fn after_parsed<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        self.after
            .as_deref()
            .map(|key| {
                key.parse::<T>()
                    .map_err(|_| ApiError::BadRequest("invalid cursor".into()))
            })
            .transpose()
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    /// Builds the page from up to `limit + 1` rows, `key` naming a row for the cursor.
    pub fn from_rows(mut rows: Vec<T>, page: &Page, key: impl Fn(&T) -> String) -> List<T> {
        let more = rows.len() as i64 > page.limit;
        rows.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
        let next_cursor = if more {
            rows.last().map(|r| encode(&key(r)))
        } else {
            None
        };
        List {
            items: rows,
            next_cursor,
        }
    }
}

fn encode(key: &str) -> String {
    hex::encode(format!("v1:{key}"))
}

/// The key of a cursor this server made. A key with a NUL character was not (no stored key
/// holds one, and the database would refuse it as a parameter).
fn decode(cursor: &str) -> Option<String> {
    let bytes = hex::decode(cursor).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("v1:")
        .filter(|key| !key.contains('\0'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_limits_are_checked() {
        let page = Page {
            limit: 2,
            after: None,
        };
        let list = List::from_rows(vec![1, 2, 3], &page, |n| n.to_string());
        assert_eq!(list.items, vec![1, 2]);
        let cursor = list.next_cursor.unwrap();
        let q = PageQuery {
            limit: Some(2),
            cursor: Some(cursor),
        };
        assert_eq!(q.page().unwrap().after.as_deref(), Some("2"));
        assert!(
            List::from_rows(vec![1, 2], &page, |n| n.to_string())
                .next_cursor
                .is_none()
        );
        for bad in [0, 501, -1] {
            assert!(
                PageQuery {
                    limit: Some(bad),
                    cursor: None
                }
                .page()
                .is_err()
            );
        }
        // Not hex; and a well-formed cursor whose key holds a NUL (no row has such a key).
        for bad in ["zz".to_owned(), hex::encode("v1:a\0b")] {
            assert!(
                PageQuery {
                    limit: None,
                    cursor: Some(bad)
                }
                .page()
                .is_err()
            );
        }
    }
}
