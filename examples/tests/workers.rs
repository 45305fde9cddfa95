//! A proxy with worker threads of its own (`ProxyBuilder::workers`): client connections are
//! spread over the workers, each worker opens its own upstream connections, and a worker that
//! cannot open one under the cluster's connection limit shares another worker's. Workers linger
//! before polling only while their clients pipeline (`ProxyBuilder::linger`), and otherwise look
//! at their sockets before they sleep while that pays (`ProxyBuilder::busy_poll`).

use std::time::Duration;

use futures::future::try_join_all;
use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::{Config, ExpositionFormat, Proxy, ProxyBuilder};

#[allow(dead_code)]
mod support;

use support::TestResult;
use support::metrics::promtool_problems;
use support::proxy::metric;

/// A proxy with two workers in front of `provider`, over cluster `demo` with one connection
/// per endpoint and `breakers` (YAML flow map items, or empty).
async fn proxy(provider: &DemoProvider, breakers: &str) -> TestResult<Proxy> {
    Ok(builder(provider, breakers)?.workers(2).start().await?)
}

/// A proxy of `provider` as [`proxy`] makes it, to be given its workers.
fn builder(provider: &DemoProvider, breakers: &str) -> TestResult<ProxyBuilder> {
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
    Ok(Proxy::builder(Config::from_yaml(&yaml)?).codecs(metaprotocol_examples::codec_registry()))
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

/// A proxy with one worker in front of `provider`, tuned by `tune`.
async fn one_worker_proxy(
    provider: &DemoProvider,
    tune: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
) -> TestResult<Proxy> {
    Ok(tune(builder(provider, "")?.workers(1)).start().await?)
}

/// A proxy with one worker that lingers `linger`.
async fn lingering_proxy(provider: &DemoProvider, linger: Duration) -> TestResult<Proxy> {
    one_worker_proxy(provider, |builder| builder.linger(linger)).await
}

/// Makes `rounds` rounds of `calls` calls at once on one client connection, all of which must
/// be answered by the provider.
async fn pipelined_calls(proxy: &Proxy, rounds: usize, calls: usize) -> TestResult {
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let client = DubboClient::new(address);
    for round in 0..rounds {
        let args: Vec<String> = (0..calls).map(|n| format!("r{round}-{n}")).collect();
        let replies =
            try_join_all(args.iter().map(|arg| client.call("sayHello", arg, &[]))).await?;
        for (n, reply) in replies.iter().enumerate() {
            assert_eq!(reply.dubbo_status, 20, "round {round}, call {n}");
        }
    }
    Ok(())
}

const LINGERS: &str = "metaprotocol_worker_lingers_total";
const LINGER_SECONDS: &str = "metaprotocol_worker_linger_seconds_sum";

/// A provider whose every answer takes long enough that a worker whose clients pipeline lingers,
/// whatever this machine's speed: its calls go round in 2 ms or more, and a worker lingers a
/// tenth of that (the longest linger here, a millisecond, does not cut it short).
async fn slow_provider() -> std::io::Result<DemoProvider> {
    DemoProvider::start_slow("p", Duration::from_millis(2)).await
}

#[tokio::test]
async fn a_worker_whose_clients_pipeline_lingers_and_answers_every_call() -> TestResult {
    let provider = slow_provider().await?;
    let proxy = lingering_proxy(&provider, Duration::from_millis(1)).await?;
    pipelined_calls(&proxy, 100, 16).await?;
    let lingers = metric(&proxy, LINGERS);
    assert!(lingers > 0.0, "the worker never lingered");
    // Each linger is a tenth of the round trip: 40 us or more (the shortest round trip that
    // lingers is 400 us), and under the longest the worker may wait, a millisecond (a tenth of
    // 2 ms is 200 us).
    let mean = metric(&proxy, LINGER_SECONDS) * 1e6 / lingers;
    assert!((40.0..1000.0).contains(&mean), "lingers of {mean} us");
    // The workers' series (there only with workers) are named as Prometheus wants too.
    let text = proxy.metrics().encode(ExpositionFormat::Prometheus);
    if let Some(problems) = promtool_problems(&text)? {
        assert!(problems.is_empty(), "promtool: {problems:#?}");
    }
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn clients_that_wait_for_each_answer_are_never_delayed() -> TestResult {
    let provider = slow_provider().await?;
    let proxy = lingering_proxy(&provider, Duration::from_millis(1)).await?;
    // Four clients on their own connections, one call at a time each: reads carry one request.
    for _ in 0..50 {
        call_through(&proxy, 4).await?;
    }
    assert_eq!(metric(&proxy, LINGERS), 0.0);
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_zero_linger_never_waits() -> TestResult {
    let provider = slow_provider().await?;
    let proxy = lingering_proxy(&provider, Duration::ZERO).await?;
    pipelined_calls(&proxy, 100, 16).await?;
    assert_eq!(metric(&proxy, LINGERS), 0.0);
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}

/// A proxy with one worker that busy polls for up to `budget`.
async fn busy_polling_proxy(provider: &DemoProvider, budget: Duration) -> TestResult<Proxy> {
    one_worker_proxy(provider, |builder| builder.busy_poll(budget)).await
}

const BUSY_POLLS: &str = "metaprotocol_worker_busy_polls_total";
const BUSY_POLL_MISSES: &str = "metaprotocol_worker_busy_poll_misses_total";

#[tokio::test]
async fn a_busy_polling_worker_finds_its_answers_without_sleeping() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    // A long budget, so that a look outlasts the provider's answer on any machine.
    let proxy = busy_polling_proxy(&provider, Duration::from_millis(20)).await?;
    for _ in 0..50 {
        call_through(&proxy, 1).await?;
    }
    let (looks, misses) = (metric(&proxy, BUSY_POLLS), metric(&proxy, BUSY_POLL_MISSES));
    assert!(looks > 0.0, "the worker never looked");
    assert!(misses < looks, "{misses} of {looks} looks found nothing");
    // A worker that lingers waits instead of looking; these clients never pipeline.
    assert_eq!(metric(&proxy, LINGERS), 0.0);
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_zero_busy_poll_never_looks() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let proxy = busy_polling_proxy(&provider, Duration::ZERO).await?;
    for _ in 0..20 {
        call_through(&proxy, 2).await?;
    }
    assert_eq!(metric(&proxy, BUSY_POLLS), 0.0);
    tokio::time::timeout(Duration::from_secs(20), proxy.shutdown()).await?;
    Ok(())
}

/// A client told to go away by a draining proxy that reconnects at once (a connection pool
/// replacing the connection) finds the listener closed, and keeps its connection: the listener
/// lets go of its socket before its connections are told to drain. Were they told first, the
/// reconnect would land in the backlog of the socket about to close, which then resets it and
/// the calls sent on it. The accept loop runs on this test's thread, here held while the
/// worker's connection could hear of the drain.
#[tokio::test]
async fn a_client_told_to_go_away_cannot_connect_to_the_socket_about_to_close() -> TestResult {
    use std::future::Future;
    use std::io::Read;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = DemoProvider::start("p").await?;
    let proxy = builder(&provider, "")?.workers(1).start().await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut client = tokio::net::TcpStream::connect(address).await?;
    client
        .write_all(&support::dubbo_request(1, "sayHello", &[]))
        .await?;
    let mut head = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut head)).await??;
    let mut body = vec![0u8; u32::from_be_bytes([head[12], head[13], head[14], head[15]]) as usize];
    client.read_exact(&mut body).await?;
    let client = client.into_std()?;
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_millis(500)))?;
    // The drain begins at the shutdown's first poll; this thread is then held, the accept loop
    // with it, while the worker serves the connection.
    let mut shutdown = Box::pin(proxy.shutdown());
    let polled = shutdown
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(polled.is_pending());
    let mut notice = [0u8; 18];
    if (&client).read_exact(&mut notice).is_ok() {
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "told to go away while the listener's socket still takes connections"
        );
    } else {
        client.set_nonblocking(true)?;
        let mut client = tokio::net::TcpStream::from_std(client)?;
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut notice)).await??;
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }
    assert_eq!(
        &notice[..3],
        &[0xda, 0xbb, 0xa2],
        "Dubbo's going-away event"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown).await?;
    Ok(())
}
