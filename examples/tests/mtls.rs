//! Mutual TLS end to end with Dubbo and Istio-shaped certificates made in the test (rcgen): a
//! mesh CA, and workload certificates whose only name is a SPIFFE id.
//!
//! The world is a small mesh: clients call the `edge` listener over mTLS; the edge authorizes
//! them by principal and method (rbac), routes by principal, and calls the provider's sidecar
//! (the `sidecar` listener, mTLS again, which only lets the edge's identity in) over a TLS
//! cluster that verifies the sidecar's SPIFFE id; the sidecar forwards to the plain provider.

use std::time::Duration;

use std::net::SocketAddr;

use metaprotocol_dubbo::build::{Call, ResponseBody, request_message, response_body};
use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DEMO_VERSION, DemoProvider, DubboClient};
use metaprotocol_router::config::{ClusterSpec, ClusterTlsSpec};
use metaprotocol_router::{Config, Proxy, RouterClient};

#[allow(dead_code)]
mod support;

use support::TestResult;
use support::mesh::{MeshCa, Workload, spiffe_id, yaml};
use support::process::{Scratch, wait_until};
use support::proxy::{listener_addr, metric, start_engine};

const OK: u8 = 20;
const UNAUTHORIZED: u8 = 40;

/// The mesh, its certificates and the proxy serving it.
struct Mesh {
    _scratch: Scratch,
    ca: MeshCa,
    provider: DemoProvider,
    proxy: Proxy,
    /// The edge's own certificate (its client identity towards the sidecar).
    gateway: Workload,
    reader: Workload,
    writer: Workload,
    admin: Workload,
}

impl Mesh {
    async fn start(test: &str) -> TestResult<Self> {
        Self::start_with(test, false).await
    }

