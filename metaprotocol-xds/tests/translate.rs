//! Translation of resources as control planes send them: Aeraki's MetaRDS routes map onto the
//! engine's route model as Aeraki means them, clusters and endpoints as istiod sends them map
//! onto clusters, and whatever cannot be mapped is refused naming the field.

#[allow(dead_code, reason = "each test uses part of the support")]
mod support;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::health_check::custom_health_check::ConfigType as CustomConfigType;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    CustomHealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{
    HealthCheck, HealthStatus, Metadata, RequestMethod, RoutingPriority,
};
use envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryBackOff, RetryHostPredicate};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::thrift_proxy::v3::{
    ProtocolType, TransportType,
};
use envoy_types::pb::envoy::extensions::health_checkers::thrift::v3::Thrift as ThriftHealthCheck;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CertificateProviderInstance, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range, Percent};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, UInt32Value, UInt64Value, Value};
use metaprotocol_router::config::{
    CertificateProviderSpec, ClusterTlsSpec, HttpProbeSpec, LbPolicy as Policy, ProbeSpec,
    RouteConfigSpec, StatusRange, TransportSocketMatchSpec,
};
use metaprotocol_xds::translate::{self, InvalidResource};
use support::TestResult;
use support::fixtures::{
    HOST, assignment, cluster_name, eds_cluster, hashed_on, istio_file_mutual_tls,
    istio_hbone_transport_socket_match, istio_sidecar_tls, istio_transport_socket_matches,
    istio_upstream_tls, meta_route, meta_route_config, mirrored, packed, split, tls_socket,
    to_cluster, with_istio_sidecar, with_request_mutation,
};

/// No certificate provider instances or SDS secrets: clusters without TLS, or with TLS from
/// files.
const NO_PROVIDERS: translate::CertificateFiles = translate::CertificateFiles::NONE;

/// The route config Aeraki's MetaRDS server derives from its fixtures: `method` matched exactly
/// (`metarouter-attribute-exact`), a 20/80 split (`metarouter-traffic-splitting`), a mirror of
/// half the calls (`traffic-mirroring`), a request mutation (`metarouter-header-mutation`), and
/// the `DestinationRule`'s consistent hash on `method` (`consistent-hash-lb`).
fn aeraki_routes() -> envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
    let (v1, v2) = (cluster_name("v1"), cluster_name("v2"));
    #[allow(deprecated, reason = "Aeraki sends the deprecated matchers")]
    let regex = HeaderMatchSpecifier::SafeRegexMatch(RegexMatcher {
        regex: "sayHello[0-9]+".to_owned(),
        ..RegexMatcher::default()
    });
    let mut by_regex = meta_route("regex", &[("method", "x")], to_cluster(&v1));
    if let Some(matcher) = by_regex.r#match.as_mut() {
        matcher.headers[0].header_match_specifier = Some(regex);
    }
    meta_route_config(vec![
        meta_route(
            "v1",
            &[("method", "sayHello01")],
            hashed_on(to_cluster(&v1), "method"),
        ),
        by_regex,
        meta_route("traffic-spilt", &[], split(&[(&v1, 20), (&v2, 80)])),
        meta_route(
            "traffic-mirroring",
            &[],
            mirrored(to_cluster(&v1), &v2, 50.0),
        ),
        with_request_mutation(
            meta_route("header-mutation", &[], to_cluster(&v1)),
            &[("foo", "bar"), ("foo1", "bar1")],
        ),
    ])
}

#[test]
fn aeraki_metards_routes_map_onto_routes_as_aeraki_means_them() -> TestResult {
    let translated = translate::route_config(&aeraki_routes())?;
    let expected = RouteConfigSpec::from_yaml(&format!(
        r#"
name: {HOST}_20880
routes:
  - name: v1
    match: {{ metadata: [ {{ key: method, exact: sayHello01 }} ] }}
    route: {{ cluster: "outbound|20880|v1|{HOST}" }}
    hash_policy: [method]
  - name: regex
    match: {{ metadata: [ {{ key: method, regex: "sayHello[0-9]+" }} ] }}
    route: {{ cluster: "outbound|20880|v1|{HOST}" }}
  - name: traffic-spilt
    route:
      weighted_clusters:
        - {{ cluster: "outbound|20880|v1|{HOST}", weight: 20 }}
        - {{ cluster: "outbound|20880|v2|{HOST}", weight: 80 }}
  - name: traffic-mirroring
    route: {{ cluster: "outbound|20880|v1|{HOST}" }}
    mirror: {{ cluster: "outbound|20880|v2|{HOST}", percentage: 50 }}
  - name: header-mutation
    route: {{ cluster: "outbound|20880|v1|{HOST}" }}
    request_mutation: {{ set: {{ foo: bar, foo1: bar1 }} }}
"#
    ))?;
    assert_eq!(translated, expected);
    Ok(())
}

/// The field a refused route config's error names.
fn refused_field(
    change: impl FnOnce(&mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration),
) -> Option<String> {
    let mut config = aeraki_routes();
    change(&mut config);
    translate::route_config(&config).err().map(|e| e.field)
}

#[test]
fn routes_that_cannot_be_mapped_are_refused_naming_the_field() {
    let route = |config: &mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration| {
        config.virtual_hosts[0].routes.remove(0)
    };
    let cases: Vec<(Option<String>, &str)> = vec![
        (
            refused_field(|c| {
                if let Some(m) = c.virtual_hosts[0].routes[0].r#match.as_mut() {
                    m.path_specifier = Some(PathSpecifier::Path("/x".to_owned()));
                }
            }),
            "virtual_hosts[0].routes[0].match.path_specifier",
        ),
        (
            refused_field(|c| {
                let first = route(c);
                c.virtual_hosts.push(VirtualHost {
                    routes: vec![first],
                    ..VirtualHost::default()
                });
            }),
            "virtual_hosts",
        ),
        (
            refused_field(|c| {
                let mut twice = c.virtual_hosts[0].routes[3].clone();
                if let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(a)) =
                    twice.action.as_mut()
                {
                    a.request_mirror_policies
                        .push(a.request_mirror_policies[0].clone());
                }
                c.virtual_hosts[0].routes[3] = twice;
            }),
            "virtual_hosts[0].routes[3].route.request_mirror_policies",
        ),
        (
            refused_field(|c| {
                c.virtual_hosts[0].routes[1].request_headers_to_remove = vec!["x".to_owned()];
                c.virtual_hosts[0].routes[1].decorator = Some(Default::default());
            }),
            "virtual_hosts[0].routes[1].decorator",
        ),
        (
            refused_field(|c| {
                if let Some(m) = c.virtual_hosts[0].routes[2].r#match.as_mut() {
                    m.headers.push(Default::default());
                    m.headers[0].name = "method".to_owned();
                    m.headers[0].header_match_specifier =
                        Some(HeaderMatchSpecifier::PresentMatch(true));
                    m.headers[0].treat_missing_header_as_empty = true;
                }
            }),
            "virtual_hosts[0].routes[2].match.headers[0].treat_missing_header_as_empty",
        ),
    ];
    for (field, expected) in cases {
        assert_eq!(field.as_deref(), Some(expected));
    }
}

/// Istio turns panic mode off (`healthy_panic_threshold` 0%) for a cluster with outlier
/// detection, unless a destination rule sets `minHealthPercent`: the cluster keeps that, where
/// it used to take the engine's default of 50% and spread calls over ejected endpoints. An
/// ejection time longer than Envoy's default cap raises the cap, as in Envoy.
#[test]
fn panic_threshold_and_ejection_cap_map_as_envoy_reads_them() -> TestResult {
    let mut cluster = eds_cluster(&cluster_name("v1"));
    cluster.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..CommonLbConfig::default()
    });
    cluster.outlier_detection = Some(OutlierDetection {
        base_ejection_time: Some(Duration {
            seconds: 600,
            nanos: 0,
        }),
        ..OutlierDetection::default()
    });
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert!(spec.healthy_panic_threshold.abs() < f64::EPSILON);
    let outlier = spec.outlier_detection.ok_or("no outlier detection")?;
    assert_eq!(
        outlier.max_ejection_time,
        std::time::Duration::from_secs(600)
    );

    cluster.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 30.7 }),
        ..CommonLbConfig::default()
    });
    cluster.outlier_detection = Some(OutlierDetection {
        max_ejection_time: Some(Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..OutlierDetection::default()
    });
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert!(
        (spec.healthy_panic_threshold - 30.0).abs() < f64::EPSILON,
        "truncated"
    );
    let outlier = spec.outlier_detection.ok_or("no outlier detection")?;
    assert_eq!(
        outlier.max_ejection_time,
        std::time::Duration::from_secs(60)
    );

    cluster.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 101.0 }),
        ..CommonLbConfig::default()
    });
    let refused = translate::cluster(&cluster, &NO_PROVIDERS)
        .err()
        .map(|e| e.field);
    assert_eq!(
        refused.as_deref(),
        Some("common_lb_config.healthy_panic_threshold")
    );

    // The engine counts endpoints awaiting their first health check towards the panic
    // threshold, as Envoy does by default; leaving them out is refused, not dropped.
    cluster.common_lb_config = Some(CommonLbConfig {
        ignore_new_hosts_until_first_hc: true,
        ..CommonLbConfig::default()
    });
    let refused = translate::cluster(&cluster, &NO_PROVIDERS)
        .err()
        .map(|e| e.field);
    assert_eq!(
        refused.as_deref(),
        Some("common_lb_config.ignore_new_hosts_until_first_hc")
    );
    Ok(())
}

