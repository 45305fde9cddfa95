//! Test support: a management server, resources shaped as control planes send them, and a
//! proxy configured to take its routes, clusters and endpoints from the server.

pub mod fixtures;
pub mod management_server;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use metaprotocol_router::{Config, Proxy, StartError};
use metaprotocol_xds::XdsSource;
use prost::Name;

use self::fixtures::route_config_name;
use self::management_server::{ManagementServer, resource};

/// The node id of the proxy under test.
pub const NODE: &str = "proxy-1";

/// How long a change may take to show: generous, as the machine may be loaded.
pub const WITHIN: Duration = Duration::from_secs(20);

/// An address on 127.0.0.1 that refuses connections for as long as the returned socket lives:
/// the socket holds the port bound without listening. A port merely free a moment ago may come
/// alive: another test's listener can take it, and a health check's connect to it can be given
/// it as its own local port (a TCP self-connect, which succeeds), so the endpoint passes.
pub fn refusing_address() -> std::io::Result<(tokio::net::TcpSocket, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let address = socket.local_addr()?;
    Ok((socket, address))
}

/// Sets the node's clusters (CDS) to `clusters` at `version`.
pub fn cds(server: &ManagementServer, version: &str, clusters: &[Cluster]) {
    let resources = clusters.iter().map(|c| resource(&c.name, c)).collect();
    server.set(NODE, &Cluster::type_url(), version, resources);
}

/// Sets the node's endpoints (EDS) to `assignments` at `version`.
pub fn eds(server: &ManagementServer, version: &str, assignments: &[ClusterLoadAssignment]) {
    let resources = assignments
        .iter()
        .map(|a| resource(&a.cluster_name, a))
        .collect();
    server.set(NODE, &ClusterLoadAssignment::type_url(), version, resources);
}

/// Sets the node's route configs (RDS) to `config` at `version`.
pub fn rds(server: &ManagementServer, version: &str, config: &RouteConfiguration) {
    let resources = vec![resource(&config.name, config)];
    server.set(NODE, &RouteConfiguration::type_url(), version, resources);
}

/// Sets the node's resources to one cluster, `cluster` (at version `c1`), its endpoints
/// `endpoints` (EDS), and one route config whose one route sends every call to it.
pub fn serve_one_cluster(server: &ManagementServer, cluster: &Cluster, endpoints: &[SocketAddr]) {
    cds(server, "c1", std::slice::from_ref(cluster));
    eds(
        server,
        "e1",
        &[fixtures::assignment(&cluster.name, endpoints)],
    );
    let route = fixtures::meta_route("all", &[], fixtures::to_cluster(&cluster.name));
    rds(server, "r1", &fixtures::meta_route_config(vec![route]));
}

/// The proxy's config: one Dubbo listener whose routes, clusters and endpoints all come from
/// the management server at `xds` over `api_type` ADS.
pub fn proxy_config(xds: SocketAddr, api_type: &str) -> TestResult<Config> {
    listener_config(xds, api_type, "dubbo", &route_config_name())
}

/// The proxy's config: one listener, `<protocol>-in`, whose route config `route_config` and
/// its clusters and endpoints all come from the management server at `xds` over `api_type`
/// ADS.
pub fn listener_config(
    xds: SocketAddr,
    api_type: &str,
    protocol: &str,
    route_config: &str,
) -> TestResult<Config> {
    Ok(Config::from_yaml(&format!(
        "admin: {{ address: 127.0.0.1:0 }}
dynamic:
  xds:
    address: {xds}
    node_id: {NODE}
    api_type: {api_type}
    route_configs: ['*']
    clusters: ['*']
    reconnect: {{ base_interval: 50ms, max_interval: 500ms }}
listeners:
  - {{ name: {protocol}-in, address: 127.0.0.1:0, protocol: {protocol}, route_config: {route_config} }}
"
    ))?)
}

/// Starts a proxy of `config` with the bundled codecs and the xDS client.
pub async fn start_proxy(config: Config) -> Result<Proxy, StartError> {
    Proxy::builder(config)
        .codecs(metaprotocol_examples::codec_registry())
        .dynamic_source(XdsSource::default())
        .start()
        .await
}

/// Polls `test` every 10 ms until it holds, for up to [`WITHIN`].
pub async fn eventually(what: &str, mut test: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + WITHIN;
    while !test() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {WITHIN:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The result of a test.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `GET /config_dump` of the admin API at `admin`, as JSON.
pub async fn config_dump(admin: std::net::SocketAddr) -> TestResult<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(admin).await?;
    socket
        .write_all(b"GET /config_dump HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_string(&mut answer),
    )
    .await??;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("no body")?;
    Ok(serde_json::from_str(body)?)
}
