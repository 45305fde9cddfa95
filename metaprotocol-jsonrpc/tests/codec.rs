//! The codec's contract, through the public API only: framing, ids kept as written, local
//! replies as JSON-RPC errors, and what it refuses.

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecError, CodecFactory, EncodeParams, FrameHead, LocalReply, LocalReplyKind, Message,
    MessageKind, Mutation, PassedOver, ResponseStatus, Side, WireVariant,
};
use metaprotocol_jsonrpc::{CALL_ID, JsonRpcCodecFactory};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn codec(side: Side) -> Box<dyn Codec> {
    JsonRpcCodecFactory::new(256).new_codec(side, WireVariant::DEFAULT)
}

fn decode_all(codec: &mut Box<dyn Codec>, bytes: &[u8]) -> Result<Vec<Message>, CodecError> {
    let mut src = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(message) = codec.decode(&mut src)? {
        out.push(message);
    }
    Ok(out)
}

fn reply(
    codec: &mut Box<dyn Codec>,
    request: &Message,
    kind: LocalReplyKind,
) -> Result<String, CodecError> {
    let mut dst = BytesMut::new();
    codec.encode_local_reply(request, &LocalReply::new(kind, "why"), &mut dst)?;
    Ok(String::from_utf8_lossy(&dst).into_owned())
}

/// What a client's codec decodes of `text` arriving in two reads, cut at `cut`, which it must
/// consume whole.
fn decode_in_two(text: &[u8], cut: usize) -> Result<Vec<Message>, Box<dyn std::error::Error>> {
    let mut codec = codec(Side::Downstream);
    let mut src = BytesMut::from(&text[..cut]);
    let mut got = Vec::new();
    while let Some(m) = codec.decode(&mut src)? {
        got.push(m);
    }
    src.extend_from_slice(&text[cut..]);
    while let Some(m) = codec.decode(&mut src)? {
        got.push(m);
    }
    if !src.is_empty() {
        return Err(format!("cut at {cut}: {} bytes left undecoded", src.len()).into());
    }
    Ok(got)
}

#[test]
fn lines_split_anywhere_decode_once_whole() -> TestResult {
    let text = b"{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"id\":1}\n\n  \n{\"jsonrpc\":\"2.0\",\"method\":\"b\"}\n";
    for cut in 0..text.len() {
        let got = decode_in_two(text, cut)?;
        let kinds: Vec<_> = got.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [MessageKind::Request, MessageKind::Oneway],
            "cut at {cut}"
        );
    }
    Ok(())
}

