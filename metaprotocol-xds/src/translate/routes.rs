//! RDS: MetaProtocol routes in the encoding Aeraki's MetaRDS server sends them, an Envoy
//! `RouteConfiguration` with one virtual host, as a [`RouteConfigSpec`].
//!
//! Per route: `name`; `match.headers` as metadata matchers (exact, prefix, suffix, contains,
//! safe regex, present, a `string_match` of those, `invert_match`), the path match left at
//! Aeraki's `prefix: "/"` (or unset); `route.cluster` or `route.weighted_clusters` (names taken
//! as given, Istio's `outbound|port|subset|host` included; a `metadata_match` on
//! `filter_metadata["envoy.lb"]` as the subset); `route.hash_policy` header names as the
//! route's hash keys; one `route.request_mirror_policies` entry (its `runtime_fraction`'s
//! default as the share); `route.timeout`; `route.retry_policy`, or the virtual host's for a
//! route without one (see [`retry`](super::retry)); `request_headers_to_add` and
//! `response_headers_to_add` as the mutations' `set`, `request_headers_to_remove` and
//! `response_headers_to_remove` as their `remove`. The virtual host's `name` and `domains` are
//! ignored (MetaProtocol has no host to match). Anything else set is refused, naming the field.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, Metadata};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use metaprotocol_router::config::{
    MetadataMatcherSpec, MirrorSpec, MutationSpec, RouteConfigSpec, RouteSpec, WeightedClusterSpec,
};

use super::{InvalidResource, duration, refuse_set, retry};

/// The metadata namespace whose values select a subset of a cluster's endpoints.
const LB_METADATA: &str = "envoy.lb";

/// Translates an RDS `RouteConfiguration` (see the module docs).
pub fn route_config(config: &RouteConfiguration) -> Result<RouteConfigSpec, InvalidResource> {
    if config.name.is_empty() {
        return Err(InvalidResource::new("name", "must not be empty"));
    }
    refuse_set!(
        "",
        config,
        [
            vhds,
            response_headers_to_add,
            response_headers_to_remove,
            request_headers_to_add,
            request_headers_to_remove,
            cluster_specifier_plugins,
            request_mirror_policies,
            typed_per_filter_config,
        ]
    );
    let (routes, host_retry) = match config.virtual_hosts.as_slice() {
        [] => (&[][..], None),
        [host] => {
            refuse_set!(
                "virtual_hosts[0]",
                host,
                [
                    matcher,
                    virtual_clusters,
                    rate_limits,
                    request_headers_to_add,
                    request_headers_to_remove,
                    response_headers_to_add,
                    response_headers_to_remove,
                    typed_per_filter_config,
                    retry_policy_typed_config,
                    hedge_policy,
                    request_mirror_policies,
                ]
            );
            let retry = host
                .retry_policy
                .as_ref()
                .map(retry::policy)
                .transpose()
                .map_err(|e| e.within("virtual_hosts[0].retry_policy"))?;
            (host.routes.as_slice(), retry)
        }
        _ => {
            return Err(InvalidResource::new(
                "virtual_hosts",
                "a MetaProtocol route config has one virtual host (MetaProtocol has no host to match)",
            ));
        }
    };
    let mut spec: RouteConfigSpec =
        serde_json::from_value(serde_json::json!({ "name": config.name }))
            .map_err(|err| InvalidResource::new("name", err.to_string()))?;
    for (i, route) in routes.iter().enumerate() {
        let at = format!("virtual_hosts[0].routes[{i}]");
        let mut route = route_spec(route).map_err(|e| e.within(&at))?;
        // As in Envoy, a route's own policy replaces its virtual host's whole.
        if route.retry_policy.is_none() {
            route.retry_policy.clone_from(&host_retry);
        }
        spec.routes.push(route.into());
    }
    Ok(spec)
}

