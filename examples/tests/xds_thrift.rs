//! Thrift through a control plane: the xDS crate's test management server pushes the clusters,
//! endpoints and MetaProtocol route config (Aeraki's MetaRDS encoding) of a Thrift listener,
//! and 20 connections of Apache Thrift's Python client call a Greeter through the proxy without
//! pause while the route moves to another cluster and that cluster's endpoint moves to another
//! server, over state-of-the-world and delta ADS. Not one call fails, not one client
//! connection is closed, and calls follow each push once the proxy runs it.
//!
//! Needs Apache Thrift's Python library (`tests/interop/thrift/setup.sh`); without it the test
//! is skipped, unless `METAPROTOCOL_REQUIRE_INTEROP=1` makes it fail.

#[allow(dead_code)]
mod support;
#[allow(dead_code, reason = "each test uses part of the support")]
#[path = "../../metaprotocol-xds/tests/support/mod.rs"]
mod xds;

use std::time::Duration;

use metaprotocol_router::{Proxy, ResourceKind};
use support::TestResult;
use support::follow::{Switch, check, now_ns};
use support::process::Scratch;
use support::proxy::{listener_addr, metric};
use support::thrift::{LoadClient, Server, tools_ready};
use tokio::task::block_in_place;
use xds::fixtures::{assignment, eds_cluster, meta_route, meta_route_config, to_cluster};
use xds::management_server::ManagementServer;
use xds::{cds, eds, eventually, listener_config, rds, start_proxy};

const CONNECTIONS: usize = 20;
/// How soon after the proxy runs a push new calls must follow it.
const FOLLOW_WITHIN: Duration = Duration::from_millis(250);
/// How long traffic runs between pushes.
const PHASE: Duration = Duration::from_secs(1);
/// The MetaRDS route config of the Greeter service's port, as Aeraki names it (`<host>_<port>`).
const ROUTE_CONFIG: &str = "greeter.default.svc.cluster.local_9090";

/// Istio's outbound cluster name of subset `subset` of the Greeter service.
fn cluster(subset: &str) -> String {
    format!("outbound|9090|{subset}|greeter.default.svc.cluster.local")
}

/// The route config sending every Greeter method to `cluster`.
fn greeter_to(cluster: &str) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    let mut config = meta_route_config(vec![meta_route(
        "greeter",
        &[("method", "sayHello")],
        to_cluster(cluster),
    )]);
    config.name = ROUTE_CONFIG.to_owned();
    config
}

/// The version `kind` `name` runs, as the proxy reports it.
fn version(proxy: &Proxy, kind: ResourceKind, name: &str) -> Option<String> {
    proxy
        .dynamic_resources()
        .into_iter()
        .find(|s| s.id.kind == kind && s.id.name == name)
        .and_then(|s| s.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_drives_thrift_traffic_hitlessly_over_state_of_the_world_ads() -> TestResult
{
    drives_thrift_traffic_hitlessly("grpc").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_drives_thrift_traffic_hitlessly_over_delta_ads() -> TestResult {
    drives_thrift_traffic_hitlessly("delta_grpc").await
}

async fn drives_thrift_traffic_hitlessly(api_type: &str) -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new(&format!("xds-thrift-{api_type}"))?;
    // Subset a has server a1; subset b has b2, then b3.
    let servers = block_in_place(|| -> TestResult<Vec<Server>> {
        ["a1", "b2", "b3"]
            .into_iter()
            .map(|name| Server::start("framed", "binary", name, &scratch))
            .collect()
    })?;
    let address =
        |i: usize| -> TestResult<std::net::SocketAddr> { Ok(servers[i].address().parse()?) };
    let (a, b) = (cluster("a"), cluster("b"));

    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    cds(&server, "c1", &[eds_cluster(&a), eds_cluster(&b)]);
    eds(
        &server,
        "e1",
        &[
            assignment(&a, &[address(0)?]),
            assignment(&b, &[address(1)?]),
        ],
    );
    rds(&server, "r1", &greeter_to(&a));
    let config = listener_config(serving.address(), api_type, "thrift", ROUTE_CONFIG)?;
    let proxy = start_proxy(config).await?;
    eventually("the listener serves", || {
        proxy.listener_addr("thrift-in").is_some()
    })
    .await?;
    let port = listener_addr(&proxy, "thrift-in")?.port();

    // 20 connections from Apache Thrift's Python client, calling without pause.
    let client = block_in_place(|| LoadClient::start(port, CONNECTIONS, "thrift-load", &scratch))?;
    let mut switches: Vec<Switch> = vec![(0, 0, "a1")];
    tokio::time::sleep(PHASE).await;

    // The route moves to subset b; then b's endpoint moves to another server.
    let asked = now_ns();
    rds(&server, "r2", &greeter_to(&b));
    eventually("r2 runs", || {
        version(&proxy, ResourceKind::RouteConfig, ROUTE_CONFIG).as_deref() == Some("r2")
    })
    .await?;
    switches.push((asked, now_ns(), "b2"));
    tokio::time::sleep(PHASE).await;
    let asked = now_ns();
    eds(
        &server,
        "e2",
        &[
            assignment(&a, &[address(0)?]),
            assignment(&b, &[address(2)?]),
        ],
    );
    eventually("e2 runs", || {
        version(&proxy, ResourceKind::Endpoints, &b).as_deref() == Some("e2")
    })
    .await?;
    switches.push((asked, now_ns(), "b3"));
    tokio::time::sleep(PHASE).await;

    let calls = block_in_place(|| client.finish())?;
    let (violations, lag) = check(&calls, &switches, FOLLOW_WITHIN);
    assert!(
        violations.is_empty(),
        "{} calls did not follow a push within {FOLLOW_WITHIN:?}: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    for name in ["a1", "b2", "b3"] {
        assert!(
            calls.iter().any(|(_, _, server)| server == name),
            "{name} served calls"
        );
    }
    assert_eq!(
        metric(
            &proxy,
            "metaprotocol_downstream_cx_total{listener=\"thrift-in\"}"
        ),
        CONNECTIONS as f64,
        "no client connection was closed and reopened"
    );
    println!(
        "{api_type}: {} Thrift calls under {CONNECTIONS} connections; longest a call took the old route or endpoint after a push ran: {lag:?}",
        calls.len()
    );
    proxy.shutdown().await;
    drop((serving, servers));
    Ok(())
}