/// A line longer than the limit is refused by `decode`; the engine then hands it to
/// `pass_over` as it arrives, and the codec makes of it a call answered with -32600 (id `null`:
/// it went by unread). The connection goes on.
#[test]
fn a_line_longer_than_the_limit_is_passed_over_and_answered() -> TestResult {
    let mut long = vec![b' '; 300];
    long.push(b'\n');
    let err = decode_all(&mut codec(Side::Downstream), &long).err();
    assert!(
        matches!(err, Some(CodecError::FrameTooLarge { .. })),
        "{err:?}"
    );
    let mut downstream = codec(Side::Downstream);
    let err = decode_all(&mut downstream, &[b'{'; 300]).err();
    assert!(
        matches!(err, Some(CodecError::FrameTooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(
        downstream.oversized_response(&[b'{'; 300]),
        Some(FrameHead::Unsized)
    );
    assert_eq!(downstream.pass_over(&[b'{'; 300]), Some(PassedOver::More));
    assert_eq!(
        downstream.pass_over(b"\"id\":1}\n{\"jsonrpc\""),
        Some(PassedOver::End {
            len: 8,
            request_id: None
        })
    );
    let mut rest = BytesMut::from(&b"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":2}\n"[..]);
    let refused = downstream
        .decode(&mut rest)?
        .ok_or("no call for the long line")?;
    assert!(refused.reject_reason.is_some());
    let answer = reply(&mut downstream, &refused, LocalReplyKind::BadRequest)?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert_eq!(answer["id"], serde_json::Value::Null);
    let next = downstream
        .decode(&mut rest)?
        .ok_or("the next call is lost")?;
    assert!(next.reject_reason.is_none());
    Ok(())
}

/// The CPU time this thread has run, by the kernel's count.
fn thread_cpu() -> Result<std::time::Duration, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let nanos = stat.split_whitespace().next().ok_or("empty schedstat")?;
    Ok(std::time::Duration::from_nanos(nanos.parse()?))
}

/// A client may send a long line a little at a time: each read is looked through, not the
/// whole line again (which made a line of n bytes in reads of k cost n²/2k bytes looked at:
/// a client trickling an 8 MiB line burnt a core for the listener's frame timeout). Measured as
/// the CPU the same line costs decoded whole, with a wide margin (the quadratic cost is
/// hundreds of times that).
#[test]
fn a_line_arriving_a_little_at_a_time_is_looked_through_once() -> TestResult {
    let big = 4 << 20;
    let line = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":[\"{}\"],\"id\":1}}\n",
        "x".repeat(big)
    );
    let factory = JsonRpcCodecFactory::new(2 * big);
    let whole = {
        let started = thread_cpu()?;
        let mut codec = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
        let calls = decode_all(&mut codec, line.as_bytes())?;
        assert_eq!(calls.len(), 1);
        thread_cpu()? - started
    };
    let started = thread_cpu()?;
    let mut codec = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
    let mut src = BytesMut::new();
    let mut calls = 0;
    for piece in line.as_bytes().chunks(4096) {
        src.extend_from_slice(piece);
        while codec.decode(&mut src)?.is_some() {
            calls += 1;
        }
    }
    let trickled = thread_cpu()? - started;
    assert_eq!(calls, 1);
    assert!(
        trickled < 10 * whole.max(std::time::Duration::from_millis(10)),
        "in 4 KiB reads: {trickled:?}; whole: {whole:?}"
    );
    Ok(())
}

#[test]
fn ids_come_back_as_the_client_wrote_them() -> TestResult {
    for id in [
        "\"x-1\"",
        "18446744073709551615",
        "123456789012345678901234567890",
        "1e400",
        "-0.5e-3",
        "null",
        "-3",
        "1.5",
        "\"\\u00e9\\n\"",
    ] {
        let mut downstream = codec(Side::Downstream);
        let mut upstream = codec(Side::Upstream);
        let line = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":{id}}}\n");
        let call = decode_all(&mut downstream, line.as_bytes())?.remove(0);
        let mut wire = BytesMut::new();
        let none = Mutation::new();
        let params = EncodeParams {
            request_id: 42,
            variant: WireVariant::DEFAULT,
            mutation: &none,
        };
        upstream.encode(&call, &params, &mut wire)?;
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        let sent = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":\"42:{hex}\"}}\n");
        assert_eq!(wire, sent.as_bytes());
        let echoed = format!("{{\"jsonrpc\":\"2.0\",\"result\":[1],\"id\":\"42:{hex}\"}}\n");
        let answer = decode_all(&mut upstream, echoed.as_bytes())?.remove(0);
        assert_eq!((answer.request_id, answer.status), (42, ResponseStatus::Ok));
        let mut back = BytesMut::new();
        let params = EncodeParams {
            request_id: call.request_id,
            ..params
        };
        downstream.encode(&answer, &params, &mut back)?;
        assert_eq!(
            back,
            format!("{{\"jsonrpc\":\"2.0\",\"result\":[1],\"id\":{id}}}\n").as_bytes()
        );
    }
    Ok(())
}

