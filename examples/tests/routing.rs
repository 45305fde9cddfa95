//! The route feature set end to end, with Dubbo peers on real sockets: mirroring (its share,
//! its budget, and a slow or dead mirror leaving the primary's latency alone), retries (a
//! refused endpoint is retried elsewhere, a request an endpoint received before dying is not
//! unless idempotent, the budget stops a retry storm), sticky weighted splits across a restart,
//! direct responses, templated header values and endpoints named by host name.

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient, Reply};
use metaprotocol_router::Proxy;
use support::proxy::{listener_addr, start_engine};
use support::{TestResult, refusing_addr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The value of `series` (a metric name with its labels) in `proxy`'s metrics.
fn metric(proxy: &Proxy, series: &str) -> u64 {
    support::proxy::metric(proxy, series) as u64
}

/// The provider that answered.
fn provider(reply: &Reply) -> String {
    reply.attachment("provider").unwrap_or_default().to_owned()
}

/// Makes `calls` calls of `sayHello` over `clients` connections, `concurrency` at a time on
/// each, and returns each call's reply or error text, in order.
async fn call_many(
    clients: &[Arc<DubboClient>],
    calls: usize,
    attachments: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<Result<Reply, String>> {
    let attachments = Arc::new(attachments);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..4 {
            let (client, next, attachments) = (client.clone(), next.clone(), attachments.clone());
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return done;
                    }
                    let pairs = attachments(i);
                    let refs: Vec<(&str, &str)> = pairs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let reply = client.call("sayHello", "x", &refs).await;
                    done.push((i, reply.map_err(|e| e.to_string())));
                }
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

fn clients(address: SocketAddr, n: usize) -> Vec<Arc<DubboClient>> {
    (0..n)
        .map(|_| Arc::new(DubboClient::new(address)))
        .collect()
}

/// The 99th percentile of `latencies`.
fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    let at = (latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1));
    latencies.get(at).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_mirror_gets_its_share_and_leaves_the_primary_alone() -> TestResult {
    const CALLS: usize = 5_000;
    let primary = DemoProvider::start("primary").await?;
    let shadow = DemoProvider::start_slow("shadow", Duration::from_secs(1)).await?;
    let (_down, dead) = refusing_addr()?;
    let yaml = format!(
        "listeners:
  - {{ name: plain, address: 127.0.0.1:0, protocol: dubbo, route_config: plain }}
  - {{ name: slow, address: 127.0.0.1:0, protocol: dubbo, route_config: slow }}
  - {{ name: dead, address: 127.0.0.1:0, protocol: dubbo, route_config: dead }}
route_configs:
  - {{ name: plain, routes: [ {{ name: r, route: {{ cluster: primary }} }} ] }}
  - name: slow
    routes:
      - name: r
        route: {{ cluster: primary }}
        request_mutation: {{ set: {{ x-mirrored: copy }} }}
        mirror: {{ cluster: shadow, percentage: 30, max_in_flight: 100000 }}
  - {{ name: dead, routes: [ {{ name: r, route: {{ cluster: primary }}, mirror: {{ cluster: dead, percentage: 30 }} }} ] }}
clusters:
  - {{ name: primary, endpoints: [ {{ address: {} }} ] }}
  - {{ name: shadow, endpoints: [ {{ address: {} }} ] }}
  - {{ name: dead, endpoints: [ {{ address: {dead} }} ] }}
",
        primary.address(),
        shadow.address(),
    );
    let proxy = start_engine(&yaml).await?;
    let mut latencies: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let listeners = ["plain", "slow", "dead"];
    let connections: Vec<Vec<Arc<DubboClient>>> = listeners
        .iter()
        .map(|name| Ok(clients(listener_addr(&proxy, name)?, 2)))
        .collect::<TestResult<_>>()?;
    // Blocks in turn, so that the machine's load weighs on each alike.
    for _ in 0..5 {
        for (name, clients) in listeners.iter().zip(&connections) {
            for reply in call_many(clients, CALLS / 5, |_| Vec::new()).await {
                let reply = reply.map_err(|e| format!("{name}: {e}"))?;
                assert_eq!(provider(&reply), "primary", "{name}");
                latencies.entry(name).or_default().push(reply.latency);
            }
        }
    }
    let p99s: BTreeMap<&str, Duration> = latencies
        .into_iter()
        .map(|(name, l)| (name, p99(l)))
        .collect();
    println!("primary p99 over {CALLS} calls: {p99s:?}");
    let plain = p99s["plain"];
    for mirrored in ["slow", "dead"] {
        // A mirror that held up the primary would cost it the mirror's 1 s, or a connect
        // failure; the bound leaves room for a loaded machine.
        assert!(
            p99s[mirrored] <= plain * 2 + Duration::from_millis(20),
            "{mirrored}: {p99s:?}"
        );
    }
    // The share arrives (spread evenly: exactly 30%), with the route's mutation.
    let wanted = CALLS * 30 / 100;
    let arrived = support::process::wait_until(Duration::from_secs(10), "mirrored copies", || {
        Ok(shadow.seen().len() >= wanted)
    });
    let seen = shadow.seen();
    assert!(arrived.is_ok(), "{} of {wanted}", seen.len());
    assert!(
        seen.len().abs_diff(wanted) <= CALLS * 2 / 100,
        "{}",
        seen.len()
    );
    assert!(
        seen.iter()
            .all(|r| r.metadata.get("x-mirrored").is_some_and(|v| v == "copy"))
    );
    let mirror = |route_config: &str, outcome: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_route_mirror_rq_total{{route_config=\"{route_config}\",route=\"r\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(mirror("slow", "sent"), wanted as u64);
    assert_eq!(
        mirror("dead", "sent") + mirror("dead", "dropped"),
        wanted as u64
    );
    // The answers are counted and dropped: the slow ones arrive after a second.
    support::process::wait_until(Duration::from_secs(10), "mirror answers", || {
        Ok(mirror("slow", "answered") == wanted as u64)
    })?;
    assert_eq!(
        mirror("dead", "failed") + mirror("dead", "dropped"),
        wanted as u64
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_over_the_mirror_budget_are_dropped_and_counted() -> TestResult {
    let primary = DemoProvider::start("primary").await?;
    let shadow = DemoProvider::start_slow("shadow", Duration::from_secs(2)).await?;
    let yaml = format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs:
  - {{ name: r, routes: [ {{ name: all, route: {{ cluster: primary }}, mirror: {{ cluster: shadow, max_in_flight: 10 }} }} ] }}
clusters:
  - {{ name: primary, endpoints: [ {{ address: {} }} ] }}
  - {{ name: shadow, endpoints: [ {{ address: {} }} ] }}
",
        primary.address(),
        shadow.address(),
    );
    let proxy = start_engine(&yaml).await?;
    let replies = call_many(&clients(listener_addr(&proxy, "in")?, 2), 200, |_| {
        Vec::new()
    })
    .await;
    assert!(replies.iter().all(|r| r.is_ok()));
    let series = |outcome: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_route_mirror_rq_total{{route_config=\"r\",route=\"all\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    let (sent, dropped) = (series("sent"), series("dropped"));
    assert_eq!(sent + dropped, 200);
    assert!(sent <= 10, "{sent} copies sent with 10 allowed in flight");
    assert!(dropped >= 190, "{dropped}");
    proxy.shutdown().await;
    Ok(())
}

/// A peer that reads a request and dies: it closes the connection without answering. Counts the
/// requests it received.
async fn dying_peer() -> TestResult<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((address, received))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_elsewhere_and_never_run_a_received_request_twice_unless_idempotent()
-> TestResult {
    let good = DemoProvider::start("good").await?;
    let (_down, refused) = refusing_addr()?;
    let (dying, received) = dying_peer().await?;
    let yaml = format!(
        "listeners:
  - {{ name: refused, address: 127.0.0.1:0, protocol: dubbo, route_config: refused }}
  - {{ name: dying, address: 127.0.0.1:0, protocol: dubbo, route_config: dying }}
  - {{ name: idempotent, address: 127.0.0.1:0, protocol: dubbo, route_config: idempotent }}
route_configs:
  - {{ name: refused, routes: [ {{ name: r, route: {{ cluster: refused }}, retry_policy: {{ num_retries: 2 }} }} ] }}
  - {{ name: dying, routes: [ {{ name: r, route: {{ cluster: dying }}, retry_policy: {{ num_retries: 2 }} }} ] }}
  - name: idempotent
    routes:
      - name: r
        route: {{ cluster: dying }}
        retry_policy: {{ num_retries: 2, idempotent_methods: [ sayHello ] }}
clusters:
  - {{ name: refused, endpoints: [ {{ address: {refused} }}, {{ address: {good} }} ] }}
  - {{ name: dying, endpoints: [ {{ address: {dying} }}, {{ address: {good} }} ] }}
",
        good = good.address(),
    );
    let proxy = start_engine(&yaml).await?;

    // An endpoint that refuses connections: the call goes to the other one and succeeds.
    let client = DubboClient::new(listener_addr(&proxy, "refused")?);
    for _ in 0..10 {
        let reply = client.call("sayHello", "x", &[]).await?;
        assert_eq!(
            (reply.dubbo_status, provider(&reply)),
            (20, "good".to_owned())
        );
    }
    let retries = |route_config: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_route_upstream_rq_retries_total{{route_config=\"{route_config}\",route=\"r\"}}"
            ),
        )
    };
    assert!(
        retries("refused") >= 1,
        "the refused endpoint was tried, then another"
    );

    // An endpoint that received the request and died: the call fails rather than run twice.
    let seen_before = good.seen().len();
    let client = DubboClient::new(listener_addr(&proxy, "dying")?);
    let mut failed = 0;
    for _ in 0..10 {
        let reply = client.call("sayHello", "x", &[]).await?;
        if reply.dubbo_status != 20 {
            failed += 1;
            assert!(reply.body_contains("upstream_reset"), "{reply:?}");
        }
    }
    let died_with = received.load(Ordering::Relaxed);
    assert!(
        died_with >= 1,
        "round robin sends some calls to the dying peer"
    );
    assert_eq!(
        failed, died_with,
        "every call the dying peer received failed"
    );
    assert_eq!(
        good.seen().len() - seen_before,
        10 - died_with,
        "none ran again"
    );
    assert_eq!(retries("dying"), 0);

    // The same, for a method the route says is idempotent: retried elsewhere, every call works.
    let client = DubboClient::new(listener_addr(&proxy, "idempotent")?);
    for _ in 0..10 {
        let reply = client.call("sayHello", "x", &[]).await?;
        assert_eq!(
            (reply.dubbo_status, provider(&reply)),
            (20, "good".to_owned())
        );
    }
    assert!(received.load(Ordering::Relaxed) > died_with);
    assert!(retries("idempotent") >= 1);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm() -> TestResult {
    const CALLS: u64 = 300;
    let down = (0..3)
        .map(|_| refusing_addr())
        .collect::<TestResult<Vec<_>>>()?;
    let endpoints: Vec<String> = down
        .iter()
        .map(|(_, address)| format!("{{ address: {address} }}"))
        .collect();
    let endpoints = endpoints.join(", ");
    let yaml = format!(
        "listeners:
  - {{ name: budget, address: 127.0.0.1:0, protocol: dubbo, route_config: budget }}
  - {{ name: unbounded, address: 127.0.0.1:0, protocol: dubbo, route_config: unbounded }}
route_configs:
  - {{ name: budget, routes: [ {{ name: r, route: {{ cluster: budget }}, retry_policy: {{ num_retries: 5 }} }} ] }}
  - {{ name: unbounded, routes: [ {{ name: r, route: {{ cluster: unbounded }}, retry_policy: {{ num_retries: 5 }} }} ] }}
clusters:
  - {{ name: budget, endpoints: [ {endpoints} ] }}
  - name: unbounded
    retry_budget: {{ budget_percent: 100, min_retry_concurrency: 100000 }}
    endpoints: [ {endpoints} ]
"
    );
    let proxy = start_engine(&yaml).await?;
    let mut per_call = BTreeMap::new();
    for name in ["budget", "unbounded"] {
        let replies = call_many(
            &clients(listener_addr(&proxy, name)?, 4),
            CALLS as usize,
            |_| Vec::new(),
        )
        .await;
        assert!(
            replies
                .iter()
                .all(|r| r.as_ref().is_ok_and(|r| r.dubbo_status != 20))
        );
        let attempts = metric(
            &proxy,
            &format!(
                "metaprotocol_route_upstream_rq_attempts_total{{route_config=\"{name}\",route=\"r\"}}"
            ),
        );
        per_call.insert(name, attempts as f64 / CALLS as f64);
    }
    let exhausted = metric(
        &proxy,
        "metaprotocol_route_upstream_rq_retry_budget_exhausted_total{route_config=\"budget\",route=\"r\"}",
    );
    println!(
        "attempts per call while every endpoint fails: {per_call:?}; budget exhausted {exhausted} times"
    );
    assert!(per_call["unbounded"] > 5.0, "{per_call:?}");
    // A connect failure the policy retries is not also resent: no attempt beyond num_retries.
    assert!(per_call["unbounded"] <= 6.0, "{per_call:?}");
    assert!(per_call["budget"] < 2.0, "{per_call:?}");
    assert!(exhausted > 0);
    proxy.shutdown().await;
    Ok(())
}

const STICKY: &str =
    "listeners: [ { name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r } ]
route_configs:
  - name: r
    routes:
      - route:
          hash_on: user
          weighted_clusters:
            - { cluster: v1, weight: 30 }
            - { cluster: v2, weight: 70 }
clusters:
";

/// Which provider each of `users` users lands on, checking that each user's `calls` calls agree.
async fn sides(proxy: &Proxy, users: usize, calls: usize) -> TestResult<Vec<String>> {
    let replies = call_many(
        &clients(listener_addr(proxy, "in")?, 4),
        users * calls,
        move |i| vec![("user".to_owned(), format!("user-{}", i % users))],
    )
    .await;
    let mut sides = vec![String::new(); users];
    for (i, reply) in replies.into_iter().enumerate() {
        let side = provider(&reply?);
        let user = i % users;
        if sides[user].is_empty() {
            sides[user] = side;
        } else {
            assert_eq!(sides[user], side, "user-{user} moved");
        }
    }
    Ok(sides)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_split_keeps_each_user_on_one_version_across_a_restart() -> TestResult {
    let v1 = DemoProvider::start("v1").await?;
    let v2 = DemoProvider::start("v2").await?;
    let yaml = format!(
        "{STICKY}  - {{ name: v1, endpoints: [ {{ address: {} }} ] }}\n  - {{ name: v2, endpoints: [ {{ address: {} }} ] }}\n",
        v1.address(),
        v2.address()
    );
    let proxy = start_engine(&yaml).await?;
    let before = sides(&proxy, 1_000, 10).await?;
    proxy.shutdown().await;
    let on_v1 = before.iter().filter(|s| *s == "v1").count();
    println!("sticky split: {on_v1} of 1000 users on v1 (weight 30)");
    assert!((270..=330).contains(&on_v1), "{on_v1}");

    let restarted = start_engine(&yaml).await?;
    let after = sides(&restarted, 1_000, 1).await?;
    assert_eq!(
        before, after,
        "every user kept its version across the restart"
    );
    restarted.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses_templates_and_host_names() -> TestResult {
    let backend = DemoProvider::start("backend").await?;
    let yaml = format!(
        r#"listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs:
  - name: r
    routes:
      - match: {{ metadata: [ {{ key: method, exact: legacyCall }} ] }}
        direct_response: {{ kind: unavailable, message: "legacyCall is retired" }}
      - name: main
        route: {{ cluster: named }}
        request_mutation:
          set: {{ x-caller: "%downstream_peer_address%", x-user: "%metadata(user)%", x-via: "%route%@%cluster% 100%%" }}
clusters:
  - {{ name: named, endpoints: [ {{ address: "localhost:{port}" }} ] }}
"#,
        port = backend.address().port()
    );
    let proxy = start_engine(&yaml).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let retired = client.call("legacyCall", "x", &[]).await?;
    assert_eq!(retired.dubbo_status, 100, "unavailable, in Dubbo's terms");
    assert!(retired.body_contains("legacyCall is retired"));
    assert!(
        backend.seen().is_empty(),
        "a direct response reaches no upstream"
    );

    let reply = client.call("sayHello", "x", &[("user", "alice")]).await?;
    assert_eq!(
        provider(&reply),
        "backend",
        "localhost resolved to the backend"
    );
    let seen = backend.seen();
    let header = |key: &str| {
        seen.last()
            .and_then(|r| r.metadata.get(key))
            .map(|v| v.to_string())
    };
    assert_eq!(header("x-user").as_deref(), Some("alice"));
    assert_eq!(header("x-via").as_deref(), Some("main@named 100%"));
    let caller = header("x-caller").unwrap_or_default();
    assert!(caller.starts_with("127.0.0.1:"), "{caller}");
    let endpoints: Vec<SocketAddr> = proxy
        .clusters()
        .iter()
        .flat_map(|c| c.endpoints.iter().map(|e| e.address))
        .collect();
    assert_eq!(endpoints, [backend.address()]);
    proxy.shutdown().await;
    Ok(())
}
