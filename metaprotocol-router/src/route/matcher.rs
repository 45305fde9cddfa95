//! Conditions on a request: its metadata ([`MetadataMatcher`]) and, through
//! [`RequestMatcher`], who sent it.

use memchr::memmem::Finder;
use metaprotocol_core::{ConnectionInfo, MetadataKey, RoutingView};
use regex::bytes::{Regex, RegexBuilder};

use super::peer::{IpRange, PrincipalMatcher};
use crate::config::{ConfigError, MatchSpec, MetadataMatcherSpec};

/// A compiled [`MatchSpec`]: conditions on metadata, on the client's TLS identity and on its
/// address, all of which must hold. Routes and filters' rules use it; matching allocates
/// nothing. Lists are boxed slices and the principal boxed, as each route of a table holds one:
/// inline, a principal most routes lack cost each of them 16 bytes more.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestMatcher {
    metadata: Box<[MetadataMatcher]>,
    principal: Option<Box<PrincipalMatcher>>,
    source_ips: Box<[IpRange]>,
}

impl RequestMatcher {
    /// Compiles a validated spec.
    pub fn new(spec: &MatchSpec) -> Result<Self, ConfigError> {
        let metadata = spec
            .metadata
            .iter()
            .enumerate()
            .map(|(i, m)| MetadataMatcher::new(m).map_err(|e| e.within(&format!("metadata[{i}]"))))
            .collect::<Result<_, _>>()?;
        let source_ips = spec
            .source_ips
            .iter()
            .enumerate()
            .map(|(i, r)| IpRange::parse(r).map_err(|e| e.within(&format!("source_ips[{i}]"))))
            .collect::<Result<_, _>>()?;
        let principal = spec
            .principal
            .as_deref()
            .map(|p| {
                PrincipalMatcher::parse(p)
                    .map(Box::new)
                    .map_err(|e| e.within("principal"))
            })
            .transpose()?;
        Ok(Self {
            metadata,
            principal,
            source_ips,
        })
    }

    /// The values the request's metadata must equal exactly, by key (conditions `exact` and
    /// not inverted).
    pub fn exact_values(&self) -> impl Iterator<Item = (&MetadataKey, &[u8])> {
        self.metadata.iter().filter_map(MetadataMatcher::exact)
    }

    /// True if every condition holds for the request seen through `view`, arrived on
    /// `connection`.
    pub fn matches(&self, view: &RoutingView<'_>, connection: &ConnectionInfo) -> bool {
        self.metadata.iter().all(|m| m.matches(view))
            && self
                .principal
                .as_ref()
                .is_none_or(|p| p.matches(connection.peer_identity.as_deref()))
            && (self.source_ips.is_empty()
                || self
                    .source_ips
                    .iter()
                    .any(|r| r.contains(connection.peer_addr.ip())))
    }
}

/// The test a [`MetadataMatcher`] applies to a key's value.
#[derive(Debug, Clone)]
enum ValueTest {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    /// A substring search built once: linear in the value (a window-by-window comparison took
    /// 413 ms for an 8 MiB value against a 4 KiB needle, in release).
    Contains(Box<Finder<'static>>),
    Regex(Regex),
    Present(bool),
}

/// One compiled condition on a metadata key. Matching reads the value in place: no allocation.
#[derive(Debug, Clone)]
pub(crate) struct MetadataMatcher {
    key: MetadataKey,
    test: ValueTest,
    invert: bool,
}

impl MetadataMatcher {
    /// Compiles a validated spec.
    pub fn new(spec: &MetadataMatcherSpec) -> Result<Self, ConfigError> {
        let bytes = |s: &String| s.as_bytes().to_vec().into_boxed_slice();
        let test = if let Some(v) = &spec.exact {
            ValueTest::Exact(bytes(v))
        } else if let Some(v) = &spec.prefix {
            ValueTest::Prefix(bytes(v))
        } else if let Some(v) = &spec.suffix {
            ValueTest::Suffix(bytes(v))
        } else if let Some(v) = &spec.contains {
            ValueTest::Contains(Box::new(Finder::new(v.as_bytes()).into_owned()))
        } else if let Some(pattern) = &spec.regex {
            ValueTest::Regex(whole_value_regex(pattern)?)
        } else if let Some(present) = spec.present {
            ValueTest::Present(present)
        } else {
            return Err(ConfigError::new(
                "",
                "needs one of exact, prefix, suffix, contains, regex, present",
            ));
        };
        Ok(Self {
            key: MetadataKey::new(&spec.key),
            test,
            invert: spec.invert,
        })
    }

    /// The key and the value of an `exact` condition that is not inverted.
    fn exact(&self) -> Option<(&MetadataKey, &[u8])> {
        match &self.test {
            ValueTest::Exact(value) if !self.invert => Some((&self.key, value)),
            _ => None,
        }
    }