#[test]
fn an_answer_whose_id_spells_no_client_id_is_refused_whole() -> TestResult {
    let none = Mutation::new();
    let params = EncodeParams {
        request_id: 0,
        variant: WireVariant::DEFAULT,
        mutation: &none,
    };
    // What a server may echo in place of the proxy's hex: a second answer after a newline, a
    // value cut short, bytes that are not JSON.
    let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for forged in [
        &b"1}\n{\"jsonrpc\":\"2.0\",\"result\":\"forged\",\"id\":2"[..],
        b"[1,\n2]",
        b"\"open",
        b"\xff",
        b"",
    ] {
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":\"7:{}\"}}\n",
            hex(forged)
        );
        let answer = decode_all(&mut codec(Side::Upstream), line.as_bytes())?.remove(0);
        assert_eq!(answer.request_id, 7);
        let mut back = BytesMut::from(&b"earlier"[..]);
        let refused = codec(Side::Downstream).encode(&answer, &params, &mut back);
        assert!(
            matches!(refused, Err(CodecError::Encode(_))),
            "{forged:?}: {refused:?}"
        );
        assert_eq!(back, &b"earlier"[..], "nothing written");
    }
    Ok(())
}

#[test]
fn errors_are_classified_by_their_code() -> TestResult {
    let mut upstream = codec(Side::Upstream);
    let lines =
        b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32601,\"message\":\"x\"},\"id\":\"1:31\"}\n\
                  {\"jsonrpc\":\"2.0\",\"error\":{\"code\":7,\"message\":\"x\"},\"id\":\"2:31\"}\n";
    let statuses: Vec<_> = decode_all(&mut upstream, lines)?
        .iter()
        .map(|m| m.status)
        .collect();
    assert_eq!(
        statuses,
        [
            ResponseStatus::ServerError,
            ResponseStatus::ApplicationError
        ]
    );
    Ok(())
}

#[test]
fn local_replies_are_json_rpc_errors_with_the_clients_id() -> TestResult {
    let mut downstream = codec(Side::Downstream);
    let call = decode_all(
        &mut downstream,
        b"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":\"c\\\"1\"}\n",
    )?
    .remove(0);
    assert_eq!(
        reply(&mut downstream, &call, LocalReplyKind::RouteNotFound)?,
        "{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32601,\"message\":\"route_not_found: why\"},\"id\":\"c\\\"1\"}\n"
    );
    for (line, code) in [(&b"{oops\n"[..], -32700), (b"{\"a\":1}\n", -32600)] {
        let bad = decode_all(&mut downstream, line)?.remove(0);
        assert_eq!(bad.kind, MessageKind::Request);
        assert!(bad.reject_reason.is_some());
        let answer = reply(&mut downstream, &bad, LocalReplyKind::BadRequest)?;
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert_eq!(answer["id"], serde_json::Value::Null);
    }
    Ok(())
}

/// JSON-RPC 2.0 ids are strings, numbers or null: a call with another id is an invalid
/// request (-32600, id null), not proxied with an id its server may not take.
#[test]
fn a_call_whose_id_is_an_object_array_or_boolean_is_an_invalid_request() -> TestResult {
    let mut downstream = codec(Side::Downstream);
    for id in ["{\"a\":1}", "[1]", "true", "false"] {
        let line = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":{id}}}\n");
        let call = decode_all(&mut downstream, line.as_bytes())?.remove(0);
        assert!(call.reject_reason.is_some(), "id {id} was taken");
        let answer = reply(&mut downstream, &call, LocalReplyKind::BadRequest)?;
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        assert_eq!(answer["id"], serde_json::Value::Null);
    }
    Ok(())
}

/// The proxy's own failures (an answer it could not forward, say) are JSON-RPC 2.0's
/// "Internal error", -32603, not a server error of the implementation-defined range.
#[test]
fn an_internal_failure_is_json_rpc_internal_error() -> TestResult {
    let mut downstream = codec(Side::Downstream);
    let call = decode_all(
        &mut downstream,
        b"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":5}\n",
    )?
    .remove(0);
    let answer = reply(&mut downstream, &call, LocalReplyKind::Internal)?;
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    assert_eq!(answer["error"]["code"], -32603, "{answer}");
    assert_eq!(answer["id"], 5);
    Ok(())
}

