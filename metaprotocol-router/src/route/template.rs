//! Templated header values (Envoy's substitution formatter idea): `%metadata(user)%`,
//! `%downstream_peer_address%`, `%peer_identity%`, `%route%`, `%cluster%`, `%request_id%`,
//! `%start_time%`, and `%%` for a literal `%`.
//!
//! A value is parsed once, when its route config is compiled. A mutation without templates
//! stays one shared [`Mutation`] that requests use as is; only a route whose mutation has a
//! templated value renders it, once per request.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

use metaprotocol_core::{ByteStr, Message, Mutation, RequestRecord, RoutingView};

use crate::config::{ConfigError, MutationSpec};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    /// The value of a metadata key as the route match sees it (routing keys win).
    Metadata(Box<str>),
    DownstreamPeerAddress,
    PeerIdentity,
    Route,
    Cluster,
    RequestId,
    StartTime,
}

/// The operators a template may use, by name.
const OPERATORS: [(&str, Part); 6] = [
    ("downstream_peer_address", Part::DownstreamPeerAddress),
    ("peer_identity", Part::PeerIdentity),
    ("route", Part::Route),
    ("cluster", Part::Cluster),
    ("request_id", Part::RequestId),
    ("start_time", Part::StartTime),
];

/// A parsed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// What a template reads when it is rendered for one request.
pub(crate) struct Context<'a> {
    pub request: &'a Message,
    pub view: RoutingView<'a>,
    pub record: &'a RequestRecord,
}

impl Template {
    /// Parses `text`; an unknown or unterminated `%...%` is an error.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('%').ok_or_else(|| {
                ConfigError::new(
                    "",
                    format!(
                        "`{text}` has a `%` that starts no substitution; write %% for a literal %"
                    ),
                )
            })?;
            let operator = &after[..end];
            rest = &after[end + 1..];
            if operator.is_empty() {
                literal.push('%');
                continue;
            }
            let part = parse_operator(operator).ok_or_else(|| {
                ConfigError::new(
                    "",
                    format!(
                        "unknown substitution `%{operator}%`; use %metadata(KEY)%, %downstream_peer_address%, %peer_identity%, %route%, %cluster%, %request_id% or %start_time%"
                    ),
                )
            })?;
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal).into()));
            }
            parts.push(part);
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        Ok(Self { parts })
    }

    /// The text of a template without substitutions.
    fn plain(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// Appends the value for one request to `out`.
    fn render(&self, ctx: &Context<'_>, out: &mut String) {
        for part in &self.parts {
            // Writing into a String cannot fail.
            let _ = match part {
                Part::Text(text) => out.write_str(text),
                Part::Metadata(key) => out.write_str(ctx.view.get(key).unwrap_or_default()),
                Part::DownstreamPeerAddress => write!(out, "{}", ctx.record.connection.peer_addr),
                Part::PeerIdentity => {
                    let identity = ctx.record.connection.peer_identity.as_deref();
                    let name = identity.and_then(|id| id.spiffe_id().or_else(|| id.names().next()));
                    out.write_str(name.unwrap_or(""))
                }
                Part::Route => out.write_str(ctx.record.route.as_deref().unwrap_or("")),
                Part::Cluster => out.write_str(ctx.record.cluster.as_deref().unwrap_or("")),
                Part::RequestId => write!(out, "{}", ctx.request.request_id),
                Part::StartTime => write!(
                    out,
                    "{}",
                    humantime::format_rfc3339_millis(ctx.record.start_time)
                ),
            };
        }
    }
}

fn parse_operator(operator: &str) -> Option<Part> {
    if let Some(key) = operator
        .strip_prefix("metadata(")
        .and_then(|rest| rest.strip_suffix(')'))
        .filter(|key| !key.is_empty())
    {
        return Some(Part::Metadata(key.into()));
    }
    OPERATORS
        .iter()
        .find(|(name, _)| *name == operator)
        .map(|(_, part)| part.clone())
}

