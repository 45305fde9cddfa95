//! A proxy with worker threads of its own (`ProxyBuilder::workers`): client connections are
//! spread over the workers, each worker opens its own upstream connections, and a worker that
//! cannot open one under the cluster's connection limit shares another worker's.

use std::time::Duration;

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::{Config, Proxy};

#[allow(dead_code)]
mod support;

use support::TestResult;
use support::proxy::metric;

/// A proxy with two workers in front of `provider`, over cluster `demo` with one connection
/// per endpoint and `breakers` (YAML flow map items, or empty).
async fn proxy(provider: &DemoProvider, breakers: &str) -> TestResult<Proxy> {
    let yaml = format!(
        "listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
route_configs:
  - name: r
    routes:
      - match: {{ metadata: [ {{ key: method, exact: sayHello }} ] }}
        route: {{ cluster: demo }}
clusters:
  - name: demo
    connections_per_endpoint: 1
    circuit_breakers: {{ {breakers} }}
    endpoints:
      - {{ address: {} }}
",
        provider.address()
    );
    Ok(Proxy::builder(Config::from_yaml(&yaml)?)
        .codecs(metaprotocol_examples::codec_registry())
        .workers(2)
        .start()
        .await?)
}

/// Makes `clients` clients of the proxy, each on its own connection, and has each call twice.
async fn call_through(proxy: &Proxy, clients: usize) -> TestResult {
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let clients: Vec<DubboClient> = (0..clients).map(|_| DubboClient::new(address)).collect();
    for round in 0..2 {
        for (n, client) in clients.iter().enumerate() {
            let reply = client
                .call("sayHello", &format!("c{n}-{round}"), &[])
                .await?;
            assert_eq!(reply.dubbo_status, 20, "client {n}, call {round}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn each_worker_serves_its_clients_over_upstream_connections_of_its_own() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy(&provider, "").await?;
    call_through(&proxy, 4).await?;
    assert_eq!(
        metric(&proxy, "metaprotocol_downstream_cx_total{listener=\"in\"}"),
        4.0
    );
    // Four clients, two on each worker: one upstream connection per worker.
    assert_eq!(
        metric(&proxy, "metaprotocol_upstream_cx_total{cluster=\"demo\"}"),
        2.0
    );
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_worker_at_the_connection_limit_shares_another_workers_connection() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = proxy(&provider, "max_connections: 1").await?;
    call_through(&proxy, 2).await?;
    assert_eq!(
        metric(&proxy, "metaprotocol_upstream_cx_total{cluster=\"demo\"}"),
        1.0
    );
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}
