//! An xDS client for metaprotocol-rs: a mesh control plane (Istio's istiod, Aeraki's MetaRDS
//! server, your own) drives a running proxy's clusters, endpoints and MetaProtocol routes over
//! ADS (the aggregated discovery service, gRPC).
//!
//! The client is a [`DynamicSource`] serving the config's `dynamic.xds` section: register it
//! with [`ProxyBuilder::dynamic_source`](metaprotocol_router::ProxyBuilder::dynamic_source)
//! and the proxy starts it once it serves its file. It subscribes to CDS
//! (`envoy.config.cluster.v3.Cluster`), EDS (`ClusterLoadAssignment`, for EDS clusters) and
//! RDS (`RouteConfiguration`, MetaProtocol routes in the encoding Aeraki's MetaRDS server
//! sends: one virtual host whose routes carry `headers` matchers), translates each response
//! strictly (see [`translate`]) and applies it through
//! [`Proxy::apply_dynamic`]: all of a response or none of it (over delta ADS, all of it but the
//! resources that do not translate), hitlessly. An EDS cluster waits for its endpoints as long as
//! its `initial_fetch_timeout` says (Envoy's 15 s when unset; istiod sends 0, for ever), then
//! serves without them until they come. Each response is ACKed, or NACKed with an error
//! detail naming the resource and field at fault while the running config keeps serving. A failed stream is opened again after a jittered,
//! exponential pause. `/config_dump` shows every dynamic resource's version (over delta ADS,
//! the resource's own), last update and last error, and the client's stream and per-type
//! versions and nonces under `dynamic_sources.xds`.
//!
//! ```no_run
//! # async fn run(config: metaprotocol_router::Config, codecs: metaprotocol_core::CodecRegistry)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = metaprotocol_router::Proxy::builder(config)
//!     .codecs(codecs)
//!     .dynamic_source(metaprotocol_xds::XdsSource::default())
//!     .start()
//!     .await?;
//! # drop(proxy);
//! # Ok(())
//! # }
//! ```
//!
//! Both ADS flavours are spoken: state of the world (`api_type: grpc`) and incremental
//! (`delta_grpc`), over plaintext gRPC or, with `tls`, over TLS (the settings of a cluster's
//! `tls`: the server's CA, a client certificate for mutual TLS, the server name, which defaults
//! to the host of `address`).

mod budget;
mod client;
mod delta;
mod known;
mod resource;
mod state;
mod status;
mod tls;
pub mod translate;
mod warn;

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use metaprotocol_router::config::{DynamicSpec, NodeMetadataValue, NodeSpec, XDS, XdsSpec};
use metaprotocol_router::{ConfigError, DynamicSource, Metrics, Proxy};

use self::state::Subscription;
use self::status::SourceStatus;
use self::tls::server_tls;

/// The xDS client, serving the config's `dynamic.xds` section (see the crate docs).
#[derive(Debug, Default)]
pub struct XdsSource {
    /// The running client's state, once started.
    status: OnceLock<Arc<SourceStatus>>,
}

impl DynamicSource for XdsSource {
    fn name(&self) -> &'static str {
        XDS
    }

    fn check(&self, spec: &DynamicSpec) -> Result<(), ConfigError> {
        let Some(xds) = &spec.xds else {
            return Ok(());
        };
        server_tls(xds, &Metrics::new().root()).map(drop)
    }

    fn start(&self, proxy: Proxy, spec: &DynamicSpec) {
        let Some(xds) = spec.xds.clone() else {
            return;
        };
        let scope = proxy
            .metrics()
            .root()
            .with_label("xds_server", &xds.address.to_string());
        let status = Arc::new(SourceStatus::new(
            xds.address.to_string(),
            xds.node_id.clone(),
            &scope,
        ));
        if self.status.set(Arc::clone(&status)).is_err() {
            tracing::warn!("the xDS source was started twice; the second start is ignored");
            return;
        }
        let tls = match server_tls(&xds, &scope) {
            Ok(tls) => tls,
            Err(err) => {
                // Checked when the proxy started; the files changed since.
                tracing::error!(%err, "the xDS client cannot start");
                status.failed(&err);
                return;
            }
        };
        // The node is built once and presented on every stream: like the `dynamic` section, it
        // takes the proxy's own locality as it is when the proxy starts (one clone of the
        // config, at start only).
        let own = proxy.config().node;
        let subscription = Subscription::new(&xds, node(&xds, own.as_ref()));
        tokio::spawn(client::run(proxy, xds, tls, subscription, status));
    }

    fn status(&self) -> serde_json::Value {
        self.status
            .get()
            .map_or(serde_json::Value::Null, |status| status.to_json())
    }
}

