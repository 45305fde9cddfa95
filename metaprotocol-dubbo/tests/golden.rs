//! Every golden stream captured from real Dubbo implementations decodes with the kind, id,
//! status and metadata that the capture's own decoders report, and re-encodes byte for byte.

mod common;

use common::{SERVICE, TestResult, decode_all, encode, golden, golden_files, meta};
use metaprotocol_core::{MessageKind, Mutation, ResponseStatus};

/// The kind a frame's flag byte announces, written out independently of the codec.
fn kind_of_flag(flag: u8) -> MessageKind {
    match (flag & 0x80 != 0, flag & 0x40 != 0, flag & 0x20 != 0) {
        (true, _, true) => MessageKind::Heartbeat,
        (true, true, false) => MessageKind::Request,
        (true, false, false) => MessageKind::Oneway,
        (false, _, true) => MessageKind::HeartbeatReply,
        (false, _, false) => MessageKind::Response,
    }
}

#[test]
fn every_frame_decodes_with_its_listed_header() -> TestResult {
    let mut frames = 0;
    for file in golden_files()? {
        let messages = decode_all(&file.bytes)?;
        assert_eq!(messages.len(), file.frames.len(), "{}", file.name);
        for (message, info) in messages.iter().zip(&file.frames) {
            assert_eq!(message.kind, kind_of_flag(info.flag), "{}", file.name);
            assert_eq!(message.request_id, info.id, "{}", file.name);
            assert_eq!(message.frame.len(), 16 + info.body, "{}", file.name);
            assert_eq!(message.reject_reason, None, "{}", file.name);
            frames += 1;
        }
    }
    assert_eq!(frames, 28);
    Ok(())
}

#[test]
fn calls_carry_the_service_method_version_and_every_attachment() -> TestResult {
    let mut calls = 0;
    for file in golden_files()? {
        for (message, values) in decode_all(&file.bytes)?.iter().zip(&file.values) {
            if !message.kind.is_call() {
                continue;
            }
            calls += 1;
            let name = &file.name;
            assert_eq!(meta(message, "interface"), Some(SERVICE), "{name}");
            assert_eq!(meta(message, "service"), Some(SERVICE), "{name}");
            assert_eq!(meta(message, "method"), Some("sayHello"), "{name}");
            assert_eq!(meta(message, "version"), Some("1.0.0"), "{name}");
            assert_eq!(meta(message, "x-trace-id"), Some("abc123"), "{name}");
            assert_eq!(meta(message, "tenant"), Some("t1"), "{name}");

            // The attachments as hessian.js decoded them: strings are metadata, others (no
            // null among them) too, a number as its decimal text.
            let attachments = values.get(6).and_then(|v| v.as_object()).ok_or("no map")?;
            let mut expected = 4; // interface, service, method, version
            for (key, value) in attachments {
                match value.as_str() {
                    Some(text) => {
                        assert_eq!(meta(message, key), Some(text), "{name} {key}");
                        if !["interface", "version"].contains(&key.as_str()) {
                            expected += 1;
                        }
                    }
                    None => {
                        let text = value.as_i64().map(|n| n.to_string()).unwrap_or_default();
                        assert_eq!(meta(message, key), Some(text.as_str()), "{name} {key}");
                        expected += 1;
                    }
                }
            }
            assert_eq!(
                message.metadata.len(),
                expected,
                "{name}: {:?}",
                message.metadata
            );
        }
    }
    assert_eq!(calls, 11);
    Ok(())
}

#[test]
fn quirks_of_each_client_are_visible() -> TestResult {
    // dubbo2.js sends `timeout` as an int: its decimal text.
    let dubbojs = decode_all(&golden("dubbojs__node__hello.req.hex")?.bytes)?;
    assert_eq!(meta(&dubbojs[0], "timeout"), Some("3"));
    assert_eq!(meta(&dubbojs[0], "application"), Some("dubbo2.js"));
    // sofa-rpc-node sends it as a string, and an empty group.
    let node = decode_all(&golden("node__node__hello.req.hex")?.bytes)?;
    assert_eq!(meta(&node[0], "timeout"), Some("3000"));
    assert_eq!(meta(&node[0], "group"), Some(""));
    assert_eq!(meta(&node[0], "dubbo"), Some("2.0.2"));
    // dubbo-ssl-python starts its ids at 0.
    let ssl = decode_all(&golden("dubbossl__py__hello.req.hex")?.bytes)?;
    assert_eq!(ssl[0].request_id, 0);
    assert_eq!(meta(&ssl[0], "path"), Some(SERVICE));
    Ok(())
}

