use super::*;

const FULL: &str = r#"
admin:
  address: 127.0.0.1:15000
listeners:
  - name: dubbo-in
    address: 127.0.0.1:20880
    protocol: dubbo
    codec: { max_frame_bytes: 8388608 }
    route_config: demo-routes
    idle_timeout: 60s
route_configs:
  - name: demo-routes
    routes:
      - name: batch-jobs
        match:
          metadata:
            - { key: interface, exact: org.apache.dubbo.samples.basic.api.DemoService }
            - { key: batchJob, exact: "true" }
        route:
          cluster: demo-provider
          subset: { service_group: batchjob }
        timeout: 2s
        retry_policy: { num_retries: 2, retry_on: [connect_failure, reset, unavailable] }
        request_mutation:  { set: { x-routed-by: batch }, remove: [debug] }
        response_mutation: { set: { x-served-by: batch } }
      - name: canary
        route:
          weighted_clusters:
            - { cluster: demo-provider, subset: { version: v1 }, weight: 30 }
            - { cluster: demo-provider, subset: { version: v2 }, weight: 70 }
clusters:
  - name: demo-provider
    connect_timeout: 1s
    lb_policy: round_robin
    endpoints:
      - { address: 127.0.0.1:20881, weight: 1, labels: { version: v1, service_group: user },
          locality: { region: r1, zone: z1 } }
      - { address: 127.0.0.1:20882, labels: { version: v2, service_group: batchjob } }
"#;

#[test]
fn the_documented_example_parses() -> Result<(), ConfigError> {
    let config = Config::from_yaml(FULL)?;
    assert_eq!(
        config.listeners[0].idle_timeout,
        Some(std::time::Duration::from_secs(60))
    );
    let route = &config.route_configs[0].routes[0];
    assert_eq!(route.timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(route.match_.metadata[1].exact.as_deref(), Some("true"));
    assert_eq!(config.clusters[0].endpoints[1].weight, 1);
    Ok(())
}

fn error_of(yaml: &str) -> ConfigError {
    match Config::from_yaml(yaml) {
        Ok(_) => ConfigError::new("<none>", "accepted"),
        Err(err) => err,
    }
}

/// Asserts that each `(yaml, field, reason)` is rejected, naming `field`, for a reason that
/// contains `reason`.
fn assert_rejected(cases: &[(String, &str, &str)]) {
    for (yaml, field, reason) in cases {
        let err = error_of(yaml);
        assert_eq!(err.field, *field, "{err}");
        assert!(
            !err.reason.is_empty() && err.reason.contains(reason),
            "{err}"
        );
    }
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            FULL.replace("route_config: demo-routes", "route_config: nope"),
            "listeners[0].route_config",
            "no route config named `nope`",
        ),
        (
            FULL.replace("cluster: demo-provider\n", "cluster: ghost\n"),
            "route_configs[0].routes[0].route.cluster",
            "no cluster named `ghost`",
        ),
        (
            FULL.replace("timeout: 2s", "timeout: soon"),
            "route_configs[0].routes[0].timeout",
            "expected a duration",
        ),
        (
            FULL.replace("lb_policy: round_robin", "lb_policy: fastest"),
            "clusters[0].lb_policy",
            "unknown variant `fastest`",
        ),
        (
            FULL.replace("idle_timeout: 60s", "idle_timout: 60s"),
            "listeners[0].idle_timout",
            "unknown field `idle_timout`",
        ),
        (
            FULL.replace("{ key: batchJob, exact: \"true\" }", "{ key: batchJob }"),
            "route_configs[0].routes[0].match.metadata[1]",
            "needs one of exact",
        ),
        (
            FULL.replace("exact: \"true\" }", "regex: \"(\" }"),
            "route_configs[0].routes[0].match.metadata[1].regex",
            "invalid regex",
        ),
        (
            FULL.replace("exact: \"true\" }", "regex: \"\\\\w{200}\" }"),
            "route_configs[0].routes[0].match.metadata[1].regex",
            "compiles to a program of over 1024 KiB",
        ),
        (
            FULL.replace("address: 127.0.0.1:20882", "address: 127.0.0.1:20881"),
            "clusters[0].endpoints[1].address",
            "duplicate endpoint",
        ),
    ];
    assert_rejected(&cases);
}

#[test]
fn unknown_fields_and_bad_yaml_are_rejected() {
    let err = error_of("listeners: [ { name: a } ]");
    assert!(err.field.starts_with("listeners[0]"), "{err}");
    let err = error_of("listeners: [\n");
    assert!(err.reason.contains("not valid YAML"), "{err}");
    assert!(err.position.is_some(), "{err}");
    assert!(
        Config::from_yaml("").is_ok(),
        "an empty file is an empty config"
    );
}

/// The line and column of the first occurrence of `needle` in `text`, 1-based.
fn position_of(text: &str, needle: &str) -> Position {
    let offset = text.find(needle).unwrap_or(usize::MAX);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
    Position { line, column }
}

/// Asserts that [`FULL`] with each `(from, to, at, field)` edit (`from` replaced by `to`) is
/// rejected, naming `field`, placed where `at` starts, for a reason that contains `reason`.
fn assert_edits_rejected_at(cases: &[(&str, &str, &str, &str)], reason: &str) {
    for (from, to, at, field) in cases {
        let yaml = FULL.replacen(from, to, 1);
        assert_ne!(yaml, FULL, "{from}");
        let err = error_of(&yaml);
        assert_eq!(err.field, *field, "{err}");
        assert!(err.reason.contains(reason), "{err}");
        assert_eq!(err.position, Some(position_of(&yaml, at)), "{err}");
    }
}