/// An EDS cluster waits for its endpoints as long as its `eds_config` says: Envoy's 15 s unset,
/// for ever at 0 (as istiod sends it); a negative time is refused, naming the field.
#[test]
fn an_eds_clusters_initial_fetch_timeout_is_how_long_it_waits_for_endpoints() -> TestResult {
    let waiting = |timeout: Option<Duration>| {
        let mut cluster = eds_cluster("c");
        if let Some(source) = cluster
            .eds_cluster_config
            .as_mut()
            .and_then(|eds| eds.eds_config.as_mut())
        {
            source.initial_fetch_timeout = timeout;
        }
        translate::cluster(&cluster, &NO_PROVIDERS)
    };
    let seconds = |seconds| Some(Duration { seconds, nanos: 0 });
    let secs = std::time::Duration::from_secs;
    assert_eq!(waiting(None)?.endpoints_timeout, Some(secs(15)));
    assert_eq!(waiting(seconds(3))?.endpoints_timeout, Some(secs(3)));
    assert_eq!(waiting(seconds(0))?.endpoints_timeout, None);
    assert_eq!(
        waiting(seconds(-1)).err().map(|e| e.field).as_deref(),
        Some("eds_cluster_config.eds_config.initial_fetch_timeout")
    );
    Ok(())
}

#[test]
fn clusters_and_endpoints_map_as_istiod_sends_them() -> TestResult {
    let name = cluster_name("v1");
    let mut cluster = eds_cluster(&name);
    cluster.lb_policy = LbPolicy::LeastRequest as i32;
    cluster.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 3 }),
        interval: Some(Duration {
            seconds: 2,
            nanos: 0,
        }),
        base_ejection_time: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        max_ejection_percent: Some(UInt32Value { value: 20 }),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        ..OutlierDetection::default()
    });
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_requests: Some(UInt32Value { value: 100 }),
            track_remaining: true,
            ..Thresholds::default()
        }],
        ..CircuitBreakers::default()
    });
    let translated = translate::cluster(&cluster, &NO_PROVIDERS)?;
    assert_eq!(translated.eds_service.as_deref(), Some(name.as_str()));
    assert_eq!(translated.spec.name, name);
    assert_eq!(translated.spec.lb_policy, Policy::LeastRequest);
    assert_eq!(
        translated.spec.connect_timeout,
        std::time::Duration::from_secs(1)
    );
    let breakers = translated
        .spec
        .circuit_breakers
        .clone()
        .ok_or("no circuit breakers")?;
    assert_eq!(breakers.max_requests, 100);
    let outlier = translated
        .spec
        .outlier_detection
        .clone()
        .ok_or("no outlier detection")?;
    assert_eq!(outlier.consecutive_errors, 3);
    assert_eq!(
        outlier.base_ejection_time,
        std::time::Duration::from_secs(10)
    );
    assert!((outlier.max_ejection_percent - 20.0).abs() < f64::EPSILON);
    assert_eq!(
        outlier.max_ejection_time,
        std::time::Duration::from_secs(300),
        "Envoy's default"
    );
    assert!(
        (translated.spec.healthy_panic_threshold - 50.0).abs() < f64::EPSILON,
        "Envoy's default"
    );

    // Endpoints: weights, localities and `envoy.lb` labels; unhealthy ones left out.
    let addresses = [
        "127.0.0.1:20881".parse()?,
        "[::1]:20882".parse()?,
        "127.0.0.1:20883".parse()?,
    ];
    let mut endpoints = assignment(&name, &addresses);
    let group = &mut endpoints.endpoints[0];
    group.locality = Some(envoy_types::pb::envoy::config::core::v3::Locality {
        region: "r1".to_owned(),
        zone: "z1".to_owned(),
        ..Default::default()
    });
    group.lb_endpoints[0].load_balancing_weight = Some(UInt32Value { value: 3 });
    group.lb_endpoints[0].metadata = Some(Metadata {
        filter_metadata: [(
            "envoy.lb".to_owned(),
            Struct {
                fields: [(
                    "version".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue("v1".to_owned())),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Metadata::default()
    });
    group.lb_endpoints[2].health_status = HealthStatus::Unhealthy as i32;
    // Where Envoy's active health checks of the second endpoint go.
    if let Some(HostIdentifier::Endpoint(host)) = &mut group.lb_endpoints[1].host_identifier {
        host.health_check_config = Some(HealthCheckConfig {
            port_value: 8081,
            ..HealthCheckConfig::default()
        });
    }
    let spec = translated.with_endpoints(&translate::endpoints(&endpoints)?);
    let ports: Vec<Option<u16>> = spec.endpoints.iter().map(|e| e.health_check_port).collect();
    assert_eq!(ports, [None, Some(8081)]);
    // The rest of the health check settings would change how the endpoint is checked.
    if let Some(HostIdentifier::Endpoint(host)) =
        &mut endpoints.endpoints[0].lb_endpoints[1].host_identifier
    {
        host.health_check_config = Some(HealthCheckConfig {
            hostname: "qos.local".to_owned(),
            ..HealthCheckConfig::default()
        });
    }
    let refused = translate::endpoints(&endpoints).err().map(|e| e.field);
    assert_eq!(
        refused.as_deref(),
        Some("endpoints[0].lb_endpoints[1].endpoint.health_check_config.hostname")
    );
    let listed: Vec<(String, u32)> = spec
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    assert_eq!(
        listed,
        [
            ("127.0.0.1:20881".to_owned(), 3),
            ("[::1]:20882".to_owned(), 1)
        ]
    );
    assert_eq!(
        spec.endpoints[0].labels,
        BTreeMap::from([("version".to_owned(), "v1".to_owned())])
    );
    assert_eq!(
        spec.endpoints[1].locality.as_ref().map(|l| l.zone.as_str()),
        Some("z1")
    );

    // A static cluster takes its endpoints inline.
    let mut fixed = eds_cluster("static");
    fixed.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    fixed.eds_cluster_config = None;
    fixed.load_assignment = Some(assignment("static", &addresses[..1]));
    let fixed = translate::cluster(&fixed, &NO_PROVIDERS)?;
    assert_eq!(fixed.eds_service, None);
    assert_eq!(fixed.spec.endpoints.len(), 1);
    Ok(())
}

#[test]
fn clusters_that_cannot_be_mapped_are_refused_naming_the_field() {
    let refused = |change: &dyn Fn(&mut envoy_types::pb::envoy::config::cluster::v3::Cluster)| {
        let mut cluster = eds_cluster(&cluster_name("v1"));
        change(&mut cluster);
        translate::cluster(&cluster, &NO_PROVIDERS)
            .err()
            .map(|e: InvalidResource| e.field)
    };
    assert_eq!(
        refused(&|c| c.lb_policy = LbPolicy::ClusterProvided as i32).as_deref(),
        Some("lb_policy")
    );
    assert_eq!(
        refused(&|c| c.transport_socket_matches = vec![Default::default()]).as_deref(),
        Some("transport_socket_matches[0].transport_socket")
    );
    assert_eq!(
        refused(
            &|c| c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32
            ))
        )
        .as_deref(),
        Some("type")
    );
    assert_eq!(
        refused(&|c| {
            c.circuit_breakers = Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    priority: RoutingPriority::High as i32,
                    ..Thresholds::default()
                }],
                ..CircuitBreakers::default()
            });
        })
        .as_deref(),
        Some("circuit_breakers.thresholds[0].priority")
    );
}

