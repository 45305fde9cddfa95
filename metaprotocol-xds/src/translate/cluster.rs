//! CDS: an Envoy `Cluster` as a [`ClusterSpec`].
//!
//! Mapped: `name`; `type` `STATIC`, `STRICT_DNS` and `LOGICAL_DNS` (endpoints from
//! `load_assignment`, host names resolved as the engine resolves them) and `EDS` (endpoints
//! from the `ClusterLoadAssignment` named by `eds_cluster_config.service_name`, or the
//! cluster's name); `connect_timeout`; `lb_policy` (`ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`,
//! `RING_HASH`, `MAGLEV`); the `DEFAULT` priority's `circuit_breakers` thresholds and their
//! `retry_budget` (retries bounded as Envoy bounds them: by the budget when one is set, else
//! by `max_retries` alone);
//! `outlier_detection` (`consecutive_5xx`, `interval`, `base_ejection_time`,
//! `max_ejection_time`, `max_ejection_percent`); `common_lb_config`'s locality setting
//! (zone-aware or locality-weighted) as `locality_aware`, and its `healthy_panic_threshold`;
//! one of `health_checks` (TCP connect, Envoy's Thrift checker or an HTTP `GET`: see `health.rs`);
//! `transport_socket` (`tls` from files, certificate provider instances or SDS secrets mapped to
//! files: see `tls.rs`); `transport_socket_matches` (string `match` values, each entry's
//! `transport_socket` as the cluster's; the endpoints' labels come from EDS metadata, see
//! `endpoints.rs`), whose entries' `name`s are ignored, and from which the entry istiod adds when
//! it sends Istio's HBONE tunnel (ambient) is left out: `match` `tunnel: http` only, with an
//! `internal_upstream` transport into Envoy's tunnel, which the engine does not have, and so
//! are the endpoints whose transport it would be, found as Envoy finds an endpoint's transport
//! among the entries as sent (the first its own labels match, else the first its locality's
//! match), and counted (see `endpoints.rs`; those a `load_assignment` carries are counted by
//! the cluster, [`ClusterResource::inline_hbone_endpoints`]);
//! `eds_cluster_config.eds_config.initial_fetch_timeout`, how long an EDS cluster waits for its
//! endpoints before serving without them (Envoy's 15 s when unset, 0 for ever).
//!
//! Refused (NACKed, naming the field): `transport_socket_matcher`, `load_balancing_policy`, network `filters`, `upstream_config`, custom DNS resolvers and
//! cluster types, `ORIGINAL_DST`, non-`DEFAULT` circuit-breaker priorities, per-host
//! thresholds, the outlier detectors the engine does not have, and
//! `common_lb_config.ignore_new_hosts_until_first_hc` (endpoints awaiting their first health
//! check count towards the panic threshold, as in Envoy by default). Accepted and ignored, as
//! they do not change where calls go: `metadata`, `alt_stat_name`, stats and buffer tuning,
//! the rest of `eds_cluster_config.eds_config` (the client asks its one ADS server), the `lb_config`
//! tuning of an algorithm (ring sizes, choice counts), `lb_subset_config` (routes pick subsets
//! by label), DNS refresh tuning (the engine's own refresh applies), HTTP protocol options.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as EnvoyLbPolicy,
    TransportSocketMatch,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::pb::google::protobuf::value::Kind;
use metaprotocol_router::config::{
    CircuitBreakersSpec, ClusterSpec, EndpointSpec, LbPolicy, OutlierDetectionSpec,
    RetryBudgetSpec, TransportSocketMatchSpec,
};
use prost::Name;

use super::tls::{self, CertificateFiles};
use super::{InvalidResource, duration, endpoints, health, refuse_set};

/// A translated cluster: its spec, and where its endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterResource {
    /// The cluster, with its endpoints when they came inline.
    pub spec: ClusterSpec,
    /// For an EDS cluster, the name of the `ClusterLoadAssignment` that holds its endpoints.
    pub eds_service: Option<String>,
    /// For an EDS cluster, how long it waits for its endpoints before it serves without them
    /// (`None`: for ever).
    pub endpoints_timeout: Option<Duration>,
    /// Its `transport_socket_matches` as sent, when istiod's HBONE entry is among them.
    hbone: Option<HboneEntries>,
    /// How many of the endpoints it carries (`load_assignment`) it leaves out as only Istio's
    /// HBONE tunnel reaches them.
    inline_hbone_endpoints: usize,
}

