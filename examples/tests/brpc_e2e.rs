//! End-to-end bRPC (baidu_std) through the proxy: a client and servers built from the wire
//! format (`brpc_support`), the engine in process, everything on 127.0.0.1.
//!
//! Two servers, `alpha` and `beta`, sit behind the proxy. The tests route on service/method and
//! on a `user_fields` entry, check that request mutations reach the server and response mutations
//! the client, that the proxy's own errors arrive as brpc error codes, and that 100 concurrent
//! callers, all using brpc's first correlation id, share a few upstream connections.

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod brpc_support;
#[allow(dead_code)]
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use brpc_support::{BrpcClient, BrpcServer, Call, SLEEP};
use metaprotocol_brpc::errno;
use metaprotocol_router::Proxy;
use support::process::Scratch;
use support::proxy::{listener_addr, start_engine};
use support::{TestResult, refusing_addr};

const ECHO_SERVICE: &str = "example.EchoService";

/// Every test finishes within this time or fails.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

async fn bounded(test: impl Future<Output = TestResult>) -> TestResult {
    tokio::time::timeout(TEST_DEADLINE, test).await?
}

/// Active health checks calling `example.EchoService.Echo`, ten a second, that take an endpoint
/// out after two failures.
const ECHO_PROBES: &str = "health_check: { interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 1, probe: { method: example.EchoService.Echo } }";

/// A proxy whose listener `brpc-in` routes every call to cluster `c`, set up by `cluster`: its
/// settings past its name, as the entries of a YAML flow mapping (`endpoints: [ ... ], ...`).
async fn one_cluster_proxy(cluster: &str) -> TestResult<(Proxy, SocketAddr)> {
    let proxy = start_engine(&format!(
        "listeners: [ {{ name: brpc-in, address: 127.0.0.1:0, protocol: brpc, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, {cluster} }} ]
"
    ))
    .await?;
    let addr = listener_addr(&proxy, "brpc-in")?;
    Ok((proxy, addr))
}

/// A file holding `credentials` in a scratch directory for `test`, which goes with the
/// directory when it drops.
fn credentials_file(test: &str, credentials: &str) -> TestResult<(Scratch, PathBuf)> {
    let scratch = Scratch::new(&format!("brpc-e2e-{test}"))?;
    let path = scratch.path("credentials");
    std::fs::write(&path, credentials)?;
    Ok((scratch, path))
}