/// istiod sends a locality's endpoints at a priority for locality failover: each endpoint
/// keeps its locality's priority as its failover tier.
#[test]
fn eds_priorities_are_the_endpoints_failover_tiers() -> TestResult {
    let mut endpoints = assignment("x", &[([127, 0, 0, 1], 1).into()]);
    let mut failover = assignment("x", &[([127, 0, 0, 2], 1).into()]).endpoints;
    failover[0].priority = 1;
    endpoints.endpoints.append(&mut failover);
    let tiers: Vec<(String, u32)> = translate::endpoints(&endpoints)?
        .iter()
        .map(|e| (e.address.to_string(), e.priority))
        .collect();
    assert_eq!(
        tiers,
        [("127.0.0.1:1".to_owned(), 0), ("127.0.0.2:1".to_owned(), 1)]
    );
    Ok(())
}

/// A retry policy as Envoy's `RetryPolicy` says it.
fn envoy_retry_policy(retry_on: &str, num_retries: Option<u32>) -> RetryPolicy {
    RetryPolicy {
        retry_on: retry_on.to_owned(),
        num_retries: num_retries.map(|value| UInt32Value { value }),
        ..RetryPolicy::default()
    }
}

/// Retry policies map onto the route's: the conditions as what they mean for an RPC, Envoy's
/// defaults where a field is unset, Istio's `previous_hosts` predicate taken (a retry goes
/// elsewhere already), and a virtual host's policy for the routes without one of their own.
#[test]
fn retry_policies_map_as_envoy_means_them() -> TestResult {
    let mut config = aeraki_routes();
    let host = &mut config.virtual_hosts[0];
    host.retry_policy = Some(envoy_retry_policy(
        "reset-before-request, resource-exhausted,connect-failure",
        Some(3),
    ));
    let mut own = envoy_retry_policy("5xx,connect-failure,unavailable", None);
    own.per_try_timeout = Some(Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    own.retry_back_off = Some(RetryBackOff {
        base_interval: Some(Duration {
            seconds: 0,
            nanos: 10_000_000,
        }),
        max_interval: None,
    });
    own.retry_host_predicate = vec![RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
        config_type: Some(ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".to_owned(),
            value: Vec::new(),
        })),
    }];
    own.host_selection_retry_max_attempts = 5;
    if let Some(Action::Route(action)) = host.routes[0].action.as_mut() {
        action.retry_policy = Some(own);
    }
    let translated = translate::route_config(&config)?;
    let expected = RouteConfigSpec::from_yaml(
        r"
name: x
routes:
  - route: { cluster: x }
    retry_policy:
      num_retries: 1
      retry_on: [connect_failure, reset, unavailable, timeout, retryable_status]
      per_try_timeout: 200ms
      retry_back_off: { base_interval: 10ms, max_interval: 100ms }
  - route: { cluster: x }
    retry_policy:
      num_retries: 3
      retry_on: [reset, retryable_status, connect_failure]
",
    )?;
    let retries: Vec<_> = translated
        .routes
        .iter()
        .map(|route| route.retry_policy.clone())
        .collect();
    assert_eq!(retries[0], expected.routes[0].retry_policy, "its own");
    for (i, retry) in retries.iter().enumerate().skip(1) {
        assert_eq!(
            *retry, expected.routes[1].retry_policy,
            "route {i}: the host's"
        );
    }

    // An empty `retry_on` retries nothing, as in Envoy.
    let mut config = aeraki_routes();
    config.virtual_hosts[0].retry_policy = Some(envoy_retry_policy("", Some(2)));
    let translated = translate::route_config(&config)?;
    let policy = translated.routes[0]
        .retry_policy
        .as_ref()
        .ok_or("no policy")?;
    assert!(policy.retry_on.is_empty());
    Ok(())
}

#[test]
fn retry_policies_that_cannot_be_mapped_are_refused_naming_the_field() {
    let at = "virtual_hosts[0].routes[0].route.retry_policy";
    let refused = |change: &dyn Fn(&mut RetryPolicy)| {
        refused_field(|c| {
            let mut policy = envoy_retry_policy("connect-failure", Some(2));
            change(&mut policy);
            if let Some(Action::Route(action)) = c.virtual_hosts[0].routes[0].action.as_mut() {
                action.retry_policy = Some(policy);
            }
        })
    };
    let cases: Vec<(Option<String>, String)> = vec![
        (
            refused(&|p| p.retry_on = "connect-failure,retriable-4xx".to_owned()),
            format!("{at}.retry_on"),
        ),
        (
            refused(&|p| p.num_retries = Some(UInt32Value { value: 11 })),
            format!("{at}.num_retries"),
        ),
        (
            refused(&|p| p.retriable_status_codes = vec![503]),
            format!("{at}.retriable_status_codes"),
        ),
        (
            refused(&|p| {
                p.retry_host_predicate = vec![RetryHostPredicate {
                    name: "envoy.retry_host_predicates.omit_canary_hosts".to_owned(),
                    config_type: None,
                }];
            }),
            format!("{at}.retry_host_predicate[0]"),
        ),
        (
            refused(&|p| {
                p.retry_back_off = Some(RetryBackOff {
                    base_interval: None,
                    max_interval: None,
                });
            }),
            format!("{at}.retry_back_off.base_interval"),
        ),
        (
            refused_field(|c| {
                c.virtual_hosts[0].retry_policy = Some(envoy_retry_policy("cancelled", Some(1)));
            }),
            "virtual_hosts[0].retry_policy.retry_on".to_owned(),
        ),
    ];
    for (field, expected) in cases {
        assert_eq!(field.as_deref(), Some(expected.as_str()));
    }
}

/// Retries in flight are bounded as Envoy bounds them: by the thresholds' budget when they set
/// one (and then not by `max_retries`), else by `max_retries` alone. The engine takes what is
/// translated.
#[test]
fn retry_budgets_bound_retries_as_in_envoy() -> TestResult {
    let thresholds = |budget: Option<RetryBudget>| CircuitBreakers {
        thresholds: vec![Thresholds {
            max_retries: Some(UInt32Value { value: u32::MAX }),
            retry_budget: budget,
            ..Thresholds::default()
        }],
        ..CircuitBreakers::default()
    };
    let mut cluster = eds_cluster(&cluster_name("v1"));
    // As Istio sends it: every threshold at 2^32 - 1, no budget.
    cluster.circuit_breakers = Some(thresholds(None));
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert_eq!(spec.retry_budget.min_retry_concurrency, u32::MAX);
    assert!((spec.retry_budget.budget_percent - 100.0).abs() < f64::EPSILON);
    engine_takes(&spec)?;

    cluster.circuit_breakers = Some(thresholds(Some(RetryBudget {
        budget_percent: Some(Percent { value: 25.0 }),
        min_retry_concurrency: Some(UInt32Value { value: 5 }),
        budget_interval: None,
    })));
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert_eq!(spec.retry_budget.min_retry_concurrency, 5);
    assert!((spec.retry_budget.budget_percent - 25.0).abs() < f64::EPSILON);
    let breakers = spec.circuit_breakers.clone().ok_or("no circuit breakers")?;
    assert_eq!(breakers.max_retries, u32::MAX, "the budget governs");
    engine_takes(&spec)?;

    // Envoy's defaults: 20%, 3.
    cluster.circuit_breakers = Some(thresholds(Some(RetryBudget::default())));
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert_eq!(spec.retry_budget.min_retry_concurrency, 3);
    assert!((spec.retry_budget.budget_percent - 20.0).abs() < f64::EPSILON);

    cluster.circuit_breakers = Some(thresholds(Some(RetryBudget {
        budget_interval: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..RetryBudget::default()
    })));
    let refused = translate::cluster(&cluster, &NO_PROVIDERS)
        .err()
        .map(|e| e.field);
    assert_eq!(
        refused.as_deref(),
        Some("circuit_breakers.thresholds[0].retry_budget.budget_interval")
    );
    Ok(())
}

/// The engine's own checks pass a translated cluster (with a route to it from a Dubbo
/// listener).
fn engine_takes(cluster: &metaprotocol_router::config::ClusterSpec) -> TestResult {
    engine_takes_behind("dubbo", cluster)
}

/// The engine's own checks pass a translated cluster, with a route to it from a listener of
/// `protocol`.
fn engine_takes_behind(
    protocol: &str,
    cluster: &metaprotocol_router::config::ClusterSpec,
) -> TestResult {
    let config = serde_json::json!({
        "listeners": [{ "name": "in", "address": "127.0.0.1:0", "protocol": protocol, "route_config": "r" }],
        "route_configs": [{ "name": "r", "routes": [{ "route": { "cluster": cluster.name } }] }],
        "clusters": [cluster],
    });
    metaprotocol_router::config::Config::from_yaml(&config.to_string())?;
    Ok(())
}

