//! A client of one upstream address, over the engine's own multiplexed connections: for tests,
//! tools and embedders that call a service directly with messages built by a codec crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{CodecFactory, Message, Mutation};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{ClusterTlsSpec, ConfigError};
use crate::stats::{ClusterStats, Metrics};
use crate::transport::{Connector, TlsConnector};
use crate::upstream::{Outbound, PoolSettings, ReplyTo, UpstreamError, UpstreamPool};

/// How a [`Client`] connects.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// The time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Connections that calls are spread over.
    pub connections: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            connections: 1,
        }
    }
}

/// A client of one address speaking one protocol. Calls from any number of tasks share its
/// connections, each with its own request id; connections open on first use and reopen after
/// a failure.
#[derive(Debug)]
pub struct Client {
    pool: UpstreamPool,
}

impl Client {
    /// A client of `address` speaking `codec`'s protocol.
    pub fn new(address: SocketAddr, codec: Arc<dyn CodecFactory>, options: ClientOptions) -> Self {
        Self::with_connector(address, codec, options, Connector::Plain, &Metrics::new())
    }

    /// A client of `address` over TLS, set up as a cluster's `tls` (`ca_file` to verify the
    /// server, `cert_file` and `key_file` to present a client certificate ...). Fails if a
    /// file cannot be read.
    pub fn with_tls(
        address: SocketAddr,
        codec: Arc<dyn CodecFactory>,
        options: ClientOptions,
        tls: &ClusterTlsSpec,
    ) -> Result<Self, ConfigError> {
        tls.validate()?;
        let metrics = Metrics::new();
        let connector = TlsConnector::new(tls, &address.to_string(), &metrics.root())?;
        Ok(Self::with_connector(
            address,
            codec,
            options,
            Connector::Tls(Arc::new(connector)),
            &metrics,
        ))
    }

    fn with_connector(
        address: SocketAddr,
        codec: Arc<dyn CodecFactory>,
        options: ClientOptions,
        connector: Connector,
        metrics: &Metrics,
    ) -> Self {
        let stats = ClusterStats::new(&metrics.root());
        let settings = PoolSettings {
            connect_timeout: options.connect_timeout,
            connections: options.connections.max(1),
            idle_timeout: crate::config::DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            frame_timeout: crate::config::DEFAULT_FRAME_TIMEOUT,
            max_requests_per_connection: None,
        };
        Self {
            pool: UpstreamPool::new(address, codec, settings, connector, stats, None),
        }
    }

    /// Sends `request` (a two-way request decoded or built with the protocol's codec) and waits
    /// up to `timeout` for its response.
    pub async fn call(
        &self,
        request: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let (sender, answer) = oneshot::channel();
        let deadline = crate::router::deadline_after(Instant::now(), timeout);
        self.send(request, deadline, ReplyTo::oneshot(sender))?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result.map(|response| *response),
            // The connection forgets requests past their deadline, so the channel may close
            // just before the timer fires: a timeout, not a lost connection.
            Ok(Err(_)) if Instant::now() >= deadline => Err(UpstreamError::TimedOut),
            Ok(Err(_)) => Err(UpstreamError::Reset { sent: true }),
            Err(_) => Err(UpstreamError::TimedOut),
        }
    }

    /// Sends a one-way `request`; done once queued on a connection.
    pub fn send_oneway(&self, request: Message) -> Result<(), UpstreamError> {
        let deadline = crate::router::deadline_after(Instant::now(), Duration::from_secs(30));
        self.send(request, deadline, ReplyTo::none())
    }

    /// Connections open to the server.
    pub fn open_connections(&self) -> usize {
        self.pool.open_connections()
    }

    fn send(
        &self,
        request: Message,
        deadline: Instant,
        reply: ReplyTo,
    ) -> Result<(), UpstreamError> {
        let variant = self.pool.codec().upstream_variant(&request);
        let outbound = Outbound {
            message: Arc::new(request),
            mutation: Arc::new(Mutation::new()),
            deadline,
            tells_deadline: false,
            reply,
            placed: false,
        };
        self.pool.send(variant, outbound).map_err(|mut rejected| {
            rejected.outbound.reply.disarm();
            rejected.error
        })
    }
}
