//! Hitless updates at scale: 50 client connections, 25 Dubbo (the engine's own client) and 25
//! Thrift (Apache Thrift's Python library), call as fast as they can while the route configs
//! and clusters are replaced 1,000 times, alternately through the admin API and the watched
//! config file: the routes switch between v1-only and v2-only, and the clusters' endpoints are
//! added and removed as they go. Not one call fails, not one client connection closes, and
//! every call started 100 ms or more after an update was applied follows it.
//!
//! Needs Apache Thrift's Python library (`tests/interop/thrift/setup.sh`); without it the test
//! is skipped, unless `METAPROTOCOL_REQUIRE_INTEROP=1` makes it fail.

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::Config;
use metaprotocol_router::config::{ClusterSpec, RouteConfigSpec};
use support::TestResult;
use support::admin::http;
use support::follow::{Call, Switch, check, now_ns};
use support::process::Scratch;
use support::proxy::listener_addr;
use support::thrift::{LoadClient, Server, tools_ready};
use tokio::task::block_in_place;

const CONNECTIONS_PER_PROTOCOL: usize = 25;
const UPDATES: usize = 1_000;
/// How soon after an update new calls must follow it.
const FOLLOW_WITHIN: Duration = Duration::from_millis(100);
const PROTOCOLS: [&str; 2] = ["dubbo", "thrift"];

/// What the config says after update `update` (0: the start).
struct Shape {
    /// The version the routes send to.
    version: &'static str,
    /// Which of endpoints `a` and `b` each version's clusters have.
    v1: &'static [usize],
    v2: &'static [usize],
}

impl Shape {
    fn after(update: usize) -> Self {
        const SETS: [&[usize]; 3] = [&[0], &[0, 1], &[1]];
        Self {
            version: if update.is_multiple_of(2) { "v1" } else { "v2" },
            v1: SETS[update % 3],
            v2: SETS[(update + 1) % 3],
        }
    }
}

/// The endpoints of each `<protocol>-<version>` cluster: `a` and `b`.
struct Backends(BTreeMap<String, [String; 2]>);

impl Backends {
    fn route_config(&self, protocol: &str, shape: &Shape) -> String {
        format!(
            "{{ name: {protocol}-routes, routes: [ {{ name: all, route: {{ cluster: {protocol}-{} }} }} ] }}",
            shape.version
        )
    }

    fn cluster(&self, protocol: &str, version: &str, shape: &Shape) -> String {
        let members = if version == "v1" { shape.v1 } else { shape.v2 };
        let name = format!("{protocol}-{version}");
        let endpoints: Vec<String> = members
            .iter()
            .map(|&i| format!("{{ address: \"{}\" }}", self.0[&name][i]))
            .collect();
        format!(
            "{{ name: {name}, endpoints: [ {} ] }}",
            endpoints.join(", ")
        )
    }