/// A health check as Envoy's `HealthCheck` says it: every 5 s, 1 s to answer, out after 3
/// failures and back after 2 passes, with `checker`.
fn envoy_health_check(checker: HealthChecker) -> HealthCheck {
    let seconds = |seconds| Duration { seconds, nanos: 0 };
    HealthCheck {
        interval: Some(seconds(5)),
        timeout: Some(seconds(1)),
        unhealthy_threshold: Some(UInt32Value { value: 3 }),
        healthy_threshold: Some(UInt32Value { value: 2 }),
        health_checker: Some(checker),
        ..HealthCheck::default()
    }
}

/// Envoy's Thrift health checker calling `method` in `transport` and `protocol`.
fn thrift_checker(method: &str, transport: TransportType, protocol: ProtocolType) -> HealthChecker {
    let thrift = ThriftHealthCheck {
        method_name: method.to_owned(),
        transport: transport as i32,
        protocol: protocol as i32,
    };
    HealthChecker::CustomHealthCheck(CustomHealthCheck {
        name: "envoy.health_checkers.thrift".to_owned(),
        config_type: Some(CustomConfigType::TypedConfig(packed(&thrift))),
    })
}

/// An HTTP checker asking `path`, with `change` made to it.
fn http_checker(path: &str, change: impl FnOnce(&mut HttpHealthCheck)) -> HealthChecker {
    let mut http = HttpHealthCheck {
        path: path.to_owned(),
        ..HttpHealthCheck::default()
    };
    change(&mut http);
    HealthChecker::HttpHealthCheck(http)
}

/// A connect-only TCP checker.
fn tcp_checker() -> HealthChecker {
    HealthChecker::TcpHealthCheck(TcpHealthCheck::default())
}

#[test]
fn health_checks_map_as_envoy_means_them() -> TestResult {
    let mut cluster = eds_cluster(&cluster_name("v1"));
    let mut check = envoy_health_check(tcp_checker());
    // Envoy adds up to 500 ms and up to 10% of each wait, whatever its interval.
    check.interval_jitter = Some(Duration {
        seconds: 0,
        nanos: 500_000_000,
    });
    check.interval_jitter_percent = 10;
    let seconds = |seconds: i64| Some(Duration { seconds, nanos: 0 });
    check.unhealthy_interval = seconds(30);
    check.unhealthy_edge_interval = seconds(1);
    check.healthy_edge_interval = seconds(2);
    check.no_traffic_interval = seconds(90);
    check.no_traffic_healthy_interval = seconds(300);
    check.initial_jitter = seconds(1);
    // Logging, accepted and ignored.
    check.always_log_health_check_failures = true;
    cluster.health_checks = vec![check];
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    let health = spec.health_check.clone().ok_or("no health check")?;
    assert_eq!(health.interval, std::time::Duration::from_secs(5));
    assert_eq!(health.timeout, std::time::Duration::from_secs(1));
    assert_eq!(
        (health.unhealthy_threshold, health.healthy_threshold),
        (3, 2)
    );
    assert!((health.interval_jitter_percent - 10.0).abs() < 1e-9);
    assert_eq!(
        (health.interval_jitter, health.initial_jitter),
        (
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(1)
        )
    );
    let secs = |s: u64| Some(std::time::Duration::from_secs(s));
    assert_eq!(
        [
            health.unhealthy_interval,
            health.unhealthy_edge_interval,
            health.healthy_edge_interval,
            health.no_traffic_interval,
            health.no_traffic_healthy_interval,
        ],
        [secs(30), secs(1), secs(2), secs(90), secs(300)]
    );
    assert_eq!(health.probe, ProbeSpec::Tcp);
    assert!(!health.require_success);
    engine_takes(&spec)?;

    // A jitter longer than the interval (5 s), which Envoy takes, is taken as it is.
    let mut long = envoy_health_check(tcp_checker());
    long.interval_jitter = seconds(30);
    cluster.health_checks = vec![long];
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert_eq!(
        spec.health_check.as_ref().map(|c| c.interval_jitter),
        Some(std::time::Duration::from_secs(30))
    );
    engine_takes(&spec)?;

    // Unset, Envoy checks a cluster without traffic once a minute, and the others fall back on
    // the interval.
    cluster.health_checks = vec![envoy_health_check(tcp_checker())];
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    let health = spec.health_check.clone().ok_or("no health check")?;
    assert_eq!(health.no_traffic_interval, secs(60));
    assert_eq!(
        [
            health.unhealthy_interval,
            health.unhealthy_edge_interval,
            health.healthy_edge_interval,
            health.no_traffic_healthy_interval,
        ],
        [None; 4]
    );

    // Envoy's threshold of 0 is reached by the first result, as the engine's 1 is.
    let mut check = envoy_health_check(tcp_checker());
    check.healthy_threshold = Some(UInt32Value { value: 0 });
    cluster.health_checks = vec![check];
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    assert_eq!(spec.health_check.map(|h| h.healthy_threshold), Some(1));

    for transport in [TransportType::AutoTransport, TransportType::Framed] {
        cluster.health_checks = vec![envoy_health_check(thrift_checker(
            "ping",
            transport,
            ProtocolType::Binary,
        ))];
        let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
        assert_eq!(
            spec.health_check
                .as_ref()
                .map(|h| (&h.probe, h.require_success)),
            Some((&ProbeSpec::Method("ping".to_owned()), true)),
            "Envoy's Thrift checker fails on an exception"
        );
        engine_takes_behind("thrift", &spec)?;
    }

    // An HTTP check (a Spring Boot actuator beside a Dubbo service): Envoy's defaults are the
    // cluster's name as `Host` and 200 alone.
    cluster.health_checks = vec![envoy_health_check(http_checker("/actuator/health", |_| {}))];
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    let only_200 = vec![StatusRange {
        start: 200,
        end: 201,
    }];
    assert_eq!(
        spec.health_check.as_ref().map(|h| &h.probe),
        Some(&ProbeSpec::Http(HttpProbeSpec {
            path: "/actuator/health".to_owned(),
            port: None,
            host: None,
            expected_statuses: only_200,
        }))
    );
    engine_takes_behind("dubbo", &spec)?;
    cluster.health_checks = vec![envoy_health_check(http_checker("/health", |http| {
        http.host = "qos.local".to_owned();
        http.method = RequestMethod::Get as i32;
        http.response_buffer_size = Some(UInt64Value { value: 16 });
        http.expected_statuses = vec![Int64Range {
            start: 200,
            end: 300,
        }];
    }))];
    let spec = translate::cluster(&cluster, &NO_PROVIDERS)?.spec;
    let Some(ProbeSpec::Http(http)) = spec.health_check.as_ref().map(|h| &h.probe) else {
        return Err("not an http probe".into());
    };
    assert_eq!(http.host.as_deref(), Some("qos.local"));
    assert_eq!(
        http.expected_statuses,
        [StatusRange {
            start: 200,
            end: 300
        }]
    );
    engine_takes(&spec)?;
    Ok(())
}

