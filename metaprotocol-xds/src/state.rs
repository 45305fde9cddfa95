//! What the client has accepted from the server and what it asks for: per resource type the
//! accepted version, the last nonce and the last rejection, and the resources themselves, from
//! which each response's [`DynamicUpdate`] is derived.
//!
//! State-of-the-world semantics, as Envoy has them: a CDS response (and an RDS response to a
//! wildcard subscription) carries every resource, so a resource it leaves out is removed; an
//! EDS response (and an RDS response to named resources) carries those it names. A resource
//! not subscribed to (a server answering an earlier request, or ignoring the names) is ignored,
//! as Envoy's watches ignore it: it is not translated, and the response is ACKed without it. A
//! response whose resources do not all translate is rejected whole (NACKed), and so is one the
//! proxy refuses; the running config is kept either way. An EDS cluster warms (is held back)
//! until its endpoints arrive; route configs using it warm in the engine meanwhile. As in
//! Envoy, it waits for them as long as its `initial_fetch_timeout` says (15 s unless set, for
//! ever when 0): then it serves without endpoints, and takes them when they come.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use metaprotocol_router::config::{EndpointSpec, RouteConfigSpec, XdsLimitsSpec, XdsSpec};
use metaprotocol_router::{DynamicUpdate, ResourceId, ResourceKind};
use serde::Serialize;
use tokio::time::Instant;

use crate::known::Known;
use crate::resource::ResourceType;
use crate::translate::{self, Assignment, CertificateFiles, ClusterResource, InvalidResource};
use crate::warn::{ByCause, Repeated, warn_repeated};

/// The gRPC status code of a NACK's detail: the resource was invalid.
const INVALID_ARGUMENT: i32 = 3;

/// The longest a NACK's message (and the error `/config_dump` keeps) may be, in bytes. It names
/// the resources at fault, whose names the control plane chose: a NACK naming one of megabytes
/// would pass the server's limit on the messages it takes (4 MiB by default in gRPC), and the
/// server would end the stream rather than hear it, again at each reconnect.
const MAX_NACK_MESSAGE: usize = 4096;

/// A NACK's detail saying `message`, cut to [`MAX_NACK_MESSAGE`] bytes (at a character
/// boundary, marked as cut).
fn nack_status(message: &str) -> Status {
    const CUT: &str = " (cut)";
    let message = if message.len() <= MAX_NACK_MESSAGE {
        message.to_owned()
    } else {
        let mut end = MAX_NACK_MESSAGE - CUT.len();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{CUT}", &message[..end])
    };
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// Which resources of a type are asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    /// Every one the server has (`*`).
    Wildcard,
    /// These.
    Named(BTreeSet<String>),
}

impl Names {
    fn from_patterns(patterns: &[String]) -> Option<Self> {
        if patterns.is_empty() {
            None
        } else if patterns.iter().any(|p| p == "*") {
            Some(Self::Wildcard)
        } else {
            Some(Self::Named(patterns.iter().cloned().collect()))
        }
    }

    /// The names a request for resources of `kind` carries. A wildcard subscription to
    /// clusters carries none, the legacy form every server takes as a wildcard for them (and
    /// for listeners only); one to any other type carries `*`, the only form the xDS protocol
    /// gives it: to a server that follows it, no names there means no resources at all.
    fn request_names(&self, kind: ResourceType) -> Vec<String> {
        match self {
            Self::Wildcard if kind == ResourceType::Cluster => Vec::new(),
            Self::Wildcard => vec!["*".to_owned()],
            Self::Named(names) => names.iter().cloned().collect(),
        }
    }

    fn is_wildcard(&self) -> bool {
        *self == Self::Wildcard
    }

    /// True if resource `name` is one subscribed to.
    fn wants(&self, name: &str) -> bool {
        match self {
            Self::Wildcard => true,
            Self::Named(names) => names.contains(name),
        }
    }
}

/// What the client knows of one resource type, as `/config_dump` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct TypeState {
    /// The last version accepted (ACKed); empty before the first.
    pub version: String,
    /// The nonce of the last response received.
    pub nonce: String,
    /// The version last rejected (NACKed), and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The resources asked for (empty: every one).
    pub subscribed: Vec<String>,
}

/// How a response lists the resources of its type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Listing<'a> {
    /// State of the world: the response's version versions every resource it carries.
    StateOfTheWorld,
    /// A delta response merged into what the client holds: every resource of the type, each
    /// with its own version (by name; the response's version for one without).
    Delta(&'a BTreeMap<String, String>),
}

/// A response the client reacts to: what to apply, and how to answer if it applies.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub kind: ResourceType,
    pub version: String,
    pub update: DynamicUpdate,
    accepted: Accepted,
    /// The bytes of each resource translated anew, by name, to know it by once accepted.
    encoded: Vec<(String, Vec<u8>)>,
}

/// The resources a response leaves the client with, once applied.
#[derive(Debug)]
enum Accepted {
    Clusters {
        clusters: BTreeMap<String, ClusterResource>,
        /// Each cluster's version, as `/config_dump` shows it.
        versions: BTreeMap<String, String>,
        /// Those sent anew (not as held).
        changed: BTreeSet<String>,
    },
    Endpoints {
        /// The assignments sent anew (those unchanged are held already).
        assignments: BTreeMap<String, Assignment>,
        /// Every assignment the response lists, anew or unchanged.
        present: BTreeSet<String>,
        /// The assignments are all there are (those left out were removed).
        complete: bool,
    },
    /// The route configs it changes and removes, as the update has them.
    RouteConfigs,
}

/// Why a response is rejected, and which resource (if one) is at fault.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub kind: ResourceType,
    pub version: String,
    pub resource: Option<ResourceId>,
    pub message: String,
}

/// The subscription's state.
#[derive(Debug)]
pub(crate) struct Subscription {
    node: Node,
    clusters: Option<Names>,
    route_configs: Option<Names>,
    types: BTreeMap<ResourceType, TypeState>,
    /// The clusters of the last accepted CDS response.
    accepted_clusters: BTreeMap<String, ClusterResource>,
    /// Their versions (over delta ADS, each its own), for a cluster that starts serving once
    /// its endpoints arrive.
    cluster_versions: BTreeMap<String, String>,
    /// The endpoints of each accepted `ClusterLoadAssignment`, by its name.
    assignments: BTreeMap<String, Assignment>,
    /// The clusters the proxy runs from this source.
    applied_clusters: BTreeSet<String>,
    /// When each EDS cluster waiting for its endpoints stops waiting, those with a timeout.
    endpoints_deadlines: BTreeMap<String, Instant>,
    /// EDS clusters that serve without endpoints (their wait was up, or their assignment was
    /// removed) until their assignment arrives: a new version of one serves at once too.
    without_endpoints: BTreeSet<String>,
    /// The route configs the proxy runs from this source (each a copy sharing its routes with
    /// the running one: a pointer a route).
    applied_route_configs: BTreeMap<String, RouteConfigSpec>,
    /// Bounds on what the resources held add up to.
    limits: XdsLimitsSpec,
    /// The certificate files clusters' TLS may name by instance or SDS secret.
    certificate_files: CertificateFiles,
    /// The bytes each resource held was accepted as, per type.
    known: BTreeMap<ResourceType, Known>,
    /// The types the stream's requests asked for: a response of another type is the server's
    /// mistake, not a resource for the proxy.
    asked: BTreeSet<ResourceType>,
    /// The warnings of responses of a type not asked for, which a server sends at each push,
    /// by their type URL: one type sent at each push does not hold back another's.
    unasked_type_warnings: ByCause,
    /// The warning of endpoints left out as only HBONE reaches them, which each push of their
    /// assignments leaves out again.
    hbone_warning: Repeated,
    /// The same warning of the endpoints clusters carry (`load_assignment`), which each push of
    /// the clusters leaves out again.
    inline_hbone_warning: Repeated,
    /// The warnings of refused resources and rejected responses, by their message: a control
    /// plane sends a resource the proxy refuses again at each push.
    refusal_warnings: ByCause,
}

/// The warning of endpoints left out as only Istio's HBONE tunnel reaches them.
const HBONE_LEFT_OUT: &str = "endpoints only Istio's HBONE tunnel reaches (ambient pods, waypoints) are left out, as metaprotocol-rs does not speak HBONE: istiod sends them so to a proxy whose node metadata claims HBONE (`ENABLE_HBONE`), and the others by their own address";

impl Subscription {
    /// The subscription `spec` describes, for `node`.
    pub fn new(spec: &XdsSpec, node: Node) -> Self {
        Self {
            node,
            clusters: Names::from_patterns(&spec.clusters),
            route_configs: Names::from_patterns(&spec.route_configs),
            types: BTreeMap::new(),
            accepted_clusters: BTreeMap::new(),
            cluster_versions: BTreeMap::new(),
            assignments: BTreeMap::new(),
            applied_clusters: BTreeSet::new(),
            endpoints_deadlines: BTreeMap::new(),
            without_endpoints: BTreeSet::new(),
            applied_route_configs: BTreeMap::new(),
            limits: spec.limits,
            certificate_files: CertificateFiles {
                providers: spec.certificate_providers.clone(),
                sds_secrets: spec.sds_secrets.clone(),
                system_ca_file: translate::system_ca_file(),
            },
            known: BTreeMap::new(),
            asked: BTreeSet::new(),
            unasked_type_warnings: ByCause::default(),
            hbone_warning: Repeated::default(),
            inline_hbone_warning: Repeated::default(),
            refusal_warnings: ByCause::default(),
        }
    }

    /// The warning of a refusal (of a resource, or a response) saying `message`.
    pub fn refusal_warning(&mut self, message: &str) -> &mut Repeated {
        self.refusal_warnings.of(message)
    }

    /// The warning of responses of type `type_url`, not asked for.
    pub fn unasked_type_warning(&mut self, type_url: &str) -> &mut Repeated {
        self.unasked_type_warnings.of(type_url)
    }

    /// True if a request of the stream asked for resources of `kind` (once asked for, EDS stays
    /// so when its names go: the server may still answer the request that unsubscribed them).
    pub fn asks_for(&self, kind: ResourceType) -> bool {
        self.asked.contains(&kind)
    }

    /// True if resource `name` of `kind` is one the subscription asks for. A response carrying
    /// others (a server answering a request that asked for them before this one, or ignoring
    /// the names) has them ignored, as Envoy does: neither translated (one that would be refused
    /// does not NACK the response) nor counted, held or applied; the response is ACKed.
    pub fn wants(&self, kind: ResourceType, name: &str) -> bool {
        let names = match kind {
            ResourceType::Cluster => self.clusters.as_ref(),
            ResourceType::RouteConfig => self.route_configs.as_ref(),
            // Always by name, in order (from a set).
            ResourceType::Endpoints => {
                return self.types.get(&kind).is_some_and(|state| {
                    state
                        .subscribed
                        .binary_search_by(|subscribed| subscribed.as_str().cmp(name))
                        .is_ok()
                });
            }
        };
        names.is_some_and(|names| names.wants(name))
    }

