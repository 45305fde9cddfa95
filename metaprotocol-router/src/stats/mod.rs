//! Metrics: Prometheus counters, gauges and histograms, registered by each component in its own
//! [`MetricsScope`] and exposed together.
//!
//! A scope is a set of labels (`listener="in"`, `cluster="backend"` ...); a component asks its
//! scope for handles once, when it is built, so that the request path only touches the handles:
//! a [`Counter`] or [`DurationHistogram`] adds to its thread's own cells ([`cells`]: a load and
//! a store, no atomic read-modify-write), and so does an [`UpDownCounter`] (a level only a scrape
//! reads: a listener's requests in flight); a gauge (which the engine also reads for its
//! decisions: requests in flight against a limit) is one atomic.
//! Series whose label values are only known at run time (a method, an outcome) are resolved the
//! first time each value is seen, in small bounded tables ([`interned`]). Registrations are
//! counted per series: when the component that registered a series goes away its scope is
//! retired, and a series nobody holds any more disappears from the exposition.
//!
//! [`Metrics::encode`] writes the Prometheus text format or OpenMetrics (the admin API picks by
//! `Accept`), process metrics included; [`Metrics::collector`] lets an embedder expose the
//! engine's series through a `prometheus_client::registry::Registry` of its own;
//! [`Metrics::snapshot`] reads every series as values (the demo's latency table, `/stats`).

mod cells;
mod components;
mod counter;
mod exposition;
mod histogram;
pub(crate) mod interned;
mod istio;
mod outcome;
mod process;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use metaprotocol_core::CodecFactory;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
/// A level set as a whole (what [`MetricsScope::gauge`] gives), for a value a component
/// computes rather than moves.
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub(crate) use components::{
    ClusterStats, Completion, EndpointStats, HealthStats, LazyRouteStats, ListenerStats, RouteStats,
};
pub use counter::{Counter, UpDownCounter};
pub use exposition::ExpositionFormat;
pub(crate) use exposition::write_labels;
pub(crate) use histogram::Unit;
pub use histogram::{DurationHistogram, HistogramSnapshot};
use istio::IstioReporters;
pub(crate) use istio::{IstioDestination, IstioReporter};
pub(crate) use outcome::{OUTCOMES, RequestOutcome};
use process::ProcessStats;

use crate::config::{IstioSpec, MetricsSpec};

/// The prefix of every series name but Istio's and the process'.
const PREFIX: &str = "metaprotocol";

/// A series' labels, in the order they are printed.
pub type Labels = Vec<(String, String)>;

/// What a family's series are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Counts of observations per bucket.
    Histogram,
}

/// One series' value at the moment of a [`Metrics::snapshot`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SeriesValue {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(i64),
    /// A histogram's counts.
    Histogram(HistogramSnapshot),
}

/// A family of series (one name, one help text, one kind) at one moment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FamilySnapshot {
    /// The exposed name (`metaprotocol_route_rq_time_seconds`), without the `_total` of
    /// counters' samples.
    pub name: String,
    /// What it measures.
    pub help: String,
    /// What its series are.
    pub kind: MetricKind,
    /// Every series: its labels and value, ordered by labels.
    pub series: Vec<(Labels, SeriesValue)>,
}

impl FamilySnapshot {
    /// The value of the series whose labels include every pair of `labels`.
    pub fn find(&self, labels: &[(&str, &str)]) -> impl Iterator<Item = &SeriesValue> {
        self.series
            .iter()
            .filter(move |(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, value)| value)
    }

    /// Each series' value of label `key` (for those that have it), with the series' value:
    /// which routes, methods or clusters have series, and their counts.
    pub fn by_label<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a SeriesValue)> + 'a {
        self.series.iter().filter_map(move |(labels, value)| {
            let (_, label) = labels.iter().find(|(k, _)| k == key)?;
            Some((label.as_str(), value))
        })
    }
}

/// Proxy-wide settings of the series, from the config's `metrics`.
#[derive(Clone, Debug)]
pub(crate) struct MetricsSettings {
    /// Upper bounds of latency histograms, in seconds.
    pub latency_buckets: Arc<[f64]>,
    /// Methods beyond those routes name that get a `method` label value of their own.
    pub method_label_limit: usize,
    /// The Istio-compatible series, when on.
    pub istio: Option<Arc<IstioSpec>>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self::from(&MetricsSpec::default())
    }
}

