//! TLS to the xDS server (`dynamic.xds.tls`): the xDS crate's test management server serves
//! ADS over TLS with a certificate of a mesh CA (made here with rcgen, as istiod's is: a SPIFFE
//! id and its service's DNS name) and requires client certificates of that CA. A proxy with the
//! CA, its own certificate and the server's name takes its Dubbo routes, clusters and endpoints
//! from it; a proxy that expects another name, or presents no certificate, gets nothing (the
//! stream fails, the listener keeps waiting, the failure is shown and counted). Files that
//! cannot be used are errors naming the field when the proxy starts.

#[allow(dead_code)]
mod support;
#[allow(dead_code, reason = "each test uses part of the support")]
#[path = "../../metaprotocol-xds/tests/support/mod.rs"]
mod xds;

use std::net::SocketAddr;
use std::time::Instant;

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::config::{CertificateProviderSpec, ClusterTlsSpec};
use metaprotocol_router::{Config, Proxy, StartError};
use support::TestResult;
use support::mesh::{MeshCa, Workload, spiffe_id, yaml};
use support::process::Scratch;
use support::proxy::{metric, start_engine};
use xds::fixtures::{
    HOST, PORT, assignment, cluster_name, eds_cluster, istio_file_mutual_tls, istio_sidecar_tls,
    istio_transport_socket_matches, istio_upstream_tls, meta_route, meta_route_config, tls_socket,
    to_cluster, with_istio_sidecar,
};
use xds::management_server::{ManagementServer, Serving};
use xds::{
    WITHIN, cds, config_dump, eds, eventually, proxy_config, rds, serve_one_cluster, start_proxy,
};

/// The name in the management server's certificate, as istiod's service is named.
const SERVER_NAME: &str = "istiod.istio-system.svc";

/// The mesh: its CA, the management server's certificate and the proxy's.
struct Mesh {
    ca: MeshCa,
    server: Workload,
    proxy: Workload,
    _scratch: Scratch,
}

impl Mesh {
    /// A sidecar in front of `provider`: an engine whose listener speaks mutual TLS with the
    /// mesh's CA and `workload`'s certificate; the engine and the address it listens on.
    async fn sidecar(
        &self,
        workload: &Workload,
        provider: SocketAddr,
    ) -> TestResult<(Proxy, SocketAddr)> {
        let sidecar = start_engine(&format!(
            "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, tls: {tls} }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: p }} }} ] }} ]
clusters: [ {{ name: p, endpoints: [ {{ address: {provider} }} ] }} ]
",
            tls = yaml(&self.ca.listener_tls(workload))?,
        ))
        .await?;
        let address = sidecar
            .listener_addr("in")
            .ok_or("the sidecar is not bound")?;
        Ok((sidecar, address))
    }

    fn new(name: &str) -> TestResult<Self> {
        let scratch = Scratch::new(name)?;
        let ca = MeshCa::new(&scratch, "mesh")?;
        let server = ca.workload(&scratch, "istiod", "istio-system", "istiod", &[SERVER_NAME])?;
        let proxy = ca.workload(&scratch, "proxy", "default", "proxy", &[])?;
        Ok(Self {
            ca,
            server,
            proxy,
            _scratch: scratch,
        })
    }

    /// The proxy's `dynamic.xds.tls`: the mesh CA, the proxy's certificate, the server's name.
    fn client_tls(&self) -> ClusterTlsSpec {
        ClusterTlsSpec {
            server_name: Some(SERVER_NAME.to_owned()),
            subject_alt_names: Vec::new(),
            crl_files: Vec::new(),
            ..self.ca.client_tls(Some(&self.proxy), "")
        }
    }

    /// Serves `server`'s ADS over mutual TLS with the server's certificate.
    async fn serve(&self, server: &ManagementServer) -> TestResult<Serving> {
        server
            .serve_tls(
                "127.0.0.1:0".parse()?,
                &self.server.cert_file,
                &self.server.key_file,
                Some(&self.ca.ca_file),
            )
            .await
    }
}

