//! End-to-end Thrift through the proxy with Apache Thrift's own Python library on both ends.
//!
//! `tests/interop/thrift/server.py` is a real `TThreadedServer` (one transport and protocol per
//! process, replies naming the server, one-way pings recorded, THeader headers echoed on
//! request) and `client.py` a real generated `Greeter.Client` printing one JSON object per run.
//! The engine runs in process. Covered: the six {binary, compact} x {framed, unframed, THeader}
//! combinations (calls, one-way calls, declared exceptions, `TApplicationException`, a route
//! miss answered with a readable `TApplicationException`, one-way calls over the listener's
//! frame limit passed over and counted, a one-way call under a THeader transform the proxy
//! cannot undo closing its connection unanswered), routing on the method and on a
//! THeader header (never on one spelt `service` or `method`, nor on one Apache Thrift's readers
//! skip: from a persistent group on), a `request_mutation` header seen by the server and a `response_mutation`
//! header seen by the client, a call with bytes after its arguments in its frame answered, a
//! framed-binary listener speaking THeader compact upstream,
//! 60 concurrent clients that all send seqid 0 sharing a couple of upstream connections,
//! active health checks that call a method of the server, and the policy filters' refusals
//! (`rbac`, `fault`, `local_ratelimit`) answered as `TApplicationException`s. One test, of an
//! answer over the cluster's frame limit, writes its client and server frames by hand.
//!
//! The Python library is installed by `tests/interop/thrift/setup.sh` (a venv next to it; a
//! `python3` that can `import thrift` also works). Without it each test prints `skipped: ...`
//! and passes, unless `METAPROTOCOL_REQUIRE_INTEROP=1` makes it fail. Children are killed when
//! their guards drop, every wait has a deadline, everything stays on 127.0.0.1.

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::process::{Scratch, wait_until};
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

