//! The fourth protocol, `metaprotocol-jsonrpc`, through the proxy with a real JSON-RPC 2.0
//! library from PyPI at both ends: two jsonrpcserver servers behind the proxy, a jsonrpcclient
//! client in front (`tests/interop/jsonrpc/`). Calls are routed by method and balanced, ids of
//! either type come back as sent while answers arrive out of order, a null result and the
//! service's errors pass through, and the proxy's own (no route, timeout, a line that is not JSON) are JSON-RPC errors.
//!
//! The library is installed by `examples/tests/interop/jsonrpc/setup.sh`; without it the test is
//! skipped, unless `METAPROTOCOL_REQUIRE_INTEROP=1` (CI) makes it fail.

#[allow(dead_code)]
mod support;

#[path = "interop/dubbo/harness/json_line.rs"]
mod json_line;

use std::time::Duration;

use serde_json::json;

use json_line::Line;
use support::interop::Suite;
use support::process::{ChildGuard, Scratch};
use support::proxy::InProcessProxy;
use support::{TestResult, free_port};

const SUITE: Suite = Suite::new("jsonrpc");

/// A server of the suite, and the file its notifications go to.
struct Server {
    port: u16,
    _process: ChildGuard,
}

fn server(name: &str, record: &std::path::Path, scratch: &Scratch) -> TestResult<Server> {
    let port = free_port()?;
    let mut command = SUITE.command(SUITE.python());
    command
        .arg("server.py")
        .args(["--port", &port.to_string(), "--name", name])
        .arg("--record")
        .arg(record);
    let mut process = ChildGuard::spawn(command, &format!("jsonrpc-{name}"), scratch)?;
    process.wait_for_stdout("ready", Duration::from_secs(20))?;
    Ok(Server {
        port,
        _process: process,
    })
}

/// Runs the client with `args`; its JSON lines.
fn client(addr: &str, args: &[&str], scratch: &Scratch) -> TestResult<Vec<Line>> {
    let mut command = SUITE.command(SUITE.python());
    command.arg("client.py").args(["--addr", addr]).args(args);
    let mut process = ChildGuard::spawn(command, "jsonrpc-client", scratch)?;
    process.wait(Duration::from_secs(30))?;
    let stdout = process.stdout();
    let lines = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(Line::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad client output {stdout}: {e}"))?;
    if !lines.iter().any(|l| l.bool("done") == Some(true)) {
        return Err(format!(
            "the client did not finish: {stdout} / {}",
            process.stderr_tail()
        )
        .into());
    }
    Ok(lines)
}

fn config(s1: u16, s2: u16) -> String {
    format!(
        r#"
listeners:
  - {{ name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: rpc }}
route_configs:
  - name: rpc
    routes:
      - name: slow
        match: {{ metadata: [ {{ key: method, exact: sleep }} ] }}
        route: {{ cluster: servers }}
        timeout: 300ms
      - name: service
        match: {{ metadata: [ {{ key: method, regex: "add|whoami|nothing|fail|note" }} ] }}
        route: {{ cluster: servers }}
clusters:
  - name: servers
    lb_policy: round_robin
    endpoints: [ {{ address: "127.0.0.1:{s1}" }}, {{ address: "127.0.0.1:{s2}" }} ]
"#
    )
}

#[test]
fn json_rpc_through_the_proxy_with_a_real_library() -> TestResult {
    let missing =
        (!SUITE.venv_python().exists()).then(|| "the suite's .venv is missing".to_owned());
    if !SUITE.ready(missing)? {
        return Ok(());
    }
    let scratch = Scratch::new("jsonrpc-e2e")?;
    let notes = scratch.path("notes.log");
    let s1 = server("s1", &notes, &scratch)?;
    let s2 = server("s2", &notes, &scratch)?;
    let proxy = InProcessProxy::start(&config(s1.port, s2.port))?;
    let addr = proxy.addr("rpc-in")?.to_string();

    let calls = r#"[["add", [1, 2]], ["add", [40, 2]], ["whoami", []], ["whoami", []],
                    ["fail", []], ["nope", []], ["sleep", [2000]], ["add", [5, 5]],
                    ["nothing", []]]"#;
    let lines = client(&addr, &["--calls", calls, "--notify", "hello"], &scratch)?;
    let calls: Vec<&Line> = lines.iter().filter(|l| l.num("call").is_some()).collect();
    assert_eq!(calls.len(), 9, "{lines:?}");
    assert!(
        calls.iter().all(|l| l.bool("id_ok") == Some(true)),
        "{lines:?}"
    );
    assert_eq!(calls[0].num("result"), Some(3.0));
    assert_eq!(calls[1].num("result"), Some(42.0));
    let mut served_by = [calls[2].str("result"), calls[3].str("result")];
    served_by.sort();
    assert_eq!(
        served_by,
        [Some("s1"), Some("s2")],
        "round robin: {lines:?}"
    );
    assert_eq!(
        (calls[4].num("code"), calls[4].str("message")),
        (Some(7.0), Some("failed on purpose"))
    );
    assert_eq!(calls[5].num("code"), Some(-32601.0), "no route: {lines:?}");
    assert!(
        calls[5]
            .str("message")
            .is_some_and(|m| m.starts_with("route_not_found"))
    );
    assert_eq!(calls[6].num("code"), Some(-32001.0), "timeout: {lines:?}");
    assert_eq!(calls[7].num("result"), Some(10.0));
    // A method that returns nothing answers with a null result: a success like any other.
    assert_eq!(calls[8].bool("ok"), Some(true), "null result: {lines:?}");
    let noted = std::fs::read_to_string(&notes)?;
    assert_eq!(
        noted.lines().filter(|l| l.ends_with("\thello")).count(),
        1,
        "{noted}"
    );

    let raw = client(
        &addr,
        &[
            "--raw",
            "{this is not json",
            "--calls",
            r#"[["add", [2, 2]]]"#,
        ],
        &scratch,
    )?;
    let parse_error = raw
        .iter()
        .find_map(|l| l.str("raw"))
        .ok_or("no raw answer")?;
    let parse_error: serde_json::Value = serde_json::from_str(parse_error)?;
    assert_eq!(parse_error["error"]["code"], -32700, "{parse_error}");
    assert_eq!(parse_error["id"], serde_json::Value::Null);
    // The connection goes on after it.
    assert!(raw.iter().any(|l| l.num("result") == Some(4.0)), "{raw:?}");
    Ok(())
}

