//! Load balancing and resilience end to end, with Dubbo: the engine in process, the demo
//! providers as real servers on 127.0.0.1, many client connections.
//!
//! Covered: a provider killed under load (every call answered, none hung; the dead endpoint
//! detected and avoided, then used again once it is back), circuit breakers (the call past
//! `max_requests` answered at once with the over-limit error, state and counts in `/metrics`
//! and `/clusters`), locality-aware failover, requests that meet dead endpoints resent to a
//! live one, consistent hashing on a route's `hash_policy`, and the connection limits: upstream
//! idle timeout, requests per upstream connection, `max_connections` per listener. And upstreams
//! that misbehave: one that goes away on every connection, one that reads nothing, one that
//! trickles its answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient, HANG_UP_METHOD, SLOW_METHOD};
use metaprotocol_router::config::ClusterSpec;
use metaprotocol_router::{Config, EndpointStatus, HealthState, Proxy};

#[allow(dead_code)]
mod support;

use support::TestResult;
use support::admin::http;

/// The Dubbo status of the proxy's over-limit reply (SERVER_THREADPOOL_EXHAUSTED).
const OVER_LIMIT: u8 = 100;

async fn start(yaml: &str) -> TestResult<(Proxy, SocketAddr)> {
    let proxy = Proxy::start(
        Config::from_yaml(yaml)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    Ok((proxy, address))
}

/// A proxy with an admin API and listener `in` routing everything by `route` (a YAML flow map's
/// inner part, after `cluster: c`) to cluster `c`, described by `cluster` (YAML lines indented
/// by 4, after its name).
fn config(route: &str, cluster: &str) -> String {
    format!(
        "admin: {{ address: 127.0.0.1:0 }}
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}{route} }} ] }} ]
clusters:
  - name: c
{cluster}"
    )
}

/// [`config`] of a cluster of `provider` alone, with `fields` (YAML lines indented by 4).
fn single(provider: &DemoProvider, fields: &str) -> String {
    config("", &format!("{fields}{}", endpoints(&[provider], &[])))
}

/// `endpoints:` lines for `providers`, each with `extra` fields.
fn endpoints(providers: &[&DemoProvider], extra: &[&str]) -> String {
    let mut lines = "    endpoints:\n".to_owned();
    for (i, p) in providers.iter().enumerate() {
        let more = extra.get(i).map_or(String::new(), |e| format!(", {e}"));
        lines.push_str(&format!(
            "      - {{ address: \"{}\"{more} }}\n",
            p.address()
        ));
    }
    lines
}

/// How one call of the load ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// A reply with this Dubbo status, from this provider (when it answered).
    Reply(u8, Option<String>),
    /// The client's connection to the proxy failed.
    Broken(String),
    /// No answer within the client's patience.
    Hung,
}

/// Calls made by the load, with when each started.
type Log = Arc<Mutex<Vec<(Instant, Outcome)>>>;

/// `clients` connections to `proxy`, each calling `sayHello` in a loop until `stop` is set;
/// every call is logged. A call with no answer within 5 s is logged as hung.
fn load(
    proxy: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> (Log, Vec<tokio::task::JoinHandle<()>>) {
    let log: Log = Arc::default();
    let tasks = (0..clients)
        .map(|_| {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                let client = DubboClient::new(proxy);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let call = client.call("sayHello", "load", &[]);
                    let outcome = match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(reply)) => Outcome::Reply(
                            reply.dubbo_status,
                            reply.attachment("provider").map(str::to_owned),
                        ),
                        Ok(Err(err)) => Outcome::Broken(err.to_string()),
                        Err(_) => Outcome::Hung,
                    };
                    if let Ok(mut log) = log.lock() {
                        log.push((started, outcome));
                    }
                }
            })
        })
        .collect();
    (log, tasks)
}

