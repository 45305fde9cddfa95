//! Writing series out: the Prometheus text format (0.0.4) and OpenMetrics, chosen by the
//! scraper's `Accept` header, and the collector an embedder's `prometheus_client` registry
//! calls.

use std::borrow::Cow;
use std::fmt::Write as _;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::process::ProcessSample;
use super::{FamilySnapshot, HistogramSnapshot, MetricKind, SeriesValue};

/// A text format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpositionFormat {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.
    OpenMetrics,
}

impl ExpositionFormat {
    /// The format an `Accept` header asks for: OpenMetrics when it is accepted at least as
    /// much as plain text (as Prometheus asks), else the Prometheus text format (curl, browsers).
    pub fn from_accept(accept: &str) -> Self {
        let quality = |wanted: &str| {
            accept
                .split(',')
                .filter_map(|range| {
                    let mut parts = range.split(';').map(str::trim);
                    let media = parts.next()?;
                    if !media.eq_ignore_ascii_case(wanted) {
                        return None;
                    }
                    let q = parts
                        .filter_map(|p| p.strip_prefix("q="))
                        .find_map(|q| q.parse::<f32>().ok())
                        .unwrap_or(1.0);
                    Some(q)
                })
                .fold(None, |best: Option<f32>, q| {
                    Some(best.map_or(q, |b| b.max(q)))
                })
        };
        match (
            quality("application/openmetrics-text"),
            quality("text/plain"),
        ) {
            (Some(open), text) if open > 0.0 && open >= text.unwrap_or(0.0) => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Writes `families` and `process` in the Prometheus text format.
pub(super) fn write_prometheus(
    out: &mut String,
    families: &[FamilySnapshot],
    process: &[ProcessSample],
) {
    for family in families {
        let (name, kind) = match family.kind {
            MetricKind::Counter => (format!("{}_total", family.name), "counter"),
            MetricKind::Gauge => (family.name.clone(), "gauge"),
            MetricKind::Histogram => (family.name.clone(), "histogram"),
        };
        header(out, &name, &family.help, kind);
        for (labels, value) in &family.series {
            match value {
                SeriesValue::Counter(v) => sample(out, &name, labels, None, &v.to_string()),
                SeriesValue::Gauge(v) => sample(out, &name, labels, None, &v.to_string()),
                SeriesValue::Histogram(h) => histogram(out, &name, labels, h),
            }
        }
    }
    for p in process {
        let name = if p.counter {
            format!("{}_total", p.name)
        } else {
            p.name.to_owned()
        };
        header(
            out,
            &name,
            p.help,
            if p.counter { "counter" } else { "gauge" },
        );
        sample(out, &name, &[], None, &p.value.to_string());
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &[(String, String)], h: &HistogramSnapshot) {
    let bucket = format!("{name}_bucket");
    for (bound, cumulative) in &h.buckets {
        let le = if bound.is_infinite() {
            "+Inf".to_owned()
        } else {
            bound.to_string()
        };
        sample(out, &bucket, labels, Some(&le), &cumulative.to_string());
    }
    sample(
        out,
        &format!("{name}_sum"),
        labels,
        None,
        &h.sum.to_string(),
    );
    sample(
        out,
        &format!("{name}_count"),
        labels,
        None,
        &h.count.to_string(),
    );
}

/// One sample line; `le` is appended to the labels for histogram buckets.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    let le = le.map(|le| ("le", le));
    write_labels(
        out,
        labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(le),
    );
    let _ = writeln!(out, " {value}");
}

/// `{key="value",...}` (nothing without labels), values escaped as the text format wants: a
/// value may come from a request (a method name), and unescaped, its quotes and line breaks
/// would end the series early and start lines of the sender's choosing.
pub(crate) fn write_labels<'a>(
    out: &mut String,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let mut first = true;
    for (key, value) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{key}=\"");
        push_escaped(out, value);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// Appends `text` with its backslashes, double quotes and line breaks escaped, as label values
/// (and OpenMetrics help texts) are written.
fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Encodes `families` for prometheus-client (OpenMetrics, or an embedder's registry).
pub(super) fn encode_families(
    encoder: &mut DescriptorEncoder,
    families: &[FamilySnapshot],
) -> std::fmt::Result {
    for family in families {
        let metric_type = match family.kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        let help = escape_help(&family.help);
        let mut metric = encoder.encode_descriptor(&family.name, &help, None, metric_type)?;
        if let [(labels, value)] = family.series.as_slice()
            && labels.is_empty()
        {
            // A family's only series, without labels, is written without an empty `{}`.
            encode_value(metric, value)?;
            continue;
        }
        // With others beside it, an unlabelled series is written with `{}` (valid), since the
        // encoder is taken by a series written without.
        for (labels, value) in &family.series {
            encode_value(metric.encode_family(labels)?, value)?;
        }
    }
    Ok(())
}

/// `help` as OpenMetrics wants it (prometheus-client writes it as given): a help text may come
/// from an embedder or a codec crate, and a line break in it would end the line early.
fn escape_help(help: &str) -> Cow<'_, str> {
    if !help.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(help);
    }
    let mut escaped = String::with_capacity(help.len() + 8);
    push_escaped(&mut escaped, help);
    Cow::Owned(escaped)
}

fn encode_value(encoder: MetricEncoder, value: &SeriesValue) -> std::fmt::Result {
    match value {
        SeriesValue::Counter(v) => ConstCounter::new(*v).encode(encoder),
        SeriesValue::Gauge(v) => ConstGauge::new(*v).encode(encoder),
        SeriesValue::Histogram(h) => {
            let mut previous = 0;
            let buckets: Vec<(f64, u64)> = h
                .buckets
                .iter()
                .map(|&(bound, cumulative)| {
                    let count = cumulative - previous;
                    previous = cumulative;
                    (bound, count)
                })
                .collect();
            let mut encoder = encoder;
            encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
        }
    }
}

/// Encodes the process samples for prometheus-client.
pub(super) fn encode_process(
    encoder: &mut DescriptorEncoder,
    process: &[ProcessSample],
) -> std::fmt::Result {
    for p in process {
        let metric_type = if p.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let metric = encoder.encode_descriptor(p.name, p.help, None, metric_type)?;
        if p.counter {
            ConstCounter::new(p.value).encode(metric)?;
        } else {
            ConstGauge::new(p.value).encode(metric)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Labels;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            ExpositionFormat::from_accept(prometheus),
            ExpositionFormat::OpenMetrics
        );
        for plain in [
            "*/*",
            "",
            "text/plain",
            "text/plain, application/openmetrics-text;q=0.5",
            "application/openmetrics-text;q=0",
        ] {
            assert_eq!(
                ExpositionFormat::from_accept(plain),
                ExpositionFormat::Prometheus,
                "{plain}"
            );
        }
    }

    #[test]
    fn the_prometheus_text_format_names_counters_with_total_and_escapes_values() {
        let families = [
            FamilySnapshot {
                name: "metaprotocol_downstream_rq".into(),
                help: "Requests".into(),
                kind: MetricKind::Counter,
                series: vec![(labels(&[("listener", "a\"b\\c")]), SeriesValue::Counter(3))],
            },
            FamilySnapshot {
                name: "metaprotocol_requests_in_flight".into(),
                help: "In flight".into(),
                kind: MetricKind::Gauge,
                series: vec![(Labels::new(), SeriesValue::Gauge(-1))],
            },
            FamilySnapshot {
                name: "metaprotocol_rq_time_seconds".into(),
                help: "Time".into(),
                kind: MetricKind::Histogram,
                series: vec![(
                    labels(&[("route", "r")]),
                    SeriesValue::Histogram(HistogramSnapshot {
                        buckets: vec![(0.005, 1), (f64::INFINITY, 2)],
                        count: 2,
                        sum: 1.5,
                    }),
                )],
            },
        ];
        let mut out = String::new();
        write_prometheus(&mut out, &families, &[]);
        assert_eq!(
            out,
            "# HELP metaprotocol_downstream_rq_total Requests\n\
             # TYPE metaprotocol_downstream_rq_total counter\n\
             metaprotocol_downstream_rq_total{listener=\"a\\\"b\\\\c\"} 3\n\
             # HELP metaprotocol_requests_in_flight In flight\n\
             # TYPE metaprotocol_requests_in_flight gauge\n\
             metaprotocol_requests_in_flight -1\n\
             # HELP metaprotocol_rq_time_seconds Time\n\
             # TYPE metaprotocol_rq_time_seconds histogram\n\
             metaprotocol_rq_time_seconds_bucket{route=\"r\",le=\"0.005\"} 1\n\
             metaprotocol_rq_time_seconds_bucket{route=\"r\",le=\"+Inf\"} 2\n\
             metaprotocol_rq_time_seconds_sum{route=\"r\"} 1.5\n\
             metaprotocol_rq_time_seconds_count{route=\"r\"} 2\n"
        );
    }
}
