//! The proxy configuration every benchmark measures: one listener, one route that matches the
//! calls on two metadata keys ([`Protocol::route_keys`]), one cluster with the echo server, and
//! the admin listener (metrics are recorded whether or not it is scraped; it is on, as in a
//! deployment).

use std::net::SocketAddr;

use crate::wire::Protocol;

/// The listener's name.
pub const LISTENER: &str = "bench-in";

/// The observability cases the benches compare, as listener fields for [`proxy_config_with`]:
/// metrics (always on), then an access log (JSON to `/dev/null`: the capture, the queue, the
/// formatting and the write, not a disk), tracing (every call sampled, exported to `collector`,
/// e.g. a [`crate::collector::NullCollector`]) and both. `queue` sets the access log's and the
/// span exporter's queue sizes (default: the config's defaults).
pub fn observability_cases(collector: &str, queue: Option<usize>) -> [(&'static str, String); 4] {
    let (log_queue, span_queue) = match queue {
        Some(queue) => (
            format!(", queue_size: {queue}"),
            format!(", max_queue_size: {queue}"),
        ),
        None => (String::new(), String::new()),
    };
    let access_log = format!("access_log: {{ path: /dev/null, format: json{log_queue} }}");
    let tracing =
        format!("tracing: {{ otlp_endpoint: \"{collector}\", sampling: 100{span_queue} }}");
    [
        ("metrics", String::new()),
        ("access_log", access_log.clone()),
        ("tracing", tracing.clone()),
        ("access_log_and_tracing", format!("{access_log}, {tracing}")),
    ]
}

/// The YAML config of a `protocol` proxy listening on `listen`, routing to `upstream`, with its
/// admin API on `admin`.
pub fn proxy_config(
    protocol: Protocol,
    listen: SocketAddr,
    upstream: SocketAddr,
    admin: SocketAddr,
) -> String {
    proxy_config_with(protocol, listen, upstream, admin, "")
}

/// [`proxy_config`] with more listener fields: `listener_fields` (`access_log: {...}`, ...)
/// goes inside the listener's flow map.
pub fn proxy_config_with(
    protocol: Protocol,
    listen: SocketAddr,
    upstream: SocketAddr,
    admin: SocketAddr,
    listener_fields: &str,
) -> String {
    let [(key1, value1), (key2, value2)] = protocol.route_keys();
    let more = if listener_fields.is_empty() {
        String::new()
    } else {
        format!(", {listener_fields}")
    };
    format!(
        "\
admin: {{ address: \"{admin}\" }}
listeners:
  - {{ name: {LISTENER}, address: \"{listen}\", protocol: {protocol}, route_config: bench-routes{more} }}
route_configs:
  - name: bench-routes
    routes:
      - name: echo
        match:
          metadata:
            - {{ key: {key1}, exact: \"{value1}\" }}
            - {{ key: {key2}, exact: \"{value2}\" }}
        route: {{ cluster: echo }}
clusters:
  - name: echo
    endpoints: [ {{ address: \"{upstream}\" }} ]
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_valid_for_every_protocol() -> Result<(), Box<dyn std::error::Error>> {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        for protocol in Protocol::ALL {
            let text = proxy_config(protocol, at(1), at(2), at(3));
            let config = metaprotocol_router::Config::from_yaml(&text)?;
            assert_eq!(config.listeners[0].protocol, protocol.name());
            assert_eq!(config.route_configs[0].routes.len(), 1);
        }
        Ok(())
    }

    #[test]
    fn every_observability_case_is_valid() -> Result<(), Box<dyn std::error::Error>> {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        for queue in [None, Some(100_000)] {
            for (name, fields) in observability_cases("http://127.0.0.1:4317", queue) {
                let text = proxy_config_with(Protocol::Dubbo, at(1), at(2), at(3), &fields);
                let config = metaprotocol_router::Config::from_yaml(&text)?;
                let listener = &config.listeners[0];
                assert_eq!(listener.access_log.is_some(), name.contains("access_log"));
                assert_eq!(listener.tracing.is_some(), name.contains("tracing"));
                if let (Some(queue), Some(log)) = (queue, &listener.access_log) {
                    assert_eq!(log.queue_size, queue);
                }
            }
        }
        Ok(())
    }
}