/// JSON-RPC lets a server send its client calls and notifications on the same connection. An
/// upstream connection carries many clients' calls, so none is proxied: a notification is
/// dropped, and a call is answered on the connection with -32601 (method not found) and the
/// server's id, as a heartbeat is answered; the answers after them read on. Before, a server's
/// call or notification was a decode error, which closed the upstream connection and failed
/// every call in flight on it.
#[test]
fn a_servers_call_is_refused_and_its_notification_dropped() -> TestResult {
    let lines = b"{\"jsonrpc\":\"2.0\",\"method\":\"subscription\",\"params\":{\"n\":1}}\n\
        {\"jsonrpc\":\"2.0\",\"method\":\"configuration\",\"params\":[],\"id\":\"s-1\"}\n\
        {\"jsonrpc\":\"2.0\",\"result\":2,\"id\":\"8:31\"}\n";
    let factory = JsonRpcCodecFactory::new(256);
    let mut upstream = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
    let read = decode_all(&mut upstream, lines)?;
    let kinds: Vec<_> = read.iter().map(|m| (m.kind, m.request_id)).collect();
    assert_eq!(
        kinds,
        [(MessageKind::Heartbeat, 0), (MessageKind::Response, 8)]
    );
    let mut answer = BytesMut::new();
    factory
        .new_codec(Side::Upstream, WireVariant::DEFAULT)
        .encode_heartbeat_reply(&read[0], &mut answer)?;
    assert!(answer.ends_with(b"}\n") && !answer[..answer.len() - 1].contains(&b'\n'));
    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
    assert_eq!(
        (&answer["error"]["code"], &answer["id"]),
        (&serde_json::json!(-32601), &serde_json::json!("s-1")),
        "{answer}"
    );
    let counted = factory
        .counters()
        .iter()
        .find(|c| c.name == "server_calls")
        .map(|c| c.value);
    assert_eq!(counted, Some(2));
    Ok(())
}

/// An answer a client sends is, to a JSON-RPC 2.0 server, an object without `method`: an
/// invalid request, answered with -32600 (id `null`), the connection going on (jsonrpcserver
/// does the same). The proxy sends clients no calls to answer. Before, the connection closed,
/// failing every call the client had in flight.
#[test]
fn an_answer_from_a_client_is_an_invalid_request() -> TestResult {
    let lines = b"{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":1}\n\
        {\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":2}\n";
    let mut downstream = codec(Side::Downstream);
    let read = decode_all(&mut downstream, lines)?;
    let [answer, call] = &read[..] else {
        return Err(format!("expected two messages, got {}", read.len()).into());
    };
    assert_eq!(answer.kind, MessageKind::Request);
    assert!(answer.reject_reason.is_some());
    let error = reply(&mut downstream, answer, LocalReplyKind::BadRequest)?;
    let error: serde_json::Value = serde_json::from_str(&error)?;
    assert_eq!(error["error"]["code"], -32600, "{error}");
    assert_eq!(error["id"], serde_json::Value::Null);
    assert_eq!(
        (call.kind, call.reject_reason),
        (MessageKind::Request, None)
    );
    Ok(())
}

