//! EDS: a `ClusterLoadAssignment` as the endpoints of a cluster.
//!
//! Each `lb_endpoints` entry with a socket address becomes an endpoint: its
//! `load_balancing_weight` (default 1) is its weight, its locality's region and zone are its
//! locality, and the string values of its `filter_metadata["envoy.lb"]` (where Envoy's subset
//! load balancer reads them) are its labels for subset routes, and the string values of its
//! `filter_metadata["envoy.transport_socket_match"]` (`tlsMode: istio` from istiod, for a pod
//! with a sidecar) its `transport_socket_match`, which chooses its transport among its
//! cluster's `transport_socket_matches`, and its locality's (its `metadata` in that namespace)
//! its `locality_transport_socket_match`, which the router tries after its own, as Envoy does:
//! the first entry the endpoint's own labels match (an empty `match` takes an endpoint without
//! labels), else the first its locality's match, else the cluster's transport. Endpoints whose
//! `health_status` is `UNHEALTHY`, `DRAINING` or `TIMEOUT` are left out, as Envoy sends them no
//! calls. A locality's `priority` is its endpoints' failover tier (istiod sends priorities for
//! locality failover). An endpoint's `health_check_config.port_value` (not 0) is its
//! `health_check_port`, where the cluster's active health checks go instead of its own port.
//! Refused: named ports, pipes, endpoint names, `named_endpoints`, drop overloads, the rest of
//! `health_check_config` (`hostname`, `address`, `disable_active_health_check`), which would
//! change how the endpoint is checked. Accepted and ignored: locality weights and
//! `overprovisioning_factor`.
//!
//! Left out, and counted ([`Assignment::hbone_endpoints`]): endpoints reached through Istio's
//! HBONE tunnel, which the engine does not speak. istiod sends an ambient pod (or a waypoint)
//! that way to a proxy whose node metadata claims HBONE (`ENABLE_HBONE`): an internal address
//! naming Envoy's listener that makes the tunnel, labelled `tunnel: http`. Any internal address
//! (a listener inside an Envoy, which no other proxy has) cannot be reached; refusing the
//! assignment for it would leave every other endpoint of the service on what the proxy held
//! before, so the others are taken, as Envoy takes the endpoints of an assignment it cannot
//! all reach. An endpoint at a socket address whose transport would be its cluster's HBONE
//! entry (which translation leaves out) is left out by that cluster, which alone knows its
//! entries: chosen as its transport is, by its own labels, else its locality's (see
//! `cluster.rs`). To a proxy that does not claim HBONE (the client's node metadata has none
//! unless given) istiod sends ambient pods by their own address.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use envoy_types::pb::google::protobuf::value::Kind;
use metaprotocol_router::config::{EndpointSpec, LocalitySpec};

use super::{InvalidResource, refuse_set};

/// The metadata namespace holding endpoint labels for subset load balancing.
const LB_METADATA: &str = "envoy.lb";

/// The metadata namespace holding the labels that choose an endpoint's transport.
const TRANSPORT_SOCKET_MATCH_METADATA: &str = "envoy.transport_socket_match";

/// The transport label istiod gives endpoints it reaches through Istio's HBONE tunnel (ambient
/// pods, waypoints), with the value [`TUNNEL_HTTP`].
pub(super) const TUNNEL_LABEL: &str = "tunnel";

/// The [`TUNNEL_LABEL`] value of an endpoint reached through HBONE.
pub(super) const TUNNEL_HTTP: &str = "http";

/// What a `ClusterLoadAssignment` gives a cluster: its endpoints, and how many it leaves out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    /// The endpoints that take calls, and those a cluster's HBONE entry takes (which only
    /// [`ClusterResource::with_endpoints`](super::ClusterResource::with_endpoints) leaves out).
    pub endpoints: Vec<EndpointSpec>,
    /// The endpoints left out because only Istio's HBONE tunnel reaches them, at an internal
    /// address (see the module docs; the clusters leave out more).
    pub hbone_endpoints: usize,
}

/// The endpoints of `assignment` (see the module docs), without those at an internal address.
/// Those a cluster's HBONE entry takes are kept: give them to
/// [`ClusterResource::with_endpoints`](super::ClusterResource::with_endpoints), which leaves them
/// out, rather than to a cluster spec directly.
pub fn endpoints(assignment: &ClusterLoadAssignment) -> Result<Vec<EndpointSpec>, InvalidResource> {
    self::assignment(assignment).map(|assignment| assignment.endpoints)
}

/// The endpoints of `assignment`, and how many it leaves out (see the module docs).
pub fn assignment(assignment: &ClusterLoadAssignment) -> Result<Assignment, InvalidResource> {
    refuse_set!("", assignment, [named_endpoints]);
    if let Some(policy) = &assignment.policy {
        refuse_set!("policy", policy, [drop_overloads]);
    }
    let mut taken = Assignment::default();
    for (i, group) in assignment.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        refuse_set!(&at, group, [lb_config]);
        let locality_labels = transport_labels(group.metadata.as_ref());
        let locality = group.locality.as_ref().map(|l| LocalitySpec {
            region: l.region.clone(),
            zone: l.zone.clone(),
        });
        for (j, endpoint) in group.lb_endpoints.iter().enumerate() {
            let at = format!("{at}.lb_endpoints[{j}]");
            match endpoint_spec(endpoint, locality.as_ref(), &locality_labels, &at)? {
                Taken::Serving(mut spec) => {
                    spec.priority = group.priority;
                    taken.endpoints.push(spec);
                }
                Taken::NoCalls => {}
                Taken::Hbone => taken.hbone_endpoints += 1,
            }
        }
    }
    Ok(taken)
}

