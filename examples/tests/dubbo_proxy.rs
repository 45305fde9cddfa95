//! The engine end to end with Dubbo: real sockets on 127.0.0.1, the demo providers as servers,
//! the engine as a library (and, in `proxy_binary.rs`, as the binary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, EncodeParams, LocalReply, MAX_METADATA_ENTRIES,
    METADATA_OVERFLOW_REASON, Message, MessageKind, OptionsError, PoolMode, ResponseStatus, Side,
    WireVariant,
};
use metaprotocol_examples::dubbo_demo::{
    DEMO_SERVICE, DemoProvider, DubboClient, Reply, SLOW_METHOD,
};
use metaprotocol_router::{Config, Proxy, UpstreamError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)]
mod support;

use support::TestResult;
use support::admin::http;
use support::proxy::start_engine;

/// Three providers (v1/user, v2/user, v2/batchjob) and a proxy configured with `routes` (YAML
/// list items, indented by 6) over cluster `demo` made of them.
struct World {
    providers: Vec<DemoProvider>,
    proxy: Proxy,
    client: DubboClient,
}

impl World {
    async fn start(routes: &str) -> TestResult<Self> {
        Self::start_with(routes, "", Duration::from_secs(5)).await
    }

    async fn start_with(
        routes: &str,
        extra_clusters: &str,
        slow_delay: Duration,
    ) -> TestResult<Self> {
        let mut providers = Vec::new();
        for name in ["v1-user", "v2-user", "v2-batchjob"] {
            providers.push(DemoProvider::start_with_delay(name, slow_delay).await?);
        }
        let labels = [
            "{ version: v1, group: user }",
            "{ version: v2, group: user }",
            "{ version: v2, group: batchjob }",
        ];
        let endpoints: String = providers
            .iter()
            .zip(labels)
            .map(|(p, l)| format!("      - {{ address: {}, labels: {l} }}\n", p.address()))
            .collect();
        let yaml = format!(
            "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
route_configs:
  - name: r
    routes:
{routes}
clusters:
  - name: demo
    endpoints:
{endpoints}{extra_clusters}"
        );
        let proxy = Proxy::start(
            Config::from_yaml(&yaml)?,
            metaprotocol_examples::codec_registry(),
        )
        .await?;
        let address = proxy.listener_addr("in").ok_or("no listener")?;
        Ok(Self {
            providers,
            proxy,
            client: DubboClient::new(address),
        })
    }

    fn provider(&self, name: &str) -> &DemoProvider {
        self.providers
            .iter()
            .find(|p| p.name() == name)
            .unwrap_or(&self.providers[0])
    }
}

#[tokio::test]
async fn routes_on_interface_method_and_attachments() -> TestResult {
    let world = World::start(&format!(
        "      - match: {{ metadata: [ {{ key: tenant, exact: t1 }}, {{ key: method, prefix: say }} ] }}
        route: {{ cluster: demo, subset: {{ group: batchjob }} }}
      - match: {{ metadata: [ {{ key: interface, exact: {DEMO_SERVICE} }}, {{ key: method, exact: sayHello }} ] }}
        route: {{ cluster: demo, subset: {{ version: v1 }} }}
      - match: {{ metadata: [ {{ key: method, regex: 'say.*' }} ] }}
        route: {{ cluster: demo, subset: {{ version: v2, group: user }} }}"
    ))
    .await?;
    let tenant = world
        .client
        .call("sayHello", "a", &[("tenant", "t1")])
        .await?;
    assert_eq!(tenant.attachment("provider"), Some("v2-batchjob"));
    let plain = world
        .client
        .call("sayHello", "a", &[("tenant", "t2")])
        .await?;
    assert_eq!(plain.attachment("provider"), Some("v1-user"));
    let other = world.client.call("sayGoodbye", "a", &[]).await?;
    assert_eq!(other.attachment("provider"), Some("v2-user"));
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn weighted_split_and_subsets() -> TestResult {
    let world = World::start(
        "      - route:
          weighted_clusters:
            - { cluster: demo, subset: { version: v1 }, weight: 30 }
            - { cluster: demo, subset: { version: v2, group: user }, weight: 70 }",
    )
    .await?;
    let mut v1 = 0;
    let n = 1000;
    for _ in 0..n {
        let reply = world.client.call("sayHello", "a", &[]).await?;
        match reply.attachment("provider") {
            Some("v1-user") => v1 += 1,
            Some("v2-user") => {}
            other => panic!("a call reached {other:?}"),
        }
    }
    let share = 100.0 * f64::from(v1) / f64::from(n);
    assert!((25.0..=35.0).contains(&share), "v1 got {share}%");
    assert!(world.provider("v2-batchjob").seen().is_empty());
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn mutations_reach_the_server_and_the_client() -> TestResult {
    let world = World::start(
        "      - route: { cluster: demo, subset: { version: v1 } }
        request_mutation: { set: { x-routed-by: proxy, tenant: rewritten }, remove: [debug] }
        response_mutation: { set: { x-served-by: proxy }, remove: [echo-x-trace-id] }",
    )
    .await?;
    let reply = world
        .client
        .call(
            "sayHello",
            "a",
            &[("debug", "1"), ("tenant", "t1"), ("x-trace-id", "abc")],
        )
        .await?;
    let seen = world.provider("v1-user").seen();
    let request = &seen[0].metadata;
    assert_eq!(request.get("x-routed-by"), Some("proxy"));
    assert_eq!(request.get("tenant"), Some("rewritten"));
    assert!(!request.contains("debug"));
    assert_eq!(request.get("x-trace-id"), Some("abc"));
    assert_eq!(reply.attachment("x-served-by"), Some("proxy"));
    assert_eq!(reply.attachment("echo-x-routed-by"), Some("proxy"));
    assert_eq!(reply.attachment("echo-x-trace-id"), None);
    assert!(reply.body_contains("Hello from v1-user"));
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn one_way_reaches_the_server_and_gets_no_answer() -> TestResult {
    let world = World::start("      - route: { cluster: demo, subset: { version: v1 } }").await?;
    world
        .client
        .send_oneway("notify", "a", &[("x-one", "way")])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.provider("v1-user").seen().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = world.provider("v1-user").seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].kind, MessageKind::Oneway);
    assert_eq!(seen[0].metadata.get("method"), Some("notify"));
    // The demo provider does not answer one-way calls; a real one might, and its answer must
    // not disturb the next call on the shared connection.
    let reply = world.client.call("sayHello", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, 20);
    world.proxy.shutdown().await;
    Ok(())
}

/// A golden heartbeat from dubbo-ssl-python (two-way, event flag).
const HEARTBEAT: &str = "dabbe2000000000000000001000000014e";

#[tokio::test]
async fn heartbeats_are_answered_by_the_proxy() -> TestResult {
    let world = World::start("      - route: { cluster: demo }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let mut socket = TcpStream::connect(address).await?;
    socket.write_all(&hex::decode(HEARTBEAT)?).await?;
    let mut reply = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut reply)).await??;
    assert_eq!(&reply[..2], &[0xda, 0xbb]);
    assert_eq!(reply[2] & 0x20, 0x20, "an event (heartbeat) response");
    assert_eq!(reply[2] & 0x80, 0, "a response");
    assert_eq!(reply[3], 20);
    assert_eq!(&reply[4..12], &1u64.to_be_bytes());
    assert!(world.providers.iter().all(|p| p.seen().is_empty()));
    world.proxy.shutdown().await;
    Ok(())
}

