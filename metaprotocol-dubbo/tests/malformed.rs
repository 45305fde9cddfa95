//! Bad input fails with the right error, early, and never panics; a bad body in a whole frame
//! is rejected, never a reason to close the connection.

mod common;

use bytes::BytesMut;
use common::hessian::{Value, Writer, request_body};
use common::{TestResult, body_string, codec, decode_one, frame, golden, meta};
use metaprotocol_core::{
    Codec, CodecError, DEFAULT_MAX_FRAME_BYTES, FrameHead, LocalReply, LocalReplyKind,
    MAX_METADATA_ENTRIES, MessageKind,
};
use metaprotocol_dubbo::DubboCodec;

fn decode(bytes: &[u8]) -> Result<Option<metaprotocol_core::Message>, CodecError> {
    codec().decode(&mut BytesMut::from(bytes))
}

fn is_malformed(result: Result<Option<metaprotocol_core::Message>, CodecError>) -> bool {
    matches!(result, Err(CodecError::Malformed(_)))
}

#[test]
fn bad_magic_fails_on_the_first_wrong_byte() {
    assert!(is_malformed(decode(&[0x00])));
    assert!(is_malformed(decode(&[0xda, 0x00])));
    assert!(is_malformed(decode(b"GET / HTTP/1.1\r\n\r\n")));
    assert!(matches!(decode(&[0xda, 0xbb, 0xc2]), Ok(None)));
}

#[test]
fn oversize_lengths_fail_before_the_body_arrives() {
    let mut header = frame(0xc2, 0, 1, &[]);
    header[12..16].copy_from_slice(&0x0100_0000_u32.to_be_bytes());
    assert_eq!(
        decode(&header).err(),
        Some(CodecError::FrameTooLarge {
            size: 16 + 0x0100_0000,
            max: DEFAULT_MAX_FRAME_BYTES
        })
    );
    let mut small = DubboCodec::new(64);
    let mut src = BytesMut::from(&frame(0xc2, 0, 1, &[0; 49])[..16]);
    assert!(matches!(
        small.decode(&mut src),
        Err(CodecError::FrameTooLarge { size: 65, max: 64 })
    ));
    // A negative Java int length.
    header[12..16].copy_from_slice(&(-1_i32).to_be_bytes());
    assert!(is_malformed(decode(&header)));
}

#[test]
fn an_oversize_response_names_its_call_and_length_for_the_engine_to_pass_over() {
    let small = DubboCodec::new(64);
    // A response (flag 0x02: Hessian2, no request bit) to call 7 with a 100-byte body.
    let response = frame(0x02, 20, 7, &[0; 100]);
    assert_eq!(
        small.oversized_response(&response[..16]),
        Some(FrameHead::Response {
            request_id: 7,
            len: 116
        })
    );
    // A request or an event answers nothing; a header not yet whole tells nothing.
    assert_eq!(
        small.oversized_response(&frame(0xc2, 0, 7, &[0; 100])),
        None
    );
    assert_eq!(
        small.oversized_response(&frame(0x22, 20, 7, &[0; 100])),
        None
    );
    assert_eq!(small.oversized_response(&response[..15]), None);
}

#[test]
fn incomplete_frames_wait_and_leave_the_buffer_alone() -> TestResult {
    let whole = golden("node__node__hello.req.hex")?.bytes;
    for cut in [0, 1, 15, 16, 17, whole.len() - 1] {
        let mut src = BytesMut::from(&whole[..cut]);
        assert!(codec().decode(&mut src)?.is_none(), "cut at {cut}");
        assert_eq!(&src[..], &whole[..cut]);
    }
    Ok(())
}

