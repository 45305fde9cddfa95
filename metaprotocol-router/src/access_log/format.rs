//! Access log formats: format strings of Envoy-style command operators (`%START_TIME%`,
//! `%REQ(method)%` ...), and JSON objects whose values are format strings.
//!
//! The operators are Envoy's, so that a mesh's formats (Istio's and Aeraki's defaults) load
//! as they are: each shows what it means for a meta-protocol call (`%RESP(key)%` the answer's
//! metadata where Envoy reads a response header, `%RESPONSE_CODE%` whose answer it was as
//! Aeraki's MetaProtocol proxy writes it), or `-` where Envoy's meaning has no counterpart here
//! (a gRPC status). Values are
//! worked out when the line is written, from what [`LogEntry`] captured, never on the request
//! path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use metaprotocol_core::{AuthorizationDecision, ResponseFlags};

use super::{LogEntry, RequestId};

/// One command operator.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Operator {
    StartTime,
    Duration,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    RequestedServerName,
    DownstreamPeerUriSan,
    DownstreamPeerDnsSan,
    DownstreamPeerSubject,
    ListenerName,
    Protocol,
    RouteName,
    UpstreamCluster,
    UpstreamHost,
    UpstreamHostWithoutPort,
    /// The proxy's address on the connection the last attempt went on.
    UpstreamLocalAddress,
    UpstreamLocalAddressWithoutPort,
    Outcome,
    ResponseFlags,
    /// Why the call got the answer it got, in Envoy's `%RESPONSE_CODE_DETAILS%` words.
    ResponseCodeDetails,
    /// Why the last attempt's connection could not be made, when that failed the call.
    UpstreamTransportFailureReason,
    /// Why the proxy closed the connection the call came on, when the call ended once it had
    /// decided to.
    ConnectionTerminationDetails,
    RequestId,
    TraceId,
    AttemptCount,
    BytesReceived,
    BytesSent,
    /// The policy that decided the enforced `rbac` filters' decision.
    RbacPolicy,
    /// The enforced `rbac` filters' decision: `allowed` or `denied`.
    RbacResult,
    /// The policy that decided what the shadow `rbac` filters would have.
    RbacShadowPolicy,
    /// What the shadow `rbac` filters would have decided: `allowed` or `denied`.
    RbacShadowResult,
    /// A metadata key of the request (`%REQ(key)%`: the index of its value in
    /// [`LogEntry::metadata`]) or of the answer the upstream gave (`%RESP(key)%`: in
    /// [`LogEntry::response_metadata`]), else the `fallback` key's (`%REQ(A?B)%`), cut to a
    /// length when one is given.
    Metadata {
        side: Side,
        index: usize,
        fallback: Option<usize>,
        max: Option<usize>,
    },
    /// Whose answer the client got, as Aeraki's MetaProtocol proxy writes its response code:
    /// `0` the upstream's (whatever its status), `1` the proxy's own.
    ResponseCode,
    /// An operator of Envoy's whose value has no counterpart for a meta-protocol call here (a
    /// gRPC status, a filter's metadata no filter of the proxy sets). Always `-` (`null` in
    /// JSON), as Envoy shows a value that is not there.
    Absent,
}

/// Which message's metadata a metadata operator reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The request's (`%REQ(key)%`, `%METADATA(key)%`).
    Request,
    /// The upstream's answer's (`%RESP(key)%`): Envoy's response headers.
    Response,
}

/// The operators without an argument, by name.
const OPERATORS: [(&str, Operator); 36] = [
    ("START_TIME", Operator::StartTime),
    ("DURATION", Operator::Duration),
    (
        "DOWNSTREAM_REMOTE_ADDRESS",
        Operator::DownstreamRemoteAddress,
    ),
    (
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Operator::DownstreamRemoteAddressWithoutPort,
    ),
    ("DOWNSTREAM_LOCAL_ADDRESS", Operator::DownstreamLocalAddress),
    (
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Operator::DownstreamLocalAddressWithoutPort,
    ),
    ("REQUESTED_SERVER_NAME", Operator::RequestedServerName),
    ("DOWNSTREAM_PEER_URI_SAN", Operator::DownstreamPeerUriSan),
    ("DOWNSTREAM_PEER_DNS_SAN", Operator::DownstreamPeerDnsSan),
    ("DOWNSTREAM_PEER_SUBJECT", Operator::DownstreamPeerSubject),
    ("LISTENER_NAME", Operator::ListenerName),
    ("PROTOCOL", Operator::Protocol),
    ("ROUTE_NAME", Operator::RouteName),
    ("UPSTREAM_CLUSTER", Operator::UpstreamCluster),
    // Envoy's raw name, where `UPSTREAM_CLUSTER` may be a stats name: a cluster here has one.
    ("UPSTREAM_CLUSTER_RAW", Operator::UpstreamCluster),
    ("UPSTREAM_HOST", Operator::UpstreamHost),
    ("UPSTREAM_REMOTE_ADDRESS", Operator::UpstreamHost),
    (
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Operator::UpstreamHostWithoutPort,
    ),
    ("OUTCOME", Operator::Outcome),
    ("RESPONSE_FLAGS", Operator::ResponseFlags),
    ("RESPONSE_CODE_DETAILS", Operator::ResponseCodeDetails),
    ("REQUEST_ID", Operator::RequestId),
    ("TRACE_ID", Operator::TraceId),
    ("UPSTREAM_REQUEST_ATTEMPT_COUNT", Operator::AttemptCount),
    ("BYTES_RECEIVED", Operator::BytesReceived),
    ("BYTES_SENT", Operator::BytesSent),
    ("RBAC_POLICY", Operator::RbacPolicy),
    ("RBAC_RESULT", Operator::RbacResult),
    ("RBAC_SHADOW_POLICY", Operator::RbacShadowPolicy),
    ("RBAC_SHADOW_RESULT", Operator::RbacShadowResult),
    // An HTTP status in Envoy; Aeraki's MetaProtocol proxy, whose formats a mesh brings,
    // writes 0 for an upstream's answer and 1 for its own.
    ("RESPONSE_CODE", Operator::ResponseCode),
    ("GRPC_STATUS", Operator::Absent),
    (
        "CONNECTION_TERMINATION_DETAILS",
        Operator::ConnectionTerminationDetails,
    ),
    (
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        Operator::UpstreamTransportFailureReason,
    ),
    ("UPSTREAM_LOCAL_ADDRESS", Operator::UpstreamLocalAddress),
    (
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        Operator::UpstreamLocalAddressWithoutPort,
    ),
];

