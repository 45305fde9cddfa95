//! The admin API as a test talks to it: one HTTP/1.1 request per connection over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestResult;

/// Sends `method path` with `body` and returns the status and the answer's body.
pub async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> TestResult<(u16, String)> {
    http_with(address, method, path, "", body).await
}

/// [`http`] with extra header lines (each ending in `\r\n`).
pub async fn http_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> TestResult<(u16, String)> {
    let (status, _, body) = exchange(address, method, path, headers, body).await?;
    Ok((status, body))
}

/// [`http_with`]'s answer whole: its status, head (status line and headers) and body.
pub async fn exchange(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> TestResult<(u16, String, String)> {
    let mut socket = TcpStream::connect(address).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_string(&mut answer)).await??;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}
