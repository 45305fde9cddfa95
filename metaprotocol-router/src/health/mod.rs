//! Endpoint health: what takes an endpoint out of rotation and brings it back, besides cluster
//! updates.
//!
//! Two sources write an endpoint's health flags (`cluster/endpoint.rs`), each through
//! [`ClusterHandle::set_health`], all the changes of one round of checks or one detector tick
//! at once, which publishes a new cluster snapshot whose endpoint sets leave the flagged
//! endpoints out (all of them in, when fewer than the cluster's `healthy_panic_threshold`
//! percent are left: panic mode):
//!
//! - [`outlier`] detection watches real traffic: the router records how every attempt ended on
//!   its endpoint, and an endpoint whose failures in a row reach a threshold is ejected for a
//!   time that grows with each ejection, then returns on its own.
//! - [`active`] health checks probe every endpoint on a timer (a TCP connect, the protocol's
//!   own probe request: a Dubbo heartbeat, a Thrift or bRPC method call, or an HTTP `GET` of a
//!   health endpoint, [`http`]), and take an endpoint out after failed checks in a row (at once
//!   when it answers that it is unhealthy), back after passed ones. An endpoint new to the
//!   cluster starts out of rotation, and its first check (run at once) decides.
//!
//! Both run as one task each per cluster ([`HealthMonitor`]), started when the cluster is
//! published and stopped when it is removed or its config for them changes. They hold the
//! cluster weakly: a cluster that is gone ends them too.

mod active;
mod http;
mod outlier;

use std::sync::Arc;

use metaprotocol_core::{CodecFactory, Message, Probe};
use tokio_util::sync::CancellationToken;

pub(crate) use active::first_round;
pub(crate) use outlier::{Ejections, OutlierCounters, OutlierThresholds};

use crate::cluster::ClusterHandle;
use crate::config::{ClusterSpec, ConfigError, HealthCheckSpec, ProbeSpec};

/// The request `check`'s probe sends, built by `codec`: `None` for a TCP or HTTP check (which
/// send none of the protocol's); an error naming the field when the protocol has no such
/// probe.
pub(crate) fn probe_request(
    check: Option<&HealthCheckSpec>,
    codec: &Arc<dyn CodecFactory>,
) -> Result<Option<Arc<Message>>, ConfigError> {
    let probe = match check.map(|c| &c.probe) {
        None | Some(ProbeSpec::Tcp | ProbeSpec::Http(_)) => return Ok(None),
        Some(ProbeSpec::Heartbeat) => Probe::Heartbeat,
        Some(ProbeSpec::Method(method)) => Probe::Method(method),
    };
    match codec.probe_request(probe) {
        Some(request) => Ok(Some(Arc::new(request))),
        None => Err(ConfigError::new(
            "health_check.probe",
            match probe {
                Probe::Heartbeat => format!(
                    "protocol {} has no heartbeat; probe with tcp or {{ method: ... }}",
                    codec.protocol()
                ),
                _ => format!(
                    "protocol {} cannot probe with this method call (Thrift takes a method name, bRPC `service.method`); probe with tcp",
                    codec.protocol()
                ),
            },
        )),
    }
}

/// A cluster's running health work; stops when dropped.
#[derive(Debug)]
pub(crate) struct HealthMonitor {
    stop: CancellationToken,
}

impl HealthMonitor {
    /// Starts what `spec` asks for on `cluster`: outlier detection, active checks sending
    /// `probe` (a TCP connect when `None`) over connections opened as each endpoint's traffic
    /// opens them.
    pub fn start(
        cluster: &Arc<ClusterHandle>,
        spec: &ClusterSpec,
        probe: Option<Arc<Message>>,
    ) -> Self {
        let stop = CancellationToken::new();
        if let Some(policy) = &spec.outlier_detection {
            tokio::spawn(outlier::run(
                Arc::downgrade(cluster),
                policy.clone(),
                stop.clone(),
            ));
        }
        if let Some(check) = &spec.health_check {
            tokio::spawn(active::run(
                Arc::downgrade(cluster),
                check.clone(),
                probe,
                spec.connect_timeout,
                stop.clone(),
            ));
        }
        Self { stop }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