/// An event request whose data is neither null (a heartbeat) nor "R" (read-only) gets no
/// answer, as from a Java provider, and is no heartbeat the proxy answered: it counts in
/// `codec_events_unanswered_total{protocol="dubbo"}`, not in `downstream_heartbeats_total`,
/// which counts the heartbeat after it alone.
#[tokio::test]
async fn an_event_that_is_no_heartbeat_counts_apart_from_heartbeats() -> TestResult {
    let world = World::start("      - route: { cluster: demo }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let unanswered = |metrics: &str| {
        support::metrics::sample(
            metrics,
            "metaprotocol_codec_events_unanswered_total",
            &[("protocol", "dubbo")],
        )
    };
    let before = unanswered(&world.proxy.metrics().render());
    let mut socket = TcpStream::connect(address).await?;
    // A two-way Hessian2 event of id 2 carrying the string "X", then the heartbeat of id 1.
    let mut event = hex::decode("dabbe2000000000000000002000000020158")?;
    event.extend_from_slice(&hex::decode(HEARTBEAT)?);
    socket.write_all(&event).await?;
    let mut reply = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(20), socket.read_exact(&mut reply)).await??;
    assert_eq!(&reply[4..12], &1u64.to_be_bytes(), "the heartbeat's answer");
    let heartbeats = |metrics: &str| {
        support::metrics::sample(
            metrics,
            "metaprotocol_downstream_heartbeats_total",
            &[("listener", "in")],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = world.proxy.metrics().render();
        if heartbeats(&metrics) >= 1.0 || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(heartbeats(&metrics), 1.0, "heartbeats answered");
    assert_eq!(unanswered(&metrics) - before, 1.0, "events left unanswered");
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn no_route_is_a_service_not_found_reply() -> TestResult {
    let world = World::start(&format!(
        "      - match: {{ metadata: [ {{ key: interface, exact: {DEMO_SERVICE} }} ] }}
        route: {{ cluster: demo }}"
    ))
    .await?;
    let started = Instant::now();
    let reply = world
        .client
        .call_service("org.example.Nope", "sayHello", "a", &[])
        .await?;
    assert_eq!(reply.dubbo_status, 60);
    assert!(reply.body_contains("no route for service org.example.Nope method sayHello"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(world.proxy.metrics().render().contains(
        "metaprotocol_local_replies_total{listener=\"in\",reason=\"route_not_found\"} 1"
    ));
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_down_upstream_is_an_error_reply_not_a_hang() -> TestResult {
    let (_down, dead) = support::refusing_addr()?;
    let world = World::start_with(
        "      - route: { cluster: dead }
        timeout: 10s",
        &format!("  - name: dead\n    endpoints: [ {{ address: {dead} }} ]\n"),
        Duration::from_secs(5),
    )
    .await?;
    let started = Instant::now();
    let reply = world.client.call("sayHello", "a", &[]).await?;
    assert_ne!(reply.dubbo_status, 20);
    assert!(
        reply.body_contains(&dead.to_string()),
        "the reply names the upstream"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_route_timeout_is_a_timeout_reply_in_about_the_timeout() -> TestResult {
    let world = World::start_with(
        "      - route: { cluster: demo, subset: { version: v1 } }
        timeout: 300ms",
        "",
        Duration::from_secs(3),
    )
    .await?;
    let started = Instant::now();
    let reply = world.client.call("sayHelloSlowly", "a", &[]).await?;
    let took = started.elapsed();
    assert_eq!(reply.dubbo_status, 31, "SERVER_TIMEOUT");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    // The connection stays usable, and the late answer is dropped, not delivered.
    let next = world.client.call("sayHello", "a", &[]).await?;
    assert_eq!(next.dubbo_status, 20);
    world.proxy.shutdown().await;
    Ok(())
}

/// A Dubbo consumer's deadline caps the route's: its `_TO` attachment (Dubbo's timeout
/// countdown: the time left of the call), or its `timeout` attachment written as a string of
/// milliseconds (as Java consumers write the time left of each call, and dubbo-go): the proxy
/// answers SERVER_TIMEOUT when the consumer gives up rather than wait on for a provider nobody
/// waits for.
#[tokio::test]
async fn a_consumers_timeout_caps_the_route_timeout() -> TestResult {
    let world = World::start_with(
        "      - route: { cluster: demo, subset: { version: v1 } }
        timeout: 10s",
        "",
        Duration::from_secs(3),
    )
    .await?;
    for attachment in ["_TO", "timeout"] {
        let started = Instant::now();
        let reply = world
            .client
            .call(SLOW_METHOD, "a", &[(attachment, "300")])
            .await?;
        let took = started.elapsed();
        assert_eq!(
            reply.dubbo_status, 31,
            "SERVER_TIMEOUT under `{attachment}`"
        );
        assert!(
            took >= Duration::from_millis(290),
            "answered when the consumer's 300 ms in `{attachment}` ran out: took {took:?}"
        );
    }
    world.proxy.shutdown().await;
    Ok(())
}

/// The provider is told how long the proxy waits for its answer as a Dubbo consumer tells it:
/// a route `timeout` shorter than the consumer's `_TO` countdown goes as the call's `_TO`, at
/// most the route's; a consumer's own shorter one is kept, and a consumer that sent
/// none (it did not enable the countdown) sends none through the proxy either, its `timeout`
/// attachment as it came.
#[tokio::test]
async fn a_route_timeout_shorter_than_the_consumers_countdown_reaches_the_provider() -> TestResult {
    let world = World::start(
        "      - route: { cluster: demo, subset: { version: v1 } }
        timeout: 2s",
    )
    .await?;
    let calls: [&[(&str, &str)]; 3] = [
        &[("x-call", "0"), ("_TO", "5000")],
        &[("x-call", "1"), ("_TO", "1000")],
        &[("x-call", "2"), ("timeout", "5000")],
    ];
    for attachments in calls {
        let reply = world.client.call("sayHello", "a", attachments).await?;
        assert_eq!(reply.dubbo_status, 20);
    }
    let seen = world.provider("v1-user").seen();
    let call = |number: &str| {
        seen.iter()
            .find(|request| request.metadata.get("x-call") == Some(number))
            .map(|request| request.metadata.clone())
            .ok_or_else(|| format!("call {number} reached the provider"))
    };
    let told = call("0")?;
    let countdown = told.get("_TO").and_then(|ms| ms.parse::<u64>().ok());
    assert!(
        countdown.is_some_and(|ms| (1..=2000).contains(&ms)),
        "the consumer allowed 5000 ms, the proxy waits 2000 ms at most: the provider was told {:?}",
        told.get("_TO")
    );
    // As it came, or, had the call waited a millisecond or more before it was routed, what is
    // left of it: never the route's longer 2000 ms.
    let shorter = call("1")?;
    let countdown = shorter.get("_TO").and_then(|ms| ms.parse::<u64>().ok());
    assert!(
        countdown.is_some_and(|ms| (1..=1000).contains(&ms)),
        "a shorter one goes as it came: the provider was told {:?}",
        shorter.get("_TO")
    );
    let without = call("2")?;
    assert_eq!(without.get("_TO"), None, "no countdown is added");
    assert_eq!(
        without.get("timeout"),
        Some("5000"),
        "`timeout` goes as it came"
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_few_upstream_connections() -> TestResult {
    let world = World::start("      - route: { cluster: demo, subset: { group: user } }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..100 {
        clients.spawn(async move {
            let client = Arc::new(DubboClient::new(address));
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..100 {
                let client = client.clone();
                calls.spawn(async move {
                    let tag = format!("{c}-{i}");
                    let reply = client.call("sayHello", &tag, &[("x-caller", &tag)]).await;
                    (tag, reply)
                });
            }
            let mut ok = 0;
            while let Some(joined) = calls.join_next().await {
                let (tag, reply) = joined.map_err(|e| e.to_string())?;
                let reply = reply.map_err(|e| e.to_string())?;
                if reply.attachment("echo-x-caller") != Some(tag.as_str()) {
                    return Err(format!(
                        "caller {tag} got {:?}",
                        reply.attachment("echo-x-caller")
                    ));
                }
                ok += 1;
            }
            Ok::<_, String>(ok)
        });
    }
    let mut delivered = 0;
    while let Some(joined) = clients.join_next().await {
        delivered += joined??;
    }
    assert_eq!(delivered, 10_000);
    let upstream: usize = world.providers.iter().map(DemoProvider::connections).sum();
    assert!(upstream < 10, "{upstream} upstream connections");
    world.proxy.shutdown().await;
    Ok(())
}

/// Writes `count` calls (ids from `first`) in one write and reads their answers.
async fn call_in_one_write(client: &mut TcpStream, first: u64, count: u64) -> TestResult {
    let requests: Vec<u8> = (first..first + count)
        .flat_map(|id| support::dubbo_request(id, "sayHello", &[]))
        .collect();
    client.write_all(&requests).await?;
    read_answers(client, count).await?;
    Ok(())
}

/// Reads `count` answers (waiting at most 5 s for each read).
/// A decoder of the proxy's answers, as a client reads them.
fn answer_decoder() -> Box<dyn metaprotocol_core::Codec> {
    metaprotocol_dubbo::DubboCodecFactory::new(1 << 20)
        .new_codec(Side::Upstream, WireVariant::DEFAULT)
}

/// A 200 KiB slow call and `count - 1` small ones after it (ids 1 to `count`), in one buffer:
/// after the large frame a read takes up to 1 MiB, thousands of the small calls.
fn calls_after_a_large_one(count: u64) -> Vec<u8> {
    let big = "b".repeat(200 * 1024);
    let mut calls = support::dubbo_request(1, SLOW_METHOD, &[("x-big", &big)]).to_vec();
    calls.extend((2..=count).flat_map(|id| support::dubbo_request(id, SLOW_METHOD, &[])));
    calls
}

async fn read_answers(
    client: &mut (impl tokio::io::AsyncRead + Unpin),
    count: u64,
) -> TestResult<Vec<metaprotocol_core::Message>> {
    let mut decoder = answer_decoder();
    let mut buf = bytes::BytesMut::new();
    let mut answers = Vec::new();
    while (answers.len() as u64) < count {
        let read = tokio::time::timeout(Duration::from_secs(20), client.read_buf(&mut buf));
        if read.await?? == 0 {
            return Err(format!("closed after {} answers", answers.len()).into());
        }
        while let Some(answer) = decoder.decode(&mut buf)? {
            answers.push(answer);
        }
    }
    Ok(answers)
}

/// A proxy in front of `provider`, whose cluster has `fields` (YAML flow entries, may be empty).
async fn proxy_for(provider: &DemoProvider, fields: &str) -> TestResult<Proxy> {
    let yaml = format!(
        "listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}
clusters:
  - {{ name: c, {fields}endpoints: [ {{ address: {} }} ] }}
",
        provider.address()
    );
    start_engine(&yaml).await
}

/// Requests that arrive together leave together: they join one upstream connection's batch
/// (one write) instead of being dealt out over the endpoint's connections one by one, and the
/// next batch goes to the next connection.
#[tokio::test]
async fn requests_read_together_go_out_together_on_one_connection() -> TestResult {
    const BATCH: u64 = 8;
    let provider = DemoProvider::start("v1").await?;
    let proxy = proxy_for(&provider, "connections_per_endpoint: 2, ").await?;
    let mut client = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    for batch in 0..4 {
        // One write: the proxy reads and routes the whole batch before any upstream task runs.
        call_in_one_write(&mut client, batch * BATCH, BATCH).await?;
    }
    drop(client);
    let seen = provider.seen();
    assert_eq!(seen.len(), 4 * BATCH as usize);
    let connections: Vec<usize> = seen.iter().map(|request| request.connection).collect();
    for (batch, requests) in connections.chunks(BATCH as usize).enumerate() {
        assert!(
            requests.iter().all(|&c| c == requests[0]),
            "batch {batch} was split over connections: {connections:?}"
        );
    }
    assert_eq!(provider.connections(), 2, "{connections:?}");
    assert!(
        connections.contains(&0) && connections.contains(&1),
        "{connections:?}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// By default every client's requests share one connection to the endpoint.
#[tokio::test]
async fn clients_share_one_upstream_connection_by_default() -> TestResult {
    let provider = DemoProvider::start("v1").await?;
    let proxy = proxy_for(&provider, "").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(TcpStream::connect(address).await?);
    }
    for round in 0..3 {
        let calls = clients
            .iter_mut()
            .enumerate()
            .map(|(i, client)| call_in_one_write(client, (round * 3 + i as u64) * 4, 4));
        for called in futures::future::join_all(calls).await {
            called?;
        }
    }
    drop(clients);
    assert_eq!(provider.seen().len(), 36);
    assert_eq!(provider.connections(), 1);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() -> TestResult {
    let world = World::start("      - route: { cluster: demo }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let healthy = world.client.call("sayHello", "a", &[]).await?;
    assert_eq!(healthy.dubbo_status, 20);
    let bad_inputs: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\n\r\n",
        // Valid header announcing a 2 GiB body.
        &[
            0xda, 0xbb, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff,
        ],
    ];
    for bad in bad_inputs {
        let mut socket = TcpStream::connect(address).await?;
        socket.write_all(bad).await?;
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "the proxy closes a connection that sent {bad:02x?}"
        );
    }
    let still = world.client.call("sayHello", "a", &[]).await?;
    assert_eq!(still.dubbo_status, 20, "other connections are unharmed");
    let metrics = world.proxy.metrics().render();
    let errors: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("metaprotocol_downstream_protocol_errors_total{listener=\"in\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(errors, 2, "{metrics}");
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_malformed_body_behind_a_sound_header_gets_status_40_and_keeps_the_connection()
-> TestResult {
    let world = World::start("      - route: { cluster: demo }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let mut socket = TcpStream::connect(address).await?;
    // A sound header whose Hessian body is truncated (a string that claims 20 bytes and has 2),
    // then a sound heartbeat on the same connection.
    let truncated = [
        0xda, 0xbb, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 3, 0x14, b'a', b'b',
    ];
    socket.write_all(&truncated).await?;
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut header)).await??;
    assert_eq!(header[3], 40, "bad request");
    assert_eq!(
        &header[4..12],
        &9u64.to_be_bytes(),
        "answered to its own id"
    );
    let len = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    let mut body = vec![0u8; len as usize];
    socket.read_exact(&mut body).await?;
    socket.write_all(&hex::decode(HEARTBEAT)?).await?;
    let mut reply = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut reply)).await??;
    assert_eq!(reply[3], 20, "the connection still serves");
    assert!(
        world.providers.iter().all(|p| p.seen().is_empty()),
        "never forwarded"
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn route_updates_are_hitless() -> TestResult {
    let world = World::start_with(
        "      - name: main
        route: { cluster: demo, subset: { version: v1 } }",
        "",
        Duration::from_millis(300),
    )
    .await?;
    let client = Arc::new(DubboClient::new(
        world.proxy.listener_addr("in").ok_or("no listener")?,
    ));
    let before = client.call("sayHello", "a", &[]).await?;
    assert_eq!(before.attachment("provider"), Some("v1-user"));
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.call("sayHelloSlowly", "a", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let admin = world.proxy.admin_addr().ok_or("no admin")?;
    let body = "name: r\nroutes:\n  - { name: main, route: { cluster: demo, subset: { version: v2, group: user } } }\n";
    let (status, answer) = http(admin, "PUT", "/route_configs/r", body).await?;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"version\":2"), "{answer}");
    let (status, answer) = http(
        admin,
        "PUT",
        "/route_configs/r",
        "name: r\nroutes:\n  - route: { cluster: ghost }\n",
    )
    .await?;
    assert_eq!(status, 400);
    assert!(
        answer.contains("routes[0].route.cluster") && answer.contains("ghost"),
        "{answer}"
    );
    let slow = in_flight.await??;
    assert_eq!(
        slow.attachment("provider"),
        Some("v1-user"),
        "in flight: the old table"
    );
    let after = client.call("sayHello", "a", &[]).await?;
    assert_eq!(
        after.attachment("provider"),
        Some("v2-user"),
        "new requests: the new table"
    );
    assert_eq!(
        client.open_connections(),
        1,
        "the client connection survived"
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint() -> TestResult {
    let (_down, dead) = support::refusing_addr()?;
    let live = DemoProvider::start("live").await?;
    let world = World::start_with(
        "      - route: { cluster: flaky }
        retry_policy: { num_retries: 1, retry_on: [connect_failure] }",
        &format!(
            "  - name: flaky\n    endpoints: [ {{ address: {dead} }}, {{ address: {} }} ]\n",
            live.address()
        ),
        Duration::from_secs(5),
    )
    .await?;
    for _ in 0..10 {
        let reply = world.client.call("sayHello", "a", &[]).await?;
        assert_eq!(reply.dubbo_status, 20);
        assert_eq!(reply.attachment("provider"), Some("live"));
    }
    // Which first attempts hit the dead endpoint depends on the balancer's turn; each of them
    // was retried, and every call still succeeded.
    let metrics = world.proxy.metrics().render();
    let retries: u64 = metrics
        .lines()
        .find(|l| l.starts_with("metaprotocol_upstream_rq_retry_total{cluster=\"flaky\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .ok_or("no retry counter")?;
    assert!((1..=10).contains(&retries), "{retries} retries");
    assert!(
        metrics.contains(
            "metaprotocol_upstream_rq_responses_total{cluster=\"flaky\",outcome=\"ok\"} 10"
        )
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn timeouts_of_centuries_mean_never_not_a_panic() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let forever = "18446744073709551615s";
    let proxy = proxy_in_front_of(
        &provider,
        &format!("drain_time: {forever}"),
        &format!(", idle_timeout: {forever}, frame_timeout: {forever}"),
    )
    .await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    // A call in two parts (the frame's deadline is set by its first part), then a whole one.
    let call = support::dubbo_request(1, "sayHello", &[]);
    socket.write_all(&call[..10]).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    socket.write_all(&call[10..]).await?;
    let (header, _) = read_frame(&mut socket).await?;
    assert_eq!((header[3], &header[4..12]), (20, &1u64.to_be_bytes()[..]));
    call_in_one_write(&mut socket, 2, 1).await?;
    // A drain whose time is centuries away still ends: the idle connection closes after its
    // quiet second.
    tokio::time::timeout(Duration::from_secs(10), proxy.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_takes_none_of_its_answers_is_disconnected() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let admin = "admin: { address: 127.0.0.1:0 }";
    let proxy = proxy_in_front_of(&provider, admin, ", idle_timeout: 1s").await?;
    let socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let (mut reader, mut writer) = socket.into_split();
    // Calls whose answers echo 60 kB each: 300 of them fill the sockets' buffers on both sides
    // and the 1 MiB past which the proxy stops reading, while the client reads nothing.
    let big = "x".repeat(60_000);
    let calls: Vec<u8> = (1..=300)
        .flat_map(|id| support::dubbo_request(id, "sayHello", &[("x-big", big.as_str())]))
        .collect();
    // The proxy stops reading these part-way: the write waits (and then fails) on its own.
    let writing = tokio::spawn(async move { writer.write_all(&calls).await });
    // Past the stall limit (the idle timeout, 1 s here), the connection is closed while the
    // client still reads nothing, and its unsent answers are given back. Looked at until then
    // (on a loaded machine, filling the buffers takes a while), for 30 s at most.
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let closed = [
        "metaprotocol_downstream_cx_overflow_total{listener=\"in\"} 1",
        "metaprotocol_downstream_cx_active{listener=\"in\"} 0",
        "metaprotocol_buffered_bytes 0",
    ];
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, metrics) = http(admin, "GET", "/metrics", "").await?;
        let missing: Vec<&str> = closed
            .iter()
            .copied()
            .filter(|line| !metrics.lines().any(|l| l == *line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {missing:?} in {metrics}"
        );
    }
    // The client sees the end, after what the kernel held for it (or a reset).
    let mut answers = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answers));
    assert!(
        read.await.is_ok(),
        "still open after {} bytes",
        answers.len()
    );
    writing.abort();
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn idle_client_connections_are_closed() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy_in_front_of(&provider, "", ", idle_timeout: 200ms").await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await??;
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(190) && idle < Duration::from_secs(2),
        "closed after {idle:?}"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn other_serializations_get_a_bad_request_reply_and_keep_the_connection() -> TestResult {
    let world = World::start("      - route: { cluster: demo }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let mut socket = TcpStream::connect(address).await?;
    // A two-way request in Java native serialization (id 3), body opaque to the proxy.
    let mut frame = vec![0xda, 0xbb, 0xc3, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 4];
    frame.extend_from_slice(b"java");
    socket.write_all(&frame).await?;
    let (header, body) = read_frame(&mut socket).await?;
    assert_eq!(header[3], 40, "BAD_REQUEST");
    assert_eq!(&header[4..12], &5u64.to_be_bytes());
    assert!(String::from_utf8_lossy(&body).contains("serialization id 3 is not supported"));
    // The connection is still served.
    socket.write_all(&hex::decode(HEARTBEAT)?).await?;
    let mut reply = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut reply)).await??;
    assert_eq!(reply[3], 20);
    assert!(world.providers.iter().all(|p| p.seen().is_empty()));
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_call_with_more_attachments_than_metadata_keeps_gets_a_bad_request_reply() -> TestResult {
    let world = World::start("      - route: { cluster: demo }").await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let mut socket = TcpStream::connect(address).await?;
    // More attachments than the metadata keeps, besides the entries of the call itself.
    let keys: Vec<String> = (0..MAX_METADATA_ENTRIES).map(|n| format!("a{n}")).collect();
    let attachments: Vec<(&str, &str)> = keys.iter().map(|key| (key.as_str(), "v")).collect();
    socket
        .write_all(&support::dubbo_request(7, "sayHello", &attachments))
        .await?;
    let (header, body) = read_frame(&mut socket).await?;
    assert_eq!(header[3], 40, "BAD_REQUEST");
    assert_eq!(&header[4..12], &7u64.to_be_bytes());
    assert!(String::from_utf8_lossy(&body).contains(METADATA_OVERFLOW_REASON));
    assert!(world.providers.iter().all(|p| p.seen().is_empty()));
    // The connection is still served, and a call with fewer attachments goes through.
    let fewer = &attachments[..MAX_METADATA_ENTRIES / 2];
    socket
        .write_all(&support::dubbo_request(8, "sayHello", fewer))
        .await?;
    let (header, _) = read_frame(&mut socket).await?;
    assert_eq!((header[3], &header[4..12]), (20, &8u64.to_be_bytes()[..]));
    world.proxy.shutdown().await;
    Ok(())
}

/// Reads one Dubbo frame: its header and body.
async fn read_frame(socket: &mut TcpStream) -> TestResult<([u8; 16], Vec<u8>)> {
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut header)).await??;
    let len = u32::from_be_bytes([header[12], header[13], header[14], header[15]]) as usize;
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut body)).await??;
    Ok((header, body))
}

/// A filter that panics on every request.
struct Panics;

impl metaprotocol_core::L7Filter for Panics {
    fn name(&self) -> &str {
        "panics"
    }

    fn on_request(
        &self,
        _: &mut metaprotocol_core::RequestContext<'_>,
    ) -> metaprotocol_core::FilterDecision {
        panic!("a buggy filter")
    }
}

/// A proxy in front of `provider` whose listener runs `filter`, registered as `name`.
async fn proxy_with_filter(
    provider: &DemoProvider,
    name: &'static str,
    filter: Arc<dyn metaprotocol_core::L7Filter>,
) -> TestResult<Proxy> {
    let yaml = format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, filters: [ {{ name: {name} }} ] }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    );
    let mut filters = metaprotocol_router::FilterRegistry::with_builtins();
    filters.register(name, move |_, _| Ok(filter.clone()));
    Ok(Proxy::builder(Config::from_yaml(&yaml)?)
        .codecs(metaprotocol_examples::codec_registry())
        .filters(filters)
        .start()
        .await?)
}

#[tokio::test]
async fn a_request_whose_handling_panics_still_gets_an_error_reply() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy_with_filter(&provider, "panics", Arc::new(Panics)).await?;
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    let reply =
        tokio::time::timeout(Duration::from_secs(5), client.call("sayHello", "a", &[])).await??;
    assert_eq!(reply.dubbo_status, 80);
    assert!(reply.body_contains("failed inside the proxy"));
    assert!(provider.seen().is_empty());
    assert!(
        proxy
            .metrics()
            .render()
            .contains("metaprotocol_downstream_rq_active{listener=\"in\"} 0")
    );
    proxy.shutdown().await;
    Ok(())
}

/// Waits, then panics while it is polled.
struct PanicsWhileWaiting;

impl metaprotocol_core::L7Filter for PanicsWhileWaiting {
    fn name(&self) -> &str {
        "panics-while-waiting"
    }

    fn on_request(
        &self,
        ctx: &mut metaprotocol_core::RequestContext<'_>,
    ) -> metaprotocol_core::FilterDecision {
        if ctx.request.metadata.get("method") != Some("sayHelloLater") {
            return metaprotocol_core::FilterDecision::Continue;
        }
        metaprotocol_core::FilterDecision::Wait(Box::pin(async {
            tokio::task::yield_now().await;
            panic!("a buggy wait")
        }))
    }
}

/// A filter whose wait panics costs its request an error reply; the connection, and the calls
/// on it, go on (the panic used to end the connection's task).
#[tokio::test]
async fn a_filter_wait_that_panics_gets_its_request_an_error_reply() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy_with_filter(
        &provider,
        "panics-while-waiting",
        Arc::new(PanicsWhileWaiting),
    )
    .await?;
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    let call = |method| tokio::time::timeout(Duration::from_secs(5), client.call(method, "a", &[]));
    let reply = call("sayHelloLater").await??;
    assert_eq!(reply.dubbo_status, 80);
    assert!(reply.body_contains("a filter's wait"));
    assert_eq!(call("sayHello").await??.dubbo_status, 20);
    assert_eq!(provider.connections(), 1);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_enormous_route_timeout_means_no_timeout() -> TestResult {
    let world = World::start(
        "      - route: { cluster: demo, subset: { version: v1 } }
        timeout: 500000000000years
        retry_policy: { num_retries: 1, per_try_timeout: 500000000000years }",
    )
    .await?;
    let call = world.client.call("sayHello", "a", &[]);
    let reply = tokio::time::timeout(Duration::from_secs(5), call).await??;
    assert_eq!(reply.dubbo_status, 20);
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn route_metrics_follow_the_published_table() -> TestResult {
    let world = World::start("      - { name: old, route: { cluster: demo } }").await?;
    let series = |route: &str| {
        format!("metaprotocol_route_rq_total{{route_config=\"r\",route=\"{route}\"}}")
    };
    // A call first: the client's connection has read the table it routes by, and must see
    // the update at its next call.
    world.client.call("sayHello", "a", &[]).await?;
    assert!(
        world
            .proxy
            .metrics()
            .render()
            .contains(&format!("{} 1", series("old")))
    );

    let rejected = metaprotocol_router::config::RouteConfigSpec::from_yaml(
        "name: r\nroutes:\n  - { name: fine, route: { cluster: demo } }\n  - { name: broken, route: { cluster: ghost } }\n",
    )?;
    assert!(world.proxy.update_route_config(rejected).await.is_err());
    let metrics = world.proxy.metrics().render();
    assert!(
        !metrics.contains(&series("fine")) && !metrics.contains(&series("broken")),
        "{metrics}"
    );
    assert!(metrics.contains(&series("old")));

    let renamed = metaprotocol_router::config::RouteConfigSpec::from_yaml(
        "name: r\nroutes:\n  - { name: new, route: { cluster: demo } }\n",
    )?;
    world.proxy.update_route_config(renamed).await?;
    world.client.call("sayHello", "a", &[]).await?;
    let metrics = world.proxy.metrics().render();
    assert!(
        metrics.contains(&format!("{} 1", series("new"))),
        "{metrics}"
    );
    assert!(!metrics.contains(&series("old")), "{metrics}");
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn clusters_shows_health_counters_and_draining_endpoints() -> TestResult {
    let (_down, dead) = support::refusing_addr()?;
    let live = DemoProvider::start_with_delay("live", Duration::from_millis(500)).await?;
    let world = World::start_with(
        "      - route: { cluster: mixed }
        retry_policy: { num_retries: 1, retry_on: [connect_failure] }",
        &format!(
            "  - name: mixed\n    endpoints: [ {{ address: {dead} }}, {{ address: {} }} ]\n",
            live.address()
        ),
        Duration::from_secs(5),
    )
    .await?;
    for _ in 0..10 {
        assert_eq!(
            world.client.call("sayHello", "a", &[]).await?.dubbo_status,
            20
        );
    }
    let admin = world.proxy.admin_addr().ok_or("no admin")?;
    let endpoint = |clusters: &serde_json::Value, address: std::net::SocketAddr| {
        clusters["clusters"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == "mixed"))
            .and_then(|c| c["endpoints"].as_array())
            .and_then(|e| {
                e.iter()
                    .find(|e| e["address"] == address.to_string())
                    .cloned()
            })
            .unwrap_or_default()
    };
    let (status, body) = http(admin, "GET", "/clusters", "").await?;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&body)?;
    let down = endpoint(&clusters, dead);
    assert!(
        down["connect_failures"].as_u64().unwrap_or(0) >= 1,
        "{down}"
    );
    assert_eq!(down["health"], "healthy", "{down}");
    let up = endpoint(&clusters, live.address());
    assert_eq!(up["health"], "healthy");
    assert_eq!(up["connect_failures"], 0);
    assert!(up["total_requests"].as_u64().unwrap_or(0) >= 10, "{up}");
    assert!(up["open_connections"].as_u64().unwrap_or(0) >= 1, "{up}");

    let client = Arc::new(DubboClient::new(
        world.proxy.listener_addr("in").ok_or("no listener")?,
    ));
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.call("sayHelloSlowly", "a", &[]).await })
    };
    while live.seen().iter().all(|r| {
        r.metadata
            .get("method")
            .is_none_or(|m| m != "sayHelloSlowly")
    }) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let only_dead =
        format!("{{ \"name\": \"mixed\", \"endpoints\": [ {{ \"address\": \"{dead}\" }} ] }}");
    let (status, answer) = http(admin, "PUT", "/clusters/mixed", &only_dead).await?;
    assert_eq!(status, 200, "{answer}");
    let (_, body) = http(admin, "GET", "/clusters", "").await?;
    let draining = endpoint(&serde_json::from_str(&body)?, live.address());
    assert_eq!(draining["health"], "draining", "{body}");
    assert_eq!(draining["active_requests"], 1, "{body}");
    let slow = in_flight.await??;
    assert_eq!(
        slow.dubbo_status, 20,
        "the request in flight finished on its snapshot"
    );
    let (status, answer) = http(admin, "DELETE", "/clusters/mixed", "").await?;
    assert_eq!(status, 409, "a route still uses it: {answer}");
    let (status, _) = http(admin, "DELETE", "/clusters/nope", "").await?;
    assert_eq!(status, 404);
    world.proxy.shutdown().await;
    Ok(())
}

/// A proxy in front of `provider` that drains for `drain_time`.
async fn draining_proxy(provider: &DemoProvider, drain_time: &str) -> TestResult<Proxy> {
    let top_level = format!("admin: {{ address: 127.0.0.1:0 }}\ndrain_time: {drain_time}");
    proxy_in_front_of(provider, &top_level, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_fails_no_call_of_clients_that_stop_within_the_drain() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = draining_proxy(&provider, "3s").await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let client = Arc::new(DubboClient::new(address));
        for _ in 0..8 {
            let (client, stop) = (client.clone(), stop.clone());
            callers.push(tokio::spawn(async move {
                let (mut calls, mut failed) = (0usize, 0usize);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match client.call("sayHello", "drain", &[]).await {
                        Ok(reply) if reply.dubbo_status == 20 => {}
                        _ => failed += 1,
                    }
                    calls += 1;
                }
                (calls, failed)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The shutdown begins here, in its first poll (in this task, so that what follows knows it
    // began): `/ready` says draining and the listeners are told to stop. The rest of it, the
    // wait for the connections to drain, goes on in a task of its own.
    let started = Instant::now();
    let mut shutdown = Box::pin({
        let proxy = proxy.clone();
        async move { proxy.shutdown().await }
    });
    assert!(
        futures::poll!(shutdown.as_mut()).is_pending(),
        "drained at once"
    );
    let shutdown = tokio::spawn(async move {
        shutdown.await;
        started.elapsed()
    });
    let (status, _) = http(admin, "GET", "/ready", "").await?;
    assert_eq!(status, 503, "not ready from the moment shutdown begins");
    // The listener lets go of its socket once its accept loop, on another task, has seen the
    // shutdown (a while on a loaded machine): from then on, while the connections it accepted
    // still drain, a new one is refused.
    while tokio::net::TcpStream::connect(address).await.is_ok() {
        assert!(
            !shutdown.is_finished() && started.elapsed() < Duration::from_secs(10),
            "new connections were taken until the drain ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!shutdown.is_finished(), "refused while draining");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut failed) = (0, 0);
    for caller in callers {
        let (c, f) = caller.await?;
        calls += c;
        failed += f;
    }
    assert_eq!(
        failed, 0,
        "{failed} of {calls} calls failed during the drain"
    );
    assert!(calls > 100, "{calls}");
    let took = shutdown.await?;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    Ok(())
}

/// The client connections the proxy's listener `in` holds open.
const OPEN_CONNECTIONS: &str = "metaprotocol_downstream_cx_active{listener=\"in\"}";

/// A call the provider holds for 10 s, in flight through a proxy that drains for `drain_time`:
/// the provider, the proxy, and the call's task, once the provider has the call.
async fn slow_call_in_flight(
    drain_time: &str,
) -> TestResult<(
    DemoProvider,
    Proxy,
    tokio::task::JoinHandle<Result<Reply, UpstreamError>>,
)> {
    let provider = DemoProvider::start_with_delay("p", Duration::from_secs(10)).await?;
    let proxy = draining_proxy(&provider, drain_time).await?;
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    let slow = tokio::spawn(async move { client.call("sayHelloSlowly", "a", &[]).await });
    while provider.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((provider, proxy, slow))
}

#[tokio::test]
async fn at_the_drain_deadline_calls_still_open_get_an_error_reply() -> TestResult {
    let (_provider, proxy, slow) = slow_call_in_flight("300ms").await?;
    let mut watcher = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    // Accepted before the drain: one still in the listen queue then is never served.
    until("the watcher accepted", || {
        support::proxy::metric(&proxy, OPEN_CONNECTIONS) == 2.0
    })
    .await?;
    let started = Instant::now();
    let shutdown = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    let mut notice = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(2), watcher.read_exact(&mut notice)).await??;
    assert_eq!(&notice[..3], &[0xda, 0xbb, 0xa2], "a one-way event request");
    assert_eq!(
        &notice[16..],
        &[0x01, b'R'],
        "Dubbo's READONLY event: going away"
    );
    let reply = tokio::time::timeout(Duration::from_secs(2), slow).await???;
    shutdown.await?;
    assert_eq!(reply.dubbo_status, 100, "answered, not dropped: {reply:?}");
    assert!(reply.body_contains("shutting down"));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        proxy
            .metrics()
            .render()
            .contains("metaprotocol_local_replies_total{listener=\"in\",reason=\"unavailable\"} 1")
    );
    Ok(())
}

/// An answer to a call the drain deadline answered matched no request waiting, and is counted
/// so, though it comes while the call's connection is still closing (the proxy reads what the
/// client still sends, for 2 s at most, before it lets the socket go).
#[tokio::test]
async fn an_answer_to_a_call_the_drain_deadline_answered_is_counted_unmatched() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_secs(1)).await?;
    let proxy = draining_proxy(&provider, "300ms").await?;
    let unmatched = "metaprotocol_upstream_unmatched_responses_total{cluster=\"c\"}";
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    socket
        .write_all(&support::dubbo_request(1, SLOW_METHOD, &[]))
        .await?;
    while provider.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shutdown = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    // The going-away notice (a request), then the drain deadline's answer to the call.
    loop {
        let (header, _) = read_frame(&mut socket).await?;
        if header[2] & 0x80 == 0 {
            assert_eq!((header[3], &header[4..12]), (100, &1u64.to_be_bytes()[..]));
            break;
        }
    }
    // The provider answers a second after the call, while the client, sending on, keeps the
    // closing connection open.
    for _ in 0..15 {
        if socket.write_all(b"x").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted = async {
        while support::proxy::metric(&proxy, unmatched) < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), counted)
        .await
        .map_err(|_| "the answer was not counted")?;
    shutdown.await?;
    assert_eq!(support::proxy::metric(&proxy, unmatched), 1.0, "once");
    Ok(())
}

/// A reload's `drain_time` holds for the connections already open: they drain for the time in
/// force when the drain starts, the time the shutdown waits for. (They kept the one of the
/// listener they were accepted by: shortened from 60 s to 300 ms, a call open on such a
/// connection was neither answered at the shutdown's deadline nor before it gave up waiting.)
#[tokio::test]
async fn a_reloaded_drain_time_applies_to_connections_already_open() -> TestResult {
    let (_provider, proxy, slow) = slow_call_in_flight("60s").await?;
    let config = proxy.config();
    let reloaded = Config {
        drain_time: Duration::from_millis(300),
        ..config
    };
    let summary = proxy.reload(reloaded).await?;
    assert!(
        summary.listeners.is_empty(),
        "a new drain time changes no listener: {summary:?}"
    );
    let started = Instant::now();
    let shutdown = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    let reply = tokio::time::timeout(Duration::from_secs(3), slow)
        .await
        .map_err(|_| "the call was not answered at the new drain deadline")???;
    assert_eq!(reply.dubbo_status, 100, "answered, not dropped: {reply:?}");
    assert!(reply.body_contains("shutting down"));
    shutdown.await?;
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}

/// A listener replaced at its address (a reload adding an rbac rule, say) drains the
/// connections it had accepted, so that its new settings reach every client within the drain
/// time: an open connection kept the old filters until it closed, and Dubbo clients keep theirs
/// for days.
#[tokio::test]
async fn a_reloaded_listener_drains_its_open_connections_onto_its_new_settings() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = draining_proxy(&provider, "1s").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let client = DubboClient::new(address);
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    let denied = format!(
        "admin: {{ address: 127.0.0.1:0 }}
drain_time: 1s
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, filters: [
  {{ name: rbac, config: {{ action: deny, policies: [
    {{ name: no-hellos, metadata: [ {{ key: method, exact: sayHello }} ] }} ] }} }} ] }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    );
    let summary = proxy.reload_yaml(&denied).await?;
    assert_eq!(summary.listeners, [("in".to_owned(), address)]);
    // The client's connection is told to go away and closes once idle; its next calls meet the
    // rule (a call on a connection just closing may fail, and is tried again).
    let reloaded = Instant::now();
    let mut last = None;
    while reloaded.elapsed() < Duration::from_secs(5) {
        last = client
            .call("sayHello", "a", &[])
            .await
            .ok()
            .map(|r| r.dubbo_status);
        if last == Some(40) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last,
        Some(40),
        "the open connection still had the old filters"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A listener renamed at its address, or an address moved from one listener to another, takes
/// the removed listener's socket over (a bind of an address still in use failed, and the whole
/// update with it); the removed listener's open connections drain as usual.
#[tokio::test]
async fn a_listener_renamed_at_its_address_takes_its_socket_over() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy_in_front_of(&provider, "", "").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let old = DubboClient::new(address);
    assert_eq!(old.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    let renamed = format!(
        "listeners: [ {{ name: renamed, address: {address}, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    );
    let summary = proxy.reload_yaml(&renamed).await?;
    assert_eq!(summary.listeners, [("renamed".to_owned(), address)]);
    assert_eq!(summary.removed, ["listener in"]);
    assert_eq!(proxy.listener_addr("renamed"), Some(address));
    // The old connection drains: it still answers.
    assert_eq!(old.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    let new = DubboClient::new(address);
    assert_eq!(new.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    assert_eq!(
        support::proxy::metric(
            &proxy,
            "metaprotocol_downstream_cx_total{listener=\"renamed\"}"
        ),
        1.0
    );
    proxy.shutdown().await;
    Ok(())
}

/// [`Proxy::shutdown_now`] (an operator who will not wait for the drain) answers every call
/// still open with the protocol's "unavailable" reply at once, as the drain deadline would, and
/// closes the connections, however long the drain time.
#[tokio::test]
async fn shutdown_now_answers_the_calls_still_open_at_once() -> TestResult {
    let (_provider, proxy, slow) = slow_call_in_flight("60s").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    // An idle client, and one whose drain is under way (the drain began first).
    let mut idle = TcpStream::connect(address).await?;
    until("the idle client accepted", || {
        support::proxy::metric(&proxy, OPEN_CONNECTIONS) == 2.0
    })
    .await?;
    let draining = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    proxy.shutdown_now().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let reply = tokio::time::timeout(Duration::from_secs(1), slow).await???;
    assert_eq!(reply.dubbo_status, 100, "answered, not dropped: {reply:?}");
    assert!(reply.body_contains("shutting down"));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), idle.read_to_end(&mut rest)).await??;
    tokio::time::timeout(Duration::from_secs(1), draining).await??;
    assert!(
        proxy
            .metrics()
            .render()
            .contains("metaprotocol_local_replies_total{listener=\"in\",reason=\"unavailable\"} 1")
    );
    Ok(())
}

/// A connection the proxy closes (here after a bad frame) still delivers its last answers to a
/// client that goes on sending: the proxy reads and drops the rest until the client closes, as a
/// socket closed with unread bytes is reset, and a reset can destroy answers in flight.
#[tokio::test]
async fn a_client_still_sending_when_the_proxy_closes_gets_its_last_answers() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_millis(300)).await?;
    let proxy = proxy_in_front_of(&provider, "", "").await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let slow = support::dubbo_request(1, SLOW_METHOD, &[]);
    socket
        .write_all(&[&slow[..], b"GET / HTTP/1.1\r\n\r\n"].concat())
        .await?;
    // Sent while the slow call is in flight, after the proxy stopped reading.
    tokio::time::sleep(Duration::from_millis(100)).await;
    socket.write_all(&[b'x'; 64 * 1024]).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await??;
    let mut decoder = answer_decoder();
    let answer = decoder
        .decode(&mut bytes::BytesMut::from(&rest[..]))?
        .ok_or("no answer")?;
    assert_eq!((answer.request_id, answer.status), (1, ResponseStatus::Ok));
    proxy.shutdown().await;
    Ok(())
}

/// The answer to a call whose client's connection was reset while the call was upstream
/// matched no request waiting, and is counted so, however soon after the reset it comes.
#[tokio::test]
async fn an_answer_to_a_call_whose_client_is_gone_is_counted_unmatched() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_millis(300)).await?;
    let proxy = proxy_in_front_of(&provider, "", "").await?;
    let unmatched = "metaprotocol_upstream_unmatched_responses_total{cluster=\"c\"}";
    // The connection forgets the calls of clients that are gone once a second: rounds whose
    // answers come before that, and those that come after it, are all counted.
    for round in 1..=5 {
        let mut socket =
            TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
        socket
            .write_all(&support::dubbo_request(round, SLOW_METHOD, &[]))
            .await?;
        while provider.seen().len() < round as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        socket.set_zero_linger()?;
        drop(socket);
        let counted = async {
            while support::proxy::metric(&proxy, unmatched) < round as f64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), counted)
            .await
            .map_err(|_| format!("round {round}: the answer was not counted"))?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(support::proxy::metric(&proxy, unmatched), 5.0, "each once");
    proxy.shutdown().await;
    Ok(())
}

/// A client that shuts its write side after its last call (as most RPC clients do once they
/// have nothing more to send) still gets every answer, and the proxy closes the connection once
/// the last is written, not at the calls' deadlines.
#[tokio::test]
async fn a_client_that_half_closes_gets_every_answer_then_the_connection_closes() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_millis(300)).await?;
    let proxy = start_engine(&format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 60s }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    ))
    .await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let count = 20;
    let calls: Vec<u8> = (1..=count)
        .flat_map(|id| {
            let method = if id % 2 == 0 { SLOW_METHOD } else { "sayHello" };
            support::dubbo_request(id, method, &[])
        })
        .collect();
    socket.write_all(&calls).await?;
    socket.shutdown().await?;
    let mut rest = Vec::new();
    // Closed after the last answer: well before the calls' 60 s deadline, whatever the load.
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut rest)).await??;
    let mut decoder = answer_decoder();
    let mut buf = bytes::BytesMut::from(&rest[..]);
    let mut ids = Vec::new();
    while let Some(answer) = decoder.decode(&mut buf)? {
        assert_eq!(answer.status, ResponseStatus::Ok, "{answer:?}");
        ids.push(answer.request_id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=count).collect::<Vec<u64>>(), "one answer a call");
    assert!(buf.is_empty(), "nothing but whole answers");
    proxy.shutdown().await;
    Ok(())
}