/// Decodes a call with `body` followed by a golden call on one connection: the first must be
/// rejected (its reason returned) and the second must decode as usual.
fn rejected(body: &[u8]) -> Result<&'static str, Box<dyn std::error::Error>> {
    let next = golden("node__node__hello.req.hex")?.bytes;
    let stream = [frame(0xc2, 0, 1, body), next].concat();
    let mut codec = codec();
    let mut src = BytesMut::from(&stream[..]);
    let bad = codec.decode(&mut src)?.ok_or("incomplete")?;
    let good = codec.decode(&mut src)?.ok_or("incomplete")?;
    assert!(src.is_empty());
    assert_eq!(bad.kind, MessageKind::Request);
    assert_eq!(bad.request_id, 1);
    assert!(bad.metadata.is_empty(), "{:?}", bad.metadata);
    assert_eq!(good.reject_reason, None);
    assert_eq!(meta(&good, "method"), Some("sayHello"));
    // The engine answers the sender alone, with status 40 and the reason.
    let reason = bad.reject_reason.ok_or("not rejected")?;
    let mut reply = BytesMut::new();
    let local = LocalReply::new(LocalReplyKind::BadRequest, reason);
    codec.encode_local_reply(&bad, &local, &mut reply)?;
    assert_eq!(reply[3], metaprotocol_dubbo::status::BAD_REQUEST);
    assert_eq!(reply[4..12], 1u64.to_be_bytes());
    assert_eq!(body_string(&reply), Some(format!("bad_request: {reason}")));
    Ok(reason)
}

#[test]
fn truncated_hessian_is_rejected() -> TestResult {
    let body = request_body(
        "demo.Api",
        "hi",
        "Ljava/lang/String;",
        &[Value::Str("w1".into())],
        Some(&[("k", "v")]),
    );
    // The body length matches the bytes, but the Hessian inside stops short.
    for cut in 1..body.len() - 1 {
        let message = decode_one(&frame(0xc2, 0, 1, &body[..cut]))?;
        // Cutting exactly after the arguments leaves a valid call without attachments.
        if message.reject_reason.is_none() {
            assert_eq!(cut, body.len() - 6, "cut at {cut}");
            continue;
        }
        assert!(rejected(&body[..cut]).is_ok(), "cut at {cut}");
    }
    assert_eq!(rejected(&body[..4])?, "truncated Hessian2 string");
    Ok(())
}

#[test]
fn wrong_types_are_rejected() -> TestResult {
    // The method name is an int.
    let mut body = Writer::new();
    body.string("2.0.2")
        .string("demo.Api")
        .string("1.0.0")
        .raw(&[0x91]);
    assert_eq!(rejected(&body.out)?, "expected a Hessian2 string");

    // The attachments are a list.
    let mut body = Writer::new();
    body.raw(&request_body("demo.Api", "hi", "", &[], None))
        .raw(&[0x78]);
    assert_eq!(rejected(&body.out)?, "expected the Dubbo attachments map");

    // Reserved tags and stray terminators inside arguments.
    for tag in [0x40, 0x45, 0x47, 0x50, b'Z'] {
        let mut body = request_body("demo.Api", "hi", "J", &[], None);
        body.push(tag);
        assert_eq!(rejected(&body)?, "unexpected Hessian2 tag", "tag {tag:#x}");
    }
    Ok(())
}

#[test]
fn an_attachment_flood_fills_the_metadata_and_no_more() -> TestResult {
    let keys: Vec<String> = (0..100_000).map(|n| format!("k{n:05}")).collect();
    let attachments: Vec<(&str, &str)> = keys.iter().map(|key| (key.as_str(), "")).collect();
    let body = request_body("demo.Api", "hi", "", &[], Some(&attachments));
    let message = decode_one(&frame(0xc2, 0, 1, &body))?;
    // The frame is whole and forwarded as it came; the engine refuses the call, seeing the
    // metadata overflowed.
    assert_eq!(message.reject_reason, None);
    assert!(message.metadata.overflowed());
    assert_eq!(message.metadata.len(), MAX_METADATA_ENTRIES);
    assert_eq!(meta(&message, "method"), Some("hi"));
    Ok(())
}