impl From<&MetricsSpec> for MetricsSettings {
    fn from(spec: &MetricsSpec) -> Self {
        Self {
            latency_buckets: spec.buckets().map(|d| d.as_secs_f64()).collect(),
            method_label_limit: spec.method_label_limit,
            istio: spec.istio.clone().map(Arc::new),
        }
    }
}

/// A family's kind, with what its series are built from.
#[derive(Clone, Debug)]
enum FamilyKind {
    Counter,
    Gauge,
    /// A gauge kept in per-thread cells.
    UpDown,
    Histogram {
        bounds: Arc<[f64]>,
        unit: Unit,
    },
}

impl FamilyKind {
    fn new_metric(&self) -> Metric {
        match self {
            Self::Counter => Metric::Counter(Counter::default()),
            Self::Gauge => Metric::Gauge(Gauge::default()),
            Self::UpDown => Metric::UpDown(UpDownCounter::default()),
            Self::Histogram { bounds, unit } => {
                Metric::Histogram(DurationHistogram::with_unit(bounds, *unit))
            }
        }
    }

    fn kind(&self) -> MetricKind {
        match self {
            Self::Counter => MetricKind::Counter,
            Self::Gauge | Self::UpDown => MetricKind::Gauge,
            Self::Histogram { .. } => MetricKind::Histogram,
        }
    }
}

/// A live series' handle.
#[derive(Clone, Debug)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    UpDown(UpDownCounter),
    Histogram(DurationHistogram),
}

impl Metric {
    fn value(&self) -> SeriesValue {
        match self {
            Self::Counter(c) => SeriesValue::Counter(c.get()),
            Self::Gauge(g) => SeriesValue::Gauge(g.get()),
            Self::UpDown(level) => SeriesValue::Gauge(level.get()),
            Self::Histogram(h) => SeriesValue::Histogram(h.snapshot()),
        }
    }
}

/// A series and how many registrations hold it.
#[derive(Debug)]
struct Series {
    metric: Metric,
    refs: usize,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: FamilyKind,
    /// Labels shared with scrapes, which take them out of the lock with the series' handles.
    series: BTreeMap<Arc<Labels>, Series>,
}

/// A family's series as a scrape copies them out of the registry's lock, to read their
/// values without it.
struct FamilyHandles {
    name: String,
    help: String,
    kind: MetricKind,
    series: Vec<(Arc<Labels>, Metric)>,
}

#[derive(Default)]
struct Inner {
    /// Families by exposed name; locked only when series are registered, retired or scraped:
    /// on the request path only when a series is first used (a route's first match, a method
    /// first seen), never after. A scrape holds it only to copy out the series' handles, and
    /// reads their values without it: reading tens of thousands of series takes long enough
    /// to stall a request that registers a series meanwhile.
    families: Mutex<BTreeMap<String, Family>>,
    /// The codecs whose own counters ([`CodecFactory::counters`]) are exported, one per protocol.
    codecs: Mutex<Vec<Arc<dyn CodecFactory>>>,
    settings: MetricsSettings,
    /// The Istio reporters alive, by destination.
    istio: IstioReporters,
}

