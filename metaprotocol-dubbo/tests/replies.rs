//! Local replies and heartbeat replies: what a client receives when the proxy answers itself.

mod common;

use bytes::BytesMut;
use common::{TestResult, body_string, codec, decode_one, frame, golden};
use metaprotocol_core::{Codec, LocalReply, LocalReplyKind, Message, MessageKind, ResponseStatus};

fn local_reply(
    request: &Message,
    reply: &LocalReply,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut dst = BytesMut::new();
    codec().encode_local_reply(request, reply, &mut dst)?;
    Ok(dst.to_vec())
}

fn heartbeat_reply(heartbeat: &Message) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut dst = BytesMut::new();
    codec().encode_heartbeat_reply(heartbeat, &mut dst)?;
    Ok(dst.to_vec())
}

#[test]
fn every_local_reply_is_a_readable_dubbo_error() -> TestResult {
    let expected_status = [
        (LocalReplyKind::RouteNotFound, 60),
        (LocalReplyKind::NoHealthyUpstream, 80),
        (LocalReplyKind::Unavailable, 100),
        (LocalReplyKind::OverLimit, 100),
        (LocalReplyKind::Unauthorized, 40),
        (LocalReplyKind::Timeout, 31),
        (LocalReplyKind::UpstreamReset, 80),
        (LocalReplyKind::UpstreamConnectFailure, 80),
        (LocalReplyKind::FaultAbort, 80),
        (LocalReplyKind::BadRequest, 40),
        (LocalReplyKind::Internal, 80),
    ];
    assert_eq!(expected_status.len(), LocalReplyKind::ALL.len());
    let request = decode_one(&golden("node__node__hello.req.hex")?.bytes)?;
    for (kind, status) in expected_status {
        let reply = LocalReply::new(kind, "no route for DemoService.sayHello");
        let bytes = local_reply(&request, &reply)?;
        let response = decode_one(&bytes)?;
        assert_eq!(response.kind, MessageKind::Response, "{kind}");
        assert_eq!(response.status, ResponseStatus::ServerError, "{kind}");
        assert_eq!(response.request_id, request.request_id, "{kind}");
        assert_eq!(bytes[2], 0x02, "{kind}: response flag, Hessian2");
        assert_eq!(bytes[3], status, "{kind}");
        // Only a refusal to run the call (100) may be retried whatever the method does.
        assert_eq!(response.not_processed, status == 100, "{kind}");
        let text = body_string(&bytes).ok_or("body is not a string")?;
        assert_eq!(
            text,
            format!("{}: no route for DemoService.sayHello", kind.name())
        );
    }
    let denied = local_reply(
        &request,
        &LocalReply::new(LocalReplyKind::Unauthorized, "rbac"),
    )?;
    assert!(body_string(&denied).is_some_and(|t| t.contains("unauthorized")));
    Ok(())
}

#[test]
fn local_replies_look_like_a_real_provider_error() -> TestResult {
    // sofa-rpc-node's answer to a thrown error: status 80 and the message string.
    let golden_crash = golden("node__node__crash.resp.hex")?.bytes;
    let request = decode_one(&golden("node__node__crash.req.hex")?.bytes)?;
    let ours = local_reply(&request, &LocalReply::new(LocalReplyKind::Internal, ""))?;
    assert_eq!(ours[..4], golden_crash[..4]);
    assert_eq!(ours[4..12], golden_crash[4..12]);
    assert_eq!(body_string(&golden_crash).as_deref(), Some("boom"));
    assert_eq!(body_string(&ours).as_deref(), Some("internal"));
    Ok(())
}

#[test]
fn long_and_unicode_messages_stay_readable() -> TestResult {
    let request = decode_one(&golden("node__node__hello.req.hex")?.bytes)?;
    let long = "x".repeat(3000);
    let bytes = local_reply(
        &request,
        &LocalReply::new(LocalReplyKind::Timeout, long.clone()),
    )?;
    assert_eq!(bytes[16], b'S');
    assert_eq!(body_string(&bytes), Some(format!("timeout: {long}")));
    let bytes = local_reply(
        &request,
        &LocalReply::new(LocalReplyKind::BadRequest, "bad ünïcode"),
    )?;
    assert_eq!(
        body_string(&bytes).as_deref(),
        Some("bad_request: bad ünïcode")
    );
    Ok(())
}

#[test]
fn non_hessian_calls_get_a_hessian_error() -> TestResult {
    let request = decode_one(&frame(0xc6, 0, 77, b"{}"))?;
    let reason = request.reject_reason.ok_or("not rejected")?;
    let bytes = local_reply(
        &request,
        &LocalReply::new(LocalReplyKind::BadRequest, reason),
    )?;
    assert_eq!(bytes[2], 0x02);
    assert_eq!(bytes[3], 40);
    assert_eq!(decode_one(&bytes)?.request_id, 77);
    assert!(body_string(&bytes).is_some_and(|t| t.contains("serialization id 6")));
    Ok(())
}

