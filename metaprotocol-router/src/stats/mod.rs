//! Metrics: Prometheus counters, gauges and histograms, with handles resolved once per listener,
//! cluster and route so that the request path only touches atomics.

use std::sync::{Arc, Mutex};

use metaprotocol_core::{CodecFactory, LocalReplyKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of listener metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// Labels of listener metrics split by a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: String,
    reason: String,
}

/// Labels of cluster metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// Labels of route metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route_config: String,
    route: String,
}

/// Labels of upstream responses by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterOutcomeLabels {
    cluster: String,
    outcome: String,
}

/// The codecs whose own counters ([`CodecFactory::counters`]) are exported, one per protocol.
#[derive(Default)]
struct CodecCounters {
    factories: Mutex<Vec<Arc<dyn CodecFactory>>>,
}

impl std::fmt::Debug for CodecCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodecCounters")
    }
}

impl Collector for CodecCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let factories = match self.factories.lock() {
            Ok(factories) => factories.clone(),
            Err(_) => return Ok(()),
        };
        for factory in factories {
            for counter in factory.counters() {
                let name = format!("codec_{}", counter.name);
                let mut metric =
                    encoder.encode_descriptor(&name, counter.help, None, MetricType::Counter)?;
                let labels = [("protocol", factory.protocol())];
                ConstCounter::new(counter.value).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Every metric family of one proxy, and the registry that exposes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    codec_counters: Arc<CodecCounters>,
    downstream_cx_total: Family<ListenerLabels, Counter>,
    downstream_cx_active: Family<ListenerLabels, Gauge>,
    downstream_rq_total: Family<ListenerLabels, Counter>,
    downstream_rq_active: Family<ListenerLabels, Gauge>,
    downstream_rq_oneway: Family<ListenerLabels, Counter>,
    downstream_heartbeats: Family<ListenerLabels, Counter>,
    downstream_protocol_errors: Family<ListenerReasonLabels, Counter>,
    local_replies: Family<ListenerReasonLabels, Counter>,
    route_rq_total: Family<RouteLabels, Counter>,
    upstream_rq_total: Family<ClusterLabels, Counter>,
    upstream_rq_responses: Family<ClusterOutcomeLabels, Counter>,
    upstream_rq_retry: Family<ClusterLabels, Counter>,
    upstream_rq_timeout: Family<ClusterLabels, Counter>,
    upstream_rq_time: Family<ClusterLabels, Histogram>,
    upstream_cx_total: Family<ClusterLabels, Counter>,
    upstream_cx_active: Family<ClusterLabels, Gauge>,
    upstream_cx_connect_fail: Family<ClusterLabels, Counter>,
    upstream_cx_protocol_errors: Family<ClusterLabels, Counter>,
    upstream_unmatched_responses: Family<ClusterLabels, Counter>,
    config_reloads: Family<OutcomeLabels, Counter>,
}

/// Labels of config reloads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s in doublings: loopback hops to slow backends.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Metrics {
    /// Registers every metric family under the `metaprotocol` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("metaprotocol");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            codec_counters: Arc::default(),
            downstream_cx_total: Family::default(),
            downstream_cx_active: Family::default(),
            downstream_rq_total: Family::default(),
            downstream_rq_active: Family::default(),
            downstream_rq_oneway: Family::default(),
            downstream_heartbeats: Family::default(),
            downstream_protocol_errors: Family::default(),
            local_replies: Family::default(),
            route_rq_total: Family::default(),
            upstream_rq_total: Family::default(),
            upstream_rq_responses: Family::default(),
            upstream_rq_retry: Family::default(),
            upstream_rq_timeout: Family::default(),
            upstream_rq_time: Family::new_with_constructor(latency_histogram),
            upstream_cx_total: Family::default(),
            upstream_cx_active: Family::default(),
            upstream_cx_connect_fail: Family::default(),
            upstream_cx_protocol_errors: Family::default(),
            upstream_unmatched_responses: Family::default(),
            config_reloads: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "downstream_cx",
            "Client connections accepted",
            m.downstream_cx_total.clone(),
        );
        r.register(
            "downstream_cx_active",
            "Client connections open",
            m.downstream_cx_active.clone(),
        );
        r.register(
            "downstream_rq",
            "Requests received (two-way and one-way)",
            m.downstream_rq_total.clone(),
        );
        r.register(
            "downstream_rq_active",
            "Requests in flight",
            m.downstream_rq_active.clone(),
        );
        r.register(
            "downstream_rq_oneway",
            "One-way requests received",
            m.downstream_rq_oneway.clone(),
        );
        r.register(
            "downstream_heartbeats",
            "Heartbeats answered locally",
            m.downstream_heartbeats.clone(),
        );
        r.register(
            "downstream_protocol_errors",
            "Client connections closed for malformed input, by reason",
            m.downstream_protocol_errors.clone(),
        );
        r.register(
            "local_replies",
            "Requests answered by the proxy itself, by reason",
            m.local_replies.clone(),
        );
        r.register(
            "route_rq",
            "Requests matched, by route",
            m.route_rq_total.clone(),
        );
        r.register(
            "upstream_rq",
            "Requests sent upstream (attempts)",
            m.upstream_rq_total.clone(),
        );
        r.register(
            "upstream_rq_responses",
            "Upstream responses by outcome (ok, application_error, server_error)",
            m.upstream_rq_responses.clone(),
        );
        r.register(
            "upstream_rq_retry",
            "Retried attempts",
            m.upstream_rq_retry.clone(),
        );
        r.register(
            "upstream_rq_timeout",
            "Attempts that timed out",
            m.upstream_rq_timeout.clone(),
        );
        r.register(
            "upstream_rq_time_seconds",
            "Upstream round-trip time",
            m.upstream_rq_time.clone(),
        );
        r.register(
            "upstream_cx",
            "Upstream connections opened",
            m.upstream_cx_total.clone(),
        );
        r.register(
            "upstream_cx_active",
            "Upstream connections open",
            m.upstream_cx_active.clone(),
        );
        r.register(
            "upstream_cx_connect_fail",
            "Upstream connection failures",
            m.upstream_cx_connect_fail.clone(),
        );
        r.register(
            "upstream_cx_protocol_errors",
            "Upstream connections closed for malformed input",
            m.upstream_cx_protocol_errors.clone(),
        );
        r.register(
            "upstream_unmatched_responses",
            "Upstream responses whose id matched no request in flight (dropped)",
            m.upstream_unmatched_responses.clone(),
        );
        r.register(
            "config_reloads",
            "Config updates (file reloads and admin route config updates), by outcome",
            m.config_reloads.clone(),
        );
        r.register_collector(Box::new(m.codec_counters.clone()));
        if let Ok(mut slot) = m.registry.lock() {
            *slot = registry;
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }

    /// The handles of listener `name`.
    pub fn listener(&self, name: &str) -> ListenerStats {
        let labels = ListenerLabels {
            listener: name.to_owned(),
        };
        let reason = |family: &Family<ListenerReasonLabels, Counter>, reason: &str| {
            family
                .get_or_create(&ListenerReasonLabels {
                    listener: name.to_owned(),
                    reason: reason.to_owned(),
                })
                .clone()
        };
        ListenerStats {
            cx_total: self.downstream_cx_total.get_or_create(&labels).clone(),
            cx_active: self.downstream_cx_active.get_or_create(&labels).clone(),
            rq_total: self.downstream_rq_total.get_or_create(&labels).clone(),
            rq_active: self.downstream_rq_active.get_or_create(&labels).clone(),
            rq_oneway: self.downstream_rq_oneway.get_or_create(&labels).clone(),
            heartbeats: self.downstream_heartbeats.get_or_create(&labels).clone(),
            protocol_errors: ["frame_too_large", "malformed", "unsupported", "encode"]
                .map(|r| reason(&self.downstream_protocol_errors, r)),
            local_replies: LocalReplyKind::ALL.map(|k| reason(&self.local_replies, k.name())),
        }
    }

    /// The handles of cluster `name`.
    pub fn cluster(&self, name: &str) -> ClusterStats {
        let labels = ClusterLabels {
            cluster: name.to_owned(),
        };
        let outcome = |o: &str| {
            self.upstream_rq_responses
                .get_or_create(&ClusterOutcomeLabels {
                    cluster: name.to_owned(),
                    outcome: o.to_owned(),
                })
                .clone()
        };
        ClusterStats {
            rq_total: self.upstream_rq_total.get_or_create(&labels).clone(),
            rq_ok: outcome("ok"),
            rq_application_error: outcome("application_error"),
            rq_server_error: outcome("server_error"),
            rq_retry: self.upstream_rq_retry.get_or_create(&labels).clone(),
            rq_timeout: self.upstream_rq_timeout.get_or_create(&labels).clone(),
            rq_time: self.upstream_rq_time.get_or_create(&labels).clone(),
            cx_total: self.upstream_cx_total.get_or_create(&labels).clone(),
            cx_active: self.upstream_cx_active.get_or_create(&labels).clone(),
            cx_connect_fail: self.upstream_cx_connect_fail.get_or_create(&labels).clone(),
            cx_protocol_errors: self
                .upstream_cx_protocol_errors
                .get_or_create(&labels)
                .clone(),
            unmatched_responses: self
                .upstream_unmatched_responses
                .get_or_create(&labels)
                .clone(),
        }
    }

    /// Exports the counters of `codec`'s protocol (once per protocol).
    pub fn watch_codec(&self, codec: &Arc<dyn CodecFactory>) {
        if let Ok(mut factories) = self.codec_counters.factories.lock()
            && !factories.iter().any(|f| f.protocol() == codec.protocol())
        {
            factories.push(codec.clone());
        }
    }

    /// Counts a config update that was applied or rejected.
    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Removes the series of a route that no table has any more.
    pub fn forget_route(&self, route_config: &str, route: &str) {
        self.route_rq_total.remove(&RouteLabels {
            route_config: route_config.to_owned(),
            route: route.to_owned(),
        });
    }

    /// The request counter of route `route` in route config `route_config`.
    pub fn route(&self, route_config: &str, route: &str) -> Counter {
        self.route_rq_total
            .get_or_create(&RouteLabels {
                route_config: route_config.to_owned(),
                route: route.to_owned(),
            })
            .clone()
    }
}

