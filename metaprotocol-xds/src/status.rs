//! The client's own state for `/config_dump` (under `dynamic_sources.xds`): the server, whether
//! the stream is up, and per resource type the accepted version, the last nonce and the last
//! rejection; and the series of what it holds that the proxy shows as metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use metaprotocol_router::{Gauge, MetricsScope};
use serde::Serialize;

use crate::client::SessionError;
use crate::state::{Subscription, TypeState};

/// What `/config_dump` shows of the client.
#[derive(Debug, Default, Clone, Serialize)]
struct Snapshot {
    server: String,
    node_id: String,
    connected: bool,
    /// Streams opened since the start.
    streams: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_stream_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_stream_error_at: Option<String>,
    types: BTreeMap<&'static str, TypeState>,
    /// EDS clusters held back until their endpoints arrive.
    warming_clusters: Vec<String>,
    /// EDS clusters that serve without endpoints until their assignment arrives.
    clusters_without_endpoints: Vec<String>,
    /// How many endpoints each assignment held leaves out as only Istio's HBONE tunnel reaches
    /// them, by its name.
    hbone_endpoints_left_out: BTreeMap<String, usize>,
    /// How many endpoints each cluster held that carries its endpoints (not EDS) leaves out as
    /// only Istio's HBONE tunnel reaches them, by its name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    hbone_cluster_endpoints_left_out: BTreeMap<String, usize>,
}

/// The client's state, shared between its task and the admin API.
#[derive(Debug, Default)]
pub(crate) struct SourceStatus {
    snapshot: Mutex<Snapshot>,
    /// The endpoints the assignments and the clusters held leave out as only HBONE reaches
    /// them, all together: the series `xds_hbone_endpoints_left_out`.
    hbone_endpoints_left_out: Gauge,
}

impl SourceStatus {
    /// The state of a client of `server` as `node_id`, whose series live in `scope`.
    pub fn new(server: String, node_id: String, scope: &MetricsScope) -> Self {
        Self {
            snapshot: Mutex::new(Snapshot {
                server,
                node_id,
                ..Snapshot::default()
            }),
            hbone_endpoints_left_out: scope.gauge(
                "xds_hbone_endpoints_left_out",
                "Endpoints of the assignments and clusters held that are left out as only Istio's HBONE tunnel reaches them",
            ),
        }
    }

    fn edit(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut snapshot = match self.snapshot.lock() {
            Ok(snapshot) => snapshot,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut snapshot);
    }

    pub fn connecting(&self) {
        self.edit(|s| s.connected = false);
    }

    pub fn connected(&self, subscription: &Subscription) {
        self.edit(|s| {
            s.connected = true;
            s.streams += 1;
        });
        self.updated(subscription);
    }

    pub fn disconnected(&self, error: &SessionError, subscription: &Subscription) {
        self.failed(error);
        self.updated(subscription);
    }

    /// The client has no stream, because of `error`.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.edit(|s| {
            s.connected = false;
            s.last_stream_error = Some(error.to_string());
            s.last_stream_error_at =
                Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        });
    }

    pub fn updated(&self, subscription: &Subscription) {
        let types = subscription.type_states();
        let warming = subscription.warming_clusters();
        let without_endpoints = subscription.clusters_without_endpoints();
        let hbone_endpoints_left_out = subscription.hbone_endpoints_left_out();
        let hbone_cluster_endpoints_left_out = subscription.inline_hbone_endpoints_left_out();
        let left_out = hbone_endpoints_left_out
            .values()
            .chain(hbone_cluster_endpoints_left_out.values())
            .fold(0usize, |sum, n| sum.saturating_add(*n));
        self.hbone_endpoints_left_out
            .set(i64::try_from(left_out).unwrap_or(i64::MAX));
        self.edit(|s| {
            s.types = types;
            s.warming_clusters = warming;
            s.clusters_without_endpoints = without_endpoints;
            s.hbone_endpoints_left_out = hbone_endpoints_left_out;
            s.hbone_cluster_endpoints_left_out = hbone_cluster_endpoints_left_out;
        });
    }

    /// The state as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let snapshot = match self.snapshot.lock() {
            Ok(snapshot) => snapshot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        serde_json::to_value(snapshot).unwrap_or_default()
    }
}