/// A route's header edits: one shared mutation, or one with templated values rendered per
/// request.
#[derive(Debug)]
pub(crate) enum RouteMutation {
    /// No value is templated: every request shares this.
    Plain(Arc<Mutation>),
    /// Boxed: each route holds two mutations, most of them plain (empty), which inline this
    /// would make 40 bytes each.
    Templated(Box<TemplatedMutation>),
}

/// A mutation with templated values.
#[derive(Debug)]
pub(crate) struct TemplatedMutation {
    /// The plain part (removals and literal sets).
    base: Mutation,
    /// The templated sets, applied after the plain part.
    templated: Vec<(ByteStr, Template)>,
}

impl RouteMutation {
    /// Compiles a mutation spec (already validated).
    pub fn new(spec: Option<&MutationSpec>) -> Result<Self, ConfigError> {
        let mut base = Mutation::new();
        let mut templated = Vec::new();
        if let Some(spec) = spec {
            for key in &spec.remove {
                base.remove(ByteStr::copy_from_str(key));
            }
            for (k, v) in &spec.set {
                let template = Template::parse(v).map_err(|e| e.within(&format!("set.{k}")))?;
                let key = ByteStr::copy_from_str(k);
                match template.plain() {
                    Some(text) => base.set(key, ByteStr::copy_from_str(text)),
                    None => templated.push((key, template)),
                }
            }
        }
        Ok(if templated.is_empty() {
            Self::Plain(Arc::new(base))
        } else {
            Self::Templated(Box::new(TemplatedMutation { base, templated }))
        })
    }

    /// The mutation for one request, with what filters added (`filters`) after the route's
    /// own, to keep (a request's travels to its upstream connection). Allocates only when there
    /// is something to render or to merge.
    pub fn resolve(&self, ctx: &Context<'_>, filters: &Mutation) -> Arc<Mutation> {
        match self {
            Self::Plain(mutation) if filters.is_empty() => mutation.clone(),
            _ => Arc::new(self.resolve_borrowed(ctx, filters).into_owned()),
        }
    }