    /// True if the request (its metadata, overridden by filters' routing keys) satisfies this
    /// condition.
    pub fn matches(&self, request: &RoutingView<'_>) -> bool {
        let value = request.get_bytes_of(&self.key);
        let hit = match (&self.test, value) {
            (ValueTest::Present(want), value) => value.is_some() == *want,
            (_, None) => false,
            (ValueTest::Exact(v), Some(value)) => value == &**v,
            (ValueTest::Prefix(v), Some(value)) => value.starts_with(v),
            (ValueTest::Suffix(v), Some(value)) => value.ends_with(v),
            (ValueTest::Contains(finder), Some(value)) => finder.find(value).is_some(),
            (ValueTest::Regex(re), Some(value)) => re.is_match(value),
        };
        hit != self.invert
    }
}

/// The largest program a `regex` condition may compile to, and the largest cache its matching
/// may build (each thread that matches it has one). The regex crate's own limits (a 10 MiB
/// program, 2 MiB caches) let one condition, from a config file or a control plane, take
/// seconds to compile on the thread that applies updates, and every worker a few megabytes for
/// each such condition as clients' values grow its cache. What routes match on compiles to a few
/// kilobytes; a bounded repetition of a large Unicode class (`\w{200}`) passes the limit.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The regex of a `regex` condition: anchored, so that it matches the whole value (as Envoy's
/// `safe_regex` does), and refused when its program would pass [`REGEX_SIZE_LIMIT`].
pub(crate) fn whole_value_regex(pattern: &str) -> Result<Regex, ConfigError> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|err| {
            let reason = match err {
                regex::Error::CompiledTooBig(limit) => format!(
                    "the regex compiles to a program of over {} KiB (a bounded repetition of a large class such as \\w{{200}}, say); write a smaller one",
                    limit / 1024
                ),
                err => format!("invalid regex: {err}"),
            };
            ConfigError::new("regex", reason)
        })
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::{ByteStr, Metadata, RoutingKeys};

    use super::*;

    fn spec(key: &str) -> MetadataMatcherSpec {
        MetadataMatcherSpec {
            key: key.to_owned(),
            ..Default::default()
        }
    }

    fn metadata() -> Metadata {
        [("method", "sayHello"), ("batchJob", "true")]
            .into_iter()
            .map(|(k, v)| (ByteStr::from_static(k), ByteStr::from_static(v)))
            .collect()
    }

    #[test]
    fn requests_match_on_principal_and_source_ranges() -> Result<(), ConfigError> {
        use std::sync::Arc;

        use metaprotocol_core::{ConnectionInfo, PeerIdentity};

        let md = metadata();
        let keys = RoutingKeys::new();
        let view = RoutingView {
            metadata: &md,
            keys: &keys,
        };
        let spec = MatchSpec {
            metadata: vec![MetadataMatcherSpec {
                exact: Some("sayHello".into()),
                ..spec("method")
            }],
            principal: Some("spiffe://cluster.local/ns/default/*".into()),
            source_ips: vec!["10.0.0.0/8".into(), "192.168.0.1".into()],
        };
        let matcher = RequestMatcher::new(&spec)?;
        let connection = |ip: [u8; 4], spiffe: Option<&str>| ConnectionInfo {
            peer_identity: spiffe.map(|id| {
                Arc::new(PeerIdentity {
                    uri_sans: vec![id.to_owned()],
                    ..PeerIdentity::default()
                })
            }),
            ..ConnectionInfo::new("in".into(), (ip, 1).into(), (ip, 2).into())
        };
        let reader = Some("spiffe://cluster.local/ns/default/sa/reader");
        assert!(matcher.matches(&view, &connection([10, 1, 2, 3], reader)));
        assert!(matcher.matches(&view, &connection([192, 168, 0, 1], reader)));
        assert!(!matcher.matches(&view, &connection([192, 168, 0, 2], reader)));
        assert!(!matcher.matches(&view, &connection([10, 1, 2, 3], None)));
        let other = Some("spiffe://cluster.local/ns/other/sa/reader");
        assert!(!matcher.matches(&view, &connection([10, 1, 2, 3], other)));
        assert!(RequestMatcher::default().matches(&view, &connection([8, 8, 8, 8], None)));
        Ok(())
    }

    #[test]
    fn every_test_and_inversion() -> Result<(), ConfigError> {
        let md = metadata();
        let cases: Vec<(MetadataMatcherSpec, bool)> = vec![
            (
                MetadataMatcherSpec {
                    exact: Some("sayHello".into()),
                    ..spec("method")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    exact: Some("sayHell".into()),
                    ..spec("method")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    prefix: Some("say".into()),
                    ..spec("method")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    suffix: Some("Hello".into()),
                    ..spec("method")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    suffix: Some("say".into()),
                    ..spec("method")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    contains: Some("yHe".into()),
                    ..spec("method")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    contains: Some("Hello".into()),
                    ..spec("method")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    contains: Some("sayHellos".into()),
                    ..spec("method")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    regex: Some("say.*".into()),
                    ..spec("method")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    regex: Some("ay".into()),
                    ..spec("method")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    present: Some(true),
                    ..spec("batchJob")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    present: Some(false),
                    ..spec("batchJob")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    present: Some(false),
                    ..spec("absent")
                },
                true,
            ),
            (
                MetadataMatcherSpec {
                    exact: Some("x".into()),
                    ..spec("absent")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    exact: Some("true".into()),
                    invert: true,
                    ..spec("batchJob")
                },
                false,
            ),
            (
                MetadataMatcherSpec {
                    exact: Some("x".into()),
                    invert: true,
                    ..spec("absent")
                },
                true,
            ),
        ];
        let keys = RoutingKeys::new();
        let view = RoutingView {
            metadata: &md,
            keys: &keys,
        };
        for (spec, expected) in cases {
            assert_eq!(
                MetadataMatcher::new(&spec)?.matches(&view),
                expected,
                "{spec:?}"
            );
        }
        Ok(())
    }
}
