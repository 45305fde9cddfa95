//! Conditions on who the client is: its verified TLS identity ([`PrincipalMatcher`], and the
//! namespace of its SPIFFE id, [`NamespaceMatcher`]) and its address ([`IpRange`]). Routes and
//! the `rbac` filter share them.

use std::net::IpAddr;

use metaprotocol_core::PeerIdentity;

use crate::config::ConfigError;

/// A range of client addresses in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or a single
/// address (`127.0.0.1`, a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            ConfigError::new(
                "",
                format!("`{text}` is not an IP address or a CIDR range (10.0.0.0/8, ::1/128)"),
            )
        })?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| {
                    ConfigError::new(
                        "",
                        format!("`{text}`: the prefix length must be 0 to {bits}"),
                    )
                })?,
        };
        // Clients are compared by their IPv4 address when they have one (see `contains`), so
        // a range of IPv4-mapped addresses (`::ffff:10.0.0.0/104`) is taken as the IPv4 range
        // it maps: as written it would hold no client at all.
        if let IpAddr::V6(v6) = network
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Self {
                network: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Self { network, prefix })
    }

    /// True if `address` is in the range. An IPv4 client seen on an IPv6 socket
    /// (`::ffff:10.1.2.3`) counts as its IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        let (network, address, bits) = match (self.network, address.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(n.to_bits()), u128::from(a.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (n.to_bits(), a.to_bits(), 128),
            _ => return false,
        };
        // The bits past the prefix are shifted out; a /0 shifts out everything.
        (network ^ address)
            .checked_shr(bits - u32::from(self.prefix))
            .unwrap_or(0)
            == 0
    }
}

/// A test on a client's verified TLS identity, Istio style: `spiffe://td/ns/a/sa/b` (exact),
/// `spiffe://td/ns/a/*` (prefix), `*/sa/b` (suffix), `*` (any identity). It holds when one of
/// the peer's names of the type the pattern names ([`NameKind::of`], [`NameKind::of_wildcard`])
/// passes. A URI pattern without a scheme is a SPIFFE id as Istio writes principals
/// ([`spiffe_uri`]), and a URI suffix matches SPIFFE ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalMatcher {
    Any,
    Exact(NameKind, Box<str>),
    Prefix(NameKind, Box<str>),
    Suffix(NameKind, Box<str>),
}

/// The type of a peer's names a principal pattern is matched against, told by its syntax. A
/// pattern is never matched against names of another type: a CA may let its requesters choose
/// some names (a DNS SAN, the subject's organisation), and a DNS SAN or a subject that ends in
/// `/sa/reader` must not pass for the workload whose SPIFFE id does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    /// URI SANs (SPIFFE ids).
    Uri,
    /// DNS SANs.
    Dns,
    /// The subject, RFC 4514 style.
    Subject,
}

impl NameKind {
    /// An exact pattern with a scheme (`spiffe://...`) or a path (no DNS name has a `/`) names
    /// URIs; one with an `=` (`CN=reader,O=example`) a subject; any other a DNS name.
    pub fn of(pattern: &str) -> Self {
        if pattern.contains("://") {
            Self::Uri
        } else if pattern.contains('=') {
            Self::Subject
        } else if pattern.contains('/') {
            Self::Uri
        } else {
            Self::Dns
        }
    }

    /// What the `rest` of a prefix (`rest*`) or suffix (`*rest`) pattern names: a subject with an
    /// `=`, a DNS name for a suffix that begins a label (`*.default.svc`, the DNS wildcard), and
    /// URIs for any other, with or without a `/`: Istio writes its principals so, without the
    /// SPIFFE scheme (`cluster.local*`, a trust domain; `*-reader`, service accounts so named),
    /// and a DNS SAN, which a CA may let its requester choose, must not pass for them.
    pub fn of_wildcard(rest: &str, suffix: bool) -> Self {
        if rest.contains("://") || rest.contains('/') {
            Self::Uri
        } else if rest.contains('=') {
            Self::Subject
        } else if suffix && rest.starts_with('.') {
            Self::Dns
        } else {
            Self::Uri
        }
    }