    /// The mesh; with `checked`, two more clusters to the sidecar with active health checks:
    /// `checked-heartbeat` (the edge's TLS settings, Dubbo heartbeats) and `checked-wrong-id`
    /// (TCP checks over TLS expecting an identity the sidecar does not have).
    async fn start_with(test: &str, checked: bool) -> TestResult<Self> {
        let scratch = Scratch::new(test)?;
        let ca = MeshCa::new(&scratch, "mesh")?;
        let gateway = ca.workload(
            &scratch,
            "gateway",
            "default",
            "gateway",
            &["edge.default.svc"],
        )?;
        let provider_id = ca.workload(&scratch, "provider", "default", "provider", &[])?;
        let reader = ca.workload(&scratch, "reader", "default", "reader", &[])?;
        let writer = ca.workload(&scratch, "writer", "default", "writer", &[])?;
        let admin = ca.workload(&scratch, "admin", "ops", "admin", &[])?;
        let provider = DemoProvider::start("p").await?;
        // The sidecar listens first, so that the edge's cluster can name its address.
        let sidecar_addr = support::free_addr()?;
        let to_sidecar = ClusterTlsSpec {
            cert_file: Some(gateway.cert_file.clone()),
            key_file: Some(gateway.key_file.clone()),
            ..ca.client_tls(None, &provider_id.spiffe_id)
        };
        let config = format!(
            "listeners:
  - name: edge
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: edge-routes
    tls: {edge_tls}
    filters:
      - name: rbac
        config:
          action: allow
          policies:
            - name: readers-say-hello
              principals: [ \"{reader}\" ]
              metadata: [ {{ key: method, exact: sayHello }} ]
            - name: operators
              principals: [ \"spiffe://cluster.local/ns/ops/*\" ]
  - name: sidecar
    address: {sidecar_addr}
    protocol: dubbo
    route_config: sidecar-routes
    tls: {sidecar_tls}
    filters:
      - name: rbac
        config:
          action: allow
          policies: [ {{ name: edge-only, principals: [ \"{gateway_id}\" ] }} ]
route_configs:
  - name: edge-routes
    routes:
      - match: {{ principal: \"spiffe://cluster.local/ns/ops/*\" }}
        route: {{ cluster: mesh-provider }}
        response_mutation: {{ set: {{ x-route: operators }} }}
      - route: {{ cluster: mesh-provider }}
  - name: sidecar-routes
    routes: [ {{ route: {{ cluster: local-provider }} }} ]
clusters:
  - name: mesh-provider
    endpoints: [ {{ address: {sidecar_addr} }} ]
    tls: {cluster_tls}
  - name: local-provider
    endpoints: [ {{ address: {provider_addr} }} ]
{checked_clusters}",
            edge_tls = yaml(&ca.listener_tls(&gateway))?,
            sidecar_tls = yaml(&ca.listener_tls(&provider_id))?,
            cluster_tls = yaml(&to_sidecar)?,
            reader = reader.spiffe_id,
            gateway_id = gateway.spiffe_id,
            provider_addr = provider.address(),
            checked_clusters = if checked {
                let wrong_id = ClusterTlsSpec {
                    cert_file: Some(gateway.cert_file.clone()),
                    key_file: Some(gateway.key_file.clone()),
                    ..ca.client_tls(None, &spiffe_id("default", "someone-else"))
                };
                let check =
                    "{ interval: 100ms, timeout: 10s, unhealthy_threshold: 1, healthy_threshold: 1";
                format!(
                    "  - name: checked-heartbeat
    endpoints: [ {{ address: {sidecar_addr} }} ]
    tls: {cluster_tls}
    health_check: {check}, probe: heartbeat }}
  - name: checked-wrong-id
    endpoints: [ {{ address: {sidecar_addr} }} ]
    tls: {wrong_tls}
    health_check: {check}, probe: tcp }}
",
                    cluster_tls = yaml(&to_sidecar)?,
                    wrong_tls = yaml(&wrong_id)?,
                )
            } else {
                String::new()
            },
        );
        let proxy = start_engine(&config).await?;
        Ok(Self {
            _scratch: scratch,
            ca,
            provider,
            proxy,
            gateway,
            reader,
            writer,
            admin,
        })
    }

    /// A client of the edge presenting `workload`'s certificate (none: no certificate).
    fn edge_client(&self, workload: Option<&Workload>) -> TestResult<DubboClient> {
        let tls = self.ca.client_tls(workload, &self.gateway.spiffe_id);
        Ok(DubboClient::with_tls(
            listener_addr(&self.proxy, "edge")?,
            &tls,
        )?)
    }

    fn metric(&self, series: &str) -> f64 {
        metric(&self.proxy, series)
    }
}

#[tokio::test]
async fn mtls_end_to_end_with_rbac_by_principal_and_method() -> TestResult {
    let mesh = Mesh::start("mtls-rbac").await?;

    // A reader may say hello, through the edge, the TLS cluster and the sidecar.
    let reader = mesh.edge_client(Some(&mesh.reader))?;
    let reply = reader.call("sayHello", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, OK);
    assert!(reply.body_contains("Hello from p"));
    assert_eq!(reply.attachment("x-route"), None);
    assert_eq!(mesh.provider.seen().len(), 1);

    // ... but not say goodbye (denied by method), and a writer may do neither (by principal).
    let denied = reader.call("sayGoodbye", "a", &[]).await?;
    assert_eq!(denied.dubbo_status, UNAUTHORIZED);
    let writer = mesh.edge_client(Some(&mesh.writer))?;
    assert_eq!(
        writer.call("sayHello", "a", &[]).await?.dubbo_status,
        UNAUTHORIZED
    );

    // Operators may call anything, and their calls take the route that matches their principal.
    let admin = mesh.edge_client(Some(&mesh.admin))?;
    let reply = admin.call("sayGoodbye", "a", &[]).await?;
    assert_eq!(reply.dubbo_status, OK);
    assert_eq!(reply.attachment("x-route"), Some("operators"));
    assert_eq!(mesh.provider.seen().len(), 2);

    // The sidecar lets only the edge's identity in: a reader calling it directly is denied,
    // which shows that the edge presented its own certificate upstream.
    let sidecar = listener_addr(&mesh.proxy, "sidecar")?;
    let provider_id = spiffe_id("default", "provider");
    let direct = DubboClient::with_tls(
        sidecar,
        &mesh.ca.client_tls(Some(&mesh.reader), &provider_id),
    )?;
    assert_eq!(
        direct.call("sayHello", "a", &[]).await?.dubbo_status,
        UNAUTHORIZED
    );
    assert_eq!(mesh.provider.seen().len(), 2);

    let series = |listener: &str, decision: &str| {
        mesh.metric(&format!(
            "metaprotocol_rbac_decisions_total{{listener=\"{listener}\",filter=\"rbac\",decision=\"{decision}\"}}"
        ))
    };
    assert_eq!(series("edge", "allowed"), 2.0);
    assert_eq!(series("edge", "denied"), 2.0);
    assert_eq!(series("sidecar", "allowed"), 2.0);
    assert_eq!(series("sidecar", "denied"), 1.0);
    mesh.proxy.shutdown().await;
    Ok(())
}

impl Mesh {
    /// Another proxy, whose listeners (each a name and its filters' YAML) serve this mesh's
    /// edge certificate to its clients and forward to the provider.
    async fn rbac_proxy(&self, listeners: &[(&str, String)]) -> TestResult<Proxy> {
        let tls = yaml(&self.ca.listener_tls(&self.gateway))?;
        let listeners: String = listeners
            .iter()
            .map(|(name, filters)| {
                format!(
                    "  - {{ name: {name}, address: 127.0.0.1:0, protocol: dubbo, route_config: r, tls: {tls}, filters: {filters} }}\n"
                )
            })
            .collect();
        start_engine(&format!(
            "listeners:
{listeners}route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: provider }} }} ] }} ]
clusters: [ {{ name: provider, endpoints: [ {{ address: {provider} }} ] }} ]
",
            provider = self.provider.address(),
        ))
        .await
    }

    /// The Dubbo status of a call `workload` makes to `listener` of `proxy`.
    async fn status(&self, proxy: &Proxy, listener: &str, workload: &Workload) -> TestResult<u8> {
        let tls = self.ca.client_tls(Some(workload), &self.gateway.spiffe_id);
        let client = DubboClient::with_tls(listener_addr(proxy, listener)?, &tls)?;
        Ok(client.call("sayHello", "a", &[]).await?.dubbo_status)
    }
}

