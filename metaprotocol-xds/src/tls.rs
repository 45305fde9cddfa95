//! TLS to the management server (`dynamic.xds.tls`): the engine's own TLS connector, with the
//! settings and checks of a cluster's `tls` (server CA, optional client certificate for mutual
//! TLS, server name or SANs to verify, certificates re-read when they change on disk), plugged
//! into tonic as the connector of the ADS channel. The server name defaults to the host of
//! `dynamic.xds.address`, as a gRPC client's does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use metaprotocol_router::config::{ClusterTlsSpec, XdsSpec};
use metaprotocol_router::{ConfigError, MetricsScope, TlsConnector};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

/// Connects to the management server over TLS: a tonic connector (a service from the channel's
/// URI to a connection), cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ServerTls {
    connector: Arc<TlsConnector>,
    /// The server's `host:port`, resolved on every connection.
    address: String,
    connect_timeout: Duration,
}

impl ServerTls {
    /// The connector for `spec`'s server, or `None` for plaintext; its series (handshake errors,
    /// certificate reloads) live in `scope`. Errors name the field under `xds.tls`.
    pub fn new(spec: &XdsSpec, scope: &MetricsScope) -> Result<Option<Self>, ConfigError> {
        let Some(tls) = &spec.tls else {
            return Ok(None);
        };
        let tls = ClusterTlsSpec {
            server_name: Some(
                tls.server_name
                    .clone()
                    .unwrap_or_else(|| spec.address.host().to_owned()),
            ),
            ..tls.clone()
        };
        let connector = TlsConnector::grpc(&tls, &format!("xDS server {}", spec.address), scope)
            .map_err(|err| err.within("xds.tls"))?;
        Ok(Some(Self {
            connector: Arc::new(connector),
            address: spec.address.to_string(),
            connect_timeout: spec.connect_timeout,
        }))
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

impl tower_service::Service<Uri> for ServerTls {
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