impl ClusterResource {
    /// The spec to run, with `endpoints` when its endpoints come from EDS, but for those only
    /// its HBONE entry reaches.
    pub fn with_endpoints(&self, endpoints: &[EndpointSpec]) -> ClusterSpec {
        let mut spec = self.spec.clone();
        if self.eds_service.is_some() {
            spec.endpoints = endpoints
                .iter()
                .filter(|endpoint| !self.reaches_by_hbone(endpoint))
                .cloned()
                .collect();
        }
        spec
    }

    /// How many of `endpoints` the cluster leaves out as only its HBONE entry reaches them.
    pub fn hbone_endpoints(&self, endpoints: &[EndpointSpec]) -> usize {
        if self.hbone.is_none() {
            return 0;
        }
        endpoints
            .iter()
            .filter(|endpoint| self.reaches_by_hbone(endpoint))
            .count()
    }

    /// How many of the endpoints the cluster carries (`load_assignment`, not EDS) it leaves out
    /// as only Istio's HBONE tunnel reaches them: at an internal address, or taken by its HBONE
    /// entry. istiod builds a DNS cluster's endpoints as it builds an EDS assignment, with
    /// such endpoints for a proxy that claims HBONE.
    pub fn inline_hbone_endpoints(&self) -> usize {
        self.inline_hbone_endpoints
    }

    /// True if the cluster has istiod's HBONE entry.
    pub fn has_hbone_entry(&self) -> bool {
        self.hbone.is_some()
    }

    /// True if `endpoint` takes the cluster's HBONE entry.
    fn reaches_by_hbone(&self, endpoint: &EndpointSpec) -> bool {
        self.hbone
            .as_ref()
            .is_some_and(|hbone| hbone.takes(endpoint))
    }
}

/// The entries of a cluster's `transport_socket_matches` as sent, istiod's HBONE entry among
/// them, which decide which endpoints go through that entry as Envoy decides an endpoint's
/// transport: the first entry its own labels match, else the first its locality's match.
#[derive(Debug, Clone, PartialEq)]
struct HboneEntries {
    /// Each entry's `match` (without its transport).
    entries: Vec<TransportSocketMatchSpec>,
    /// The index of the first HBONE entry (a later one has its match, so is never chosen).
    hbone: usize,
}

impl HboneEntries {
    /// True if `endpoint`'s transport is the HBONE entry.
    fn takes(&self, endpoint: &EndpointSpec) -> bool {
        endpoint.transport_socket_entry(&self.entries) == Some(self.hbone)
    }
}

