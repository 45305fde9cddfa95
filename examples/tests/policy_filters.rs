//! The policy filters end to end with Dubbo: the demo provider behind the engine, real sockets
//! on 127.0.0.1, and for the global rate limit a real redis-server (and, for the limit shared
//! by several proxies, two `metaprotocol-proxy` processes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::Proxy;

#[allow(dead_code)]
mod support;

use support::process::Scratch;
use support::proxy::{BinaryProxy, listener_addr, metric, start_engine};
use support::redis::RedisServer;
use support::{TestResult, free_addr};

/// Dubbo's OK status.
const OK: u8 = 20;
/// What a Dubbo client gets for an over-limit (and unavailable) local reply.
const OVER_LIMIT: u8 = 100;
/// What a Dubbo client gets for an unauthorized local reply.
const UNAUTHORIZED: u8 = 40;

/// The requests of `listener` that ended with `outcome`, as the outcome metrics count them.
fn completed(proxy: &Proxy, listener: &str, outcome: &str) -> f64 {
    support::metrics::sample(
        &proxy.metrics().render(),
        "metaprotocol_downstream_rq_completed_total",
        &[("listener", listener), ("outcome", outcome)],
    )
}

/// The demo provider and a proxy whose listeners (name, filters as a YAML flow list) all route
/// to it.
async fn start(listeners: &[(&str, &str)]) -> TestResult<(DemoProvider, Proxy)> {
    let provider = DemoProvider::start("p").await?;
    let proxy = start_engine(&config(listeners, provider.address(), |_| {
        "127.0.0.1:0".to_owned()
    }))
    .await?;
    Ok((provider, proxy))
}

/// A config of `listeners` (bound where `address` says) routing to `provider`.
fn config(
    listeners: &[(&str, &str)],
    provider: std::net::SocketAddr,
    address: impl Fn(&str) -> String,
) -> String {
    let listeners: String = listeners
        .iter()
        .map(|(name, filters)| {
            format!(
                "  - {{ name: {name}, address: {}, protocol: dubbo, route_config: r,\n      filters: {filters} }}\n",
                address(name)
            )
        })
        .collect();
    format!(
        "listeners:
{listeners}route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: p }} }} ] }}
clusters:
  - {{ name: p, endpoints: [ {{ address: {provider} }} ] }}
"
    )
}

/// What calls got back.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    over_limit: u64,
    /// Anything else, described.
    other: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.over_limit += other.over_limit;
        self.other.extend(other.other);
    }
}

