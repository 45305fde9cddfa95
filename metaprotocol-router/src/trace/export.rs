//! Exporting finished spans over OTLP/gRPC: the OpenTelemetry SDK's batch processor (a bounded
//! queue, a thread that exports in batches) in front of the OTLP exporter. The processor drops
//! what its full queue refuses without telling, so the queue's places are counted here too
//! ([`Backlog`]): a request takes places for its spans before building them, the exporter gives
//! them back as batches leave, and spans that find no place are dropped unbuilt and counted.
//! Listeners with the same collector settings share one exporter, across config updates too.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};

use crate::backlog::Backlog;
use crate::config::{ClusterTlsSpec, EndpointAddress, TracingSpec};
use crate::stats::Counter;
use crate::stats::{Metrics, MetricsScope};
use crate::transport::{GrpcTlsConnector, TlsConnector};

/// The settings that make two listeners' exporters the same.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ExporterKey {
    endpoint: String,
    tls: Option<ClusterTlsSpec>,
    service_name: String,
    max_queue_size: usize,
    max_export_batch_size: usize,
    export_interval: Duration,
    export_timeout: Duration,
}

impl From<&TracingSpec> for ExporterKey {
    fn from(spec: &TracingSpec) -> Self {
        Self {
            endpoint: spec.otlp_endpoint.clone(),
            tls: spec.tls.clone(),
            service_name: spec.service_name.clone(),
            max_queue_size: spec.max_queue_size,
            max_export_batch_size: spec.max_export_batch_size,
            export_interval: spec.export_interval,
            export_timeout: spec.export_timeout,
        }
    }
}

/// The gRPC channel to the `https://` collector of `spec`, over the engine's TLS with the
/// settings `tls` (the server name defaulting to the endpoint's host); its series (handshake
/// errors, certificate reloads) live in `scope`. It connects when the first export needs it.
fn tls_channel(
    spec: &TracingSpec,
    tls: &ClusterTlsSpec,
    scope: &MetricsScope,
) -> Result<tonic::transport::Channel, String> {
    let authority = spec
        .collector_authority()
        .ok_or_else(|| format!("`{}` is not https://host:port", spec.otlp_endpoint))?;
    let address: EndpointAddress = authority.parse()?;
    let tls = ClusterTlsSpec {
        server_name: Some(
            tls.server_name
                .clone()
                .unwrap_or_else(|| address.host().to_owned()),
        ),
        ..tls.clone()
    };
    let owner = format!("OTLP collector {authority}");
    let connector = TlsConnector::grpc(&tls, &owner, scope).map_err(|err| err.to_string())?;
    // `http`: the connector does the TLS (tonic refuses `https` without its own).
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|err| format!("`{}`: {err}", spec.otlp_endpoint))?
        .timeout(spec.export_timeout);
    Ok(endpoint.connect_with_connector_lazy(GrpcTlsConnector::new(
        connector,
        authority.to_owned(),
        spec.export_timeout,
    )))
}

/// Where finished spans go.
#[derive(Debug)]
pub(crate) struct SpanSink {
    processor: BatchSpanProcessor,
    /// The processor's queue's places.
    backlog: Arc<Backlog>,
    /// Spans dropped because the queue was full.
    dropped: Counter,
    /// The scope every span is reported under: the engine.
    instrumentation: InstrumentationScope,
    scope: MetricsScope,
}

impl SpanSink {
    /// Takes places for `spans` spans in the export queue, all or none: false (the spans are
    /// counted as dropped) when the queue has no room for them.
    pub fn reserve(&self, spans: usize) -> bool {
        let room = self.backlog.take(spans);
        if !room {
            self.dropped.inc_by(spans as u64);
        }
        room
    }

    /// Queues `span` for export, in a place [`SpanSink::reserve`] took.
    pub fn export(&self, span: SpanData) {
        self.processor.on_end(span);
    }

    /// The engine's instrumentation scope.
    pub fn instrumentation(&self) -> &InstrumentationScope {
        &self.instrumentation
    }

    /// Exports what is queued, waiting up to the processor's own limit.
    fn flush(&self) {
        if let Err(err) = self.processor.force_flush() {
            tracing::debug!(error = %err, "spans could not be flushed");
        }
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        self.scope.retire();
    }
}

