//! The engine's TLS as the connector of a gRPC channel (tonic's): the xDS client's channel to
//! its management server and the tracing exporter's to its collector verify their server as a
//! cluster's `tls` verifies an endpoint (its CA, an optional client certificate for mutual TLS,
//! the server name or SANs, certificates re-read when they change on disk).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::TlsConnector;

/// Connects a gRPC channel to one server over TLS: a service from the channel's URI (not
/// read: the server is `address`) to a connection, cheap to clone. Give the channel an
/// `http://` URI: the TLS is done here, and tonic refuses `https` without its own.
#[derive(Debug, Clone)]
pub struct GrpcTlsConnector {
    connector: Arc<TlsConnector>,
    /// The server's `host:port`, resolved at every connection.
    address: String,
    connect_timeout: Duration,
}

impl GrpcTlsConnector {
    /// Connects to `address` (`host:port`) through `connector` (made with
    /// [`TlsConnector::grpc`]), each connection bounded by `connect_timeout`.
    pub fn new(connector: TlsConnector, address: String, connect_timeout: Duration) -> Self {
        Self {
            connector: Arc::new(connector),
            address,
            connect_timeout,
        }
    }

    /// Resolves the server's address and connects to the first address that completes a TCP
    /// connection and the handshake.
    async fn connect(self) -> io::Result<TlsStream<TcpStream>> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} resolves to no address", self.address),
        );
        for address in tokio::net::lookup_host(&self.address).await? {
            match self.connector.connect(address, self.connect_timeout).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = err,
            }
        }
        Err(last)
    }
}

impl tower_service::Service<Uri> for GrpcTlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}