fn route_spec(route: &Route) -> Result<RouteSpec, InvalidResource> {
    refuse_set!(
        "",
        route,
        [
            decorator,
            typed_per_filter_config,
            tracing,
            per_request_buffer_limit_bytes,
            request_body_buffer_limit,
        ]
    );
    let action = match &route.action {
        Some(Action::Route(action)) => action,
        Some(Action::Redirect(_)) => return Err(InvalidResource::unsupported("redirect")),
        Some(Action::DirectResponse(_)) => {
            return Err(InvalidResource::unsupported("direct_response"));
        }
        Some(Action::FilterAction(_)) => return Err(InvalidResource::unsupported("filter_action")),
        Some(Action::NonForwardingAction(_)) => {
            return Err(InvalidResource::unsupported("non_forwarding_action"));
        }
        None => return Err(InvalidResource::new("route", "is required")),
    };
    let mut spec: RouteSpec = serde_json::from_value(serde_json::json!({}))
        .map_err(|err| InvalidResource::new("", err.to_string()))?;
    spec.name = Some(route.name.clone()).filter(|name| !name.is_empty());
    if let Some(matcher) = &route.r#match {
        spec.match_.metadata = route_match(matcher).map_err(|e| e.within("match"))?;
    }
    route_action(action, &mut spec).map_err(|e| e.within("route"))?;
    spec.request_mutation = mutation(
        &route.request_headers_to_add,
        &route.request_headers_to_remove,
    )
    .map_err(|e| e.within("request_headers_to_add"))?;
    spec.response_mutation = mutation(
        &route.response_headers_to_add,
        &route.response_headers_to_remove,
    )
    .map_err(|e| e.within("response_headers_to_add"))?;
    Ok(spec)
}

fn route_match(matcher: &RouteMatch) -> Result<Vec<MetadataMatcherSpec>, InvalidResource> {
    refuse_set!(
        "",
        matcher,
        [
            runtime_fraction,
            query_parameters,
            cookies,
            grpc,
            tls_context,
            dynamic_metadata,
            filter_state,
        ]
    );
    match &matcher.path_specifier {
        None => {}
        Some(PathSpecifier::Prefix(prefix)) if prefix.is_empty() || prefix == "/" => {}
        Some(_) => {
            return Err(InvalidResource::new(
                "path_specifier",
                "MetaProtocol requests have no path: only `prefix: \"/\"` (every request) is supported",
            ));
        }
    }
    matcher
        .headers
        .iter()
        .enumerate()
        .map(|(i, header)| header_matcher(header).map_err(|e| e.within(&format!("headers[{i}]"))))
        .collect()
}

/// One `headers` entry as a metadata matcher on the key it names.
fn header_matcher(header: &HeaderMatcher) -> Result<MetadataMatcherSpec, InvalidResource> {
    if header.name.is_empty() {
        return Err(InvalidResource::new("name", "must not be empty"));
    }
    refuse_set!("", header, [treat_missing_header_as_empty]);
    let mut spec = MetadataMatcherSpec {
        key: header.name.clone(),
        invert: header.invert_match,
        ..MetadataMatcherSpec::default()
    };
    #[allow(deprecated, reason = "Aeraki sends the deprecated matchers")]
    match &header.header_match_specifier {
        Some(HeaderMatchSpecifier::ExactMatch(value)) => spec.exact = Some(value.clone()),
        Some(HeaderMatchSpecifier::PrefixMatch(value)) => spec.prefix = Some(value.clone()),
        Some(HeaderMatchSpecifier::SuffixMatch(value)) => spec.suffix = Some(value.clone()),
        Some(HeaderMatchSpecifier::ContainsMatch(value)) => spec.contains = Some(value.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(regex)) => spec.regex = Some(regex.regex.clone()),
        Some(HeaderMatchSpecifier::PresentMatch(present)) => spec.present = Some(*present),
        Some(HeaderMatchSpecifier::StringMatch(matcher)) => {
            if matcher.ignore_case {
                return Err(InvalidResource::unsupported("string_match.ignore_case"));
            }
            match &matcher.match_pattern {
                Some(MatchPattern::Exact(value)) => spec.exact = Some(value.clone()),
                Some(MatchPattern::Prefix(value)) => spec.prefix = Some(value.clone()),
                Some(MatchPattern::Suffix(value)) => spec.suffix = Some(value.clone()),
                Some(MatchPattern::Contains(value)) => spec.contains = Some(value.clone()),
                Some(MatchPattern::SafeRegex(regex)) => spec.regex = Some(regex.regex.clone()),
                Some(MatchPattern::Custom(_)) => {
                    return Err(InvalidResource::unsupported("string_match.custom"));
                }
                None => {
                    return Err(InvalidResource::new("string_match", "needs a pattern"));
                }
            }
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(InvalidResource::unsupported("range_match"));
        }
        // Envoy matches presence when no value test is given.
        None => spec.present = Some(true),
    }
    Ok(spec)
}