#[test]
fn a_key_repeated_without_end_overflows_the_metadata() -> TestResult {
    // One attachment set 100,000 times, its key in two chunks ("a", then "b"): a string the
    // frame does not hold as it is, copied at every insert.
    let mut body = request_body("demo.Api", "hi", "", &[], None);
    body.push(b'H');
    for _ in 0..100_000 {
        body.extend_from_slice(&[b'R', 0, 1, b'a', 1, b'b', 1, b'v']);
    }
    body.push(b'Z');
    let message = decode_one(&frame(0xc2, 0, 1, &body))?;
    assert_eq!(message.reject_reason, None);
    assert!(message.metadata.overflowed());
    assert_eq!(meta(&message, "ab"), Some("v"));
    assert_eq!(meta(&message, "method"), Some("hi"));
    Ok(())
}

/// `nodes` objects of class `org.example.Node`, each holding the next in its field `next`, as
/// Java's Hessian2Output writes a linked list: the class defined once, then each object by its
/// class number, its fields in the class's order; the last `next` is null. With `link_first`,
/// `next` is the first field, so every object's `value` comes after all the objects it holds.
fn linked_list(nodes: i32, link_first: bool) -> Vec<u8> {
    let mut list = Writer::new();
    list.raw(b"C").string("org.example.Node").raw(&[0x92]);
    if link_first {
        list.string("next").string("value");
        list.raw(&vec![0x60; usize::try_from(nodes).unwrap_or_default()]);
        list.raw(b"N");
        for value in (0..nodes).rev() {
            list.value(&Value::Int(value));
        }
    } else {
        list.string("value").string("next");
        for value in 0..nodes {
            list.raw(&[0x60]).value(&Value::Int(value));
        }
        list.raw(b"N");
    }
    list.out
}

/// Java's Hessian2 reader takes a value nested as deeply as its thread's stack allows, and a
/// Java consumer sends what its objects hold (a linked list, a deep tree): a call whose
/// argument nests deeper than 64 is read to its end and routed with its attachments, and an
/// answer holding such a value is read with its attachments, however deep it nests within the
/// frame (here ten thousand objects, each with a value left to read after the next).
#[test]
fn values_nested_deeper_than_64_are_read_to_their_end() -> TestResult {
    for (nodes, link_first) in [(100, false), (100, true), (10_000, true)] {
        let case = format!("{nodes} nodes, the link first: {link_first}");
        let list = linked_list(nodes, link_first);
        let mut call = Writer::new();
        call.string("2.0.2")
            .string("demo.Api")
            .string("1.0.0")
            .string("sum")
            .string("Lorg/example/Node;")
            .raw(&list)
            .raw(b"H")
            .string("path")
            .string("demo.Api")
            .string("tenant")
            .string("t1")
            .raw(b"Z");
        let call = decode_one(&frame(0xc2, 0, 1, &call.out))?;
        assert_eq!(call.reject_reason, None, "{case}");
        assert_eq!(meta(&call, "method"), Some("sum"), "{case}");
        assert_eq!(meta(&call, "tenant"), Some("t1"), "{case}");

        let mut answer = Writer::new();
        answer
            .raw(&[0x94])
            .raw(&list)
            .raw(b"H")
            .string("tenant")
            .string("t1")
            .raw(b"Z");
        let answer = decode_one(&frame(0x02, 20, 1, &answer.out))?;
        assert_eq!(
            answer.status,
            metaprotocol_core::ResponseStatus::Ok,
            "{case}"
        );
        assert_eq!(meta(&answer, "tenant"), Some("t1"), "{case}");
    }
    Ok(())
}

