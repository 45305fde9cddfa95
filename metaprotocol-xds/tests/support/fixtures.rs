//! Resources shaped as a control plane sends them: clusters and endpoints as istiod sends them
//! for Aeraki's services (`outbound|port|subset|host`, EDS over ADS), and MetaProtocol routes in
//! the encoding of Aeraki's MetaRDS server (an Envoy `RouteConfiguration` whose one virtual host,
//! `dummy` for domains `*`, holds routes with a `prefix: "/"` match and `headers` matchers), as
//! Aeraki derives them from its own test fixtures (`test/e2e/metaprotocol/testdata`): a
//! `MetaRouter` matching the `method` attribute exactly, a traffic split, a mirror at 50 %,
//! a request mutation, and a `DestinationRule`'s consistent hash on `method`.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster};
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource,
    EnvoyInternalAddress, GrpcService, HeaderValue, HeaderValueOption, Metadata,
    RuntimeFractionalPercent, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    Header, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CertificateProviderInstance, CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, TlsParameters,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, UInt32Value, Value, value::Kind};

/// The service of Aeraki's Dubbo fixtures, and its port.
pub const HOST: &str = "org.apache.dubbo.samples.basic.api.demoservice";
pub const PORT: u16 = 20880;

/// The MetaRDS route config name Aeraki gives the service's port (`<host>_<port>`).
pub fn route_config_name() -> String {
    format!("{HOST}_{PORT}")
}

/// Istio's outbound cluster name of a subset of the service.
pub fn cluster_name(subset: &str) -> String {
    format!("outbound|{PORT}|{subset}|{HOST}")
}

/// An EDS cluster over ADS, as istiod sends one (its circuit breakers at istiod's defaults).
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..ConfigSource::default()
            }),
            service_name: name.to_owned(),
        }),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: Some(UInt32Value { value: u32::MAX }),
                max_pending_requests: Some(UInt32Value { value: u32::MAX }),
                max_requests: Some(UInt32Value { value: u32::MAX }),
                max_retries: Some(UInt32Value { value: u32::MAX }),
                track_remaining: true,
                ..Thresholds::default()
            }],
            ..CircuitBreakers::default()
        }),
        ..Cluster::default()
    }
}

/// The endpoints of cluster `name`: `addresses`, each of weight 1.
pub fn assignment(name: &str, addresses: &[SocketAddr]) -> ClusterLoadAssignment {
    let lb_endpoints = addresses
        .iter()
        .map(|address| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: address.ip().to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(address.port()))),
                        ..SocketAddress::default()
                    })),
                }),
                ..Endpoint::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..LbEndpoint::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// A MetaRDS route config of `routes`, as Aeraki wraps them.
pub fn meta_route_config(routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: route_config_name(),
        virtual_hosts: vec![VirtualHost {
            name: "dummy".to_owned(),
            domains: vec!["*".to_owned()],
            routes,
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

/// A MetaRDS route: Aeraki's `prefix: "/"` match plus `headers` matching attributes exactly.
pub fn meta_route(name: &str, attributes: &[(&str, &str)], action: RouteAction) -> Route {
    #[allow(deprecated, reason = "Aeraki sends exact_match")]
    let headers = attributes
        .iter()
        .map(|(key, value)| HeaderMatcher {
            name: (*key).to_owned(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch((*value).to_owned())),
            ..HeaderMatcher::default()
        })
        .collect();
    Route {
        name: name.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
            headers,
            ..RouteMatch::default()
        }),
        action: Some(Action::Route(action)),
        ..Route::default()
    }
}

/// Aeraki's action for one destination.
pub fn to_cluster(cluster: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
        ..RouteAction::default()
    }
}

/// Aeraki's action for a traffic split: weighted clusters with their total.
#[allow(deprecated, reason = "Aeraki sends the total weight")]
pub fn split(sides: &[(&str, u32)]) -> RouteAction {
    let total_weight = Some(UInt32Value {
        value: sides.iter().map(|(_, w)| w).sum(),
    });
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            total_weight,
            clusters: sides
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: (*name).to_owned(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..ClusterWeight::default()
                })
                .collect(),
            ..WeightedCluster::default()
        })),
        ..RouteAction::default()
    }
}

/// Adds a mirror at `percent` (Aeraki's fraction of a million) to `action`.
pub fn mirrored(mut action: RouteAction, cluster: &str, percent: f64) -> RouteAction {
    action.request_mirror_policies = vec![RequestMirrorPolicy {
        cluster: cluster.to_owned(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: (percent * 10_000.0) as u32,
                denominator: DenominatorType::Million as i32,
            }),
            ..RuntimeFractionalPercent::default()
        }),
        ..RequestMirrorPolicy::default()
    }];
    action
}

