//! Translation of resources as control planes send them: Aeraki's MetaRDS routes map onto the
//! engine's route model as Aeraki means them, clusters and endpoints as istiod sends them map
//! onto clusters, and whatever cannot be mapped is refused naming the field.

#[allow(dead_code, reason = "each test uses part of the support")]
mod support;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata, RoutingPriority};
use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Duration, Struct, UInt32Value, Value};
use metaprotocol_router::config::{LbPolicy as Policy, RouteConfigSpec};
use metaprotocol_xds::translate::{self, InvalidResource};
use support::TestResult;
use support::fixtures::{
    HOST, assignment, cluster_name, eds_cluster, hashed_on, meta_route, meta_route_config,
    mirrored, split, to_cluster, with_request_mutation,
};

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
    let spec = translate::cluster(&cluster)?.spec;
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
    let spec = translate::cluster(&cluster)?.spec;
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
    let refused = translate::cluster(&cluster).err().map(|e| e.field);
    assert_eq!(
        refused.as_deref(),
        Some("common_lb_config.healthy_panic_threshold")
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
    let translated = translate::cluster(&cluster)?;
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
    let spec = translated.with_endpoints(&translate::endpoints(&endpoints)?);
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
    let fixed = translate::cluster(&fixed)?;
    assert_eq!(fixed.eds_service, None);
    assert_eq!(fixed.spec.endpoints.len(), 1);
    Ok(())
}

#[test]
fn clusters_that_cannot_be_mapped_are_refused_naming_the_field() {
    let refused = |change: &dyn Fn(&mut envoy_types::pb::envoy::config::cluster::v3::Cluster)| {
        let mut cluster = eds_cluster(&cluster_name("v1"));
        change(&mut cluster);
        translate::cluster(&cluster)
            .err()
            .map(|e: InvalidResource| e.field)
    };
    assert_eq!(
        refused(&|c| c.lb_policy = LbPolicy::ClusterProvided as i32).as_deref(),
        Some("lb_policy")
    );
    assert_eq!(
        refused(&|c| c.transport_socket = Some(Default::default())).as_deref(),
        Some("transport_socket")
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
    let mut endpoints = assignment("x", &[([127, 0, 0, 1], 1).into()]);
    endpoints.endpoints[0].priority = 1;
    assert_eq!(
        translate::endpoints(&endpoints)
            .err()
            .map(|e| e.field)
            .as_deref(),
        Some("endpoints[0].priority")
    );
}
