//! The request record and the filter API v2, end to end with Dubbo: every request's completion
//! hook runs exactly once, on every path, with the right flags, names and timings; filters keep
//! state from request to response, add mutations after waiting, and steer routing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metaprotocol_core::{
    ByteStr, CompleteContext, FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext,
    ResponseContext, ResponseFlags, ResponseStatus, Resume, Timings,
};
use metaprotocol_dubbo::build::{Call, request};
use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DEMO_VERSION, DemoProvider, DubboClient};
use metaprotocol_router::{Config, FilterRegistry, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[allow(dead_code)]
mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the completion hook saw of one request.
#[derive(Debug, Clone)]
struct Completed {
    method: String,
    flags: ResponseFlags,
    local_reply: Option<LocalReplyKind>,
    status: Option<ResponseStatus>,
    route: Option<String>,
    cluster: Option<String>,
    endpoint: Option<SocketAddr>,
    attempts: u32,
    timings: Timings,
    bytes_received: u64,
    bytes_sent: u64,
    had_response: bool,
}

/// The per-request state a filter keeps from request to response.
struct Ticket(&'static str);

/// One filter doing everything the tests look at: refuses `tenant=deny`, steers `x-lane` into
/// the `lane` routing key, keeps a [`Ticket`] and stamps it on the response, waits before
/// adding `x-waited` to requests that ask with `x-wait`, and records every completion.
struct Probe {
    completed: Arc<Mutex<Vec<Completed>>>,
}

impl L7Filter for Probe {
    fn name(&self) -> &str {
        "probe"
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        let metadata = &ctx.request.metadata;
        if metadata.get("tenant") == Some("deny") {
            return FilterDecision::Reply(LocalReply::new(
                LocalReplyKind::Unauthorized,
                "tenant deny is not welcome",
            ));
        }
        if let Some(lane) = metadata.get_shared("x-lane") {
            ctx.record
                .set_routing_key(ByteStr::from_static("lane"), lane);
        }
        ctx.record.extensions.insert(Ticket("kept"));
        if metadata.contains("x-wait") {
            return FilterDecision::Wait(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut resume = Resume::new(FilterDecision::Continue);
                resume.mutation.set(
                    ByteStr::from_static("x-waited"),
                    ByteStr::from_static("yes"),
                );
                resume
            }));
        }
        FilterDecision::Continue
    }

    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        if ctx.request.metadata.contains("x-stall-response") {
            return FilterDecision::Wait(Box::pin(std::future::pending()));
        }
        if let Some(ticket) = ctx.record.extensions.get::<Ticket>() {
            ctx.mutation.set(
                ByteStr::from_static("x-ticket"),
                ByteStr::from_static(ticket.0),
            );
        }
        FilterDecision::Continue
    }

    fn on_complete(&self, ctx: &CompleteContext<'_>) {
        let record = ctx.record;
        let completed = Completed {
            method: ctx
                .request
                .metadata
                .get("method")
                .map(|m| m.to_string())
                .unwrap_or_default(),
            flags: record.outcome.flags,
            local_reply: record.outcome.local_reply,
            status: record.outcome.status,
            route: record.route.as_deref().map(str::to_owned),
            cluster: record.cluster.as_deref().map(str::to_owned),
            endpoint: record.endpoint,
            attempts: record.attempts,
            timings: record.timings,
            bytes_received: record.bytes_received,
            bytes_sent: record.bytes_sent,
            had_response: ctx.response.is_some(),
        };
        if let Ok(mut log) = self.completed.lock() {
            log.push(completed);
        }
    }
}

/// Two providers (v1, v2), a server that resets every connection, and the proxy with the
/// probe filter.
struct World {
    v1: DemoProvider,
    v2: DemoProvider,
    reset: SocketAddr,
    proxy: Proxy,
    client: DubboClient,
    completed: Arc<Mutex<Vec<Completed>>>,
}

/// Accepts connections, reads a little, and closes them: every call on it is reset.
async fn resetting_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = socket.read(&mut buf).await;
        }
    });
    Ok(address)
}

