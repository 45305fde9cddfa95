//! The ADS client: one gRPC stream to the management server at a time, over which it asks for
//! clusters, endpoints and route configs, applies what arrives through
//! [`Proxy::apply_dynamic`], and answers every response with an ACK or a NACK. When the
//! stream fails (or its connection stops answering HTTP/2 pings) it connects again after an
//! exponential, jittered pause; the running config keeps serving meanwhile, and the new stream
//! asks with the versions already accepted. Between responses, and between streams, it serves
//! without endpoints each EDS cluster whose wait for them is up (Envoy's
//! `initial_fetch_timeout`).

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use metaprotocol_router::Proxy;
use metaprotocol_router::config::{ReconnectSpec, XdsApiType, XdsSpec};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use crate::budget;
use crate::delta::{self, DeltaResources, Merged};
use crate::resource::ResourceType;
use crate::state::{Listing, Prepared, Rejected, Subscription};
use crate::status::SourceStatus;
use crate::warn::warn_repeated;
use metaprotocol_router::GrpcTlsConnector;

/// The largest response the client accepts: bounds what a server can make the proxy hold
/// (a thousand routes take a few hundred KiB). What it decodes into is bounded apart (see
/// [`budget`]): the few bytes of an empty element can decode into kilobytes.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The resources of one delta response refused one by one before the response is rejected
/// whole: each refusal translates the response again.
const MAX_REFUSED: usize = 16;

/// Requests queued for the stream: a response yields at most an ACK and an EDS request, and a
/// stream opens with one request per type.
const REQUEST_QUEUE: usize = 8;

/// Runs the client until the proxy shuts down.
pub(crate) async fn run(
    proxy: Proxy,
    spec: XdsSpec,
    tls: Option<GrpcTlsConnector>,
    mut subscription: Subscription,
    status: Arc<SourceStatus>,
) {
    let stopping = proxy.stopping();
    let sessions = async {
        let mut backoff = Backoff::new(spec.reconnect);
        let mut held = DeltaResources::default();
        loop {
            status.connecting();
            let error = session(
                &proxy,
                &spec,
                tls.as_ref(),
                &mut subscription,
                &mut held,
                &status,
                &mut backoff,
            )
            .await;
            tracing::warn!(server = %spec.address, %error, "xDS stream ended; connecting again");
            status.disconnected(&error, &subscription);
            let pause = backoff.next_pause();
            pause_serving_timeouts(&proxy, &mut subscription, &status, pause).await;
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
    /// The connection failed; the message holds the error's causes (tonic's own says only
    /// "transport error").
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
}

impl SessionError {
    /// A failed connection, with every cause of `err`.
    fn connect(err: &tonic::transport::Error) -> Self {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.ends_with(&cause_text) {
                message.push_str(": ");
                message.push_str(&cause_text);
            }
            source = cause.source();
        }
        Self::Connect(message)
    }
}

/// One stream, from connecting to its end.
async fn session(
    proxy: &Proxy,
    spec: &XdsSpec,
    tls: Option<&GrpcTlsConnector>,
    subscription: &mut Subscription,
    held: &mut DeltaResources,
    status: &SourceStatus,
    backoff: &mut Backoff,
) -> SessionError {
    // `http` also with TLS: the TLS connector does the TLS, and tonic refuses `https` without
    // its own.
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{}", spec.address))
    {
        // Without pings, a connection that went dark (the server's host gone, a partition)
        // would hold the stream open, and the client on a stale config, for ever.
        Ok(endpoint) => endpoint
            .connect_timeout(spec.connect_timeout)
            .http2_keep_alive_interval(spec.keepalive.interval)
            .keep_alive_timeout(spec.keepalive.timeout),
        Err(err) => return SessionError::connect(&err),
    };
    let connected = match tls {
        Some(tls) => endpoint.connect_with_connector(tls.clone()).await,
        None => endpoint.connect().await,
    };
    let channel = match connected {
        Ok(channel) => channel,
        Err(err) => return SessionError::connect(&err),
    };
    let client = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let stream = Stream {
        proxy,
        subscription,
        status,
        backoff,
    };
    match spec.api_type {
        XdsApiType::Grpc => stream.exchange(client, StateOfTheWorld).await,
        XdsApiType::DeltaGrpc => stream.exchange(client, Delta(held)).await,
    }
}

/// What a stream works with.
struct Stream<'a> {
    proxy: &'a Proxy,
    subscription: &'a mut Subscription,
    status: &'a SourceStatus,
    backoff: &'a mut Backoff,
}

