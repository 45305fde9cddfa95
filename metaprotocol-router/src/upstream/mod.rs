//! Upstream connection pools: per endpoint, connections shared by every client.
//!
//! In `PoolMode::Multiplex` (the default) each endpoint keeps `connections_per_endpoint` (one
//! unless configured) connections per wire variant (and per worker thread, on a proxy with
//! [`Workers`](crate::server::Workers)), and requests from all downstream connections are
//! spread over them, each with a fresh upstream request id. They are spread a batch at a time: requests routed while a connection's task has
//! not yet taken the last ones join them, so that they leave in one write. In
//! `PoolMode::Exclusive` a connection carries one request at a time.
//! Sending never waits: a request is queued on a connection task (which connects first if it has
//! to) and its answer comes back through its [`ReplyTo`]. After connect failures, or after a
//! connection that the upstream closed right after refusing the proxy's credentials (a brpc
//! server's `ERPCAUTH`, which a new connection would only meet again; before brpc 1.11, a
//! close before any answer), the endpoint
//! backs off, and requests for it fail at once instead of each trying to connect, unless another
//! of its connections is open: they share that one meanwhile, and the request that finds the
//! backoff over starts a new connect and goes on the open connection.
//!
//! A connection that carried nothing for the cluster's idle timeout closes; one that reached
//! `max_requests_per_connection`, or whose upstream said it is going away, is replaced: a new
//! connection opens while the old one keeps serving, and takes over once it is up. With a
//! `max_connections` circuit breaker, a slot that would open a connection past the limit shares
//! another open connection of the endpoint instead, or the request is refused (overflow).
//! Health checks probe over a [`ProbeConnection`] of their own.

mod backoff;
mod by_id;
mod connection;
mod error;
mod outbound;
mod probe;
mod spare;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};
use metaprotocol_core::{CodecFactory, WireVariant};

use self::backoff::ConnectBackoff;
use self::connection::ConnectParams;
pub(crate) use self::connection::{ConnectionHandle, LocalAddress};
pub use self::error::UpstreamError;
pub(crate) use self::outbound::{
    AttemptResult, Discard, Inbox, Outbound, ReplyTo, RequestKey, UpstreamEvent,
};
pub(crate) use self::probe::ProbeConnection;
pub(crate) use self::spare::recycle;
use crate::cluster::{CircuitBreakers, ConnectionPermit};
use crate::server::workers;
use crate::stats::{ClusterStats, EndpointStats};
use crate::transport::Connector;

/// Requests waiting for one connection's task past which new requests go to the next connection
/// instead of joining them (see [`UpstreamPool::send`]'s choice of connection).
const BATCH_LIMIT: usize = 128;

/// How an endpoint's pool connects, how many connections it keeps and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolSettings {
    /// The time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Connections per wire variant.
    pub connections: usize,
    /// A connection with nothing in flight for this long closes.
    pub idle_timeout: Duration,
    /// A connection whose response frame takes longer than this to arrive closes.
    pub frame_timeout: Duration,
    /// A connection that carried this many requests is replaced.
    pub max_requests_per_connection: Option<u32>,
}

/// The connection slots of one wire variant, for one worker thread.
struct Partition {
    variant: WireVariant,
    /// The worker whose client connections use these slots (see [`crate::server::workers`]),
    /// so that an upstream connection's task runs on the thread of the clients it serves.
    worker: Option<usize>,
    slots: Box<[ArcSwapOption<ConnectionHandle>]>,
    next: AtomicUsize,
}

impl Partition {
    /// One of its open connections, if it has one.
    fn open_connection(&self) -> Option<Arc<ConnectionHandle>> {
        self.slots
            .iter()
            .find_map(|s| s.load_full().filter(|h| h.is_open()))
    }
}