/// The Dubbo proxy config of the xDS tests, taking its resources from `xds` over `tls`.
fn config_with_tls(xds: SocketAddr, tls: ClusterTlsSpec) -> TestResult<Config> {
    let mut config = proxy_config(xds, "grpc")?;
    let section = config
        .dynamic
        .as_mut()
        .and_then(|dynamic| dynamic.xds.as_mut())
        .ok_or("no dynamic.xds section")?;
    section.tls = Some(tls);
    Ok(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_clusters_and_endpoints_arrive_over_mutual_tls() -> TestResult {
    let mesh = Mesh::new("xds-tls")?;
    let provider = DemoProvider::start("v1").await?;
    let server = ManagementServer::new();
    let serving = mesh.serve(&server).await?;
    let cluster = cluster_name("v1");
    serve_one_cluster(&server, &eds_cluster(&cluster), &[provider.address()]);

    let proxy = start_proxy(config_with_tls(serving.address(), mesh.client_tls())?).await?;
    let admin = proxy.admin_addr().ok_or("no admin API")?;
    if let Err(err) = eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await
    {
        return Err(format!("{err}; /config_dump: {:#}", config_dump(admin).await?).into());
    }
    let address = proxy
        .listener_addr("dubbo-in")
        .ok_or("the listener is not bound")?;
    let reply = DubboClient::new(address)
        .call("sayHello", "over tls", &[])
        .await?;
    assert_eq!(reply.attachment("provider"), Some("v1"));
    let dump = config_dump(admin).await?;
    assert_eq!(
        dump["dynamic_sources"]["xds"]["connected"], true,
        "{dump:#}"
    );
    assert_eq!(
        dump["config"]["dynamic"]["xds"]["tls"]["server_name"],
        SERVER_NAME
    );
    proxy.shutdown().await;
    Ok(())
}

/// Starts a proxy whose `tls` the server must refuse; returns, once its stream has failed, the
/// error the xDS source shows and its TLS handshake failures.
async fn refused(mesh: &Mesh, tls: ClusterTlsSpec) -> TestResult<(String, f64)> {
    let server = ManagementServer::new();
    let serving = mesh.serve(&server).await?;
    let proxy = start_proxy(config_with_tls(serving.address(), tls)?).await?;
    let admin = proxy.admin_addr().ok_or("no admin API")?;
    let deadline = Instant::now() + WITHIN;
    let error = loop {
        let dump = config_dump(admin).await?;
        if let Some(error) = dump["dynamic_sources"]["xds"]["last_stream_error"].as_str() {
            break error.to_owned();
        }
        if Instant::now() > deadline {
            return Err(format!("the stream did not fail: {dump:#}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        proxy.listener_addr("dubbo-in").is_none(),
        "the listener waits for its routes"
    );
    assert!(server.received().is_empty(), "the server received nothing");
    let handshake_errors = metric(
        &proxy,
        &format!(
            "metaprotocol_upstream_tls_handshake_errors_total{{xds_server=\"{}\"}}",
            serving.address()
        ),
    );
    proxy.shutdown().await;
    Ok((error, handshake_errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_another_name_or_a_client_without_a_certificate_gets_nothing() -> TestResult {
    let mesh = Mesh::new("xds-tls-refused")?;

    let other_name = ClusterTlsSpec {
        server_name: Some("other.istio-system.svc".to_owned()),
        ..mesh.client_tls()
    };
    let (error, handshake_errors) = refused(&mesh, other_name).await?;
    assert!(
        error.contains("certificate not valid for name \"other.istio-system.svc\""),
        "{error}"
    );
    assert!(handshake_errors >= 1.0, "{handshake_errors}");

    let no_certificate = ClusterTlsSpec {
        cert_file: None,
        key_file: None,
        ..mesh.client_tls()
    };
    // The server's alert (CertificateRequired) may reach the client before or after its
    // request went out: the error shown says which, the server receives nothing either way.
    let (error, _) = refused(&mesh, no_certificate).await?;
    assert!(
        error.starts_with("cannot connect") || error.starts_with("stream failed"),
        "{error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_cannot_be_used_are_errors_naming_the_field() -> TestResult {
    let mesh = Mesh::new("xds-tls-errors")?;
    let xds: SocketAddr = "127.0.0.1:1".parse()?;
    let cases = [
        (
            ClusterTlsSpec {
                ca_file: "/nonexistent/ca.pem".into(),
                ..mesh.client_tls()
            },
            "dynamic.xds.tls.ca_file",
        ),
        (
            ClusterTlsSpec {
                key_file: Some(mesh.server.key_file.clone()),
                ..mesh.client_tls()
            },
            "dynamic.xds.tls.key_file",
        ),
        (
            ClusterTlsSpec {
                key_file: None,
                ..mesh.client_tls()
            },
            "dynamic.xds.tls.key_file",
        ),
    ];
    for (tls, field) in cases {
        match start_proxy(config_with_tls(xds, tls)?).await {
            Err(StartError::Config(err)) => assert_eq!(err.field, field, "{err}"),
            Err(other) => return Err(format!("{field}: {other}").into()),
            Ok(proxy) => {
                proxy.shutdown().await;
                return Err(format!("{field}: the proxy started").into());
            }
        }
    }
    Ok(())
}

/// A cluster from the server speaks mutual TLS to its endpoint with the certificates of a
/// certificate provider instance of `dynamic.xds.certificate_providers`, and verifies the
/// endpoint's SPIFFE id: calls reach a provider behind a mutual-TLS sidecar; once the cluster
/// expects another identity, the handshakes fail and no call does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_from_the_server_speak_tls_with_certificates_of_provider_instances() -> TestResult
{
    let mesh = Mesh::new("xds-cluster-tls")?;
    let scratch = Scratch::new("xds-cluster-tls-provider")?;
    let workload = mesh
        .ca
        .workload(&scratch, "provider", "default", "provider", &[])?;
    let provider = DemoProvider::start("v1").await?;
    let (sidecar, sidecar_address) = mesh.sidecar(&workload, provider.address()).await?;

    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let name = cluster_name("v1");
    let mut cluster = eds_cluster(&name);
    cluster.transport_socket = Some(tls_socket(&istio_upstream_tls(&workload.spiffe_id)));
    serve_one_cluster(&server, &cluster, &[sidecar_address]);
    let mut config = proxy_config(serving.address(), "grpc")?;
    let xds = config
        .dynamic
        .as_mut()
        .and_then(|dynamic| dynamic.xds.as_mut())
        .ok_or("no dynamic.xds section")?;
    xds.certificate_providers.insert(
        "default".to_owned(),
        CertificateProviderSpec {
            cert_file: Some(mesh.proxy.cert_file.clone()),
            key_file: Some(mesh.proxy.key_file.clone()),
            ca_file: Some(mesh.ca.ca_file.clone()),
        },
    );
    let proxy = start_proxy(config).await?;
    eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await?;
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let client = DubboClient::new(address);
    let reply = client.call("sayHello", "over mesh tls", &[]).await?;
    assert_eq!(reply.attachment("provider"), Some("v1"));

    let handshake_errors =
        format!("metaprotocol_upstream_tls_handshake_errors_total{{cluster=\"{name}\"}}");
    assert_eq!(metric(&proxy, &handshake_errors), 0.0);
    cluster.transport_socket = Some(tls_socket(&istio_upstream_tls(&spiffe_id(
        "default", "impostor",
    ))));
    cds(&server, "c2", &[cluster]);
    eventually("the cluster expects another identity", || {
        proxy
            .clusters()
            .iter()
            .any(|c| c.name == name && c.version > 1)
    })
    .await?;
    let deadline = Instant::now() + WITHIN;
    loop {
        // Answered by the proxy (an error reply), not by the provider.
        let failed = DubboClient::new(address)
            .call("sayHello", "to an impostor?", &[])
            .await
            .map_or(true, |reply| reply.attachment("provider").is_none());
        if failed && metric(&proxy, &handshake_errors) >= 1.0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("calls still reach a provider of another identity".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
    sidecar.shutdown().await;
    Ok(())
}

/// A cluster as istiod gives a sidecar under auto mTLS: `transport_socket_matches` choosing
/// mutual TLS, with the workload certificate and CA of SDS secrets `default` and `ROOTCA`, for
/// the endpoints labelled `tlsMode: istio` (pods with a sidecar) and plaintext for the others.
/// With the secrets mapped to files (`dynamic.xds.sds_secrets`), the cluster is taken: calls
/// reach the provider behind a mutual-TLS sidecar, whose SPIFFE id is verified, and the plain
/// provider beside it, without a failed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_clusters_speak_mutual_tls_to_endpoints_with_a_sidecar_and_plaintext_to_others()
-> TestResult {
    let mesh = Mesh::new("xds-sidecar-tls")?;
    let scratch = Scratch::new("xds-sidecar-tls-provider")?;
    let workload = mesh
        .ca
        .workload(&scratch, "provider", "default", "provider", &[])?;
    let meshed = DemoProvider::start("meshed").await?;
    let plain = DemoProvider::start("plain").await?;
    let (sidecar, sidecar_address) = mesh.sidecar(&workload, meshed.address()).await?;

    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let name = cluster_name("v1");
    let mut cluster = eds_cluster(&name);
    // The SNI istiod gives the subset's mutual TLS.
    let sni = format!("outbound_.{PORT}_.v1_.{HOST}");
    cluster.transport_socket_matches =
        istio_transport_socket_matches(&istio_sidecar_tls(&workload.spiffe_id, &sni));
    cds(&server, "c1", &[cluster]);
    let endpoints = assignment(&name, &[sidecar_address, plain.address()]);
    eds(&server, "e1", &[with_istio_sidecar(endpoints, 0)]);
    let route = meta_route("all", &[], to_cluster(&name));
    rds(&server, "r1", &meta_route_config(vec![route]));
    let mut config = proxy_config(serving.address(), "grpc")?;
    let xds = config
        .dynamic
        .as_mut()
        .and_then(|dynamic| dynamic.xds.as_mut())
        .ok_or("no dynamic.xds section")?;
    // The files pilot-agent writes with `OUTPUT_CERTS`, by the SDS secrets they stand for.
    xds.sds_secrets.insert(
        "default".to_owned(),
        CertificateProviderSpec {
            cert_file: Some(mesh.proxy.cert_file.clone()),
            key_file: Some(mesh.proxy.key_file.clone()),
            ca_file: None,
        },
    );
    xds.sds_secrets.insert(
        "ROOTCA".to_owned(),
        CertificateProviderSpec {
            ca_file: Some(mesh.ca.ca_file.clone()),
            ..CertificateProviderSpec::default()
        },
    );
    let proxy = start_proxy(config).await?;
    let taken = eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await;
    let nacks: Vec<String> = server
        .received()
        .into_iter()
        .filter_map(|request| request.error)
        .collect();
    if let Err(err) = taken {
        return Err(format!("{err}; NACKs: {nacks:?}").into());
    }
    assert_eq!(nacks, Vec::<String>::new());
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let client = DubboClient::new(address);
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let reply = client.call("sayHello", "in the mesh", &[]).await?;
        answered.insert(reply.attachment("provider").unwrap_or("none").to_owned());
    }
    assert_eq!(
        answered,
        ["meshed", "plain"].map(str::to_owned).into(),
        "calls reach both providers"
    );
    // Each call reached its provider once: through the sidecar (over mutual TLS), or directly.
    assert_eq!(meshed.seen().len() + plain.seen().len(), 4);
    // The series of the `tlsMode: istio` entry's TLS.
    let handshake_errors = format!(
        "metaprotocol_upstream_tls_handshake_errors_total{{cluster=\"{name}\",transport=\"tlsMode=istio\"}}"
    );
    assert_eq!(metric(&proxy, &handshake_errors), 0.0);
    proxy.shutdown().await;
    sidecar.shutdown().await;
    Ok(())
}

/// A cluster of a `DestinationRule` with `tls.mode: MUTUAL` and files mounted in the proxy's
/// pod, as istiod gives it a sidecar: its client certificate and CA are SDS secrets named after
/// the files (`file-cert:<cert>~<key>`, `file-root:<ca>`). With no `dynamic.xds.sds_secrets`
/// at all, the cluster is taken and its calls reach the provider behind a mutual-TLS sidecar,
/// presenting the certificate of those files and verifying the provider's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_file_named_sds_secrets_speak_mutual_tls_with_those_files() -> TestResult {
    let mesh = Mesh::new("xds-file-secrets")?;
    let scratch = Scratch::new("xds-file-secrets-provider")?;
    let workload = mesh
        .ca
        .workload(&scratch, "provider", "default", "provider", &[])?;
    let provider = DemoProvider::start("v1").await?;
    let (sidecar, sidecar_address) = mesh.sidecar(&workload, provider.address()).await?;

    let server = ManagementServer::new();
    let serving = server.serve("127.0.0.1:0".parse()?).await?;
    let name = cluster_name("v1");
    let mut cluster = eds_cluster(&name);
    let path = |file: &std::path::Path| file.display().to_string();
    cluster.transport_socket = Some(tls_socket(&istio_file_mutual_tls(
        &path(&mesh.proxy.cert_file),
        &path(&mesh.proxy.key_file),
        &path(&mesh.ca.ca_file),
        &workload.spiffe_id,
        HOST,
    )));
    serve_one_cluster(&server, &cluster, &[sidecar_address]);
    let proxy = start_proxy(proxy_config(serving.address(), "grpc")?).await?;
    let taken = eventually("the listener serves", || {
        proxy.listener_addr("dubbo-in").is_some()
    })
    .await;
    let nacks: Vec<String> = server
        .received()
        .into_iter()
        .filter_map(|request| request.error)
        .collect();
    if let Err(err) = taken {
        return Err(format!("{err}; NACKs: {nacks:?}").into());
    }
    assert_eq!(nacks, Vec::<String>::new());
    let address = proxy.listener_addr("dubbo-in").ok_or("not bound")?;
    let reply = DubboClient::new(address)
        .call("sayHello", "with mounted files", &[])
        .await?;
    assert_eq!(reply.attachment("provider"), Some("v1"));
    assert_eq!(provider.seen().len(), 1);
    let handshake_errors =
        format!("metaprotocol_upstream_tls_handshake_errors_total{{cluster=\"{name}\"}}");
    assert_eq!(metric(&proxy, &handshake_errors), 0.0);
    proxy.shutdown().await;
    sidecar.shutdown().await;
    Ok(())
}
