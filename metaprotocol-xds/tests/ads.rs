//! End to end over real sockets: a management server (tests/support) pushes clusters, endpoints
//! and MetaProtocol routes in Aeraki's encoding over ADS; a proxy started with a `dynamic.xds`
//! section applies them while 20 Dubbo client connections call through it without pause.
//!
//! Calls follow each route, endpoint and weight change; an invalid route config and an invalid
//! cluster are NACKed with a detail naming the field while the running config keeps serving;
//! the management server restarting does not disturb traffic and the client subscribes again
//! with the versions it runs. Not one call fails and not one client connection is closed. A
//! connection to the server that goes dark is found dead, and replaced.

#[allow(dead_code, reason = "each test uses part of the support")]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::HealthCheck;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::health_check::custom_health_check::ConfigType;
use envoy_types::pb::envoy::config::core::v3::health_check::{CustomHealthCheck, HealthChecker};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::health_checkers::thrift::v3::Thrift as ThriftHealthCheck;
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::config::KeepaliveSpec;
use metaprotocol_router::{Proxy, ResourceKind, ResourceState};
use prost::Name;
use support::fixtures::{
    assignment, cluster_name, eds_cluster, meta_route, meta_route_config, packed,
    route_config_name, split, to_cluster,
};
use support::management_server::{ManagementServer, Received};
use support::{
    NODE, TestResult, WITHIN, cds, config_dump, eds, eventually, proxy_config, rds,
    refusing_address, serve_one_cluster, start_proxy,
};

const CONNECTIONS: usize = 20;

/// Calls made under load: when each was sent, and which provider answered.
#[derive(Default)]
struct Calls(Mutex<Vec<(Instant, String)>>);

impl Calls {
    fn record(&self, sent: Instant, provider: String) {
        if let Ok(mut calls) = self.0.lock() {
            calls.push((sent, provider));
        }
    }

    /// How many calls were made.
    fn count(&self) -> usize {
        self.0.lock().map_or(0, |calls| calls.len())
    }

    /// The providers of calls sent after `since`.
    fn providers_since(&self, since: Instant) -> BTreeMap<String, usize> {
        let mut providers = BTreeMap::new();
        if let Ok(calls) = self.0.lock() {
            for (_, provider) in calls.iter().filter(|(sent, _)| *sent > since) {
                *providers.entry(provider.clone()).or_default() += 1;
            }
        }
        providers
    }