/// The upstream of [`an_answer_over_the_line_limit_fails_its_call_alone`]: once one connection
/// brought calls of `big` and `small`, answers `big` with a line of 64 KiB whose id comes last
/// (as Python's json writes it), in pieces, then `small`, and keeps the connection open.
async fn answer_big_then_small(socket: tokio::net::TcpStream) -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(socket).lines();
    let mut ids = std::collections::BTreeMap::new();
    while ids.len() < 2 {
        let Some(line) = lines.next_line().await? else {
            return Ok(());
        };
        let call: serde_json::Value = serde_json::from_str(&line)?;
        ids.insert(call["method"].to_string(), call["id"].clone());
    }
    let (Some(big), Some(small)) = (ids.get("\"big\""), ids.get("\"small\"")) else {
        return Err(format!("unexpected calls: {ids:?}").into());
    };
    let big = format!(
        "{{\"jsonrpc\": \"2.0\", \"result\": \"{}\", \"id\": {big}}}\n",
        "x".repeat(support::big_answer::BIG)
    );
    let socket = lines.get_mut().get_mut();
    for piece in big.as_bytes().chunks(20_000) {
        socket.write_all(piece).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let small = format!("{{\"jsonrpc\": \"2.0\", \"result\": \"fits\", \"id\": {small}}}\n");
    socket.write_all(small.as_bytes()).await?;
    while lines.next_line().await?.is_some() {}
    Ok(())
}

/// One answer line read from `client`, as JSON.
async fn answer(
    client: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> TestResult<serde_json::Value> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    client.read_line(&mut line).await?;
    Ok(serde_json::from_str(&line)?)
}

