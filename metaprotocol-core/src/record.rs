//! The per-request record: what happened to one request, as every filter hook, the access log,
//! the stats and the tracer see it.
//!
//! The engine creates one [`RequestRecord`] when a request is decoded and fills it in as the
//! request travels: the route, cluster and endpoint chosen, each attempt, timings, the outcome
//! with its [`ResponseFlags`], byte counts. Filters read it in every hook, keep their own
//! per-request state in its [`Extensions`], and may steer routing through
//! [`RequestRecord::set_routing_key`]. It is modelled on Envoy's `StreamInfo`.

use std::any::{Any, TypeId};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use thin_vec::ThinVec;

use crate::{ByteStr, LocalReplyKind, Metadata, MetadataKey, ResponseStatus};

/// The verified identity of a TLS peer: every subject alternative name and the subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, in certificate order (SPIFFE ids live here: `spiffe://cluster.local/ns/...`).
    pub uri_sans: Vec<String>,
    /// DNS SANs, in certificate order.
    pub dns_sans: Vec<String>,
    /// The certificate subject, RFC 4514 style (`CN=reader,O=example`), when present.
    pub subject: Option<String>,
}

impl PeerIdentity {
    /// The first URI SAN that is a SPIFFE id, the identity Istio-style meshes authorize on.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uri_sans
            .iter()
            .map(String::as_str)
            .find(|uri| uri.starts_with("spiffe://"))
    }

    /// Every name of the peer: URI SANs, then DNS SANs, then the subject. (The router's
    /// principal patterns each test the names of one type only.)
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.uri_sans
            .iter()
            .chain(self.dns_sans.iter())
            .chain(self.subject.iter())
            .map(String::as_str)
    }
}

/// Facts about the downstream connection a request arrived on. Shared by every request of the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The name of the listener that accepted the connection.
    pub listener: Arc<str>,
    /// The client's address.
    pub peer_addr: SocketAddr,
    /// The proxy's address for this connection.
    pub local_addr: SocketAddr,
    /// The server name the client asked for in its TLS handshake (SNI), on TLS listeners.
    pub sni: Option<Arc<str>>,
    /// The client's verified certificate identity, on listeners that require client
    /// certificates.
    pub peer_identity: Option<Arc<PeerIdentity>>,
}

impl ConnectionInfo {
    /// A plain-TCP connection of `listener` from `peer_addr` to `local_addr`.
    pub fn new(listener: Arc<str>, peer_addr: SocketAddr, local_addr: SocketAddr) -> Self {
        Self {
            listener,
            peer_addr,
            local_addr,
            sni: None,
            peer_identity: None,
        }
    }
}

/// Why a request ended the way it did, as a set of Envoy-style flags. Empty for a request the
/// upstream answered normally.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// No flag.
    pub const NONE: Self = Self(0);
    /// No route matched (`NR`).
    pub const NO_ROUTE: Self = Self(1);
    /// The route's cluster had no endpoint to take the request (`UH`).
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 1);
    /// An upstream connection could not be opened (`UF`).
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 2);
    /// The upstream connection failed with the request in flight (`UR`).
    pub const UPSTREAM_RESET: Self = Self(1 << 3);
    /// The upstream did not answer in time (`UT`).
    pub const UPSTREAM_TIMEOUT: Self = Self(1 << 4);
    /// A queue or circuit breaker limit refused the request, or its retry (`UO`).
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 5);
    /// The request spent its retries (or its time) on a failure, or on an answer its retry
    /// policy retries (`URX`).
    pub const RETRY_LIMIT_EXCEEDED: Self = Self(1 << 6);
    /// A rate limit refused the request (`RL`).
    pub const RATE_LIMITED: Self = Self(1 << 7);
    /// An authorization policy refused the request (`UAEX`).
    pub const UNAUTHORIZED: Self = Self(1 << 8);
    /// Fault injection aborted the request (`FI`).
    pub const FAULT_INJECTED: Self = Self(1 << 9);
    /// Fault injection delayed the request (`DI`).
    pub const DELAY_INJECTED: Self = Self(1 << 10);
    /// The proxy answered the request itself (`LR`); see [`Outcome::local_reply`].
    pub const LOCAL_REPLY: Self = Self(1 << 11);
    /// The client went away before its answer could be sent (`DC`).
    pub const DOWNSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 12);
    /// The request was well framed but could not be proxied (`DPE`).
    pub const BAD_REQUEST: Self = Self(1 << 13);
    /// The proxy was draining and answered the request with an error (`DR`).
    pub const DRAINING: Self = Self(1 << 14);
    /// A proxy-wide resource limit refused the request (`OM`).
    pub const OVERLOADED: Self = Self(1 << 15);

    /// Every flag with its Envoy-style short code, in the order access logs print them.
    pub const CODES: [(Self, &'static str); 16] = [
        (Self::NO_ROUTE, "NR"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_RESET, "UR"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::RATE_LIMITED, "RL"),
        (Self::UNAUTHORIZED, "UAEX"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::LOCAL_REPLY, "LR"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::BAD_REQUEST, "DPE"),
        (Self::DRAINING, "DR"),
        (Self::OVERLOADED, "OM"),
    ];

    /// True if every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// True if no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// The raw bits, for compact storage.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Display for ResponseFlags {
    /// The short codes joined by commas (`UF,URX`), or `-` when empty, as Envoy's access log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Self::CODES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What went wrong, if anything.
    pub flags: ResponseFlags,
    /// The status of the upstream response forwarded to the client, if one was.
    pub status: Option<ResponseStatus>,
    /// The kind of the error the proxy answered with, if it answered itself.
    pub local_reply: Option<LocalReplyKind>,
}