/// Translates a CDS `Cluster`, whose TLS may name certificate provider instances and SDS
/// secrets of `providers`.
pub fn cluster(
    cluster: &Cluster,
    providers: &CertificateFiles,
) -> Result<ClusterResource, InvalidResource> {
    if cluster.name.is_empty() {
        return Err(InvalidResource::new("name", "must not be empty"));
    }
    refuse_set!(
        "",
        cluster,
        [
            transport_socket_matcher,
            load_balancing_policy,
            upstream_bind_config,
            lrs_server,
            filters,
            upstream_connection_options,
            track_timeout_budgets,
            preconnect_policy,
            upstream_config,
            dns_resolvers,
            typed_dns_resolver_config,
        ]
    );
    let mut spec = default_spec(&cluster.name)?;
    if let Some(timeout) = &cluster.connect_timeout {
        spec.connect_timeout = duration(timeout, "connect_timeout")?;
    }
    spec.lb_policy = lb_policy(cluster.lb_policy)?;
    if let Some(common) = &cluster.common_lb_config {
        refuse_set!(
            "common_lb_config",
            common,
            [
                consistent_hashing_lb_config,
                override_host_status,
                // The engine counts endpoints awaiting their first health check towards
                // `healthy_panic_threshold`, Envoy's default; leaving them out is not supported.
                ignore_new_hosts_until_first_hc,
            ]
        );
        spec.locality_aware = common.locality_config_specifier.is_some();
        if let Some(threshold) = &common.healthy_panic_threshold {
            // Envoy truncates it to a whole percent; Istio sends 0 (panic mode off) with
            // outlier detection unless a destination rule sets `minHealthPercent`.
            let percent = threshold.value.trunc();
            if !(0.0..=100.0).contains(&percent) {
                return Err(InvalidResource::new(
                    "common_lb_config.healthy_panic_threshold",
                    format!("{} is not a percentage from 0 to 100", threshold.value),
                ));
            }
            spec.healthy_panic_threshold = percent;
        }
    }
    if let Some(breakers) = &cluster.circuit_breakers {
        let (breakers, retry_budget) = circuit_breakers(breakers)?;
        spec.circuit_breakers = Some(breakers);
        spec.retry_budget = retry_budget;
    }
    if let Some(outlier) = &cluster.outlier_detection {
        spec.outlier_detection = Some(outlier_detection(outlier)?);
    }
    spec.health_check =
        health::health_checks(&cluster.health_checks).map_err(|e| e.within("health_checks"))?;
    if let Some(socket) = &cluster.transport_socket {
        spec.tls =
            tls::transport_socket(socket, providers).map_err(|e| e.within("transport_socket"))?;
    }
    // The entries as sent, matches only, to find the endpoints the HBONE entry takes.
    let mut sent = Vec::with_capacity(cluster.transport_socket_matches.len());
    let mut hbone = None;
    for (i, entry) in cluster.transport_socket_matches.iter().enumerate() {
        // Left out of the spec: the endpoints it takes are left out of the cluster.
        if is_hbone(entry) {
            hbone = hbone.or(Some(i));
            let tunnel = [(endpoints::TUNNEL_LABEL, endpoints::TUNNEL_HTTP)];
            sent.push(TransportSocketMatchSpec {
                labels: tunnel.map(|(k, v)| (k.to_owned(), v.to_owned())).into(),
                tls: None,
            });
            continue;
        }
        let translated = transport_socket_match(entry, providers)
            .map_err(|e| e.within(&format!("transport_socket_matches[{i}]")))?;
        sent.push(TransportSocketMatchSpec {
            labels: translated.labels.clone(),
            tls: None,
        });
        spec.transport_socket_matches.push(translated);
    }
    let hbone = hbone.map(|hbone| HboneEntries {
        entries: sent,
        hbone,
    });
    let kind = match &cluster.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(kind)) => DiscoveryType::try_from(*kind)
            .map_err(|_| InvalidResource::new("type", format!("unknown type {kind}")))?,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(InvalidResource::unsupported("cluster_type"));
        }
    };
    let mut endpoints_timeout = None;
    let mut inline_hbone_endpoints = 0;
    let eds_service = match kind {
        DiscoveryType::Eds => {
            endpoints_timeout = initial_fetch_timeout(cluster.eds_cluster_config.as_ref())?;
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|eds| eds.service_name.as_str())
                .filter(|name| !name.is_empty())
                .unwrap_or(&cluster.name);
            if cluster.load_assignment.is_some() {
                return Err(InvalidResource::new(
                    "load_assignment",
                    "an EDS cluster takes its endpoints from EDS",
                ));
            }
            Some(service.to_owned())
        }
        DiscoveryType::Static | DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            if let Some(assignment) = &cluster.load_assignment {
                let taken =
                    endpoints::assignment(assignment).map_err(|e| e.within("load_assignment"))?;
                spec.endpoints = taken.endpoints;
                let carried = spec.endpoints.len();
                if let Some(hbone) = &hbone {
                    spec.endpoints.retain(|endpoint| !hbone.takes(endpoint));
                }
                inline_hbone_endpoints = taken
                    .hbone_endpoints
                    .saturating_add(carried - spec.endpoints.len());
            }
            None
        }
        DiscoveryType::OriginalDst => {
            return Err(InvalidResource::new(
                "type",
                "ORIGINAL_DST is not supported by metaprotocol-rs",
            ));
        }
    };
    Ok(ClusterResource {
        spec,
        eds_service,
        endpoints_timeout,
        hbone,
        inline_hbone_endpoints,
    })
}

/// An entry of `transport_socket_matches`: the string labels of its `match`, and its transport.
fn transport_socket_match(
    entry: &TransportSocketMatch,
    providers: &CertificateFiles,
) -> Result<TransportSocketMatchSpec, InvalidResource> {
    let mut labels = std::collections::BTreeMap::new();
    for (name, value) in entry.r#match.iter().flat_map(|m| &m.fields) {
        match &value.kind {
            Some(Kind::StringValue(value)) => {
                labels.insert(name.clone(), value.clone());
            }
            _ => {
                return Err(InvalidResource::new(
                    format!("match.{name}"),
                    "metaprotocol-rs matches endpoints' labels by string values only",
                ));
            }
        }
    }
    let socket = entry
        .transport_socket
        .as_ref()
        .ok_or_else(|| InvalidResource::new("transport_socket", "is required"))?;
    let tls = tls::transport_socket(socket, providers).map_err(|e| e.within("transport_socket"))?;
    Ok(TransportSocketMatchSpec { labels, tls })
}