#[test]
fn health_checks_that_cannot_be_mapped_are_refused_naming_the_field() {
    let refused = |checks: Vec<HealthCheck>| {
        let mut cluster = eds_cluster(&cluster_name("v1"));
        cluster.health_checks = checks;
        translate::cluster(&cluster, &NO_PROVIDERS)
            .err()
            .map(|e: InvalidResource| e.field)
    };
    let tcp = || envoy_health_check(tcp_checker());
    let changed = |change: &dyn Fn(&mut HealthCheck)| {
        let mut check = tcp();
        change(&mut check);
        refused(vec![check])
    };
    let cases: Vec<(Option<String>, &str)> = vec![
        (refused(vec![tcp(), tcp()]), "health_checks[1]"),
        (changed(&|c| c.interval = None), "health_checks[0].interval"),
        (
            changed(&|c| c.timeout = Some(Duration::default())),
            "health_checks[0].timeout",
        ),
        (
            changed(&|c| c.unhealthy_threshold = None),
            "health_checks[0].unhealthy_threshold",
        ),
        (
            changed(&|c| c.alt_port = Some(UInt32Value { value: 8080 })),
            "health_checks[0].alt_port",
        ),
        (
            changed(&|c| c.health_checker = None),
            "health_checks[0].health_checker",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(HealthChecker::HttpHealthCheck(Default::default()));
            }),
            "health_checks[0].http_health_check.path",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(http_checker("/", |h| h.send = Some(Default::default())));
            }),
            "health_checks[0].http_health_check.send",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(http_checker("/", |h| {
                    h.retriable_statuses = vec![Int64Range {
                        start: 500,
                        end: 600,
                    }];
                }));
            }),
            "health_checks[0].http_health_check.retriable_statuses",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(http_checker("/", |h| {
                    h.codec_client_type = CodecClientType::Http2 as i32;
                }));
            }),
            "health_checks[0].http_health_check.codec_client_type",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(http_checker("/", |h| {
                    h.method = RequestMethod::Post as i32;
                }));
            }),
            "health_checks[0].http_health_check.method",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(http_checker("/", |h| {
                    h.expected_statuses = vec![Int64Range {
                        start: 200,
                        end: 700,
                    }];
                }));
            }),
            "health_checks[0].http_health_check.expected_statuses[0]",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                    send: Some(Default::default()),
                    ..TcpHealthCheck::default()
                }));
            }),
            "health_checks[0].tcp_health_check.send",
        ),
        (
            changed(&|c| {
                c.interval_jitter_percent = 150;
            }),
            "health_checks[0].interval_jitter_percent",
        ),
        (
            changed(&|c| {
                c.unhealthy_edge_interval = Some(Duration::default());
            }),
            "health_checks[0].unhealthy_edge_interval",
        ),
        (
            refused(vec![envoy_health_check(thrift_checker(
                "ping",
                TransportType::Framed,
                ProtocolType::Compact,
            ))]),
            "health_checks[0].custom_health_check.typed_config.protocol",
        ),
        (
            refused(vec![envoy_health_check(thrift_checker(
                "ping",
                TransportType::Header,
                ProtocolType::Binary,
            ))]),
            "health_checks[0].custom_health_check.typed_config.transport",
        ),
        (
            refused(vec![envoy_health_check(thrift_checker(
                "",
                TransportType::Framed,
                ProtocolType::Binary,
            ))]),
            "health_checks[0].custom_health_check.typed_config.method_name",
        ),
        (
            changed(&|c| {
                c.health_checker = Some(HealthChecker::CustomHealthCheck(CustomHealthCheck {
                    name: "envoy.health_checkers.redis".to_owned(),
                    config_type: Some(CustomConfigType::TypedConfig(Any {
                        type_url:
                            "type.googleapis.com/envoy.extensions.health_checkers.redis.v3.Redis"
                                .to_owned(),
                        value: Vec::new(),
                    })),
                }));
            }),
            "health_checks[0].custom_health_check.typed_config",
        ),
    ];
    for (field, expected) in cases {
        assert_eq!(field.as_deref(), Some(expected));
    }
}

/// An exact name matcher.
fn exactly(name: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(name.to_owned())),
        ignore_case: false,
    }
}

/// A file data source.
fn file(name: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(name.to_owned())),
        ..DataSource::default()
    }
}

/// The instance `default` with every file, and `roots` with a CA only.
fn providers() -> translate::CertificateFiles {
    let providers = BTreeMap::from([
        (
            "default".to_owned(),
            CertificateProviderSpec {
                cert_file: Some("/certs/cert-chain.pem".into()),
                key_file: Some("/certs/key.pem".into()),
                ca_file: Some("/certs/root-cert.pem".into()),
            },
        ),
        (
            "roots".to_owned(),
            CertificateProviderSpec {
                ca_file: Some("/certs/roots.pem".into()),
                ..CertificateProviderSpec::default()
            },
        ),
    ]);
    translate::CertificateFiles {
        providers,
        ..translate::CertificateFiles::NONE
    }
}

/// The context Istio sends proxyless clients for `ISTIO_MUTUAL`, to a provider.
fn istio_context() -> UpstreamTlsContext {
    istio_upstream_tls("spiffe://cluster.local/ns/default/sa/provider")
}

/// The cluster's TLS once `context` translates with [`providers`].
fn translated_tls(context: &UpstreamTlsContext) -> Result<Option<ClusterTlsSpec>, InvalidResource> {
    let mut cluster = eds_cluster(&cluster_name("v1"));
    cluster.transport_socket = Some(tls_socket(context));
    translate::cluster(&cluster, &providers()).map(|c| c.spec.tls)
}

#[test]
fn tls_maps_from_provider_instances_and_files() -> TestResult {
    let istio = translated_tls(&istio_context())?.ok_or("no tls")?;
    assert_eq!(
        istio,
        ClusterTlsSpec {
            ca_file: "/certs/root-cert.pem".into(),
            cert_file: Some("/certs/cert-chain.pem".into()),
            key_file: Some("/certs/key.pem".into()),
            server_name: None,
            subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/provider".to_owned()],
            crl_files: Vec::new(),
            alpn_protocols: Vec::new(),
        }
    );

    // The current spellings, files, typed names, SNI and protocol versions.
    let context = UpstreamTlsContext {
        sni: "provider.default.svc".to_owned(),
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..TlsParameters::default()
            }),
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(file("/etc/cert.pem")),
                private_key: Some(file("/etc/key.pem")),
                ..TlsCertificate::default()
            }],
            alpn_protocols: vec!["istio".to_owned()],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    ca_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                        instance_name: "roots".to_owned(),
                        certificate_name: String::new(),
                    }),
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Dns as i32,
                        matcher: Some(exactly("provider.default.svc")),
                        oid: String::new(),
                    }],
                    crl: Some(file("/etc/crl.pem")),
                    ..CertificateValidationContext::default()
                },
            )),
            ..CommonTlsContext::default()
        }),
        ..UpstreamTlsContext::default()
    };
    let tls = translated_tls(&context)?.ok_or("no tls")?;
    assert_eq!(
        tls,
        ClusterTlsSpec {
            ca_file: "/certs/roots.pem".into(),
            cert_file: Some("/etc/cert.pem".into()),
            key_file: Some("/etc/key.pem".into()),
            server_name: Some("provider.default.svc".to_owned()),
            subject_alt_names: vec!["provider.default.svc".to_owned()],
            crl_files: vec!["/etc/crl.pem".into()],
            alpn_protocols: vec!["istio".to_owned()],
        }
    );

    let mut cluster = eds_cluster(&cluster_name("v1"));
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_owned(),
        config_type: Some(SocketConfig::TypedConfig(packed(&RawBuffer::default()))),
    });
    assert_eq!(translate::cluster(&cluster, &providers())?.spec.tls, None);
    Ok(())
}

#[test]
#[allow(deprecated, reason = "Istio's spellings are among the cases")]
fn tls_that_cannot_be_mapped_is_refused_naming_the_field() {
    let refused = |change: &dyn Fn(&mut CommonTlsContext)| {
        let mut context = istio_context();
        if let Some(common) = context.common_tls_context.as_mut() {
            change(common);
        }
        translated_tls(&context).err().map(|e| e.field)
    };
    let root = "transport_socket.typed_config.common_tls_context";
    let combined = format!("{root}.combined_validation_context");
    let cases: Vec<(Option<String>, String)> = vec![
        (
            refused(&|c| {
                c.tls_certificate_certificate_provider_instance =
                    Some(CertificateProviderInstance {
                        instance_name: "elsewhere".to_owned(),
                        certificate_name: String::new(),
                    });
            }),
            format!("{root}.tls_certificate_certificate_provider_instance.instance_name"),
        ),
        (
            refused(&|c| {
                c.tls_certificate_certificate_provider_instance =
                    Some(CertificateProviderInstance {
                        instance_name: "roots".to_owned(),
                        certificate_name: String::new(),
                    });
            }),
            format!("{root}.tls_certificate_certificate_provider_instance.instance_name"),
        ),
        (
            refused(&|c| c.tls_certificate_sds_secret_configs = vec![Default::default()]),
            format!("{root}.tls_certificate_sds_secret_configs[0].name"),
        ),
        (
            refused(&|c| {
                c.tls_certificates = vec![TlsCertificate {
                    certificate_chain: Some(DataSource {
                        specifier: Some(Specifier::InlineString("PEM".to_owned())),
                        ..DataSource::default()
                    }),
                    private_key: Some(file("/etc/key.pem")),
                    ..TlsCertificate::default()
                }];
                c.tls_certificate_certificate_provider_instance = None;
            }),
            format!("{root}.tls_certificates[0].certificate_chain"),
        ),
        (
            refused(&|c| c.validation_context_type = None),
            format!("{root}.validation_context_type"),
        ),
        (
            refused(&|c| {
                if let Some(ValidationContextType::CombinedValidationContext(v)) =
                    c.validation_context_type.as_mut()
                    && let Some(d) = v.default_validation_context.as_mut()
                {
                    d.match_subject_alt_names = vec![StringMatcher {
                        match_pattern: Some(MatchPattern::Prefix("spiffe://".to_owned())),
                        ignore_case: false,
                    }];
                }
            }),
            format!("{combined}.default_validation_context.match_subject_alt_names[0]"),
        ),
        (
            refused(&|c| {
                if let Some(ValidationContextType::CombinedValidationContext(v)) =
                    c.validation_context_type.as_mut()
                    && let Some(d) = v.default_validation_context.as_mut()
                {
                    d.allow_expired_certificate = true;
                }
            }),
            format!("{combined}.default_validation_context.allow_expired_certificate"),
        ),
        (
            refused(&|c| {
                if let Some(ValidationContextType::CombinedValidationContext(v)) =
                    c.validation_context_type.as_mut()
                {
                    v.validation_context_sds_secret_config = Some(Default::default());
                }
            }),
            format!("{combined}.validation_context_sds_secret_config"),
        ),
        (
            refused(&|c| {
                c.tls_params = Some(TlsParameters {
                    tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                    ..TlsParameters::default()
                });
            }),
            format!("{root}.tls_params.tls_minimum_protocol_version"),
        ),
    ];
    for (field, expected) in cases {
        assert_eq!(field.as_deref(), Some(expected.as_str()));
    }
    let mut cluster = eds_cluster(&cluster_name("v1"));
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.alts".to_owned(),
        config_type: Some(SocketConfig::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts"
                .to_owned(),
            value: Vec::new(),
        })),
    });
    assert_eq!(
        translate::cluster(&cluster, &providers())
            .err()
            .map(|e| e.field)
            .as_deref(),
        Some("transport_socket.typed_config")
    );
}