/// Adds a `DestinationRule` consistent hash on header `name` to `action`.
pub fn hashed_on(mut action: RouteAction, name: &str) -> RouteAction {
    action.hash_policy = vec![HashPolicy {
        policy_specifier: Some(PolicySpecifier::Header(Header {
            header_name: name.to_owned(),
            ..Header::default()
        })),
        ..HashPolicy::default()
    }];
    action
}

/// Adds Aeraki's request mutation (`key: value` pairs, as `request_headers_to_add`) to `route`.
pub fn with_request_mutation(mut route: Route, pairs: &[(&str, &str)]) -> Route {
    route.request_headers_to_add = pairs
        .iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        })
        .collect();
    route
}

/// `message` packed as an `Any`, as a resource or a typed config travels.
pub fn packed<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A `tls` transport socket of `context`.
pub fn tls_socket(context: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(SocketConfig::TypedConfig(packed(context))),
    }
}

/// The `UpstreamTlsContext` Istio sends proxyless clients for `ISTIO_MUTUAL`: the client
/// certificate and the CA from certificate provider instance `default` (in the deprecated
/// spellings Istio uses), the endpoint's SPIFFE id `spiffe_id` to verify.
#[allow(deprecated, reason = "as Istio sends it")]
pub fn istio_upstream_tls(spiffe_id: &str) -> UpstreamTlsContext {
    let instance = |certificate_name: &str| CertificateProviderInstance {
        instance_name: "default".to_owned(),
        certificate_name: certificate_name.to_owned(),
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_certificate_provider_instance: Some(instance("default")),
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    validation_context_certificate_provider_instance: Some(instance("ROOTCA")),
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: vec![StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(spiffe_id.to_owned())),
                            ignore_case: false,
                        }],
                        ..CertificateValidationContext::default()
                    }),
                    ..CombinedCertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    }
}

/// The `UpstreamTlsContext` istiod gives a sidecar for `ISTIO_MUTUAL`: the workload certificate
/// from SDS secret `default` and the CA from SDS secret `ROOTCA` (both over pilot-agent's SDS
/// socket, cluster `sds-grpc`), the endpoint's SPIFFE id `spiffe_id` to verify, TLS 1.2 to 1.3,
/// the ALPN of Istio's metadata exchange, and `sni` as SNI.
pub fn istio_sidecar_tls(spiffe_id: &str, sni: &str) -> UpstreamTlsContext {
    istio_sds_tls("default", "ROOTCA", spiffe_id, sni)
}

/// The `UpstreamTlsContext` istiod gives a sidecar for a `DestinationRule`'s `tls.mode: MUTUAL`
/// with mounted files (`clientCertificate`, `privateKey`, `caCertificates`): SDS secrets named
/// after the files, `file-cert:<cert>~<key>` and `file-root:<ca>`, which pilot-agent serves
/// from them; `subject_alt_name` to verify and `sni` as SNI.
pub fn istio_file_mutual_tls(
    cert: &str,
    key: &str,
    ca: &str,
    subject_alt_name: &str,
    sni: &str,
) -> UpstreamTlsContext {
    istio_sds_tls(
        &format!("file-cert:{cert}~{key}"),
        &format!("file-root:{ca}"),
        subject_alt_name,
        sni,
    )
}

/// The `UpstreamTlsContext` istiod gives a sidecar with the client certificate of SDS secret
/// `certificate` and the CA of SDS secret `ca` (over pilot-agent's SDS socket, cluster
/// `sds-grpc`), `subject_alt_name` to verify, TLS 1.2 to 1.3, the ALPN of Istio's metadata
/// exchange, and `sni` as SNI.
#[allow(deprecated, reason = "as istiod sends it")]
fn istio_sds_tls(
    certificate: &str,
    ca: &str,
    subject_alt_name: &str,
    sni: &str,
) -> UpstreamTlsContext {
    let secret = |name: &str| SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: "sds-grpc".to_owned(),
                            ..EnvoyGrpc::default()
                        })),
                        ..GrpcService::default()
                    }],
                    ..ApiConfigSource::default()
                },
            )),
            initial_fetch_timeout: Some(Duration::default()),
            resource_api_version: ApiVersion::V3 as i32,
            ..ConfigSource::default()
        }),
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..TlsParameters::default()
            }),
            tls_certificate_sds_secret_configs: vec![secret(certificate)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_subject_alt_names: vec![StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(subject_alt_name.to_owned())),
                            ignore_case: false,
                        }],
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_sds_secret_config: Some(secret(ca)),
                    ..CombinedCertificateValidationContext::default()
                },
            )),
            alpn_protocols: vec!["istio-peer-exchange".to_owned(), "istio".to_owned()],
            ..CommonTlsContext::default()
        }),
        sni: sni.to_owned(),
        ..UpstreamTlsContext::default()
    }
}