/// The node the client presents: its id, cluster, metadata and locality (see [`locality`]), and
/// the client's name.
fn node(spec: &XdsSpec, own: Option<&NodeSpec>) -> Node {
    let metadata = Struct {
        fields: spec
            .node_metadata
            .iter()
            .map(|(key, value)| (key.clone(), metadata_value(value)))
            .collect(),
    };
    Node {
        id: spec.node_id.clone(),
        cluster: spec.cluster.clone(),
        metadata: Some(metadata).filter(|m| !m.fields.is_empty()),
        locality: locality(spec, own),
        user_agent_name: "metaprotocol-rs".to_owned(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_owned(),
        )),
        ..Node::default()
    }
}

/// The node's locality: `dynamic.xds.locality`, else where the proxy runs for its own
/// locality-aware clusters (the top-level `node.locality`, which has no sub-zone), else none.
/// Envoy has one node, its bootstrap's: the locality it sends the server is the one its
/// zone-aware balancing reads (pilot-agent writes it there, from the pod's `istio-locality` label
/// or the platform's metadata).
fn locality(spec: &XdsSpec, own: Option<&NodeSpec>) -> Option<Locality> {
    if let Some(locality) = &spec.locality {
        return Some(Locality {
            region: locality.region.clone(),
            zone: locality.zone.clone(),
            sub_zone: locality.sub_zone.clone(),
        });
    }
    own.map(|own| Locality {
        region: own.locality.region.clone(),
        zone: own.locality.zone.clone(),
        sub_zone: String::new(),
    })
}

