//! Who may change the running config: with `admin.token_file` set, write endpoints require
//! `Authorization: Bearer <token>` (the file is read on each write, so a rotated token takes
//! effect at once); without it they are open to anyone who can connect, which is only sane on
//! loopback, so the proxy says so loudly otherwise.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::config::Config;

/// Warns when the admin API listens beyond loopback with no token to guard its write endpoints.
pub(super) fn warn_if_exposed(config: &Config) {
    if let Some(admin) = &config.admin
        && !admin.address.ip().is_loopback()
        && admin.token_file.is_none()
    {
        tracing::warn!(
            address = %admin.address,
            "the admin API listens beyond loopback and admin.token_file is not set: anyone who can connect may change the running config"
        );
    }
}

/// `Ok` when the request may write: no token is configured, or it carries the right one.
pub(super) async fn authorize(config: &Config, headers: &HeaderMap) -> Result<(), Response> {
    let Some(path) = config.admin.as_ref().and_then(|a| a.token_file.clone()) else {
        return Ok(());
    };
    let token = match tokio::fs::read_to_string(&path).await {
        Ok(token) => token.trim().to_owned(),
        Err(err) => {
            tracing::error!(file = %path.display(), error = %err, "cannot read the admin token file; refusing writes");
            return Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token file cannot be read",
            ));
        }
    };
    match bearer_token(headers) {
        Some(offered) if !token.is_empty() && same(offered.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(refusal(StatusCode::FORBIDDEN, "wrong bearer token")),
        None => Err(refusal(
            StatusCode::UNAUTHORIZED,
            "this endpoint requires Authorization: Bearer <token>",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme's name is matched
/// ignoring case, as HTTP's authentication schemes are (RFC 9110, 11.1): clients and libraries
/// that send `bearer` are not refused.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn refusal(status: StatusCode, message: &str) -> Response {
    let mut response = super::error_answer(status, message);
    if status == StatusCode::UNAUTHORIZED
        && let Ok(value) = "Bearer".parse()
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Compares in time that does not depend on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_ignoring_case() -> Result<(), header::InvalidHeaderValue> {
        let token_of = |value: &str| -> Result<Option<String>, header::InvalidHeaderValue> {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse()?);
            Ok(bearer_token(&headers).map(str::to_owned))
        };
        for value in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "] {
            assert_eq!(token_of(value)?.as_deref(), Some("s3cret"), "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "Bearer"] {
            assert_eq!(token_of(value)?, None, "{value}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
        Ok(())
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret!"));
    }
}
