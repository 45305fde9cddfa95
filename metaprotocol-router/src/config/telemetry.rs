//! What the proxy tells operators: metrics settings (top level `metrics`), and each listener's
//! `access_log` and `tracing`.

use std::collections::BTreeMap;
use std::time::Duration;

use humantime_serde::Serde;
use serde::{Deserialize, Serialize};

use super::{ClusterTlsSpec, ConfigError, EndpointAddress};

/// The latency histograms' default upper bounds: round values from 0.5 ms to 10 s, so that an
/// SLO ("99% under 250 ms") reads straight off a bucket.
pub const DEFAULT_LATENCY_BUCKETS: [Duration; 14] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// The default number of methods, beyond those routes name, that get a `method` label value of
/// their own.
pub const DEFAULT_METHOD_LABEL_LIMIT: usize = 20;

/// The most buckets a latency histogram may have (each is a series per histogram).
const MAX_BUCKETS: usize = 64;
/// The most methods `method_label_limit` may allow.
const MAX_METHOD_LABELS: usize = 1000;

/// Proxy-wide metrics settings. They shape every series, so a change takes effect on restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Upper bounds of every latency histogram, ascending.
    #[serde(default = "default_buckets")]
    pub latency_buckets: Vec<Serde<Duration>>,
    /// How many methods, beyond those named by routes (`exact` matches on `method`), get their
    /// own `method` label value, first come first served; the rest count as `other`.
    #[serde(default = "default_method_label_limit")]
    pub method_label_limit: usize,
    /// Istio-compatible series (`istio_requests_total`, `istio_request_duration_milliseconds`),
    /// for Istio dashboards and Kiali.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioSpec>,
}

fn default_buckets() -> Vec<Serde<Duration>> {
    DEFAULT_LATENCY_BUCKETS
        .iter()
        .map(|d| Serde::from(*d))
        .collect()
}

fn default_method_label_limit() -> usize {
    DEFAULT_METHOD_LABEL_LIMIT
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            latency_buckets: default_buckets(),
            method_label_limit: DEFAULT_METHOD_LABEL_LIMIT,
            istio: None,
        }
    }
}

impl MetricsSpec {
    /// True if nothing differs from the defaults (the config dump leaves it out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The latency buckets.
    pub fn buckets(&self) -> impl Iterator<Item = Duration> + '_ {
        self.latency_buckets.iter().map(|d| **d)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.latency_buckets.is_empty() || self.latency_buckets.len() > MAX_BUCKETS {
            return Err(ConfigError::new(
                "latency_buckets",
                format!("needs 1 to {MAX_BUCKETS} durations"),
            ));
        }
        let mut previous = Duration::ZERO;
        for (i, bound) in self.buckets().enumerate() {
            if bound <= previous {
                return Err(ConfigError::new(
                    format!("latency_buckets[{i}]"),
                    "must be more than 0 and more than the bucket before it",
                ));
            }
            previous = bound;
        }
        if self.method_label_limit > MAX_METHOD_LABELS {
            return Err(ConfigError::new(
                "method_label_limit",
                format!("at most {MAX_METHOD_LABELS}"),
            ));
        }
        Ok(())
    }
}

/// Which side of a call the proxy reports as, in Istio's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IstioReporter {
    /// The caller's side (a gateway, an outbound sidecar).
    #[default]
    Source,
    /// The callee's side (an inbound sidecar).
    Destination,
}

impl IstioReporter {
    /// The `reporter` label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The Istio-compatible series: who reports, and the workloads on either side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioSpec {
    /// The `reporter` label.
    #[serde(default)]
    pub reporter: IstioReporter,
    /// The `source_*` labels.
    #[serde(default)]
    pub source: IstioWorkloadSpec,
    /// The `destination_*` labels; each one not set here comes from the endpoint's labels of
    /// the same name (`app`, `version`, `workload`, `namespace`, `canonical_service`,
    /// `canonical_revision`, `cluster`), else `unknown`.
    #[serde(default)]
    pub destination: IstioWorkloadSpec,
}

/// One side's workload labels; `unknown` where not set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioWorkloadSpec {
    /// `*_workload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `*_workload_namespace` (and, for the destination, `destination_service_namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `*_app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// `*_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `*_canonical_service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_service: Option<String>,
    /// `*_canonical_revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_revision: Option<String>,
    /// `*_cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `*_principal` (the source's defaults to the client's SPIFFE id when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

/// A listener's access log: one line per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// `/dev/stdout`, `/dev/stderr`, or a file (appended to; reopened by
    /// [`Proxy::reopen_access_logs`](crate::Proxy::reopen_access_logs), which the binary calls on
    /// SIGHUP).
    pub path: String,
    /// `json` (the default fields as one JSON object), `text` (the default line), or a format
    /// string of Envoy-style command operators (`%START_TIME% %ROUTE_NAME% ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A JSON object whose values are format strings: custom JSON lines (instead of `format`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<BTreeMap<String, String>>,
    /// The share of requests logged (0 to 100) by outcome (`success`, `timeout` ... see the
    /// `outcome` label), and `default` for the outcomes not listed; 100 when unset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sampling: BTreeMap<String, f64>,
    /// Lines waiting for the writer before new ones are dropped (and counted).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
}

/// The default `queue_size` of an access log.
pub const DEFAULT_ACCESS_LOG_QUEUE: usize = 8192;

/// The largest access log `queue_size` and tracing `max_queue_size`: both queues take their
/// whole room up front, so a mistyped size would abort the proxy for want of memory.
pub const MAX_QUEUE_SIZE: usize = 1 << 20;

