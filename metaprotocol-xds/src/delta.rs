//! Incremental (delta) ADS over the state-of-the-world logic: the client keeps every resource
//! it holds, merges each delta response into them (added or changed resources replace theirs,
//! `removed_resources` go), and treats the result as a complete state-of-the-world response, so
//! that translation, warming, ACK and NACK work the same on both flavours, but for one thing:
//! a resource that does not translate is refused alone, keeping what is held of it. Otherwise
//! only the wire form differs: a stream opens by subscribing with the versions already held
//! (`initial_resource_versions`), an ACK or NACK names the nonce alone, and a change of the EDS
//! names is a subscribe/unsubscribe request.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;

use crate::resource::ResourceType;

/// The version of a delta response: its system version, or its nonce when the server sends none.
pub(crate) fn response_version(response: &DeltaDiscoveryResponse) -> String {
    if response.system_version_info.is_empty() {
        response.nonce.clone()
    } else {
        response.system_version_info.clone()
    }
}

/// A name `response` removes twice, if there is one: a server at fault, whose response Envoy
/// refuses whole (as it does one naming a resource in both `resources` and
/// `removed_resources`).
pub(crate) fn removed_twice(response: &DeltaDiscoveryResponse) -> Option<&str> {
    let mut removed = BTreeSet::new();
    response
        .removed_resources
        .iter()
        .find(|name| !removed.insert(name.as_str()))
        .map(String::as_str)
}

/// A held resource: its version and its encoded message.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    version: String,
    resource: Any,
}

/// What a delta response leaves the client holding of its type, once accepted.
#[derive(Debug)]
pub(crate) struct Merged {
    kind: ResourceType,
    resources: BTreeMap<String, Held>,
}

impl Merged {
    /// Each resource's own version, by name.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.resources
            .iter()
            .map(|(name, held)| (name.clone(), held.version.clone()))
            .collect()
    }
}

/// The resources the client holds, per type.
#[derive(Debug, Default)]
pub(crate) struct DeltaResources {
    held: BTreeMap<ResourceType, BTreeMap<String, Held>>,
}

