//! End-to-end Dubbo2 interop: real implementations from npm and PyPI talk through the proxy.
//!
//! Providers: sofa-rpc-node + dubbo-remoting (`v1`, labels `version: v1, service_group: user`)
//! and dubbo-py (`v2`, `batchjob`). Clients: dubbo2.js, sofa-rpc-node, dubbo-py and
//! dubbo-ssl-python. They are scripts in `tests/interop/dubbo/`, driven by the harness there;
//! the providers' replies name the provider and every attachment it received, so routing and
//! mutation are checked at the far end.
//!
//! The tools are installed by `examples/tests/interop/dubbo/setup.sh`. Without them each test
//! prints `skipped: ...` and passes, unless `METAPROTOCOL_REQUIRE_INTEROP=1` (CI) makes it fail.

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

#[path = "interop/dubbo/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{
    ALL_CLIENTS, CLIENT_TIMEOUT_MS, Client, INTERFACE, Line, Provider, Reply, Run, TENANT, TRACE,
    calls, heartbeat_line, single_call, single_reply, start_providers, tools_ready,
};
use support::process::{Scratch, wait_until};
use support::proxy::{BinaryProxy, InProcessProxy};
use support::{TestResult, free_addr, refusing_addr};

/// The listener every proxy config of these tests names.
const LISTENER: &str = "dubbo-in";

/// `batchJob=true` goes to the batchjob provider (v2), the rest of DemoService to the user
/// provider (v1); each route marks the request with `x-routed-by`, and the batch route drops the
/// `debug` attachment.
fn routing_config(listen: &str, v1: &Provider, v2: &Provider, route_timeout: &str) -> String {
    format!(
        r#"
listeners:
  - name: dubbo-in
    address: {listen}
    protocol: dubbo
    route_config: interop-routes
route_configs:
  - name: interop-routes
    routes:
      - name: batch-jobs
        match:
          metadata:
            - {{ key: interface, exact: {INTERFACE} }}
            - {{ key: batchJob, exact: "true" }}
        route: {{ cluster: demo-provider, subset: {{ service_group: batchjob }} }}
        timeout: {route_timeout}
        request_mutation: {{ set: {{ x-routed-by: batch }}, remove: [debug] }}
      - name: users
        match:
          metadata:
            - {{ key: interface, exact: {INTERFACE} }}
        route: {{ cluster: demo-provider, subset: {{ service_group: user }} }}
        timeout: {route_timeout}
        request_mutation: {{ set: {{ x-routed-by: user }} }}
clusters:
  - name: demo-provider
    connect_timeout: 1s
    endpoints:
      - {{ address: "{v1}", labels: {{ version: v1, service_group: user }} }}
      - {{ address: "{v2}", labels: {{ version: v2, service_group: batchjob }} }}
"#,
        v1 = v1.addr(),
        v2 = v2.addr(),
    )
}

/// A proxy whose only upstream is a closed port (for as long as the returned socket lives):
/// whatever answers a client is the proxy itself.
fn proxy_before_a_closed_port() -> TestResult<(InProcessProxy, tokio::net::TcpSocket)> {
    let (closing, closed) = refusing_addr()?;
    let proxy = InProcessProxy::start(&format!(
        r#"
listeners:
  - {{ name: dubbo-in, address: 127.0.0.1:0, protocol: dubbo, route_config: nowhere }}
route_configs:
  - name: nowhere
    routes:
      - route: {{ cluster: closed }}
clusters:
  - name: closed
    connect_timeout: 200ms
    endpoints: [ {{ address: "{closed}" }} ]
"#
    ))?;
    Ok((proxy, closing))
}

/// Both providers with the in-process engine in front of them, or `None` when the test is
/// skipped for want of the tools.
struct Fixture {
    scratch: Scratch,
    v1: Provider,
    v2: Provider,
    _proxy: InProcessProxy,
    /// Where the proxy listens.
    addr: String,
}

impl Fixture {
    fn start(test: &str, route_timeout: &str) -> TestResult<Option<Self>> {
        if !tools_ready()? {
            return Ok(None);
        }
        let scratch = Scratch::new(test)?;
        let (v1, v2) = start_providers(&scratch)?;
        let yaml = routing_config("127.0.0.1:0", &v1, &v2, route_timeout);
        let proxy = InProcessProxy::start(&yaml)?;
        let addr = proxy.addr(LISTENER)?.to_string();
        Ok(Some(Self {
            scratch,
            v1,
            v2,
            _proxy: proxy,
            addr,
        }))
    }
}

