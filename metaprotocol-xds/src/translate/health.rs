//! A cluster's Envoy `health_checks` as the engine's [`HealthCheckSpec`].
//!
//! The engine runs one health check per cluster, so a cluster may carry one. Mapped:
//! `timeout`, `interval` (both required, as in Envoy), `unhealthy_threshold` and
//! `healthy_threshold` (required; 0 counts as 1, as it does in Envoy, where the first result
//! already reaches it), `interval_jitter_percent` and `interval_jitter` (each adds a random part
//! of up to its share of every wait, as in Envoy), `initial_jitter` (the first check of each
//! endpoint waits a random part of it), the intervals that follow what a check found (`unhealthy_interval`,
//! `unhealthy_edge_interval`, `healthy_edge_interval`, `no_traffic_healthy_interval`, each more
//! than 0 when set) and `no_traffic_interval` (Envoy's 60 s when unset: a cluster that has sent
//! no request yet is checked once a minute), and the checker:
//!
//! | checker | the engine's `probe` |
//! |---|---|
//! | `tcp_health_check` without `send` or `receive` (connect only) | `tcp` |
//! | `custom_health_check` `envoy.health_checkers.thrift` | `{ method: method_name }`, a Thrift call, with `require_success` (Envoy's checker expects a successful reply: an exception fails it at once) |
//! | `http_health_check` (HTTP/1.1 `GET`) | `{ http: { path, host, expected_statuses } }` |
//!
//! A Thrift probe goes in framed binary, the encoding the engine's Thrift probe uses for a
//! cluster whose codec leaves it to each request (as every cluster from xDS does), so a
//! checker in another transport or protocol is refused. Whether the cluster's protocol can
//! probe so is checked by the engine, with the routes that use the cluster.
//!
//! An HTTP check's `path` is required; an empty `host` is the cluster's name (the engine's
//! default too); `expected_statuses` (200 alone when empty, as in Envoy) must lie within
//! `[100, 600)`. Its `response_buffer_size` is accepted and ignored (it bounds the `receive`
//! match, which is refused); refused, naming the field: `send`, `receive`,
//! `request_headers_to_add`, `request_headers_to_remove`, `retriable_statuses`,
//! `service_name_matcher`, a `codec_client_type` other than HTTP/1 and a `method` other than
//! `GET`.
//!
//! Accepted and ignored, as they only tune how checks connect or what is logged:
//! `reuse_connection`, and the event logs
//! (`event_log_path`, `event_logger`, `event_service`, `always_log_health_check_*`; the engine
//! logs each change). Refused, naming the field: gRPC and other custom checkers, TCP payloads,
//! `alt_port` (which Envoy does not implement either), `tls_options` and
//! `transport_socket_match_criteria`.

use envoy_types::pb::envoy::config::core::v3::HealthCheck;
use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use envoy_types::pb::envoy::config::core::v3::health_check::custom_health_check::ConfigType;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    CustomHealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck,
};
use envoy_types::pb::envoy::extensions::filters::network::thrift_proxy::v3::{
    ProtocolType, TransportType,
};
use envoy_types::pb::envoy::extensions::health_checkers::thrift::v3::Thrift;
use envoy_types::pb::envoy::r#type::v3::CodecClientType;
use envoy_types::pb::google::protobuf::{Duration as ProtoDuration, UInt32Value};
use metaprotocol_router::config::{HealthCheckSpec, HttpProbeSpec, ProbeSpec, StatusRange};
use prost::{Message, Name};

use super::{InvalidResource, duration, refuse_set};

/// Translates a cluster's `health_checks` (see the module docs): none, or the one the engine
/// runs.
pub(super) fn health_checks(
    checks: &[HealthCheck],
) -> Result<Option<HealthCheckSpec>, InvalidResource> {
    match checks {
        [] => Ok(None),
        [check] => health_check(check).map(Some).map_err(|e| e.within("[0]")),
        [_, ..] => Err(InvalidResource::new(
            "[1]",
            "metaprotocol-rs runs one health check per cluster",
        )),
    }
}

