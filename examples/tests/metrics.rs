//! Metrics operators can alert on, checked end to end with Dubbo: every request the test makes
//! is counted once under its outcome (successes, application and server errors, each kind of
//! local reply, timeouts, clients gone, one-way and multiplexed calls), per listener (by
//! method) and per route, with its duration (timeouts included) and bytes; endpoints report
//! their requests, connections, connect failures and health; the Istio-compatible series carry
//! Istio's labels; `/metrics` is valid for `promtool check metrics` (Debian's `prometheus`,
//! installed by `tests/interop/prometheus/setup.sh`; without it that check is skipped unless
//! `METAPROTOCOL_REQUIRE_INTEROP=1`) in both formats the `Accept` header chooses.

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaprotocol_core::{FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext};
use metaprotocol_examples::dubbo_demo::{
    DemoProvider, DubboClient, EXCEPTION_METHOD, FAILING_METHOD, HANG_UP_METHOD, SLOW_METHOD,
};
use metaprotocol_router::{Config, ExpositionFormat, FilterRegistry, Metrics, Proxy};
use support::metrics::{promtool_problems, sample};
use support::proxy::start_engine;
use support::{TestResult, dubbo_request, refusing_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every test finishes within this time or fails.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Answers a request that carries `x-reply: <kind>` with a local reply of that kind, and
/// panics on one that carries `x-panic` (which the engine answers as `internal`).
struct Replier;

impl L7Filter for Replier {
    fn name(&self) -> &str {
        "replier"
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        if ctx.request.metadata.contains("x-panic") {
            panic!("asked to panic");
        }
        match ctx
            .request
            .metadata
            .get("x-reply")
            .and_then(|kind| kind.parse::<LocalReplyKind>().ok())
        {
            Some(kind) => FilterDecision::Reply(LocalReply::new(kind, "asked for")),
            None => FilterDecision::Continue,
        }
    }
}

fn config(provider: SocketAddr, closed: SocketAddr, istio: bool) -> String {
    let metrics = if istio {
        "metrics:\n  istio:\n    source: { workload: gateway, namespace: edge }\n"
    } else {
        ""
    };
    format!(
        r#"{metrics}
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    filters: [ {{ name: replier }} ]
route_configs:
  - name: routes
    routes:
      - name: gone
        match: {{ metadata: [ {{ key: x-route, exact: gone }} ] }}
        route: {{ cluster: provider }}
        timeout: 10s
      - name: hello
        match: {{ metadata: [ {{ key: method, exact: sayHello }} ] }}
        route: {{ cluster: provider }}
      - name: slow
        match: {{ metadata: [ {{ key: method, exact: {SLOW_METHOD} }} ] }}
        route: {{ cluster: provider }}
        timeout: 300ms
      - name: failing
        match: {{ metadata: [ {{ key: method, prefix: sayHello }} ] }}
        route: {{ cluster: provider }}
      - name: empty
        match: {{ metadata: [ {{ key: method, exact: toNowhere }} ] }}
        route: {{ cluster: empty }}
      - name: closed
        match: {{ metadata: [ {{ key: method, exact: toClosed }} ] }}
        route: {{ cluster: closed }}
clusters:
  - {{ name: provider, endpoints: [ {{ address: "{provider}", labels: {{ app: greeter, version: v1 }} }} ] }}
  - {{ name: empty, endpoints: [] }}
  - {{ name: closed, connect_timeout: 200ms, endpoints: [ {{ address: "{closed}" }} ] }}
"#
    )
}

/// The proxy with a demo provider (whose slow method answers after 2 s) behind it.
struct World {
    proxy: Proxy,
    provider: DemoProvider,
    client: DubboClient,
    listener: SocketAddr,
    admin: SocketAddr,
    /// The config it started with.
    yaml: String,
    /// Holds the `closed` cluster's endpoint refusing connections.
    _closed: tokio::net::TcpSocket,
}

impl World {
    async fn start(istio: bool) -> TestResult<Self> {
        let provider = DemoProvider::start_with_delay("p1", Duration::from_secs(2)).await?;
        let (closing, closed) = refusing_addr()?;
        let yaml = config(provider.address(), closed, istio);
        let mut filters = FilterRegistry::with_builtins();
        filters.register("replier", |_, _| Ok(Arc::new(Replier) as Arc<dyn L7Filter>));
        let proxy = Proxy::builder(Config::from_yaml(&yaml)?)
            .codecs(metaprotocol_examples::codec_registry())
            .filters(filters)
            .start()
            .await?;
        let listener = proxy.listener_addr("in").ok_or("no listener")?;
        let admin = proxy.admin_addr().ok_or("no admin")?;
        Ok(Self {
            client: DubboClient::new(listener),
            proxy,
            provider,
            listener,
            admin,
            yaml,
            _closed: closing,
        })
    }

    /// `/metrics` as a scraper with `accept` gets it: the content type and the text.
    async fn scrape(&self, accept: &str) -> TestResult<(String, String)> {
        let mut socket = TcpStream::connect(self.admin).await?;
        let ask = format!(
            "GET /metrics HTTP/1.1\r\nHost: admin\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        socket.write_all(ask.as_bytes()).await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut answer)).await??;
        let (head, body) = answer.split_once("\r\n\r\n").ok_or("no body")?;
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        Ok((content_type, body.to_owned()))
    }

    async fn metrics(&self) -> TestResult<String> {
        Ok(self.scrape("*/*").await?.1)
    }

    /// Waits until the listener counted `count` finished requests of `outcome`.
    async fn until_completed(&self, outcome: &str, count: f64) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await?;
            let done = sample(
                &text,
                "metaprotocol_downstream_rq_completed_total",
                &[("outcome", outcome)],
            );
            if done >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{count} {outcome} expected, {done} counted: {text}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A call whose body is not Hessian2: the proxy answers status 40 (bad request) itself.
async fn malformed_call(listener: SocketAddr) -> TestResult<u8> {
    let mut bytes = dubbo_request(1, "sayHello", &[]).to_vec();
    for b in bytes.iter_mut().skip(16) {
        *b = 0xff;
    }
    let mut socket = TcpStream::connect(listener).await?;
    socket.write_all(&bytes).await?;
    let mut header = [0u8; 16];
    socket.read_exact(&mut header).await?;
    Ok(header[3])
}

/// A client that sends a slow call and resets its connection while it is in flight.
async fn client_gone(world: &World) -> TestResult {
    let mut socket = TcpStream::connect(world.listener).await?;
    socket
        .write_all(&dubbo_request(1, SLOW_METHOD, &[("x-route", "gone")]))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(
        &world.metrics().await?,
        "metaprotocol_downstream_rq_active",
        &[],
    ) < 1.0
    {
        if Instant::now() > deadline {
            return Err("the call never arrived".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A zero linger makes the close a reset; it cannot block (nothing is left to send).
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO))?;
    drop(socket);
    world.until_completed("client_gone", 1.0).await
}

/// Makes every kind of call; returns how many of each outcome.
async fn traffic(world: &World) -> TestResult<Vec<(&'static str, f64)>> {
    let client = &world.client;
    // Multiplexed: 50 calls in flight at once on one client connection.
    let calls = (0..50).map(|_| client.call("sayHello", "w", &[]));
    for reply in futures::future::join_all(calls).await {
        assert_eq!(reply?.dubbo_status, 20);
    }
    client.send_oneway("sayHello", "one-way", &[])?;
    client.send_oneway("sayHello", "one-way", &[])?;
    for _ in 0..3 {
        assert_eq!(
            client.call(EXCEPTION_METHOD, "w", &[]).await?.dubbo_status,
            20
        );
    }
    for _ in 0..2 {
        assert_eq!(
            client.call(FAILING_METHOD, "w", &[]).await?.dubbo_status,
            70
        );
    }
    let (a, b) = tokio::join!(
        client.call(SLOW_METHOD, "w", &[]),
        client.call(SLOW_METHOD, "w", &[])
    );
    assert_eq!((a?.dubbo_status, b?.dubbo_status), (31, 31), "timeouts");
    let reset = client.call(HANG_UP_METHOD, "w", &[]).await?;
    assert_eq!(reset.dubbo_status, 80, "upstream reset");
    assert_eq!(
        client.call("unknownMethod", "w", &[]).await?.dubbo_status,
        60
    );
    assert_eq!(client.call("toNowhere", "w", &[]).await?.dubbo_status, 80);
    assert_eq!(client.call("toClosed", "w", &[]).await?.dubbo_status, 80);
    assert_eq!(malformed_call(world.listener).await?, 40);
    for kind in ["unauthorized", "over_limit", "fault_abort", "unavailable"] {
        client.call("sayHello", "w", &[("x-reply", kind)]).await?;
    }
    assert_eq!(
        client
            .call("sayHello", "w", &[("x-panic", "1")])
            .await?
            .dubbo_status,
        80
    );
    client_gone(world).await?;
    world.until_completed("success", 52.0).await?;
    Ok(vec![
        ("success", 52.0),
        ("application_error", 3.0),
        ("server_error", 2.0),
        ("timeout", 2.0),
        ("upstream_reset", 1.0),
        ("route_not_found", 1.0),
        ("no_healthy_upstream", 1.0),
        ("upstream_connect_failure", 1.0),
        ("bad_request", 1.0),
        ("internal", 1.0),
        ("unauthorized", 1.0),
        ("over_limit", 1.0),
        ("fault_abort", 1.0),
        ("unavailable", 1.0),
        ("client_gone", 1.0),
    ])
}

#[tokio::test]
async fn every_call_is_counted_once_under_its_outcome_and_promtool_accepts_it() -> TestResult {
    tokio::time::timeout(TEST_DEADLINE, async {
        let world = World::start(false).await?;
        let expected = traffic(&world).await?;
        let text = world.metrics().await?;
        let total: f64 = expected.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 70.0);
        let completed = "metaprotocol_downstream_rq_completed_total";
        for (outcome, count) in &expected {
            assert_eq!(
                sample(
                    &text,
                    completed,
                    &[("listener", "in"), ("outcome", outcome)]
                ),
                *count,
                "{outcome}: {text}"
            );
        }
        assert_eq!(sample(&text, completed, &[]), total, "nothing else: {text}");
        assert_eq!(
            sample(&text, "metaprotocol_downstream_rq_total", &[]),
            total
        );
        let listener_time = "metaprotocol_downstream_rq_time_seconds_count";
        assert_eq!(sample(&text, listener_time, &[]), total);
        // By method: routes name sayHello and the slow method; the others got their own.
        assert_eq!(
            sample(
                &text,
                completed,
                &[("method", "sayHello"), ("outcome", "success")]
            ),
            52.0
        );
        assert_eq!(
            sample(&text, completed, &[("method", EXCEPTION_METHOD)]),
            3.0
        );
        assert_eq!(
            sample(&text, completed, &[("method", "other")]),
            1.0,
            "the malformed call"
        );

        // Per route.
        let route = "metaprotocol_route_rq_completed_total";
        let by_route = |name: &str, outcome: &str| {
            sample(&text, route, &[("route", name), ("outcome", outcome)])
        };
        assert_eq!(by_route("hello", "success"), 52.0);
        assert_eq!(by_route("slow", "timeout"), 2.0);
        assert_eq!(by_route("failing", "application_error"), 3.0);
        assert_eq!(by_route("failing", "server_error"), 2.0);
        assert_eq!(by_route("failing", "upstream_reset"), 1.0);
        assert_eq!(by_route("empty", "no_healthy_upstream"), 1.0);
        assert_eq!(by_route("closed", "upstream_connect_failure"), 1.0);
        assert_eq!(by_route("gone", "client_gone"), 1.0);
        assert_eq!(
            sample(&text, route, &[]),
            total - 7.0,
            "the unrouted, malformed and refused calls have no route: {text}"
        );

        // The timeouts are in the slow route's duration histogram, past 250 ms, within 500 ms.
        let bucket = "metaprotocol_route_rq_time_seconds_bucket";
        let slow = |le: &str| sample(&text, bucket, &[("route", "slow"), ("le", le)]);
        assert_eq!(
            (slow("0.25"), slow("0.5"), slow("+Inf")),
            (0.0, 2.0, 2.0),
            "{text}"
        );
        let method_bucket = "metaprotocol_downstream_rq_time_seconds_bucket";
        let slow_method =
            |le: &str| sample(&text, method_bucket, &[("method", SLOW_METHOD), ("le", le)]);
        assert_eq!(
            (slow_method("0.25"), slow_method("0.5")),
            (1.0, 3.0),
            "the abandoned call ended early, the timeouts after 300 ms"
        );

        // Bytes: every answer's bytes are counted.
        assert!(
            sample(
                &text,
                "metaprotocol_route_rq_tx_bytes_total",
                &[("route", "hello")]
            ) > 0.0
        );
        assert!(sample(&text, "metaprotocol_downstream_rq_rx_bytes_total", &[]) > 0.0);

        // Endpoints.
        let provider = world.provider.address().to_string();
        let endpoint = [("cluster", "provider"), ("endpoint", provider.as_str())];
        let attempts = sample(&text, "metaprotocol_endpoint_rq_total", &endpoint);
        assert_eq!(attempts, 52.0 + 3.0 + 2.0 + 2.0 + 1.0 + 1.0, "{text}");
        assert_eq!(
            sample(
                &text,
                "metaprotocol_endpoint_rq_time_seconds_count",
                &endpoint
            ),
            attempts - 3.0,
            "answered, failed and timed-out attempts (not the one-way calls, which have no \
             answer, nor the one its client abandoned)"
        );
        assert!(sample(&text, "metaprotocol_endpoint_cx_total", &endpoint) >= 1.0);
        let healthy = [("cluster", "provider"), ("state", "healthy")];
        assert_eq!(sample(&text, "metaprotocol_endpoint_health", &healthy), 1.0);
        assert_eq!(
            sample(
                &text,
                "metaprotocol_endpoint_cx_connect_fail_total",
                &[("cluster", "closed")]
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "metaprotocol_upstream_circuit_breaker_open",
                &[("cluster", "provider"), ("breaker", "max_requests")]
            ),
            0.0
        );
        assert!(text.contains("metaprotocol_build_info{version=\""));
        assert!(text.contains("process_start_time_seconds "));

        if let Some(problems) = promtool_problems(&text)? {
            assert!(problems.is_empty(), "promtool: {problems:#?}");
        }
        let (content_type, open) = world
            .scrape("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
            .await?;
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(open.ends_with("# EOF\n"));
        let (content_type, _) = world.scrape("*/*").await?;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        world.proxy.shutdown().await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn istio_series_carry_istios_labels() -> TestResult {
    tokio::time::timeout(TEST_DEADLINE, async {
        let world = World::start(true).await?;
        for _ in 0..3 {
            world.client.call("sayHello", "w", &[]).await?;
        }
        world.client.call(SLOW_METHOD, "w", &[]).await?;
        world.client.call("unknownMethod", "w", &[]).await?;
        world.until_completed("timeout", 1.0).await?;
        let text = world.metrics().await?;
        let requests = "istio_requests_total";
        let greeter = [
            ("reporter", "source"),
            ("source_workload", "gateway"),
            ("source_workload_namespace", "edge"),
            ("destination_service", "provider"),
            ("destination_app", "greeter"),
            ("destination_version", "v1"),
            ("request_protocol", "dubbo"),
        ];
        let with = |code: &str, flags: &str| {
            let mut labels = greeter.to_vec();
            labels.extend([("response_code", code), ("response_flags", flags)]);
            sample(&text, requests, &labels)
        };
        assert_eq!(with("200", "-"), 3.0, "{text}");
        assert_eq!(with("504", "UT,LR"), 1.0, "{text}");
        assert_eq!(
            sample(
                &text,
                requests,
                &[("destination_service", "unknown"), ("response_code", "404")]
            ),
            1.0,
            "{text}"
        );
        let timeouts = [("response_code", "504"), ("le", "250")];
        assert_eq!(
            sample(
                &text,
                "istio_request_duration_milliseconds_bucket",
                &timeouts
            ),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                "istio_request_duration_milliseconds_count",
                &[("response_code", "504")]
            ),
            1.0
        );
        if let Some(problems) = promtool_problems(&text)? {
            // Istio's histogram is in milliseconds, which promtool's lint prefers in seconds;
            // the name is Istio's, kept for its dashboards.
            assert!(
                problems
                    .iter()
                    .all(|p| p.starts_with("istio_request_duration_milliseconds ")),
                "promtool: {problems:#?}"
            );
        }
        world.proxy.shutdown().await;
        Ok(())
    })
    .await?
}

/// Series an embedder or a filter names so that two families would be written under one name
/// (a counter `x` is written `x_total`, a histogram `h` writes `h_count`): the one registered
/// second is not exported, so that promtool parses the scrape.
#[test]
fn series_written_under_another_familys_name_are_refused_and_the_scrape_stays_valid() -> TestResult
{
    let metrics = Metrics::new();
    let root = metrics.root();
    root.counter("calls", "Calls").inc();
    root.gauge("calls_total", "Calls, as a gauge").set(7);
    root.gauge("jobs_total", "Jobs, as a gauge").set(3);
    root.counter("jobs", "Jobs").inc();
    root.histogram("work_seconds", "Work", &[0.1])
        .observe(Duration::from_millis(5));
    root.gauge("work_seconds_count", "Work, counted").set(9);
    let text = metrics.encode(ExpositionFormat::Prometheus);
    if let Some(problems) = promtool_problems(&text)? {
        // The gauge `jobs_total`, registered first and kept, draws promtool's note that only
        // counters end in `_total`: a name's style, where the scrape parses.
        assert!(
            problems
                .iter()
                .all(|p| p.starts_with("metaprotocol_jobs_total ")),
            "promtool: {problems:#?}\n{text}"
        );
    }
    // promtool reads the Prometheus text format only; in OpenMetrics a name written twice
    // shows as two samples of it.
    for format in [ExpositionFormat::Prometheus, ExpositionFormat::OpenMetrics] {
        let text = metrics.encode(format);
        for (name, value) in [
            ("metaprotocol_calls_total", 1.0),
            ("metaprotocol_jobs_total", 3.0),
            ("metaprotocol_work_seconds_count", 1.0),
        ] {
            assert_eq!(
                sample(&text, name, &[]),
                value,
                "{name}, {format:?}: {text}"
            );
        }
    }
    Ok(())
}

/// The Istio counts of requests that reached no cluster outlive a reload that changes their
/// listener, once the listener's old connections are gone.
#[tokio::test]
async fn istio_counts_of_a_listener_outlive_its_reload() -> TestResult {
    tokio::time::timeout(TEST_DEADLINE, async {
        let world = World::start(true).await?;
        world.client.call("unknownMethod", "w", &[]).await?;
        world.until_completed("route_not_found", 1.0).await?;
        let not_found = |text: &str| {
            sample(
                text,
                "istio_requests_total",
                &[("destination_service", "unknown"), ("response_code", "404")],
            )
        };
        assert_eq!(not_found(&world.metrics().await?), 1.0);
        let changed = world.yaml.replace(
            "    route_config: routes\n",
            "    route_config: routes\n    idle_timeout: 5m\n",
        );
        assert_ne!(changed, world.yaml);
        world.proxy.reload(Config::from_yaml(&changed)?).await?;
        // The old context goes with its last connection, which drains after a quiet second.
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = world.metrics().await?;
            let open = sample(
                &text,
                "metaprotocol_downstream_cx_active",
                &[("listener", "in")],
            );
            if open == 0.0 {
                break text;
            }
            if Instant::now() > deadline {
                return Err(format!("the old connection never closed: {text}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(not_found(&text), 1.0, "{text}");
        world.proxy.shutdown().await;
        Ok(())
    })
    .await?
}

/// Retries, mirrors and direct responses: each request is still counted once, under its final
/// outcome and its route, while each attempt and each mirrored copy shows where it went.
#[tokio::test]
async fn retries_mirrors_and_direct_responses_count_each_request_once() -> TestResult {
    tokio::time::timeout(TEST_DEADLINE, async {
        let provider = DemoProvider::start("p").await?;
        let shadow = DemoProvider::start("shadow").await?;
        let yaml = format!(
            r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: routes }}
route_configs:
  - name: routes
    routes:
      - name: retired
        match: {{ metadata: [ {{ key: method, exact: legacyCall }} ] }}
        direct_response: {{ kind: unavailable, message: "legacyCall is retired" }}
      - name: retried
        match: {{ metadata: [ {{ key: method, exact: {FAILING_METHOD} }} ] }}
        route: {{ cluster: provider }}
        retry_policy:
          num_retries: 2
          retry_on: [ unavailable ]
          idempotent_methods: [ {FAILING_METHOD} ]
          retry_back_off: {{ base_interval: 1ms }}
      - name: mirrored
        route: {{ cluster: provider }}
        mirror: {{ cluster: shadow }}
clusters:
  - {{ name: provider, endpoints: [ {{ address: "{}" }} ] }}
  - {{ name: shadow, endpoints: [ {{ address: "{}" }} ] }}
"#,
            provider.address(),
            shadow.address()
        );
        let proxy = start_engine(&yaml).await?;
        let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
        for _ in 0..3 {
            assert_eq!(client.call("legacyCall", "w", &[]).await?.dubbo_status, 100);
        }
        for _ in 0..2 {
            assert_eq!(
                client.call(FAILING_METHOD, "w", &[]).await?.dubbo_status,
                70
            );
        }
        for _ in 0..4 {
            assert_eq!(client.call("sayHello", "w", &[]).await?.dubbo_status, 20);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while shadow.seen().len() < 4 {
            assert!(
                Instant::now() < deadline,
                "the mirror got {:?}",
                shadow.seen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = proxy.admin_addr().ok_or("no admin")?;
        let text = support::admin::http(admin, "GET", "/metrics", "").await?.1;

        let completed = "metaprotocol_downstream_rq_completed_total";
        assert_eq!(
            sample(&text, completed, &[]),
            9.0,
            "one per request: {text}"
        );
        let route = "metaprotocol_route_rq_completed_total";
        let by_route = |name: &str, outcome: &str| {
            sample(&text, route, &[("route", name), ("outcome", outcome)])
        };
        assert_eq!(by_route("retired", "unavailable"), 3.0, "{text}");
        assert_eq!(by_route("retried", "server_error"), 2.0, "{text}");
        assert_eq!(by_route("mirrored", "success"), 4.0, "{text}");
        assert_eq!(sample(&text, route, &[]), 9.0, "{text}");
        assert_eq!(
            sample(&text, "metaprotocol_route_rq_time_seconds_count", &[]),
            9.0
        );
        let attempts = |name: &str| {
            sample(
                &text,
                "metaprotocol_route_upstream_rq_attempts_total",
                &[("route", name)],
            )
        };
        assert_eq!(
            (
                attempts("retired"),
                attempts("retried"),
                attempts("mirrored")
            ),
            (0.0, 6.0, 4.0),
            "{text}"
        );
        let endpoint = |cluster: &str| {
            sample(
                &text,
                "metaprotocol_endpoint_rq_total",
                &[("cluster", cluster)],
            )
        };
        assert_eq!(endpoint("provider"), 6.0 + 4.0, "every attempt, once");
        assert_eq!(endpoint("shadow"), 4.0, "every mirrored copy");
        assert_eq!(
            sample(
                &text,
                "metaprotocol_route_mirror_rq_total",
                &[("route", "mirrored"), ("outcome", "sent")]
            ),
            4.0
        );
        proxy.shutdown().await;
        Ok(())
    })
    .await?
}
