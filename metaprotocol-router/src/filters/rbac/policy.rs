//! One authorization policy: conditions on the client (its TLS principal, the namespace of its
//! SPIFFE id, its address) and on the request's metadata, all of which must hold for the policy
//! to match.

use std::sync::Arc;

use metaprotocol_core::{ConnectionInfo, RoutingView};
use serde::Deserialize;

use crate::config::{ConfigError, MetadataMatcherSpec};
use crate::route::{IpRange, MetadataMatcher, NamespaceMatcher, PrincipalMatcher};

/// A policy as configured.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicySpec {
    /// For logs.
    pub name: String,
    /// The client's TLS identity is one of these (Istio-style patterns: exact, `prefix*`,
    /// `*suffix`, `*`); `None`: any client.
    #[serde(default)]
    principals: Option<Vec<String>>,
    /// ... and none of these.
    #[serde(default)]
    not_principals: Vec<String>,
    /// The namespace of the client's SPIFFE id is one of these (Istio's `namespaces`: exact,
    /// `prefix*`, `*suffix`, `*`); `None`: any client.
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    /// ... and none of these.
    #[serde(default)]
    not_namespaces: Vec<String>,
    /// The client's address is in one of these ranges (`None`: any address) ...
    #[serde(default)]
    source_ips: Option<Vec<String>>,
    /// ... and in none of these.
    #[serde(default)]
    not_source_ips: Vec<String>,
    /// Conditions on the request's metadata, all of which must hold (`invert: true` negates
    /// one).
    #[serde(default)]
    metadata: Vec<MetadataMatcherSpec>,
}

/// A compiled policy. An empty list is no condition; matching allocates nothing.
#[derive(Debug)]
pub(super) struct Policy {
    /// Shared with the access log lines that name it.
    pub name: Arc<str>,
    principals: Vec<PrincipalMatcher>,
    not_principals: Vec<PrincipalMatcher>,
    namespaces: Vec<NamespaceMatcher>,
    not_namespaces: Vec<NamespaceMatcher>,
    source_ips: Vec<IpRange>,
    not_source_ips: Vec<IpRange>,
    metadata: Vec<MetadataMatcher>,
}

impl Policy {
    pub fn new(spec: &PolicySpec) -> Result<Self, ConfigError> {
        if spec.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        Ok(Self {
            name: spec.name.as_str().into(),
            principals: principals("principals", one_of("principals", &spec.principals)?)?,
            not_principals: principals("not_principals", &spec.not_principals)?,
            namespaces: namespaces("namespaces", one_of("namespaces", &spec.namespaces)?)?,
            not_namespaces: namespaces("not_namespaces", &spec.not_namespaces)?,
            source_ips: ranges("source_ips", one_of("source_ips", &spec.source_ips)?)?,
            not_source_ips: ranges("not_source_ips", &spec.not_source_ips)?,
            metadata: spec
                .metadata
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    m.validate()
                        .and_then(|()| MetadataMatcher::new(m))
                        .map_err(|e| e.within(&format!("metadata[{i}]")))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// True if every condition holds for the request seen through `view`, from `connection`.
    pub fn matches(&self, view: &RoutingView<'_>, connection: &ConnectionInfo) -> bool {
        let peer = connection.peer_identity.as_deref();
        let ip = connection.peer_addr.ip();
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(peer)))
            && !self.not_principals.iter().any(|p| p.matches(peer))
            && (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n.matches(peer)))
            && !self.not_namespaces.iter().any(|n| n.matches(peer))
            && (self.source_ips.is_empty() || self.source_ips.iter().any(|r| r.contains(ip)))
            && !self.not_source_ips.iter().any(|r| r.contains(ip))
            && self.metadata.iter().all(|m| m.matches(view))
    }
}

/// The entries of a "one of these" list; an absent list is no condition. A list written empty
/// is an error: it reads as "none of them", but as no condition it would match every request
/// (with `action: allow`, let every client in).
fn one_of<'a>(field: &str, list: &'a Option<Vec<String>>) -> Result<&'a [String], ConfigError> {
    match list {
        None => Ok(&[]),
        Some(list) if list.is_empty() => Err(ConfigError::new(
            field,
            "must not be empty (leave it out to match any client)",
        )),
        Some(list) => Ok(list),
    }
}

fn principals(field: &str, patterns: &[String]) -> Result<Vec<PrincipalMatcher>, ConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| {
            PrincipalMatcher::parse(pattern).map_err(|e| e.within(&format!("{field}[{i}]")))
        })
        .collect()
}

fn namespaces(field: &str, patterns: &[String]) -> Result<Vec<NamespaceMatcher>, ConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| {
            NamespaceMatcher::parse(pattern).map_err(|e| e.within(&format!("{field}[{i}]")))
        })
        .collect()
}

fn ranges(field: &str, ranges: &[String]) -> Result<Vec<IpRange>, ConfigError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, range)| IpRange::parse(range).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}