    /// The peer's names of this type.
    fn names(self, peer: &PeerIdentity) -> &[String] {
        match self {
            Self::Uri => &peer.uri_sans,
            Self::Dns => &peer.dns_sans,
            Self::Subject => peer.subject.as_slice(),
        }
    }
}

/// The marker of a principal pattern that names DNS SANs whatever its shape (`dns:api.example*`,
/// `dns:*example.com`): without it a prefix or suffix pattern with no `/` names SPIFFE ids, as
/// Istio's do, and a DNS prefix would have no spelling.
const DNS_PATTERN: &str = "dns:";

/// The start of every SPIFFE id, which Istio's AuthorizationPolicy leaves out of principals.
const SPIFFE_SCHEME: &str = "spiffe://";

/// The URI an exact or prefix pattern of `kind` stands for: a URI pattern written without a
/// scheme is a SPIFFE id as Istio writes principals (`cluster.local/ns/default/sa/reader`,
/// `cluster.local/ns/default/*`), and gets `spiffe://` before it; as written it could match no
/// URI SAN (every URI has a scheme), so an allow policy copied from an AuthorizationPolicy would
/// let no one in, and a deny policy would refuse no one.
fn spiffe_uri(kind: NameKind, pattern: &str) -> Box<str> {
    let authority = pattern.split('/').next().unwrap_or_default();
    if kind == NameKind::Uri && !authority.is_empty() && !authority.contains(':') {
        format!("{SPIFFE_SCHEME}{pattern}").into()
    } else {
        pattern.into()
    }
}

impl PrincipalMatcher {
    /// Compiles a pattern from the config. A `*` anywhere but alone, at the start or at the
    /// end is refused: it would be compared as a character, and no certificate names a
    /// workload so, so the pattern would never match (a deny policy written for
    /// `spiffe://td/ns/*/sa/admin` would let every admin through).
    pub fn parse(pattern: &str) -> Result<Self, ConfigError> {
        if pattern.is_empty() || pattern == DNS_PATTERN {
            return Err(ConfigError::new("", "must not be empty"));
        }
        let matcher = Self::new(pattern);
        let rest = match &matcher {
            Self::Any => "",
            Self::Exact(_, rest) | Self::Prefix(_, rest) | Self::Suffix(_, rest) => rest,
        };
        if rest.contains('*') {
            return Err(ConfigError::new(
                "",
                format!(
                    "`{pattern}`: `*` may only stand alone, or begin or end the pattern (`*`, `prefix*`, `*suffix`)"
                ),
            ));
        }
        Ok(matcher)
    }

    /// Compiles a pattern without checking it.
    fn new(pattern: &str) -> Self {
        if let Some(dns) = pattern.strip_prefix(DNS_PATTERN) {
            return Self::of_dns_names(dns);
        }
        if pattern == "*" {
            Self::Any
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            let kind = NameKind::of_wildcard(prefix, false);
            Self::Prefix(kind, spiffe_uri(kind, prefix))
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(NameKind::of_wildcard(suffix, true), suffix.into())
        } else {
            let kind = NameKind::of(pattern);
            Self::Exact(kind, spiffe_uri(kind, pattern))
        }
    }

