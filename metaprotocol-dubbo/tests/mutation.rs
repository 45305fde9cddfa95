//! Mutations rewrite the attachments map (and, for `path`, the call field): golden requests and
//! responses, and the shapes real clients do not send but Hessian allows (no map, null map, typed
//! map, object values).

mod common;

use common::hessian::{Value, Writer, request_body};
use common::{
    SERVICE, TestResult, body_len, decode_all, decode_one, encode, encode_for, frame, golden,
    golden_files, meta, mutation,
};
use metaprotocol_core::WireVariant;
use metaprotocol_core::{CodecError, MessageKind, Mutation, ResponseStatus};

/// The codec-private slot holding where the attachments map starts (see the crate's layout
/// module).
fn map_start(message: &metaprotocol_core::Message) -> usize {
    message.layout.0[2] as usize
}

/// Every call of the golden captures, with the name of its file.
fn golden_calls() -> Result<Vec<(String, metaprotocol_core::Message)>, Box<dyn std::error::Error>> {
    let mut calls = Vec::new();
    for file in golden_files()? {
        for message in decode_all(&file.bytes)? {
            if message.kind.is_call() {
                calls.push((file.name.clone(), message));
            }
        }
    }
    Ok(calls)
}

#[test]
fn golden_requests_gain_and_lose_attachments() -> TestResult {
    let edit = mutation(
        &[("x-routed-by", "canary"), ("tenant", "t2")],
        &["x-trace-id"],
    );
    let calls = golden_calls()?;
    assert_eq!(calls.len(), 11);
    for (name, original) in &calls {
        let bytes = encode(original, 42, &edit)?;
        assert_eq!(body_len(&bytes), Some(bytes.len() - 16), "{name}");
        let mutated = decode_one(&bytes)?;
        assert_eq!(mutated.kind, original.kind, "{name}");
        assert_eq!(mutated.request_id, 42, "{name}");
        assert_eq!(meta(&mutated, "x-routed-by"), Some("canary"), "{name}");
        assert_eq!(meta(&mutated, "tenant"), Some("t2"), "{name}");
        assert_eq!(meta(&mutated, "x-trace-id"), None, "{name}");
        assert_eq!(meta(&mutated, "interface"), Some(SERVICE), "{name}");
        assert_eq!(meta(&mutated, "version"), Some("1.0.0"), "{name}");
        // Everything else the client sent is still there.
        for (key, value) in original.metadata.iter() {
            if !["x-trace-id", "tenant"].contains(&key) {
                assert_eq!(mutated.metadata.get(key), Some(value), "{name}");
            }
        }
        // The call fields and arguments are the original bytes.
        let start = map_start(original);
        assert_eq!(bytes[16..start], original.frame[16..start], "{name}");
        assert_eq!(map_start(&mutated), start, "{name}");
        // Applying the same edit again changes nothing.
        assert_eq!(encode(&mutated, 42, &edit)?, bytes, "{name}");
    }
    Ok(())
}

/// A mutation that sets the `path` attachment (a route sending calls to a renamed service)
/// sets the call's path field too: Java providers go by the attachment and others by the
/// field, and the next proxy (the provider's sidecar) refuses a call whose two paths differ.
#[test]
fn a_mutation_of_the_path_renames_the_call_in_both_places() -> TestResult {
    let renamed = "demo.RenamedService-\u{e9}";
    let edit = mutation(&[("path", renamed)], &[]);
    for (name, original) in golden_calls()? {
        let bytes = encode(&original, 7, &edit)?;
        let mutated = decode_one(&bytes)?;
        assert_eq!(mutated.reject_reason, None, "{name}");
        assert_eq!(meta(&mutated, "interface"), Some(renamed), "{name}");
        assert_eq!(meta(&mutated, "path"), Some(renamed), "{name}");
        for key in ["method", "version"] {
            assert_eq!(meta(&mutated, key), meta(&original, key), "{name} {key}");
        }
        // Only the path field changed before the map: the version field before it and
        // the fields and arguments after it are the original bytes.
        let hessian = |text: &str| Writer::new().string(text).out.clone();
        let (old_path, new_path) = (hessian(SERVICE), hessian(renamed));
        let at = original.frame[16..]
            .windows(old_path.len())
            .position(|w| w == old_path)
            .map(|p| p + 16)
            .ok_or("no path field")?;
        assert_eq!(bytes[16..at], original.frame[16..at], "{name}");
        assert_eq!(bytes[at..at + new_path.len()], new_path[..], "{name}");
        let after = &original.frame[at + old_path.len()..map_start(&original)];
        assert!(bytes[..map_start(&mutated)].ends_with(after), "{name}");
        assert_eq!(
            encode(&mutated, 7, &edit)?,
            bytes,
            "{name}: applying it again"
        );
    }
    Ok(())
}

