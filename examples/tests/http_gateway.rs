//! The HTTP gateway example end to end: JSON over HTTP in, Dubbo calls built with
//! `metaprotocol_dubbo::build` routed by the engine's `RouterClient` to the real Dubbo providers
//! of the interop suite (sofa-rpc-node as `v1`, dubbo-py as `v2`), JSON out: answers, routing,
//! the engine's own errors (no route, timeout) and the service's (status 80) as HTTP statuses.
//!
//! Needs the Dubbo interop tools (`examples/tests/interop/dubbo/setup.sh`); without them the
//! test is skipped, unless `METAPROTOCOL_REQUIRE_INTEROP=1` (CI) makes it fail.

#[allow(dead_code)]
mod support;

#[path = "interop/dubbo/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DemoProvider};
use metaprotocol_router::{Config, RouterClient};
use serde_json::{Value, json};
use support::TestResult;
use support::process::Scratch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(v1: &str, v2: &str) -> String {
    format!(
        r#"
route_configs:
  - name: gateway
    routes:
      - name: batch-jobs
        match:
          metadata:
            - {{ key: interface, exact: {interface} }}
            - {{ key: batchJob, exact: "true" }}
        route: {{ cluster: demo, subset: {{ version: v2 }} }}
      - name: users
        match: {{ metadata: [ {{ key: interface, exact: {interface} }} ] }}
        route: {{ cluster: demo, subset: {{ version: v1 }} }}
        timeout: 1s
        request_mutation: {{ set: {{ x-via: gateway }} }}
clusters:
  - name: demo
    protocol: dubbo
    endpoints:
      - {{ address: "{v1}", labels: {{ version: v1 }} }}
      - {{ address: "{v2}", labels: {{ version: v2 }} }}
"#,
        interface = harness::INTERFACE,
    )
}

/// The gateway example on a `RouterClient` of `config` with its bound on calls `timeout`,
/// served as the example binary serves it (with bounds on what clients hold): its address, and
/// its task.
async fn start_gateway(
    config: &str,
    timeout: Duration,
) -> TestResult<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let client = RouterClient::builder(Config::from_yaml(config)?)
        .codecs(metaprotocol_examples::codec_registry())
        .build()
        .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = listener.local_addr()?;
    let server = tokio::spawn(metaprotocol_examples::gateway::serve(
        listener,
        client,
        timeout,
        std::future::pending(),
    ));
    Ok((gateway, server))
}

/// `POST path` with `body`; the status and the JSON answer.
async fn post(gateway: SocketAddr, path: &str, body: &str) -> TestResult<(u16, Value)> {
    post_as(gateway, path, "application/json", body).await
}

/// `POST path` with `body` of `content_type`; the status and the JSON answer.
async fn post_as(
    gateway: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> TestResult<(u16, Value)> {
    let mut stream = TcpStream::connect(gateway).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8(answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {answer}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head}"))?;
    Ok((status, serde_json::from_str(body)?))
}

fn demo(method: &str) -> String {
    format!("/dubbo/{}/{method}", harness::INTERFACE)
}

#[test]
fn json_in_dubbo_through_the_engine_json_out() -> TestResult {
    if !harness::tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("http-gateway")?;
    let (v1, v2) = harness::start_providers(&scratch)?;
    let runtime = support::runtime()?;
    runtime.block_on(async {
        let (gateway, server) =
            start_gateway(&config(&v1.addr(), &v2.addr()), Duration::from_secs(10)).await?;

        let call = json!({ "args": ["ada"], "attachments": { "tenant": "t1" } }).to_string();
        let (status, answer) = post(gateway, &demo("sayHello"), &call).await?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], 20, "{answer}");
        let result = answer["result"].as_str().unwrap_or_default();
        assert!(result.starts_with("Hello, ada from v1"), "{answer}");
        let seen = v1.calls();
        let attachments = &seen.last().ok_or("v1 saw no call")?.attachments;
        assert_eq!(attachments.get("tenant").map(String::as_str), Some("t1"));
        assert_eq!(
            attachments.get("x-via").map(String::as_str),
            Some("gateway")
        );

        let batch = json!({ "args": ["bo"], "attachments": { "batchJob": "true" } }).to_string();
        let (status, answer) = post(gateway, &demo("sayHello"), &batch).await?;
        assert_eq!(status, 200, "{answer}");
        let result = answer["result"].as_str().unwrap_or_default();
        assert!(result.starts_with("Hello, bo from v2"), "{answer}");

        let (status, answer) = post(gateway, "/dubbo/org.example.Nope/x", "{}").await?;
        assert_eq!(
            (status, &answer["kind"]),
            (404, &json!("route_not_found")),
            "{answer}"
        );

        let slow = json!({ "args": ["sleep-3000"] }).to_string();
        let (status, answer) = post(gateway, &demo("sayHello"), &slow).await?;
        assert_eq!(
            (status, &answer["kind"]),
            (504, &json!("timeout")),
            "{answer}"
        );

        let crash = json!({ "args": ["crash"] }).to_string();
        let (status, answer) = post(gateway, &demo("sayHello"), &crash).await?;
        assert_eq!((status, &answer["status"]), (502, &json!(80)), "{answer}");

        let (status, answer) = post(gateway, &demo("sayHello"), "{\"args\": 1}").await?;
        assert_eq!(status, 422, "{answer}");

        server.abort();
        Ok(())
    })
}