/// The `transport_socket_matches` istiod gives a sidecar's outbound cluster under auto mTLS:
/// `tls` to endpoints labelled `tlsMode: istio` (pods with a sidecar), plaintext to the others.
pub fn istio_transport_socket_matches(tls: &UpstreamTlsContext) -> Vec<TransportSocketMatch> {
    vec![
        TransportSocketMatch {
            name: "tlsMode-istio".to_owned(),
            r#match: Some(labels(&[("tlsMode", "istio")])),
            transport_socket: Some(tls_socket(tls)),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".to_owned(),
            r#match: Some(Struct::default()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".to_owned(),
                config_type: Some(SocketConfig::TypedConfig(packed(&RawBuffer::default()))),
            }),
        },
    ]
}

/// The `transport_socket_matches` entry istiod puts first when it sends HBONE (Istio ambient's
/// tunnel; `PILOT_ENABLE_SENDING_HBONE`, and waypoints): endpoints labelled `tunnel: http` are
/// reached through Envoy's internal listener that makes the tunnel, by an `internal_upstream`
/// transport around plaintext.
pub fn istio_hbone_transport_socket_match() -> TransportSocketMatch {
    let raw_buffer = TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_owned(),
        config_type: Some(SocketConfig::TypedConfig(packed(&RawBuffer::default()))),
    };
    let internal = InternalUpstreamTransport {
        transport_socket: Some(raw_buffer),
        ..InternalUpstreamTransport::default()
    };
    TransportSocketMatch {
        name: "hbone".to_owned(),
        r#match: Some(labels(&[("tunnel", "http")])),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.internal_upstream".to_owned(),
            config_type: Some(SocketConfig::TypedConfig(packed(&internal))),
        }),
    }
}

/// An endpoint as istiod sends a pod it reaches through Istio's HBONE tunnel (an ambient pod,
/// to a proxy whose node metadata claims HBONE): an internal address naming Envoy's listener
/// that makes the tunnel (`connect_originate`) with the pod's address as its endpoint id, the
/// pod's address again in the original destination metadata, and the label `tunnel: http`.
pub fn istio_hbone_endpoint(pod: SocketAddr) -> LbEndpoint {
    let mut metadata = Metadata::default();
    metadata.filter_metadata.insert(
        "envoy.transport_socket_match".to_owned(),
        labels(&[("tunnel", "http")]),
    );
    metadata.filter_metadata.insert(
        "envoy.filters.listener.original_dst".to_owned(),
        labels(&[("local", &pod.to_string())]),
    );
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::EnvoyInternalAddress(EnvoyInternalAddress {
                    address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(
                        "connect_originate".to_owned(),
                    )),
                    endpoint_id: pod.to_string(),
                })),
            }),
            ..Endpoint::default()
        })),
        load_balancing_weight: Some(UInt32Value { value: 1 }),
        metadata: Some(metadata),
        ..LbEndpoint::default()
    }
}

/// `pairs` as a protobuf `Struct` of strings.
pub fn labels(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(name, value)| {
                let value = Value {
                    kind: Some(Kind::StringValue((*value).to_owned())),
                };
                ((*name).to_owned(), value)
            })
            .collect(),
    }
}

/// Labels an endpoint of `assignment`, the `index`th of its first locality, as istiod labels
/// a pod with a sidecar: `envoy.transport_socket_match` metadata `tlsMode: istio`.
pub fn with_istio_sidecar(
    mut assignment: ClusterLoadAssignment,
    index: usize,
) -> ClusterLoadAssignment {
    if let Some(endpoint) = assignment
        .endpoints
        .first_mut()
        .and_then(|locality| locality.lb_endpoints.get_mut(index))
    {
        let mut metadata = Metadata::default();
        metadata.filter_metadata.insert(
            "envoy.transport_socket_match".to_owned(),
            labels(&[("tlsMode", "istio")]),
        );
        endpoint.metadata = Some(metadata);
    }
    assignment
}
