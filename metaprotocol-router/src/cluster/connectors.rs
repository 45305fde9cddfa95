//! How a cluster's endpoints are connected to: with its `tls`, or with the transport of the
//! first of its `transport_socket_matches` an endpoint's labels match (Envoy's transport socket
//! matches, by which Istio's sidecars speak mutual TLS to the pods that have a sidecar and
//! plain TCP to the others). An endpoint's connector is chosen when its pool is made, so the
//! requests on its connections pay nothing for the choice.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ClusterSpec, ClusterTlsSpec, ConfigError};
use crate::stats::MetricsScope;
use crate::transport::{Connector, TlsConnector};

/// The connectors of a cluster: that of its `tls`, and one for each entry of its
/// `transport_socket_matches`, in their order.
#[derive(Clone, Debug)]
pub(crate) struct Connectors {
    default: Connector,
    matches: Vec<Connector>,
}

impl Connectors {
    /// The connectors of cluster `spec`, their TLS series in `scope`. Those of `running` (the
    /// connectors the cluster runs, built from its spec `running_spec`) whose TLS settings are
    /// unchanged are kept, so that the endpoints they connect keep their connections.
    pub fn new(
        spec: &ClusterSpec,
        running: Option<(&ClusterSpec, &Connectors)>,
        scope: &MetricsScope,
    ) -> Result<Self, ConfigError> {
        let connector = |tls: Option<&ClusterTlsSpec>, field: &str| {
            let kept =
                running.and_then(|(running_spec, running)| running.built_from(running_spec, tls));
            match (kept, tls) {
                (Some(kept), _) => Ok(kept.clone()),
                (None, None) => Ok(Connector::Plain),
                (None, Some(tls)) => TlsConnector::new(tls, &spec.name, scope)
                    .map(|tls| Connector::Tls(Arc::new(tls)))
                    .map_err(|e| e.within(field)),
            }
        };
        let default = connector(spec.tls.as_ref(), "tls")?;
        let matches = spec
            .transport_socket_matches
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                connector(
                    entry.tls.as_ref(),
                    &format!("transport_socket_matches[{i}].tls"),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { default, matches })
    }

    /// The connector of these (built from `spec`) that was built from `tls`, if any.
    fn built_from(&self, spec: &ClusterSpec, tls: Option<&ClusterTlsSpec>) -> Option<&Connector> {
        std::iter::once((spec.tls.as_ref(), &self.default))
            .chain(
                spec.transport_socket_matches
                    .iter()
                    .map(|entry| entry.tls.as_ref())
                    .zip(&self.matches),
            )
            .find(|(built_from, _)| *built_from == tls)
            .map(|(_, connector)| connector)
    }

    /// The connector of an endpoint with the `transport_socket_match` labels `labels`, in
    /// cluster `spec` (which these were built from): the first entry of its
    /// `transport_socket_matches` whose labels it has, else that of its `tls`.
    pub fn of_endpoint(&self, spec: &ClusterSpec, labels: &BTreeMap<String, String>) -> &Connector {
        spec.transport_socket_matches
            .iter()
            .zip(&self.matches)
            .find(|(entry, _)| entry.matches(labels))
            .map_or(&self.default, |(_, connector)| connector)
    }
}