/// A body the gateway cannot take is answered with the status that says why, as JSON: 415
/// without `Content-Type: application/json` (what `curl -d` sends is a form), 422 for JSON
/// that is not a call, 400 for what is not JSON. Before, all three were 400, and the curl
/// command the example's docs gave (without the header) got it. Served by the demo's own
/// Dubbo provider, so it needs no interop tools.
#[test]
fn a_body_the_gateway_cannot_take_gets_the_status_that_says_why() -> TestResult {
    let runtime = support::runtime()?;
    runtime.block_on(async {
        let provider = DemoProvider::start("p").await?;
        let config = format!(
            "route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, protocol: dubbo, endpoints: [ {{ address: \"{}\" }} ] }} ]
",
            provider.address()
        );
        let (gateway, server) = start_gateway(&config, Duration::from_secs(10)).await?;
        let path = format!("/dubbo/{DEMO_SERVICE}/sayHello");
        let call = json!({ "args": ["ada"] }).to_string();

        let form = "application/x-www-form-urlencoded";
        let (status, answer) = post_as(gateway, &path, form, &call).await?;
        assert_eq!(status, 415, "{answer}");
        assert!(answer["error"].is_string(), "{answer}");
        let (status, answer) = post(gateway, &path, "{\"args\": 1}").await?;
        assert_eq!(status, 422, "{answer}");
        let (status, answer) = post(gateway, &path, "{\"args\": [").await?;
        assert_eq!(status, 400, "{answer}");

        let (status, answer) = post(gateway, &path, &call).await?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"], "Hello from p", "{answer}");
        server.abort();
        Ok(())
    })
}

/// A gateway whose bound on calls is longer than the HTTP server's default bound on a request
/// (30 s): a call that takes longer than the gateway allows gets the gateway's `504`, not the
/// server's `408` (which it got before, 30 s in, whatever `--timeout` said). Takes 31 s.
#[test]
fn a_call_past_a_long_gateway_timeout_gets_the_gateways_504() -> TestResult {
    let runtime = support::runtime()?;
    runtime.block_on(async {
        let provider = DemoProvider::start_with_delay("p", Duration::from_secs(45)).await?;
        let config = format!(
            "route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 0s }} ] }} ]
clusters: [ {{ name: c, protocol: dubbo, endpoints: [ {{ address: \"{}\" }} ] }} ]
",
            provider.address()
        );
        let (gateway, server) = start_gateway(&config, Duration::from_secs(31)).await?;
        let path = format!("/dubbo/{DEMO_SERVICE}/sayHelloSlowly");
        let call = json!({ "args": ["ada"] }).to_string();
        let (status, answer) = post(gateway, &path, &call).await?;
        assert_eq!(status, 504, "{answer}");
        assert_eq!(answer["kind"], "timeout", "{answer}");
        server.abort();
        Ok(())
    })
}