    /// The state of each type asked for, by its short name.
    pub fn type_states(&self) -> BTreeMap<&'static str, TypeState> {
        self.types
            .iter()
            .map(|(kind, state)| (kind.short_name(), state.clone()))
            .collect()
    }

    /// The names each type asks for (empty: every one), by type URL.
    pub fn subscribed(&self) -> BTreeMap<String, Vec<String>> {
        self.types
            .iter()
            .map(|(kind, state)| (kind.type_url(), state.subscribed.clone()))
            .collect()
    }

    /// EDS clusters held back until their endpoints arrive.
    pub fn warming_clusters(&self) -> Vec<String> {
        self.waiting_for_endpoints()
            .filter(|(name, _)| !self.without_endpoints.contains(*name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// EDS clusters that serve without endpoints until their assignment arrives.
    pub fn clusters_without_endpoints(&self) -> Vec<String> {
        self.without_endpoints.iter().cloned().collect()
    }

    /// How many endpoints each held assignment leaves out as only Istio's HBONE tunnel reaches
    /// them, by its name (those that leave none out are not listed).
    pub fn hbone_endpoints_left_out(&self) -> BTreeMap<String, usize> {
        self.hbone_left_out(&self.assignments)
    }

    /// How many endpoints each cluster held that carries its endpoints (`load_assignment`, not
    /// EDS) leaves out as only Istio's HBONE tunnel reaches them, by its name (those that leave
    /// none out are not listed).
    pub fn inline_hbone_endpoints_left_out(&self) -> BTreeMap<String, usize> {
        self.accepted_clusters
            .iter()
            .filter(|(_, cluster)| cluster.inline_hbone_endpoints() > 0)
            .map(|(name, cluster)| (name.clone(), cluster.inline_hbone_endpoints()))
            .collect()
    }

    /// How many endpoints each of `assignments` leaves out as only Istio's HBONE tunnel reaches
    /// them, by its name (those that leave none out are not listed): those at an internal
    /// address, and those the HBONE entry of a cluster it serves takes (the most one takes).
    fn hbone_left_out(
        &self,
        assignments: &BTreeMap<String, Assignment>,
    ) -> BTreeMap<String, usize> {
        let tunnelling = tunnelling(&self.accepted_clusters);
        assignments
            .iter()
            .filter_map(|(name, assignment)| {
                let by_entry = entry_taken(tunnelling.get(name.as_str()), &assignment.endpoints);
                let left_out = assignment.hbone_endpoints.saturating_add(by_entry);
                (left_out > 0).then(|| (name.clone(), left_out))
            })
            .collect()
    }

    /// The accepted EDS clusters whose assignment has not arrived, with how long each waits.
    fn waiting_for_endpoints(&self) -> impl Iterator<Item = (&String, &ClusterResource)> {
        self.accepted_clusters.iter().filter(|(_, c)| {
            c.eds_service
                .as_ref()
                .is_some_and(|s| !self.assignments.contains_key(s))
        })
    }

    /// Starts the wait of each EDS cluster that begins to wait for its endpoints (at `now`), and
    /// forgets the waits of those that no longer wait.
    fn track_endpoint_waits(&mut self, now: Instant) {
        let waiting: BTreeMap<String, Option<std::time::Duration>> = self
            .waiting_for_endpoints()
            .map(|(name, cluster)| (name.clone(), cluster.endpoints_timeout))
            .collect();
        self.without_endpoints
            .retain(|name| waiting.contains_key(name));
        let without = &self.without_endpoints;
        self.endpoints_deadlines.retain(|name, _| {
            waiting.get(name).is_some_and(Option::is_some) && !without.contains(name)
        });
        for (name, timeout) in waiting {
            // A timeout too far to be told apart from for ever is for ever.
            let deadline = timeout.and_then(|timeout| now.checked_add(timeout));
            if let Some(deadline) = deadline.filter(|_| !self.without_endpoints.contains(&name)) {
                self.endpoints_deadlines.entry(name).or_insert(deadline);
            }
        }
    }

    /// When the next EDS cluster waiting for its endpoints stops waiting, if one has a timeout.
    pub fn next_endpoints_deadline(&self) -> Option<Instant> {
        self.endpoints_deadlines.values().min().copied()
    }

    /// The EDS clusters whose wait for their endpoints is up at `now`, no longer waited for,
    /// and the update that serves them without endpoints (`None` if no wait is up).
    pub fn endpoints_timed_out(&mut self, now: Instant) -> Option<(DynamicUpdate, Vec<String>)> {
        let due: Vec<String> = self
            .endpoints_deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            return None;
        }
        let mut update = DynamicUpdate::default();
        for name in &due {
            self.endpoints_deadlines.remove(name);
            if let Some(cluster) = self.accepted_clusters.get(name) {
                update.clusters.push(cluster.with_endpoints(&[]));
                update.versions.insert(
                    ResourceId::new(ResourceKind::Cluster, name),
                    self.cluster_versions.get(name).cloned().unwrap_or_default(),
                );
            }
        }
        Some((update, due))
    }

    /// Records that the clusters `names`, whose wait for endpoints was up, serve without them.
    pub fn serve_without_endpoints(&mut self, names: Vec<String>) {
        self.applied_clusters.extend(names.iter().cloned());
        self.without_endpoints.extend(names);
    }

    /// The requests that open a stream: every type asked for, with the versions accepted so
    /// far (a server that restarted then knows what the client runs). The first carries the
    /// node.
    pub fn initial_requests(&mut self) -> Vec<DiscoveryRequest> {
        let mut requests = Vec::new();
        self.asked.clear();
        // A nonce names a response of the stream that ended: no request of the new one carries
        // it, not even one of a type the stream asks for later (EDS, once clusters take
        // endpoints): a server that checks nonces may take such a request as stale and not
        // answer it.
        for state in self.types.values_mut() {
            state.nonce.clear();
        }
        for kind in ResourceType::ALL {
            let names = match kind {
                ResourceType::Cluster => self.clusters.as_ref().map(|n| n.request_names(kind)),
                ResourceType::Endpoints => {
                    let names = self.eds_names();
                    (!names.is_empty()).then_some(names)
                }
                ResourceType::RouteConfig => {
                    self.route_configs.as_ref().map(|n| n.request_names(kind))
                }
            };
            if let Some(names) = names {
                let state = self.types.entry(kind).or_default();
                state.subscribed = names.clone();
                self.asked.insert(kind);
                requests.push(DiscoveryRequest {
                    version_info: state.version.clone(),
                    node: requests.is_empty().then(|| self.node.clone()),
                    resource_names: names,
                    type_url: kind.type_url(),
                    ..DiscoveryRequest::default()
                });
            }
        }
        requests
    }

    /// The names of the `ClusterLoadAssignment`s the accepted clusters take endpoints from.
    fn eds_names(&self) -> Vec<String> {
        let names: BTreeSet<&String> = self
            .accepted_clusters
            .values()
            .filter_map(|c| c.eds_service.as_ref())
            .collect();
        names.into_iter().cloned().collect()
    }

    /// Translates `response`, of resources of `kind`, into what to apply, or the reason to
    /// reject it. A delta response merged into what the client holds lists every resource of
    /// its type, so that one left out is removed, and versions each resource apart.
    pub fn prepare(
        &mut self,
        kind: ResourceType,
        response: &DiscoveryResponse,
        listing: Listing<'_>,
    ) -> Result<Prepared, Box<Rejected>> {
        let complete = matches!(listing, Listing::Delta(_));
        let state = self.types.entry(kind).or_default();
        state.nonce.clone_from(&response.nonce);
        let reject = |resource: Option<ResourceId>, message: String| {
            Box::new(Rejected {
                kind,
                version: response.version_info.clone(),
                resource,
                message,
            })
        };
        // A delta stream's resources add up over many responses, each under the size a message
        // may have: what the client holds of a type is bounded by that size too.
        let bytes: usize = response.resources.iter().map(|any| any.value.len()).sum();
        if bytes > crate::client::MAX_RESPONSE_BYTES {
            return Err(reject(
                None,
                format!(
                    "the resources would take {bytes} bytes, over the {} a response may have",
                    crate::client::MAX_RESPONSE_BYTES
                ),
            ));
        }
        let version = &response.version_info;
        // What `/config_dump` shows as the version of resource `name` (a delta resource sent
        // without a version of its own has an empty one).
        let version_of = |name: &str| match listing {
            Listing::Delta(versions) => versions
                .get(name)
                .filter(|own| !own.is_empty())
                .unwrap_or(version)
                .clone(),
            Listing::StateOfTheWorld => version.clone(),
        };
        let mut update = DynamicUpdate::default();
        let mut encoded = Vec::new();
        let known = self.known.get(&kind);
        let accepted = match kind {
            ResourceType::Cluster => {
                let decoded = decode_all(
                    &response.resources,
                    kind,
                    listing,
                    Bound {
                        limits: &self.limits,
                        count: |_: &str, cluster: &ClusterResource| cluster.footprint(),
                    },
                    known,
                    |name| self.accepted_clusters.get(name),
                    |c: &Cluster| {
                        let wanted = self.wants(kind, &c.name);
                        (
                            c.name.clone(),
                            wanted.then(|| translate::cluster(c, &self.certificate_files)),
                        )
                    },
                )
                .map_err(|(id, message)| reject(id, message))?;
                let mut clusters = BTreeMap::new();
                let mut versions = BTreeMap::new();
                let mut changed = BTreeSet::new();
                for (name, entry) in decoded {
                    let (cluster, cluster_version) = match entry {
                        Entry::Changed { value, bytes } => {
                            encoded.push((name.clone(), bytes));
                            changed.insert(name.clone());
                            (value, version_of(&name))
                        }
                        Entry::Unchanged { bytes } => {
                            let Some(cluster) = self.accepted_clusters.get(&name) else {
                                continue;
                            };
                            encoded.extend(bytes.map(|bytes| (name.clone(), bytes)));
                            let held = self.cluster_versions.get(&name);
                            (
                                cluster.clone(),
                                held.cloned().unwrap_or_else(|| version_of(&name)),
                            )
                        }
                    };
                    versions.insert(name.clone(), cluster_version);
                    clusters.insert(name, cluster);
                }
                let held = footprint(&clusters, |service| self.assignments.get(service));
                held.check(&self.limits)
                    .map_err(|message| reject(None, message))?;
                for (name, cluster) in &clusters {
                    // One unchanged that runs already is left as it runs.
                    if !changed.contains(name) && self.applied_clusters.contains(name) {
                        continue;
                    }
                    let endpoints = match &cluster.eds_service {
                        Some(service) => match self.assignments.get(service) {
                            Some(assignment) => assignment.endpoints.as_slice(),
                            None if self.without_endpoints.contains(name) => &[],
                            None => continue,
                        },
                        None => &[],
                    };
                    update.clusters.push(cluster.with_endpoints(endpoints));
                    update.versions.insert(
                        ResourceId::new(ResourceKind::Cluster, name),
                        versions.get(name).cloned().unwrap_or_default(),
                    );
                }
                update.removed = self
                    .applied_clusters
                    .iter()
                    .filter(|name| !clusters.contains_key(*name))
                    .map(|name| ResourceId::new(ResourceKind::Cluster, name))
                    .collect();
                Accepted::Clusters {
                    clusters,
                    versions,
                    changed,
                }
            }
            ResourceType::Endpoints => {
                let tunnelling = tunnelling(&self.accepted_clusters);
                let decoded = decode_all(
                    &response.resources,
                    kind,
                    listing,
                    Bound {
                        limits: &self.limits,
                        count: |name: &str, assignment: &Assignment| {
                            assignment_footprint(assignment, tunnelling.get(name))
                        },
                    },
                    known,
                    |name| self.assignments.get(name),
                    |a: &ClusterLoadAssignment| {
                        let wanted = self.wants(kind, &a.cluster_name);
                        (
                            a.cluster_name.clone(),
                            wanted.then(|| translate::assignment(a)),
                        )
                    },
                )
                .map_err(|(id, message)| reject(id, message))?;
                let present: BTreeSet<String> = decoded.keys().cloned().collect();
                let mut assignments = BTreeMap::new();
                for (name, entry) in decoded {
                    match entry {
                        Entry::Changed { value, bytes } => {
                            encoded.push((name.clone(), bytes));
                            assignments.insert(name, value);
                        }
                        Entry::Unchanged { bytes } => {
                            encoded.extend(bytes.map(|bytes| (name, bytes)));
                        }
                    }
                }
                // What a service's assignment is once this applies, if it has one.
                let after = |service: &str| match assignments.get(service) {
                    Some(endpoints) => Some(endpoints),
                    None if complete && !present.contains(service) => None,
                    None => self.assignments.get(service),
                };
                let held = footprint(&self.accepted_clusters, after);
                held.check(&self.limits)
                    .map_err(|message| reject(None, message))?;
                for (name, cluster) in &self.accepted_clusters {
                    let Some(service) = cluster.eds_service.as_ref() else {
                        continue;
                    };
                    let applied = self.applied_clusters.contains(name);
                    let endpoints = match after(service) {
                        // Unchanged, and running with them already.
                        Some(_) if applied && !assignments.contains_key(service) => continue,
                        Some(assignment) => assignment.endpoints.as_slice(),
                        // A complete response without the assignment removed it: the cluster
                        // has no endpoints left (as in Envoy).
                        None if self.assignments.contains_key(service) => &[],
                        None => continue,
                    };
                    update.clusters.push(cluster.with_endpoints(endpoints));
                    update.versions.insert(
                        ResourceId::new(ResourceKind::Endpoints, name),
                        version_of(service),
                    );
                    if !applied {
                        // The cluster warmed until now: its own version starts serving too.
                        update.versions.insert(
                            ResourceId::new(ResourceKind::Cluster, name),
                            self.cluster_versions.get(name).cloned().unwrap_or_default(),
                        );
                    }
                }
                Accepted::Endpoints {
                    assignments,
                    present,
                    complete,
                }
            }
            ResourceType::RouteConfig => {
                let decoded = decode_all(
                    &response.resources,
                    kind,
                    listing,
                    Bound {
                        limits: &self.limits,
                        count: |_: &str, config: &RouteConfigSpec| config.footprint(),
                    },
                    known,
                    |name| self.applied_route_configs.get(name),
                    |r: &RouteConfiguration| {
                        let wanted = self.wants(kind, &r.name);
                        (r.name.clone(), wanted.then(|| translate::route_config(r)))
                    },
                )
                .map_err(|(id, message)| reject(id, message))?;
                let names: BTreeMap<String, usize> = decoded
                    .iter()
                    .map(|(name, entry)| {
                        let routes = match entry {
                            Entry::Changed { value, .. } => value.routes.len(),
                            Entry::Unchanged { .. } => self
                                .applied_route_configs
                                .get(name)
                                .map_or(0, |config| config.routes.len()),
                        };
                        (name.clone(), routes)
                    })
                    .collect();
                let whole = complete || self.route_configs.as_ref().is_some_and(Names::is_wildcard);
                // Those held and not sent stay, unless the response lists every one.
                let kept = self
                    .applied_route_configs
                    .iter()
                    .filter(|(name, _)| !names.contains_key(*name));
                if whole {
                    update.removed = kept
                        .map(|(name, _)| ResourceId::new(ResourceKind::RouteConfig, name))
                        .collect();
                } else {
                    let routes = kept
                        .map(|(_, config)| config.routes.len())
                        .chain(names.values().copied())
                        .sum();
                    Footprint {
                        routes,
                        ..Footprint::default()
                    }
                    .check(&self.limits)
                    .map_err(|message| reject(None, message))?;
                }
                for (name, entry) in decoded {
                    match entry {
                        Entry::Changed { value, bytes } => {
                            update.versions.insert(
                                ResourceId::new(ResourceKind::RouteConfig, &name),
                                version_of(&name),
                            );
                            update.route_configs.push(value);
                            encoded.push((name, bytes));
                        }
                        Entry::Unchanged { bytes } => {
                            encoded.extend(bytes.map(|bytes| (name, bytes)));
                        }
                    }
                }
                Accepted::RouteConfigs
            }
        };
        Ok(Prepared {
            kind,
            version: version.clone(),
            update,
            accepted,
            encoded,
        })
    }

    /// Refuses delta `response`, of resources of `kind`, whole before translating it, for
    /// `message` about its resource `name`; returns the rejection to answer it with.
    pub fn refuse(
        &mut self,
        kind: ResourceType,
        response: &DeltaDiscoveryResponse,
        name: &str,
        message: String,
    ) -> Box<Rejected> {
        self.types
            .entry(kind)
            .or_default()
            .nonce
            .clone_from(&response.nonce);
        Box::new(Rejected {
            kind,
            version: crate::delta::response_version(response),
            resource: resource_id(kind, name),
            message,
        })
    }

    /// Records that `prepared` was applied; returns the ACK, and the EDS request that follows
    /// when the clusters' endpoint names changed.
    pub fn accept(&mut self, prepared: Prepared) -> Vec<DiscoveryRequest> {
        let kind = prepared.kind;
        match prepared.accepted {
            Accepted::Clusters {
                clusters,
                versions,
                changed,
            } => {
                self.accepted_clusters = clusters;
                let left_out: BTreeMap<&str, usize> = changed
                    .iter()
                    .filter_map(|name| {
                        let cluster = self.accepted_clusters.get(name)?;
                        let left_out = cluster.inline_hbone_endpoints();
                        (left_out > 0).then_some((name.as_str(), left_out))
                    })
                    .collect();
                if !left_out.is_empty() {
                    warn_repeated!(
                        self.inline_hbone_warning,
                        clusters = ?left_out,
                        "{HBONE_LEFT_OUT}"
                    );
                }
                // A cluster that changes while it waits for its endpoints waits anew, from now and
                // as long as its new version says, as Envoy replaces a warming cluster whose config
                // changes with one whose wait starts then. One sent as held keeps its deadline.
                for name in &changed {
                    self.endpoints_deadlines.remove(name);
                }
                self.cluster_versions = versions;
                // The endpoints of clusters gone: a cluster that comes back waits for fresh ones.
                let wanted: BTreeSet<String> = self.eds_names().into_iter().collect();
                self.assignments.retain(|name, _| wanted.contains(name));
                self.applied_clusters
                    .retain(|name| !prepared.update.removed.iter().any(|id| id.name == *name));
                self.applied_clusters
                    .extend(prepared.update.clusters.iter().map(|c| c.name.clone()));
                self.track_endpoint_waits(Instant::now());
            }
            Accepted::Endpoints {
                assignments,
                present,
                complete,
            } => {
                if complete {
                    self.assignments.retain(|name, _| present.contains(name));
                }
                let left_out = self.hbone_left_out(&assignments);
                if !left_out.is_empty() {
                    warn_repeated!(
                        self.hbone_warning,
                        assignments = ?left_out,
                        "{HBONE_LEFT_OUT}"
                    );
                }
                self.hold(assignments);
                // Those it left without endpoints (their assignment removed) serve so.
                let emptied = prepared
                    .update
                    .clusters
                    .iter()
                    .filter(|c| c.endpoints.is_empty())
                    .map(|c| c.name.clone());
                self.without_endpoints.extend(emptied);
                self.applied_clusters
                    .extend(prepared.update.clusters.iter().map(|c| c.name.clone()));
                self.track_endpoint_waits(Instant::now());
            }
            Accepted::RouteConfigs => {
                for id in &prepared.update.removed {
                    self.applied_route_configs.remove(&id.name);
                }
                let changed = prepared.update.route_configs.iter();
                self.applied_route_configs
                    .extend(changed.map(|config| (config.name.clone(), config.clone())));
            }
        }
        let known = self.known.entry(kind).or_default();
        for (name, bytes) in prepared.encoded {
            known.insert(name, bytes);
        }
        self.forget_unheld();
        let state = self.types.entry(kind).or_default();
        state.version = prepared.version;
        state.rejected_version = None;
        state.last_error = None;
        let mut requests = vec![self.request(kind, None)];
        if kind == ResourceType::Cluster {
            let names = self.eds_names();
            let state = self.types.entry(ResourceType::Endpoints).or_default();
            if names != state.subscribed {
                state.subscribed = names;
                self.asked.insert(ResourceType::Endpoints);
                requests.push(self.request(ResourceType::Endpoints, None));
            }
        }
        requests
    }

    /// Holds the endpoints of an EDS response the engine refused, without accepting it. Each
    /// assignment translated on its own, so the refusal came from a cluster they complete (its
    /// health check's probe, say): the next version of that cluster starts with them, instead of
    /// waiting for endpoints the server has no reason to send again. Envoy, which refuses such
    /// a cluster on CDS, keeps its endpoints the same way.
    pub fn hold_refused_endpoints(&mut self, prepared: Prepared) {
        if let Accepted::Endpoints { assignments, .. } = prepared.accepted {
            self.hold(assignments);
            self.track_endpoint_waits(Instant::now());
        }
    }

    /// Holds `assignments`, those of the clusters held only: a control plane sending
    /// assignments for other names cannot grow the map without bound.
    fn hold(&mut self, assignments: BTreeMap<String, Assignment>) {
        let wanted: BTreeSet<String> = self.eds_names().into_iter().collect();
        self.assignments.extend(
            assignments
                .into_iter()
                .filter(|(name, _)| wanted.contains(name)),
        );
    }

    /// Forgets the bytes of resources no longer held.
    fn forget_unheld(&mut self) {
        for (kind, known) in &mut self.known {
            match kind {
                ResourceType::Cluster => {
                    known.retain(|name| self.accepted_clusters.contains_key(name));
                }
                ResourceType::Endpoints => known.retain(|name| self.assignments.contains_key(name)),
                ResourceType::RouteConfig => {
                    known.retain(|name| self.applied_route_configs.contains_key(name));
                }
            }
        }
    }

    /// Records that `prepared` was applied without the resources `refused` (over delta ADS each
    /// resource stands alone); returns the ACK, or with resources refused the NACK naming them,
    /// and any EDS request that follows.
    pub fn accept_except(
        &mut self,
        prepared: Prepared,
        refused: &[Rejected],
    ) -> Vec<DiscoveryRequest> {
        let kind = prepared.kind;
        let before = self.types.get(&kind).map(|s| s.version.clone());
        let mut requests = self.accept(prepared);
        if let (Some(answer), Some(last)) = (requests.first_mut(), refused.last()) {
            let messages: Vec<&str> = refused.iter().map(|r| r.message.as_str()).collect();
            let status = nack_status(&messages.join("; "));
            let state = self.types.entry(kind).or_default();
            // NACKed: the type's version is still the last one accepted whole.
            state.version = before.unwrap_or_default();
            state.rejected_version = Some(last.version.clone());
            state.last_error = Some(status.message.clone());
            answer.error_detail = Some(status);
        }
        requests
    }

    /// Records that a response was rejected; returns the NACK.
    pub fn reject(&mut self, rejected: &Rejected) -> DiscoveryRequest {
        let status = nack_status(&rejected.message);
        let state = self.types.entry(rejected.kind).or_default();
        state.rejected_version = Some(rejected.version.clone());
        state.last_error = Some(status.message.clone());
        self.request(rejected.kind, Some(status))
    }

    /// The request for `kind` with what the client has accepted (an ACK, or with `error` a
    /// NACK).
    fn request(&mut self, kind: ResourceType, error: Option<Status>) -> DiscoveryRequest {
        let state = self.types.entry(kind).or_default();
        DiscoveryRequest {
            version_info: state.version.clone(),
            node: None,
            resource_names: state.subscribed.clone(),
            type_url: kind.type_url(),
            response_nonce: state.nonce.clone(),
            error_detail: error,
            ..DiscoveryRequest::default()
        }
    }
}

/// What `clusters` hold once running: each the endpoints it runs, inline or (an EDS cluster) of
/// the `assignment` of its service (none yet: it warms), but for those only Istio's HBONE tunnel
/// reaches, which it leaves out; and those, held for the clusters of their service (see
/// [`Footprint::hbone_only`]).
fn footprint<'a>(
    clusters: &BTreeMap<String, ClusterResource>,
    assignment: impl Fn(&str) -> Option<&'a Assignment>,
) -> Footprint {
    let endpoints = clusters
        .values()
        .map(|cluster| match &cluster.eds_service {
            Some(service) => assignment(service).map_or(0, |assignment| {
                let endpoints = &assignment.endpoints;
                endpoints
                    .len()
                    .saturating_sub(cluster.hbone_endpoints(endpoints))
            }),
            None => cluster.spec.endpoints.len(),
        })
        .fold(0usize, usize::saturating_add);
    let hbone_only = tunnelling(clusters)
        .into_iter()
        .filter_map(|(service, tunnelling)| {
            let assignment = assignment(service)?;
            Some(entry_taken(Some(&tunnelling), &assignment.endpoints))
        })
        .fold(0usize, usize::saturating_add);
    Footprint {
        clusters: clusters.len(),
        endpoints,
        hbone_only,
        routes: 0,
    }
}