#[test]
fn non_string_attachments_survive_a_rewrite() -> TestResult {
    // dubbo2.js's int `timeout` is copied as it came, and can be replaced by a string.
    let original = decode_one(&golden("dubbojs__node__hello.req.hex")?.bytes)?;
    let kept = decode_one(&encode(&original, 1, &mutation(&[("a", "b")], &[]))?)?;
    assert_eq!(meta(&kept, "a"), Some("b"));
    let timeout_int = [0x07, b't', b'i', b'm', b'e', b'o', b'u', b't', 0x93];
    assert!(kept.frame.windows(9).any(|w| w == timeout_int));

    let replaced = encode(&original, 1, &mutation(&[("timeout", "5000")], &[]))?;
    assert!(!replaced.windows(9).any(|w| w == timeout_int));
    assert_eq!(meta(&decode_one(&replaced)?, "timeout"), Some("5000"));
    Ok(())
}

#[test]
fn clients_that_cannot_read_response_attachments_get_the_response_unchanged() -> TestResult {
    // dubbo-py's default protocol version is 2.5.3, and it fails on result flags 3 to 5 (the
    // capture was made with 2.0.2; same-length patch to the default).
    let mut old = golden("dubbopy__py__hello.req.hex")?.bytes.to_vec();
    let at = old
        .windows(5)
        .position(|w| w == b"2.0.2")
        .ok_or("no version")?;
    old[at..at + 5].copy_from_slice(b"2.5.3");
    let dubbo_py = decode_one(&old)?;
    assert_eq!(dubbo_py.variant, WireVariant::DEFAULT);
    let dubbo_js = decode_one(&golden("dubbojs__node__hello.req.hex")?.bytes)?;
    assert_eq!(
        dubbo_js.variant,
        metaprotocol_dubbo::READS_RESPONSE_ATTACHMENTS
    );
    let response = decode_one(&golden("dubbopy__py__hello.resp.hex")?.bytes)?;
    let edit = mutation(&[("x-served-by", "proxy")], &[]);
    let bytes = encode_for(&response, 7, &edit, dubbo_py.variant)?;
    assert_eq!(bytes[..4], response.frame[..4]);
    assert_eq!(bytes[4..12], 7u64.to_be_bytes());
    assert_eq!(bytes[12..], response.frame[12..]);
    let bytes = encode_for(&response, 7, &edit, dubbo_js.variant)?;
    assert_eq!(meta(&decode_one(&bytes)?, "x-served-by"), Some("proxy"));
    Ok(())
}

#[test]
fn the_protocol_version_rule_follows_java() {
    use metaprotocol_dubbo::reads_response_attachments as reads;
    for yes in ["2.0.2", "2.0.3", "2.0.10", "2.0.99"] {
        assert!(reads(yes.as_bytes()), "{yes}");
    }
    for no in [
        "",
        "2.0.1",
        "2.1.0",
        "2.5.3",
        "2.6.2",
        "2.7.0",
        "3.0.0",
        "x",
        "2..0",
        "1.2.3.4.5",
    ] {
        assert!(!reads(no.as_bytes()), "{no}");
    }
}

#[test]
fn value_responses_switch_their_result_flag() -> TestResult {
    let original = decode_one(&golden("dubbojs__node__hello.resp.hex")?.bytes)?;
    assert_eq!(original.frame[16], 0x91); // value, no attachments
    let bytes = encode(&original, 1, &mutation(&[("x-served-by", "proxy")], &[]))?;
    assert_eq!(bytes[16], 0x94); // value with attachments
    assert_eq!(bytes[17..original.frame.len()], original.frame[17..]);
    assert_eq!(body_len(&bytes), Some(bytes.len() - 16));
    let mutated = decode_one(&bytes)?;
    assert_eq!(mutated.status, ResponseStatus::Ok);
    assert_eq!(meta(&mutated, "x-served-by"), Some("proxy"));

    // Flag 4 stays 4, the map is rebuilt.
    let again = encode(&mutated, 1, &mutation(&[("b", "2")], &["x-served-by"]))?;
    assert_eq!(again[16], 0x94);
    let again = decode_one(&again)?;
    assert_eq!(meta(&again, "b"), Some("2"));
    assert_eq!(meta(&again, "x-served-by"), None);
    Ok(())
}