/// Checks a reply came from `provider` through the route that sets `x-routed-by: routed_by`,
/// with the client's own attachments intact.
fn assert_routed(client: Client, reply: &Reply, provider: &str, routed_by: &str) {
    let context = format!("{client:?}: {reply:?}");
    assert_eq!(reply.greeting, "Hello, w1", "{context}");
    assert_eq!(reply.provider, provider, "wrong provider: {context}");
    assert_eq!(
        reply.attachment("x-routed-by"),
        Some(routed_by),
        "no mutation: {context}"
    );
    assert_eq!(reply.attachment(TRACE.0), Some(TRACE.1), "{context}");
    assert_eq!(reply.attachment(TENANT.0), Some(TENANT.1), "{context}");
}

/// Every client reaches both routes: plain calls go to v1 marked `user`, `batchJob=true` calls
/// to v2 marked `batch` with `debug` removed.
fn check_routing(addr: &str, scratch: &Scratch) -> TestResult {
    for client in ALL_CLIENTS {
        let user = single_reply(&Run::hello(client, addr).run(scratch)?)?;
        assert_routed(client, &user, "v1", "user");

        let batch_run = Run::hello(client, addr).batch(true).attach("debug", "1");
        let batch = single_reply(&batch_run.run(scratch)?)?;
        assert_routed(client, &batch, "v2", "batch");
        assert_eq!(
            batch.attachment("batchJob"),
            Some("true"),
            "{client:?}: {batch:?}"
        );
        assert_eq!(
            batch.attachment("debug"),
            None,
            "{client:?}: debug not removed: {batch:?}"
        );
    }
    Ok(())
}

/// Checks a call failed with a Dubbo error reply (not a client time-out) that came in less than
/// `within_ms`; returns its Dubbo status.
fn assert_error_reply(client: Client, line: &Line, within_ms: f64) -> f64 {
    assert_eq!(line.bool("ok"), Some(false), "{client:?}: {line:?}");
    let status = line.num("status");
    assert!(
        status.is_some(),
        "{client:?}: no error reply, the client timed out: {line:?}"
    );
    let ms = line.num("ms").unwrap_or(f64::MAX);
    assert!(
        ms < within_ms,
        "{client:?}: the error reply took {ms} ms: {line:?}"
    );
    status.unwrap_or_default()
}

/// Without the proxy, every client library talks to every provider library: a failure through
/// the proxy is then the proxy's.
#[test]
fn every_client_reaches_every_provider_directly() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-direct")?;
    let (v1, v2) = start_providers(&scratch)?;
    for provider in [&v1, &v2] {
        let addr = provider.addr();
        for client in ALL_CLIENTS {
            let reply = single_reply(&Run::hello(client, &addr).run(&scratch)?)?;
            let context = format!("{client:?} -> {}: {reply:?}", provider.name);
            assert_eq!(reply.greeting, "Hello, w1", "{context}");
            assert_eq!(reply.provider, provider.name, "{context}");
            assert_eq!(reply.attachment(TRACE.0), Some(TRACE.1), "{context}");
            assert_eq!(reply.attachment(TENANT.0), Some(TENANT.1), "{context}");
        }
    }
    Ok(())
}

/// The `metaprotocol-proxy run --config FILE` binary routes every real client by attachment and
/// applies the request mutations the providers then see.
#[test]
fn binary_routes_real_clients_by_attachment() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-binary")?;
    let (v1, v2) = start_providers(&scratch)?;
    let listen = free_addr()?;
    let addr = listen.to_string();
    let mut proxy = BinaryProxy::start(
        &routing_config(&addr, &v1, &v2, "3s"),
        &[],
        listen,
        &scratch,
    )?;
    check_routing(&addr, &scratch)?;
    proxy.check_running()
}

/// The in-process engine routes every real client the same way, and nothing reaches the batch
/// provider but through the batch route.
#[test]
fn in_process_routes_real_clients_by_attachment() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-routing", "3s")? else {
        return Ok(());
    };
    check_routing(&fx.addr, &fx.scratch)?;
    let seen = fx.v2.calls();
    assert_eq!(seen.len(), ALL_CLIENTS.len(), "{seen:?}");
    assert!(
        seen.iter().all(|c| c
            .attachments
            .get("x-routed-by")
            .is_some_and(|v| v == "batch")),
        "v2 saw a request that did not come through the batch route: {seen:?}"
    );
    Ok(())
}