/// The clusters of `clusters` with istiod's HBONE entry, by the EDS service whose endpoints
/// they take.
fn tunnelling(
    clusters: &BTreeMap<String, ClusterResource>,
) -> BTreeMap<&str, Vec<&ClusterResource>> {
    let mut by_service: BTreeMap<&str, Vec<&ClusterResource>> = BTreeMap::new();
    for cluster in clusters.values() {
        if let Some(service) = cluster.eds_service.as_deref()
            && cluster.has_hbone_entry()
        {
            by_service.entry(service).or_default().push(cluster);
        }
    }
    by_service
}

/// How many of `endpoints`, of an EDS service, its `clusters` with an HBONE entry (see
/// [`tunnelling`]) leave out as only that entry reaches them: the most one leaves out.
fn entry_taken(clusters: Option<&Vec<&ClusterResource>>, endpoints: &[EndpointSpec]) -> usize {
    clusters
        .into_iter()
        .flatten()
        .map(|cluster| cluster.hbone_endpoints(endpoints))
        .max()
        .unwrap_or(0)
}

/// What resources count for against `dynamic.xds.limits`.
#[derive(Debug, Default, Clone, Copy)]
struct Footprint {
    clusters: usize,
    /// The endpoints clusters run: each cluster counts its own.
    endpoints: usize,
    /// The endpoints held that only Istio's HBONE tunnel reaches, which no cluster runs: those
    /// a cluster's HBONE entry takes, held as another cluster of their service may run them,
    /// counted once for their assignment. They are bounded apart (by `max_endpoints` too) so
    /// that a mesh with many ambient pods can hold them beside those it runs, and a server
    /// still cannot make the proxy hold them without bound.
    hbone_only: usize,
    routes: usize,
}

