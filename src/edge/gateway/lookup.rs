//! Looking up a presented credential that is not cached (an API key, a dashboard session),
//! paid for with a token of the client address's failed-authentication bucket (CONTRACT §4).
//! The token is given back when the credential is found, so only failures drain the bucket,
//! and an address that has failed too often gets 429 before any query is made.

use std::future::Future;

use actix_web::HttpRequest;

use super::client_addr;
use super::error::ApiError;
use super::rate_limit::Decision;
use super::state::AppState;

/// Runs `lookup` (not started until the address has paid) and returns what it found.
pub async fn paid<T>(
    req: &HttpRequest,
    state: &AppState,
    lookup: impl Future<Output = Result<Option<T>, ApiError>>,
) -> Result<Option<T>, ApiError> {
    let client = client_addr::of_request(req, &state.config.server.trusted_proxies);
    let address = client_addr::bucket_name(client);
    if let Decision::Deny {
        retry_after_secs,
        by,
    } = state.limiter.check_lookup(&address).await
    {
        return Err(ApiError::rate_limited(by, retry_after_secs));
    }
    let found = lookup.await?;
    if found.is_some() {
        state.limiter.refund_lookup(&address).await;
    }
    Ok(found)
}
