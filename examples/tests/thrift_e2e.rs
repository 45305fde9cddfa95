//! End-to-end Thrift through the proxy with Apache Thrift's own Python library on both ends.
//!
//! `tests/interop/thrift/server.py` is a real `TThreadedServer` (one transport and protocol per
//! process, replies naming the server, one-way pings recorded, THeader headers echoed on
//! request) and `client.py` a real generated `Greeter.Client` printing one JSON object per run.
//! The engine runs in process. Covered: the six {binary, compact} x {framed, unframed, THeader}
//! combinations (calls, one-way calls, declared exceptions, `TApplicationException`, a route
//! miss answered with a readable `TApplicationException`), routing on the method and on a
//! THeader header, a `request_mutation` header seen by the server and a `response_mutation`
//! header seen by the client, a framed-binary listener speaking THeader compact upstream, and
//! 60 concurrent clients that all send seqid 0 sharing a couple of upstream connections.
//!
//! The Python library is installed by `tests/interop/thrift/setup.sh` (a venv next to it; a
//! `python3` that can `import thrift` also works). Without it each test prints `skipped: ...`
//! and passes, unless `METAPROTOCOL_REQUIRE_INTEROP=1` makes it fail. Children are killed when
//! their guards drop, every wait has a deadline, everything stays on 127.0.0.1.

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

use support::process::Scratch;
use support::proxy::InProcessProxy;
use support::thrift::{DEADLINE, Server, spawn_script, tools_ready};
use support::{TestResult, free_port};

const TRANSPORTS: [&str; 3] = ["framed", "unframed", "header"];
const PROTOCOLS: [&str; 2] = ["binary", "compact"];

/// The scratch directory of test `name`, or `None` when the test is skipped.
fn prepare(name: &str) -> TestResult<Option<Scratch>> {
    if tools_ready()? {
        Ok(Some(Scratch::new(&format!("thrift-{name}"))?))
    } else {
        Ok(None)
    }
}

/// Runs `client.py` against `port` and returns its JSON line. `headers` ("k=v,k2=v2") are sent
/// as THeader info headers on every call when the transport is THeader.
fn client(
    port: u16,
    transport: &str,
    protocol: &str,
    scenario: &[&str],
    headers: &str,
    scratch: &Scratch,
) -> TestResult<String> {
    let port_arg = port.to_string();
    let mut args = vec![port_arg.as_str(), transport, protocol];
    args.extend_from_slice(scenario);
    let what = format!(
        "client-{transport}-{protocol}-{}-{}",
        scenario.join("-"),
        free_port()?
    );
    let mut process = spawn_script(
        "client.py",
        &args,
        &[("THRIFT_HEADERS", headers)],
        &what,
        scratch,
    )?;
    let status = process.wait(DEADLINE)?;
    if !status.success() {
        return Err(format!("{what} failed ({status}): {}", process.stderr_tail()).into());
    }
    Ok(process.stdout().trim().to_owned())
}

/// The start of a config with one auto-detecting listener, `in`, and its routes (to follow).
const ONE_LISTENER: &str = "listeners:
  - { name: in, address: 127.0.0.1:0, protocol: thrift, route_config: routes }
route_configs:
  - name: routes
    routes:";

/// The routes every test uses for the Greeter methods, sending them to `cluster`.
fn greeter_routes(cluster: &str) -> String {
    format!(
        r#"
      - name: greeter
        match:
          metadata:
            - {{ key: method, regex: "^(sayHello|ping|pingCount|echoHeader)$" }}
        route: {{ cluster: {cluster} }}
        timeout: 10s"#
    )
}

/// The exact JSON of a `basic` client run served by `server`.
fn basic_result(server: &str) -> String {
    format!(
        r#"{{"crash": {{"message": "Internal error", "type": 6}}, "error": {{"code": 42, "message": "bad name"}}, "hello": "Hello, w1 from {server}", "hello_again": "Hello, w2 from {server}", "pings": 3}}"#
    )
}

#[test]
fn six_formats_through_the_proxy() -> TestResult {
    let Some(scratch) = prepare("six")? else {
        return Ok(());
    };
    let mut servers = Vec::new();
    let (mut listeners, mut routes, mut clusters) = (String::new(), String::new(), String::new());
    for transport in TRANSPORTS {
        for protocol in PROTOCOLS {
            let name = format!("{transport}-{protocol}");
            let server = Server::start(transport, protocol, &name, &scratch)?;
            listeners += &format!(
                "\n  - {{ name: {name}, address: 127.0.0.1:0, protocol: thrift, route_config: {name} }}"
            );
            routes += &format!("\n  - name: {name}\n    routes:{}", greeter_routes(&name));
            clusters += &format!(
                "\n  - name: {name}\n    endpoints: [ {{ address: \"{}\" }} ]",
                server.address()
            );
            servers.push((transport, protocol, name, server));
        }
    }
    let yaml = format!("listeners:{listeners}\nroute_configs:{routes}\nclusters:{clusters}\n");
    let proxy = InProcessProxy::start(&yaml)?;
    for (transport, protocol, name, _server) in &servers {
        let port = proxy.addr(name)?.port();
        let basic = client(
            port,
            transport,
            protocol,
            &["basic"],
            "x-trace-id=abc123",
            &scratch,
        )?;
        assert_eq!(basic, basic_result(name), "{name}");
        // No route for the method: a TApplicationException UNKNOWN_METHOD the client can read.
        let unknown = client(port, transport, protocol, &["unknown"], "", &scratch)?;
        let expected_start = r#"{"exception": {"message": "route_not_found: "#;
        let expected_end = r#"", "type": 1}, "mtype": 3, "name": "missingMethod", "seqid": 0}"#;
        assert!(
            unknown.starts_with(expected_start) && unknown.ends_with(expected_end),
            "{name}: {unknown}"
        );
        assert!(
            unknown.len() > expected_start.len() + expected_end.len(),
            "{name}: an empty reason: {unknown}"
        );
        println!("{name}: {basic}\n{name}: {unknown}");
    }
    Ok(())
}