/// Calls `method` on `clients` (round robin over `tasks` tasks) as fast as answers come, for
/// `duration`.
async fn hammer(
    clients: &[Arc<DubboClient>],
    method: &'static str,
    tasks: usize,
    duration: Duration,
) -> TestResult<Tally> {
    let deadline = Instant::now() + duration;
    let mut running = Vec::new();
    for task in 0..tasks {
        let client = clients[task % clients.len()].clone();
        running.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                match client.call(method, "a", &[]).await {
                    Ok(reply) if reply.dubbo_status == OK => tally.ok += 1,
                    Ok(reply) if reply.dubbo_status == OVER_LIMIT => tally.over_limit += 1,
                    Ok(reply) => tally.other.push(format!("status {}", reply.dubbo_status)),
                    Err(err) => tally.other.push(err.to_string()),
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in running {
        total.add(task.await?);
    }
    Ok(total)
}

/// Calls `method` on `client` until one is refused as over the limit: the limit's burst is
/// spent, and what is allowed from then on is its rate.
async fn drain(client: &DubboClient, method: &str) -> TestResult {
    for _ in 0..10_000 {
        if client.call(method, "a", &[]).await?.dubbo_status == OVER_LIMIT {
            return Ok(());
        }
    }
    Err("the limit never refused a call".into())
}

/// Asserts that `allowed` calls over `seconds` are within 10% of `per_second`.
fn assert_rate(allowed: u64, per_second: f64, seconds: f64) {
    let rate = allowed as f64 / seconds;
    println!("{allowed} calls allowed in {seconds} s: {rate:.1}/s, configured {per_second}/s");
    assert!(
        (rate - per_second).abs() <= per_second * 0.1,
        "{allowed} calls allowed in {seconds} s: {rate:.1}/s, configured {per_second}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ratelimit_allows_the_configured_rate() -> TestResult {
    // 200 calls per second, in fills of 20 every 100 ms; the bucket holds half a second's worth,
    // so that a client stalled by a busy machine for less than that loses nothing.
    let (provider, proxy) = start(&[(
        "in",
        "[ { name: local_ratelimit, config: { token_bucket: { max_tokens: 100, tokens_per_fill: 20, fill_interval: 100ms } } } ]",
    )])
    .await?;
    let client = Arc::new(DubboClient::new(listener_addr(&proxy, "in")?));
    drain(&client, "sayHello").await?;
    let drained = provider.seen().len() as u64;
    let tally = hammer(&[client], "sayHello", 8, Duration::from_secs(5)).await?;
    assert!(tally.other.is_empty(), "{:?}", tally.other);
    assert!(tally.over_limit > 0, "nothing was limited: {tally:?}");
    assert_rate(tally.ok, 200.0, 5.0);
    assert_eq!(provider.seen().len() as u64, drained + tally.ok);
    let series = "metaprotocol_ratelimit_decisions_total{listener=\"in\",filter=\"local_ratelimit\",decision=";
    assert_eq!(
        metric(&proxy, &format!("{series}\"ok\"}}")),
        (drained + tally.ok) as f64
    );
    assert_eq!(
        metric(&proxy, &format!("{series}\"over_limit\"}}")),
        (1 + tally.over_limit) as f64
    );
    assert_eq!(
        completed(&proxy, "in", "over_limit"),
        (1 + tally.over_limit) as f64,
        "each refusal counts once under its outcome"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delays_its_share_and_aborts_with_the_chosen_kind() -> TestResult {
    let delay = Duration::from_millis(300);
    let (provider, proxy) = start(&[(
        "in",
        "[ { name: fault, config: { match: { metadata: [ { key: method, exact: sayHello } ] },
                                    delay: { fixed_delay: 300ms, percentage: 50 } } },
           { name: fault, stat_name: goodbyes,
             config: { match: { metadata: [ { key: method, exact: sayGoodbye } ] },
                                    abort: { kind: unavailable, percentage: 100 } } } ]",
    )])
    .await?;
    let client = Arc::new(DubboClient::new(listener_addr(&proxy, "in")?));
    // In waves of 20, so that calls that are not delayed are not slowed by a crowd either.
    let calls = 200;
    let mut slow = 0;
    for _ in 0..calls / 20 {
        let mut wave = Vec::new();
        for _ in 0..20 {
            let client = client.clone();
            wave.push(tokio::spawn(async move {
                client.call("sayHello", "a", &[]).await
            }));
        }
        for call in wave {
            let reply = call.await??;
            assert_eq!(reply.dubbo_status, OK);
            if reply.latency >= delay {
                slow += 1;
            }
        }
    }
    let delayed = metric(
        &proxy,
        "metaprotocol_fault_delays_injected_total{listener=\"in\",filter=\"fault\"}",
    ) as u64;
    // A fair coin 200 times: 35% to 65% is more than four standard deviations either way.
    assert!(
        (70..=130).contains(&delayed),
        "{delayed} of {calls} delayed"
    );
    // Every delayed call took the delay; a call that was not delayed may, rarely, be slow on
    // a loaded machine.
    assert!(slow >= delayed, "{slow} slow calls, {delayed} delayed");
    assert!(
        slow <= delayed + calls / 20,
        "{slow} slow calls, {delayed} delayed"
    );
    assert_eq!(provider.seen().len(), calls as usize);

    let aborted = client.call("sayGoodbye", "a", &[]).await?;
    assert_eq!(
        aborted.dubbo_status, OVER_LIMIT,
        "unavailable is Dubbo's 100"
    );
    assert_eq!(provider.seen().len(), calls as usize);
    assert_eq!(
        metric(
            &proxy,
            "metaprotocol_fault_aborts_injected_total{listener=\"in\",filter=\"fault.goodbyes\"}"
        ),
        1.0
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rbac_denies_by_method_and_shadow_mode_counts_but_allows() -> TestResult {
    let rbac = |shadow: bool| {
        format!(
            "[ {{ name: rbac, config: {{ action: deny, shadow: {shadow}, policies: [
                 {{ name: no-goodbyes, metadata: [ {{ key: method, exact: sayGoodbye }} ] }} ] }} }} ]"
        )
    };
    let (provider, proxy) = start(&[("enforced", &rbac(false)), ("shadow", &rbac(true))]).await?;
    let enforced = DubboClient::new(listener_addr(&proxy, "enforced")?);
    let shadow = DubboClient::new(listener_addr(&proxy, "shadow")?);

    assert_eq!(enforced.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    let denied = enforced.call("sayGoodbye", "a", &[]).await?;
    assert_eq!(denied.dubbo_status, UNAUTHORIZED);
    assert!(denied.body_contains("rbac"), "{:?}", denied.frame);
    assert_eq!(provider.seen().len(), 1);

    for _ in 0..3 {
        assert_eq!(shadow.call("sayGoodbye", "a", &[]).await?.dubbo_status, OK);
    }
    assert_eq!(shadow.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    assert_eq!(provider.seen().len(), 5);

    let series = |listener: &str, decision: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_rbac_decisions_total{{listener=\"{listener}\",filter=\"rbac\",decision=\"{decision}\"}}"
            ),
        )
    };
    assert_eq!(series("enforced", "denied"), 1.0);
    assert_eq!(series("enforced", "allowed"), 1.0);
    assert_eq!(series("shadow", "shadow_denied"), 3.0);
    assert_eq!(series("shadow", "shadow_allowed"), 1.0);
    assert_eq!(series("shadow", "denied"), 0.0);
    assert_eq!(completed(&proxy, "enforced", "unauthorized"), 1.0);
    assert_eq!(completed(&proxy, "shadow", "unauthorized"), 0.0);
    assert_eq!(completed(&proxy, "shadow", "success"), 4.0);
    proxy.shutdown().await;
    Ok(())
}