/// A call no route matches gets a Dubbo SERVICE_NOT_FOUND (60) error with a message, at once.
#[test]
fn no_route_is_answered_with_status_60() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-noroute", "3s")? else {
        return Ok(());
    };
    let addr = &fx.addr;
    for client in ALL_CLIENTS {
        let run = Run {
            interface: Some("org.example.NoSuchService"),
            ..Run::hello(client, addr)
        };
        let lines = run.run(&fx.scratch)?;
        let line = single_call(&lines)?;
        let status = assert_error_reply(client, line, (CLIENT_TIMEOUT_MS / 2) as f64);
        assert_eq!(status, 60.0, "{client:?}: {line:?}");
        assert!(
            !line.str("message").unwrap_or_default().is_empty(),
            "{client:?}: {line:?}"
        );
    }
    assert!(
        fx.v1.calls().is_empty() && fx.v2.calls().is_empty(),
        "an unrouted call went upstream"
    );
    Ok(())
}

/// Errors the providers raise reach every client with the provider's own status and message:
/// sofa-rpc-node answers 80 SERVER_ERROR, dubbo-py 90.
#[test]
fn provider_errors_pass_through() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-errors", "3s")? else {
        return Ok(());
    };
    let addr = &fx.addr;
    for client in ALL_CLIENTS {
        for (batch, provider_status) in [(false, 80.0), (true, 90.0)] {
            let run = Run {
                name: "crash",
                ..Run::hello(client, addr)
            }
            .batch(batch);
            let lines = run.run(&fx.scratch)?;
            let line = single_call(&lines)?;
            let status = assert_error_reply(client, line, CLIENT_TIMEOUT_MS as f64);
            assert_eq!(status, provider_status, "{client:?}: {line:?}");
            assert_eq!(line.str("message"), Some("boom"), "{client:?}: {line:?}");
        }
    }
    Ok(())
}

/// A provider slower than the route timeout: the proxy answers SERVER_TIMEOUT (31) long before
/// the client's own time-out, call after call.
#[test]
fn route_timeout_answers_before_the_client_gives_up() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-timeout", "500ms")? else {
        return Ok(());
    };
    let addr = &fx.addr;
    for client in ALL_CLIENTS {
        let lines = Run {
            name: "sleep-2000",
            count: 2,
            ..Run::hello(client, addr)
        }
        .run(&fx.scratch)?;
        let results = calls(&lines);
        assert_eq!(results.len(), 2, "{client:?}: {lines:?}");
        for line in results {
            // The provider would answer OK after 2 s; an error reply (31 SERVER_TIMEOUT) well
            // before the client's 5 s is the proxy's.
            let status = assert_error_reply(client, line, (CLIENT_TIMEOUT_MS / 2) as f64);
            assert_eq!(status, 31.0, "{client:?}: {line:?}");
        }
    }
    Ok(())
}

/// dubbo2.js sends its service timeout as the int `timeout` attachment in *seconds*: it is no
/// deadline to the proxy, which takes a Java consumer's string `timeout` for milliseconds. A
/// call under dubbo2.js's `timeout: 1` (a second) to a provider that answers in 300 ms is
/// served, not answered SERVER_TIMEOUT after a millisecond.
#[test]
fn dubbojs_int_timeout_in_seconds_is_no_deadline() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-js-timeout", "3s")? else {
        return Ok(());
    };
    let run = Run {
        name: "sleep-300",
        extra: vec!["--service-timeout", "1"],
        ..Run::hello(Client::DubboJs, &fx.addr)
    };
    let reply = single_reply(&run.run(&fx.scratch)?)?;
    assert_eq!(reply.provider, "v1", "{reply:?}");
    Ok(())
}

/// A Java consumer's arguments nest as deeply as its objects do, and Java's Hessian2 reader
/// takes them however deep: dubbo2.js passing a linked list of 100 objects, each holding the
/// next, gets its answer through the proxy, which reads the call to its attachments to route and
/// mutate it, and the provider reads every node. Before, a value nested more than 64 deep was
/// refused with status 40.
#[test]
fn a_call_passing_a_linked_list_100_objects_deep_reaches_the_provider() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-linked-list", "3s")? else {
        return Ok(());
    };
    let run = Run {
        extra: vec!["--linked", "100"],
        ..Run::hello(Client::DubboJs, &fx.addr)
    };
    let lines = run.run(&fx.scratch)?;
    let reply = single_reply(&lines)?;
    assert_eq!(
        reply.greeting, "Hello, w1 and 100 linked nodes",
        "{reply:?}"
    );
    assert_eq!(reply.provider, "v1", "{reply:?}");
    assert_eq!(reply.attachment("x-routed-by"), Some("user"), "{reply:?}");
    assert_eq!(reply.attachment(TENANT.0), Some(TENANT.1), "{reply:?}");
    Ok(())
}

