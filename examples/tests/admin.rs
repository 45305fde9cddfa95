//! The admin API for operators: `/help` lists what there is, `/server_info` says what runs and
//! since when, `/healthcheck/fail` and `/ok` switch `/ready` (which says why it is not ready),
//! `/stats` prints the series for people, `/logging` goes through the embedder's
//! [`LogControl`], and the write endpoints ask for the admin token.

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::{Config, LogControl, Proxy};
use support::TestResult;
use support::admin::{exchange, http, http_with};
use support::process::Scratch;

/// A log filter kept in memory; `bogus` is not a valid one.
#[derive(Default)]
struct Levels(Mutex<String>);

impl LogControl for Levels {
    fn current(&self) -> String {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn set(&self, directives: &str) -> Result<(), String> {
        if directives.contains("bogus") {
            return Err(format!("{directives}: not a level"));
        }
        if let Ok(mut levels) = self.0.lock() {
            *levels = directives.to_owned();
        }
        Ok(())
    }
}

async fn start(
    provider: &DemoProvider,
    token_file: Option<&std::path::Path>,
    levels: Option<Arc<Levels>>,
) -> TestResult<(Proxy, SocketAddr)> {
    let token = token_file.map_or(String::new(), |p| {
        format!(", token_file: \"{}\"", p.display())
    });
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0{token} }}
listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ name: all, route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ] }} ]
",
        provider.address()
    );
    let mut builder =
        Proxy::builder(Config::from_yaml(&yaml)?).codecs(metaprotocol_examples::codec_registry());
    if let Some(levels) = levels {
        builder = builder.log_control(levels);
    }
    let proxy = builder.start().await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    Ok((proxy, admin))
}

/// [`start`] with the admin token `s3cret`, kept in a scratch directory named after `test`
/// (returned: the file lives as long as it does).
async fn start_with_token(
    provider: &DemoProvider,
    test: &str,
) -> TestResult<(Proxy, SocketAddr, Scratch)> {
    let scratch = Scratch::new(test)?;
    let token = scratch.path("token");
    std::fs::write(&token, "s3cret\n")?;
    let (proxy, admin) = start(provider, Some(&token), None).await?;
    Ok((proxy, admin, scratch))
}

#[tokio::test]
async fn help_lists_every_endpoint_and_each_answers() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin) = start(&provider, None, None).await?;
    let (status, help) = http(admin, "GET", "/help", "").await?;
    assert_eq!(status, 200);
    let listed: Vec<(&str, &str)> = help
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .filter(|(method, path)| {
            ["GET", "POST", "PUT", "DELETE"].contains(method) && path.starts_with('/')
        })
        .collect();
    for path in [
        "/help",
        "/ready",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/server_info",
        "/metrics",
        "/stats",
        "/logging",
        "/config_dump",
        "/clusters",
        "/route_configs/{name}",
    ] {
        assert!(listed.iter().any(|(_, p)| *p == path), "{path}: {help}");
    }
    for (method, path) in listed.iter().filter(|(m, _)| *m == "GET") {
        let (status, body) = http(admin, method, path, "").await?;
        assert_ne!(status, 404, "{method} {path}: {body}");
    }
    proxy.shutdown().await;
    Ok(())
}

/// The `error` of an answer in the API's JSON.
fn json_error(body: &str) -> TestResult<String> {
    let answer: serde_json::Value = serde_json::from_str(body)?;
    let error = answer["error"].as_str().ok_or("no error")?;
    Ok(error.to_owned())
}