/// An answer over the cluster's `max_frame_bytes` (a line, whose length no header gives) fails
/// its call alone, with -32603: the proxy passes over the line as it arrives, and the call
/// answered after it on the same upstream connection gets its answer. Before, the upstream
/// connection closed and both calls failed with `upstream_reset`.
#[tokio::test]
async fn an_answer_over_the_line_limit_fails_its_call_alone() -> TestResult {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(Duration::from_secs(60), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let upstream = listener.local_addr()?;
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_big_then_small(socket));
            }
        });
        let proxy = support::proxy::start_engine(&format!(
            "listeners: [ {{ name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters:
  - name: c
    codec: {{ max_frame_bytes: 16384 }}
    endpoints: [ {{ address: \"{upstream}\" }} ]
"
        ))
        .await?;
        let addr = support::proxy::listener_addr(&proxy, "rpc-in")?;
        let connect = || async {
            TestResult::Ok(tokio::io::BufReader::new(
                tokio::net::TcpStream::connect(addr).await?,
            ))
        };
        let (mut big_client, mut small_client) = (connect().await?, connect().await?);
        big_client
            .get_mut()
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"big\",\"id\":1}\n")
            .await?;
        // After `big`, so that it waits behind `big`'s answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        small_client
            .get_mut()
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"small\",\"id\":\"s\"}\r\n")
            .await?;
        let (big, small) = (answer(&mut big_client).await?, answer(&mut small_client).await?);
        assert_eq!((&big["error"]["code"], &big["id"]), (&json!(-32603), &json!(1)), "{big}");
        assert_eq!((&small["result"], &small["id"]), (&json!("fits"), &json!("s")), "{small}");
        support::big_answer::assert_one_answer_passed_over(&proxy);
        proxy.shutdown().await;
        server.abort();
        TestResult::Ok(())
    })
    .await?
}

/// The upstream of [`a_servers_own_call_and_notification_fail_no_call`]: once one connection
/// brought calls of `a` and `b`, sends its client (the proxy) a notification and a call of
/// its own, as a JSON-RPC server may, then answers `a` and `b`, and hands over the line the
/// proxy answered its call with.
async fn call_the_client_then_answer(
    socket: tokio::net::TcpStream,
    answered: tokio::sync::mpsc::Sender<String>,
) -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(socket).lines();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let Some(line) = lines.next_line().await? else {
            return Ok(());
        };
        let call: serde_json::Value = serde_json::from_str(&line)?;
        ids.push((call["method"].clone(), call["id"].clone()));
    }
    let socket = lines.get_mut().get_mut();
    socket
        .write_all(b"{\"jsonrpc\": \"2.0\", \"method\": \"subscription\", \"params\": {\"n\": 1}}\n{\"jsonrpc\": \"2.0\", \"method\": \"configuration\", \"params\": [], \"id\": \"s-1\"}\n")
        .await?;
    for (method, id) in ids {
        let answer = json!({"jsonrpc": "2.0", "result": method, "id": id});
        socket.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    if let Some(line) = lines.next_line().await? {
        answered.send(line).await?;
    }
    while lines.next_line().await?.is_some() {}
    Ok(())
}

/// JSON-RPC lets a server call its client, and servers send notifications (subscriptions)
/// unasked. An upstream connection carries many clients' calls, so the proxy proxies neither:
/// it answers the server's call with -32601 (method not found) and its id, drops the
/// notification, counts both, and the calls in flight on that connection get their answers.
/// Before, either closed the upstream connection, failing both clients' calls.
#[tokio::test]
async fn a_servers_own_call_and_notification_fail_no_call() -> TestResult {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(Duration::from_secs(60), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let upstream = listener.local_addr()?;
        let (answered, mut refusals) = tokio::sync::mpsc::channel(4);
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(call_the_client_then_answer(socket, answered.clone()));
            }
        });
        let proxy = support::proxy::start_engine(&format!(
            "listeners: [ {{ name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 20s }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: \"{upstream}\" }} ] }} ]
"
        ))
        .await?;
        let addr = support::proxy::listener_addr(&proxy, "rpc-in")?;
        let connect = || async {
            TestResult::Ok(tokio::io::BufReader::new(
                tokio::net::TcpStream::connect(addr).await?,
            ))
        };
        let (mut first, mut second) = (connect().await?, connect().await?);
        first
            .get_mut()
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"id\":1}\n")
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        second
            .get_mut()
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"b\",\"id\":\"two\"}\n")
            .await?;
        let (a, b) = (answer(&mut first).await?, answer(&mut second).await?);
        assert_eq!((&a["result"], &a["id"]), (&json!("a"), &json!(1)), "{a}");
        assert_eq!((&b["result"], &b["id"]), (&json!("b"), &json!("two")), "{b}");
        let refusal = refusals.recv().await.ok_or("the server's call got no answer")?;
        let refusal: serde_json::Value = serde_json::from_str(&refusal)?;
        assert_eq!(
            (&refusal["error"]["code"], &refusal["id"]),
            (&json!(-32601), &json!("s-1")),
            "{refusal}"
        );
        let counted: f64 = proxy
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("metaprotocol_codec_server_calls_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(counted, 2.0);
        assert_eq!(
            support::proxy::metric(
                &proxy,
                "metaprotocol_upstream_cx_protocol_errors_total{cluster=\"c\"}"
            ),
            0.0
        );
        proxy.shutdown().await;
        server.abort();
        TestResult::Ok(())
    })
    .await?
}

