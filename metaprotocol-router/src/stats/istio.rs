//! Istio-compatible series, `istio_requests_total` and `istio_request_duration_milliseconds`,
//! with Istio's standard labels, so that Istio's dashboards and Kiali show the proxy's traffic.
//!
//! Labels come from the config's `metrics.istio` (the reporter, the source workload, static
//! destination labels), the endpoint's labels (`app`, `version` ...; see
//! [`IstioDestination::of_endpoint`]), the cluster's name (`destination_service`), the
//! protocol (`request_protocol`) and the request's outcome (`response_code`, mapped to the HTTP
//! status Istio would show, and `response_flags`). Each reporter (one per destination of a
//! cluster: its endpoints' label sets, and the cluster itself for requests that found no
//! endpoint; one per listener for requests that found no cluster) resolves a series the first
//! time a combination of outcome and flags happens, in a bounded table. A destination's reporter
//! passes from snapshot to snapshot and from context to context ([`IstioReporters`]), so that
//! those series outlive the snapshot or context that first counted in them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metaprotocol_core::{LocalReplyKind, ResponseFlags};

use super::interned::Interned;
use super::{DurationHistogram, Metrics, MetricsScope, RequestOutcome, Unit, lock};
use crate::config::{IstioSpec, IstioWorkloadSpec};
use crate::stats::Counter;

/// Istio's default duration buckets, in milliseconds.
const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Combinations of outcome and flags one reporter keeps series for; past this (far more than
/// the proxy's flags combine into) a request is not counted in the Istio series.
const MAX_COMBINATIONS: usize = 128;

/// Istio's word for a label it cannot fill.
const UNKNOWN: &str = "unknown";

/// The `destination_*` labels of a reporter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct IstioDestination {
    service: String,
    workload: String,
    namespace: String,
    app: String,
    version: String,
    canonical_service: String,
    canonical_revision: String,
    cluster: String,
    principal: String,
}

impl IstioDestination {
    /// Requests that reached no cluster.
    pub fn unknown(spec: &IstioSpec) -> Self {
        Self::new(&spec.destination, UNKNOWN, &BTreeMap::new())
    }

    /// Requests of cluster `cluster` that reached no endpoint.
    pub fn of_cluster(spec: &IstioSpec, cluster: &str) -> Self {
        Self::new(&spec.destination, cluster, &BTreeMap::new())
    }

    /// Requests sent to an endpoint of `cluster` with `labels`: each destination label the
    /// config does not set comes from the endpoint label of the same name.
    pub fn of_endpoint(spec: &IstioSpec, cluster: &str, labels: &BTreeMap<String, String>) -> Self {
        Self::new(&spec.destination, cluster, labels)
    }

    fn new(fixed: &IstioWorkloadSpec, service: &str, labels: &BTreeMap<String, String>) -> Self {
        let pick = |fixed: &Option<String>, label: &str| {
            fixed
                .clone()
                .or_else(|| labels.get(label).cloned())
                .unwrap_or_else(|| UNKNOWN.to_owned())
        };
        let app = pick(&fixed.app, "app");
        let version = pick(&fixed.version, "version");
        let canonical_service = fixed
            .canonical_service
            .clone()
            .or_else(|| labels.get("canonical_service").cloned())
            .unwrap_or_else(|| app.clone());
        let canonical_revision = fixed
            .canonical_revision
            .clone()
            .or_else(|| labels.get("canonical_revision").cloned())
            .unwrap_or_else(|| {
                if version == UNKNOWN {
                    "latest".to_owned()
                } else {
                    version.clone()
                }
            });
        Self {
            service: service.to_owned(),
            workload: pick(&fixed.workload, "workload"),
            namespace: pick(&fixed.namespace, "namespace"),
            app,
            version,
            canonical_service,
            canonical_revision,
            cluster: pick(&fixed.cluster, "cluster"),
            principal: pick(&fixed.principal, "principal"),
        }
    }
}

/// The series of one combination.
#[derive(Debug)]
struct IstioSeries {
    requests: Counter,
    duration: DurationHistogram,
}

/// What a combination is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Combination {
    outcome: RequestOutcome,
    flags: ResponseFlags,
    mutual_tls: bool,
}

