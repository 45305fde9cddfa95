//! Upstream connection pools: per endpoint, connections shared by every client.
//!
//! In [`PoolMode::Multiplex`] (the default) each endpoint keeps a few connections per wire
//! variant and requests from all downstream connections are spread over them, each with a fresh
//! upstream request id that the reader maps back to its caller. In [`PoolMode::Exclusive`] a
//! connection carries one request at a time.

mod connection;
mod error;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use metaprotocol_core::{CodecFactory, Message, Mutation, PoolMode, WireVariant};
use tokio::sync::Semaphore;

use self::connection::Connection;
pub use self::error::UpstreamError;
use crate::stats::ClusterStats;

/// How an endpoint's pool connects and how many connections it keeps.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// The time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Connections per wire variant.
    pub connections: usize,
}

/// One connection slot: the live connection, if any, and the lock that makes only one caller
/// connect at a time.
struct Slot {
    current: ArcSwapOption<Connection>,
    connecting: tokio::sync::Mutex<()>,
    /// Bumped after every failed connect, so callers that queued behind a failing attempt fail
    /// with it instead of each waiting out their own attempt.
    failures: AtomicU64,
    last_failure: Mutex<Option<UpstreamError>>,
    /// One permit in exclusive mode.
    exclusive: Semaphore,
}

/// The slots of one wire variant.
struct Partition {
    variant: WireVariant,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

/// The connections to one endpoint.
pub struct UpstreamPool {
    address: SocketAddr,
    codec: Arc<dyn CodecFactory>,
    settings: PoolSettings,
    stats: ClusterStats,
    partitions: Mutex<Vec<Arc<Partition>>>,
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
    /// An empty pool; connections open on first use.
    pub fn new(
        address: SocketAddr,
        codec: Arc<dyn CodecFactory>,
        settings: PoolSettings,
        stats: ClusterStats,
    ) -> Self {
        Self {
            address,
            codec,
            settings,
            stats,
            partitions: Mutex::new(Vec::new()),
        }
    }

    /// Sends a two-way request in `variant` and waits for its response. The caller bounds the
    /// wait (connect included) with its own timeout; dropping the future abandons the request.
    pub async fn call(
        &self,
        message: Arc<Message>,
        mutation: Arc<Mutation>,
        variant: WireVariant,
    ) -> Result<Message, UpstreamError> {
        let partition = self.partition(variant);
        let (slot, _permit) = self.checkout(&partition).await;
        let connection = self.connection(slot, variant).await?;
        connection.call(message, mutation).await
    }

    /// Sends a one-way request in `variant`; done once queued on a connection.
    pub async fn send_oneway(
        &self,
        message: Arc<Message>,
        mutation: Arc<Mutation>,
        variant: WireVariant,
    ) -> Result<(), UpstreamError> {
        let partition = self.partition(variant);
        let (slot, _permit) = self.checkout(&partition).await;
        let connection = self.connection(slot, variant).await?;
        connection.send_oneway(message, mutation).await
    }

    /// Upstream connections currently open.
    pub fn open_connections(&self) -> usize {
        let partitions = match self.partitions.lock() {
            Ok(p) => p.clone(),
            Err(_) => return 0,
        };
        partitions
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter(|s| s.current.load().as_ref().is_some_and(|c| !c.is_closed()))
            .count()
    }

    fn partition(&self, variant: WireVariant) -> Arc<Partition> {
        let mut partitions = match self.partitions.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(p) = partitions.iter().find(|p| p.variant == variant) {
            return p.clone();
        }
        let permits = match self.codec.pool_mode() {
            PoolMode::Multiplex => Semaphore::MAX_PERMITS,
            PoolMode::Exclusive => 1,
        };
        let slots = (0..self.settings.connections.max(1))
            .map(|_| Slot {
                current: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                failures: AtomicU64::new(0),
                last_failure: Mutex::new(None),
                exclusive: Semaphore::new(permits),
            })
            .collect();
        let partition = Arc::new(Partition {
            variant,
            slots,
            next: AtomicUsize::new(0),
        });
        partitions.push(partition.clone());
        partition
    }

    /// Picks a slot round-robin; in exclusive mode, the first free one (or waits for one).
    async fn checkout<'p>(
        &self,
        partition: &'p Partition,
    ) -> (&'p Slot, Option<tokio::sync::SemaphorePermit<'p>>) {
        let start = partition.next.fetch_add(1, Ordering::Relaxed);
        let n = partition.slots.len();
        let slot_at = |i: usize| &partition.slots[(start + i) % n];
        if self.codec.pool_mode() == PoolMode::Multiplex {
            return (slot_at(0), None);
        }
        for i in 0..n {
            if let Ok(permit) = slot_at(i).exclusive.try_acquire() {
                return (slot_at(i), Some(permit));
            }
        }
        let slot = slot_at(0);
        (slot, slot.exclusive.acquire().await.ok())
    }

    /// The slot's live connection, connecting if there is none.
    async fn connection(
        &self,
        slot: &Slot,
        variant: WireVariant,
    ) -> Result<Arc<Connection>, UpstreamError> {
        if let Some(connection) = live(slot) {
            return Ok(connection);
        }
        let failures_before = slot.failures.load(Ordering::Acquire);
        let _connecting = slot.connecting.lock().await;
        if let Some(connection) = live(slot) {
            return Ok(connection);
        }
        if slot.failures.load(Ordering::Acquire) != failures_before {
            let last = slot.last_failure.lock().ok().and_then(|f| f.clone());
            if let Some(err) = last {
                return Err(err);
            }
        }
        match Connection::open(
            self.address,
            &self.codec,
            variant,
            self.settings.connect_timeout,
            &self.stats,
        )
        .await
        {
            Ok(connection) => {
                slot.current.store(Some(connection.clone()));
                Ok(connection)
            }
            Err(err) => {
                if let Ok(mut last) = slot.last_failure.lock() {
                    *last = Some(err.clone());
                }
                slot.failures.fetch_add(1, Ordering::Release);
                Err(err)
            }
        }
    }
}

fn live(slot: &Slot) -> Option<Arc<Connection>> {
    slot.current.load_full().filter(|c| !c.is_closed())
}