/// Two filters of one kind on a listener added up into one series, which could not be told
/// apart: each now has its own (`stat_name`, or else its place in the chain), and a chain where
/// two are given the same is refused.
#[tokio::test]
async fn two_filters_of_one_kind_keep_series_of_their_own() -> TestResult {
    let (provider, proxy) = start(&[(
        "in",
        "[ { name: local_ratelimit, config: { conditions: [
               { match: { metadata: [ { key: method, exact: sayHello } ] },
                 token_bucket: { max_tokens: 1, fill_interval: 1h } } ] } },
           { name: local_ratelimit, stat_name: per_listener,
             config: { token_bucket: { max_tokens: 3, fill_interval: 1h } } },
           { name: local_ratelimit,
             config: { token_bucket: { max_tokens: 100, fill_interval: 1h } } } ]",
    )])
    .await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let mut statuses = Vec::new();
    for method in ["sayHello", "sayHello", "sayBye", "sayBye", "sayBye"] {
        statuses.push(client.call(method, "a", &[]).await?.dubbo_status);
    }
    assert_eq!(statuses, [OK, OVER_LIMIT, OK, OK, OVER_LIMIT]);
    assert_eq!(provider.seen().len(), 3);
    let series = |filter: &str, decision: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_ratelimit_decisions_total{{listener=\"in\",filter=\"{filter}\",decision=\"{decision}\"}}"
            ),
        )
    };
    assert_eq!(series("local_ratelimit", "ok"), 1.0);
    assert_eq!(series("local_ratelimit", "over_limit"), 1.0);
    assert_eq!(series("local_ratelimit.per_listener", "ok"), 3.0);
    assert_eq!(series("local_ratelimit.per_listener", "over_limit"), 1.0);
    assert_eq!(series("local_ratelimit.2", "ok"), 3.0);
    proxy.shutdown().await;

    let bucket = "config: { token_bucket: { max_tokens: 1, fill_interval: 1s } }";
    for (filters, reason) in [
        (
            format!(
                "[ {{ name: local_ratelimit, {bucket} }}, {{ name: local_ratelimit, {bucket} }},
                   {{ name: local_ratelimit, stat_name: \"1\", {bucket} }} ]"
            ),
            "listeners[0].filters[2].stat_name: would share the series of filters[1]",
        ),
        (
            format!(
                "[ {{ name: local_ratelimit, stat_name: a, {bucket} }},
                   {{ name: local_ratelimit, stat_name: a, {bucket} }} ]"
            ),
            "listeners[0].filters[1].stat_name: would share the series of filters[0]",
        ),
        (
            format!("[ {{ name: local_ratelimit, stat_name: \"per user\", {bucket} }} ]"),
            "listeners[0].filters[0].stat_name: `per user` is not",
        ),
    ] {
        let yaml = config(&[("in", &filters)], provider.address(), |_| {
            "127.0.0.1:0".to_owned()
        });
        match start_engine(&yaml).await {
            Ok(proxy) => {
                proxy.shutdown().await;
                return Err(format!("accepted: {filters}").into());
            }
            Err(err) => assert!(err.to_string().contains(reason), "{err}"),
        }
    }
    Ok(())
}

/// A `global_ratelimit` filter list over `redis`.
fn global_ratelimit(redis: &RedisServer, limit: &str, timeout: &str, deny: bool) -> String {
    format!(
        "[ {{ name: global_ratelimit, config: {{ redis: {{ address: \"{}\" }}, domain: test,
             descriptors: [ interface, method ], limit: {limit}, timeout: {timeout},
             failure_mode_deny: {deny} }} }} ]",
        redis.address
    )
}

