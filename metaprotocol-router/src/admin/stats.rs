//! `/stats`: every series as one readable line (`name{labels}: value`, label values escaped as
//! in `/metrics`), histograms as their count, mean and percentiles, optionally only those whose
//! name and labels match `?filter=`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::proxy::ProxyState;
use crate::stats::{FamilySnapshot, HistogramSnapshot, MetricKind, SeriesValue, write_labels};

/// The percentiles a histogram line shows.
const PERCENTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")];

/// `?filter=<regex>`.
#[derive(Debug, Deserialize)]
pub(super) struct Filter {
    filter: Option<String>,
}

pub(super) async fn stats(
    State(state): State<Arc<ProxyState>>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Response {
    let Query(filter) = match filter {
        Ok(filter) => filter,
        Err(rejection) => return super::error_answer(rejection.status(), &rejection.body_text()),
    };
    let filter = match filter.filter.as_deref().map(compile).transpose() {
        Ok(filter) => filter,
        Err(err) => {
            return super::error_answer(StatusCode::BAD_REQUEST, &format!("invalid filter: {err}"));
        }
    };
    let metrics = state.metrics().clone();
    match super::off_the_runtime(move || render(&metrics.snapshot(), filter.as_ref())).await {
        Ok(text) => text.into_response(),
        Err(answer) => answer,
    }
}

/// The largest program a `?filter=` may compile to, and the largest cache its matching may
/// build. Compiling takes time in proportion to the program, on the runtime thread the admin
/// API shares with the accept loops and health checks: the regex crate's own limit (10 MiB)
/// let one GET hold that thread for most of a second (a debug build). A filter that names
/// series (`cluster="backend".*_time_seconds`) compiles to a few kilobytes.
const FILTER_SIZE_LIMIT: usize = 1 << 20;

/// The regex of a `?filter=`, refused when its program would pass [`FILTER_SIZE_LIMIT`].
fn compile(filter: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(filter)
        .size_limit(FILTER_SIZE_LIMIT)
        .dfa_size_limit(FILTER_SIZE_LIMIT)
        .build()
}

/// The lines of `families` whose `name{labels}` matches `filter`.
fn render(families: &[FamilySnapshot], filter: Option<&regex::Regex>) -> String {
    let mut out = String::new();
    for family in families {
        let name = match family.kind {
            MetricKind::Counter => format!("{}_total", family.name),
            _ => family.name.clone(),
        };
        for (labels, value) in &family.series {
            let mut series = name.clone();
            write_labels(
                &mut series,
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            if filter.is_some_and(|f| !f.is_match(&series)) {
                continue;
            }
            let _ = match value {
                SeriesValue::Counter(v) => writeln!(out, "{series}: {v}"),
                SeriesValue::Gauge(v) => writeln!(out, "{series}: {v}"),
                SeriesValue::Histogram(h) => writeln!(out, "{series}: {}", summary(&name, h)),
            };
        }
    }
    out
}

/// `count=N mean=.. p50=.. p90=.. p99=.. p999=..`, durations in milliseconds.
fn summary(name: &str, histogram: &HistogramSnapshot) -> String {
    let to_ms = if name.ends_with("_milliseconds") {
        1.0
    } else {
        1000.0
    };
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.3}ms", v * to_ms));
    let mut text = format!("count={} mean={}", histogram.count, ms(histogram.mean()));
    for (q, label) in PERCENTILES {
        let _ = write!(text, " {label}={}", ms(histogram.quantile(q)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_the_wire_cannot_forge_lines() {
        // A method name a client chose, with a quote and a line break.
        let method = "x\"}: 0\nmetaprotocol_upstream_rq_failures_total{cluster=\"c\"}: 99";
        let families = vec![FamilySnapshot {
            name: "metaprotocol_downstream_rq".into(),
            help: String::new(),
            kind: MetricKind::Counter,
            series: vec![(
                vec![("method".into(), method.into())],
                SeriesValue::Counter(1),
            )],
        }];
        assert_eq!(
            render(&families, None),
            "metaprotocol_downstream_rq_total{method=\"x\\\"}: 0\\nmetaprotocol_upstream_rq_failures_total{cluster=\\\"c\\\"}: 99\"}: 1\n"
        );
    }

    #[test]
    fn a_filter_that_would_take_long_to_compile_is_refused() {
        // 200 Unicode word characters: megabytes of program, most of a second of the runtime
        // thread the admin API shares with the accept loops, for anyone who can send a GET.
        let refused = compile(r"\w{200}").map(|_| ());
        assert!(
            matches!(refused, Err(regex::Error::CompiledTooBig(_))),
            "{refused:?}"
        );
        for usual in [
            r#"cluster="backend".*_time_seconds"#,
            r"\w+_total",
            "timeout|reset",
        ] {
            assert!(compile(usual).is_ok(), "{usual}");
        }
    }

    #[test]
    fn series_print_one_per_line_filtered() {
        let families = vec![
            FamilySnapshot {
                name: "metaprotocol_route_rq".into(),
                help: String::new(),
                kind: MetricKind::Counter,
                series: vec![(vec![("route".into(), "a".into())], SeriesValue::Counter(7))],
            },
            FamilySnapshot {
                name: "metaprotocol_route_rq_time_seconds".into(),
                help: String::new(),
                kind: MetricKind::Histogram,
                series: vec![(
                    vec![("route".into(), "a".into())],
                    SeriesValue::Histogram(HistogramSnapshot {
                        buckets: vec![(0.001, 0), (0.01, 4), (f64::INFINITY, 4)],
                        count: 4,
                        sum: 0.02,
                    }),
                )],
            },
        ];
        let all = render(&families, None);
        assert_eq!(
            all,
            "metaprotocol_route_rq_total{route=\"a\"}: 7\n\
             metaprotocol_route_rq_time_seconds{route=\"a\"}: count=4 mean=5.000ms p50=5.500ms p90=9.100ms p99=9.910ms p999=9.991ms\n"
        );
        let filter = regex::Regex::new("_total").ok();
        assert_eq!(
            render(&families, filter.as_ref()),
            "metaprotocol_route_rq_total{route=\"a\"}: 7\n"
        );
    }
}