#[test]
fn one_way_requests_and_heartbeats_are_classified() -> TestResult {
    let oneway = decode_all(&golden("dubbopy__py__oneway.req.hex")?.bytes)?;
    assert_eq!(oneway[0].kind, MessageKind::Oneway);
    // dubbo-py's heartbeat is one-way, dubbo-ssl-python's two-way: both are heartbeats.
    for name in [
        "dubbopy__py__heartbeat.req.hex",
        "dubbossl__node__heartbeat-2way.req.hex",
    ] {
        let heartbeat = decode_all(&golden(name)?.bytes)?;
        assert_eq!(heartbeat[0].kind, MessageKind::Heartbeat, "{name}");
        assert!(heartbeat[0].metadata.is_empty(), "{name}");
    }
    // Heartbeat replies with status 20 (Node) and 0 (dubbo-py) are both healthy.
    for name in [
        "dubbopy__node__heartbeat.resp.hex",
        "dubbopy__py__heartbeat.resp.hex",
    ] {
        let reply = decode_all(&golden(name)?.bytes)?;
        assert_eq!(reply[0].kind, MessageKind::HeartbeatReply, "{name}");
        assert_eq!(reply[0].status, ResponseStatus::Ok, "{name}");
        assert_eq!(reply[0].request_id, 1_000_001, "{name}");
    }
    Ok(())
}

#[test]
fn responses_report_value_exception_and_server_error() -> TestResult {
    let value = decode_all(&golden("dubbojs__node__hello.resp.hex")?.bytes)?;
    assert_eq!(value[0].kind, MessageKind::Response);
    assert_eq!(value[0].status, ResponseStatus::Ok);
    // Providers that answer one-way requests anyway: a normal response.
    let oneway = decode_all(&golden("dubbopy__node__oneway.resp.hex")?.bytes)?;
    assert_eq!(oneway[0].status, ResponseStatus::Ok);
    // Status 20, result flag 0 and a serialized java.lang.Exception (class definitions).
    let error = decode_all(&golden("node__node__error.resp.hex")?.bytes)?;
    assert_eq!(error[0].status, ResponseStatus::ApplicationError);
    // Status 80 and a message string.
    let crash = decode_all(&golden("node__node__crash.resp.hex")?.bytes)?;
    assert_eq!(crash[0].status, ResponseStatus::ServerError);
    assert_eq!(crash[0].frame[3], 80);
    assert_eq!(
        common::body_string(&crash[0].frame).as_deref(),
        Some("boom")
    );
    for name in ["node__py__hello.resp.hex", "dubbossl__py__hello.resp.hex"] {
        let reply = decode_all(&golden(name)?.bytes)?;
        assert_eq!(reply[0].status, ResponseStatus::Ok, "{name}");
        assert!(reply[0].metadata.is_empty(), "{name}");
    }
    Ok(())
}

#[test]
fn passthrough_reencodes_every_frame_byte_for_byte() -> TestResult {
    let none = Mutation::new();
    for file in golden_files()? {
        let mut stream = Vec::new();
        for message in decode_all(&file.bytes)? {
            let same = encode(&message, message.request_id, &none)?;
            assert_eq!(same, message.frame.to_vec(), "{}", file.name);
            stream.extend_from_slice(&same);

            let other_id = message.request_id ^ 0x0102_0304_0506_0708;
            let moved = encode(&message, other_id, &none)?;
            assert_eq!(moved.len(), message.frame.len(), "{}", file.name);
            for (i, (a, b)) in moved.iter().zip(message.frame.iter()).enumerate() {
                if !(4..12).contains(&i) {
                    assert_eq!(a, b, "{} byte {i}", file.name);
                }
            }
            assert_eq!(moved[4..12], other_id.to_be_bytes(), "{}", file.name);
        }
        assert_eq!(stream, file.bytes, "{}", file.name);
    }
    Ok(())
}

#[test]
fn a_stream_of_many_frames_decodes_in_order() -> TestResult {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for file in golden_files()? {
        stream.extend_from_slice(&file.bytes);
        expected.extend(file.frames.iter().map(|f| f.id));
    }
    let ids: Vec<u64> = decode_all(&stream)?.iter().map(|m| m.request_id).collect();
    assert_eq!(ids, expected);
    Ok(())
}