impl Footprint {
    /// Both together.
    fn plus(self, other: Self) -> Self {
        Self {
            clusters: self.clusters.saturating_add(other.clusters),
            endpoints: self.endpoints.saturating_add(other.endpoints),
            hbone_only: self.hbone_only.saturating_add(other.hbone_only),
            routes: self.routes.saturating_add(other.routes),
        }
    }

    /// The error naming the first of `limits` this passes.
    fn check(&self, limits: &XdsLimitsSpec) -> Result<(), String> {
        for (held, max, what, field) in [
            (
                self.clusters,
                limits.max_clusters,
                "clusters",
                "max_clusters",
            ),
            (
                self.endpoints,
                limits.max_endpoints,
                "endpoints",
                "max_endpoints",
            ),
            (
                self.hbone_only,
                limits.max_endpoints,
                "HBONE-only endpoints",
                "max_endpoints",
            ),
            (self.routes, limits.max_routes, "routes", "max_routes"),
        ] {
            if held > max {
                return Err(format!(
                    "the proxy would hold {held} {what} from the server, over `dynamic.xds.limits.{field}` ({max})"
                ));
            }
        }
        Ok(())
    }
}

/// A translated resource, as it counts against `dynamic.xds.limits` on its own.
trait Counted {
    fn footprint(&self) -> Footprint;
}

impl Counted for ClusterResource {
    fn footprint(&self) -> Footprint {
        Footprint {
            clusters: 1,
            endpoints: self.spec.endpoints.len(),
            ..Footprint::default()
        }
    }
}

/// What `assignment` holds, given `tunnelling`, the clusters of its service with an HBONE entry
/// (see [`tunnelling`]): the endpoints it gives them, and apart those only that entry reaches.
/// Counted so while its response is decoded; once it is, each cluster counts those it runs
/// (see [`footprint`]).
fn assignment_footprint(
    assignment: &Assignment,
    tunnelling: Option<&Vec<&ClusterResource>>,
) -> Footprint {
    let hbone_only = entry_taken(tunnelling, &assignment.endpoints);
    Footprint {
        endpoints: assignment.endpoints.len().saturating_sub(hbone_only),
        hbone_only,
        ..Footprint::default()
    }
}

impl Counted for RouteConfigSpec {
    fn footprint(&self) -> Footprint {
        Footprint {
            routes: self.routes.len(),
            ..Footprint::default()
        }
    }
}

/// What the resources of a response are bounded by as `decode_all` decodes them: `limits`, each
/// counting for what `count` says of it, by its name (an assignment's count depends on the
/// clusters held).
struct Bound<'l, C> {
    limits: &'l XdsLimitsSpec,
    count: C,
}

/// A resource of a response, as `decode_all` finds it.
#[derive(Debug)]
enum Entry<T> {
    /// Translated, from `bytes`.
    Changed { value: T, bytes: Vec<u8> },
    /// What is held already: sent as it was accepted (not decoded again), or with `bytes` sent
    /// in another encoding of the same content, translated to what is held, and known by
    /// these bytes from now on.
    Unchanged { bytes: Option<Vec<u8>> },
}

/// Decodes and translates every resource of a response, keyed by name, but those sent as they
/// were accepted (see [`Known`]) and those not subscribed to (whose `translate` gives no
/// translation: they are left out); the first failure is the response's error, naming the
/// resource and the field. What the resources translate to is bounded (`bound`) as it grows:
/// translated, a few bytes on the wire take far more.
///
/// `held` is what the client holds of each resource, by name. A resource that translates to it
/// is unchanged too: a server whose encoding is not canonical sends the same content in other
/// bytes (Go's encoding orders a map's entries at random, and istiod's clusters carry maps in
/// their metadata), and Envoy, which compares what the bytes decode to, changes nothing then.
fn decode_all<'h, M, T>(
    resources: &[Any],
    kind: ResourceType,
    listing: Listing<'_>,
    bound: Bound<'_, impl Fn(&str, &T) -> Footprint>,
    known: Option<&Known>,
    held: impl Fn(&str) -> Option<&'h T>,
    translate: impl Fn(&M) -> (String, Option<Result<T, InvalidResource>>),
) -> Result<BTreeMap<String, Entry<T>>, Refusal>
where
    M: prost::Message + prost::Name + Default,
    T: PartialEq + 'h,
{
    let type_url = kind.type_url();
    let mut translated = BTreeMap::new();
    let mut footprint = Footprint::default();
    for (i, any) in resources.iter().enumerate() {
        if any.type_url != type_url {
            return Err((
                None,
                format!(
                    "resources[{i}]: a `{}` in a {} response",
                    any.type_url,
                    kind.short_name()
                ),
            ));
        }
        let sent_as_held = known
            .and_then(|known| known.name_of(&any.value))
            .and_then(|name| Some((name, held(name)?)));
        let (name, entry, counts) = match sent_as_held {
            Some((name, value)) => (
                name.to_owned(),
                Entry::Unchanged { bytes: None },
                (bound.count)(name, value),
            ),
            None => {
                let Some((name, value)) = decode_one(i, any, kind, &translate)? else {
                    continue;
                };
                let counts = (bound.count)(&name, &value);
                let bytes = any.value.clone();
                let entry = if held(&name) == Some(&value) {
                    Entry::Unchanged { bytes: Some(bytes) }
                } else {
                    Entry::Changed { value, bytes }
                };
                (name, entry, counts)
            }
        };
        let id = resource_id(kind, &name);
        // A delta resource is held, removed and versioned by the name it is sent under: one
        // sent under another name (or none) would run, then go with the next response.
        if let Listing::Delta(held) = listing
            && !held.contains_key(&name)
        {
            return Err((
                id,
                format!(
                    "{} `{name}` is sent under another name (a delta `Resource`'s `name` must be its resource's own)",
                    M::full_name()
                ),
            ));
        }
        footprint = footprint.plus(counts);
        footprint
            .check(bound.limits)
            .map_err(|message| (None, format!("at resources[{i}]: {message}")))?;
        if translated.insert(name.clone(), entry).is_some() {
            return Err((
                id,
                format!(
                    "{} `{name}` is sent twice (over delta ADS, also: sent and removed at once)",
                    M::full_name()
                ),
            ));
        }
    }
    Ok(translated)
}