/// The namespaces of Envoy's rbac filters' dynamic metadata, which the `rbac` filters' decisions
/// stand for (`%DYNAMIC_METADATA(envoy.filters.network.rbac:shadow_engine_result)%`).
const RBAC_NAMESPACES: [&str; 2] = ["envoy.filters.network.rbac", "envoy.filters.http.rbac"];

/// The keys Envoy's rbac filters set in their dynamic metadata, and the operators they are.
const RBAC_KEYS: [(&str, Operator); 4] = [
    ("enforced_engine_result", Operator::RbacResult),
    ("enforced_effective_policy_id", Operator::RbacPolicy),
    ("shadow_engine_result", Operator::RbacShadowResult),
    ("shadow_effective_policy_id", Operator::RbacShadowPolicy),
];

/// The line `format: text` writes.
pub(super) const TEXT: &str = "[%START_TIME%] \"%REQ(service)% %REQ(method)% %PROTOCOL%\" %OUTCOME% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_REQUEST_ATTEMPT_COUNT% \"%DOWNSTREAM_REMOTE_ADDRESS%\" \"%LISTENER_NAME%\" \"%ROUTE_NAME%\" \"%UPSTREAM_CLUSTER%\" \"%UPSTREAM_HOST%\" %REQUEST_ID% %TRACE_ID%";

/// The fields `format: json` writes.
pub(super) const JSON: [(&str, &str); 22] = [
    ("start_time", "%START_TIME%"),
    ("duration_ms", "%DURATION%"),
    ("listener", "%LISTENER_NAME%"),
    ("protocol", "%PROTOCOL%"),
    ("service", "%REQ(service)%"),
    ("method", "%REQ(method)%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("downstream_peer_uri_san", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("downstream_peer_dns_san", "%DOWNSTREAM_PEER_DNS_SAN%"),
    ("downstream_peer_subject", "%DOWNSTREAM_PEER_SUBJECT%"),
    ("route_name", "%ROUTE_NAME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("outcome", "%OUTCOME%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("request_id", "%REQUEST_ID%"),
    ("trace_id", "%TRACE_ID%"),
    ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
];

/// A piece of a format string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Operator(Operator),
}

/// A parsed format string.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template(Vec<Piece>);

/// The metadata keys a format reads, of each side.
#[derive(Debug, Default)]
struct Keys {
    /// The request's, in [`LogEntry::metadata`] order.
    request: Vec<String>,
    /// The answer's, in [`LogEntry::response_metadata`] order.
    response: Vec<String>,
}

/// What one line looks like.
#[derive(Debug)]
pub(crate) struct LogFormat {
    layout: Layout,
    keys: Keys,
    /// The format shows what the authorization filters decided.
    shows_authorization: bool,
    /// The format names the rbac policy that refused a call (`%RESPONSE_CODE_DETAILS%`).
    shows_refusals: bool,
    /// The format shows why an upstream connection could not be made.
    shows_transport_failure: bool,
    /// The format shows the proxy's address on the connection of the last attempt.
    shows_upstream_local_address: bool,
    /// The format shows why the proxy closed a call's connection.
    shows_connection_termination: bool,
}

#[derive(Debug)]
enum Layout {
    Text(Template),
    Json(Vec<(String, Template)>),
}

/// A value an operator produced.
enum Value<'a> {
    /// Nothing to show: `-` in text, `null` in JSON.
    None,
    Text(std::borrow::Cow<'a, str>),
    Number(u64),
}

/// Checks a format string; the reason when it is wrong.
pub(crate) fn check(format: &str) -> Result<(), String> {
    Template::parse(format, &mut Keys::default()).map(|_| ())
}

/// True for the operators that show what the authorization filters decided.
fn shows_decisions(op: &Operator) -> bool {
    matches!(
        op,
        Operator::RbacPolicy
            | Operator::RbacResult
            | Operator::RbacShadowPolicy
            | Operator::RbacShadowResult
    )
}

impl Template {
    /// True if the template has an operator `wanted` picks.
    fn shows(&self, wanted: fn(&Operator) -> bool) -> bool {
        self.0
            .iter()
            .any(|piece| matches!(piece, Piece::Operator(op) if wanted(op)))
    }

    /// Parses `text`, adding the metadata keys it reads to `keys`.
    fn parse(text: &str, keys: &mut Keys) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let end = after
                .find('%')
                .ok_or_else(|| format!("`%` at byte {start} opens an operator that is not closed (write `%%` for a percent sign)"))?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Operator(operator(&after[..end], keys)?));
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Self(pieces))
    }
}

/// The operator `spec` names (what is between the `%`s).
fn operator(spec: &str, keys: &mut Keys) -> Result<Operator, String> {
    if let Some((side, key, fallback, max)) = metadata_operator(spec)? {
        let keys = match side {
            Side::Request => &mut keys.request,
            Side::Response => &mut keys.response,
        };
        let mut index_of = |key: &str| match keys.iter().position(|k| k == key) {
            Some(index) => index,
            None => {
                keys.push(key.to_owned());
                keys.len() - 1
            }
        };
        return Ok(Operator::Metadata {
            side,
            index: index_of(key),
            fallback: fallback.map(index_of),
            max,
        });
    }
    if let Some(inner) = argument(spec, "DYNAMIC_METADATA(")? {
        return dynamic_metadata(spec, inner);
    }
    OPERATORS
        .iter()
        .find(|(name, _)| *name == spec)
        .map(|(_, op)| op.clone())
        .ok_or_else(|| {
            let names: Vec<&str> = OPERATORS.iter().map(|(name, _)| *name).collect();
            format!(
                "unknown command operator %{spec}%; use REQ(key), DYNAMIC_METADATA(namespace:key) or one of {}",
                names.join(", ")
            )
        })
}