/// The walk keeps a level for each list, map or object it is in (four bytes each): a frame of
/// opening tags made it keep four times the frame (32 MiB for an 8 MiB frame). It keeps 65,536
/// levels at most, far deeper than a Java provider's reader goes (its stack overflows first):
/// a value nested deeper is refused, one nested that deep is read.
#[test]
fn values_nested_deeper_than_the_walk_keeps_are_refused() -> TestResult {
    const LEVELS: usize = 1 << 16;
    for (levels, refused) in [
        (LEVELS, None),
        (
            LEVELS + 1,
            Some("a value nests more than 65,536 levels deep, deeper than a Java provider reads"),
        ),
    ] {
        let mut body = request_body("demo.Api", "hi", "Ljava/lang/Object;", &[], None);
        // Lists of two, each holding the next as its first item and 1 as its second.
        body.extend(std::iter::repeat_n(0x7a, levels));
        body.push(b'N');
        body.extend(std::iter::repeat_n(0x91, levels));
        body.extend_from_slice(b"H\x04path\x08demo.ApiZ");
        let call = decode_one(&frame(0xc2, 0, 1, &body))?;
        assert_eq!(call.reject_reason, refused, "{levels} levels");
    }
    Ok(())
}

/// Lists or maps opened and never ended run into the end of their frame, however deeply they
/// nest; so many class definitions that a frame holds more than the skipper keeps are refused.
#[test]
fn unended_nesting_and_class_floods_are_rejected() -> TestResult {
    let mut lists = request_body("demo.Api", "hi", "Ljava/lang/Object;", &[], None);
    lists.extend(std::iter::repeat_n(0x57, 10_000));
    assert_eq!(rejected(&lists)?, "truncated Hessian2 value");

    let mut maps = request_body("demo.Api", "hi", "Ljava/lang/Object;", &[], None);
    maps.extend(std::iter::repeat_n(b'H', 100));
    assert_eq!(rejected(&maps)?, "truncated Hessian2 value");

    let mut flood = request_body("demo.Api", "hi", "Ljava/lang/Object;", &[], None);
    for _ in 0..5000 {
        flood.extend_from_slice(b"C\x01P\x90");
    }
    flood.push(0x60);
    assert_eq!(rejected(&flood)?, "too many Hessian2 class definitions");

    // An object of a class never defined, a list longer than the frame.
    let mut orphan = request_body("demo.Api", "hi", "Ljava/lang/Object;", &[], None);
    orphan.push(0x61);
    assert_eq!(rejected(&orphan)?, "Hessian2 object of an undefined class");
    let mut long_list = request_body("demo.Api", "hi", "Ljava/lang/Object;", &[], None);
    long_list.extend_from_slice(&[0x58, b'I', 0x7f, 0xff, 0xff, 0xff]);
    assert_eq!(rejected(&long_list)?, "Hessian2 length exceeds the frame");
    Ok(())
}

#[test]
fn malformed_one_way_calls_are_rejected_too() -> TestResult {
    let mut body = request_body("demo.Api", "hi", "J", &[], None);
    body.push(0x40);
    let message = decode_one(&frame(0x82, 0, 3, &body))?;
    assert_eq!(message.kind, MessageKind::Oneway);
    assert_eq!(message.reject_reason, Some("unexpected Hessian2 tag"));
    Ok(())
}

/// A response whose result cannot be read is still a whole frame: it is forwarded as it came
/// (never mutated) and counted as a failed call, so one bad answer does not reset an upstream
/// connection that other clients share.
#[test]
fn unreadable_results_pass_through_as_server_errors() -> Result<(), Box<dyn std::error::Error>> {
    use metaprotocol_core::{Codec, EncodeParams, MessageKind, Mutation, ResponseStatus};
    let mut edit = Mutation::new();
    edit.set("x-served-by".into(), "proxy".into());
    // The last: a value with attachments whose first entry reads well and whose map never
    // ends; what was read before the failure is not kept as metadata.
    for body in [&[0x99][..], b"\x01x", &[], b"\x94\x01xH\x01k\x01v"] {
        let bytes = frame(0x02, 20, 1, body);
        let mut codec = metaprotocol_dubbo::DubboCodec::new(1 << 20);
        let message = codec
            .decode(&mut bytes::BytesMut::from(&bytes[..]))?
            .ok_or("incomplete")?;
        assert_eq!(message.kind, MessageKind::Response);
        assert_eq!(message.status, ResponseStatus::ServerError);
        assert!(message.metadata.is_empty(), "{:?}", message.metadata);
        let mut out = bytes::BytesMut::new();
        let params = EncodeParams {
            request_id: 1,
            variant: metaprotocol_dubbo::READS_RESPONSE_ATTACHMENTS,
            mutation: &edit,
        };
        codec.encode(&message, &params, &mut out)?;
        assert_eq!(&out[..], &bytes[..]);
    }
    Ok(())
}