/// At the drain deadline, the calls past the in-flight bound that wait whole in the read buffer
/// get the error reply of the calls in flight: the proxy read them, so they are answered, not
/// dropped with the connection.
#[tokio::test]
async fn at_the_drain_deadline_calls_read_but_not_started_get_an_error_reply_too() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_secs(10)).await?;
    let proxy = draining_proxy(&provider, "300ms").await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    // The small calls past the 4,096th wait in the read buffer.
    let count = 4600;
    socket.write_all(&calls_after_a_large_one(count)).await?;
    let in_flight = "metaprotocol_downstream_rq_active{listener=\"in\"}";
    let started = Instant::now();
    while support::proxy::metric(&proxy, in_flight) < 4096.0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never 4,096 in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shutdown = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await??;
    shutdown.await?;
    let mut decoder = answer_decoder();
    let mut buf = bytes::BytesMut::from(&rest[..]);
    let mut ids = Vec::new();
    while let Some(message) = decoder.decode(&mut buf)? {
        if message.kind == MessageKind::Response {
            assert_ne!(message.status, ResponseStatus::Ok);
            assert!(message.frame.windows(13).any(|w| w == b"shutting down"));
            ids.push(message.request_id);
        }
    }
    let answered = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), answered, "one answer a call");
    assert!(
        answered > 4096,
        "only the calls in flight were answered: {answered}"
    );
    assert!(ids.iter().all(|id| (1..=count).contains(id)));
    Ok(())
}