/// The calls logged from `from` on (until `to`, when given).
fn between(log: &Log, from: Instant, to: Option<Instant>) -> Vec<Outcome> {
    log.lock()
        .map(|log| {
            log.iter()
                .filter(|(at, _)| *at >= from && to.is_none_or(|to| *at < to))
                .map(|(_, o)| o.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// `endpoint` of cluster `c` as `/clusters` shows it.
fn endpoint_status(proxy: &Proxy, endpoint: SocketAddr) -> Option<EndpointStatus> {
    proxy
        .clusters()
        .into_iter()
        .filter(|c| c.name == "c")
        .flat_map(|c| c.endpoints)
        .find(|e| e.address == endpoint)
}

/// Requests the proxy sent to `endpoint` of cluster `c` so far.
fn sent_to(proxy: &Proxy, endpoint: SocketAddr) -> u64 {
    endpoint_status(proxy, endpoint).map_or(0, |e| e.total_requests)
}

/// True while picks skip `endpoint` of cluster `c`: ejected, failing its checks, or backing off
/// after failed connects.
fn out_of_rotation(proxy: &Proxy, endpoint: SocketAddr) -> bool {
    endpoint_status(proxy, endpoint)
        .is_some_and(|e| e.health != HealthState::Healthy || e.backing_off)
}

async fn wait_for(what: &str, within: Duration, ready: impl Fn() -> bool) -> TestResult {
    let deadline = Instant::now() + within;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {within:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts a provider on a loopback port below the range the kernel hands out for port 0
/// (32768 up, by default), one this process never used before: once it is killed, no provider
/// that another test starts meanwhile can be given its port, and answer its health checks and
/// calls in its place (the tests of this file run at once, in one process).
async fn start_outside_ephemeral_ports(name: &str) -> TestResult<DemoProvider> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let first = 20_000 + u16::try_from(std::process::id() % 5_000)?;
    for _ in 0..2_000 {
        let port = first + NEXT.fetch_add(1, Ordering::Relaxed);
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        if let Ok(provider) = DemoProvider::start_at(name, address, Duration::from_secs(5)).await {
            return Ok(provider);
        }
    }
    Err("no free loopback port below the ephemeral range".into())
}

/// The fault test: three providers under steady load from 24 client connections; one is killed.
/// Every call gets an answer (a reply or the proxy's error reply), none hangs; once the health
/// checks have seen it dead the killed endpoint gets nothing and no call fails; when it comes
/// back it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_provider_is_detected_avoided_and_used_again_when_back() -> TestResult {
    let a = DemoProvider::start("a").await?;
    let b = start_outside_ephemeral_ports("b").await?;
    let c = DemoProvider::start("c").await?;
    let b_address = b.address();
    let (proxy, address) = start(&config(
        ", timeout: 2s",
        &format!(
            "    connect_timeout: 500ms
{}    outlier_detection: {{ consecutive_errors: 3, consecutive_local_origin_failures: 3, interval: 200ms, base_ejection_time: 2s }}
    health_check: {{ interval: 200ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2 }}
",
            endpoints(&[&a, &b, &c], &[])
        ),
    ))
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = load(address, 24, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.seen().is_empty(), "b served before the kill");

    let killed = Instant::now();
    drop(b);
    // Detection: two failed checks 200 ms apart (and outlier ejection, from the traffic), well
    // under a second on an idle machine (printed below); the bound is for a loaded one.
    wait_for("b to leave rotation", Duration::from_secs(20), || {
        out_of_rotation(&proxy, b_address)
    })
    .await?;
    let left_rotation = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(left_rotation)).await;
    let detected = Instant::now();
    let before = sent_to(&proxy, b_address);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = sent_to(&proxy, b_address);
    let clean = between(&log, detected, Some(Instant::now()));
    assert_eq!(
        before, after,
        "the dead endpoint got requests after detection"
    );
    // Enough calls to have reached b had it stayed in rotation (a third of them would have).
    assert!(clean.len() > 20, "{} calls after detection", clean.len());
    let failed: Vec<&Outcome> = clean
        .iter()
        .filter(|o| !matches!(o, Outcome::Reply(20, _)))
        .collect();
    assert!(
        failed.is_empty(),
        "calls failed after detection: {failed:?}"
    );

    let b = DemoProvider::start_at("b-again", b_address, Duration::from_secs(5)).await?;
    let restarted = Instant::now();
    wait_for("b to serve again", Duration::from_secs(20), || {
        !b.seen().is_empty()
    })
    .await?;
    let back_in_rotation = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let all = between(&log, killed - Duration::from_secs(1), None);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in &all {
        let key = match outcome {
            Outcome::Reply(status, _) => format!("status {status}"),
            Outcome::Broken(_) => "broken".into(),
            Outcome::Hung => "hung".into(),
        };
        *tally.entry(key).or_default() += 1;
    }
    println!(
        "fault test: {tally:?}; out of rotation {left_rotation:?} after the kill, serving \
         again {back_in_rotation:?} after the restart"
    );
    assert!(
        all.iter().all(|o| matches!(o, Outcome::Reply(..))),
        "every call gets a reply: {tally:?}"
    );
    let status = proxy.clusters();
    let endpoint = status[0]
        .endpoints
        .iter()
        .find(|e| e.address == b_address)
        .ok_or("b is gone from /clusters")?;
    assert!(!endpoint.failing_active_checks, "{endpoint:?}");
    proxy.shutdown().await;
    Ok(())
}

/// An endpoint a config update adds to a cluster with active health checks takes no call
/// until its first check passes (Envoy starts such a host failing its checks): one that refuses
/// connections gets none while the load goes on, and no call fails. Its first check runs when the
/// update applies, not at the next round (an hour away here): the live endpoint added with it
/// serves within moments, at its first passed check, whatever `healthy_threshold`. (Half the
/// endpoints stay in rotation meanwhile: with fewer, panic mode would spread calls over all of
/// them, as Envoy's does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_an_update_adds_takes_no_call_before_its_first_check_passes() -> TestResult {
    let a = DemoProvider::start("a").await?;
    let a2 = DemoProvider::start("a2").await?;
    let b = DemoProvider::start("b").await?;
    let (_refusing, refusing_address) = support::refusing_addr()?;
    let checks = "    health_check: { interval: 1h, timeout: 2s, unhealthy_threshold: 3, healthy_threshold: 3 }\n";
    let (proxy, address) = start(&config(
        "",
        &format!("{checks}{}", endpoints(&[&a, &a2], &[])),
    ))
    .await?;
    wait_for(
        "a and a2 to enter rotation",
        Duration::from_secs(20),
        || !out_of_rotation(&proxy, a.address()) && !out_of_rotation(&proxy, a2.address()),
    )
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = load(address, 8, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let updated = Config::from_yaml(&config(
        "",
        &format!(
            "{checks}{}      - {{ address: \"{refusing_address}\" }}\n",
            endpoints(&[&a, &a2, &b], &[])
        ),
    ))?;
    let cluster = updated.clusters.first().ok_or("no cluster")?;
    let applied = Instant::now();
    proxy.update_cluster(ClusterSpec::clone(cluster)).await?;
    wait_for("b to serve", Duration::from_secs(10), || {
        !b.seen().is_empty()
    })
    .await?;
    let serving = applied.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let refused = sent_to(&proxy, refusing_address);
    let status = endpoint_status(&proxy, refusing_address);
    proxy.shutdown().await;
    assert_eq!(
        refused, 0,
        "calls sent to the endpoint that refuses connections"
    );
    let calls = between(&log, applied, None);
    assert!(
        calls.iter().all(|o| matches!(o, Outcome::Reply(20, _))),
        "calls failed: {:?}",
        calls
            .iter()
            .filter(|o| !matches!(o, Outcome::Reply(20, _)))
            .collect::<Vec<_>>()
    );
    assert!(
        serving < Duration::from_secs(5),
        "b served {serving:?} after the update"
    );
    let status = status.ok_or("the refusing endpoint is not in /clusters")?;
    assert!(
        status.failing_active_checks && !status.awaiting_first_check,
        "{status:?}"
    );
    Ok(())
}

/// The `max_requests` breaker of cluster `c` as `/clusters` shows it.
async fn max_requests_breaker(admin: SocketAddr) -> TestResult<serde_json::Value> {
    let (_, clusters) = http(admin, "GET", "/clusters", "").await?;
    let clusters: serde_json::Value = serde_json::from_str(&clusters)?;
    let breakers = clusters["clusters"][0]["circuit_breakers"]
        .as_array()
        .ok_or("no circuit_breakers")?;
    Ok(breakers
        .iter()
        .find(|b| b["breaker"] == "max_requests")
        .cloned()
        .ok_or("no max_requests breaker")?)
}

/// With `max_requests: 4` and a slow provider, the fifth call is answered at once with the
/// over-limit error; `/metrics` and `/clusters` show the open breaker and its overflow; once the
/// slow calls are done, calls pass again.
#[tokio::test]
async fn past_max_requests_a_call_gets_an_immediate_over_limit_reply() -> TestResult {
    let slow = DemoProvider::start_with_delay("slow", Duration::from_secs(2)).await?;
    let (proxy, address) = start(&single(
        &slow,
        "    circuit_breakers: { max_requests: 4 }\n",
    ))
    .await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let client = Arc::new(DubboClient::new(address));
    let slow_calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call(SLOW_METHOD, "a", &[]).await })
        })
        .collect();
    wait_for("four calls in flight", Duration::from_secs(20), || {
        slow.seen().len() == 4
    })
    .await?;
    let started = Instant::now();
    let refused = client.call("sayHello", "fifth", &[]).await?;
    let took = started.elapsed();
    assert_eq!(refused.dubbo_status, OVER_LIMIT);
    assert!(refused.body_contains("max_requests"), "{refused:?}");
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");
    assert_eq!(
        slow.seen().len(),
        4,
        "the fifth call never reached the provider"
    );

    let (_, metrics) = http(admin, "GET", "/metrics", "").await?;
    assert!(
        metrics.contains(
            "metaprotocol_upstream_overflow_total{cluster=\"c\",breaker=\"max_requests\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "metaprotocol_upstream_circuit_breaker_open{cluster=\"c\",breaker=\"max_requests\"} 1"
        ),
        "{metrics}"
    );
    let breaker = max_requests_breaker(admin).await?;
    assert_eq!(
        (
            &breaker["limit"],
            &breaker["current"],
            &breaker["open"],
            &breaker["overflows"]
        ),
        (&4.into(), &4.into(), &true.into(), &1.into()),
        "{breaker}"
    );
    for call in slow_calls {
        assert_eq!(call.await??.dubbo_status, 20);
    }
    let after = client.call("sayHello", "sixth", &[]).await?;
    assert_eq!(after.dubbo_status, 20);
    assert_eq!(max_requests_breaker(admin).await?["open"], false);
    proxy.shutdown().await;
    Ok(())
}