/// The SDS secrets of Istio's sidecar clusters: `default` (the workload certificate) and
/// `ROOTCA` (the CA), as files pilot-agent writes with `OUTPUT_CERTS`.
fn sidecar_secrets() -> translate::CertificateFiles {
    let secrets = BTreeMap::from([
        (
            "default".to_owned(),
            CertificateProviderSpec {
                cert_file: Some("/etc/certs/cert-chain.pem".into()),
                key_file: Some("/etc/certs/key.pem".into()),
                ca_file: None,
            },
        ),
        (
            "ROOTCA".to_owned(),
            CertificateProviderSpec {
                ca_file: Some("/etc/certs/root-cert.pem".into()),
                ..CertificateProviderSpec::default()
            },
        ),
    ]);
    translate::CertificateFiles {
        sds_secrets: secrets,
        ..translate::CertificateFiles::NONE
    }
}

/// A sidecar's outbound cluster as istiod sends it under auto mutual TLS maps onto
/// `transport_socket_matches`: mutual TLS with the files of SDS secrets `default` and `ROOTCA`
/// for endpoints labelled `tlsMode: istio`, plaintext for the others; EDS gives the label. A
/// secret that is not mapped, or lacks the files asked of it, is refused naming it.
#[test]
fn sidecar_clusters_map_their_transport_socket_matches_and_sds_secrets() -> TestResult {
    let name = cluster_name("v1");
    let spiffe_id = "spiffe://cluster.local/ns/default/sa/provider";
    let sni = "outbound_.20880_.v1_.demoservice.default.svc.cluster.local";
    let mut cluster = eds_cluster(&name);
    cluster.transport_socket_matches =
        istio_transport_socket_matches(&istio_sidecar_tls(spiffe_id, sni));
    let spec = translate::cluster(&cluster, &sidecar_secrets())?.spec;
    assert_eq!(spec.tls, None);
    let mesh_tls = ClusterTlsSpec {
        ca_file: "/etc/certs/root-cert.pem".into(),
        cert_file: Some("/etc/certs/cert-chain.pem".into()),
        key_file: Some("/etc/certs/key.pem".into()),
        server_name: Some(sni.to_owned()),
        subject_alt_names: vec![spiffe_id.to_owned()],
        crl_files: Vec::new(),
        // Offered, as Envoy does: a sidecar in PERMISSIVE mode takes the connection for its
        // mutual TLS only by these.
        alpn_protocols: vec!["istio-peer-exchange".to_owned(), "istio".to_owned()],
    };
    assert_eq!(
        spec.transport_socket_matches,
        vec![
            TransportSocketMatchSpec {
                labels: BTreeMap::from([("tlsMode".to_owned(), "istio".to_owned())]),
                tls: Some(mesh_tls),
            },
            TransportSocketMatchSpec {
                labels: BTreeMap::new(),
                tls: None,
            },
        ]
    );

    let root = "transport_socket_matches[0].transport_socket.typed_config.common_tls_context";
    let refused = |files: &translate::CertificateFiles| {
        translate::cluster(&cluster, files)
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        refused(&NO_PROVIDERS),
        Some(format!(
            "{root}.tls_certificate_sds_secret_configs[0].name: `default` is not in dynamic.xds.sds_secrets"
        ))
    );
    let mut without_ca = sidecar_secrets();
    without_ca.sds_secrets.remove("ROOTCA");
    assert_eq!(
        refused(&without_ca),
        Some(format!(
            "{root}.combined_validation_context.validation_context_sds_secret_config.name: `ROOTCA` is not in dynamic.xds.sds_secrets"
        ))
    );
    let mut ca_without_file = sidecar_secrets();
    ca_without_file.sds_secrets.insert(
        "ROOTCA".to_owned(),
        ca_without_file.sds_secrets["default"].clone(),
    );
    assert_eq!(
        refused(&ca_without_file),
        Some(format!(
            "{root}.combined_validation_context.validation_context_sds_secret_config.name: `ROOTCA` has no `ca_file` in dynamic.xds.sds_secrets"
        ))
    );
    // Certificate provider instances of the same names are not SDS secrets.
    let as_instances = translate::CertificateFiles {
        providers: sidecar_secrets().sds_secrets,
        ..translate::CertificateFiles::NONE
    };
    assert!(refused(&as_instances).is_some());

    let mut typed = cluster.clone();
    typed.transport_socket_matches[0].r#match = Some(Struct {
        fields: BTreeMap::from([(
            "tlsMode".to_owned(),
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        )])
        .into_iter()
        .collect(),
    });
    assert_eq!(
        translate::cluster(&typed, &sidecar_secrets())
            .err()
            .map(|e| e.field),
        Some("transport_socket_matches[0].match.tlsMode".to_owned())
    );

    let a = "10.0.0.1:20880".parse()?;
    let b = "10.0.0.2:20880".parse()?;
    let endpoints = translate::endpoints(&with_istio_sidecar(assignment(&name, &[a, b]), 0))?;
    let labels: Vec<_> = endpoints
        .iter()
        .map(|e| e.transport_socket_match.clone())
        .collect();
    assert_eq!(
        labels,
        vec![
            BTreeMap::from([("tlsMode".to_owned(), "istio".to_owned())]),
            BTreeMap::new()
        ]
    );
    Ok(())
}