impl World {
    async fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let v1 = DemoProvider::start_with_delay("v1", Duration::from_secs(1)).await?;
        let v2 = DemoProvider::start("v2").await?;
        let reset = resetting_server().await?;
        let yaml = format!(
            "listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, filters: [ {{ name: probe }} ] }}
route_configs:
  - name: r
    routes:
      - name: stalled
        match: {{ metadata: [ {{ key: x-stall-response, present: true }} ] }}
        route: {{ cluster: demo, subset: {{ version: v2 }} }}
        timeout: 300ms
      - name: canary
        match: {{ metadata: [ {{ key: lane, exact: canary }} ] }}
        route: {{ cluster: demo, subset: {{ version: v2 }} }}
      - name: broken
        match: {{ metadata: [ {{ key: method, exact: breakMe }} ] }}
        route: {{ cluster: broken }}
      - name: slow
        match: {{ metadata: [ {{ key: method, exact: sayHelloSlowly }}, {{ key: x-patient, present: false }} ] }}
        route: {{ cluster: demo, subset: {{ version: v1 }} }}
        timeout: 200ms
      - name: main
        match: {{ metadata: [ {{ key: interface, exact: {DEMO_SERVICE} }} ] }}
        route: {{ cluster: demo, subset: {{ version: v1 }} }}
clusters:
  - name: demo
    endpoints:
      - {{ address: {}, labels: {{ version: v1 }} }}
      - {{ address: {}, labels: {{ version: v2 }} }}
  - name: broken
    endpoints: [ {{ address: {reset} }} ]
",
            v1.address(),
            v2.address()
        );
        let completed = Arc::new(Mutex::new(Vec::new()));
        let mut filters = FilterRegistry::with_builtins();
        let log = completed.clone();
        filters.register("probe", move |_, _| {
            Ok(Arc::new(Probe {
                completed: log.clone(),
            }) as Arc<dyn L7Filter>)
        });
        let proxy = Proxy::builder(Config::from_yaml(&yaml)?)
            .codecs(metaprotocol_examples::codec_registry())
            .filters(filters)
            .start()
            .await?;
        let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
        Ok(Self {
            v1,
            v2,
            reset,
            proxy,
            client,
            completed,
        })
    }

    /// Waits until `n` requests completed, then returns them all.
    async fn completed(&self, n: usize) -> Result<Vec<Completed>, Box<dyn std::error::Error>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.completed.lock().map(|l| l.clone()).unwrap_or_default();
            if log.len() >= n || tokio::time::Instant::now() > deadline {
                return Ok(log);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Checks that the milestones are in order and returns the request's duration.
fn ordered(timings: &Timings) -> Duration {
    let received = timings.received;
    let answered = timings.answered.unwrap_or(received);
    for milestone in [timings.routed, timings.upstream_sent]
        .into_iter()
        .flatten()
    {
        assert!(
            received <= milestone && milestone <= answered,
            "{timings:?}"
        );
    }
    answered.duration_since(received)
}

#[tokio::test]
async fn a_forwarded_call_completes_once_with_route_cluster_endpoint_and_timings() -> TestResult {
    let world = World::start().await?;
    let reply = world.client.call("sayHello", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, 20);
    assert_eq!(
        reply.attachment("x-ticket"),
        Some("kept"),
        "state kept from request to response"
    );
    let done = world.completed(1).await?;
    assert_eq!(done.len(), 1, "{done:?}");
    let c = &done[0];
    assert!(c.flags.is_empty(), "{c:?}");
    assert_eq!(c.status, Some(ResponseStatus::Ok));
    assert_eq!(c.local_reply, None);
    assert_eq!(c.route.as_deref(), Some("main"));
    assert_eq!(c.cluster.as_deref(), Some("demo"));
    assert_eq!(c.endpoint, Some(world.v1.address()));
    assert_eq!(c.attempts, 1);
    assert!(c.had_response);
    assert!(c.timings.routed.is_some() && c.timings.upstream_sent.is_some());
    ordered(&c.timings);
    assert!(c.bytes_received > 16 && c.bytes_sent > 16, "{c:?}");
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn no_route_and_a_filter_refusal_complete_with_their_flags() -> TestResult {
    let world = World::start().await?;
    let lost = world
        .client
        .call_service("org.example.Missing", "sayHello", "a", &[])
        .await?;
    assert_eq!(lost.dubbo_status, 60);
    let denied = world
        .client
        .call("sayHello", "a", &[("tenant", "deny")])
        .await?;
    assert_eq!(denied.dubbo_status, 40);
    let done = world.completed(2).await?;
    assert_eq!(done.len(), 2, "{done:?}");
    let no_route = &done[0];
    assert!(
        no_route
            .flags
            .contains(ResponseFlags::NO_ROUTE | ResponseFlags::LOCAL_REPLY)
    );
    assert_eq!(no_route.local_reply, Some(LocalReplyKind::RouteNotFound));
    assert_eq!((no_route.route.as_deref(), no_route.attempts), (None, 0));
    assert!(no_route.bytes_sent > 0);
    let refused = &done[1];
    assert!(
        refused
            .flags
            .contains(ResponseFlags::UNAUTHORIZED | ResponseFlags::LOCAL_REPLY)
    );
    assert_eq!(refused.local_reply, Some(LocalReplyKind::Unauthorized));
    assert!(refused.timings.routed.is_none(), "refused before routing");
    assert!(world.v1.seen().is_empty() && world.v2.seen().is_empty());
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_timeout_and_a_reset_complete_with_their_flags() -> TestResult {
    let world = World::start().await?;
    let slow = world.client.call("sayHelloSlowly", "a", &[]).await?;
    assert_eq!(slow.dubbo_status, 31);
    let broken = world.client.call("breakMe", "a", &[]).await?;
    assert_eq!(broken.dubbo_status, 80);
    let done = world.completed(2).await?;
    assert_eq!(done.len(), 2, "{done:?}");
    let timeout = &done[0];
    assert!(
        timeout
            .flags
            .contains(ResponseFlags::UPSTREAM_TIMEOUT | ResponseFlags::LOCAL_REPLY)
    );
    assert_eq!(timeout.local_reply, Some(LocalReplyKind::Timeout));
    assert_eq!(timeout.route.as_deref(), Some("slow"));
    assert_eq!(timeout.endpoint, Some(world.v1.address()));
    let took = ordered(&timeout.timings);
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(900),
        "{took:?}"
    );
    let reset = &done[1];
    assert!(
        reset.flags.contains(ResponseFlags::UPSTREAM_RESET),
        "{reset:?}"
    );
    assert_eq!(reset.local_reply, Some(LocalReplyKind::UpstreamReset));
    assert_eq!(reset.endpoint, Some(world.reset));
    assert_eq!(reset.attempts, 1);
    world.proxy.shutdown().await;
    Ok(())
}

/// A response filter that never resumes: the call ends at the route's deadline with a timeout
/// that is the filter's, not the upstream's, which answered at once: not flagged as an
/// upstream timeout, nor counted as an attempt that timed out.
#[tokio::test]
async fn a_response_filter_that_never_resumes_is_not_an_upstream_timeout() -> TestResult {
    let world = World::start().await?;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        world
            .client
            .call("sayHello", "a", &[("x-stall-response", "1")]),
    )
    .await??;
    assert_eq!(reply.dubbo_status, 31, "the timeout error");
    assert!(
        !reply.body_contains("upstream") && reply.body_contains("filters"),
        "{:?}",
        String::from_utf8_lossy(&reply.frame)
    );
    let done = world.completed(1).await?;
    let stalled = done.first().ok_or("no completion")?;
    assert_eq!(stalled.local_reply, Some(LocalReplyKind::Timeout));
    assert!(
        !stalled.flags.contains(ResponseFlags::UPSTREAM_TIMEOUT),
        "{stalled:?}"
    );
    assert_eq!(stalled.endpoint, Some(world.v2.address()));
    let timeouts = support::metrics::sample(
        &world.proxy.metrics().render(),
        "metaprotocol_upstream_rq_timeout_total",
        &[("cluster", "demo")],
    );
    assert_eq!(timeouts, 0.0, "no attempt timed out");
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_one_way_call_completes_once_without_an_answer() -> TestResult {
    let world = World::start().await?;
    world.client.send_oneway("notify", "a", &[])?;
    let done = world.completed(1).await?;
    assert_eq!(done.len(), 1, "{done:?}");
    let c = &done[0];
    assert_eq!(c.method, "notify");
    assert!(c.flags.is_empty(), "{c:?}");
    assert_eq!((c.attempts, c.bytes_sent, c.had_response), (1, 0, false));
    assert_eq!(c.endpoint, Some(world.v1.address()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(world.completed(2).await?.len(), 1, "exactly once");
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_client_gone_mid_call_completes_with_downstream_termination() -> TestResult {
    let world = World::start().await?;
    let address = world.proxy.listener_addr("in").ok_or("no listener")?;
    let call = Call {
        service: DEMO_SERVICE,
        version: DEMO_VERSION,
        method: "sayHelloSlowly",
        string_args: &["a"],
        attachments: &[("x-patient", "yes")],
    };
    let mut socket = TcpStream::connect(address).await?;
    socket.write_all(&request(7, true, &call)).await?;
    // Wait until the call reached the provider, then vanish with a reset.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while world.v1.seen().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    socket.set_zero_linger()?;
    drop(socket);
    let done = world.completed(1).await?;
    assert_eq!(done.len(), 1, "{done:?}");
    let c = &done[0];
    assert!(
        c.flags
            .contains(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION),
        "{c:?}"
    );
    assert_eq!((c.bytes_sent, c.had_response), (0, false));
    assert!(
        ordered(&c.timings) < Duration::from_millis(900),
        "ended when the client went, not when the provider answered"
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_waiting_filter_adds_a_mutation_the_upstream_sees() -> TestResult {
    let world = World::start().await?;
    let reply = world
        .client
        .call("sayHello", "a", &[("x-wait", "1")])
        .await?;
    assert_eq!(reply.dubbo_status, 20);
    let seen = world.v1.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].metadata.get("x-waited"), Some("yes"));
    assert_eq!(reply.attachment("x-ticket"), Some("kept"));
    let done = world.completed(1).await?;
    assert_eq!(done.len(), 1);
    assert!(ordered(&done[0].timings) >= Duration::from_millis(20));
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_routing_key_set_by_a_filter_changes_the_route() -> TestResult {
    let world = World::start().await?;
    let steered = world
        .client
        .call("sayHello", "a", &[("x-lane", "canary")])
        .await?;
    assert_eq!(steered.attachment("provider"), Some("v2"));
    let plain = world.client.call("sayHello", "a", &[]).await?;
    assert_eq!(plain.attachment("provider"), Some("v1"));
    let done = world.completed(2).await?;
    assert_eq!(done[0].route.as_deref(), Some("canary"));
    assert_eq!(done[1].route.as_deref(), Some("main"));
    assert!(
        world.v2.seen()[0].metadata.get("lane").is_none(),
        "routing keys never reach the wire"
    );
    world.proxy.shutdown().await;
    Ok(())
}