/// With `max_connections: 1`, an endpoint of `connections_per_endpoint: 4` gets one connection
/// that every call shares; with `max_retries: 0`, a failure a route would retry (a reset of an
/// idempotent call) is returned as it is, and the refused retry counted.
#[tokio::test]
async fn max_connections_shares_one_connection_and_max_retries_refuses_retries() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let fields = "    connections_per_endpoint: 4\n    circuit_breakers: { max_connections: 1 }\n";
    let (proxy, address) = start(&single(&provider, fields)).await?;
    let client = Arc::new(DubboClient::new(address));
    // Rounds of concurrent calls: each round is a batch that takes the next slot in turn.
    for _ in 0..5 {
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.call("sayHello", "a", &[]).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await??.dubbo_status, 20);
        }
    }
    assert_eq!(provider.connections(), 1, "one connection at most");
    let metrics = proxy.metrics().render();
    assert!(
        !metrics.contains(
            "metaprotocol_upstream_overflow_total{cluster=\"c\",breaker=\"max_connections\"} 0"
        ),
        "the slots that could not connect are counted: {metrics}"
    );
    proxy.shutdown().await;

    // An upstream that reads a request and closes the connection: a reset after sending.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let reset_address = resetter.local_addr()?;
    let resets = tokio::spawn(async move {
        while let Ok((mut socket, _)) = resetter.accept().await {
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
        }
    });
    for (max_retries, status) in [(0, 80), (3, 20)] {
        let (proxy, address) = start(&config(
            ", retry_policy: { num_retries: 1, retry_on: [reset], idempotent_methods: [sayHello] }",
            &format!(
                "    lb_policy: random\n    circuit_breakers: {{ max_retries: {max_retries} }}
    endpoints: [ {{ address: \"{reset_address}\" }}, {{ address: \"{}\" }} ]\n",
                provider.address()
            ),
        ))
        .await?;
        let client = DubboClient::new(address);
        let mut statuses = std::collections::BTreeSet::new();
        for _ in 0..20 {
            statuses.insert(client.call("sayHello", "a", &[]).await?.dubbo_status);
        }
        assert!(
            statuses.contains(&status),
            "max_retries {max_retries}: {statuses:?}"
        );
        let overflow =
            "metaprotocol_upstream_overflow_total{cluster=\"c\",breaker=\"max_retries\"} 0";
        assert_eq!(
            proxy.metrics().render().contains(overflow),
            max_retries > 0,
            "max_retries {max_retries}"
        );
        if max_retries > 0 {
            assert_eq!(statuses, [20].into(), "every reset was retried");
        }
        proxy.shutdown().await;
    }
    resets.abort();
    Ok(())
}

/// With `max_pending_requests: 2`, once two requests wait for a connection that is slow to
/// open, a third call is answered at once with the over-limit error instead of joining them.
#[tokio::test]
async fn past_max_pending_requests_a_call_is_refused_instead_of_queued() -> TestResult {
    // A listener whose accept queue is full: the kernel leaves new connections unanswered.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let full = socket.listen(1)?;
    let slow_address = full.local_addr()?;
    let mut queued = Vec::new();
    for _ in 0..8 {
        let connect = tokio::net::TcpStream::connect(slow_address);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            queued.push(stream);
        }
    }
    let (proxy, address) = start(&config(
        ", timeout: 20s",
        &format!(
            "    connect_timeout: 10s\n    connections_per_endpoint: 1
    circuit_breakers: {{ max_pending_requests: 2 }}
    endpoints: [ {{ address: \"{slow_address}\" }} ]\n"
        ),
    ))
    .await?;
    let client = Arc::new(DubboClient::new(address));
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("sayHello", "a", &[]).await })
        })
        .collect();
    wait_for(
        "two requests to wait for the connection",
        Duration::from_secs(20),
        || {
            proxy
                .metrics()
                .render()
                .contains("metaprotocol_upstream_rq_pending{cluster=\"c\"} 2")
        },
    )
    .await?;
    let started = Instant::now();
    let refused = client.call("sayHello", "b", &[]).await?;
    let took = started.elapsed();
    assert_eq!(refused.dubbo_status, OVER_LIMIT, "{refused:?}");
    assert!(refused.body_contains("max_pending_requests"), "{refused:?}");
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");
    for call in waiting {
        call.abort();
    }
    drop((queued, full));
    proxy.shutdown().await;
    Ok(())
}

/// Two providers in the proxy's zone, two in another region: all traffic stays in the zone;
/// with both zone providers killed, it fails over to the other region at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_aware_traffic_stays_local_and_fails_over() -> TestResult {
    first_tier_serves_and_fails_over(
        "locality",
        "node: { locality: { region: r1, zone: z1 } }\n",
        "    locality_aware: true\n",
        [
            "locality: { region: r1, zone: z1 }",
            "locality: { region: r2, zone: z9 }",
        ],
    )
    .await
}

