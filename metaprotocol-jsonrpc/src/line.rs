//! One line of JSON-RPC 2.0, read without building its values: what it is, its `id` (where it
//! sits in the line, so it can be rewritten in place), its `method`, its error code.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The members of a request or response object the codec needs, as they sit in the line
/// (`params` and the result's value are never built).
#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Option<&'a RawValue>,
    /// `Some` whenever the member is there, `null` included: a call with a `null` id is a
    /// request, only one without `id` is a notification.
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
    /// `Some` whenever the member is there: a method that returns nothing answers with a
    /// `null` result.
    result: Option<&'a RawValue>,
    /// `Some` whenever the member is there; `Some(None)` for `null`.
    error: Option<Option<ErrorObject>>,
}

/// The members JSON-RPC 2.0 names, as read from an object.
#[derive(Clone, Copy)]
enum Member {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    /// A member of the sender's own, which the codec passes on.
    Other,
}

/// The members JSON-RPC 2.0 names, by name.
const MEMBERS: [(&str, Member); 6] = [
    ("jsonrpc", Member::Jsonrpc),
    ("id", Member::Id),
    ("method", Member::Method),
    ("params", Member::Params),
    ("result", Member::Result),
    ("error", Member::Error),
];

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(MemberName)
    }
}

/// Reads a member name (unescaped by serde_json) into a [`Member`].
struct MemberName;

impl Visitor<'_> for MemberName {
    type Value = Member;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
        for (known, member) in MEMBERS {
            if name == known {
                return Ok(member);
            }
            // Go's encoding/json takes such a name for the member, and of two the last: the
            // server would run another method, or answer with another id, than the proxy read.
            if go_folds_to(name, known) {
                return Err(E::custom(format_args!(
                    "a member `{name}`, `{known}` in another case"
                )));
            }
        }
        Ok(Member::Other)
    }
}

/// True if Go's encoding/json takes member `name` for the field `known` (lowercase ASCII): the
/// names are equal under Unicode simple case folding, which, beyond ASCII's cases, makes `ſ`
/// (U+017F) an `s` and the Kelvin sign `K` (U+212A) a `k` (no other character folds to an
/// ASCII letter): `"paramſ"` is a server's `params`.
fn go_folds_to(name: &str, known: &str) -> bool {
    let mut chars = name.chars();
    known.bytes().all(|letter| {
        chars.next().is_some_and(|c| match c {
            '\u{17F}' => letter == b's',
            '\u{212A}' => letter == b'k',
            c => c.to_ascii_lowercase() == char::from(letter),
        })
    }) && chars.next().is_none()
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeMembers)
    }
}

/// Reads an object into an [`Envelope`].
struct EnvelopeMembers;

impl<'de> Visitor<'de> for EnvelopeMembers {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC 2.0 object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(member) = map.next_key::<Member>()? {
            // A member written twice: parsers that keep the last (most do) would read another
            // method or id than the proxy.
            let twice = match member {
                Member::Jsonrpc => envelope.jsonrpc.replace(map.next_value()?).is_some(),
                Member::Id => envelope.id.replace(map.next_value()?).is_some(),
                Member::Method => envelope.method.replace(map.next_value()?).is_some(),
                Member::Result => envelope.result.replace(map.next_value()?).is_some(),
                Member::Error => envelope.error.replace(map.next_value()?).is_some(),
                Member::Params => envelope.params.replace(map.next_value()?).is_some(),
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if twice {
                return Err(de::Error::custom("a member written twice"));
            }
        }
        Ok(envelope)
    }
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
}

/// What a line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A call: `id` is where its id sits (`None`: a notification, which gets no answer).
    Request {
        id: Option<Range<usize>>,
        method: Text,
    },
    /// An answer: where its id sits, and its error code if it is an error.
    Response {
        id: Range<usize>,
        error: Option<i64>,
    },
    /// A line the codec cannot proxy, and why: still one whole line, so the connection goes on.
    Invalid(Invalid),
}

/// A string member: where it sits in the line, or its unescaped text when it had escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Text {
    /// The bytes at this range of the line, as written.
    At(Range<usize>),
    /// Unescaped.
    Owned(String),
}

/// Why a line cannot be proxied, as JSON-RPC's own errors say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not JSON (-32700).
    Parse,
    /// JSON, but not a JSON-RPC 2.0 request or response object (-32600).
    NotRpc,
    /// A batch (an array) where none is taken: from a server (-32600).
    Batch,
    /// A batch without calls (-32600, as JSON-RPC 2.0 answers `[]`).
    EmptyBatch,
    /// A batch of more calls than the listener's `max_batch_calls` (-32600).
    BatchTooLarge,
    /// Longer than the listener's `max_frame_bytes` (-32600).
    TooLong,
}