fn route_action(action: &RouteAction, spec: &mut RouteSpec) -> Result<(), InvalidResource> {
    refuse_set!(
        "",
        action,
        [
            cluster_not_found_response_code,
            prefix_rewrite,
            regex_rewrite,
            path_rewrite_policy,
            path_rewrite,
            append_x_forwarded_host,
            idle_timeout,
            flush_timeout,
            early_data_policy,
            retry_policy_typed_config,
            priority,
            rate_limits,
            include_vh_rate_limits,
            cors,
            max_grpc_timeout,
            grpc_timeout_offset,
            upgrade_configs,
            internal_redirect_policy,
            internal_redirect_action,
            max_internal_redirects,
            hedge_policy,
            max_stream_duration,
            host_rewrite_specifier,
        ]
    );
    let selected =
        subset(action.metadata_match.as_ref()).map_err(|e| e.within("metadata_match"))?;
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => {
            spec.route.cluster = Some(name.clone());
            spec.route.subset = selected;
        }
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            if selected.is_some() {
                return Err(InvalidResource::new(
                    "metadata_match",
                    "goes with `cluster`; give each weighted cluster its own metadata_match",
                ));
            }
            refuse_set!(
                "weighted_clusters",
                weighted,
                [runtime_key_prefix, random_value_specifier]
            );
            for (i, side) in weighted.clusters.iter().enumerate() {
                let at = format!("weighted_clusters.clusters[{i}]");
                refuse_set!(
                    &at,
                    side,
                    [
                        cluster_header,
                        request_headers_to_add,
                        request_headers_to_remove,
                        response_headers_to_add,
                        response_headers_to_remove,
                        typed_per_filter_config,
                        host_rewrite_specifier,
                    ]
                );
                spec.route.weighted_clusters.push(WeightedClusterSpec {
                    cluster: side.name.clone(),
                    subset: subset(side.metadata_match.as_ref())
                        .map_err(|e| e.within(&format!("{at}.metadata_match")))?,
                    weight: side.weight.as_ref().map_or(0, |w| w.value),
                });
            }
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(InvalidResource::unsupported("cluster_header"));
        }
        Some(_) => return Err(InvalidResource::unsupported("cluster_specifier_plugin")),
        None => {
            return Err(InvalidResource::new(
                "cluster",
                "is required (or weighted_clusters)",
            ));
        }
    }
    for (i, policy) in action.hash_policy.iter().enumerate() {
        let at = format!("hash_policy[{i}]");
        refuse_set!(&at, policy, [terminal]);
        match &policy.policy_specifier {
            Some(PolicySpecifier::Header(header)) if !header.header_name.is_empty() => {
                refuse_set!(&format!("{at}.header"), header, [regex_rewrite]);
                spec.hash_policy.push(header.header_name.clone());
            }
            _ => {
                return Err(InvalidResource::new(
                    at,
                    "only `header` hash policies (a metadata key) are supported by metaprotocol-rs",
                ));
            }
        }
    }
    match action.request_mirror_policies.as_slice() {
        [] => {}
        [policy] => {
            let at = "request_mirror_policies[0]";
            refuse_set!(
                at,
                policy,
                [
                    cluster_header,
                    trace_sampled,
                    request_headers_mutations,
                    host_rewrite_literal,
                ]
            );
            let percentage = match &policy.runtime_fraction {
                Some(fraction) => fraction.default_value.as_ref().map_or(Ok(0.0), |p| {
                    percent(p.numerator, p.denominator)
                        .map_err(|e| e.within(&format!("{at}.runtime_fraction.default_value")))
                })?,
                None => 100.0,
            };
            let mut mirror: MirrorSpec = serde_json::from_value(
                serde_json::json!({ "cluster": policy.cluster }),
            )
            .map_err(|err| InvalidResource::new(format!("{at}.cluster"), err.to_string()))?;
            mirror.percentage = percentage;
            spec.mirror = Some(mirror);
        }
        _ => {
            return Err(InvalidResource::new(
                "request_mirror_policies",
                "metaprotocol-rs mirrors a route to one cluster",
            ));
        }
    }
    if let Some(timeout) = &action.timeout {
        spec.timeout = Some(duration(timeout, "timeout")?);
    }
    if let Some(policy) = &action.retry_policy {
        spec.retry_policy = Some(retry::policy(policy).map_err(|e| e.within("retry_policy"))?);
    }
    Ok(())
}