/// A call longer than the listener's `max_frame_bytes` is answered with -32600 (id `null`: it
/// went by unread), the proxy passing over the line as it arrives without holding it, and the
/// connection goes on: the next call gets its own answer. Before, the connection closed, with
/// no answer.
#[tokio::test]
async fn a_call_over_the_line_limit_is_answered_and_the_connection_goes_on() -> TestResult {
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(Duration::from_secs(60), async {
        let proxy = support::proxy::start_engine(
            "listeners:
  - { name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: r, codec: { max_frame_bytes: 1024 } }
route_configs: [ { name: r, routes: [ { match: { metadata: [ { key: method, exact: never } ] }, route: { cluster: c } } ] } ]
clusters: [ { name: c, endpoints: [ { address: \"127.0.0.1:1\" } ] } ]
",
        )
        .await?;
        let addr = support::proxy::listener_addr(&proxy, "rpc-in")?;
        let mut client = tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await?);
        let long = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"params\":[\"{}\"],\"id\":1}}\n",
            "x".repeat(64 << 10)
        );
        for piece in long.as_bytes().chunks(5_000) {
            client.get_mut().write_all(piece).await?;
        }
        client
            .get_mut()
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"b\",\"id\":2}\n")
            .await?;
        let refused = answer(&mut client).await?;
        assert_eq!(
            (&refused["error"]["code"], &refused["id"]),
            (&json!(-32600), &json!(null)),
            "{refused}"
        );
        let next = answer(&mut client).await?;
        assert_eq!(
            (&next["error"]["code"], &next["id"]),
            (&json!(-32601), &json!(2)),
            "{next}"
        );
        proxy.shutdown().await;
        TestResult::Ok(())
    })
    .await?
}

/// jsonrpcserver answers a line its schema refuses (here a notification with a member of the
/// client's own, which JSON-RPC 2.0 does not forbid and the proxy forwards) with error -32600
/// and id `null`, notifications included. That answer names no call: it is counted as
/// unmatched, and the call another client has in flight on the same upstream connection still
/// gets its answer. Before, the proxy read the `null` id as a broken stream and closed the
/// upstream connection, failing that call.
#[test]
fn a_servers_answer_with_id_null_fails_no_other_call() -> TestResult {
    use std::io::{BufRead, BufReader, Write};
    let missing =
        (!SUITE.venv_python().exists()).then(|| "the suite's .venv is missing".to_owned());
    if !SUITE.ready(missing)? {
        return Ok(());
    }
    let scratch = Scratch::new("jsonrpc-null-id")?;
    let notes = scratch.path("notes.log");
    let server = server("s1", &notes, &scratch)?;
    let proxy = InProcessProxy::start(&format!(
        "listeners: [ {{ name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 10s }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: \"127.0.0.1:{}\" }} ] }} ]
",
        server.port
    ))?;
    let addr = proxy.addr("rpc-in")?;
    let connect = || -> TestResult<std::net::TcpStream> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(stream)
    };
    let mut waiting = connect()?;
    waiting.write_all(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"sleep\",\"params\":[1000],\"id\":\"w\"}\n",
    )?;
    // Sent after the call above, on the one upstream connection, while the call sleeps.
    std::thread::sleep(Duration::from_millis(300));
    connect()?.write_all(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"note\",\"params\":[\"x\"],\"trace\":\"t\"}\n",
    )?;
    let mut line = String::new();
    BufReader::new(waiting).read_line(&mut line)?;
    let answer: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(
        (&answer["result"], &answer["id"]),
        (&json!(1000), &json!("w")),
        "{answer}"
    );
    let unmatched = proxy
        .metrics()
        .lines()
        .filter(|l| l.starts_with("metaprotocol_upstream_unmatched_responses_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(unmatched, 1.0);
    Ok(())
}

/// A JSON-RPC 2.0 batch through the proxy, to two jsonrpcserver servers: each call is routed,
/// filtered and authorized on its own (a call the rbac filter denies is denied though the
/// batch's first is allowed; one without a route, one past its timeout and an element that is
/// no call each get their own error), the notification runs, and the client gets one array
/// with an answer for each call that wants one. A batch of notifications gets no answer, an
/// empty one and one over `max_batch_calls` (32 by default) one error -32600. Before, every
/// batch was answered with one -32600 and none of it ran.
#[test]
fn a_batch_through_the_proxy_is_answered_call_by_call() -> TestResult {
    use std::io::{BufRead, BufReader, Write};
    let missing =
        (!SUITE.venv_python().exists()).then(|| "the suite's .venv is missing".to_owned());
    if !SUITE.ready(missing)? {
        return Ok(());
    }
    let scratch = Scratch::new("jsonrpc-batch")?;
    let notes = scratch.path("notes.log");
    let s1 = server("s1", &notes, &scratch)?;
    let s2 = server("s2", &notes, &scratch)?;
    let yaml = config(s1.port, s2.port).replacen(
        "route_config: rpc }",
        "route_config: rpc,
      filters: [ { name: rbac, config: { action: deny, policies: [ { name: no-fail, metadata: [ { key: method, exact: fail } ] } ] } } ] }",
        1,
    );
    let proxy = InProcessProxy::start(&yaml)?;
    let stream = std::net::TcpStream::connect(proxy.addr("rpc-in")?)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut client = BufReader::new(stream);
    let mut exchange = |line: &str| -> TestResult<serde_json::Value> {
        client.get_mut().write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        client.read_line(&mut answer)?;
        Ok(serde_json::from_str(&answer)?)
    };
    let call = |method: &str, params: serde_json::Value, id: serde_json::Value| json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    let batch = json!([
        call("add", json!([1, 2]), json!(1)),
        call("fail", json!([]), json!("denied")),
        {"jsonrpc": "2.0", "method": "note", "params": ["batched"]},
        call("sleep", json!([2000]), json!("slow")),
        call("nope", json!([]), json!(4)),
        1,
        call("whoami", json!([]), json!(5)),
    ]);
    let answers = exchange(&batch.to_string())?;
    let answers = answers
        .as_array()
        .ok_or(format!("not an array: {answers}"))?;
    let by_id = |id: serde_json::Value| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(answers.len(), 6, "{answers:?}");
    assert_eq!(by_id(json!(1))["result"], json!(3));
    assert_eq!(by_id(json!("denied"))["error"]["code"], json!(-32004));
    assert_eq!(by_id(json!("slow"))["error"]["code"], json!(-32001));
    assert_eq!(by_id(json!(4))["error"]["code"], json!(-32601));
    assert_eq!(by_id(json!(null))["error"]["code"], json!(-32600));
    assert!(
        matches!(by_id(json!(5))["result"].as_str(), Some("s1" | "s2")),
        "{answers:?}"
    );

    let note = |text: &str| json!({"jsonrpc": "2.0", "method": "note", "params": [text]});
    // A batch of notifications, then a call: the call's answer is the next line.
    let after = exchange(&format!(
        "{}\n{}",
        json!([note("quiet"), note("quiet")]),
        call("add", json!([2, 2]), json!("after"))
    ))?;
    assert_eq!(
        (&after["result"], &after["id"]),
        (&json!(4), &json!("after")),
        "{after}"
    );
    for refused in [
        "[]".to_owned(),
        serde_json::Value::Array(vec![call("add", json!([1, 1]), json!(1)); 33]).to_string(),
    ] {
        let answer = exchange(&refused)?;
        assert_eq!(
            (&answer["error"]["code"], &answer["id"]),
            (&json!(-32600), &json!(null)),
            "{answer}"
        );
    }
    let noted = |text: &str| -> TestResult<usize> {
        let noted = std::fs::read_to_string(&notes)?;
        Ok(noted
            .lines()
            .filter(|l| l.ends_with(&format!("\t{text}")))
            .count())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (noted("batched")?, noted("quiet")?) != (1, 2) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((noted("batched")?, noted("quiet")?), (1, 2));
    Ok(())
}

/// Sends `batch` on one line through a proxy, which logs to a JSON access log, to two of the
/// suite's servers: the answer it got back (one line, without its newline) and the access log's
/// first `lines` lines, once it has them. `None` when the suite is not installed.
fn batch_logged(
    test: &str,
    batch: &serde_json::Value,
    lines: usize,
) -> TestResult<Option<(String, Vec<serde_json::Value>)>> {
    use std::io::{BufRead, BufReader, Write};
    let missing =
        (!SUITE.venv_python().exists()).then(|| "the suite's .venv is missing".to_owned());
    if !SUITE.ready(missing)? {
        return Ok(None);
    }
    let scratch = Scratch::new(test)?;
    let notes = scratch.path("notes.log");
    let log = scratch.path("access.log");
    let s1 = server("s1", &notes, &scratch)?;
    let s2 = server("s2", &notes, &scratch)?;
    let yaml = config(s1.port, s2.port).replacen(
        "route_config: rpc }",
        &format!(
            "route_config: rpc, access_log: {{ path: \"{}\" }} }}",
            log.display()
        ),
        1,
    );
    let proxy = InProcessProxy::start(&yaml)?;
    let stream = std::net::TcpStream::connect(proxy.addr("rpc-in")?)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut client = BufReader::new(stream);
    client
        .get_mut()
        .write_all(format!("{batch}\n").as_bytes())?;
    let mut answer = String::new();
    client.read_line(&mut answer)?;
    let logged = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?
        .block_on(support::file_lines(&log, lines))?
        .iter()
        .map(|line| serde_json::from_str(line))
        .collect::<Result<_, _>>()?;
    Ok(Some((answer.trim_end().to_owned(), logged)))
}

/// Each call of a batch is logged with its own id, as a lone call is: a number as a number, a
/// string as its text, and a notification with none. Before, every line of a batch showed the
/// batch's request id (its number on the connection times 65536, plus the answers it wants),
/// and a lone call's 0.
#[test]
fn a_batchs_calls_are_logged_with_their_own_ids() -> TestResult {
    let call = |method: &str, params: serde_json::Value, id: serde_json::Value| json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    let batch = json!([
        call("add", json!([1, 2]), json!(1)),
        call("whoami", json!([]), json!("w-2")),
        {"jsonrpc": "2.0", "method": "note", "params": ["batched"]},
        call("nope", json!([]), json!(3)),
    ]);
    let Some((answer, logged)) = batch_logged("jsonrpc-batch-ids", &batch, 4)? else {
        return Ok(());
    };
    let answers: serde_json::Value = serde_json::from_str(&answer)?;
    assert_eq!(answers.as_array().map(Vec::len), Some(3), "{answer}");
    let mut ids: Vec<(String, String)> = logged
        .iter()
        .map(|line| (line["method"].to_string(), line["request_id"].to_string()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            (r#""add""#, "1"),
            (r#""nope""#, "3"),
            (r#""note""#, "null"),
            (r#""whoami""#, r#""w-2""#),
        ]
        .map(|(method, id)| (method.to_owned(), id.to_owned())),
        "{logged:?}"
    );
    Ok(())
}

/// Each answer of a batch is logged with the bytes it takes in the batch's one line, the last
/// with the brackets, commas and line's end too, so that a batch's lines add up to what its
/// client got; a notification's with none. Before, every answer but the last showed 0 bytes
/// sent, and the last the whole line.
#[test]
fn a_batchs_answers_are_logged_with_their_own_bytes() -> TestResult {
    let call = |method: &str, params: serde_json::Value, id: serde_json::Value| json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    let batch = json!([
        call("add", json!([1, 2]), json!(1)),
        call("whoami", json!([]), json!("w-2")),
        {"jsonrpc": "2.0", "method": "note", "params": ["batched"]},
        call("nope", json!([]), json!(3)),
    ]);
    let Some((answer, logged)) = batch_logged("jsonrpc-batch-bytes", &batch, 4)? else {
        return Ok(());
    };
    // Each answer as the client got it, by its id.
    let answers: Vec<&serde_json::value::RawValue> = serde_json::from_str(&answer)?;
    let mut own = std::collections::HashMap::new();
    for raw in &answers {
        let value: serde_json::Value = serde_json::from_str(raw.get())?;
        own.insert(value["id"].to_string(), raw.get().len() as u64);
    }
    assert_eq!(own.len(), 3, "{answer}");
    let line = answer.len() as u64 + 1;
    let rest = line - own.values().sum::<u64>();
    let mut sent: Vec<(String, u64, u64)> = logged
        .iter()
        .map(|l| {
            let id = l["request_id"].to_string();
            let own = own.get(&id).copied().unwrap_or(0);
            (id, own, l["bytes_sent"].as_u64().unwrap_or(u64::MAX))
        })
        .collect();
    sent.sort();
    let with_the_rest = sent
        .iter()
        .filter(|(_, own, sent)| *sent == own + rest)
        .count();
    assert_eq!(with_the_rest, 1, "one answer also takes {rest}: {sent:?}");
    assert!(
        sent.iter()
            .all(|(_, own, sent)| *sent == *own || *sent == own + rest),
        "{sent:?}"
    );
    assert_eq!(sent.iter().map(|(_, _, sent)| sent).sum::<u64>(), line);
    assert_eq!(
        sent.iter().find(|(id, ..)| id == "null"),
        Some(&("null".to_owned(), 0, 0))
    );
    Ok(())
}

/// The bytes of each answer of [`answer_big_calls_big`] to a call of `big`.
const BIG_ANSWER: usize = 6 << 20;

/// An upstream that answers each call of `big` with a result of [`BIG_ANSWER`] bytes, and
/// every other call with `"ok"`.
async fn answer_big_calls_big(socket: tokio::net::TcpStream) -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, mut write) = socket.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let call: serde_json::Value = serde_json::from_str(&line)?;
        let result = match call["method"].as_str() {
            Some("big") => "x".repeat(BIG_ANSWER),
            _ => "ok".to_owned(),
        };
        let answer = json!({"jsonrpc": "2.0", "result": result, "id": call["id"]});
        write.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

/// A batch's answers are held, until the last is in, to half the proxy's limit on a client
/// connection's unsent answers (16 MiB) even where the listener's `max_frame_bytes` allows
/// more: an answer past that gets error -32603 in its place, and the batch's line, written at
/// once, leaves the connection open. Before, six answers of 6 MiB were held under a
/// `max_frame_bytes` of 64 MiB and written as one line of 36 MiB, past the limit: the client,
/// which had not read yet, was deemed gone and disconnected, and got no whole answer.
#[tokio::test]
async fn a_batchs_answers_are_held_within_the_connections_write_limit() -> TestResult {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(120), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let upstream = listener.local_addr()?;
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_big_calls_big(socket));
            }
        });
        let proxy = support::proxy::start_engine(&format!(
            "listeners:
  - {{ name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: r, codec: {{ max_frame_bytes: 67108864 }} }}
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: \"{upstream}\" }} ] }} ]
"
        ))
        .await?;
        let addr = support::proxy::listener_addr(&proxy, "rpc-in")?;
        let mut client = tokio::net::TcpStream::connect(addr).await?;
        let calls: Vec<serde_json::Value> = (0..6)
            .map(|id| json!({"jsonrpc": "2.0", "method": "big", "id": id}))
            .collect();
        client
            .write_all(format!("{}\n", serde_json::Value::Array(calls)).as_bytes())
            .await?;
        // Not reading yet, as a client busy elsewhere: the answers wait in the proxy.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut client = tokio::io::BufReader::new(client);
        let mut line = Vec::new();
        client.read_until(b'\n', &mut line).await?;
        let answers: Vec<serde_json::Value> = serde_json::from_slice(&line)
            .map_err(|e| format!("not one whole answer ({} bytes): {e}", line.len()))?;
        let results = answers.iter().filter(|a| a["result"].is_string()).count();
        let failed = answers
            .iter()
            .filter(|a| a["error"]["code"] == json!(-32603))
            .count();
        assert_eq!((results, failed), (1, 5), "{} bytes", line.len());
        // The connection goes on.
        client
            .get_mut()
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"small\",\"id\":\"s\"}\n")
            .await?;
        let small = answer(&mut client).await?;
        assert_eq!((&small["result"], &small["id"]), (&json!("ok"), &json!("s")), "{small}");
        proxy.shutdown().await;
        server.abort();
        TestResult::Ok(())
    })
    .await?
}