/// An rbac filter with one policy, `policy` (YAML mapping entries).
fn rbac(action: &str, policy: &str) -> String {
    format!(
        "[ {{ name: rbac, config: {{ action: {action}, policies: [ {{ name: p, {policy} }} ] }} }} ]"
    )
}

/// Principals written as Istio's AuthorizationPolicy writes them, without the `spiffe://` of
/// the SPIFFE ids they name, match those ids: a deny policy copied from Istio refused no one, an
/// allow policy let no one in.
#[tokio::test]
async fn principals_written_as_in_istio_match_the_spiffe_ids() -> TestResult {
    let mesh = Mesh::start("mtls-istio-principals").await?;
    let proxy = mesh
        .rbac_proxy(&[
            (
                "deny-writer",
                rbac(
                    "deny",
                    "principals: [ \"cluster.local/ns/default/sa/writer\" ]",
                ),
            ),
            (
                "allow-default",
                rbac("allow", "principals: [ \"cluster.local/ns/default/*\" ]"),
            ),
        ])
        .await?;
    assert_eq!(
        mesh.status(&proxy, "deny-writer", &mesh.writer).await?,
        UNAUTHORIZED
    );
    assert_eq!(mesh.status(&proxy, "deny-writer", &mesh.reader).await?, OK);
    assert_eq!(
        mesh.status(&proxy, "allow-default", &mesh.reader).await?,
        OK
    );
    assert_eq!(
        mesh.status(&proxy, "allow-default", &mesh.admin).await?,
        UNAUTHORIZED
    );
    assert_eq!(mesh.provider.seen().len(), 2);
    proxy.shutdown().await;
    mesh.proxy.shutdown().await;
    Ok(())
}