    /// Waits until calls sent after `since` reach only `providers` (at least 50 such calls in a
    /// row); returns how long after `since` the first of that run was sent.
    async fn follow(&self, since: Instant, providers: &[&str]) -> TestResult<Duration> {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Ok(calls) = self.0.lock() {
                let after: Vec<&(Instant, String)> =
                    calls.iter().filter(|(sent, _)| *sent > since).collect();
                let run_start = after
                    .iter()
                    .rposition(|(_, p)| !providers.contains(&p.as_str()))
                    .map_or(0, |i| i + 1);
                if after.len() - run_start >= 50 {
                    return Ok(after[run_start].0 - since);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "calls did not follow to {providers:?} within {WITHIN:?}: {:?}",
                    self.providers_since(since)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The route config request that opens a stream after the first: the client subscribing again.
async fn resubscription(server: &ManagementServer) -> Result<Received, String> {
    server
        .wait_for(WITHIN, |r| {
            r.stream > 1
                && r.type_url == RouteConfiguration::type_url()
                && r.response_nonce.is_empty()
        })
        .await
}

/// The version of the route config the proxy runs, from the control plane.
fn route_config_version(proxy: &Proxy) -> Option<String> {
    proxy
        .dynamic_resources()
        .into_iter()
        .find(|s| s.id.kind == ResourceKind::RouteConfig)
        .and_then(|s| s.version)
}

/// The counter `name` of the proxy's metrics.
fn counter(proxy: &Proxy, name: &str) -> Option<u64> {
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

/// The counter of family `family` whose labels include `label` (`key="value"`).
fn labelled_counter(proxy: &Proxy, family: &str, label: &str) -> Option<u64> {
    proxy.metrics().render().lines().find_map(|line| {
        let (labels, value) = line
            .strip_prefix(family)?
            .strip_prefix('{')?
            .split_once("} ")?;
        labels
            .split(',')
            .any(|l| l == label)
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_drives_dubbo_traffic_hitlessly_over_state_of_the_world_ads() -> TestResult
{
    drives_dubbo_traffic_hitlessly("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_drives_dubbo_traffic_hitlessly_over_delta_ads() -> TestResult {
    drives_dubbo_traffic_hitlessly("delta_grpc").await
}

async fn drives_dubbo_traffic_hitlessly(api_type: &str) -> TestResult {
    let delta = api_type == "delta_grpc";
    let v1 = DemoProvider::start("v1").await?;
    let v1b = DemoProvider::start("v1b").await?;
    let v2 = DemoProvider::start("v2").await?;
    let (c1, c2) = (cluster_name("v1"), cluster_name("v2"));

    // The control plane's first snapshot: Aeraki's MetaRouter sending `sayHello` to v2 and
    // `sayHello01` to v1 (its `metarouter-attribute-exact` fixture).
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let xds = serving.address();
    cds(&server, "c1", &[eds_cluster(&c1), eds_cluster(&c2)]);
    eds(
        &server,
        "e1",
        &[
            assignment(&c1, &[v1.address()]),
            assignment(&c2, &[v2.address()]),
        ],
    );
    let by_method = meta_route_config(vec![
        meta_route("v1", &[("method", "sayHello01")], to_cluster(&c1)),
        meta_route("v2", &[("method", "sayHello")], to_cluster(&c2)),
    ]);
    rds(&server, "r1", &by_method);

    let proxy = start_proxy(proxy_config(xds, api_type)?).await?;
    // The listener warms: it is bound once its routes and their clusters have arrived.
    if let Err(err) = eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await
    {
        let admin = proxy.admin_addr().ok_or("no admin API")?;
        return Err(format!(
            "{err}; /config_dump: {:#}; requests: {:#?}",
            config_dump(admin).await?,
            server.received()
        )
        .into());
    }
    let address = proxy
        .listener_addr("dubbo-in")
        .ok_or("the listener is not bound")?;
    for kind in [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        RouteConfiguration::type_url(),
    ] {
        let acked = server
            .wait_for(WITHIN, |r| {
                r.type_url == kind && !r.response_nonce.is_empty() && r.error.is_none()
            })
            .await?;
        assert_eq!(acked.node, NODE);
    }
    let probe = DubboClient::new(address);
    let reply = probe.call("sayHello01", "probe", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("v1"));
    let reply = probe.call("sayHello", "probe", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("v2"));

    // Load: 20 connections calling `sayHello` without pause.
    let calls = Arc::new(Calls::default());
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Arc<DubboClient>> = (0..CONNECTIONS)
        .map(|_| Arc::new(DubboClient::new(address)))
        .collect();
    let load: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, calls, failures, stop) = (
                client.clone(),
                calls.clone(),
                failures.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match client.call("sayHello", "load", &[]).await {
                        Ok(reply) if reply.dubbo_status == 20 => {
                            let provider = reply.attachment("provider").unwrap_or("?").to_owned();
                            calls.record(sent, provider);
                        }
                        Ok(reply) => {
                            eprintln!("failed call: status {}", reply.dubbo_status);
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            eprintln!("failed call: {err}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    calls.follow(Instant::now(), &["v2"]).await?;

    // Routes: a 50/50 split, then everything to v1.
    let pushed = Instant::now();
    let halves = meta_route_config(vec![meta_route(
        "split",
        &[],
        split(&[(&c1, 50), (&c2, 50)]),
    )]);
    rds(&server, "r2", &halves);
    // Calls that only v2 answers satisfy `follow` too, before the split runs: both sides must
    // answer calls sent after the push.
    calls.follow(pushed, &["v1", "v2"]).await?;
    eventually("both sides of the split answer", || {
        let seen = calls.providers_since(pushed);
        seen.contains_key("v1") && seen.contains_key("v2")
    })
    .await?;
    let pushed = Instant::now();
    let all_v1 = meta_route_config(vec![meta_route("all", &[], to_cluster(&c1))]);
    rds(&server, "r3", &all_v1);
    let route_lag = calls.follow(pushed, &["v1"]).await?;

    // Endpoints: v1's cluster moves to another provider.
    let pushed = Instant::now();
    eds(
        &server,
        "e2",
        &[
            assignment(&c1, &[v1b.address()]),
            assignment(&c2, &[v2.address()]),
        ],
    );
    let endpoint_lag = calls.follow(pushed, &["v1b"]).await?;

    // An invalid route config is NACKed naming the field; the running routes keep serving.
    let mut invalid = meta_route_config(vec![meta_route(
        "ranged",
        &[("method", "x")],
        to_cluster(&c2),
    )]);
    if let Some(route) = invalid.virtual_hosts[0].routes[0].r#match.as_mut() {
        route.headers[0].header_match_specifier =
            Some(HeaderMatchSpecifier::RangeMatch(Int64Range {
                start: 1,
                end: 2,
            }));
    }
    rds(&server, "r4-invalid", &invalid);
    let nack = server
        .wait_for(WITHIN, |r| {
            r.type_url == RouteConfiguration::type_url() && r.error.is_some()
        })
        .await?;
    let detail = nack.error.unwrap_or_default();
    assert!(
        detail.contains(&route_config_name())
            && detail.contains("virtual_hosts[0].routes[0].match.headers[0].range_match"),
        "{detail}"
    );
    if !delta {
        assert_eq!(
            nack.version_info, "r3",
            "a NACK carries the version still running"
        );
    }
    let status = proxy
        .dynamic_resources()
        .into_iter()
        .find(|s| s.id.kind == ResourceKind::RouteConfig)
        .ok_or("no route config status")?;
    assert_eq!(status.version.as_deref(), Some("r3"));
    assert_eq!(status.rejected_version.as_deref(), Some("r4-invalid"));
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("range_match"))
    );
    assert_eq!(status.state, ResourceState::Active);
    let dump = config_dump(proxy.admin_addr().ok_or("no admin API")?).await?;
    let routes = dump["dynamic_resources"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["kind"] == "route_config"))
        .ok_or("no route config in /config_dump")?;
    assert_eq!(routes["version"], "r3");
    assert_eq!(routes["state"], "active");
    assert_eq!(routes["rejected_version"], "r4-invalid");
    assert!(routes["last_updated"].is_string());
    assert!(
        routes["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("range_match"))
    );
    let rds_state = &dump["dynamic_sources"]["xds"]["types"]["RDS"];
    assert_eq!(rds_state["version"], "r3");
    assert_eq!(rds_state["nonce"], nack.response_nonce);
    assert!(
        rds_state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("range_match"))
    );
    assert_eq!(dump["dynamic_sources"]["xds"]["connected"], true);

    // So is an invalid cluster; the running clusters keep serving.
    let mut provided = eds_cluster(&c1);
    provided.lb_policy = LbPolicy::ClusterProvided as i32;
    cds(&server, "c2-invalid", &[provided, eds_cluster(&c2)]);
    let nack = server
        .wait_for(WITHIN, |r| {
            r.type_url == Cluster::type_url() && r.error.is_some()
        })
        .await?;
    let detail = nack.error.unwrap_or_default();
    assert!(
        detail.contains(&c1) && detail.contains("lb_policy: CLUSTER_PROVIDED"),
        "{detail}"
    );
    let after_nacks = Instant::now();
    calls.follow(after_nacks, &["v1b"]).await?;

    // The management server restarts: traffic goes on, and the client subscribes again with
    // the versions it runs.
    serving.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rds(&server, "r3", &all_v1);
    cds(&server, "c1", &[eds_cluster(&c1), eds_cluster(&c2)]);
    let restarted = server.serve(xds).await?;
    let resubscribed = resubscription(&server).await?;
    assert_eq!(resubscribed.version_info, "r3");
    assert_eq!(resubscribed.node, NODE);
    // The new stream carries updates (a changed route config: one sent again unchanged is
    // not applied again, and keeps its version).
    let all_v1_and_unused = meta_route_config(vec![
        meta_route("all", &[], to_cluster(&c1)),
        meta_route("unused", &[("method", "unused")], to_cluster(&c1)),
    ]);
    rds(&server, "r5", &all_v1_and_unused);
    server
        .wait_for(WITHIN, |r| {
            r.stream > 1
                && r.type_url == RouteConfiguration::type_url()
                && !r.response_nonce.is_empty()
                && r.error.is_none()
        })
        .await?;
    eventually("r5 runs", || {
        route_config_version(&proxy).as_deref() == Some("r5")
    })
    .await?;
    let after_restart = Instant::now();
    calls.follow(after_restart, &["v1b"]).await?;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed");
    let total = calls.count();
    for client in &clients {
        assert_eq!(client.open_connections(), 1);
    }
    assert_eq!(
        counter(
            &proxy,
            "metaprotocol_downstream_cx_total{listener=\"dubbo-in\"}"
        ),
        Some((CONNECTIONS + 1) as u64),
        "no client connection was closed and reopened"
    );
    // Dynamic routes and clusters have their series, as the file's do.
    for (family, label) in [
        ("metaprotocol_route_rq_total", "route=\"all\"".to_owned()),
        (
            "metaprotocol_upstream_rq_total",
            format!("cluster=\"{c1}\""),
        ),
        (
            "metaprotocol_upstream_rq_total",
            format!("cluster=\"{c2}\""),
        ),
    ] {
        let count = labelled_counter(&proxy, family, &label).unwrap_or_default();
        assert!(count > 0, "{family}{{{label}}}: {count}");
    }
    println!(
        "{total} calls under {CONNECTIONS} connections; from push to traffic following: routes {route_lag:?}, endpoints {endpoint_lag:?}"
    );
    drop(restarted);
    proxy.shutdown().await;
    Ok(())
}

/// A TCP relay to a management server whose connections can go dark: once [`Relay::cut`],
/// those open carry no more bytes either way yet stay open (no FIN, no RST), as across a
/// network partition or from a server whose host died; connections made later are relayed.
struct Relay {
    address: std::net::SocketAddr,
    cuts: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let cuts = Arc::new(tokio::sync::watch::channel(0).0);
        let watched = Arc::clone(&cuts);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = watched.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        // The cut first: once cut, not one more byte is relayed.
                        biased;
                        _ = cut.changed() => {
                            // Dark: both sockets held open, carrying nothing, until the test
                            // ends.
                            std::future::pending::<()>().await;
                        }
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self {
            address,
            cuts,
            task,
        })
    }

    /// Every connection open goes dark.
    fn cut(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_the_server_gone_dark_is_found_dead_and_replaced() -> TestResult {
    let provider = DemoProvider::start("v1").await?;
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let relay = Relay::start(serving.address()).await?;
    let c1 = cluster_name("v1");
    cds(&server, "c1", &[eds_cluster(&c1)]);
    eds(&server, "e1", &[assignment(&c1, &[provider.address()])]);
    let routes = meta_route_config(vec![meta_route("all", &[], to_cluster(&c1))]);
    rds(&server, "r1", &routes);
    let mut config = proxy_config(relay.address, "grpc")?;
    let xds = config
        .dynamic
        .as_mut()
        .and_then(|dynamic| dynamic.xds.as_mut())
        .ok_or("no xds section")?;
    xds.keepalive = KeepaliveSpec {
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
    };
    let proxy = start_proxy(config).await?;
    eventually("r1 runs", || {
        route_config_version(&proxy).as_deref() == Some("r1")
    })
    .await?;

    // The connection goes dark; the server's next push (a changed route config) is lost on it.
    relay.cut();
    let changed = meta_route_config(vec![
        meta_route("all", &[], to_cluster(&c1)),
        meta_route("unused", &[("method", "unused")], to_cluster(&c1)),
    ]);
    rds(&server, "r2", &changed);
    let resubscribed = resubscription(&server).await?;
    assert!(
        !resubscribed.version_info.is_empty(),
        "asks with what it runs, not from nothing"
    );
    eventually("r2 runs", || {
        route_config_version(&proxy).as_deref() == Some("r2")
    })
    .await?;
    proxy.shutdown().await;
    Ok(())
}

/// Over delta ADS each resource stands alone: a response with one cluster that cannot be
/// mapped applies the others, and its NACK names the one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_response_with_one_bad_cluster_applies_the_others() -> TestResult {
    let provider = DemoProvider::start("v1").await?;
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let (good, bad) = (cluster_name("good"), cluster_name("bad"));
    let mut invalid = eds_cluster(&bad);
    invalid.lb_policy = LbPolicy::ClusterProvided as i32;
    cds(&server, "c1", &[eds_cluster(&good), invalid]);
    eds(&server, "e1", &[assignment(&good, &[provider.address()])]);
    let routes = meta_route_config(vec![meta_route("all", &[], to_cluster(&good))]);
    rds(&server, "r1", &routes);
    let proxy = start_proxy(proxy_config(serving.address(), "delta_grpc")?).await?;

    let nack = server
        .wait_for(WITHIN, |r| {
            r.type_url == Cluster::type_url() && r.error.is_some()
        })
        .await?;
    let detail = nack.error.unwrap_or_default();
    assert!(
        detail.contains(&bad) && detail.contains("lb_policy") && !detail.contains(&good),
        "{detail}"
    );
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let reply = DubboClient::new(address).call("sayHello", "x", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("v1"));
    let state = |name: &str| {
        proxy
            .dynamic_resources()
            .into_iter()
            .find(|s| s.id.kind == ResourceKind::Cluster && s.id.name == name)
            .map(|s| (s.state, s.version, s.rejected_version))
    };
    assert_eq!(
        state(&good),
        Some((ResourceState::Active, Some("c1".to_owned()), None))
    );
    assert!(
        state(&bad).is_some_and(|(_, _, rejected)| rejected.as_deref() == Some("c1")),
        "{:?}",
        state(&bad)
    );
    proxy.shutdown().await;
    drop(serving);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clusters_endpoints_changing_updates_it_alone_over_state_of_the_world_ads() -> TestResult
{
    one_clusters_endpoints_changing_updates_it_alone("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clusters_endpoints_changing_updates_it_alone_over_delta_ads() -> TestResult {
    one_clusters_endpoints_changing_updates_it_alone("delta_grpc").await
}

/// A control plane that versions each resource by its content sends the endpoints of two
/// clusters, then changes one's: the other's, sent again unchanged (the whole type over
/// state-of-the-world ADS; merged with what is held over delta ADS), is not applied again, and
/// keeps its version and time in `/config_dump`.
async fn one_clusters_endpoints_changing_updates_it_alone(api_type: &str) -> TestResult {
    let providers = [
        DemoProvider::start("a").await?,
        DemoProvider::start("b").await?,
    ];
    let server = ManagementServer::new();
    server.version_by_content();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let (changing, steady) = (cluster_name("changing"), cluster_name("steady"));
    cds(
        &server,
        "c1",
        &[eds_cluster(&changing), eds_cluster(&steady)],
    );
    let endpoints = |changing_on: usize| {
        [
            assignment(&changing, &[providers[changing_on].address()]),
            assignment(&steady, &[providers[0].address()]),
        ]
    };
    eds(&server, "e1", &endpoints(0));
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("all", &[], to_cluster(&changing))]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), api_type)?).await?;
    let endpoints_of = |name: &str| {
        proxy
            .dynamic_resources()
            .into_iter()
            .find(|s| s.id.kind == ResourceKind::Endpoints && s.id.name == name)
            .map(|s| (s.version, s.last_updated))
    };
    let at = |name: &str, version: &str| {
        endpoints_of(name).is_some_and(|(v, _)| v.as_deref() == Some(version))
    };
    eventually("both clusters' endpoints", || {
        at(&changing, "e1") && at(&steady, "e1")
    })
    .await?;
    let before = endpoints_of(&steady);
    // Apart in time from the first update, so that a second would show.
    tokio::time::sleep(Duration::from_millis(20)).await;
    eds(&server, "e2", &endpoints(1));
    eventually("the changed endpoints", || at(&changing, "e2")).await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let reply = DubboClient::new(address).call("sayHello", "x", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("b"));
    assert_eq!(endpoints_of(&steady), before, "{api_type}");
    proxy.shutdown().await;
    Ok(())
}

/// A cluster's health check from the control plane runs: an endpoint that takes no connections
/// is found failing and leaves rotation, so every call goes to the one that serves. A probe the
/// cluster's protocol cannot send is refused by NACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_from_the_control_plane_takes_a_dead_endpoint_out() -> TestResult {
    let provider = DemoProvider::start("alive").await?;
    let (_dead, dead) = refusing_address()?;
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let name = cluster_name("checked");
    let mut cluster = eds_cluster(&name);
    let millis = |ms: i32| envoy_types::pb::google::protobuf::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    };
    let once = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 });
    // A timeout no check of the live endpoint reaches on a loaded machine: one failure takes it
    // out.
    let check = |checker| HealthCheck {
        interval: Some(millis(100)),
        timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        }),
        unhealthy_threshold: once,
        healthy_threshold: once,
        health_checker: Some(checker),
        ..HealthCheck::default()
    };
    // First a Thrift call as the probe, which a Dubbo cluster cannot send: NACKed.
    let thrift = ThriftHealthCheck {
        method_name: "ping".to_owned(),
        ..ThriftHealthCheck::default()
    };
    cluster.health_checks = vec![check(HealthChecker::CustomHealthCheck(CustomHealthCheck {
        name: "envoy.health_checkers.thrift".to_owned(),
        config_type: Some(ConfigType::TypedConfig(packed(&thrift))),
    }))];
    serve_one_cluster(&server, &cluster, &[provider.address(), dead]);
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    let nack = server.wait_for(WITHIN, |r| r.error.is_some()).await?;
    let detail = nack.error.unwrap_or_default();
    assert!(detail.contains("health_check.probe"), "{detail}");

    cluster.health_checks = vec![check(HealthChecker::TcpHealthCheck(Default::default()))];
    cds(&server, "c2", &[cluster]);
    // Whether the endpoint at `address` fails its checks, once it had its first (until then
    // every endpoint counts as failing).
    let failing = |address| {
        proxy
            .clusters()
            .into_iter()
            .filter(|c| c.name == name)
            .flat_map(|c| c.endpoints)
            .find(|e| e.address == address && !e.awaiting_first_check)
            .map(|e| e.failing_active_checks)
    };
    eventually("the dead endpoint fails its checks", || {
        failing(dead) == Some(true)
    })
    .await?;
    eventually("the live endpoint passes its checks", || {
        failing(provider.address()) == Some(false)
    })
    .await?;
    assert_eq!(failing(dead), Some(true), "the dead endpoint stays out");
    // The update that publishes the cluster, its first round's verdicts in it, starts the
    // listener waiting for it after: on a loaded machine the verdicts show before it is bound.
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let client = DubboClient::new(address);
    for _ in 0..20 {
        let reply = client.call("sayHello", "x", &[]).await?;
        assert_eq!(reply.attachment("provider"), Some("alive"));
    }
    proxy.shutdown().await;
    Ok(())
}