/// The bytes of the answer [`a_batchs_held_answers_count_as_unsent`] makes the proxy hold.
const HELD: usize = 2 << 20;

/// A batch's answers, held until its last is in, count as unsent answers of their connection:
/// in the proxy's `buffered_bytes`, so against `limits.max_buffered_bytes` (another client's
/// call is refused as over the limit while they wait), and against the 1 MiB of unsent answers
/// past which the proxy reads no more of a client (its next call is read once the batch's line
/// is sent). Before, the proxy held them outside both: each client connection could make it hold
/// up to 8 MiB that no limit saw.
#[test]
fn a_batchs_held_answers_count_as_unsent() -> TestResult {
    use std::io::{BufRead, BufReader, Write};
    let missing =
        (!SUITE.venv_python().exists()).then(|| "the suite's .venv is missing".to_owned());
    if !SUITE.ready(missing)? {
        return Ok(());
    }
    let scratch = Scratch::new("jsonrpc-held")?;
    let s1 = server("s1", &scratch.path("notes.log"), &scratch)?;
    let proxy = InProcessProxy::start(&format!(
        r#"
limits: {{ max_buffered_bytes: 1048576 }}
listeners:
  - {{ name: rpc-in, address: 127.0.0.1:0, protocol: jsonrpc, route_config: rpc }}
route_configs:
  - {{ name: rpc, routes: [ {{ route: {{ cluster: servers }}, timeout: 30s }} ] }}
clusters:
  - {{ name: servers, endpoints: [ {{ address: "127.0.0.1:{}" }} ] }}
"#,
        s1.port
    ))?;
    let connect = || -> TestResult<BufReader<std::net::TcpStream>> {
        let stream = std::net::TcpStream::connect(proxy.addr("rpc-in")?)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(BufReader::new(stream))
    };
    let read = |client: &mut BufReader<std::net::TcpStream>| -> TestResult<serde_json::Value> {
        let mut line = String::new();
        client.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    };
    let add = |id: &str| {
        format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": id})
        )
    };
    let mut holder = connect()?;
    let batch = json!([
        {"jsonrpc": "2.0", "method": "repeat", "params": ["x", HELD], "id": 1},
        {"jsonrpc": "2.0", "method": "sleep", "params": [4000], "id": 2},
    ]);
    holder
        .get_mut()
        .write_all(format!("{batch}\n").as_bytes())?;
    let buffered =
        || support::metrics::sample(&proxy.metrics(), "metaprotocol_buffered_bytes", &[]) as u64;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = buffered();
    while seen < HELD as u64 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        seen = buffered();
    }
    assert!(
        seen >= HELD as u64,
        "the held answer is unsent: {seen} bytes buffered"
    );
    let mut other = connect()?;
    other.get_mut().write_all(add("other").as_bytes())?;
    let refused = read(&mut other)?;
    assert_eq!(refused["error"]["code"], json!(-32003), "{refused}");
    holder.get_mut().write_all(add("next").as_bytes())?;
    let first = read(&mut holder)?;
    assert_eq!(
        first.as_array().map(Vec::len),
        Some(2),
        "the batch's answers come before the call sent after it: {:.200}",
        first.to_string()
    );
    let next = read(&mut holder)?;
    assert_eq!(
        (&next["result"], &next["id"]),
        (&json!(3), &json!("next")),
        "{next}"
    );
    Ok(())
}
