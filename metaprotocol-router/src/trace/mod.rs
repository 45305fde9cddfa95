//! Distributed tracing: a server span per request and a client span per upstream attempt,
//! linked to the caller's trace and exported over OTLP.
//!
//! When a request arrives, the caller's context is read from its metadata ([`context`]: W3C,
//! B3 or bRPC's own ids) and the trace is sampled: by the caller's decision when it made one
//! (`parent_based`), else by the configured ratio of trace ids. Every attempt gets a span id of
//! its own, written into the upstream request's mutation as `traceparent` (and B3), which Dubbo
//! carries as attachments, THeader as headers and bRPC as `user_fields` (and, sampled, in its
//! rpcz ids, which its codec takes from `traceparent`) (plain Thrift has no
//! place for it). When the request completes, its spans, with OpenTelemetry's RPC attributes,
//! go to the exporter ([`export`]), which batches them on a thread of its own behind a bounded
//! queue; when the queue is full, they are dropped (and counted) before they are built. The per-request state lives in the request's slot only on listeners that trace.

mod context;
mod export;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant as StdInstant, SystemTime};

use metaprotocol_core::{ByteStr, Message, Mutation, RequestRecord, ResponseStatus, keys};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use smallvec::SmallVec;
use tokio::time::Instant;

use self::context::{Outgoing, Source};
pub(crate) use self::export::SpanSinks;
use self::export::{SpanSink, span_name};
use crate::config::{ConfigError, Propagation, TracingSpec};
use crate::router::{AttemptObserver, AttemptOutcome, FAILURES};
use crate::stats::Counter;
use crate::stats::{MetricsScope, RequestOutcome};

/// The longest service or method name a span keeps (in its name and attributes); longer ones
/// are cut.
const MAX_ATTRIBUTE_BYTES: usize = 256;

/// A listener's tracer.
#[derive(Debug)]
pub(crate) struct Tracer {
    sink: Arc<SpanSink>,
    /// New traces are sampled when their id's low 64 bits are below this (`None`: always).
    sample_below: Option<u64>,
    parent_based: bool,
    inject_b3: bool,
    /// `rpc.system`.
    system: &'static str,
    spans: Counter,
}

impl Tracer {
    /// The tracer of a listener of `protocol` as `spec` describes it, its counters in `scope`,
    /// its exporter from `sinks`.
    pub fn new(
        spec: &TracingSpec,
        protocol: &'static str,
        scope: &MetricsScope,
        sinks: &SpanSinks,
    ) -> Result<Self, ConfigError> {
        let sink = sinks
            .get(spec, scope.metrics())
            .map_err(|reason| ConfigError::new("otlp_endpoint", reason))?;
        let sample_below =
            (spec.sampling < 100.0).then(|| (spec.sampling / 100.0 * u64::MAX as f64) as u64);
        Ok(Self {
            sink,
            sample_below,
            parent_based: spec.parent_based,
            inject_b3: spec.propagation.contains(&Propagation::B3),
            system: rpc_system(protocol),
            spans: scope.counter(
                "tracing_spans",
                "Spans of sampled requests, queued for export or dropped",
            ),
        })
    }

    /// Starts the trace of a request: continues the caller's, or starts one.
    pub fn start(&self, request: &Message) -> Box<RequestSpan> {
        let incoming = context::extract(&request.metadata);
        let trace_id = incoming
            .as_ref()
            .map_or_else(|| fastrand::u128(1..), |i| i.trace_id);
        let callers = match &incoming {
            Some(incoming) => incoming.sampled,
            None => context::decision_alone(&request.metadata),
        }
        .filter(|_| self.parent_based);
        let sampled = callers.unwrap_or_else(|| {
            self.sample_below
                .is_none_or(|below| (trace_id as u64) < below)
        });
        Box::new(RequestSpan {
            trace_id,
            span_id: span_id(),
            sampled,
            inject_b3: self.inject_b3 || incoming.as_ref().is_some_and(|i| i.source == Source::B3),
            tracestate: incoming.as_ref().and_then(|i| i.tracestate.clone()),
            parent: incoming.map(|i| i.span_id),
            attempts: SmallVec::new(),
        })
    }