/// True for the entry istiod gives a cluster when it sends Istio's HBONE tunnel (ambient): an
/// `internal_upstream` transport (into Envoy's internal listener that makes the tunnel) for
/// endpoints labelled `tunnel: http`, and for those only.
fn is_hbone(entry: &TransportSocketMatch) -> bool {
    let tunnel_only = entry.r#match.as_ref().is_some_and(|labels| {
        labels.fields.len() == 1
            && labels.fields.get(endpoints::TUNNEL_LABEL).is_some_and(|value| {
                matches!(&value.kind, Some(Kind::StringValue(v)) if v == endpoints::TUNNEL_HTTP)
            })
    });
    let internal_upstream = entry
        .transport_socket
        .as_ref()
        .and_then(|socket| socket.config_type.as_ref())
        .is_some_and(|ConfigType::TypedConfig(config)| {
            config.type_url == InternalUpstreamTransport::type_url()
        });
    tunnel_only && internal_upstream
}

/// How long an EDS cluster waits for its endpoints, as Envoy's `initial_fetch_timeout` of its
/// `eds_config`: 15 s when unset, for ever (`None`) when 0.
fn initial_fetch_timeout(
    eds: Option<&EdsClusterConfig>,
) -> Result<Option<Duration>, InvalidResource> {
    const ENVOY_DEFAULT: Duration = Duration::from_secs(15);
    let timeout = eds
        .and_then(|eds| eds.eds_config.as_ref())
        .and_then(|source| source.initial_fetch_timeout.as_ref());
    match timeout {
        None => Ok(Some(ENVOY_DEFAULT)),
        Some(timeout) => {
            let timeout = duration(
                timeout,
                "eds_cluster_config.eds_config.initial_fetch_timeout",
            )?;
            Ok(Some(timeout).filter(|t| !t.is_zero()))
        }
    }
}

/// A cluster of the engine's defaults named `name` (built through the config model, so that
/// fields the engine adds later take their defaults here too).
fn default_spec(name: &str) -> Result<ClusterSpec, InvalidResource> {
    serde_json::from_value(serde_json::json!({ "name": name }))
        .map_err(|err| InvalidResource::new("name", err.to_string()))
}

fn lb_policy(policy: i32) -> Result<LbPolicy, InvalidResource> {
    match EnvoyLbPolicy::try_from(policy) {
        Ok(EnvoyLbPolicy::RoundRobin) => Ok(LbPolicy::RoundRobin),
        Ok(EnvoyLbPolicy::LeastRequest) => Ok(LbPolicy::LeastRequest),
        Ok(EnvoyLbPolicy::Random) => Ok(LbPolicy::Random),
        Ok(EnvoyLbPolicy::RingHash) => Ok(LbPolicy::RingHash),
        Ok(EnvoyLbPolicy::Maglev) => Ok(LbPolicy::Maglev),
        Ok(other) => Err(InvalidResource::new(
            "lb_policy",
            format!(
                "{} is not supported by metaprotocol-rs",
                other.as_str_name()
            ),
        )),
        Err(_) => Err(InvalidResource::new(
            "lb_policy",
            format!("unknown policy {policy}"),
        )),
    }
}