#[test]
fn unquoted_numbers_and_booleans_are_not_strings() {
    let cases = [
        (
            "exact: \"true\" }",
            "exact: 1.10 }",
            "1.10 }",
            "route_configs[0].routes[0].match.metadata[1].exact",
        ),
        (
            "exact: \"true\" }",
            "exact: yes }",
            "yes }",
            "route_configs[0].routes[0].match.metadata[1].exact",
        ),
        (
            "exact: \"true\" }",
            "exact: 0123 }",
            "0123 }",
            "route_configs[0].routes[0].match.metadata[1].exact",
        ),
        (
            "exact: \"true\" }",
            "prefix: 2 }",
            "2 }",
            "route_configs[0].routes[0].match.metadata[1].prefix",
        ),
        (
            "labels: { version: v1, service_group: user }",
            "labels: { version: 1.10, service_group: user }",
            "1.10, service_group",
            "clusters[0].endpoints[0].labels.version",
        ),
        (
            "subset: { service_group: batchjob }",
            "subset: { service_group: on }",
            "on }",
            "route_configs[0].routes[0].route.subset.service_group",
        ),
        (
            "set: { x-routed-by: batch }",
            "set: { x-routed-by: false }",
            "false }",
            "route_configs[0].routes[0].request_mutation.set.x-routed-by",
        ),
        (
            "remove: [debug]",
            "remove: [12]",
            "12]",
            "route_configs[0].routes[0].request_mutation.remove[0]",
        ),
        (
            "- name: canary",
            "- name: 7",
            "7\n",
            "route_configs[0].routes[1].name",
        ),
    ];
    assert_edits_rejected_at(&cases, "quote it");
}

#[test]
fn quoted_numbers_and_booleans_are_strings() -> Result<(), ConfigError> {
    let yaml = FULL
        .replace("exact: \"true\" }", "exact: \"1.10\" }")
        .replace(
            "version: v1, service_group: user",
            "version: '1.10', service_group: user",
        );
    let config = Config::from_yaml(&yaml)?;
    let route = &config.route_configs[0].routes[0];
    assert_eq!(route.match_.metadata[1].exact.as_deref(), Some("1.10"));
    assert_eq!(
        config.clusters[0].endpoints[0].labels.get("version"),
        Some(&"1.10".to_owned())
    );
    Ok(())
}