#[tokio::test]
async fn unknown_paths_and_methods_are_answered_in_json_with_the_methods_allowed() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin) = start(&provider, None, None).await?;
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/clusters/c/endpoints"),
        ("DELETE", "/route_configs/r/extra"),
    ] {
        let (status, _, body) = exchange(admin, method, path, "", "").await?;
        assert_eq!(status, 404, "{method} {path}: {body}");
        let error = json_error(&body).map_err(|e| format!("{method} {path}: {e}: {body:?}"))?;
        assert!(error.contains(path), "{method} {path}: {error}");
    }
    for (method, path, allowed) in [
        ("POST", "/metrics", &["GET", "HEAD"][..]),
        ("GET", "/healthcheck/fail", &["POST"][..]),
        ("POST", "/clusters/c", &["PUT", "DELETE"][..]),
        ("PUT", "/logging", &["GET", "HEAD", "POST"][..]),
    ] {
        let (status, head, body) = exchange(admin, method, path, "", "").await?;
        assert_eq!(status, 405, "{method} {path}: {body}");
        let error = json_error(&body).map_err(|e| format!("{method} {path}: {e}: {body:?}"))?;
        assert!(error.contains(method), "{method} {path}: {error}");
        let allow = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("allow").then(|| value.trim())
            })
            .ok_or_else(|| format!("{method} {path}: no Allow header in {head}"))?;
        let mut named: Vec<&str> = allow.split(',').map(str::trim).collect();
        named.sort_unstable();
        let mut allowed = allowed.to_vec();
        allowed.sort_unstable();
        assert_eq!(named, allowed, "{method} {path}");
    }
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn server_info_and_the_manual_drain_switch() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin, _scratch) = start_with_token(&provider, "admin-token").await?;
    let (status, info) = http(admin, "GET", "/server_info", "").await?;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info)?;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["state"], "live");
    assert_eq!(info["config_source"], "embedded");
    assert!(info["uptime_seconds"].is_u64(), "{info}");
    assert!(info["build"]["profile"].is_string(), "{info}");
    assert!(
        info["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{info}"
    );

    assert_eq!(
        http(admin, "GET", "/ready", "").await?,
        (200, "ready\n".into())
    );
    let (status, _) = http(admin, "POST", "/healthcheck/fail", "").await?;
    assert_eq!(status, 401, "a write endpoint: the token is required");
    let bearer = "Authorization: Bearer s3cret\r\n";
    let (status, _) = http_with(admin, "POST", "/healthcheck/fail", bearer, "").await?;
    assert_eq!(status, 200);
    let (status, why) = http(admin, "GET", "/ready", "").await?;
    assert_eq!(status, 503);
    assert!(
        why.contains("failing health checks") && why.contains("/healthcheck/ok"),
        "{why}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&http(admin, "GET", "/server_info", "").await?.1)?;
    assert_eq!(info["state"], "failing_health_checks");
    // Traffic is still served: only load balancers polling /ready are told to go away.
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    let reply = client.call("sayHello", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, 20);
    http_with(admin, "POST", "/healthcheck/ok", bearer, "").await?;
    assert_eq!(http(admin, "GET", "/ready", "").await?.0, 200);

    // The client's open connection keeps the drain (and the admin API) going for a while.
    let shutdown = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.shutdown().await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, why) = http(admin, "GET", "/ready", "").await?;
        if status == 503 {
            assert!(why.contains("draining"), "{why}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    shutdown.await?;
    drop(client);
    Ok(())
}

#[tokio::test]
async fn stats_are_readable_and_filtered() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin) = start(&provider, None, None).await?;
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    for _ in 0..4 {
        client.call("sayHello", "a", &[]).await?;
    }
    let (status, stats) = http(admin, "GET", "/stats?filter=route_rq", "").await?;
    assert_eq!(status, 200);
    assert!(stats.lines().all(|l| l.contains("route_rq")), "{stats}");
    assert!(
        stats.contains("metaprotocol_route_rq_completed_total{route_config=\"r\",route=\"all\",outcome=\"success\"}: 4"),
        "{stats}"
    );
    let histogram = stats
        .lines()
        .find(|l| l.starts_with("metaprotocol_route_rq_time_seconds{"))
        .ok_or(stats.clone())?;
    assert!(
        histogram.contains(": count=4 mean=") && histogram.contains(" p99="),
        "{histogram}"
    );
    let (status, reason) = http(admin, "GET", "/stats?filter=(", "").await?;
    assert_eq!(status, 400, "{reason}");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn logging_goes_through_the_embedders_control() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin) = start(&provider, None, None).await?;
    assert_eq!(http(admin, "GET", "/logging", "").await?.0, 501);
    proxy.shutdown().await;

    let levels = Arc::new(Levels(Mutex::new("info".into())));
    let (proxy, admin) = start(&provider, None, Some(levels.clone())).await?;
    assert_eq!(
        http(admin, "GET", "/logging", "").await?,
        (200, "info\n".into())
    );
    let (status, now) = http(
        admin,
        "POST",
        "/logging?filter=warn,metaprotocol_router=debug",
        "",
    )
    .await?;
    assert_eq!(
        (status, now.as_str()),
        (200, "warn,metaprotocol_router=debug\n")
    );
    assert_eq!(levels.current(), "warn,metaprotocol_router=debug");
    let (status, reason) = http(admin, "POST", "/logging?filter=bogus", "").await?;
    assert_eq!(status, 400);
    assert!(reason.contains("not a level"), "{reason}");
    let (status, reason) = http(admin, "POST", "/logging?level=bogus", "").await?;
    assert_eq!(status, 400);
    assert!(reason.contains("?level= is one of"), "{reason}");
    assert_eq!(
        http(admin, "POST", "/logging", "").await?.0,
        400,
        "a level or a filter"
    );
    assert_eq!(levels.current(), "warn,metaprotocol_router=debug");
    proxy.shutdown().await;
    Ok(())
}

