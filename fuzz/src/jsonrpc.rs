//! The JSON-RPC (one object a line) checks.

use bytes::BytesMut;
use metaprotocol_core::{
    ByteStr, Codec, CodecFactory, LocalReply, LocalReplyKind, Message, MessageKind, Mutation,
    ResponseStatus, Side, WireVariant, keys,
};
use metaprotocol_jsonrpc::JsonRpcCodecFactory;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{MAX_FRAME, decode_exactly_one, encode_or_refuse};

/// The engine's ids a call is forwarded under.
const ENGINE_IDS: [u64; 3] = [0, 7, u64::MAX];

/// The local replies every call is answered with.
const REPLIES: [LocalReplyKind; 4] = [
    LocalReplyKind::RouteNotFound,
    LocalReplyKind::BadRequest,
    LocalReplyKind::Timeout,
    LocalReplyKind::Internal,
];

fn codec(side: Side) -> Box<dyn Codec> {
    JsonRpcCodecFactory::new(MAX_FRAME).new_codec(side, WireVariant::DEFAULT)
}

/// The one member of a line these checks read: its id, as written (`null` included).
#[derive(Deserialize)]
struct Id<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// A member that is there, whatever its value (serde reads a `null` as no `Option` at all).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The id of the JSON object on `line`, as written; `None` if the line is not an object or has
/// no id.
fn raw_id(line: &[u8]) -> Option<String> {
    let id: Id<'_> = serde_json::from_slice(line).ok()?;
    id.id.map(|raw| raw.get().to_owned())
}