/// The upstream id spells the client's in hex, twice its length: a call that fits the line
/// limit may not once sent. It is refused, with nothing written, rather than sent to a server
/// whose answer, echoing that id, no upstream codec would read: a line over the limit closes
/// the upstream connection, failing every call other clients have in flight on it.
#[test]
fn a_call_whose_upstream_line_is_over_the_limit_is_refused() -> TestResult {
    let id = "i".repeat(150);
    let line = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"id\":\"{id}\"}}\n");
    assert!(line.len() <= 256);
    let calls = decode_all(&mut codec(Side::Downstream), line.as_bytes())?;
    let [call] = &calls[..] else {
        return Err("expected one call".into());
    };
    let mutation = Mutation::new();
    let params = EncodeParams {
        request_id: 7,
        variant: WireVariant::DEFAULT,
        mutation: &mutation,
    };
    let mut wire = BytesMut::from(&b"before"[..]);
    let sent = codec(Side::Upstream).encode(call, &params, &mut wire);
    assert!(matches!(sent, Err(CodecError::Encode(_))), "{sent:?}");
    assert_eq!(&wire[..], b"before");

    // A notification, sent as it came, is held to the upstream's limit too (a listener may
    // take longer lines).
    let note = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"{id}\"}}\n");
    let notes = decode_all(&mut codec(Side::Downstream), note.as_bytes())?;
    let mut small =
        JsonRpcCodecFactory::new(note.len() - 2).new_codec(Side::Upstream, WireVariant::DEFAULT);
    let mut wire = BytesMut::new();
    assert!(small.encode(&notes[0], &params, &mut wire).is_err());
    assert!(wire.is_empty());
    let mut fits =
        JsonRpcCodecFactory::new(note.len() - 1).new_codec(Side::Upstream, WireVariant::DEFAULT);
    fits.encode(&notes[0], &params, &mut wire)?;
    assert_eq!(&wire[..], note.as_bytes());

    // Within the limit once sent, the call goes, and the server's echo of it reads back.
    let short = "{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"id\":\"short\"}\n";
    let calls = decode_all(&mut codec(Side::Downstream), short.as_bytes())?;
    let mut wire = BytesMut::new();
    codec(Side::Upstream).encode(&calls[0], &params, &mut wire)?;
    let sent = std::str::from_utf8(&wire)?;
    let upstream_id = sent
        .split("\"id\":")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("}\n"))
        .ok_or("no id")?;
    let answer = format!("{{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":{upstream_id}}}\n");
    let answers = decode_all(&mut codec(Side::Upstream), answer.as_bytes())?;
    assert_eq!(answers.len(), 1);
    Ok(())
}

/// A server answers a call it cannot read with id `null` (JSON-RPC 2.0: "If there was an error
/// in detecting the id in the Request object (e.g. Parse error/Invalid Request), it MUST be
/// Null"); jsonrpcserver does so for any call its schema refuses (`"params": 5`, a member of
/// its own), notifications included. Such an answer, like any whose id the proxy did not
/// write, answers no call: it is read as an answer to request 0, which the engine never
/// sends, and the answers behind it on the connection still reach their calls. Before, it was
/// a decode error, which closed the upstream connection under every call in flight on it.
#[test]
fn an_answer_whose_id_is_not_the_proxys_answers_no_call() -> TestResult {
    let lines = b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32600,\"message\":\"Invalid request\"},\"id\":null}\n\
        {\"jsonrpc\":\"2.0\",\"result\":1,\"id\":7}\n\
        {\"jsonrpc\":\"2.0\",\"result\":1,\"id\":\"7:3\"}\n\
        {\"jsonrpc\":\"2.0\",\"result\":2,\"id\":\"8:31\"}\n";
    let answers = decode_all(&mut codec(Side::Upstream), lines)?;
    let ids: Vec<_> = answers.iter().map(|a| (a.kind, a.request_id)).collect();
    assert_eq!(
        ids,
        [
            (MessageKind::Response, 0),
            (MessageKind::Response, 0),
            (MessageKind::Response, 0),
            (MessageKind::Response, 8),
        ]
    );
    for foreign in ["\"s\"", "\"1:3\"", "\"x:31\"", "\"+1:31\""] {
        let line = format!("{{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":{foreign}}}\n");
        let answers = decode_all(&mut codec(Side::Upstream), line.as_bytes())?;
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].request_id, 0, "{foreign}");
    }
    Ok(())
}

fn params(request_id: u64, mutation: &Mutation) -> EncodeParams<'_> {
    EncodeParams {
        request_id,
        variant: WireVariant::DEFAULT,
        mutation,
    }
}