/// A call in fastjson2 (Dubbo 3.2's serialization 23) as Dubbo's `FastJson2ObjectOutput`
/// writes it: each value a 4-byte length and JSONB, the call fields ASCII strings of up to 47
/// bytes (tag 0x49 + length). The attachments map after the argument is left out, as a
/// client without attachments may.
fn fastjson2_call(id: u64) -> Vec<u8> {
    let mut body = Vec::new();
    let fields = [
        "2.0.2",
        "org.apache.dubbo.samples.basic.api.DemoService",
        "1.0.0",
        "sayHello",
        "Ljava/lang/String;",
        "world",
    ];
    for field in fields {
        let len = u8::try_from(field.len()).unwrap_or_default();
        body.extend_from_slice(&(u32::from(len) + 1).to_be_bytes());
        body.push(0x49 + len);
        body.extend_from_slice(field.as_bytes());
    }
    frame(0xc0 | 23, 0, id, &body)
}

/// The string of a fastjson2 error response: a 4-byte length, then JSONB ASCII (tag 0x79 and
/// a length, or 0x49 + length) or UTF-8 (0x7a and a length), lengths of up to 2,047 bytes.
fn fastjson2_body_string(frame: &[u8]) -> Option<String> {
    let body = frame.get(16..)?;
    let (len, value) = body.split_first_chunk::<4>()?;
    let value = value.get(..usize::try_from(u32::from_be_bytes(*len)).ok()?)?;
    let (&tag, rest) = value.split_first()?;
    let data = match (tag, rest.first().copied()) {
        (0x49..=0x78, _) => rest.get(..usize::from(tag - 0x49))?,
        (0x79 | 0x7a, Some(len @ 0..=0x2f)) => rest.get(1..1 + usize::from(len))?,
        (0x79 | 0x7a, Some(high @ 0x38..=0x3f)) => {
            let len = (usize::from(high - 0x38) << 8) | usize::from(*rest.get(1)?);
            rest.get(2..2 + len)?
        }
        _ => return None,
    };
    String::from_utf8(data.to_vec()).ok()
}

/// Such a call is read (its fields are metadata), and the proxy's own answers to it are in
/// fastjson2 (what the call's consumer reads, as a Java provider answers in the request's
/// serialization).
#[test]
fn fastjson2_calls_get_their_local_replies_in_fastjson2() -> TestResult {
    let request = decode_one(&fastjson2_call(78))?;
    assert_eq!(request.kind, MessageKind::Request);
    assert_eq!(request.reject_reason, None);
    assert_eq!(request.metadata.get("method"), Some("sayHello"));
    let bytes = local_reply(
        &request,
        &LocalReply::new(LocalReplyKind::BadRequest, "denied by rbac policy"),
    )?;
    assert_eq!(bytes[2], 23, "a response in fastjson2");
    assert_eq!(bytes[3], 40);
    assert_eq!(decode_one(&bytes)?.request_id, 78);
    assert_eq!(
        fastjson2_body_string(&bytes).as_deref(),
        Some("bad_request: denied by rbac policy")
    );
    let short = local_reply(
        &request,
        &LocalReply::new(LocalReplyKind::Unauthorized, "dénié"),
    )?;
    assert_eq!(
        fastjson2_body_string(&short).as_deref(),
        Some("unauthorized: dénié")
    );
    Ok(())
}

#[test]
fn two_way_heartbeats_get_the_providers_answer() -> TestResult {
    let heartbeat = decode_one(&golden("dubbossl__node__heartbeat-2way.req.hex")?.bytes)?;
    assert_eq!(heartbeat.kind, MessageKind::Heartbeat);
    let provider = golden("dubbossl__node__heartbeat-2way.resp.hex")?.bytes;
    assert_eq!(heartbeat_reply(&heartbeat)?, provider);
    Ok(())
}

#[test]
fn one_way_heartbeats_get_the_providers_answer_too() -> TestResult {
    // dubbo-py's heartbeat is one-way, yet it waits for an answer, and real providers send one.
    let heartbeat = decode_one(&golden("dubbopy__node__heartbeat.req.hex")?.bytes)?;
    assert_eq!(heartbeat.kind, MessageKind::Heartbeat);
    let provider = golden("dubbopy__node__heartbeat.resp.hex")?.bytes;
    assert_eq!(heartbeat_reply(&heartbeat)?, provider);
    // Not a heartbeat at all: nothing either.
    let request = decode_one(&golden("node__node__hello.req.hex")?.bytes)?;
    assert!(heartbeat_reply(&request)?.is_empty());
    Ok(())
}

#[test]
fn heartbeats_in_other_serializations_are_answered_in_kind() -> TestResult {
    // fastjson (6) writes null as `null\n`: the reply echoes it, with flag 0x26.
    let heartbeat = decode_one(&frame(0xe6, 0, 12, b"null\n"))?;
    assert_eq!(heartbeat.kind, MessageKind::Heartbeat);
    assert_eq!(heartbeat.reject_reason, None);
    let reply = heartbeat_reply(&heartbeat)?;
    assert_eq!(reply, frame(0x26, 20, 12, b"null\n"));
    let decoded = decode_one(&reply)?;
    assert_eq!(decoded.kind, MessageKind::HeartbeatReply);
    assert_eq!(decoded.status, ResponseStatus::Ok);
    Ok(())
}