/// The `DEFAULT` priority's thresholds, and the retry budget they make; other priorities have
/// no meaning here and are refused.
///
/// Retries are bounded as Envoy bounds them: by the thresholds' `retry_budget` when they set
/// one, and then not by `max_retries`; else by `max_retries` alone, so the engine's own
/// default budget is lifted (Istio sets every threshold to 2^32 - 1 and no budget).
fn circuit_breakers(
    breakers: &CircuitBreakers,
) -> Result<(CircuitBreakersSpec, RetryBudgetSpec), InvalidResource> {
    refuse_set!("circuit_breakers", breakers, [per_host_thresholds]);
    let mut spec: CircuitBreakersSpec = serde_json::from_value(serde_json::json!({}))
        .map_err(|err| InvalidResource::new("circuit_breakers", err.to_string()))?;
    let mut budget = None;
    for (i, thresholds) in breakers.thresholds.iter().enumerate() {
        let at = format!("circuit_breakers.thresholds[{i}]");
        if thresholds.priority != RoutingPriority::Default as i32 {
            return Err(InvalidResource::new(
                format!("{at}.priority"),
                "only the DEFAULT priority is supported by metaprotocol-rs",
            ));
        }
        refuse_set!(&at, thresholds, [max_connection_pools]);
        let limits = [
            (&thresholds.max_connections, &mut spec.max_connections),
            (
                &thresholds.max_pending_requests,
                &mut spec.max_pending_requests,
            ),
            (&thresholds.max_requests, &mut spec.max_requests),
            (&thresholds.max_retries, &mut spec.max_retries),
        ];
        for (value, limit) in limits {
            if let Some(value) = value {
                *limit = value.value;
            }
        }
        if let Some(retry_budget) = &thresholds.retry_budget {
            budget = Some(
                self::retry_budget(retry_budget)
                    .map_err(|e| e.within(&format!("{at}.retry_budget")))?,
            );
        }
    }
    let budget = match budget {
        Some(budget) => {
            spec.max_retries = u32::MAX;
            budget
        }
        None => RetryBudgetSpec {
            budget_percent: 100.0,
            min_retry_concurrency: u32::MAX,
        },
    };
    Ok((spec, budget))
}

/// A retry budget, with Envoy's defaults (20%, 3); a `budget_interval` is refused.
fn retry_budget(budget: &RetryBudget) -> Result<RetryBudgetSpec, InvalidResource> {
    refuse_set!("", budget, [budget_interval]);
    let mut spec = RetryBudgetSpec::default();
    if let Some(percent) = &budget.budget_percent {
        if !(0.0..=100.0).contains(&percent.value) {
            return Err(InvalidResource::new(
                "budget_percent",
                format!("{} is not a percentage from 0 to 100", percent.value),
            ));
        }
        spec.budget_percent = percent.value;
    }
    if let Some(concurrency) = &budget.min_retry_concurrency {
        spec.min_retry_concurrency = concurrency.value;
    }
    Ok(spec)
}

/// Consecutive failures, the sweep interval, the ejection time and the most ejected. Enforced
/// gateway-failure and failure-percentage detection is refused; success-rate detection (on by
/// default in Envoy, so nearly always "set") is ignored.
fn outlier_detection(outlier: &OutlierDetection) -> Result<OutlierDetectionSpec, InvalidResource> {
    let at = "outlier_detection";
    refuse_set!(at, outlier, [split_external_local_origin_errors, monitors]);
    let enforced = |value: &Option<UInt32Value>| value.as_ref().is_some_and(|v| v.value > 0);
    for (field, on) in [
        (
            "enforcing_consecutive_gateway_failure",
            enforced(&outlier.enforcing_consecutive_gateway_failure),
        ),
        (
            "enforcing_failure_percentage",
            enforced(&outlier.enforcing_failure_percentage),
        ),
    ] {
        if on {
            return Err(InvalidResource::new(
                format!("{at}.{field}"),
                "only consecutive failures eject endpoints in metaprotocol-rs",
            ));
        }
    }
    let mut spec: OutlierDetectionSpec = serde_json::from_value(serde_json::json!({}))
        .map_err(|err| InvalidResource::new(at, err.to_string()))?;
    if let Some(errors) = &outlier.consecutive_5xx {
        spec.consecutive_errors = errors.value;
    }
    if let Some(interval) = &outlier.interval {
        spec.interval = duration(interval, "outlier_detection.interval")?;
    }
    if let Some(time) = &outlier.base_ejection_time {
        spec.base_ejection_time = duration(time, "outlier_detection.base_ejection_time")?;
    }
    if let Some(percent) = &outlier.max_ejection_percent {
        spec.max_ejection_percent = f64::from(percent.value);
    }
    match &outlier.max_ejection_time {
        Some(time) => {
            spec.max_ejection_time = duration(time, "outlier_detection.max_ejection_time")?;
        }
        // Envoy's default: 300 s, or the base ejection time when that is longer.
        None => spec.max_ejection_time = spec.max_ejection_time.max(spec.base_ejection_time),
    }
    Ok(spec)
}