/// Waits until `done`, failing with `what` after 10 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let since = Instant::now();
    while !done() {
        assert!(since.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The proxy config: listener `brpc-in`, clusters `alpha`, `beta` and `down` (nothing listens).
/// Route `slow` (user field `slow: true`) times out after 300ms, route `echo` after 5s.
fn config(alpha: SocketAddr, beta: SocketAddr, down: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: brpc-in
    address: 127.0.0.1:0
    protocol: brpc
    codec: {{ max_frame_bytes: 1048576 }}
    route_config: brpc-routes
route_configs:
  - name: brpc-routes
    routes:
      - name: tenant-beta
        match:
          metadata:
            - {{ key: tenant, exact: beta }}
        route: {{ cluster: beta }}
        request_mutation: {{ set: {{ x-routed-by: tenant-beta }} }}
      - name: stats
        match:
          metadata:
            - {{ key: service, exact: example.AdminService }}
            - {{ key: method, prefix: Get }}
        route: {{ cluster: beta }}
      - name: down
        match:
          metadata:
            - {{ key: service, exact: example.DownService }}
        route: {{ cluster: down }}
      - name: slow
        match:
          metadata:
            - {{ key: service, exact: {ECHO_SERVICE} }}
            - {{ key: slow, exact: "true" }}
        route: {{ cluster: alpha }}
        timeout: 300ms
      - name: echo
        match:
          metadata:
            - {{ key: service, exact: {ECHO_SERVICE} }}
        route: {{ cluster: alpha }}
        timeout: 5s
        request_mutation: {{ set: {{ x-routed-by: echo }}, remove: [debug] }}
        response_mutation: {{ set: {{ x-served-via: metaprotocol }} }}
clusters:
  - name: alpha
    connect_timeout: 1s
    endpoints:
      - {{ address: "{alpha}" }}
  - name: beta
    connect_timeout: 1s
    endpoints:
      - {{ address: "{beta}" }}
  - name: down
    connect_timeout: 1s
    endpoints:
      - {{ address: "{down}" }}
"#
    )
}

/// Two servers and a proxy in front of them.
struct Setup {
    alpha: BrpcServer,
    beta: BrpcServer,
    proxy: Proxy,
    addr: SocketAddr,
    /// Holds the `down` cluster's endpoint refusing connections.
    _down: tokio::net::TcpSocket,
}

impl Setup {
    async fn start() -> TestResult<Self> {
        let alpha = BrpcServer::start("alpha").await?;
        let beta = BrpcServer::start("beta").await?;
        let (refusing, down) = refusing_addr()?;
        let yaml = config(alpha.addr(), beta.addr(), down);
        let proxy = start_engine(&yaml).await?;
        let addr = listener_addr(&proxy, "brpc-in")?;
        Ok(Self {
            alpha,
            beta,
            proxy,
            addr,
            _down: refusing,
        })
    }

    async fn client(&self) -> TestResult<BrpcClient> {
        BrpcClient::connect(self.addr).await
    }
}

#[tokio::test]
async fn routes_on_service_method_and_user_fields() -> TestResult {
    bounded(async {
        let setup = Setup::start().await?;
        let mut client = setup.client().await?;

        let echo = Call::new(ECHO_SERVICE, "Echo", "w1")
            .field("tenant", "t1")
            .field("debug", "1");
        let reply = client.call(&echo).await?;
        assert_eq!(reply.error_code(), 0, "{}", reply.error_text());
        assert_eq!(reply.body, echo.payload);
        assert_eq!(reply.field("server"), Some("alpha"));
        // The request mutation reached the server: set added, `debug` removed, the rest kept.
        assert_eq!(reply.field("echo-x-routed-by"), Some("echo"));
        assert_eq!(reply.field("echo-tenant"), Some("t1"));
        assert_eq!(reply.field("echo-debug"), None);
        // The response mutation reached the client.
        assert_eq!(reply.field("x-served-via"), Some("metaprotocol"));

        let reply = client
            .call(&Call::new(ECHO_SERVICE, "Echo", "w2").field("tenant", "beta"))
            .await?;
        assert_eq!(
            reply.field("server"),
            Some("beta"),
            "routed on a user field"
        );
        assert_eq!(reply.field("echo-x-routed-by"), Some("tenant-beta"));

        let reply = client
            .call(&Call::new("example.AdminService", "GetStats", "s"))
            .await?;
        assert_eq!(
            reply.field("server"),
            Some("beta"),
            "routed on service and method prefix"
        );

        // A server's own error passes through untouched.
        let reply = client.call(&Call::new(ECHO_SERVICE, "Fail", "x")).await?;
        assert_eq!(reply.error_code(), errno::EINTERNAL);
        assert_eq!(reply.error_text(), "[alpha][E2001]bad name");
        assert_eq!(reply.field("server"), Some("alpha"));

        assert_eq!((setup.alpha.requests(), setup.beta.requests()), (2, 2));
        setup.proxy.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn local_replies_carry_brpc_error_codes() -> TestResult {
    bounded(async {
        let setup = Setup::start().await?;
        let mut client = setup.client().await?;

        let reply = client
            .call(&Call::new("example.MissingService", "Nope", "x"))
            .await?;
        assert_eq!(
            reply.error_code(),
            errno::ENOMETHOD,
            "{}",
            reply.error_text()
        );
        assert!(
            reply
                .error_text()
                .starts_with("[metaprotocol-proxy][E1002] route_not_found")
        );
        assert!(
            reply.error_text().contains("example.MissingService"),
            "{}",
            reply.error_text()
        );
        assert!(reply.body.is_empty());

        let reply = client
            .call(&Call::new("example.DownService", "Echo", "x"))
            .await?;
        assert_eq!(
            reply.error_code(),
            errno::EFAILEDSOCKET,
            "{}",
            reply.error_text()
        );

        let started = Instant::now();
        let slow = Call::new(ECHO_SERVICE, "Sleep", "x").field("slow", "true");
        let reply = client.call(&slow).await?;
        assert_eq!(
            reply.error_code(),
            errno::ERPCTIMEDOUT,
            "{}",
            reply.error_text()
        );
        assert!(started.elapsed() < SLEEP, "the route's 300ms timeout fired");

        let mut streaming = Call::new(ECHO_SERVICE, "Echo", "x");
        streaming.streaming = true;
        let reply = client.call(&streaming).await?;
        assert_eq!(
            reply.error_code(),
            errno::EREQUEST,
            "{}",
            reply.error_text()
        );
        assert!(
            reply
                .error_text()
                .contains("streaming RPC is not supported")
        );

        // The connection survived every local reply.
        let reply = client
            .call(&Call::new(ECHO_SERVICE, "Echo", "after"))
            .await?;
        assert_eq!(reply.error_code(), 0);
        setup.proxy.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn caller_timeout_ms_caps_the_route_timeout() -> TestResult {
    bounded(async {
        let setup = Setup::start().await?;
        let mut client = setup.client().await?;
        // Route `echo` allows 5s; the caller allows 200ms; the server takes 2s.
        let mut call = Call::new(ECHO_SERVICE, "Sleep", "x");
        call.timeout_ms = Some(200);
        let started = Instant::now();
        let reply = client.call(&call).await?;
        assert_eq!(
            reply.error_code(),
            errno::ERPCTIMEDOUT,
            "{}",
            reply.error_text()
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(190) && elapsed < SLEEP,
            "{elapsed:?}"
        );
        setup.proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// A caller's `timeout_ms` runs from when its call reached the proxy: a wait in the filters (a
/// fault's delay here) uses it up, and the call is not forwarded after its caller gave up.
#[tokio::test]
async fn caller_timeout_ms_counts_the_time_held_in_the_filters() -> TestResult {
    bounded(async {
        let alpha = BrpcServer::start("alpha").await?;
        let yaml = format!(
            r#"
listeners:
  - name: brpc-in
    address: 127.0.0.1:0
    protocol: brpc
    route_config: r
    filters:
      - name: fault
        config:
          match: {{ metadata: [ {{ key: faulted, exact: "true" }} ] }}
          delay: {{ fixed_delay: 2s }}
route_configs:
  - name: r
    routes: [ {{ route: {{ cluster: alpha }}, timeout: 5s }} ]
clusters:
  - name: alpha
    endpoints: [ {{ address: "{}" }} ]
"#,
            alpha.addr()
        );
        let proxy = start_engine(&yaml).await?;
        let mut client = BrpcClient::connect(listener_addr(&proxy, "brpc-in")?).await?;
        let mut call = Call::new(ECHO_SERVICE, "Echo", "x").field("faulted", "true");
        call.timeout_ms = Some(300);
        let started = Instant::now();
        let reply = client.call(&call).await?;
        let elapsed = started.elapsed();
        assert_eq!(
            reply.error_code(),
            errno::ERPCTIMEDOUT,
            "{}",
            reply.error_text()
        );
        assert!(
            elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(1500),
            "answered when the caller's 300ms ran out, not after the 2s delay: {elapsed:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(alpha.requests(), 0, "never forwarded");
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// A proxy whose listener `brpc-in` routes every call to cluster `c` (the `server` alone) with
/// the route settings `route` (entries of a YAML flow mapping).
async fn one_route_proxy(server: SocketAddr, route: &str) -> TestResult<(Proxy, SocketAddr)> {
    let proxy = start_engine(&format!(
        "listeners: [ {{ name: brpc-in, address: 127.0.0.1:0, protocol: brpc, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, {route} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: \"{server}\" }} ] }} ]
"
    ))
    .await?;
    let addr = listener_addr(&proxy, "brpc-in")?;
    Ok((proxy, addr))
}

/// The server is told how long the proxy waits for its answer, as a brpc client tells it: a
/// route `timeout` shorter than the caller's `timeout_ms` goes as the request's `timeout_ms`,
/// at most the route's; a caller's own shorter one goes as it came, and a caller that sent
/// none (it did not ask for its servers to be told) sends none through the proxy either.
#[tokio::test]
async fn a_route_timeout_shorter_than_the_callers_reaches_the_server() -> TestResult {
    bounded(async {
        let server = BrpcServer::start("alpha").await?;
        let (proxy, addr) = one_route_proxy(server.addr(), "timeout: 300ms").await?;
        let mut client = BrpcClient::connect(addr).await?;
        for timeout_ms in [Some(5000), None, Some(200)] {
            let mut call = Call::new(ECHO_SERVICE, "Echo", "x");
            call.timeout_ms = timeout_ms;
            let reply = client.call(&call).await?;
            assert_eq!(reply.error_code(), 0, "{}", reply.error_text());
        }
        let seen = server.timeouts_seen();
        let told = |i: usize| seen.get(i).copied().flatten();
        assert!(
            told(0).is_some_and(|ms| (1..=300).contains(&ms)),
            "the caller asked for 5000 ms, the proxy waits 300 ms at most: the server was told {seen:?}"
        );
        assert_eq!(told(1), None, "a caller that sent none: {seen:?}");
        assert_eq!(told(2), Some(200), "a shorter caller's own goes as it came: {seen:?}");
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// A retry after an attempt's `per_try_timeout` tells the server the time left of the call's
/// deadline, and each attempt no more than its per-try timeout.
#[tokio::test]
async fn a_retry_after_a_per_try_timeout_tells_the_server_the_time_left() -> TestResult {
    bounded(async {
        let server = BrpcServer::start("alpha").await?;
        let (proxy, addr) = one_route_proxy(
            server.addr(),
            "timeout: 10s, retry_policy: { num_retries: 1, retry_on: [timeout], per_try_timeout: 600ms, idempotent_methods: [SleepOnce] }",
        )
        .await?;
        let mut client = BrpcClient::connect(addr).await?;
        // The first attempt sleeps past its 600 ms; the retry is answered at once.
        let mut call = Call::new(ECHO_SERVICE, "SleepOnce", "x");
        call.timeout_ms = Some(1000);
        let reply = client.call(&call).await?;
        assert_eq!(reply.error_code(), 0, "{}", reply.error_text());
        let seen = server.timeouts_seen();
        let [Some(first), Some(retry)] = seen[..] else {
            panic!("two attempts, each told a timeout: {seen:?}");
        };
        assert!(
            (1..=600).contains(&first),
            "the first attempt waited 600 ms at most, the server was told {seen:?}"
        );
        assert!(
            (1..=400).contains(&retry),
            "the retry began 600 ms into the caller's 1000 ms, the server was told {seen:?}"
        );
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn hundred_concurrent_callers_share_upstream_connections() -> TestResult {
    bounded(async {
        let setup = Setup::start().await?;
        let mut callers = tokio::task::JoinSet::new();
        for caller in 0..100 {
            let addr = setup.addr;
            callers.spawn(async move {
                let mut client = BrpcClient::connect(addr).await?;
                for round in 0..3 {
                    let message = format!("caller-{caller}-round-{round}");
                    let call = Call::new(ECHO_SERVICE, "Echo", &message)
                        .field("caller", &caller.to_string());
                    // Every client starts at the same brpc correlation id: the proxy must
                    // rewrite ids on the shared connections and restore each client's own.
                    let reply = client.call(&call).await?;
                    if reply.body != call.payload
                        || reply.field("echo-caller") != Some(caller.to_string().as_str())
                    {
                        return Err(format!("caller {caller} got another caller's answer").into());
                    }
                }
                TestResult::Ok(())
            });
        }
        while let Some(result) = callers.join_next().await {
            result??;
        }
        assert_eq!(setup.alpha.requests(), 300);
        let upstream = setup.alpha.connections();
        assert!(
            (1..=8).contains(&upstream),
            "{upstream} upstream connections for 100 callers"
        );
        setup.proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// Active health checks calling `example.EchoService.Echo` with an empty payload: the server
/// answers the probes and stays in rotation; an endpoint where nothing listens leaves it.
#[tokio::test]
async fn method_probes_keep_a_live_server_and_drop_a_dead_one() -> TestResult {
    bounded(async {
        let server = BrpcServer::start("probed").await?;
        let (_down, dead) = refusing_addr()?;
        let (proxy, _) = one_cluster_proxy(&format!(
            "endpoints: [ {{ address: \"{}\" }}, {{ address: \"{dead}\" }} ], {ECHO_PROBES}",
            server.addr()
        ))
        .await?;
        // Failing a check, not only awaiting its first (every endpoint starts out so).
        let failing = |i: usize| {
            let endpoint = &proxy.clusters()[0].endpoints[i];
            endpoint.failing_active_checks && !endpoint.awaiting_first_check
        };
        until("the dead endpoint stayed in", || failing(1)).await;
        until("the server was not probed", || server.requests() >= 3).await;
        assert!(!failing(0), "the server answers the probes");
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// A caller's `timeout_ms`, shorter than the route's timeout, ends its calls without saying
/// anything about the endpoint: however many of them time out, outlier detection does not
/// eject it (else a client could take healthy endpoints out of rotation). The route's own
/// timeout does count against the endpoint: two calls it ends eject it.
#[tokio::test]
async fn only_the_routes_own_timeout_counts_against_the_endpoint() -> TestResult {
    bounded(async {
        let alpha = BrpcServer::start("alpha").await?;
        let beta = BrpcServer::start("beta").await?;
        let (_down, down) = refusing_addr()?;
        let yaml = config(alpha.addr(), beta.addr(), down).replacen(
            "  - name: alpha\n    connect_timeout: 1s\n",
            "  - name: alpha\n    connect_timeout: 1s\n    outlier_detection: { consecutive_errors: 2, interval: 100ms, base_ejection_time: 30s, max_ejection_percent: 100 }\n",
            1,
        );
        let proxy = start_engine(&yaml).await?;
        let mut client = BrpcClient::connect(listener_addr(&proxy, "brpc-in")?).await?;
        let ejected = || {
            proxy
                .clusters()
                .into_iter()
                .filter(|c| c.name == "alpha")
                .flat_map(|c| c.endpoints)
                .any(|e| e.ejected)
        };
        // Route `echo` allows 5s; the caller allows 100ms; the server takes 2s.
        for _ in 0..3 {
            let mut call = Call::new(ECHO_SERVICE, "Sleep", "x");
            call.timeout_ms = Some(100);
            let reply = client.call(&call).await?;
            assert_eq!(reply.error_code(), errno::ERPCTIMEDOUT);
        }
        // The detector looks as soon as a streak reaches its threshold, and every 100ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!ejected(), "ejected for the caller's own deadlines");
        // Route `slow` times out after 300ms: its own timeout.
        for _ in 0..2 {
            let call = Call::new(ECHO_SERVICE, "Sleep", "x").field("slow", "true");
            let reply = client.call(&call).await?;
            assert_eq!(reply.error_code(), errno::ERPCTIMEDOUT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ejected() {
            if Instant::now() > deadline {
                return Err("not ejected after two calls the route's timeout ended".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// An answer over the cluster's `max_frame_bytes` fails its own call, with `EINTERNAL`; the
/// proxy passes over its bytes and the call answered after it on the same upstream connection
/// gets its answer (before, the connection closed and both calls failed with `EFAILEDSOCKET`).
#[tokio::test]
async fn an_answer_over_the_frame_limit_fails_its_call_alone() -> TestResult {
    use bytes::BytesMut;
    use metaprotocol_brpc::{BrpcCodec, encode_frame, proto};
    use metaprotocol_core::Side;

    bounded(async {
        let (upstream, server) = support::big_answer::start_upstream(
            || Box::new(BrpcCodec::new(Side::Downstream, 1 << 20)),
            ["Big", "Small"],
            |id, payload| {
                let meta = proto::RpcMeta {
                    response: Some(proto::RpcResponseMeta::default()),
                    correlation_id: Some(id as i64),
                    ..Default::default()
                };
                let mut out = BytesMut::new();
                encode_frame(&meta, payload, &mut out)?;
                Ok(out)
            },
        )
        .await?;
        let (proxy, addr) = one_cluster_proxy(&format!(
            "codec: {{ max_frame_bytes: 16384 }}, endpoints: [ {{ address: \"{upstream}\" }} ]"
        ))
        .await?;
        let (mut big_client, mut small_client) = (
            BrpcClient::connect(addr).await?,
            BrpcClient::connect(addr).await?,
        );
        let big_call = Call::new(ECHO_SERVICE, "Big", "a");
        let big = big_client.call(&big_call);
        let small = async {
            // After `Big`, so that it waits behind `Big`'s answer.
            tokio::time::sleep(Duration::from_millis(100)).await;
            small_client
                .call(&Call::new(ECHO_SERVICE, "Small", "a"))
                .await
        };
        let (big, small) = tokio::join!(big, small);
        let (big, small) = (big?, small?);
        assert_eq!(big.error_code(), errno::EINTERNAL, "{}", big.error_text());
        assert_eq!(small.error_code(), 0, "{}", small.error_text());
        assert_eq!(small.body, b"fits");
        support::big_answer::assert_one_answer_passed_over(&proxy);
        proxy.shutdown().await;
        server.abort();
        Ok(())
    })
    .await
}

/// A proxy in front of `server`, whose cluster takes `codec` options and active health checks
/// calling `Echo`.
async fn guarded_proxy(server: &BrpcServer, codec: &str) -> TestResult<(Proxy, SocketAddr)> {
    one_cluster_proxy(&format!(
        "codec: {codec}, endpoints: [ {{ address: \"{}\" }} ], \
         health_check: {{ interval: 100ms, probe: {{ method: {ECHO_SERVICE}.Echo }} }}",
        server.addr()
    ))
    .await
}

/// A brpc server with an authenticator checks the credentials of a connection's first request
/// only and runs every later call on it under them. With its own credentials in the cluster's
/// codec options, the proxy authenticates each upstream connection as itself, health-check
/// probes' included: a client whose bad credentials happen to go first neither breaks the
/// shared connection nor lends it an identity, and every client's calls run as the proxy.
#[tokio::test]
async fn the_proxy_authenticates_its_upstream_connections_as_itself() -> TestResult {
    bounded(async {
        let server = BrpcServer::start_authenticating("guarded", &["proxy-token"]).await?;
        let (_scratch, credentials) = credentials_file("as-itself", "proxy-token\n")?;
        let codec = format!(
            "{{ authentication_data_file: \"{}\" }}",
            credentials.display()
        );
        let (proxy, addr) = guarded_proxy(&server, &codec).await?;
        let mut bad = BrpcClient::connect(addr).await?;
        let mut plain = BrpcClient::connect(addr).await?;
        let first = bad
            .call(&Call::new(ECHO_SERVICE, "Echo", "a").authenticated("stolen-token"))
            .await?;
        let second = plain.call(&Call::new(ECHO_SERVICE, "Echo", "b")).await?;
        for reply in [&first, &second] {
            assert_eq!(reply.error_code(), 0, "{}", reply.error_text());
            assert_eq!(reply.field("identity"), Some("proxy-token"));
        }
        // Probes, on a connection of their own, authenticate it the same way.
        until("no probes came", || server.requests() >= 4).await;
        let seen = server.credentials_seen();
        assert!(seen.iter().all(|c| c == "proxy-token"), "{seen:?}");
        assert_eq!(
            seen.len(),
            server.connections(),
            "once per connection: {seen:?}"
        );
        assert!(!proxy.clusters()[0].endpoints[0].failing_active_checks);
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// Without credentials of its own, the proxy relays none of its clients': a client's
/// credentials on the shared upstream connection would authenticate it for every other
/// client's calls. The server, seeing none, refuses the calls (`ERPCAUTH`) rather than run a
/// client's under another's identity.
#[tokio::test]
async fn a_clients_credentials_are_not_relayed_onto_a_shared_connection() -> TestResult {
    bounded(async {
        let server = BrpcServer::start_authenticating("guarded", &["client-token"]).await?;
        let (proxy, addr) = guarded_proxy(&server, "{}").await?;
        let mut owner = BrpcClient::connect(addr).await?;
        let mut other = BrpcClient::connect(addr).await?;
        let first = owner
            .call(&Call::new(ECHO_SERVICE, "Echo", "a").authenticated("client-token"))
            .await?;
        let second = other.call(&Call::new(ECHO_SERVICE, "Echo", "b")).await?;
        for reply in [&second, &first] {
            assert_eq!(reply.field("identity"), None, "{:?}", reply.meta);
            assert_ne!(reply.error_code(), 0);
        }
        assert_eq!(server.credentials_seen(), Vec::<String>::new());
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// A server that refuses the proxy's credentials answers every probe, with `ERPCAUTH`, and
/// serves none of the proxy's calls: the probes fail, and the endpoint leaves rotation.
#[tokio::test]
async fn probes_refused_credentials_take_the_endpoint_out() -> TestResult {
    let server = BrpcServer::start_authenticating("guarded", &["proxy-token"]).await?;
    probes_fail_against(server).await
}

/// A brpc server before 1.11 closes the probe's connection without an answer: no answer, the
/// probe fails as well.
#[tokio::test]
async fn probes_whose_connection_is_closed_unanswered_take_the_endpoint_out() -> TestResult {
    let server = BrpcServer::start_authenticating_before_1_11("guarded", &["proxy-token"]).await?;
    probes_fail_against(server).await
}

/// Health checks calling `Echo` on `server`, which refuses the proxy's credentials, take its
/// endpoint out of rotation.
async fn probes_fail_against(server: BrpcServer) -> TestResult {
    bounded(async {
        let (proxy, _) = one_cluster_proxy(&format!(
            "endpoints: [ {{ address: \"{}\" }} ], {ECHO_PROBES}",
            server.addr()
        ))
        .await?;
        // Failing a check, not only awaiting its first (every endpoint starts out so).
        let failing = || {
            let endpoint = &proxy.clusters()[0].endpoints[0];
            endpoint.failing_active_checks && !endpoint.awaiting_first_check
        };
        // A check sends its probe once the one before it was judged: with six received, five
        // were, over the threshold of two.
        while !failing() && server.requests() < 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(failing(), "{} probes refused", server.requests());
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// A brpc server that does not accept the proxy's credentials answers a connection's first call
/// `ERPCAUTH` and closes it. The proxy backs off opening the next connection, as after a failed
/// connect: calls in a row cost the server a few connections, not one each. Once the server
/// accepts them, calls succeed again within the longest pause.
#[tokio::test]
async fn refused_credentials_back_off_new_connections() -> TestResult {
    let server = BrpcServer::start_authenticating("guarded", &["proxy-token"]).await?;
    bounded(refusals_back_off(server, "answered")).await
}

/// A brpc server before 1.11 refuses the proxy's credentials by closing the connection
/// without an answer: the proxy backs off opening the next connection all the same.
#[tokio::test]
async fn credentials_refused_by_closing_back_off_new_connections() -> TestResult {
    let server = BrpcServer::start_authenticating_before_1_11("guarded", &["proxy-token"]).await?;
    bounded(refusals_back_off(server, "closed")).await
}

/// Calls through a proxy whose credentials `server` refuses open few connections, and succeed
/// once it accepts them.
async fn refusals_back_off(server: BrpcServer, name: &str) -> TestResult {
    let (_scratch, credentials) = credentials_file(&format!("refused-{name}"), "stale-token\n")?;
    let (proxy, addr) = one_cluster_proxy(&format!(
        "codec: {{ authentication_data_file: \"{}\" }}, endpoints: [ {{ address: \"{}\" }} ]",
        credentials.display(),
        server.addr()
    ))
    .await?;
    let mut client = BrpcClient::connect(addr).await?;
    const CALLS: usize = 20;
    let mut backing_off = 0;
    for n in 0..CALLS {
        let reply = client.call(&Call::new(ECHO_SERVICE, "Echo", "a")).await?;
        match reply.error_code() {
            errno::ERPCAUTH => {}
            // A call may reach the connection the server is closing (an upstream reset).
            errno::EFAILEDSOCKET => {
                if reply
                    .error_text()
                    .contains("refused the proxy's credentials")
                {
                    backing_off += 1;
                }
            }
            code => panic!("call {n}: {code} {}", reply.error_text()),
        }
    }
    // Without the backoff, every call opened a connection. With it, the pauses (at least
    // 50 ms, then doubling) allow a handful, however slowly the calls go.
    assert!(
        server.connections() <= CALLS / 2,
        "{} connections for {CALLS} calls",
        server.connections()
    );
    assert!(backing_off >= CALLS / 2, "{backing_off}");
    // `/clusters` shows the backoff, and how many refusals led to it.
    let endpoint = || proxy.clusters()[0].endpoints[0].clone();
    assert!(endpoint().credential_refusals >= 1, "{:?}", endpoint());
    server.set_accepted(&["stale-token"]);
    let accepting_since = Instant::now();
    loop {
        let reply = client.call(&Call::new(ECHO_SERVICE, "Echo", "b")).await?;
        if reply.error_code() == 0 {
            break;
        }
        // The longest pause is 5 s.
        assert!(
            accepting_since.elapsed() < Duration::from_secs(20),
            "{}",
            reply.error_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = client.call(&Call::new(ECHO_SERVICE, "Echo", "c")).await?;
    assert_eq!(reply.field("identity"), Some("stale-token"));
    assert_eq!(endpoint().credential_refusals, 0, "ended by an answer");
    proxy.shutdown().await;
    Ok(())
}

/// Rotating the credentials file in place reaches the proxy without a config change: the
/// upstream connections it opens after send the new credentials, while a connection that
/// authenticated with the old ones keeps serving (brpc authenticates a connection once). A file
/// that vanishes keeps the last good credentials, its failure counted once.
#[tokio::test]
async fn rotated_credentials_reach_new_connections_and_old_ones_keep_working() -> TestResult {
    bounded(async {
        let server = BrpcServer::start_authenticating("guarded", &["token-1", "token-2"]).await?;
        let (_scratch, credentials) = credentials_file("rotated", "token-1\n")?;
        // Each connection carries two requests, then another opens: the calls below reach
        // new connections without the server closing any.
        let (proxy, addr) = one_cluster_proxy(&format!(
            "codec: {{ authentication_data_file: \"{}\" }}, max_requests_per_connection: 2, \
             endpoints: [ {{ address: \"{}\" }} ]",
            credentials.display(),
            server.addr()
        ))
        .await?;
        let reloads = |outcome: &str| -> f64 {
            let outcome = format!("outcome=\"{outcome}\"");
            proxy
                .metrics()
                .render()
                .lines()
                .filter(|line| line.starts_with("metaprotocol_codec_file_reloads_total{"))
                .filter(|line| line.contains("cluster=\"c\"") && line.contains(&outcome))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let mut old = BrpcClient::connect(addr).await?;
        let mut new = BrpcClient::connect(addr).await?;
        let reply = old.call(&Call::new(ECHO_SERVICE, "Echo", "a")).await?;
        assert_eq!(
            reply.field("identity"),
            Some("token-1"),
            "{}",
            reply.error_text()
        );
        std::fs::write(&credentials, "token-2\n")?;
        until("the rotated file was not re-read", || {
            reloads("applied") >= 1.0
        })
        .await;
        // The first connection's last call, slow, is in flight on it while the next opens.
        let sleep = Call::new(ECHO_SERVICE, "Sleep", "b");
        let slow = old.call(&sleep);
        let rotated = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for _ in 0..50 {
                let reply = new.call(&Call::new(ECHO_SERVICE, "Echo", "c")).await?;
                assert_eq!(reply.error_code(), 0, "{}", reply.error_text());
                if reply.field("identity") == Some("token-2") {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            TestResult::Err("no new connection sent the new credentials".into())
        };
        let (slow, rotated) = tokio::join!(slow, rotated);
        rotated?;
        let slow = slow?;
        assert_eq!(slow.error_code(), 0, "{}", slow.error_text());
        assert_eq!(
            slow.field("identity"),
            Some("token-1"),
            "the old connection kept its own"
        );
        let seen = server.credentials_seen();
        assert_eq!(
            seen.first().map(String::as_str),
            Some("token-1"),
            "{seen:?}"
        );
        assert!(
            seen.len() >= 2 && seen[1..].iter().all(|c| c == "token-2"),
            "{seen:?}"
        );
        // Gone: the last good credentials stay, the failure is counted once.
        std::fs::remove_file(&credentials)?;
        until("the vanished file was not noticed", || {
            reloads("rejected") >= 1.0
        })
        .await;
        for call in ["d", "e", "f"] {
            let reply = new.call(&Call::new(ECHO_SERVICE, "Echo", call)).await?;
            assert_eq!(
                reply.field("identity"),
                Some("token-2"),
                "{}",
                reply.error_text()
            );
        }
        assert_eq!(
            server.credentials_seen().last().map(String::as_str),
            Some("token-2")
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(reloads("rejected"), 1.0, "counted once while it lasts");
        assert_eq!(reloads("applied"), 1.0);
        proxy.shutdown().await;
        Ok(())
    })
    .await
}

/// `authentication_data_file` is the proxy's own credentials, for its servers: on a listener it
/// would mean nothing, and is refused by name.
#[tokio::test]
async fn a_listener_takes_no_credentials() -> TestResult {
    bounded(async {
        let refused = start_engine(
            "listeners: [ { name: brpc-in, address: 127.0.0.1:0, protocol: brpc, route_config: r, codec: { authentication_data_file: t } } ]
route_configs: [ { name: r, routes: [ { route: { cluster: c } } ] } ]
clusters: [ { name: c, endpoints: [ { address: \"127.0.0.1:1\" } ] } ]
",
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            refused.contains("listeners[0].codec.authentication_data_file")
                && refused.contains("a cluster's option only"),
            "{refused}"
        );
        Ok(())
    })
    .await
}
