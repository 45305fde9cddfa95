//! The time from a push to traffic following it, at scale: 1,000 MetaProtocol routes (Aeraki's
//! encoding, each matching one method) over 100 EDS clusters, pushed over ADS by the test
//! management server. The last route is switched between two clusters on different providers
//! again and again; for each push, a Dubbo client calling that route's method records when the
//! first call answered by the new provider was sent. Prints p50 and p99; asserts only that
//! every push is followed (timings are reported, never asserted).

#[allow(dead_code, reason = "each test uses part of the support")]
mod support;

use std::time::{Duration, Instant};

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use support::fixtures::{
    assignment, cluster_name, eds_cluster, meta_route, meta_route_config, to_cluster,
};
use support::management_server::ManagementServer;
use support::{TestResult, WITHIN, cds, eds, eventually, proxy_config, rds, start_proxy};

const ROUTES: usize = 1_000;
const CLUSTERS: usize = 100;
const PUSHES: usize = 40;

/// The route config with every route `i` sending method `m<i>` to cluster `s<i % 100>`, except
/// the last, which goes to cluster `last`.
fn routes(last: usize) -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    let routes = (0..ROUTES)
        .map(|i| {
            let cluster = if i == ROUTES - 1 { last } else { i % CLUSTERS };
            let method = format!("m{i}");
            meta_route(
                &format!("r{i}"),
                &[("method", method.as_str())],
                to_cluster(&cluster_name(&format!("s{cluster}"))),
            )
        })
        .collect();
    meta_route_config(routes)
}

/// The value at `quantile` of sorted `samples`.
fn quantile(samples: &[Duration], quantile: f64) -> Duration {
    let rank = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_traffic_following_with_1000_routes_and_100_clusters() -> TestResult {
    // Even clusters on provider `a`, odd ones on `b`.
    let providers = [
        DemoProvider::start("a").await?,
        DemoProvider::start("b").await?,
    ];
    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let names: Vec<String> = (0..CLUSTERS)
        .map(|i| cluster_name(&format!("s{i}")))
        .collect();
    let clusters: Vec<_> = names.iter().map(|n| eds_cluster(n)).collect();
    let assignments: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| assignment(n, &[providers[i % 2].address()]))
        .collect();
    cds(&server, "1", &clusters);
    eds(&server, "1", &assignments);
    rds(&server, "0", &routes(0));

    let started = Instant::now();
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let warmed = started.elapsed();
    let client = DubboClient::new(proxy.listener_addr("dubbo-in").ok_or("not bound")?);
    let method = format!("m{}", ROUTES - 1);

    let mut lags = Vec::with_capacity(PUSHES);
    for push in 1..=PUSHES {
        // Alternate the last route between cluster 0 (provider a) and cluster 1 (provider b).
        let target = push % 2;
        let expected = providers[target].name().to_owned();
        let pushed = Instant::now();
        rds(&server, &push.to_string(), &routes(target));
        let lag = loop {
            let sent = Instant::now();
            let reply = client.call(&method, "scale", &[]).await?;
            if reply.attachment("provider") == Some(expected.as_str()) {
                break sent.saturating_duration_since(pushed);
            }
            if pushed.elapsed() > WITHIN {
                return Err(format!("push {push} not followed within {WITHIN:?}").into());
            }
        };
        lags.push(lag);
    }
    lags.sort();
    println!(
        "{ROUTES} routes, {CLUSTERS} clusters: ready {warmed:?} after start; push to traffic following over {PUSHES} pushes: p50 {:?}, p99 {:?}, max {:?} ({} build)",
        quantile(&lags, 0.5),
        quantile(&lags, 0.99),
        lags[lags.len() - 1],
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    proxy.shutdown().await;
    Ok(())
}