/// `bytes` is one line: a newline at its end and nowhere else.
fn assert_one_line(bytes: &[u8]) {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count();
    assert!(
        newlines == 1 && bytes.ends_with(b"\n"),
        "not one line: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// Arbitrary bytes through a downstream and an upstream codec: every call read is answered
/// locally and forwarded, its server's echo coming back to the client with the client's id;
/// every notification goes upstream as it came; every answer read goes back to a client as
/// one line of JSON, or is refused. A batch's calls are each checked as a lone call, and
/// the answers to a batch come back as one line, an array of one answer per call that wants
/// one.
pub fn decode(data: &[u8]) {
    for side in [Side::Downstream, Side::Upstream] {
        let mut batches: Vec<Vec<Message>> = Vec::new();
        for message in crate::decode_stream(&|| codec(side), data) {
            if side == Side::Downstream && message.request_id != 0 {
                let lone = as_lone(&message);
                check_lone(side, &lone);
                if message.reject_reason.is_none() {
                    // Upstream, a batch's call is a line of its own, as the lone call is.
                    let sent = |call: &Message| {
                        encode_or_refuse(
                            &mut *codec(Side::Upstream),
                            call,
                            7,
                            WireVariant::DEFAULT,
                            &Mutation::new(),
                        )
                    };
                    assert_eq!(sent(&message), sent(&lone));
                }
                match batches.last_mut() {
                    Some(batch) if batch[0].request_id == message.request_id => batch.push(message),
                    _ => batches.push(vec![message]),
                }
                continue;
            }
            check_lone(side, &message);
        }
        batches.iter().for_each(|batch| answer_batch(batch));
    }
}

/// A batch's call as a lone call: its frame (one JSON value, on no line of its own) made a
/// line, and its request id the lone call's.
fn as_lone(call: &Message) -> Message {
    assert!(
        !call.frame.contains(&b'\n'),
        "a batch's call holds a line end: {:?}",
        call.frame
    );
    let mut lone = call.clone();
    lone.frame = [&call.frame[..], b"\n"].concat().into();
    lone.request_id = 0;
    lone
}

/// The checks of a message a codec of `side` read.
fn check_lone(side: Side, message: &Message) {
    assert_one_line(&message.frame);
    match (side, message.kind) {
        (Side::Downstream, MessageKind::Request) => {
            answer(message);
            if message.reject_reason.is_none() {
                forward_call(message);
            }
        }
        (Side::Downstream, MessageKind::Oneway) => forward_notification(message),
        (Side::Upstream, MessageKind::Response) => return_answer(message),
        (Side::Upstream, MessageKind::Heartbeat) => refuse_server_call(message),
        (side, kind) => panic!("a {side:?} codec read a {kind:?}"),
    }
}

/// The calls of one batch that want an answer, answered locally through one codec: nothing is
/// written until the last, then one line, an array of their answers in that order, each with
/// its call's id (`null` for an element that is no call).
fn answer_batch(batch: &[Message]) {
    let mut downstream = codec(Side::Downstream);
    let answered: Vec<&Message> = batch
        .iter()
        .filter(|m| m.kind == MessageKind::Request)
        .collect();
    let mut written = BytesMut::new();
    for (n, call) in answered.iter().enumerate() {
        let reply = LocalReply::new(LocalReplyKind::Timeout, "late");
        if let Err(e) = downstream.encode_local_reply(call, &reply, &mut written) {
            panic!("local reply failed: {e}");
        }
        assert_eq!(written.is_empty(), n + 1 < answered.len(), "{written:?}");
    }
    if answered.is_empty() {
        return;
    }
    assert_one_line(&written);
    let ids: Vec<Option<String>> = json_object::<Vec<&RawValue>>(&written, "a batch's answers")
        .into_iter()
        .map(|answer| raw_id(answer.get().as_bytes()))
        .collect();
    let expected: Vec<Option<String>> = answered
        .iter()
        .map(|call| match call.reject_reason {
            None => raw_id(&call.frame),
            Some(_) => Some("null".to_owned()),
        })
        .collect();
    assert_eq!(ids, expected);
}

/// Local replies to `call` are JSON-RPC errors on one line with the client's id (`null` for a
/// line the codec could not read).
fn answer(call: &Message) {
    let expected = match call.reject_reason {
        None => raw_id(&call.frame),
        Some(_) => Some("null".to_owned()),
    };
    for kind in REPLIES {
        let mut reply = BytesMut::new();
        if let Err(e) = codec(Side::Downstream).encode_local_reply(
            call,
            &LocalReply::new(kind, "a \"quoted\"\nreason"),
            &mut reply,
        ) {
            panic!("local reply failed: {e}");
        }
        assert_one_line(&reply);
        let error: ErrorReply = json_object(&reply, "a local reply");
        assert!(error.error.code < 0, "{reply:?}");
        assert_eq!(raw_id(&reply), expected);
    }
}

/// `call` forwarded under each engine id reads at the server as the same call, and the
/// server's echo of the id it got reads upstream as that engine id, and reaches the client
/// with the client's own id, as written.
fn forward_call(call: &Message) {
    let client_id = raw_id(&call.frame);
    assert!(client_id.is_some(), "a two-way call without an id");
    for id in ENGINE_IDS {
        let Some(sent) = encode_or_refuse(
            &mut *codec(Side::Upstream),
            call,
            id,
            WireVariant::DEFAULT,
            &Mutation::new(),
        ) else {
            panic!("a call the codec read is not forwarded");
        };
        assert_one_line(&sent);
        let at_server = decode_exactly_one(&mut *codec(Side::Downstream), &sent);
        assert_eq!(
            (at_server.kind, at_server.reject_reason),
            (MessageKind::Request, None)
        );
        assert_eq!(
            at_server.metadata.get(keys::METHOD),
            call.metadata.get(keys::METHOD)
        );
        let Some(upstream_id) = raw_id(&sent) else {
            panic!("a forwarded call without an id: {sent:?}");
        };
        let echo = format!("{{\"jsonrpc\":\"2.0\",\"result\":null,\"id\":{upstream_id}}}\n");
        let answer = decode_exactly_one(&mut *codec(Side::Upstream), echo.as_bytes());
        assert_eq!(
            (answer.kind, answer.request_id, answer.status),
            (MessageKind::Response, id, ResponseStatus::Ok)
        );
        let Some(back) = encode_or_refuse(
            &mut *codec(Side::Downstream),
            &answer,
            call.request_id,
            WireVariant::DEFAULT,
            &Mutation::new(),
        ) else {
            panic!("the answer to a client's call does not go back to it");
        };
        assert_one_line(&back);
        assert_eq!(raw_id(&back), client_id);
    }
}

/// A notification goes upstream as it came, a mutation asked for or not (JSON-RPC has no
/// headers to edit).
fn forward_notification(notification: &Message) {
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-routed-by"),
        ByteStr::from_static("fuzz"),
    );
    for mutation in [Mutation::new(), mutation] {
        let sent = encode_or_refuse(
            &mut *codec(Side::Upstream),
            notification,
            7,
            WireVariant::DEFAULT,
            &mutation,
        );
        assert_eq!(sent.as_deref(), Some(&notification.frame[..]));
    }
}

/// A server's own call is answered on its connection with one line: error -32601 and the
/// call's id, as written.
fn refuse_server_call(call: &Message) {
    let mut reply = BytesMut::new();
    if let Err(e) = codec(Side::Upstream).encode_heartbeat_reply(call, &mut reply) {
        panic!("a server's call is not answered: {e}");
    }
    assert_one_line(&reply);
    let error: ErrorReply = json_object(&reply, "the answer to a server's call");
    assert_eq!(error.error.code, -32601);
    assert_eq!(raw_id(&reply), raw_id(&call.frame));
}

/// A server's answer goes back to its client as one line of JSON, whatever id the server
/// wrote, or is refused (and the engine answers the client itself).
fn return_answer(answer: &Message) {
    let Some(back) = encode_or_refuse(
        &mut *codec(Side::Downstream),
        answer,
        0,
        WireVariant::DEFAULT,
        &Mutation::new(),
    ) else {
        return;
    };
    assert_one_line(&back);
    let Object {} = json_object(&back, "an answer sent to a client");
}

/// Any JSON object.
#[derive(Deserialize)]
struct Object {}

/// A JSON-RPC error reply's `error.code`.
#[derive(Deserialize)]
struct ErrorReply {
    error: ErrorCode,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: i64,
}

/// `line`, a JSON object, read as `T`: UTF-8 text in JSON's grammar. Members `T` does not name
/// are checked by that grammar only, so numbers of any size pass, as JSON allows (serde_json's
/// `Value` refuses those past the range of an `f64`, as a client's id may be).
fn json_object<'a, T: Deserialize<'a>>(line: &'a [u8], what: &str) -> T {
    let read = std::str::from_utf8(line)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()));
    match read {
        Ok(value) => value,
        Err(e) => panic!("{what} is not a JSON object ({e}): {line:?}"),
    }
}