/// A node metadata value as the protobuf `Value` of its kind.
fn metadata_value(value: &NodeMetadataValue) -> Value {
    let kind = match value {
        NodeMetadataValue::String(text) => Kind::StringValue(text.clone()),
        NodeMetadataValue::List(values) => Kind::ListValue(ListValue {
            values: values.iter().map(metadata_value).collect(),
        }),
        NodeMetadataValue::Map(values) => Kind::StructValue(Struct {
            fields: values
                .iter()
                .map(|(key, value)| (key.clone(), metadata_value(value)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata istiod reads of a node: strings (`ISTIO_VERSION`, `NAMESPACE`), and maps of
    /// strings (`LABELS`, by which `Sidecar`, `EnvoyFilter` and other resources select their
    /// workloads), which istiod refuses the stream for when they come as strings. A value YAML
    /// reads as a number or boolean is still refused unquoted, as elsewhere in the config.
    /// A config whose `dynamic.xds` has `field` (`name: value`, flow YAML) beside what it needs.
    fn config_with(field: &str) -> Result<metaprotocol_router::Config, ConfigError> {
        metaprotocol_router::Config::from_yaml(&yaml_with(field))
    }

    /// The YAML of [`config_with`].
    fn yaml_with(field: &str) -> String {
        format!(
            "dynamic:\n  xds:\n    address: 127.0.0.1:15010\n    node_id: proxy-1\n    clusters: ['*']\n    {field}\nlisteners: []\n"
        )
    }

    /// The node sent for a config whose `dynamic.xds` has `field` (see [`config_with`]), and
    /// whose top-level `node` is `own` (flow YAML) when given.
    fn node_sent(field: &str, own: Option<&str>) -> Node {
        let own = own.map_or_else(String::new, |own| format!("node: {own}\n"));
        let config = metaprotocol_router::Config::from_yaml(&format!("{own}{}", yaml_with(field)));
        match config {
            Ok(config) => match config.dynamic.as_ref().and_then(|d| d.xds.as_ref()) {
                Some(spec) => node(spec, config.node.as_ref()),
                None => panic!("no xds section"),
            },
            Err(err) => panic!("{err}"),
        }
    }

    /// The `dynamic.xds` section of a config with `field` (see [`config_with`]).
    fn spec_with(field: &str) -> XdsSpec {
        match config_with(field).map(|config| config.dynamic.and_then(|d| d.xds)) {
            Ok(Some(spec)) => spec,
            Ok(None) => panic!("no xds section"),
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn node_metadata_takes_maps_and_lists_of_strings_as_istiod_reads_them() {
        let config = |metadata: &str| config_with(&format!("node_metadata: {metadata}"));
        let spec = spec_with(
            "node_metadata: { ISTIO_VERSION: '1.24.0', ENABLE_HBONE: 'true', LABELS: { app: demo, version: v1 }, TAGS: [blue, green] }",
        );
        let string = |text: &str| Value {
            kind: Some(Kind::StringValue(text.to_owned())),
        };
        let fields = node(&spec, None)
            .metadata
            .map(|m| m.fields)
            .unwrap_or_default();
        assert_eq!(fields.get("ISTIO_VERSION"), Some(&string("1.24.0")));
        assert_eq!(fields.get("ENABLE_HBONE"), Some(&string("true")));
        let labels = Struct {
            fields: [("app", "demo"), ("version", "v1")]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), string(value)))
                .collect(),
        };
        assert_eq!(
            fields.get("LABELS"),
            Some(&Value {
                kind: Some(Kind::StructValue(labels))
            })
        );
        let tags = ListValue {
            values: vec![string("blue"), string("green")],
        };
        assert_eq!(
            fields.get("TAGS"),
            Some(&Value {
                kind: Some(Kind::ListValue(tags))
            })
        );
        let unquoted = config("{ ENABLE_HBONE: true }").map(drop);
        assert!(
            unquoted
                .as_ref()
                .is_err_and(|err| err.to_string().contains("node_metadata")),
            "{unquoted:?}"
        );
    }

    /// The node's locality (`dynamic.xds.locality`) is sent to the server, which orders the
    /// endpoints of a locality-aware cluster by it (istiod's failover priorities, sent from the
    /// proxy's region, zone and sub-zone); none is sent when it is not given. A field it has not
    /// is refused naming it.
    #[test]
    fn the_nodes_locality_is_sent_as_configured() {
        let spec = spec_with("locality: { region: us-east1, zone: us-east1-b, sub_zone: rack-7 }");
        assert_eq!(
            node(&spec, None).locality,
            Some(Locality {
                region: "us-east1".to_owned(),
                zone: "us-east1-b".to_owned(),
                sub_zone: "rack-7".to_owned(),
            })
        );
        assert_eq!(node(&spec_with("cluster: c"), None).locality, None);
        let misspelt = config_with("locality: { regoin: us-east1 }").map(drop);
        assert!(
            misspelt
                .as_ref()
                .is_err_and(|err| err.to_string().contains("locality")),
            "{misspelt:?}"
        );
    }

    /// Without `dynamic.xds.locality`, the node sent is where the proxy says it runs for its
    /// own locality-aware clusters (the top-level `node.locality`), as Envoy has one node, its
    /// bootstrap's, whose locality it both sends to the server and balances by. Given, the
    /// node's locality is sent whole instead.
    #[test]
    fn the_proxys_own_locality_is_the_nodes_when_not_given() {
        let own = Some("{ locality: { region: us-east1, zone: us-east1-b } }");
        assert_eq!(
            node_sent("cluster: c", own).locality,
            Some(Locality {
                region: "us-east1".to_owned(),
                zone: "us-east1-b".to_owned(),
                sub_zone: String::new(),
            })
        );
        assert_eq!(
            node_sent("locality: { region: eu-west1, sub_zone: rack-7 }", own).locality,
            Some(Locality {
                region: "eu-west1".to_owned(),
                zone: String::new(),
                sub_zone: "rack-7".to_owned(),
            })
        );
        assert_eq!(node_sent("cluster: c", None).locality, None);
    }
}