/// Every metric of one proxy. Cheap to clone; clones share the series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_settings(MetricsSettings::default())
    }
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
    /// An empty set of metrics (with `metaprotocol_build_info`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Metrics shaped by `settings`.
    pub(crate) fn with_settings(settings: MetricsSettings) -> Self {
        let metrics = Self {
            inner: Arc::new(Inner {
                settings,
                ..Inner::default()
            }),
        };
        let build = build_labels();
        let labels: Vec<(&str, &str)> = build.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metrics
            .root()
            .gauge_with(
                "build_info",
                "The engine's version and build, as labels; always 1",
                &labels,
            )
            .set(1);
        metrics
    }

    pub(crate) fn settings(&self) -> &MetricsSettings {
        &self.inner.settings
    }

    /// The reporter of requests of `protocol` to `destination` in the Istio series `spec`
    /// describes: the live one if there is one, so that the series it resolved stay.
    pub(crate) fn istio_reporter(
        &self,
        spec: &IstioSpec,
        protocol: &str,
        destination: IstioDestination,
    ) -> Arc<IstioReporter> {
        self.inner.istio.reporter(self, spec, protocol, destination)
    }

    /// The scope with no labels, for proxy-wide series.
    pub fn root(&self) -> MetricsScope {
        MetricsScope {
            metrics: self.clone(),
            labels: Arc::new(Vec::new()),
            owned: Arc::default(),
        }
    }

    /// The OpenMetrics text exposition of every series, process metrics included.
    pub fn render(&self) -> String {
        self.encode(ExpositionFormat::OpenMetrics)
    }

    /// The text exposition of every series in `format`, process metrics included.
    pub fn encode(&self, format: ExpositionFormat) -> String {
        let families = self.snapshot();
        let process = ProcessStats::read()
            .map(|p| p.samples())
            .unwrap_or_default();
        let mut out = String::new();
        match format {
            ExpositionFormat::Prometheus => {
                exposition::write_prometheus(&mut out, &families, &process)
            }
            ExpositionFormat::OpenMetrics => {
                let mut registry = Registry::default();
                registry.register_collector(Box::new(Snapshot { families, process }));
                // Writing into a String cannot fail.
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
            }
        }
        out
    }

    /// A collector of the engine's series (process metrics left to the embedder's own), for an
    /// embedder's registry: `registry.register_collector(Box::new(proxy.metrics().collector()))`.
    pub fn collector(&self) -> MetricsCollector {
        MetricsCollector {
            metrics: self.clone(),
        }
    }

    /// Every series (but the process metrics) and its value now, families ordered by name.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        let handles: Vec<FamilyHandles> = lock(&self.inner.families)
            .iter()
            .map(|(name, family)| FamilyHandles {
                name: name.clone(),
                help: family.help.clone(),
                kind: family.kind.kind(),
                series: family
                    .series
                    .iter()
                    .map(|(labels, series)| (labels.clone(), series.metric.clone()))
                    .collect(),
            })
            .collect();
        let mut families: Vec<FamilySnapshot> = handles
            .into_iter()
            .map(|family| FamilySnapshot {
                name: family.name,
                help: family.help,
                kind: family.kind,
                series: family
                    .series
                    .into_iter()
                    .map(|(labels, metric)| (Labels::clone(&labels), metric.value()))
                    .collect(),
            })
            .collect();
        let mut codec_counters: BTreeMap<String, FamilySnapshot> = BTreeMap::new();
        for codec in lock(&self.inner.codecs).iter() {
            for counter in codec.counters() {
                let name = format!("{PREFIX}_codec_{}", counter.name);
                codec_counters
                    .entry(name.clone())
                    .or_insert_with(|| FamilySnapshot {
                        name,
                        help: counter.help.to_owned(),
                        kind: MetricKind::Counter,
                        series: Vec::new(),
                    })
                    .series
                    .push((
                        vec![("protocol".to_owned(), codec.protocol().to_owned())],
                        SeriesValue::Counter(counter.value),
                    ));
            }
        }
        // Families written under a name the registered ones (or a codec's counter taken
        // already) are written under would fail the scrape: the registered ones win.
        let registered = families.len();
        for family in codec_counters.into_values() {
            let kind_of = |name: &str| {
                // The registered families, in name order as the registry keeps them.
                let taken = &families[..registered];
                taken
                    .binary_search_by(|f| f.name.as_str().cmp(name))
                    .ok()
                    .map(|i| taken[i].kind)
                    .or_else(|| {
                        families[registered..]
                            .iter()
                            .find(|f| f.name == name)
                            .map(|f| f.kind)
                    })
            };
            if collides(kind_of, &family.name, family.kind) {
                tracing::warn!(
                    series = family.name,
                    "a codec's counter would be written under a name another series has; not exported"
                );
                continue;
            }
            families.push(family);
        }
        families.sort_by(|a, b| a.name.cmp(&b.name));
        families
    }

    /// The family named `name` (its exposed name, e.g. `metaprotocol_route_rq_time_seconds`).
    pub fn family(&self, name: &str) -> Option<FamilySnapshot> {
        self.snapshot().into_iter().find(|f| f.name == name)
    }

    /// Exports the counters of `codec`'s protocol (once per protocol). A factory without
    /// counters is not kept: it would keep what it holds (the files it watches) for good.
    pub fn watch_codec(&self, codec: &Arc<dyn CodecFactory>) {
        if codec.counters().is_empty() {
            return;
        }
        let mut codecs = lock(&self.inner.codecs);
        if !codecs.iter().any(|c| c.protocol() == codec.protocol()) {
            codecs.push(codec.clone());
        }
    }

    /// The series `name` with `labels` (one more registration of it), created if need be; a
    /// fresh unregistered metric if the name belongs to a family of another kind, or if a new
    /// family of that name would write a name another family writes ([`collides`]).
    fn register(&self, name: &str, help: &str, kind: FamilyKind, labels: &Labels) -> Metric {
        let mut families = lock(&self.inner.families);
        if !families.contains_key(name)
            && collides(
                |name| families.get(name).map(|f| f.kind.kind()),
                name,
                kind.kind(),
            )
        {
            tracing::warn!(
                series = name,
                "a series of this name would be written under a name another series has; not exported"
            );
            return kind.new_metric();
        }
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind: kind.clone(),
            series: BTreeMap::new(),
        });
        // By how its series are kept, not only how they are exposed: a gauge asked for as an
        // up-down counter (or the other way round) would be handed out unexported.
        if std::mem::discriminant(&family.kind) != std::mem::discriminant(&kind) {
            tracing::warn!(
                series = name,
                "a series of this name has another type; not exported"
            );
            return kind.new_metric();
        }
        let series = family
            .series
            .entry(Arc::new(labels.clone()))
            .or_insert_with(|| Series {
                metric: family.kind.new_metric(),
                refs: 0,
            });
        series.refs += 1;
        series.metric.clone()
    }

    /// One more registration of the counter `name` with `labels`, if some registration holds
    /// it already.
    fn register_existing_counter(&self, name: &str, labels: &Labels) -> Option<Counter> {
        let mut families = lock(&self.inner.families);
        let series = families.get_mut(name)?.series.get_mut(labels)?;
        let Metric::Counter(counter) = &series.metric else {
            return None;
        };
        series.refs += 1;
        Some(counter.clone())
    }

    /// Drops one registration of each series; a series with none left is removed.
    fn release(&self, owned: &[(String, Labels)]) {
        let mut families = lock(&self.inner.families);
        for (name, labels) in owned {
            let Some(family) = families.get_mut(name) else {
                continue;
            };
            if let Some(series) = family.series.get_mut(labels) {
                series.refs = series.refs.saturating_sub(1);
                if series.refs == 0 {
                    family.series.remove(labels);
                }
            }
            if family.series.is_empty() {
                families.remove(name);
            }
        }
    }
}