/// A config whose listener, `in`, sends the Greeter methods to `server`, the one endpoint of
/// cluster `upstream`.
fn to_upstream(server: &Server) -> String {
    format!(
        "{ONE_LISTENER}{}\nclusters:\n  - name: upstream\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        greeter_routes("upstream"),
        server.address()
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

/// A client writing lax binary (no version word: `strictWrite=False`) through the proxy to a
/// server that reads strictly (`strictRead=True`), framed and unframed: its calls, declared
/// exceptions, `TApplicationException`s and one-way calls are served, since the proxy writes
/// them strict, which every binary reader takes. Before, it forwarded them lax, and the server
/// refused the first by closing the connection (one the proxy shares between clients).
#[test]
fn lax_binary_clients_reach_servers_that_read_strictly() -> TestResult {
    let Some(scratch) = prepare("lax")? else {
        return Ok(());
    };
    for transport in ["framed", "unframed"] {
        let strict = [("THRIFT_STRICT_READ", "1")];
        let server = Server::start_with_env(
            free_port()?,
            transport,
            "binary",
            "strict",
            &strict,
            &scratch,
        )?;
        let yaml = to_upstream(&server);
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let what = format!("client-lax-{transport}-{}", free_port()?);
        let mut process = spawn_script(
            "client.py",
            &[&port.to_string(), transport, "binary", "basic"],
            &[("THRIFT_LAX_WRITE", "1")],
            &what,
            &scratch,
        )?;
        let status = process.wait(DEADLINE)?;
        assert!(status.success(), "{what}: {}", process.stderr_tail());
        assert_eq!(
            process.stdout().trim(),
            basic_result("strict"),
            "{transport}"
        );
    }
    Ok(())
}

/// THeader calls under the zlib transform, which Apache Thrift's servers inflate and serve,
/// are served through the proxy: a two-way call gets its own answer to its own seqid (7, the
/// proxy's seqid put back), whether the server answers without a transform (Apache Thrift's
/// servers answer with those they are set to write, not the call's) or under zlib; and a
/// one-way call is forwarded unanswered, so the next call on the connection reads its own
/// answer. Before, the proxy answered each with an `INVALID_TRANSFORM`
/// `TApplicationException`, the one-way call's read by the next call as its answer.
#[test]
fn theader_calls_under_zlib_are_served_and_one_way_calls_unanswered() -> TestResult {
    let Some(scratch) = prepare("zlib")? else {
        return Ok(());
    };
    for protocol in PROTOCOLS {
        for write_zlib in ["0", "1"] {
            let server = Server::start_with_env(
                free_port()?,
                "header",
                protocol,
                "upstream",
                &[("THRIFT_WRITE_ZLIB", write_zlib)],
                &scratch,
            )?;
            let yaml = to_upstream(&server);
            let proxy = InProcessProxy::start(&yaml)?;
            let port = proxy.addr("in")?.port();
            let answers = [
                client(port, "header", protocol, &["zlib"], "", &scratch)?,
                client(port, "header", protocol, &["zlibping"], "", &scratch)?,
            ];
            let expected = [
                r#"{"hello": "Hello, plain from upstream", "zlib": "Hello, z from upstream", "zlib_answer": {"mtype": 2, "name": "sayHello", "seqid": 7}}"#,
                r#"{"hello": "Hello, plain from upstream", "pings": 1}"#,
            ];
            assert_eq!(
                answers, expected,
                "{protocol}, server writing zlib: {write_zlib}"
            );
        }
    }
    Ok(())
}

/// A THeader call under zlib whose data does not inflate, so that its message type cannot be
/// read (it could be a one-way call, whose client reads no answer): Apache Thrift's Python
/// server closes the connection, and so does the proxy, counted as a malformed frame. Before,
/// the proxy answered it with a `PROTOCOL_ERROR` of no name to seqid 7, which a client whose
/// call was one-way would have read as its next call's answer.
#[test]
fn a_theader_call_under_zlib_that_does_not_inflate_closes_the_connection() -> TestResult {
    let Some(scratch) = prepare("zlib-corrupt")? else {
        return Ok(());
    };
    for protocol in PROTOCOLS {
        let server = Server::start("header", protocol, "upstream", &scratch)?;
        let yaml = to_upstream(&server);
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let closed = r#"{"answer": "closed"}"#;
        let direct = client(
            server.port,
            "header",
            protocol,
            &["zlibcorrupt"],
            "",
            &scratch,
        )?;
        assert_eq!(direct, closed, "{protocol}, the server itself");
        let proxied = client(port, "header", protocol, &["zlibcorrupt"], "", &scratch)?;
        assert_eq!(proxied, closed, "{protocol}, through the proxy");
        let series =
            r#"metaprotocol_downstream_protocol_errors_total{listener="in",reason="malformed"} 1"#;
        let metrics = proxy.metrics();
        assert!(
            metrics.lines().any(|line| line == series),
            "{protocol}: {series} not in {}",
            metrics
                .lines()
                .filter(|line| line.contains("protocol_errors"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// A one-way call under a THeader transform the proxy cannot undo (snappy), then a call on the
/// same connection: the one-way call's message type is hidden, so it gets no answer, and the
/// connection closes, counted as an unsupported frame, as Apache Thrift's servers close it on
/// a transform they lack (the Python server, which fails to write the exception it means to,
/// and the C++ one, after its exception). Before, the proxy answered the one-way call with an
/// `INVALID_TRANSFORM`, which the client read as its next call's answer.
#[test]
fn a_one_way_call_under_a_transform_not_undone_closes_the_connection() -> TestResult {
    let Some(scratch) = prepare("transform")? else {
        return Ok(());
    };
    const SNAPPY: &str = "3";
    for protocol in PROTOCOLS {
        let server = Server::start("header", protocol, "upstream", &scratch)?;
        let yaml = to_upstream(&server);
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let closed = r#"{"hello": "closed"}"#;
        let scenario = ["transformping", SNAPPY];
        let direct = client(server.port, "header", protocol, &scenario, "", &scratch)?;
        assert_eq!(direct, closed, "{protocol}, the server itself");
        let proxied = client(port, "header", protocol, &scenario, "", &scratch)?;
        assert_eq!(proxied, closed, "{protocol}, through the proxy");
        let series = r#"metaprotocol_downstream_protocol_errors_total{listener="in",reason="unsupported"} 1"#;
        let metrics = proxy.metrics();
        assert!(
            metrics.lines().any(|line| line == series),
            "{protocol}: {series} not in {}",
            metrics
                .lines()
                .filter(|line| line.contains("protocol_errors"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let after = client(port, "header", protocol, &["hello", "after"], "", &scratch)?;
        let served = r#"{"hello": "Hello, after from upstream", "response_headers": {}}"#;
        assert_eq!(after, served, "{protocol}: a new connection");
    }
    Ok(())
}

/// A THeader call whose header block is 64 KiB or more, which Apache Thrift's C++ and Ruby
/// servers refuse by closing the connection (one the proxy shares between clients), is answered
/// with a `PROTOCOL_ERROR` `TApplicationException` the Python client raises, and the same
/// connection then serves a call without that header (before, the call was forwarded).
#[test]
fn a_theader_call_with_a_header_block_servers_refuse_is_answered() -> TestResult {
    let Some(scratch) = prepare("bigheader")? else {
        return Ok(());
    };
    for protocol in PROTOCOLS {
        let server = Server::start("header", protocol, "upstream", &scratch)?;
        let yaml = to_upstream(&server);
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let answer = client(
            port,
            "header",
            protocol,
            &["bigheader", "70000"],
            "",
            &scratch,
        )?;
        let expected = r#"{"after": "Hello, after from upstream", "big": {"message": "bad_request: the THeader header block is 64 KiB or more, which Apache Thrift's servers refuse: send fewer or shorter headers", "type": 7}}"#;
        assert_eq!(answer, expected, "{protocol}");
        // A header block that is just within the limit goes through.
        let answer = client(
            port,
            "header",
            protocol,
            &["bigheader", "65000"],
            "",
            &scratch,
        )?;
        let expected =
            r#"{"after": "Hello, after from upstream", "big": "Hello, w1 from upstream"}"#;
        assert_eq!(answer, expected, "{protocol}");
    }
    Ok(())
}

/// Against the listener's `max_frame_bytes` (1 KiB here), a THeader call under the zlib
/// transform counts inflated: one that inflates past it (a zlib bomb, 100,000 bytes from a
/// few hundred) is refused with a `PROTOCOL_ERROR` `TApplicationException` naming its method
/// and seqid, having inflated no more than the limit; one whose compressed frame is over it is
/// passed over by its length and answered, named by the first bytes of its message inflated;
/// one within it is served; a one-way call over it compressed is passed over unanswered (before,
/// it was answered as a call of no name, and the client read that answer as its next call's,
/// every later answer one behind); and the connection serves the next call each time.
#[test]
fn theader_calls_under_zlib_are_bounded_by_the_frame_limit_inflated() -> TestResult {
    let Some(scratch) = prepare("zlib-big")? else {
        return Ok(());
    };
    for protocol in PROTOCOLS {
        let server = Server::start("header", protocol, "upstream", &scratch)?;
        let proxy = InProcessProxy::start(&small_frames(&server))?;
        let port = proxy.addr("small")?.port();
        let answers = [
            client(
                port,
                "header",
                protocol,
                &["zlibbomb", "100000"],
                "",
                &scratch,
            )?,
            client(port, "header", protocol, &["zlib", "8000"], "", &scratch)?,
            client(port, "header", protocol, &["zlibbomb", "500"], "", &scratch)?,
            client(
                port,
                "header",
                protocol,
                &["zlibping", "8000"],
                "",
                &scratch,
            )?,
        ];
        let expected = [
            r#"{"hello": "Hello, plain from upstream", "zlib": {"message": "bad_request: the THeader call inflates (zlib) past the listener's max_frame_bytes: refused unread", "type": 7}, "zlib_answer": {"mtype": 3, "name": "sayHello", "seqid": 7}}"#.to_owned(),
            r#"{"hello": "Hello, plain from upstream", "zlib": {"message": "bad_request: the call is larger than the listener's max_frame_bytes: passed over unread", "type": 7}, "zlib_answer": {"mtype": 3, "name": "sayHello", "seqid": 7}}"#.to_owned(),
            format!(
                r#"{{"hello": "Hello, plain from upstream", "zlib": "Hello, {} from upstream", "zlib_answer": {{"mtype": 2, "name": "sayHello", "seqid": 7}}}}"#,
                "a".repeat(500)
            ),
            r#"{"hello": "Hello, plain from upstream", "pings": 0}"#.to_owned(),
        ];
        assert_eq!(answers, expected, "{protocol}");
    }
    Ok(())
}

/// Unframed (buffered), a call over the listener's `max_frame_bytes` is passed over as it
/// arrives and answered with a `PROTOCOL_ERROR` `TApplicationException`, and an answer over
/// the cluster's fails its own call with an `INTERNAL_ERROR`; the client's next call on the
/// same connection is served, and the upstream connection was never refused (before, both
/// connections closed: an unframed message has no length to pass over).
#[test]
fn unframed_messages_over_the_frame_limit_fail_their_call_alone() -> TestResult {
    let Some(scratch) = prepare("unframed-big")? else {
        return Ok(());
    };
    // The name fits the cluster's limit in a call; the reply, which adds the server's long
    // name to it, does not.
    const NAME: usize = 2000;
    const SERVER: &str = "upstream-with-a-long-name-for-a-larger-reply";
    for protocol in PROTOCOLS {
        let server = Server::start("unframed", protocol, SERVER, &scratch)?;
        let yaml = format!(
            "listeners:
  - {{ name: small, address: 127.0.0.1:0, protocol: thrift, route_config: routes, codec: {{ max_frame_bytes: 1024 }} }}
  - {{ name: in, address: 127.0.0.1:0, protocol: thrift, route_config: routes }}
route_configs:
  - name: routes
    routes:{}
clusters:
  - name: upstream
    codec: {{ max_frame_bytes: {} }}
    endpoints: [ {{ address: \"{}\" }} ]
",
            greeter_routes("upstream"),
            NAME + 50,
            server.address()
        );
        let proxy = InProcessProxy::start(&yaml)?;
        let name = NAME.to_string();
        let after = format!(r#""after": "Hello, after from {SERVER}""#);
        let small = proxy.addr("small")?.port();
        let answer = client(small, "unframed", protocol, &["big", &name], "", &scratch)?;
        let refused = r#""big": {"message": "bad_request: the call is larger than the listener's max_frame_bytes: passed over unread", "type": 7}"#;
        assert_eq!(answer, format!("{{{after}, {refused}}}"), "{protocol}");
        let port = proxy.addr("in")?.port();
        let answer = client(port, "unframed", protocol, &["big", &name], "", &scratch)?;
        assert!(
            answer.starts_with(&format!(r#"{{{after}, "big": {{"message": "#))
                && answer.ends_with(r#", "type": 6}}"#),
            "{protocol}: {answer}"
        );
        let metrics = proxy.metrics();
        let series = |name: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let failed = "metaprotocol_upstream_rq_failures_total{cluster=\"upstream\",origin=\"upstream\",reason=\"response_too_large\"}";
        assert_eq!(series(failed), 1.0, "{protocol}: {metrics}");
        let refused = "metaprotocol_upstream_cx_protocol_errors_total{cluster=\"upstream\"}";
        assert_eq!(series(refused), 0.0, "{protocol}");
    }
    Ok(())
}

/// A THeader server answering under zlib, whose answer inflates past the cluster's
/// `max_frame_bytes` (its compressed frame is far within it), fails its own call alone with an
/// `INTERNAL_ERROR` `TApplicationException`, counted as `response_too_large`, and the client's
/// next call is served on the same upstream connection. Before, the answer was taken off the
/// stream before it was refused, so the engine looked for its call in the bytes after it: the
/// call waited for its route's timeout, or the next answer failed another call.
#[test]
fn a_zlib_answer_over_the_frame_limit_fails_its_call_alone() -> TestResult {
    let Some(scratch) = prepare("zlib-answer-big")? else {
        return Ok(());
    };
    // The call, inflated, fits the cluster's limit; the reply, which adds the server's long
    // name to the name, does not.
    const NAME: usize = 2000;
    const SERVER: &str = "upstream-with-a-long-name-for-a-larger-reply";
    for protocol in PROTOCOLS {
        let server = Server::start_with_env(
            free_port()?,
            "header",
            protocol,
            SERVER,
            &[("THRIFT_WRITE_ZLIB", "1")],
            &scratch,
        )?;
        let yaml = format!(
            "{ONE_LISTENER}{}
clusters:
  - name: upstream
    codec: {{ max_frame_bytes: {} }}
    endpoints: [ {{ address: \"{}\" }} ]
",
            greeter_routes("upstream"),
            NAME + 60,
            server.address()
        );
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let started = Instant::now();
        let answer = client(
            port,
            "header",
            protocol,
            &["big", &NAME.to_string()],
            "",
            &scratch,
        )?;
        let after = format!(r#""after": "Hello, after from {SERVER}""#);
        assert!(
            answer.starts_with(&format!(r#"{{{after}, "big": {{"message": "#))
                && answer.ends_with(r#", "type": 6}}"#),
            "{protocol}: {answer}"
        );
        // Failed when its answer came, not at the route's 10 s timeout.
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(8),
            "{protocol}: after {elapsed:?}"
        );
        let metrics = proxy.metrics();
        let failed = [
            ("cluster", "upstream"),
            ("origin", "upstream"),
            ("reason", "response_too_large"),
        ];
        let value =
            support::metrics::sample(&metrics, "metaprotocol_upstream_rq_failures_total", &failed);
        assert_eq!(value, 1.0, "{protocol}: {metrics}");
        let refused = [("cluster", "upstream")];
        let value = support::metrics::sample(
            &metrics,
            "metaprotocol_upstream_cx_protocol_errors_total",
            &refused,
        );
        assert_eq!(value, 0.0, "{protocol}");
    }
    Ok(())
}

/// A proxy whose listener `small` takes frames of up to 1 KiB, routing the greeter's methods
/// to `server`.
fn small_frames(server: &Server) -> String {
    format!(
        "listeners:
  - {{ name: small, address: 127.0.0.1:0, protocol: thrift, route_config: routes, codec: {{ max_frame_bytes: 1024 }} }}
route_configs:
  - name: routes
    routes:{}
clusters:
  - name: upstream
    endpoints: [ {{ address: \"{}\" }} ]
",
        greeter_routes("upstream"),
        server.address()
    )
}

/// Framed or THeader, a call over the listener's `max_frame_bytes` is passed over by its
/// length and answered with a `PROTOCOL_ERROR` `TApplicationException` in the client's
/// transport and protocol, and the client's next call on the same connection is served
/// (before, the connection closed).
#[test]
fn length_prefixed_calls_over_the_frame_limit_are_answered() -> TestResult {
    let Some(scratch) = prepare("framed-big")? else {
        return Ok(());
    };
    for transport in ["framed", "header"] {
        for protocol in PROTOCOLS {
            let server = Server::start(transport, protocol, "upstream", &scratch)?;
            let proxy = InProcessProxy::start(&small_frames(&server))?;
            let port = proxy.addr("small")?.port();
            let answer = client(port, transport, protocol, &["big", "2000"], "", &scratch)?;
            let expected = r#"{"after": "Hello, after from upstream", "big": {"message": "bad_request: the call is larger than the listener's max_frame_bytes: passed over unread", "type": 7}}"#;
            assert_eq!(answer, expected, "{transport} {protocol}");
        }
    }
    Ok(())
}

/// A one-way call over the listener's `max_frame_bytes`, in each transport and protocol, is
/// passed over (by its length, or walked as it arrives unframed) and never forwarded: it has no
/// answer to give, and is counted as a bad request. Its connection goes on (a one-way ping and
/// a call after it are served) and so does another client's, open all along.
#[test]
fn a_one_way_call_over_the_frame_limit_is_passed_over_and_counted() -> TestResult {
    let Some(scratch) = prepare("oneway-big")? else {
        return Ok(());
    };
    for transport in TRANSPORTS {
        for protocol in PROTOCOLS {
            let server = Server::start(transport, protocol, "upstream", &scratch)?;
            let proxy = InProcessProxy::start(&small_frames(&server))?;
            let port = proxy.addr("small")?.port();
            let answer = client(
                port,
                transport,
                protocol,
                &["bigping", "4000"],
                "",
                &scratch,
            )?;
            let expected = r#"{"after": "Hello, after from upstream", "before": "Hello, before from upstream", "other": "Hello, other from upstream", "pings": 1}"#;
            assert_eq!(answer, expected, "{transport} {protocol}");
            let metrics = proxy.metrics();
            let small = [("listener", "small")];
            let counted = [
                ("metaprotocol_downstream_rq_oneway_total", &small[..], 2.0),
                (
                    "metaprotocol_local_replies_total",
                    &[("listener", "small"), ("reason", "bad_request")][..],
                    1.0,
                ),
                (
                    "metaprotocol_downstream_protocol_errors_total",
                    &small[..],
                    0.0,
                ),
            ];
            for (name, labels, expected) in counted {
                let value = support::metrics::sample(&metrics, name, labels);
                assert_eq!(value, expected, "{transport} {protocol}: {name}");
            }
        }
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

/// A call that is not multiplexed has no `service`: a THeader header spelt `service` (or
/// `method`) from Apache Thrift's own client does not route it as the call's own key would,
/// and still reaches the server as it came. Before, the header became the call's `service`,
/// and a route for service `Admin` took a client's word for it.
#[test]
fn theader_headers_spelt_service_or_method_do_not_route_the_call() -> TestResult {
    let Some(scratch) = prepare("ownkeys")? else {
        return Ok(());
    };
    for protocol in PROTOCOLS {
        let open = Server::start("header", protocol, "open", &scratch)?;
        let admin = Server::start("header", protocol, "admin", &scratch)?;
        let yaml = format!(
            r#"
{ONE_LISTENER}
      - name: admin-service
        match:
          metadata:
            - {{ key: service, exact: Admin }}
        route: {{ cluster: admin }}
      - name: admin-method
        match:
          metadata:
            - {{ key: method, exact: deleteAll }}
        route: {{ cluster: admin }}{greeter}
clusters:
  - {{ name: open, endpoints: [ {{ address: "{open}" }} ] }}
  - {{ name: admin, endpoints: [ {{ address: "{admin}" }} ] }}
"#,
            greeter = greeter_routes("open"),
            open = open.address(),
            admin = admin.address(),
        );
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let headers = "service=Admin,method=deleteAll";
        assert_eq!(
            client(
                port,
                "header",
                protocol,
                &["hello", "w1"],
                headers,
                &scratch
            )?,
            r#"{"hello": "Hello, w1 from open", "response_headers": {}}"#,
            "{protocol}: a client's headers routed the call"
        );
        assert_eq!(
            client(
                port,
                "header",
                protocol,
                &["echo", "service"],
                headers,
                &scratch
            )?,
            r#"{"echo": "Admin"}"#,
            "{protocol}: the header reaches the server"
        );
    }
    Ok(())
}

/// A THeader header in a persistent (`PKEYVALUE`) group, or in any group after one, is none
/// that Apache Thrift's Python server hands its handler (its readers stop at that group): it
/// routes no call, and a `request_mutation` does not make the server read it. Before, the proxy
/// read `tenant: admin` from such a group, routed the call to `admin`, and rewrote the block
/// with it among the headers the server reads.
#[test]
fn theader_headers_from_a_persistent_group_on_neither_route_nor_reach_the_handler() -> TestResult {
    let Some(scratch) = prepare("persistent")? else {
        return Ok(());
    };
    for protocol in PROTOCOLS {
        let open = Server::start("header", protocol, "open", &scratch)?;
        let admin = Server::start("header", protocol, "admin", &scratch)?;
        let yaml = format!(
            r#"
{ONE_LISTENER}
      - name: admin-tenant
        match:
          metadata:
            - {{ key: tenant, exact: admin }}
        route: {{ cluster: admin }}
        request_mutation: {{ set: {{ x-routed-by: admin-route }} }}
      - name: greeter
        match:
          metadata:
            - {{ key: method, regex: "^(sayHello|echoHeader)$" }}
        route: {{ cluster: open }}
        request_mutation: {{ set: {{ x-routed-by: open-route }} }}
clusters:
  - {{ name: open, endpoints: [ {{ address: "{open}" }} ] }}
  - {{ name: admin, endpoints: [ {{ address: "{admin}" }} ] }}
"#,
            open = open.address(),
            admin = admin.address(),
        );
        let proxy = InProcessProxy::start(&yaml)?;
        let port = proxy.addr("in")?.port();
        let scenario = ["persistent", "tenant"];
        let expected = r#"{"echoHeader": "", "sayHello": "Hello, p from open"}"#;
        let direct = client(open.port, "header", protocol, &scenario, "", &scratch)?;
        assert_eq!(direct, expected, "{protocol}: the server itself");
        let proxied = client(port, "header", protocol, &scenario, "", &scratch)?;
        assert_eq!(
            proxied, expected,
            "{protocol}: headers the server never reads routed the call or reached it"
        );
    }
    Ok(())
}

/// A framed or THeader call with bytes after its argument struct in its frame is answered with
/// a `PROTOCOL_ERROR` the Python client raises, never forwarded, and its connection serves the
/// next call. Apache Thrift's servers disagree on such bytes and its clients never write them
/// (docs/config.md, `transport`): the Python THeader server drops them, as shown here, while
/// its framed server reads them as the start of the next message, and never answers the call
/// after (on a connection the proxy shares, every client's next call).
#[test]
fn a_call_with_bytes_after_its_arguments_is_answered_and_its_connection_goes_on() -> TestResult {
    let Some(scratch) = prepare("trailing")? else {
        return Ok(());
    };
    for transport in ["framed", "header"] {
        for protocol in PROTOCOLS {
            let server = Server::start(transport, protocol, "upstream", &scratch)?;
            let yaml = to_upstream(&server);
            let proxy = InProcessProxy::start(&yaml)?;
            let port = proxy.addr("in")?.port();
            let scenario = ["trailing", "3"];
            let proxied = client(port, transport, protocol, &scenario, "", &scratch)?;
            let refused = r#"{"after": "Hello, after from upstream", "trailing": {"message": "bad_request: the frame holds bytes after the argument struct", "type": 7}}"#;
            assert_eq!(proxied, refused, "{transport} {protocol}");
            if transport == "header" {
                let direct = client(server.port, transport, protocol, &scenario, "", &scratch)?;
                let dropped = r#"{"after": "Hello, after from upstream", "trailing": "Hello, t from upstream"}"#;
                assert_eq!(direct, dropped, "{protocol}: the THeader server itself");
            }
        }
    }
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

#[test]
fn policy_filters_refuse_with_a_readable_application_exception() -> TestResult {
    let Some(scratch) = prepare("policy")? else {
        return Ok(());
    };
    let server = Server::start("framed", "binary", "alpha", &scratch)?;
    // `missingMethod` has no route: only a filter's refusal answers it with something other
    // than route_not_found (type 1). `sayHello` passes every filter, once.
    let missing = r#"[ { key: method, exact: missingMethod } ]"#;
    let yaml = format!(
        r#"
listeners:
  - name: rbac
    address: 127.0.0.1:0
    protocol: thrift
    route_config: routes
    filters:
      - {{ name: rbac, config: {{ action: deny, policies: [ {{ name: no-missing, metadata: {missing} }} ] }} }}
  - name: fault
    address: 127.0.0.1:0
    protocol: thrift
    route_config: routes
    filters:
      - {{ name: fault, config: {{ match: {{ metadata: {missing} }}, abort: {{ kind: unavailable }} }} }}
  - name: ratelimit
    address: 127.0.0.1:0
    protocol: thrift
    route_config: routes
    filters:
      - {{ name: local_ratelimit, config: {{ token_bucket: {{ max_tokens: 1, fill_interval: 1h }} }} }}
route_configs:
  - name: routes
    routes:{greeter}
clusters:
  - {{ name: alpha, endpoints: [ {{ address: "{alpha}" }} ] }}
"#,
        greeter = greeter_routes("alpha"),
        alpha = server.address(),
    );
    let proxy = InProcessProxy::start(&yaml)?;
    let run = |listener: &str, scenario: &[&str]| -> TestResult<String> {
        let port = proxy.addr(listener)?.port();
        client(port, "framed", "binary", scenario, "", &scratch)
    };
    // An INTERNAL_ERROR (6), but over the limit fbthrift's LOADSHEDDING (11): refused unrun.
    let refused = |kind: &str, exception_type: i32| {
        (
            format!(r#"{{"exception": {{"message": "{kind}: metaprotocol-proxy: "#),
            format!(
                r#"", "type": {exception_type}}}, "mtype": 3, "name": "missingMethod", "seqid": 0}}"#
            ),
        )
    };
    let hello = r#"{"hello": "Hello, w1 from alpha"}"#;
    for (listener, kind) in [("rbac", "unauthorized"), ("fault", "unavailable")] {
        assert_eq!(run(listener, &["hello", "w1"])?, hello, "{listener}");
        let answer = run(listener, &["unknown"])?;
        let (start, end) = refused(kind, 6);
        assert!(
            answer.starts_with(&start) && answer.ends_with(&end),
            "{listener}: {answer}"
        );
    }
    // The bucket's one token goes to the first call; the next is over the limit.
    assert_eq!(run("ratelimit", &["hello", "w1"])?, hello);
    let answer = run("ratelimit", &["unknown"])?;
    let (start, end) = refused("over_limit", 11);
    assert!(
        answer.starts_with(&start) && answer.ends_with(&end),
        "{answer}"
    );
    Ok(())
}

/// Active health checks calling `pingCount` on the real Thrift servers: the probes pass (a
/// call of the method, answered); a stopped server leaves rotation within interval x
/// unhealthy_threshold and the calls go to the other; started again on its port, it returns.
#[test]
fn method_probes_take_a_stopped_server_out_of_rotation_and_back() -> TestResult {
    let Some(scratch) = prepare("health")? else {
        return Ok(());
    };
    let interval = Duration::from_millis(500);
    let threshold = 2;
    let a = Server::start("framed", "binary", "a", &scratch)?;
    let b = Server::start("framed", "binary", "b", &scratch)?;
    let yaml = format!(
        "{ONE_LISTENER}{}
clusters:
  - name: greeter
    codec: {{ transport: framed, protocol: binary }}
    endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ]
    health_check: {{ interval: {}ms, timeout: 400ms, unhealthy_threshold: {threshold}, healthy_threshold: 2, probe: {{ method: pingCount }} }}
",
        greeter_routes("greeter"),
        a.address(),
        b.address(),
        interval.as_millis(),
    );
    let proxy = InProcessProxy::start(&yaml)?;
    let port = proxy.addr("in")?.port();
    wait_until(DEADLINE, "six passed checks", || {
        Ok(proxy.health_checks("greeter", "success") >= 6)
    })?;
    assert_eq!(
        proxy.health_checks("greeter", "failure"),
        0,
        "both servers answer the probe"
    );

    let (b_port, b_address) = (b.port, b.address());
    let stopped = Instant::now();
    drop(b);
    wait_until(DEADLINE, "b to leave rotation", || {
        Ok(proxy.failing_checks(&b_address))
    })?;
    let took = stopped.elapsed();
    println!("thrift health check: the stopped server left rotation after {took:?}");
    assert!(
        took < interval * threshold * 11 / 10 + Duration::from_secs(1),
        "{took:?} for checks every {interval:?}, {threshold} in a row"
    );
    for _ in 0..4 {
        let answer = client(port, "framed", "binary", &["hello", "w1"], "", &scratch)?;
        assert_eq!(answer, r#"{"hello": "Hello, w1 from a"}"#);
    }

    let b = Server::start_on(b_port, "framed", "binary", "b", &scratch)?;
    wait_until(DEADLINE, "b to return", || {
        Ok(!proxy.failing_checks(&b_address))
    })?;
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..6 {
        served.insert(client(
            port,
            "framed",
            "binary",
            &["hello", "w1"],
            "",
            &scratch,
        )?);
    }
    assert!(
        served.contains(r#"{"hello": "Hello, w1 from b"}"#),
        "{served:?}"
    );
    drop(b);
    Ok(())
}

/// An answer over the cluster's `max_frame_bytes` fails its own call, with an `INTERNAL_ERROR`
/// `TApplicationException`; the proxy passes over its bytes and the call answered after it on
/// the same upstream connection gets its answer (before, the connection closed and both calls
/// failed). No Python: a framed binary client and a THeader compact server written by hand, so
/// that the seqid is a varint behind a header block (and THeader's own `seq` is not it).
#[tokio::test]
async fn an_answer_over_the_frame_limit_fails_its_call_alone() -> TestResult {
    use bytes::BytesMut;
    use metaprotocol_core::{Codec, MessageKind, ResponseStatus};
    use metaprotocol_thrift::{ApplicationException, FormatChoice, INTERNAL_ERROR, ThriftCodec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    /// A THeader compact REPLY to `seqid` whose result, field 0, is the string `value`.
    fn reply(seqid: u64, value: &[u8]) -> Vec<u8> {
        let mut message = vec![0x82, (2 << 5) | 1];
        varint(&mut message, seqid);
        message.extend_from_slice(&[5, b'g', b'r', b'e', b'e', b't', 0x08, 0x00]);
        varint(&mut message, value.len() as u64);
        message.extend_from_slice(value);
        message.push(0);
        let mut frame = ((14 + message.len()) as u32).to_be_bytes().to_vec();
        // Magic, flags, seq 0, one word of header block: protocol compact, no transforms.
        frame.extend_from_slice(&[0x0f, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0]);
        frame.extend_from_slice(&message);
        frame
    }
    /// A framed binary CALL of `method` with seqid 1 and no arguments.
    fn call(method: &str) -> Vec<u8> {
        let mut message = vec![0x80, 1, 0, 1];
        message.extend_from_slice(&(method.len() as u32).to_be_bytes());
        message.extend_from_slice(method.as_bytes());
        message.extend_from_slice(&[0, 0, 0, 1, 0]);
        let mut frame = (message.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&message);
        frame
    }

    let (upstream, server) = support::big_answer::start_upstream(
        || Box::new(ThriftCodec::new(FormatChoice::default(), 1 << 20)),
        ["big", "small"],
        |id, payload| Ok(reply(id, payload)[..].into()),
    )
    .await?;
    let proxy = support::proxy::start_engine(&format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: thrift, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters:
  - name: c
    codec: {{ max_frame_bytes: 16384, transport: header, protocol: compact }}
    endpoints: [ {{ address: \"{upstream}\" }} ]
"
    ))
    .await?;
    let address = support::proxy::listener_addr(&proxy, "in")?;
    // Both clients send seqid 1: the proxy numbers the calls on the upstream connection.
    let exchange = |method: &'static str, after: Duration| async move {
        tokio::time::sleep(after).await;
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(&call(method)).await?;
        let mut codec = ThriftCodec::new(FormatChoice::default(), 1 << 20);
        let mut buf = BytesMut::new();
        loop {
            if let Some(answer) = codec.decode(&mut buf)? {
                return TestResult::Ok(answer);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err("the proxy closed the connection".into());
            }
        }
    };
    // `small` after `big`, so that it waits behind `big`'s answer.
    let (big, small) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            exchange("big", Duration::ZERO),
            exchange("small", Duration::from_millis(100))
        )
    })
    .await?;
    let (big, small) = (big?, small?);
    assert_eq!((big.kind, big.request_id), (MessageKind::Response, 1));
    let exception = ApplicationException::from_message(&big)?;
    assert_eq!(exception.kind, INTERNAL_ERROR, "{}", exception.message);
    assert!(
        exception
            .message
            .contains("over the cluster's max_frame_bytes"),
        "{}",
        exception.message
    );
    assert_eq!((small.kind, small.request_id), (MessageKind::Response, 1));
    assert_eq!(small.status, ResponseStatus::Ok);
    assert!(small.frame.ends_with(b"fits\0"), "{:?}", small.frame);
    support::big_answer::assert_one_answer_passed_over(&proxy);
    proxy.shutdown().await;
    server.abort();
    Ok(())
}