#[test]
fn the_going_away_notice_is_a_readonly_event_that_decodes_as_go_away() -> TestResult {
    let mut out = BytesMut::new();
    codec().encode_goaway(&mut out)?;
    // Java Dubbo's READONLY event: a one-way event request whose body is the string "R".
    assert_eq!(&out[..4], &[0xda, 0xbb, 0xa2, 0]);
    assert_eq!(&out[16..], &[0x01, b'R']);
    let notice = decode_one(&out)?;
    assert_eq!(notice.kind, MessageKind::GoAway);
    let heartbeat = decode_one(&golden("dubbossl__node__heartbeat-2way.req.hex")?.bytes)?;
    assert_eq!(
        heartbeat.kind,
        MessageKind::Heartbeat,
        "a plain heartbeat stays one"
    );
    Ok(())
}

/// A provider whose protocol is set to fastjson2 (`serialization: fastjson2`, which Dubbo 3.2
/// recommends) sends its READONLY event, as its heartbeats, in fastjson2: the string "R" as a
/// 4-byte length and a JSONB Latin-1 string. It goes away all the same; its heartbeat (a JSONB
/// null) stays one.
#[test]
fn a_readonly_event_in_fastjson2_decodes_as_go_away() -> TestResult {
    let fastjson2_event = 0x80 | 0x20 | 23;
    let notice = decode_one(&frame(fastjson2_event, 0, 0, &[0, 0, 0, 2, 0x4a, b'R']))?;
    assert_eq!(notice.kind, MessageKind::GoAway);
    let heartbeat = decode_one(&frame(fastjson2_event | 0x40, 0, 3, &[0, 0, 0, 1, 0xaf]))?;
    assert_eq!(heartbeat.kind, MessageKind::Heartbeat);
    Ok(())
}

/// An event request whose data is neither null (a heartbeat) nor "R" (READONLY) is not
/// answered, two-way or not, as Java Dubbo's providers and consumers answer none: their
/// heartbeat handler answers an event only when its data is null, and the exchange handler
/// acts on "R" alone. An answer would be a heartbeat reply to something else, whose id the
/// sender may have given a call. The codec passes such an event over as it reads it, counted
/// in its factory's `events_unanswered` (so that the engine counts no heartbeat it did not
/// answer), and reads the frame after it. Heartbeats in both serializations the codec reads
/// stay answered.
#[test]
fn events_that_are_no_heartbeat_get_no_answer() -> TestResult {
    use metaprotocol_core::CodecFactory;
    const HESSIAN2_EVENT: u8 = 0x80 | 0x20 | 2;
    const FASTJSON2_EVENT: u8 = 0x80 | 0x20 | 23;
    let factory = metaprotocol_dubbo::DubboCodecFactory::new(1 << 20);
    let unanswered = || {
        factory
            .counters()
            .iter()
            .find(|counter| counter.name == "events_unanswered")
            .map(|counter| counter.value)
    };
    let before = unanswered().ok_or("no events_unanswered counter")?;
    let mut events = 0;
    for two_way in [0, 0x40] {
        for (what, flag, body) in [
            ("a Hessian2 string", HESSIAN2_EVENT, &[0x01, b'X'][..]),
            ("a Hessian2 int", HESSIAN2_EVENT, &[0x91]),
            (
                "a Hessian2 string starting with R",
                HESSIAN2_EVENT,
                &[0x02, b'R', b'X'],
            ),
            ("no data", HESSIAN2_EVENT, &[]),
            (
                "a fastjson2 string",
                FASTJSON2_EVENT,
                &[0, 0, 0, 2, 0x4a, b'X'],
            ),
        ] {
            let mut stream = frame(flag | two_way, 0, 9, body);
            stream.extend(frame(HESSIAN2_EVENT | 0x40, 0, 10, b"N"));
            let next = decode_one(&stream)?;
            events += 1;
            assert_eq!(
                (next.kind, next.request_id),
                (MessageKind::Heartbeat, 10),
                "{what}, two-way: {}",
                two_way != 0
            );
            // Nothing is left of it to decode, and alone it gives no message.
            let mut alone = BytesMut::from(&frame(flag | two_way, 0, 9, body)[..]);
            assert!(codec().decode(&mut alone)?.is_none(), "{what}");
            assert!(alone.is_empty(), "{what}");
            events += 1;
        }
    }
    // Other tests of this binary decode no such event.
    assert_eq!(unanswered(), Some(before + events));
    let hessian2 = decode_one(&frame(HESSIAN2_EVENT | 0x40, 0, 9, b"N"))?;
    assert_eq!(heartbeat_reply(&hessian2)?, frame(0x22, 20, 9, b"N"));
    let fastjson2 = decode_one(&frame(FASTJSON2_EVENT | 0x40, 0, 9, &[0, 0, 0, 1, 0xaf]))?;
    assert_eq!(
        heartbeat_reply(&fastjson2)?,
        frame(0x20 | 23, 20, 9, &[0, 0, 0, 1, 0xaf])
    );
    Ok(())
}