/// What is between the parentheses of `spec`, an operator `name(...)` (its `name` given with
/// the `(`), and what follows them: `None` for another operator.
fn argument<'a>(spec: &'a str, name: &str) -> Result<Option<(&'a str, &'a str)>, String> {
    let Some(inner) = spec.strip_prefix(name) else {
        return Ok(None);
    };
    inner
        .split_once(')')
        .map(Some)
        .ok_or_else(|| format!("%{spec}%: the `(` is not closed"))
}

/// `DYNAMIC_METADATA(namespace:key)`, whose `inner` is what is between the parentheses and
/// after them: the rbac filters' decisions under Envoy's rbac namespaces, `-` under any other
/// (no filter here sets metadata of its own).
fn dynamic_metadata(spec: &str, (inner, after): (&str, &str)) -> Result<Operator, String> {
    if !after.is_empty() {
        return Err(format!(
            "%{spec}%: nothing may follow the `)` (a length is not taken here)"
        ));
    }
    let (namespace, path) = inner.split_once(':').unwrap_or((inner, ""));
    if namespace.is_empty() {
        return Err(format!("%{spec}%: the namespace is empty"));
    }
    if !RBAC_NAMESPACES.contains(&namespace) {
        return Ok(Operator::Absent);
    }
    RBAC_KEYS
        .iter()
        .find(|(key, _)| *key == path)
        .map(|(_, op)| op.clone())
        .ok_or_else(|| {
            let keys: Vec<&str> = RBAC_KEYS.iter().map(|(key, _)| *key).collect();
            format!(
                "%{spec}%: the rbac filters set one of {} under {namespace}",
                keys.join(", ")
            )
        })
}

/// `REQ(key)`, `METADATA(key)` or `RESP(key)`, or `REQ(key?fallback)`, optionally followed by
/// `:N`.
#[allow(
    clippy::type_complexity,
    reason = "a side, a key, its fallback, a length"
)]
fn metadata_operator(
    spec: &str,
) -> Result<Option<(Side, &str, Option<&str>, Option<usize>)>, String> {
    let request = argument(spec, "REQ(")?.or(argument(spec, "METADATA(")?);
    let (side, (keys, after)) = match (request, argument(spec, "RESP(")?) {
        (Some(request), _) => (Side::Request, request),
        (None, Some(response)) => (Side::Response, response),
        (None, None) => return Ok(None),
    };
    let (key, fallback) = match keys.split_once('?') {
        Some((_, fallback)) if fallback.contains('?') => {
            return Err(format!("%{spec}%: a key takes one `?` and a fallback key"));
        }
        Some((key, fallback)) => (key, Some(fallback)),
        None => (keys, None),
    };
    if key.is_empty() || fallback.is_some_and(str::is_empty) {
        return Err(format!("%{spec}%: the key is empty"));
    }
    Ok(Some((side, key, fallback, length(spec, after)?)))
}

/// The length an operator's value is cut to, `after` its `)`: none, or `:N`.
fn length(spec: &str, after: &str) -> Result<Option<usize>, String> {
    match after {
        "" => Ok(None),
        _ => after
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("%{spec}%: after the key only `:LENGTH` may follow")),
    }
}

impl LogFormat {
    /// A format string line. A newline that ends the format is the line's own end (Envoy's
    /// formats, Istio's default among them, end with one; every line ends with one here).
    pub fn text(format: &str) -> Result<Self, String> {
        let mut keys = Keys::default();
        let format = format.strip_suffix('\n').unwrap_or(format);
        let template = Template::parse(format, &mut keys)?;
        Ok(Self::new(Layout::Text(template), keys))
    }

    /// A JSON object per line, `fields` naming each field's format string.
    pub fn json<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut keys = Keys::default();
        let fields: Vec<(String, Template)> = fields
            .into_iter()
            .map(|(name, format)| {
                Template::parse(format, &mut keys)
                    .map(|t| (name.to_owned(), t))
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(Layout::Json(fields), keys))
    }

    /// The format of `layout`, reading `keys`, and what it asks the request path to record.
    fn new(layout: Layout, keys: Keys) -> Self {
        let shows = |wanted: fn(&Operator) -> bool| match &layout {
            Layout::Text(template) => template.shows(wanted),
            Layout::Json(fields) => fields.iter().any(|(_, template)| template.shows(wanted)),
        };
        Self {
            shows_authorization: shows(shows_decisions),
            shows_refusals: shows(|op| *op == Operator::ResponseCodeDetails),
            shows_transport_failure: shows(|op| *op == Operator::UpstreamTransportFailureReason),
            shows_upstream_local_address: shows(|op| {
                matches!(
                    op,
                    Operator::UpstreamLocalAddress | Operator::UpstreamLocalAddressWithoutPort
                )
            }),
            shows_connection_termination: shows(|op| *op == Operator::ConnectionTerminationDetails),
            layout,
            keys,
        }
    }

    /// The request metadata keys the format reads, whose values an entry captures.
    pub fn keys(&self) -> &[String] {
        &self.keys.request
    }

    /// The keys of the upstream's answer's metadata the format reads (`%RESP(key)%`), whose
    /// values an entry captures.
    pub fn response_keys(&self) -> &[String] {
        &self.keys.response
    }

    /// True if the format shows what the authorization filters decided (`%RBAC_POLICY%` ...).
    pub fn shows_authorization(&self) -> bool {
        self.shows_authorization
    }

    /// True if the format names the rbac policy that refused a call
    /// (`%RESPONSE_CODE_DETAILS%`): the enforced filters then record their refusals, and, unless
    /// the format [shows their decisions](Self::shows_authorization) too, nothing else.
    pub fn shows_refusals(&self) -> bool {
        self.shows_refusals
    }