#[test]
fn exception_responses_keep_their_object_graph() -> TestResult {
    // A serialized java.lang.Exception: class definitions, objects, typed lists.
    let original = decode_one(&golden("node__node__error.resp.hex")?.bytes)?;
    let bytes = encode(&original, 1, &mutation(&[("k", "v")], &[]))?;
    assert_eq!(bytes[16], 0x93); // exception with attachments
    let mutated = decode_one(&bytes)?;
    assert_eq!(mutated.status, ResponseStatus::ApplicationError);
    assert_eq!(meta(&mutated, "k"), Some("v"));
    assert!(mutated.layout.0[5] > 0, "class definitions before the map");
    // Rewriting a map that follows class definitions walks the exception again.
    let removed = decode_one(&encode(&mutated, 1, &mutation(&[("k2", "v2")], &["k"]))?)?;
    assert_eq!(meta(&removed, "k"), None);
    assert_eq!(meta(&removed, "k2"), Some("v2"));
    assert_eq!(removed.frame[17..map_start(&removed)], original.frame[17..]);
    Ok(())
}

#[test]
fn null_results_gain_attachments() -> TestResult {
    let null_result = frame(0x02, 20, 5, &[0x92]);
    let original = decode_one(&null_result)?;
    let mutated = decode_one(&encode(&original, 5, &mutation(&[("a", "1")], &[]))?)?;
    assert_eq!(mutated.frame[16], 0x95);
    assert_eq!(meta(&mutated, "a"), Some("1"));
    Ok(())
}

#[test]
fn frames_that_cannot_carry_attachments() -> TestResult {
    let edit = mutation(&[("a", "1")], &[]);
    // An error response travels unchanged rather than failing the client's call.
    let crash = decode_one(&golden("node__node__crash.resp.hex")?.bytes)?;
    assert_eq!(encode(&crash, 1, &edit)?, crash.frame.to_vec());
    let heartbeat = decode_one(&golden("dubbossl__node__heartbeat-2way.resp.hex")?.bytes)?;
    assert_eq!(encode(&heartbeat, 1, &edit)?, heartbeat.frame.to_vec());

    // A call in another serialization is routed on its header only.
    let fastjson = frame(0xc6, 0, 3, b"\"2.0.2\"\n\"demo.Api\"\n");
    let call = decode_one(&fastjson)?;
    assert_eq!(call.kind, MessageKind::Request);
    assert!(call.metadata.is_empty());
    assert_eq!(
        call.reject_reason,
        Some("serialization id 6 is not supported; only Hessian2 (2) and fastjson2 (23) are")
    );
    assert!(matches!(
        encode(&call, 3, &edit),
        Err(CodecError::Encode(_))
    ));
    assert_eq!(encode(&call, 9, &Mutation::new())?[16..], fastjson[16..]);
    Ok(())
}

#[test]
fn missing_null_and_typed_maps() -> TestResult {
    let args = [Value::Str("w1".into())];
    let edit = mutation(&[("tenant", "t9")], &[]);

    // No map at all (the body ends after the arguments).
    let bare = request_body("demo.Api", "hi", "Ljava/lang/String;", &args, None);
    let original = decode_one(&frame(0xc2, 0, 1, &bare))?;
    assert_eq!(meta(&original, "method"), Some("hi"));
    let mutated = encode(&original, 1, &edit)?;
    assert_eq!(mutated[16..16 + bare.len()], bare[..]);
    assert_eq!(meta(&decode_one(&mutated)?, "tenant"), Some("t9"));

    // A null map is replaced.
    let mut null_map = bare.clone();
    null_map.push(b'N');
    let original = decode_one(&frame(0xc2, 0, 1, &null_map))?;
    let mutated = encode(&original, 1, &edit)?;
    assert_eq!(mutated[16..16 + bare.len()], bare[..]);
    assert_eq!(mutated.get(16 + bare.len()), Some(&b'H'));
    assert_eq!(meta(&decode_one(&mutated)?, "tenant"), Some("t9"));

    // A typed map keeps its type.
    let mut typed = Writer::new();
    typed.raw(&bare).value(&Value::Map {
        type_name: Some("java.util.HashMap".into()),
        entries: vec![(Value::Str("tenant".into()), Value::Str("t1".into()))],
    });
    let original = decode_one(&frame(0xc2, 0, 1, &typed.out))?;
    assert_eq!(meta(&original, "tenant"), Some("t1"));
    let mutated = decode_one(&encode(&original, 1, &edit)?)?;
    assert_eq!(meta(&mutated, "tenant"), Some("t9"));
    assert!(mutated.frame.windows(17).any(|w| w == b"java.util.HashMap"));
    Ok(())
}

