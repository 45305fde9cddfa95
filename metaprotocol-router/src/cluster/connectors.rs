//! How a cluster's endpoints are connected to: with its `tls`, or with the transport of the
//! first of its `transport_socket_matches` an endpoint's own labels match, else of the first
//! its locality's labels match (Envoy's transport socket matches, by which Istio's sidecars
//! speak mutual TLS to the pods that have a sidecar and plain TCP to the others). An endpoint's
//! connector is chosen when its pool is made, so the requests on its connections pay nothing
//! for the choice.
//!
//! Equal TLS settings share one connector, their files read and watched once: that of the
//! cluster's `tls`, or of the first entry with those settings. The series of an entry's
//! connector carry `transport="<its match>"` beside the cluster's labels (escaped so that two
//! matches never give one label), so that two connectors of a cluster never write the same
//! certificate-expiry gauge or reload counters.
//! The match (rather than the entry's place) names them, so that an update that moves an entry
//! keeps its connector, series and connections. An entry whose match repeats an earlier
//! entry's is never chosen (the earlier one always is), and holds the earlier one's connector.

use std::sync::Arc;

use crate::config::{ClusterSpec, ClusterTlsSpec, ConfigError, EndpointSpec};
use crate::stats::MetricsScope;
use crate::transport::{Connector, TlsConnector};

/// The connectors of a cluster: that of its `tls`, and one for each entry of its
/// `transport_socket_matches`, in their order (entries with equal TLS settings holding the
/// same one).
#[derive(Clone, Debug)]
pub(crate) struct Connectors {
    default: Connector,
    matches: Vec<Connector>,
}

/// The settings of a cluster a connector is built for: its `tls`, or the entry of its
/// `transport_socket_matches` at that index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Default,
    Entry(usize),
}

impl Transport {
    /// The settings of cluster `spec` that the connector of `tls` is built for: its `tls` if
    /// equal, else the first entry with those settings that can be chosen; `None` if `spec`
    /// has no such settings.
    fn first_of(spec: &ClusterSpec, tls: &ClusterTlsSpec) -> Option<Self> {
        if spec.tls.as_ref() == Some(tls) {
            return Some(Self::Default);
        }
        (0..spec.transport_socket_matches.len())
            .find(|&i| {
                shadowing(spec, i).is_none()
                    && spec.transport_socket_matches[i].tls.as_ref() == Some(tls)
            })
            .map(Self::Entry)
    }

    /// The value of label `transport` of the series of the connector built for these settings
    /// of `spec`: none for its `tls`; an entry's match, `key=value` pairs joined by `,`, each
    /// `\`, `,` and `=` of a key or value escaped by a `\` so that two matches never give one
    /// label (`{}` for the entry that matches every endpoint, which no pair gives: a pair has
    /// an unescaped `=`).
    fn label(self, spec: &ClusterSpec) -> Option<String> {
        let Self::Entry(i) = self else {
            return None;
        };
        let labels = &spec.transport_socket_matches.get(i)?.labels;
        if labels.is_empty() {
            return Some("{}".to_owned());
        }
        let mut label = String::new();
        for (key, value) in labels {
            if !label.is_empty() {
                label.push(',');
            }
            push_escaped(&mut label, key);
            label.push('=');
            push_escaped(&mut label, value);
        }
        Some(label)
    }
}

/// Appends `text` to `label`, each `\`, `,` and `=` preceded by a `\`.
fn push_escaped(label: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '\\' | ',' | '=') {
            label.push('\\');
        }
        label.push(c);
    }
}

/// The earlier entry of `spec`'s `transport_socket_matches` whose match is that of entry `i`,
/// which is chosen for every endpoint entry `i` would be.
fn shadowing(spec: &ClusterSpec, i: usize) -> Option<usize> {
    let entries = &spec.transport_socket_matches;
    entries[..i]
        .iter()
        .position(|earlier| earlier.labels == entries[i].labels)
}

impl Connectors {
    /// The connectors of cluster `spec`, their TLS series in `scope`. Those of `running` (the
    /// connectors the cluster runs, built from its spec `running_spec`) whose TLS settings are
    /// unchanged, and held for the same match, are kept, so that the endpoints they connect
    /// keep their connections.
    pub fn new(
        spec: &ClusterSpec,
        running: Option<(&ClusterSpec, &Connectors)>,
        scope: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        let connector = |tls: &ClusterTlsSpec, at: Transport| {
            let label = at.label(spec);
            let kept = running.and_then(|(running_spec, running)| {
                let built_for = Transport::first_of(running_spec, tls)?;
                (built_for.label(running_spec) == label)
                    .then(|| running.of(built_for))
                    .flatten()
            });
            if let Some(kept) = kept {
                return Ok(kept.clone());
            }
            let (name, scope, field) = match (at, &label) {
                (Transport::Entry(i), Some(label)) => (
                    format!("{} transport_socket_matches[{i}]", spec.name),
                    scope.with_label("transport", label),
                    format!("transport_socket_matches[{i}].tls"),
                ),
                _ => (spec.name.clone(), scope.clone(), "tls".to_owned()),
            };
            TlsConnector::new(tls, &name, &scope)
                .map(|tls| Connector::Tls(Arc::new(tls)))
                .map_err(|e| e.within(&field))
        };
        let default = match &spec.tls {
            Some(tls) => connector(tls, Transport::Default)?,
            None => Connector::Plain,
        };
        let mut matches: Vec<Connector> = Vec::with_capacity(spec.transport_socket_matches.len());
        for (i, entry) in spec.transport_socket_matches.iter().enumerate() {
            let held = match (shadowing(spec, i), &entry.tls) {
                (Some(earlier), _) => matches[earlier].clone(),
                (None, None) => Connector::Plain,
                (None, Some(tls)) => match Transport::first_of(spec, tls) {
                    Some(Transport::Default) => default.clone(),
                    Some(Transport::Entry(first)) if first < i => matches[first].clone(),
                    _ => connector(tls, Transport::Entry(i))?,
                },
            };
            matches.push(held);
        }
        Ok(Self { default, matches })
    }

    /// The connector held for `at`.
    fn of(&self, at: Transport) -> Option<&Connector> {
        match at {
            Transport::Default => Some(&self.default),
            Transport::Entry(i) => self.matches.get(i),
        }
    }

    /// The connector of `endpoint` in cluster `spec` (which these were built from), in
    /// Envoy's two passes: the first entry of its `transport_socket_matches` whose labels the
    /// endpoint's own `transport_socket_match` has (an entry with an empty match takes an
    /// endpoint without labels), else the first whose labels its
    /// `locality_transport_socket_match` has, else that of its `tls`.
    pub fn of_endpoint(&self, spec: &ClusterSpec, endpoint: &EndpointSpec) -> &Connector {
        endpoint
            .transport_socket_entry(&spec.transport_socket_matches)
            .and_then(|i| self.matches.get(i))
            .unwrap_or(&self.default)
    }
}