/// A fraction as a percentage, 0 to 100.
fn percent(numerator: u32, denominator: i32) -> Result<f64, InvalidResource> {
    let scale = match DenominatorType::try_from(denominator) {
        Ok(DenominatorType::Hundred) => 100.0,
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        Err(_) => {
            return Err(InvalidResource::new(
                "denominator",
                format!("unknown denominator {denominator}"),
            ));
        }
    };
    Ok((f64::from(numerator) / scale * 100.0).min(100.0))
}

/// The subset a `metadata_match` selects: its `envoy.lb` string values.
fn subset(
    metadata: Option<&Metadata>,
) -> Result<Option<BTreeMap<String, String>>, InvalidResource> {
    let Some(metadata) = metadata else {
        return Ok(None);
    };
    refuse_set!("", metadata, [typed_filter_metadata]);
    let mut labels = BTreeMap::new();
    for (namespace, fields) in &metadata.filter_metadata {
        if namespace != LB_METADATA {
            return Err(InvalidResource::new(
                format!("filter_metadata.{namespace}"),
                "only `envoy.lb` selects endpoints",
            ));
        }
        for (key, value) in &fields.fields {
            use envoy_types::pb::google::protobuf::value::Kind;
            let value = match &value.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                Some(Kind::NumberValue(n)) => n.to_string(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                _ => {
                    return Err(InvalidResource::new(
                        format!("filter_metadata.{LB_METADATA}.{key}"),
                        "must be a string, number or boolean",
                    ));
                }
            };
            labels.insert(key.clone(), value);
        }
    }
    Ok(Some(labels).filter(|labels| !labels.is_empty()))
}

/// Header edits: each added header set (Aeraki's mutation sets a key), each removed one removed.
fn mutation(
    add: &[HeaderValueOption],
    remove: &[String],
) -> Result<Option<MutationSpec>, InvalidResource> {
    if add.is_empty() && remove.is_empty() {
        return Ok(None);
    }
    let mut spec = MutationSpec::default();
    for (i, option) in add.iter().enumerate() {
        let at = format!("[{i}]");
        let header = option
            .header
            .as_ref()
            .ok_or_else(|| InvalidResource::new(format!("{at}.header"), "is required"))?;
        let value = if header.raw_value.is_empty() {
            header.value.clone()
        } else {
            String::from_utf8(header.raw_value.clone()).map_err(|_| {
                InvalidResource::new(format!("{at}.header.raw_value"), "must be UTF-8")
            })?
        };
        spec.set.insert(header.key.clone(), value);
    }
    spec.remove = remove.to_vec();
    Ok(Some(spec))
}
