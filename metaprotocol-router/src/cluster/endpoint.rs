//! One upstream endpoint: its connection pool, its health, its live counts. An endpoint
//! outlives the cluster snapshots that list it, so that its connections survive updates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::health::OutlierCounters;
use crate::lb::RttEstimate;
use crate::stats::ClusterStats;
use crate::upstream::UpstreamPool;

/// An endpoint's health as `/clusters` reports it, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Removed from its cluster, finishing the requests it still has.
    Draining,
    /// Failing active health checks.
    FailingActiveChecks,
    /// Ejected by outlier detection.
    Ejected,
    /// In rotation.
    Healthy,
}

/// Health flags, written by health checking, outlier detection and cluster updates only (see
/// [`super::ClusterHandle::set_health`]).
#[derive(Debug, Default)]
pub(crate) struct HealthFlags(AtomicU8);

impl HealthFlags {
    pub const DRAINING: u8 = 1;
    pub const FAILED_ACTIVE_CHECK: u8 = 1 << 1;
    pub const EJECTED: u8 = 1 << 2;

    /// Sets or clears `flag`; true if that changed anything.
    pub fn set(&self, flag: u8, on: bool) -> bool {
        let before = if on {
            self.0.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.0.fetch_and(!flag, Ordering::AcqRel)
        };
        (before & flag != 0) != on
    }

    /// True if `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.0.load(Ordering::Acquire) & flag != 0
    }

    /// True if no flag takes the endpoint out of rotation.
    pub fn routable(&self) -> bool {
        self.0.load(Ordering::Acquire) & (Self::FAILED_ACTIVE_CHECK | Self::EJECTED) == 0
    }

    pub fn state(&self) -> HealthState {
        let flags = self.0.load(Ordering::Acquire);
        if flags & Self::DRAINING != 0 {
            HealthState::Draining
        } else if flags & Self::FAILED_ACTIVE_CHECK != 0 {
            HealthState::FailingActiveChecks
        } else if flags & Self::EJECTED != 0 {
            HealthState::Ejected
        } else {
            HealthState::Healthy
        }
    }
}

/// One upstream endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    address: SocketAddr,
    pool: UpstreamPool,
    health: HealthFlags,
    active: AtomicU64,
    total: AtomicU64,
    /// Its latency, for `peak_ewma`.
    rtt: RttEstimate,
    /// Its failure streaks and ejections, for outlier detection.
    outliers: OutlierCounters,
}

impl Endpoint {
    pub fn new(address: SocketAddr, pool: UpstreamPool) -> Self {
        Self {
            address,
            pool,
            health: HealthFlags::default(),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            rtt: RttEstimate::default(),
            outliers: OutlierCounters::default(),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pool(&self) -> &UpstreamPool {
        &self.pool
    }

    pub fn health(&self) -> &HealthFlags {
        &self.health
    }

    pub fn rtt(&self) -> &RttEstimate {
        &self.rtt
    }

    pub fn outliers(&self) -> &OutlierCounters {
        &self.outliers
    }

    /// Requests in flight to it.
    pub fn active_requests(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests sent to it so far.
    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Marks an attempt in flight (on the endpoint and its cluster) until the guard drops.
    pub fn track(self: &Arc<Self>, stats: &ClusterStats) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        stats.rq_total.inc();
        stats.rq_active.inc();
        ActiveRequest {
            endpoint: self.clone(),
            cluster_active: stats.rq_active.clone(),
        }
    }
}

/// An attempt in flight to an endpoint; dropping it ends the attempt.
#[derive(Debug)]
pub(crate) struct ActiveRequest {
    endpoint: Arc<Endpoint>,
    cluster_active: Gauge,
}

impl ActiveRequest {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.cluster_active.dec();
    }
}
