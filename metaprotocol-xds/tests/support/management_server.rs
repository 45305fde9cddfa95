//! A small ADS management server, for tests and local use (a test tool, not a product): a
//! snapshot cache keyed by node id, served over state-of-the-world and delta ADS on a real gRPC
//! socket.
//!
//! Each node's snapshot holds, per resource type, a version and the resources. A stream sends
//! a type's resources when the client first asks for it (or asks for other names), and again
//! whenever that type's snapshot is set, even to the same version and resources (as istiod
//! pushes every type on every push); it does not send again in answer to an ACK or a NACK. A
//! delta stream sends only the resources whose version the client does not hold, unless told
//! to send them all at each push ([`ManagementServer::resend_unchanged`]). Every request received is recorded, so that tests can see ACKs, NACKs and
//! their error details, and the versions a reconnecting client asks with.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// A resource for a snapshot: its name and the encoded message.
pub fn resource<M: prost::Message + prost::Name>(name: &str, message: &M) -> (String, Any) {
    (name.to_owned(), super::fixtures::packed(message))
}

/// One type's resources at one version.
#[derive(Debug, Clone, Default)]
struct TypeSnapshot {
    version: String,
    resources: Vec<(String, Any)>,
    /// The resources that kept the version they had in an earlier snapshot (unchanged, when
    /// the server versions each resource by its content).
    kept_versions: HashMap<String, String>,
    /// Which push set it, counting over the server's life: each is sent again.
    push: u64,
}

impl TypeSnapshot {
    /// The version of resource `name`, as a delta stream sends it.
    fn version_of(&self, name: &str) -> &String {
        self.kept_versions.get(name).unwrap_or(&self.version)
    }
}

/// A request the server received.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// The node id of the stream it came on.
    pub node: String,
    pub type_url: String,
    /// The version the client runs: a state-of-the-world request's `version_info`, or the
    /// distinct `initial_resource_versions` of a delta stream's first request, joined by `,`.
    pub version_info: String,
    pub response_nonce: String,
    pub resource_names: Vec<String>,
    /// The NACK's error message, if it is one.
    pub error: Option<String>,
    /// Which stream it came on, counting from 1 over the server's life.
    pub stream: u64,
}

/// A change made to every delta response before it is sent, as a faulty server would.
type DeltaAlteration = Arc<dyn Fn(&mut DeltaDiscoveryResponse) + Send + Sync>;