fn default_queue_size() -> usize {
    DEFAULT_ACCESS_LOG_QUEUE
}

impl AccessLogSpec {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.path.is_empty() {
            return Err(ConfigError::new("path", "must not be empty"));
        }
        match (&self.format, &self.json_format) {
            (Some(format), Some(_)) if format != "json" => {
                return Err(ConfigError::new(
                    "json_format",
                    "takes the place of `format`; leave `format` out (or `json`)",
                ));
            }
            (_, Some(fields)) => {
                for (name, value) in fields {
                    crate::access_log::check_format(value).map_err(|reason| {
                        ConfigError::new(format!("json_format.{name}"), reason)
                    })?;
                }
            }
            (Some(format), None) if format != "json" && format != "text" => {
                crate::access_log::check_format(format)
                    .map_err(|reason| ConfigError::new("format", reason))?;
            }
            _ => {}
        }
        for (outcome, share) in &self.sampling {
            if outcome != "default" && !crate::stats::OUTCOMES.contains(&outcome.as_str()) {
                return Err(ConfigError::new(
                    format!("sampling.{outcome}"),
                    format!(
                        "unknown outcome; use `default` or one of {:?}",
                        crate::stats::OUTCOMES
                    ),
                ));
            }
            percentage(&format!("sampling.{outcome}"), *share)?;
        }
        if self.queue_size == 0 || self.queue_size > MAX_QUEUE_SIZE {
            return Err(ConfigError::new(
                "queue_size",
                format!("must be at least 1 and at most {MAX_QUEUE_SIZE}"),
            ));
        }
        Ok(())
    }
}

/// How a trace context travels in request metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// Zipkin B3, one key per field: `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    B3,
}

/// A listener's distributed tracing: spans exported over OTLP/gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The OTLP/gRPC collector, `http://host:port` (usually port 4317), or `https://host:port`
    /// with `tls`.
    pub otlp_endpoint: String,
    /// TLS to an `https://` collector, with the settings of a cluster's `tls`; the server name
    /// defaults to the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsSpec>,
    /// The share of new traces sampled, 0 to 100.
    #[serde(default = "hundred")]
    pub sampling: f64,
    /// Follow the caller's sampling decision when the request carries one.
    #[serde(default = "yes")]
    pub parent_based: bool,
    /// The `service.name` the spans are reported under.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The formats the context is written to upstream requests in; `[w3c]` when unset (a
    /// request whose context came in B3 also gets B3).
    #[serde(default = "default_propagation")]
    pub propagation: Vec<Propagation>,
    /// Spans waiting for export before new ones are dropped.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    /// The most spans in one export.
    #[serde(default = "default_max_export_batch_size")]
    pub max_export_batch_size: usize,
    /// How often waiting spans are exported.
    #[serde(default = "default_export_interval", with = "humantime_serde")]
    pub export_interval: Duration,
    /// How long one export may take.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
}

fn hundred() -> f64 {
    100.0
}

fn yes() -> bool {
    true
}

fn default_service_name() -> String {
    "metaprotocol-proxy".to_owned()
}

fn default_propagation() -> Vec<Propagation> {
    vec![Propagation::W3c]
}

fn default_max_queue_size() -> usize {
    2048
}

fn default_max_export_batch_size() -> usize {
    512
}

fn default_export_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

impl TracingSpec {
    /// The collector's `host:port`, from `otlp_endpoint`; `None` if that is not
    /// `http://host:port` or `https://host:port`.
    pub(crate) fn collector_authority(&self) -> Option<&str> {
        let endpoint = &self.otlp_endpoint;
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))?;
        let authority = rest.trim_end_matches('/');
        (!authority.is_empty() && !authority.contains('/')).then_some(authority)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let Some(authority) = self.collector_authority() else {
            return Err(ConfigError::new(
                "otlp_endpoint",
                "must be http://host:port, or https://host:port with tls (OTLP over gRPC)",
            ));
        };
        match (self.otlp_endpoint.starts_with("https://"), &self.tls) {
            (true, None) => {
                return Err(ConfigError::new(
                    "tls",
                    "an https:// otlp_endpoint needs tls, with at least the ca_file the collector's certificate chains to",
                ));
            }
            (false, Some(_)) => {
                return Err(ConfigError::new(
                    "tls",
                    format!("takes an https:// otlp_endpoint, not http://{authority}"),
                ));
            }
            (_, Some(tls)) => {
                authority
                    .parse::<EndpointAddress>()
                    .map_err(|reason| ConfigError::new("otlp_endpoint", reason))?;
                tls.validate_for_grpc().map_err(|e| e.within("tls"))?;
            }
            (false, None) => {}
        }
        percentage("sampling", self.sampling)?;
        if self.service_name.is_empty() {
            return Err(ConfigError::new("service_name", "must not be empty"));
        }
        if self.max_queue_size == 0 || self.max_queue_size > MAX_QUEUE_SIZE {
            return Err(ConfigError::new(
                "max_queue_size",
                format!("must be at least 1 and at most {MAX_QUEUE_SIZE}"),
            ));
        }
        if self.max_export_batch_size == 0 || self.max_export_batch_size > self.max_queue_size {
            return Err(ConfigError::new(
                "max_export_batch_size",
                "must be at least 1 and at most max_queue_size",
            ));
        }
        for (field, value) in [
            ("export_interval", self.export_interval),
            ("export_timeout", self.export_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be more than 0"));
            }
        }
        Ok(())
    }
}

/// Rejects a share outside 0..=100.
fn percentage(field: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} is not between 0 and 100"),
        ))
    }
}
