//! Metrics: Prometheus counters, gauges and histograms, registered by each component in its own
//! [`MetricsScope`] and exposed together.
//!
//! A scope is a set of labels (`listener="in"`, `cluster="backend"` ...); a component asks its
//! scope for handles once, when it is built, so that the request path only touches atomics.
//! When a component goes away (a route removed, a cluster deleted) its scope is retired and its
//! series disappear from the exposition. [`Metrics::render`] produces the text exposition the
//! admin API serves; [`Metrics::collector`] lets an embedder expose the same series through a
//! `prometheus_client::registry::Registry` of its own.

mod components;
mod histogram;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use metaprotocol_core::CodecFactory;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) use components::{ClusterStats, ListenerStats, RouteStats};
pub use histogram::DurationHistogram;

/// The prefix of every series name.
const PREFIX: &str = "metaprotocol";

/// A series' labels, in the order they are printed.
pub type Labels = Vec<(String, String)>;

/// Builds histograms with one family's buckets.
#[derive(Clone, Debug)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<DurationHistogram> for Buckets {
    fn new_metric(&self) -> DurationHistogram {
        DurationHistogram::new(&self.0)
    }
}

/// One metric family of any type.
#[derive(Clone, Debug)]
enum AnyFamily {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    Histogram(Family<Labels, DurationHistogram, Buckets>),
    /// A gauge without labels (proxy-wide), printed without an empty `{}`.
    UnlabeledGauge(Gauge),
}

impl AnyFamily {
    fn remove(&self, labels: &Labels) {
        match self {
            Self::Counter(f) => f.remove(labels),
            Self::Gauge(f) => f.remove(labels),
            Self::Histogram(f) => f.remove(labels),
            Self::UnlabeledGauge(_) => false,
        };
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Self::Counter(_) => MetricType::Counter,
            Self::Gauge(_) | Self::UnlabeledGauge(_) => MetricType::Gauge,
            Self::Histogram(_) => MetricType::Histogram,
        }
    }
}

#[derive(Debug)]
struct Registered {
    help: String,
    family: AnyFamily,
}

#[derive(Default)]
struct Inner {
    /// Families by name (without the prefix); locked only when components are built, retired
    /// or scraped, never on the request path.
    families: Mutex<BTreeMap<String, Registered>>,
    /// The codecs whose own counters ([`CodecFactory::counters`]) are exported, one per protocol.
    codecs: Mutex<Vec<Arc<dyn CodecFactory>>>,
}

/// Every metric of one proxy. Cheap to clone; clones share the series.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Metrics {
    /// An empty set of metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// The scope with no labels, for proxy-wide series.
    pub fn root(&self) -> MetricsScope {
        MetricsScope {
            metrics: self.clone(),
            labels: Arc::new(Vec::new()),
            owned: Arc::default(),
        }
    }

    /// The OpenMetrics text exposition of every series.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.collector()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// A collector of every series, for an embedder's own registry:
    /// `registry.register_collector(Box::new(proxy.metrics().collector()))`.
    pub fn collector(&self) -> MetricsCollector {
        MetricsCollector {
            metrics: self.clone(),
        }
    }

    /// Exports the counters of `codec`'s protocol (once per protocol).
    pub fn watch_codec(&self, codec: &Arc<dyn CodecFactory>) {
        let mut codecs = lock(&self.inner.codecs);
        if !codecs.iter().any(|c| c.protocol() == codec.protocol()) {
            codecs.push(codec.clone());
        }
    }

    fn family(&self, name: &str, help: &str, make: impl FnOnce() -> AnyFamily) -> AnyFamily {
        let mut families = lock(&self.inner.families);
        families
            .entry(name.to_owned())
            .or_insert_with(|| Registered {
                help: help.to_owned(),
                family: make(),
            })
            .family
            .clone()
    }

    fn remove_series(&self, owned: &[(String, Labels)]) {
        let families = lock(&self.inner.families);
        for (name, labels) in owned {
            if let Some(registered) = families.get(name) {
                registered.family.remove(labels);
            }
        }
    }
}

/// A [`Collector`] of a proxy's series (see [`Metrics::collector`]).
#[derive(Debug)]
pub struct MetricsCollector {
    metrics: Metrics,
}

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families: Vec<(String, String, AnyFamily)> = lock(&self.metrics.inner.families)
            .iter()
            .map(|(name, r)| (name.clone(), r.help.clone(), r.family.clone()))
            .collect();
        for (name, help, family) in families {
            let name = format!("{PREFIX}_{name}");
            let metric = encoder.encode_descriptor(&name, &help, None, family.metric_type())?;
            match &family {
                AnyFamily::Counter(f) => f.encode(metric)?,
                AnyFamily::Gauge(f) => f.encode(metric)?,
                AnyFamily::Histogram(f) => f.encode(metric)?,
                AnyFamily::UnlabeledGauge(g) => g.encode(metric)?,
            }
        }
        let codecs = lock(&self.metrics.inner.codecs).clone();
        for codec in codecs {
            for counter in codec.counters() {
                let name = format!("{PREFIX}_codec_{}", counter.name);
                let mut metric =
                    encoder.encode_descriptor(&name, counter.help, None, MetricType::Counter)?;
                let labels = [("protocol", codec.protocol())];
                ConstCounter::new(counter.value).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Where a component registers its series: a set of labels every series of the component
/// carries. Handles are created once, when the component is built.
#[derive(Clone)]
pub struct MetricsScope {
    metrics: Metrics,
    labels: Arc<Labels>,
    /// Every series created through this scope and its children, for [`MetricsScope::retire`].
    owned: Arc<Mutex<Vec<(String, Labels)>>>,
}

impl std::fmt::Debug for MetricsScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsScope")
            .field("labels", &self.labels)
            .finish()
    }
}