/// dubbo-py's one-way requests reach the routed provider, and the reply the provider sends
/// anyway (a quirk of both provider libraries) does not reach the client.
#[test]
fn one_way_requests_reach_the_provider() -> TestResult {
    let Some(fx) = Fixture::start("dubbo-oneway", "3s")? else {
        return Ok(());
    };
    let addr = &fx.addr;
    for (provider, batch) in [(&fx.v1, false), (&fx.v2, true)] {
        let run = Run {
            name: "ow",
            count: 3,
            extra: vec!["--oneway"],
            ..Run::hello(Client::DubboPy, addr)
        };
        let lines = run.batch(batch).run(&fx.scratch)?;
        let done = lines
            .iter()
            .find(|l| l.bool("done") == Some(true))
            .ok_or("no summary line")?;
        assert_eq!(
            done.num("stray"),
            Some(0.0),
            "a one-way request's reply came back: {lines:?}"
        );
        wait_until(
            Duration::from_secs(5),
            &format!("3 one-way calls at {}", provider.name),
            || Ok(provider.calls().len() >= 3),
        )?;
        let seen = provider.calls();
        assert_eq!(seen.len(), 3, "{}: {seen:?}", provider.name);
        assert!(
            seen.iter().all(|c| !c.two_way
                && c.name == "ow"
                && c.attachments.get(TRACE.0).is_some_and(|v| v == TRACE.1)),
            "{}: {seen:?}",
            provider.name
        );
    }
    Ok(())
}

/// A `response_mutation` reaches sofa-rpc-node as response attachments (result flag 4), and
/// dubbo2.js, which reads flag 4 too, still gets its reply. (dubbo-py and dubbo-ssl-python know
/// only flags 0-2: they cannot take response attachments from any peer.)
#[test]
fn response_mutation_reaches_the_client() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-response-mutation")?;
    let (v1, _v2) = start_providers(&scratch)?;
    let proxy = InProcessProxy::start(&format!(
        r#"
listeners:
  - {{ name: dubbo-in, address: 127.0.0.1:0, protocol: dubbo, route_config: served }}
route_configs:
  - name: served
    routes:
      - route: {{ cluster: v1 }}
        response_mutation: {{ set: {{ x-served-by: v1 }} }}
clusters:
  - name: v1
    endpoints: [ {{ address: "{}" }} ]
"#,
        v1.addr()
    ))?;
    let addr = proxy.addr(LISTENER)?.to_string();
    let lines = Run::hello(Client::Sofa, &addr).run(&scratch)?;
    assert_eq!(single_reply(&lines)?.provider, "v1");
    let line = single_call(&lines)?;
    assert_eq!(
        line.str("response_attachments"),
        Some("x-served-by=v1"),
        "{line:?}"
    );
    let reply = single_reply(&Run::hello(Client::DubboJs, &addr).run(&scratch)?)?;
    assert_eq!(reply.greeting, "Hello, w1", "{reply:?}");
    // The Python libraries cannot read result flags 3 to 5. Run with their own protocol versions
    // (2.5.3, 2.4.10: older than response attachments), they get the reply without them, as a
    // Java provider would send it, and read it.
    for client in [Client::DubboPy, Client::DubboSsl] {
        let run = Run {
            extra: vec!["--dubbo-version", "library"],
            ..Run::hello(client, &addr)
        };
        let lines = run.run(&scratch)?;
        let reply = single_reply(&lines).map_err(|e| format!("{client:?}: {e}: {lines:?}"))?;
        assert_eq!(reply.greeting, "Hello, w1", "{client:?}: {reply:?}");
        assert_eq!(reply.provider, "v1", "{client:?}: {reply:?}");
    }
    Ok(())
}