    /// Ends a request's trace: exports its spans if it is sampled.
    pub fn finish(
        &self,
        span: Box<RequestSpan>,
        request: &Message,
        record: &RequestRecord,
        outcome: RequestOutcome,
    ) {
        if !span.sampled {
            return;
        }
        // The request's spans are queued or dropped together (no attempt without its server
        // span), and dropped before they are built.
        let spans = 1 + span.attempts.len();
        self.spans.inc_by(spans as u64);
        if !self.sink.reserve(spans) {
            return;
        }
        let mut state = Copies::of(
            span.tracestate
                .as_ref()
                .and_then(|s| s.as_str().parse::<TraceState>().ok())
                .unwrap_or_default(),
            spans,
        );
        let clock = Clock::of(record);
        let ended = clock.at(record.timings.answered.unwrap_or(record.timings.received));
        let md = &request.metadata;
        // Cut, as OpenTelemetry's attribute length limit does: clients choose these, and a span
        // waits in the export queue while the collector is slow.
        let service = md
            .get(keys::SERVICE)
            .or_else(|| md.get(keys::INTERFACE))
            .map(|service| crate::text::cut(service, MAX_ATTRIBUTE_BYTES));
        let method = md
            .get(keys::METHOD)
            .map(|method| crate::text::cut(method, MAX_ATTRIBUTE_BYTES));
        let name = span_name(service, method);
        let mut rpc = vec![KeyValue::new("rpc.system", self.system)];
        if let Some(service) = service {
            rpc.push(KeyValue::new("rpc.service", service.to_owned()));
        }
        if let Some(method) = method {
            rpc.push(KeyValue::new("rpc.method", method.to_owned()));
        }
        let connection = &record.connection;
        let mut attributes = rpc.clone();
        attributes.extend([
            KeyValue::new("client.address", connection.peer_addr.ip().to_string()),
            KeyValue::new("client.port", i64::from(connection.peer_addr.port())),
            KeyValue::new("server.address", connection.local_addr.ip().to_string()),
            KeyValue::new("server.port", i64::from(connection.local_addr.port())),
            KeyValue::new("metaprotocol.listener", connection.listener.to_string()),
            KeyValue::new("metaprotocol.outcome", outcome.name()),
            KeyValue::new(
                "metaprotocol.response_flags",
                record.outcome.flags.to_string(),
            ),
            KeyValue::new("metaprotocol.attempts", i64::from(record.attempts)),
            KeyValue::new("metaprotocol.request.bytes", record.bytes_received as i64),
            KeyValue::new("metaprotocol.response.bytes", record.bytes_sent as i64),
        ]);
        if let Some(route) = &record.route {
            attributes.push(KeyValue::new("metaprotocol.route", route.to_string()));
        }
        if let Some(cluster) = &record.cluster {
            attributes.push(KeyValue::new("metaprotocol.cluster", cluster.to_string()));
        }
        // The service's declared exception is an error too, as OpenTelemetry's RPC conventions
        // (and its Dubbo and JSON-RPC instrumentations) have it: the call did not succeed.
        let status = if outcome != RequestOutcome::SUCCESS {
            Status::error(outcome.name())
        } else {
            Status::Unset
        };
        self.export(SpanParts {
            trace: &span,
            state: state.take(),
            span_id: span.span_id,
            parent: span.parent,
            kind: SpanKind::Server,
            name: name.clone(),
            start: record.start_time,
            end: ended,
            attributes,
            status,
        });
        for attempt in &span.attempts {
            let mut attributes = rpc.clone();
            attributes.extend([
                KeyValue::new("server.address", attempt.endpoint.ip().to_string()),
                KeyValue::new("server.port", i64::from(attempt.endpoint.port())),
                KeyValue::new("metaprotocol.attempt", i64::from(attempt.number)),
                KeyValue::new("metaprotocol.outcome", attempt.ending.name()),
            ]);
            if let Some(cluster) = &record.cluster {
                attributes.push(KeyValue::new("metaprotocol.cluster", cluster.to_string()));
            }
            let status = match attempt.ending.failed() {
                true => Status::error(attempt.ending.name()),
                false => Status::Unset,
            };
            self.export(SpanParts {
                trace: &span,
                state: state.take(),
                span_id: attempt.span_id,
                parent: Some(span.span_id),
                kind: SpanKind::Client,
                name: name.clone(),
                start: clock.at(attempt.started),
                end: attempt.ended.map_or(ended, |t| clock.at(t)),
                attributes,
                status,
            });
        }
    }

    fn export(&self, parts: SpanParts<'_>) {
        let trace = parts.trace;
        let context = SpanContext::new(
            TraceId::from_bytes(trace.trace_id.to_be_bytes()),
            SpanId::from_bytes(parts.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            parts.state,
        );
        // The server span's parent is the caller's (remote); an attempt's is the server span.
        let remote = parts.kind == SpanKind::Server && parts.parent.is_some();
        self.sink.export(SpanData {
            span_context: context,
            parent_span_id: parts
                .parent
                .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes())),
            parent_span_is_remote: remote,
            span_kind: parts.kind,
            name: parts.name,
            start_time: parts.start,
            end_time: parts.end.max(parts.start),
            attributes: parts.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: parts.status,
            instrumentation_scope: self.sink.instrumentation().clone(),
        });
    }
}