#[tokio::test]
async fn global_ratelimit_keeps_one_limit_per_descriptor_in_redis() -> TestResult {
    let scratch = Scratch::new("global-descriptors")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = global_ratelimit(&redis, "{ requests: 5, per: 1h }", "1s", false);
    let (provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    for method in ["sayHello", "sayGoodbye"] {
        for _ in 0..5 {
            assert_eq!(client.call(method, "a", &[]).await?.dubbo_status, OK);
        }
        let limited = client.call(method, "a", &[]).await?;
        assert_eq!(limited.dubbo_status, OVER_LIMIT, "{method}");
    }
    assert_eq!(provider.seen().len(), 10);
    // The limit lives in Redis, not in the proxy: a second proxy on the same Redis is limited
    // at once.
    let (_, second) = start(&[("in", &filters)]).await?;
    let other = DubboClient::new(listener_addr(&second, "in")?);
    assert_eq!(
        other.call("sayHello", "a", &[]).await?.dubbo_status,
        OVER_LIMIT
    );
    let series = "metaprotocol_ratelimit_decisions_total{listener=\"in\",filter=\"global_ratelimit\",decision=";
    assert_eq!(metric(&proxy, &format!("{series}\"ok\"}}")), 10.0);
    assert_eq!(metric(&proxy, &format!("{series}\"over_limit\"}}")), 2.0);
    second.shutdown().await;
    proxy.shutdown().await;
    Ok(())
}

/// A call lacking a descriptor key is not limited, as in Envoy, but nothing showed how many
/// went by so: they are counted (`decision="missing_descriptor"`), and with
/// `missing_descriptor: limit` they share a limit of their own instead.
#[tokio::test]
async fn global_ratelimit_counts_or_limits_calls_without_a_descriptor() -> TestResult {
    let scratch = Scratch::new("global-missing")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = |missing: &str| {
        format!(
            "[ {{ name: global_ratelimit, config: {{ redis: {{ address: \"{}\" }}, domain: {missing},
                 descriptors: [ user ], limit: {{ requests: 2, per: 1h }}, timeout: 1s,
                 missing_descriptor: {missing} }} }} ]",
            redis.address
        )
    };
    let (_provider, proxy) =
        start(&[("pass", &filters("pass")), ("limit", &filters("limit"))]).await?;
    let pass = DubboClient::new(listener_addr(&proxy, "pass")?);
    let limit = DubboClient::new(listener_addr(&proxy, "limit")?);
    let alice = [("user", "alice")];
    let mut statuses = Vec::new();
    for (client, attachments) in [
        (&pass, &[][..]),
        (&pass, &[]),
        (&pass, &[]),
        (&limit, &[]),
        (&limit, &[]),
        (&limit, &[]),
        (&limit, &alice),
        (&limit, &alice),
        (&limit, &alice),
    ] {
        statuses.push(
            client
                .call("sayHello", "a", attachments)
                .await?
                .dubbo_status,
        );
    }
    assert_eq!(
        statuses,
        [OK, OK, OK, OK, OK, OVER_LIMIT, OK, OK, OVER_LIMIT]
    );
    let series = |listener: &str, decision: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_ratelimit_decisions_total{{listener=\"{listener}\",filter=\"global_ratelimit\",decision=\"{decision}\"}}"
            ),
        )
    };
    assert_eq!(series("pass", "missing_descriptor"), 3.0);
    assert_eq!(series("pass", "ok"), 0.0);
    assert_eq!(series("limit", "missing_descriptor"), 0.0);
    assert_eq!(series("limit", "ok"), 4.0);
    assert_eq!(series("limit", "over_limit"), 2.0);
    assert_eq!(redis.keys()?.len(), 2, "{:?}", redis.keys()?);
    proxy.shutdown().await;
    Ok(())
}