/// A cluster the engine refuses only once its endpoints arrive (a check translation cannot make)
/// has its EDS response NACKed; its next version starts with those endpoints rather than
/// waiting for the server to send them again, which it has no reason to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refused_with_its_endpoints_serves_once_fixed() -> TestResult {
    let provider = DemoProvider::start("v1").await?;
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let name = cluster_name("fixed");
    let mut cluster = eds_cluster(&name);
    cluster.outlier_detection = Some(OutlierDetection {
        max_ejection_percent: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 150 }),
        ..OutlierDetection::default()
    });
    serve_one_cluster(&server, &cluster, &[provider.address()]);
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    let nack = server.wait_for(WITHIN, |r| r.error.is_some()).await?;
    let detail = nack.error.unwrap_or_default();
    assert!(detail.contains("max_ejection_percent"), "{detail}");

    cluster.outlier_detection = None;
    cds(&server, "c2", &[cluster]);
    eventually("the fixed cluster serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let reply = DubboClient::new(address).call("sayHello", "x", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("v1"));
    proxy.shutdown().await;
    Ok(())
}

/// An upstream that takes connections and closes each once a request's first bytes arrive,
/// unanswered: every call sent to it fails, an upstream failure to outlier detection.
struct HangingUp {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HangingUp {
    async fn start() -> std::io::Result<Self> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 64];
                    let _ = socket.read(&mut request).await;
                });
            }
        });
        Ok(Self { address, task })
    }
}

