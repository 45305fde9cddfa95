//! The `http` probe: an HTTP/1.1 `GET` of a health endpoint the service serves beside its
//! protocol (Spring Boot's actuator, Dubbo's QoS port), Envoy's `http_health_check`.
//!
//! Each check opens a connection of its own (the cluster's way: TLS when it has `tls`), to the
//! endpoint's address at the probe's `port` (the endpoint's own when unset), sends the request
//! with `Connection: close`, and reads the answer's head alone: its status decides, the body is
//! never read. What it reads is bounded: a head of more than [`MAX_HEAD_BYTES`] or
//! [`MAX_HEADERS`] headers fails the check, as does no head within the check's `timeout`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hyper::header::{CONNECTION, HOST, HeaderValue, USER_AGENT};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use super::active::CheckResult;
use crate::config::{HttpProbeSpec, StatusRange};
use crate::transport::{Connector, Transport};

/// The most bytes of an answer's head read (hyper's smallest read buffer is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most headers an answer may have.
const MAX_HEADERS: usize = 100;

/// What every check of a cluster sends, and the statuses that pass.
#[derive(Debug)]
pub(super) struct HttpProbe {
    path: Uri,
    host: HeaderValue,
    port: Option<u16>,
    expected: Vec<StatusRange>,
}

impl HttpProbe {
    /// The probe `spec` describes, for checks of cluster `cluster` (its `Host` when `spec`
    /// names none); `None` if the config's checks (which refuse such a spec) were bypassed.
    ///
    /// The path and host are parsed as those checks parse them (a path and query, a header
    /// value), so that a spec they accept always makes a probe; the path then makes the
    /// request's URI as it is.
    pub fn new(spec: &HttpProbeSpec, cluster: &str) -> Option<Self> {
        let host = spec.host.as_deref().unwrap_or(cluster);
        Some(Self {
            path: Uri::from(PathAndQuery::from_str(&spec.path).ok()?),
            host: HeaderValue::from_str(host).ok()?,
            port: spec.port,
            expected: spec.expected_statuses.clone(),
        })
    }

    /// The port it asks on each endpoint's address, unless the endpoint names its own; the
    /// endpoint's port when `None`.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Checks `target` (the endpoint's address, at the health check port) over a connection `connector` opens, all
    /// within `timeout`: passed on an expected status, failed at once (as Envoy fails it) on
    /// another, failed on no answer.
    pub async fn check(
        &self,
        target: SocketAddr,
        connector: &Connector,
        timeout: Duration,
    ) -> CheckResult {
        let exchange = async {
            match connector {
                Connector::Plain => {
                    let stream = Connector::connect_plain(target, timeout).await.ok()?;
                    self.get(stream).await
                }
                Connector::Tls(tls) => self.get(tls.connect(target, timeout).await.ok()?).await,
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Some(status)) if self.expected.iter().any(|r| r.contains(status)) => {
                CheckResult::Passed
            }
            Ok(Some(_)) => CheckResult::Unhealthy,
            Ok(None) | Err(_) => CheckResult::Failed,
        }
    }