/// A pool's partitions: one per wire variant seen (rarely more than one) and worker thread
/// that sends, each added when first needed and kept for the pool's life. A list whose links
/// are each set once, so that a request finds its partition without a lock, and without an
/// `ArcSwap` load (a debt slot claimed and given back, two locked instructions): a few plain
/// loads.
#[derive(Default)]
struct Partitions {
    first: OnceLock<Box<PartitionLink>>,
}

/// A partition of the list, and the link to the next, set when one is added after it.
struct PartitionLink {
    partition: Arc<Partition>,
    next: OnceLock<Box<PartitionLink>>,
}

impl Partitions {
    /// Its partitions, in the order they were added.
    fn iter(&self) -> impl Iterator<Item = &Arc<Partition>> {
        std::iter::successors(self.first.get(), |link| link.next.get()).map(|link| &link.partition)
    }

    /// The partition of `worker`'s connections speaking `variant`, added (made by `make`) at
    /// the end of the list if there is none: a link another thread set first is walked past.
    fn get_or_add(
        &self,
        variant: WireVariant,
        worker: Option<usize>,
        make: impl Fn() -> Arc<Partition>,
    ) -> &Arc<Partition> {
        let mut next = &self.first;
        loop {
            let link = next.get_or_init(|| {
                Box::new(PartitionLink {
                    partition: make(),
                    next: OnceLock::new(),
                })
            });
            if link.partition.variant == variant && link.partition.worker == worker {
                return &link.partition;
            }
            next = &link.next;
        }
    }
}

/// A request the pool could not queue, handed back with the reason (it was not sent).
pub(crate) struct Rejected {
    pub outbound: Outbound,
    pub error: UpstreamError,
}

/// The connections to one endpoint.
pub(crate) struct UpstreamPool {
    address: SocketAddr,
    codec: Arc<dyn CodecFactory>,
    settings: PoolSettings,
    connector: Connector,
    stats: ClusterStats,
    endpoint: EndpointStats,
    /// The cluster's breakers (`max_connections` applies here).
    breakers: Option<Arc<CircuitBreakers>>,
    backoff: Arc<ConnectBackoff>,
    /// Backs off replacing connections whose upstream goes away before answering anything:
    /// one that says so on every connection would otherwise get a new connection per call.
    replacements: Arc<ConnectBackoff>,
    /// Backs off opening connections after the upstream closed one right after refusing the
    /// proxy's credentials (bRPC's `ERPCAUTH`): it would refuse every new one, each a connect
    /// and a refusal per call. Reset by an answer that is no refusal.
    refusals: Arc<ConnectBackoff>,
    /// The reason given the requests refused while the endpoint holds off, made once a pause
    /// and shared by every request refused in it: a dead endpoint refuses every request sent
    /// to it, and a reason made for each cost each an allocation.
    holding_off_reason: ArcSwapOption<HoldOffReason>,
    partitions: Partitions,
}

/// Why an endpoint opens no connection for now: what its refused requests are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldOff {
    /// After this many connect failures in a row.
    ConnectFailures(u32),
    /// After its server refused the proxy's credentials (or closed a new connection
    /// unanswered) this many times in a row.
    CredentialRefusals(u32),
}

impl std::fmt::Display for HoldOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectFailures(failures) => {
                write!(f, "backing off after {failures} failed connect attempts")
            }
            Self::CredentialRefusals(refusals) => write!(
                f,
                "backing off after the server refused the proxy's credentials (or closed a new connection unanswered) {refusals} times in a row"
            ),
        }
    }
}

/// The reason made for the requests refused while an endpoint holds off for `cause`.
#[derive(Debug)]
struct HoldOffReason {
    cause: HoldOff,
    reason: Arc<str>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("address", &self.address)
            .field("settings", &self.settings)
            .finish()
    }
}