/// What the authorization filters (the router's `rbac`) decided of a request, for its access log
/// line: the enforced filters' decision and the shadow filters', as Envoy's RBAC filters put
/// theirs in the request's dynamic metadata. Recorded only when a log asks for it
/// ([`RequestRecord::record_authorization`]), in the record's [`Extensions`]: a request no
/// filter records a decision of carries none of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorization {
    /// The enforced filters' decision; `None` when none decided.
    pub enforced: Option<AuthorizationDecision>,
    /// What the shadow filters would have decided; `None` when none ran.
    pub shadow: Option<AuthorizationDecision>,
}

/// One authorization decision and the policy behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationDecision {
    /// The request was (or, in shadow, would have been) let through.
    pub allowed: bool,
    /// The policy that decided: the allow policy that let the request in, or the deny policy
    /// that refused it. `None` when no policy matched: a request no allow policy names is
    /// refused, and one no deny policy names let through, by no policy of their own.
    pub policy: Option<Arc<str>>,
}

impl AuthorizationDecision {
    /// `allowed` or `denied`, as Envoy's `*_engine_result`.
    pub fn result(&self) -> &'static str {
        if self.allowed { "allowed" } else { "denied" }
    }
}

impl Authorization {
    /// Records `decision` of an enforced filter (`shadow: false`) or a shadow one, over what an
    /// earlier filter of the chain recorded, unless it says less: a request let through by no
    /// policy (a deny filter none of whose policies matched) keeps the decision of an earlier
    /// filter, so that a request an allow filter let in is logged with the policy that did,
    /// whatever deny filters it passed after it.
    pub fn record(&mut self, shadow: bool, decision: AuthorizationDecision) {
        let slot = if shadow {
            &mut self.shadow
        } else {
            &mut self.enforced
        };
        if decision.allowed && decision.policy.is_none() && slot.is_some() {
            return;
        }
        *slot = Some(decision);
    }
}

/// When a request passed each milestone. `received` is always set; the others are set when the
/// request reached them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// The frame was decoded.
    pub received: Instant,
    /// A route was chosen (after the request filters).
    pub routed: Option<Instant>,
    /// The (last attempt's) request was handed to an upstream connection.
    pub upstream_sent: Option<Instant>,
    /// The answer (response or local reply) was queued to the client, or the request ended
    /// without one (one-way calls, a client gone).
    pub answered: Option<Instant>,
}

impl Timings {
    /// Timings of a request received at `received`.
    pub fn new(received: Instant) -> Self {
        Self {
            received,
            routed: None,
            upstream_sent: None,
            answered: None,
        }
    }

    /// Time from receipt to answer, when answered.
    pub fn duration(&self) -> Option<Duration> {
        self.answered
            .map(|a| a.saturating_duration_since(self.received))
    }
}

/// Per-request state that filters keep for themselves, one value per type.
///
/// Empty costs nothing (no allocation); each inserted value is boxed once. A filter typically
/// stores a private type (a span, a script's value) in `on_request` and takes it back in
/// `on_response` or `on_complete`.
#[derive(Default)]
pub struct Extensions {
    // A `ThinVec`: most requests' filters keep nothing here, and an empty one is dropped with a
    // pointer compare where a `Vec` takes a call into its drop glue.
    entries: ThinVec<(TypeId, Box<dyn Any + Send>)>,
}

impl Extensions {
    /// No state.
    pub const fn new() -> Self {
        Self {
            entries: ThinVec::new(),
        }
    }