/// Counts requests to one destination in the Istio series.
#[derive(Debug)]
pub(crate) struct IstioReporter {
    /// Retired when the reporter goes (with the snapshot or listener it belongs to).
    scope: MetricsScope,
    /// Every label but those of a [`Combination`], in Istio's order.
    base: Vec<(&'static str, String)>,
    table: Interned<Combination, IstioSeries>,
}

impl IstioReporter {
    /// A reporter of requests of `protocol` to `destination`.
    fn new(
        scope: &MetricsScope,
        spec: &IstioSpec,
        protocol: &str,
        destination: IstioDestination,
    ) -> Self {
        let source = &spec.source;
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.to_owned());
        let source_app = or_unknown(&source.app);
        let source_version = or_unknown(&source.version);
        let base = vec![
            ("reporter", spec.reporter.name().to_owned()),
            ("source_workload", or_unknown(&source.workload)),
            (
                "source_canonical_service",
                source
                    .canonical_service
                    .clone()
                    .unwrap_or(source_app.clone()),
            ),
            (
                "source_canonical_revision",
                source
                    .canonical_revision
                    .clone()
                    .unwrap_or(source_version.clone()),
            ),
            ("source_workload_namespace", or_unknown(&source.namespace)),
            ("source_principal", or_unknown(&source.principal)),
            ("source_app", source_app),
            ("source_version", source_version),
            ("source_cluster", or_unknown(&source.cluster)),
            ("destination_workload", destination.workload),
            (
                "destination_workload_namespace",
                destination.namespace.clone(),
            ),
            ("destination_principal", destination.principal),
            ("destination_app", destination.app),
            ("destination_version", destination.version),
            ("destination_service", destination.service.clone()),
            (
                "destination_canonical_service",
                destination.canonical_service,
            ),
            (
                "destination_canonical_revision",
                destination.canonical_revision,
            ),
            ("destination_service_name", destination.service),
            ("destination_service_namespace", destination.namespace),
            ("destination_cluster", destination.cluster),
            ("request_protocol", protocol.to_owned()),
        ];
        Self {
            scope: scope.metrics().root(),
            base,
            table: Interned::with_capacity(MAX_COMBINATIONS),
        }
    }

    /// Counts one request.
    pub fn record(
        &self,
        outcome: RequestOutcome,
        flags: ResponseFlags,
        mutual_tls: bool,
        duration: Duration,
    ) {
        let combination = Combination {
            outcome,
            flags,
            mutual_tls,
        };
        let series = self
            .table
            .get_or_insert_with(&combination, || (combination, self.series(&combination)));
        if let Some(series) = series {
            series.requests.inc();
            series.duration.observe(duration);
        }
    }

    fn series(&self, combination: &Combination) -> IstioSeries {
        let code = response_code(combination.outcome).to_string();
        let flags = combination.flags.to_string();
        let security = if combination.mutual_tls {
            "mutual_tls"
        } else {
            "none"
        };
        let labels: Vec<(&str, &str)> = self
            .base
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain([
                ("response_code", code.as_str()),
                ("grpc_response_status", ""),
                ("response_flags", flags.as_str()),
                ("connection_security_policy", security),
            ])
            .collect();
        IstioSeries {
            requests: self.scope.foreign_counter(
                "istio_requests",
                "Requests, as Istio counts them",
                &labels,
            ),
            duration: self.scope.foreign_histogram(
                "istio_request_duration_milliseconds",
                "Request durations, as Istio measures them",
                (&BUCKETS_MS, Unit::Milliseconds),
                &labels,
            ),
        }
    }
}

/// A proxy's live reporters, one per protocol and destination. A reporter holds the series it
/// resolved until it goes; whoever counts for a destination next (a cluster's next snapshot,
/// made by every update, health change and ejection; a listener's next context, made by a
/// reload) takes the live one, rather than a new one that would hold none of them: those
/// would go with the old snapshot or context, their counts with them (an error rate read
/// through `increase()` lost its errors), and start again from 0.
#[derive(Debug, Default)]
pub(super) struct IstioReporters {
    live: Mutex<Live>,
}

#[derive(Debug, Default)]
struct Live {
    by_destination: HashMap<(String, IstioDestination), Weak<IstioReporter>>,
    /// Entries of reporters gone are dropped when the map reaches this many.
    prune_at: usize,
}

/// The fewest entries at which a prune happens: prunes cost a pass over the map, so they
/// happen once it has doubled since the last.
const PRUNE_AT_LEAST: usize = 64;