impl Stream<'_> {
    /// Opens the stream with the subscription's first requests, then answers every response,
    /// until the stream ends.
    async fn exchange<F: Flavour>(self, mut client: AdsClient, mut flavour: F) -> SessionError {
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let initial = flavour.initial(self.subscription.initial_requests());
        if !initial.into_iter().all(|r| requests.try_send(r).is_ok()) {
            // Cannot happen: the queue is empty and holds more than one request per type.
            return SessionError::Closed;
        }
        let mut responses = match F::open(&mut client, ReceiverStream::new(queue)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return status.into(),
        };
        self.status.connected(self.subscription);
        loop {
            let deadline = self.subscription.next_endpoints_deadline();
            let received = tokio::select! {
                received = responses.message() => received,
                () = sleep_until(deadline) => {
                    serve_timed_out(self.proxy, self.subscription, self.status).await;
                    continue;
                }
            };
            let response = match received {
                Ok(Some(response)) => response,
                Ok(None) => return SessionError::Closed,
                Err(status) => return status.into(),
            };
            self.backoff.reset();
            let answers = flavour
                .respond(self.proxy, self.subscription, response)
                .await;
            self.status.updated(self.subscription);
            for answer in answers {
                if requests.send(answer).await.is_err() {
                    return SessionError::Closed;
                }
            }
        }
    }
}

/// A flavour of ADS: its messages, and how its responses are answered.
trait Flavour {
    type Request: Send + 'static;
    type Response: prost::Message + Default + Sync + 'static;

    /// The flavour's form of a stream's first requests.
    fn initial(&self, requests: Vec<DiscoveryRequest>) -> Vec<Self::Request>;

    /// Opens the stream.
    async fn open(
        client: &mut AdsClient,
        requests: ReceiverStream<Self::Request>,
    ) -> Result<tonic::Response<tonic::Streaming<Self::Response>>, tonic::Status>;

    /// Applies `response` and returns the answers to send.
    async fn respond(
        &mut self,
        proxy: &Proxy,
        subscription: &mut Subscription,
        response: Self::Response,
    ) -> Vec<Self::Request>;
}

/// State-of-the-world ADS.
struct StateOfTheWorld;

impl Flavour for StateOfTheWorld {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn initial(&self, requests: Vec<DiscoveryRequest>) -> Vec<DiscoveryRequest> {
        requests
    }

    async fn open(
        client: &mut AdsClient,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> Result<tonic::Response<tonic::Streaming<DiscoveryResponse>>, tonic::Status> {
        ads_stream(
            client,
            requests,
            "StreamAggregatedResources",
            budget::SOTW_RESOURCE_VALUES,
        )
        .await
    }

    async fn respond(
        &mut self,
        proxy: &Proxy,
        subscription: &mut Subscription,
        response: DiscoveryResponse,
    ) -> Vec<DiscoveryRequest> {
        handle(proxy, subscription, &response).await
    }
}

/// Incremental ADS, over the resources held across streams.
struct Delta<'a>(&'a mut DeltaResources);