/// Dubbo, but a codec that panics on a call of method `panic` as it decodes it from a client,
/// and on one of method `panicUpstream` as it encodes it for a server: bugs in a codec.
struct PanickingDubbo(Arc<dyn CodecFactory>);

impl CodecFactory for PanickingDubbo {
    fn protocol(&self) -> &'static str {
        self.0.protocol()
    }

    fn new_codec(&self, side: Side, variant: WireVariant) -> Box<dyn Codec> {
        Box::new(PanickingCodec {
            inner: self.0.new_codec(side, variant),
            side,
        })
    }

    fn upstream_variant(&self, request: &Message) -> WireVariant {
        self.0.upstream_variant(request)
    }

    fn pool_mode(&self) -> PoolMode {
        self.0.pool_mode()
    }

    fn max_request_id(&self) -> u64 {
        self.0.max_request_id()
    }
}

struct PanickingCodec {
    inner: Box<dyn Codec>,
    side: Side,
}

impl PanickingCodec {
    fn check(&self, message: &Message, on: Side, method: &str) {
        if self.side == on && message.metadata.get("method") == Some(method) {
            panic!("a codec bug, provoked by a test");
        }
    }
}

impl Codec for PanickingCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        let message = self.inner.decode(src)?;
        if let Some(message) = &message {
            self.check(message, Side::Downstream, "panic");
        }
        Ok(message)
    }

    fn decode_into(&mut self, src: &mut BytesMut, slot: &mut Message) -> Result<bool, CodecError> {
        let decoded = self.inner.decode_into(src, slot)?;
        if decoded {
            self.check(slot, Side::Downstream, "panic");
        }
        Ok(decoded)
    }

    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        self.check(message, Side::Upstream, "panicUpstream");
        self.inner.encode(message, params, dst)
    }

    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        self.inner.encode_local_reply(request, reply, dst)
    }

    fn encode_heartbeat_reply(
        &mut self,
        heartbeat: &Message,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        self.inner.encode_heartbeat_reply(heartbeat, dst)
    }
}