impl IstioReporters {
    /// The live reporter of requests of `protocol` to `destination`, or a new one whose series
    /// are made in `metrics`.
    pub fn reporter(
        &self,
        metrics: &Metrics,
        spec: &IstioSpec,
        protocol: &str,
        destination: IstioDestination,
    ) -> Arc<IstioReporter> {
        let mut live = lock(&self.live);
        let key = (protocol.to_owned(), destination);
        if let Some(reporter) = live.by_destination.get(&key).and_then(Weak::upgrade) {
            return reporter;
        }
        if live.by_destination.len() >= live.prune_at {
            live.by_destination
                .retain(|_, reporter| reporter.strong_count() > 0);
            live.prune_at = (2 * live.by_destination.len()).max(PRUNE_AT_LEAST);
        }
        let reporter = Arc::new(IstioReporter::new(
            &metrics.root(),
            spec,
            protocol,
            key.1.clone(),
        ));
        live.by_destination.insert(key, Arc::downgrade(&reporter));
        reporter
    }
}

impl Drop for IstioReporter {
    fn drop(&mut self) {
        self.scope.retire();
    }
}

/// The HTTP status Istio would report for `outcome`: what Istio dashboards and Kiali count as
/// errors (5xx, and 4xx for the client's).
fn response_code(outcome: RequestOutcome) -> u16 {
    if outcome == RequestOutcome::SUCCESS || outcome == RequestOutcome::APPLICATION_ERROR {
        return 200;
    }
    if outcome == RequestOutcome::SERVER_ERROR {
        return 500;
    }
    match outcome.local_reply() {
        None => 0,
        Some(LocalReplyKind::RouteNotFound) => 404,
        Some(LocalReplyKind::OverLimit) => 429,
        Some(LocalReplyKind::Unauthorized) => 403,
        Some(LocalReplyKind::Timeout) => 504,
        Some(LocalReplyKind::BadRequest) => 400,
        Some(LocalReplyKind::Internal) => 500,
        Some(_) => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Metrics, SeriesValue};

    #[test]
    fn requests_are_counted_with_istios_labels() {
        let metrics = Metrics::new();
        let spec = IstioSpec {
            source: IstioWorkloadSpec {
                workload: Some("gateway".into()),
                namespace: Some("edge".into()),
                ..IstioWorkloadSpec::default()
            },
            ..IstioSpec::default()
        };
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "reviews".to_owned()),
            ("version".to_owned(), "v2".to_owned()),
        ]
        .into();
        let reporter = IstioReporter::new(
            &metrics.root(),
            &spec,
            "dubbo",
            IstioDestination::of_endpoint(&spec, "reviews", &labels),
        );
        let timeout = RequestOutcome::local(LocalReplyKind::Timeout);
        let flags = ResponseFlags::LOCAL_REPLY | ResponseFlags::UPSTREAM_TIMEOUT;
        reporter.record(
            RequestOutcome::SUCCESS,
            ResponseFlags::NONE,
            false,
            Duration::from_millis(2),
        );
        reporter.record(
            RequestOutcome::SUCCESS,
            ResponseFlags::NONE,
            false,
            Duration::from_millis(2),
        );
        reporter.record(timeout, flags, false, Duration::from_secs(2));
        let family = metrics.family("istio_requests");
        let count = |code: &str| {
            family
                .as_ref()
                .and_then(|f| f.find(&[("response_code", code)]).next().cloned())
        };
        assert_eq!(count("200"), Some(SeriesValue::Counter(2)));
        assert_eq!(count("504"), Some(SeriesValue::Counter(1)));
        let text = metrics.render();
        for label in [
            "reporter=\"source\"",
            "source_workload=\"gateway\"",
            "source_workload_namespace=\"edge\"",
            "destination_app=\"reviews\"",
            "destination_version=\"v2\"",
            "destination_canonical_service=\"reviews\"",
            "destination_canonical_revision=\"v2\"",
            "destination_service=\"reviews\"",
            "destination_workload=\"unknown\"",
            "request_protocol=\"dubbo\"",
            "response_flags=\"UT,LR\"",
            "connection_security_policy=\"none\"",
        ] {
            assert!(text.contains(label), "{label}: {text}");
        }
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
        drop(reporter);
        assert!(
            metrics.family("istio_requests").is_none(),
            "retired with its reporter"
        );
    }
}