impl Flavour for Delta<'_> {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn initial(&self, requests: Vec<DiscoveryRequest>) -> Vec<DeltaDiscoveryRequest> {
        self.0.initial_requests(requests)
    }

    async fn open(
        client: &mut AdsClient,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Response<tonic::Streaming<DeltaDiscoveryResponse>>, tonic::Status> {
        ads_stream(
            client,
            requests,
            "DeltaAggregatedResources",
            budget::DELTA_RESOURCE_VALUES,
        )
        .await
    }

    /// Each resource stands alone (as in Envoy): one that does not translate is refused, keeping
    /// what is held of it, and the response is applied without it; the NACK names it.
    async fn respond(
        &mut self,
        proxy: &Proxy,
        subscription: &mut Subscription,
        response: DeltaDiscoveryResponse,
    ) -> Vec<DeltaDiscoveryRequest> {
        let subscribed = subscription.subscribed();
        let Some(kind) = asked_type(subscription, &response.type_url) else {
            return Vec::new();
        };
        // Those not subscribed to are ignored, as Envoy does: neither translated nor held (and
        // offered back when a stream opens); the response is ACKed without them.
        let mut response = response;
        response
            .resources
            .retain(|resource| subscription.wants(kind, &resource.name));
        if let Some(name) = delta::removed_twice(&response) {
            let message = format!(
                "`{name}` is named twice in the {} response's `removed_resources`",
                kind.short_name()
            );
            let rejected = subscription.refuse(kind, &response, name, message);
            let (answers, _) = apply(proxy, subscription, Err(rejected), &[]).await;
            return self.0.answers(answers, &response.type_url, &subscribed);
        }
        let sent: BTreeSet<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
        let mut refused = Vec::new();
        let mut refused_names = BTreeSet::new();
        let (prepared, merged) = loop {
            let (complete, merged) = self.0.merge(&response, &refused_names);
            let versions = merged.as_ref().map(Merged::versions).unwrap_or_default();
            let prepared = subscription.prepare(kind, &complete, Listing::Delta(&versions));
            let refusable = prepared.as_ref().err().and_then(|rejected| {
                rejected
                    .resource
                    .as_ref()
                    .filter(|id| sent.contains(id.name.as_str()))
                    .filter(|id| !refused_names.contains(&id.name))
                    .filter(|_| refused.len() < MAX_REFUSED)
            });
            match (refusable.cloned(), prepared) {
                (Some(id), Err(rejected)) => {
                    warn_repeated!(
                        subscription.refusal_warning(&rejected.message),
                        error = %rejected.message,
                        "xDS resource refused"
                    );
                    refused_names.insert(id.name);
                    refused.push(*rejected);
                }
                (_, prepared) => break (prepared, merged),
            }
        };
        let (answers, accepted) = apply(proxy, subscription, prepared, &refused).await;
        if let (true, Some(merged)) = (accepted, merged) {
            self.0.accept(merged);
        }
        self.0.answers(answers, &response.type_url, &subscribed)
    }
}

/// The ADS client over a channel: tonic's own, as the generated client's codec decodes a
/// response before the client can bound what it decodes into.
type AdsClient = tonic::client::Grpc<tonic::transport::Channel>;

/// The ADS service, as its methods' paths name it.
const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// Opens the ADS stream of `method`, whose responses keep their encoded resources at the
/// field path `resource_values`.
async fn ads_stream<Request, Response>(
    client: &mut AdsClient,
    requests: ReceiverStream<Request>,
    method: &'static str,
    resource_values: &'static [u32],
) -> Result<tonic::Response<tonic::Streaming<Response>>, tonic::Status>
where
    Request: prost::Message + Sync + 'static,
    Response: prost::Message + Default + Sync + 'static,
{
    client
        .ready()
        .await
        .map_err(|err| tonic::Status::unknown(format!("the channel is not ready: {err}")))?;
    let path = PathAndQuery::try_from(format!("/{ADS_SERVICE}/{method}"))
        .map_err(|err| tonic::Status::internal(err.to_string()))?;
    let mut request = tonic::Request::new(requests);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(ADS_SERVICE, method));
    let codec = AdsCodec::<Request, Response> {
        resource_values,
        types: PhantomData,
    };
    client.streaming(request, path, codec).await
}