/// A suffix principal (`*/ns/default/sa/reader`) stands for SPIFFE ids, as in Istio: a URI
/// SAN of another scheme that ends the same, which a CA may let its requesters choose, does not
/// pass for the reader.
#[tokio::test]
async fn suffix_principals_match_spiffe_ids_only() -> TestResult {
    let mesh = Mesh::start("mtls-suffix-principals").await?;
    let scratch = Scratch::new("mtls-suffix-principals-impostor")?;
    let impostor = mesh.ca.certificate(
        &scratch,
        "impostor",
        "https://cluster.local/ns/default/sa/reader",
        &[],
    )?;
    let proxy = mesh
        .rbac_proxy(&[(
            "readers",
            rbac("allow", "principals: [ \"*/ns/default/sa/reader\" ]"),
        )])
        .await?;
    assert_eq!(
        mesh.status(&proxy, "readers", &impostor).await?,
        UNAUTHORIZED
    );
    assert_eq!(mesh.status(&proxy, "readers", &mesh.reader).await?, OK);
    assert_eq!(mesh.provider.seen().len(), 1);
    proxy.shutdown().await;
    mesh.proxy.shutdown().await;
    Ok(())
}

/// Wildcard principals without a `/`, as Istio writes a trust domain (`cluster.local*`) or
/// service accounts by the end of their name (`*writer`), stand for SPIFFE ids: read as DNS
/// names, they let in a client whose DNS SAN (which a CA may let its requesters choose) begins
/// with the trust domain, refused one whose DNS SAN ends so, and matched none of the ids they
/// name.
#[tokio::test]
async fn wildcard_principals_without_a_slash_match_spiffe_ids() -> TestResult {
    let mesh = Mesh::start("mtls-slashless-principals").await?;
    let scratch = Scratch::new("mtls-slashless-principals-impostor")?;
    let impostor = mesh.ca.certificate(
        &scratch,
        "impostor",
        "spiffe://other.domain/ns/default/sa/intruder",
        &["cluster.local.example.com", "x-writer"],
    )?;
    let proxy = mesh
        .rbac_proxy(&[
            (
                "allow-domain",
                rbac("allow", "principals: [ \"cluster.local*\" ]"),
            ),
            ("deny-writers", rbac("deny", "principals: [ \"*writer\" ]")),
        ])
        .await?;
    for (listener, workload, status) in [
        ("allow-domain", &mesh.reader, OK),
        ("allow-domain", &impostor, UNAUTHORIZED),
        ("deny-writers", &mesh.writer, UNAUTHORIZED),
        ("deny-writers", &impostor, OK),
    ] {
        assert_eq!(
            mesh.status(&proxy, listener, workload).await?,
            status,
            "{listener}: {}",
            workload.spiffe_id
        );
    }
    assert_eq!(mesh.provider.seen().len(), 2);
    proxy.shutdown().await;
    mesh.proxy.shutdown().await;
    Ok(())
}