    fn yaml(&self, shape: &Shape) -> String {
        let routes: Vec<String> = PROTOCOLS
            .iter()
            .map(|p| format!("  - {}\n", self.route_config(p, shape)))
            .collect();
        let clusters: Vec<String> = PROTOCOLS
            .iter()
            .flat_map(|p| ["v1", "v2"].map(|v| format!("  - {}\n", self.cluster(p, v, shape))))
            .collect();
        format!(
            "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: dubbo-in, address: 127.0.0.1:0, protocol: dubbo, route_config: dubbo-routes }}
  - {{ name: thrift-in, address: 127.0.0.1:0, protocol: thrift, route_config: thrift-routes }}
route_configs:
{}clusters:
{}",
            routes.concat(),
            clusters.concat()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_cluster_updates_at_scale_fail_no_call_and_close_no_connection() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("hitless-at-scale")?;
    let mut backends = BTreeMap::new();
    let mut dubbo_providers = Vec::new();
    let mut thrift_servers = Vec::new();
    for version in ["v1", "v2"] {
        let mut dubbo = Vec::new();
        let mut thrift = Vec::new();
        for side in ["a", "b"] {
            let name = format!("{version}-{side}");
            let provider = DemoProvider::start(&name).await?;
            dubbo.push(provider.address().to_string());
            dubbo_providers.push(provider);
            let server = block_in_place(|| Server::start("framed", "binary", &name, &scratch))?;
            thrift.push(server.address());
            thrift_servers.push(server);
        }
        backends.insert(
            format!("dubbo-{version}"),
            [dubbo[0].clone(), dubbo[1].clone()],
        );
        backends.insert(
            format!("thrift-{version}"),
            [thrift[0].clone(), thrift[1].clone()],
        );
    }
    let backends = Backends(backends);
    let file = scratch.path("proxy.yaml");
    std::fs::write(&file, backends.yaml(&Shape::after(0)))?;
    let proxy = metaprotocol_router::Proxy::start(
        Config::from_file(&file)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    let watcher = {
        let (proxy, file) = (proxy.clone(), file.clone());
        tokio::spawn(async move { proxy.watch_file(&file, Duration::from_millis(10)).await })
    };
    let admin = proxy.admin_addr().ok_or("no admin")?;

    // 25 Thrift connections from Apache Thrift's Python client.
    let thrift_port = listener_addr(&proxy, "thrift-in")?.port();
    let thrift_client = block_in_place(|| {
        LoadClient::start(
            thrift_port,
            CONNECTIONS_PER_PROTOCOL,
            "thrift-load",
            &scratch,
        )
    })?;

    // 25 Dubbo connections.
    let dubbo_in = listener_addr(&proxy, "dubbo-in")?;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let dubbo_calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let clients: Vec<Arc<DubboClient>> = (0..CONNECTIONS_PER_PROTOCOL)
        .map(|_| Arc::new(DubboClient::new(dubbo_in)))
        .collect();
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, stop, failures, record) = (
                client.clone(),
                stop.clone(),
                failures.clone(),
                dubbo_calls.clone(),
            );
            tokio::spawn(async move {
                let mut calls = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = now_ns();
                    match client.call("sayHello", "load", &[]).await {
                        Ok(reply) if reply.dubbo_status == 20 => calls.push((
                            start,
                            now_ns(),
                            reply.attachment("provider").unwrap_or_default().to_owned(),
                        )),
                        other => {
                            eprintln!("failed dubbo call: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut all) = record.lock() {
                    all.extend(calls);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The updates: admin, admin, file, file, ... each switching the version.
    let mut switches: BTreeMap<&str, Vec<Switch>> =
        PROTOCOLS.iter().map(|p| (*p, vec![(0, 0, "v1")])).collect();
    // The longest an update took from being asked for to being applied, by channel.
    let mut pick_up: BTreeMap<&str, Duration> = BTreeMap::new();
    let started = std::time::Instant::now();
    for update in 1..=UPDATES {
        let shape = Shape::after(update);
        if ((update - 1) / 2).is_multiple_of(2) {
            for protocol in PROTOCOLS {
                for version in ["v1", "v2"] {
                    let spec =
                        ClusterSpec::from_yaml(&backends.cluster(protocol, version, &shape))?;
                    let body = serde_json::to_string(&spec)?;
                    let path = format!("/clusters/{protocol}-{version}");
                    let (status, answer) = http(admin, "PUT", &path, &body).await?;
                    assert_eq!(status, 200, "{answer}");
                }
            }
            for protocol in PROTOCOLS {
                let spec = RouteConfigSpec::from_yaml(&backends.route_config(protocol, &shape))?;
                let body = serde_json::to_string(&spec)?;
                let path = format!("/route_configs/{protocol}-routes");
                let asked = now_ns();
                let (status, answer) = http(admin, "PUT", &path, &body).await?;
                assert_eq!(status, 200, "{answer}");
                let applied = now_ns();
                if let Some(list) = switches.get_mut(protocol) {
                    list.push((asked, applied, shape.version));
                }
                let took = Duration::from_nanos((applied - asked) as u64);
                let longest = pick_up.entry("admin").or_default();
                *longest = took.max(*longest);
            }
        } else {
            let yaml = backends.yaml(&shape);
            let expected = Config::from_yaml(&yaml)?;
            // Written whole, then renamed in place, as editors and ConfigMaps do.
            let next = scratch.path("proxy.yaml.next");
            std::fs::write(&next, &yaml)?;
            let written = now_ns();
            std::fs::rename(&next, &file)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while proxy.config() != expected {
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("update {update}: the config file was not applied").into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let applied = now_ns();
            for protocol in PROTOCOLS {
                if let Some(list) = switches.get_mut(protocol) {
                    list.push((written, applied, shape.version));
                }
            }
            let took = Duration::from_nanos((applied - written) as u64);
            let longest = pick_up.entry("file").or_default();
            *longest = took.max(*longest);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let updating = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let thrift_calls = block_in_place(|| thrift_client.finish())?;
    watcher.abort();

    let dubbo_calls = std::mem::take(&mut *dubbo_calls.lock().map_err(|_| "poisoned")?);
    let metrics = proxy.metrics().render();
    let series = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    let mut report = Vec::new();
    for (protocol, calls) in [("dubbo", &dubbo_calls), ("thrift", &thrift_calls)] {
        let (violations, lag) = check(calls, &switches[protocol], FOLLOW_WITHIN);
        assert!(
            violations.is_empty(),
            "{protocol}: {} calls did not follow an update within {FOLLOW_WITHIN:?}: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        );
        report.push(format!(
            "{protocol}: {} calls, longest time a call still took the old route after an update was applied: {lag:?}",
            calls.len()
        ));
        let versions: std::collections::BTreeSet<&str> = calls
            .iter()
            .map(|(_, _, s)| s.get(..2).unwrap_or_default())
            .collect();
        assert_eq!(versions.len(), 2, "{protocol}: both versions served");
        assert_eq!(
            series(&format!(
                "metaprotocol_downstream_cx_total{{listener=\"{protocol}-in\"}}"
            )),
            CONNECTIONS_PER_PROTOCOL as u64,
            "{protocol}: no client connection was closed and reopened"
        );
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    for client in &clients {
        assert_eq!(client.open_connections(), 1);
    }
    assert_eq!(
        series("metaprotocol_config_reloads_total{outcome=\"rejected\"}"),
        0
    );
    println!(
        "{UPDATES} updates in {updating:?} under 2 x {CONNECTIONS_PER_PROTOCOL} connections; {}; longest from asked to applied: {pick_up:?}",
        report.join("; ")
    );
    proxy.shutdown().await;
    drop((dubbo_providers, thrift_servers));
    Ok(())
}