    /// Sends the request over `stream` and reads the answer's status; `None` when no answer's
    /// head arrives whole before the connection ends.
    async fn get(&self, stream: impl Transport) -> Option<u16> {
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .handshake::<_, String>(TokioIo::new(stream))
            .await
            .ok()?;
        let request = Request::get(self.path.clone())
            .header(HOST, self.host.clone())
            .header(
                USER_AGENT,
                HeaderValue::from_static("metaprotocol-proxy/hc"),
            )
            .header(CONNECTION, HeaderValue::from_static("close"))
            .body(String::new())
            .ok()?;
        let answer = sender.send_request(request);
        tokio::pin!(answer);
        // The connection is driven here, not on a task of its own: it ends with the check. One
        // that ends (the server closing it after its answer) has handed the answer over, or
        // failed it.
        let answer = tokio::select! {
            answer = &mut answer => answer,
            _ = connection => answer.await,
        };
        Some(answer.ok()?.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::tests::cluster;
    use crate::health::active::tests::{until_checked, until_failing};

    /// A health endpoint on 127.0.0.1: answers each request with `answer` (the status line and
    /// headers, changed as the test goes), keeping the last request's head and counting them.
    struct HealthServer {
        address: SocketAddr,
        answer: Arc<Mutex<String>>,
        last_request: Arc<Mutex<String>>,
        requests: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl HealthServer {
        async fn start(status: &str) -> std::io::Result<Self> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let answer = Arc::new(Mutex::new(String::new()));
            let last_request = Arc::new(Mutex::new(String::new()));
            let requests = Arc::new(AtomicUsize::new(0));
            let server = Self {
                address,
                answer: answer.clone(),
                last_request: last_request.clone(),
                requests: requests.clone(),
                task: tokio::spawn(async move {
                    while let Ok((mut connection, _)) = listener.accept().await {
                        let mut head = Vec::new();
                        let mut buf = [0; 1024];
                        while !head.ends_with(b"\r\n\r\n") {
                            match connection.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        if let Ok(mut last) = last_request.lock() {
                            *last = String::from_utf8_lossy(&head).into_owned();
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                        let answer = answer.lock().map(|a| a.clone()).unwrap_or_default();
                        let _ = connection.write_all(answer.as_bytes()).await;
                    }
                }),
            };
            server.answer_with(status);
            Ok(server)
        }

        /// Answers with `status` (`"200 OK"`) from now on.
        fn answer_with(&self, status: &str) {
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
            self.set_answer(answer);
        }

        fn set_answer(&self, answer: String) {
            if let Ok(mut current) = self.answer.lock() {
                *current = answer;
            }
        }

        /// Waits (10 s at most) until it has been asked `count` times since it started.
        async fn asked(&self, count: usize) -> Result<(), tokio::time::error::Elapsed> {
            let asked = async {
                while self.requests.load(Ordering::Relaxed) < count {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), asked).await
        }

        fn last_request(&self) -> String {
            self.last_request
                .lock()
                .map(|r| r.to_lowercase())
                .unwrap_or_default()
        }
    }

    impl Drop for HealthServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The checks ask the probe's `port` on the endpoint's address (the endpoint's own port
    /// refuses connections), with the path and the cluster's name as `Host`; an endpoint that
    /// answers a status not expected (a service shutting down answers 503) leaves rotation at
    /// its first such answer, whatever `unhealthy_threshold`, as Envoy takes it out; it returns
    /// after `healthy_threshold` passed checks.
    #[tokio::test]
    async fn an_http_check_asks_the_health_port_and_a_bad_status_takes_the_endpoint_out()
    -> Result<(), Box<dyn std::error::Error>> {
        let health = HealthServer::start("200 OK").await?;
        let (_socket, endpoint) = crate::testing::refusing_address()?;
        let c = cluster(&format!(
            "name: orders
endpoints: [ {{ address: \"{endpoint}\" }} ]
health_check: {{ interval: 20ms, timeout: 2s, unhealthy_threshold: 1000, healthy_threshold: 2,
                 probe: {{ http: {{ path: \"/actuator/health?full=1\", port: {} }} }} }}",
            health.address.port()
        ))?;
        c.start_health();
        // Once asked twice, the first check's verdict is in.
        health.asked(2).await?;
        let request = health.last_request();
        assert!(
            request.starts_with("get /actuator/health?full=1 http/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nhost: orders\r\n"), "{request}");
        assert!(!c.status().endpoints[0].failing_active_checks);
        health.answer_with("503 Service Unavailable");
        assert!(until_failing(&c, 0, true).await, "{:?}", c.status());
        health.answer_with("200 OK");
        assert!(until_failing(&c, 0, false).await, "{:?}", c.status());
        c.stop_health();
        Ok(())
    }

    /// An endpoint's own `health_check_port` comes before the probe's `port`.
    #[tokio::test]
    async fn an_endpoints_health_check_port_comes_before_the_probes()
    -> Result<(), Box<dyn std::error::Error>> {
        let health = HealthServer::start("200 OK").await?;
        let (_socket, refusing) = crate::testing::refusing_address()?;
        let c = cluster(&format!(
            "name: c
endpoints: [ {{ address: \"{refusing}\", health_check_port: {} }} ]
health_check: {{ interval: 20ms, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1,
                 probe: {{ http: {{ path: /health, port: {} }} }} }}",
            health.address.port(),
            refusing.port()
        ))?;
        c.start_health();
        // Once asked twice, the first check's verdict is in.
        health.asked(2).await?;
        assert!(
            !c.status().endpoints[0].failing_active_checks,
            "{:?}",
            c.status()
        );
        c.stop_health();
        Ok(())
    }

    /// Only the expected statuses pass: 200 alone by default (Envoy's), so a 204 fails; with
    /// `expected_statuses: [200, 300)` it passes. The checks go to the endpoint's own port when
    /// the probe names none.
    #[tokio::test]
    async fn only_the_expected_statuses_pass() -> Result<(), Box<dyn std::error::Error>> {
        let health = HealthServer::start("204 No Content").await?;
        for (expected, passes) in [
            ("", false),
            (", expected_statuses: [ { start: 200, end: 300 } ]", true),
        ] {
            let c = cluster(&format!(
                "name: c
endpoints: [ {{ address: \"{}\" }} ]
health_check: {{ interval: 20ms, timeout: 2s, unhealthy_threshold: 1, healthy_threshold: 1,
                 probe: {{ http: {{ path: /health, host: health.local{expected} }} }} }}",
                health.address
            ))?;
            let before = health.requests.load(Ordering::Relaxed);
            c.start_health();
            if passes {
                // Once asked three times, two checks' verdicts are in.
                health.asked(before + 3).await?;
                assert!(!c.status().endpoints[0].failing_active_checks, "{expected}");
            } else {
                assert!(until_checked(&c, 0).await, "{:?}", c.status());
                assert!(c.status().endpoints[0].failing_active_checks, "{expected}");
            }
            c.stop_health();
            assert!(health.last_request().contains("\r\nhost: health.local\r\n"));
        }
        Ok(())
    }

    /// What a check reads is bounded: an answer whose head runs past 16 KiB fails it, as does
    /// no answer within `timeout`, and a closed connection; those are failures counted towards
    /// `unhealthy_threshold` (no answer says the endpoint is unhealthy), not at once.
    #[tokio::test]
    async fn an_endless_head_no_answer_or_a_refused_connection_fails_the_check()
    -> Result<(), Box<dyn std::error::Error>> {
        let probe = HttpProbe::new(
            &HttpProbeSpec {
                path: "/health".into(),
                port: None,
                host: None,
                expected_statuses: vec![StatusRange {
                    start: 200,
                    end: 201,
                }],
            },
            "c",
        )
        .ok_or("the probe")?;
        let timeout = Duration::from_secs(2);
        let health = HealthServer::start("200 OK").await?;
        let check = || probe.check(health.address, &Connector::Plain, timeout);
        assert_eq!(check().await, CheckResult::Passed);
        health.set_answer(format!(
            "HTTP/1.1 200 OK\r\nx-padding: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(64 * 1024)
        ));
        assert_eq!(check().await, CheckResult::Failed, "a head of 64 KiB");
        let silent = TcpListener::bind("127.0.0.1:0").await?;
        let started = tokio::time::Instant::now();
        let short = Duration::from_millis(200);
        assert_eq!(
            probe
                .check(silent.local_addr()?, &Connector::Plain, short)
                .await,
            CheckResult::Failed,
            "no answer"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let (_socket, refusing) = crate::testing::refusing_address()?;
        assert_eq!(
            probe.check(refusing, &Connector::Plain, timeout).await,
            CheckResult::Failed,
            "refused"
        );
        Ok(())
    }

    /// A cluster with `tls` checks over TLS, verifying the endpoint's certificate, as its
    /// traffic goes: the check passes through a TLS health endpoint, and a plain check of it
    /// fails.
    #[tokio::test]
    async fn a_tls_clusters_http_check_goes_over_tls() -> Result<(), Box<dyn std::error::Error>> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

        use crate::config::{ClusterTlsSpec, ListenerTlsSpec};
        use crate::stats::Metrics;
        use crate::transport::{TlsAcceptor, TlsConnector};

        let dir = std::env::temp_dir().join(format!("http-check-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let cert = leaf.signed_by(&key, &issuer)?;
        let [ca_file, cert_file, key_file] = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
        std::fs::write(&ca_file, ca_cert.pem())?;
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        let scope = Metrics::new().root();
        let acceptor = TlsAcceptor::new(
            &ListenerTlsSpec {
                cert_file,
                key_file,
                client_ca_file: None,
                require_client_cert: false,
                crl_files: Vec::new(),
            },
            "health",
            &scope,
        )?;
        let connector = Connector::Tls(Arc::new(TlsConnector::new(
            &ClusterTlsSpec {
                ca_file,
                cert_file: None,
                key_file: None,
                server_name: None,
                subject_alt_names: Vec::new(),
                crl_files: Vec::new(),
                alpn_protocols: Vec::new(),
            },
            "c",
            &scope,
        )?));
        std::fs::remove_dir_all(&dir)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let stop = tokio_util::sync::CancellationToken::new();
            while let Ok((stream, _)) = listener.accept().await {
                let Ok((mut stream, _)) =
                    acceptor.accept(stream, Duration::from_secs(5), &stop).await
                else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            }
        });
        let probe = HttpProbe::new(
            &HttpProbeSpec {
                path: "/health".into(),
                port: None,
                host: None,
                expected_statuses: vec![StatusRange {
                    start: 200,
                    end: 201,
                }],
            },
            "c",
        )
        .ok_or("the probe")?;
        let timeout = Duration::from_secs(2);
        assert_eq!(
            probe.check(address, &connector, timeout).await,
            CheckResult::Passed
        );
        assert_eq!(
            probe.check(address, &Connector::Plain, timeout).await,
            CheckResult::Failed
        );
        server.abort();
        Ok(())
    }
}