/// Why a response is refused while its resources are decoded: the resource at fault, when
/// known, and the message.
type Refusal = (Option<ResourceId>, String);

/// Decodes and translates resource `i` of a response, `any`; returns its name and translation,
/// or `None` for a resource not subscribed to.
fn decode_one<M, T>(
    i: usize,
    any: &Any,
    kind: ResourceType,
    translate: impl Fn(&M) -> (String, Option<Result<T, InvalidResource>>),
) -> Result<Option<(String, T)>, Refusal>
where
    M: prost::Message + prost::Name + Default,
{
    // Bounded before decoding: a few bytes of empty elements can decode into gigabytes.
    crate::budget::check(&any.value, crate::budget::RESOURCE_ELEMENT_BYTES, &[]).map_err(
        |err| {
            (
                None,
                format!("resources[{i}]: not decoded as a {}: {err}", M::full_name()),
            )
        },
    )?;
    let message = M::decode(any.value.as_slice()).map_err(|err| {
        (
            None,
            format!("resources[{i}]: not a valid {}: {err}", M::full_name()),
        )
    })?;
    let (name, translated) = translate(&message);
    let Some(result) = translated else {
        tracing::debug!(%name, "an xDS resource not subscribed to is ignored");
        return Ok(None);
    };
    let value = result.map_err(|err| {
        (
            resource_id(kind, &name),
            format!("{} `{name}`: {err}", M::full_name()),
        )
    })?;
    Ok(Some((name, value)))
}