/// The suffixes of a histogram's samples.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// True if a family `name` of `kind` would write a name (its own, which OpenMetrics gives a
/// counter without `_total` and the Prometheus text format with it, or one of its samples')
/// that another family writes too, `kind_of` giving the kind of the family of a name, if one
/// has it: a counter `x` beside a gauge `x_total`, a histogram `h` beside a gauge `h_count`.
/// Both would be written with a `# HELP` and `# TYPE` of that name, which Prometheus refuses,
/// failing the whole scrape.
fn collides(kind_of: impl Fn(&str) -> Option<MetricKind>, name: &str, kind: MetricKind) -> bool {
    let written_by = |base: &str, kind: MetricKind| kind_of(base) == Some(kind);
    let writes = |written: &str| {
        kind_of(written).is_some()
            || written
                .strip_suffix("_total")
                .is_some_and(|base| written_by(base, MetricKind::Counter))
            || HISTOGRAM_SUFFIXES.iter().any(|suffix| {
                written
                    .strip_suffix(suffix)
                    .is_some_and(|base| written_by(base, MetricKind::Histogram))
            })
    };
    writes(name)
        || match kind {
            MetricKind::Counter => writes(&format!("{name}_total")),
            MetricKind::Gauge => false,
            MetricKind::Histogram => HISTOGRAM_SUFFIXES
                .iter()
                .any(|suffix| writes(&format!("{name}{suffix}"))),
        }
}