    /// True if the format shows why an upstream connection could not be made
    /// (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub fn shows_transport_failure(&self) -> bool {
        self.shows_transport_failure
    }

    /// True if the format shows the proxy's address on the connection of a call's last attempt
    /// (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub fn shows_upstream_local_address(&self) -> bool {
        self.shows_upstream_local_address
    }

    /// True if the format shows why the proxy closed a call's connection
    /// (`%CONNECTION_TERMINATION_DETAILS%`).
    pub fn shows_connection_termination(&self) -> bool {
        self.shows_connection_termination
    }

    /// Appends `entry`'s line (with its newline) to `out`.
    pub fn write(&self, entry: &LogEntry, out: &mut String) {
        match &self.layout {
            Layout::Text(template) => {
                for piece in &template.0 {
                    match piece {
                        Piece::Text(text) => out.push_str(text),
                        Piece::Operator(op) => match value(op, entry) {
                            Value::None => out.push('-'),
                            // Values clients choose: none may start a line of its own, nor end the quotes
                            // around it.
                            Value::Text(text) => crate::text::push_escaped(out, &text),
                            Value::Number(n) => {
                                let _ = write!(out, "{n}");
                            }
                        },
                    }
                }
            }
            Layout::Json(fields) => {
                out.push('{');
                for (i, (name, template)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(out, name);
                    out.push(':');
                    json_value(out, template, entry);
                }
                out.push('}');
            }
        }
        out.push('\n');
    }
}

/// A JSON field's value: a lone operator keeps its type (number, string or null); anything else
/// is a string.
fn json_value(out: &mut String, template: &Template, entry: &LogEntry) {
    if let [Piece::Operator(op)] = template.0.as_slice() {
        match value(op, entry) {
            Value::None => out.push_str("null"),
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Text(text) => json_string(out, &text),
        }
        return;
    }
    let mut text = String::new();
    for piece in &template.0 {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Operator(op) => match value(op, entry) {
                Value::None => text.push('-'),
                Value::Text(t) => text.push_str(&t),
                Value::Number(n) => {
                    let _ = write!(text, "{n}");
                }
            },
        }
    }
    json_string(out, &text);
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn value<'a>(op: &Operator, entry: &'a LogEntry) -> Value<'a> {
    use std::borrow::Cow::{Borrowed, Owned};
    let connection = &entry.connection;
    let peer = connection.peer_identity.as_deref();
    let text = |s: Option<&'a str>| s.map_or(Value::None, |s| Value::Text(Borrowed(s)));
    let address = |a: SocketAddr| Value::Text(Owned(a.to_string()));
    let ip = |a: SocketAddr| Value::Text(Owned(a.ip().to_string()));
    match op {
        Operator::StartTime => Value::Text(Owned(rfc3339(entry.start_time))),
        Operator::Duration => entry
            .duration
            .map_or(Value::None, |d| Value::Number(d.as_millis() as u64)),
        Operator::DownstreamRemoteAddress => address(connection.peer_addr),
        Operator::DownstreamRemoteAddressWithoutPort => ip(connection.peer_addr),
        Operator::DownstreamLocalAddress => address(connection.local_addr),
        Operator::DownstreamLocalAddressWithoutPort => ip(connection.local_addr),
        Operator::RequestedServerName => text(connection.sni.as_deref()),
        Operator::DownstreamPeerUriSan => match peer {
            Some(p) if !p.uri_sans.is_empty() => Value::Text(Owned(p.uri_sans.join(","))),
            _ => Value::None,
        },
        Operator::DownstreamPeerDnsSan => match peer {
            Some(p) if !p.dns_sans.is_empty() => Value::Text(Owned(p.dns_sans.join(","))),
            _ => Value::None,
        },
        Operator::DownstreamPeerSubject => text(peer.and_then(|p| p.subject.as_deref())),
        Operator::ListenerName => Value::Text(Borrowed(&connection.listener)),
        Operator::Protocol => Value::Text(Borrowed(entry.protocol)),
        Operator::RouteName => text(entry.route.as_deref()),
        Operator::UpstreamCluster => text(entry.cluster.as_deref()),
        Operator::UpstreamHost => entry.endpoint.map_or(Value::None, address),
        Operator::UpstreamHostWithoutPort => entry.endpoint.map_or(Value::None, ip),
        Operator::UpstreamLocalAddress => entry.upstream_local_address.map_or(Value::None, address),
        Operator::UpstreamLocalAddressWithoutPort => {
            entry.upstream_local_address.map_or(Value::None, ip)
        }
        Operator::Outcome => Value::Text(Borrowed(entry.outcome.name())),
        Operator::ResponseFlags => Value::Text(Owned(entry.flags.to_string())),
        Operator::ResponseCodeDetails => response_code_details(entry),
        // Spaces as `_`, as Envoy's: the reason stays one field of a line split at spaces.
        Operator::UpstreamTransportFailureReason => match &entry.transport_failure {
            Some(reason) => Value::Text(Owned(reason.replace(' ', "_"))),
            None => Value::None,
        },
        Operator::ConnectionTerminationDetails => entry
            .connection_termination
            .map_or(Value::None, |why| Value::Text(Owned(why.to_string()))),
        Operator::Absent => Value::None,
        Operator::RequestId => match &entry.request_id {
            RequestId::Number(n) => Value::Number(*n),
            // A number as a number, as other protocols' ids are.
            RequestId::Text(id) => {
                let id = id.as_str();
                // As written: `007` is no number's spelling.
                let number = id.parse().ok().filter(|n: &u64| n.to_string() == id);
                number.map_or(Value::Text(Borrowed(id)), Value::Number)
            }
            RequestId::None => Value::None,
        },
        Operator::TraceId => entry
            .trace_id
            .map_or(Value::None, |id| Value::Text(Owned(format!("{id:032x}")))),
        Operator::AttemptCount => Value::Number(u64::from(entry.attempts)),
        Operator::BytesReceived => Value::Number(entry.bytes_received),
        Operator::BytesSent => Value::Number(entry.bytes_sent),
        Operator::RbacPolicy => text(
            entry
                .authorization
                .enforced
                .as_ref()
                .and_then(|d| d.policy.as_deref()),
        ),
        Operator::RbacResult => text(
            entry
                .authorization
                .enforced
                .as_ref()
                .map(AuthorizationDecision::result),
        ),
        Operator::RbacShadowPolicy => text(
            entry
                .authorization
                .shadow
                .as_ref()
                .and_then(|d| d.policy.as_deref()),
        ),
        Operator::RbacShadowResult => text(
            entry
                .authorization
                .shadow
                .as_ref()
                .map(AuthorizationDecision::result),
        ),
        Operator::ResponseCode => {
            if entry.outcome.local_reply().is_some() {
                Value::Number(1)
            } else if entry.answered {
                Value::Number(0)
            } else {
                Value::None
            }
        }
        Operator::Metadata {
            side,
            index,
            fallback,
            max,
        } => {
            let values = match side {
                Side::Request => &entry.metadata[..],
                Side::Response => &entry.response_metadata[..],
            };
            let captured = |index: usize| values.get(index).and_then(Option::as_ref);
            match captured(*index).or_else(|| fallback.and_then(captured)) {
                None => Value::None,
                Some(value) => {
                    let value = value.as_str();
                    Value::Text(Borrowed(
                        max.map_or(value, |max| crate::text::cut(value, max)),
                    ))
                }
            }
        }
    }
}