#[derive(Default)]
struct Cache {
    /// Snapshots by node id, then by type URL.
    snapshots: HashMap<String, BTreeMap<String, TypeSnapshot>>,
    received: Vec<Received>,
    streams: u64,
    /// A resource set again unchanged keeps its version, as control planes that version each
    /// resource by a hash of its content do: a delta stream is sent only what changed.
    versions_by_content: bool,
    /// Snapshots set so far.
    pushes: u64,
    /// A delta stream sends every resource of a type at each push, those the client holds at
    /// their version too, as a server that keeps no account of what the client holds does.
    resend_unchanged: bool,
    /// Types every stream is sent, as if it had asked for all of them, though it did not.
    unasked: Vec<String>,
    /// Types whose every resource a stream is sent whatever names it asked for, as a server
    /// that answers a request with what an earlier one asked for (or ignores names) does.
    names_ignored: Vec<String>,
    /// Made to every delta response before it is sent.
    alter_delta: Option<DeltaAlteration>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("received", &self.received)
            .field("streams", &self.streams)
            .field("unasked", &self.unasked)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Shared {
    cache: Mutex<Cache>,
    /// Bumped on every snapshot change, waking the streams.
    changes: watch::Sender<u64>,
    /// Bumped when a socket stops serving: its streams end.
    stops: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        match self.cache.lock() {
            Ok(cache) => cache,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts a new stream; returns its number.
    fn new_stream(&self) -> u64 {
        let mut cache = self.lock();
        cache.streams += 1;
        cache.streams
    }

    /// `node`'s snapshot of `type_url`, if it has one.
    fn snapshot(&self, node: &str, type_url: &str) -> Option<TypeSnapshot> {
        self.lock().snapshots.get(node)?.get(type_url).cloned()
    }
}

/// The server: a snapshot cache and the gRPC service over it.
#[derive(Debug, Clone)]
pub struct ManagementServer {
    shared: Arc<Shared>,
}

/// A running server socket; dropping it (or [`Serving::stop`]) closes every stream at once, as
/// a crashed or restarted server would.
#[derive(Debug)]
pub struct Serving {
    address: SocketAddr,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Serving {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving; returns once the listener is closed, so that its address can be served
    /// again (the aborted task is dropped by whichever worker runs it next, which on a loaded
    /// machine may take a while).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.stops.send_modify(|stops| *stops += 1);
    }
}

impl ManagementServer {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                cache: Mutex::new(Cache::default()),
                changes: watch::channel(0).0,
                stops: watch::channel(0).0,
            }),
        }
    }

    /// Versions each resource by its content from now on (see `Cache::versions_by_content`).
    pub fn version_by_content(&self) {
        self.shared.lock().versions_by_content = true;
    }

    /// Sends delta streams every resource at each push (see `Cache::resend_unchanged`).
    pub fn resend_unchanged(&self) {
        self.shared.lock().resend_unchanged = true;
    }

    /// Sends every stream the resources of `type_url` from now on, whether it asked for them or
    /// not, as a faulty server would.
    pub fn send_unasked(&self, type_url: &str) {
        self.shared.lock().unasked.push(type_url.to_owned());
    }

    /// Sends every stream all the resources of `type_url` from now on, whatever names it asked
    /// for (those it unsubscribed from too), as a faulty or lagging server would.
    pub fn ignore_names(&self, type_url: &str) {
        self.shared.lock().names_ignored.push(type_url.to_owned());
    }

    /// Applies `alter` to every delta response before it is sent, from now on.
    pub fn alter_delta_responses(
        &self,
        alter: impl Fn(&mut DeltaDiscoveryResponse) + Send + Sync + 'static,
    ) {
        self.shared.lock().alter_delta = Some(Arc::new(alter));
    }

    /// Serves on `address` (port 0 picks one).
    pub async fn serve(&self, address: SocketAddr) -> std::io::Result<Serving> {
        self.serve_with(address, tonic::transport::Server::builder())
            .await
    }

    /// Serves over TLS on `address` with the certificate and key in `cert_file` and `key_file`
    /// (PEM); with `client_ca_file`, clients must present a certificate it signs (mutual TLS).
    pub async fn serve_tls(
        &self,
        address: SocketAddr,
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
    ) -> Result<Serving, Box<dyn std::error::Error + Send + Sync>> {
        let identity = Identity::from_pem(std::fs::read(cert_file)?, std::fs::read(key_file)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = client_ca_file {
            tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
        }
        let builder = tonic::transport::Server::builder().tls_config(tls)?;
        Ok(self.serve_with(address, builder).await?)
    }

    async fn serve_with(
        &self,
        address: SocketAddr,
        mut builder: tonic::transport::Server,
    ) -> std::io::Result<Serving> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let service = AggregatedDiscoveryServiceServer::new(self.clone());
        let task = tokio::spawn(async move {
            let served = builder
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(err) = served {
                eprintln!("management server: {err}");
            }
        });
        Ok(Serving {
            address,
            task,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Sets `node`'s resources of `type_url` to `resources` at `version`; streams of that node
    /// subscribed to the type are sent them (again, if they were set already).
    pub fn set(&self, node: &str, type_url: &str, version: &str, resources: Vec<(String, Any)>) {
        {
            let mut cache = self.shared.lock();
            cache.pushes += 1;
            let push = cache.pushes;
            let by_content = cache.versions_by_content;
            let types = cache.snapshots.entry(node.to_owned()).or_default();
            let mut kept_versions = HashMap::new();
            if let (true, Some(earlier)) = (by_content, types.get(type_url)) {
                let before: HashMap<&String, &Any> =
                    earlier.resources.iter().map(|(n, a)| (n, a)).collect();
                for (name, any) in &resources {
                    if before.get(name) == Some(&any) {
                        kept_versions.insert(name.clone(), earlier.version_of(name).clone());
                    }
                }
            }
            types.insert(
                type_url.to_owned(),
                TypeSnapshot {
                    version: version.to_owned(),
                    resources,
                    kept_versions,
                    push,
                },
            );
        }
        self.shared
            .changes
            .send_modify(|generation| *generation += 1);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Waits up to `within` for a request that satisfies `test`, and returns it.
    pub async fn wait_for(
        &self,
        within: Duration,
        test: impl Fn(&Received) -> bool,
    ) -> Result<Received, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(found) = self.received().into_iter().find(|r| test(r)) {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no such request within {within:?}; received: {:#?}",
                    self.received()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What a stream reacts to: the client's requests and changes of the snapshots.
struct Events<T> {
    shared: Arc<Shared>,
    id: u64,
    /// The stream's node id, from its first request.
    node: String,
    incoming: Streaming<T>,
    changes: watch::Receiver<u64>,
    stops: watch::Receiver<u64>,
}

impl<T> Events<T> {
    fn new(shared: Arc<Shared>, id: u64, incoming: Streaming<T>) -> Self {
        Self {
            changes: shared.changes.subscribe(),
            stops: shared.stops.subscribe(),
            shared,
            id,
            node: String::new(),
            incoming,
        }
    }

    /// A request (`Some(Some(_))`), a snapshot change (`Some(None)`), or the stream's end
    /// (`None`: the client went away or the socket stopped serving).
    async fn next(&mut self) -> Option<Option<T>> {
        tokio::select! {
            request = self.incoming.message() => request.ok().flatten().map(Some),
            changed = self.changes.changed() => changed.ok().map(|()| None),
            _ = self.stops.changed() => None,
        }
    }

    /// Records a request of the stream, learning the node id from the first.
    fn record(&mut self, node: Option<&Node>, received: Received) {
        if let Some(node) = node {
            self.node.clone_from(&node.id);
        }
        self.shared.lock().received.push(Received {
            node: self.node.clone(),
            stream: self.id,
            ..received
        });
    }
}

/// What one stream has sent of one type.
#[derive(Debug, Default)]
struct Sent {
    names: Vec<String>,
    /// The push last sent.
    push: Option<u64>,
}

/// True if a state-of-the-world request for `type_url` naming `names` asks for every resource,
/// as the xDS protocol has it: `*` among the names, or (the legacy form) no names at all, for
/// listeners and clusters only; no names for another type asks for none.
fn is_wildcard(type_url: &str, names: &[String]) -> bool {
    const LEGACY_WILDCARD: [&str; 2] = [
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
    ];
    names.iter().any(|n| n == "*") || (names.is_empty() && LEGACY_WILDCARD.contains(&type_url))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ManagementServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let incoming = request.into_inner();
        let (responses, stream) = mpsc::channel(16);
        let shared = Arc::clone(&self.shared);
        let id = shared.new_stream();
        tokio::spawn(serve_stream(shared, id, incoming, responses));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let incoming = request.into_inner();
        let (responses, stream) = mpsc::channel(16);
        let shared = Arc::clone(&self.shared);
        let id = shared.new_stream();
        tokio::spawn(serve_delta_stream(shared, id, incoming, responses));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Serves one stream until the client goes away.
async fn serve_stream(
    shared: Arc<Shared>,
    id: u64,
    incoming: Streaming<DiscoveryRequest>,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut events = Events::new(Arc::clone(&shared), id, incoming);
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut nonce = 0u64;
    while let Some(event) = events.next().await {
        if let Some(request) = event {
            events.record(
                request.node.as_ref(),
                Received {
                    type_url: request.type_url.clone(),
                    version_info: request.version_info.clone(),
                    response_nonce: request.response_nonce.clone(),
                    resource_names: request.resource_names.clone(),
                    error: request.error_detail.as_ref().map(|s| s.message.clone()),
                    ..Received::default()
                },
            );
            let entry = sent.entry(request.type_url.clone()).or_default();
            // A first request, or one asking for other names, is answered; an ACK or NACK of
            // what was sent is not.
            if request.response_nonce.is_empty() || entry.names != request.resource_names {
                entry.names = request.resource_names.clone();
                entry.push = None;
            }
        }
        let due: Vec<(String, TypeSnapshot)> = {
            let cache = shared.lock();
            for type_url in &cache.unasked {
                sent.entry(type_url.clone()).or_insert_with(|| Sent {
                    names: vec!["*".to_owned()],
                    push: None,
                });
            }
            let Some(types) = cache.snapshots.get(&events.node) else {
                continue;
            };
            sent.iter()
                .filter_map(|(type_url, s)| {
                    let snapshot = types.get(type_url)?;
                    (s.push != Some(snapshot.push)).then(|| (type_url.clone(), snapshot.clone()))
                })
                .collect()
        };
        let names_ignored = shared.lock().names_ignored.clone();
        for (type_url, snapshot) in due {
            let Some(entry) = sent.get_mut(&type_url) else {
                continue;
            };
            nonce += 1;
            let wildcard =
                is_wildcard(&type_url, &entry.names) || names_ignored.contains(&type_url);
            let resources = snapshot
                .resources
                .iter()
                .filter(|(name, _)| wildcard || entry.names.contains(name))
                .map(|(_, any)| any.clone())
                .collect();
            entry.push = Some(snapshot.push);
            let response = DiscoveryResponse {
                version_info: snapshot.version,
                resources,
                type_url,
                nonce: nonce.to_string(),
                ..DiscoveryResponse::default()
            };
            if responses.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}

/// What one delta stream subscribes to of one type, and the versions it holds.
#[derive(Debug, Default)]
struct DeltaSubscription {
    wildcard: bool,
    names: std::collections::BTreeSet<String>,
    held: BTreeMap<String, String>,
    /// The push last sent.
    push: Option<u64>,
}

/// Serves one delta stream until the client goes away: resources whose version the client
/// does not hold are sent, and those it holds that the snapshot no longer has are removed.
async fn serve_delta_stream(
    shared: Arc<Shared>,
    id: u64,
    incoming: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut events = Events::new(Arc::clone(&shared), id, incoming);
    let mut subscriptions: BTreeMap<String, DeltaSubscription> = BTreeMap::new();
    let mut nonce = 0u64;
    while let Some(event) = events.next().await {
        if let Some(request) = event {
            let held: std::collections::BTreeSet<&String> =
                request.initial_resource_versions.values().collect();
            events.record(
                request.node.as_ref(),
                Received {
                    type_url: request.type_url.clone(),
                    version_info: held.into_iter().cloned().collect::<Vec<_>>().join(","),
                    response_nonce: request.response_nonce.clone(),
                    resource_names: request.resource_names_subscribe.clone(),
                    error: request.error_detail.as_ref().map(|s| s.message.clone()),
                    ..Received::default()
                },
            );
            let entry = subscriptions.entry(request.type_url.clone()).or_default();
            for name in &request.resource_names_subscribe {
                if name == "*" {
                    entry.wildcard = true;
                } else {
                    entry.names.insert(name.clone());
                }
            }
            for name in &request.resource_names_unsubscribe {
                entry.names.remove(name);
                entry.held.remove(name);
            }
            if request.response_nonce.is_empty() {
                entry.held.extend(request.initial_resource_versions.clone());
            }
        }
        let (unasked, alter, names_ignored) = {
            let cache = shared.lock();
            (
                cache.unasked.clone(),
                cache.alter_delta.clone(),
                cache.names_ignored.clone(),
            )
        };
        for type_url in unasked {
            subscriptions
                .entry(type_url)
                .or_insert_with(|| DeltaSubscription {
                    wildcard: true,
                    ..DeltaSubscription::default()
                });
        }
        for (type_url, subscription) in &mut subscriptions {
            let Some(snapshot) = shared.snapshot(&events.node, type_url) else {
                continue;
            };
            let resend = shared.lock().resend_unchanged && subscription.push != Some(snapshot.push);
            subscription.push = Some(snapshot.push);
            let ignored = names_ignored.contains(type_url);
            let wanted = |name: &String| {
                ignored || subscription.wildcard || subscription.names.contains(name)
            };
            let resources: Vec<Resource> = snapshot
                .resources
                .iter()
                .filter(|(name, _)| {
                    wanted(name)
                        && (resend
                            || subscription.held.get(name) != Some(snapshot.version_of(name)))
                })
                .map(|(name, any)| Resource {
                    name: name.clone(),
                    version: snapshot.version_of(name).clone(),
                    resource: Some(any.clone()),
                    ..Resource::default()
                })
                .collect();
            let present: std::collections::BTreeSet<&String> =
                snapshot.resources.iter().map(|(name, _)| name).collect();
            let removed: Vec<String> = subscription
                .held
                .keys()
                .filter(|name| !present.contains(name))
                .cloned()
                .collect();
            if resources.is_empty() && removed.is_empty() {
                continue;
            }
            for resource in &resources {
                subscription
                    .held
                    .insert(resource.name.clone(), resource.version.clone());
            }
            for name in &removed {
                subscription.held.remove(name);
            }
            nonce += 1;
            let mut response = DeltaDiscoveryResponse {
                system_version_info: snapshot.version.clone(),
                resources,
                type_url: type_url.clone(),
                removed_resources: removed,
                nonce: nonce.to_string(),
                ..DeltaDiscoveryResponse::default()
            };
            if let Some(alter) = &alter {
                alter(&mut response);
            }
            if responses.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}
