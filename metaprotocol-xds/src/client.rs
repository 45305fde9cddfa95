//! The ADS client: one gRPC stream to the management server at a time, over which it asks for
//! clusters, endpoints and route configs, applies what arrives through
//! [`Proxy::apply_dynamic`], and answers every response with an ACK or a NACK. When the
//! stream fails it connects again after an exponential, jittered pause; the running config
//! keeps serving meanwhile, and the new stream asks with the versions already accepted.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use metaprotocol_router::Proxy;
use metaprotocol_router::config::{ReconnectSpec, XdsSpec};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::state::Subscription;
use crate::status::SourceStatus;

/// The largest response the client accepts: bounds what a server can make the proxy hold
/// (a thousand routes take a few hundred KiB).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Requests queued for the stream: a response yields at most an ACK and an EDS request.
const REQUEST_QUEUE: usize = 8;

/// Runs the client until the proxy shuts down.
pub(crate) async fn run(
    proxy: Proxy,
    spec: XdsSpec,
    mut subscription: Subscription,
    status: Arc<SourceStatus>,
) {
    let stopping = proxy.stopping();
    let sessions = async {
        let mut backoff = Backoff::new(spec.reconnect);
        loop {
            status.connecting();
            let error = session(&proxy, &spec, &mut subscription, &status, &mut backoff).await;
            tracing::warn!(server = %spec.address, %error, "xDS stream ended; connecting again");
            status.disconnected(&error, &subscription);
            tokio::time::sleep(backoff.next_pause()).await;
        }
    };
    tokio::select! {
        () = stopping => {}
        () = sessions => {}
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
}

/// One stream, from connecting to its end.
async fn session(
    proxy: &Proxy,
    spec: &XdsSpec,
    subscription: &mut Subscription,
    status: &SourceStatus,
    backoff: &mut Backoff,
) -> SessionError {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{}", spec.address))
    {
        Ok(endpoint) => endpoint.connect_timeout(spec.connect_timeout),
        Err(err) => return err.into(),
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(err) => return err.into(),
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let (requests, queue) = mpsc::channel::<DiscoveryRequest>(REQUEST_QUEUE);
    for request in subscription.initial_requests() {
        // The queue is empty and larger than the initial requests: this cannot wait.
        if requests.try_send(request).is_err() {
            return SessionError::Closed;
        }
    }
    let mut responses = match client
        .stream_aggregated_resources(ReceiverStream::new(queue))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return status.into(),
    };
    status.connected(subscription);
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return SessionError::Closed,
            Err(status) => return status.into(),
        };
        backoff.reset();
        let answers = match subscription.prepare(&response) {
            Ok(prepared) => match proxy.apply_dynamic(prepared.update.clone()).await {
                Ok(_) => subscription.accept(prepared),
                Err(err) => {
                    let rejected = crate::state::Rejected {
                        kind: prepared.kind,
                        version: prepared.version,
                        resource: None,
                        message: err.to_string(),
                    };
                    vec![subscription.reject(&rejected)]
                }
            },
            Err(rejected) => {
                if let Some(id) = &rejected.resource {
                    proxy.reject_dynamic(id, Some(&rejected.version), &rejected.message);
                }
                tracing::warn!(error = %rejected.message, "xDS response rejected");
                vec![subscription.reject(&rejected)]
            }
        };
        status.updated(subscription);
        for answer in answers {
            if requests.send(answer).await.is_err() {
                return SessionError::Closed;
            }
        }
    }
}

/// Exponential back-off with full jitter: each pause is random below a ceiling that doubles
/// from `base_interval` up to `max_interval`, and drops back once a response arrives.
#[derive(Debug)]
pub(crate) struct Backoff {
    spec: ReconnectSpec,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(spec: ReconnectSpec) -> Self {
        Self {
            spec,
            ceiling: spec.base_interval,
        }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.ceiling.mul_f64(fastrand::f64());
        self.ceiling = (self.ceiling * 2).min(self.spec.max_interval);
        pause.max(Duration::from_millis(1))
    }

    /// A stream worked: the next failure starts from the base again.
    pub fn reset(&mut self) {
        self.ceiling = self.spec.base_interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_ceiling_and_drop_back_after_a_response() {
        let spec = ReconnectSpec {
            base_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(400),
        };
        let mut backoff = Backoff::new(spec);
        let ceilings: Vec<Duration> = (0..4)
            .map(|_| {
                let ceiling = backoff.ceiling;
                assert!(backoff.next_pause() <= ceiling);
                ceiling
            })
            .collect();
        let ms = Duration::from_millis;
        assert_eq!(ceilings, [ms(100), ms(200), ms(400), ms(400)]);
        backoff.reset();
        assert_eq!(backoff.ceiling, ms(100));
    }
}