impl Invalid {
    /// The reason a client is told.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Parse => "the line is not valid JSON",
            Invalid::NotRpc => "the line is not a JSON-RPC 2.0 request",
            Invalid::Batch => "a JSON-RPC batch is not taken here",
            Invalid::EmptyBatch => "the batch holds no call",
            Invalid::BatchTooLarge => {
                "the batch holds more calls than the listener's max_batch_calls"
            }
            Invalid::TooLong => "the line is longer than the listener's max_frame_bytes",
        }
    }
}

/// Reads `line` (without its newline).
pub(crate) fn read(line: &[u8]) -> Line {
    // JSON is UTF-8 text (RFC 8259), but serde_json checks only the strings it builds, not
    // those it skips (`params`, a result, an error's message): a line that is not UTF-8 would be
    // forwarded to a peer whose parser refuses it.
    let Ok(line_text) = std::str::from_utf8(line) else {
        return Line::Invalid(Invalid::Parse);
    };
    if is_batch(line) {
        // JSON-RPC 2.0 answers a batch that is not JSON with a parse error, like any line.
        return match serde_json::from_str::<serde::de::IgnoredAny>(line_text) {
            Ok(_) => Line::Invalid(Invalid::Batch),
            Err(_) => Line::Invalid(Invalid::Parse),
        };
    }
    object(line_text)
}

/// True if `line` is a batch (an array), or would be were it JSON.
pub(crate) fn is_batch(line: &[u8]) -> bool {
    line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// The calls of a batch, in order: where each sits in the batch's line, and what it is
/// (`Line::Invalid` for an element that is no call: JSON-RPC 2.0 answers it with its own
/// error, in its place among the answers).
pub(crate) type Calls = Vec<(Range<usize>, Line)>;

/// Reads `line` (without its newline), a batch ([`is_batch`]) of one to `max_calls` calls:
/// its calls, or why it is answered with one error.
pub(crate) fn read_batch(line: &[u8], max_calls: usize) -> Result<Calls, Invalid> {
    let text = std::str::from_utf8(line).map_err(|_| Invalid::Parse)?;
    let mut read = serde_json::Deserializer::from_str(text);
    let elements = de::Deserializer::deserialize_seq(&mut read, Elements { max_calls })
        .and_then(|elements| read.end().map(|()| elements))
        .map_err(|_| Invalid::Parse)?;
    let elements = match elements {
        None => return Err(Invalid::BatchTooLarge),
        Some(elements) if elements.is_empty() => return Err(Invalid::EmptyBatch),
        Some(elements) => elements,
    };
    Ok(elements
        .into_iter()
        .map(|element| (span(line, element.get()), object(element.get())))
        .collect())
}

/// Reads a batch's elements, each as written, up to `max_calls`; past it, reads the rest as
/// JSON only (a batch cut short is still a parse error) and holds none of it: `None`.
struct Elements {
    max_calls: usize,
}

impl<'de> Visitor<'de> for Elements {
    type Value = Option<Vec<&'de RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC 2.0 batch")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<&RawValue>()? {
            if elements.len() == self.max_calls {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            elements.push(element);
        }
        Ok(Some(elements))
    }
}

/// Reads `json`, one JSON value that is not a batch.
fn object(json: &str) -> Line {
    let line = json.as_bytes();
    let envelope: Envelope<'_> = match serde_json::from_str(json) {
        Ok(envelope) => envelope,
        Err(err) if err.is_data() => return Line::Invalid(Invalid::NotRpc),
        Err(_) => return Line::Invalid(Invalid::Parse),
    };
    if envelope.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Line::Invalid(Invalid::NotRpc);
    }
    // JSON-RPC 2.0: "If present, parameters for the rpc call MUST be provided as a Structured
    // value"; a server answers others as it answers a call it cannot read, with id `null`.
    if envelope
        .params
        .is_some_and(|raw| !matches!(raw.get().as_bytes().first(), Some(b'[' | b'{')))
    {
        return Line::Invalid(Invalid::NotRpc);
    }
    // JSON-RPC 2.0: an id "MUST contain a String, Number, or NULL value if included".
    if envelope.id.is_some_and(|raw| !is_id(raw.get())) {
        return Line::Invalid(Invalid::NotRpc);
    }
    let id = envelope.id.map(|raw| span(line, raw.get()));
    // `"error": null` is no error: without a result, the line is no answer.
    let error = envelope.error.flatten();
    match (envelope.method, id) {
        (Some(method), id) => match text(line, method) {
            Some(method) => Line::Request { id, method },
            None => Line::Invalid(Invalid::NotRpc),
        },
        (None, Some(id)) if envelope.result.is_some() || error.is_some() => Line::Response {
            id,
            error: error.map(|e| e.code),
        },
        _ => Line::Invalid(Invalid::NotRpc),
    }
}