/// Two providers at priority 0, two at priority 1 (istiod's locality failover sends such
/// endpoints over EDS): all traffic goes to priority 0; with both killed, it fails over to
/// priority 1 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stays_at_the_first_priority_and_fails_over() -> TestResult {
    first_tier_serves_and_fails_over("priority", "", "", ["priority: 0", "priority: 1"]).await
}

/// Two providers in the first tier (`tiers[0]` on their endpoints), two in the second
/// (`tiers[1]`): all traffic stays in the first; with both of it killed, it fails over to the
/// second at once. The only calls that fail are those in flight at the kill (one per client
/// connection), and those written to a first-tier connection in the moment before the proxy read
/// that it closed (not retried: the provider may have received them). That moment is short, so
/// each client loses at most one more call to it. A broken failover would fail every call after
/// the kill (hundreds).
async fn first_tier_serves_and_fails_over(
    kind: &str,
    top: &str,
    cluster: &str,
    tiers: [&str; 2],
) -> TestResult {
    // Killed below: their ports must stay dead.
    let near = [
        start_outside_ephemeral_ports("near-1").await?,
        start_outside_ephemeral_ports("near-2").await?,
    ];
    let far = [
        DemoProvider::start("far-1").await?,
        DemoProvider::start("far-2").await?,
    ];
    let [first, second] = tiers;
    let yaml = format!(
        "{top}{}",
        config(
            "",
            &format!(
                "{cluster}{}",
                endpoints(
                    &[&near[0], &near[1], &far[0], &far[1]],
                    &[first, first, second, second]
                )
            ),
        )
    );
    let (proxy, address) = start(&yaml).await?;
    let clients = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = load(address, clients, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        far.iter().all(|p| p.seen().is_empty()),
        "second-tier traffic while the first is fine"
    );
    assert!(near.iter().all(|p| !p.seen().is_empty()));

    let killed = Instant::now();
    drop(near);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let after = between(&log, killed, None);
    let failed = after
        .iter()
        .filter(|o| !matches!(o, Outcome::Reply(20, _)))
        .count();
    assert!(after.len() > 100, "{} calls after the kill", after.len());
    // Calls that reached no server (queued on a connection that then broke, or on one to a
    // dead provider that could not be opened) go to another provider.
    assert!(
        failed <= clients,
        "{failed} calls failed; only the {clients} in flight when the providers died may"
    );
    assert!(
        after.iter().all(|o| matches!(o, Outcome::Reply(..))),
        "{after:?}"
    );
    assert!(
        far.iter().all(|p| !p.seen().is_empty()),
        "both second-tier providers serve"
    );
    println!(
        "{kind} failover: {failed} of {} calls failed after the kill",
        after.len()
    );
    proxy.shutdown().await;
    Ok(())
}

/// Calls that meet endpoints refusing connections, before the proxy knows them dead, go to the
/// live one: a request that reached no server is resent at once to endpoints it has not tried,
/// whatever the retry budget (three retries in flight), so not one of many calls at once fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_meet_dead_endpoints_go_to_a_live_one() -> TestResult {
    const CALLS: usize = 24;
    let live = DemoProvider::start("live").await?;
    let mut cluster = "    endpoints:\n".to_owned();
    let mut dead = Vec::new();
    for _ in 0..3 {
        let (down, address) = support::refusing_addr()?;
        cluster.push_str(&format!("      - {{ address: \"{address}\" }}\n"));
        dead.push(down);
    }
    cluster.push_str(&format!("      - {{ address: \"{}\" }}\n", live.address()));
    let (proxy, address) = start(&config("", &cluster)).await?;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            tokio::spawn(async move {
                let client = DubboClient::new(address);
                tokio::time::timeout(Duration::from_secs(10), client.call("sayHello", "x", &[]))
                    .await
            })
        })
        .collect();
    for call in calls {
        let reply = call.await???;
        assert_eq!(reply.dubbo_status, 20, "{reply:?}");
        assert_eq!(reply.attachment("provider"), Some("live"));
    }
    assert_eq!(live.seen().len(), CALLS);
    proxy.shutdown().await;
    Ok(())
}

/// A route's `hash_policy` sends each user to one provider, the same on every proxy; calls
/// without the key spread.
#[tokio::test]
async fn a_hash_policy_pins_each_key_to_one_provider_in_every_proxy() -> TestResult {
    let providers = [
        DemoProvider::start("p1").await?,
        DemoProvider::start("p2").await?,
        DemoProvider::start("p3").await?,
    ];
    for policy in ["ring_hash", "maglev"] {
        let yaml = config(
            ", hash_policy: [ user ]",
            &format!(
                "    lb_policy: {policy}\n{}",
                endpoints(&[&providers[0], &providers[1], &providers[2]], &[])
            ),
        );
        let (first, first_address) = start(&yaml).await?;
        let (second, second_address) = start(&yaml).await?;
        let clients = [
            DubboClient::new(first_address),
            DubboClient::new(second_address),
        ];
        let mut owners = BTreeMap::new();
        for user in 0..30 {
            let user = format!("u{user}");
            for round in 0..4 {
                let reply = clients[round % 2]
                    .call("sayHello", "a", &[("user", &user)])
                    .await?;
                let provider = reply
                    .attachment("provider")
                    .ok_or("no provider")?
                    .to_owned();
                let owner = owners
                    .entry(user.clone())
                    .or_insert_with(|| provider.clone());
                assert_eq!(*owner, provider, "{policy}: {user} moved");
            }
        }
        let distinct: std::collections::BTreeSet<&String> = owners.values().collect();
        assert_eq!(distinct.len(), 3, "{policy}: 30 users spread: {owners:?}");
        let mut unkeyed = std::collections::BTreeSet::new();
        for _ in 0..60 {
            let reply = clients[0].call("sayHello", "a", &[]).await?;
            unkeyed.insert(reply.attachment("provider").map(str::to_owned));
        }
        assert_eq!(unkeyed.len(), 3, "{policy}: calls without a key spread");
        first.shutdown().await;
        second.shutdown().await;
    }
    Ok(())
}

