//! What a webhook endpoint's `url` may be, checked when it is saved (422 naming `url`). The
//! target guard checks the address again at every delivery, since a name can resolve
//! differently later.

use super::target_guard::Guard;

/// Longest URL accepted (the table's CHECK agrees).
pub const MAX_URL_BYTES: usize = 2048;

/// Parses and checks `raw`: absolute `http` or `https`, a host, no user name or password (they
/// would be sent to the receiver, and would show in logs), no fragment, at most
/// [`MAX_URL_BYTES`] as given and once normalised (percent-encoding can lengthen it), and not a
/// literal address the guard refuses. The normalised URL (`HTTPS://Example.COM` becomes
/// `https://example.com/`) is what is stored and shown, so the tenant sees where deliveries go.
pub fn parse(raw: &str, guard: Guard) -> Result<url::Url, String> {
    let too_long = || format!("must be at most {MAX_URL_BYTES} bytes");
    if raw.len() > MAX_URL_BYTES {
        return Err(too_long());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(too_long());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment".into());
    }
    guard.check_literal(&url).map_err(|e| e.to_string())?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Guard = Guard {
        allow_private: false,
    };
    const LAX: Guard = Guard {
        allow_private: true,
    };

    #[test]
    fn accepts_http_and_https() {
        assert!(parse("https://hooks.example.com/in?x=1", STRICT).is_ok());
        assert!(parse("http://hooks.example.com:8080/", STRICT).is_ok());
        assert!(parse("http://127.0.0.1:9/", LAX).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "example.com/x",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "https://example.com/#frag",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(parse(bad, STRICT).is_err(), "{bad} must be refused");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(parse(&long, STRICT).is_err());
    }

    #[test]
    fn the_url_is_normalised_and_bounded_once_normalised() {
        let url = parse("HTTPS://Hooks.Example.COM", STRICT).expect("valid");
        assert_eq!(url.as_str(), "https://hooks.example.com/");
        // A backslash is a slash in an http URL; other characters are percent-encoded.
        let url = parse("https://$\\\u{3024D}B", STRICT).expect("valid");
        assert_eq!(url.as_str(), "https://$/%F0%B0%89%8DB");
        // 600 three-byte characters are 1,800 bytes as given but 5,400 once encoded.
        let wide = format!("https://example.com/{}", "\u{20AC}".repeat(600));
        assert!(wide.len() <= MAX_URL_BYTES);
        assert!(
            parse(&wide, STRICT).is_err(),
            "encoded, it is over the limit"
        );
    }
}
