//! The engine as a client (`RouterClient`), against the demo Dubbo providers over loopback:
//! calls built with `metaprotocol_dubbo::build` are routed by the route config, balanced over
//! the cluster, retried past a dead endpoint, bounded by the route's timeout, filtered by the
//! client's filter chain, and composed with tower layers; completion hooks run exactly once,
//! also for calls the caller gives up on.

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metaprotocol_core::{
    CompleteContext, FilterDecision, L7Filter, LocalReplyKind, Message, RequestContext,
    ResponseContext, ResponseFlags,
};
use metaprotocol_dubbo::build::{Call, ResponseBody, request_message, response_body};
use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DEMO_VERSION, DemoProvider, SLOW_METHOD};
use metaprotocol_router::config::FilterSpec;
use metaprotocol_router::{Config, FilterRegistry, RouterClient};
use tower::{Service, ServiceBuilder, ServiceExt};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A call of `method` of the demo service, built as a gateway would.
fn call(method: &str, attachments: &[(&str, &str)]) -> Message {
    call_service(DEMO_SERVICE, method, attachments)
}

fn call_service(service: &str, method: &str, attachments: &[(&str, &str)]) -> Message {
    request_message(&Call {
        service,
        version: DEMO_VERSION,
        method,
        string_args: &["ada"],
        attachments,
    })
    .unwrap_or_else(|err| panic!("cannot build a call: {err}"))
}

fn config(
    v1: SocketAddr,
    v2: SocketAddr,
    dead: SocketAddr,
) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
    config_balanced_by(v1, v2, dead, "round_robin")
}

/// [`config`] with the cluster balanced by `lb_policy`.
fn config_balanced_by(
    v1: SocketAddr,
    v2: SocketAddr,
    dead: SocketAddr,
    lb_policy: &str,
) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Config::from_yaml(&format!(
        r#"
route_configs:
  - name: services
    routes:
      - name: batch
        match: {{ metadata: [ {{ key: batchJob, exact: "true" }} ] }}
        route: {{ cluster: demo, subset: {{ version: v2 }} }}
        response_mutation: {{ set: {{ x-route: batch }} }}
      - name: slow
        match: {{ metadata: [ {{ key: method, exact: {slow} }} ] }}
        route: {{ cluster: demo, subset: {{ version: v1 }} }}
        timeout: 200ms
        retry_policy: {{ num_retries: 2, retry_on: [connect_failure] }}
      - name: users
        match: {{ metadata: [ {{ key: interface, exact: {DEMO_SERVICE} }} ] }}
        route: {{ cluster: demo, subset: {{ version: v1 }} }}
        retry_policy: {{ num_retries: 2, retry_on: [connect_failure] }}
        response_mutation: {{ set: {{ x-route: users }} }}
clusters:
  - name: demo
    lb_policy: {lb_policy}
    connect_timeout: 500ms
    endpoints:
      - {{ address: "{dead}", labels: {{ version: v1 }} }}
      - {{ address: "{v1}", labels: {{ version: v1 }} }}
      - {{ address: "{v2}", labels: {{ version: v2 }} }}
"#,
        slow = SLOW_METHOD,
    ))?)
}

/// Two providers, a dead endpoint in the v1 subset, and a client over them.
struct World {
    v1: DemoProvider,
    v2: DemoProvider,
    client: RouterClient,
    /// Holds the dead endpoint's port, refusing connections.
    _down: tokio::net::TcpSocket,
}

async fn world(
    filters: Vec<FilterSpec>,
    registry: FilterRegistry,
) -> Result<World, Box<dyn std::error::Error + Send + Sync>> {
    let v1 = DemoProvider::start_with_delay("v1", Duration::from_secs(5)).await?;
    let v2 = DemoProvider::start("v2").await?;
    let (down, dead) = support::refusing_addr()?;
    let client = RouterClient::builder(config(v1.address(), v2.address(), dead)?)
        .codecs(metaprotocol_examples::codec_registry())
        .filter_registry(registry)
        .filters(filters)
        .protocol("dubbo")
        .build()
        .await?;
    Ok(World {
        v1,
        v2,
        client,
        _down: down,
    })
}

fn provider_of(response: &Message) -> Option<&str> {
    response.metadata.get("provider")
}