/// An upstream connection idle for the cluster's `idle_timeout` closes (the next call opens
/// another), and one that carried `max_requests_per_connection` requests is replaced; no call
/// fails either way.
#[tokio::test]
async fn upstream_connections_close_when_idle_and_are_replaced_after_max_requests() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let fields = "    connections_per_endpoint: 1\n    idle_timeout: 1s\n    max_requests_per_connection: 5\n";
    let (proxy, address) = start(&single(&provider, fields)).await?;
    let client = DubboClient::new(address);
    for _ in 0..12 {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    }
    let replaced = provider.connections();
    assert!(
        replaced >= 2,
        "{replaced} connections for 12 requests at 5 each"
    );
    wait_for(
        "the idle connection to close",
        Duration::from_secs(20),
        || proxy.clusters()[0].endpoints[0].open_connections == 0,
    )
    .await?;
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    assert_eq!(
        provider.connections(),
        replaced + 1,
        "a new connection after the idle close"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A connection that carried `max_requests_per_connection` requests is replaced even when the
/// first replacement's connect is refused: once the endpoint listens again, a later call opens
/// the replacement (it used to serve on the old connection for good).
#[tokio::test]
async fn a_replacement_whose_connect_failed_is_tried_again() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let target = provider.address();
    // A forwarder in front of the provider that takes one connection, then refuses connects
    // until it listens on the same port again (held meanwhile).
    let (listener, _held) = support::listener_holding_its_port()?;
    let front = listener.local_addr()?;
    let forward = move |mut inbound: tokio::net::TcpStream| {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        })
    };
    let first = tokio::spawn(async move {
        let accepted = listener.accept().await;
        drop(listener);
        accepted.map(|(inbound, _)| forward(inbound))
    });
    let yaml = config(
        "",
        &format!(
            "    connections_per_endpoint: 1\n    max_requests_per_connection: 3\n    endpoints: [ {{ address: \"{front}\" }} ]\n"
        ),
    );
    let (proxy, address) = start(&yaml).await?;
    let client = DubboClient::new(address);
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    let _old = first.await??;
    // The third call reaches the limit; the next ones start the replacement, which is refused.
    for _ in 0..5 {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    }
    assert_eq!(provider.connections(), 1);
    let listener = support::listen_again(front)?;
    let again = tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            forward(inbound);
        }
    });
    let replaced = async {
        while provider.connections() < 2 {
            assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TestResult::Ok(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), replaced).await;
    again.abort();
    proxy.shutdown().await;
    assert!(
        matches!(outcome, Ok(Ok(()))),
        "no replacement after the refused one: {outcome:?}"
    );
    Ok(())
}

/// A listener with `max_connections: 2` closes a third client connection at once and counts it.
#[tokio::test]
async fn a_listener_closes_connections_past_max_connections() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let yaml =
        single(&provider, "").replace("route_config: r }", "route_config: r, max_connections: 2 }");
    let (proxy, address) = start(&yaml).await?;
    let clients = [DubboClient::new(address), DubboClient::new(address)];
    for client in &clients {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    }
    let third = DubboClient::new(address);
    assert!(
        third.call("sayHello", "a", &[]).await.is_err(),
        "the third connection is closed"
    );
    let metrics = proxy.metrics().render();
    assert!(
        metrics.contains("metaprotocol_downstream_cx_refused_total{listener=\"in\"} "),
        "{metrics}"
    );
    drop(clients);
    wait_for("a slot to free up", Duration::from_secs(20), || {
        proxy
            .metrics()
            .render()
            .contains("metaprotocol_downstream_cx_active{listener=\"in\"} 0")
    })
    .await?;
    assert_eq!(third.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    proxy.shutdown().await;
    Ok(())
}

/// A probe the cluster's protocol does not have is a config error naming the field.
#[tokio::test]
async fn a_probe_the_protocol_lacks_is_rejected() -> TestResult {
    let yaml = "listeners: [ { name: in, address: 127.0.0.1:0, protocol: thrift, route_config: r } ]
route_configs: [ { name: r, routes: [ { route: { cluster: c } } ] } ]
clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ], health_check: { probe: heartbeat } } ]";
    let err = match Proxy::start(
        Config::from_yaml(yaml)?,
        metaprotocol_examples::codec_registry(),
    )
    .await
    {
        Ok(proxy) => {
            proxy.shutdown().await;
            return Err("a heartbeat probe for thrift was accepted".into());
        }
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("clusters[0].health_check.probe") && err.contains("no heartbeat"),
        "{err}"
    );
    Ok(())
}

/// An upstream that says it is going away (Dubbo's READONLY event) as soon as each connection
/// opens, then serves it anyway: the proxy backs off replacing such connections instead of
/// opening a new one per call.
#[tokio::test]
async fn an_upstream_that_goes_away_on_every_connection_is_not_reconnected_per_call() -> TestResult
{
    use metaprotocol_core::{CodecFactory, Side, WireVariant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        let codec = metaprotocol_dubbo::DubboCodecFactory::new(1 << 20);
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let mut codec = codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                let mut out = bytes::BytesMut::new();
                codec.encode_goaway(&mut out)?;
                socket.write_all(&out).await?;
                while socket.read_buf(&mut buf).await? > 0 {
                    while let Some(request) = codec.decode(&mut buf)? {
                        let answer = metaprotocol_dubbo::build::value_response(
                            request.request_id,
                            "ok",
                            &[],
                        );
                        socket.write_all(&answer).await?;
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            });
        }
    });
    let cluster =
        format!("    connections_per_endpoint: 1\n    endpoints: [ {{ address: {upstream} }} ]\n");
    let (proxy, address) = start(&config("", &cluster)).await?;
    let client = DubboClient::new(address);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
        calls += 1;
    }
    // Replacements back off from 100 ms, doubling: a handful in 2 s.
    let connections = accepted.load(Ordering::Relaxed);
    assert!(
        connections <= 8,
        "{connections} upstream connections for {calls} calls"
    );
    proxy.shutdown().await;
    server.abort();
    Ok(())
}