    /// Compiles a pattern marked `dns:` (the marker dropped): exact, prefix or suffix, of DNS
    /// SANs whatever its shape.
    fn of_dns_names(pattern: &str) -> Self {
        if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(NameKind::Dns, prefix.into())
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(NameKind::Dns, suffix.into())
        } else {
            Self::Exact(NameKind::Dns, pattern.into())
        }
    }

    /// True if `peer` (none for a client without a verified certificate) passes.
    pub fn matches(&self, peer: Option<&PeerIdentity>) -> bool {
        let Some(peer) = peer else {
            return false;
        };
        match self {
            Self::Any => true,
            Self::Exact(kind, want) => kind.names(peer).iter().any(|name| **name == **want),
            Self::Prefix(kind, prefix) => kind
                .names(peer)
                .iter()
                .any(|name| name.starts_with(&**prefix)),
            // A URI suffix stands for SPIFFE ids only, as Istio's: the scheme is not in the
            // pattern, and a URI of another scheme a CA let its requester choose
            // (`https://x/sa/reader`) must not pass for the workload (`*/sa/reader`).
            Self::Suffix(NameKind::Uri, suffix) => peer
                .uri_sans
                .iter()
                .any(|name| name.starts_with(SPIFFE_SCHEME) && name.ends_with(&**suffix)),
            Self::Suffix(kind, suffix) => kind
                .names(peer)
                .iter()
                .any(|name| name.ends_with(&**suffix)),
        }
    }
}

/// A test on the Kubernetes namespace of a client's SPIFFE id (`spiffe://td/ns/NAMESPACE/sa/...`),
/// as Istio's AuthorizationPolicy `namespaces` writes it: `default` (exact), `team-*` (prefix),
/// `*-prod` (suffix), `*` (any namespace). It holds when one of the peer's SPIFFE ids, of any
/// trust domain, has a namespace that passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NamespaceMatcher {
    /// `*`: any namespace (a peer with a SPIFFE id of no namespace passes none).
    Any,
    /// `default`: this namespace, exactly.
    Exact(Box<str>),
    /// `team-*`: a namespace beginning with this (the `*` dropped).
    Prefix(Box<str>),
    /// `*-prod`: a namespace ending with this (the `*` dropped).
    Suffix(Box<str>),
}

impl NamespaceMatcher {
    /// Compiles a pattern from the config: not empty, no `/`, and a `*` only alone, first or
    /// last (as a principal's).
    pub fn parse(pattern: &str) -> Result<Self, ConfigError> {
        if pattern.is_empty() {
            return Err(ConfigError::new("", "must not be empty"));
        }
        let matcher = if pattern == "*" {
            Self::Any
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.into())
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.into())
        } else {
            Self::Exact(pattern.into())
        };
        let rest = match &matcher {
            Self::Any => "",
            Self::Exact(rest) | Self::Prefix(rest) | Self::Suffix(rest) => rest,
        };
        if rest.contains('*') || rest.contains('/') {
            return Err(ConfigError::new(
                "",
                format!(
                    "`{pattern}`: a namespace has no `/`, and `*` may only stand alone, or begin or end the pattern (`*`, `prefix*`, `*suffix`)"
                ),
            ));
        }
        Ok(matcher)
    }

    /// True if `peer` (none for a client without a verified certificate) has a SPIFFE id whose
    /// namespace passes.
    pub fn matches(&self, peer: Option<&PeerIdentity>) -> bool {
        let Some(peer) = peer else {
            return false;
        };
        peer.uri_sans
            .iter()
            .filter_map(|uri| namespace_of(uri))
            .any(|namespace| match self {
                Self::Any => true,
                Self::Exact(want) => namespace == &**want,
                Self::Prefix(prefix) => namespace.starts_with(&**prefix),
                Self::Suffix(suffix) => namespace.ends_with(&**suffix),
            })
    }
}