/// A cluster of a `DestinationRule` with `tls.mode: MUTUAL` and mounted files, as istiod gives
/// it a sidecar: SDS secrets named after their files (`file-cert:<cert>~<key>`,
/// `file-root:<ca>`), which take those files without an `sds_secrets` entry. An entry of the
/// same name wins; a name whose paths are not absolute, that is not of that form, or whose kind
/// is not what the field asks for is refused naming the field.
#[test]
fn file_named_sds_secrets_take_the_files_they_name() -> TestResult {
    let mut cluster = eds_cluster(&cluster_name("v1"));
    let with_tls = |cluster: &mut envoy_types::pb::envoy::config::cluster::v3::Cluster,
                    cert: &str,
                    key: &str,
                    ca: &str| {
        cluster.transport_socket = Some(tls_socket(&istio_file_mutual_tls(
            cert,
            key,
            ca,
            "db.example.com",
            "db.example.com",
        )));
    };
    with_tls(
        &mut cluster,
        "/etc/certs/client.pem",
        "/etc/certs/client-key.pem",
        "/etc/certs/ca.pem",
    );
    let tls = translate::cluster(&cluster, &NO_PROVIDERS)?.spec.tls;
    assert_eq!(
        tls,
        Some(ClusterTlsSpec {
            ca_file: "/etc/certs/ca.pem".into(),
            cert_file: Some("/etc/certs/client.pem".into()),
            key_file: Some("/etc/certs/client-key.pem".into()),
            server_name: Some("db.example.com".to_owned()),
            subject_alt_names: vec!["db.example.com".to_owned()],
            crl_files: Vec::new(),
            alpn_protocols: vec!["istio-peer-exchange".to_owned(), "istio".to_owned()],
        })
    );

    // An entry of the same name in `sds_secrets` wins (files mounted elsewhere on the proxy).
    let mut remapped = NO_PROVIDERS;
    remapped.sds_secrets.insert(
        "file-root:/etc/certs/ca.pem".to_owned(),
        CertificateProviderSpec {
            ca_file: Some("/mnt/ca.pem".into()),
            ..CertificateProviderSpec::default()
        },
    );
    let tls = translate::cluster(&cluster, &remapped)?.spec.tls;
    assert_eq!(
        tls.map(|tls| tls.ca_file),
        Some(std::path::PathBuf::from("/mnt/ca.pem"))
    );

    let certificate = "transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name";
    let ca = "transport_socket.typed_config.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name";
    let cases = [
        (
            ("certs/client.pem", "/k.pem", "/ca.pem"),
            format!(
                "{certificate}: `file-cert:certs/client.pem~/k.pem` names `certs/client.pem`, not an absolute path"
            ),
        ),
        (
            ("/client.pem", "k.pem", "/ca.pem"),
            format!(
                "{certificate}: `file-cert:/client.pem~k.pem` names `k.pem`, not an absolute path"
            ),
        ),
        (
            ("/client.pem", "/k.pem", "ca.pem"),
            format!("{ca}: `file-root:ca.pem` names `ca.pem`, not an absolute path"),
        ),
        (
            ("/client.pem", "/k.pem~/extra.pem", "/ca.pem"),
            format!(
                "{certificate}: `file-cert:/client.pem~/k.pem~/extra.pem` is not `file-cert:<certificate path>~<key path>`"
            ),
        ),
        (
            ("/client.pem", "/k.pem", "/ca.pem~/other.pem"),
            format!("{ca}: `file-root:/ca.pem~/other.pem` is not `file-root:<CA path>`"),
        ),
        (
            ("/client.pem", "/k.pem", "system"),
            format!(
                "{ca}: `file-root:system` (the system's CAs): no system CA bundle was found when the xDS client started (SSL_CERT_FILE is not set, and none is at /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/ca-bundle.pem, /etc/pki/tls/cacert.pem, /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem, /etc/ssl/cert.pem, /usr/local/etc/ssl/cert.pem, /etc/ssl/certs/ca-certificates); map it to a CA file in dynamic.xds.sds_secrets"
            ),
        ),
    ];
    for ((cert, key, root), expected) in cases {
        with_tls(&mut cluster, cert, key, root);
        assert_eq!(
            translate::cluster(&cluster, &NO_PROVIDERS)
                .err()
                .map(|e| e.to_string()),
            Some(expected)
        );
    }

    // The system's CAs: the system's bundle, found when the client starts; an entry wins.
    with_tls(&mut cluster, "/client.pem", "/k.pem", "system");
    let mut with_system = NO_PROVIDERS;
    with_system.system_ca_file = Some("/etc/ssl/certs/ca-certificates.crt".into());
    let ca_file = |files: &translate::CertificateFiles| {
        translate::cluster(&cluster, files).map(|c| c.spec.tls.map(|tls| tls.ca_file))
    };
    assert_eq!(
        ca_file(&with_system)?,
        Some("/etc/ssl/certs/ca-certificates.crt".into())
    );
    with_system.sds_secrets.insert(
        "file-root:system".to_owned(),
        CertificateProviderSpec {
            ca_file: Some("/mnt/system-ca.pem".into()),
            ..CertificateProviderSpec::default()
        },
    );
    assert_eq!(ca_file(&with_system)?, Some("/mnt/system-ca.pem".into()));

    // A CA's name where a client certificate is asked for, and the other way round.
    let mut swapped = istio_file_mutual_tls("/c.pem", "/k.pem", "/ca.pem", "db", "db");
    let common = swapped
        .common_tls_context
        .as_mut()
        .ok_or("no common_tls_context")?;
    common.tls_certificate_sds_secret_configs[0].name = "file-root:/ca.pem".to_owned();
    cluster.transport_socket = Some(tls_socket(&swapped));
    assert_eq!(
        translate::cluster(&cluster, &NO_PROVIDERS)
            .err()
            .map(|e| e.to_string()),
        Some(format!(
            "{certificate}: `file-root:/ca.pem` names a CA, not a client certificate"
        ))
    );
    let mut swapped = istio_file_mutual_tls("/c.pem", "/k.pem", "/ca.pem", "db", "db");
    let Some(ValidationContextType::CombinedValidationContext(combined)) = swapped
        .common_tls_context
        .as_mut()
        .and_then(|common| common.validation_context_type.as_mut())
    else {
        return Err("no combined validation context".into());
    };
    combined
        .validation_context_sds_secret_config
        .as_mut()
        .ok_or("no CA secret")?
        .name = "file-cert:/c.pem~/k.pem".to_owned();
    cluster.transport_socket = Some(tls_socket(&swapped));
    assert_eq!(
        translate::cluster(&cluster, &NO_PROVIDERS)
            .err()
            .map(|e| e.to_string()),
        Some(format!(
            "{ca}: `file-cert:/c.pem~/k.pem` names a client certificate, not a CA"
        ))
    );
    Ok(())
}

/// `envoy.transport_socket_match` metadata of `pairs`.
fn transport_metadata(pairs: &[(&str, &str)]) -> Metadata {
    let mut metadata = Metadata::default();
    metadata.filter_metadata.insert(
        "envoy.transport_socket_match".to_owned(),
        support::fixtures::labels(pairs),
    );
    metadata
}

/// A locality's `envoy.transport_socket_match` metadata is carried by each of its endpoints
/// beside the endpoint's own labels, never in their place: Envoy tries the own labels against
/// every entry of `transport_socket_matches` before the locality's, so an endpoint without
/// labels takes an entry with an empty `match` before one its locality's labels match, and one
/// whose own labels no entry matches still takes its locality's entry. Other namespaces of an
/// endpoint's metadata do not count as labels.
#[test]
fn endpoints_keep_their_own_transport_labels_beside_their_localitys() -> TestResult {
    let name = cluster_name("v1");
    let addresses = ["10.0.0.1:20880", "10.0.0.2:20880", "10.0.0.3:20880"]
        .map(|a| a.parse())
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut assignment = assignment(&name, &addresses);
    let locality = &mut assignment.endpoints[0];
    locality.metadata = Some(transport_metadata(&[("tlsMode", "istio")]));
    locality.lb_endpoints[1].metadata = Some(transport_metadata(&[("tlsMode", "disabled")]));
    let mut subset_only = Metadata::default();
    subset_only.filter_metadata.insert(
        "envoy.lb".to_owned(),
        support::fixtures::labels(&[("version", "v1")]),
    );
    locality.lb_endpoints[2].metadata = Some(subset_only);
    let endpoints = translate::endpoints(&assignment)?;
    let own: Vec<_> = endpoints
        .iter()
        .map(|e| e.transport_socket_match.clone())
        .collect();
    let label = |value: &str| BTreeMap::from([("tlsMode".to_owned(), value.to_owned())]);
    assert_eq!(
        own,
        vec![BTreeMap::new(), label("disabled"), BTreeMap::new()]
    );
    // As a file config writes it.
    let localitys: Vec<_> = endpoints
        .iter()
        .map(|e| serde_json::to_value(e).map(|e| e["locality_transport_socket_match"].clone()))
        .collect::<Result<_, _>>()?;
    let istio = serde_json::json!({ "tlsMode": "istio" });
    assert_eq!(localitys, vec![istio.clone(), istio.clone(), istio]);
    Ok(())
}