/// Why the call got the answer it got (`%RESPONSE_CODE_DETAILS%`), in the words of Envoy's
/// response code details where Envoy has a counterpart: `via_upstream` for the upstream's
/// answer (whatever its status), the cause of the proxy's own answer
/// (`upstream_reset_before_response_started{connection_failure}`,
/// `rbac_access_denied_matched_policy[policy]` ...), else the outcome's name. `-` for a call
/// nothing answered (a one-way call sent).
fn response_code_details(entry: &LogEntry) -> Value<'_> {
    use metaprotocol_core::LocalReplyKind as Kind;
    use std::borrow::Cow::{Borrowed, Owned};

    let flags = entry.flags;
    let Some(kind) = entry.outcome.local_reply() else {
        return if entry.answered {
            Value::Text(Borrowed("via_upstream"))
        } else if flags.contains(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION) {
            Value::Text(Borrowed("downstream_remote_disconnect"))
        } else {
            Value::None
        };
    };
    // The refusal of an enforced rbac filter (recorded, as the format shows it), not another
    // filter's.
    let refused_by_rbac = entry
        .authorization
        .enforced
        .as_ref()
        .filter(|decision| kind == Kind::Unauthorized && !decision.allowed);
    if let Some(decision) = refused_by_rbac {
        let policy = decision.policy.as_deref().unwrap_or("none");
        return Value::Text(Owned(format!(
            "rbac_access_denied_matched_policy[{policy}]"
        )));
    }
    let details = match kind {
        Kind::RouteNotFound => "route_not_found",
        Kind::NoHealthyUpstream => "no_healthy_upstream",
        Kind::UpstreamConnectFailure => {
            "upstream_reset_before_response_started{connection_failure}"
        }
        Kind::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
        Kind::Timeout if flags.contains(ResponseFlags::UPSTREAM_TIMEOUT) => {
            "upstream_response_timeout"
        }
        Kind::OverLimit if flags.contains(ResponseFlags::RATE_LIMITED) => "request_rate_limited",
        Kind::OverLimit if flags.contains(ResponseFlags::UPSTREAM_OVERFLOW) => {
            "upstream_reset_before_response_started{overflow}"
        }
        _ if flags.contains(ResponseFlags::FAULT_INJECTED) => "fault_filter_abort",
        _ if flags.contains(ResponseFlags::OVERLOADED) => "overload",
        _ if flags.contains(ResponseFlags::DRAINING) => "draining",
        _ => entry.outcome.name(),
    };
    Value::Text(Borrowed(details))
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-11-05T09:30:12.345Z`), Envoy's
/// `%START_TIME%` default.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_strings_parse_into_text_and_operators() {
        let mut keys = Keys::default();
        let template = Template::parse("%%a %REQ(method):3% b %DURATION%", &mut keys);
        assert_eq!(
            template,
            Ok(Template(vec![
                Piece::Text("%a ".into()),
                Piece::Operator(Operator::Metadata {
                    side: Side::Request,
                    index: 0,
                    fallback: None,
                    max: Some(3)
                }),
                Piece::Text(" b ".into()),
                Piece::Operator(Operator::Duration),
            ]))
        );
        assert_eq!(keys.request, ["method"]);
        for (bad, reason) in [
            ("%NOPE%", "unknown command operator %NOPE%"),
            ("50% off", "not closed"),
            ("%REQ()%", "the key is empty"),
            ("%REQ(a):x%", ":LENGTH"),
        ] {
            let err = check(bad).err().unwrap_or_default();
            assert!(err.contains(reason), "{bad}: {err}");
        }
        assert!(check(TEXT).is_ok());
        assert!(JSON.iter().all(|(_, f)| check(f).is_ok()));
    }

    /// The default text line quotes what clients choose: a quote in a value must not end its
    /// field, or a client would write the fields after it (the outcome, the route ...).
    #[test]
    fn a_quote_in_a_value_cannot_end_its_field_in_a_text_line() -> Result<(), String> {
        use metaprotocol_core::ByteStr;

        let format = LogFormat::text(TEXT)?;
        assert_eq!(format.keys(), ["service", "method"]);
        let entry = LogEntry {
            start_time: UNIX_EPOCH,
            metadata: [
                Some(ByteStr::from_static(r"svc\")),
                Some(ByteStr::from_static(r#"get" admin_route success "x"#)),
            ]
            .into_iter()
            .collect(),
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        format.write(&entry, &mut line);
        assert!(
            line.starts_with(
                r#"[1970-01-01T00:00:00.000Z] "svc\\ get\" admin_route success \"x dubbo" success "#
            ),
            "{line}"
        );
        Ok(())
    }

    /// A call's own id (a JSON-RPC call's) is shown as a number when it spells one, as other
    /// protocols' request ids are, as text otherwise, and as none when the call has none.
    #[test]
    fn a_calls_own_id_is_shown_as_written() -> Result<(), String> {
        use metaprotocol_core::ByteStr;

        let format = LogFormat::json([("id", "%REQUEST_ID%")])?;
        for (id, shown) in [
            (RequestId::Text(ByteStr::from_static("7")), "7"),
            (RequestId::Text(ByteStr::from_static("007")), r#""007""#),
            (RequestId::Text(ByteStr::from_static("-1")), r#""-1""#),
            (RequestId::Text(ByteStr::from_static("a-1")), r#""a-1""#),
            (RequestId::None, "null"),
            (RequestId::Number(65537), "65537"),
        ] {
            let entry = LogEntry {
                request_id: id,
                ..LogEntry::for_test()
            };
            let mut line = String::new();
            format.write(&entry, &mut line);
            assert_eq!(line, format!("{{\"id\":{shown}}}\n"));
        }
        Ok(())
    }

    /// The rbac filters' decisions and their policies, enforced and shadow, as a text line and
    /// as JSON; a format that shows none of them does not ask the filters to record them.
    #[test]
    fn authorization_decisions_show_with_their_policy() -> Result<(), String> {
        use metaprotocol_core::Authorization;

        let text = LogFormat::text(
            "%RBAC_RESULT% %RBAC_POLICY% %RBAC_SHADOW_RESULT% %RBAC_SHADOW_POLICY%",
        )?;
        let json = LogFormat::json([
            ("policy", "%RBAC_POLICY%"),
            ("shadow", "%RBAC_SHADOW_RESULT%"),
        ])?;
        assert!(text.shows_authorization() && json.shows_authorization());
        assert!(!LogFormat::text(TEXT)?.shows_authorization());
        assert!(!LogFormat::json(JSON)?.shows_authorization());
        let entry = LogEntry {
            authorization: Authorization {
                enforced: Some(AuthorizationDecision {
                    allowed: false,
                    policy: Some("no-secrets".into()),
                }),
                shadow: Some(AuthorizationDecision {
                    allowed: true,
                    policy: None,
                }),
            },
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        text.write(&entry, &mut line);
        json.write(&entry, &mut line);
        text.write(&LogEntry::for_test(), &mut line);
        assert_eq!(
            line,
            "denied no-secrets allowed -\n{\"policy\":\"no-secrets\",\"shadow\":\"allowed\"}\n- - - -\n"
        );
        Ok(())
    }

    /// Istio's default text line (`meshConfig.accessLogFormat` unset, `accessLogEncoding:
    /// TEXT`), as istiod writes it into every listener's file access log, its newline included.
    const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

    /// Istio's default JSON line (`accessLogEncoding: JSON`).
    const ISTIO_JSON: [(&str, &str); 24] = [
        ("start_time", "%START_TIME%"),
        ("route_name", "%ROUTE_NAME%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
        ("protocol", "%PROTOCOL%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("response_flags", "%RESPONSE_FLAGS%"),
        ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
        (
            "connection_termination_details",
            "%CONNECTION_TERMINATION_DETAILS%",
        ),
        ("bytes_received", "%BYTES_RECEIVED%"),
        ("bytes_sent", "%BYTES_SENT%"),
        ("duration", "%DURATION%"),
        (
            "upstream_service_time",
            "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        ),
        ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
        ("user_agent", "%REQ(USER-AGENT)%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("authority", "%REQ(:AUTHORITY)%"),
        ("upstream_host", "%UPSTREAM_HOST%"),
        ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
        ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
        ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
        ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
        (
            "upstream_transport_failure_reason",
            "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        ),
    ];

    /// Aeraki's default line for its MetaProtocol proxy's listeners.
    const AERAKI_TEXT: &str = "[%START_TIME%] %REQ(X-META-PROTOCOL-APPLICATION-PROTOCOL)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%  \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(X-REQUEST-ID)%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %ROUTE_NAME%\n";

    /// The default formats of Istio and Aeraki load, and write one line a call (the newline
    /// that ends their format is the line's own end), each operator showing what it is for a
    /// meta-protocol call or `-`.
    #[test]
    fn istio_and_aeraki_default_formats_load() -> Result<(), String> {
        let entry = LogEntry {
            start_time: UNIX_EPOCH,
            route: Some("hello".into()),
            cluster: Some("outbound|20880||demo".into()),
            endpoint: Some(SocketAddr::from(([10, 0, 0, 9], 20880))),
            answered: true,
            bytes_received: 10,
            bytes_sent: 20,
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        LogFormat::text(ISTIO_TEXT)?.write(&entry, &mut line);
        assert_eq!(
            line,
            "[1970-01-01T00:00:00.000Z] \"- - dubbo\" 0 - via_upstream - \"-\" 10 20 - - \"-\" \"-\" \"-\" \"-\" \"10.0.0.9:20880\" outbound|20880||demo - 127.0.0.1:1 127.0.0.1:1 - hello\n"
        );
        line.clear();
        LogFormat::text(AERAKI_TEXT)?.write(&entry, &mut line);
        assert_eq!(
            line,
            "[1970-01-01T00:00:00.000Z] - 0 via_upstream - \"-\" 10 20 -  \"-\" \"-\" outbound|20880||demo - 127.0.0.1:1 127.0.0.1:1 hello\n"
        );
        line.clear();
        LogFormat::json(ISTIO_JSON)?.write(&entry, &mut line);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(r#""response_code_details":"via_upstream""#)
                && line.contains(r#""response_code":0"#)
                && line.contains(r#""upstream_cluster":"outbound|20880||demo""#),
            "{line}"
        );
        Ok(())
    }

    /// `%RESPONSE_CODE_DETAILS%` says why a call got the answer it got, in Envoy's words where
    /// Envoy has them: the upstream's answer, the local reply's cause, the rbac policy that
    /// refused the call.
    #[test]
    fn response_code_details_say_why_a_call_got_its_answer() -> Result<(), String> {
        use metaprotocol_core::{Authorization, LocalReplyKind};

        let format = LogFormat::text("%RESPONSE_CODE_DETAILS%")?;
        assert!(
            format.shows_refusals() && !format.shows_authorization(),
            "an rbac refusal names its policy, and nothing else the filters decided is shown"
        );
        let local = |kind: LocalReplyKind, flags: ResponseFlags| LogEntry {
            outcome: crate::stats::RequestOutcome::local(kind),
            flags: flags | ResponseFlags::LOCAL_REPLY,
            ..LogEntry::for_test()
        };
        let denied = |policy: Option<&str>| LogEntry {
            authorization: Authorization {
                enforced: Some(AuthorizationDecision {
                    allowed: false,
                    policy: policy.map(Into::into),
                }),
                shadow: None,
            },
            ..local(LocalReplyKind::Unauthorized, ResponseFlags::UNAUTHORIZED)
        };
        let cases = [
            (
                LogEntry {
                    answered: true,
                    outcome: crate::stats::RequestOutcome::SERVER_ERROR,
                    ..LogEntry::for_test()
                },
                "via_upstream",
            ),
            (LogEntry::for_test(), "-"),
            (
                LogEntry {
                    outcome: crate::stats::RequestOutcome::CLIENT_GONE,
                    flags: ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                    ..LogEntry::for_test()
                },
                "downstream_remote_disconnect",
            ),
            (
                local(LocalReplyKind::RouteNotFound, ResponseFlags::NO_ROUTE),
                "route_not_found",
            ),
            (
                local(
                    LocalReplyKind::NoHealthyUpstream,
                    ResponseFlags::NO_HEALTHY_UPSTREAM,
                ),
                "no_healthy_upstream",
            ),
            (
                local(
                    LocalReplyKind::UpstreamConnectFailure,
                    ResponseFlags::UPSTREAM_CONNECT_FAILURE
                        | ResponseFlags::UPSTREAM_OVERFLOW
                        | ResponseFlags::RETRY_LIMIT_EXCEEDED,
                ),
                "upstream_reset_before_response_started{connection_failure}",
            ),
            (
                local(LocalReplyKind::UpstreamReset, ResponseFlags::UPSTREAM_RESET),
                "upstream_reset_before_response_started{connection_termination}",
            ),
            (
                local(LocalReplyKind::Timeout, ResponseFlags::UPSTREAM_TIMEOUT),
                "upstream_response_timeout",
            ),
            (
                local(LocalReplyKind::OverLimit, ResponseFlags::UPSTREAM_OVERFLOW),
                "upstream_reset_before_response_started{overflow}",
            ),
            (
                local(LocalReplyKind::OverLimit, ResponseFlags::RATE_LIMITED),
                "request_rate_limited",
            ),
            (
                local(LocalReplyKind::FaultAbort, ResponseFlags::FAULT_INJECTED),
                "fault_filter_abort",
            ),
            (
                local(LocalReplyKind::Unavailable, ResponseFlags::OVERLOADED),
                "overload",
            ),
            (
                local(LocalReplyKind::Unavailable, ResponseFlags::DRAINING),
                "draining",
            ),
            (
                denied(Some("no-acme")),
                "rbac_access_denied_matched_policy[no-acme]",
            ),
            (denied(None), "rbac_access_denied_matched_policy[none]"),
            // A filter other than rbac refused it.
            (
                local(LocalReplyKind::Unauthorized, ResponseFlags::UNAUTHORIZED),
                "unauthorized",
            ),
            (
                local(LocalReplyKind::Internal, ResponseFlags::NONE),
                "internal",
            ),
        ];
        for (entry, details) in cases {
            let mut line = String::new();
            format.write(&entry, &mut line);
            assert_eq!(line, format!("{details}\n"), "{entry:?}");
        }
        Ok(())
    }

    /// The rbac filters' decisions are the dynamic metadata Envoy's rbac filters set, under
    /// their namespace; other filters' metadata is never set here (`-`), and a key the rbac
    /// filters do not set is refused.
    #[test]
    fn rbac_decisions_are_envoys_rbac_dynamic_metadata() -> Result<(), String> {
        use metaprotocol_core::Authorization;

        let format = LogFormat::text(
            "%DYNAMIC_METADATA(envoy.filters.network.rbac:enforced_engine_result)% %DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)% %DYNAMIC_METADATA(envoy.filters.network.rbac:shadow_engine_result)% %DYNAMIC_METADATA(envoy.filters.network.rbac:shadow_effective_policy_id)% %DYNAMIC_METADATA(istio.mixer:status)%",
        )?;
        assert!(format.shows_authorization());
        let entry = LogEntry {
            authorization: Authorization {
                enforced: Some(AuthorizationDecision {
                    allowed: true,
                    policy: Some("greeters".into()),
                }),
                shadow: Some(AuthorizationDecision {
                    allowed: false,
                    policy: Some("beta-watch".into()),
                }),
            },
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        format.write(&entry, &mut line);
        assert_eq!(line, "allowed greeters denied beta-watch -\n");
        for (bad, reason) in [
            (
                "%DYNAMIC_METADATA(envoy.filters.network.rbac:nope)%",
                "enforced_engine_result",
            ),
            (
                "%DYNAMIC_METADATA(envoy.filters.network.rbac)%",
                "enforced_engine_result",
            ),
            ("%DYNAMIC_METADATA()%", "namespace"),
            ("%DYNAMIC_METADATA(a:b", "not closed"),
        ] {
            let err = check(bad).err().unwrap_or_default();
            assert!(err.contains(reason), "{bad}: {err}");
        }
        Ok(())
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` says why the connection that failed the call could
    /// not be made, its spaces as `_` as Envoy's; a format that does not show it does not
    /// capture it.
    #[test]
    fn a_connection_that_could_not_be_made_says_why() -> Result<(), String> {
        let format = LogFormat::text("\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\"")?;
        assert!(format.shows_transport_failure());
        assert!(!LogFormat::text(TEXT)?.shows_transport_failure());
        let entry = LogEntry {
            transport_failure: Some("Connection refused (os error 111)".into()),
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        format.write(&entry, &mut line);
        format.write(&LogEntry::for_test(), &mut line);
        assert_eq!(line, "\"Connection_refused_(os_error_111)\"\n\"-\"\n");
        Ok(())
    }

    /// `%UPSTREAM_LOCAL_ADDRESS%` shows the proxy's address on the connection of the call's last
    /// attempt, with or without its port; a format that does not show it does not ask the
    /// router to keep the connection.
    #[test]
    fn the_upstream_connections_local_address_shows() -> Result<(), String> {
        let format =
            LogFormat::text("%UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%")?;
        assert!(format.shows_upstream_local_address());
        assert!(!LogFormat::text(TEXT)?.shows_upstream_local_address());
        assert!(!LogFormat::json(JSON)?.shows_upstream_local_address());
        assert!(LogFormat::text(ISTIO_TEXT)?.shows_upstream_local_address());
        let entry = LogEntry {
            upstream_local_address: Some(SocketAddr::from(([10, 0, 0, 2], 41000))),
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        format.write(&entry, &mut line);
        format.write(&LogEntry::for_test(), &mut line);
        assert_eq!(line, "10.0.0.2:41000 10.0.0.2\n- -\n");
        Ok(())
    }

    /// `%CONNECTION_TERMINATION_DETAILS%` says why the proxy closed the call's connection (a
    /// codec's error as Envoy's `codec_error:`); a format that does not show it has the calls
    /// record nothing.
    #[test]
    fn why_the_proxy_closed_a_connection_shows() -> Result<(), String> {
        use crate::server::ConnectionTermination;

        let format = LogFormat::text("%CONNECTION_TERMINATION_DETAILS%")?;
        assert!(format.shows_connection_termination());
        assert!(!LogFormat::text(TEXT)?.shows_connection_termination());
        assert!(!LogFormat::json(JSON)?.shows_connection_termination());
        assert!(LogFormat::text(AERAKI_TEXT)?.shows_connection_termination());
        let mut line = String::new();
        for why in [
            Some(ConnectionTermination::CodecError("malformed")),
            Some(ConnectionTermination::WriteStalled),
            None,
        ] {
            let entry = LogEntry {
                connection_termination: why,
                ..LogEntry::for_test()
            };
            format.write(&entry, &mut line);
        }
        assert_eq!(line, "codec_error:malformed\nwrite_stalled\n-\n");
        Ok(())
    }

    /// `%RESP(key)%` reads the upstream's answer's metadata as `%REQ(key)%` reads the
    /// request's (a key of the same name apart), and `%RESPONSE_CODE%` says whose answer the
    /// client got, as Aeraki's MetaProtocol proxy writes it: `0` the upstream's, `1` the
    /// proxy's own, `-` none.
    #[test]
    fn the_answers_metadata_and_whose_answer_it_was_show() -> Result<(), String> {
        use crate::stats::RequestOutcome;
        use metaprotocol_core::{ByteStr, LocalReplyKind};

        let format = LogFormat::text(
            "%RESPONSE_CODE% %RESP(error_code)% %RESP(x?error_text):4% %REQ(error_code)%",
        )?;
        assert_eq!(format.keys(), ["error_code"]);
        assert_eq!(format.response_keys(), ["error_code", "x", "error_text"]);
        let answered = LogEntry {
            answered: true,
            outcome: RequestOutcome::SERVER_ERROR,
            response_metadata: [Some("1003"), None, Some("timed out")]
                .map(|value| value.map(ByteStr::from_static))
                .into_iter()
                .collect(),
            ..LogEntry::for_test()
        };
        let refused = LogEntry {
            outcome: RequestOutcome::local(LocalReplyKind::RouteNotFound),
            flags: ResponseFlags::NO_ROUTE | ResponseFlags::LOCAL_REPLY,
            ..LogEntry::for_test()
        };
        let mut line = String::new();
        for entry in [&answered, &refused, &LogEntry::for_test()] {
            format.write(entry, &mut line);
        }
        assert_eq!(line, "0 1003 time -\n1 - - -\n- - - -\n");
        Ok(())
    }

    /// `%REQ(A?B)%` shows `A`, or `B` when the call has no `A`, as Envoy's; both are read.
    #[test]
    fn a_key_may_fall_back_on_another() -> Result<(), String> {
        use metaprotocol_core::ByteStr;

        let format = LogFormat::text("%REQ(x-original?method):4% %REQ(method)%")?;
        assert_eq!(format.keys(), ["x-original", "method"]);
        for (original, shown) in [(None, "sayH sayHello"), (Some("proxied"), "prox sayHello")] {
            let entry = LogEntry {
                metadata: [
                    original.map(ByteStr::from_static),
                    Some(ByteStr::from_static("sayHello")),
                ]
                .into_iter()
                .collect(),
                ..LogEntry::for_test()
            };
            let mut line = String::new();
            format.write(&entry, &mut line);
            assert_eq!(line, format!("{shown}\n"));
        }
        for (bad, reason) in [
            ("%REQ(a?)%", "empty"),
            ("%REQ(a?b?c)%", "one `?`"),
            ("%RESP(a):x%", ":LENGTH"),
        ] {
            let err = check(bad).err().unwrap_or_default();
            assert!(err.contains(reason), "{bad}: {err}");
        }
        Ok(())
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let time = UNIX_EPOCH + std::time::Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339(time), "2024-02-29T23:59:59.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