/// The errors of the endpoints that answer in plain text (`/stats`, `/logging`) and of a path
/// or query that cannot be read are the API's JSON, as every other error of it.
#[tokio::test]
async fn errors_of_the_plain_text_endpoints_are_the_apis_json() -> TestResult {
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin) = start(&provider, None, None).await?;
    let (status, body) = http(admin, "GET", "/logging", "").await?;
    assert_eq!(status, 501, "{body}");
    assert!(json_error(&body)?.contains("LogControl"), "{body}");
    proxy.shutdown().await;

    let levels = Arc::new(Levels(Mutex::new("info".into())));
    let (proxy, admin) = start(&provider, None, Some(levels.clone())).await?;
    for (method, path, says) in [
        ("GET", "/stats?filter=(", "invalid filter"),
        ("GET", "/stats?filter=a&filter=b", "filter"),
        ("POST", "/logging?filter=bogus", "not a level"),
        ("POST", "/logging?level=bogus", "?level= is one of"),
        ("POST", "/logging", "give one of"),
        ("POST", "/logging?level=info&level=warn", "level"),
        ("PUT", "/clusters/%FF", "UTF-8"),
        ("DELETE", "/clusters/%FF", "UTF-8"),
    ] {
        let (status, body) = http(admin, method, path, "").await?;
        assert_eq!(status, 400, "{method} {path}: {body}");
        let error = json_error(&body).map_err(|e| format!("{method} {path}: {e}: {body:?}"))?;
        assert!(error.contains(says), "{method} {path}: {error}");
    }
    assert_eq!(levels.current(), "info", "no error changed the filter");
    proxy.shutdown().await;
    Ok(())
}

/// The admin server serves 64 connections at once, so a client opening thousands holds no more
/// than that; when they are all taken, the idle ones close for a new one, so that a readiness
/// probe is answered at once rather than held behind clients that keep connections open and
/// send nothing (until their 10 s header deadline).
#[tokio::test]
async fn idle_admin_connections_past_the_cap_close_for_a_new_one() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin) = start(&provider, None, None).await?;
    let mut idle = Vec::new();
    // Half kept alive after an answer, half never sending a byte.
    for i in 0..64 {
        let mut socket = tokio::net::TcpStream::connect(admin).await?;
        if i % 2 == 0 {
            socket
                .write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
                .await?;
            let mut answer = vec![0; 1024];
            let read = socket.read(&mut answer).await?;
            assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
        }
        idle.push(socket);
    }
    // Let the server take them all before the next comes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http(admin, "GET", "/ready", ""),
    )
    .await??;
    assert_eq!(status, 200);
    for mut socket in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            socket.read_to_end(&mut rest),
        )
        .await?;
        assert!(closed.is_ok(), "{closed:?}");
    }
    proxy.shutdown().await;
    Ok(())
}

/// A write without the token is refused before its body is read: announcing a megabyte and
/// sending a few bytes gets the 401 at once, not after the body would have arrived.
#[tokio::test]
async fn a_write_without_the_token_is_refused_before_its_body() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = DemoProvider::start("p").await?;
    let (proxy, admin, _scratch) = start_with_token(&provider, "admin-token-first").await?;
    let mut socket = tokio::net::TcpStream::connect(admin).await?;
    socket
        .write_all(
            b"PUT /clusters/c HTTP/1.1\r\nHost: admin\r\nContent-Length: 1000000\r\n\r\nname: c\n",
        )
        .await?;
    let mut answer = vec![0; 64];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(3), socket.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    proxy.shutdown().await;
    Ok(())
}