/// Policies name the namespaces of the clients' SPIFFE ids, as Istio's `namespaces` and
/// `notNamespaces` do, whatever the trust domain.
#[tokio::test]
async fn namespaces_as_in_istio_match_the_namespace_of_the_spiffe_id() -> TestResult {
    let mesh = Mesh::start("mtls-istio-namespaces").await?;
    let proxy = mesh
        .rbac_proxy(&[
            ("allow-default", rbac("allow", "namespaces: [ default ]")),
            ("deny-ops", rbac("deny", "namespaces: [ \"op*\" ]")),
            (
                "deny-but-default",
                rbac("deny", "not_namespaces: [ \"*ult\" ]"),
            ),
        ])
        .await?;
    for (listener, workload, status) in [
        ("allow-default", &mesh.reader, OK),
        ("allow-default", &mesh.admin, UNAUTHORIZED),
        ("deny-ops", &mesh.admin, UNAUTHORIZED),
        ("deny-ops", &mesh.writer, OK),
        ("deny-but-default", &mesh.writer, OK),
        ("deny-but-default", &mesh.admin, UNAUTHORIZED),
    ] {
        assert_eq!(
            mesh.status(&proxy, listener, workload).await?,
            status,
            "{listener}: {}",
            workload.spiffe_id
        );
    }
    assert_eq!(mesh.provider.seen().len(), 3);
    proxy.shutdown().await;
    mesh.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn large_calls_cross_the_tls_hops_whole() -> TestResult {
    let mesh = Mesh::start("mtls-large").await?;
    let reader = mesh.edge_client(Some(&mesh.reader))?;
    // Frames of 4 KiB and more leave the proxy from the buffers they were read into, in
    // vectored writes: here through TLS towards the sidecar (the 40 KB call) and back to the
    // client (the provider's answer, which echoes the 40 KB attachment).
    let big: String = (0..40_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for _ in 0..3 {
        let reply = reader.call("sayHello", &big, &[("x-big", &big)]).await?;
        assert_eq!(reply.dubbo_status, OK);
        assert_eq!(reply.attachment("echo-x-big"), Some(big.as_str()));
    }
    assert_eq!(mesh.provider.seen().len(), 3);
    mesh.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn health_checks_of_tls_clusters_speak_tls_and_verify_the_endpoint() -> TestResult {
    let mesh = Mesh::start_with("mtls-health", true).await?;
    let checks = |cluster: &str, outcome: &str| {
        mesh.metric(&format!(
            "metaprotocol_health_checks_total{{cluster=\"{cluster}\",outcome=\"{outcome}\"}}"
        ))
    };
    // Heartbeats reach the sidecar over TLS with the edge's certificate, and are answered; TCP
    // checks of an endpoint whose certificate names someone else fail at the handshake.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while checks("checked-heartbeat", "success") < 3.0
        || checks("checked-wrong-id", "failure") < 3.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health checks did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checks("checked-heartbeat", "failure"), 0.0);
    assert_eq!(checks("checked-wrong-id", "success"), 0.0);
    mesh.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn clients_without_a_certificate_or_the_right_server_are_refused() -> TestResult {
    let mesh = Mesh::start("mtls-refused").await?;
    let errors = "metaprotocol_downstream_tls_handshake_errors_total{listener=\"edge\"}";

    let anonymous = mesh.edge_client(None)?;
    let refused = anonymous.call("sayHello", "a", &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    wait_until(Duration::from_secs(5), "the refusal to be counted", || {
        Ok(mesh.metric(errors) >= 1.0)
    })?;

    // A client that expects another server (its SPIFFE id, or a host name the edge's
    // certificate lacks) does not talk to this one.
    let addr = listener_addr(&mesh.proxy, "edge")?;
    let wrong_id = mesh
        .ca
        .client_tls(Some(&mesh.reader), &spiffe_id("default", "impostor"));
    let result = DubboClient::with_tls(addr, &wrong_id)?
        .call("sayHello", "a", &[])
        .await;
    assert!(result.is_err(), "{result:?}");
    let by_name = |name: &str| ClusterTlsSpec {
        server_name: Some(name.to_owned()),
        subject_alt_names: Vec::new(),
        crl_files: Vec::new(),
        ..mesh.ca.client_tls(Some(&mesh.reader), "")
    };
    let result = DubboClient::with_tls(addr, &by_name("other.default.svc"))?
        .call("sayHello", "a", &[])
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(mesh.provider.seen().is_empty());

    // The edge's DNS name verifies as a host name, too.
    let reply = DubboClient::with_tls(addr, &by_name("edge.default.svc"))?
        .call("sayHello", "a", &[])
        .await?;
    assert_eq!(reply.dubbo_status, OK);
    mesh.proxy.shutdown().await;
    Ok(())
}

/// The engine as a client, calling the mesh's sidecar over a cluster with `tls`.
async fn sidecar_client(sidecar: SocketAddr, tls: &ClusterTlsSpec) -> TestResult<RouterClient> {
    let config = Config::from_yaml(&format!(
        "route_configs: [ {{ name: to-sidecar, routes: [ {{ route: {{ cluster: sidecar }} }} ] }} ]
clusters:
  - name: sidecar
    endpoints: [ {{ address: \"{sidecar}\" }} ]
    tls: {tls}
",
        tls = yaml(tls)?,
    ))?;
    Ok(RouterClient::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .protocol("dubbo")
        .build()
        .await?)
}

/// `RouterClient` connects to a TLS cluster as the proxy does: it presents the cluster's
/// certificate and verifies the server's SPIFFE id.
#[tokio::test]
async fn router_client_calls_tls_clusters_with_their_identity() -> TestResult {
    let mesh = Mesh::start("mtls-router-client").await?;
    let sidecar = listener_addr(&mesh.proxy, "sidecar")?;
    let provider_id = spiffe_id("default", "provider");
    let hello = || {
        request_message(&Call {
            service: DEMO_SERVICE,
            version: DEMO_VERSION,
            method: "sayHello",
            string_args: &["a"],
            attachments: &[],
        })
    };

    // As the gateway, the one identity the sidecar lets in.
    let gateway = sidecar_client(
        sidecar,
        &mesh.ca.client_tls(Some(&mesh.gateway), &provider_id),
    )
    .await?;
    let response = gateway.call(hello()?).await?;
    assert_eq!(
        response_body(&response.frame)?,
        ResponseBody::Value("Hello from p".into())
    );
    assert_eq!(mesh.provider.seen().len(), 1);

    // As a reader: the sidecar sees that identity, and denies it.
    let reader = sidecar_client(
        sidecar,
        &mesh.ca.client_tls(Some(&mesh.reader), &provider_id),
    )
    .await?;
    reader.call(hello()?).await?;
    let denied = "metaprotocol_rbac_decisions_total{listener=\"sidecar\",filter=\"rbac\",decision=\"denied\"}";
    assert_eq!(mesh.metric(denied), 1.0);
    assert_eq!(mesh.provider.seen().len(), 1);

    // Expecting another server, the client does not talk to this one.
    let impostor = spiffe_id("default", "impostor");
    let wrong_server =
        sidecar_client(sidecar, &mesh.ca.client_tls(Some(&mesh.gateway), &impostor)).await?;
    let refused = wrong_server.call(hello()?).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(mesh.provider.seen().len(), 1);
    mesh.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rotated_certificates_are_served_without_dropping_connections() -> TestResult {
    let mesh = Mesh::start("mtls-rotation").await?;
    let addr = listener_addr(&mesh.proxy, "edge")?;
    // This client accepts only the edge's first identity: if its connection were dropped it
    // could not connect again once the edge serves the new one.
    let before = mesh.edge_client(Some(&mesh.reader))?;
    assert_eq!(before.call("sayHello", "a", &[]).await?.dubbo_status, OK);

    // Rotate: the edge's files now hold another identity (written as the agents of a mesh do,
    // certificate then key).
    let scratch = Scratch::new("mtls-rotation-new")?;
    let rotated = mesh
        .ca
        .workload(&scratch, "gateway", "default", "gateway-v2", &[])?;
    std::fs::copy(&rotated.cert_file, &mesh.gateway.cert_file)?;
    std::fs::copy(&rotated.key_file, &mesh.gateway.key_file)?;

    let after_tls = mesh.ca.client_tls(Some(&mesh.reader), &rotated.spiffe_id);
    let mut served = false;
    for _ in 0..50 {
        let client = DubboClient::with_tls(addr, &after_tls)?;
        if client.call("sayHello", "a", &[]).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "the new certificate was never served");
    assert_eq!(before.call("sayHello", "a", &[]).await?.dubbo_status, OK);
    assert_eq!(
        mesh.metric(
            "metaprotocol_tls_certificate_reloads_total{listener=\"edge\",outcome=\"applied\"}"
        ),
        1.0
    );
    mesh.proxy.shutdown().await;
    Ok(())
}

/// `max_connections` counts a connection from its accept, not from the end of its TLS
/// handshake: clients that connect and never finish the handshake are refused past it (any
/// number of them were accepted and held, uncounted, for the frame timeout).
#[tokio::test]
async fn max_connections_counts_connections_still_in_their_tls_handshake() -> TestResult {
    use tokio::io::AsyncReadExt;

    let scratch = Scratch::new("mtls-max-connections")?;
    let ca = MeshCa::new(&scratch, "mesh")?;
    let server = ca.workload(&scratch, "server", "default", "server", &[])?;
    let provider = DemoProvider::start("p").await?;
    let proxy = start_engine(&format!(
        "listeners:
  - {{ name: edge, address: 127.0.0.1:0, protocol: dubbo, route_config: r, max_connections: 2,
       tls: {tls} }}
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {provider} }} ] }} ]
",
        tls = yaml(&ca.listener_tls(&server))?,
        provider = provider.address(),
    ))
    .await?;
    let address = listener_addr(&proxy, "edge")?;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(address).await?);
        // One at a time: the listener judges each with the ones before it counted.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Judged (a loaded machine may take a while to accept them all), then looked at: the
    // refused ones closed, the others open and silent.
    let refused = "metaprotocol_downstream_cx_refused_total{listener=\"edge\"}";
    let judged = std::time::Instant::now();
    while metric(&proxy, refused) < 3.0 {
        assert!(judged.elapsed() < Duration::from_secs(20), "not refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut closed = 0;
    for socket in &mut silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), socket.read(&mut byte)).await;
        if matches!(read, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 3, "the connections past the first two are closed");
    assert_eq!(metric(&proxy, refused), 3.0);
    let active = "metaprotocol_downstream_cx_active{listener=\"edge\"}";
    assert_eq!(metric(&proxy, active), 2.0);
    drop(silent);
    // Given up by their clients, the handshakes count no more.
    let given_up = std::time::Instant::now();
    while metric(&proxy, active) > 0.0 {
        assert!(
            given_up.elapsed() < Duration::from_secs(20),
            "still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.shutdown().await;
    Ok(())
}

/// One TLS listener `in` (mutual TLS, this mesh's clients) in front of `provider`, with
/// `listener_extra` added to the listener (`max_connections: 2`, say) and `top` to the config.
async fn tls_listener(
    ca: &MeshCa,
    server: &Workload,
    provider: &DemoProvider,
    listener_extra: &str,
    top: &str,
) -> TestResult<Proxy> {
    start_engine(&format!(
        "{top}
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: r
    tls: {tls}
    {listener_extra}
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: p }} }} ] }} ]
clusters: [ {{ name: p, endpoints: [ {{ address: {provider} }} ] }} ]
",
        tls = yaml(&ca.listener_tls(server))?,
        provider = provider.address(),
    ))
    .await
}

