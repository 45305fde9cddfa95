//! The resource types the client subscribes to, by their xDS type URLs.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Name;

/// A resource type of the subscription, in the order the client asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoints,
    /// RDS: `envoy.config.route.v3.RouteConfiguration` (MetaProtocol routes, Aeraki's encoding).
    RouteConfig,
}

impl ResourceType {
    /// Every type, in the order the client asks for them (clusters before what uses them).
    pub const ALL: [Self; 3] = [Self::Cluster, Self::Endpoints, Self::RouteConfig];

    /// The type URL of its resources.
    pub fn type_url(self) -> String {
        match self {
            Self::Cluster => Cluster::type_url(),
            Self::Endpoints => ClusterLoadAssignment::type_url(),
            Self::RouteConfig => RouteConfiguration::type_url(),
        }
    }

    /// The type of `type_url`, if the client knows it.
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == type_url)
    }

    /// The short name xDS users know it by (`CDS`).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Cluster => "CDS",
            Self::Endpoints => "EDS",
            Self::RouteConfig => "RDS",
        }
    }
}