/// The engine's name for resource `name` of `kind`.
fn resource_id(kind: ResourceType, name: &str) -> Option<ResourceId> {
    let kind = match kind {
        ResourceType::Cluster => ResourceKind::Cluster,
        ResourceType::Endpoints => ResourceKind::Endpoints,
        ResourceType::RouteConfig => ResourceKind::RouteConfig,
    };
    (!name.is_empty()).then(|| ResourceId::new(kind, name))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, Resource as DeltaResource,
    };
    use prost::{Message, Name};

    use super::*;
    use crate::delta::DeltaResources;

    fn any<M: Message + Name>(message: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        }
    }

    fn response(kind: ResourceType, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.to_owned(),
            resources,
            type_url: kind.type_url(),
            nonce: version.to_owned(),
            ..DiscoveryResponse::default()
        }
    }

    fn subscription() -> Subscription {
        let spec: Result<XdsSpec, _> = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1:1", "node_id": "n", "clusters": ["*"]
        }));
        match spec {
            Ok(spec) => Subscription::new(&spec, Node::default()),
            Err(err) => panic!("{err}"),
        }
    }

    fn assignment(name: &str) -> ClusterLoadAssignment {
        let endpoint = LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: "127.0.0.1".to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(9)),
                        ..SocketAddress::default()
                    })),
                }),
                ..Endpoint::default()
            })),
            ..LbEndpoint::default()
        };
        ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }
    }

    /// Applies `response` as the client would once the proxy accepted it.
    fn apply(
        subscription: &mut Subscription,
        kind: ResourceType,
        response: &DiscoveryResponse,
        listing: Listing<'_>,
    ) -> DynamicUpdate {
        match subscription.prepare(kind, response, listing) {
            Ok(prepared) => {
                let update = prepared.update.clone();
                subscription.accept(prepared);
                update
            }
            Err(rejected) => panic!("{}", rejected.message),
        }
    }

    #[test]
    fn an_eds_cluster_warms_until_its_endpoints_arrive_and_loses_them_when_removed() {
        let mut subscription = subscription();
        let cluster = Cluster {
            name: "c".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Cluster::default()
        };
        let cds = response(ResourceType::Cluster, "c1", vec![any(&cluster)]);
        let update = apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::StateOfTheWorld,
        );
        assert!(
            update.clusters.is_empty(),
            "held back until its endpoints arrive"
        );
        assert_eq!(subscription.warming_clusters(), ["c"]);

        let eds = response(ResourceType::Endpoints, "e1", vec![any(&assignment("c"))]);
        let update = apply(
            &mut subscription,
            ResourceType::Endpoints,
            &eds,
            Listing::StateOfTheWorld,
        );
        assert_eq!(update.clusters.len(), 1);
        assert_eq!(update.clusters[0].endpoints.len(), 1);
        assert_eq!(
            update
                .versions
                .get(&ResourceId::new(ResourceKind::Cluster, "c")),
            Some(&"c1".to_owned()),
            "the cluster's own version starts serving with its endpoints"
        );
        assert!(subscription.warming_clusters().is_empty());

        // A state-of-the-world response without the assignment changes nothing; a complete one
        // (a delta that removed it) leaves the cluster without endpoints.
        let without = response(ResourceType::Endpoints, "e2", Vec::new());
        let update = apply(
            &mut subscription,
            ResourceType::Endpoints,
            &without,
            Listing::StateOfTheWorld,
        );
        assert!(update.clusters.is_empty());
        let update = apply(
            &mut subscription,
            ResourceType::Endpoints,
            &without,
            Listing::Delta(&BTreeMap::new()),
        );
        assert_eq!(update.clusters.len(), 1);
        assert!(update.clusters[0].endpoints.is_empty());

        // Assignments for clusters not held are not kept; a cluster removed forgets its
        // endpoints, and when it comes back it waits for fresh ones.
        let eds = response(
            ResourceType::Endpoints,
            "e3",
            vec![any(&assignment("c")), any(&assignment("ghost"))],
        );
        apply(
            &mut subscription,
            ResourceType::Endpoints,
            &eds,
            Listing::StateOfTheWorld,
        );
        assert_eq!(subscription.assignments.keys().collect::<Vec<_>>(), ["c"]);
        let none = response(ResourceType::Cluster, "c2", Vec::new());
        apply(
            &mut subscription,
            ResourceType::Cluster,
            &none,
            Listing::StateOfTheWorld,
        );
        assert!(subscription.assignments.is_empty());
        let update = apply(
            &mut subscription,
            ResourceType::Cluster,
            &response(ResourceType::Cluster, "c3", vec![any(&cluster)]),
            Listing::StateOfTheWorld,
        );
        assert!(update.clusters.is_empty(), "warming again");
        assert_eq!(subscription.warming_clusters(), ["c"]);
    }

    #[test]
    fn a_resource_that_would_decode_into_gigabytes_is_refused_undecoded() {
        // A route config of 300 Ki empty routes, 2 bytes each on the wire: 600 KiB that prost
        // would decode into 700 MB (1.2 GB at 1 MiB).
        let virtual_host = [0x1a, 0x00].repeat(300 << 10);
        let mut config = Vec::new();
        prost::encoding::bytes::encode(2, &virtual_host, &mut config);
        let resource = Any {
            type_url: RouteConfiguration::type_url(),
            value: config,
        };
        let response = response(ResourceType::RouteConfig, "r1", vec![resource]);
        let rejected = subscription()
            .prepare(
                ResourceType::RouteConfig,
                &response,
                Listing::StateOfTheWorld,
            )
            .err()
            .map(|rejected| rejected.message);
        assert!(
            rejected
                .as_deref()
                .is_some_and(|m| m.contains("resources[0]: not decoded") && m.contains("fields")),
            "{rejected:?}"
        );
    }

    #[test]
    fn what_a_delta_stream_adds_up_to_is_bounded_like_one_response() {
        let mut subscription = subscription();
        let half = Any {
            type_url: Cluster::type_url(),
            value: vec![0; crate::client::MAX_RESPONSE_BYTES / 2 + 1],
        };
        let response = response(ResourceType::Cluster, "c1", vec![half.clone(), half]);
        let rejected = subscription
            .prepare(
                ResourceType::Cluster,
                &response,
                Listing::Delta(&BTreeMap::new()),
            )
            .err()
            .map(|rejected| rejected.message);
        assert!(
            rejected.as_deref().is_some_and(|m| m.contains("over the")),
            "{rejected:?}"
        );
    }

    #[test]
    fn delta_resources_keep_their_own_versions() {
        let mut subscription = subscription();
        let cluster = |name: &str| Cluster {
            name: name.to_owned(),
            ..Cluster::default()
        };
        let cds = response(
            ResourceType::Cluster,
            "n3",
            vec![any(&cluster("a")), any(&cluster("b"))],
        );
        // As the client holds them: every resource, `b` sent without a version of its own.
        let versions = BTreeMap::from([
            ("a".to_owned(), "a7".to_owned()),
            ("b".to_owned(), String::new()),
        ]);
        let update = apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::Delta(&versions),
        );
        let version = |name: &str| {
            update
                .versions
                .get(&ResourceId::new(ResourceKind::Cluster, name))
                .cloned()
        };
        assert_eq!(version("a").as_deref(), Some("a7"));
        assert_eq!(
            version("b").as_deref(),
            Some("n3"),
            "a resource without a version of its own takes the response's"
        );
    }

    /// To a server that follows the xDS protocol, a request naming no route configs asks for
    /// none: a wildcard subscription to them names `*`. Clusters keep the legacy form (no
    /// names), which every server takes as a wildcard for them.
    #[test]
    fn a_wildcard_subscription_names_star_except_for_clusters() {
        let spec: Result<XdsSpec, _> = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1:1", "node_id": "n", "route_configs": ["*"], "clusters": ["*"]
        }));
        let mut subscription = match spec {
            Ok(spec) => Subscription::new(&spec, Node::default()),
            Err(err) => panic!("{err}"),
        };
        let names: BTreeMap<String, Vec<String>> = subscription
            .initial_requests()
            .into_iter()
            .map(|r| (r.type_url, r.resource_names))
            .collect();
        assert_eq!(
            names,
            BTreeMap::from([
                (ResourceType::Cluster.type_url(), vec![]),
                (ResourceType::RouteConfig.type_url(), vec!["*".to_owned()]),
            ])
        );
    }

    #[test]
    fn route_configs_not_subscribed_to_are_left_out() {
        let spec: Result<XdsSpec, _> = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1:1", "node_id": "n", "route_configs": ["a"]
        }));
        let mut subscription = match spec {
            Ok(spec) => Subscription::new(&spec, Node::default()),
            Err(err) => panic!("{err}"),
        };
        let config = |name: &str| RouteConfiguration {
            name: name.to_owned(),
            ..RouteConfiguration::default()
        };
        // `a` sent again unchanged is not applied again.
        for (version, other, applied) in [("r1", "x1", &["a"][..]), ("r2", "x2", &[])] {
            let rds = response(
                ResourceType::RouteConfig,
                version,
                vec![any(&config("a")), any(&config(other))],
            );
            let update = apply(
                &mut subscription,
                ResourceType::RouteConfig,
                &rds,
                Listing::StateOfTheWorld,
            );
            let names: Vec<&str> = update
                .route_configs
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(names, applied, "{version}");
        }
        assert_eq!(
            subscription
                .applied_route_configs
                .keys()
                .collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn a_response_that_does_not_translate_is_rejected_naming_the_resource_and_field() {
        let mut subscription = subscription();
        let cluster = Cluster {
            name: "c".to_owned(),
            lb_policy: 6,
            ..Cluster::default()
        };
        let cds = response(ResourceType::Cluster, "c1", vec![any(&cluster)]);
        let rejected =
            match subscription.prepare(ResourceType::Cluster, &cds, Listing::StateOfTheWorld) {
                Ok(_) => panic!("accepted"),
                Err(rejected) => rejected,
            };
        assert_eq!(
            rejected.resource,
            Some(ResourceId::new(ResourceKind::Cluster, "c"))
        );
        assert!(
            rejected.message.contains("`c`: lb_policy"),
            "{}",
            rejected.message
        );
        let nack = subscription.reject(&rejected);
        assert_eq!(nack.version_info, "", "nothing accepted yet");
        assert_eq!(nack.response_nonce, "c1");
        assert_eq!(nack.error_detail.map(|s| s.code), Some(INVALID_ARGUMENT));
    }

    #[test]
    fn a_nack_naming_a_huge_resource_name_is_cut_to_a_bound() {
        let mut subscription = subscription();
        // A name of a megabyte, of two-byte characters: the cut falls inside one.
        let name = "é".repeat(512 * 1024);
        let cluster = Cluster {
            name: name.clone(),
            lb_policy: 6,
            ..Cluster::default()
        };
        let cds = response(ResourceType::Cluster, "c1", vec![any(&cluster)]);
        let Err(rejected) =
            subscription.prepare(ResourceType::Cluster, &cds, Listing::StateOfTheWorld)
        else {
            panic!("accepted");
        };
        assert!(rejected.message.len() > name.len(), "it names the resource");
        let nack = subscription.reject(&rejected);
        let message = nack.error_detail.map(|s| s.message).unwrap_or_default();
        assert!(message.len() <= MAX_NACK_MESSAGE, "{} bytes", message.len());
        assert!(message.ends_with(" (cut)"), "and says so");
        assert!(message.contains("ééé"), "it still names what it can");
    }

    /// A delta response naming a resource twice (sent twice, or sent and removed) is
    /// ambiguous, and Envoy refuses it: the resource is refused (NACKed, naming it) and keeps
    /// what is held of it.
    #[test]
    fn a_delta_resource_sent_twice_or_sent_and_removed_is_refused() {
        let cluster = |timeout: i64| {
            let mut cluster = eds_cluster("x");
            cluster.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout,
                nanos: 0,
            });
            DeltaResource {
                name: "x".to_owned(),
                version: timeout.to_string(),
                resource: Some(any(&cluster)),
                ..DeltaResource::default()
            }
        };
        let delta = |resources, removed: &[&str]| DeltaDiscoveryResponse {
            type_url: ResourceType::Cluster.type_url(),
            resources,
            removed_resources: removed.iter().map(|name| (*name).to_owned()).collect(),
            nonce: "n".to_owned(),
            ..DeltaDiscoveryResponse::default()
        };
        let mut held = DeltaResources::default();
        let (_, merged) = held.merge(&delta(vec![cluster(1)], &[]), &BTreeSet::new());
        held.accept(merged.unwrap_or_else(|| panic!("a known type")));
        for (what, response) in [
            ("sent twice", delta(vec![cluster(2), cluster(3)], &[])),
            ("sent and removed", delta(vec![cluster(2)], &["x"])),
        ] {
            let prepare = |refused: &BTreeSet<String>| {
                let (complete, merged) = held.merge(&response, refused);
                let versions = merged.map(|m| m.versions()).unwrap_or_default();
                subscription().prepare(ResourceType::Cluster, &complete, Listing::Delta(&versions))
            };
            let rejected = prepare(&BTreeSet::new()).err();
            assert_eq!(
                rejected.as_ref().and_then(|r| r.resource.clone()),
                Some(ResourceId::new(ResourceKind::Cluster, "x")),
                "{what}"
            );
            assert!(
                rejected.is_some_and(|r| r.message.contains("sent twice")),
                "{what}"
            );
            // Refused, it keeps what is held of it.
            let refused = BTreeSet::from(["x".to_owned()]);
            assert!(prepare(&refused).is_ok(), "{what}");
            let (_, merged) = held.merge(&response, &refused);
            let versions = merged.map(|m| m.versions()).unwrap_or_default();
            assert_eq!(versions.get("x").map(String::as_str), Some("1"), "{what}");
        }
    }

    #[test]
    fn a_delta_resource_sent_under_another_name_is_rejected() {
        let cluster = |name: &str| Cluster {
            name: name.to_owned(),
            ..Cluster::default()
        };
        for sent_as in ["", "other"] {
            let delta = DeltaDiscoveryResponse {
                type_url: ResourceType::Cluster.type_url(),
                resources: vec![DeltaResource {
                    name: sent_as.to_owned(),
                    version: "1".to_owned(),
                    resource: Some(any(&cluster("x"))),
                    ..DeltaResource::default()
                }],
                nonce: "n1".to_owned(),
                ..DeltaDiscoveryResponse::default()
            };
            // Were it accepted, `x` would run but not be held: the next response would remove
            // it.
            let (complete, merged) = DeltaResources::default().merge(&delta, &BTreeSet::new());
            let versions = merged.map(|m| m.versions()).unwrap_or_default();
            let rejected = subscription()
                .prepare(ResourceType::Cluster, &complete, Listing::Delta(&versions))
                .err();
            assert_eq!(
                rejected.as_ref().and_then(|r| r.resource.clone()),
                Some(ResourceId::new(ResourceKind::Cluster, "x")),
                "sent as {sent_as:?}"
            );
            assert!(
                rejected.is_some_and(|r| r.message.contains("sent under another name")),
                "sent as {sent_as:?}"
            );
        }
    }

    #[test]
    fn a_delta_eds_cluster_starts_serving_under_its_own_version() {
        let mut subscription = subscription();
        let cluster = Cluster {
            name: "c".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Cluster::default()
        };
        let cds = response(ResourceType::Cluster, "system-1", vec![any(&cluster)]);
        let own = BTreeMap::from([("c".to_owned(), "c7".to_owned())]);
        let update = apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::Delta(&own),
        );
        assert!(update.clusters.is_empty(), "warming");
        let eds = response(
            ResourceType::Endpoints,
            "system-2",
            vec![any(&assignment("c"))],
        );
        let own = BTreeMap::from([("c".to_owned(), "e3".to_owned())]);
        let update = apply(
            &mut subscription,
            ResourceType::Endpoints,
            &eds,
            Listing::Delta(&own),
        );
        let version = |kind| {
            update
                .versions
                .get(&ResourceId::new(kind, "c"))
                .map(String::as_str)
        };
        assert_eq!(version(ResourceKind::Endpoints), Some("e3"));
        assert_eq!(version(ResourceKind::Cluster), Some("c7"));
    }

    /// A subscription to every cluster and the route configs `route_configs`, held to `limits`.
    fn limited(limits: serde_json::Value, route_configs: &[&str]) -> Subscription {
        let spec: Result<XdsSpec, _> = serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1:1", "node_id": "n", "clusters": ["*"],
            "route_configs": route_configs, "limits": limits,
        }));
        match spec {
            Ok(spec) => Subscription::new(&spec, Node::default()),
            Err(err) => panic!("{err}"),
        }
    }

    /// The reason a response of `resources` at `version` is rejected, or `None` if it applies
    /// (then it is applied).
    fn refusal(
        subscription: &mut Subscription,
        kind: ResourceType,
        version: &str,
        resources: Vec<Any>,
        listing: Listing<'_>,
    ) -> Option<String> {
        match subscription.prepare(kind, &response(kind, version, resources), listing) {
            Ok(prepared) => {
                subscription.accept(prepared);
                None
            }
            Err(rejected) => Some(rejected.message),
        }
    }

    /// [`refusal`] of a state-of-the-world response.
    fn sotw_refusal(
        subscription: &mut Subscription,
        kind: ResourceType,
        version: &str,
        resources: Vec<Any>,
    ) -> Option<String> {
        refusal(
            subscription,
            kind,
            version,
            resources,
            Listing::StateOfTheWorld,
        )
    }

    /// Fails unless `refused` says `says`.
    fn assert_refused(refused: Option<String>, says: &str) {
        assert!(
            refused.as_deref().is_some_and(|m| m.contains(says)),
            "{refused:?}, not {says:?}"
        );
    }

    fn eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Cluster::default()
        }
    }

    /// Gives `cluster` istiod's HBONE entry alone, and `endpoints` (an assignment with one
    /// endpoint) two more like it that only the tunnel reaches: one its labels send through that
    /// entry, one at an internal address. The first stays the one that serves.
    fn with_hbone(cluster: &mut Cluster, endpoints: &mut ClusterLoadAssignment) {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
        use envoy_types::pb::envoy::config::core::v3::{
            EnvoyInternalAddress, Metadata, TransportSocket,
        };
        use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
        use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

        let tunnel = || Struct {
            fields: [(
                "tunnel".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("http".to_owned())),
                },
            )]
            .into(),
        };
        cluster.transport_socket_matches = vec![TransportSocketMatch {
            name: "hbone".to_owned(),
            r#match: Some(tunnel()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.internal_upstream".to_owned(),
                config_type: Some(ConfigType::TypedConfig(any(
                    &InternalUpstreamTransport::default(),
                ))),
            }),
        }];
        let served = endpoints.endpoints[0].lb_endpoints[0].clone();
        let mut tunnelled = served.clone();
        let mut metadata = Metadata::default();
        metadata
            .filter_metadata
            .insert("envoy.transport_socket_match".to_owned(), tunnel());
        tunnelled.metadata = Some(metadata);
        let mut internal = served.clone();
        internal.host_identifier = Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::EnvoyInternalAddress(
                    EnvoyInternalAddress::default(),
                )),
            }),
            ..Endpoint::default()
        }));
        endpoints.endpoints[0].lb_endpoints = vec![served, tunnelled, internal];
    }

    /// An EDS cluster with istiod's HBONE entry alone leaves out, and counts under its
    /// assignment, the endpoint its labels send through that entry, beside one at an internal
    /// address that its assignment leaves out; the other endpoint serves.
    #[test]
    fn endpoints_left_out_by_a_clusters_hbone_entry_are_counted_by_assignment() {
        let mut cluster = eds_cluster("c");
        let mut endpoints = assignment("c");
        with_hbone(&mut cluster, &mut endpoints);

        let mut subscription = subscription();
        let cds = response(ResourceType::Cluster, "c1", vec![any(&cluster)]);
        apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::StateOfTheWorld,
        );
        let eds = response(ResourceType::Endpoints, "e1", vec![any(&endpoints)]);
        let update = apply(
            &mut subscription,
            ResourceType::Endpoints,
            &eds,
            Listing::StateOfTheWorld,
        );
        assert_eq!(update.clusters.len(), 1);
        assert_eq!(update.clusters[0].endpoints.len(), 1, "{update:#?}");
        assert_eq!(
            subscription.hbone_endpoints_left_out(),
            BTreeMap::from([("c".to_owned(), 2)])
        );
    }

    /// A cluster whose endpoints CDS carries (`load_assignment`: istiod's DNS clusters, built
    /// as its EDS assignments are, with HBONE endpoints for a proxy that claims HBONE) leaves
    /// out those only the tunnel reaches as an EDS cluster does, and they are warned of as
    /// those of an assignment are.
    #[test]
    fn endpoints_cds_carries_that_only_hbone_reaches_are_warned_of() {
        let mut cluster = Cluster {
            name: "dns".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                DiscoveryType::StrictDns as i32,
            )),
            ..Cluster::default()
        };
        let mut endpoints = assignment("dns");
        with_hbone(&mut cluster, &mut endpoints);
        cluster.load_assignment = Some(endpoints);

        let mut subscription = subscription();
        let cds = response(ResourceType::Cluster, "c1", vec![any(&cluster)]);
        let (update, warnings) = crate::warn::tests::warnings_of(|| {
            apply(
                &mut subscription,
                ResourceType::Cluster,
                &cds,
                Listing::StateOfTheWorld,
            )
        });
        assert_eq!(update.clusters.len(), 1);
        assert_eq!(update.clusters[0].endpoints.len(), 1, "{update:#?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("HBONE") && w.contains("\"dns\": 2")),
            "{warnings:#?}"
        );
        assert_eq!(
            subscription.inline_hbone_endpoints_left_out(),
            BTreeMap::from([("dns".to_owned(), 2)])
        );
        assert!(subscription.hbone_endpoints_left_out().is_empty());
    }

    /// Endpoints only Istio's HBONE tunnel reaches run in no cluster, so they do not count
    /// against `limits.max_endpoints`: a mesh with many ambient pods does not have its updates
    /// refused for pods the proxy never calls. Those a cluster's HBONE entry takes are still held
    /// (another cluster of their service may run them), bounded apart by the same number; each
    /// cluster that runs them counts them.
    #[test]
    fn endpoints_only_hbone_reaches_do_not_count_against_max_endpoints() {
        let mut subscription = limited(serde_json::json!({ "max_endpoints": 2 }), &[]);
        let (cds, eds) = (ResourceType::Cluster, ResourceType::Endpoints);
        let mut cluster = eds_cluster("c");
        let mut endpoints = assignment("c");
        with_hbone(&mut cluster, &mut endpoints);
        // One endpoint serves; two its labels send through the HBONE entry, one is internal.
        let tunnelled = endpoints.endpoints[0].lb_endpoints[1].clone();
        endpoints.endpoints[0].lb_endpoints.push(tunnelled.clone());
        assert_eq!(
            sotw_refusal(&mut subscription, cds, "c1", vec![any(&cluster)]),
            None
        );
        let update = apply(
            &mut subscription,
            eds,
            &response(eds, "e1", vec![any(&endpoints)]),
            Listing::StateOfTheWorld,
        );
        assert_eq!(update.clusters[0].endpoints.len(), 1, "{update:#?}");
        // The cluster changed, its endpoints held: still one running.
        cluster.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 3,
            nanos: 0,
        });
        assert_eq!(
            sotw_refusal(&mut subscription, cds, "c2", vec![any(&cluster)]),
            None
        );
        // A cluster of the same service without the entry runs them all: 1 + 3.
        let mut plain = eds_cluster("plain");
        plain.eds_cluster_config = Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig {
                service_name: "c".to_owned(),
                ..Default::default()
            },
        );
        assert_refused(
            sotw_refusal(
                &mut subscription,
                cds,
                "c3",
                vec![any(&cluster), any(&plain)],
            ),
            "the proxy would hold 4 endpoints from the server, over `dynamic.xds.limits.max_endpoints` (2)",
        );
        // Those held only for the tunnel are bounded too.
        endpoints.endpoints[0].lb_endpoints.push(tunnelled);
        assert_refused(
            sotw_refusal(&mut subscription, eds, "e2", vec![any(&endpoints)]),
            "the proxy would hold 3 HBONE-only endpoints from the server, over `dynamic.xds.limits.max_endpoints` (2)",
        );
    }

    /// `assignment(name)` with its one endpoint `endpoints` times.
    fn assignment_of(name: &str, endpoints: usize) -> Any {
        let mut assignment = assignment(name);
        let group = &mut assignment.endpoints[0];
        group.lb_endpoints = vec![group.lb_endpoints[0].clone(); endpoints];
        any(&assignment)
    }

    /// The names of the clusters `update` adds or replaces, and of the resources it versions.
    fn changed(update: &DynamicUpdate) -> (Vec<&str>, Vec<&str>) {
        (
            update.clusters.iter().map(|c| c.name.as_str()).collect(),
            update.versions.keys().map(|id| id.name.as_str()).collect(),
        )
    }

    /// An EDS cluster taking its endpoints from a config source whose `initial_fetch_timeout` is
    /// `timeout` (unset: `None`).
    fn eds_cluster_waiting(name: &str, timeout: Option<i64>) -> Cluster {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
        use envoy_types::pb::envoy::config::core::v3::ConfigSource;
        let initial_fetch_timeout = timeout
            .map(|seconds| envoy_types::pb::google::protobuf::Duration { seconds, nanos: 0 });
        Cluster {
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    initial_fetch_timeout,
                    ..ConfigSource::default()
                }),
                ..EdsClusterConfig::default()
            }),
            ..eds_cluster(name)
        }
    }

    #[test]
    fn an_eds_cluster_serves_without_endpoints_once_its_wait_is_up() {
        use std::time::Duration;

        let mut subscription = subscription();
        let before = Instant::now();
        let clusters = |connect_timeout: i64| {
            let mut starved = eds_cluster_waiting("starved", Some(2));
            starved.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
                seconds: connect_timeout,
                nanos: 0,
            });
            vec![
                any(&starved),
                any(&eds_cluster_waiting("default", None)),
                any(&eds_cluster_waiting("patient", Some(0))),
                // Too far to tell from for ever.
                any(&eds_cluster_waiting("far", Some(i64::MAX))),
            ]
        };
        let cds = response(ResourceType::Cluster, "c1", clusters(1));
        let update = apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::StateOfTheWorld,
        );
        assert!(update.clusters.is_empty(), "all warm");
        let deadlines = subscription.endpoints_deadlines.clone();
        assert_eq!(
            deadlines.keys().collect::<Vec<_>>(),
            ["default", "starved"],
            "those that wait for ever have no deadline"
        );
        let waits = |name: &str| deadlines.get(name).map(|d| d.duration_since(before));
        assert!(waits("starved").is_some_and(|w| w >= Duration::from_secs(2)));
        assert!(waits("default").is_some_and(|w| w >= Duration::from_secs(15)));
        let first = subscription.next_endpoints_deadline();
        assert_eq!(first, deadlines.get("starved").copied());

        let Some(first) = first else {
            panic!("no deadline");
        };
        assert!(
            subscription
                .endpoints_timed_out(first - Duration::from_millis(1))
                .is_none()
        );
        let Some((update, names)) = subscription.endpoints_timed_out(first) else {
            panic!("the wait is up");
        };
        assert_eq!(names, ["starved"]);
        assert_eq!(changed(&update), (vec!["starved"], vec!["starved"]));
        assert!(update.clusters[0].endpoints.is_empty());
        assert_eq!(
            update
                .versions
                .get(&ResourceId::new(ResourceKind::Cluster, "starved")),
            Some(&"c1".to_owned())
        );
        subscription.serve_without_endpoints(names);
        assert_eq!(
            subscription.warming_clusters(),
            ["default", "far", "patient"]
        );
        assert_eq!(subscription.clusters_without_endpoints(), ["starved"]);
        assert_eq!(
            subscription.next_endpoints_deadline(),
            deadlines.get("default").copied()
        );

        // Its next version serves at once, without endpoints still.
        let cds = response(ResourceType::Cluster, "c2", clusters(2));
        let update = apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::StateOfTheWorld,
        );
        assert_eq!(changed(&update), (vec!["starved"], vec!["starved"]));
        assert!(update.clusters[0].endpoints.is_empty());

        // Its endpoints arrive: it serves with them, and waits no more.
        let eds = response(
            ResourceType::Endpoints,
            "e1",
            vec![any(&assignment("starved"))],
        );
        let update = apply(
            &mut subscription,
            ResourceType::Endpoints,
            &eds,
            Listing::StateOfTheWorld,
        );
        assert_eq!(update.clusters.len(), 1);
        assert_eq!(update.clusters[0].endpoints.len(), 1);
        assert!(subscription.clusters_without_endpoints().is_empty());

        // A cluster removed forgets its wait.
        let cds = response(
            ResourceType::Cluster,
            "c3",
            vec![any(&eds_cluster("other"))],
        );
        apply(
            &mut subscription,
            ResourceType::Cluster,
            &cds,
            Listing::StateOfTheWorld,
        );
        assert_eq!(
            subscription.endpoints_deadlines.keys().collect::<Vec<_>>(),
            ["other"]
        );
    }

    /// `first` then `rest` encoded one after the other: the message of both, its fields in
    /// another order than prost's.
    fn concatenated<M: Message + Name>(first: &M, rest: &M) -> Any {
        let mut value = first.encode_to_vec();
        value.extend(rest.encode_to_vec());
        Any {
            type_url: M::type_url(),
            value,
        }
    }

    #[test]
    fn resources_sent_again_in_another_encoding_are_not_applied_again() {
        use envoy_types::pb::envoy::config::route::v3::route::Action;
        use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, VirtualHost};

        let mut subscription = limited(serde_json::json!({}), &["r"]);
        let cluster = eds_cluster("c");
        let endpoints = assignment("c");
        let routes = RouteConfiguration {
            name: "r".to_owned(),
            virtual_hosts: vec![VirtualHost {
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("c".to_owned())),
                        ..RouteAction::default()
                    })),
                    ..Route::default()
                }],
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        };
        let as_sent = [
            (ResourceType::Cluster, any(&cluster)),
            (ResourceType::Endpoints, any(&endpoints)),
            (ResourceType::RouteConfig, any(&routes)),
        ];
        for (kind, resource) in &as_sent {
            let first = response(*kind, "1", vec![resource.clone()]);
            apply(&mut subscription, *kind, &first, Listing::StateOfTheWorld);
        }
        let name_first = |name: &str| ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            ..ClusterLoadAssignment::default()
        };
        let reordered = [
            (
                ResourceType::Cluster,
                concatenated(
                    &Cluster {
                        cluster_discovery_type: cluster.cluster_discovery_type.clone(),
                        ..Cluster::default()
                    },
                    &Cluster {
                        cluster_discovery_type: None,
                        ..cluster.clone()
                    },
                ),
            ),
            (
                ResourceType::Endpoints,
                concatenated(
                    &ClusterLoadAssignment {
                        cluster_name: String::new(),
                        ..endpoints.clone()
                    },
                    &name_first("c"),
                ),
            ),
            (
                ResourceType::RouteConfig,
                concatenated(
                    &RouteConfiguration {
                        name: String::new(),
                        ..routes.clone()
                    },
                    &RouteConfiguration {
                        name: "r".to_owned(),
                        ..RouteConfiguration::default()
                    },
                ),
            ),
        ];
        for (kind, resource) in reordered {
            let sent = as_sent.iter().find(|(k, _)| *k == kind);
            assert_ne!(
                sent.map(|(_, a)| &a.value),
                Some(&resource.value),
                "{kind:?}: other bytes"
            );
            let again = response(kind, "2", vec![resource.clone()]);
            let update = apply(&mut subscription, kind, &again, Listing::StateOfTheWorld);
            assert_eq!(changed(&update), (vec![], vec![]), "{kind:?}");
            assert!(update.route_configs.is_empty(), "{kind:?}");
            assert_eq!(
                subscription
                    .known
                    .get(&kind)
                    .and_then(|k| k.name_of(&resource.value)),
                Some(if kind == ResourceType::RouteConfig {
                    "r"
                } else {
                    "c"
                }),
                "{kind:?}: known by its new bytes"
            );
        }
        assert_eq!(
            subscription.cluster_versions.get("c").map(String::as_str),
            Some("1"),
            "it keeps the version it changed at"
        );
    }

    #[test]
    fn clusters_sent_again_unchanged_are_not_applied_again() {
        let mut subscription = subscription();
        let cluster = |name: &str, timeout: i64| {
            any(&Cluster {
                name: name.to_owned(),
                connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: timeout,
                    nanos: 0,
                }),
                ..Cluster::default()
            })
        };
        let mut cds = |version: &str, a: i64, b: i64| {
            let response = response(
                ResourceType::Cluster,
                version,
                vec![cluster("a", a), cluster("b", b)],
            );
            apply(
                &mut subscription,
                ResourceType::Cluster,
                &response,
                Listing::StateOfTheWorld,
            )
        };
        assert_eq!(changed(&cds("v1", 1, 1)), (vec!["a", "b"], vec!["a", "b"]));
        assert_eq!(changed(&cds("v2", 1, 2)), (vec!["b"], vec!["b"]));
        assert_eq!(changed(&cds("v3", 3, 2)), (vec!["a"], vec!["a"]));
        // `a` as it was at v1 is not what runs: it is applied.
        assert_eq!(changed(&cds("v4", 1, 2)), (vec!["a"], vec!["a"]));
        assert_eq!(changed(&cds("v5", 1, 2)), (vec![], vec![]));
        assert_eq!(
            subscription.cluster_versions,
            BTreeMap::from([
                ("a".to_owned(), "v4".to_owned()),
                ("b".to_owned(), "v2".to_owned())
            ]),
            "each keeps the version it last changed at"
        );
    }

    #[test]
    fn only_the_endpoints_that_changed_are_applied_from_a_delta_response() {
        let mut subscription = subscription();
        let clusters = response(
            ResourceType::Cluster,
            "c1",
            vec![any(&eds_cluster("a")), any(&eds_cluster("b"))],
        );
        apply(
            &mut subscription,
            ResourceType::Cluster,
            &clusters,
            Listing::StateOfTheWorld,
        );
        // As the client holds them once a delta response is merged: every assignment.
        let mut eds = |version: &str, assignments: Vec<Any>| {
            let names = ["a", "b"]
                .into_iter()
                .take(assignments.len())
                .map(|name| (name.to_owned(), version.to_owned()))
                .collect();
            let response = response(ResourceType::Endpoints, version, assignments);
            apply(
                &mut subscription,
                ResourceType::Endpoints,
                &response,
                Listing::Delta(&names),
            )
        };
        let both = eds("e1", vec![assignment_of("a", 1), assignment_of("b", 1)]);
        assert_eq!(changed(&both).0, ["a", "b"]);
        let one = eds("e2", vec![assignment_of("a", 2), assignment_of("b", 1)]);
        assert_eq!(changed(&one), (vec!["a"], vec!["a"]));
        assert_eq!(one.clusters[0].endpoints.len(), 2);
        // `b` removed: it runs without endpoints.
        let removed = eds("e3", vec![assignment_of("a", 2)]);
        assert_eq!(changed(&removed), (vec!["b"], vec!["b"]));
        assert!(removed.clusters[0].endpoints.is_empty());
        assert_eq!(subscription.assignments.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_cds_response_past_max_clusters_is_rejected_naming_the_bound() {
        let mut subscription = limited(serde_json::json!({ "max_clusters": 2 }), &[]);
        let clusters = |names: &[&str]| {
            let cluster = |name: &&str| {
                any(&Cluster {
                    name: (*name).to_owned(),
                    ..Cluster::default()
                })
            };
            names.iter().map(cluster).collect::<Vec<_>>()
        };
        let over = ["a", "b", "c"];
        let refused = sotw_refusal(
            &mut subscription,
            ResourceType::Cluster,
            "c1",
            clusters(&over),
        );
        assert_refused(
            refused,
            "at resources[2]: the proxy would hold 3 clusters from the server, over `dynamic.xds.limits.max_clusters` (2)",
        );
        // The same over delta ADS, where a response lists every cluster held.
        let held = over.map(|name| (name.to_owned(), String::new())).into();
        let refused = refusal(
            &mut subscription,
            ResourceType::Cluster,
            "c1",
            clusters(&over),
            Listing::Delta(&held),
        );
        assert_refused(refused, "max_clusters");
        let refused = sotw_refusal(
            &mut subscription,
            ResourceType::Cluster,
            "c2",
            clusters(&["a", "b"]),
        );
        assert_eq!(refused, None);
    }

    #[test]
    fn endpoints_held_past_max_endpoints_are_rejected_counting_every_cluster() {
        let mut subscription = limited(serde_json::json!({ "max_endpoints": 4 }), &[]);
        let mut sotw = |kind, version: &str, resources| {
            sotw_refusal(&mut subscription, kind, version, resources)
        };
        let (cds, eds) = (ResourceType::Cluster, ResourceType::Endpoints);
        let two = vec![any(&eds_cluster("a")), any(&eds_cluster("b"))];
        assert_eq!(sotw(cds, "c1", two.clone()), None);
        // One assignment past the bound alone.
        assert_refused(
            sotw(eds, "e1", vec![assignment_of("a", 5)]),
            "the proxy would hold 5 endpoints from the server, over `dynamic.xds.limits.max_endpoints` (4)",
        );
        // Each response within it, but not what they add up to: a state-of-the-world EDS
        // response carries only the assignments it names, and those held stay.
        assert_eq!(sotw(eds, "e2", vec![assignment_of("a", 3)]), None);
        assert_refused(
            sotw(eds, "e3", vec![assignment_of("b", 2)]),
            "hold 5 endpoints",
        );
        // A cluster taking the endpoints of a service held counts them again: each cluster
        // runs its own.
        let mut shared = eds_cluster("a2");
        shared.eds_cluster_config = Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig {
                service_name: "a".to_owned(),
                ..Default::default()
            },
        );
        let mut three = two;
        three.push(any(&shared));
        assert_refused(sotw(cds, "c2", three), "hold 6 endpoints");
    }

    #[test]
    fn routes_held_past_max_routes_are_rejected_counting_every_route_config() {
        use envoy_types::pb::envoy::config::route::v3::route::Action;
        use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
        use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, VirtualHost};

        let config = |name: &str, routes: usize| {
            let route = Route {
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster("c".to_owned())),
                    ..RouteAction::default()
                })),
                ..Route::default()
            };
            any(&RouteConfiguration {
                name: name.to_owned(),
                virtual_hosts: vec![VirtualHost {
                    routes: vec![route; routes],
                    ..VirtualHost::default()
                }],
                ..RouteConfiguration::default()
            })
        };
        let mut subscription = limited(serde_json::json!({ "max_routes": 3 }), &["a", "b"]);
        let rds = ResourceType::RouteConfig;
        assert_refused(
            sotw_refusal(
                &mut subscription,
                rds,
                "r1",
                vec![config("a", 2), config("b", 2)],
            ),
            "at resources[1]: the proxy would hold 4 routes from the server, over `dynamic.xds.limits.max_routes` (3)",
        );
        for (version, configs) in [("r2", vec![config("a", 2)]), ("r3", vec![config("b", 1)])] {
            let refused = sotw_refusal(&mut subscription, rds, version, configs);
            assert_eq!(refused, None, "{version}");
        }
        // Subscribed by name: a response carries those it names, and the others held stay.
        assert_refused(
            sotw_refusal(&mut subscription, rds, "r4", vec![config("b", 2)]),
            "hold 4 routes",
        );
        // A delta response lists every one held: the one it leaves out goes.
        let held = BTreeMap::from([("b".to_owned(), "5".to_owned())]);
        let refused = refusal(
            &mut subscription,
            rds,
            "r5",
            vec![config("b", 3)],
            Listing::Delta(&held),
        );
        assert_eq!(refused, None);
    }

    /// A nonce names a response of one stream: a request of the next stream carries none that
    /// the stream did not send, EDS included when the stream opened without asking for it.
    #[test]
    fn a_new_stream_carries_no_nonce_of_the_last() {
        fn answers(subscription: &mut Subscription, response: &DiscoveryResponse) -> Vec<String> {
            let kind = ResourceType::from_type_url(&response.type_url);
            let prepared =
                kind.map(|kind| subscription.prepare(kind, response, Listing::StateOfTheWorld));
            match prepared {
                Some(Ok(prepared)) => subscription
                    .accept(prepared)
                    .into_iter()
                    .map(|r| format!("{} {:?}", r.type_url, r.response_nonce))
                    .collect(),
                Some(Err(rejected)) => panic!("{}", rejected.message),
                None => panic!("not a known type"),
            }
        }
        let mut subscription = subscription();
        subscription.initial_requests();
        let cds = |version: &str, clusters| response(ResourceType::Cluster, version, clusters);
        answers(&mut subscription, &cds("c1", vec![any(&eds_cluster("a"))]));
        let eds = response(ResourceType::Endpoints, "e1", vec![any(&assignment("a"))]);
        answers(&mut subscription, &eds);
        // Its cluster goes: EDS asks for nothing, and the next stream opens without it.
        answers(&mut subscription, &cds("c2", Vec::new()));
        let opening = subscription.initial_requests();
        assert!(opening.iter().all(|r| r.response_nonce.is_empty()));
        let requests = answers(&mut subscription, &cds("c3", vec![any(&eds_cluster("b"))]));
        assert_eq!(
            requests,
            [
                format!("{} \"c3\"", ResourceType::Cluster.type_url()),
                format!("{} \"\"", ResourceType::Endpoints.type_url()),
            ]
        );
    }
}