#[tokio::test]
async fn a_connection_whose_task_panics_is_closed_and_counted_and_its_calls_leave_the_gauges()
-> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_secs(10)).await?;
    let mut codecs = metaprotocol_examples::codec_registry();
    let plain = metaprotocol_examples::codec_registry();
    codecs.register("dubbo", move |options| {
        let dubbo = plain
            .build("dubbo", options)
            .ok_or_else(|| OptionsError::new("protocol", "no dubbo codec"))??;
        Ok(Arc::new(PanickingDubbo(dubbo)) as Arc<dyn CodecFactory>)
    });
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    );
    let proxy = Proxy::start(Config::from_yaml(&yaml)?, codecs).await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut socket = TcpStream::connect(address).await?;
    socket
        .write_all(&support::dubbo_request(1, SLOW_METHOD, &[]))
        .await?;
    while provider.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_flight = "metaprotocol_downstream_rq_active{listener=\"in\"}";
    assert_eq!(support::proxy::metric(&proxy, in_flight), 1.0);
    socket
        .write_all(&support::dubbo_request(2, "panic", &[]))
        .await?;
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await?;
    assert!(
        closed.is_err() || rest.is_empty(),
        "closed, unanswered: {closed:?}, {} bytes",
        rest.len()
    );
    let panics = "metaprotocol_downstream_cx_panics_total{listener=\"in\"}";
    assert_eq!(support::proxy::metric(&proxy, panics), 1.0);
    assert_eq!(
        support::proxy::metric(&proxy, in_flight),
        0.0,
        "the call in flight left with its connection"
    );
    let open = "metaprotocol_downstream_cx_active{listener=\"in\"}";
    assert_eq!(support::proxy::metric(&proxy, open), 0.0);
    let client = DubboClient::new(address);
    let reply = client.call("sayHello", "a", &[]).await?;
    assert_eq!(
        reply.dubbo_status, 20,
        "other connections are served: {reply:?}"
    );
    // A panic on an upstream connection's task: its calls are answered, and the next call
    // gets a new connection.
    let reply = client.call("panicUpstream", "a", &[]).await?;
    assert_ne!(reply.dubbo_status, 20, "answered with an error: {reply:?}");
    let panics = "metaprotocol_upstream_cx_panics_total{cluster=\"c\"}";
    assert_eq!(support::proxy::metric(&proxy, panics), 1.0);
    let reply = client.call("sayHello", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, 20, "{reply:?}");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_frame_cut_where_the_proxy_stopped_reading_waits_until_it_reads_again() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_secs(2)).await?;
    let proxy = proxy_in_front_of(&provider, "", ", frame_timeout: 500ms").await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let slow = |id| support::dubbo_request(id, SLOW_METHOD, &[]);
    // 4,095 slow calls, which the proxy reads; then the 4,096th, past which it stops reading
    // (that many in flight), and the start of one more call, in one write.
    let calls: Vec<u8> = (1..4096).flat_map(slow).collect();
    socket.write_all(&calls).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = support::dubbo_request(4097, "sayHello", &[]);
    socket
        .write_all(&[&slow(4096)[..], &last[..10]].concat())
        .await?;
    // The slow answers come after 2 s, four frame timeouts, while the proxy did not read: the
    // cut frame's time starts when it reads again, as the first answers go out. Its rest is
    // sent then, not after all 4,096 answers are read, which a loaded machine may take longer
    // than a frame timeout to do.
    tokio::time::timeout(Duration::from_secs(10), socket.readable()).await??;
    socket.write_all(&last[10..]).await?;
    let answers = read_answers(&mut socket, 4097).await?;
    assert!(answers.iter().all(|a| a.status == ResponseStatus::Ok));
    assert!(
        answers.iter().any(|a| a.request_id == 4097),
        "no answer to the cut call"
    );
    proxy.shutdown().await;
    Ok(())
}

