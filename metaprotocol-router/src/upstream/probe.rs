//! A connection of its own to one endpoint, for a health checker's probe requests: probes never
//! share (or disturb) the connections traffic uses, and never back off, since a failed connect
//! is the probe's answer. It opens on the first probe and again on the first probe after it
//! closed, or after a probe over it timed out: a connection that stopped answering (a stuck
//! server thread, or one a firewall or NAT forgot, which the kernel may keep for many minutes)
//! would fail every check sent over it, however well the endpoint serves new connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metaprotocol_core::{CodecFactory, Message, Mutation, ResponseStatus, WireVariant};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::backoff::ConnectBackoff;
use super::connection::{self, ConnectParams, ConnectionHandle};
use super::outbound::{Outbound, ReplyTo};
use super::{PoolSettings, UpstreamError};
use crate::stats::{ClusterStats, EndpointStats, Metrics};
use crate::transport::Connector;

/// A probing connection to one endpoint.
pub(crate) struct ProbeConnection {
    address: SocketAddr,
    codec: Arc<dyn CodecFactory>,
    variant: WireVariant,
    /// The cluster's: probes open connections the way traffic does (TLS included).
    connector: Connector,
    connect_timeout: Duration,
    /// Its own series, apart from the cluster's: probes are not traffic.
    stats: ClusterStats,
    mutation: Arc<Mutation>,
    handle: Mutex<Option<ConnectionHandle>>,
}

impl ProbeConnection {
    /// A connection to `address`, opened by `connector`, for sending `probe`, built by
    /// `codec`.
    pub fn new(
        address: SocketAddr,
        codec: Arc<dyn CodecFactory>,
        probe: &Message,
        connector: Connector,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            address,
            variant: codec.upstream_variant(probe),
            codec,
            connector,
            connect_timeout,
            stats: ClusterStats::new(&Metrics::new().root()),
            mutation: Arc::new(Mutation::new()),
            handle: Mutex::new(None),
        }
    }

    /// The status of the answer to `probe` within `timeout`; `None` when there is none, or it
    /// refuses the proxy's credentials: an endpoint that refuses them serves none of the
    /// proxy's calls.
    pub async fn check(&self, probe: &Arc<Message>, timeout: Duration) -> Option<ResponseStatus> {
        self.call(probe, timeout)
            .await
            .ok()
            .filter(|answer| !self.codec.credentials_refused(answer))
            .map(|answer| answer.status)
    }

    /// Sends `probe` and waits up to `timeout` for the answer the codec decodes for it.
    async fn call(
        &self,
        probe: &Arc<Message>,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let (sender, answer) = oneshot::channel();
        let outbound = Outbound {
            message: probe.clone(),
            mutation: self.mutation.clone(),
            deadline: crate::router::deadline_after(Instant::now(), timeout),
            tells_deadline: false,
            reply: ReplyTo::oneshot(sender),
            placed: false,
        };
        self.connection()
            .send(outbound)
            .map_err(|(mut refused, error)| {
                refused.reply.disarm();
                error
            })?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result.map(|response| *response),
            Ok(Err(_)) => Err(UpstreamError::Reset { sent: true }),
            Err(_) => {
                // Its task ends once the abandoned probe is swept: the socket closes.
                *self.lock() = None;
                Err(UpstreamError::TimedOut)
            }
        }
    }

    /// The connection's slot; a lock poisoned by a panic still holds a usable handle.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConnectionHandle>> {
        match self.handle.lock() {
            Ok(handle) => handle,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The open connection, or a new one.
    fn connection(&self) -> ConnectionHandle {
        let mut handle = self.lock();
        if let Some(open) = handle.as_ref().filter(|h| h.is_open()) {
            return open.clone();
        }
        let prepared = connection::prepare(ConnectParams {
            address: self.address,
            codec: self.codec.clone(),
            variant: self.variant,
            settings: PoolSettings {
                connect_timeout: self.connect_timeout,
                connections: 1,
                idle_timeout: Duration::MAX,
                frame_timeout: crate::config::DEFAULT_FRAME_TIMEOUT,
                max_requests_per_connection: None,
            },
            connector: self.connector.clone(),
            backoff: Arc::new(ConnectBackoff::new()),
            // A probe's connection is never replaced.
            replacements: Arc::new(ConnectBackoff::new()),
            // Nor does it back off after refused credentials: the refusal is the probe's answer.
            refusals: Arc::new(ConnectBackoff::new()),
            stats: self.stats.clone(),
            endpoint: EndpointStats::default(),
            breakers: None,
            connected: None,
            permit: None,
        });
        tokio::spawn(prepared.task);
        *handle = Some(prepared.handle.clone());
        prepared.handle
    }
}