/// An upstream that accepts and reads nothing: calls queue behind the bytes it does not take,
/// each with its whole frame. Those whose callers have had their timeout are dropped from the
/// queue within a second, not held until the connection's 30 s write stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_to_an_upstream_that_reads_nothing_go_when_they_time_out() -> TestResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cluster =
        format!("    connections_per_endpoint: 1\n    endpoints: [ {{ address: {upstream} }} ]\n");
    let (proxy, address) = start(&config(", timeout: 50ms", &cluster)).await?;
    let big = "b".repeat(128 * 1024);
    let started = Instant::now();
    let callers = (0..8).map(|_| {
        let client = DubboClient::new(address);
        let big = big.clone();
        tokio::spawn(async move {
            while started.elapsed() < Duration::from_secs(2) {
                let reply = client.call("sayHello", "a", &[("x-big", &big)]).await?;
                assert_ne!(reply.dubbo_status, 20, "the upstream answers nothing");
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    });
    for caller in futures::future::join_all(callers).await {
        caller??;
    }
    let pending = || {
        support::metrics::sample(
            &proxy.metrics().render(),
            "metaprotocol_upstream_rq_pending",
            &[("cluster", "c")],
        )
    };
    wait_for(
        "the timed-out calls to leave the queue",
        Duration::from_secs(20),
        || pending() == 0.0,
    )
    .await?;
    proxy.shutdown().await;
    server.abort();
    Ok(())
}

/// An upstream that starts an answer and then trickles it, a byte now and then: the answers
/// behind it on the connection would wait as long. Past the cluster's `frame_timeout` the
/// connection closes, and the call gets its error then, not at its route timeout.
#[tokio::test]
async fn an_upstream_answer_that_trickles_closes_the_connection_at_the_frame_timeout() -> TestResult
{
    use metaprotocol_core::{CodecFactory, Side, WireVariant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let codec = metaprotocol_dubbo::DubboCodecFactory::new(1 << 20);
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut codec = codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                while socket.read_buf(&mut buf).await? > 0 {
                    let Some(request) = codec.decode(&mut buf)? else {
                        continue;
                    };
                    // An answer's header announcing 512 KiB, then a byte every 100 ms.
                    let mut header =
                        metaprotocol_dubbo::build::value_response(request.request_id, "ok", &[])
                            [..16]
                            .to_vec();
                    header[12..16].copy_from_slice(&(512u32 << 10).to_be_bytes());
                    socket.write_all(&header).await?;
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        socket.write_all(&[0]).await?;
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            });
        }
    });
    let cluster =
        format!("    frame_timeout: 500ms\n    endpoints: [ {{ address: {upstream} }} ]\n");
    let (proxy, address) = start(&config(", timeout: 10s", &cluster)).await?;
    let client = DubboClient::new(address);
    let reply = client.call("sayHello", "a", &[]).await?;
    assert_ne!(reply.dubbo_status, 20);
    assert!(
        reply.latency < Duration::from_secs(5),
        "answered at {:?}",
        reply.latency
    );
    let closed = support::metrics::sample(
        &proxy.metrics().render(),
        "metaprotocol_upstream_cx_protocol_errors_total",
        &[("cluster", "c")],
    );
    assert_eq!(closed, 1.0);
    proxy.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test]
async fn an_upstream_answer_over_the_frame_limit_fails_its_call_alone() -> TestResult {
    let (upstream, server) = support::big_answer::start_upstream(
        || Box::new(metaprotocol_dubbo::DubboCodec::new(1 << 20)),
        ["big", "small"],
        |id, payload| {
            let value = std::str::from_utf8(payload)?;
            Ok(metaprotocol_dubbo::build::value_response(id, value, &[])[..].into())
        },
    )
    .await?;
    let cluster = format!(
        "    codec: {{ max_frame_bytes: 16384 }}\n    endpoints: [ {{ address: {upstream} }} ]\n"
    );
    let (proxy, address) = start(&config("", &cluster)).await?;
    let (big_client, small_client) = (DubboClient::new(address), DubboClient::new(address));
    let big = big_client.call("big", "a", &[]);
    let small = async {
        // After `big`, so that it waits behind `big`'s answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        small_client.call("small", "a", &[]).await
    };
    let (big, small) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(big, small) }).await?;
    assert_ne!(
        big?.dubbo_status, 20,
        "the call whose answer is over the limit fails"
    );
    assert_eq!(
        small?.dubbo_status, 20,
        "the call answered after it on the connection"
    );
    support::big_answer::assert_one_answer_passed_over(&proxy);
    proxy.shutdown().await;
    server.abort();
    Ok(())
}

/// An endpoint that takes every call and answers none: with only the route's timeout (no
/// `per_try_timeout`), each call ends at the request's deadline. Those timeouts are the
/// endpoint's failures as much as a per-try timeout's: outlier detection ejects it after
/// `consecutive_errors` of them, and they count as failed attempts.
#[tokio::test]
async fn an_endpoint_that_never_answers_is_ejected_by_request_timeouts() -> TestResult {
    let stuck = DemoProvider::start_slow("stuck", Duration::from_secs(30)).await?;
    let (proxy, address) = start(&config(
        ", timeout: 100ms",
        &format!(
            "    outlier_detection: {{ consecutive_errors: 3, interval: 100ms, base_ejection_time: 30s, max_ejection_percent: 100 }}\n{}",
            endpoints(&[&stuck], &[])
        ),
    ))
    .await?;
    let client = DubboClient::new(address);
    for _ in 0..3 {
        let reply = tokio::time::timeout(Duration::from_secs(5), client.call("sayHello", "a", &[]))
            .await??;
        assert_ne!(reply.dubbo_status, 20, "the endpoint answers nothing");
    }
    wait_for(
        "the silent endpoint to be ejected",
        Duration::from_secs(20),
        || endpoint_status(&proxy, stuck.address()).is_some_and(|e| e.ejected),
    )
    .await?;
    let failures = support::metrics::sample(
        &proxy.metrics().render(),
        "metaprotocol_upstream_rq_failures_total",
        &[("cluster", "c"), ("reason", "timeout")],
    );
    assert_eq!(failures, 3.0, "each timed-out attempt is a failed attempt");
    proxy.shutdown().await;
    Ok(())
}

