//! The Grafana dashboard in `examples/dashboards/` reads only series the proxy exports: every
//! metric name its queries use is a family on `/metrics` of a proxy that served traffic with
//! every part the dashboard shows turned on (routes, the policy filters, an access log, tracing).

// Each test file uses its own part of the shared support.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use support::proxy::start_engine;
use support::{TestResult, refusing_addr};

const DASHBOARD: &str = include_str!("../dashboards/metaprotocol-grafana.json");

/// Every query of the dashboard (panels' targets and template variables).
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    let panels = dashboard["panels"].as_array().into_iter().flatten();
    for target in panels.flat_map(|p| p["targets"].as_array().into_iter().flatten()) {
        found.extend(target["expr"].as_str().map(str::to_owned));
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten();
    found.extend(
        variables
            .filter(|v| v["type"] == "query")
            .filter_map(|v| v["query"].as_str().map(str::to_owned)),
    );
    found
}

/// The metric names a query reads (the proxy's own and the process series).
fn metric_names(query: &str) -> impl Iterator<Item = &str> {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("metaprotocol_") || word.starts_with("process_"))
}

/// The sample names `/metrics` can hold: each family's, and a histogram's `_bucket`, `_sum`
/// and `_count`.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_reads_only_exported_series() -> TestResult {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD)?;
    let provider = DemoProvider::start("p").await?;
    let (_no_collector, collector) = refusing_addr()?;
    let yaml = format!(
        r#"
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: routes
    access_log: {{ path: /dev/null }}
    tracing: {{ otlp_endpoint: "http://{}" }}
    filters:
      - {{ name: local_ratelimit, config: {{ token_bucket: {{ max_tokens: 1000, fill_interval: 1s }} }} }}
      - name: rbac
        config: {{ action: deny, policies: [ {{ name: nobody, principals: [ "spiffe://nobody" ] }} ] }}
route_configs:
  - name: routes
    routes: [ {{ name: hello, match: {{ metadata: [ {{ key: method, exact: sayHello }} ] }}, route: {{ cluster: provider }} }} ]
clusters:
  - {{ name: provider, endpoints: [ {{ address: "{}" }} ] }}
"#,
        collector,
        provider.address()
    );
    let proxy = start_engine(&yaml).await?;
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    assert_eq!(client.call("sayHello", "w", &[]).await?.dubbo_status, 20);
    assert_eq!(client.call("noRoute", "w", &[]).await?.dubbo_status, 60);
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let (status, text) = support::admin::http(admin, "GET", "/metrics", "").await?;
    assert_eq!(status, 200);
    let exported = exported(&text);

    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "the dashboard's queries: {queries:#?}");
    let mut used = BTreeSet::new();
    for query in &queries {
        for name in metric_names(query) {
            assert!(
                exported.contains(name),
                "the dashboard reads {name}, which the proxy does not export (in {query})"
            );
            used.insert(name);
        }
    }
    for family in [
        "metaprotocol_route_rq_time_seconds_bucket",
        "metaprotocol_upstream_rq_time_seconds_bucket",
        "metaprotocol_endpoint_health",
        "metaprotocol_local_replies_total",
        "metaprotocol_ratelimit_decisions_total",
        "metaprotocol_rbac_decisions_total",
        "metaprotocol_upstream_circuit_breaker_open",
    ] {
        assert!(used.contains(family), "the dashboard shows {family}");
    }
    proxy.shutdown().await;
    Ok(())
}