/// Attachments whose strings are ASCII, UTF-8 or CESU-8 become metadata. A key or string value
/// that is neither refuses the call, as in fastjson2: Java's Hessian2 reader decodes any
/// sequence (an overlong or broken one as some character: `gr\xc1\xafup` is `group`, `\xc3\x28`
/// is `è`), so such an attachment left out of the metadata, or present without its text, let a
/// group the provider runs, or a value a policy refuses, pass. A lone surrogate, which Java
/// strings may hold and UTF-8 cannot, is refused too.
#[test]
fn attachments_not_representable_in_utf8_are_refused() -> TestResult {
    let call = |entries: &[(&[u8], &[u8])]| {
        let mut body = Writer::new();
        body.raw(&request_body("demo.Api", "hi", "", &[], None))
            .raw(b"H")
            .string("plain")
            .string("v1")
            .string("accent")
            .string("héllo")
            .string("emoji")
            .string("x😀y");
        for (key, value) in entries {
            body.raw(key).raw(value);
        }
        body.raw(b"Z");
        decode_one(&frame(0xc2, 0, 1, &body.out))
    };
    let fine = call(&[])?;
    assert_eq!(fine.reject_reason, None);
    assert_eq!(meta(&fine, "plain"), Some("v1"));
    assert_eq!(meta(&fine, "accent"), Some("héllo"));
    assert_eq!(meta(&fine, "emoji"), Some("x😀y"));
    let group_overlong: &[u8] = &[0x05, b'g', b'r', 0xc1, 0xaf, b'u', b'p'];
    let lone_surrogate: &[u8] = &[0x01, 0xed, 0xa0, 0x80];
    for (what, key, value) in [
        (
            "a key Java reads as `group`",
            group_overlong,
            &b"\x05admin"[..],
        ),
        ("a lone surrogate key", lone_surrogate, b"\x02v2"),
        ("a broken value", b"\x04role", &[0x01, 0xc3, 0x28]),
        (
            "a value Java reads as `admin`",
            b"\x04role",
            &[0x05, b'a', b'd', b'm', 0xc1, 0xa9, b'n'],
        ),
        ("a lone surrogate value", b"\x04role", lone_surrogate),
        (
            "a key Java reads as `group`, its value no string",
            group_overlong,
            &[0x91],
        ),
    ] {
        let refused = call(&[(key, value)])?;
        assert_eq!(
            refused.reject_reason,
            Some(
                "an attachment's key or string value is a string that cannot be decoded (not UTF-8, or a lone surrogate)"
            ),
            "{what}: {:?}",
            refused.metadata
        );
        assert!(refused.metadata.is_empty(), "{what}");
    }
    Ok(())
}