/// A JSON-RPC 2.0 batch is split into its calls, each decoded as a lone call is (so routed,
/// filtered and authorized on its own: an element for a denied method is denied whatever the
/// others ask), and sent upstream as a line of its own; the answers to those that want one,
/// local replies included, are gathered into one array in the order they come, written once
/// the last is in. Before, a batch was answered with one -32600 and none of it ran.
#[test]
fn a_batch_is_split_into_its_calls_and_their_answers_gathered_into_one_array() -> TestResult {
    let lines = b"[{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[1,2],\"id\":1}, \
        {\"jsonrpc\":\"2.0\",\"method\":\"note\",\"params\":[\"x\"]}, 7, \
        {\"jsonrpc\":\"2.0\",\"method\":\"admin\",\"id\":\"d\"}]\r\n\
        {\"jsonrpc\":\"2.0\",\"method\":\"after\",\"id\":9}\n";
    let mut downstream = codec(Side::Downstream);
    let read = decode_all(&mut downstream, lines)?;
    let [add, note, seven, admin, after] = &read[..] else {
        return Err(format!("expected five messages, got {}", read.len()).into());
    };
    let kinds: Vec<_> = read
        .iter()
        .map(|m| (m.kind, m.metadata.get("method"), m.reject_reason.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [
            (MessageKind::Request, Some("add"), false),
            (MessageKind::Oneway, Some("note"), false),
            (MessageKind::Request, None, true),
            (MessageKind::Request, Some("admin"), false),
            (MessageKind::Request, Some("after"), false),
        ]
    );
    // The batch's calls share a request id, which the lone call after it does not.
    assert!(read[..4].iter().all(|m| m.request_id == add.request_id));
    assert_ne!(add.request_id, after.request_id);

    let none = Mutation::new();
    let mut upstream = codec(Side::Upstream);
    let mut wire = BytesMut::new();
    upstream.encode(add, &params(5, &none), &mut wire)?;
    upstream.encode(note, &params(6, &none), &mut wire)?;
    assert_eq!(
        std::str::from_utf8(&wire)?,
        "{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[1,2],\"id\":\"5:31\"}\n\
         {\"jsonrpc\":\"2.0\",\"method\":\"note\",\"params\":[\"x\"]}\n"
    );

    // The answers: the proxy's own two first, then the server's; the lone call's meanwhile.
    let mut back = BytesMut::new();
    for (call, kind) in [
        (seven, LocalReplyKind::BadRequest),
        (admin, LocalReplyKind::Unauthorized),
        (after, LocalReplyKind::RouteNotFound),
    ] {
        downstream.encode_local_reply(call, &LocalReply::new(kind, "why"), &mut back)?;
    }
    let lone: serde_json::Value = serde_json::from_slice(&back)?;
    assert_eq!(
        (&lone["error"]["code"], &lone["id"]),
        (&json!(-32601), &json!(9))
    );
    back.clear();
    let answer = decode_all(
        &mut upstream,
        b"{\"jsonrpc\":\"2.0\",\"result\":3,\"id\":\"5:31\"}\r\n",
    )?
    .remove(0);
    downstream.encode(&answer, &params(add.request_id, &none), &mut back)?;
    assert!(back.ends_with(b"]\n") && !back[..back.len() - 1].contains(&b'\n'));
    let array: serde_json::Value = serde_json::from_slice(&back)?;
    assert_eq!(
        array,
        json!([
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": format!("bad_request: why")}, "id": null},
            {"jsonrpc": "2.0", "error": {"code": -32004, "message": "unauthorized: why"}, "id": "d"},
            {"jsonrpc": "2.0", "result": 3, "id": 1},
        ])
    );
    Ok(())
}

/// The batch's line end stays in the read buffer until its last call is decoded (the engine
/// decodes again while its buffer holds bytes): however the bytes arrive, the same calls come
/// out, once each, and the buffer ends empty.
#[test]
fn a_batch_split_anywhere_decodes_its_calls_once() -> TestResult {
    let text = b"[{\"jsonrpc\":\"2.0\",\"method\":\"a\",\"id\":1},{\"jsonrpc\":\"2.0\",\"method\":\"b\"}]\n\
        {\"jsonrpc\":\"2.0\",\"method\":\"c\",\"id\":2}\n[{\"jsonrpc\":\"2.0\",\"method\":\"d\"}]\n";
    for cut in 0..text.len() {
        let got = decode_in_two(text, cut)?;
        let methods: Vec<_> = got
            .iter()
            .map(|m| m.metadata.get("method").unwrap_or_default().to_owned())
            .collect();
        assert_eq!(methods, ["a", "b", "c", "d"], "cut at {cut}");
    }
    Ok(())
}

/// JSON-RPC 2.0: a batch of notifications gets no answer; an empty batch gets one -32600 (not
/// an array), as does one of more calls than the listener's `max_batch_calls`: the proxy holds
/// none of its calls, and answering each would make one line of the client's many answers.
#[test]
fn a_batch_of_notifications_gets_nothing_and_an_empty_or_oversized_one_error() -> TestResult {
    let note = "{\"jsonrpc\":\"2.0\",\"method\":\"n\"}";
    let notes = decode_all(
        &mut codec(Side::Downstream),
        format!("[{note},{note}]\n").as_bytes(),
    )?;
    assert_eq!(
        notes.iter().map(|m| m.kind).collect::<Vec<_>>(),
        [MessageKind::Oneway, MessageKind::Oneway]
    );
    let call = "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":1}";
    let factory = JsonRpcCodecFactory::new(256).with_max_batch_calls(2);
    for (line, code, calls) in [
        ("[]".to_owned(), -32600, 0),
        (" [ ] ".to_owned(), -32600, 0),
        (format!("[{call},{call},{call}]"), -32600, 0),
        (format!("[{call},{call}"), -32700, 0),
        (format!("[{call},{call}]"), 0, 2),
    ] {
        let mut downstream = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
        let read = decode_all(&mut downstream, format!("{line}\n").as_bytes())?;
        if calls > 0 {
            assert_eq!(read.len(), calls, "{line}");
            assert!(read.iter().all(|m| m.reject_reason.is_none()), "{line}");
            continue;
        }
        let [refused] = &read[..] else {
            return Err(format!("{line}: {} messages", read.len()).into());
        };
        let answer = reply(&mut downstream, refused, LocalReplyKind::BadRequest)?;
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        assert_eq!(
            (&answer["error"]["code"], &answer["id"]),
            (&json!(code), &json!(null)),
            "{line}: {answer}"
        );
    }
    // With `max_batch_calls: 0`, no batch is taken.
    let mut none = JsonRpcCodecFactory::new(256)
        .with_max_batch_calls(0)
        .new_codec(Side::Downstream, WireVariant::DEFAULT);
    let read = decode_all(&mut none, format!("[{call}]\n").as_bytes())?;
    assert!(read.len() == 1 && read[0].reject_reason.is_some());
    Ok(())
}