    /// Stores `value`, returning the value of the same type stored before.
    pub fn insert<T: Send + 'static>(&mut self, value: T) -> Option<T> {
        let previous = self.remove::<T>();
        self.entries.push((TypeId::of::<T>(), Box::new(value)));
        previous
    }

    /// The stored value of type `T`.
    pub fn get<T: Send + 'static>(&self) -> Option<&T> {
        self.entries
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, value)| value.downcast_ref())
    }

    /// The stored value of type `T`, mutably.
    pub fn get_mut<T: Send + 'static>(&mut self) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, value)| value.downcast_mut())
    }

    /// Takes the stored value of type `T` out.
    pub fn remove<T: Send + 'static>(&mut self) -> Option<T> {
        let index = self
            .entries
            .iter()
            .position(|(id, _)| *id == TypeId::of::<T>())?;
        let (_, value) = self.entries.swap_remove(index);
        value.downcast().ok().map(|boxed| *boxed)
    }

    /// Moves every value of `other` in, replacing values of the same type.
    pub fn extend(&mut self, other: Extensions) {
        for (id, value) in other.entries {
            self.entries.retain(|(existing, _)| *existing != id);
            self.entries.push((id, value));
        }
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.entries.len())
            .finish()
    }
}

/// Key/values that request filters set for the route match to see: a value here overrides the
/// request's own metadata of the same key when routes are matched and hash keys computed, and
/// is never written to the wire (that is what a [`crate::Mutation`] is for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingKeys {
    // A `ThinVec`: nearly always empty, and dropped empty with a pointer compare (see
    // `Extensions`).
    entries: ThinVec<(ByteStr, ByteStr)>,
}

impl RoutingKeys {
    /// No keys (does not allocate).
    pub const fn new() -> Self {
        Self {
            entries: ThinVec::new(),
        }
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn set(&mut self, key: ByteStr, value: ByteStr) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&ByteStr> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_bytes() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Every key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&ByteStr, &ByteStr)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// True if no key is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds every key of `other`, replacing keys already set.
    pub fn extend(&mut self, other: RoutingKeys) {
        for (k, v) in other.entries {
            self.set(k, v);
        }
    }
}

/// What the route match and hash policies read: the routing keys filters set, falling back to
/// the request's metadata.
#[derive(Clone, Copy, Debug)]
pub struct RoutingView<'a> {
    /// The request's own metadata.
    pub metadata: &'a Metadata,
    /// Keys set by filters, which win.
    pub keys: &'a RoutingKeys,
}

impl<'a> RoutingView<'a> {
    /// The bytes of the value the route match sees for `key`.
    pub fn get_bytes(&self, key: &str) -> Option<&'a [u8]> {
        match self.keys.get(key) {
            Some(value) => Some(value.as_bytes()),
            None => self.metadata.value_bytes(key),
        }
    }

    /// [`RoutingView::get_bytes`] of a key resolved beforehand (a route's condition).
    pub fn get_bytes_of(&self, key: &MetadataKey) -> Option<&'a [u8]> {
        match self.keys.get(key.as_str()) {
            Some(value) => Some(value.as_bytes()),
            None => self.metadata.value_bytes_of(key),
        }
    }

    /// The value the route match sees for `key`, as a string.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        match self.keys.get(key) {
            Some(value) => Some(value.as_str()),
            None => self.metadata.get(key),
        }
    }
}

/// Everything known about one request, as every filter hook, the access log, the stats and the
/// tracer see it.
///
/// The engine creates one when a request is decoded and fills it in as the request travels:
/// the route, cluster and endpoint chosen, each attempt, timings, the outcome with its
/// [`ResponseFlags`], byte counts. Filters read it in every hook, keep their own per-request
/// state in its [`Extensions`], and may steer routing through
/// [`RequestRecord::set_routing_key`]. It is modelled on Envoy's `StreamInfo`.
#[derive(Debug)]
pub struct RequestRecord {
    /// The downstream connection.
    pub connection: Arc<ConnectionInfo>,
    /// Wall-clock time of receipt, for logs.
    pub start_time: SystemTime,
    /// Milestones.
    pub timings: Timings,
    /// The matched route's name.
    pub route: Option<Arc<str>>,
    /// The chosen cluster's name.
    pub cluster: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts made (0 when none was).
    pub attempts: u32,
    /// How it ended; final when `on_complete` runs.
    pub outcome: Outcome,
    /// Size of the request frame as received.
    pub bytes_received: u64,
    /// Size of the answer as sent to the client (0 for none).
    pub bytes_sent: u64,
    /// Filters' own per-request state; also where [`RequestRecord::record_authorization`]
    /// keeps what the authorization filters decided.
    pub extensions: Extensions,
    routing_keys: RoutingKeys,
}

impl RequestRecord {
    /// The record of a request of `bytes_received` bytes received now on `connection`.
    pub fn new(connection: Arc<ConnectionInfo>, bytes_received: u64) -> Self {
        Self::received_at(
            connection,
            bytes_received,
            Instant::now(),
            SystemTime::now(),
        )
    }