/// A limit raised in the config (from 1 per hour to 100 per second, as a rolling update would
/// deploy it) holds the clients the old limit had refused only as long as the new limit could
/// have: the time left under the old one (an hour) is not carried over.
#[tokio::test]
async fn global_ratelimit_raised_limit_does_not_keep_the_old_limits_wait() -> TestResult {
    let scratch = Scratch::new("global-raised")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let strict = global_ratelimit(&redis, "{ requests: 1, per: 1h }", "1s", false);
    let (provider, proxy) = start(&[("in", &strict)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    assert_eq!(
        client.call("sayHello", "a", &[]).await?.dubbo_status,
        OVER_LIMIT
    );
    let raised = global_ratelimit(&redis, "{ requests: 100, per: 1s }", "1s", false);
    let (second_provider, updated) = start(&[("in", &raised)]).await?;
    let client = DubboClient::new(listener_addr(&updated, "in")?);
    // The client is taken to have spent the raised limit's whole burst: it waits that long
    // (1 s), not the hour left under the old limit.
    assert_eq!(
        client.call("sayHello", "a", &[]).await?.dubbo_status,
        OVER_LIMIT
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..50 {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    }
    assert_eq!(provider.seen().len(), 1);
    assert_eq!(second_provider.seen().len(), 50);
    updated.shutdown().await;
    proxy.shutdown().await;
    Ok(())
}

/// A Redis that requires a password: the proxy signs in with the one in `password_file`, and
/// without it every check fails to the failure mode. Keys stay short however long the values
/// clients send.
#[tokio::test]
async fn global_ratelimit_signs_in_and_keeps_its_keys_short() -> TestResult {
    let scratch = Scratch::new("global-password")?;
    let Some(redis) = RedisServer::start_requiring(&scratch, "s3cret")? else {
        return Ok(());
    };
    let password_file = scratch.path("redis-password");
    std::fs::write(&password_file, "s3cret\n")?;
    let filters = |password_file: &str| {
        format!(
            "[ {{ name: global_ratelimit, config: {{ redis: {{ address: \"{}\"{password_file} }},
                 domain: test, descriptors: [ interface, method ],
                 limit: {{ requests: 2, per: 1h }}, timeout: 1s, failure_mode_deny: true }} }} ]",
            redis.address
        )
    };
    let (provider, proxy) = start(&[
        (
            "signed_in",
            &filters(&format!(", password_file: \"{}\"", password_file.display())),
        ),
        ("anonymous", &filters("")),
    ])
    .await?;
    let signed_in = DubboClient::new(listener_addr(&proxy, "signed_in")?);
    let long = "m".repeat(4096);
    for method in ["sayHello", long.as_str()] {
        for _ in 0..2 {
            assert_eq!(signed_in.call(method, "a", &[]).await?.dubbo_status, OK);
        }
        let limited = signed_in.call(method, "a", &[]).await?;
        assert_eq!(limited.dubbo_status, OVER_LIMIT);
        assert!(limited.body_contains("rate limited"));
    }
    let keys = redis.keys()?;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().any(|k| k.ends_with("method8:sayHello")),
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| k.len() <= 256), "{keys:?}");

    let anonymous = DubboClient::new(listener_addr(&proxy, "anonymous")?);
    let refused = anonymous.call("sayHello", "a", &[]).await?;
    assert_eq!(refused.dubbo_status, OVER_LIMIT);
    assert!(refused.body_contains("failure_mode_deny"));
    let errors = "metaprotocol_ratelimit_backend_errors_total{listener=\"anonymous\",filter=\"global_ratelimit\",reason=\"error\"}";
    assert_eq!(metric(&proxy, errors), 1.0);
    assert_eq!(provider.seen().len(), 4);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxy_processes_enforce_one_combined_limit() -> TestResult {
    let scratch = Scratch::new("global-two-proxies")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let provider = DemoProvider::start("p").await?;
    // 100 calls per second in all, in bursts of up to 50 (as in the local limit's test: a
    // client stalled by a busy machine for less than half a second loses nothing).
    let filters = global_ratelimit(
        &redis,
        "{ requests: 100, per: 1s, burst: 50 }",
        "500ms",
        false,
    );
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    for name in ["a", "b"] {
        let listen = free_addr()?;
        let yaml = config(&[("in", &filters)], provider.address(), |_| {
            listen.to_string()
        });
        let dir = Scratch::new(&format!("global-two-proxies-{name}"))?;
        proxies.push((BinaryProxy::start(&yaml, &[], listen, &dir)?, dir));
        clients.push(Arc::new(DubboClient::new(listen)));
    }
    drain(&clients[0], "sayHello").await?;
    let drained = provider.seen().len() as u64;
    let tally = hammer(&clients, "sayHello", 8, Duration::from_secs(5)).await?;
    assert!(tally.other.is_empty(), "{:?}", tally.other);
    assert!(tally.over_limit > 0, "nothing was limited: {tally:?}");
    assert_rate(tally.ok, 100.0, 5.0);
    assert_eq!(provider.seen().len() as u64, drained + tally.ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slow_or_down_applies_the_failure_mode_within_the_timeout() -> TestResult {
    let scratch = Scratch::new("global-failure-mode")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let timeout = Duration::from_millis(300);
    let limit = "{ requests: 1000, per: 1s }";
    let (provider, proxy) = start(&[
        ("allow", &global_ratelimit(&redis, limit, "300ms", false)),
        ("deny", &global_ratelimit(&redis, limit, "300ms", true)),
    ])
    .await?;
    let allow = DubboClient::new(listener_addr(&proxy, "allow")?);
    let deny = DubboClient::new(listener_addr(&proxy, "deny")?);
    assert_eq!(allow.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    assert_eq!(deny.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    // Slow: Redis takes the checks and never answers. Each call waits for the timeout, no more
    // (a second of slack for a loaded machine), and the calls waiting on one connection do not
    // wait one after another (ten in a row would take three seconds).
    redis.pause()?;
    let started = Instant::now();
    let calls = (0..10)
        .map(|_| allow.call("sayHello", "a", &[]))
        .chain((0..10).map(|_| deny.call("sayHello", "a", &[])));
    for (i, reply) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let reply = reply?;
        let want = if i < 10 { OK } else { OVER_LIMIT };
        assert_eq!(reply.dubbo_status, want, "call {i}");
        assert!(reply.latency >= timeout, "{:?}", reply.latency);
        assert!(
            reply.latency < timeout + Duration::from_secs(1),
            "{:?}",
            reply.latency
        );
    }
    assert!(started.elapsed() < timeout + Duration::from_secs(1));

    // Down: the server is gone; calls are answered by the failure mode without waiting out the
    // timeout.
    drop(redis);
    for _ in 0..3 {
        let allowed = allow.call("sayHello", "a", &[]).await?;
        assert_eq!(allowed.dubbo_status, OK);
        assert!(
            allowed.latency < timeout + Duration::from_secs(1),
            "{:?}",
            allowed.latency
        );
        let denied = deny.call("sayHello", "a", &[]).await?;
        assert_eq!(denied.dubbo_status, OVER_LIMIT);
        assert!(denied.body_contains("failure_mode_deny"));
    }
    assert_eq!(provider.seen().len(), 2 + 10 + 3);
    let errors = |listener: &str, reason: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_ratelimit_backend_errors_total{{listener=\"{listener}\",filter=\"global_ratelimit\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert!(errors("allow", "timeout") >= 1.0);
    assert!(errors("deny", "timeout") >= 10.0);
    assert_eq!(errors("deny", "timeout") + errors("deny", "error"), 13.0);
    let series = "metaprotocol_ratelimit_decisions_total{listener=\"deny\",filter=\"global_ratelimit\",decision=\"failure_mode_denied\"}";
    assert_eq!(metric(&proxy, series), 13.0);
    proxy.shutdown().await;
    Ok(())
}

/// Checks that waited for a paused Redis past their timeout (their requests went on by the
/// failure mode) are not counted when it resumes and runs them: they used to spend the limit at
/// once, and the clients that came next were refused for as long as the limit's burst takes to
/// come back (here an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_timed_out_while_redis_was_paused_are_not_counted_when_it_resumes() -> TestResult
{
    let scratch = Scratch::new("global-paused")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let timeout = Duration::from_millis(300);
    let filters = global_ratelimit(&redis, "{ requests: 5, per: 1h }", "300ms", false);
    let (provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    // Counted: 1 of 5.
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    redis.pause()?;
    let calls = (0..10).map(|_| client.call("sayHello", "a", &[]));
    for reply in futures::future::join_all(calls).await {
        let reply = reply?;
        assert_eq!(reply.dubbo_status, OK, "let through by the failure mode");
        assert!(reply.latency >= timeout, "{:?}", reply.latency);
    }
    // Paused well past the point where the proxy gave those checks up.
    tokio::time::sleep(timeout * 3).await;
    redis.resume()?;

    // The next checks go to Redis behind the ten that waited, which it runs first: 4 of 5 are
    // left all the same.
    for i in 0..4 {
        let reply = client.call("sayHello", "a", &[]).await?;
        assert_eq!(reply.dubbo_status, OK, "call {i} after the pause");
    }
    let limited = client.call("sayHello", "a", &[]).await?;
    assert_eq!(limited.dubbo_status, OVER_LIMIT);
    assert_eq!(provider.seen().len(), 1 + 10 + 4);
    proxy.shutdown().await;
    Ok(())
}

/// A Redis slow to take the proxy's connection is not a stalled one: checks that timed out
/// while the connection was being made had sent nothing, yet counted as answers overdue, so past
/// `max_pending_checks` of them the connection being made was dropped for a new one and counted
/// as `stalled` (under load over and over: a Redis slower to connect than that many checks'
/// timeouts never got a connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_time_out_while_the_connection_is_made_do_not_replace_it() -> TestResult {
    let scratch = Scratch::new("global-connecting")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = format!(
        "[ {{ name: global_ratelimit, config: {{ redis: {{ address: \"{}\" }}, domain: test,
             descriptors: [ method ], limit: {{ requests: 1000, per: 1s }}, timeout: 50ms,
             max_pending_checks: 2 }} }} ]",
        redis.address
    );
    let (_provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let series = |name: &str, label: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_ratelimit_{name}_total{{listener=\"in\",filter=\"global_ratelimit\",{label}}}"
            ),
        )
    };
    // Paused before the proxy's first check: the kernel takes the connection, Redis answers
    // its setup only once resumed (within the second a connection may take).
    redis.pause()?;
    for _ in 0..6 {
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    }
    redis.resume()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while series("decisions", "decision=\"ok\"") < 1.0 {
        if Instant::now() > deadline {
            return Err("no check was answered after Redis resumed".into());
        }
        assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(series("backend_errors", "reason=\"timeout\"") >= 6.0);
    assert_eq!(series("backend_errors", "reason=\"stalled\""), 0.0);
    proxy.shutdown().await;
    Ok(())
}

/// A connection that Redis closed while no check ran on it (its `timeout` for idle clients, or
/// a restart) failed the next check, to the failure mode: the proxy learned of the close only
/// by sending a check on it. It now sees the close as it happens and sends the next check on a
/// new connection.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_closed_while_idle_does_not_fail_the_next_check() -> TestResult {
    let scratch = Scratch::new("global-idle-close")?;
    let Some(mut redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = global_ratelimit(&redis, "{ requests: 100000, per: 1s }", "1s", true);
    let (_provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    // Redis closes clients idle for a second: the proxy's connection goes, `redis-cli` alone
    // is left.
    redis.cli(&["CONFIG", "SET", "timeout", "1"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["CLIENT", "LIST"])?.lines().count() > 1 {
        if Instant::now() > deadline {
            return Err("Redis kept the proxy's idle connection open 10s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The proxy reads the close as soon as it runs, and closes its socket; a check sent before
    // it read the close would still fail if any of it was written (it may have reached Redis,
    // and is not sent again). On a loaded machine "soon" may take a moment: until then its
    // socket is established, or waits for the proxy to close it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sockets_to(redis.address)?
        .iter()
        .any(|socket| socket.state == ESTABLISHED || socket.state == CLOSE_WAIT)
    {
        if Instant::now() > deadline {
            return Err("the proxy did not close its connection Redis closed in 20s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = client.call("sayHello", "a", &[]).await?;
    assert_eq!(
        reply.dubbo_status, OK,
        "after Redis closed the idle connection"
    );

    // Restarted while no check ran: killed, then started again on its port.
    let address = redis.address;
    drop(redis);
    redis = RedisServer::restart_on(&scratch, address)?;
    let reply = client.call("sayHello", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, OK, "after Redis restarted");

    let errors = |reason: &str| {
        metric(
            &proxy,
            &format!(
                "metaprotocol_ratelimit_backend_errors_total{{listener=\"in\",filter=\"global_ratelimit\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!((errors("error"), errors("timeout")), (0.0, 0.0));
    drop(redis);
    proxy.shutdown().await;
    Ok(())
}

/// Audit of the failure modes of a real Redis: restarted (killed, then started again on its
/// port, without the script), out of memory (`maxmemory 1`, `noeviction`: the script cannot
/// write), and asking for a password the proxy does not have. Each call gets the failure mode's
/// answer within its timeout (a second of slack), and once Redis is well again, its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_out_of_memory_or_refusing_the_password_fails_promptly_and_recovers()
-> TestResult {
    let scratch = Scratch::new("global-audit")?;
    let Some(mut redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let timeout = Duration::from_millis(300);
    let filters = global_ratelimit(&redis, "{ requests: 100000, per: 1s }", "300ms", true);
    let (_provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let fails_promptly = |what: &'static str| {
        let client = &client;
        async move {
            for _ in 0..5 {
                let reply = client.call("sayHello", "a", &[]).await?;
                assert_eq!(reply.dubbo_status, OVER_LIMIT, "{what}");
                assert!(reply.body_contains("failure_mode_deny"), "{what}");
                assert!(
                    reply.latency < timeout + Duration::from_secs(1),
                    "{what}: {:?}",
                    reply.latency
                );
            }
            TestResult::Ok(())
        }
    };
    let recovers = |what: &'static str| {
        let client = &client;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while client.call("sayHello", "a", &[]).await?.dubbo_status != OK {
                if Instant::now() > deadline {
                    return Err(format!("{what}: no call let through 20s after").into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            TestResult::Ok(())
        }
    };
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    let address = redis.address;
    drop(redis);
    fails_promptly("redis down").await?;
    redis = RedisServer::restart_on(&scratch, address)?;
    recovers("redis restarted").await?;

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])?;
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"])?;
    fails_promptly("redis out of memory").await?;
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"])?;
    recovers("redis with memory again").await?;

    // A password the proxy does not have: its connection is refused at once (the next
    // connection it makes, once this one is closed).
    redis.cli(&["CONFIG", "SET", "requirepass", "s3cret"])?;
    redis.cli(&[
        "-a",
        "s3cret",
        "--no-auth-warning",
        "CLIENT",
        "KILL",
        "TYPE",
        "normal",
        "SKIPME",
        "yes",
    ])?;
    fails_promptly("redis asking for a password").await?;
    redis.cli(&[
        "-a",
        "s3cret",
        "--no-auth-warning",
        "CONFIG",
        "SET",
        "requirepass",
        "",
    ])?;
    recovers("redis without a password again").await?;
    drop(redis);
    proxy.shutdown().await;
    Ok(())
}

/// The value of the global rate limit's counter `name` (`decisions`, `backend_errors`) whose
/// label is `label` (`reason="stalled"`, ...), on listener `listener`.
fn global_series(proxy: &Proxy, listener: &str, name: &str, label: &str) -> f64 {
    metric(
        proxy,
        &format!(
            "metaprotocol_ratelimit_{name}_total{{listener=\"{listener}\",filter=\"global_ratelimit\",{label}}}"
        ),
    )
}

/// A Redis that answers nothing (stopped, cut off, behind a proxy that stalls) kept the proxy's
/// connection for as long as fewer than `max_pending_checks` (1,024 by default) answers were
/// overdue on it: at a low request rate, for hours, every check timing out. A connection on
/// which answers have been overdue for 5 s is now dropped for a new one, as after too many.
/// Once Redis is back (resumed, or restarted after it was killed while stopped) the checks are
/// answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_answering_nothing_for_seconds_is_replaced_at_any_request_rate()
-> TestResult {
    let scratch = Scratch::new("global-stalled-slowly")?;
    let Some(mut redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = global_ratelimit(&redis, "{ requests: 100000, per: 1s }", "100ms", false);
    let (_provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let series = |name: &str, label: &str| global_series(&proxy, "in", name, label);
    let answered_again = |what: &'static str| {
        let client = &client;
        let series = &series;
        async move {
            let answered = series("decisions", "decision=\"ok\"");
            let deadline = Instant::now() + Duration::from_secs(10);
            while series("decisions", "decision=\"ok\"") <= answered {
                if Instant::now() > deadline {
                    return Err(format!("{what}: no check answered within 10s").into());
                }
                assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            TestResult::Ok(())
        }
    };
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    // One call at a time, each check timing out: some 10 a second, far from 1,024 overdue.
    let stalled_within = |what: &'static str| {
        let client = &client;
        let series = &series;
        async move {
            let stalled = series("backend_errors", "reason=\"stalled\"");
            let started = Instant::now();
            while series("backend_errors", "reason=\"stalled\"") <= stalled {
                if started.elapsed() > Duration::from_secs(30) {
                    return Err(format!(
                        "{what}: the connection was kept 30s with no answer ({} timeouts)",
                        series("backend_errors", "reason=\"timeout\"")
                    )
                    .into());
                }
                assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);
            }
            println!("{what}: replaced after {:?}", started.elapsed());
            TestResult::Ok(())
        }
    };
    redis.pause()?;
    stalled_within("stopped").await?;
    redis.resume()?;
    answered_again("resumed").await?;

    // Stopped again, then killed while stopped and started anew on its port.
    redis.pause()?;
    stalled_within("stopped again").await?;
    let address = redis.address;
    drop(redis);
    redis = RedisServer::restart_on(&scratch, address)?;
    answered_again("restarted").await?;
    drop(redis);
    proxy.shutdown().await;
    Ok(())
}

/// A TCP socket of this host, as `/proc/net/tcp` shows it.
#[cfg(target_os = "linux")]
struct Socket {
    /// Its state: [`ESTABLISHED`], [`CLOSE_WAIT`] ...
    state: String,
    /// Its timer, `tr:when`.
    timer: String,
}

/// The state of a connected socket.
#[cfg(target_os = "linux")]
const ESTABLISHED: &str = "01";
/// The state of a socket whose peer closed the connection, until its owner closes it too.
#[cfg(target_os = "linux")]
const CLOSE_WAIT: &str = "08";

/// The sockets of this host (every process's) connected to `server`, an IPv4 address.
#[cfg(target_os = "linux")]
fn sockets_to(server: std::net::SocketAddr) -> TestResult<Vec<Socket>> {
    let std::net::IpAddr::V4(ip) = server.ip() else {
        return Err(format!("{server} is not an IPv4 address").into());
    };
    // `local rem st tx_queue:rx_queue tr:when ...`, an address the hex of its bytes as the
    // host stores them (in its byte order), a port in hex.
    let remote = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        server.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (rem, state, timer) = (fields.get(2)?, fields.get(3)?, fields.get(5)?);
            (*rem == remote).then(|| Socket {
                state: state.to_string(),
                timer: timer.to_string(),
            })
        })
        .collect())
}

/// The proxy's connection to Redis had no TCP keepalive: one dropped silently while idle (a
/// NAT or firewall forgetting it, a host gone) was found only by the checks that timed out on
/// it, and nothing kept a middlebox from forgetting it. It now sends keepalive probes once idle
/// for 15 s (as redis-cli and hiredis do), which Linux shows as the socket's keepalive timer.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_idle_redis_connection_is_probed_by_tcp_keepalive() -> TestResult {
    let scratch = Scratch::new("global-keepalive")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = global_ratelimit(&redis, "{ requests: 100000, per: 1s }", "1s", true);
    let (_provider, proxy) = start(&[("in", &filters)]).await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    // The timer `tr:when`: `tr` is 2 for keepalive, `when` in clock ticks (USER_HZ, 100 a
    // second) until it fires.
    let timer = || -> TestResult<Option<String>> {
        Ok(sockets_to(redis.address)?
            .into_iter()
            .find(|socket| socket.state == ESTABLISHED)
            .map(|socket| socket.timer))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match timer()? {
            Some(timer) if timer.starts_with("02:") => {
                let ticks = u64::from_str_radix(&timer[3..], 16)?;
                assert!(
                    ticks <= 20 * 100,
                    "the first probe is {ticks} ticks away: more than 15 s idle"
                );
                break;
            }
            found => {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the proxy's connection to Redis has no keepalive timer: {found:?}"
                    )
                    .into());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(redis);
    proxy.shutdown().await;
    Ok(())
}
/// A check handed to the Redis connection in the instant Redis closed it, before the proxy
/// read the close, failed (to the failure mode), though none of it had been written: the
/// connection's driver reads the close before it writes. Such a check now goes out on a new
/// connection; one that may have reached Redis is still never sent again. The runtime (one
/// thread) is held while the call reaches the proxy and Redis closes the connection, so that
/// the proxy reads the call first, as a busy worker may.
#[tokio::test]
async fn a_check_sent_as_redis_closes_the_connection_goes_out_on_a_new_one() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scratch = Scratch::new("global-close-race")?;
    let Some(redis) = RedisServer::start(&scratch)? else {
        return Ok(());
    };
    let filters = global_ratelimit(&redis, "{ requests: 100000, per: 1s }", "1s", true);
    let (_provider, proxy) = start(&[("in", &filters)]).await?;
    let mut socket = tokio::net::TcpStream::connect(listener_addr(&proxy, "in")?).await?;
    let frame = metaprotocol_dubbo::build::request(
        1,
        true,
        &metaprotocol_dubbo::build::Call {
            service: metaprotocol_examples::dubbo_demo::DEMO_SERVICE,
            version: metaprotocol_examples::dubbo_demo::DEMO_VERSION,
            method: "sayHello",
            string_args: &["a"],
            attachments: &[],
        },
    );
    /// The status of the next answer on `socket`.
    async fn reply(socket: &mut tokio::net::TcpStream) -> TestResult<u8> {
        let mut header = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut header)).await??;
        let len = u32::from_be_bytes([header[12], header[13], header[14], header[15]]) as usize;
        let mut body = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut body)).await??;
        Ok(header[3])
    }
    socket.write_all(&frame).await?;
    assert_eq!(reply(&mut socket).await?, OK, "the Redis connection made");

    // No await until the reply: the proxy runs on this thread, and sees both at once.
    assert_eq!(
        socket.try_write(&frame)?,
        frame.len(),
        "the call written at once"
    );
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])?;
    assert_eq!(killed.trim(), "1", "the proxy's connection closed by Redis");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        reply(&mut socket).await?,
        OK,
        "the call that came as Redis closed the connection"
    );
    assert_eq!(
        global_series(&proxy, "in", "backend_errors", "reason=\"error\""),
        0.0
    );
    drop(socket);
    drop(redis);
    proxy.shutdown().await;
    Ok(())
}
