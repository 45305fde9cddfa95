//! Translation of Envoy resources into the engine's config model: `Cluster` (CDS) into a
//! [`ClusterSpec`](metaprotocol_router::config::ClusterSpec), `ClusterLoadAssignment` (EDS)
//! into endpoints, and `RouteConfiguration` (RDS, in the encoding Aeraki's MetaRDS server
//! uses) into a [`RouteConfigSpec`](metaprotocol_router::config::RouteConfigSpec).
//!
//! Translation is strict: a field the engine cannot honour is an error naming it (in the
//! resource's own words, `virtual_hosts[0].routes[2].route.hedge_policy`), which the client
//! sends back as a NACK. Nothing is silently dropped; the few fields that are accepted and
//! ignored are listed in the docs of each translation.

mod cluster;
mod endpoints;
mod health;
mod retry;
mod routes;
mod tls;

pub use cluster::{ClusterResource, cluster};
pub use endpoints::{Assignment, assignment, endpoints};
pub use routes::route_config;
pub use tls::{CertificateFiles, CertificateProviders, system_ca_file};

use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

/// Why a resource cannot be applied: the field at fault, in the resource's words, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidResource {
    /// The field, from the resource's root (`virtual_hosts[0].routes[1].match.headers[0]`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidResource {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error with `prefix` put before its field.
    pub(crate) fn within(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_owned()
        } else if self.field.starts_with('[') {
            format!("{prefix}{}", self.field)
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }

    /// A field set to something the engine cannot honour.
    pub(crate) fn unsupported(field: impl Into<String>) -> Self {
        Self::new(field, "is not supported by metaprotocol-rs")
    }
}

/// Rejects each listed field of `$msg` that is not at its default value, naming it under `$at`.
macro_rules! refuse_set {
    ($at:expr, $msg:expr, [$($field:ident),+ $(,)?]) => {
        $(
            #[allow(deprecated, reason = "a deprecated field is refused like any other")]
            let set = $crate::translate::is_set(&$msg.$field);
            if set {
                return Err($crate::translate::InvalidResource::unsupported(
                    $crate::translate::join($at, stringify!($field)),
                ));
            }
        )+
    };
}
pub(crate) use refuse_set;

/// True if `value` is not its type's default (protobuf's "unset").
pub(crate) fn is_set<T: Default + PartialEq>(value: &T) -> bool {
    *value != T::default()
}

/// `field` under `at` (`at.field`, or `field` at the root).
pub(crate) fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// A protobuf duration as a [`std::time::Duration`]; negative or out of range is an error.
pub(crate) fn duration(
    value: &ProtoDuration,
    field: &str,
) -> Result<std::time::Duration, InvalidResource> {
    let seconds = u64::try_from(value.seconds)
        .map_err(|_| InvalidResource::new(field, "must not be negative"))?;
    let nanos = u32::try_from(value.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| InvalidResource::new(field, "nanos must be 0 to 999,999,999"))?;
    Ok(std::time::Duration::new(seconds, nanos))
}
