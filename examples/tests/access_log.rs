//! Access logs end to end with Dubbo: every command operator of a format string, the default
//! JSON line (with the client's TLS identity on a mutual-TLS listener), sampling by outcome, and
//! a writer stuck on a pipe nobody reads, which must not slow calls down (its lines are dropped
//! and counted instead).

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DemoProvider, DubboClient};
use metaprotocol_router::config::ClusterTlsSpec;
use metaprotocol_router::{Proxy, SeriesValue};
use support::mesh::{MeshCa, yaml};
use support::process::Scratch;
use support::proxy::{metric, start_engine};
use support::{TestResult, dubbo_request, file_lines, refusing_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every operator, separated by `|`.
const EVERY_OPERATOR: &str = "%START_TIME%|%DURATION%|%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%REQUESTED_SERVER_NAME%|%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_PEER_DNS_SAN%|%DOWNSTREAM_PEER_SUBJECT%|%LISTENER_NAME%|%PROTOCOL%|%ROUTE_NAME%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|%OUTCOME%|%RESPONSE_FLAGS%|%REQUEST_ID%|%TRACE_ID%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%BYTES_RECEIVED%|%BYTES_SENT%|%REQ(tenant)%|%REQ(tenant):3%|%METADATA(method)%|%REQ(absent)%|100%%";

/// A caller's W3C context, whose trace the line names.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Sends `frame` on `socket` and reads the whole answer.
async fn call(socket: &mut TcpStream, frame: &[u8]) -> TestResult<Vec<u8>> {
    socket.write_all(frame).await?;
    let mut answer = vec![0u8; 16];
    socket.read_exact(&mut answer).await?;
    let body = u32::from_be_bytes([answer[12], answer[13], answer[14], answer[15]]) as usize;
    answer.resize(16 + body, 0);
    socket.read_exact(&mut answer[16..]).await?;
    Ok(answer)
}

/// The listener `name`, logging to `log` as `format` (YAML), routing to the routes below.
fn listener(name: &str, log: &Path, format: &str) -> String {
    format!(
        "  - name: {name}\n    address: 127.0.0.1:0\n    protocol: dubbo\n    route_config: routes\n    access_log: {{ path: \"{}\", {format} }}\n",
        log.display()
    )
}

fn config(listeners: &str, provider: SocketAddr, dead: SocketAddr) -> String {
    format!(
        "listeners:\n{listeners}route_configs:
  - name: routes
    routes:
      - name: hello
        match: {{ metadata: [ {{ key: method, exact: sayHello }} ] }}
        route: {{ cluster: provider }}
      - name: dead
        route: {{ cluster: dead }}
        retry_policy: {{ num_retries: 1 }}
clusters:
  - {{ name: provider, endpoints: [ {{ address: \"{provider}\" }} ] }}
  - {{ name: dead, connect_timeout: 200ms, endpoints: [ {{ address: \"{dead}\" }} ] }}
"
    )
}

#[tokio::test]
async fn every_field_of_a_line() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-fields")?;
    let (text_log, json_log) = (scratch.path("text.log"), scratch.path("json.log"));
    // The text listener traces, to a collector that is not there: the line still names the
    // trace.
    let (_no_collector_socket, no_collector) = refusing_addr()?;
    let tracing = format!("    tracing: {{ otlp_endpoint: \"http://{no_collector}\" }}\n");
    let listeners = listener("text", &text_log, &format!("format: \"{EVERY_OPERATOR}\""))
        + &tracing
        + &listener("json", &json_log, "format: json");
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let text_in = proxy.listener_addr("text").ok_or("no listener")?;
    let mut socket = TcpStream::connect(text_in).await?;
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let hello = dubbo_request(
        77,
        "sayHello",
        &[("tenant", "acme-corp"), ("traceparent", &traceparent)],
    );
    let answer = call(&mut socket, &hello).await?;
    let failed = dubbo_request(78, "sayBye", &[]);
    let failure = call(&mut socket, &failed).await?;
    assert_eq!(failure[3], 80, "no connection to the dead cluster");
    let client = socket.local_addr()?;

    let logged = file_lines(&text_log, 2).await?;
    let fields: Vec<&str> = logged[0].split('|').collect();
    let start = fields[0];
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "RFC 3339 with milliseconds: {start}"
    );
    assert!(
        fields[1].parse::<u64>().is_ok(),
        "duration in ms: {}",
        fields[1]
    );
    let expected = [
        (2, client.to_string()),
        (3, client.ip().to_string()),
        (4, text_in.to_string()),
        (5, text_in.ip().to_string()),
        (6, "-".into()),
        (7, "-".into()),
        (8, "-".into()),
        (9, "-".into()),
        (10, "text".into()),
        (11, "dubbo".into()),
        (12, "hello".into()),
        (13, "provider".into()),
        (14, provider.address().to_string()),
        (15, "success".into()),
        (16, "-".into()),
        (17, "77".into()),
        (18, TRACE_ID.into()),
        (19, "1".into()),
        (20, hello.len().to_string()),
        (21, answer.len().to_string()),
        (22, "acme-corp".into()),
        (23, "acm".into()),
        (24, "sayHello".into()),
        (25, "-".into()),
        (26, "100%".into()),
    ];
    for (i, value) in &expected {
        assert_eq!(fields[*i], value, "field {i} of {}", logged[0]);
    }
    assert_eq!(fields.len(), 27, "{}", logged[0]);

    let fields: Vec<&str> = logged[1].split('|').collect();
    let failed_fields = [
        (12, "dead".to_owned()),
        (13, "dead".into()),
        (14, dead.to_string()),
        (15, "upstream_connect_failure".into()),
        (16, "UF,URX,LR".into()),
        (17, "78".into()),
        (19, "2".into()),
        (20, failed.len().to_string()),
        (21, failure.len().to_string()),
        (22, "-".into()),
    ];
    for (i, value) in &failed_fields {
        assert_eq!(fields[*i], value, "field {i} of {}", logged[1]);
    }
    assert_ne!(fields[18], TRACE_ID, "a new trace");
    assert_eq!(fields[18].len(), 32);

    let json_in = proxy.listener_addr("json").ok_or("no listener")?;
    let mut socket = TcpStream::connect(json_in).await?;
    call(
        &mut socket,
        &dubbo_request(5, "sayHello", &[("tenant", "t")]),
    )
    .await?;
    let line = file_lines(&json_log, 1).await?.remove(0);
    let json: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(json["listener"], "json");
    assert_eq!(json["protocol"], "dubbo");
    assert_eq!(json["service"], DEMO_SERVICE);
    assert_eq!(json["method"], "sayHello");
    assert_eq!(json["route_name"], "hello");
    assert_eq!(json["upstream_cluster"], "provider");
    assert_eq!(json["upstream_host"], provider.address().to_string());
    assert_eq!(json["outcome"], "success");
    assert_eq!(json["response_flags"], "-");
    assert_eq!(json["request_id"], 5);
    assert_eq!(json["attempts"], 1);
    assert!(
        json["duration_ms"].is_u64() && json["bytes_sent"].as_u64() > Some(0),
        "{json}"
    );
    assert!(
        json["trace_id"].is_null(),
        "this listener does not trace: {json}"
    );
    assert!(json["requested_server_name"].is_null() && json["downstream_peer_uri_san"].is_null());
    assert_eq!(
        json["downstream_remote_address"],
        socket.local_addr()?.to_string()
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_mutual_tls_client_is_logged_by_its_certificate() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-mtls")?;
    let ca = MeshCa::new(&scratch, "mesh")?;
    let edge = ca.workload(&scratch, "edge", "default", "edge", &["edge.default.svc"])?;
    let reader = ca.workload(&scratch, "reader", "default", "reader", &["reader.local"])?;
    let log = scratch.path("tls.log");
    let listeners = listener("tls", &log, "format: json")
        + &format!("    tls: {}\n", yaml(&ca.listener_tls(&edge))?);
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let tls = ClusterTlsSpec {
        server_name: Some("edge.default.svc".to_owned()),
        subject_alt_names: Vec::new(),
        crl_files: Vec::new(),
        ..ca.client_tls(Some(&reader), "")
    };
    let client = DubboClient::with_tls(proxy.listener_addr("tls").ok_or("no listener")?, &tls)?;
    assert_eq!(client.call("sayHello", "w", &[]).await?.dubbo_status, 20);

    let line = file_lines(&log, 1).await?.remove(0);
    let json: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(json["outcome"], "success", "{json}");
    assert_eq!(json["requested_server_name"], "edge.default.svc");
    assert_eq!(json["downstream_peer_uri_san"], reader.spiffe_id.as_str());
    assert_eq!(json["downstream_peer_dns_san"], "reader.local");
    assert!(
        json["downstream_peer_subject"].is_null(),
        "mesh certificates have an empty subject: {json}"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sampling_keeps_a_share_of_each_outcome() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-sampling")?;
    let log = scratch.path("errors.log");
    let listeners = listener(
        "in",
        &log,
        "format: \"%OUTCOME%\", sampling: { success: 0, default: 100 }",
    );
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    for id in 0..20 {
        call(&mut socket, &dubbo_request(id, "sayHello", &[])).await?;
    }
    call(&mut socket, &dubbo_request(99, "sayBye", &[])).await?;
    let logged = file_lines(&log, 1).await?;
    // Give stray success lines (there must be none) the time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged_after = file_lines(&log, 1).await?;
    assert_eq!(logged, ["upstream_connect_failure"]);
    assert_eq!(logged_after, logged);
    proxy.shutdown().await;
    Ok(())
}

/// Values clients choose are written safely: a text line escapes their control characters, so
/// that a newline in a value cannot forge a line, and a line keeps at most 1 KiB of a value.
#[tokio::test]
async fn client_values_cannot_forge_lines_or_grow_them() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-escapes")?;
    let log = scratch.path("text.log");
    let listeners = listener(
        "in",
        &log,
        "format: \"%REQ(tenant)% %REQ(x-big)% %OUTCOME%\"",
    );
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let forged = "acme\n[2030-01-01T00:00:00Z] admin deleteAll success";
    let big = "b".repeat(64 * 1024);
    call(
        &mut socket,
        &dubbo_request(1, "sayHello", &[("tenant", forged), ("x-big", &big)]),
    )
    .await?;
    call(
        &mut socket,
        &dubbo_request(2, "sayHello", &[("tenant", "t2")]),
    )
    .await?;
    let logged = file_lines(&log, 2).await?;
    // (Lines this long are not printed when a check fails.)
    assert_eq!(logged.len(), 2, "one line a call");
    let expected = format!(
        "acme\\n[2030-01-01T00:00:00Z] admin deleteAll success {} success",
        &big[..1024]
    );
    assert!(
        logged[0] == expected,
        "the first line, of {} bytes, is not the value escaped and cut to 1 KiB",
        logged[0].len()
    );
    assert_eq!(logged[1], "t2 - success");
    proxy.shutdown().await;
    Ok(())
}

/// Makes `count` calls one after another on one connection; how long they took.
async fn timed_calls(address: SocketAddr, count: u64) -> TestResult<Duration> {
    let mut socket = TcpStream::connect(address).await?;
    let started = Instant::now();
    for id in 0..count {
        let answer = call(&mut socket, &dubbo_request(id, "sayHello", &[])).await?;
        assert_eq!(answer[3], 20);
    }
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_writer_never_slows_calls_and_its_lines_are_counted() -> TestResult {
    const CALLS: u64 = 2000;
    const WARM_UP: u64 = 100;
    const QUEUE: u64 = 16;
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-stuck")?;
    let (fifo, file) = (scratch.path("nobody-reads.fifo"), scratch.path("disk.log"));
    assert!(Command::new("mkfifo").arg(&fifo).status()?.success());
    let listeners = listener(
        "stuck",
        &fifo,
        &format!("format: json, queue_size: {QUEUE}"),
    ) + &listener("disk", &file, "format: json");
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;

    // The writer blocks opening a pipe nobody reads: every line after the queue fills is
    // dropped, none waits. Both listeners warm up (connections, buffers) before they are timed.
    let (stuck_in, disk_in) = (
        proxy.listener_addr("stuck").ok_or("no listener")?,
        proxy.listener_addr("disk").ok_or("no listener")?,
    );
    timed_calls(disk_in, WARM_UP).await?;
    timed_calls(stuck_in, WARM_UP).await?;
    let on_disk = timed_calls(disk_in, CALLS).await?;
    let stuck = timed_calls(stuck_in, CALLS).await?;
    println!("{CALLS} calls: {on_disk:?} logging to a file, {stuck:?} logging to a stuck pipe");
    // A bound that only a call waiting on the writer would break (it would wait for good): what
    // the stuck writer costs a request (a load and a counter) is measured in benches/README.md,
    // not here, on a shared machine.
    assert!(
        stuck < on_disk * 3 + Duration::from_secs(2),
        "a stuck writer slowed the calls: {stuck:?} against {on_disk:?}"
    );
    let counter = |name: &str| {
        proxy
            .metrics()
            .family(name)
            .and_then(|f| {
                f.find(&[("listener", "stuck")]).find_map(|v| match v {
                    SeriesValue::Counter(n) => Some(*n),
                    _ => None,
                })
            })
            .unwrap_or(0)
    };
    let (queued, dropped) = (
        counter("metaprotocol_access_log_lines"),
        counter("metaprotocol_access_log_dropped"),
    );
    assert_eq!(queued + dropped, CALLS + WARM_UP);
    // The writer takes the first line, and what was queued by then, into its first write
    // before it blocks opening the pipe (so at most a queue's worth); then the queue fills.
    assert!(
        queued <= 2 * QUEUE,
        "at most the writer's first batch and a queue's worth wait: {queued}"
    );

    // A reader lets the writer go, with what was queued.
    let reader = std::thread::spawn(move || std::fs::read_to_string(fifo));
    proxy.shutdown().await;
    drop(proxy);
    let written = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| "the reader panicked")??;
    assert_eq!(written.lines().count() as u64, queued);
    Ok(())
}

/// A line shows what the listener's rbac filters decided and the policy that decided it, for the
/// enforced filters and the shadow one apart: the allow policy that let a call in (also through
/// a deny filter none of whose policies matched), the deny policy that refused one, none for a
/// call no allow policy names.
#[tokio::test]
async fn a_line_names_the_rbac_policy_that_decided() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-rbac")?;
    let log = scratch.path("rbac.log");
    let format = "format: \"%REQ(tenant)% %REQ(method)% %RBAC_RESULT% %RBAC_POLICY% %RBAC_SHADOW_RESULT% %RBAC_SHADOW_POLICY%\"";
    let listeners = listener("in", &log, format)
        + "    filters:
      - { name: rbac, config: { action: deny, shadow: true, policies: [ { name: beta-watch, metadata: [ { key: tenant, exact: beta } ] } ] } }
      - { name: rbac, config: { action: allow, policies: [ { name: greeters, metadata: [ { key: method, prefix: say } ] } ] } }
      - { name: rbac, config: { action: deny, policies: [ { name: no-acme, metadata: [ { key: tenant, exact: acme } ] } ] } }
";
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    for (id, (tenant, method)) in [
        ("t", "sayHello"),
        ("acme", "sayHello"),
        ("beta", "sayHello"),
        ("t", "ping"),
    ]
    .into_iter()
    .enumerate()
    {
        call(
            &mut socket,
            &dubbo_request(id as u64, method, &[("tenant", tenant)]),
        )
        .await?;
    }
    assert_eq!(
        file_lines(&log, 4).await?,
        [
            "t sayHello allowed greeters allowed -",
            "acme sayHello denied no-acme allowed -",
            "beta sayHello allowed greeters denied beta-watch",
            "t ping denied - allowed -",
        ]
    );
    proxy.shutdown().await;
    Ok(())
}

/// `%RESP(key)%` shows the upstream's answer's metadata (the demo provider names itself in the
/// answer's `provider` attachment), by a key in any case, with a fallback and a length as
/// `%REQ%`; `%RESPONSE_CODE%` says whose answer the client got, as Aeraki's MetaProtocol proxy
/// writes it: `0` the upstream's, `1` the proxy's own (the dead cluster's).
#[tokio::test]
async fn a_line_shows_the_answers_metadata_and_whose_answer_it_was() -> TestResult {
    let provider = DemoProvider::start("p-1").await?;
    let scratch = Scratch::new("access-log-response")?;
    let log = scratch.path("response.log");
    let format = "format: \"%REQ(method)% %RESPONSE_CODE% %RESP(provider)% %RESP(PROVIDER):1% %RESP(absent?provider)% %RESP(absent)%\"";
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listener("in", &log, format), provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    call(&mut socket, &dubbo_request(1, "sayHello", &[])).await?;
    let failure = call(&mut socket, &dubbo_request(2, "sayBye", &[])).await?;
    assert_eq!(failure[3], 80, "no connection to the dead cluster");
    assert_eq!(
        file_lines(&log, 2).await?,
        ["sayHello 0 p-1 p p-1 -", "sayBye 1 - - - -"]
    );
    proxy.shutdown().await;
    Ok(())
}

/// `%UPSTREAM_LOCAL_ADDRESS%` shows the proxy's own address on the connection the call's last
/// attempt went on, as Envoy's: the one the provider saw the call come from; `-` for a call
/// whose connection could not be made.
#[tokio::test]
async fn a_line_shows_the_upstream_connections_local_address() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-upstream-local")?;
    let log = scratch.path("upstream.log");
    let format =
        "format: \"%REQ(method)% %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%\"";
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listener("in", &log, format), provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    call(&mut socket, &dubbo_request(1, "sayHello", &[])).await?;
    let failure = call(&mut socket, &dubbo_request(2, "sayBye", &[])).await?;
    assert_eq!(failure[3], 80, "no connection to the dead cluster");
    let seen = provider.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let from = seen[0].peer;
    assert_eq!(
        file_lines(&log, 2).await?,
        [
            format!("sayHello {from} {}", from.ip()),
            "sayBye - -".into()
        ]
    );
    proxy.shutdown().await;
    Ok(())
}

/// `%CONNECTION_TERMINATION_DETAILS%` says why the proxy closed the connection a call came on,
/// on the line of a call that ended once it had decided to: here a client's stream that cannot
/// be read on (a frame of a bad magic number after a call), which the proxy closes once that
/// call is answered, as Envoy's `codec_error:`; `-` on a connection the proxy keeps.
#[tokio::test]
async fn a_line_says_why_the_proxy_closed_its_connection() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let scratch = Scratch::new("access-log-termination")?;
    let log = scratch.path("termination.log");
    let (_dead_socket, dead) = refusing_addr()?;
    let yaml = config(&listener("in", &log, TERMINATION), provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut kept = TcpStream::connect(address).await?;
    call(&mut kept, &dubbo_request(1, "sayHello", &[])).await?;
    assert_eq!(file_lines(&log, 1).await?, ["1 -"]);
    // The call and the bad frame in one write: the call is on its way upstream when the
    // proxy reads the frame after it.
    let mut closed = TcpStream::connect(address).await?;
    let mut frames = dubbo_request(2, "sayHello", &[]).to_vec();
    frames.extend_from_slice(&[0u8; 16]);
    let answer = call(&mut closed, &frames).await?;
    assert_eq!(answer[3], 20, "the call before the bad frame is answered");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), closed.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "then the connection closes");
    assert_eq!(
        file_lines(&log, 2).await?,
        ["1 -", "2 codec_error:malformed"]
    );
    proxy.shutdown().await;
    Ok(())
}

/// Each call's id and `%CONNECTION_TERMINATION_DETAILS%`.
const TERMINATION: &str = "format: \"%REQUEST_ID% %CONNECTION_TERMINATION_DETAILS%\"";

/// A proxy whose listener `in` (with `settings`, YAML lines of a listener) logs to `log` as
/// [`TERMINATION`], routing `sayHello` to `upstream`; `top_level` is YAML of the config's top
/// level. The socket returned holds the address of the routes' dead cluster.
async fn logging_termination(
    upstream: &TcpListener,
    log: &Path,
    settings: &str,
    top_level: &str,
) -> TestResult<(Proxy, tokio::net::TcpSocket)> {
    let (dead_socket, dead) = refusing_addr()?;
    let listeners = listener("in", log, TERMINATION) + settings;
    let yaml = format!(
        "{top_level}\n{}",
        config(&listeners, upstream.local_addr()?, dead)
    );
    Ok((start_engine(&yaml).await?, dead_socket))
}

/// Sends `sayHello` call `id` on `client` and takes it off `upstream` unanswered: the
/// connection it came on, which keeps the call in flight until it is dropped.
async fn held_call(
    client: &mut TcpStream,
    upstream: &TcpListener,
    id: u64,
) -> TestResult<TcpStream> {
    client
        .write_all(&dubbo_request(id, "sayHello", &[]))
        .await?;
    let wait = Duration::from_secs(20);
    let (mut held, _) = tokio::time::timeout(wait, upstream.accept()).await??;
    let mut head = [0u8; 16];
    tokio::time::timeout(wait, held.read_exact(&mut head)).await??;
    Ok(held)
}

/// Waits until `series` of `proxy` reads 1, for 20 s at most.
async fn counted_once(proxy: &Proxy, series: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(proxy, series) < 1.0 {
        if Instant::now() > deadline {
            return Err(format!("{series} not counted in 20 s").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Ends the calls `held` keeps in flight: the upstream hangs up, and takes no other connection.
fn hang_up(upstream: TcpListener, held: TcpStream) {
    drop(upstream);
    drop(held);
}

/// `%CONNECTION_TERMINATION_DETAILS%` is `frame_timeout` on the line of a call in flight on a
/// connection the proxy closes because the frame after it took longer than the listener's
/// `frame_timeout` to arrive (the call, ended after, still logged).
#[tokio::test]
async fn a_line_says_the_proxy_closed_a_connection_whose_frame_took_too_long() -> TestResult {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let scratch = Scratch::new("access-log-frame-timeout")?;
    let log = scratch.path("termination.log");
    let (proxy, _dead) =
        logging_termination(&upstream, &log, "    frame_timeout: 200ms\n", "").await?;
    let mut client = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let held = held_call(&mut client, &upstream, 1).await?;
    // The head of the next call, and nothing more.
    client
        .write_all(&dubbo_request(2, "sayHello", &[])[..10])
        .await?;
    counted_once(
        &proxy,
        "metaprotocol_downstream_protocol_errors_total{listener=\"in\",reason=\"frame_timeout\"}",
    )
    .await?;
    hang_up(upstream, held);
    assert_eq!(file_lines(&log, 1).await?, ["1 frame_timeout"]);
    proxy.shutdown().await;
    Ok(())
}

/// `%CONNECTION_TERMINATION_DETAILS%` is `max_buffered_bytes` on the line of a call in flight on
/// a connection the proxy closes because the large frame arriving after it found
/// `limits.max_buffered_bytes` held by another client's frame partly received.
#[tokio::test]
async fn a_line_says_the_proxy_closed_a_connection_that_found_max_buffered_bytes_held() -> TestResult
{
    const BOUND: usize = 64 * 1024;
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let scratch = Scratch::new("access-log-max-buffered")?;
    let log = scratch.path("termination.log");
    let limits = format!("limits: {{ max_buffered_bytes: {BOUND} }}");
    let (proxy, _dead) = logging_termination(&upstream, &log, "", &limits).await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    let mut client = TcpStream::connect(address).await?;
    let held = held_call(&mut client, &upstream, 1).await?;
    // Another client sends four times the bound of a call of 1 MiB, and waits.
    let large = dubbo_request(2, "sayHello", &[("x-big", &"x".repeat(1024 * 1024))]);
    let mut other = TcpStream::connect(address).await?;
    other.write_all(&large[..4 * BOUND]).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&proxy, "metaprotocol_read_buffered_bytes") < BOUND as f64 {
        assert!(
            Instant::now() < deadline,
            "the other client's frame was not read"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first client's large call, past the 16 KiB any frame may take.
    client.write_all(&large[..BOUND]).await?;
    counted_once(
        &proxy,
        "metaprotocol_downstream_cx_overflow_total{listener=\"in\"}",
    )
    .await?;
    hang_up(upstream, held);
    assert_eq!(file_lines(&log, 1).await?, ["1 max_buffered_bytes"]);
    drop(other);
    proxy.shutdown().await;
    Ok(())
}

/// `%CONNECTION_TERMINATION_DETAILS%` is `drain_ended` on the line of a call still in flight
/// when the proxy's drain ends, which the proxy answers itself as it closes the connection.
#[tokio::test]
async fn a_line_says_the_proxy_closed_a_connection_whose_drain_ended() -> TestResult {
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let scratch = Scratch::new("access-log-drain-ended")?;
    let log = scratch.path("termination.log");
    let (proxy, _dead) = logging_termination(&upstream, &log, "", "drain_time: 200ms").await?;
    let mut client = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let _held = held_call(&mut client, &upstream, 1).await?;
    proxy.shutdown().await;
    assert_eq!(file_lines(&log, 1).await?, ["1 drain_ended"]);
    Ok(())
}

/// Istio's default access log format (`meshConfig.accessLogFormat` unset), pasted as YAML the way
/// a mesh's config has it (a block ending in a newline), loads and writes one line a call, saying
/// why each call got its answer (`%RESPONSE_CODE_DETAILS%`): the upstream's, the rbac policy that
/// refused it, the connection that could not be made, and why it could not
/// (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`). `%REQ(X-REQUEST-ID)%` finds the call's
/// `x-request-id`, as Envoy's header names are, whatever their case.
#[tokio::test]
async fn istios_default_format_says_why_each_call_got_its_answer() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (_dead_socket, dead) = refusing_addr()?;
    let scratch = Scratch::new("access-log-istio")?;
    let log = scratch.path("istio.log");
    let listeners = format!(
        "  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    access_log:
      path: \"{}\"
      format: |
        [%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%
    filters:
      - {{ name: rbac, config: {{ action: deny, policies: [ {{ name: no-acme, metadata: [ {{ key: tenant, exact: acme }} ] }} ] }} }}
",
        log.display()
    );
    let yaml = config(&listeners, provider.address(), dead);
    let proxy = start_engine(&yaml).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    let calls = [
        dubbo_request(1, "sayHello", &[("tenant", "t"), ("x-request-id", "r-1")]),
        dubbo_request(2, "sayHello", &[("tenant", "acme")]),
        dubbo_request(3, "sayBye", &[("tenant", "t")]),
    ];
    for frame in &calls {
        call(&mut socket, frame).await?;
    }
    let logged = file_lines(&log, calls.len()).await?;
    // Each line's fields after its time, split at spaces (the quoted request line takes three).
    let fields: Vec<Vec<&str>> = logged
        .iter()
        .map(|line| {
            line.split_once("] ")
                .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect())
        })
        .collect();
    let provider_host = format!("\"{}\"", provider.address());
    let dead_host = format!("\"{dead}\"");
    let expected = [
        [
            "-",
            "via_upstream",
            "\"r-1\"",
            &provider_host,
            "provider",
            "hello",
        ],
        [
            "UAEX,LR",
            "rbac_access_denied_matched_policy[no-acme]",
            "\"-\"",
            "\"-\"",
            "-",
            "-",
        ],
        [
            "UF,URX,LR",
            "upstream_reset_before_response_started{connection_failure}",
            "\"-\"",
            &dead_host,
            "dead",
            "dead",
        ],
    ];
    for (line, (fields, expected)) in logged.iter().zip(fields.iter().zip(expected)) {
        assert_eq!(fields.len(), 23, "{line}");
        assert_eq!(&fields[..3], ["\"-", "-", "dubbo\""], "{line}");
        let shown = [
            fields[4], fields[5], fields[14], fields[16], fields[17], fields[22],
        ];
        assert_eq!(shown, expected, "{line}");
    }
    // `%RESPONSE_CODE%`, as Aeraki's: the upstream's answer, then the proxy's own.
    let codes: Vec<&str> = fields.iter().map(|fields| fields[3]).collect();
    assert_eq!(codes, ["0", "1", "1"], "{logged:?}");
    // `%UPSTREAM_LOCAL_ADDRESS%`: the proxy's address on the provider's connection, which
    // the provider saw the call come from; none where no connection took the call.
    let from = provider.seen().first().map(|seen| seen.peer.to_string());
    let local: Vec<&str> = fields.iter().map(|fields| fields[18]).collect();
    assert_eq!(local[0], from.as_deref().unwrap_or("?"), "{logged:?}");
    assert_eq!(local[1..], ["-", "-"], "{logged:?}");
    // `%CONNECTION_TERMINATION_DETAILS%`: the proxy closed none of them.
    assert!(fields.iter().all(|fields| fields[6] == "-"), "{logged:?}");
    assert_eq!(fields[0][7], "\"-\"", "{}", logged[0]);
    assert_eq!(fields[1][7], "\"-\"", "{}", logged[1]);
    // Refused; or, when the resend found the endpoint backing off after that, the backoff.
    let reason = fields[2][7];
    assert!(
        reason.contains("Connection_refused") || reason.contains("backing_off"),
        "{}",
        logged[2]
    );
    proxy.shutdown().await;
    Ok(())
}

/// Istio's default JSON access log (`accessLogEncoding: JSON`), its object pasted as the
/// listener's `json_format` (JSON is a YAML flow mapping), writes a JSON object a call.
#[tokio::test]
async fn istios_default_json_format_pastes_as_json_format() -> TestResult {
    const ISTIO_JSON: &str = r#"{"start_time": "%START_TIME%", "route_name": "%ROUTE_NAME%", "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%", "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%", "response_code_details": "%RESPONSE_CODE_DETAILS%", "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%", "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%", "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%", "user_agent": "%REQ(USER-AGENT)%", "request_id": "%REQ(X-REQUEST-ID)%", "authority": "%REQ(:AUTHORITY)%", "upstream_host": "%UPSTREAM_HOST%", "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%", "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%", "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%", "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%", "requested_server_name": "%REQUESTED_SERVER_NAME%", "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%"}"#;
    let provider = DemoProvider::start("p").await?;
    let (_dead_socket, dead) = refusing_addr()?;
    let scratch = Scratch::new("access-log-istio-json")?;
    let log = scratch.path("istio.json.log");
    let listeners = listener("in", &log, &format!("json_format: {ISTIO_JSON}"));
    let proxy = start_engine(&config(&listeners, provider.address(), dead)).await?;
    let mut socket = TcpStream::connect(proxy.listener_addr("in").ok_or("no listener")?).await?;
    call(
        &mut socket,
        &dubbo_request(1, "sayHello", &[("X-Request-Id", "r-1")]),
    )
    .await?;
    let line = file_lines(&log, 1).await?.remove(0);
    let json: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(json["response_code_details"], "via_upstream", "{json}");
    assert_eq!(json["route_name"], "hello");
    assert_eq!(json["protocol"], "dubbo");
    assert_eq!(json["upstream_cluster"], "provider");
    assert_eq!(json["upstream_host"], provider.address().to_string());
    assert_eq!(json["request_id"], "r-1");
    assert_eq!(json["response_code"], 0, "{json}");
    assert!(
        json["path"].is_null() && json["upstream_transport_failure_reason"].is_null(),
        "{json}"
    );
    assert!(json["duration"].is_u64() && json["bytes_sent"].as_u64() > Some(0));
    proxy.shutdown().await;
    Ok(())
}
