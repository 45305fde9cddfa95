//! Errors the proxy answers itself.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Why the proxy answered a request itself instead of forwarding the server's answer.
///
/// Each codec maps a kind onto its protocol's closest error (see the codec crates); the names
/// (`snake_case`, see [`LocalReplyKind::name`]) are what config files use, e.g. for fault aborts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalReplyKind {
    /// No route matched the request.
    RouteNotFound,
    /// The route's cluster has no endpoint that can take the request.
    NoHealthyUpstream,
    /// The service is unavailable (used by fault injection and circuit breakers).
    Unavailable,
    /// A rate limit or circuit breaker refused the request.
    OverLimit,
    /// An authorization policy refused the request.
    Unauthorized,
    /// The route's timeout expired before the upstream answered.
    Timeout,
    /// The upstream connection failed or was reset before the answer arrived.
    UpstreamReset,
    /// No connection to an upstream could be opened (or its endpoints are backing off after
    /// failed attempts); the request was not sent.
    UpstreamConnectFailure,
    /// Fault injection aborted the request.
    FaultAbort,
    /// The request cannot be proxied (unsupported encoding, invalid content).
    BadRequest,
    /// An unexpected failure inside the proxy.
    Internal,
}

impl LocalReplyKind {
    /// Every kind, in declaration order.
    pub const ALL: [LocalReplyKind; 11] = [
        Self::RouteNotFound,
        Self::NoHealthyUpstream,
        Self::Unavailable,
        Self::OverLimit,
        Self::Unauthorized,
        Self::Timeout,
        Self::UpstreamReset,
        Self::UpstreamConnectFailure,
        Self::FaultAbort,
        Self::BadRequest,
        Self::Internal,
    ];

    /// The config and metrics name of this kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::RouteNotFound => "route_not_found",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::Unavailable => "unavailable",
            Self::OverLimit => "over_limit",
            Self::Unauthorized => "unauthorized",
            Self::Timeout => "timeout",
            Self::UpstreamReset => "upstream_reset",
            Self::UpstreamConnectFailure => "upstream_connect_failure",
            Self::FaultAbort => "fault_abort",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for LocalReplyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`LocalReplyKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown local reply kind `{0}`; expected one of route_not_found, no_healthy_upstream, unavailable, over_limit, unauthorized, timeout, upstream_reset, upstream_connect_failure, fault_abort, bad_request, internal"
)]
pub struct UnknownReplyKind(pub String);

impl FromStr for LocalReplyKind {
    type Err = UnknownReplyKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownReplyKind(s.to_owned()))
    }
}

/// An error answered by the proxy: its kind and a message a person can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// What went wrong.
    pub kind: LocalReplyKind,
    /// A readable explanation, carried in the protocol's error text.
    pub message: Cow<'static, str>,
}

impl LocalReply {
    /// A reply of `kind` with `message`.
    pub fn new(kind: LocalReplyKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for LocalReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in LocalReplyKind::ALL {
            assert_eq!(kind.name().parse::<LocalReplyKind>(), Ok(kind));
        }
        assert!("nope".parse::<LocalReplyKind>().is_err());
    }
}
