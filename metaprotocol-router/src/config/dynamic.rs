//! The `dynamic` section: resources a control plane provides instead of the file.
//!
//! The engine itself speaks no control-plane protocol: a [`DynamicSource`](crate::DynamicSource)
//! registered with [`ProxyBuilder::dynamic_source`](crate::ProxyBuilder::dynamic_source) (the
//! `metaprotocol-xds` crate's xDS client) serves this section. What the engine reads here is which
//! route configs and clusters may come from the source, so that the file may refer to them before
//! they arrive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClusterTlsSpec, ConfigError, EndpointAddress, Errors};

/// Where dynamic resources come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicSpec {
    /// An xDS management server (Istio's istiod, Aeraki, your own), over ADS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsSpec>,
}

impl DynamicSpec {
    /// True if the source may provide the route config `name`.
    pub fn provides_route_config(&self, name: &str) -> bool {
        self.xds
            .as_ref()
            .is_some_and(|xds| covers(&xds.route_configs, name))
    }

    /// True if the source may provide the cluster `name`.
    pub fn provides_cluster(&self, name: &str) -> bool {
        self.xds
            .as_ref()
            .is_some_and(|xds| covers(&xds.clusters, name))
    }

    /// The names of the sources this section configures (`xds`).
    pub fn sources(&self) -> impl Iterator<Item = &'static str> {
        self.xds.iter().map(|_| XDS)
    }

    pub(crate) fn check(&self, errors: &mut Errors) {
        match &self.xds {
            Some(xds) => errors.within(XDS, |errors| xds.check(errors)),
            None => errors.add(ConfigError::new("", "needs a source: `xds`")),
        }
    }
}

/// The name of the xDS source in the `dynamic` section.
pub const XDS: &str = "xds";

/// True if `patterns` (names, or `*` for every name) include `name`.
fn covers(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| p == "*" || p == name)
}

/// An xDS management server and what to ask it for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsSpec {
    /// The server's `host:port` (gRPC over HTTP/2; TLS with `tls`).
    pub address: EndpointAddress,
    /// The proxy's node id, by which the server knows what to send it.
    pub node_id: String,
    /// The proxy's node cluster (the service it belongs to, for the server).
    #[serde(default)]
    pub cluster: String,
    /// Node metadata sent to the server (istiod, for one, reads some: `LABELS` as a map).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_metadata: BTreeMap<String, NodeMetadataValue>,
    /// The node's locality sent to the server, which may order the endpoints it sends by it
    /// (istiod's locality failover); when not given, the proxy's own (the top-level
    /// `node.locality`, as Envoy sends its one node's), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<NodeLocalitySpec>,
    /// Route configs from the server: names, or `*` for every one it has (RDS).
    #[serde(default)]
    pub route_configs: Vec<String>,
    /// Clusters from the server: names, or `*` for every one it has (CDS, and EDS for their
    /// endpoints).
    #[serde(default)]
    pub clusters: Vec<String>,
    /// `grpc`: state-of-the-world ADS; `delta_grpc`: incremental ADS.
    #[serde(default)]
    pub api_type: XdsApiType,
    /// TLS to the server, as to a cluster's endpoints; the server name defaults to the host of
    /// `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsSpec>,
    /// The time allowed to connect to the server.
    #[serde(default = "default_xds_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The pause before connecting again after the stream failed.
    #[serde(default)]
    pub reconnect: ReconnectSpec,
    /// HTTP/2 pings on the connection to the server, which find it dead when nothing else
    /// would (the server's host gone, a network partition: no FIN, no RST).
    #[serde(default)]
    pub keepalive: KeepaliveSpec,
    /// Bounds on what the server can make the proxy hold.
    #[serde(default)]
    pub limits: XdsLimitsSpec,
    /// Certificate files by instance name, for clusters whose TLS the server gives as
    /// certificate provider instances (as Istio does for proxyless clients).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificate_providers: BTreeMap<String, CertificateProviderSpec>,
    /// Certificate files by SDS secret name, for clusters whose TLS the server gives as SDS
    /// secrets (as istiod does for sidecars: `default`, `ROOTCA`). The proxy has no SDS client:
    /// a secret is resolved to its files here by its name, never fetched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sds_secrets: BTreeMap<String, CertificateProviderSpec>,
}