fn health_check(check: &HealthCheck) -> Result<HealthCheckSpec, InvalidResource> {
    refuse_set!(
        "",
        check,
        [alt_port, tls_options, transport_socket_match_criteria]
    );
    let interval = required_duration(&check.interval, "interval")?;
    let timeout = required_duration(&check.timeout, "timeout")?;
    let or_zero = |value: &Option<ProtoDuration>, field: &str| match value {
        Some(value) => duration(value, field),
        None => Ok(std::time::Duration::ZERO),
    };
    let interval_jitter_percent = f64::from(check.interval_jitter_percent);
    if interval_jitter_percent > 100.0 {
        return Err(InvalidResource::new(
            "interval_jitter_percent",
            "is more than 100, the most jitter metaprotocol-rs adds",
        ));
    }
    let optional = |value: &Option<ProtoDuration>, field: &str| {
        value.as_ref().map(|v| positive(v, field)).transpose()
    };
    Ok(HealthCheckSpec {
        interval,
        unhealthy_interval: optional(&check.unhealthy_interval, "unhealthy_interval")?,
        unhealthy_edge_interval: optional(
            &check.unhealthy_edge_interval,
            "unhealthy_edge_interval",
        )?,
        healthy_edge_interval: optional(&check.healthy_edge_interval, "healthy_edge_interval")?,
        no_traffic_interval: Some(
            optional(&check.no_traffic_interval, "no_traffic_interval")?
                .unwrap_or(ENVOY_NO_TRAFFIC_INTERVAL),
        ),
        no_traffic_healthy_interval: optional(
            &check.no_traffic_healthy_interval,
            "no_traffic_healthy_interval",
        )?,
        interval_jitter_percent,
        interval_jitter: or_zero(&check.interval_jitter, "interval_jitter")?,
        initial_jitter: or_zero(&check.initial_jitter, "initial_jitter")?,
        timeout,
        unhealthy_threshold: threshold(&check.unhealthy_threshold, "unhealthy_threshold")?,
        healthy_threshold: threshold(&check.healthy_threshold, "healthy_threshold")?,
        probe: probe(check.health_checker.as_ref())?,
        // Envoy's Thrift checker (the one custom checker mapped) fails on an exception.
        require_success: matches!(
            check.health_checker,
            Some(HealthChecker::CustomHealthCheck(_))
        ),
    })
}

/// How often Envoy checks the endpoints of a cluster that has had no traffic yet, when its
/// `no_traffic_interval` is unset.
const ENVOY_NO_TRAFFIC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A duration Envoy requires, and requires to be more than 0.
fn required_duration(
    value: &Option<ProtoDuration>,
    field: &str,
) -> Result<std::time::Duration, InvalidResource> {
    let value = value
        .as_ref()
        .ok_or_else(|| InvalidResource::new(field, "is required"))?;
    positive(value, field)
}

/// A duration Envoy requires to be more than 0 when set.
fn positive(value: &ProtoDuration, field: &str) -> Result<std::time::Duration, InvalidResource> {
    Some(duration(value, field)?)
        .filter(|value| !value.is_zero())
        .ok_or_else(|| InvalidResource::new(field, "must be greater than 0"))
}

/// A threshold Envoy requires; Envoy's 0 acts as 1, which the engine spells out.
fn threshold(value: &Option<UInt32Value>, field: &str) -> Result<u32, InvalidResource> {
    value
        .as_ref()
        .map(|value| value.value.max(1))
        .ok_or_else(|| InvalidResource::new(field, "is required"))
}

fn probe(checker: Option<&HealthChecker>) -> Result<ProbeSpec, InvalidResource> {
    match checker {
        None => Err(InvalidResource::new("health_checker", "is required")),
        Some(HealthChecker::TcpHealthCheck(tcp)) => tcp_probe(tcp),
        Some(HealthChecker::CustomHealthCheck(custom)) => custom_probe(custom),
        Some(HealthChecker::HttpHealthCheck(http)) => http_probe(http),
        Some(HealthChecker::GrpcHealthCheck(_)) => {
            Err(InvalidResource::unsupported("grpc_health_check"))
        }
    }
}

