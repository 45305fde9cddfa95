//! An immutable view of a cluster at one moment: its members, and the endpoint sets (the whole
//! cluster and each subset routes select) with their load balancers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Endpoint;
use crate::config::{LocalitySpec, RetryBudgetSpec};
use crate::lb::{self, LbSettings, LoadBalancer, PickContext};
use crate::stats::IstioReporter;

/// A cluster member: an endpoint with the weight, labels and locality this snapshot gives it.
#[derive(Debug)]
pub(crate) struct Host {
    pub endpoint: Arc<Endpoint>,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    pub locality: LocalitySpec,
    /// Its failover tier: 0 first (Envoy's priority levels).
    pub priority: u32,
    /// The port its active health checks ask instead of its own, if any.
    pub health_check_port: Option<u16>,
    /// Counts its requests in the Istio series (labelled from `labels`), when they are on;
    /// shared by the hosts of the same destination, and kept by the next snapshot.
    pub istio: Option<Arc<IstioReporter>>,
}

impl Host {
    fn has_labels(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A subset selector's identity within its cluster. Routes keep it; it stays valid across the
/// cluster's snapshots while a [`SubsetLease`](super::SubsetLease) on it is held.
/// [`SubsetId::ALL`] is the whole cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SubsetId(pub(super) usize);

impl SubsetId {
    /// The whole cluster.
    pub const ALL: Self = Self(0);
}

/// A subset selector of a cluster, with the number of leases on it. A selector without leases
/// is free: its snapshots' set is empty, and its id goes to the next new selector.
#[derive(Clone, Debug)]
pub(super) struct Selector {
    /// The labels an endpoint must carry (none: the whole cluster).
    pub labels: BTreeMap<String, String>,
    /// The leases on it; the whole cluster's selector is held by the cluster itself.
    pub holders: usize,
}

/// The endpoints a route may use, with their balancer.
#[derive(Debug)]
pub(crate) struct EndpointSet {
    hosts: Vec<Arc<Host>>,
    balancer: Box<dyn LoadBalancer>,
}

impl EndpointSet {
    /// The set of `members`: its picks among those in rotation, or in panic mode among all
    /// (see [`lb::build`]).
    fn new(members: Vec<Arc<Host>>, settings: &LbSettings) -> Self {
        let routable: Vec<bool> = members
            .iter()
            .map(|h| h.endpoint.health().routable())
            .collect();
        let (hosts, balancer) = lb::build(settings, &members, &routable);
        Self { balancer, hosts }
    }

    /// True if an endpoint that is not `tried` is in use (not backing off after failed
    /// connects): one a request that failed on all those `tried` may still go to.
    pub fn offers_untried(&self, tried: impl Fn(SocketAddr) -> bool) -> bool {
        self.hosts.iter().any(|host| {
            let endpoint = &host.endpoint;
            !endpoint.pool().in_backoff() && !tried(endpoint.address())
        })
    }

    /// Picks a host for a request with consistent-hashing key `hash`, skipping those already
    /// `tried` by this request and those backing off after connect failures when another is
    /// available; `None` when the set is empty.
    pub fn pick(&self, tried: &[SocketAddr], hash: Option<u64>) -> Option<&Arc<Host>> {
        let avoid = |i: usize| {
            self.hosts.get(i).is_some_and(|host| {
                let endpoint = &host.endpoint;
                endpoint.pool().in_backoff() || tried.contains(&endpoint.address())
            })
        };
        let index = self.balancer.pick(&PickContext {
            avoid: &avoid,
            hash,
        })?;
        self.hosts.get(index)
    }
}

/// A cluster at one moment.
#[derive(Debug)]
pub(crate) struct ClusterSnapshot {
    /// 1 for the first, incremented by each rebuild.
    pub version: u64,
    /// Every member.
    pub hosts: Vec<Arc<Host>>,
    /// Counts requests that reached the cluster but no endpoint in the Istio series, when they
    /// are on.
    pub istio: Option<Arc<IstioReporter>>,
    /// One set per subset selector, indexed by [`SubsetId`].
    sets: Vec<EndpointSet>,
    /// How many retries the cluster takes in flight.
    pub retry_budget: RetryBudgetSpec,
}

impl ClusterSnapshot {
    /// Builds the sets of `selectors` over `hosts` (an empty one for a free selector); its
    /// version is given when it is published.
    pub(super) fn build(
        hosts: Vec<Arc<Host>>,
        selectors: &[Selector],
        settings: &LbSettings,
        retry_budget: RetryBudgetSpec,
    ) -> Self {
        let sets = selectors
            .iter()
            .map(|selector| {
                let members = hosts
                    .iter()
                    .filter(|h| selector.holders > 0 && h.has_labels(&selector.labels))
                    .cloned()
                    .collect();
                EndpointSet::new(members, settings)
            })
            .collect();
        Self {
            version: 0,
            hosts,
            istio: None,
            sets,
            retry_budget,
        }
    }

    /// The set of subset `id`; an empty set for an id this snapshot does not know (a route
    /// built against a newer snapshot than the one a request loaded).
    pub fn set(&self, id: SubsetId) -> Option<&EndpointSet> {
        self.sets.get(id.0)
    }

    /// How many sets the snapshot has built (the whole cluster's included).
    #[cfg(test)]
    pub fn set_count(&self) -> usize {
        self.sets.len()
    }
}