/// A call field Java's Hessian2 reader decodes and the codec cannot (an overlong or broken
/// sequence, which Java reads as some character; a lone surrogate) refuses the call: the
/// service `d\xc1\xa5mo.Admin` is `demo.Admin` to a Java provider, and was routed and
/// authorized as a call of no service; a version or method likewise; and the parameter
/// descriptor `\xc1\x8a`, a `J` to Java (one long), was counted as two arguments, the
/// attachments map skipped as the second.
#[test]
fn call_fields_that_cannot_be_decoded_are_refused() -> TestResult {
    let attachments = |writer: &mut Writer| {
        writer.raw(b"H").string("group").string("admin").raw(b"Z");
    };
    let call = |path: &[u8], version: &[u8], method: &[u8], descriptor: &[u8], argument: &[u8]| {
        let mut body = Writer::new();
        body.string("2.0.2")
            .raw(path)
            .raw(version)
            .raw(method)
            .raw(descriptor)
            .raw(argument);
        attachments(&mut body);
        decode_one(&frame(0xc2, 0, 1, &body.out))
    };
    let path: &[u8] = b"\x08demo.Api";
    let version: &[u8] = b"\x051.0.0";
    let method: &[u8] = b"\x02hi";
    let descriptor: &[u8] = b"\x01J";
    let long: &[u8] = &[0xe1];
    let fine = call(path, version, method, descriptor, long)?;
    assert_eq!(fine.reject_reason, None);
    assert_eq!(meta(&fine, "group"), Some("admin"));
    let overlong_path: &[u8] = &[
        0x0a, b'd', 0xc1, 0xa5, b'm', b'o', b'.', b'A', b'd', b'm', b'i', b'n',
    ];
    let overlong_version: &[u8] = &[0x05, b'1', 0xc0, 0xae, b'0', b'.', b'0'];
    let overlong_method: &[u8] = &[0x06, b'd', 0xc1, 0xa5, b'l', b'e', b't', b'e'];
    let overlong_descriptor: &[u8] = &[0x01, 0xc1, 0x8a];
    let lone_surrogate: &[u8] = &[0x01, 0xed, 0xa0, 0x80];
    for (what, call) in [
        (
            "the path",
            call(overlong_path, version, method, descriptor, long),
        ),
        (
            "the version",
            call(path, overlong_version, method, descriptor, long),
        ),
        (
            "the method",
            call(path, version, overlong_method, descriptor, long),
        ),
        (
            "the descriptor",
            call(path, version, method, overlong_descriptor, long),
        ),
        (
            "a lone surrogate path",
            call(lone_surrogate, version, method, descriptor, long),
        ),
    ] {
        let call = call?;
        assert_eq!(
            call.reject_reason,
            Some(
                "a call field (service path, version, method or parameter types) is a string that cannot be decoded"
            ),
            "{what}: {:?}",
            call.metadata
        );
        assert!(call.metadata.is_empty(), "{what}");
    }
    Ok(())
}

/// An attachment whose value is there but no string is metadata with the text a Java provider
/// prints for it (`String.valueOf`): an int or long in decimal, a boolean as `true`/`false`, a
/// double as `Double.toString`, a map as `Map.toString` (`{k=v}`), a list as `List.toString`,
/// a date as `Instant.toString` (in UTC, not the JVM's zone); a null one, which Java reads as
/// none, is not there. Before, each was present with an empty value, so that a route's exact
/// match on dubbo2.js's int `timeout` never matched, and a `%REQ(timeout)%` logged nothing (a
/// map, a list or a date, until the second round, read as the empty text).
#[test]
fn attachments_that_are_no_strings_read_as_the_text_java_prints() -> TestResult {
    let mut body = Writer::new();
    body.raw(&request_body("demo.Api", "hi", "", &[], None))
        .raw(b"H")
        .string("int")
        .raw(&[0xd4, 0x0b, 0xb8])
        .string("negative")
        .raw(b"I\x80\x00\x00\x00")
        .string("long")
        .raw(b"L\x00\x00\x00\x02\x54\x0b\xe4\x00")
        .string("flag")
        .raw(b"T")
        .string("ratio")
        .raw(b"D")
        .raw(&0.25f64.to_be_bytes())
        .string("big")
        .raw(b"D")
        .raw(&1.0e10f64.to_be_bytes())
        .string("nested")
        .raw(b"H")
        .string("k")
        .string("v")
        .raw(b"Z")
        .string("tags")
        .raw(b"\x7a\x01a\x01b")
        .string("since")
        .raw(b"\x4a\x00\x00\x01\xa2\x4e\x56\x67\xd2")
        .string("none")
        .raw(b"N")
        .string("after")
        .string("v2")
        .raw(b"Z");
    let message = decode_one(&frame(0xc2, 0, 1, &body.out))?;
    assert_eq!(message.reject_reason, None);
    let attachments: Vec<(&str, &str)> = message.metadata.iter().skip(4).collect();
    assert_eq!(
        attachments,
        [
            ("int", "3000"),
            ("negative", "-2147483648"),
            ("long", "10000000000"),
            ("flag", "true"),
            ("ratio", "0.25"),
            ("big", "1.0E10"),
            ("nested", "{k=v}"),
            ("tags", "[a, b]"),
            ("since", "2026-12-07T02:30:15.250Z"),
            ("after", "v2")
        ]
    );
    Ok(())
}

