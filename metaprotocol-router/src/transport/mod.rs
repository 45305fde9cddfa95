//! The transport seam: the byte streams both sides of the proxy read and write.
//!
//! Connection tasks are generic over [`Transport`], so the request path never knows whether
//! it runs over plain TCP or TLS. A listener's [`Acceptor`] turns an accepted socket into a
//! stream plus what the handshake revealed ([`Accepted`]); a cluster's [`Connector`] opens the
//! stream to an endpoint. TLS ([`tls`]) is one more variant of each.

pub(crate) mod buffers;
pub(crate) mod outbox;
mod tls;

pub use tls::{GrpcTlsConnector, TlsConnector};
pub(crate) use tls::{MAX_FILE_BYTES as TLS_FILE_MAX_BYTES, TlsAcceptor};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream a connection task can serve.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// What a listener learns about a connection while accepting it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Accepted {
    /// The server name the client asked for (TLS SNI).
    pub sni: Option<Arc<str>>,
    /// The client's verified certificate identity.
    pub peer_identity: Option<Arc<PeerIdentity>>,
}

/// How a listener turns accepted sockets into streams.
#[derive(Clone, Debug, Default)]
pub(crate) enum Acceptor {
    /// Plain TCP: the socket is the stream.
    #[default]
    Plain,
    /// TLS terminated by the proxy.
    Tls(Arc<TlsAcceptor>),
}

impl Acceptor {
    /// Prepares an accepted socket for serving. Small RPC frames: latency matters more than
    /// packet count, so Nagle is off.
    pub fn plain(stream: &TcpStream) -> Accepted {
        let _ = stream.set_nodelay(true);
        Accepted::default()
    }
}

/// How a cluster opens streams to its endpoints.
#[derive(Clone, Debug, Default)]
pub(crate) enum Connector {
    /// Plain TCP.
    #[default]
    Plain,
    /// TLS originated by the proxy.
    Tls(Arc<TlsConnector>),
}

impl Connector {
    /// True if both open connections the same way (pools made with one serve the other).
    pub fn same(&self, other: &Connector) -> bool {
        match (self, other) {
            (Self::Plain, Self::Plain) => true,
            (Self::Tls(a), Self::Tls(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// True if a stream to `address` opens within `timeout` the way this connector opens them
    /// (for TLS, the handshake included: an endpoint whose certificate fails verification is
    /// not reachable).
    pub async fn reachable(&self, address: SocketAddr, timeout: Duration) -> bool {
        match self {
            Self::Plain => Self::connect_plain(address, timeout).await.is_ok(),
            Self::Tls(tls) => tls.connect(address, timeout).await.is_ok(),
        }
    }

    /// Opens a plain TCP stream to `address` within `timeout`.
    pub async fn connect_plain(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {timeout:?}"),
                )
            })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