/// A connect-only TCP check; payloads are refused, as the engine's probes speak the cluster's
/// protocol rather than raw bytes.
fn tcp_probe(tcp: &TcpHealthCheck) -> Result<ProbeSpec, InvalidResource> {
    refuse_set!(
        "tcp_health_check",
        tcp,
        [send, receive, proxy_protocol_config]
    );
    Ok(ProbeSpec::Tcp)
}

/// An HTTP/1.1 `GET` check as the engine's `http` probe (see the module docs).
fn http_probe(http: &HttpHealthCheck) -> Result<ProbeSpec, InvalidResource> {
    let at = "http_health_check";
    refuse_set!(
        at,
        http,
        [
            send,
            receive,
            request_headers_to_add,
            request_headers_to_remove,
            retriable_statuses,
            service_name_matcher,
        ]
    );
    if http.codec_client_type != CodecClientType::Http1 as i32 {
        return Err(InvalidResource::new(
            format!("{at}.codec_client_type"),
            "metaprotocol-rs checks over HTTP/1.1 only",
        ));
    }
    if ![RequestMethod::MethodUnspecified, RequestMethod::Get]
        .map(|m| m as i32)
        .contains(&http.method)
    {
        return Err(InvalidResource::new(
            format!("{at}.method"),
            "metaprotocol-rs checks with GET only",
        ));
    }
    if http.path.is_empty() {
        return Err(InvalidResource::new(format!("{at}.path"), "is required"));
    }
    let mut expected_statuses = Vec::with_capacity(http.expected_statuses.len().max(1));
    for (i, range) in http.expected_statuses.iter().enumerate() {
        let status = |value: i64| {
            u16::try_from(value)
                .ok()
                .filter(|s| (100..=600).contains(s))
        };
        match (status(range.start), status(range.end)) {
            (Some(start), Some(end)) if start < end => {
                expected_statuses.push(StatusRange { start, end });
            }
            _ => {
                return Err(InvalidResource::new(
                    format!("{at}.expected_statuses[{i}]"),
                    "must be a range within [100, 600), its start before its end",
                ));
            }
        }
    }
    if expected_statuses.is_empty() {
        expected_statuses.push(StatusRange {
            start: 200,
            end: 201,
        });
    }
    Ok(ProbeSpec::Http(HttpProbeSpec {
        path: http.path.clone(),
        port: None,
        host: Some(http.host.clone()).filter(|host| !host.is_empty()),
        expected_statuses,
    }))
}

/// Envoy's Thrift checker as a method probe; other custom checkers are refused.
fn custom_probe(custom: &CustomHealthCheck) -> Result<ProbeSpec, InvalidResource> {
    let at = "custom_health_check";
    let Some(ConfigType::TypedConfig(config)) = &custom.config_type else {
        return Err(InvalidResource::new(
            format!("{at}.typed_config"),
            "is required",
        ));
    };
    if config.type_url != Thrift::type_url() {
        return Err(InvalidResource::new(
            format!("{at}.typed_config"),
            format!(
                "`{}` is not supported by metaprotocol-rs (only Envoy's Thrift health checker is)",
                config.type_url
            ),
        ));
    }
    let thrift = Thrift::decode(config.value.as_slice())
        .map_err(|err| InvalidResource::new(format!("{at}.typed_config"), err.to_string()))?;
    if thrift.method_name.is_empty() {
        return Err(InvalidResource::new(
            format!("{at}.typed_config.method_name"),
            "must not be empty",
        ));
    }
    let framed = [TransportType::AutoTransport, TransportType::Framed]
        .map(|t| t as i32)
        .contains(&thrift.transport);
    let binary = [ProtocolType::AutoProtocol, ProtocolType::Binary]
        .map(|p| p as i32)
        .contains(&thrift.protocol);
    for (field, supported) in [("transport", framed), ("protocol", binary)] {
        if !supported {
            return Err(InvalidResource::new(
                format!("{at}.typed_config.{field}"),
                "metaprotocol-rs probes a cluster from xDS in framed binary Thrift only",
            ));
        }
    }
    Ok(ProbeSpec::Method(thrift.method_name))
}