/// A call whose one attempt ran out its per-try timeout, and whose deadline came in the pause
/// before its retry: one attempt timed out, and `upstream_rq_timeout_total` ("attempts that
/// timed out") counts it once, not once more for the deadline that found no attempt in flight.
#[tokio::test]
async fn a_deadline_in_a_retry_pause_counts_no_second_attempt_timeout() -> TestResult {
    let slow = DemoProvider::start_slow("slow", Duration::from_secs(30)).await?;
    let (proxy, address) = start(&config(
        ", timeout: 600ms, retry_policy: { num_retries: 1, retry_on: [timeout], per_try_timeout: 200ms, idempotent_methods: [sayHello], retry_back_off: { base_interval: 10s } }",
        &endpoints(&[&slow], &[]),
    ))
    .await?;
    let client = DubboClient::new(address);
    let reply =
        tokio::time::timeout(Duration::from_secs(5), client.call("sayHello", "a", &[])).await??;
    assert_ne!(reply.dubbo_status, 20, "the provider answers too late");
    let sample = |name: &str, labels: &[(&str, &str)]| {
        support::metrics::sample(&proxy.metrics().render(), name, labels)
    };
    assert_eq!(
        sample("metaprotocol_upstream_rq_retry_total", &[("cluster", "c")]),
        1.0,
        "the timed-out attempt was to be retried"
    );
    assert_eq!(
        sample(
            "metaprotocol_upstream_rq_timeout_total",
            &[("cluster", "c")]
        ),
        1.0,
        "one attempt timed out"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A retry whose pause and the call's deadline come due on one late turn of the proxy's loop
/// (here the thread is blocked past both): the call ends in its timeout, and no attempt goes
/// out after the caller gave up, to be dropped unsent and counted as the endpoint's timeout.
#[tokio::test]
async fn a_retry_due_after_the_deadline_is_not_started() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, address) = start(&config(
        ", timeout: 4500ms, retry_policy: { num_retries: 1, retry_on: [reset], idempotent_methods: [sayHelloAndHangUp], retry_back_off: { base_interval: 4s } }",
        &endpoints(&[&provider], &[]),
    ))
    .await?;
    let client = DubboClient::new(address);
    let call = tokio::spawn(async move { client.call(HANG_UP_METHOD, "a", &[]).await });
    let sample = |name: &str, labels: &[(&str, &str)]| {
        support::metrics::sample(&proxy.metrics().render(), name, labels)
    };
    let retries = || sample("metaprotocol_upstream_rq_retry_total", &[("cluster", "c")]);
    // The first attempt is reset at once; its retry waits 2 to 4 s, before the deadline: a
    // stall of the machine under two seconds (a pause of 0.5 s let one) cannot see the retry
    // come due, and go out before the deadline, between this look and the block below.
    wait_for(
        "the reset attempt to be retried",
        Duration::from_secs(20),
        || retries() >= 1.0,
    )
    .await?;
    // The test shares its thread with the proxy: blocked, the proxy takes no turn until both
    // the retry's pause and the deadline have passed.
    std::thread::sleep(Duration::from_secs(5));
    let reply = tokio::time::timeout(Duration::from_secs(5), call).await???;
    assert_eq!(retries(), 1.0, "one retry: {}", reply.dubbo_status);
    assert_eq!(reply.dubbo_status, 31, "the timeout error");
    assert_eq!(
        sample(
            "metaprotocol_upstream_rq_timeout_total",
            &[("cluster", "c")]
        ),
        0.0,
        "no attempt was in flight at the deadline"
    );
    assert_eq!(
        sample(
            "metaprotocol_upstream_rq_dropped_total",
            &[("cluster", "c")]
        ),
        0.0,
        "no attempt was queued too late"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A proxy whose route (with `route`'s fields) goes to `provider` and mirrors to a cluster `m`
/// whose server reads every copy and answers none; the server's task.
async fn mirroring_to_a_silent_server(
    provider: &DemoProvider,
    route: &str,
    mirror_cluster: &str,
) -> TestResult<(Proxy, SocketAddr, tokio::task::JoinHandle<()>)> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shadow = silent.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = silent.accept().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
            });
        }
    });
    let yaml = config(
        route,
        &format!(
            "{}  - name: m\n    endpoints: [ {{ address: \"{shadow}\" }} ]\n{mirror_cluster}",
            endpoints(&[provider], &[])
        ),
    );
    let (proxy, address) = start(&yaml).await?;
    Ok((proxy, address, server))
}

/// Three calls through a proxy mirroring them to a silent server ([`mirroring_to_a_silent_server`]
/// with `route` and `mirror_cluster`), each answered, of whose copies one is sent and two are
/// dropped; the proxy's metrics after them.
async fn three_calls_of_which_one_copy_is_sent(
    route: &str,
    mirror_cluster: &str,
) -> TestResult<String> {
    let provider = DemoProvider::start("p").await?;
    let (proxy, address, server) =
        mirroring_to_a_silent_server(&provider, route, mirror_cluster).await?;
    let client = DubboClient::new(address);
    for _ in 0..3 {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    }
    let metrics = proxy.metrics().render();
    proxy.shutdown().await;
    server.abort();
    let mirrored = |outcome: &str| {
        support::metrics::sample(
            &metrics,
            "metaprotocol_route_mirror_rq_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!((mirrored("sent"), mirrored("dropped")), (1.0, 2.0));
    Ok(metrics)
}

/// A copy dropped over the mirror's `max_in_flight` is never sent, and the mirror cluster's
/// series say so: its `upstream_rq_total` counts the copies sent, not those dropped.
#[tokio::test]
async fn copies_dropped_over_the_mirror_budget_are_no_upstream_requests() -> TestResult {
    // The first copy keeps the only slot.
    let metrics = three_calls_of_which_one_copy_is_sent(
        ", timeout: 1s, mirror: { cluster: m, max_in_flight: 1 }",
        "",
    )
    .await?;
    assert_eq!(
        support::metrics::sample(
            &metrics,
            "metaprotocol_upstream_rq_total",
            &[("cluster", "m")]
        ),
        1.0,
        "only the copy sent is an upstream request"
    );
    Ok(())
}

/// Copies count against the mirror cluster's circuit breakers as any request to it: with
/// `max_requests: 1` and the first copy unanswered, the next copies are dropped (counted as
/// dropped and as the breaker's overflows), not sent past the limit; the client's calls are
/// answered all the same.
#[tokio::test]
async fn copies_over_the_mirror_clusters_circuit_breaker_are_dropped() -> TestResult {
    let metrics = three_calls_of_which_one_copy_is_sent(
        ", timeout: 1s, mirror: { cluster: m, max_in_flight: 100 }",
        "    circuit_breakers: { max_requests: 1 }\n",
    )
    .await?;
    let sample =
        |name: &str, labels: &[(&str, &str)]| support::metrics::sample(&metrics, name, labels);
    assert_eq!(
        sample(
            "metaprotocol_upstream_overflow_total",
            &[("cluster", "m"), ("breaker", "max_requests")]
        ),
        2.0
    );
    assert_eq!(
        sample("metaprotocol_upstream_rq_total", &[("cluster", "m")]),
        1.0
    );
    Ok(())
}

/// A route without a timeout (`timeout: 0s`) mirroring to a cluster that takes copies and
/// never answers: a copy has no client waiting for it, so it waits 15 s at most (the default
/// route timeout) and then gives back its place in the mirror's `max_in_flight`, rather than
/// hold it (and stop all mirroring) for as long as the mirror's connection lives.
#[tokio::test]
async fn copies_of_requests_without_a_deadline_give_back_their_mirror_slot() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, address, server) = mirroring_to_a_silent_server(
        &provider,
        ", timeout: 0s, mirror: { cluster: m, max_in_flight: 2 }",
        "",
    )
    .await?;
    let client = DubboClient::new(address);
    let sample = |name: &str, labels: &[(&str, &str)]| {
        support::metrics::sample(&proxy.metrics().render(), name, labels)
    };
    let in_flight = || {
        sample(
            "metaprotocol_upstream_rq_mirror_active",
            &[("cluster", "m")],
        )
    };
    let mirrored = |outcome: &str| {
        sample(
            "metaprotocol_route_mirror_rq_total",
            &[("outcome", outcome)],
        )
    };
    for _ in 0..3 {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    }
    assert_eq!((mirrored("sent"), mirrored("dropped")), (2.0, 1.0));
    assert_eq!(in_flight(), 2.0);
    wait_for(
        "the unanswered copies to give back their slots",
        Duration::from_secs(20),
        || in_flight() == 0.0,
    )
    .await?;
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);
    assert_eq!(mirrored("sent"), 3.0, "mirroring goes on");
    proxy.shutdown().await;
    server.abort();
    Ok(())
}