/// True if `json`, one JSON value, is a string, a number or `null`.
fn is_id(json: &str) -> bool {
    json == "null" || matches!(json.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// The string `raw` (a value in `line`): where its text sits when it has no escapes, else its
/// unescaped text; `None` if it is not a string.
fn text(line: &[u8], raw: &RawValue) -> Option<Text> {
    let json = raw.get();
    let inner = json.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str(json).ok().map(Text::Owned)
    } else {
        Some(Text::At(span(line, inner)))
    }
}

/// Where `part`, a slice of `whole`, sits in it.
fn span(whole: &[u8], part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_text<'l>(line: &'l str, range: &Range<usize>) -> &'l str {
        &line[range.clone()]
    }

    #[test]
    fn requests_notifications_and_responses_are_told_apart() {
        let call = r#"{"jsonrpc": "2.0", "method": "add", "params": [1, {"id": 9}], "id": "abc"}"#;
        let Line::Request {
            id: Some(id),
            method: Text::At(method),
        } = read(call.as_bytes())
        else {
            panic!("not a request");
        };
        assert_eq!(
            (id_text(call, &id), id_text(call, &method)),
            ("\"abc\"", "add")
        );
        let note = r#"{"jsonrpc":"2.0","method":"note\u0041"}"#;
        assert_eq!(
            read(note.as_bytes()),
            Line::Request {
                id: None,
                method: Text::Owned("noteA".into())
            }
        );
        let ok = r#"{"jsonrpc":"2.0","result":{"id":1},"id":17}"#;
        let Line::Response { id, error: None } = read(ok.as_bytes()) else {
            panic!("not a response");
        };
        assert_eq!(id_text(ok, &id), "17");
        let void = r#"{"jsonrpc":"2.0","result":null,"id":3}"#;
        assert!(matches!(
            read(void.as_bytes()),
            Line::Response { error: None, .. }
        ));
        let err = r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"no"},"id":"x"}"#;
        assert!(matches!(
            read(err.as_bytes()),
            Line::Response {
                error: Some(-32601),
                ..
            }
        ));
    }

    #[test]
    fn what_cannot_be_proxied_says_why() {
        assert_eq!(read(b"{not json"), Line::Invalid(Invalid::Parse));
        assert_eq!(
            read(b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":1,\"message\":\"\xff\"},\"id\":1}"),
            Line::Invalid(Invalid::Parse),
            "a string that is not UTF-8, in a member the codec skips"
        );
        assert_eq!(read(b" [{}]"), Line::Invalid(Invalid::Batch));

        assert_eq!(read(b"42"), Line::Invalid(Invalid::NotRpc));
        assert_eq!(
            read(br#"{"jsonrpc":"1.0","method":"a","id":1}"#),
            Line::Invalid(Invalid::NotRpc)
        );
        assert_eq!(
            read(br#"{"jsonrpc":"2.0","method":7,"id":1}"#),
            Line::Invalid(Invalid::NotRpc)
        );
        assert_eq!(
            read(br#"{"jsonrpc":"2.0","id":1}"#),
            Line::Invalid(Invalid::NotRpc)
        );
    }

    /// JSON-RPC 2.0's own example: a batch cut short is a parse error (-32700), not an invalid
    /// request (-32600).
    #[test]
    fn a_batch_that_is_not_json_is_a_parse_error() {
        assert_eq!(read(b"[]"), Line::Invalid(Invalid::Batch));
        assert_eq!(
            read(br#"[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},{"jsonrpc":"2.0","method""#),
            Line::Invalid(Invalid::Parse)
        );
    }

    /// Go's encoding/json, which many JSON-RPC servers read with (geth's among them), takes a
    /// member whose name matches a field's in another case, and of two the last (golang/go
    /// #43664): `"method":"public","METHOD":"admin"` is routed and authorized by `public` and
    /// runs `admin` there, and an `"ID"` beside the proxy's `id`, or in a notification, is the
    /// id the server answers with, one a client may have copied from another's call on the same
    /// upstream connection. Such a line is an invalid request, as is a member written twice
    /// (which servers that keep the last one read otherwise).
    #[test]
    fn a_member_named_in_another_case_or_twice_is_an_invalid_request() {
        for line in [
            &br#"{"jsonrpc":"2.0","method":"public","METHOD":"admin","id":1}"#[..],
            br#"{"jsonrpc":"2.0","Method":"admin","method":"public","id":1}"#,
            br#"{"jsonrpc":"2.0","method":"public","id":1,"ID":"5:31"}"#,
            br#"{"jsonrpc":"2.0","method":"public","Id":"5:31"}"#,
            br#"{"jsonrpc":"2.0","method":"public","params":[],"Params":{},"id":1}"#,
            br#"{"jsonrpc":"2.0","method":"public","JSONRPC":"1.0","id":1}"#,
            br#"{"jsonrpc":"2.0","method":"public","meth\u004fd":"admin","id":1}"#,
            br#"{"jsonrpc":"2.0","method":"public","method":"admin","id":1}"#,
            br#"{"jsonrpc":"2.0","method":"public","meth\u006fd":"admin","id":1}"#,
            br#"{"jsonrpc":"2.0","method":"public","id":1,"\u0069d":2}"#,
        ] {
            assert_eq!(
                read(line),
                Line::Invalid(Invalid::NotRpc),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let answer =
            br#"{"jsonrpc":"2.0","result":1,"Error":{"code":1,"message":"x"},"id":"1:31"}"#;
        assert_eq!(read(answer), Line::Invalid(Invalid::NotRpc));
        let folded =
            "{\"jsonrpc\":\"2.0\",\"result\":1,\"re\u{17f}ult\":2,\"id\":\"1:31\"}".as_bytes();
        assert_eq!(read(folded), Line::Invalid(Invalid::NotRpc));
        // Other members are the server's business, as JSON-RPC 2.0 leaves them.
        assert!(matches!(
            read(br#"{"jsonrpc":"2.0","method":"m","id":1,"trace":"t","method_hint":1}"#),
            Line::Request { .. }
        ));
    }

    /// Go's encoding/json matches member names under Unicode simple case folding, not ASCII's
    /// only: `ſ` (U+017F) is an `s` and `K` (U+212A, the Kelvin sign) a `k`. So `"paramſ": 5`
    /// beside (or instead of) `params` was, to the proxy, a member of the client's own, but to
    /// such a server the call's params, unchecked: a server answers a call whose params are
    /// not structured with id `null`, which reaches no call, and the client waited for its
    /// timeout; `"jſonrpc"` is the version the server reads. Such a line is an invalid request,
    /// as a name in another ASCII case is. (`method` and `id` hold no `s` or `k`: no fold
    /// reaches them.)
    #[test]
    fn a_member_named_as_a_go_server_folds_it_is_an_invalid_request() {
        for line in [
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"param\u{17f}\":5,\"id\":1}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":[],\"PARAM\u{17f}\":5,\"id\":1}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"param\\u017f\":5}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"j\u{17f}onrpc\":\"1.0\",\"id\":1}",
        ] {
            assert_eq!(
                read(line.as_bytes()),
                Line::Invalid(Invalid::NotRpc),
                "{line}"
            );
        }
        // Names that fold to none of JSON-RPC's are the client's own.
        for other in [
            "\u{212A}ey",
            "param\u{17f}\u{17f}",
            "\u{131}d",
            "\u{130}d",
            "para\u{1e9e}",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","method":"m","{other}":5,"id":1}}"#);
            assert!(
                matches!(read(line.as_bytes()), Line::Request { .. }),
                "{line}"
            );
        }
    }

    /// JSON-RPC 2.0: "If present, parameters for the rpc call MUST be provided as a
    /// Structured value", an array or an object. A call with others is an invalid request the
    /// proxy answers itself: a server answers it with id `null` (jsonrpcserver does), which
    /// reaches no call, so its client waited for its timeout instead.
    #[test]
    fn a_call_whose_params_are_not_an_array_or_object_is_an_invalid_request() {
        for params in ["5", "\"a\"", "true", "null"] {
            for id in [",\"id\":1", ""] {
                let line = format!(r#"{{"jsonrpc":"2.0","method":"m","params":{params}{id}}}"#);
                assert_eq!(
                    read(line.as_bytes()),
                    Line::Invalid(Invalid::NotRpc),
                    "{line}"
                );
            }
        }
        for params in ["[]", " [1, 2]", "{\"a\": 1}"] {
            let line = format!(r#"{{"jsonrpc":"2.0","method":"m","params":{params},"id":1}}"#);
            assert!(
                matches!(read(line.as_bytes()), Line::Request { .. }),
                "{line}"
            );
        }
    }
}