/// Where the proxy runs, as the node's locality an xDS server knows it by (Envoy's
/// `Node.locality`): region, zone and sub-zone, each empty when not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLocalitySpec {
    /// The region.
    #[serde(default)]
    pub region: String,
    /// The zone within the region.
    #[serde(default)]
    pub zone: String,
    /// The sub-zone within the zone (a rack, say).
    #[serde(default)]
    pub sub_zone: String,
}

/// A value of the node metadata: a string, or a map or list of such values, sent as the
/// protobuf `Value` of that kind (istiod reads `LABELS` and `PLATFORM_METADATA` as maps of
/// strings, and refuses the stream when they come as strings). Scalars are strings, as
/// elsewhere in the config: one YAML reads as a number or boolean must be quoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NodeMetadataValue {
    /// A string.
    String(String),
    /// A list of values.
    List(Vec<NodeMetadataValue>),
    /// A map of values, by key.
    Map(BTreeMap<String, NodeMetadataValue>),
}

impl<'de> Deserialize<'de> for NodeMetadataValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};

        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = NodeMetadataValue;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a string (quoted, where YAML would read a number or boolean), a map or a list",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(NodeMetadataValue::String(text.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element()? {
                    values.push(value);
                }
                Ok(NodeMetadataValue::List(values))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut values = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, NodeMetadataValue>()? {
                    values.insert(key, value);
                }
                Ok(NodeMetadataValue::Map(values))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

/// The certificate files a certificate provider instance (gRPC's `file_watcher` provider) or an
/// SDS secret stands for: a cluster from the server names the instance or secret for its client
/// certificate, its CA, or both. The files are re-read when they change, as a cluster's `tls`
/// files are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateProviderSpec {
    /// A certificate chain (PEM), leaf first, presented to endpoints; with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that endpoints' certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl CertificateProviderSpec {
    fn check(&self, errors: &mut Errors) {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => errors.add(ConfigError::new("key_file", "needed with `cert_file`")),
            (None, Some(_)) => errors.add(ConfigError::new("cert_file", "needed with `key_file`")),
            (None, None) if self.ca_file.is_none() => errors.add(ConfigError::new(
                "",
                "names no file: give `cert_file` and `key_file`, `ca_file`, or all three",
            )),
            _ => {}
        }
        for (field, path) in [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_file", &self.ca_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                errors.add(ConfigError::new(field, "must not be empty"));
            }
        }
    }
}

fn default_xds_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl XdsSpec {
    fn check(&self, errors: &mut Errors) {
        if self.node_id.is_empty() {
            errors.add(ConfigError::new("node_id", "must not be empty"));
        }
        for (field, names) in [
            ("route_configs", &self.route_configs),
            ("clusters", &self.clusters),
        ] {
            if let Some(i) = names.iter().position(String::is_empty) {
                errors.add(ConfigError::new(
                    format!("{field}[{i}]"),
                    "must not be empty (a name, or `*` for every one)",
                ));
            }
        }
        if self.route_configs.is_empty() && self.clusters.is_empty() {
            errors.add(ConfigError::new(
                "",
                "asks for nothing: list the `route_configs` and `clusters` to take from the server (`*` for every one)",
            ));
        }
        if self.connect_timeout.is_zero() {
            errors.add(ConfigError::new(
                "connect_timeout",
                "must be greater than 0",
            ));
        }
        if let Some(tls) = &self.tls {
            errors.check("tls", tls.validate_for_grpc());
        }
        errors.within("reconnect", |errors| self.reconnect.check(errors));
        errors.within("keepalive", |errors| self.keepalive.check(errors));
        errors.within("limits", |errors| self.limits.check(errors));
        for (section, files, kind) in [
            (
                "certificate_providers",
                &self.certificate_providers,
                "instance",
            ),
            ("sds_secrets", &self.sds_secrets, "secret"),
        ] {
            for (name, provider) in files {
                let at = format!("{section}.{name}");
                if name.is_empty() {
                    errors.add(ConfigError::new(
                        &at,
                        format!("the {kind} name must not be empty"),
                    ));
                }
                errors.within(&at, |errors| provider.check(errors));
            }
        }
    }
}