/// The namespace a SPIFFE id of Istio's form names (`spiffe://td/ns/NAMESPACE/sa/ACCOUNT`);
/// `None` for any other URI.
fn namespace_of(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix(SPIFFE_SCHEME)?.split_once('/')?.1;
    let (namespace, _) = path.strip_prefix("ns/")?.split_once('/')?;
    (!namespace.is_empty()).then_some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> IpRange {
        match IpRange::parse(text) {
            Ok(range) => range,
            Err(err) => panic!("{text}: {err}"),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        assert!(range("10.0.0.0/8").contains(ip("10.200.1.2")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!range("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(range("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!range("0.0.0.0/0").contains(ip("::1")));
        assert!(range("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(range("2001:db8::/32").contains(ip("2001:db8:1::1")));
        assert!(!range("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(range("::/0").contains(ip("::1")));
        assert!(range("192.168.1.128/25").contains(ip("192.168.1.200")));
        assert!(!range("192.168.1.128/25").contains(ip("192.168.1.100")));
    }

    /// An IPv4 client counts as its IPv4 address, also against a range written as the IPv6
    /// addresses it maps to: such a range held no client, and a deny policy on it refused none.
    #[test]
    fn ranges_of_ipv4_mapped_addresses_hold_their_ipv4_clients() {
        for client in ["10.1.2.3", "::ffff:10.1.2.3"] {
            assert!(
                range("::ffff:10.0.0.0/104").contains(ip(client)),
                "{client}"
            );
            assert!(range("::ffff:10.1.2.3").contains(ip(client)), "{client}");
            assert!(range("::ffff:0:0/96").contains(ip(client)), "{client}");
            assert!(
                !range("::ffff:11.0.0.0/104").contains(ip(client)),
                "{client}"
            );
        }
        assert!(!range("::ffff:0:0/96").contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_ranges_are_rejected_with_the_reason() {
        for (text, reason) in [
            ("10.0.0.0/33", "the prefix length must be 0 to 32"),
            ("10.0.0/8", "is not an IP address"),
            ("::1/129", "the prefix length must be 0 to 128"),
            ("10.0.0.0/x", "the prefix length"),
        ] {
            match IpRange::parse(text) {
                Ok(range) => panic!("{text} parsed as {range:?}"),
                Err(err) => assert!(err.reason.contains(reason), "{text}: {err}"),
            }
        }
    }

    #[test]
    fn principals_match_any_name_of_the_peer() {
        let peer = PeerIdentity {
            uri_sans: vec!["spiffe://cluster.local/ns/default/sa/reader".into()],
            dns_sans: vec!["reader.default.svc".into()],
            subject: Some("CN=reader,O=example".into()),
        };
        let cases = [
            ("spiffe://cluster.local/ns/default/sa/reader", true),
            ("spiffe://cluster.local/ns/default/sa/writer", false),
            ("spiffe://cluster.local/ns/default/*", true),
            ("spiffe://cluster.local/ns/other/*", false),
            ("*/sa/reader", true),
            ("*.default.svc", true),
            ("CN=reader,O=example", true),
            ("*,O=example", true),
            ("reader.default.svc", true),
            ("*", true),
        ];
        for (pattern, expected) in cases {
            assert_eq!(
                PrincipalMatcher::new(pattern).matches(Some(&peer)),
                expected,
                "{pattern}"
            );
            assert!(!PrincipalMatcher::new(pattern).matches(None), "{pattern}");
        }
    }

    /// Istio's AuthorizationPolicy writes principals without the SPIFFE scheme
    /// (`cluster.local/ns/default/sa/reader`); such a pattern, exact or a prefix, stands for the
    /// SPIFFE id. It matched no certificate, so a deny policy copied from Istio refused no one.
    #[test]
    fn principals_written_as_istio_does_are_spiffe_ids() {
        let peer = PeerIdentity {
            uri_sans: vec!["spiffe://cluster.local/ns/default/sa/reader".into()],
            ..PeerIdentity::default()
        };
        for (pattern, expected) in [
            ("cluster.local/ns/default/sa/reader", true),
            ("cluster.local/ns/default/*", true),
            ("cluster.local/ns/default/sa/writer", false),
            ("cluster.local/ns/other/*", false),
            ("spiffe://cluster.local/ns/default/sa/reader", true),
            ("*/ns/default/sa/reader", true),
            ("/ns/default/sa/reader", false),
        ] {
            assert_eq!(
                PrincipalMatcher::new(pattern).matches(Some(&peer)),
                expected,
                "{pattern}"
            );
        }
        // A suffix passes SPIFFE ids only: the scheme is not in the pattern.
        let other_scheme = PeerIdentity {
            uri_sans: vec!["https://cluster.local/ns/default/sa/reader".into()],
            ..PeerIdentity::default()
        };
        assert!(!PrincipalMatcher::new("*/ns/default/sa/reader").matches(Some(&other_scheme)));
        assert!(PrincipalMatcher::new("https://*").matches(Some(&other_scheme)));
        // A URI with a scheme of its own is taken as written.
        assert_eq!(
            PrincipalMatcher::new("urn:example:a/b"),
            PrincipalMatcher::Exact(NameKind::Uri, "urn:example:a/b".into())
        );
    }

    /// Istio writes a principal without the SPIFFE scheme, also when its wildcard leaves no `/`
    /// in it (`cluster.local*`, a trust domain; `*-reader`, service accounts so named): such a
    /// prefix or suffix stands for SPIFFE ids, as Istio's does. Read as a DNS name, it let in a
    /// client whose DNS SAN (which a CA may let its requester choose) begins or ends so, and
    /// matched none of the SPIFFE ids it names. A suffix beginning with `.` (`*.default.svc`)
    /// stays a DNS name's.
    #[test]
    fn wildcard_principals_without_a_slash_are_spiffe_ids_as_in_istio() {
        let workload = PeerIdentity {
            uri_sans: vec!["spiffe://cluster.local/ns/default/sa/log-reader".into()],
            dns_sans: vec!["reader.default.svc".into()],
            ..PeerIdentity::default()
        };
        let impostor = PeerIdentity {
            uri_sans: vec!["spiffe://other.domain/ns/default/sa/writer".into()],
            dns_sans: vec!["cluster.local.example.com".into(), "x-reader".into()],
            ..PeerIdentity::default()
        };
        for (pattern, workload_passes, impostor_passes) in [
            ("cluster.local*", true, false),
            ("cluster*", true, false),
            ("other.domain*", false, true),
            ("*-reader", true, false),
            ("*writer", false, true),
            ("*.default.svc", true, false),
            ("reader.default.svc", true, false),
        ] {
            assert_eq!(
                PrincipalMatcher::new(pattern).matches(Some(&workload)),
                workload_passes,
                "{pattern}"
            );
            assert_eq!(
                PrincipalMatcher::new(pattern).matches(Some(&impostor)),
                impostor_passes,
                "{pattern}"
            );
        }
    }

    /// A pattern marked `dns:` names DNS SANs, whatever its shape: the way to write a DNS
    /// prefix, or a DNS suffix that does not begin a label, which without the marker name
    /// SPIFFE ids.
    #[test]
    fn principals_marked_dns_match_dns_names_alone() -> Result<(), ConfigError> {
        let peer = PeerIdentity {
            uri_sans: vec!["spiffe://api.example/ns/default/sa/reader".into()],
            dns_sans: vec!["api.example.com".into()],
            ..PeerIdentity::default()
        };
        for (pattern, passes) in [
            ("dns:api.example*", true),
            ("dns:*example.com", true),
            ("dns:api.example.com", true),
            ("dns:*", true),
            ("dns:api.example/ns*", false),
            ("dns:*sa/reader", false),
            ("dns:spiffe://api.example/ns/default/sa/reader", false),
        ] {
            assert_eq!(
                PrincipalMatcher::parse(pattern)?.matches(Some(&peer)),
                passes,
                "{pattern}"
            );
        }
        let spiffe_only = PeerIdentity {
            dns_sans: Vec::new(),
            ..peer
        };
        assert!(!PrincipalMatcher::parse("dns:*")?.matches(Some(&spiffe_only)));
        for refused in ["dns:", "dns:a*b", "dns:**"] {
            assert!(PrincipalMatcher::parse(refused).is_err(), "{refused}");
        }
        Ok(())
    }

    /// A namespace pattern tests the namespace of each of the peer's SPIFFE ids, of any trust
    /// domain, as Istio's `namespaces` does, and nothing else of the peer's.
    #[test]
    fn namespaces_match_the_namespace_of_a_spiffe_id() -> Result<(), ConfigError> {
        let peer = PeerIdentity {
            uri_sans: vec![
                "https://example.com/ns/web/sa/x".into(),
                "spiffe://old.domain/ns/team-a/sa/reader".into(),
            ],
            dns_sans: vec!["ns/ops/sa/x".into()],
            subject: Some("CN=ops".into()),
        };
        for (pattern, expected) in [
            ("team-a", true),
            ("team-*", true),
            ("*-a", true),
            ("*", true),
            ("team", false),
            ("web", false),
            ("ops", false),
            ("*-b", false),
        ] {
            let matcher = NamespaceMatcher::parse(pattern)?;
            assert_eq!(matcher.matches(Some(&peer)), expected, "{pattern}");
            assert!(!matcher.matches(None), "{pattern}");
        }
        for uri in [
            "spiffe://td/ns//sa/x",
            "spiffe://td/ns/a",
            "spiffe://td/x/ns/a/sa/b",
            "spiffe:/td/ns/a/sa/b",
        ] {
            assert_eq!(namespace_of(uri), None, "{uri}");
        }
        for pattern in ["", "a/b", "te*am", "**"] {
            assert!(NamespaceMatcher::parse(pattern).is_err(), "{pattern}");
        }
        Ok(())
    }

    /// A `*` is a wildcard alone, first or last only; anywhere else it would be compared as a
    /// character, and the pattern would match no workload.
    #[test]
    fn wildcards_inside_a_principal_are_refused() {
        for pattern in ["*", "spiffe://td/ns/a/*", "*/sa/b", "CN=reader"] {
            assert!(PrincipalMatcher::parse(pattern).is_ok(), "{pattern}");
        }
        for pattern in ["spiffe://td/ns/*/sa/b", "*/sa/*", "**", "a**", ""] {
            assert!(PrincipalMatcher::parse(pattern).is_err(), "{pattern}");
        }
    }

    /// A pattern is matched against the names of the type it names only: names a CA let its
    /// requester choose (a DNS SAN, the subject's organisation) that spell another type's do not
    /// pass for it (a subject ending in `/sa/reader` passed `*/sa/reader`).
    #[test]
    fn principals_match_names_of_their_own_type_only() {
        let impostor = PeerIdentity {
            uri_sans: vec!["spiffe://cluster.local/ns/default/sa/intruder".into()],
            dns_sans: vec![
                "spiffe://cluster.local/ns/default/sa/reader".into(),
                "ns/ops/sa/reader".into(),
            ],
            subject: Some("CN=x,O=evil/sa/reader".into()),
        };
        for pattern in [
            "*/sa/reader",
            "spiffe://cluster.local/ns/default/sa/reader",
            "spiffe://cluster.local/ns/default/sa/r*",
            "ns/ops/*",
        ] {
            assert!(
                !PrincipalMatcher::new(pattern).matches(Some(&impostor)),
                "{pattern}"
            );
        }
        let dns_spelled_subject = PeerIdentity {
            dns_sans: vec!["cn=reader".into()],
            subject: Some("CN=other".into()),
            ..PeerIdentity::default()
        };
        assert!(!PrincipalMatcher::new("*=reader").matches(Some(&dns_spelled_subject)));
        for (pattern, kind) in [
            ("spiffe://td/ns/a/sa/b", NameKind::Uri),
            ("*/sa/b", NameKind::Uri),
            ("CN=reader,O=example", NameKind::Subject),
            ("*.default.svc", NameKind::Dns),
            ("reader", NameKind::Dns),
        ] {
            assert_eq!(NameKind::of(pattern), kind, "{pattern}");
        }
    }
}
