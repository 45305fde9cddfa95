//! `metaprotocol-proxy demo`: the Aeraki Dubbo demo in one process. Three providers of the demo
//! service (v1/user, v2/user, v2/batchjob), the engine in front of them, and a client whose
//! `batchJob=true` calls go to the batchjob group while the rest split 30/70 between v1 and v2.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaprotocol_router::{Config, Proxy, SeriesValue};
use tokio::sync::Semaphore;

use crate::dubbo_demo::{DEMO_SERVICE, DemoProvider, DubboClient, Reply};

/// How much traffic the demo sends.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Ordinary calls, split 30/70.
    pub calls: usize,
    /// Calls with `batchJob=true`.
    pub batch_calls: usize,
    /// Calls in flight at once (all over one client connection).
    pub concurrency: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            calls: 1000,
            batch_calls: 200,
            concurrency: 32,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Default)]
pub struct DemoSummary {
    /// Calls per (route, provider).
    pub calls: BTreeMap<(String, String), usize>,
    /// Latencies per route.
    pub latencies: BTreeMap<String, Vec<Duration>>,
    /// Calls that failed, with the reason.
    pub failures: Vec<String>,
    /// The Dubbo status of a call no route matches.
    pub no_route_status: Option<u8>,
    /// Upstream connections the proxy opened.
    pub upstream_connections: usize,
    /// The readable report.
    pub report: String,
    /// Where to look next: `/metrics` highlights and the per-route latency the proxy measured.
    pub observed: String,
    /// True if every check held.
    pub passed: bool,
}

const PROVIDERS: [(&str, &str, &str); 3] = [
    ("v1-user", "v1", "user"),
    ("v2-user", "v2", "user"),
    ("v2-batchjob", "v2", "batchjob"),
];

fn config(providers: &[DemoProvider]) -> String {
    let endpoints: String = providers
        .iter()
        .zip(PROVIDERS)
        .map(|(p, (_, version, group))| {
            format!(
                "      - {{ address: {}, labels: {{ version: {version}, service_group: {group} }} }}\n",
                p.address()
            )
        })
        .collect();
    format!(
        r#"
listeners:
  - name: dubbo-in
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: demo-routes
route_configs:
  - name: demo-routes
    routes:
      - name: batch-jobs
        match:
          metadata:
            - {{ key: interface, exact: {DEMO_SERVICE} }}
            - {{ key: batchJob, exact: "true" }}
        route: {{ cluster: demo-provider, subset: {{ service_group: batchjob }} }}
        timeout: 2s
        request_mutation: {{ set: {{ x-routed-by: batch-jobs }} }}
      - name: canary
        match:
          metadata:
            - {{ key: interface, exact: {DEMO_SERVICE} }}
        route:
          weighted_clusters:
            - {{ cluster: demo-provider, subset: {{ version: v1, service_group: user }}, weight: 30 }}
            - {{ cluster: demo-provider, subset: {{ version: v2, service_group: user }}, weight: 70 }}
        timeout: 2s
        request_mutation: {{ set: {{ x-routed-by: canary }} }}
clusters:
  - name: demo-provider
    endpoints:
{endpoints}"#
    )
}

