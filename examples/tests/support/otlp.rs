//! An OTLP/gRPC trace receiver (opentelemetry-proto's `TraceService` on tonic), on 127.0.0.1,
//! keeping every span the proxy exports for the test to look at. It runs on a thread and
//! runtime of its own, so that sync and async tests alike can use it; it stops when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

use super::TestResult;

/// `SpanKind` values of the protocol.
pub const SERVER: i32 = 2;
/// See [`SERVER`].
pub const CLIENT: i32 = 3;

/// A span as received, ids in lowercase hex (as `traceparent` writes them).
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// The span's status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// The caller's W3C `tracestate` the span carries (empty: none).
    pub trace_state: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// The attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(text)
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    status: span.status.map_or(0, |s| s.code),
                    trace_state: span.trace_state,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(received);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// A running receiver.
pub struct OtlpReceiver {
    address: SocketAddr,
    scheme: &'static str,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub fn start() -> TestResult<Self> {
        Self::start_with(tonic::transport::Server::builder(), "http")
    }

    /// Starts a receiver serving TLS with the certificate and key in `cert_file` and
    /// `key_file` (PEM); with `client_ca_file`, senders must present a certificate it signs.
    pub fn start_tls(
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
        client_ca_file: Option<&std::path::Path>,
    ) -> TestResult<Self> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let identity = Identity::from_pem(std::fs::read(cert_file)?, std::fs::read(key_file)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = client_ca_file {
            tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        Self::start_with(
            tonic::transport::Server::builder().tls_config(tls)?,
            "https",
        )
    }

    fn start_with(mut server: tonic::transport::Server, scheme: &'static str) -> TestResult<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let collector = Collector::default();
        let spans = collector.spans.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let _ = server
                    .add_service(TraceServiceServer::new(collector))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            address,
            scheme,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The endpoint to configure: `http://127.0.0.1:<port>` (`https` for a TLS receiver).
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.address)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The spans of trace `trace_id` once there are at least `count` of them, waiting up to
    /// `within` without blocking the caller's runtime (on which the proxy's exporter may run).
    pub async fn trace(
        &self,
        trace_id: &str,
        count: usize,
        within: Duration,
    ) -> TestResult<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(done) = self.poll(trace_id, count, deadline) {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The spans of the trace when there are enough, an error past the deadline, else `None`.
    fn poll(
        &self,
        trace_id: &str,
        count: usize,
        deadline: Instant,
    ) -> Option<TestResult<Vec<ReceivedSpan>>> {
        let spans = self.of_trace(trace_id);
        if spans.len() >= count {
            return Some(Ok(spans));
        }
        if Instant::now() > deadline {
            return Some(Err(format!(
                "{count} spans of trace {trace_id} expected, got {spans:#?}"
            )
            .into()));
        }
        None
    }

    fn of_trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Checks the spans of one call through the proxy: one server span, child of the caller's
/// span `caller_span` in trace `trace_id`, and one client span per attempt, child of the server
/// span; returns (server, attempts). `traceparent` is what the upstream received: it must name
/// the (last) attempt's span as its parent.
pub fn check_call_spans(
    spans: &[ReceivedSpan],
    trace_id: &str,
    caller_span: &str,
    traceparent: &str,
) -> TestResult<(ReceivedSpan, Vec<ReceivedSpan>)> {
    let servers: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == SERVER).collect();
    let [server] = servers.as_slice() else {
        return Err(format!("one server span expected: {spans:#?}").into());
    };
    if server.parent_span_id != caller_span || server.trace_id != trace_id {
        return Err(format!("the server span is not the caller's child: {server:#?}").into());
    }
    let attempts: Vec<ReceivedSpan> = spans.iter().filter(|s| s.kind == CLIENT).cloned().collect();
    if attempts.is_empty() || attempts.iter().any(|a| a.parent_span_id != server.span_id) {
        return Err(format!("attempts must be the server span's children: {spans:#?}").into());
    }
    let last = attempts
        .iter()
        .max_by_key(|a| a.start_unix_nanos)
        .ok_or("no attempt")?;
    let expected = format!("00-{trace_id}-{}-01", last.span_id);
    if traceparent != expected {
        return Err(format!(
            "the upstream saw traceparent {traceparent}, expected {expected} (the attempt's span)"
        )
        .into());
    }
    Ok(((*server).clone(), attempts))
}
