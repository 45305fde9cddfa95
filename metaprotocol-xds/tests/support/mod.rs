//! Test support: a management server and resources shaped as control planes send them.

pub mod fixtures;
pub mod management_server;

/// The result of a test.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `GET /config_dump` of the admin API at `admin`, as JSON.
pub async fn config_dump(admin: std::net::SocketAddr) -> TestResult<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(admin).await?;
    socket
        .write_all(b"GET /config_dump HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_string(&mut answer),
    )
    .await??;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("no body")?;
    Ok(serde_json::from_str(body)?)
}