/// Runs the demo and returns its summary (with a printable report).
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let mut providers = Vec::new();
    for (name, _, _) in PROVIDERS {
        providers.push(DemoProvider::start(name).await?);
    }
    let proxy = Proxy::start(
        Config::from_yaml(&config(&providers))?,
        crate::codec_registry(),
    )
    .await?;
    let address = proxy
        .listener_addr("dubbo-in")
        .ok_or_else(|| anyhow::anyhow!("listener dubbo-in is not bound"))?;
    let client = Arc::new(DubboClient::new(address));

    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut calls = tokio::task::JoinSet::new();
    let total = options.calls + options.batch_calls;
    for i in 0..total {
        // Spread the batch calls evenly through the run: exactly `batch_calls` of them.
        let batch = (i * options.batch_calls) / total != ((i + 1) * options.batch_calls) / total;
        let client = client.clone();
        let permit = limit.clone().acquire_owned().await?;
        calls.spawn(async move {
            let attachments: &[(&str, &str)] = if batch { &[("batchJob", "true")] } else { &[] };
            let reply = client.call("sayHello", "demo", attachments).await;
            drop(permit);
            (batch, reply)
        });
    }
    let mut summary = DemoSummary::default();
    let mut batch_sent = 0;
    while let Some(joined) = calls.join_next().await {
        let (batch, reply) = joined?;
        batch_sent += usize::from(batch);
        tally(&mut summary, batch, reply);
    }
    let elapsed = started.elapsed();

    let lost = client
        .call_service("org.example.Missing", "sayHello", "demo", &[])
        .await;
    summary.no_route_status = lost.as_ref().ok().map(|r| r.dubbo_status);
    summary.upstream_connections = proxy
        .clusters()
        .iter()
        .flat_map(|c| c.endpoints.iter().map(|e| e.open_connections))
        .sum();
    (summary.report, summary.passed) =
        report(&summary, &options, batch_sent, elapsed, address, &lost);
    summary.observed = observed(&proxy);
    proxy.shutdown().await;
    Ok(summary)
}

