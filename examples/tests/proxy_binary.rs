//! The `metaprotocol-proxy` binary: `validate`, `run` with a graceful drain on SIGTERM, `demo`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BINARY: &str = env!("CARGO_BIN_EXE_metaprotocol-proxy");

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_config(dir: &str, yaml: &str) -> std::io::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("metaprotocol-{dir}-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

#[test]
fn validate_accepts_a_good_config_and_names_the_bad_field() -> TestResult {
    let good = write_config(
        "good",
        "listeners: [ { name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r } ]
route_configs: [ { name: r, routes: [ { route: { cluster: c } } ] } ]
clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]
",
    )?;
    let out = Command::new(BINARY)
        .args(["validate", "--config"])
        .arg(&good)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8(out.stdout)?;
    assert!(
        summary
            .contains("valid: 1 listeners, 1 route configs (1 routes), 1 clusters (1 endpoints)"),
        "{summary}"
    );
    assert_eq!(summary.lines().count(), 1);

    let bad = write_config(
        "bad",
        "listeners: [ { name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r } ]
route_configs: [ { name: r, routes: [ { route: { cluster: c }, timeout: fast } ] } ]
clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]
",
    )?;
    let out = Command::new(BINARY)
        .args(["validate", "--config"])
        .arg(&bad)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let reason = String::from_utf8(out.stderr)?;
    assert!(
        reason.contains("route_configs[0].routes[0].timeout"),
        "{reason}"
    );

    let unknown = write_config(
        "unknown",
        "listeners: [ { name: in, address: 127.0.0.1:0, protocol: smtp, route_config: r } ]
route_configs: [ { name: r } ]
",
    )?;
    let out = Command::new(BINARY)
        .args(["validate", "--config"])
        .arg(&unknown)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let reason = String::from_utf8(out.stderr)?;
    assert!(
        reason.contains("listeners[0].protocol") && reason.contains("smtp"),
        "{reason}"
    );
    for path in [good, bad, unknown] {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Kills the child if the test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_and_drains_on_sigterm() -> TestResult {
    let provider = DemoProvider::start_with_delay("v1", Duration::from_millis(500)).await?;
    let port = free_port()?;
    let config = write_config(
        "run",
        &format!(
            "listeners: [ {{ name: in, address: 127.0.0.1:{port}, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
            provider.address()
        ),
    )?;
    let mut child = Child(
        Command::new(BINARY)
            .args(["run", "--workers", "2", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = std::sync::Arc::new(DubboClient::new(address));
    assert_eq!(client.call("sayHello", "a", &[]).await?.dubbo_status, 20);

    // A slow call in flight when SIGTERM arrives still gets its answer.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.call("sayHelloSlowly", "a", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let reply = slow.await??;
    assert_eq!(
        reply.dubbo_status, 20,
        "the in-flight call was drained, not dropped"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_file(config);
    Ok(())
}

#[test]
fn demo_routes_as_advertised() -> TestResult {
    let out = Command::new(BINARY).arg("demo").output()?;
    let report = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("[ok  ] batchJob=true calls landed only on batchjob endpoints"),
        "{report}"
    );
    assert!(report.contains("[ok  ] canary split"), "{report}");
    assert!(!report.contains("FAIL"), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_route_configs_from_its_file_and_keeps_a_bad_file_out() -> TestResult {
    let v1 = DemoProvider::start("v1").await?;
    let v2 = DemoProvider::start("v2").await?;
    let (port, admin_port) = (free_port()?, free_port()?);
    let config_for = |subset: &str| {
        format!(
            "admin: {{ address: 127.0.0.1:{admin_port} }}
listeners: [ {{ name: in, address: 127.0.0.1:{port}, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c, subset: {{ v: {subset} }} }} }} ] }} ]
clusters:
  - name: c
    endpoints: [ {{ address: {}, labels: {{ v: one }} }}, {{ address: {}, labels: {{ v: two }} }} ]
",
            v1.address(),
            v2.address()
        )
    };
    let path = write_config("reload", &config_for("one"))?;
    let _child = Child(
        Command::new(BINARY)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = DubboClient::new(address);
    assert_eq!(
        client
            .call("sayHello", "a", &[])
            .await?
            .attachment("provider"),
        Some("v1")
    );

    std::fs::write(&path, config_for("two"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.call("sayHello", "a", &[]).await?;
        assert_eq!(reply.dubbo_status, 20, "no call fails during the reload");
        if reply.attachment("provider") == Some("v2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new route config was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.open_connections(),
        1,
        "the client connection survived the reload"
    );

    std::fs::write(
        &path,
        config_for("two").replace("route_configs", "route_config"),
    )?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        client
            .call("sayHello", "a", &[])
            .await?
            .attachment("provider"),
        Some("v2")
    );
    let mut admin = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    admin
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await?;
    let mut metrics = String::new();
    admin.read_to_string(&mut metrics).await?;
    assert!(
        metrics.contains("metaprotocol_config_reloads_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metaprotocol_config_reloads_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_file(path);
    Ok(())
}
