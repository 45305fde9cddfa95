//! Who may change the running config: with `admin.token_file` set, write endpoints require
//! `Authorization: Bearer <token>` (the file is read on each write, so a rotated token takes
//! effect at once); without it they are open to anyone who can connect, which is only sane on
//! loopback, so the proxy says so loudly otherwise.
//!
//! The token file is read as the proxy's other files are: only a regular file of at most
//! [`TOKEN_FILE_MAX_BYTES`] (a path naming a log or `/dev/zero` is refused unread, a FIFO
//! without waiting for a writer), on a thread of its own, within [`TOKEN_READ_TIMEOUT`]. One
//! read at a time: a read that does not end (a network file system that does not answer) holds
//! one thread, and the write requests behind it are answered `503` at their deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use tokio::sync::Semaphore;

use crate::config::Config;

/// The most bytes the admin token file may hold: a token is a line.
pub(crate) const TOKEN_FILE_MAX_BYTES: u64 = 4 << 10;

/// How long a write request waits for the token file to be read (its turn included): far
/// longer than reading a line takes from any file system that answers.
pub(crate) const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The one place for a read of the token file: a read that never ends holds it, so that it
/// holds no more than one thread.
#[derive(Clone)]
pub(super) struct TokenReads(Arc<Semaphore>);

impl Default for TokenReads {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(1)))
    }
}

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

/// The body of the `503` a write gets while the token file cannot be read.
const TOKEN_FILE_UNREADABLE: &str = "the admin token file cannot be read; the proxy's log says why";

/// `Ok` when the request may write: no token is configured, or it carries the right one.
pub(super) async fn authorize(
    config: &Config,
    reads: &TokenReads,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let Some(path) = config.admin.as_ref().and_then(|a| a.token_file.as_ref()) else {
        return Ok(());
    };
    let read = match read_token_file(path, reads).await {
        Ok(read) => read,
        Err(why) => {
            tracing::error!(file = %path.display(), error = %why, "cannot read the admin token file; refusing writes");
            // The reason stays in the log: the caller is not yet authenticated, and the
            // file's kind, size or OS error tell it about the proxy's host.
            return Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                TOKEN_FILE_UNREADABLE,
            ));
        }
    };
    let token = read.trim_ascii();
    match bearer_token(headers) {
        Some(offered) if !token.is_empty() && same(offered.as_bytes(), token) => Ok(()),
        Some(_) => Err(refusal(StatusCode::FORBIDDEN, "wrong bearer token")),
        None => Err(refusal(
            StatusCode::UNAUTHORIZED,
            "this endpoint requires Authorization: Bearer <token>",
        )),
    }
}

/// The token file's contents (see the module's doc), or why not.
async fn read_token_file(path: &Path, reads: &TokenReads) -> Result<Vec<u8>, String> {
    let deadline = tokio::time::Instant::now() + TOKEN_READ_TIMEOUT;
    let not_in_time = || {
        format!(
            "its read had not ended after {} s (a slow or unreachable file system?)",
            TOKEN_READ_TIMEOUT.as_secs()
        )
    };
    let place = tokio::time::timeout_at(deadline, reads.0.clone().acquire_owned())
        .await
        .map_err(|_| not_in_time())?
        .map_err(|err| err.to_string())?;
    let path = path.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        // Held until the read ends, however long after the request gave up that is.
        let _place = place;
        metaprotocol_core::read_regular_file(&path, TOKEN_FILE_MAX_BYTES)
    });
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(read)) => read,
        // The read panicked.
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(not_in_time()),
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