/// Resolved metric handles of one listener.
#[derive(Clone, Debug)]
pub struct ListenerStats {
    /// Connections accepted.
    pub cx_total: Counter,
    /// Connections open.
    pub cx_active: Gauge,
    /// Requests received.
    pub rq_total: Counter,
    /// Requests in flight.
    pub rq_active: Gauge,
    /// One-way requests received.
    pub rq_oneway: Counter,
    /// Heartbeats answered.
    pub heartbeats: Counter,
    /// Connections closed for bad input, indexed like [`ListenerStats::protocol_error`].
    protocol_errors: [Counter; 4],
    /// Local replies, indexed by [`LocalReplyKind::ALL`] order.
    local_replies: [Counter; LocalReplyKind::ALL.len()],
}

impl ListenerStats {
    /// The counter of connections closed for `error`.
    pub fn protocol_error(&self, error: &metaprotocol_core::CodecError) -> &Counter {
        let index = match error.counter_name() {
            "frame_too_large" => 0,
            "malformed" => 1,
            "unsupported" => 2,
            _ => 3,
        };
        &self.protocol_errors[index]
    }

    /// The counter of local replies of `kind`.
    pub fn local_reply(&self, kind: LocalReplyKind) -> &Counter {
        let index = LocalReplyKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(LocalReplyKind::ALL.len() - 1);
        &self.local_replies[index]
    }
}