impl MetricsScope {
    /// The scope's labels.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// A child scope with one more label; the child's series are retired with this scope's.
    pub fn with_label(&self, key: &str, value: &str) -> MetricsScope {
        let mut labels = Labels::clone(&self.labels);
        labels.push((key.to_owned(), value.to_owned()));
        MetricsScope {
            metrics: self.metrics.clone(),
            labels: Arc::new(labels),
            owned: self.owned.clone(),
        }
    }

    /// A new, independently retired scope with this scope's labels plus `key="value"`.
    pub fn detached(&self, key: &str, value: &str) -> MetricsScope {
        MetricsScope {
            owned: Arc::default(),
            ..self.with_label(key, value)
        }
    }

    /// The counter `name` (exposed as `metaprotocol_<name>_total`) with this scope's labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, help, &[])
    }

    /// The counter `name` with this scope's labels plus `extra` (a reason, an outcome ...).
    pub fn counter_with(&self, name: &str, help: &str, extra: &[(&str, &str)]) -> Counter {
        let labels = self.series(name, extra);
        match self
            .metrics
            .family(name, help, || AnyFamily::Counter(Family::default()))
        {
            AnyFamily::Counter(family) => family.get_or_create_owned(&labels),
            _ => Counter::default(),
        }
    }

    /// The gauge `name` with this scope's labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        if self.labels.is_empty() {
            return match self
                .metrics
                .family(name, help, || AnyFamily::UnlabeledGauge(Gauge::default()))
            {
                AnyFamily::UnlabeledGauge(gauge) => gauge,
                _ => Gauge::default(),
            };
        }
        self.gauge_with(name, help, &[])
    }

    /// The gauge `name` with this scope's labels plus `extra`.
    pub fn gauge_with(&self, name: &str, help: &str, extra: &[(&str, &str)]) -> Gauge {
        let labels = self.series(name, extra);
        match self
            .metrics
            .family(name, help, || AnyFamily::Gauge(Family::default()))
        {
            AnyFamily::Gauge(family) => family.get_or_create_owned(&labels),
            _ => Gauge::default(),
        }
    }

    /// The duration histogram `name` (in seconds) with this scope's labels; `buckets` (upper
    /// bounds in seconds) are used when the family is first registered (every series of a
    /// family shares them).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> DurationHistogram {
        let labels = self.series(name, &[]);
        let constructor = Buckets(buckets.into());
        match self.metrics.family(name, help, || {
            AnyFamily::Histogram(Family::new_with_constructor(constructor.clone()))
        }) {
            AnyFamily::Histogram(family) => family.get_or_create_owned(&labels),
            _ => constructor.new_metric(),
        }
    }

    /// Removes every series created through this scope and its children.
    pub fn retire(&self) {
        let owned = std::mem::take(&mut *lock(&self.owned));
        self.metrics.remove_series(&owned);
    }

    /// The full label set of a series, remembered for retirement.
    fn series(&self, name: &str, extra: &[(&str, &str)]) -> Labels {
        let mut labels = Labels::clone(&self.labels);
        labels.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        lock(&self.owned).push((name.to_owned(), labels.clone()));
        labels
    }
}

/// Latency buckets at round values from 0.5 ms to 10 s, in seconds: readable as SLOs.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
    fn scopes_label_their_series_and_retire_them() {
        let metrics = Metrics::new();
        let listener = metrics.root().detached("listener", "in");
        listener
            .counter_with("local_replies", "Local replies", &[("reason", "timeout")])
            .inc();
        listener.gauge("downstream_cx_active", "Open").inc();
        let other = metrics.root().detached("listener", "other");
        other.counter("downstream_rq", "Requests").inc_by(2);
        let text = metrics.render();
        assert!(
            text.contains("metaprotocol_local_replies_total{listener=\"in\",reason=\"timeout\"} 1")
        );
        assert!(text.contains("metaprotocol_downstream_cx_active{listener=\"in\"} 1"));
        assert!(text.contains("metaprotocol_downstream_rq_total{listener=\"other\"} 2"));
        listener.retire();
        let text = metrics.render();
        assert!(!text.contains("listener=\"in\""), "{text}");
        assert!(text.contains("listener=\"other\""));
    }

    #[test]
    fn an_embedder_registry_exposes_the_same_series() {
        let metrics = Metrics::new();
        metrics
            .root()
            .detached("cluster", "backend")
            .counter("upstream_rq", "Attempts")
            .inc();
        let mut registry = Registry::with_prefix("app");
        registry.register_collector(Box::new(metrics.collector()));
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        assert!(
            text.contains("app_metaprotocol_upstream_rq_total{cluster=\"backend\"} 1"),
            "{text}"
        );
    }
}