#[tokio::test]
async fn calls_are_routed_retried_and_answered() -> TestResult {
    let world = world(Vec::new(), FilterRegistry::with_builtins()).await?;
    // Half the v1 subset refuses connections: every call still gets there, by retrying.
    for _ in 0..6 {
        let response = world.client.call(call("sayHello", &[])).await?;
        assert_eq!(provider_of(&response), Some("v1"));
        assert_eq!(response.metadata.get("x-route"), Some("users"));
        assert_eq!(
            response_body(&response.frame)?,
            ResponseBody::Value("Hello from v1".into())
        );
    }
    let batch = world
        .client
        .call(call("sayHello", &[("batchJob", "true")]))
        .await?;
    assert_eq!(provider_of(&batch), Some("v2"));
    assert_eq!(world.v2.seen().len(), 1);
    assert_eq!(world.v1.seen().len(), 6);
    let metrics = world.client.metrics().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("metaprotocol_upstream_rq_retry_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    Ok(())
}

/// The subsets of a `ring_hash` cluster, whose tables the client builds off its thread, are
/// built before the client routes: each call gets to its subset's provider.
#[tokio::test]
async fn a_ring_hash_clients_subsets_are_built_before_it_routes() -> TestResult {
    let v1 = DemoProvider::start("v1").await?;
    let v2 = DemoProvider::start("v2").await?;
    let (_down, dead) = support::refusing_addr()?;
    let config = config_balanced_by(v1.address(), v2.address(), dead, "ring_hash")?;
    let client = RouterClient::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .protocol("dubbo")
        .build()
        .await?;
    let batch = client
        .call(call("sayHello", &[("batchJob", "true")]))
        .await?;
    assert_eq!(provider_of(&batch), Some("v2"));
    let users = client.call(call("sayHello", &[])).await?;
    assert_eq!(provider_of(&users), Some("v1"));
    Ok(())
}

#[tokio::test]
async fn no_route_and_timeouts_are_call_errors() -> TestResult {
    let world = world(Vec::new(), FilterRegistry::with_builtins()).await?;
    let err = world
        .client
        .call(call_service("org.example.Unknown", "x", &[]))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(LocalReplyKind::RouteNotFound));
    let err = world
        .client
        .call(call(SLOW_METHOD, &[]))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(LocalReplyKind::Timeout));
    Ok(())
}

#[tokio::test]
async fn the_filter_chain_runs_on_every_call() -> TestResult {
    let filters = vec![FilterSpec {
        name: "lua".into(),
        stat_name: None,
        config: serde_json::json!({ "source": include_str!("../filters/tenant.lua"), "counters": ["fast_lane"] }),
    }];
    let world = world(filters, FilterRegistry::with_builtins()).await?;
    let refused = world.client.call(call("sayHello", &[])).await.err();
    assert_eq!(
        refused.map(|e| e.kind()),
        Some(LocalReplyKind::Unauthorized)
    );
    let served = world
        .client
        .call(call("sayHello", &[("tenant", "t1")]))
        .await?;
    assert_eq!(served.metadata.get("x-tenant-echo"), Some("t1"));
    let seen = world.v1.seen();
    let tag = seen
        .last()
        .and_then(|r| r.metadata.get_shared("x-filtered-by"));
    assert_eq!(tag.as_ref().map(|t| t.as_str()), Some("lua:t1"));
    Ok(())
}

/// Records the flags of every completed call.
struct Completions(Arc<Mutex<Vec<ResponseFlags>>>);

impl L7Filter for Completions {
    fn name(&self) -> &str {
        "completions"
    }

    fn on_request(&self, _ctx: &mut RequestContext<'_>) -> FilterDecision {
        FilterDecision::Continue
    }

    fn on_complete(&self, ctx: &CompleteContext<'_>) {
        if let Ok(mut seen) = self.0.lock() {
            seen.push(ctx.record.outcome.flags);
        }
    }
}

#[tokio::test]
async fn tower_layers_compose_and_abandoned_calls_complete_once() -> TestResult {
    let completed = Arc::new(Mutex::new(Vec::new()));
    let mut registry = FilterRegistry::with_builtins();
    let log = completed.clone();
    registry.register("completions", move |_, _| {
        Ok(Arc::new(Completions(log.clone())) as Arc<dyn L7Filter>)
    });
    let filters = vec![FilterSpec {
        name: "completions".into(),
        stat_name: None,
        config: serde_json::Value::Null,
    }];
    let world = world(filters, registry).await?;
    let mut service = ServiceBuilder::new()
        .concurrency_limit(4)
        .timeout(Duration::from_millis(50))
        .service(world.client.clone());
    // The slow provider takes 5 s; the route allows 200 ms; the tower layer, 50 ms: the layer
    // wins, and the engine sees a caller that went away.
    let err = service
        .ready()
        .await?
        .call(call(SLOW_METHOD, &[]))
        .await
        .err()
        .ok_or("the slow call succeeded")?;
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    let answered = service.ready().await?.call(call("sayHello", &[])).await?;
    assert_eq!(provider_of(&answered), Some("v1"));
    let completed = completed.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(
        completed,
        vec![
            ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            ResponseFlags::NONE
        ]
    );
    Ok(())
}