/// A handshake under way when the proxy stops ends with the drain's start, as an idle
/// connection does: it does not hold the shutdown up until its `frame_timeout` (or the drain
/// time and its grace) runs out.
#[tokio::test]
async fn a_handshake_under_way_does_not_hold_up_shutdown() -> TestResult {
    let scratch = Scratch::new("mtls-handshake-shutdown")?;
    let ca = MeshCa::new(&scratch, "mesh")?;
    let server = ca.workload(&scratch, "server", "default", "server", &[])?;
    let provider = DemoProvider::start("p").await?;
    let proxy = tls_listener(&ca, &server, &provider, "", "drain_time: 5s").await?;
    let addr = listener_addr(&proxy, "in")?;

    // A client that sends a first byte of its ClientHello and then nothing.
    let mut stalled = tokio::net::TcpStream::connect(addr).await?;
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = tokio::time::Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the shutdown waited {took:?} for a handshake under way"
    );
    // The stalled client's connection is closed.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncReadExt::read(&mut stalled, &mut byte),
    )
    .await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    Ok(())
}

/// A cluster whose endpoints choose their transport by their `transport_socket_match` labels,
/// as Istio's sidecars do under auto mTLS: the endpoint labelled `tlsMode: istio` (a provider
/// behind a mutual-TLS sidecar) is connected to with the TLS of the matching entry of
/// `transport_socket_matches`, verifying its SPIFFE id, the other (a plain provider) with the
/// cluster's plain TCP. Calls reach both, and so do the heartbeats of the cluster's health
/// checks, each over its endpoint's transport. An update of the list that leaves the sidecar's
/// TLS as it was keeps both endpoints' connections.
#[tokio::test]
async fn endpoints_choose_their_transport_by_their_labels() -> TestResult {
    let scratch = Scratch::new("mtls-transport-match")?;
    let ca = MeshCa::new(&scratch, "mesh")?;
    let proxy_id = ca.workload(&scratch, "proxy", "default", "proxy", &[])?;
    let provider_id = ca.workload(&scratch, "provider", "default", "provider", &[])?;
    let meshed = DemoProvider::start("meshed").await?;
    let plain = DemoProvider::start("plain").await?;
    let sidecar = start_engine(&format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, tls: {tls} }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: p }} }} ] }} ]