/// Series and process samples taken for one OpenMetrics encoding.
#[derive(Debug)]
struct Snapshot {
    families: Vec<FamilySnapshot>,
    process: Vec<process::ProcessSample>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        exposition::encode_families(&mut encoder, &self.families)?;
        exposition::encode_process(&mut encoder, &self.process)
    }
}

/// A [`Collector`] of a proxy's series (see [`Metrics::collector`]).
#[derive(Debug)]
pub struct MetricsCollector {
    metrics: Metrics,
}

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        exposition::encode_families(&mut encoder, &self.metrics.snapshot())
    }
}

/// Where a component registers its series: a set of labels every series of the component
/// carries. Handles are created once, when the component is built (or when a run-time label
/// value is first seen).
///
/// A series whose name another family has with another type, or whose family would be written
/// under a name another family is written under (a counter `x`, written `x_total`, beside a
/// gauge `x_total`; a histogram `h` beside a gauge `h_count`), gets a working handle that is not
/// exported, and a warning is logged: written, both would fail every scrape.
#[derive(Clone)]
pub struct MetricsScope {
    metrics: Metrics,
    labels: Arc<Labels>,
    /// Every registration made through this scope and its children, for
    /// [`MetricsScope::retire`].
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

    /// The proxy's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
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
        match self.register(&prefixed(name), help, FamilyKind::Counter, extra) {
            Metric::Counter(counter) => counter,
            _ => Counter::default(),
        }
    }

    /// The counter `name` with this scope's labels plus `extra` if some registration holds it
    /// already. A component that replaces another (a route rebuilt by an update, a listener's
    /// next context) takes over this way the series its predecessor resolved when their values
    /// first happened: held by the predecessor alone, they would go with it, and start again
    /// from 0 when their value next happened.
    pub(crate) fn existing_counter_with(
        &self,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Option<Counter> {
        let name = prefixed(name);
        let labels = self.labels_with(extra);
        let counter = self.metrics.register_existing_counter(&name, &labels)?;
        lock(&self.owned).push((name, labels));
        Some(counter)
    }

    /// True if series `name` with exactly this scope's labels exists: a predecessor of the
    /// component (the route an update replaces) registered it.
    pub(crate) fn has_series(&self, name: &str) -> bool {
        lock(&self.metrics.inner.families)
            .get(&prefixed(name))
            .is_some_and(|family| family.series.contains_key(&*self.labels))
    }

    /// The values label `key` takes among the series of `name` that carry this scope's labels
    /// first: the run-time label values (methods) a predecessor of the component resolved.
    pub(crate) fn label_values(&self, name: &str, key: &str) -> Vec<String> {
        let families = lock(&self.metrics.inner.families);
        let Some(family) = families.get(&prefixed(name)) else {
            return Vec::new();
        };
        family
            .series
            .keys()
            .filter_map(|labels| labels.strip_prefix(self.labels.as_slice()))
            .filter_map(|rest| rest.iter().find(|(k, _)| k == key))
            .map(|(_, value)| value.clone())
            .collect()
    }

    /// The gauge `name` with this scope's labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_with(name, help, &[])
    }

    /// The gauge `name` with this scope's labels plus `extra`.
    pub fn gauge_with(&self, name: &str, help: &str, extra: &[(&str, &str)]) -> Gauge {
        match self.register(&prefixed(name), help, FamilyKind::Gauge, extra) {
            Metric::Gauge(gauge) => gauge,
            _ => Gauge::default(),
        }
    }

    /// The up-down counter `name` (exposed as a gauge) with this scope's labels: for a level
    /// that the request path moves and nothing reads but a scrape.
    ///
    /// ```
    /// use metaprotocol_router::{Metrics, UpDownCounter};
    ///
    /// /// A filter's own level, kept in its struct (built once, in its factory).
    /// struct InFlight {
    ///     level: UpDownCounter,
    /// }
    ///
    /// let metrics = Metrics::new();
    /// let filter = InFlight {
    ///     level: metrics.root().up_down_counter("tenant_calls_active", "Calls in flight"),
    /// };
    /// filter.level.inc();
    /// filter.level.inc();
    /// filter.level.dec();
    /// assert_eq!(filter.level.get(), 1);
    /// assert!(metrics.render().contains("metaprotocol_tenant_calls_active 1"));
    /// ```
    pub fn up_down_counter(&self, name: &str, help: &str) -> UpDownCounter {
        match self.register(&prefixed(name), help, FamilyKind::UpDown, &[]) {
            Metric::UpDown(level) => level,
            _ => UpDownCounter::default(),
        }
    }

    /// The duration histogram `name` (in seconds) with this scope's labels; `buckets` (upper
    /// bounds in seconds) are used when the family is first registered (every series of a
    /// family shares them).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> DurationHistogram {
        let kind = FamilyKind::Histogram {
            bounds: buckets.into(),
            unit: Unit::Seconds,
        };
        self.histogram_of(&prefixed(name), help, kind, &[])
    }

    /// The duration histogram `name` with this scope's labels plus `extra`, with the proxy's
    /// latency buckets (`metrics.latency_buckets`).
    pub fn latency_histogram(
        &self,
        name: &str,
        help: &str,
        extra: &[(&str, &str)],
    ) -> DurationHistogram {
        let kind = FamilyKind::Histogram {
            bounds: self.metrics.settings().latency_buckets.clone(),
            unit: Unit::Seconds,
        };
        self.histogram_of(&prefixed(name), help, kind, extra)
    }

    /// The counter named exactly `name` (no prefix), with this scope's labels plus `extra`.
    pub(crate) fn foreign_counter(
        &self,
        name: &str,
        help: &str,
        extra: &[(&str, &str)],
    ) -> Counter {
        match self.register(name, help, FamilyKind::Counter, extra) {
            Metric::Counter(counter) => counter,
            _ => Counter::default(),
        }
    }

    /// The histogram named exactly `name` (no prefix), in `unit` with `bounds`, with this
    /// scope's labels plus `extra`.
    pub(crate) fn foreign_histogram(
        &self,
        name: &str,
        help: &str,
        (bounds, unit): (&[f64], Unit),
        extra: &[(&str, &str)],
    ) -> DurationHistogram {
        let kind = FamilyKind::Histogram {
            bounds: bounds.into(),
            unit,
        };
        self.histogram_of(name, help, kind, extra)
    }

    fn histogram_of(
        &self,
        name: &str,
        help: &str,
        kind: FamilyKind,
        extra: &[(&str, &str)],
    ) -> DurationHistogram {
        match self.register(name, help, kind, extra) {
            Metric::Histogram(histogram) => histogram,
            _ => DurationHistogram::default(),
        }
    }

    /// Removes this scope's (and its children's) hold on their series; series nobody else
    /// holds disappear. Idempotent.
    pub fn retire(&self) {
        let owned = std::mem::take(&mut *lock(&self.owned));
        self.metrics.release(&owned);
    }

    /// Registers the series `name` with this scope's labels plus `extra`.
    fn register(&self, name: &str, help: &str, kind: FamilyKind, extra: &[(&str, &str)]) -> Metric {
        let labels = self.labels_with(extra);
        let metric = self.metrics.register(name, help, kind, &labels);
        lock(&self.owned).push((name.to_owned(), labels));
        metric
    }

    /// This scope's labels plus `extra`.
    fn labels_with(&self, extra: &[(&str, &str)]) -> Labels {
        let mut labels = Labels::clone(&self.labels);
        labels.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        labels
    }
}

