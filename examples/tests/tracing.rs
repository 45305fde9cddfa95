//! Distributed tracing end to end: an OTLP/gRPC receiver in the test (opentelemetry-proto's
//! types on tonic) gets, for a Dubbo call, a Thrift THeader call and a bRPC call through the
//! proxy, a server span that is the caller's child and a client span per upstream attempt that
//! is the server span's child; the real servers see the `traceparent` naming their attempt's
//! span (a Dubbo attachment, a THeader header, a bRPC user field). A retried Dubbo call has a
//! span per attempt. Spans a full export queue refuses are dropped and counted. The Thrift case
//! needs Apache Thrift's Python library (skipped without it unless
//! `METAPROTOCOL_REQUIRE_INTEROP=1`).

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod brpc_support;
#[allow(dead_code)]
mod support;

use std::time::Duration;

use brpc_support::{BrpcClient, BrpcServer, Call};
use metaprotocol_examples::dubbo_demo::{
    DEMO_SERVICE, DemoProvider, DubboClient, EXCEPTION_METHOD, FAILING_METHOD,
};
use support::mesh::{self, MeshCa};
use support::otlp::{OtlpReceiver, ReceivedSpan, check_call_spans};
use support::process::Scratch;
use support::proxy::{InProcessProxy, listener_addr, metric, start_engine};
use support::thrift::{Server, spawn_script, tools_ready};
use support::{TestResult, free_port};

/// How long spans may take to reach the receiver.
const EXPORT: Duration = Duration::from_secs(10);

/// A caller's `tracestate` of two members, spelt as the exported spans spell it.
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// The caller's trace and span, as its `traceparent` names them (sampled).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{CALLER_SPAN}-01")
}

/// A listener `in` speaking `protocol`, tracing to `receiver`, routing everything to cluster
/// `backend` at `backend`; `routes` go before the catch-all route.
fn config(protocol: &str, receiver: &OtlpReceiver, backend: &str, routes: &str) -> String {
    format!(
        r#"
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: {protocol}
    route_config: routes
    tracing: {{ otlp_endpoint: "{}", service_name: edge-proxy, export_interval: 50ms }}
route_configs:
  - name: routes
    routes:{routes}
      - {{ name: all, route: {{ cluster: backend }} }}
clusters:
  - {{ name: backend, endpoints: [ {{ address: "{backend}" }} ] }}
"#,
        receiver.endpoint()
    )
}