/// A provider reached through a relay whose first connection goes dark: it takes the bytes and
/// never forwards them (the way a connection a firewall or NAT forgot, or a stuck server thread,
/// looks), while later connections reach the provider. The first heartbeat probe times out; the
/// checks after it open a new connection and pass, so the endpoint stays in rotation rather
/// than failing every check over the dark connection for as long as the kernel keeps it; the
/// dark connection is closed.
#[tokio::test]
async fn a_probe_that_times_out_is_not_sent_again_over_its_dark_connection() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let target = provider.address();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let relay_address = relay.local_addr()?;
    let (closed, dark_closed) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut closed = Some(closed);
        while let Ok((mut socket, _)) = relay.accept().await {
            let dark = closed.take();
            tokio::spawn(async move {
                if let Some(closed) = dark {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut socket, &mut sink).await;
                    let _ = closed.send(());
                } else if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                }
            });
        }
    });
    let cluster = format!(
        "    health_check: {{ interval: 100ms, interval_jitter_percent: 0, timeout: 300ms, unhealthy_threshold: 3, healthy_threshold: 1, probe: heartbeat }}
    endpoints: [ {{ address: \"{relay_address}\" }} ]
"
    );
    let (proxy, _) = start(&config("", &cluster)).await?;
    let passed = || {
        support::metrics::sample(
            &proxy.metrics().render(),
            "metaprotocol_health_checks_total",
            &[("cluster", "c"), ("outcome", "success")],
        )
    };
    let result = wait_for(
        "a probe over a new connection to pass",
        Duration::from_secs(20),
        || passed() >= 3.0,
    )
    .await;
    let failing = endpoint_status(&proxy, relay_address).map(|e| e.failing_active_checks);
    // The dark connection is closed, not left open beside its successor.
    let dark = tokio::time::timeout(Duration::from_secs(20), dark_closed).await;
    proxy.shutdown().await;
    server.abort();
    result?;
    assert_eq!(failing, Some(false));
    assert!(
        matches!(dark, Ok(Ok(()))),
        "the dark connection stayed open"
    );
    Ok(())
}

/// Endpoints that never answer their probes (a zone gone dark) hold each check for its whole
/// `timeout`; each endpoint's next check comes an interval after its own check ended, whatever
/// the others still wait for: with 20 such endpoints, a 1 s interval and a 500 ms timeout, every
/// endpoint is checked at least four times in 8 s (five, unloaded; two when the checks of a
/// round waited for each other).
#[tokio::test]
async fn probes_that_time_out_do_not_stretch_the_round() -> TestResult {
    let checks: Arc<Vec<std::sync::atomic::AtomicUsize>> =
        Arc::new((0..20).map(|_| Default::default()).collect());
    let mut addresses = Vec::new();
    let mut servers = Vec::new();
    for index in 0..20 {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(format!("{{ address: \"{}\" }}", silent.local_addr()?));
        let checks = checks.clone();
        servers.push(tokio::spawn(async move {
            while let Ok((mut socket, _)) = silent.accept().await {
                // A check that timed out closed its connection: each connection is a check.
                if let Some(count) = checks.get(index) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
                });
            }
        }));
    }
    let cluster = format!(
        "    health_check: {{ interval: 1s, interval_jitter_percent: 0, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1, probe: heartbeat }}
    endpoints: [ {} ]
",
        addresses.join(", ")
    );
    let (proxy, _) = start(&config("", &cluster)).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let counts: Vec<usize> = checks.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    proxy.shutdown().await;
    for server in servers {
        server.abort();
    }
    assert!(
        counts.iter().all(|&n| n >= 4),
        "checks per endpoint: {counts:?}"
    );
    Ok(())
}

/// With `connections_per_endpoint: 2`, the endpoint takes one connection and then no more (its
/// relay stops listening): the second connection's connect fails and the endpoint backs off.
/// Only the call that waited on that connect fails; the calls after it share the connection
/// that is open instead of being refused for the backoff, or waiting on the next connect.
#[tokio::test]
async fn calls_share_an_open_connection_while_the_endpoint_backs_off() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let target = provider.address();
    let (relay, _held) = support::listener_holding_its_port()?;
    let relay_address = relay.local_addr()?;
    let server = tokio::spawn(async move {
        // One connection, then the listener closes: later connects are refused (the port
        // held).
        if let Ok((mut socket, _)) = relay.accept().await {
            drop(relay);
            if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
            }
        }
    });
    let cluster = format!(
        "    connections_per_endpoint: 2\n    endpoints: [ {{ address: \"{relay_address}\" }} ]\n"
    );
    let (proxy, address) = start(&config(", timeout: 2s", &cluster)).await?;
    let client = DubboClient::new(address);
    let mut failed = Vec::new();
    for _ in 0..20 {
        let reply = client.call("sayHello", "a", &[]).await?;
        if reply.dubbo_status != 20 {
            failed.push(reply.dubbo_status);
        }
    }
    let connect_failures = endpoint_status(&proxy, relay_address).map_or(0, |e| e.connect_failures);
    proxy.shutdown().await;
    server.abort();
    assert!(
        failed.len() <= 1,
        "{} of 20 calls failed: {failed:?}",
        failed.len()
    );
    assert!(
        connect_failures >= 1,
        "the second connection's connect failed"
    );
    Ok(())
}