/// dubbo-ssl-python's Java-style two-way idle heartbeat (flag 0xe2) is answered by the proxy
/// itself, with status 20 (dubbo-ssl-python rejects any other). The client opens its connection
/// with a call, which fails as nothing listens upstream, then idles for a second.
#[test]
fn two_way_idle_heartbeat_is_answered_by_the_proxy() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-heartbeat-2way")?;
    let (proxy, _closing) = proxy_before_a_closed_port()?;
    let addr = proxy.addr(LISTENER)?.to_string();
    let run = Run {
        extra: vec!["--heartbeat-idle-secs", "1"],
        ..Run::hello(Client::DubboSsl, &addr)
    };
    let lines = run.run(&scratch)?;
    assert_error_reply(
        Client::DubboSsl,
        single_call(&lines)?,
        CLIENT_TIMEOUT_MS as f64,
    );
    let heartbeat = heartbeat_line(&lines)?;
    assert_eq!(heartbeat.bool("ok"), Some(true), "{lines:?}");
    assert_eq!(heartbeat.num("status"), Some(20.0), "{lines:?}");
    Ok(())
}

/// dubbo-py's `send_heartbeat_request` is a one-way event (flag 0xa2), yet dubbo-py waits for
/// an answer; both provider libraries send one (golden `dubbopy__*__heartbeat`), and so does the
/// proxy.
#[test]
fn one_way_heartbeat_is_answered_by_the_proxy() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-heartbeat-1way")?;
    let (proxy, _closing) = proxy_before_a_closed_port()?;
    let addr = proxy.addr(LISTENER)?.to_string();
    let run = Run {
        count: 0,
        extra: vec!["--heartbeat"],
        ..Run::hello(Client::DubboPy, &addr)
    };
    let lines = run.run(&scratch)?;
    let heartbeat = heartbeat_line(&lines)?;
    assert_eq!(heartbeat.bool("ok"), Some(true), "{lines:?}");
    assert_eq!(heartbeat.num("id"), Some(1_000_001.0), "{lines:?}");
    Ok(())
}

/// Active health checks with Dubbo's heartbeat probe against the real providers: sofa-rpc-node
/// and dubbo-py both answer the proxy's heartbeats; each, stopped in turn, leaves rotation
/// within interval x unhealthy_threshold while calls go to the other, and returns once it runs
/// again on its port.
#[test]
fn heartbeat_probes_take_a_stopped_provider_out_of_rotation_and_back() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-health")?;
    let interval = Duration::from_millis(500);
    let threshold = 2;
    let (v1, v2) = start_providers(&scratch)?;
    let yaml = format!(
        r#"
listeners:
  - {{ name: {LISTENER}, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: demo-provider }} }} ] }}
clusters:
  - name: demo-provider
    endpoints: [ {{ address: "{}" }}, {{ address: "{}" }} ]
    health_check: {{ interval: {}ms, timeout: 400ms, unhealthy_threshold: {threshold}, healthy_threshold: 2, probe: heartbeat }}
"#,
        v1.addr(),
        v2.addr(),
        interval.as_millis()
    );
    let proxy = InProcessProxy::start(&yaml)?;
    let addr = proxy.addr(LISTENER)?.to_string();
    wait_until(Duration::from_secs(10), "six passed checks", || {
        Ok(proxy.health_checks("demo-provider", "success") >= 6)
    })?;
    assert_eq!(
        proxy.health_checks("demo-provider", "failure"),
        0,
        "both providers answer heartbeats"
    );

    let mut running = vec![v1, v2];
    for _ in 0..2 {
        let provider = running.remove(0);
        let (name, address) = (provider.name, provider.addr());
        let stopped_at = Instant::now();
        let stopped = provider.stop();
        wait_until(
            Duration::from_secs(10),
            "the stopped provider to leave rotation",
            || Ok(proxy.failing_checks(&address)),
        )?;
        let took = stopped_at.elapsed();
        println!("dubbo health check: {name} left rotation after {took:?}");
        assert!(
            took < interval * threshold * 11 / 10 + Duration::from_secs(1),
            "{name}: {took:?} for checks every {interval:?}, {threshold} in a row"
        );
        let other = running[0].name;
        let mut run = Run::hello(Client::DubboPy, &addr);
        run.count = 4;
        let lines = run.run(&scratch)?;
        for line in calls(&lines) {
            let reply = line.str("reply").unwrap_or_default();
            assert!(
                reply.contains(&format!(" from {other} ")),
                "{name} is out: {line:?}"
            );
        }
        running.push(stopped.restart(&scratch)?);
        wait_until(Duration::from_secs(10), "the provider to return", || {
            Ok(!proxy.failing_checks(&address))
        })?;
    }
    Ok(())
}