/// The engine's version and build: `metaprotocol_build_info`'s labels, `/server_info`'s `build`.
pub(crate) fn build_labels() -> [(&'static str, String); 4] {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    [
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("rust_version", env!("CARGO_PKG_RUST_VERSION").to_owned()),
        ("profile", profile.to_owned()),
        (
            "target",
            format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        ),
    ]
}

/// `metaprotocol_<name>`.
fn prefixed(name: &str) -> String {
    format!("{PREFIX}_{name}")
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::{Codec, CodecCounter, Side, WireVariant};

    use super::*;

    /// A protocol that only counts.
    struct Counting(&'static str);

    impl CodecFactory for Counting {
        fn protocol(&self) -> &'static str {
            self.0
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
    fn codec_counters_are_exported_once_per_protocol_in_one_family() {
        let metrics = Metrics::new();
        let codec: Arc<dyn CodecFactory> = Arc::new(Counting("counting"));
        metrics.watch_codec(&codec);
        metrics.watch_codec(&codec);
        metrics.watch_codec(&(Arc::new(Counting("other")) as Arc<dyn CodecFactory>));
        let text = metrics.render();
        assert!(
            text.contains("metaprotocol_codec_widgets_total{protocol=\"counting\"} 3"),
            "{text}"
        );
        assert!(text.contains("metaprotocol_codec_widgets_total{protocol=\"other\"} 3"));
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
        listener.retire();
        let text = metrics.render();
        assert!(!text.contains("listener=\"in\""), "{text}");
        assert!(
            !text.contains("local_replies"),
            "an empty family is gone: {text}"
        );
        assert!(text.contains("listener=\"other\""));
    }

    #[test]
    fn an_up_down_counter_is_exposed_as_a_gauge_and_kept_apart_from_gauges() {
        let metrics = Metrics::new();
        let listener = metrics.root().detached("listener", "in");
        let level = listener.up_down_counter("downstream_rq_active", "In flight");
        level.inc();
        level.inc();
        level.dec();
        let text = metrics.render();
        assert!(
            text.contains("# TYPE metaprotocol_downstream_rq_active gauge"),
            "{text}"
        );
        assert!(text.contains("metaprotocol_downstream_rq_active{listener=\"in\"} 1"));
        // The same name asked for as an atomic gauge is not the series: it is handed out
        // unexported, and the series keeps its level.
        let gauge = listener.gauge("downstream_rq_active", "In flight");
        gauge.inc_by(10);
        assert!(
            metrics
                .render()
                .contains("metaprotocol_downstream_rq_active{listener=\"in\"} 1")
        );
    }

    #[test]
    fn a_series_stays_while_any_registration_holds_it() {
        let metrics = Metrics::new();
        let old = metrics.root().detached("endpoint", "a");
        let new = metrics.root().detached("endpoint", "a");
        old.counter("upstream_rq", "Attempts").inc();
        let counter = new.counter("upstream_rq", "Attempts");
        counter.inc();
        old.retire();
        counter.inc();
        assert!(
            metrics
                .render()
                .contains("metaprotocol_upstream_rq_total{endpoint=\"a\"} 3")
        );
        new.retire();
        assert!(!metrics.render().contains("upstream_rq"));
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
        assert!(
            !text.contains("process_"),
            "process metrics are the embedder's: {text}"
        );
    }

    #[test]
    fn both_formats_carry_build_info_histograms_and_process_metrics() {
        let metrics = Metrics::new();
        let histogram =
            metrics
                .root()
                .latency_histogram("rq_time_seconds", "Time", &[("route", "r")]);
        histogram.observe(std::time::Duration::from_millis(3));
        let prometheus = metrics.encode(ExpositionFormat::Prometheus);
        let open = metrics.encode(ExpositionFormat::OpenMetrics);
        for text in [&prometheus, &open] {
            assert!(
                text.contains("metaprotocol_build_info{version=\""),
                "{text}"
            );
            let bucket = text.lines().find(|l| {
                l.starts_with("metaprotocol_rq_time_seconds_bucket{")
                    && l.contains("le=\"0.005\"")
                    && l.contains("route=\"r\"")
            });
            assert!(bucket.is_some_and(|l| l.ends_with("} 1")), "{text}");
            #[cfg(target_os = "linux")]
            assert!(text.contains("process_cpu_seconds_total"), "{text}");
        }
        assert!(open.ends_with("# EOF\n"));
        assert!(!prometheus.contains("# EOF"));
        assert!(prometheus.contains("# TYPE metaprotocol_build_info gauge"));
    }

    #[test]
    fn a_codec_counter_written_under_a_registered_series_name_is_left_out() {
        let metrics = Metrics::new();
        metrics
            .root()
            .gauge("codec_widgets_total", "Widgets, as a gauge")
            .set(7);
        metrics.watch_codec(&(Arc::new(Counting("counting")) as Arc<dyn CodecFactory>));
        let text = metrics.encode(ExpositionFormat::Prometheus);
        assert_eq!(
            text.matches("# TYPE metaprotocol_codec_widgets_total ")
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("metaprotocol_codec_widgets_total 7\n"),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_keeps_every_series_of_a_family_with_one_unlabelled() {
        let metrics = Metrics::new();
        metrics.root().counter("jobs", "Jobs").inc();
        metrics
            .root()
            .detached("queue", "q")
            .counter("jobs", "Jobs")
            .inc_by(2);
        for format in [ExpositionFormat::Prometheus, ExpositionFormat::OpenMetrics] {
            let text = metrics.encode(format);
            let samples: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("metaprotocol_jobs_total"))
                .collect();
            assert_eq!(samples.len(), 2, "{format:?}: {text}");
            assert!(
                samples
                    .iter()
                    .any(|l| l.contains("queue=\"q\"") && l.ends_with(" 2")),
                "{format:?}: {text}"
            );
        }
    }

    #[test]
    fn help_texts_are_escaped_in_both_formats() {
        let metrics = Metrics::new();
        metrics
            .root()
            .counter("widgets", "Widgets \"made\"\nby C:\\shop")
            .inc();
        let prometheus = metrics.encode(ExpositionFormat::Prometheus);
        assert!(
            prometheus
                .contains("# HELP metaprotocol_widgets_total Widgets \"made\"\\nby C:\\\\shop\n"),
            "{prometheus}"
        );
        let open = metrics.encode(ExpositionFormat::OpenMetrics);
        assert!(
            open.contains("# HELP metaprotocol_widgets Widgets \\\"made\\\"\\nby C:\\\\shop\n"),
            "{open}"
        );
    }

    #[test]
    fn a_route_first_request_does_not_wait_for_a_scrape_to_read_every_series() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        let metrics = Metrics::new();
        let bounds: Vec<f64> = (1..=100).map(|i| f64::from(i) / 1000.0).collect();
        let root = metrics.root();
        let histograms: Vec<DurationHistogram> = (0..10_000)
            .map(|i| {
                root.with_label("route", &i.to_string()).histogram(
                    "route_rq_time_seconds",
                    "Time",
                    &bounds,
                )
            })
            .collect();
        for histogram in &histograms {
            histogram.observe(Duration::from_millis(1));
        }
        let began = Instant::now();
        let _ = metrics.snapshot();
        let scrape = began.elapsed();
        let stop = AtomicBool::new(false);
        let mut waits = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = metrics.snapshot();
                }
            });
            let waits: Vec<Duration> = (0..15)
                .map(|i| {
                    // At times spread over the scrapes that follow each other meanwhile.
                    std::thread::sleep(scrape / 7);
                    let route = root.with_label("route", &format!("new-{i}"));
                    let asked = Instant::now();
                    if !route.has_series("route_rq") {
                        route.counter("route_rq", "Requests").inc();
                    }
                    asked.elapsed()
                })
                .collect();
            stop.store(true, Ordering::Relaxed);
            waits
        });
        waits.sort();
        let median = waits[waits.len() / 2];
        assert!(
            median < scrape / 10,
            "a first request waited {median:?} (median) for a scrape that takes {scrape:?}"
        );
    }

    #[test]
    fn snapshots_find_series_by_labels() {
        let metrics = Metrics::new();
        let scope = metrics.root().detached("route", "r");
        scope
            .counter_with("route_rq_completed", "Done", &[("outcome", "success")])
            .inc_by(4);
        let family = metrics.family("metaprotocol_route_rq_completed");
        let values: Vec<&SeriesValue> = family
            .as_ref()
            .map(|f| f.find(&[("route", "r"), ("outcome", "success")]).collect())
            .unwrap_or_default();
        assert_eq!(values, [&SeriesValue::Counter(4)]);
    }
}