/// However much one read brings, a client has at most 4,096 calls in flight: after a large frame
/// a read takes up to 1 MiB, thousands of small calls, and those past the bound wait in the read
/// buffer until calls end. Each still gets its one answer.
#[tokio::test]
async fn one_large_read_does_not_take_a_client_past_its_calls_in_flight() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_secs(1)).await?;
    let proxy = proxy_in_front_of(&provider, "", "").await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let count = 7000;
    socket.write_all(&calls_after_a_large_one(count)).await?;
    let in_flight = "metaprotocol_downstream_rq_active{listener=\"in\"}";
    // Sampled from the first call in flight (a loaded machine may take a while to read them),
    // for as long as the provider holds them.
    until("calls in flight", || {
        support::proxy::metric(&proxy, in_flight) > 0.0
    })
    .await?;
    let mut most = 0.0f64;
    for _ in 0..40 {
        most = most.max(support::proxy::metric(&proxy, in_flight));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most <= 4096.0, "{most} calls in flight");
    let answers = read_answers(&mut socket, count).await?;
    assert!(answers.iter().all(|a| a.status == ResponseStatus::Ok));
    let mut ids: Vec<u64> = answers.iter().map(|a| a.request_id).collect();
    ids.sort_unstable();
    assert!(ids.iter().copied().eq(1..=count), "one answer a call");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_client_that_reads_its_answers_late_gets_them_all() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy_in_front_of(&provider, "", "").await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    // Each answer echoes the call's 16 KiB attachment: 600 of them are far more than the socket
    // buffers and the 1 MiB of unsent answers past which the proxy stops reading from this
    // client.
    let calls = padded_calls(600);
    let (mut reader, mut writer) = socket.split();
    let write = writer.write_all(&calls);
    let read = async {
        // Nothing is read until the proxy has stopped reading: it must start again once the
        // client takes its answers, although no new answer comes to wake it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        read_answers(&mut reader, 600).await
    };
    let (written, answers) = tokio::join!(write, read);
    written?;
    let answers = answers?;
    assert!(answers.iter().all(|a| a.status == ResponseStatus::Ok));
    let ids: Vec<u64> = answers.iter().map(|a| a.request_id).collect();
    assert_eq!(ids, (1..=600).collect::<Vec<u64>>());
    proxy.shutdown().await;
    Ok(())
}

/// `count` calls (ids from 1) that each carry a 16 KiB attachment, in one buffer.
fn padded_calls(count: u64) -> Vec<u8> {
    let pad = "p".repeat(16 * 1024);
    (1..=count)
        .flat_map(|id| support::dubbo_request(id, "sayHello", &[("x-pad", &pad)]))
        .collect()
}

#[tokio::test]
async fn an_upstream_that_reads_its_requests_late_gets_them_all() -> TestResult {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = start_engine(&format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, connections_per_endpoint: 1, endpoints: [ {{ address: {} }} ] }} ]
",
        upstream.local_addr()?
    ))
    .await?;
    // An upstream that reads nothing for a while, then answers once it has read every request.
    // Past 256 KiB of unsent requests the proxy queues the rest: it must take them again once
    // the upstream reads, although no answer comes to wake it.
    let server = tokio::spawn(async move {
        let (mut socket, _) = upstream.accept().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut decoder = metaprotocol_dubbo::DubboCodecFactory::new(1 << 20)
            .new_codec(Side::Downstream, WireVariant::DEFAULT);
        let mut buf = bytes::BytesMut::new();
        let mut ids = Vec::new();
        while ids.len() < 600 {
            let read = tokio::time::timeout(Duration::from_secs(5), socket.read_buf(&mut buf));
            if read.await?? == 0 {
                return Err(format!("closed after {} requests", ids.len()).into());
            }
            while let Some(request) = decoder.decode(&mut buf)? {
                ids.push(request.request_id);
            }
        }
        let answers: Vec<u8> = ids
            .iter()
            .flat_map(|id| metaprotocol_dubbo::build::value_response(*id, "ok", &[]))
            .collect();
        socket.write_all(&answers).await?;
        support::TestResult::Ok(socket)
    });
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let calls = padded_calls(600);
    let (mut reader, mut writer) = socket.split();
    let (written, answers) = tokio::join!(writer.write_all(&calls), read_answers(&mut reader, 600));
    written?;
    let answers = answers?;
    assert!(answers.iter().all(|a| a.status == ResponseStatus::Ok));
    let mut ids: Vec<u64> = answers.iter().map(|a| a.request_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=600).collect::<Vec<u64>>());
    server.await??;
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_frame_trickled_slower_than_the_frame_timeout_closes_its_connection() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy_in_front_of(&provider, "", ", frame_timeout: 300ms").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut slow = TcpStream::connect(address).await?;
    // Half of a Dubbo header, then nothing more.
    slow.write_all(&[0xda, 0xbb, 0xc2, 0x00, 0, 0, 0, 0])
        .await?;
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "closed by the proxy: {closed:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let healthy = DubboClient::new(address);
    assert_eq!(healthy.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    assert!(proxy.metrics().render().contains(
        "metaprotocol_downstream_protocol_errors_total{listener=\"in\",reason=\"frame_timeout\"} 1"
    ));
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn admin_writes_need_the_bearer_token_and_slow_admin_clients_are_cut_off() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = support::process::Scratch::new("admin-token")?;
    let token_file = scratch.path("token");
    std::fs::write(&token_file, "s3cret\n")?;
    let proxy = proxy_in_front_of(
        &provider,
        &format!(
            "admin: {{ address: 127.0.0.1:0, token_file: '{}' }}",
            token_file.display()
        ),
        "",
    )
    .await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let routes = "name: r\nroutes: [ { route: { cluster: c } } ]\n";
    let put = async |auth: Option<&'static str>| {
        let headers = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        support::admin::http_with(admin, "PUT", "/route_configs/r", &headers, routes).await
    };
    assert_eq!(put(None).await?.0, 401, "no token");
    assert_eq!(put(Some("Bearer wrong")).await?.0, 403, "wrong token");
    let (status, answer) = put(Some("Bearer s3cret")).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        http(admin, "GET", "/ready", "").await?.0,
        200,
        "reads need no token"
    );
    std::fs::write(&token_file, "rotated")?;
    assert_eq!(
        put(Some("Bearer s3cret")).await?.0,
        403,
        "a rotated token takes effect"
    );

    // A client that never finishes its headers is cut off.
    let mut slow = TcpStream::connect(admin).await?;
    slow.write_all(b"GET /ready HTTP/1.1\r\nHost: a").await?;
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok(),
        "the admin server closes a connection whose headers never end"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn past_the_proxy_wide_request_limit_new_calls_get_an_over_limit_reply() -> TestResult {
    let provider = DemoProvider::start_with_delay("p", Duration::from_millis(500)).await?;
    let proxy = proxy_in_front_of(&provider, "limits: { max_requests: 5 }", "").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let client = DubboClient::new(address);
        calls.spawn(async move {
            let started = Instant::now();
            let reply = client.call("sayHelloSlowly", "a", &[]).await;
            (reply, started.elapsed())
        });
    }
    let (mut served, mut refused) = (0, 0);
    while let Some(joined) = calls.join_next().await {
        let (reply, took) = joined?;
        match reply?.dubbo_status {
            20 => served += 1,
            100 => {
                assert!(
                    took < Duration::from_millis(400),
                    "refused at once: {took:?}"
                );
                refused += 1;
            }
            other => return Err(format!("unexpected status {other}").into()),
        }
    }
    assert_eq!((served, refused), (5, 7));
    let metrics = proxy.metrics().render();
    assert!(
        metrics
            .contains("metaprotocol_local_replies_total{listener=\"in\",reason=\"over_limit\"} 7")
    );
    assert!(
        metrics.contains("metaprotocol_requests_in_flight 0"),
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// An upstream that answers every two-way call with the same value of `size` bytes, its id
/// set, decoding only a call's header (its id and its length) and reading and discarding its
/// body. Each answer costs this test's one thread a copy: the demo provider's, encoded
/// character by character, took most of its time in a debug build, and with the machine loaded
/// so few were answered in 30 s that none had to wait for a client.
async fn upstream_answering_with(size: usize) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let answer = metaprotocol_dubbo::build::value_response(0, &"y".repeat(size), &[]);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let (reader, mut writer) = socket.into_split();
                let mut reader = tokio::io::BufReader::new(reader);
                let mut header = [0u8; 16];
                while reader.read_exact(&mut header).await.is_ok() {
                    let length =
                        u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
                    let mut body = (&mut reader).take(u64::from(length));
                    if tokio::io::copy(&mut body, &mut tokio::io::sink())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // A two-way request (0x80 | 0x40), not an event (0x20).
                    if header[2] & 0xe0 != 0xc0 {
                        continue;
                    }
                    let mut reply = BytesMut::from(&answer[..]);
                    reply[4..12].copy_from_slice(&header[4..12]);
                    if writer.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(address)
}

#[tokio::test]
async fn a_client_that_never_reads_holds_bounded_memory_and_hurts_no_one() -> TestResult {
    let provider = upstream_answering_with(64 * 1024).await?;
    // The polite client's provider is its own: what is measured is the proxy's fairness, not
    // how long one provider takes to work through the greedy clients' backlog.
    let quiet = DemoProvider::start("q").await?;
    let yaml = format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs:
  - name: r
    routes:
      - {{ match: {{ metadata: [ {{ key: x-big, present: true }} ] }}, route: {{ cluster: c }} }}
      - {{ route: {{ cluster: quiet }} }}
clusters:
  - {{ name: c, endpoints: [ {{ address: {provider} }} ] }}
  - {{ name: quiet, endpoints: [ {{ address: {} }} ] }}
",
        quiet.address()
    );
    let proxy = Proxy::start(
        Config::from_yaml(&yaml)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    // Each call carries a 64 KiB attachment, and is answered with 64 KiB: answers that these
    // clients never read. 400 calls a client are answers enough to fill the sockets'
    // buffers and pass the 16 MiB of unsent answers past which a client is cut off; more only
    // made the proxy, the provider and this test, which share one thread, decode more calls
    // before the first answers were held (with 1,000 a client, none were within 30 s in about
    // half the runs beside two busy loops on the two cores).
    let big = "x".repeat(64 * 1024);
    let call = metaprotocol_dubbo::build::Call {
        service: metaprotocol_examples::dubbo_demo::DEMO_SERVICE,
        version: metaprotocol_examples::dubbo_demo::DEMO_VERSION,
        method: "sayHello",
        string_args: &["a"],
        attachments: &[("x-big", &big)],
    };
    let frame = metaprotocol_dubbo::build::request(1, true, &call);
    let mut greedy = Vec::new();
    for _ in 0..4 {
        let mut socket = TcpStream::connect(address).await?;
        let frame = frame.clone();
        greedy.push(tokio::spawn(async move {
            for _ in 0..400 {
                if socket.write_all(&frame).await.is_err() {
                    break;
                }
            }
            socket
        }));
    }
    let buffered = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("metaprotocol_buffered_bytes ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    // Sampled for 2 s, and on until answers are held (a loaded machine may take longer to
    // send them), for 30 s at most.
    let mut peak = 0;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(2)
        || (peak == 0 && sampling.elapsed() < Duration::from_secs(30))
    {
        peak = peak.max(buffered(&proxy.metrics().render()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with("metaprotocol_downstream_rq_") && l.contains("in\"}"))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        peak > 0,
        "the greedy clients' answers were held: {:?}",
        calls(&proxy.metrics().render())
    );
    assert!(
        peak <= 4 * 17 * 1024 * 1024,
        "bounded per connection: {peak}"
    );
    let polite = DubboClient::new(address);
    let reply =
        tokio::time::timeout(Duration::from_secs(20), polite.call("sayHello", "a", &[])).await??;
    assert_eq!(reply.dubbo_status, 20, "the others are still served");
    for task in greedy {
        task.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while buffered(&proxy.metrics().render()) != 0 {
        assert!(
            Instant::now() < deadline,
            "memory given back when the greedy clients left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn one_way_calls_to_a_stuck_upstream_never_stall_the_client() -> TestResult {
    // An upstream that accepts and never reads: writes to it stall once its buffers fill.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stuck_address = stuck.local_addr()?;
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = stuck.accept().await {
            sockets.push(socket);
        }
    });
    let yaml = format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 300ms }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {stuck_address} }} ] }} ]