#[test]
fn quoted_numbers_and_booleans_are_not_numbers() {
    let cases = [
        (
            "weight: 1, labels",
            "weight: \"1\", labels",
            "\"1\", labels",
            "clusters[0].endpoints[0].weight",
        ),
        (
            "num_retries: 2,",
            "num_retries: '2',",
            "'2',",
            "route_configs[0].routes[0].retry_policy.num_retries",
        ),
        (
            "weight: 70 }",
            "weight: \"0x46\" }",
            "\"0x46\" }",
            "route_configs[0].routes[1].route.weighted_clusters[1].weight",
        ),
        (
            "lb_policy: round_robin",
            "lb_policy: round_robin\n    locality_aware: \"yes\"",
            "\"yes\"",
            "clusters[0].locality_aware",
        ),
    ];
    assert_edits_rejected_at(&cases, "write it without quotes");

    // Two on one line: the second is named, at its own column.
    let (yaml, err) = weighted_cluster_error(
        "{ cluster: demo-provider, subset: { version: '2' }, weight: '30' }",
    );
    assert_eq!(err.position, Some(position_of(&yaml, "'30' }")), "{err}");

    let json = JSON.replace(r#""weight": 2"#, r#""weight": "2""#);
    let err = error_of(&json);
    assert_eq!(err.field, "clusters[0].endpoints[0].weight", "{err}");
    assert_eq!(err.position, Some(position_of(&json, r#""2" }"#)), "{err}");

    // An alias reads as its anchor's quoted string: a string label's, here, in a number field.
    let (yaml, err) = weighted_cluster_error(
        "{ cluster: demo-provider, subset: { version: &w '30' }, weight: *w }",
    );
    assert!(err.reason.contains("write it without quotes"), "{err}");
    assert_eq!(err.position, Some(position_of(&yaml, "*w }")), "{err}");
}

/// `FULL` with its first weighted cluster written as `edited`, and the error it makes, which
/// must name that cluster's weight.
fn weighted_cluster_error(edited: &str) -> (String, ConfigError) {
    let yaml = FULL.replacen(
        "{ cluster: demo-provider, subset: { version: v1 }, weight: 30 }",
        edited,
        1,
    );
    let err = error_of(&yaml);
    assert_eq!(
        err.field,
        "route_configs[0].routes[1].route.weighted_clusters[0].weight"
    );
    (yaml, err)
}

const JSON: &str = r#"{
  "listeners": [
    { "name": "in", "address": "127.0.0.1:0", "protocol": "dubbo", "route_config": "r" }
  ],
  "route_configs": [
    { "name": "r", "routes": [
      { "match": { "metadata": [ { "key": "version", "exact": "1.1" } ] },
        "route": { "cluster": "c" } }
    ] }
  ],
  "clusters": [ { "name": "c", "endpoints": [ { "address": "127.0.0.1:1", "weight": 2 } ] } ]
}"#;

#[test]
fn json_is_read_as_strictly() -> Result<(), ConfigError> {
    let config = Config::from_yaml(JSON)?;
    assert_eq!(config.clusters[0].endpoints[0].weight, 2);

    let json = JSON.replace(r#""exact": "1.1""#, r#""exact": 1.1"#);
    let err = error_of(&json);
    assert_eq!(
        err.field,
        "route_configs[0].routes[0].match.metadata[0].exact"
    );
    assert!(err.reason.contains("quote it"), "{err}");
    assert_eq!(err.position, Some(position_of(&json, "1.1 }")), "{err}");

    let json = JSON.replace(r#""cluster": "c" }"#, r#""cluster": "x" }"#);
    let err = error_of(&json);
    assert_eq!(err.field, "route_configs[0].routes[0].route.cluster");
    assert_eq!(err.position, Some(position_of(&json, r#""x" }"#)), "{err}");
    Ok(())
}

#[test]
fn semantic_errors_carry_line_and_column() {
    let yaml = FULL.replace("cluster: demo-provider\n", "cluster: ghost\n");
    let err = error_of(&yaml);
    assert_eq!(err.field, "route_configs[0].routes[0].route.cluster");
    let at = position_of(&yaml, "ghost");
    assert_eq!(err.position, Some(at));
    assert_eq!(
        err.to_string(),
        format!(
            "route_configs[0].routes[0].route.cluster (line {}, column {}): no cluster named `ghost`",
            at.line, at.column
        )
    );

    // A field the document does not write is placed at its nearest written parent.
    let yaml = FULL.replace("{ key: batchJob, exact: \"true\" }", "{ key: batchJob }");
    let err = error_of(&yaml);
    assert_eq!(err.field, "route_configs[0].routes[0].match.metadata[1]");
    assert_eq!(err.position, Some(position_of(&yaml, "{ key: batchJob }")));

    // Errors found later (when building the proxy) are placed with `located_in`.
    let err = ConfigError::new("clusters[0].lb_policy", "no").located_in(FULL);
    assert_eq!(err.position, Some(position_of(FULL, "round_robin")));
    assert_eq!(ConfigError::new("", "no").located_in(FULL).position, None);
}

#[test]
fn a_route_config_from_the_admin_api_carries_positions() {
    let body = "name: r\nroutes:\n  - name: a\n    route: { cluster: c }\n  - name: a\n    route: { cluster: d }\n";
    let err = match RouteConfigSpec::from_yaml(body) {
        Ok(_) => ConfigError::new("<none>", "accepted"),
        Err(err) => err,
    };
    assert_eq!(err.field, "routes[1].name");
    assert_eq!(
        err.position,
        Some(Position {
            line: 5,
            column: 11
        })
    );

    let body = r#"{"name": "r", "routes": [{"route": {"cluster": "c"}, "timeout": 5}]}"#;
    let err = match RouteConfigSpec::from_yaml(body) {
        Ok(_) => ConfigError::new("<none>", "accepted"),
        Err(err) => err,
    };
    assert_eq!(err.field, "routes[0].timeout");
    assert!(err.position.is_some(), "{err}");
}

/// An `http` probe parses with Envoy's defaults (the endpoint's port, the cluster's name as
/// `Host`, 200 alone expected); what it would send must be a valid request, and its statuses
/// real ones.
#[test]
fn an_http_probe_parses_and_is_checked() -> Result<(), ConfigError> {
    let with = |probe: &str| {
        FULL.replace(
            "    lb_policy: round_robin",
            &format!(
                "    lb_policy: round_robin\n    health_check: {{ probe: {{ http: {probe} }} }}"
            ),
        )
    };
    let config = Config::from_yaml(&with("{ path: /actuator/health }"))?;
    let probe = config.clusters[0].health_check.as_ref().map(|c| &c.probe);
    let expected = HttpProbeSpec {
        path: "/actuator/health".into(),
        port: None,
        host: None,
        expected_statuses: vec![StatusRange {
            start: 200,
            end: 201,
        }],
    };
    assert_eq!(probe, Some(&ProbeSpec::Http(expected)));
    let config = Config::from_yaml(&with(
        "{ path: \"/health?deep=1\", port: 22222, host: qos.local, expected_statuses: [ { start: 200, end: 300 } ] }",
    ))?;
    let Some(ProbeSpec::Http(http)) = config.clusters[0].health_check.as_ref().map(|c| &c.probe)
    else {
        return Err(ConfigError::new("probe", "not an http probe"));
    };
    assert_eq!(
        (http.port, http.host.as_deref()),
        (Some(22222), Some("qos.local"))
    );
    let at = "clusters[0].health_check.probe.http";
    assert_rejected(&[
        (
            with("{ path: health }"),
            &format!("{at}.path"),
            "begin with `/`",
        ),
        (
            with("{ path: \"/a b\" }"),
            &format!("{at}.path"),
            "not a valid path",
        ),
        (
            with("{ path: /, port: 0 }"),
            &format!("{at}.port"),
            "1 to 65535",
        ),
        (
            with("{ path: /, host: \"\" }"),
            &format!("{at}.host"),
            "must not be empty",
        ),
        (
            with("{ path: /, host: \"a\\nb\" }"),
            &format!("{at}.host"),
            "not a valid Host",
        ),
        (
            with("{ path: /, expected_statuses: [] }"),
            &format!("{at}.expected_statuses"),
            "must not be empty",
        ),
        (
            with("{ path: /, expected_statuses: [ { start: 300, end: 200 } ] }"),
            &format!("{at}.expected_statuses[0]"),
            "from 100 to 599",
        ),
        (
            with("{ path: /, expected_statuses: [ { start: 200, end: 601 } ] }"),
            &format!("{at}.expected_statuses[0]"),
            "from 100 to 599",
        ),
        (
            with("{ path: /, method: POST }"),
            &format!("{at}.method"),
            "unknown field `method`",
        ),
    ]);
    Ok(())
}

/// A health check's jitters, Envoy's three: `interval_jitter_percent` (10 by default),
/// `interval_jitter` and `initial_jitter` (none by default), each taken as written.
#[test]
fn health_check_jitters_parse() -> Result<(), ConfigError> {
    let check = |fields: &str| -> Result<HealthCheckSpec, ConfigError> {
        let config = Config::from_yaml(&FULL.replace(
            "    lb_policy: round_robin",
            &format!("    lb_policy: round_robin\n    health_check: {{ interval: 5s{fields} }}"),
        ))?;
        config.clusters[0]
            .health_check
            .clone()
            .ok_or_else(|| ConfigError::new("health_check", "missing"))
    };
    let set = check(", interval_jitter_percent: 20, interval_jitter: 500ms, initial_jitter: 2s")?;
    assert_eq!(
        (
            set.interval_jitter_percent,
            set.interval_jitter,
            set.initial_jitter
        ),
        (20.0, Duration::from_millis(500), Duration::from_secs(2))
    );
    let unset = check("")?;
    assert_eq!(
        (
            unset.interval_jitter_percent,
            unset.interval_jitter,
            unset.initial_jitter
        ),
        (10.0, Duration::ZERO, Duration::ZERO)
    );
    Ok(())
}

/// The cluster fields of load balancing and resilience: parsed as documented, rejected with
/// the field's name when out of range.
#[test]
fn resilience_fields_parse_and_are_checked() -> Result<(), ConfigError> {
    let with = |extra: &str| {
        FULL.replace(
            "    lb_policy: round_robin",
            &format!("    lb_policy: round_robin\n{extra}"),
        )
    };
    let config = Config::from_yaml(&format!(
        "node: {{ locality: {{ region: r1, zone: z1 }} }}\n{}",
        with(
            "    locality_aware: true
    idle_timeout: 30s
    max_requests_per_connection: 1000
    circuit_breakers: { max_requests: 10 }
    outlier_detection: { consecutive_errors: 3, interval: 500ms }
    health_check: { interval: 2s, probe: { method: ping } }"
        )
    ))?;
    let cluster = &config.clusters[0];
    assert_eq!(config.node.map(|n| n.locality.zone).as_deref(), Some("z1"));
    assert_eq!(cluster.locality_failover_threshold, 70.0);
    assert_eq!(cluster.max_requests_per_connection, Some(1000));
    let breakers = cluster.circuit_breakers.as_ref();
    assert_eq!(
        breakers.map(|b| (b.max_requests, b.max_retries)),
        Some((10, 3))
    );
    let outlier = cluster.outlier_detection.as_ref();
    assert_eq!(
        outlier.map(|o| o.consecutive_local_origin_failures),
        Some(5)
    );
    let check = cluster.health_check.as_ref();
    assert_eq!(
        check.map(|c| &c.probe),
        Some(&ProbeSpec::Method("ping".into()))
    );
    for (probe, expected) in [("heartbeat", ProbeSpec::Heartbeat), ("tcp", ProbeSpec::Tcp)] {
        let config = Config::from_yaml(&with(&format!("    health_check: {{ probe: {probe} }}")))?;
        let parsed = config.clusters[0]
            .health_check
            .as_ref()
            .map(|c| c.probe.clone());
        assert_eq!(parsed, Some(expected));
    }
    assert_rejected(&[
        (
            with("    locality_aware: true"),
            "clusters[0].locality_aware",
            "set `node: { locality",
        ),
        (
            with("    locality_failover_threshold: 0"),
            "clusters[0].locality_failover_threshold",
            "not a percentage",
        ),
        (
            with("    circuit_breakers: { max_pending_requests: 0 }"),
            "clusters[0].circuit_breakers.max_pending_requests",
            "at least 1",
        ),
        (
            with("    outlier_detection: { max_ejection_percent: 150 }"),
            "clusters[0].outlier_detection.max_ejection_percent",
            "not between 0 and 100",
        ),
        (
            with("    outlier_detection: { base_ejection_time: 1m, max_ejection_time: 30s }"),
            "clusters[0].outlier_detection.max_ejection_time",
            "at least base_ejection_time",
        ),
        (
            with("    health_check: { healthy_threshold: 0 }"),
            "clusters[0].health_check.healthy_threshold",
            "at least 1",
        ),
        (
            with("    health_check: { probe: { method: \"\" } }"),
            "clusters[0].health_check.probe.method",
            "must not be empty",
        ),
        (
            with("    health_check: { probe: tcp, require_success: true }"),
            "clusters[0].health_check.require_success",
            "heartbeat or method probe",
        ),
        (
            with("    health_check: { probe: ping }"),
            "clusters[0].health_check.probe",
            "unknown variant `ping`",
        ),
        (
            with("    max_requests_per_connection: 0"),
            "clusters[0].max_requests_per_connection",
            "at least 1",
        ),
        (
            with("    frame_timeout: 0s"),
            "clusters[0].frame_timeout",
            "greater than 0",
        ),
        (
            FULL.replace(
                "    idle_timeout: 60s",
                "    idle_timeout: 60s\n    max_connections: 0",
            ),
            "listeners[0].max_connections",
            "at least 1",
        ),
        (
            FULL.replace(
                "        timeout: 2s",
                "        timeout: 2s\n        hash_policy: [ user, \"\" ]",
            ),
            "route_configs[0].routes[0].hash_policy[1]",
            "must not be empty",
        ),
    ]);
    Ok(())
}

#[test]
fn lb_policy_names_are_the_configs_words() {
    for name in [
        "round_robin",
        "random",
        "least_request",
        "peak_ewma",
        "ring_hash",
        "maglev",
    ] {
        let policy: Result<LbPolicy, _> = serde_json::from_value(serde_json::json!(name));
        assert_eq!(policy.map(LbPolicy::name).ok(), Some(name));
    }
}

#[test]
fn an_unknown_listener_protocol_is_the_listeners_error() {
    let config = Config::from_yaml(&FULL.replace("protocol: dubbo", "protocol: dubbbo"));
    let err = match config.map(|c| crate::Proxy::builder(c).check()) {
        Ok(Ok(())) => ConfigError::new("<none>", "accepted"),
        Ok(Err(err)) | Err(err) => err,
    };
    assert_eq!(err.field, "listeners[0].protocol", "{err}");
    assert!(err.reason.contains("dubbbo"), "{err}");
}

/// Route names key per-route metric series; mutation keys name the headers a codec writes.
#[test]
fn route_names_are_unique_and_mutation_keys_not_empty() {
    let route = "route_configs[0].routes[1].name";
    let mutation = "route_configs[0].routes[0].request_mutation";
    assert_rejected(&[
        (
            FULL.replace("- name: canary", "- name: batch-jobs"),
            route,
            "duplicate name `batch-jobs`",
        ),
        (
            FULL.replace("- name: canary", "- name: \"\""),
            route,
            "must not be empty",
        ),
        (
            FULL.replace("- name: canary", "- name: \"#1\""),
            route,
            "unnamed routes",
        ),
        (
            FULL.replace("set: { x-routed-by: batch }", "set: { \"\": batch }"),
            &format!("{mutation}.set"),
            "must not be empty",
        ),
        (
            FULL.replace("remove: [debug]", "remove: [debug, \"\"]"),
            &format!("{mutation}.remove[1]"),
            "must not be empty",
        ),
        (
            FULL.replace("set: { x-served-by: batch }", "set: { \"\": batch }"),
            "route_configs[0].routes[0].response_mutation.set",
            "must not be empty",
        ),
    ]);
}

#[test]
fn two_sockets_on_one_address_are_rejected() -> Result<(), ConfigError> {
    let second = "  - { name: again, address: 127.0.0.1:20880, protocol: dubbo, route_config: demo-routes }\nroute_configs:";
    let yaml = FULL.replacen("route_configs:", second, 1);
    let err = error_of(&yaml);
    assert_eq!(err.field, "listeners[1].address");
    assert!(err.reason.contains("listener `dubbo-in`"), "{err}");

    let wildcard = yaml.replace(
        "address: 127.0.0.1:20880, protocol",
        "address: 0.0.0.0:20880, protocol",
    );
    assert_eq!(error_of(&wildcard).field, "listeners[1].address");

    let admin = FULL.replace("address: 127.0.0.1:15000", "address: 127.0.0.1:20880");
    let err = error_of(&admin);
    assert_eq!(err.field, "listeners[0].address");
    assert!(err.reason.contains("the admin API"), "{err}");

    // Port 0 picks a free port for each.
    let any_port = yaml
        .replace("address: 127.0.0.1:20880", "address: 127.0.0.1:0")
        .replace("127.0.0.1:20880, protocol", "127.0.0.1:0, protocol");
    Config::from_yaml(&any_port)?;
    Ok(())
}

#[test]
fn retries_are_bounded_and_attempts_need_time() -> Result<(), ConfigError> {
    let retries = |n: u32| FULL.replace("num_retries: 2", &format!("num_retries: {n}"));
    Config::from_yaml(&retries(MAX_NUM_RETRIES))?;
    let err = error_of(&retries(MAX_NUM_RETRIES + 1));
    assert_eq!(
        err.field,
        "route_configs[0].routes[0].retry_policy.num_retries"
    );
    assert!(err.reason.contains("10 retries"), "{err}");
    let err = error_of(&retries(1_000_000_000));
    assert_eq!(
        err.field,
        "route_configs[0].routes[0].retry_policy.num_retries"
    );

    let err = error_of(&FULL.replace("num_retries: 2,", "num_retries: 2, per_try_timeout: 0s,"));
    assert_eq!(
        err.field,
        "route_configs[0].routes[0].retry_policy.per_try_timeout"
    );

    // The back-off's ceiling defaults to ten times its base, whatever the base.
    let back_off = |fields: &str| {
        FULL.replace(
            "num_retries: 2,",
            &format!("num_retries: 2, retry_back_off: {{ {fields} }},"),
        )
    };
    let config = Config::from_yaml(&back_off("base_interval: 1s"))?;
    let policy = config.route_configs[0].routes[0].retry_policy.as_ref();
    let spec = policy.map(|p| p.retry_back_off);
    assert_eq!(
        spec.map(|s| (s.base_interval, s.max_interval)),
        Some((Duration::from_secs(1), Duration::from_secs(10)))
    );
    let err = error_of(&back_off("base_interval: 1s, max_interval: 500ms"));
    assert_eq!(
        err.field,
        "route_configs[0].routes[0].retry_policy.retry_back_off.max_interval"
    );
    let err = error_of(&back_off("base_interval: 1s, ceiling: 2s"));
    assert!(err.reason.contains("unknown field"), "{err}");
    Ok(())
}

#[test]
fn a_zero_route_timeout_means_none() -> Result<(), ConfigError> {
    let config = Config::from_yaml(&FULL.replace("timeout: 2s", "timeout: 0s"))?;
    assert_eq!(
        config.route_configs[0].routes[0].timeout,
        Some(std::time::Duration::ZERO)
    );
    Ok(())
}

#[test]
fn drain_time_and_admin_token_file() -> Result<(), ConfigError> {
    let config = Config::from_yaml(FULL)?;
    assert_eq!(config.drain_time, crate::DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(
        config.admin.as_ref().and_then(|a| a.token_file.as_ref()),
        None
    );
    let yaml = FULL.replace(
        "  address: 127.0.0.1:15000",
        "  address: 127.0.0.1:15000\n  token_file: /etc/metaprotocol/admin-token\ndrain_time: 3s",
    );
    let config = Config::from_yaml(&yaml)?;
    assert_eq!(config.drain_time, std::time::Duration::from_secs(3));
    assert_eq!(
        config.admin.and_then(|a| a.token_file),
        Some("/etc/metaprotocol/admin-token".into())
    );
    let err = error_of(&FULL.replace(
        "  address: 127.0.0.1:15000",
        "  address: 127.0.0.1:15000\n  token_file: \"\"",
    ));
    assert_eq!(err.field, "admin.token_file");
    Ok(())
}

#[test]
fn configs_that_serve_nothing_warn() -> Result<(), ConfigError> {
    assert!(Config::from_yaml(FULL)?.warnings().is_empty());
    let empty = Config::from_yaml("")?.warnings();
    assert_eq!(empty.len(), 1);
    assert!(empty[0].contains("empty"), "{empty:?}");
    let idle = Config::from_yaml("clusters: [ { name: c } ]")?.warnings();
    assert_eq!(idle.len(), 1);
    assert!(idle[0].contains("no listeners"), "{idle:?}");
    Ok(())
}

/// The reference's examples are configs that load: the complete one, and the sections shown one
/// by one (`admin:`, `listeners:` ...), taken together.
#[test]
fn the_reference_examples_load() -> Result<(), ConfigError> {
    let reference = include_str!("../../../docs/config.md");
    let blocks: Vec<&str> = reference
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    let complete = blocks.first().copied().unwrap_or_default();
    assert!(!Config::from_yaml(complete)?.listeners.is_empty());
    let sections: String = blocks[1..]
        .iter()
        .filter(|block| {
            [
                "admin:",
                "node:",
                "listeners:",
                "route_configs:",
                "clusters:",
            ]
            .iter()
            .any(|key| block.starts_with(key))
        })
        .copied()
        .collect();
    let config = Config::from_yaml(&sections)?;
    assert_eq!(
        (
            config.listeners.len(),
            config.route_configs.len(),
            config.clusters.len()
        ),
        (1, 1, 1)
    );
    Ok(())
}

#[test]
fn direct_responses_sticky_splits_and_templates() -> Result<(), ConfigError> {
    let retired = FULL.replace(
        "      - name: canary\n        route:\n",
        "      - name: retired\n        direct_response: { kind: unavailable, message: gone }\n      - name: canary\n        route:\n          hash_on: user\n",
    );
    let config = Config::from_yaml(&retired)?;
    let direct = config.route_configs[0].routes[1].direct_response.as_ref();
    assert_eq!(
        direct.map(|d| d.reply()).transpose()?,
        Some(metaprotocol_core::LocalReply::new(
            metaprotocol_core::LocalReplyKind::Unavailable,
            "gone"
        ))
    );
    assert_eq!(
        config.route_configs[0].routes[2].route.hash_on.as_deref(),
        Some("user")
    );
    let templated = FULL.replace(
        "x-routed-by: batch",
        "x-routed-by: \"%route% for %metadata(user)% at %start_time%\"",
    );
    Config::from_yaml(&templated)?;
    assert_rejected(&[
        (
            FULL.replace(
                "      - name: canary\n        route:\n",
                "      - name: canary\n        direct_response: { kind: unavailable }\n        route:\n",
            ),
            "route_configs[0].routes[1].route",
            "answers without an upstream",
        ),
        (
            retired.replace("kind: unavailable", "kind: closed"),
            "route_configs[0].routes[1].direct_response.kind",
            "unknown local reply kind `closed`",
        ),
        (
            FULL.replace("subset: { service_group: batchjob }", "hash_on: user"),
            "route_configs[0].routes[0].route.hash_on",
            "goes with `weighted_clusters`",
        ),
        (
            FULL.replace("x-routed-by: batch", "x-routed-by: \"%who%\""),
            "route_configs[0].routes[0].request_mutation.set.x-routed-by",
            "unknown substitution `%who%`",
        ),
        (
            FULL.replace("x-served-by: batch", "x-served-by: 100%"),
            "route_configs[0].routes[0].response_mutation.set.x-served-by",
            "write %% for a literal %",
        ),
        (
            FULL.replace("address: 127.0.0.1:20882", "address: \"backend:port\""),
            "clusters[0].endpoints[1].address",
            "is not `ip:port` or `host:port`",
        ),
    ]);
    Ok(())
}

#[test]
fn endpoints_may_be_host_names() -> Result<(), ConfigError> {
    let config = Config::from_yaml(&FULL.replace("127.0.0.1:20882", "localhost:20882"))?;
    let cluster = &config.clusters[0];
    assert!(cluster.has_host_names());
    let address = &cluster.endpoints[1].address;
    assert_eq!((address.host(), address.port()), ("localhost", 20882));
    assert_eq!(address.to_string(), "localhost:20882");
    assert_eq!(cluster.endpoints[0].address.to_string(), "127.0.0.1:20881");
    let v6: EndpointAddress = "[::1]:7"
        .parse()
        .map_err(|e: String| ConfigError::new("", e))?;
    assert_eq!(
        v6.socket_addr(),
        Some(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 7)))
    );
    Ok(())
}

#[test]
fn every_error_in_a_file_is_reported_with_its_position() {
    // Three semantic errors in three places.
    let semantic = FULL
        .replace("route_config: demo-routes", "route_config: nope")
        .replace("cluster: demo-provider\n", "cluster: ghost\n")
        .replace("address: 127.0.0.1:20882", "address: 127.0.0.1:20881");
    let errors = Config::check_yaml(&semantic).err().unwrap_or_default();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "listeners[0].route_config",
            "route_configs[0].routes[0].route.cluster",
            "clusters[0].endpoints[1].address",
        ]
    );
    assert!(errors.iter().all(|e| e.position.is_some()), "{errors:?}");

    // Type errors in two entries, and a semantic error in a third that parsed: all three.
    let mixed = FULL
        .replace("timeout: 2s", "timeout: soon")
        .replace("lb_policy: round_robin", "lb_policy: fastest")
        .replace("idle_timeout: 60s", "idle_timeout: 0s");
    let errors = Config::check_yaml(&mixed).err().unwrap_or_default();
    let found: Vec<(&str, usize)> = errors
        .iter()
        .map(|e| (e.field.as_str(), e.position.map_or(0, |p| p.line)))
        .collect();
    assert_eq!(
        found,
        [
            (
                "listeners[0].idle_timeout",
                position_of(&mixed, "idle_timeout: 0s").line
            ),
            (
                "route_configs[0].routes[0].timeout",
                position_of(&mixed, "timeout: soon").line
            ),
            (
                "clusters[0].lb_policy",
                position_of(&mixed, "lb_policy: fastest").line
            ),
        ],
        "{errors:?}"
    );
    // The route config that did not parse stands in by name: the listener naming it is fine.
    assert!(errors.iter().all(|e| !e.reason.contains("no route config")));
    // The top level's other sections are read too when entries fail: none is "unknown".
    let with_node = format!("node: {{ locality: {{ region: r1, zone: z1 }} }}\n{mixed}");
    let errors = Config::check_yaml(&with_node).err().unwrap_or_default();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|e| !e.reason.contains("unknown field")));
    // from_yaml reports the first.
    assert_eq!(error_of(&mixed).field, "listeners[0].idle_timeout");
}

/// An entry whose value is wrong in a way any reading of the file sees (a duplicate key, an
/// infinite number) is reported once, and first: the entry stands in by name, so what refers
/// to it is not reported missing.
#[test]
fn an_entry_wrong_for_any_reader_is_reported_once_and_first() {
    let cases = [
        (
            FULL.replace(
                "labels: { version: v1, service_group: user }",
                "labels: { version: v1, version: v2 }",
            ),
            "clusters[0].endpoints[0].labels",
            "version: v1, version: v2",
            "duplicate mapping key",
        ),
        (
            FULL.replace("weight: 1,", "weight: .inf,"),
            "clusters[0].endpoints[0].weight",
            ".inf",
            "",
        ),
        (
            FULL.replace("timeout: 2s", "timeout: 2s\n        timeout: 3s"),
            "route_configs[0].routes[0]",
            "timeout: 3s",
            "duplicate mapping key",
        ),
    ];
    for (yaml, field, at, reason) in cases {
        let errors = Config::check_yaml(&yaml).err().unwrap_or_default();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let first = error_of(&yaml);
        assert_eq!(first.field, field, "{first}");
        assert!(first.reason.contains(reason), "{first}");
        assert_eq!(
            first.position.map(|p| p.line),
            Some(position_of(&yaml, at).line),
            "{first}"
        );
    }
}

/// An entry that uses an anchor of an earlier one (shared endpoints, a merged `<<: *defaults`)
/// is reported for its own mistake when it has one, not for the anchor it uses.
#[test]
fn an_entry_using_an_earlier_entrys_anchor_is_reported_for_its_own_mistake() {
    let shared = "clusters:
  - &defaults { name: c, connect_timeout: &t 2s, endpoints: [ { address: 127.0.0.1:1 } ] }
  - { name: d, connect_timeout: *t, lb_policy: fastest, endpoints: [ { address: 127.0.0.1:2 } ] }
  - { <<: *defaults, name: e, lb_policy: slowest }
";
    let errors = Config::check_yaml(shared).err().unwrap_or_default();
    let found: Vec<(&str, Option<usize>)> = errors
        .iter()
        .map(|e| (e.field.as_str(), e.position.map(|p| p.line)))
        .collect();
    assert_eq!(
        found,
        [
            ("clusters[1].lb_policy", Some(3)),
            ("clusters[2].lb_policy", Some(4))
        ],
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.reason.contains("unknown variant")),
        "{errors:?}"
    );
}

/// A tag YAML does not define (`!include`, `!env`) is an error, never dropped so that its value
/// is read as plain text; YAML's own tags still work.
#[test]
fn unknown_tags_are_errors() -> Result<(), ConfigError> {
    let cases = [
        (
            "protocol: dubbo",
            "protocol: !include dubbo",
            "listeners[0].protocol",
        ),
        (
            "idle_timeout: 60s",
            "idle_timeout: !env 60s",
            "listeners[0].idle_timeout",
        ),
        (
            "weight: 1,",
            "weight: !weight 1,",
            "clusters[0].endpoints[0].weight",
        ),
    ];
    for (from, to, field) in cases {
        let yaml = FULL.replacen(from, to, 1);
        let err = error_of(&yaml);
        assert_eq!(err.field, field, "{err}");
        assert!(err.reason.contains("tag"), "{err}");
        assert_eq!(
            err.position.map(|p| p.line),
            Some(position_of(&yaml, to).line),
            "{err}"
        );
    }
    let tagged = FULL
        .replace("name: dubbo-in", "name: !!str dubbo-in")
        .replace("weight: 1,", "weight: !!int 1,");
    assert_eq!(Config::from_yaml(&tagged)?, Config::from_yaml(FULL)?);
    Ok(())
}

/// The `dynamic` section: the file may name route configs and clusters its source provides,
/// and the section's own mistakes name their field.
#[test]
fn the_dynamic_section_lets_the_file_refer_to_what_its_source_provides() {
    let dynamic = "dynamic:\n  xds: { address: 127.0.0.1:15010, node_id: proxy-1, route_configs: [from-xds], clusters: ['*'] }\n";
    let yaml = format!(
        "{dynamic}listeners:\n  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: from-xds }}\n"
    );
    let config = Config::from_yaml(&yaml);
    assert!(config.is_ok(), "{:?}", config.err());
    let config = config.ok().unwrap_or_default();
    assert!(config.has_route_config("from-xds"));
    assert!(config.has_cluster("outbound|20880||demo"));
    assert!(!config.has_route_config("other"));

    let base = format!("{dynamic}{FULL}");
    assert_rejected(&[
        (
            base.replace("node_id: proxy-1", "node_id: ''"),
            "dynamic.xds.node_id",
            "must not be empty",
        ),
        (
            base.replace("route_config: demo-routes", "route_config: elsewhere"),
            "listeners[0].route_config",
            "no route config named `elsewhere`",
        ),
        (
            base.replace(
                "clusters: ['*'] }",
                "clusters: ['*'], reconnect: { base_interval: 2s, max_interval: 1s } }",
            ),
            "dynamic.xds.reconnect.max_interval",
            "must not be less than base_interval",
        ),
        (
            base.replace(
                "clusters: ['*'] }",
                "clusters: ['*'], keepalive: { timeout: 0s } }",
            ),
            "dynamic.xds.keepalive.timeout",
            "must be greater than 0",
        ),
        (
            base.replace(
                "clusters: ['*'] }",
                "clusters: ['*'], limits: { max_endpoints: 0 } }",
            ),
            "dynamic.xds.limits.max_endpoints",
            "must be at least 1",
        ),
        (
            base.replace(
                "clusters: ['*'] }",
                "clusters: ['*'], certificate_providers: { default: { cert_file: /c.pem } } }",
            ),
            "dynamic.xds.certificate_providers.default.key_file",
            "needed with `cert_file`",
        ),
        (
            base.replace(
                "clusters: ['*'] }",
                "clusters: ['*'], certificate_providers: { default: {} } }",
            ),
            "dynamic.xds.certificate_providers.default",
            "names no file",
        ),
        (
            base.replace(
                "route_configs: [from-xds], clusters: ['*']",
                "api_type: grpc",
            ),
            "dynamic.xds",
            "asks for nothing",
        ),
    ]);
}

#[test]
fn queues_that_take_their_room_up_front_have_a_ceiling() {
    let with = |telemetry: &str| {
        FULL.replace(
            "    idle_timeout: 60s\n",
            &format!("    idle_timeout: 60s\n    {telemetry}\n"),
        )
    };
    assert_rejected(&[
        (
            with("access_log: { path: /dev/null, queue_size: 1000000000000 }"),
            "listeners[0].access_log.queue_size",
            "at most 1048576",
        ),
        (
            with(
                "tracing: { otlp_endpoint: \"http://127.0.0.1:4317\", max_queue_size: 1000000000000 }",
            ),
            "listeners[0].tracing.max_queue_size",
            "at most 1048576",
        ),
    ]);
    assert!(
        Config::from_yaml(&with(
            "access_log: { path: /dev/null, queue_size: 1048576 }"
        ))
        .is_ok()
    );
}

/// A collector over TLS is `https://` with `tls`; either without the other is refused.
#[test]
fn a_tls_collector_is_https_with_tls() {
    let with = |tracing: &str| {
        FULL.replace(
            "    idle_timeout: 60s\n",
            &format!("    idle_timeout: 60s\n    tracing: {tracing}\n"),
        )
    };
    assert_rejected(&[
        (
            with("{ otlp_endpoint: \"https://collector:4317\" }"),
            "listeners[0].tracing.tls",
            "needs tls",
        ),
        (
            with("{ otlp_endpoint: \"http://collector:4317\", tls: { ca_file: /etc/ca.pem } }"),
            "listeners[0].tracing.tls",
            "takes an https:// otlp_endpoint",
        ),
        (
            with("{ otlp_endpoint: \"https://collector:4317\", tls: { ca_file: \"\" } }"),
            "listeners[0].tracing.tls.ca_file",
            "",
        ),
        (
            with("{ otlp_endpoint: \"https://collector\", tls: { ca_file: /etc/ca.pem } }"),
            "listeners[0].tracing.otlp_endpoint",
            "is not `ip:port` or `host:port`",
        ),
        (
            with("{ otlp_endpoint: \"grpc://collector:4317\" }"),
            "listeners[0].tracing.otlp_endpoint",
            "https://host:port with tls",
        ),
        // gRPC's protocol is `h2`, offered by the proxy: another would be refused by the
        // collector, or ignored here.
        (
            with(
                "{ otlp_endpoint: \"https://collector:4317\", tls: { ca_file: /etc/ca.pem, alpn_protocols: [ istio ] } }",
            ),
            "listeners[0].tracing.tls.alpn_protocols",
            "offered `h2`",
        ),
    ]);
    assert!(
        Config::from_yaml(&with(
            "{ otlp_endpoint: \"https://collector:4317\", tls: { ca_file: /etc/ca.pem } }"
        ))
        .is_ok()
    );
}

#[test]
fn a_duration_of_zero_quoted_is_a_duration() -> Result<(), ConfigError> {
    // Plain, YAML reads it as a number, and a duration is a string: quote it. Quoted, it is
    // one (not "write it without quotes", which said the opposite).
    let plain = error_of(&FULL.replace("timeout: 2s", "timeout: 0"));
    assert!(plain.reason.contains("quote it: \"0\""), "{plain}");
    let config = Config::from_yaml(&FULL.replace("timeout: 2s", "timeout: \"0\""))?;
    assert_eq!(
        config.route_configs[0].routes[0].timeout,
        Some(std::time::Duration::ZERO)
    );
    Ok(())
}

/// A route config of 25,000 routes (each about twenty YAML nodes) parses, in the file and
/// through the admin API: the YAML parser's default budget of 250,000 nodes refused one of
/// about 18,000 routes. The budget now grows with the text, which still bounds what aliases
/// can make it build.
#[test]
fn a_route_config_of_tens_of_thousands_of_routes_parses() -> Result<(), ConfigError> {
    let mut routes = String::from("{ name: r, routes: [\n");
    for i in 0..25_000 {
        routes.push_str(&format!(
            "  {{ match: {{ metadata: [ {{ key: k, exact: v{i} }}, {{ key: j, exact: w{i} }} ] }}, route: {{ cluster: c }} }},\n"
        ));
    }
    routes.push_str("] }");
    let spec = RouteConfigSpec::from_yaml(&routes)?;
    assert_eq!(spec.routes.len(), 25_000);
    let config = Config::from_yaml(&format!(
        "route_configs: [ {routes} ]\nclusters: [ {{ name: c }} ]"
    ))?;
    assert_eq!(config.route_configs[0].routes.len(), 25_000);
    Ok(())
}

/// A config file larger than [`MAX_CONFIG_FILE_BYTES`] is refused by its length, unread, and
/// a FIFO without waiting for a writer (a read of it would wait for ever), each error naming
/// the file and why; a config of 10,000 routes is far within the bound.
#[test]
fn a_config_file_past_the_bound_or_no_regular_file_is_refused_unread()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("config-file-bound-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (large, fifo) = (dir.join("large.yaml"), dir.join("fifo.yaml"));
    std::fs::File::create(&large)?.set_len(MAX_CONFIG_FILE_BYTES + 1)?;
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    assert!(made.success(), "mkfifo");
    let (done, answer) = std::sync::mpsc::channel();
    {
        let (large, fifo) = (large.clone(), fifo.clone());
        std::thread::spawn(move || {
            let error = |path: &std::path::Path| Config::from_file(path).err().map(|e| e.reason);
            let _ = done.send((error(&large), error(&fifo)));
        });
    }
    let answered = answer.recv_timeout(Duration::from_secs(10));
    // A read stuck on the FIFO ends (opening it for reading and writing does not wait).
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)?,
    );
    let (large_error, fifo_error) = answered?;
    let routes: String = (0..10_000)
        .map(|i| format!("      - {{ name: route-{i}, match: {{ metadata: [ {{ key: method, exact: method-{i} }} ] }}, route: {{ cluster: cluster-{i} }} }}\n"))
        .collect();
    let ten_thousand = format!("route_configs:\n  - name: r\n    routes:\n{routes}");
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(
        large_error,
        Some(format!(
            "cannot read {}: it is larger than 64 MiB",
            large.display()
        ))
    );
    assert_eq!(
        fifo_error,
        Some(format!(
            "cannot read {}: it is a FIFO, not a regular file",
            fifo.display()
        ))
    );
    assert!(
        (ten_thousand.len() as u64) < MAX_CONFIG_FILE_BYTES / 50,
        "{} bytes",
        ten_thousand.len()
    );
    Ok(())
}