impl DeltaResources {
    /// The delta form of a stream's first requests: subscriptions (`*` for a wildcard) with the
    /// versions held.
    pub fn initial_requests(&self, sotw: Vec<DiscoveryRequest>) -> Vec<DeltaDiscoveryRequest> {
        sotw.into_iter()
            .map(|request| {
                let versions = ResourceType::from_type_url(&request.type_url)
                    .and_then(|kind| self.held.get(&kind))
                    .map(|held| {
                        held.iter()
                            .map(|(name, h)| (name.clone(), h.version.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let subscribe = if request.resource_names.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    request.resource_names
                };
                DeltaDiscoveryRequest {
                    node: request.node,
                    type_url: request.type_url,
                    resource_names_subscribe: subscribe,
                    initial_resource_versions: versions,
                    ..DeltaDiscoveryRequest::default()
                }
            })
            .collect()
    }

    /// `response` merged into what is held, as a complete state-of-the-world response (its
    /// version the system version, or the nonce when the server sends none), and what to hold
    /// once it is accepted. The resources named in `refused` keep what is held of them.
    ///
    /// A resource the response names twice (sent twice, or sent and removed) is passed on
    /// twice, for translation to refuse it as sent twice: which of the two the server meant
    /// cannot be told, and Envoy refuses such a response.
    pub fn merge(
        &self,
        response: &DeltaDiscoveryResponse,
        refused: &BTreeSet<String>,
    ) -> (DiscoveryResponse, Option<Merged>) {
        let kind = ResourceType::from_type_url(&response.type_url);
        let mut resources = kind
            .and_then(|kind| self.held.get(&kind))
            .cloned()
            .unwrap_or_default();
        let removed: BTreeSet<&String> = response
            .removed_resources
            .iter()
            .filter(|name| !refused.contains(*name))
            .collect();
        for name in &removed {
            resources.remove(*name);
        }
        // Passed on besides the merged resources, for translation to refuse: those without a
        // name, and the second copy of those named twice.
        let mut refusable = Vec::new();
        let mut sent = BTreeSet::new();
        for resource in &response.resources {
            let Some(any) = resource.resource.clone() else {
                continue;
            };
            if refused.contains(&resource.name) {
                continue;
            }
            let held = Held {
                version: resource.version.clone(),
                resource: any,
            };
            let name = &resource.name;
            if name.is_empty() {
                refusable.push(held.resource);
                continue;
            }
            if !sent.insert(name) || removed.contains(name) {
                refusable.push(held.resource.clone());
            }
            resources.insert(name.clone(), held);
        }
        let sotw = DiscoveryResponse {
            version_info: response_version(response),
            resources: resources
                .values()
                .map(|h| h.resource.clone())
                .chain(refusable)
                .collect(),
            type_url: response.type_url.clone(),
            nonce: response.nonce.clone(),
            ..DiscoveryResponse::default()
        };
        (sotw, kind.map(|kind| Merged { kind, resources }))
    }

    /// Holds what an accepted response left.
    pub fn accept(&mut self, merged: Merged) {
        self.held.insert(merged.kind, merged.resources);
    }

    /// The delta form of the answers to a response of `answered`: its ACK or NACK names the
    /// nonce; any other request changes a subscription from `subscribed` (what its type asked
    /// for before). The resources unsubscribed from are no longer held: the server sends no
    /// more of them (not even their removal), so what is held of them would only grow stale,
    /// be offered back in the next stream's `initial_resource_versions`, and come back into
    /// the complete state of the next response of their type.
    pub fn answers(
        &mut self,
        sotw: Vec<DiscoveryRequest>,
        answered: &str,
        subscribed: &BTreeMap<String, Vec<String>>,
    ) -> Vec<DeltaDiscoveryRequest> {
        sotw.into_iter()
            .map(|request| {
                if request.type_url == answered {
                    return DeltaDiscoveryRequest {
                        type_url: request.type_url,
                        response_nonce: request.response_nonce,
                        error_detail: request.error_detail,
                        ..DeltaDiscoveryRequest::default()
                    };
                }
                let before: BTreeSet<&String> = subscribed
                    .get(&request.type_url)
                    .map(|names| names.iter().collect())
                    .unwrap_or_default();
                let after: BTreeSet<&String> = request.resource_names.iter().collect();
                let unsubscribe: Vec<String> =
                    before.difference(&after).map(|n| (*n).clone()).collect();
                let held = ResourceType::from_type_url(&request.type_url)
                    .and_then(|kind| self.held.get_mut(&kind));
                if let Some(held) = held {
                    for name in &unsubscribe {
                        held.remove(name);
                    }
                }
                DeltaDiscoveryRequest {
                    resource_names_subscribe: after
                        .difference(&before)
                        .map(|n| (*n).clone())
                        .collect(),
                    resource_names_unsubscribe: unsubscribe,
                    type_url: request.type_url,
                    ..DeltaDiscoveryRequest::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    use super::*;

    fn resource(name: &str, version: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            version: version.to_owned(),
            resource: Some(Any {
                type_url: ResourceType::RouteConfig.type_url(),
                value: version.as_bytes().to_vec(),
            }),
            ..Resource::default()
        }
    }

    fn response(resources: Vec<Resource>, removed: &[&str], nonce: &str) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            resources,
            removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
            type_url: ResourceType::RouteConfig.type_url(),
            nonce: nonce.to_owned(),
            ..DeltaDiscoveryResponse::default()
        }
    }

    /// The values of a merged response's resources, which the tests set to their versions.
    fn versions(sotw: &DiscoveryResponse) -> Vec<String> {
        sotw.resources
            .iter()
            .map(|any| String::from_utf8_lossy(&any.value).into_owned())
            .collect()
    }

    #[test]
    fn deltas_merge_into_the_held_state_once_accepted() {
        let mut held = DeltaResources::default();
        let (sotw, merged) = held.merge(
            &response(vec![resource("a", "1"), resource("b", "1")], &[], "n1"),
            &BTreeSet::new(),
        );
        assert_eq!(versions(&sotw), ["1", "1"]);
        assert_eq!(
            sotw.version_info, "n1",
            "without a system version, the nonce versions it"
        );
        held.accept(
            merged
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("a known type")),
        );

        // A change of `a` and the removal of `b`: the complete state is `a` alone.
        let (sotw, merged) = held.merge(
            &response(vec![resource("a", "2")], &["b"], "n2"),
            &BTreeSet::new(),
        );
        assert_eq!(versions(&sotw), ["2"]);
        // Not accepted (NACKed): the held state stays, and a reconnect asks with it.
        drop(merged);
        let initial = held.initial_requests(vec![DiscoveryRequest {
            type_url: ResourceType::RouteConfig.type_url(),
            ..DiscoveryRequest::default()
        }]);
        assert_eq!(initial[0].resource_names_subscribe, ["*"]);
        assert_eq!(
            initial[0].initial_resource_versions,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "1".to_owned())
            ]
            .into()
        );
    }

    #[test]
    fn subscription_changes_are_sent_as_subscribe_and_unsubscribe() {
        let eds = ResourceType::Endpoints.type_url();
        let before = BTreeMap::from([(eds.clone(), vec!["a".to_owned(), "b".to_owned()])]);
        let answers = DeltaResources::default().answers(
            vec![
                DiscoveryRequest {
                    type_url: ResourceType::Cluster.type_url(),
                    response_nonce: "7".to_owned(),
                    version_info: "c2".to_owned(),
                    ..DiscoveryRequest::default()
                },
                DiscoveryRequest {
                    type_url: eds,
                    resource_names: vec!["b".to_owned(), "c".to_owned()],
                    ..DiscoveryRequest::default()
                },
            ],
            &ResourceType::Cluster.type_url(),
            &before,
        );
        assert_eq!(answers[0].response_nonce, "7");
        assert!(answers[0].resource_names_subscribe.is_empty());
        assert_eq!(answers[1].resource_names_subscribe, ["c"]);
        assert_eq!(answers[1].resource_names_unsubscribe, ["a"]);
    }

    #[test]
    fn resources_unsubscribed_from_are_no_longer_held() {
        let eds = ResourceType::Endpoints.type_url();
        let eds_response = |resources, nonce: &str| DeltaDiscoveryResponse {
            type_url: eds.clone(),
            ..response(resources, &[], nonce)
        };
        let mut held = DeltaResources::default();
        let (_, merged) = held.merge(
            &eds_response(vec![resource("a", "1"), resource("b", "1")], "n1"),
            &BTreeSet::new(),
        );
        held.accept(merged.unwrap_or_else(|| panic!("a known type")));

        // Cluster `a` went: its endpoints are unsubscribed from.
        let before = BTreeMap::from([(eds.clone(), vec!["a".to_owned(), "b".to_owned()])]);
        let answers = held.answers(
            vec![DiscoveryRequest {
                type_url: eds.clone(),
                resource_names: vec!["b".to_owned()],
                ..DiscoveryRequest::default()
            }],
            &ResourceType::Cluster.type_url(),
            &before,
        );
        assert_eq!(answers[0].resource_names_unsubscribe, ["a"]);

        // The next response of the type (the server says nothing more of `a`) is `b` alone, and
        // so is what the next stream offers.
        let (sotw, _) = held.merge(
            &eds_response(vec![resource("b", "2")], "n2"),
            &BTreeSet::new(),
        );
        assert_eq!(versions(&sotw), ["2"], "no stale `a`");
        let initial = held.initial_requests(vec![DiscoveryRequest {
            type_url: eds.clone(),
            resource_names: vec!["b".to_owned()],
            ..DiscoveryRequest::default()
        }]);
        assert_eq!(
            initial[0].initial_resource_versions,
            [("b".to_owned(), "1".to_owned())].into()
        );
    }
}