/// The answers a connection's unfinished batches wait with are held to the listener's
/// `max_frame_bytes`: an answer that would take them over is refused (nothing written), and
/// the engine answers its call with -32603 instead, in its place in the array. The codec says
/// how much it holds, which the engine counts as the connection's unsent answers.
#[test]
fn a_batchs_answers_are_held_within_max_frame_bytes() -> TestResult {
    let call = |id: u32| format!("{{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":{id}}}");
    let line = format!("[{},{}]\n", call(1), call(2));
    let mut downstream = codec(Side::Downstream);
    let calls = decode_all(&mut downstream, line.as_bytes())?;
    let none = Mutation::new();
    let answer = |n: u64, id: &str, len: usize| -> Result<Message, CodecError> {
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"result\":\"{}\",\"id\":\"{n}:{}\"}}\n",
            "x".repeat(len),
            id.bytes().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Ok(decode_all(&mut codec(Side::Upstream), line.as_bytes())?.remove(0))
    };
    let mut back = BytesMut::new();
    downstream.encode(
        &answer(1, "1", 150)?,
        &params(calls[0].request_id, &none),
        &mut back,
    )?;
    assert!(back.is_empty());
    // Held, for the engine to count among the connection's unsent answers.
    let held = downstream.held_answer_bytes();
    assert!((150..200).contains(&held), "{held}");
    let over = downstream.encode(
        &answer(2, "2", 150)?,
        &params(calls[1].request_id, &none),
        &mut back,
    );
    assert!(matches!(over, Err(CodecError::Encode(_))), "{over:?}");
    assert!(back.is_empty());
    downstream.encode_local_reply(
        &calls[1],
        &LocalReply::new(LocalReplyKind::Internal, "over"),
        &mut back,
    )?;
    assert_eq!(downstream.held_answer_bytes(), 0, "all written");
    let array: serde_json::Value = serde_json::from_slice(&back)?;
    assert_eq!(array[0]["result"], json!("x".repeat(150)));
    assert_eq!(
        (&array[1]["error"]["code"], &array[1]["id"]),
        (&json!(-32603), &json!(2))
    );
    Ok(())
}