/// What one exported span is made of.
struct SpanParts<'a> {
    trace: &'a RequestSpan,
    /// The caller's `tracestate`, as every span of the trace carries it.
    state: TraceState,
    span_id: u64,
    parent: Option<u64>,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

/// A value each of a request's spans takes: parsed once (a parse costs twice the allocations of
/// a copy, and a check of every byte), copied for every span but the last, which takes it.
struct Copies<T> {
    value: T,
    /// The spans still to take it.
    left: usize,
}

impl<T: Clone + Default> Copies<T> {
    /// `value`, for `spans` spans.
    fn of(value: T, spans: usize) -> Self {
        Self { value, left: spans }
    }

    /// A span's own: a copy, or the value itself for the last span.
    fn take(&mut self) -> T {
        self.left = self.left.saturating_sub(1);
        match self.left {
            0 => std::mem::take(&mut self.value),
            _ => self.value.clone(),
        }
    }
}

/// Wall-clock times of a request's monotonic instants.
struct Clock {
    start: SystemTime,
    received: StdInstant,
}

impl Clock {
    fn of(record: &RequestRecord) -> Self {
        Self {
            start: record.start_time,
            received: record.timings.received,
        }
    }

    fn at(&self, instant: StdInstant) -> SystemTime {
        self.start + instant.saturating_duration_since(self.received)
    }
}

/// The trace state of one request: its server span and its attempts.
#[derive(Debug)]
pub(crate) struct RequestSpan {
    trace_id: u128,
    span_id: u64,
    /// The caller's span.
    parent: Option<u64>,
    sampled: bool,
    inject_b3: bool,
    tracestate: Option<ByteStr>,
    attempts: SmallVec<[AttemptSpan; 2]>,
}

impl RequestSpan {
    /// The trace's id, for access logs.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }
}

/// One attempt's span.
#[derive(Debug)]
struct AttemptSpan {
    number: u32,
    span_id: u64,
    endpoint: SocketAddr,
    started: StdInstant,
    ended: Option<StdInstant>,
    ending: Ending,
}

/// How an attempt ended, as its span says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Still in flight when the request completed (its client went away, say).
    Unfinished,
    /// A one-way request was written.
    Sent,
    Answered(ResponseStatus),
    /// A failure: the index of its reason in [`FAILURES`].
    Failed(usize),
}

impl Ending {
    fn of(outcome: Option<&AttemptOutcome>) -> Self {
        match outcome {
            None => Self::Sent,
            Some(AttemptOutcome::Answered(status)) => Self::Answered(*status),
            Some(outcome) => outcome.failure().map_or(Self::Unfinished, Self::Failed),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unfinished => "cancelled",
            Self::Sent => "sent",
            Self::Answered(ResponseStatus::Ok) => "success",
            Self::Answered(ResponseStatus::ApplicationError) => "application_error",
            Self::Answered(ResponseStatus::ServerError) => "server_error",
            Self::Failed(index) => FAILURES.get(index).map_or("failure", |(_, reason)| reason),
        }
    }

    /// True unless the attempt was sent one way or answered with success.
    fn failed(self) -> bool {
        !matches!(self, Self::Sent | Self::Answered(ResponseStatus::Ok))
    }
}

impl AttemptObserver for Box<RequestSpan> {
    fn attempt_started(
        &mut self,
        number: u32,
        endpoint: SocketAddr,
        mutation: &Arc<Mutation>,
        now: Instant,
    ) -> Arc<Mutation> {
        let span_id = span_id();
        self.attempts.push(AttemptSpan {
            number,
            span_id,
            endpoint,
            started: now.into_std(),
            ended: None,
            ending: Ending::Unfinished,
        });
        self.with_context(mutation, span_id, Some(self.span_id))
    }

    fn attempt_ended(&mut self, number: u32, outcome: Option<&AttemptOutcome>, now: Instant) {
        if let Some(attempt) = self
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.number == number && a.ended.is_none())
        {
            attempt.ended = Some(now.into_std());
            attempt.ending = Ending::of(outcome);
        }
    }

    /// A mirror's copy has no span of its own (its answer is never awaited): it goes as the
    /// request's span's child, not as the caller's.
    fn copy_started(&mut self, mutation: &Arc<Mutation>) -> Arc<Mutation> {
        self.with_context(mutation, self.span_id, self.parent)
    }
}