/// What becomes of one `lb_endpoints` entry.
enum Taken {
    /// It takes calls.
    Serving(EndpointSpec),
    /// Its health status says it takes no calls.
    NoCalls,
    /// Only Istio's HBONE tunnel reaches it.
    Hbone,
}

/// One endpoint, with the `envoy.transport_socket_match` labels of its locality
/// `locality_labels`.
fn endpoint_spec(
    endpoint: &LbEndpoint,
    locality: Option<&LocalitySpec>,
    locality_labels: &BTreeMap<String, String>,
    at: &str,
) -> Result<Taken, InvalidResource> {
    let serves = !matches!(
        HealthStatus::try_from(endpoint.health_status),
        Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
    );
    let host = match &endpoint.host_identifier {
        Some(HostIdentifier::Endpoint(host)) => host,
        Some(HostIdentifier::EndpointName(_)) => {
            return Err(InvalidResource::unsupported(format!("{at}.endpoint_name")));
        }
        None => {
            return Err(InvalidResource::new(
                format!("{at}.endpoint"),
                "is required",
            ));
        }
    };
    refuse_set!(&format!("{at}.endpoint"), host, [additional_addresses]);
    let health_check_port = match &host.health_check_config {
        Some(config) => {
            let at = format!("{at}.endpoint.health_check_config");
            refuse_set!(
                &at,
                config,
                [hostname, address, disable_active_health_check]
            );
            match config.port_value {
                0 => None,
                port => Some(u16::try_from(port).map_err(|_| {
                    InvalidResource::new(format!("{at}.port_value"), "must be 0 to 65535")
                })?),
            }
        }
        None => None,
    };
    let field = format!("{at}.endpoint.address");
    let socket = match host.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(AddressKind::SocketAddress(socket)) => socket,
        Some(AddressKind::EnvoyInternalAddress(_)) if serves => return Ok(Taken::Hbone),
        Some(AddressKind::EnvoyInternalAddress(_)) => return Ok(Taken::NoCalls),
        Some(_) => {
            return Err(InvalidResource::new(
                field,
                "only socket addresses are supported by metaprotocol-rs",
            ));
        }
        None => return Err(InvalidResource::new(field, "is required")),
    };
    let port = match socket.port_specifier {
        Some(PortSpecifier::PortValue(port)) => u16::try_from(port).map_err(|_| {
            InvalidResource::new(format!("{field}.port_value"), "must be 0 to 65535")
        })?,
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(InvalidResource::unsupported(format!("{field}.named_port")));
        }
        None => {
            return Err(InvalidResource::new(
                format!("{field}.port_value"),
                "is required",
            ));
        }
    };
    let host = if socket.address.contains(':') {
        format!("[{}]:{port}", socket.address)
    } else {
        format!("{}:{port}", socket.address)
    };
    if !serves {
        return Ok(Taken::NoCalls);
    }
    let weight = endpoint
        .load_balancing_weight
        .as_ref()
        .map_or(1, |w| w.value);
    if weight == 0 {
        return Err(InvalidResource::new(
            format!("{at}.load_balancing_weight"),
            "must be at least 1",
        ));
    }
    // Built through the config model, so that fields the engine adds later take their defaults.
    let mut spec: EndpointSpec = serde_json::from_value(serde_json::json!({ "address": host }))
        .map_err(|err| InvalidResource::new(format!("{field}.address"), err.to_string()))?;
    spec.weight = weight;
    spec.labels = labels(endpoint.metadata.as_ref());
    spec.transport_socket_match = transport_labels(endpoint.metadata.as_ref());
    spec.locality_transport_socket_match = locality_labels.clone();
    spec.locality = locality.cloned();
    spec.health_check_port = health_check_port;
    Ok(Taken::Serving(spec))
}

/// The string values (and numbers and booleans, written out) of `filter_metadata["envoy.lb"]`.
fn labels(metadata: Option<&Metadata>) -> BTreeMap<String, String> {
    values(metadata, LB_METADATA, |kind| match kind {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::NumberValue(n) => Some(n.to_string()),
        Kind::BoolValue(b) => Some(b.to_string()),
        _ => None,
    })
}

/// The string values of `filter_metadata["envoy.transport_socket_match"]`: a value of another
/// type never equals one of a `transport_socket_matches` entry (strings only), as in Envoy,
/// which compares them typed.
fn transport_labels(metadata: Option<&Metadata>) -> BTreeMap<String, String> {
    values(
        metadata,
        TRANSPORT_SOCKET_MATCH_METADATA,
        |kind| match kind {
            Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        },
    )
}

/// The values of `filter_metadata[namespace]` that `text` writes as strings.
fn values(
    metadata: Option<&Metadata>,
    namespace: &str,
    text: impl Fn(&Kind) -> Option<String>,
) -> BTreeMap<String, String> {
    let Some(fields) = metadata.and_then(|m| m.filter_metadata.get(namespace)) else {
        return BTreeMap::new();
    };
    fields
        .fields
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), text(value.kind.as_ref()?)?)))
        .collect()
}