#[test]
fn attachments_holding_object_graphs() -> TestResult {
    // An attachment whose value is a list: kept on rewrite, but removing it would renumber
    // later references, so that is refused (and nothing is written).
    let mut body = Writer::new();
    body.raw(&request_body("demo.Api", "hi", "", &[], None))
        .raw(b"H")
        .string("list")
        .value(&Value::List {
            type_name: None,
            fixed: false,
            items: vec![Value::Int(1)],
        })
        .string("tenant")
        .string("t1")
        .raw(b"Z");
    let original = decode_one(&frame(0xc2, 0, 1, &body.out))?;
    assert_eq!(meta(&original, "tenant"), Some("t1"));
    assert_eq!(meta(&original, "list"), Some("[1]"), "as Java prints it");
    let kept = decode_one(&encode(&original, 1, &mutation(&[("tenant", "t2")], &[]))?)?;
    assert_eq!(meta(&kept, "tenant"), Some("t2"));
    assert!(matches!(
        encode(&original, 1, &mutation(&[], &["list"])),
        Err(CodecError::Encode(_))
    ));
    Ok(())
}

#[test]
fn unicode_values_round_trip() -> TestResult {
    let original = decode_one(&golden("node__node__hello.req.hex")?.bytes)?;
    let mut edit = Mutation::new();
    edit.set("x-note".into(), "héllo wörld 😀".to_owned().into());
    let mutated = decode_one(&encode(&original, 1, &edit)?)?;
    assert_eq!(meta(&mutated, "x-note"), Some("héllo wörld 😀"));
    Ok(())
}

#[test]
fn a_mutation_past_the_frame_cap_fails_cleanly() -> TestResult {
    let original = decode_one(&golden("node__node__hello.req.hex")?.bytes)?;
    let mut edit = Mutation::new();
    edit.set("big".into(), "x".repeat(400).into());
    let mut dst = bytes::BytesMut::from(&b"prefix"[..]);
    let params = metaprotocol_core::EncodeParams {
        request_id: 1,
        variant: metaprotocol_core::WireVariant::DEFAULT,
        mutation: &edit,
    };
    let mut small = metaprotocol_dubbo::DubboCodec::new(400);
    use metaprotocol_core::Codec;
    assert!(matches!(
        small.encode(&original, &params, &mut dst),
        Err(CodecError::Encode(_))
    ));
    assert_eq!(&dst[..], b"prefix");
    Ok(())
}

#[test]
fn results_are_walked_before_they_gain_attachments() -> TestResult {
    let edit = mutation(&[("a", "1")], &[]);
    // Found by fuzzing: the golden exception with one string tag turned into a binary tag.
    // Decode does not walk the result of a response without attachments, so this decodes;
    // adding attachments walks it, finds it broken, and refuses.
    let mut broken = golden("node__node__error.resp.hex")?.bytes;
    broken[360] = 0x35;
    let original = decode_one(&broken)?;
    assert_eq!(original.status, ResponseStatus::ApplicationError);
    assert!(matches!(
        encode(&original, 1, &edit),
        Err(CodecError::Encode(_))
    ));

    // A value followed by stray bytes: the map goes right after the value.
    let stray = decode_one(&frame(0x02, 20, 1, &[0x91, 0x02, b'o', b'k', 0xff]))?;
    let bytes = encode(&stray, 1, &edit)?;
    assert_eq!(bytes[16..21], [0x94, 0x02, b'o', b'k', b'H']);
    assert_eq!(bytes.last(), Some(&0xff));
    assert_eq!(meta(&decode_one(&bytes)?, "a"), Some("1"));
    Ok(())
}