impl UpstreamPool {
    /// An empty pool; connections open on first use, within `breakers` when given.
    pub fn new(
        address: SocketAddr,
        codec: Arc<dyn CodecFactory>,
        settings: PoolSettings,
        connector: Connector,
        stats: ClusterStats,
        breakers: Option<Arc<CircuitBreakers>>,
    ) -> Self {
        Self {
            address,
            codec,
            settings,
            connector,
            stats,
            endpoint: EndpointStats::default(),
            breakers,
            backoff: Arc::new(ConnectBackoff::new()),
            replacements: Arc::new(ConnectBackoff::new()),
            refusals: Arc::new(ConnectBackoff::new()),
            holding_off_reason: ArcSwapOption::empty(),
            partitions: Partitions::default(),
        }
    }

    /// The pool, counting its connections in the endpoint's series too.
    /// Its cluster's series.
    pub fn cluster_stats(&self) -> &ClusterStats {
        &self.stats
    }

    pub fn with_endpoint_stats(mut self, endpoint: EndpointStats) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The endpoint's series (unregistered unless set by
    /// [`UpstreamPool::with_endpoint_stats`]).
    pub fn endpoint_stats(&self) -> &EndpointStats {
        &self.endpoint
    }

    /// The codec its connections speak.
    pub fn codec(&self) -> &Arc<dyn CodecFactory> {
        &self.codec
    }