/// The exporters of a proxy, by settings.
#[derive(Debug, Default)]
pub(crate) struct SpanSinks {
    sinks: Mutex<BTreeMap<ExporterKey, Weak<SpanSink>>>,
}

impl SpanSinks {
    /// The exporter `spec` describes, started if there is none. Needs a Tokio runtime (the
    /// gRPC channel lives on it).
    pub fn get(&self, spec: &TracingSpec, metrics: &Metrics) -> Result<Arc<SpanSink>, String> {
        let key = ExporterKey::from(spec);
        let mut sinks = self.lock();
        sinks.retain(|_, sink| sink.strong_count() > 0);
        if let Some(sink) = sinks.get(&key).and_then(Weak::upgrade) {
            return Ok(sink);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("the OTLP exporter needs a Tokio runtime".to_owned());
        }
        let scope = metrics.root().detached("collector", &key.endpoint);
        let builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&key.endpoint)
            .with_timeout(key.export_timeout);
        let builder = match &key.tls {
            Some(tls) => builder.with_channel(tls_channel(spec, tls, &scope)?),
            None => builder,
        };
        let exporter = builder
            .build()
            .map_err(|err| format!("cannot build the OTLP exporter: {err}"))?;
        let backlog = Arc::new(Backlog::new(key.max_queue_size));
        let counted = CountedExporter {
            inner: exporter,
            backlog: backlog.clone(),
            exported: scope.counter(
                "tracing_spans_exported",
                "Spans the collector accepted, by collector",
            ),
            failed: scope.counter(
                "tracing_export_failures",
                "Span exports that failed (their spans are lost), by collector",
            ),
            endpoint: key.endpoint.clone(),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(key.max_queue_size)
            .with_max_export_batch_size(key.max_export_batch_size)
            .with_scheduled_delay(key.export_interval)
            .build();
        let mut processor = BatchSpanProcessor::builder(counted)
            .with_batch_config(batch)
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(key.service_name.clone())
                .build(),
        );
        let sink = Arc::new(SpanSink {
            processor,
            backlog,
            dropped: scope.counter(
                "tracing_spans_dropped",
                "Spans dropped because the export queue was full, by collector",
            ),
            instrumentation: InstrumentationScope::builder("metaprotocol-router")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            scope,
        });
        sinks.insert(key, Arc::downgrade(&sink));
        Ok(sink)
    }

    /// Exports every span still queued (at shutdown), on blocking threads.
    pub async fn flush_all(&self) {
        let sinks: Vec<Arc<SpanSink>> = self.lock().values().filter_map(Weak::upgrade).collect();
        for sink in sinks {
            let _ = tokio::task::spawn_blocking(move || sink.flush()).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ExporterKey, Weak<SpanSink>>> {
        match self.sinks.lock() {
            Ok(sinks) => sinks,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The OTLP exporter, counting what it exported and what it lost.
#[derive(Debug)]
struct CountedExporter {
    inner: opentelemetry_otlp::SpanExporter,
    /// The queue the batches come from: their places are free once they leave it.
    backlog: Arc<Backlog>,
    exported: Counter,
    failed: Counter,
    endpoint: String,
}

impl SpanExporter for CountedExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.backlog.give_back(batch.len());
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.exported.inc_by(spans);
            }
            // The first failure is logged; the rest are counted.
            Err(err) => {
                if self.failed.get() == 0 {
                    tracing::warn!(endpoint = %self.endpoint, error = %err, "cannot export spans");
                }
                self.failed.inc();
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span name: `service/method` (OpenTelemetry's RPC convention), or what is known of it.
pub(super) fn span_name(service: Option<&str>, method: Option<&str>) -> Cow<'static, str> {
    match (service, method) {
        (Some(service), Some(method)) => Cow::Owned(format!("{service}/{method}")),
        (None, Some(method)) => Cow::Owned(method.to_owned()),
        (Some(service), None) => Cow::Owned(service.to_owned()),
        (None, None) => Cow::Borrowed("rpc"),
    }
}