/// A call within the listener's frame cap but over the cluster's goes nowhere, mutated or not:
/// the provider would refuse it on the connection other clients' calls share. Its client gets
/// a local reply instead.
#[test]
fn a_call_over_the_upstream_frame_cap_is_not_sent() -> TestResult {
    use metaprotocol_core::Codec;
    let original = decode_one(&golden("node__node__hello.req.hex")?.bytes)?;
    let cap = original.frame.len() - 1;
    let mut upstream = metaprotocol_dubbo::DubboCodec::new(cap);
    let empty = Mutation::new();
    let params = metaprotocol_core::EncodeParams {
        request_id: 1,
        variant: WireVariant::DEFAULT,
        mutation: &empty,
    };
    let mut dst = bytes::BytesMut::from(&b"prefix"[..]);
    assert!(matches!(
        upstream.encode(&original, &params, &mut dst),
        Err(CodecError::Encode(_))
    ));
    assert!(matches!(
        upstream.encode_sharing(&original, &params, &mut dst),
        Err(CodecError::Encode(_))
    ));
    assert_eq!(&dst[..], b"prefix");
    // At the cap, it goes.
    let mut upstream = metaprotocol_dubbo::DubboCodec::new(cap + 1);
    upstream.encode(&original, &params, &mut dst)?;
    assert_eq!(dst.len(), b"prefix".len() + cap + 1);
    Ok(())
}

/// A call's `_TO` (Dubbo's timeout countdown, an int as Java writes it) is its deadline, and an
/// attempt that waits less goes with the wait in its place, the call's own mutation applied
/// too; one that waits no less goes as it came. The `timeout` attachment travels as it came.
#[test]
fn the_countdown_is_the_deadline_and_an_attempt_tells_its_wait() -> TestResult {
    use metaprotocol_core::Codec;
    let mut body = request_body("demo.Api", "hi", "", &[], None);
    let mut map = Writer::new();
    map.raw(b"H")
        .string("_TO")
        .value(&Value::Int(1000))
        .string("timeout")
        .value(&Value::Int(3))
        .raw(b"Z");
    body.extend_from_slice(&map.out);
    let call = decode_one(&frame(0xc2, 0, 5, &body))?;
    assert_eq!(call.timeout, Some(std::time::Duration::from_millis(1000)));

    let within = |wait_ms: u64, edit: &Mutation| -> Result<Vec<u8>, CodecError> {
        let params = metaprotocol_core::EncodeParams {
            request_id: 9,
            variant: WireVariant::DEFAULT,
            mutation: edit,
        };
        let mut dst = bytes::BytesMut::new();
        let wait = std::time::Duration::from_millis(wait_ms);
        let shared = common::codec().encode_within(&call, &params, wait, false, &mut dst)?;
        assert_eq!(shared, 0);
        Ok(dst.to_vec())
    };
    let edit = mutation(&[("x-hop", "1")], &[]);
    let told = decode_one(&within(250, &edit)?)?;
    assert_eq!(told.request_id, 9);
    assert_eq!(meta(&told, "_TO"), Some("250"));
    assert_eq!(told.timeout, Some(std::time::Duration::from_millis(250)));
    assert_eq!(meta(&told, "x-hop"), Some("1"));
    let timeout_int = [0x07, b't', b'i', b'm', b'e', b'o', b'u', b't', 0x93];
    assert!(told.frame.windows(9).any(|w| w == timeout_int));

    assert_eq!(
        within(1000, &Mutation::new())?,
        encode(&call, 9, &Mutation::new())?
    );
    assert_eq!(within(5000, &edit)?, encode(&call, 9, &edit)?);

    // Without `_TO`, a string `timeout` (Java's, dubbo-go's: milliseconds) is the deadline, and
    // an int one (dubbo2.js's: seconds) is none.
    let with_timeout =
        |value: Value| -> Result<Option<std::time::Duration>, Box<dyn std::error::Error>> {
            let mut body = request_body("demo.Api", "hi", "", &[], None);
            let mut map = Writer::new();
            map.raw(b"H").string("timeout").value(&value).raw(b"Z");
            body.extend_from_slice(&map.out);
            Ok(decode_one(&frame(0xc2, 0, 5, &body))?.timeout)
        };
    assert_eq!(
        with_timeout(Value::Str("700".into()))?,
        Some(std::time::Duration::from_millis(700))
    );
    assert_eq!(with_timeout(Value::Int(3))?, None);
    Ok(())
}