impl Drop for HangingUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `message` encoded with its fields in another order than prost's: those of `first` (a copy of
/// `message` with only some fields set), then the others. It decodes to `message`, as what a
/// server whose encoding is not canonical (Go's, of maps) sends of an unchanged resource does.
fn reordered<M: prost::Message + Name>(name: &str, first: &M, rest: &M) -> (String, Any) {
    let mut value = first.encode_to_vec();
    value.extend(rest.encode_to_vec());
    (
        name.to_owned(),
        Any {
            type_url: M::type_url(),
            value,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_sent_again_change_nothing_over_state_of_the_world_ads() -> TestResult {
    resources_sent_again_change_nothing("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_sent_again_change_nothing_over_delta_ads() -> TestResult {
    resources_sent_again_change_nothing("delta_grpc").await
}

/// What a resource sent again must leave as it was, of the proxy: each cluster's snapshot
/// version, and each endpoint's ejection and active health state; each dynamic resource's
/// version and last update.
type Running = (
    Vec<(String, u64, Vec<(std::net::SocketAddr, bool, u32, bool)>)>,
    Vec<(String, Option<String>, Option<std::time::SystemTime>)>,
);

fn running(proxy: &Proxy) -> Running {
    let mut clusters: Vec<_> = proxy
        .clusters()
        .into_iter()
        .map(|c| {
            let mut endpoints: Vec<_> = c
                .endpoints
                .iter()
                .map(|e| (e.address, e.ejected, e.ejections, e.failing_active_checks))
                .collect();
            endpoints.sort();
            (c.name, c.version, endpoints)
        })
        .collect();
    clusters.sort();
    let mut resources: Vec<_> = proxy
        .dynamic_resources()
        .into_iter()
        .map(|s| (s.id.to_string(), s.version, s.last_updated))
        .collect();
    resources.sort();
    (clusters, resources)
}

/// Runs `push` and waits until the client has ACKed a response of each of `types` sent after
/// it; fails on a NACK.
async fn pushed(server: &ManagementServer, types: &[String], push: impl FnOnce()) -> TestResult {
    let acks = |kind: &String| {
        server
            .received()
            .iter()
            .filter(|r| &r.type_url == kind && !r.response_nonce.is_empty())
            .count()
    };
    let before: Vec<usize> = types.iter().map(acks).collect();
    push();
    eventually("the pushed responses answered", || {
        types.iter().zip(&before).all(|(kind, n)| acks(kind) > *n)
    })
    .await?;
    let nacks: Vec<Received> = server
        .received()
        .into_iter()
        .filter(|r| r.error.is_some())
        .collect();
    assert!(nacks.is_empty(), "{nacks:#?}");
    Ok(())
}

/// A control plane sends what the proxy runs again: the same versions again, new versions of
/// the same resources (as istiod does at every push), the same resources encoded in another
/// order, and everything over a new stream. Nothing changes: no cluster is rebuilt or updated,
/// no upstream connection is opened, the endpoint ejected stays ejected and the one failing its
/// health checks stays failing, no counter is reset, and every resource keeps its version and
/// last update (as Envoy keeps a cluster whose config is unchanged). An endpoint added then
/// leaves the others as they were.
async fn resources_sent_again_change_nothing(api_type: &str) -> TestResult {
    let (a, b, c) = (
        DemoProvider::start("a").await?,
        DemoProvider::start("b").await?,
        DemoProvider::start("c").await?,
    );
    let hanging_up = HangingUp::start().await?;
    let (_dead, dead) = refusing_address()?;
    let server = ManagementServer::new();
    server.resend_unchanged();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let xds = serving.address();
    let (ejecting, checked) = (cluster_name("ejecting"), cluster_name("checked"));
    let seconds = |seconds: i64| envoy_types::pb::google::protobuf::Duration { seconds, nanos: 0 };
    let mut ejecting_cluster = eds_cluster(&ejecting);
    ejecting_cluster.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 1 }),
        base_ejection_time: Some(seconds(300)),
        ..OutlierDetection::default()
    });
    let mut checked_cluster = eds_cluster(&checked);
    let once = Some(UInt32Value { value: 1 });
    checked_cluster.health_checks = vec![HealthCheck {
        interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        timeout: Some(seconds(1)),
        unhealthy_threshold: once,
        healthy_threshold: once,
        health_checker: Some(HealthChecker::TcpHealthCheck(Default::default())),
        ..HealthCheck::default()
    }];
    let clusters = [ejecting_cluster, checked_cluster];
    let endpoints = [
        assignment(&ejecting, &[a.address(), hanging_up.address]),
        assignment(&checked, &[b.address(), dead]),
    ];
    let routes = meta_route_config(vec![meta_route(
        "split",
        &[],
        split(&[(&ejecting, 50), (&checked, 50)]),
    )]);
    cds(&server, "c1", &clusters);
    eds(&server, "e1", &endpoints);
    rds(&server, "r1", &routes);
    let proxy = start_proxy(proxy_config(xds, api_type)?).await?;
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let client = DubboClient::new(address);

    // Calls until the endpoint that hangs up is ejected (its calls fail meanwhile) and the
    // dead one fails its checks.
    let settled = |state: &Running| {
        let endpoint = |address| {
            state
                .0
                .iter()
                .flat_map(|(_, _, endpoints)| endpoints)
                .find(|e| e.0 == address)
                .copied()
        };
        endpoint(hanging_up.address).is_some_and(|e| e.1 && e.2 == 1)
            && endpoint(dead).is_some_and(|e| e.3)
    };
    let deadline = Instant::now() + WITHIN;
    while !settled(&running(&proxy)) {
        if Instant::now() > deadline {
            return Err(format!("not settled: {:?}", running(&proxy)).into());
        }
        let _ = client.call("sayHello", "x", &[]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Calls that all succeed, on the connections they will keep.
    succeed(&client, 40).await?;
    let request_connections = |provider: &DemoProvider, since: usize| {
        provider
            .seen()
            .iter()
            .skip(since)
            .filter(|r| r.kind == metaprotocol_core::MessageKind::Request)
            .map(|r| r.connection)
            .collect::<std::collections::BTreeSet<usize>>()
    };
    let upstream_requests = || {
        [&ejecting, &checked].map(|name| {
            labelled_counter(
                &proxy,
                "metaprotocol_upstream_rq_total",
                &format!("cluster=\"{name}\""),
            )
            .unwrap_or_default()
        })
    };
    let before = running(&proxy);
    let a_connections = a.connections();
    let b_connections = request_connections(&b, 0);
    let types = [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        RouteConfiguration::type_url(),
    ];
    let reordered_clusters = || {
        let reorder = |cluster: &Cluster| {
            let timeout = Cluster {
                connect_timeout: cluster.connect_timeout,
                ..Cluster::default()
            };
            let rest = Cluster {
                connect_timeout: None,
                ..cluster.clone()
            };
            reordered(&cluster.name, &timeout, &rest)
        };
        clusters.iter().map(reorder).collect()
    };
    let reordered_endpoints = || {
        let reorder = |assignment: &ClusterLoadAssignment| {
            let name = ClusterLoadAssignment {
                cluster_name: assignment.cluster_name.clone(),
                ..ClusterLoadAssignment::default()
            };
            let rest = ClusterLoadAssignment {
                cluster_name: String::new(),
                ..assignment.clone()
            };
            reordered(&assignment.cluster_name, &rest, &name)
        };
        endpoints.iter().map(reorder).collect()
    };
    let reordered_routes = || {
        let name = RouteConfiguration {
            name: routes.name.clone(),
            ..RouteConfiguration::default()
        };
        let rest = RouteConfiguration {
            name: String::new(),
            ..routes.clone()
        };
        vec![reordered(&routes.name, &rest, &name)]
    };
    let mut serving = Some(serving);
    let mut counted = upstream_requests();
    for step in 0..4 {
        let seen_by_b = b.seen().len();
        let what = match step {
            0 => {
                pushed(&server, &types, || {
                    cds(&server, "c1", &clusters);
                    eds(&server, "e1", &endpoints);
                    rds(&server, "r1", &routes);
                })
                .await?;
                "the same versions again"
            }
            1 => {
                pushed(&server, &types, || {
                    cds(&server, "c2", &clusters);
                    eds(&server, "e2", &endpoints);
                    rds(&server, "r2", &routes);
                })
                .await?;
                "new versions of the same resources"
            }
            2 => {
                pushed(&server, &types, || {
                    server.set(NODE, &types[0], "c3", reordered_clusters());
                    server.set(NODE, &types[1], "e3", reordered_endpoints());
                    server.set(NODE, &types[2], "r3", reordered_routes());
                })
                .await?;
                "the same resources encoded in another order"
            }
            _ => {
                // The server restarts: the new stream sends everything again.
                let streams = server.received().iter().map(|r| r.stream).max();
                drop(serving.take());
                cds(&server, "c4", &clusters);
                eds(&server, "e4", &endpoints);
                rds(&server, "r4", &routes);
                serving = Some(serve_again(&server, xds).await?);
                for kind in &types {
                    server
                        .wait_for(WITHIN, |r| {
                            Some(r.stream) > streams
                                && &r.type_url == kind
                                && !r.response_nonce.is_empty()
                        })
                        .await?;
                }
                "everything over a new stream"
            }
        };
        succeed(&client, 40).await?;
        assert_eq!(running(&proxy), before, "{what}");
        assert_eq!(a.connections(), a_connections, "{what}: a's connections");
        let used = request_connections(&b, seen_by_b);
        assert!(
            used.is_subset(&b_connections),
            "{what}: b's connections {used:?}, not {b_connections:?}"
        );
        let now = upstream_requests();
        assert!(
            now.iter().zip(&counted).all(|(now, then)| now > then),
            "{what}: requests counted {now:?} after {counted:?}"
        );
        counted = now;
    }
    let nacks: Vec<Received> = server
        .received()
        .into_iter()
        .filter(|r| r.error.is_some())
        .collect();
    assert!(nacks.is_empty(), "{nacks:#?}");

    // An endpoint added to one cluster: the others of that cluster keep their state and
    // connections, and the other cluster is not touched.
    let mut added = endpoints.clone();
    added[0] = assignment(&ejecting, &[a.address(), hanging_up.address, c.address()]);
    pushed(&server, &types[1..2], || eds(&server, "e5", &added)).await?;
    succeed(&client, 40).await?;
    let after = running(&proxy);
    let cluster = |state: &Running, name: &str| state.0.iter().find(|c| c.0 == name).cloned();
    assert_eq!(cluster(&after, &checked), cluster(&before, &checked));
    let endpoints_of = |state: &Running| cluster(state, &ejecting).map(|c| c.2).unwrap_or_default();
    let kept = endpoints_of(&after);
    assert!(
        endpoints_of(&before).iter().all(|e| kept.contains(e)),
        "{kept:?}"
    );
    assert_eq!(a.connections(), a_connections, "a's connections");
    assert!(c.connections() > 0, "the new endpoint takes calls");

    // A change of the cluster's config (its load balancer) keeps its endpoints' state and
    // connections too.
    let mut changed = clusters.clone();
    changed[0].lb_policy = LbPolicy::LeastRequest as i32;
    pushed(&server, &types[..1], || cds(&server, "c5", &changed)).await?;
    succeed(&client, 40).await?;
    let endpoints_now = endpoints_of(&running(&proxy));
    assert!(
        kept.iter().all(|e| endpoints_now.contains(e)),
        "{endpoints_now:?}"
    );
    assert_eq!(a.connections(), a_connections, "a's connections");
    drop(serving);
    proxy.shutdown().await;
    Ok(())
}

/// Makes `calls` calls through `client`, every one answered by a provider.
async fn succeed(client: &DubboClient, calls: usize) -> TestResult {
    for _ in 0..calls {
        let reply = client.call("sayHello", "x", &[]).await?;
        assert_eq!(reply.dubbo_status, 20, "{:?}", reply.attachment("provider"));
    }
    Ok(())
}

/// Serves `server` on `address` again, once the socket that served there has let it go (it
/// closes as its task ends, shortly after it is stopped).
async fn serve_again(
    server: &ManagementServer,
    address: std::net::SocketAddr,
) -> TestResult<support::management_server::Serving> {
    let deadline = Instant::now() + WITHIN;
    loop {
        match server.serve(address).await {
            Ok(serving) => return Ok(serving),
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// An EDS cluster `name` that waits `seconds` for its endpoints (its `initial_fetch_timeout`).
fn waiting_cluster(name: &str, seconds: i64) -> Cluster {
    let mut cluster = eds_cluster(name);
    if let Some(source) = cluster
        .eds_cluster_config
        .as_mut()
        .and_then(|eds| eds.eds_config.as_mut())
    {
        source.initial_fetch_timeout =
            Some(envoy_types::pb::google::protobuf::Duration { seconds, nanos: 0 });
    }
    cluster
}

/// An EDS cluster whose endpoints never arrive serves without them once its
/// `initial_fetch_timeout` is up, as in Envoy: the route config that uses it serves (its other
/// routes answer, calls to it find no endpoint), and its endpoints are used once they come. One
/// whose timeout is 0 (as istiod sends) waits for them for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eds_cluster_whose_endpoints_never_arrive_serves_without_them_after_its_timeout()
-> TestResult {
    let fed_by = DemoProvider::start("fed").await?;
    let late = DemoProvider::start("late").await?;
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let (fed, starved, patient) = (
        cluster_name("fed"),
        cluster_name("starved"),
        cluster_name("patient"),
    );
    let waiting = waiting_cluster;
    let clusters = [
        eds_cluster(&fed),
        waiting(&starved, 1),
        waiting(&patient, 0),
    ];
    cds(&server, "c1", &clusters);
    eds(&server, "e1", &[assignment(&fed, &[fed_by.address()])]);
    rds(
        &server,
        "r1",
        &meta_route_config(vec![
            meta_route("starved", &[("method", "sayHello01")], to_cluster(&starved)),
            meta_route("fed", &[], to_cluster(&fed)),
        ]),
    );
    let started = Instant::now();
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let client = DubboClient::new(address);
    let reply = client.call("sayHello", "x", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("fed"));
    let reply = client.call("sayHello01", "x", &[]).await?;
    assert_ne!(reply.dubbo_status, 20, "no endpoint to answer");
    let dump = config_dump(proxy.admin_addr().ok_or("no admin API")?).await?;
    let xds = &dump["dynamic_sources"]["xds"];
    assert_eq!(xds["warming_clusters"], serde_json::json!([patient]));
    assert_eq!(
        xds["clusters_without_endpoints"],
        serde_json::json!([starved])
    );

    eds(
        &server,
        "e2",
        &[
            assignment(&fed, &[fed_by.address()]),
            assignment(&starved, &[late.address()]),
        ],
    );
    let deadline = Instant::now() + WITHIN;
    loop {
        let reply = client.call("sayHello01", "x", &[]).await?;
        if reply.attachment("provider") == Some("late") {
            break;
        }
        if Instant::now() > deadline {
            return Err("the endpoints that came late are not used".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dump = config_dump(proxy.admin_addr().ok_or("no admin API")?).await?;
    assert_eq!(
        dump["dynamic_sources"]["xds"]["clusters_without_endpoints"],
        serde_json::json!([])
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_removed_and_added_again_serves_with_fresh_endpoints_over_state_of_the_world_ads()
-> TestResult {
    a_cluster_removed_and_added_again_serves_with_fresh_endpoints("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_removed_and_added_again_serves_with_fresh_endpoints_over_delta_ads() -> TestResult
{
    a_cluster_removed_and_added_again_serves_with_fresh_endpoints("delta_grpc").await
}

/// A cluster removed, then added again (its endpoints unchanged on the server): it is
/// unsubscribed from and forgotten, then subscribed to again, and serves with its endpoints.
async fn a_cluster_removed_and_added_again_serves_with_fresh_endpoints(
    api_type: &str,
) -> TestResult {
    let (a, b) = (
        DemoProvider::start("a").await?,
        DemoProvider::start("b").await?,
    );
    let server = ManagementServer::new();
    server.version_by_content();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let (kept, flapping) = (cluster_name("kept"), cluster_name("flapping"));
    let both = [eds_cluster(&kept), eds_cluster(&flapping)];
    cds(&server, "c1", &both);
    eds(
        &server,
        "e1",
        &[
            assignment(&kept, &[a.address()]),
            assignment(&flapping, &[b.address()]),
        ],
    );
    rds(
        &server,
        "r1",
        &meta_route_config(vec![
            meta_route(
                "flapping",
                &[("method", "sayHello01")],
                to_cluster(&flapping),
            ),
            meta_route("kept", &[], to_cluster(&kept)),
        ]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), api_type)?).await?;
    let serves = |name: &str| {
        proxy
            .clusters()
            .iter()
            .any(|c| c.name == name && c.endpoints.len() == 1)
    };
    eventually("both serve", || serves(&kept) && serves(&flapping)).await?;
    // The route goes first, then the cluster, as a control plane orders a removal.
    rds(
        &server,
        "r2",
        &meta_route_config(vec![meta_route("kept", &[], to_cluster(&kept))]),
    );
    let rds_acked = |version: &'static str| {
        move |r: &Received| {
            r.type_url == RouteConfiguration::type_url()
                && !r.response_nonce.is_empty()
                && r.error.is_none()
                && (api_type == "delta_grpc" || r.version_info == version)
        }
    };
    server.wait_for(WITHIN, rds_acked("r2")).await?;
    cds(&server, "c2", &both[..1]);
    eventually("the cluster goes", || !serves(&flapping)).await?;
    cds(&server, "c3", &both);
    eventually("the cluster comes back with its endpoints", || {
        serves(&flapping)
    })
    .await?;
    rds(
        &server,
        "r3",
        &meta_route_config(vec![
            meta_route(
                "flapping",
                &[("method", "sayHello01")],
                to_cluster(&flapping),
            ),
            meta_route("kept", &[], to_cluster(&kept)),
        ]),
    );
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let client = DubboClient::new(address);
    let deadline = Instant::now() + WITHIN;
    loop {
        let reply = client.call("sayHello01", "x", &[]).await?;
        if reply.attachment("provider") == Some("b") {
            break;
        }
        if Instant::now() > deadline {
            return Err("calls do not reach the cluster added again".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nacks: Vec<Received> = server
        .received()
        .into_iter()
        .filter(|r| r.error.is_some())
        .collect();
    assert!(nacks.is_empty(), "{nacks:#?}");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_sent_again_apply_no_update_over_state_of_the_world_ads() -> TestResult {
    resources_sent_again_apply_no_update("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_sent_again_apply_no_update_over_delta_ads() -> TestResult {
    resources_sent_again_apply_no_update("delta_grpc").await
}

/// Responses whose resources are all unchanged (the same versions again, then new versions of
/// the same resources, as istiod pushes) are only ACKed: no update is applied, so none is
/// counted in `metaprotocol_config_reloads_total{outcome="applied"}`.
async fn resources_sent_again_apply_no_update(api_type: &str) -> TestResult {
    let provider = DemoProvider::start("a").await?;
    let server = ManagementServer::new();
    server.resend_unchanged();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let cluster = eds_cluster(&cluster_name("resent"));
    let endpoints = [assignment(&cluster.name, &[provider.address()])];
    let routes = meta_route_config(vec![meta_route("all", &[], to_cluster(&cluster.name))]);
    let types = [
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        RouteConfiguration::type_url(),
    ];
    serve_one_cluster(&server, &cluster, &[provider.address()]);
    let proxy = start_proxy(proxy_config(serving.address(), api_type)?).await?;
    let acked = |kind: &String| {
        server
            .received()
            .iter()
            .any(|r| &r.type_url == kind && !r.response_nonce.is_empty() && r.error.is_none())
    };
    eventually("every type ACKed", || types.iter().all(acked)).await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    succeed(&DubboClient::new(address), 5).await?;
    let applied = || {
        labelled_counter(
            &proxy,
            "metaprotocol_config_reloads_total",
            "outcome=\"applied\"",
        )
    };
    let before = applied();
    assert!(before.is_some_and(|n| n > 0), "{before:?}");
    for version in ["1", "2"] {
        pushed(&server, &types, || {
            cds(
                &server,
                &format!("c{version}"),
                std::slice::from_ref(&cluster),
            );
            eds(&server, &format!("e{version}"), &endpoints);
            rds(&server, &format!("r{version}"), &routes);
        })
        .await?;
        assert_eq!(
            applied(),
            before,
            "sent again at {version}: updates applied"
        );
    }
    succeed(&DubboClient::new(address), 5).await?;
    drop(serving);
    proxy.shutdown().await;
    Ok(())
}

/// A warming cluster whose new version changes its `initial_fetch_timeout` waits anew, from
/// that version, as long as the new timeout says (Envoy replaces a warming cluster whose config
/// changes, and the new one's wait starts then): an hour's wait cut to a second serves the
/// cluster without endpoints a second later, not in an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warming_cluster_whose_timeout_changes_waits_as_its_new_version_says() -> TestResult {
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let starved = cluster_name("starved");
    cds(&server, "c1", &[waiting_cluster(&starved, 3600)]);
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("all", &[], to_cluster(&starved))]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    let cds_acked = |version: &'static str| {
        move |r: &Received| {
            r.type_url == Cluster::type_url() && r.version_info == version && r.error.is_none()
        }
    };
    server.wait_for(WITHIN, cds_acked("c1")).await?;
    let admin = proxy.admin_addr().ok_or("no admin API")?;
    let dump = config_dump(admin).await?;
    assert_eq!(
        dump["dynamic_sources"]["xds"]["warming_clusters"],
        serde_json::json!([starved])
    );
    cds(&server, "c2", &[waiting_cluster(&starved, 1)]);
    server.wait_for(WITHIN, cds_acked("c2")).await?;
    eventually("the cluster serves without endpoints", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let dump = config_dump(admin).await?;
    assert_eq!(
        dump["dynamic_sources"]["xds"]["clusters_without_endpoints"],
        serde_json::json!([starved])
    );
    proxy.shutdown().await;
    Ok(())
}

/// The answer the client sends to the next response of `type_url` after `push` runs.
async fn answer_to_push(
    server: &ManagementServer,
    type_url: &str,
    push: impl FnOnce(),
) -> TestResult<Received> {
    let answers = || {
        server
            .received()
            .into_iter()
            .filter(|r| r.type_url == type_url && !r.response_nonce.is_empty())
            .collect::<Vec<_>>()
    };
    let before = answers().len();
    push();
    eventually("the response answered", || answers().len() > before).await?;
    Ok(answers().swap_remove(before))
}

/// A delta response whose `removed_resources` names a resource twice is a server at fault, as
/// Envoy has it: it is NACKed whole, naming the resource, and the cluster it would remove keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_response_removing_a_resource_twice_is_nacked_whole() -> TestResult {
    let (a, b) = (
        DemoProvider::start("a").await?,
        DemoProvider::start("b").await?,
    );
    let server = ManagementServer::new();
    server.alter_delta_responses(|response| {
        let removed = response.removed_resources.clone();
        response.removed_resources.extend(removed);
    });
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let (kept, removed) = (cluster_name("kept"), cluster_name("removed"));
    let both = [eds_cluster(&kept), eds_cluster(&removed)];
    cds(&server, "c1", &both);
    eds(
        &server,
        "e1",
        &[
            assignment(&kept, &[a.address()]),
            assignment(&removed, &[b.address()]),
        ],
    );
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("kept", &[], to_cluster(&kept))]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), "delta_grpc")?).await?;
    let serves = |name: &str| {
        proxy
            .clusters()
            .iter()
            .any(|c| c.name == name && c.endpoints.len() == 1)
    };
    eventually("both serve", || serves(&kept) && serves(&removed)).await?;
    let answer = answer_to_push(&server, &Cluster::type_url(), || {
        cds(&server, "c2", &both[..1]);
    })
    .await?;
    let error = answer.error.unwrap_or_default();
    assert!(
        error.contains(&removed) && error.contains("twice"),
        "not a NACK naming the resource: {error:?}"
    );
    assert!(serves(&removed), "the cluster the response removed is gone");
    drop(serving);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_of_a_type_not_asked_for_is_ignored_over_state_of_the_world_ads() -> TestResult {
    a_response_of_a_type_not_asked_for_is_ignored("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_of_a_type_not_asked_for_is_ignored_over_delta_ads() -> TestResult {
    a_response_of_a_type_not_asked_for_is_ignored("delta_grpc").await
}

/// A server sending clusters to a proxy that asks for route configs only (its clusters are
/// the file's) changes nothing, and is not answered, as in Envoy: an ACK would subscribe the
/// proxy to every cluster the server has.
async fn a_response_of_a_type_not_asked_for_is_ignored(api_type: &str) -> TestResult {
    let provider = DemoProvider::start("a").await?;
    let server = ManagementServer::new();
    server.send_unasked(&Cluster::type_url());
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let pushed_cluster = cluster_name("pushed");
    let pushed = Cluster {
        name: pushed_cluster,
        ..Cluster::default()
    };
    cds(&server, "c1", &[pushed]);
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("all", &[], to_cluster("from-file"))]),
    );
    let config = metaprotocol_router::Config::from_yaml(&format!(
        "admin: {{ address: 127.0.0.1:0 }}
dynamic:
  xds:
    address: {xds}
    node_id: {NODE}
    api_type: {api_type}
    route_configs: ['*']
listeners:
  - {{ name: dubbo-in, address: 127.0.0.1:0, protocol: dubbo, route_config: {routes} }}
clusters:
  - {{ name: from-file, endpoints: [{{ address: '{upstream}' }}] }}
",
        xds = serving.address(),
        routes = route_config_name(),
        upstream = provider.address(),
    ))?;
    let proxy = start_proxy(config).await?;
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    succeed(&DubboClient::new(address), 5).await?;
    // The clusters were sent first: the route config's ACK comes after the client saw them.
    server
        .wait_for(WITHIN, |r| {
            r.type_url == RouteConfiguration::type_url() && !r.response_nonce.is_empty()
        })
        .await?;
    let clusters: Vec<String> = proxy.clusters().into_iter().map(|c| c.name).collect();
    assert_eq!(clusters, ["from-file"]);
    let answered: Vec<Received> = server
        .received()
        .into_iter()
        .filter(|r| r.type_url == Cluster::type_url())
        .collect();
    assert!(answered.is_empty(), "{answered:#?}");
    drop(serving);
    proxy.shutdown().await;
    Ok(())
}

/// An EDS response carrying a pod istiod reaches through Istio's HBONE tunnel (an ambient pod:
/// an internal address into Envoy's tunnel listener, labelled `tunnel: http`), which the proxy
/// cannot reach, is taken without it: the cluster's other endpoints serve, and the one left out
/// is counted in `/config_dump`, rather than the whole response being NACKed and the service
/// left on stale endpoints; `xds_hbone_endpoints_left_out` shows how many are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambient_endpoint_is_left_out_and_the_clusters_others_serve() -> TestResult {
    let provider = DemoProvider::start("a").await?;
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let cluster = eds_cluster(&cluster_name("ambient"));
    let mut endpoints = assignment(&cluster.name, &[provider.address()]);
    endpoints.endpoints[0]
        .lb_endpoints
        .push(support::fixtures::istio_hbone_endpoint(
            "10.0.0.9:20880".parse()?,
        ));
    cds(&server, "c1", std::slice::from_ref(&cluster));
    eds(&server, "e1", &[endpoints]);
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("all", &[], to_cluster(&cluster.name))]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    let answer = server
        .wait_for(WITHIN, |r| {
            r.type_url == ClusterLoadAssignment::type_url() && !r.response_nonce.is_empty()
        })
        .await?;
    assert_eq!(answer.error, None, "the EDS response is NACKed");
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    succeed(&DubboClient::new(address), 5).await?;
    let members: Vec<std::net::SocketAddr> = proxy
        .clusters()
        .into_iter()
        .filter(|c| c.name == cluster.name)
        .flat_map(|c| c.endpoints.into_iter().map(|e| e.address))
        .collect();
    assert_eq!(members, [provider.address()]);
    let admin = proxy.admin_addr().ok_or("no admin API")?;
    let dump = config_dump(admin).await?;
    assert_eq!(
        dump["dynamic_sources"]["xds"]["hbone_endpoints_left_out"],
        serde_json::json!({ cluster.name.clone(): 1 })
    );
    // And as a gauge, which goes back to 0 once no assignment leaves one out.
    let server_label = format!("xds_server=\"{}\"", serving.address());
    let left_out = || {
        labelled_counter(
            &proxy,
            "metaprotocol_xds_hbone_endpoints_left_out",
            &server_label,
        )
    };
    assert_eq!(left_out(), Some(1), "{}", proxy.metrics().render());
    eds(
        &server,
        "e2",
        &[assignment(&cluster.name, &[provider.address()])],
    );
    eventually("no endpoint is left out", || left_out() == Some(0)).await?;
    drop(serving);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_a_cluster_unsubscribed_from_are_ignored_over_state_of_the_world_ads()
-> TestResult {
    endpoints_of_a_cluster_unsubscribed_from_are_ignored("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_a_cluster_unsubscribed_from_are_ignored_over_delta_ads() -> TestResult {
    endpoints_of_a_cluster_unsubscribed_from_are_ignored("delta_grpc").await
}

/// A server that goes on sending the endpoints of a cluster the proxy no longer has (it answers
/// with what an earlier request asked for, or ignores the names) is ACKed, as Envoy does: the
/// assignment not asked for is neither translated (one the proxy would refuse does not NACK
/// the response) nor held (over delta ADS, not offered back when a stream opens again), and the
/// others in the response apply.
async fn endpoints_of_a_cluster_unsubscribed_from_are_ignored(api_type: &str) -> TestResult {
    let (a, b) = (
        DemoProvider::start("a").await?,
        DemoProvider::start("b").await?,
    );
    let server = ManagementServer::new();
    server.version_by_content();
    server.ignore_names(&ClusterLoadAssignment::type_url());
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let (kept, gone) = (cluster_name("kept"), cluster_name("gone"));
    cds(&server, "c1", &[eds_cluster(&kept), eds_cluster(&gone)]);
    eds(
        &server,
        "e1",
        &[
            assignment(&kept, &[a.address()]),
            assignment(&gone, &[b.address()]),
        ],
    );
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("kept", &[], to_cluster(&kept))]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), api_type)?).await?;
    let serves = |name: &str, provider: std::net::SocketAddr| {
        proxy
            .clusters()
            .iter()
            .any(|c| c.name == name && c.endpoints.len() == 1 && c.endpoints[0].address == provider)
    };
    eventually("both serve", || {
        serves(&kept, a.address()) && serves(&gone, b.address())
    })
    .await?;
    cds(&server, "c2", &[eds_cluster(&kept)]);
    eventually("the cluster goes", || {
        !proxy.clusters().iter().any(|c| c.name == gone)
    })
    .await?;
    // The server still sends the gone cluster's endpoints, now ones the proxy would refuse (a
    // port out of range), beside a change of the kept cluster's.
    let mut refusable = assignment(&gone, &[b.address()]);
    if let Some(Some(HostIdentifier::Endpoint(endpoint))) = refusable.endpoints[0]
        .lb_endpoints
        .first_mut()
        .map(|e| e.host_identifier.as_mut())
        && let Some(AddressKind::SocketAddress(socket)) = endpoint
            .address
            .as_mut()
            .and_then(|address| address.address.as_mut())
    {
        socket.port_specifier = Some(PortSpecifier::PortValue(70_000));
    }
    eds(
        &server,
        "e2",
        &[assignment(&kept, &[b.address()]), refusable],
    );
    let eds_nacks = || {
        server
            .received()
            .into_iter()
            .filter(|r| r.type_url == ClusterLoadAssignment::type_url() && r.error.is_some())
            .collect::<Vec<_>>()
    };
    eventually(
        "the kept cluster takes its new endpoints, or a NACK",
        || serves(&kept, b.address()) || !eds_nacks().is_empty(),
    )
    .await?;
    let nacks = eds_nacks();
    assert!(
        nacks.is_empty(),
        "endpoints not asked for are NACKed: {nacks:#?}"
    );
    if api_type == "delta_grpc" {
        // The gone cluster's endpoints again, valid and alone (each resource is versioned by its
        // content), then the kept cluster's alone: once the kept one serves them, both
        // responses were handled.
        eds(
            &server,
            "e3",
            &[
                assignment(&kept, &[b.address()]),
                assignment(&gone, &[a.address()]),
            ],
        );
        eds(
            &server,
            "e4",
            &[
                assignment(&kept, &[a.address()]),
                assignment(&gone, &[a.address()]),
            ],
        );
        eventually("the kept cluster takes its endpoints again", || {
            serves(&kept, a.address())
        })
        .await?;
        let address = serving.address();
        drop(serving);
        let serving = serve_again(&server, address).await?;
        let reopened = server
            .wait_for(WITHIN, |r| {
                r.stream > 1
                    && r.type_url == ClusterLoadAssignment::type_url()
                    && r.response_nonce.is_empty()
            })
            .await?;
        assert_eq!(
            reopened.version_info, "e4",
            "the stream opens offering endpoints not asked for"
        );
        drop(serving);
    }
    let nacks = eds_nacks();
    assert!(nacks.is_empty(), "{nacks:#?}");
    proxy.shutdown().await;
    Ok(())
}

/// A cluster whose TLS trusts the system's CAs as istiod names them (SDS secret
/// `file-root:system`: a `DestinationRule` with `tls.mode: SIMPLE` and no `caCertificates`)
/// takes the system's CA bundle, where the distribution keeps it, with no `sds_secrets` entry;
/// on a system without one it is NACKed saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_trusting_the_systems_cas_takes_the_systems_bundle() -> TestResult {
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let mut simple =
        support::fixtures::istio_file_mutual_tls("/unused", "/unused", "system", "db", "db");
    let common = simple
        .common_tls_context
        .as_mut()
        .ok_or("no common_tls_context")?;
    common.tls_certificate_sds_secret_configs.clear();
    common.alpn_protocols.clear();
    let mut cluster = eds_cluster(&cluster_name("external"));
    cluster.transport_socket = Some(support::fixtures::tls_socket(&simple));
    cds(&server, "c1", std::slice::from_ref(&cluster));
    eds(
        &server,
        "e1",
        &[assignment(&cluster.name, &["127.0.0.1:9".parse()?])],
    );
    rds(
        &server,
        "r1",
        &meta_route_config(vec![meta_route("all", &[], to_cluster(&cluster.name))]),
    );
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    let answer = server
        .wait_for(WITHIN, |r| {
            r.type_url == Cluster::type_url() && !r.response_nonce.is_empty()
        })
        .await?;
    match metaprotocol_xds::translate::system_ca_file() {
        Some(bundle) => {
            assert_eq!(answer.error, None);
            eventually("the cluster serves", || {
                proxy.clusters().iter().any(|c| c.name == cluster.name)
            })
            .await?;
            let ca_file = proxy
                .config()
                .clusters
                .iter()
                .find(|c| c.name == cluster.name)
                .and_then(|c| c.tls.as_ref())
                .map(|tls| tls.ca_file.clone());
            assert_eq!(ca_file, Some(bundle));
        }
        None => {
            let error = answer.error.unwrap_or_default();
            assert!(
                error.contains("file-root:system") && error.contains("no system CA bundle"),
                "{error}"
            );
        }
    }
    drop(serving);
    proxy.shutdown().await;
    Ok(())
}