#[test]
fn routes_on_method_and_theader_header_and_mutates_headers() -> TestResult {
    let Some(scratch) = prepare("routing")? else {
        return Ok(());
    };
    let mut checked = 0;
    for protocol in PROTOCOLS {
        let alpha = Server::start("header", protocol, "alpha", &scratch)?;
        let beta = Server::start("header", protocol, "beta", &scratch)?;
        let yaml = format!(
            r#"
{ONE_LISTENER}
      - name: tenant-beta
        match:
          metadata:
            - {{ key: tenant, exact: beta }}
        route: {{ cluster: beta }}
        response_mutation: {{ set: {{ x-served-via: beta-route }} }}
      - name: echo
        match:
          metadata:
            - {{ key: method, exact: echoHeader }}
        route: {{ cluster: beta }}
        request_mutation: {{ set: {{ x-routed-by: echo-route }}, remove: [debug] }}{greeter}
clusters:
  - {{ name: alpha, endpoints: [ {{ address: "{alpha}" }} ] }}
  - {{ name: beta, endpoints: [ {{ address: "{beta}" }} ] }}
"#,
            greeter = greeter_routes("alpha"),
            alpha = alpha.address(),
            beta = beta.address(),
        );
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let hello = |headers: &str| {
            client(
                port,
                "header",
                protocol,
                &["hello", "w1"],
                headers,
                &scratch,
            )
        };
        assert_eq!(
            hello("")?,
            r#"{"hello": "Hello, w1 from alpha", "response_headers": {}}"#,
            "{protocol}: by method"
        );
        assert_eq!(
            hello("tenant=beta")?,
            r#"{"hello": "Hello, w1 from beta", "response_headers": {"x-served-via": "beta-route"}}"#,
            "{protocol}: by header"
        );
        assert_eq!(
            hello("tenant=gamma")?,
            r#"{"hello": "Hello, w1 from alpha", "response_headers": {}}"#,
            "{protocol}: header mismatch"
        );
        let echo = |key: &str, headers: &str| {
            client(port, "header", protocol, &["echo", key], headers, &scratch)
        };
        // The mutation's header reaches the server; the removed one does not; others pass.
        assert_eq!(
            echo("x-routed-by", "")?,
            r#"{"echo": "echo-route"}"#,
            "{protocol}"
        );
        assert_eq!(echo("debug", "debug=1")?, r#"{"echo": ""}"#, "{protocol}");
        assert_eq!(
            echo("x-trace-id", "x-trace-id=abc123")?,
            r#"{"echo": "abc123"}"#,
            "{protocol}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
    Ok(())
}

#[test]
fn framed_binary_listener_speaks_theader_compact_upstream() -> TestResult {
    let Some(scratch) = prepare("translate")? else {
        return Ok(());
    };
    let server = Server::start("header", "compact", "upstream", &scratch)?;
    let yaml = format!(
        r#"
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: thrift
    codec: {{ transport: framed, protocol: binary }}
    route_config: routes
route_configs:
  - name: routes
    routes:
      - name: echo
        match:
          metadata:
            - {{ key: method, exact: echoHeader }}
        route: {{ cluster: upstream }}
        request_mutation: {{ set: {{ x-routed-by: translated }} }}{greeter}
clusters:
  - name: upstream
    codec: {{ transport: header, protocol: compact }}
    endpoints: [ {{ address: "{address}" }} ]
"#,
        greeter = greeter_routes("upstream"),
        address = server.address(),
    );
    let proxy = InProcessProxy::start(&yaml)?;
    let port = proxy.addr("in")?.port();
    let basic = client(port, "framed", "binary", &["basic"], "", &scratch)?;
    assert_eq!(basic, basic_result("upstream"));
    // The client's frames carry no headers; the THeader hop upstream carries the mutation.
    let echo = client(
        port,
        "framed",
        "binary",
        &["echo", "x-routed-by"],
        "",
        &scratch,
    )?;
    assert_eq!(echo, r#"{"echo": "translated"}"#);
    Ok(())
}

#[test]
fn concurrent_clients_with_colliding_seqids_share_upstream_connections() -> TestResult {
    let Some(scratch) = prepare("concurrent")? else {
        return Ok(());
    };
    for (transport, protocol) in [
        ("framed", "binary"),
        ("header", "compact"),
        ("unframed", "compact"),
    ] {
        let server = Server::start(transport, protocol, "shared", &scratch)?;
        let yaml = format!(
            r#"
{ONE_LISTENER}{greeter}
clusters:
  - {{ name: shared, connections_per_endpoint: 2, endpoints: [ {{ address: "{address}" }} ] }}
"#,
            greeter = greeter_routes("shared"),
            address = server.address(),
        );
        let proxy = InProcessProxy::start(&yaml)?;
        let out = client(
            proxy.addr("in")?.port(),
            transport,
            protocol,
            &["concurrent", "60"],
            "",
            &scratch,
        )?;
        assert_eq!(
            out, r#"{"clients": 60, "errors": [], "good": 300}"#,
            "{transport} {protocol}"
        );
        let connections = server.connections();
        assert!(
            (1..=2).contains(&connections),
            "{transport} {protocol}: {connections} upstream connections for 60 clients"
        );
        println!(
            "{transport} {protocol}: 60 clients, 300 calls, {connections} upstream connections"
        );
    }
    Ok(())
}