/// The flavour of ADS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdsApiType {
    /// State of the world: every response carries whole sets of resources.
    #[default]
    Grpc,
    /// Incremental: responses carry what changed and what was removed.
    DeltaGrpc,
}

/// Exponential back-off between connection attempts, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectSpec {
    /// The ceiling of the first pause.
    #[serde(default = "default_reconnect_base", with = "humantime_serde")]
    pub base_interval: Duration,
    /// The largest ceiling.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub max_interval: Duration,
}

impl Default for ReconnectSpec {
    fn default() -> Self {
        Self {
            base_interval: default_reconnect_base(),
            max_interval: default_reconnect_max(),
        }
    }
}

fn default_reconnect_base() -> Duration {
    Duration::from_millis(500)
}

fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl ReconnectSpec {
    fn check(&self, errors: &mut Errors) {
        if self.base_interval.is_zero() {
            errors.add(ConfigError::new("base_interval", "must be greater than 0"));
        }
        if self.max_interval < self.base_interval {
            errors.add(ConfigError::new(
                "max_interval",
                "must not be less than base_interval",
            ));
        }
    }
}

/// HTTP/2 keepalive: a ping after each `interval` without a frame from the server; a ping not
/// answered within `timeout` closes the connection, and the client connects again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSpec {
    /// The time without a frame from the server after which a ping is sent.
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The time a ping may go unanswered before the connection is taken for dead.
    #[serde(default = "default_keepalive_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for KeepaliveSpec {
    fn default() -> Self {
        Self {
            interval: default_keepalive_interval(),
            timeout: default_keepalive_timeout(),
        }
    }
}

/// gRPC servers by default close a connection pinged more often than every 5 minutes (istiod
/// allows every 15 seconds): the default stays within what any server allows.
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}

impl KeepaliveSpec {
    fn check(&self, errors: &mut Errors) {
        for (field, value) in [("interval", self.interval), ("timeout", self.timeout)] {
            if value.is_zero() {
                errors.add(ConfigError::new(field, "must be greater than 0"));
            }
        }
    }
}

/// Bounds on what an xDS server can make the proxy hold, each counted over every resource of
/// its kind held from the server once an update is applied. An update that would pass one is
/// rejected (NACKed, naming the bound), and the running config keeps serving.
///
/// A response may take 64 MiB on the wire, and the smallest resources take a few bytes each
/// there but far more once running (a cluster has its pools, series and tasks; an endpoint its
/// connections and series; a route its matchers): without these bounds one response could ask
/// for millions of them, and gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsLimitsSpec {
    /// Clusters held from the server.
    #[serde(default = "default_max_xds_clusters")]
    pub max_clusters: usize,
    /// Endpoints of those clusters, together (from EDS, or inline in a cluster), each cluster
    /// counting those it runs. Endpoints only Istio's HBONE tunnel reaches run in none and are
    /// not counted; those held because a cluster's HBONE entry takes them (another cluster of
    /// their service may run them) are bounded apart by this number too.
    #[serde(default = "default_max_xds_endpoints")]
    pub max_endpoints: usize,
    /// Routes of the route configs held from the server, together.
    #[serde(default = "default_max_xds_routes")]
    pub max_routes: usize,
}

impl Default for XdsLimitsSpec {
    fn default() -> Self {
        Self {
            max_clusters: default_max_xds_clusters(),
            max_endpoints: default_max_xds_endpoints(),
            max_routes: default_max_xds_routes(),
        }
    }
}

/// The defaults are past the largest meshes known (tens of thousands of services, each a few
/// clusters with its subsets, and a few endpoints to each).
fn default_max_xds_clusters() -> usize {
    100_000
}

fn default_max_xds_endpoints() -> usize {
    1_000_000
}

fn default_max_xds_routes() -> usize {
    100_000
}

impl XdsLimitsSpec {
    fn check(&self, errors: &mut Errors) {
        for (field, value) in [
            ("max_clusters", self.max_clusters),
            ("max_endpoints", self.max_endpoints),
            ("max_routes", self.max_routes),
        ] {
            if value == 0 {
                errors.add(ConfigError::new(field, "must be at least 1"));
            }
        }
    }
}