impl RequestSpan {
    /// `mutation` with this trace's context: `span_id` the upstream's parent, itself the child
    /// of `parent_span_id`.
    fn with_context(
        &self,
        mutation: &Arc<Mutation>,
        span_id: u64,
        parent_span_id: Option<u64>,
    ) -> Arc<Mutation> {
        let mut with_context = Mutation::clone(mutation);
        Outgoing {
            trace_id: self.trace_id,
            span_id,
            parent_span_id,
            sampled: self.sampled,
            tracestate: self.tracestate.as_ref(),
            b3: self.inject_b3,
        }
        .inject(&mut with_context);
        Arc::new(with_context)
    }
}

/// A random span id (never 0, which means none).
fn span_id() -> u64 {
    fastrand::u64(1..)
}

/// OpenTelemetry's `rpc.system` for a protocol (its registered name when OpenTelemetry has no
/// word for it).
fn rpc_system(protocol: &'static str) -> &'static str {
    match protocol {
        "dubbo" => "apache_dubbo",
        "thrift" => "apache_thrift",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use metaprotocol_core::{MessageKind, Metadata};

    use super::*;
    use crate::stats::Metrics;

    /// A tracer sampling `sampling`% of new traces, following the caller's decision.
    fn tracer(sampling: f64, sinks: &SpanSinks) -> Result<Tracer, String> {
        let spec = TracingSpec {
            otlp_endpoint: "http://127.0.0.1:1".to_owned(),
            tls: None,
            sampling,
            parent_based: true,
            service_name: "test".to_owned(),
            propagation: vec![Propagation::W3c],
            max_queue_size: 8,
            max_export_batch_size: 8,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
        };
        Tracer::new(&spec, "dubbo", &Metrics::new().root(), sinks).map_err(|e| e.to_string())
    }

    fn request(metadata: &[(&'static str, &'static str)]) -> Message {
        let mut request = Message::new(MessageKind::Request, 1, Bytes::new());
        request.metadata = Metadata::from_iter(metadata.iter().copied());
        request
    }

    /// B3 without a sampling state defers the decision to the receiver: the configured ratio
    /// decides, as for a new trace (`parent_based` follows a decision the caller made).
    #[tokio::test]
    async fn a_b3_context_without_a_sampling_decision_is_sampled_by_the_ratio() -> Result<(), String>
    {
        let sinks = SpanSinks::default();
        let never = tracer(0.0, &sinks)?;
        let (trace, span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let single = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        let deferred = [
            request(&[("b3", single)]),
            request(&[("x-b3-traceid", trace), ("x-b3-spanid", span)]),
        ];
        for request in &deferred {
            let started = never.start(request);
            assert_eq!(started.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
            assert!(!started.sampled, "{:?}", request.metadata);
        }
        let decided = request(&[
            ("x-b3-traceid", trace),
            ("x-b3-spanid", span),
            ("x-b3-sampled", "1"),
        ]);
        assert!(never.start(&decided).sampled, "the caller's decision");
        let always = tracer(100.0, &sinks)?;
        assert!(deferred.iter().all(|request| always.start(request).sampled));
        Ok(())
    }

    /// A request's spans share one parse of the caller's `tracestate`: every span but the
    /// last gets a copy, the last the parse itself (a parse costs twice a copy's allocations).
    #[test]
    fn every_span_takes_the_value_and_the_last_takes_it_uncopied() {
        let parsed = Arc::new(());
        let mut copies = Copies::of(parsed.clone(), 3);
        let taken = [copies.take(), copies.take(), copies.take()];
        assert!(taken.iter().all(|span| Arc::ptr_eq(span, &parsed)));
        // The three spans' and this test's: none left in `copies`.
        assert_eq!(Arc::strong_count(&parsed), 4);
    }

    /// B3 may send the decision alone (`b3: 0`, a caller that does not sample need not send
    /// ids): the request starts a new trace, sampled as the caller decided.
    #[tokio::test]
    async fn a_b3_decision_sent_alone_is_followed() -> Result<(), String> {
        let sinks = SpanSinks::default();
        let always = tracer(100.0, &sinks)?;
        assert!(!always.start(&request(&[("b3", "0")])).sampled);
        let never = tracer(0.0, &sinks)?;
        assert!(never.start(&request(&[("b3", "1")])).sampled);
        assert!(never.start(&request(&[("b3", "d")])).sampled);
        assert!(!never.start(&request(&[("b3", "x")])).sampled);
        Ok(())
    }
}