/// An attachment whose value is no string is there for a policy's `present` all the same:
/// dubbo2.js sends a service's `timeout` as an int, and an `rbac` policy denying calls that
/// carry one refuses its call with status 40, which never reaches the provider; the same client
/// without it is served. Before, the codec left
/// such an attachment out of the metadata, so a client dodged the policy by sending its key as
/// another Hessian type than a string, which a Java provider still reads.
#[test]
fn a_policy_sees_an_attachment_that_is_no_string() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-int-attachment")?;
    let (v1, _v2) = start_providers(&scratch)?;
    let proxy = InProcessProxy::start(&format!(
        r#"
listeners:
  - name: dubbo-in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: all
    filters:
      - name: rbac
        config:
          action: deny
          policies: [ {{ name: no-timeout, metadata: [ {{ key: timeout, present: true }} ] }} ]
route_configs:
  - name: all
    routes: [ {{ route: {{ cluster: v1 }} }} ]
clusters:
  - name: v1
    endpoints: [ {{ address: "{}" }} ]
"#,
        v1.addr()
    ))?;
    let addr = proxy.addr(LISTENER)?.to_string();
    let run = Run {
        extra: vec!["--service-timeout", "3000"],
        ..Run::hello(Client::DubboJs, &addr)
    };
    let lines = run.run(&scratch)?;
    let line = single_call(&lines)?;
    let status = assert_error_reply(Client::DubboJs, line, CLIENT_TIMEOUT_MS as f64);
    assert_eq!(status, 40.0, "{line:?}");
    assert!(v1.calls().is_empty(), "the call reached the provider");
    let served = single_reply(&Run::hello(Client::DubboJs, &addr).run(&scratch)?)?;
    assert_eq!(served.provider, "v1", "{served:?}");
    Ok(())
}

/// An attachment whose value is no string reads as the text a Java provider prints for it: a
/// route matching dubbo2.js's int `timeout` exactly (`"3000"`) takes its calls, and its request
/// mutation (an attachment added, the int kept as it came) writes a frame that dubbo-py reads,
/// with the int still there; another route replaces the int with a string, which
/// sofa-rpc-node reads. Before, the int read as the empty text: the exact match missed it.
#[test]
fn a_route_matches_the_text_of_an_attachment_that_is_no_string() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-int-match")?;
    let (v1, v2) = start_providers(&scratch)?;
    let proxy = InProcessProxy::start(&format!(
        r#"
listeners:
  - {{ name: dubbo-in, address: 127.0.0.1:0, protocol: dubbo, route_config: all }}
route_configs:
  - name: all
    routes:
      - match: {{ metadata: [ {{ key: timeout, exact: "3000" }} ] }}
        route: {{ cluster: v2 }}
        request_mutation: {{ set: {{ x-routed-by: timeout }} }}
      - route: {{ cluster: v1 }}
        request_mutation: {{ set: {{ x-routed-by: default, timeout: "1000" }} }}
clusters:
  - name: v1
    endpoints: [ {{ address: "{}" }} ]
  - name: v2
    endpoints: [ {{ address: "{}" }} ]
"#,
        v1.addr(),
        v2.addr()
    ))?;
    let addr = proxy.addr(LISTENER)?.to_string();
    let with_timeout = |ms| Run {
        extra: vec!["--service-timeout", ms],
        ..Run::hello(Client::DubboJs, &addr)
    };
    let matched = single_reply(&with_timeout("3000").run(&scratch)?)?;
    assert_eq!(matched.provider, "v2", "{matched:?}");
    assert_eq!(matched.attachment("x-routed-by"), Some("timeout"));
    assert_eq!(matched.attachment("timeout"), Some("3000"), "{matched:?}");
    assert_eq!(matched.attachment(TENANT.0), Some(TENANT.1), "{matched:?}");

    let other = single_reply(&with_timeout("2500").run(&scratch)?)?;
    assert_eq!(other.provider, "v1", "{other:?}");
    assert_eq!(other.attachment("x-routed-by"), Some("default"));
    assert_eq!(other.attachment("timeout"), Some("1000"), "{other:?}");
    assert_eq!(other.attachment(TENANT.0), Some(TENANT.1), "{other:?}");
    Ok(())
}