/// `max_batch_calls` is a listener's option, an integer from 0 to 4096; on a cluster, or out
/// of range, it is an error naming it.
#[test]
fn max_batch_calls_is_a_listeners_option_from_0_to_4096() {
    let build = |side: Option<Side>, value: &str| {
        let mut options = metaprotocol_core::CodecOptions::default();
        options.side = side;
        options.insert_scalar(metaprotocol_jsonrpc::MAX_BATCH_CALLS, value);
        JsonRpcCodecFactory::from_options(&options).map_err(|e| (e.field, e.reason))
    };
    for value in ["0", "8", "4096"] {
        assert!(build(Some(Side::Downstream), value).is_ok(), "{value}");
    }
    for (side, value, why) in [
        (Some(Side::Downstream), "4097", "from 0 to 4096"),
        (Some(Side::Downstream), "-1", "from 0 to 4096"),
        (Some(Side::Downstream), "many", "from 0 to 4096"),
        (Some(Side::Upstream), "8", "a listener's option only"),
        (None, "8", "a listener's option only"),
    ] {
        let Err((field, reason)) = build(side, value) else {
            panic!("{side:?} {value} was taken");
        };
        assert_eq!(field, "max_batch_calls");
        assert!(reason.contains(why), "{reason}");
    }
}

/// A call's own id is its `id` metadata (a string's text without its quotes, as written),
/// which access logs show as its request id; a notification has none. The engine's request id
/// of a batch's call names its batch instead.
#[test]
fn a_calls_own_id_is_its_metadata() -> TestResult {
    let lines = br#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":"b\"2"},{"jsonrpc":"2.0","method":"c"}]
{"jsonrpc":"2.0","method":"d","id":null}
"#;
    let read = decode_all(&mut codec(Side::Downstream), lines)?;
    let ids: Vec<_> = read.iter().map(|m| m.metadata.get(CALL_ID)).collect();
    assert_eq!(ids, [Some("1"), Some(r#"b\"2"#), None, Some("null")]);
    let factory = JsonRpcCodecFactory::new(1024);
    assert_eq!(factory.call_id_key(), Some(CALL_ID));
    Ok(())
}

/// A batch's answers go out as one line with the last, but each stands for its own bytes in
/// it (`answer_len`, the engine's `bytes_sent` of the call), and the last for the brackets,
/// commas and line's end too: together, the line. A lone call's answer is what was appended.
#[test]
fn a_batchs_answers_each_stand_for_their_own_bytes() -> TestResult {
    let lines =
        br#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":"two"}]
{"jsonrpc":"2.0","method":"c","id":3}
"#;
    let mut downstream = codec(Side::Downstream);
    let read = decode_all(&mut downstream, lines)?;
    let [one, two, lone] = &read[..] else {
        return Err(format!("expected three messages, got {}", read.len()).into());
    };
    let mut back = BytesMut::new();
    let mut shares = Vec::new();
    for call in [two, one] {
        downstream.encode_local_reply(
            call,
            &LocalReply::new(LocalReplyKind::RouteNotFound, "why"),
            &mut back,
        )?;
        shares.push(downstream.answer_len().ok_or("no share")?);
    }
    let answers: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&back)?;
    let own: Vec<usize> = answers.iter().map(|a| a.get().len()).collect();
    assert_eq!(shares[0], own[0]);
    assert_eq!(shares[1], own[1] + "[,]\n".len());
    assert_eq!(shares.iter().sum::<usize>(), back.len());
    back.clear();
    let reply = LocalReply::new(LocalReplyKind::RouteNotFound, "why");
    downstream.encode_local_reply(lone, &reply, &mut back)?;
    assert_eq!(downstream.answer_len(), None);
    Ok(())
}