"
    );
    let proxy = Proxy::start(
        Config::from_yaml(&yaml)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let payload = "p".repeat(4096);
    let call = |two_way| {
        metaprotocol_dubbo::build::request(
            7,
            two_way,
            &metaprotocol_dubbo::build::Call {
                service: DEMO_SERVICE,
                version: metaprotocol_examples::dubbo_demo::DEMO_VERSION,
                method: "notify",
                string_args: &[&payload],
                attachments: &[],
            },
        )
    };
    let mut socket = TcpStream::connect(address).await?;
    let one_way = call(false);
    let sent = async {
        for _ in 0..4096 {
            socket.write_all(&one_way).await?;
        }
        socket.write_all(&call(true)).await?;
        socket.write_all(&hex::decode(HEARTBEAT)?).await?;
        TestResult::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .map_err(|_| "the proxy stopped reading the client")??;
    // The heartbeat's answer and the two-way call's timeout reply both arrive.
    let mut statuses = Vec::new();
    let read = async {
        for _ in 0..2 {
            let mut header = [0u8; 16];
            socket.read_exact(&mut header).await?;
            let len = u32::from_be_bytes([header[12], header[13], header[14], header[15]]) as usize;
            let mut body = vec![0u8; len];
            socket.read_exact(&mut body).await?;
            statuses.push((header[2] & 0x20 != 0, header[3]));
        }
        TestResult::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read).await??;
    statuses.sort();
    assert_eq!(
        statuses,
        [(false, 31), (true, 20)],
        "a timeout reply and a heartbeat answer"
    );
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = proxy.metrics().render();
        if metrics.contains("metaprotocol_downstream_rq_active{listener=\"in\"} 0")
            && metrics.contains("metaprotocol_downstream_cx_active{listener=\"in\"} 0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests or connections stayed active: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.abort();
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_endpoint_is_backed_off_and_avoided_not_hammered() -> TestResult {
    let (_down, dead) = support::refusing_addr()?;
    let live = DemoProvider::start("live").await?;
    let world = World::start_with(
        "      - route: { cluster: half_dead }",
        &format!(
            "  - name: half_dead\n    endpoints: [ {{ address: {dead} }}, {{ address: {} }} ]\n",
            live.address()
        ),
        Duration::from_secs(5),
    )
    .await?;
    let started = Instant::now();
    let (mut calls, mut failed) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        let reply = world.client.call("sayHello", "a", &[]).await?;
        calls += 1;
        if reply.dubbo_status != 20 {
            failed += 1;
            assert!(
                reply.body_contains("connect to"),
                "reported as a connect failure"
            );
        }
    }
    let metrics = world.proxy.metrics().render();
    let attempts = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("metaprotocol_upstream_cx_connect_fail_total{cluster=\"half_dead\"} ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(calls > 200, "{calls} calls");
    assert!(
        (1..=15).contains(&attempts),
        "{attempts} connect attempts in 2 s"
    );
    assert!(
        failed <= attempts as usize,
        "{failed} of {calls} calls failed"
    );
    assert!(
        metrics.contains("metaprotocol_upstream_rq_failures_total{cluster=\"half_dead\",origin=\"local\",reason=\"connect_failure\"}"),
        "{metrics}"
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn config_update_counters_exist_from_the_start_and_zero_timeout_means_none() -> TestResult {
    let world = World::start_with(
        "      - route: { cluster: demo, subset: { version: v1 } }
        timeout: 0s",
        "",
        Duration::from_millis(400),
    )
    .await?;
    let metrics = world.proxy.metrics().render();
    for outcome in ["applied", "rejected"] {
        assert!(
            metrics.contains(&format!(
                "metaprotocol_config_reloads_total{{outcome=\"{outcome}\"}} 0"
            )),
            "{metrics}"
        );
    }
    // `timeout: 0s` is no timeout: a call slower than the default would have been is answered.
    let slow = world.client.call("sayHelloSlowly", "a", &[]).await?;
    assert_eq!(slow.dubbo_status, 20);
    world.proxy.shutdown().await;
    Ok(())
}

/// A proxy whose Dubbo listener `in` (its fields and `listener_fields`, such as
/// `", idle_timeout: 200ms"`) sends every call to `provider`; `top_level` holds top-level fields
/// (admin, limits, drain time), one per line.
async fn proxy_in_front_of(
    provider: &DemoProvider,
    top_level: &str,
    listener_fields: &str,
) -> TestResult<Proxy> {
    start_engine(&format!(
        "{top_level}
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r{listener_fields} }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
        provider.address()
    ))
    .await
}

/// A proxy in front of a server that reads everything sent to it and answers nothing, with
/// `top_level` (YAML lines, may be empty) beside its listener: calls end at their route's
/// deadline, 1 s. Returns the proxy and the server's task (abort it when done).
async fn proxy_in_front_of_a_silent_server(
    top_level: &str,
) -> TestResult<(Proxy, tokio::task::JoinHandle<()>)> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_address = silent.local_addr()?;
    let reader = tokio::spawn(async move {
        while let Ok((mut socket, _)) = silent.accept().await {
            tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let yaml = format!(
        "{top_level}
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 1s }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {silent_address} }} ] }} ]
"
    );
    Ok((start_engine(&yaml).await?, reader))
}

/// `count` calls (ids 1 to `count`) of 1 MiB each, in one buffer.
fn calls_of_a_mebibyte(count: u64) -> Vec<u8> {
    let big = "x".repeat(1024 * 1024);
    let mut calls = Vec::new();
    for id in 1..=count {
        calls.extend_from_slice(&support::dubbo_request(id, "sayHello", &[("x-big", &big)]));
    }
    calls
}

/// Samples `series` of `proxy` until the first calls time out (1 s after they came): the most
/// it read.
async fn most_until_the_first_calls_time_out(proxy: &Proxy, series: &[&str]) -> Vec<f64> {
    let mut most = vec![0.0_f64; series.len()];
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(900) {
        for (most, series) in most.iter_mut().zip(series) {
            *most = most.max(support::proxy::metric(proxy, series));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    most
}

/// A client that sends many large calls to a server that does not answer has at most 16 MiB
/// of them in flight: the proxy holds each call's frame until it ends (for a retry), and decodes
/// no more of the client's calls until some end. Before, it took up to 4,096 calls of
/// `max_frame_bytes` each. The calls waiting are not lost: once the first time out, the next
/// go, and every call gets its answer.
#[tokio::test]
async fn a_clients_calls_in_flight_hold_a_bounded_number_of_bytes() -> TestResult {
    const CALLS: u64 = 48;
    let (proxy, server) = proxy_in_front_of_a_silent_server("").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    // 48 MiB in all, three times the bound.
    let calls = calls_of_a_mebibyte(CALLS);
    let (mut client_read, mut client_write) = TcpStream::connect(address).await?.into_split();
    let writer = tokio::spawn(async move { client_write.write_all(&calls).await });
    let most = most_until_the_first_calls_time_out(
        &proxy,
        &["metaprotocol_downstream_rq_active{listener=\"in\"}"],
    )
    .await[0];
    // 16 calls make the bound; the one that passes it is let in.
    assert!(most >= 1.0, "no call reached the proxy");
    assert!(most <= 17.0, "{most} calls of 1 MiB in flight at once");
    let answers = read_answers(&mut client_read, CALLS).await?;
    assert_eq!(answers.len() as u64, CALLS);
    writer.await??;
    server.abort();
    proxy.shutdown().await;
    Ok(())
}

/// The frames of the calls in flight, held until each ends, count against the proxy-wide
/// `limits.max_buffered_bytes` with the answers waiting for clients, and show in
/// `metaprotocol_requests_in_flight_bytes`: clients whose large calls a server does not answer
/// make the proxy hold no more than the bound of them: a call past it is answered at once with
/// the over-limit error, or waits unread (its frame past its first 16 KiB) until calls end, and
/// every call gets one answer. Before, each client could hold 16 MiB in flight, counted
/// nowhere, whatever the bound (here 32 calls of 1 MiB at once, against a bound of 4 MiB).
#[tokio::test]
async fn the_frames_of_calls_in_flight_count_against_max_buffered_bytes() -> TestResult {
    const CLIENTS: u64 = 4;
    const CALLS: u64 = 8;
    let (proxy, server) =
        proxy_in_front_of_a_silent_server("limits: { max_buffered_bytes: 4194304 }").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let calls = calls_of_a_mebibyte(CALLS);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client_read, mut client_write) = TcpStream::connect(address).await?.into_split();
        let calls = calls.clone();
        let writer = tokio::spawn(async move { client_write.write_all(&calls).await });
        clients.push((client_read, writer));
    }
    let most = most_until_the_first_calls_time_out(
        &proxy,
        &[
            "metaprotocol_requests_in_flight",
            "metaprotocol_requests_in_flight_bytes",
        ],
    )
    .await;
    let (calls_held, bytes_held) = (most[0], most[1]);
    // 4 MiB make the bound; the call that passes it is let in.
    assert!(calls_held >= 1.0, "no call reached the proxy");
    assert!(
        calls_held <= 5.0,
        "{calls_held} calls of 1 MiB in flight at once"
    );
    let mebibyte = 1024.0 * 1024.0;
    assert!(
        (mebibyte..=5.0 * mebibyte).contains(&bytes_held),
        "{bytes_held} bytes of calls held"
    );
    for (mut client_read, writer) in clients {
        let answers = read_answers(&mut client_read, CALLS).await?;
        assert_eq!(answers.len() as u64, CALLS);
        writer.await??;
    }
    let replies = |reason: &str| {
        support::proxy::metric(
            &proxy,
            &format!("metaprotocol_local_replies_total{{listener=\"in\",reason=\"{reason}\"}}"),
        )
    };
    let (refused, timed_out) = (replies("over_limit"), replies("timeout"));
    assert_eq!(refused + timed_out, (CLIENTS * CALLS) as f64);
    assert_eq!(
        support::proxy::metric(&proxy, "metaprotocol_requests_in_flight_bytes"),
        0.0,
        "every call ended"
    );
    server.abort();
    proxy.shutdown().await;
    Ok(())
}

