//! Dashboard sign-in sessions (CONTRACT §11): the cookie, the CSRF rules and the lookup.
//!
//! The cookie `vsm_session` holds 32 random bytes (hex); the database keeps only their sha256
//! (`dashboard_sessions`, reached through SECURITY DEFINER functions). A session acts exactly as
//! the credential it was opened with: a tenant's session is that API key (same tenant door, same
//! per-key and per-tenant buckets, and it ends when the key is revoked), the operator's session
//! is the admin token (and ends when the token changes). Looked-up sessions are cached like
//! keys ([`credentials`](super::credentials)), so sign-out and revocation reach other
//! instances within the cache's TTL.
//!
//! CSRF: the cookie is `SameSite=Strict`, and every state-changing request made with it must
//! also carry the session's CSRF token in `X-CSRF-Token` and an `Origin` naming this host.

use actix_web::HttpRequest;
use actix_web::http::Method;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::credentials::{Principal, Session};
use super::error::ApiError;
use super::lookup;
use super::state::AppState;
use crate::repo::DashboardSessionRow;

/// The session cookie's name.
pub const COOKIE: &str = "vsm_session";
/// The request header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept per API key (and for the operator); older ones are closed at sign-in.
pub const SESSIONS_PER_KEY: i32 = 20;

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn sha256(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// The hash of the request's session cookie, if it has a well-formed one.
pub fn cookie_token_hash(req: &HttpRequest) -> Option<[u8; 32]> {
    let value = cookie_value(req)?;
    // A token is exactly 64 hex digits; anything else is not worth a lookup.
    (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha256(value))
}

/// The value of the request's `vsm_session` cookie (the first, if several are sent).
fn cookie_value(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get_all("cookie")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The request's live session, `None` without a session cookie. An unknown, expired or revoked
/// session is 401; looking up a cookie that is not cached first pays a token of the client
/// address's failed-authentication bucket (refunded when the session is live), so guessing
/// cookies costs the database as little as guessing keys.
pub async fn from_request(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<Session>, ApiError> {
    if cookie_value(req).is_none() {
        return Ok(None);
    }
    let Some(hash) = cookie_token_hash(req) else {
        return Err(signed_out());
    };
    let session = match state.sessions.get(&hash) {
        Some(session) => session,
        None => {
            let session = lookup::paid(req, state, async {
                let row = state.repo.resolve_dashboard_session(&hash).await?;
                Ok(row.and_then(|row| session_of(hash, row)))
            })
            .await?
            .ok_or_else(signed_out)?;
            state.sessions.put(hash, session.clone());
            session
        }
    };
    if session.expires_at <= chrono::Utc::now() {
        return Err(signed_out());
    }
    if session.principal == Principal::Operator && !admin_token_matches(state, &session) {
        return Err(signed_out());
    }
    Ok(Some(session))
}

fn session_of(token_hash: [u8; 32], row: DashboardSessionRow) -> Option<Session> {
    let principal = match (row.api_key_id, row.tenant_id, &row.admin_token_hash) {
        (Some(api_key_id), Some(tenant_id), None) => Principal::Tenant {
            tenant_id,
            api_key_id,
        },
        (None, None, Some(_)) => Principal::Operator,
        _ => return None,
    };
    Some(Session {
        principal,
        csrf_token: row.csrf_token,
        expires_at: row.expires_at,
        token_hash,
        admin_token_hash: row.admin_token_hash,
    })
}

/// An operator session lasts only while the admin token it was opened with is the configured one.
fn admin_token_matches(state: &AppState, session: &Session) -> bool {
    let (Some(expected), Some(stored)) = (
        state.config.server.admin_token.as_ref(),
        session.admin_token_hash.as_deref(),
    ) else {
        return false;
    };
    bool::from(sha256(expected.expose()).as_slice().ct_eq(stored))
}

fn signed_out() -> ApiError {
    ApiError::Unauthorized("not signed in (the session ended or is unknown)".into())
}

/// Refuses a state-changing request made with the session cookie unless it carries the
/// session's CSRF token and comes from this site's own page (`Origin` naming this host).
pub fn check_csrf(req: &HttpRequest, session: &Session) -> Result<(), ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    check_origin(req)?;
    let sent = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if bool::from(sent.as_bytes().ct_eq(session.csrf_token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "missing or wrong X-CSRF-Token for this session".into(),
        ))
    }
}

/// `Origin` must be present and name the host the request was sent to (a browser always sends
/// it on a POST; a page of another site cannot forge it).
pub fn check_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let refused = || ApiError::Forbidden("cross-origin request refused".into());
    let origin = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(refused)?;
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Whether the browser reached us over TLS: the server speaks plain HTTP, so only a trusted
/// proxy (`server.trusted_proxies`) saying `X-Forwarded-Proto: https` makes it so.
pub fn is_secure(req: &HttpRequest, state: &AppState) -> bool {
    let peer_trusted = req.peer_addr().is_some_and(|a| {
        let ip = a.ip().to_canonical();
        state
            .config
            .server
            .trusted_proxies
            .iter()
            .any(|net| net.contains(ip))
    });
    peer_trusted
        && req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that signs the browser in for `max_age_secs`.
pub fn set_cookie(token: &str, max_age_secs: u32, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_has_the_contract_flags() {
        let c = set_cookie("ab", 60, false);
        assert_eq!(
            c,
            "vsm_session=ab; HttpOnly; SameSite=Strict; Path=/; Max-Age=60"
        );
        assert!(set_cookie("ab", 60, true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
