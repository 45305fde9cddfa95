//! Clusters and endpoints: where requests can go, and the subsets routes select.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metaprotocol_core::CodecFactory;

use crate::config::{ClusterSpec, ConfigError, LocalitySpec};
use crate::lb::{self, LoadBalancer, PickContext};
use crate::stats::ClusterStats;
use crate::upstream::{PoolSettings, UpstreamPool};

/// One upstream endpoint, its labels and its connection pool.
#[derive(Debug)]
pub struct Endpoint {
    address: SocketAddr,
    weight: u32,
    labels: BTreeMap<String, String>,
    locality: Option<LocalitySpec>,
    pool: UpstreamPool,
    active: AtomicU64,
    total: AtomicU64,
}

impl Endpoint {
    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Its locality, if configured.
    pub fn locality(&self) -> Option<&LocalitySpec> {
        self.locality.as_ref()
    }

    /// Its connection pool.
    pub fn pool(&self) -> &UpstreamPool {
        &self.pool
    }

    /// Requests in flight to it.
    pub fn active_requests(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests sent to it so far.
    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    fn has_labels(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct ActiveRequest(Arc<Endpoint>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints a route may send to (a whole cluster, or a subset of it) with their balancer.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    cumulative_weights: Vec<u64>,
    balancer: Box<dyn LoadBalancer>,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, balancer: Box<dyn LoadBalancer>) -> Self {
        let cumulative_weights = endpoints
            .iter()
            .scan(0u64, |sum, e| {
                *sum += u64::from(e.weight.max(1));
                Some(*sum)
            })
            .collect();
        Self {
            endpoints,
            cumulative_weights,
            balancer,
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Picks an endpoint; `None` if the set is empty.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<&Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let index = self
            .balancer
            .pick(&self.endpoints, &self.cumulative_weights, ctx);
        self.endpoints.get(index)
    }
}

/// A named group of endpoints serving one service, with the codec to reach them.
#[derive(Debug)]
pub struct Cluster {
    name: Arc<str>,
    spec: ClusterSpec,
    codec: Arc<dyn CodecFactory>,
    all: Arc<EndpointSet>,
    stats: ClusterStats,
}

impl Cluster {
    /// Builds a cluster from a validated spec, reaching its endpoints with `codec`.
    pub fn new(
        spec: &ClusterSpec,
        codec: Arc<dyn CodecFactory>,
        stats: ClusterStats,
    ) -> Result<Self, ConfigError> {
        if spec.locality_aware {
            return Err(ConfigError::new(
                "locality_aware",
                "locality-aware load balancing is not available yet",
            ));
        }
        if spec.circuit_breakers.is_some() {
            return Err(ConfigError::new(
                "circuit_breakers",
                "circuit breakers are not available yet",
            ));
        }
        if spec.outlier_detection.is_some() {
            return Err(ConfigError::new(
                "outlier_detection",
                "outlier detection is not available yet",
            ));
        }
        let settings = PoolSettings {
            connect_timeout: spec.connect_timeout,
            connections: spec.connections_per_endpoint as usize,
        };
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(Endpoint {
                    address: e.address,
                    weight: e.weight,
                    labels: e.labels.clone(),
                    locality: e.locality.clone(),
                    pool: UpstreamPool::new(e.address, codec.clone(), settings, stats.clone()),
                    active: AtomicU64::new(0),
                    total: AtomicU64::new(0),
                })
            })
            .collect();
        Ok(Self {
            name: spec.name.as_str().into(),
            spec: spec.clone(),
            all: Arc::new(EndpointSet::new(endpoints, lb::for_policy(spec.lb_policy)?)),
            codec,
            stats,
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The codec its endpoints speak.
    pub fn codec(&self) -> &Arc<dyn CodecFactory> {
        &self.codec
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> &Arc<EndpointSet> {
        &self.all
    }

    /// Its metric handles.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The time allowed to connect.
    pub fn connect_timeout(&self) -> Duration {
        self.spec.connect_timeout
    }

    /// The endpoints whose labels contain all of `labels`, with a balancer of their own; the
    /// whole cluster when `labels` is empty.
    pub fn subset(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Arc<EndpointSet>, ConfigError> {
        if labels.is_empty() {
            return Ok(self.all.clone());
        }
        let endpoints = self
            .all
            .endpoints
            .iter()
            .filter(|e| e.has_labels(labels))
            .cloned()
            .collect();
        Ok(Arc::new(EndpointSet::new(
            endpoints,
            lb::for_policy(self.spec.lb_policy)?,
        )))
    }
}