    /// Its settings.
    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// How its connections are opened.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Queues `outbound` on a connection speaking `variant`, opening one if needed. Never waits;
    /// a refusal (the endpoint is backing off after connect failures, the connection is
    /// overloaded) hands the request back, its place under the cluster's
    /// `max_pending_requests` given back (no queue will).
    // The refused request comes back whole, without an allocation: refusals are rare, and
    // boxing would cost every one of them a heap allocation.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, variant: WireVariant, outbound: Outbound) -> Result<(), Rejected> {
        self.send_telling(variant, outbound, |_| {})
    }

    /// [`UpstreamPool::send`], telling `queued_on` the connection that took the request.
    #[allow(clippy::result_large_err)]
    pub fn send_telling(
        &self,
        variant: WireVariant,
        outbound: Outbound,
        queued_on: impl FnOnce(&ConnectionHandle),
    ) -> Result<(), Rejected> {
        self.queue(variant, outbound, queued_on)
            .map_err(|(mut outbound, error)| {
                if std::mem::take(&mut outbound.placed)
                    && let Some(breakers) = &self.breakers
                {
                    breakers.give_back_pending();
                }
                Rejected { outbound, error }
            })
    }

    /// [`UpstreamPool::send_telling`], a refusal handed back as it is.
    #[allow(clippy::result_large_err)]
    fn queue(
        &self,
        variant: WireVariant,
        outbound: Outbound,
        queued_on: impl FnOnce(&ConnectionHandle),
    ) -> Result<(), (Outbound, UpstreamError)> {
        let worker = workers::current();
        // The worker's partition is borrowed, not shared: a request writes no reference count
        // of it. It is made when the worker first sends here.
        let partition = self
            .partitions
            .get_or_add(variant, worker, || self.new_partition(variant, worker));
        let (index, live) = self.slot(partition);
        let slot = &partition.slots[index];
        match live.as_ref().filter(|handle| handle.is_open()) {
            Some(handle) => {
                if handle.is_going_away()
                    && !self.replacements.active()
                    && !self.backoff.active()
                    && handle.claim_replacement()
                {
                    self.replace(partition, index, handle.clone(), variant);
                }
                send_on(handle, outbound, queued_on)
            }
            // The endpoint's last connect failed, or its last connection was closed after
            // refusing the proxy's credentials: while another of its connections is open,
            // requests share it rather than be refused for the backoff, and the one that finds
            // the backoff over starts a new connect without waiting on it.
            None if self.backoff.failures() > 0 || self.refusals.failures() > 0 => {
                match self.open_connection(partition, variant) {
                    Some(open) => {
                        if !self.holding_off() {
                            self.connect(slot, variant);
                        }
                        send_on(&open, outbound, queued_on)
                    }
                    None if self.holding_off() => Err((outbound, self.backing_off())),
                    None => self.send_connecting(partition, slot, variant, outbound, queued_on),
                }
            }
            None => self.send_connecting(partition, slot, variant, outbound, queued_on),
        }
    }

    /// Queues `outbound` on a new connection in `slot` of `partition`; at the cluster's
    /// connection limit, on an open connection of the endpoint, if any (another worker's if need
    /// be). `queued_on` is told the connection that took it.
    #[allow(clippy::result_large_err)]
    fn send_connecting(
        &self,
        partition: &Partition,
        slot: &ArcSwapOption<ConnectionHandle>,
        variant: WireVariant,
        outbound: Outbound,
        queued_on: impl FnOnce(&ConnectionHandle),
    ) -> Result<(), (Outbound, UpstreamError)> {
        match self
            .connect(slot, variant)
            .or_else(|| self.open_connection(partition, variant))
        {
            Some(handle) => send_on(&handle, outbound, queued_on),
            None => Err((outbound, UpstreamError::Overflow)),
        }
    }

    /// An open connection of the endpoint speaking `variant`: one of `partition`'s, or another
    /// worker's.
    fn open_connection(
        &self,
        partition: &Partition,
        variant: WireVariant,
    ) -> Option<Arc<ConnectionHandle>> {
        partition.open_connection().or_else(|| {
            self.partitions
                .iter()
                .filter(|p| p.variant == variant)
                .find_map(|p| p.open_connection())
        })
    }

    /// The cluster's breakers, when the pool is a cluster's.
    pub fn breakers(&self) -> Option<&CircuitBreakers> {
        self.breakers.as_deref()
    }

    /// A connection's place under the cluster's `max_connections`: `Some(None)` when the
    /// cluster has no limit, `None` when it is at its limit.
    fn permit(&self) -> Option<Option<ConnectionPermit>> {
        match &self.breakers {
            Some(breakers) => breakers.reserve_connection().map(Some),
            None => Some(None),
        }
    }

    /// True while no connection is opened: after connect failures, or after connections
    /// closed right after refusing the proxy's credentials.
    fn holding_off(&self) -> bool {
        self.backoff.active() || self.refusals.active()
    }

    /// The error of a request refused because the endpoint is backing off: its reason is the
    /// one made for the pause, made by the first request refused in it.
    fn backing_off(&self) -> UpstreamError {
        let cause = if self.backoff.active() {
            HoldOff::ConnectFailures(self.backoff.failures())
        } else {
            HoldOff::CredentialRefusals(self.refusals.failures())
        };
        let reason = match &*self.holding_off_reason.load() {
            Some(made) if made.cause == cause => Arc::clone(&made.reason),
            // Requests refused at once on other threads may each make it: one is kept.
            _ => {
                let reason: Arc<str> = cause.to_string().into();
                self.holding_off_reason.store(Some(Arc::new(HoldOffReason {
                    cause,
                    reason: Arc::clone(&reason),
                })));
                reason
            }
        };
        UpstreamError::ConnectFailed {
            address: self.address,
            reason,
        }
    }

    /// True while the endpoint opens no connection: after connect failures, or after its
    /// server closed connections right after refusing the proxy's credentials.
    pub fn in_backoff(&self) -> bool {
        self.holding_off()
    }

    /// Consecutive connect failures.
    pub fn connect_failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// Connections in a row its server closed right after refusing the proxy's credentials.
    pub fn credential_refusals(&self) -> u32 {
        self.refusals.failures()
    }

    /// Upstream connections currently connected.
    pub fn open_connections(&self) -> usize {
        self.partitions
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter(|s| s.load().as_ref().is_some_and(|c| c.is_connected()))
            .count()
    }

    fn new_partition(&self, variant: WireVariant, worker: Option<usize>) -> Arc<Partition> {
        Arc::new(Partition {
            variant,
            worker,
            slots: (0..self.settings.connections.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The slot for the next request, and what it holds. Requests go round-robin over the
    /// partition's connections a batch at a time: while the connection picked last still has
    /// requests its task has not taken, the next request joins them and they leave in one write
    /// (a write costs the proxy far more than the bytes in it); once its task took them, the next
    /// request moves on to the next connection. A connection whose task has [`BATCH_LIMIT`]
    /// requests waiting is not keeping up, and is moved past.
    fn slot(&self, partition: &Partition) -> (usize, Guard<Option<Arc<ConnectionHandle>>>) {
        let slots = partition.slots.len();
        let current = partition.next.load(Ordering::Relaxed) % slots;
        let live = partition.slots[current].load();
        let joins = live
            .as_ref()
            .is_some_and(|handle| (1..BATCH_LIMIT).contains(&handle.queued()));
        if joins || slots == 1 {
            return (current, live);
        }
        let next = partition
            .next
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            % slots;
        (next, partition.slots[next].load())
    }

    fn connect_params(
        &self,
        variant: WireVariant,
        permit: Option<ConnectionPermit>,
    ) -> ConnectParams {
        ConnectParams {
            address: self.address,
            codec: self.codec.clone(),
            variant,
            settings: self.settings,
            connector: self.connector.clone(),
            backoff: self.backoff.clone(),
            replacements: self.replacements.clone(),
            refusals: self.refusals.clone(),
            stats: self.stats.clone(),
            endpoint: self.endpoint.clone(),
            connected: None,
            permit,
            breakers: self.breakers.clone(),
        }
    }

    /// Opens a connection to take over from `old`, whose upstream is going away (or which
    /// carried its share of requests); `old` keeps serving until the new one is up. When the
    /// new one cannot be opened (the connection limit, a failed connect), a later request
    /// tries again, once the endpoint's connect backoff is over.
    fn replace(
        &self,
        partition: &Arc<Partition>,
        index: usize,
        old: Arc<ConnectionHandle>,
        variant: WireVariant,
    ) {
        let Some(permit) = self.permit() else {
            old.release_replacement();
            return;
        };
        let (connected, up) = tokio::sync::oneshot::channel();
        let prepared = connection::prepare(ConnectParams {
            connected: Some(connected),
            ..self.connect_params(variant, permit)
        });
        let new = Arc::new(prepared.handle);
        tokio::spawn(prepared.task);
        let partition = partition.clone();
        tokio::spawn(async move {
            match up.await {
                Ok(()) => {
                    let old = Some(old);
                    partition.slots[index].compare_and_swap(&old, Some(new));
                }
                // A connection that reached `max_requests_per_connection` would otherwise
                // serve on for good after one refused connect.
                Err(_) => old.release_replacement(),
            }
        });
    }

    /// Opens a connection in `slot`, or takes the one another request just opened there;
    /// `None` when the cluster is at its connection limit.
    fn connect(
        &self,
        slot: &ArcSwapOption<ConnectionHandle>,
        variant: WireVariant,
    ) -> Option<Arc<ConnectionHandle>> {
        loop {
            let current = slot.load_full();
            if let Some(handle) = current.as_ref().filter(|h| h.is_open()) {
                return Some(handle.clone());
            }
            let prepared = connection::prepare(self.connect_params(variant, self.permit()?));
            let handle = Arc::new(prepared.handle);
            let previous = slot.compare_and_swap(&current, Some(handle.clone()));
            let won = match (previous.as_ref(), current.as_ref()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if won {
                tokio::spawn(prepared.task);
                return Some(handle);
            }
        }
    }
}

/// Queues `outbound` on `handle`, and tells `queued_on` once it did.
#[allow(clippy::result_large_err)]
fn send_on(
    handle: &ConnectionHandle,
    outbound: Outbound,
    queued_on: impl FnOnce(&ConnectionHandle),
) -> Result<(), (Outbound, UpstreamError)> {
    handle.send(outbound)?;
    queued_on(handle);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(variant: WireVariant, worker: Option<usize>) -> Arc<Partition> {
        Arc::new(Partition {
            variant,
            worker,
            slots: Box::new([ArcSwapOption::empty()]),
            next: AtomicUsize::new(0),
        })
    }

    /// Threads that ask at once for the partitions of two variants and three workers (each
    /// pair by several of them) all get the same one for a pair, and the list holds each pair
    /// once.
    #[test]
    fn partitions_asked_for_at_once_are_one_per_variant_and_worker() {
        let partitions = Partitions::default();
        let pairs: Vec<(WireVariant, Option<usize>)> = [WireVariant(0), WireVariant(1)]
            .into_iter()
            .flat_map(|variant| [None, Some(0), Some(1)].map(|worker| (variant, worker)))
            .collect();
        let got: Vec<Vec<usize>> = std::thread::scope(|threads| {
            let handles: Vec<_> = (0..8)
                .map(|turn| {
                    let (partitions, pairs) = (&partitions, &pairs);
                    threads.spawn(move || {
                        // Each thread starts at another pair, so that they race for the links.
                        (0..pairs.len())
                            .map(|n| {
                                let (variant, worker) = pairs[(n + turn) % pairs.len()];
                                let made = partitions
                                    .get_or_add(variant, worker, || partition(variant, worker));
                                assert!(made.variant == variant && made.worker == worker);
                                Arc::as_ptr(made) as usize
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(turn, handle)| {
                    let mut got = handle.join().unwrap_or_default();
                    // Back in the order of `pairs`.
                    got.rotate_right(turn % pairs.len());
                    got
                })
                .collect()
        });
        assert!(got.iter().all(|g| *g == got[0]), "{got:?}");
        let listed: Vec<(WireVariant, Option<usize>)> =
            partitions.iter().map(|p| (p.variant, p.worker)).collect();
        assert_eq!(listed.len(), pairs.len(), "{listed:?}");
        assert!(pairs.iter().all(|pair| listed.contains(pair)));
    }

    /// A request for a pool of one connection, answered by nobody.
    fn outbound() -> Outbound {
        Outbound {
            message: Arc::new(metaprotocol_core::Message::empty()),
            mutation: Arc::default(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
            tells_deadline: false,
            reply: ReplyTo::none(),
            placed: false,
        }
    }

    /// The reason `pool` gives a request it refuses at once for its backoff; `None` when it
    /// takes the request (to a new connect: the pause was over).
    fn refused_for_backoff(pool: &UpstreamPool) -> Option<Arc<str>> {
        match pool.send(WireVariant::DEFAULT, outbound()) {
            Err(Rejected {
                error: UpstreamError::ConnectFailed { reason, .. },
                ..
            }) => Some(reason),
            _ => None,
        }
    }

    /// The requests an endpoint refuses while it backs off after a failed connect (every
    /// request sent to it meanwhile) share one reason, made once for the pause: formatted and
    /// allocated for each, it cost every refused request an allocation.
    #[tokio::test]
    async fn requests_refused_during_one_backoff_share_its_reason() -> std::io::Result<()> {
        let (_refusing, address) = crate::testing::refusing_address()?;
        let pool = UpstreamPool::new(
            address,
            Arc::new(crate::testing::SilentCodec),
            PoolSettings {
                connect_timeout: Duration::from_secs(5),
                connections: 1,
                idle_timeout: Duration::from_secs(60),
                frame_timeout: Duration::from_secs(30),
                max_requests_per_connection: None,
            },
            Connector::Plain,
            ClusterStats::new(&crate::stats::Metrics::new().root()),
            None,
        );
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Two requests refused one after the other are refused in one pause: one that
            // found the pause over would have been taken, to a new connect.
            match (refused_for_backoff(&pool), refused_for_backoff(&pool)) {
                (Some(first), Some(second)) => {
                    assert_eq!(first, second);
                    assert!(
                        Arc::ptr_eq(&first, &second),
                        "two requests refused in one pause each had a reason of its own made: {first:?}"
                    );
                    return Ok(());
                }
                _ => {
                    assert!(
                        std::time::Instant::now() < until,
                        "the endpoint never backed off twice in a row in 20 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}
