//! What the built-in filters' unit tests share: a filter built from a JSON config, and a
//! request (metadata, client address, TLS identity) to run it on.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use metaprotocol_core::{
    ByteStr, ConnectionInfo, FilterChain, FilterDecision, L7Filter, LocalReply, Message,
    MessageKind, Mutation, PeerIdentity, RequestContext, RequestRecord,
};

use super::{FilterContext, FilterRegistry};
use crate::config::ConfigError;
use crate::stats::Metrics;

/// Builds the built-in filter `name` from `config` on listener `in`; its series go to
/// `metrics`.
pub(crate) fn build(
    name: &str,
    config: serde_json::Value,
    metrics: &Metrics,
) -> Result<Arc<dyn L7Filter>, ConfigError> {
    build_in(
        name,
        config,
        &FilterContext::standalone("in", name, metrics),
    )
}

/// Builds the built-in filter `name` from `config` with `context`.
pub(crate) fn build_in(
    name: &str,
    config: serde_json::Value,
    context: &FilterContext,
) -> Result<Arc<dyn L7Filter>, ConfigError> {
    FilterRegistry::with_builtins().build(name, &config, context)
}

/// The error a config is rejected with.
pub(crate) fn rejection(name: &str, config: serde_json::Value) -> ConfigError {
    match build(name, config, &Metrics::new()) {
        Ok(_) => ConfigError::new("<none>", "accepted"),
        Err(err) => err,
    }
}

/// Asserts that filter `name` rejects each `(config, field, reason)`, naming `field` (within
/// `config`) for a reason that contains `reason`.
pub(crate) fn assert_rejected(name: &str, cases: Vec<(serde_json::Value, &str, &str)>) {
    for (config, field, reason) in cases {
        let err = rejection(name, config);
        let expected = match field {
            "" => "config".to_owned(),
            field => format!("config.{field}"),
        };
        assert_eq!(err.field, expected, "{err}");
        assert!(err.reason.contains(reason), "{err}");
    }
}

/// A request as a filter sees it.
pub(crate) struct TestRequest {
    message: Message,
    connection: ConnectionInfo,
}

impl TestRequest {
    /// A two-way request with `metadata`, from 127.0.0.1 over plain TCP.
    pub fn new(metadata: &[(&str, &str)]) -> Self {
        let mut message = Message::new(MessageKind::Request, 1, Bytes::new());
        for (key, value) in metadata {
            message
                .metadata
                .insert(ByteStr::copy_from_str(key), ByteStr::copy_from_str(value));
        }
        let address = SocketAddr::from(([127, 0, 0, 1], 40000));
        Self {
            message,
            connection: ConnectionInfo::new("in".into(), address, address),
        }
    }

    /// The same request from `address`.
    pub fn from(mut self, address: &str) -> Self {
        if let Ok(ip) = address.parse() {
            self.connection.peer_addr = SocketAddr::new(ip, 40000);
        }
        self
    }

    /// The same request from a TLS client whose certificate has URI SAN `uri`.
    pub fn with_principal(mut self, uri: &str) -> Self {
        self.connection.peer_identity = Some(Arc::new(PeerIdentity {
            uri_sans: vec![uri.to_owned()],
            ..PeerIdentity::default()
        }));
        self
    }

    /// Runs `filter`'s request hook on a fresh record of the request; returns its decision and
    /// the record.
    pub fn run(&self, filter: &dyn L7Filter) -> (FilterDecision, RequestRecord) {
        let mut record = RequestRecord::new(Arc::new(self.connection.clone()), 0);
        let decision = filter.on_request(&mut RequestContext {
            request: &self.message,
            mutation: &mut Mutation::new(),
            record: &mut record,
        });
        (decision, record)
    }

    /// Runs the request hooks of `filters` in turn on one record of the request, up to the
    /// first that does not let it go on; returns the record.
    pub fn run_each(&self, filters: &[&dyn L7Filter]) -> RequestRecord {
        let mut record = RequestRecord::new(Arc::new(self.connection.clone()), 0);
        for filter in filters {
            let decision = filter.on_request(&mut RequestContext {
                request: &self.message,
                mutation: &mut Mutation::new(),
                record: &mut record,
            });
            if !matches!(decision, FilterDecision::Continue) {
                break;
            }
        }
        record
    }

    /// Runs `chain`'s request hooks to the end, awaiting waits.
    pub async fn run_chain(&self, chain: &FilterChain) -> Result<(), LocalReply> {
        let mut record = RequestRecord::new(Arc::new(self.connection.clone()), 0);
        chain
            .on_request(&mut RequestContext {
                request: &self.message,
                mutation: &mut Mutation::new(),
                record: &mut record,
            })
            .await
    }

    /// The decision alone.
    pub fn decide(&self, filter: &dyn L7Filter) -> FilterDecision {
        self.run(filter).0
    }
}

/// The value of the series whose exposition line starts with `series` (`name{labels}`).
pub(crate) fn value(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}