/// A sidecar's cluster when istiod sends HBONE (a mesh with ambient): its `tunnel: http` entry,
/// an `internal_upstream` transport into Envoy's tunnel, is left out, and the cluster keeps its
/// other entries; an endpoint only that entry reaches (an ambient pod: at an internal address,
/// left out of its assignment, or one whose transport that entry is, left out by the cluster)
/// is left out and counted, and the assignment's other endpoints are taken. Other `internal_upstream`
/// transports are still refused.
#[test]
fn sidecar_clusters_of_an_ambient_mesh_leave_out_hbone() -> TestResult {
    let name = cluster_name("v1");
    let spiffe_id = "spiffe://cluster.local/ns/default/sa/provider";
    let sni = "outbound_.20880_.v1_.demoservice.default.svc.cluster.local";
    let mut cluster = eds_cluster(&name);
    let without_hbone = istio_transport_socket_matches(&istio_sidecar_tls(spiffe_id, sni));
    cluster.transport_socket_matches = vec![istio_hbone_transport_socket_match()];
    cluster
        .transport_socket_matches
        .extend(without_hbone.iter().cloned());
    let spec = translate::cluster(&cluster, &sidecar_secrets())?.spec;
    let mut expected = eds_cluster(&name);
    expected.transport_socket_matches = without_hbone;
    assert_eq!(
        spec.transport_socket_matches,
        translate::cluster(&expected, &sidecar_secrets())?
            .spec
            .transport_socket_matches
    );
    assert_eq!(spec.transport_socket_matches.len(), 2);

    // An `internal_upstream` transport for other endpoints is no HBONE entry.
    let mut other = cluster.clone();
    other.transport_socket_matches[0].r#match =
        Some(support::fixtures::labels(&[("tunnel", "h2")]));
    assert_eq!(
        translate::cluster(&other, &sidecar_secrets())
            .err()
            .map(|e| e.field),
        Some("transport_socket_matches[0].transport_socket.typed_config".to_owned())
    );

    let a = "10.0.0.1:20880".parse()?;
    let b = "10.0.0.2:20880".parse()?;
    let mut ambient = assignment(&name, &[a, b]);
    ambient.endpoints[0].lb_endpoints[1].metadata = Some(transport_metadata(&[
        ("tunnel", "http"),
        ("tlsMode", "istio"),
    ]));
    // As istiod sends an ambient pod: at an internal address into Envoy's tunnel listener.
    ambient.endpoints[0]
        .lb_endpoints
        .push(support::fixtures::istio_hbone_endpoint(
            "10.0.0.3:20880".parse()?,
        ));
    let taken = translate::assignment(&ambient)?;
    let translated = translate::cluster(&cluster, &sidecar_secrets())?;
    let addresses: Vec<String> = translated
        .with_endpoints(&taken.endpoints)
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addresses, ["10.0.0.1:20880"]);
    // The one at an internal address by the assignment, the other by the cluster's entry.
    assert_eq!(taken.hbone_endpoints, 1);
    assert_eq!(translated.hbone_endpoints(&taken.endpoints), 1);
    assert_eq!(translate::endpoints(&ambient)?, taken.endpoints);
    // One that takes no calls anyway is not counted.
    ambient.endpoints[0].lb_endpoints[2].health_status = HealthStatus::Unhealthy as i32;
    assert_eq!(translate::assignment(&ambient)?.hbone_endpoints, 0);
    Ok(())
}

/// The addresses of the endpoints the EDS cluster `cluster` runs with from `assignment`.
fn running_endpoints(
    cluster: &envoy_types::pb::envoy::config::cluster::v3::Cluster,
    assignment: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
) -> TestResult<Vec<String>> {
    let translated = translate::cluster(cluster, &sidecar_secrets())?;
    let spec = translated.with_endpoints(&translate::assignment(assignment)?.endpoints);
    Ok(spec
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect())
}

/// An EDS cluster with istiod's entries when it sends HBONE: `hbone` (`tunnel: http`), then
/// `tlsMode-istio` and `tlsMode-disabled` (`{}`) with `plain_entry`, and one endpoint at
/// 10.0.0.1:20880 in a locality labelled `tunnel: http`.
fn in_a_tunnel_locality(
    plain_entry: bool,
) -> TestResult<(
    envoy_types::pb::envoy::config::cluster::v3::Cluster,
    envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
)> {
    let name = cluster_name("v1");
    let tls = istio_sidecar_tls("spiffe://cluster.local/ns/default/sa/provider", "sni");
    let mut cluster = eds_cluster(&name);
    cluster.transport_socket_matches = vec![istio_hbone_transport_socket_match()];
    cluster
        .transport_socket_matches
        .extend(istio_transport_socket_matches(&tls));
    if !plain_entry {
        cluster.transport_socket_matches.truncate(2);
    }
    let mut assignment = assignment(&name, &["10.0.0.1:20880".parse()?]);
    assignment.endpoints[0].metadata = Some(transport_metadata(&[("tunnel", "http")]));
    Ok((cluster, assignment))
}

/// Whether an endpoint goes through istiod's HBONE entry is decided as its transport is, in
/// Envoy's two passes over the entries as sent: its own labels (none) first, which the
/// `tlsMode-disabled` entry (`{}`) matches, so that an endpoint without labels in a locality
/// labelled `tunnel: http` is reached by plain TCP, not left out.
#[test]
fn an_endpoint_without_labels_in_a_tunnel_locality_takes_the_empty_match() -> TestResult {
    let (cluster, assignment) = in_a_tunnel_locality(true)?;
    assert_eq!(
        running_endpoints(&cluster, &assignment)?,
        ["10.0.0.1:20880"],
        "an endpoint without labels takes the `{{}}` entry"
    );
    Ok(())
}

/// An endpoint whose own labels no entry matches takes the first entry its locality's labels
/// match, in a locality labelled `tunnel: http` the HBONE entry: it is left out, not reached
/// with the cluster's own transport.
#[test]
fn an_endpoint_no_entry_takes_in_a_tunnel_locality_is_left_out() -> TestResult {
    let (cluster, mut assignment) = in_a_tunnel_locality(false)?;
    assignment.endpoints[0].lb_endpoints[0].metadata =
        Some(transport_metadata(&[("tlsMode", "disabled")]));
    let running = running_endpoints(&cluster, &assignment)?;
    assert!(
        running.is_empty(),
        "the endpoint went around the HBONE entry its locality's labels choose: {running:?}"
    );
    Ok(())
}

/// A cluster's `alpn_protocols` are offered in every handshake and held for each cluster: a
/// list of more than 16 protocols, or of more than 1024 bytes as the handshake carries them
/// (each name and its length byte), is refused naming the field, as one protocol over 255
/// bytes is.
#[test]
fn alpn_protocols_past_their_bounds_are_refused_naming_the_field() -> TestResult {
    let field = "transport_socket.typed_config.common_tls_context.alpn_protocols";
    let with_alpn = |protocols: Vec<String>| {
        let mut tls = istio_sidecar_tls("spiffe://cluster.local/ns/default/sa/provider", "sni");
        if let Some(common) = tls.common_tls_context.as_mut() {
            common.alpn_protocols = protocols;
        }
        let mut cluster = eds_cluster(&cluster_name("v1"));
        cluster.transport_socket = Some(support::fixtures::tls_socket(&tls));
        translate::cluster(&cluster, &sidecar_secrets())
    };
    let many = (0..17).map(|i| format!("p{i}")).collect::<Vec<_>>();
    let refused = with_alpn(many.clone()).err();
    assert_eq!(refused.as_ref().map(|e| e.field.as_str()), Some(field));
    assert!(
        refused.is_some_and(|e| e.reason.contains("at most 16")),
        "not the count's bound"
    );
    let long = vec!["x".repeat(200); 6];
    let refused = with_alpn(long.clone()).err();
    assert_eq!(refused.as_ref().map(|e| e.field.as_str()), Some(field));
    assert!(
        refused.is_some_and(|e| e.reason.contains("1024 bytes")),
        "not the bytes' bound"
    );
    let over = vec!["x".repeat(256)];
    assert_eq!(
        with_alpn(over).err().map(|e| e.field),
        Some(format!("{field}[0]"))
    );
    // Within both bounds: 16 protocols, and 1024 bytes exactly.
    with_alpn(many[..16].to_vec())?;
    let mut fits = vec!["x".repeat(203); 5];
    fits.push("x".repeat(3));
    with_alpn(fits)?;
    Ok(())
}

/// `file-root:system` stands for the bundle `SSL_CERT_FILE` names when it is set, as OpenSSL,
/// Go's `crypto/x509` and rustls-native-certs take it, in place of the places
/// distributions keep theirs: an image without a bundle of its own, given one mounted and named
/// so, serves its `SIMPLE` TLS `DestinationRule`s. The environment is the process's, so the
/// check runs in a child process of this test binary with the variable set.
#[test]
fn the_system_ca_bundle_is_the_one_ssl_cert_file_names() -> TestResult {
    /// Set in the child process: the bundle it must find.
    const EXPECTED: &str = "METAPROTOCOL_XDS_TEST_SSL_CERT_FILE";
    if let Some(expected) = std::env::var_os(EXPECTED) {
        assert_eq!(
            translate::system_ca_file(),
            Some(std::path::PathBuf::from(expected))
        );
        return Ok(());
    }
    let bundle = std::env::temp_dir().join(format!("xds-ssl-cert-file-{}.pem", std::process::id()));
    std::fs::write(&bundle, "")?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "the_system_ca_bundle_is_the_one_ssl_cert_file_names",
            "--test-threads=1",
        ])
        .env("SSL_CERT_FILE", &bundle)
        .env(EXPECTED, &bundle)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(within_a_minute);
    let _ = std::fs::remove_file(&bundle);
    let child = child?;
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&child.stderr)
    );
    Ok(())
}

/// The output of `child` once it ends, killed if it runs for a minute (its output is small: the
/// pipes cannot fill meanwhile).
fn within_a_minute(mut child: std::process::Child) -> std::io::Result<std::process::Output> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill()?;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output()
}