/// Checks the RPC attributes both kinds of span carry.
/// (`service` is `None` for plain Thrift, whose messages name no service).
fn check_rpc(span: &ReceivedSpan, system: &str, service: Option<&str>, method: &str) {
    assert_eq!(span.service, "edge-proxy", "{span:#?}");
    assert_eq!(span.attribute("rpc.system"), Some(system), "{span:#?}");
    assert_eq!(span.attribute("rpc.service"), service, "{span:#?}");
    assert_eq!(span.attribute("rpc.method"), Some(method), "{span:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dubbo_call_and_each_attempt_of_a_retried_one() -> TestResult {
    let receiver = OtlpReceiver::start()?;
    let provider = DemoProvider::start("p").await?;
    let retried = format!(
        r#"
      - name: retried
        match: {{ metadata: [ {{ key: method, exact: {FAILING_METHOD} }} ] }}
        route: {{ cluster: backend }}
        retry_policy:
          num_retries: 1
          retry_on: [ unavailable ]
          idempotent_methods: [ {FAILING_METHOD} ]
          retry_back_off: {{ base_interval: 1ms }}"#
    );
    let yaml = config(
        "dubbo",
        &receiver,
        &provider.address().to_string(),
        &retried,
    );
    let proxy = start_engine(&yaml).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let parent = traceparent(TRACE_ID);
    client
        .call("sayHello", "w", &[("traceparent", &parent)])
        .await?;
    let seen = provider.seen();
    let upstream = seen[0]
        .metadata
        .get("traceparent")
        .ok_or("no traceparent")?;
    let spans = receiver.trace(TRACE_ID, 2, EXPORT).await?;
    let (server, attempts) = check_call_spans(&spans, TRACE_ID, CALLER_SPAN, upstream)?;
    assert_eq!(attempts.len(), 1);
    check_rpc(&server, "apache_dubbo", Some(DEMO_SERVICE), "sayHello");
    check_rpc(&attempts[0], "apache_dubbo", Some(DEMO_SERVICE), "sayHello");
    assert_eq!(
        attempts[0].attribute("server.port"),
        Some(provider.address().port().to_string().as_str())
    );

    let retried_trace = "0af7651916cd43dd8448eb211c80319c";
    let answer = client
        .call(
            FAILING_METHOD,
            "w",
            &[
                ("traceparent", &traceparent(retried_trace)),
                ("tracestate", TRACESTATE),
            ],
        )
        .await?;
    assert_eq!(answer.dubbo_status, 70);
    let spans = receiver.trace(retried_trace, 3, EXPORT).await?;
    // Parsed once for the three spans: each carries it all the same.
    assert!(
        spans.iter().all(|span| span.trace_state == TRACESTATE),
        "the caller's tracestate on every span: {spans:#?}"
    );
    let seen = provider.seen();
    let last = seen.last().ok_or("nothing seen")?;
    let upstream = last.metadata.get("traceparent").ok_or("no traceparent")?;
    let (server, attempts) = check_call_spans(&spans, retried_trace, CALLER_SPAN, upstream)?;
    assert_eq!(attempts.len(), 2, "a span per attempt: {spans:#?}");
    assert_eq!(server.status, 2, "the call failed: {server:#?}");
    let first = seen[seen.len() - 2].metadata.get("traceparent");
    assert_ne!(first, Some(upstream), "each attempt names its own span");
    proxy.shutdown().await;
    Ok(())
}

/// A collector over mutual TLS (`https://` with `tls`, as a cluster's): the proxy checks the
/// collector's certificate (its CA and SPIFFE id) and presents its own, and the spans arrive. A
/// collector that is not the one named gets no spans: its exports fail and are counted. An
/// https endpoint used to be refused outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_a_collector_over_mutual_tls() -> TestResult {
    let scratch = Scratch::new("otlp-tls")?;
    let ca = MeshCa::new(&scratch, "mesh")?;
    let collector = ca.workload(&scratch, "collector", "observability", "otel", &[])?;
    let edge = ca.workload(&scratch, "edge", "default", "edge", &[])?;
    let receiver =
        OtlpReceiver::start_tls(&collector.cert_file, &collector.key_file, Some(&ca.ca_file))?;
    let provider = DemoProvider::start("p").await?;
    let listener = |name: &str, expected: &str| -> TestResult<String> {
        let tls = mesh::yaml(&ca.client_tls(Some(&edge), expected))?;
        Ok(format!(
            "  - {{ name: {name}, address: 127.0.0.1:0, protocol: dubbo, route_config: routes,\n      tracing: {{ otlp_endpoint: \"{}\", tls: {tls}, service_name: edge-proxy, export_interval: 50ms }} }}\n",
            receiver.endpoint()
        ))
    };
    let yaml = format!(
        "listeners:\n{}{}route_configs:\n  - {{ name: routes, routes: [ {{ name: all, route: {{ cluster: backend }} }} ] }}\nclusters:\n  - {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }}\n",
        listener("in", &collector.spiffe_id)?,
        listener("wrong", &mesh::spiffe_id("observability", "someone-else"))?,
        provider.address()
    );
    let proxy = start_engine(&yaml).await?;

    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    client
        .call("sayHello", "w", &[("traceparent", &traceparent(TRACE_ID))])
        .await?;
    let upstream = provider.seen()[0]
        .metadata
        .get("traceparent")
        .ok_or("no traceparent")?
        .to_owned();
    let spans = receiver.trace(TRACE_ID, 2, EXPORT).await?;
    let (server, _) = check_call_spans(&spans, TRACE_ID, CALLER_SPAN, &upstream)?;
    check_rpc(&server, "apache_dubbo", Some(DEMO_SERVICE), "sayHello");

    let wrong_trace = "0af7651916cd43dd8448eb211c80319c";
    let wrong = DubboClient::new(listener_addr(&proxy, "wrong")?);
    wrong
        .call(
            "sayHello",
            "w",
            &[("traceparent", &traceparent(wrong_trace))],
        )
        .await?;
    let failures = || {
        support::metrics::sample(
            &proxy.metrics().render(),
            "metaprotocol_tracing_export_failures_total",
            &[("collector", &receiver.endpoint())],
        )
    };
    let deadline = tokio::time::Instant::now() + EXPORT;
    while failures() < 1.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures() >= 1.0, "{}", proxy.metrics().render());
    assert!(
        receiver.spans().iter().all(|s| s.trace_id != wrong_trace),
        "a collector that is not the one named got spans"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A call the service answers with its declared exception did not succeed: both spans say so
/// (OpenTelemetry's RPC conventions count it an error), as a failed call's do, while a
/// successful call's spans leave their status unset. They used to leave it unset for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_exception_marks_both_spans_as_errors() -> TestResult {
    let receiver = OtlpReceiver::start()?;
    let provider = DemoProvider::start("p").await?;
    let yaml = config("dubbo", &receiver, &provider.address().to_string(), "");
    let proxy = start_engine(&yaml).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let cases = [
        ("sayHello", TRACE_ID, 0),
        (EXCEPTION_METHOD, "0af7651916cd43dd8448eb211c80319c", 2),
    ];
    for (method, trace_id, status) in cases {
        client
            .call(method, "w", &[("traceparent", &traceparent(trace_id))])
            .await?;
        let seen = provider.seen();
        let last = seen.last().ok_or("nothing seen")?;
        let upstream = last.metadata.get("traceparent").ok_or("no traceparent")?;
        let spans = receiver.trace(trace_id, 2, EXPORT).await?;
        let (server, attempts) = check_call_spans(&spans, trace_id, CALLER_SPAN, upstream)?;
        assert_eq!(
            server.attribute("metaprotocol.outcome"),
            Some(match status {
                0 => "success",
                _ => "application_error",
            })
        );
        assert_eq!(server.status, status, "{method}: {server:#?}");
        assert_eq!(attempts[0].status, status, "{method}: {attempts:#?}");
    }
    proxy.shutdown().await;
    Ok(())
}