    /// [`RequestRecord::new`] with an explicit receipt time, on the monotonic clock and the
    /// wall clock (requests decoded from one read share both: two clock reads per read, not
    /// per request).
    pub fn received_at(
        connection: Arc<ConnectionInfo>,
        bytes_received: u64,
        received: Instant,
        start_time: SystemTime,
    ) -> Self {
        Self {
            connection,
            start_time,
            timings: Timings::new(received),
            route: None,
            cluster: None,
            endpoint: None,
            attempts: 0,
            outcome: Outcome::default(),
            bytes_received,
            bytes_sent: 0,
            extensions: Extensions::new(),
            routing_keys: RoutingKeys::new(),
        }
    }

    /// Sets a routing key: route matching (and hash policies) see `value` for `key` instead of
    /// the request's metadata. Only request filters' settings take effect (routing happens after
    /// them).
    pub fn set_routing_key(&mut self, key: ByteStr, value: ByteStr) {
        self.routing_keys.set(key, value);
    }

    /// The routing keys filters set.
    pub fn routing_keys(&self) -> &RoutingKeys {
        &self.routing_keys
    }

    /// Adds routing keys (those a waiting filter produced).
    pub fn extend_routing_keys(&mut self, keys: RoutingKeys) {
        self.routing_keys.extend(keys);
    }

    /// Records `decision` of an authorization filter, enforced (`shadow: false`) or shadow, as
    /// [`Authorization::record`] does. Only filters whose listener's access log shows the
    /// decisions record them: the decisions live in the record's [`Extensions`], so that the
    /// record of every other request (nearly all of them) is no larger for them.
    pub fn record_authorization(&mut self, shadow: bool, decision: AuthorizationDecision) {
        match self.extensions.get_mut::<Authorization>() {
            Some(authorization) => authorization.record(shadow, decision),
            None => {
                let mut authorization = Authorization::default();
                authorization.record(shadow, decision);
                self.extensions.insert(authorization);
            }
        }
    }

    /// What the authorization filters recorded ([`RequestRecord::record_authorization`]);
    /// `None` when none did.
    pub fn authorization(&self) -> Option<&Authorization> {
        self.extensions.get::<Authorization>()
    }

    /// Marks the request ended by a local reply of `kind` with `flags`.
    pub fn set_local_reply(&mut self, kind: LocalReplyKind, flags: ResponseFlags) {
        self.outcome.local_reply = Some(kind);
        self.outcome
            .flags
            .insert(flags | ResponseFlags::LOCAL_REPLY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_as_envoy_codes() {
        let mut flags = ResponseFlags::NONE;
        assert_eq!(flags.to_string(), "-");
        flags.insert(ResponseFlags::UPSTREAM_CONNECT_FAILURE);
        flags.insert(ResponseFlags::RETRY_LIMIT_EXCEEDED);
        assert_eq!(flags.to_string(), "UF,URX");
        assert!(flags.contains(ResponseFlags::RETRY_LIMIT_EXCEEDED));
        assert!(!flags.contains(ResponseFlags::NO_ROUTE));
        assert!(!flags.contains(ResponseFlags::NONE));
    }

    #[test]
    fn extensions_keep_one_value_per_type() {
        #[derive(Debug, PartialEq)]
        struct Span(u32);
        let mut ext = Extensions::new();
        assert!(ext.is_empty());
        assert_eq!(ext.insert(Span(1)), None);
        assert_eq!(ext.insert(Span(2)), Some(Span(1)));
        ext.insert(7u64);
        if let Some(span) = ext.get_mut::<Span>() {
            span.0 += 1;
        }
        assert_eq!(ext.get::<Span>(), Some(&Span(3)));
        let mut other = Extensions::new();
        other.insert(9u64);
        ext.extend(other);
        assert_eq!(ext.remove::<u64>(), Some(9));
        assert_eq!(ext.remove::<u64>(), None);
    }

    #[test]
    fn routing_keys_override_metadata() {
        let mut metadata = Metadata::new();
        metadata.insert("method", "a");
        metadata.insert("tenant", "t1");
        let mut keys = RoutingKeys::new();
        keys.set("method".into(), "b".into());
        let view = RoutingView {
            metadata: &metadata,
            keys: &keys,
        };
        assert_eq!(view.get("method"), Some("b"));
        assert_eq!(view.get("tenant"), Some("t1"));
        assert!(view.get("absent").is_none());
    }

    #[test]
    fn peer_identity_finds_the_spiffe_id() {
        let id = PeerIdentity {
            uri_sans: vec!["urn:x".into(), "spiffe://cluster.local/ns/a/sa/b".into()],
            dns_sans: vec!["b.a.svc".into()],
            subject: Some("CN=b".into()),
        };
        assert_eq!(id.spiffe_id(), Some("spiffe://cluster.local/ns/a/sa/b"));
        assert_eq!(id.names().count(), 4);
    }
}