/// The bytes of large frames partly received count against the proxy-wide
/// `limits.max_buffered_bytes` with the rest, and show in `metaprotocol_read_buffered_bytes`:
/// clients that each send most of a large call and wait make the proxy hold about the bound of
/// them (it and one frame at most), the connections whose frame would grow past it closed and
/// counted in `metaprotocol_downstream_cx_overflow_total`; once the others send the rest, their
/// calls get answers. Before, each client could hold a frame of up to `max_frame_bytes` for up
/// to `frame_timeout`, counted nowhere, whatever the bound (here 8 of 1 MiB against 4 MiB).
#[tokio::test]
async fn frames_partly_received_count_against_max_buffered_bytes() -> TestResult {
    const CLIENTS: usize = 8;
    const HELD_BACK: usize = 1024;
    let (proxy, server) =
        proxy_in_front_of_a_silent_server("limits: { max_buffered_bytes: 4194304 }").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let call = calls_of_a_mebibyte(1);
    let (go, ready) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (mut client_read, mut client_write) = TcpStream::connect(address).await?.into_split();
        let (call, mut ready) = (call.clone(), ready.clone());
        clients.push(tokio::spawn(async move {
            let (most, rest) = call.split_at(call.len() - HELD_BACK);
            // A write or an answer cut short is a connection the proxy closed: no answer.
            let sent = client_write.write_all(most).await;
            ready.wait_for(|go| *go).await?;
            if sent.is_err() || client_write.write_all(rest).await.is_err() {
                return TestResult::Ok(0);
            }
            match read_answers(&mut client_read, 1).await {
                Ok(answers) => Ok(answers.len()),
                Err(closed) if closed.to_string() == "closed after 0 answers" => Ok(0),
                Err(err) => Err(err),
            }
        }));
    }
    drop(ready);
    let held =
        most_until_the_first_calls_time_out(&proxy, &["metaprotocol_read_buffered_bytes"]).await[0];
    let mebibyte = 1024.0 * 1024.0;
    // 4 MiB make the bound, which the frame last read may pass, and a read of each worker
    // thread at once.
    assert!(
        (mebibyte..=7.0 * mebibyte).contains(&held),
        "{held} bytes of frames partly received held, against a bound of 4 MiB"
    );
    go.send(true)?;
    let mut answered = 0;
    for client in clients {
        answered += tokio::time::timeout(Duration::from_secs(20), client).await???;
    }
    assert!(answered >= 1, "no call was answered");
    assert!(
        answered < CLIENTS,
        "all {CLIENTS} calls of 1 MiB held at once, against a bound of 4 MiB"
    );
    assert_eq!(
        support::proxy::metric(
            &proxy,
            "metaprotocol_downstream_cx_overflow_total{listener=\"in\"}"
        ),
        (CLIENTS - answered) as f64,
        "every client without an answer was closed, and counted"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while support::proxy::metric(&proxy, "metaprotocol_read_buffered_bytes") != 0.0 {
        assert!(Instant::now() < deadline, "read bytes still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
    proxy.shutdown().await;
    Ok(())
}

/// A call read together with the end of a large one is judged on the bytes the proxy holds,
/// each counted once: the large call's frame moved from the bytes read to those of the calls in
/// flight as it was decoded. Before, until the end of the pass that read them, its bytes were
/// counted both as read and as in flight, and a small call read with its last bytes was refused
/// as over the limit (here a call of 3 MiB and one after it, against a bound of 4 MiB).
#[tokio::test]
async fn a_call_read_with_the_end_of_a_large_one_is_not_refused_by_its_bytes_counted_twice()
-> TestResult {
    const LAST: usize = 100;
    let (proxy, server) =
        proxy_in_front_of_a_silent_server("limits: { max_buffered_bytes: 4194304 }").await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let big = "x".repeat(3 * 1024 * 1024);
    let large = support::dubbo_request(1, "sayHello", &[("x-big", &big)]);
    let (most, last) = large.split_at(large.len() - LAST);
    let mut client = TcpStream::connect(address).await?;
    client.write_all(most).await?;
    // The proxy read all of it but the last bytes, and counted them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while support::proxy::metric(&proxy, "metaprotocol_read_buffered_bytes")
        < (most.len() - 64 * 1024) as f64
    {
        assert!(Instant::now() < deadline, "the proxy did not read the call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its last bytes and a small call, in one write: one read.
    let mut rest = last.to_vec();
    rest.extend_from_slice(&support::dubbo_request(2, "sayHello", &[]));
    client.write_all(&rest).await?;
    // Both stay in flight until their deadline, 1 s: the silent server answers neither.
    let answers = read_answers(&mut client, 2).await?;
    let refused = support::proxy::metric(
        &proxy,
        "metaprotocol_local_replies_total{listener=\"in\",reason=\"over_limit\"}",
    );
    assert_eq!(
        refused, 0.0,
        "a call refused as over the limit, the proxy holding 3 MiB against 4 MiB"
    );
    assert_eq!(answers.len(), 2);
    server.abort();
    proxy.shutdown().await;
    Ok(())
}

/// Waits until `done` holds, looking every 10 ms, for 20 s at most (`what` says what it waits
/// for).
async fn until(what: &str, done: impl Fn() -> bool) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("not {what} in 20 s").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A connection whose large call arrives while the proxy holds `limits.max_buffered_bytes`
/// (here the calls of another client, which a server does not answer) reads no more of it, and
/// sleeps: it wakes when bytes are given back (those calls end at their deadline), not on a
/// timer, and then reads the rest of its call within its `frame_timeout`, which is answered.
/// Before, it woke ten times a second to look again.
#[tokio::test]
async fn a_large_call_waits_for_room_asleep_and_goes_on_once_bytes_are_given_back() -> TestResult {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_address = silent.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = silent.accept().await {
            tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let proxy = start_engine(&format!(
        "limits: {{ max_buffered_bytes: 4194304 }}
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, frame_timeout: 20s }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 6s }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {silent_address} }} ] }} ]
"
    ))
    .await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let metric = |series: &str| support::proxy::metric(&proxy, series);
    // Four calls of 1 MiB in flight fill the bound until their deadline: 6 s, long enough for
    // what follows to look at them in flight on a loaded machine (3 s was not).
    let mut holder = TcpStream::connect(address).await?;
    holder.write_all(&calls_of_a_mebibyte(4)).await?;
    until("4 MiB in flight", || {
        metric("metaprotocol_requests_in_flight_bytes") >= 4.0 * 1024.0 * 1024.0
    })
    .await?;
    let (mut client_read, mut client_write) = TcpStream::connect(address).await?.into_split();
    let big = "x".repeat(3 * 1024 * 1024);
    let large = support::dubbo_request(1, "sayHello", &[("x-big", &big)]);
    let writer = tokio::spawn(async move { client_write.write_all(&large).await });
    until("a large call partly read", || {
        metric("metaprotocol_read_buffered_bytes") > 16.0 * 1024.0
    })
    .await?;
    // It waits: nothing read for a while, and the runtime (this test's, which the proxy's
    // connections share) asleep but for this test's own timer.
    let runtime = tokio::runtime::Handle::current().metrics();
    let (read_before, parks_before) = (
        metric("metaprotocol_read_buffered_bytes"),
        runtime.worker_park_count(0),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let woken = runtime.worker_park_count(0) - parks_before;
    assert_eq!(
        metric("metaprotocol_read_buffered_bytes"),
        read_before,
        "the waiting connection read on"
    );
    assert!(
        metric("metaprotocol_requests_in_flight_bytes") >= 4.0 * 1024.0 * 1024.0,
        "the calls in flight ended while the test looked"
    );
    // Its timers' own ticks wake an idle runtime a few times; a connection looking again ten
    // times a second, some forty.
    assert!(woken < 20, "the runtime woke {woken} times in 1.5 s");
    // The calls in flight end at their deadline; the large call is read whole and goes.
    let answers = read_answers(&mut holder, 4).await?;
    assert_eq!(answers.len(), 4);
    tokio::time::timeout(Duration::from_secs(20), writer).await???;
    let answer = read_answers(&mut client_read, 1).await?;
    assert_eq!(answer.len(), 1, "the large call got no answer");
    assert_eq!(
        metric("metaprotocol_local_replies_total{listener=\"in\",reason=\"over_limit\"}"),
        0.0
    );
    assert_eq!(
        metric(
            "metaprotocol_downstream_protocol_errors_total{listener=\"in\",reason=\"frame_timeout\"}"
        ),
        0.0
    );
    assert_eq!(
        metric("metaprotocol_downstream_cx_overflow_total{listener=\"in\"}"),
        0.0
    );
    server.abort();
    proxy.shutdown().await;
    Ok(())
}

/// A Dubbo 3.2 consumer's call in fastjson2 (serialization 23): the call fields, the argument
/// and the attachments map each a 4-byte length and a JSONB value (see the codec's testdata).
fn fastjson2_call(id: u64, method: &str, attachments: &[(&str, &str)]) -> Vec<u8> {
    /// One value: its length, then the JSONB ASCII string of up to 47 bytes.
    fn text(out: &mut Vec<u8>, value: &str) {
        out.push(0x49 + u8::try_from(value.len()).unwrap_or(47));
        out.extend_from_slice(value.as_bytes());
    }
    let mut body = Vec::new();
    for field in [
        "2.0.2",
        DEMO_SERVICE,
        "1.0.0",
        method,
        "Ljava/lang/String;",
        "world",
    ] {
        body.extend_from_slice(&(field.len() as u32 + 1).to_be_bytes());
        text(&mut body, field);
    }
    let mut map = vec![0xa6];
    for (key, value) in [("path", DEMO_SERVICE)].iter().chain(attachments) {
        text(&mut map, key);
        text(&mut map, value);
    }
    map.push(0xa5);
    body.extend_from_slice(&(map.len() as u32).to_be_bytes());
    body.extend_from_slice(&map);
    let mut frame = vec![0xda, 0xbb, 0xc0 | 23, 0];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// A provider of fastjson2 calls on 127.0.0.1: it answers every call with a fastjson2
/// response (status 20) whose result (after the result flag, 1: a value) is its `name` as a
/// JSONB string, and sends each call's body on the channel.
async fn fastjson2_provider(
    name: &'static str,
) -> TestResult<(
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (calls, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                while let Ok((header, body)) = read_frame(&mut socket).await {
                    let _ = calls.send(body);
                    let mut answer = vec![0xda, 0xbb, 23, 20];
                    answer.extend_from_slice(&header[4..12]);
                    let value_len = name.len() as u32 + 1;
                    answer.extend_from_slice(&(value_len + 9).to_be_bytes());
                    answer.extend_from_slice(&[0, 0, 0, 1, 1]);
                    answer.extend_from_slice(&value_len.to_be_bytes());
                    answer.push(0x49 + name.len() as u8);
                    answer.extend_from_slice(name.as_bytes());
                    if socket.write_all(&answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((address, received))
}

/// Calls in fastjson2 are routed on their method and attachments like Hessian2 ones, and go
/// upstream as they came; a route's mutation is written into their attachments.
#[tokio::test]
async fn fastjson2_calls_are_routed_on_their_method_and_attachments() -> TestResult {
    let (plain, mut plain_calls) = fastjson2_provider("plain").await?;
    let (tenant, mut tenant_calls) = fastjson2_provider("tenant").await?;
    let yaml = format!(
        "listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
route_configs:
  - name: r
    routes:
      - match: {{ metadata: [ {{ key: tenant, exact: t1 }}, {{ key: method, exact: sayHello }} ] }}
        route: {{ cluster: tenant }}
      - match: {{ metadata: [ {{ key: method, exact: mutated }} ] }}
        route: {{ cluster: plain }}
        request_mutation: {{ set: {{ x-routed-by: proxy }} }}
      - match: {{ metadata: [ {{ key: interface, exact: {DEMO_SERVICE} }} ] }}
        route: {{ cluster: plain }}
clusters:
  - {{ name: plain, endpoints: [ {{ address: {plain} }} ] }}
  - {{ name: tenant, endpoints: [ {{ address: {tenant} }} ] }}
"
    );
    let proxy = start_engine(&yaml).await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut socket = TcpStream::connect(address).await?;
    let cases = [
        (1, "sayHello", "t1", "tenant"),
        (2, "sayHello", "t2", "plain"),
        (3, "sayGoodbye", "t1", "plain"),
    ];
    for (id, method, tenant_value, provider) in cases {
        let call = fastjson2_call(id, method, &[("tenant", tenant_value)]);
        socket.write_all(&call).await?;
        let (header, body) = read_frame(&mut socket).await?;
        assert_eq!((header[2], header[3]), (23, 20), "{method} {tenant_value}");
        assert_eq!(&header[4..12], &id.to_be_bytes());
        assert_eq!(body[10..], *provider.as_bytes(), "{method} {tenant_value}");
        let received = match provider {
            "tenant" => tenant_calls.recv().await,
            _ => plain_calls.recv().await,
        };
        assert_eq!(
            received.as_deref(),
            Some(&call[16..]),
            "the body as it came"
        );
    }
    // The mutation is written into the call's JSONB attachments: the provider receives the
    // call with the attachment added after the client's, the rest as it came.
    socket.write_all(&fastjson2_call(4, "mutated", &[])).await?;
    let (header, body) = read_frame(&mut socket).await?;
    assert_eq!((header[2], &header[4..12]), (23, &4u64.to_be_bytes()[..]));
    assert_eq!(header[3], 20, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body[10..], *b"plain");
    let rewritten = fastjson2_call(4, "mutated", &[("x-routed-by", "proxy")]);
    assert_eq!(plain_calls.recv().await.as_deref(), Some(&rewritten[16..]));
    proxy.shutdown().await;
    Ok(())
}