/// A mirror's copy has no span of its own (nobody waits for its answer), but it belongs to the
/// trace as the server span's child: it used to carry the caller's `traceparent` unchanged, as
/// if the caller had sent it past the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_copy_goes_as_the_server_spans_child() -> TestResult {
    let receiver = OtlpReceiver::start()?;
    let provider = DemoProvider::start("p").await?;
    let shadow = DemoProvider::start("shadow").await?;
    let yaml = format!(
        r#"
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    tracing: {{ otlp_endpoint: "{}", export_interval: 50ms }}
route_configs:
  - name: routes
    routes:
      - {{ name: all, route: {{ cluster: backend }}, mirror: {{ cluster: shadow }} }}
clusters:
  - {{ name: backend, endpoints: [ {{ address: "{}" }} ] }}
  - {{ name: shadow, endpoints: [ {{ address: "{}" }} ] }}
"#,
        receiver.endpoint(),
        provider.address(),
        shadow.address()
    );
    let proxy = start_engine(&yaml).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    client
        .call("sayHello", "w", &[("traceparent", &traceparent(TRACE_ID))])
        .await?;
    let upstream = provider.seen()[0]
        .metadata
        .get("traceparent")
        .map(str::to_owned)
        .ok_or("no traceparent")?;
    let spans = receiver.trace(TRACE_ID, 2, EXPORT).await?;
    let (server, _) = check_call_spans(&spans, TRACE_ID, CALLER_SPAN, &upstream)?;
    let deadline = tokio::time::Instant::now() + EXPORT;
    while shadow.seen().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no copy reached the mirror"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = shadow.seen()[0]
        .metadata
        .get("traceparent")
        .map(str::to_owned);
    assert_eq!(
        copy,
        Some(format!("00-{TRACE_ID}-{}-01", server.span_id)),
        "the copy's parent is the server span {}, not the caller {CALLER_SPAN}",
        server.span_id
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brpc_call_carries_the_context_in_user_fields() -> TestResult {
    let receiver = OtlpReceiver::start()?;
    let server = BrpcServer::start("b1").await?;
    let yaml = config("brpc", &receiver, &server.addr().to_string(), "");
    let proxy = start_engine(&yaml).await?;
    let mut client = BrpcClient::connect(listener_addr(&proxy, "in")?).await?;
    let service = "example.EchoService";
    let reply = client
        .call(&Call::new(service, "Echo", "w").field("traceparent", &traceparent(TRACE_ID)))
        .await?;
    assert_eq!(reply.error_code(), 0);
    let upstream = reply
        .field("echo-traceparent")
        .ok_or("the server saw no traceparent")?;
    let spans = receiver.trace(TRACE_ID, 2, EXPORT).await?;
    let (span, attempts) = check_call_spans(&spans, TRACE_ID, CALLER_SPAN, upstream)?;
    check_rpc(&span, "brpc", Some(service), "Echo");
    check_rpc(&attempts[0], "brpc", Some(service), "Echo");
    proxy.shutdown().await;
    Ok(())
}

/// A caller tracing with brpc's own 64-bit ids: the proxy continues its trace, and the server
/// gets the trace's id and the proxy's attempt span as its span's parent, in brpc's rpcz ids as
/// in `traceparent`; the server makes its own span id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brpc_call_names_the_attempt_span_as_the_rpcz_parent() -> TestResult {
    let receiver = OtlpReceiver::start()?;
    let server = BrpcServer::start("b1").await?;
    let yaml = config("brpc", &receiver, &server.addr().to_string(), "");
    let proxy = start_engine(&yaml).await?;
    let mut client = BrpcClient::connect(listener_addr(&proxy, "in")?).await?;
    let (trace, span) = (0x1234_5678_9abc_def0_i64, 222);
    let reply = client
        .call(&Call::new("example.EchoService", "Echo", "w").traced(trace, span, 111))
        .await?;
    assert_eq!(reply.error_code(), 0);
    let upstream = reply
        .field("echo-traceparent")
        .ok_or("the server saw no traceparent")?;
    let trace_hex = format!("{trace:032x}");
    let spans = receiver.trace(&trace_hex, 2, EXPORT).await?;
    let (_, attempts) = check_call_spans(&spans, &trace_hex, &format!("{span:016x}"), upstream)?;
    let attempt = u64::from_str_radix(&attempts[0].span_id, 16)?;
    assert_eq!(reply.field("rpcz-trace_id"), Some(&*trace.to_string()));
    assert_eq!(
        reply.field("rpcz-parent_span_id"),
        Some(&*(attempt as i64).to_string())
    );
    assert_eq!(reply.field("rpcz-span_id"), None, "{:?}", reply.meta);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_the_full_export_queue_refuses_are_dropped_and_counted() -> TestResult {
    const CALLS: u64 = 20;
    const QUEUE: u64 = 4;
    const BATCH: u64 = 2;
    // A collector that never answers (connections wait in its backlog, never accepted): the
    // first export waits for its timeout and the queue fills behind it.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let collector = format!("http://{}", black_hole.local_addr()?);
    let provider = DemoProvider::start("p").await?;
    let yaml = format!(
        r#"
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    tracing: {{ otlp_endpoint: "{collector}", max_queue_size: {QUEUE}, max_export_batch_size: {BATCH}, export_timeout: 60s }}
route_configs:
  - {{ name: routes, routes: [ {{ name: all, route: {{ cluster: backend }} }} ] }}
clusters:
  - {{ name: backend, endpoints: [ {{ address: "{}" }} ] }}
"#,
        provider.address()
    );
    let proxy = start_engine(&yaml).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    for _ in 0..CALLS {
        client.call("sayHello", "w", &[]).await?;
    }

    // Each call ends a server span and a client span; all but a queue's worth and the batch
    // being exported are dropped, and counted apart from the spans the collector accepted.
    let series = |name: &str, labels: &str| metric(&proxy, &format!("{name}{{{labels}}}")) as u64;
    let of_collector = format!("collector=\"{collector}\"");
    let spans = series("metaprotocol_tracing_spans_total", "listener=\"in\"");
    let dropped = series("metaprotocol_tracing_spans_dropped_total", &of_collector);
    let exported = series("metaprotocol_tracing_spans_exported_total", &of_collector);
    assert_eq!(spans, 2 * CALLS);
    assert_eq!(exported, 0);
    assert!(
        (spans - QUEUE - BATCH..=spans - QUEUE).contains(&dropped),
        "{dropped} of {spans} spans dropped"
    );

    // The collector goes away: the export waiting on it fails, and the proxy stops at once.
    drop(black_hole);
    proxy.shutdown().await;
    Ok(())
}

#[test]
fn a_thrift_theader_call_carries_the_context_in_headers() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("tracing-thrift")?;
    let receiver = OtlpReceiver::start()?;
    let server = Server::start("header", "binary", "alpha", &scratch)?;
    let yaml = config("thrift", &receiver, &server.address(), "");
    let proxy = InProcessProxy::start(&yaml)?;
    let port = proxy.addr("in")?.port().to_string();
    let headers = format!("traceparent={}", traceparent(TRACE_ID));
    let mut client = spawn_script(
        "client.py",
        &[&port, "header", "binary", "echo", "traceparent"],
        &[("THRIFT_HEADERS", &headers)],
        &format!("tracing-client-{}", free_port()?),
        &scratch,
    )?;
    let status = client.wait(Duration::from_secs(30))?;
    assert!(status.success(), "{}", client.stderr_tail());
    let answer: serde_json::Value = serde_json::from_str(client.stdout().trim())?;
    let upstream = answer["echo"].as_str().ok_or("no echo")?;
    let spans = tokio::runtime::Runtime::new()?.block_on(receiver.trace(TRACE_ID, 2, EXPORT))?;
    let (span, attempts) = check_call_spans(&spans, TRACE_ID, CALLER_SPAN, upstream)?;
    check_rpc(&span, "apache_thrift", None, "echoHeader");
    assert_eq!(attempts.len(), 1);
    Ok(())
}