/// Prost's encoding, but a response is decoded only once [`budget::check`] has bounded what it
/// decodes into; past the bound the stream fails, as it does for a response over
/// [`MAX_RESPONSE_BYTES`].
struct AdsCodec<Request, Response> {
    /// Where a response holds its encoded resources, decoded later and checked then.
    resource_values: &'static [u32],
    types: PhantomData<fn(Request) -> Response>,
}

impl<Request, Response> Codec for AdsCodec<Request, Response>
where
    Request: prost::Message + 'static,
    Response: prost::Message + Default + 'static,
{
    type Encode = Request;
    type Decode = Response;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self { ..*self }
    }

    fn decoder(&mut self) -> Self {
        Self { ..*self }
    }
}

impl<Request: prost::Message, Response> Encoder for AdsCodec<Request, Response> {
    type Item = Request;
    type Error = tonic::Status;

    fn encode(&mut self, item: Request, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        // Cannot fail: tonic's buffer grows as needed.
        item.encode(dst)
            .map_err(|err| tonic::Status::internal(err.to_string()))
    }
}

impl<Request, Response: prost::Message + Default> Decoder for AdsCodec<Request, Response> {
    type Item = Response;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Response>, tonic::Status> {
        use prost::bytes::Buf;
        // The message whole (tonic's buffer is one slice, so no copy).
        let message = src.copy_to_bytes(src.remaining());
        budget::check(
            &message,
            budget::RESPONSE_ELEMENT_BYTES,
            self.resource_values,
        )
        .map_err(|err| {
            tonic::Status::resource_exhausted(format!("an xDS response refused: {err}"))
        })?;
        Response::decode(message)
            .map(Some)
            .map_err(|err| tonic::Status::internal(err.to_string()))
    }
}

/// Applies a state-of-the-world response and returns the answers to send.
async fn handle(
    proxy: &Proxy,
    subscription: &mut Subscription,
    response: &DiscoveryResponse,
) -> Vec<DiscoveryRequest> {
    let Some(kind) = asked_type(subscription, &response.type_url) else {
        return Vec::new();
    };
    let prepared = subscription.prepare(kind, response, Listing::StateOfTheWorld);
    apply(proxy, subscription, prepared, &[]).await.0
}

/// The type of a response of `type_url`, if the stream asked for it. A response of another type
/// is ignored (logged, as a repeated warning of its type: the server sends it again at each
/// push), neither
/// applied nor answered, as Envoy does: applying it would take resources the config does not
/// ask the server for (clusters of a proxy whose clusters are its file's), and an ACK would
/// subscribe to them (for clusters, an ACK naming none asks for every one).
fn asked_type(subscription: &mut Subscription, type_url: &str) -> Option<ResourceType> {
    let kind = ResourceType::from_type_url(type_url).filter(|kind| subscription.asks_for(*kind));
    if kind.is_none() {
        warn_repeated!(
            subscription.unasked_type_warning(type_url),
            %type_url,
            "an xDS response of a type not asked for is ignored"
        );
    }
    kind
}

