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

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            FULL.replace("route_config: demo-routes", "route_config: nope"),
            "listeners[0].route_config",
        ),
        (
            FULL.replace("cluster: demo-provider\n", "cluster: ghost\n"),
            "route_configs[0].routes[0].route.cluster",
        ),
        (
            FULL.replace("timeout: 2s", "timeout: soon"),
            "route_configs[0].routes[0].timeout",
        ),
        (
            FULL.replace("lb_policy: round_robin", "lb_policy: fastest"),
            "clusters[0].lb_policy",
        ),
        (
            FULL.replace("idle_timeout: 60s", "idle_timout: 60s"),
            "listeners[0].idle_timout",
        ),
        (
            FULL.replace("{ key: batchJob, exact: \"true\" }", "{ key: batchJob }"),
            "route_configs[0].routes[0].match.metadata[1]",
        ),
        (
            FULL.replace("exact: \"true\" }", "regex: \"(\" }"),
            "route_configs[0].routes[0].match.metadata[1].regex",
        ),
        (
            FULL.replace("address: 127.0.0.1:20882", "address: 127.0.0.1:20881"),
            "clusters[0].endpoints[1].address",
        ),
    ];
    for (yaml, field) in cases {
        let err = error_of(&yaml);
        assert_eq!(err.field, field, "{err}");
        assert!(!err.reason.is_empty());
    }
}

#[test]
fn scalars_are_lenient_and_unknown_yaml_is_rejected() {
    let err = error_of("listeners: [ { name: a } ]");
    assert!(err.field.starts_with("listeners[0]"), "{err}");
    assert!(
        error_of(": : :").reason.contains("YAML"),
        "syntax errors say so"
    );
    assert!(
        Config::from_yaml("").is_ok(),
        "an empty file is an empty config"
    );
}