/// A response's attachments follow the same rule as a request's: one whose value is no string
/// reads as the text Java prints for it (`{k=v}` for a map), a null one is not there. Before,
/// each was left out of the response's metadata, which a script filter's response hook reads.
#[test]
fn response_attachments_that_are_no_strings_read_as_request_ones_do() -> TestResult {
    let mut body = Writer::new();
    body.raw(&[0x94])
        .string("ok")
        .raw(b"H")
        .string("int")
        .raw(&[0xd4, 0x0b, 0xb8])
        .string("flag")
        .raw(b"F")
        .string("nested")
        .raw(b"H")
        .string("k")
        .string("v")
        .raw(b"Z")
        .string("none")
        .raw(b"N")
        .string("after")
        .string("v2")
        .raw(b"Z");
    let message = decode_one(&frame(0x02, 20, 1, &body.out))?;
    assert_eq!(message.kind, MessageKind::Response);
    let attachments: Vec<(&str, &str)> = message.metadata.iter().collect();
    assert_eq!(
        attachments,
        [
            ("int", "3000"),
            ("flag", "false"),
            ("nested", "{k=v}"),
            ("after", "v2")
        ]
    );
    Ok(())
}

/// An attachment sent twice is what Java's map keeps, the last: a null after a value leaves the
/// key out, since a Java provider reads it as none (`HashMap.put` of the null replaced the
/// value), in a request and a response alike. Before, the metadata kept the first value, so a
/// route or policy matched a value the provider never saw.
#[test]
fn an_attachment_sent_again_as_null_is_not_there() -> TestResult {
    let attachments = |body: &mut Writer| {
        body.raw(b"H")
            .string("tenant")
            .string("t1")
            .string("timeout")
            .raw(&[0xd4, 0x0b, 0xb8])
            .string("tenant")
            .raw(b"N")
            .string("timeout")
            .raw(b"N")
            .string("after")
            .string("v2")
            .raw(b"Z");
    };
    let mut call = Writer::new();
    call.raw(&request_body("demo.Api", "hi", "", &[], None));
    attachments(&mut call);
    let request = decode_one(&frame(0xc2, 0, 1, &call.out))?;
    assert_eq!(request.reject_reason, None);
    let keys: Vec<&str> = request.metadata.iter().skip(4).map(|(k, _)| k).collect();
    assert_eq!(keys, ["after"]);

    let mut answer = Writer::new();
    answer.raw(&[0x94]).string("ok");
    attachments(&mut answer);
    let response = decode_one(&frame(0x02, 20, 1, &answer.out))?;
    let keys: Vec<&str> = response.metadata.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["after"]);

    // Each null counts as an insert, and so does each rendered number: a frame repeating
    // either without end overflows the metadata (the engine refuses the call) rather than
    // costing a search, or a copy, each.
    for value in [&b"N"[..], &[0x91]] {
        let mut body = request_body("demo.Api", "hi", "", &[], None);
        body.extend_from_slice(b"H\x01kT");
        for _ in 0..100_000 {
            body.extend_from_slice(&[0x01, b'k']);
            body.extend_from_slice(value);
        }
        body.push(b'Z');
        let message = decode_one(&frame(0xc2, 0, 1, &body))?;
        assert_eq!(message.reject_reason, None);
        assert!(message.metadata.overflowed(), "{value:02x?}");
    }
    Ok(())
}
