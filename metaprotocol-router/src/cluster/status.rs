//! What a cluster looks like from outside: the view `/clusters` and embedders read.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use super::{BreakerStatus, Endpoint, HealthFlags, HealthState, Host};
use crate::config::LocalitySpec;

/// One cluster's endpoints and their state.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// The cluster's name.
    pub name: String,
    /// The protocol its endpoints speak.
    pub protocol: String,
    /// Its snapshot version: 1 when built, incremented by every update or health change.
    pub version: u64,
    /// Its configured circuit breakers: limit, current count, open or not, overflows.
    pub circuit_breakers: Vec<BreakerStatus>,
    /// Its members, then endpoints removed by an update that still finish requests.
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint's state.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// Its address.
    pub address: SocketAddr,
    /// Its weight (0 for a draining endpoint).
    pub weight: u32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Where it runs (empty strings when the config does not say).
    pub locality: LocalitySpec,
    /// Its failover tier (0 first).
    pub priority: u32,
    /// Its health: the most severe of its flags.
    pub health: HealthState,
    /// True while outlier detection keeps it out of rotation.
    pub ejected: bool,
    /// True while active health checks keep it out of rotation.
    pub failing_active_checks: bool,
    /// True while it waits for its first active health check: new to a cluster with health
    /// checks, it is out of rotation (`failing_active_checks`) until that check passes.
    pub awaiting_first_check: bool,
    /// Times outlier detection ejected it.
    pub ejections: u32,
    /// True while it opens no connection: after connect failures, or after its server closed
    /// connections right after refusing the proxy's credentials (bRPC's `ERPCAUTH`).
    pub backing_off: bool,
    /// Consecutive failed connects.
    pub connect_failures: u32,
    /// Connections in a row its server closed right after refusing the proxy's credentials
    /// (0 again once it answers a call with no refusal).
    pub credential_refusals: u32,
    /// Requests in flight to it.
    pub active_requests: u64,
    /// Requests sent to it so far.
    pub total_requests: u64,
    /// Connections open to it.
    pub open_connections: usize,
}

impl EndpointStatus {
    /// A member of the current snapshot.
    pub(super) fn of(host: &Host) -> Self {
        Self {
            weight: host.weight,
            labels: host.labels.clone(),
            locality: host.locality.clone(),
            priority: host.priority,
            ..Self::retired(&host.endpoint)
        }
    }

    /// An endpoint an update removed, still finishing requests.
    pub(super) fn retired(endpoint: &Endpoint) -> Self {
        let flags = endpoint.health();
        Self {
            address: endpoint.address(),
            weight: 0,
            labels: BTreeMap::new(),
            locality: LocalitySpec::default(),
            priority: 0,
            health: flags.state(),
            ejected: flags.has(HealthFlags::EJECTED),
            failing_active_checks: flags.has(HealthFlags::FAILED_ACTIVE_CHECK),
            awaiting_first_check: flags.has(HealthFlags::PENDING_ACTIVE_CHECK),
            ejections: endpoint.outliers().ejections(),
            backing_off: endpoint.pool().in_backoff(),
            connect_failures: endpoint.pool().connect_failures(),
            credential_refusals: endpoint.pool().credential_refusals(),
            active_requests: endpoint.active_requests(),
            total_requests: endpoint.total_requests(),
            open_connections: endpoint.pool().open_connections(),
        }
    }
}