fn tally(
    summary: &mut DemoSummary,
    batch: bool,
    reply: Result<Reply, metaprotocol_router::UpstreamError>,
) {
    let route = if batch { "batch-jobs" } else { "canary" };
    match reply {
        Ok(reply) if reply.dubbo_status == 20 => {
            let provider = reply.attachment("provider").unwrap_or("?").to_owned();
            *summary
                .calls
                .entry((route.to_owned(), provider))
                .or_default() += 1;
            summary
                .latencies
                .entry(route.to_owned())
                .or_default()
                .push(reply.latency);
        }
        Ok(reply) => summary
            .failures
            .push(format!("status {}", reply.dubbo_status)),
        Err(err) => summary.failures.push(err.to_string()),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(
    summary: &DemoSummary,
    options: &DemoOptions,
    batch_sent: usize,
    elapsed: Duration,
    address: std::net::SocketAddr,
    lost: &Result<Reply, metaprotocol_router::UpstreamError>,
) -> (String, bool) {
    let mut out = String::new();
    let total = options.calls + options.batch_calls;
    let _ = writeln!(
        out,
        "metaprotocol-proxy demo: Dubbo client -> proxy {address} -> 3 in-process Dubbo providers\n\
         {total} calls of {DEMO_SERVICE}.sayHello, {} in flight at a time over one client connection, in {:.0} ms ({:.0} calls/s)\n",
        options.concurrency,
        elapsed.as_secs_f64() * 1000.0,
        total as f64 / elapsed.as_secs_f64().max(1e-9),
    );
    let _ = writeln!(
        out,
        "{:<12} {:<13} {:>6} {:>7}   {:>8} {:>8}",
        "route", "provider", "calls", "share", "p50", "p99"
    );
    for route in ["batch-jobs", "canary"] {
        let route_total: usize = summary
            .calls
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|(_, n)| n)
            .sum();
        let mut latencies = summary.latencies.get(route).cloned().unwrap_or_default();
        latencies.sort();
        for ((r, provider), n) in summary.calls.iter().filter(|((r, _), _)| r == route) {
            let _ = writeln!(
                out,
                "{:<12} {:<13} {:>6} {:>6.1}%   {:>6.2}ms {:>6.2}ms",
                r,
                provider,
                n,
                100.0 * *n as f64 / route_total.max(1) as f64,
                percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
                percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            );
        }
    }
    let count = |route: &str, provider: &str| {
        summary
            .calls
            .get(&(route.to_owned(), provider.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let batch_ok = count("batch-jobs", "v2-batchjob") == batch_sent
        && summary
            .calls
            .keys()
            .all(|(r, p)| r != "batch-jobs" || p == "v2-batchjob");
    let (v1, v2) = (count("canary", "v1-user"), count("canary", "v2-user"));
    let v1_share = 100.0 * v1 as f64 / (v1 + v2).max(1) as f64;
    let split_ok = (25.0..=35.0).contains(&v1_share) && count("canary", "v2-batchjob") == 0;
    let no_route_ok = summary.no_route_status == Some(60);
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out, "\nchecks:");
    let _ = writeln!(
        out,
        "  [{}] batchJob=true calls landed only on batchjob endpoints ({batch_sent} sent)",
        mark(batch_ok)
    );
    let _ = writeln!(
        out,
        "  [{}] canary split v1/v2 = {v1_share:.1}/{:.1} (target 30/70 +-5)",
        mark(split_ok),
        100.0 - v1_share
    );
    let no_route_text = match lost {
        Ok(reply) => format!(
            "status {} in {:.2} ms",
            reply.dubbo_status,
            reply.latency.as_secs_f64() * 1000.0
        ),
        Err(err) => err.to_string(),
    };
    let _ = writeln!(
        out,
        "  [{}] a call to an unknown service got a Dubbo error at once: {no_route_text}",
        mark(no_route_ok)
    );
    let _ = writeln!(
        out,
        "  [{}] no call failed ({} failures)",
        mark(summary.failures.is_empty()),
        summary.failures.len()
    );
    let _ = writeln!(
        out,
        "  [ok  ] upstream connections opened by the proxy: {} (shared by all calls)",
        summary.upstream_connections
    );
    let passed = batch_ok && split_ok && no_route_ok && summary.failures.is_empty();
    (out, passed)
}

/// What the proxy itself measured, as an operator would read it from `/metrics`: each route's
/// requests by outcome and its latency percentiles computed from its duration histogram, and
/// where to find the rest.
fn observed(proxy: &Proxy) -> String {
    let metrics = proxy.metrics();
    let mut out = String::from(
        "\nwhere to look: the proxy's own view (GET /metrics on the admin address; /stats for \
         percentiles)\n",
    );
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>8} {:>9} {:>9} {:>9}   from",
        "route", "success", "errors", "p50", "p90", "p99"
    );
    let completed = metrics.family("metaprotocol_route_rq_completed");
    let durations = metrics.family("metaprotocol_route_rq_time_seconds");
    for route in ["batch-jobs", "canary"] {
        // Requests of the route that succeeded (`true`) or not.
        let count = |success: bool| -> u64 {
            let Some(family) = &completed else { return 0 };
            let label = |labels: &[(String, String)], key: &str| {
                labels
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            family
                .series
                .iter()
                .filter(|(labels, _)| label(labels, "route").as_deref() == Some(route))
                .filter(|(labels, _)| {
                    (label(labels, "outcome").as_deref() == Some("success")) == success
                })
                .map(|(_, value)| match value {
                    SeriesValue::Counter(n) => *n,
                    _ => 0,
                })
                .sum()
        };
        let histogram = durations.as_ref().and_then(|family| {
            family
                .find(&[("route", route)])
                .find_map(|value| match value {
                    SeriesValue::Histogram(h) => Some(h.clone()),
                    _ => None,
                })
        });
        let quantile = |q: f64| {
            histogram
                .as_ref()
                .and_then(|h| h.quantile(q))
                .map_or("-".to_owned(), |s| format!("{:.2}ms", s * 1000.0))
        };
        let _ = writeln!(
            out,
            "{route:<12} {:>8} {:>8} {:>9} {:>9} {:>9}   metaprotocol_route_rq_time_seconds{{route=\"{route}\"}}",
            count(true),
            count(false),
            quantile(0.5),
            quantile(0.9),
            quantile(0.99),
        );
    }
    let _ = writeln!(
        out,
        "highlights: metaprotocol_route_rq_completed_total (requests by route and outcome), \
         metaprotocol_downstream_rq_completed_total (by method), \
         metaprotocol_endpoint_rq_total (per provider), metaprotocol_local_replies_total; \
         a Grafana dashboard: examples/dashboards/metaprotocol-grafana.json"
    );
    out
}

/// Runs the demo with default options and prints the report; true if every check held.
pub async fn run_and_print() -> anyhow::Result<bool> {
    let summary = run(DemoOptions::default()).await?;
    print!("{}{}", summary.report, summary.observed);
    Ok(summary.passed)
}