/// Resolved metric handles of one cluster.
#[derive(Clone, Debug)]
pub struct ClusterStats {
    /// Attempts sent.
    pub rq_total: Counter,
    /// Responses that succeeded.
    pub rq_ok: Counter,
    /// Responses carrying a declared application exception.
    pub rq_application_error: Counter,
    /// Responses reporting a server failure.
    pub rq_server_error: Counter,
    /// Retried attempts.
    pub rq_retry: Counter,
    /// Attempts that timed out.
    pub rq_timeout: Counter,
    /// Round-trip time of answered attempts, in seconds.
    pub rq_time: Histogram,
    /// Connections opened.
    pub cx_total: Counter,
    /// Connections open.
    pub cx_active: Gauge,
    /// Failed connection attempts.
    pub cx_connect_fail: Counter,
    /// Connections closed for malformed upstream input.
    pub cx_protocol_errors: Counter,
    /// Responses matching no request in flight.
    pub unmatched_responses: Counter,
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::{Codec, CodecCounter, Side, WireVariant};

    use super::*;

    /// A protocol that only counts.
    struct Counting;

    impl CodecFactory for Counting {
        fn protocol(&self) -> &'static str {
            "counting"
        }

        fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
            unimplemented!("never called: only counters are read")
        }

        fn counters(&self) -> Vec<CodecCounter> {
            vec![CodecCounter {
                name: "widgets",
                help: "Widgets seen",
                value: 3,
            }]
        }
    }

    #[test]
    fn codec_counters_are_exported_once_per_protocol() {
        let metrics = Metrics::new();
        let codec: Arc<dyn CodecFactory> = Arc::new(Counting);
        metrics.watch_codec(&codec);
        metrics.watch_codec(&codec);
        let text = metrics.render();
        assert!(
            text.contains("metaprotocol_codec_widgets_total{protocol=\"counting\"} 3"),
            "{text}"
        );
        assert_eq!(text.matches("# HELP metaprotocol_codec_widgets").count(), 1);
    }

    #[test]
    fn handles_feed_the_exposition() {
        let metrics = Metrics::new();
        let listener = metrics.listener("in");
        listener.local_reply(LocalReplyKind::RouteNotFound).inc();
        listener
            .protocol_error(&metaprotocol_core::CodecError::malformed("x"))
            .inc();
        metrics.cluster("backend").rq_total.inc();
        let text = metrics.render();
        assert!(text.contains(
            "metaprotocol_local_replies_total{listener=\"in\",reason=\"route_not_found\"} 1"
        ));
        assert!(text.contains(
            "metaprotocol_downstream_protocol_errors_total{listener=\"in\",reason=\"malformed\"} 1"
        ));
        assert!(text.contains("metaprotocol_upstream_rq_total{cluster=\"backend\"} 1"));
    }
}
