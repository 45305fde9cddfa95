//! What a cluster looks like from outside: the view `/clusters` and embedders read.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use super::{Endpoint, HealthState};

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
    /// Its health.
    pub health: HealthState,
    /// True while outlier detection keeps it out of rotation.
    pub ejected: bool,
    /// True while connect failures keep it out of rotation.
    pub backing_off: bool,
    /// Consecutive failed connects.
    pub connect_failures: u32,
    /// Requests in flight to it.
    pub active_requests: u64,
    /// Requests sent to it so far.
    pub total_requests: u64,
    /// Connections open to it.
    pub open_connections: usize,
}

impl EndpointStatus {
    pub(super) fn of(endpoint: &Endpoint, weight: u32, labels: &BTreeMap<String, String>) -> Self {
        let health = endpoint.health().state();
        Self {
            address: endpoint.address(),
            weight,
            labels: labels.clone(),
            health,
            ejected: health == HealthState::Ejected,
            backing_off: endpoint.pool().in_backoff(),
            connect_failures: endpoint.pool().connect_failures(),
            active_requests: endpoint.active_requests(),
            total_requests: endpoint.total_requests(),
            open_connections: endpoint.pool().open_connections(),
        }
    }
}