/// A call its caller gives up on (its own timeout, shorter than the route's) leaves its answer
/// to nobody: when the answer comes, it is counted with the cluster's unmatched ones, as one
/// that comes past the route's deadline is.
#[tokio::test]
async fn an_answer_to_a_call_its_caller_gave_up_on_is_counted_unmatched() -> TestResult {
    let provider = DemoProvider::start_with_delay("slow", Duration::from_millis(300)).await?;
    let client = RouterClient::builder(Config::from_yaml(&format!(
        "route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ] }} ]
",
        provider.address()
    ))?)
    .codecs(metaprotocol_examples::codec_registry())
    .protocol("dubbo")
    .build()
    .await?;
    let given_up = tokio::time::timeout(
        Duration::from_millis(50),
        client.call(call(SLOW_METHOD, &[])),
    )
    .await;
    assert!(
        given_up.is_err(),
        "the slow call ended before its caller gave up"
    );
    let unmatched = "metaprotocol_upstream_unmatched_responses_total{cluster=\"c\"} 1";
    let counted = async {
        while !client.metrics().render().contains(unmatched) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), counted)
        .await
        .map_err(|_| {
            let text = client.metrics().render();
            let unmatched: Vec<&str> = text.lines().filter(|l| l.contains("unmatched")).collect();
            unmatched.join("\n")
        })?;
    Ok(())
}

/// Waits for ever, on the request or on the response, as its call's `stall` attachment says:
/// a filter whose wait never ends (a lost answer of an authorization service).
struct Stall;

impl Stall {
    fn decide(request: &Message, stage: &str) -> FilterDecision {
        if request.metadata.get("stall") == Some(stage) {
            FilterDecision::Wait(Box::pin(std::future::pending()))
        } else {
            FilterDecision::Continue
        }
    }
}

impl L7Filter for Stall {
    fn name(&self) -> &str {
        "stall"
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        Self::decide(ctx.request, "request")
    }

    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        Self::decide(ctx.request, "response")
    }
}

/// A call whose filters never resume ends as a proxy's request does: its request filters
/// within the call's own timeout, its response filters within the route's deadline.
#[tokio::test]
async fn a_call_whose_filters_never_resume_times_out() -> TestResult {
    let mut registry = FilterRegistry::with_builtins();
    registry.register("stall", |_, _| Ok(Arc::new(Stall) as Arc<dyn L7Filter>));
    let filters = vec![FilterSpec {
        name: "stall".into(),
        stat_name: None,
        config: serde_json::Value::Null,
    }];
    let world = world(filters, registry).await?;
    for stage in ["request", "response"] {
        let mut request = call("sayHello", &[("stall", stage)]);
        request.timeout = Some(Duration::from_millis(300));
        let ended = tokio::time::timeout(Duration::from_secs(10), world.client.call(request))
            .await
            .map_err(|_| format!("the call whose {stage} filter never resumed hung"))?;
        let err = ended.err().ok_or("the stalled call succeeded")?;
        assert_eq!(err.kind(), LocalReplyKind::Timeout, "{stage}");
        assert!(
            err.message().contains("filters did not finish"),
            "{stage}: {err}"
        );
    }
    let answered = world.client.call(call("sayHello", &[])).await?;
    assert_eq!(provider_of(&answered), Some("v1"));
    Ok(())
}

/// The routing parts a proxy has reach the client too: a cluster of host names (resolved when
/// the client is built), a mirror copying each call to another cluster, a direct response.
#[tokio::test]
async fn host_names_mirrors_and_direct_responses_work_through_the_client() -> TestResult {
    let main = DemoProvider::start("main").await?;
    let shadow = DemoProvider::start("shadow").await?;
    let config = Config::from_yaml(&format!(
        r#"
route_configs:
  - name: services
    routes:
      - match: {{ metadata: [ {{ key: method, exact: retired }} ] }}
        direct_response: {{ kind: unavailable, message: "retired is retired" }}
      - route: {{ cluster: main }}
        mirror: {{ cluster: shadow }}
clusters:
  - name: main
    endpoints: [ {{ address: "localhost:{main_port}" }} ]
  - name: shadow
    endpoints: [ {{ address: "{shadow}" }} ]
"#,
        main_port = main.address().port(),
        shadow = shadow.address(),
    ))?;
    let client = RouterClient::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .protocol("dubbo")
        .build()
        .await?;
    let response = client.call(call("sayHello", &[])).await?;
    assert_eq!(provider_of(&response), Some("main"));
    // The copy is fire and forget: it reaches the shadow soon after the call is answered.
    let mut waited = Duration::ZERO;
    while shadow.seen().is_empty() && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert_eq!(shadow.seen().len(), 1);
    assert_eq!(main.seen().len(), 1);
    let err = client.call(call("retired", &[])).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(LocalReplyKind::Unavailable));
    assert_eq!(main.seen().len(), 1);
    Ok(())
}

/// A client outlives the runtime its upstream connection's task ran on (a runtime per call, a
/// client kept in a static): the connection that runtime dropped is replaced, not chosen again
/// and again as if it were open.
#[test]
fn a_client_outlives_the_runtime_its_connection_ran_on() -> TestResult {
    let server = tokio::runtime::Runtime::new()?;
    let provider = server.block_on(DemoProvider::start("p"))?;
    let client = metaprotocol_examples::dubbo_demo::DubboClient::new(provider.address());
    for round in 0..3 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let reply = runtime.block_on(client.call("sayHello", "a", &[]))?;
        assert_eq!(reply.dubbo_status, 20, "round {round}");
    }
    Ok(())
}