clusters: [ {{ name: p, endpoints: [ {{ address: {provider} }} ] }} ]
",
        tls = yaml(&ca.listener_tls(&provider_id))?,
        provider = meshed.address(),
    ))
    .await?;
    let sidecar_address = listener_addr(&sidecar, "in")?;
    // The cluster, with `first` entries before the sidecar's.
    let mixed = |first: &str| -> TestResult<String> {
        Ok(format!(
            "{{ name: mixed,
  endpoints: [ {{ address: {sidecar_address}, transport_socket_match: {{ tlsMode: istio }} }}, {{ address: {plain} }} ],
  transport_socket_matches: [ {first}{{ match: {{ tlsMode: istio }}, tls: {tls} }} ],
  health_check: {{ interval: 100ms, timeout: 10s, unhealthy_threshold: 1, healthy_threshold: 1, probe: heartbeat }} }}",
            plain = plain.address(),
            tls = yaml(&ca.client_tls(Some(&proxy_id), &provider_id.spiffe_id))?,
        ))
    };
    let proxy = start_engine(&format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: mixed }} }} ] }} ]
clusters: [ {} ]
",
        mixed("")?
    ))
    .await?;
    let client = DubboClient::new(listener_addr(&proxy, "in")?);
    let call_both = || async {
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let reply = client.call("sayHello", "by label", &[]).await?;
            answered.insert(reply.attachment("provider").unwrap_or("none").to_owned());
        }
        TestResult::Ok(answered)
    };
    let both: std::collections::BTreeSet<String> = ["meshed", "plain"].map(str::to_owned).into();
    assert_eq!(call_both().await?, both);
    let checks = |outcome: &str| {
        metric(
            &proxy,
            &format!("metaprotocol_health_checks_total{{cluster=\"mixed\",outcome=\"{outcome}\"}}"),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while checks("success") < 6.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health checks did not pass: {} failed",
            checks("failure")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checks("failure"), 0.0);
    assert_eq!(
        metric(
            &proxy,
            "metaprotocol_upstream_tls_handshake_errors_total{cluster=\"mixed\",transport=\"tlsMode=istio\"}"
        ),
        0.0
    );
    // The entry's TLS has series of its own, named by its match.
    assert!(proxy.metrics().render().contains(
        "metaprotocol_upstream_tls_handshake_errors_total{cluster=\"mixed\",transport=\"tlsMode=istio\"} 0"
    ));

    // An update that puts another entry first, leaving the sidecar's TLS as it was, keeps both
    // endpoints' connections.
    let opened = |endpoint: SocketAddr| {
        metric(
            &proxy,
            &format!("metaprotocol_endpoint_cx_total{{cluster=\"mixed\",endpoint=\"{endpoint}\"}}"),
        )
    };
    let before = [opened(sidecar_address), opened(plain.address())];
    assert!(before.iter().all(|&n| n >= 1.0), "{before:?}");
    let updated = ClusterSpec::from_yaml(&mixed("{ match: { tlsMode: none } }, ")?)?;
    proxy.update_cluster(updated).await?;
    assert_eq!(call_both().await?, both);
    assert_eq!([opened(sidecar_address), opened(plain.address())], before);
    proxy.shutdown().await;
    sidecar.shutdown().await;
    Ok(())
}