    /// [`RouteMutation::resolve`] for a mutation used at once (a response's, encoded as it is
    /// resolved): the route's own is borrowed, not shared, so that its reference count (which
    /// every worker's requests of the route would write) is left alone.
    pub fn resolve_borrowed<'a>(
        &'a self,
        ctx: &Context<'_>,
        filters: &Mutation,
    ) -> Cow<'a, Mutation> {
        let mut all = match self {
            Self::Plain(mutation) if filters.is_empty() => return Cow::Borrowed(mutation),
            Self::Plain(mutation) => Mutation::clone(mutation),
            Self::Templated(mutation) => {
                let mut all = mutation.base.clone();
                for (key, template) in &mutation.templated {
                    let mut value = String::new();
                    template.render(ctx, &mut value);
                    all.set(key.clone(), ByteStr::from(value));
                }
                all
            }
        };
        all.extend(filters);
        Cow::Owned(all)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use metaprotocol_core::{
        ConnectionInfo, MessageKind, Metadata, PeerIdentity, RequestRecord, RoutingKeys,
    };

    use super::*;

    fn render(text: &str, request: &Message, record: &RequestRecord) -> String {
        let keys = RoutingKeys::new();
        let ctx = Context {
            request,
            view: RoutingView {
                metadata: &request.metadata,
                keys: &keys,
            },
            record,
        };
        let mut out = String::new();
        if let Ok(template) = Template::parse(text) {
            template.render(&ctx, &mut out);
        }
        out
    }

    #[test]
    fn every_operator_renders() {
        let peer: SocketAddr = ([10, 1, 2, 3], 4567).into();
        let mut connection = ConnectionInfo::new("in".into(), peer, peer);
        connection.peer_identity = Some(Arc::new(PeerIdentity {
            uri_sans: vec!["spiffe://cluster.local/ns/a/sa/b".into()],
            ..PeerIdentity::default()
        }));
        let mut record = RequestRecord::new(Arc::new(connection), 0);
        record.start_time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        record.route = Some("canary".into());
        record.cluster = Some("v2".into());
        let mut request = Message::new(MessageKind::Request, 42, Bytes::new());
        request.metadata = Metadata::from_iter([("user", "alice")]);
        let cases = [
            ("u=%metadata(user)%!", "u=alice!"),
            ("%metadata(absent)%", ""),
            ("%downstream_peer_address%", "10.1.2.3:4567"),
            ("%peer_identity%", "spiffe://cluster.local/ns/a/sa/b"),
            ("%route%/%cluster%", "canary/v2"),
            ("id-%request_id%", "id-42"),
            ("%start_time%", "1970-01-01T00:00:01.500Z"),
            ("100%% sure", "100% sure"),
        ];
        for (text, expected) in cases {
            assert_eq!(render(text, &request, &record), expected, "{text}");
        }
    }

    #[test]
    fn unknown_and_unterminated_substitutions_are_errors() {
        for bad in ["%nope%", "50%", "%metadata()%", "%metadata(x%"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Template::parse("plain")
                .ok()
                .and_then(|t| t.plain().map(str::to_owned)),
            Some("plain".to_owned())
        );
    }

    #[test]
    fn plain_mutations_are_shared_and_templated_ones_rendered() -> Result<(), ConfigError> {
        let mut spec = MutationSpec::default();
        spec.set.insert("x-plain".into(), "1".into());
        let plain = RouteMutation::new(Some(&spec))?;
        assert!(matches!(plain, RouteMutation::Plain(_)));
        spec.set.insert("x-id".into(), "%request_id%".into());
        let templated = RouteMutation::new(Some(&spec))?;
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let record = RequestRecord::new(Arc::new(ConnectionInfo::new("in".into(), peer, peer)), 0);
        let request = Message::new(MessageKind::Request, 7, Bytes::new());
        let keys = RoutingKeys::new();
        let ctx = Context {
            request: &request,
            view: RoutingView {
                metadata: &request.metadata,
                keys: &keys,
            },
            record: &record,
        };
        let first = plain.resolve(&ctx, &Mutation::new());
        assert!(Arc::ptr_eq(&first, &plain.resolve(&ctx, &Mutation::new())));
        let rendered = templated.resolve(&ctx, &Mutation::new());
        let sets = |mutation: &Mutation| -> Vec<(String, String)> {
            let pair = |(k, v): &(ByteStr, ByteStr)| (k.to_string(), v.to_string());
            mutation.sets().iter().map(pair).collect()
        };
        let pairs = |expected: &[(&str, &str)]| -> Vec<(String, String)> {
            let pair = |&(k, v): &(&str, &str)| (k.to_owned(), v.to_owned());
            expected.iter().map(pair).collect()
        };
        assert_eq!(sets(&rendered), pairs(&[("x-plain", "1"), ("x-id", "7")]));
        // Used at once (a response's), the route's own is borrowed in place, and a merge with
        // what filters added is a mutation of its own holding both.
        let RouteMutation::Plain(shared) = &plain else {
            panic!("a plain mutation");
        };
        assert!(matches!(
            plain.resolve_borrowed(&ctx, &Mutation::new()),
            Cow::Borrowed(borrowed) if std::ptr::eq(borrowed, &**shared)
        ));
        let mut filters = Mutation::new();
        filters.set(ByteStr::from_static("x-filter"), ByteStr::from_static("2"));
        let merged = plain.resolve_borrowed(&ctx, &filters);
        assert!(matches!(merged, Cow::Owned(_)));
        assert_eq!(sets(&merged), pairs(&[("x-plain", "1"), ("x-filter", "2")]));
        Ok(())
    }
}