/// Applies what a response `prepared`, without the resources `refused`; returns the answers
/// to send, and whether it was applied.
async fn apply(
    proxy: &Proxy,
    subscription: &mut Subscription,
    prepared: Result<Prepared, Box<Rejected>>,
    refused: &[Rejected],
) -> (Vec<DiscoveryRequest>, bool) {
    let applied = match prepared {
        // Every resource as held (a control plane sending what it has again, as istiod does at
        // each push): nothing to apply, so no update is made or counted; only the ACK goes.
        Ok(prepared) if prepared.update.is_empty() => {
            Ok(subscription.accept_except(prepared, refused))
        }
        Ok(prepared) => match proxy.apply_dynamic(prepared.update.clone()).await {
            Ok(_) => Ok(subscription.accept_except(prepared, refused)),
            Err(err) => {
                let rejected = Rejected {
                    kind: prepared.kind,
                    version: prepared.version.clone(),
                    resource: None,
                    message: err.to_string(),
                };
                subscription.hold_refused_endpoints(prepared);
                Err(rejected)
            }
        },
        Err(rejected) => Err(*rejected),
    };
    // After the update: what is held of a refused resource, applied again, must not clear its
    // rejection.
    for rejected in refused.iter().chain(applied.as_ref().err()) {
        if let Some(id) = &rejected.resource {
            proxy.reject_dynamic(id, Some(&rejected.version), &rejected.message);
        }
    }
    match applied {
        Ok(answers) => (answers, true),
        Err(rejected) => {
            warn_repeated!(
                subscription.refusal_warning(&rejected.message),
                error = %rejected.message,
                "xDS response rejected"
            );
            (vec![subscription.reject(&rejected)], false)
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Serves without endpoints the EDS clusters whose wait for them is up (Envoy's
/// `initial_fetch_timeout`), so that the route configs using them serve too.
async fn serve_timed_out(proxy: &Proxy, subscription: &mut Subscription, status: &SourceStatus) {
    let Some((update, names)) = subscription.endpoints_timed_out(Instant::now()) else {
        return;
    };
    tracing::warn!(
        clusters = ?names,
        "no endpoints arrived for these EDS clusters within their initial_fetch_timeout; they serve without endpoints until some do"
    );
    match proxy.apply_dynamic(update).await {
        Ok(_) => subscription.serve_without_endpoints(names),
        // Recorded against the clusters; they serve once their endpoints arrive.
        Err(err) => tracing::warn!(%err, "EDS clusters refused without endpoints"),
    }
    status.updated(subscription);
}

/// Waits `pause` between streams, serving meanwhile the EDS clusters whose wait for endpoints
/// is up: a server out of reach leaves them waiting no longer than one in reach that sends none.
async fn pause_serving_timeouts(
    proxy: &Proxy,
    subscription: &mut Subscription,
    status: &SourceStatus,
    pause: Duration,
) {
    // `None`: too far to tell from for ever (the config bounds no interval).
    let end = Instant::now().checked_add(pause);
    while let Some(deadline) = subscription
        .next_endpoints_deadline()
        .filter(|deadline| end.is_none_or(|end| *deadline < end))
    {
        tokio::time::sleep_until(deadline).await;
        serve_timed_out(proxy, subscription, status).await;
    }
    sleep_until(end).await;
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
        self.ceiling = self.ceiling.saturating_mul(2).min(self.spec.max_interval);
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

    /// A subscription to every resource of `kind` (`clusters`, `route_configs`) from a server
    /// never reached, its first requests made.
    fn subscribed_to(kind: &str) -> Subscription {
        let spec = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1:1", "node_id": "n", kind: ["*"]
        }));
        let mut subscription = match spec {
            Ok(spec) => Subscription::new(&spec, Default::default()),
            Err(err) => panic!("{err}"),
        };
        subscription.initial_requests();
        subscription
    }

    /// A server sending a type not asked for sends it again at every push: the warning is
    /// logged once, not once a response.
    #[test]
    fn responses_of_a_type_not_asked_for_are_warned_of_once_not_each() {
        let mut subscription = subscribed_to("route_configs");
        let clusters = ResourceType::Cluster.type_url();
        let (asked, warnings) = crate::warn::tests::warnings_of(|| {
            (0..5)
                .map(|_| asked_type(&mut subscription, &clusters))
                .collect::<Vec<_>>()
        });
        assert_eq!(asked, [None; 5]);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].contains("not asked for") && warnings[0].contains("passed_over=0"),
            "{warnings:#?}"
        );
        let routes = ResourceType::RouteConfig.type_url();
        assert_eq!(
            asked_type(&mut subscription, &routes),
            Some(ResourceType::RouteConfig)
        );
    }

    /// A server flooding one type not asked for does not hold back the first warning of
    /// another: each type's warning is gated on its own.
    #[test]
    fn a_flood_of_one_type_not_asked_for_does_not_silence_another() {
        let mut subscription = subscribed_to("route_configs");
        let clusters = ResourceType::Cluster.type_url();
        let listeners = "type.googleapis.com/envoy.config.listener.v3.Listener";
        let ((), warnings) = crate::warn::tests::warnings_of(|| {
            for _ in 0..5 {
                assert_eq!(asked_type(&mut subscription, &clusters), None);
            }
            for _ in 0..3 {
                assert_eq!(asked_type(&mut subscription, listeners), None);
            }
        });
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(warnings[0].contains(&clusters), "{warnings:#?}");
        assert!(
            warnings[1].contains(listeners) && warnings[1].contains("passed_over=0"),
            "{warnings:#?}"
        );
    }

    /// A control plane that sends a resource the proxy refuses sends it again at each push: the
    /// NACK's warning is logged once, not once a push, and a refusal for another cause at once.
    #[test]
    fn a_refusal_sent_again_at_each_push_is_warned_of_once_and_another_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(err) => panic!("{err}"),
        };
        let (nacks, warnings) =
            crate::warn::tests::warnings_of(|| runtime.block_on(push_refused_clusters()));
        assert_eq!(nacks, 6, "every push is NACKed");
        let rejected: Vec<&String> = warnings
            .iter()
            .filter(|warning| warning.contains("xDS response rejected"))
            .collect();
        assert_eq!(rejected.len(), 2, "{warnings:#?}");
        assert!(
            rejected[0].contains("`c`") && rejected[0].contains("passed_over=0"),
            "{rejected:#?}"
        );
        assert!(
            rejected[1].contains("`d`") && rejected[1].contains("passed_over=0"),
            "{rejected:#?}"
        );
    }

    /// Pushes a cluster the proxy refuses five times, then another, to a proxy of no listeners;
    /// returns how many were NACKed.
    async fn push_refused_clusters() -> usize {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use prost::{Message, Name};

        let proxy = metaprotocol_router::Config::from_yaml("listeners: []")
            .map(Proxy::builder)
            .map(|builder| builder.start());
        let proxy = match proxy {
            Ok(starting) => starting.await,
            Err(err) => panic!("{err}"),
        };
        let proxy = match proxy {
            Ok(proxy) => proxy,
            Err(err) => panic!("{err}"),
        };
        let mut subscription = subscribed_to("clusters");
        let mut nacks = 0;
        let pushes = [
            ("1", "c"),
            ("2", "c"),
            ("3", "c"),
            ("4", "c"),
            ("5", "c"),
            ("6", "d"),
        ];
        for (version, name) in pushes {
            // A load balancing policy the engine does not have.
            let cluster = Cluster {
                name: name.to_owned(),
                lb_policy: 6,
                ..Cluster::default()
            };
            let response = DiscoveryResponse {
                version_info: version.to_owned(),
                resources: vec![envoy_types::pb::google::protobuf::Any {
                    type_url: Cluster::type_url(),
                    value: cluster.encode_to_vec(),
                }],
                type_url: Cluster::type_url(),
                nonce: version.to_owned(),
                ..DiscoveryResponse::default()
            };
            let answers = handle(&proxy, &mut subscription, &response).await;
            nacks += answers.iter().filter(|a| a.error_detail.is_some()).count();
        }
        proxy.shutdown().await;
        nacks
    }

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
        // Intervals of centuries (the config has no upper bound) saturate.
        let huge = Duration::from_secs(u64::MAX / 2 + 1);
        let mut backoff = Backoff::new(ReconnectSpec {
            base_interval: huge,
            max_interval: huge,
        });
        assert!(backoff.next_pause() <= huge);
        assert!(backoff.next_pause() <= huge);
    }
}
